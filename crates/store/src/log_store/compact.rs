//! Reclaiming space, on a thread of its own so that no commit waits for it.
//!
//! A segment holds puts that are live, puts that later ops made dead, and deletes. The
//! compactor rewrites a run of sealed segments `a..=j` into one file in `a`'s place: the
//! live puts in their order and, unless `a` is the oldest segment, the deletes (which may
//! cancel puts in older segments). The new file is synced and renamed over `a`; then
//! `a+1..=j` are deleted in ascending order, each deletion synced before the next. Every
//! state a crash can leave replays to the same records: the new file holds the final
//! value of everything last written in `a..=j`, and whatever of `a+1..=j` is still there
//! replays after it, in order, rewriting the same values. A rewritten segment keeps its
//! place, so every delete in a later segment still comes after the put it cancels, and a
//! record deleted while the rewrite ran is still deleted on replay.
//!
//! Runs that start at the oldest segment (merges, which drop every delete) are preferred;
//! their output is capped at [`MERGE_CAP`] live bytes so that no file grows without bound.
//! When the oldest segments hold more live data than that (a consumer lagging far
//! behind), single segments behind them are rewritten in place, keeping their deletes.
//!
//! The compactor reads the sealed segment's file, not the live state, and takes the
//! writer's lock only briefly: to check liveness in batches, and to move the records it
//! copied to their new offsets (those still where it found them).

use super::state::State;
use super::{change, index};
use super::{corrupt, io, seg_path, LogStore, Shared, COMPACT_SUFFIX, IDLE};
use crate::fs::VFile;
use crate::log_store::frame::{self, Tail, MAGIC};
use crate::log_store::state::{Loc, SegInfo};
use crate::StoreError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Liveness checks per hold of the writer's lock.
const BATCH: usize = 4096;
/// Ops per frame of a rewritten segment, by encoded size.
const FRAME_BYTES: u64 = 1 << 20;
/// Most live bytes a merge writes into one file.
pub(super) const MERGE_CAP: u64 = 256 << 20;

#[derive(Debug)]
enum Target {
    /// The oldest segment, with nothing live.
    Delete(u32),
    /// Segments `first..=last` into one file in `first`'s place; `oldest` if `first` is
    /// the oldest segment (its deletes can go).
    Rewrite { first: u32, last: u32, oldest: bool },
}

/// What of a sealed segment a rewrite would give back.
fn reclaimable(info: &SegInfo, oldest: bool) -> u64 {
    let pinned = if oldest { 0 } else { info.pinned };
    info.len.saturating_sub(info.live + pinned)
}

/// The next thing worth doing, if any: delete the oldest segment once it holds nothing
/// live; once the log holds more than twice its live bytes plus two segments, merge the
/// oldest segments (the longest run whose live bytes fit [`MERGE_CAP`]) or, if that
/// gives back too little, rewrite the segment with the most to give back.
fn target(shared: &Shared, st: &State) -> Option<Target> {
    let sealed: Vec<(u32, SegInfo)> = st
        .segs
        .iter()
        .filter(|(s, _)| **s != st.newest)
        .map(|(s, i)| (*s, *i))
        .collect();
    let &(oldest, first) = sealed.first()?;
    if first.live == 0 {
        return Some(Target::Delete(oldest));
    }
    let gain = |(s, i): &(u32, SegInfo)| reclaimable(i, *s == oldest);
    let total: u64 = sealed.iter().map(gain).sum();
    // Near the disk budget, anything that gives back space is worth it.
    let pressed = shared
        .disk_budget
        .is_some_and(|b| shared.disk.load(Ordering::Relaxed) >= b / 4 * 3);
    if !pressed && total <= st.live_bytes() + 2 * shared.segment_bytes {
        return None;
    }
    let worth = if pressed {
        4096
    } else {
        shared.segment_bytes / 4
    };
    let (mut live, mut freed, mut best) = (0u64, 0u64, None);
    for (s, i) in &sealed {
        live += i.live;
        if live > MERGE_CAP.max(shared.segment_bytes) {
            break;
        }
        freed += i.len.saturating_sub(i.live);
        if freed >= worth {
            best = Some(*s);
        }
    }
    if let Some(last) = best {
        return Some(Target::Rewrite {
            first: oldest,
            last,
            oldest: true,
        });
    }
    let (seg, info) = sealed.iter().max_by_key(|x| gain(x))?;
    (reclaimable(info, *seg == oldest) >= worth).then_some(Target::Rewrite {
        first: *seg,
        last: *seg,
        oldest: *seg == oldest,
    })
}

/// Whether the compactor has work.
pub(super) fn worth_it(shared: &Shared, st: &State) -> bool {
    target(shared, st).is_some()
}

/// The compaction thread: works whenever woken (or every [`IDLE`]) until told to stop.
pub(super) fn run(shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        let pause = match until_done(shared).and_then(|_| index_sealed(shared)) {
            Ok(_) => IDLE,
            Err(e) => {
                tracing::warn!(cause = %e, "log compaction failed; trying again later");
                Duration::from_secs(10)
            }
        };
        let Ok(w) = shared.writer() else { return };
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let _ = shared.wake.wait_timeout(w, pause);
    }
}

/// Compacts until nothing is worth doing; returns the segments rewritten or deleted.
pub(super) fn until_done(shared: &Shared) -> Result<usize, StoreError> {
    let _one = shared
        .compacting
        .lock()
        .map_err(|_| StoreError::Failed("compaction lock poisoned".into()))?;
    let mut done = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        if shared.writer()?.failed.is_some() {
            break;
        }
        let next = target(shared, &*shared.state()?);
        let progressed = match next {
            None => break,
            Some(Target::Delete(seg)) => delete(shared, seg)?,
            Some(Target::Rewrite {
                first,
                last,
                oldest,
            }) => rewrite(shared, first, last, oldest)?,
        };
        if !progressed {
            break;
        }
        done += 1;
    }
    Ok(done)
}

/// Writes an index file for every sealed segment without a valid one; returns how many.
pub(super) fn index_sealed(shared: &Shared) -> Result<usize, StoreError> {
    let _one = shared
        .compacting
        .lock()
        .map_err(|_| StoreError::Failed("compaction lock poisoned".into()))?;
    let todo: Vec<(u32, Arc<dyn VFile>)> = {
        let st = shared.state()?;
        st.segs
            .iter()
            .filter(|(s, i)| **s != st.newest && !i.indexed)
            .filter_map(|(s, _)| Some((*s, st.files.get(s)?.clone())))
            .collect()
    };
    let mut done = 0;
    for (seg, file) in todo {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        // A segment that does not end cleanly is left to be read whole.
        let built = index::build(&*shared.fs, &shared.dir, seg, &*file)?;
        let mut st = shared.state_mut()?;
        if let Some(info) = st.segs.get_mut(&seg) {
            info.indexed = true;
        }
        done += usize::from(built);
    }
    Ok(done)
}

/// Deletes the oldest segment, which holds nothing live.
fn delete(shared: &Shared, seg: u32) -> Result<bool, StoreError> {
    {
        let st = shared.state()?;
        let oldest = st.segs.iter().next();
        if oldest.is_none_or(|(s, i)| *s != seg || i.live > 0) || seg == st.newest {
            return Ok(false);
        }
    }
    let (fs, dir) = (&shared.fs, &shared.dir);
    // The file goes before the segment leaves the state: until the deletion is durable,
    // the next segment's deletes must stay (they may cancel puts in this one).
    let path = seg_path(dir, seg);
    fs.remove_file(&path)
        .and_then(|()| fs.sync_dir(dir))
        .map_err(|e| io("deleting", &path, e))?;
    index::remove(&**fs, dir, seg)?;
    let mut st = shared.state_mut()?;
    st.segs.remove(&seg);
    st.files.remove(&seg);
    shared.count_disk(&st);
    Ok(true)
}

/// Rewrites sealed segments `first..=last` into one file in `first`'s place, with only
/// what must stay.
fn rewrite(shared: &Shared, first: u32, last: u32, oldest: bool) -> Result<bool, StoreError> {
    let (fs, dir) = (&shared.fs, &shared.dir);
    let segs: Vec<(u32, Arc<dyn VFile>)> = {
        let st = shared.state()?;
        if (first..=last).contains(&st.newest) {
            return Ok(false);
        }
        st.segs
            .range(first..=last)
            .filter_map(|(s, _)| Some((*s, st.files.get(s)?.clone())))
            .collect()
    };
    // What stays: live puts (with where they are now), and deletes unless the run starts
    // at the oldest segment. Their bytes are copied as they are, back to back in `kept`.
    let mut kept: Vec<u8> = Vec::new();
    let mut spans: Vec<(usize, Option<Loc>)> = Vec::new();
    for (seg, file) in &segs {
        let seg = *seg;
        let path = seg_path(dir, seg);
        let bytes = file.read_all().map_err(|e| io("reading", &path, e))?;
        let mut placed = Vec::new();
        let scanned = frame::scan(&bytes, false, |p| placed.push(p));
        if let Tail::Damaged(why) = scanned.tail {
            return Err(corrupt(format!(
                "segment {} is damaged at offset {}: {why}",
                path.display(),
                scanned.valid
            )));
        }
        for batch in placed.chunks(BATCH) {
            let st = shared.state()?;
            for p in batch {
                let at = Loc {
                    seg,
                    off: p.off,
                    bytes: p.bytes,
                    frame: p.frame,
                };
                let keep = if p.change.is_delete() {
                    (!oldest).then_some(None)
                } else {
                    st.is_live(&p.change, at).then_some(Some(at))
                };
                if let Some(old) = keep {
                    kept.extend_from_slice(p.raw);
                    spans.push((p.raw.len(), old));
                }
            }
        }
    }

    // The new file, written a frame (about FRAME_BYTES) at a time, then synced.
    let path = seg_path(dir, first);
    let tmp = dir.join(format!("{first:020}{COMPACT_SUFFIX}"));
    if fs.exists(&tmp) {
        fs.remove_file(&tmp).map_err(|e| io("removing", &tmp, e))?;
    }
    let f: Arc<dyn VFile> = Arc::from(fs.create_new(&tmp).map_err(|e| io("creating", &tmp, e))?);
    let write = |buf: &[u8], at: u64| f.write_all_at(buf, at).map_err(|e| io("writing", &tmp, e));
    write(MAGIC, 0)?;
    let mut len = MAGIC.len() as u64;
    let mut buf = Vec::new();
    let mut news: Vec<Loc> = Vec::with_capacity(spans.len());
    let (mut start, mut from) = (0, 0);
    while start < spans.len() {
        let (mut end, mut to) = (start, from);
        while end < spans.len() && (end == start || ((to - from) as u64) < FRAME_BYTES) {
            to += spans[end].0;
            end += 1;
        }
        let mut at = from;
        let raws = spans[start..end].iter().map(|(n, _)| {
            let raw = &kept[at..at + n];
            at += n;
            raw
        });
        buf.clear();
        let offs = frame::encode_raw(raws, &mut buf)?;
        for (off, (n, _)) in offs.into_iter().zip(&spans[start..end]) {
            news.push(Loc {
                seg: first,
                off: len as u32 + off,
                bytes: *n as u32,
                frame: len as u32,
            });
        }
        write(&buf, len)?;
        len += buf.len() as u64;
        (start, from) = (end, to);
    }
    f.sync_all().map_err(|e| io("syncing", &tmp, e))?;
    // The old index describes the file being replaced (and would be ignored if left).
    index::remove(&**fs, dir, first)?;
    fs.rename(&tmp, &path)
        .and_then(|()| fs.sync_dir(dir))
        .map_err(|e| io("replacing", &path, e))?;

    // Records copied and still where they were found move to their new place; the rest
    // were deleted or replaced meanwhile, and their copies are dead.
    {
        // The new file and the locations into it change together.
        let mut st = shared.state_mut()?;
        st.files.insert(first, f);
        let (mut live, mut pinned) = (0u64, MAGIC.len() as u64);
        let mut at = 0;
        for ((n, old), new) in spans.iter().zip(&news) {
            let raw = &kept[at..at + n];
            at += n;
            match old {
                Some(old) => {
                    let (change, _) = change::take_op(raw)
                        .map_err(|e| corrupt(format!("a record copied by compaction: {e}")))?;
                    if st.relocate(&change, *old, *new) {
                        live += u64::from(new.bytes);
                    }
                }
                None => pinned += u64::from(new.bytes),
            }
        }
        st.segs.insert(
            first,
            SegInfo {
                len,
                live,
                pinned,
                indexed: false,
            },
        );
        for (seg, _) in segs.iter().filter(|(s, _)| *s != first) {
            if let Some(info) = st.segs.get_mut(seg) {
                info.live = 0;
            }
        }
    }
    // The rest of the run goes, oldest first, each deletion durable before the next.
    for (seg, _) in segs.iter().filter(|(s, _)| *s != first) {
        let path = seg_path(dir, *seg);
        fs.remove_file(&path)
            .and_then(|()| fs.sync_dir(dir))
            .map_err(|e| io("deleting", &path, e))?;
        index::remove(&**fs, dir, *seg)?;
        let mut st = shared.state_mut()?;
        st.segs.remove(seg);
        st.files.remove(seg);
        shared.count_disk(&st);
    }
    shared.count_disk(&*shared.state()?);
    Ok(true)
}

impl LogStore {
    /// Wakes the compaction thread (for tests that change what it sees).
    #[cfg(test)]
    pub(crate) fn wake_compactor(&self) {
        self.shared.wake.notify_all();
    }
}
