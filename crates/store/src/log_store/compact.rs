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
//! their output is capped at [`MERGE_CAP`] live bytes so that no file grows without bound
//! (and at [`super::LogOptions::segment_records`] records, so that what the rewrite holds per
//! record it moves is bounded too).
//! When the oldest segments hold more live data than that (a consumer lagging far
//! behind), single segments behind them are rewritten in place, keeping their deletes.
//!
//! The compactor reads the sealed segment's file, not the live state, and takes the
//! state's lock only briefly: to check liveness a frame at a time (a batch at a time in a
//! segment of the first format), and to move the records it copied to their new offsets
//! (those still where it found them). A merge does not read a segment with nothing live.

use super::frame::Placed;
use super::index;
use super::state::{Key, State};
use super::{corrupt, io, read, seg_path, LogStore, Shared, COMPACT_SUFFIX, IDLE};
use crate::fs::VFile;
use crate::log_store::frame::{self, Tail, MAGIC};
use crate::log_store::state::{Loc, SegInfo};
use crate::StoreError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Liveness checks per hold of the state's lock, in a segment of the first format (read
/// whole: its frames are not checked alone).
const BATCH: usize = 4096;
/// Ops per frame of a rewritten segment, by encoded size.
const FRAME_BYTES: u64 = 1 << 20;
/// Most live bytes a merge writes into one file (so that no segment is much larger than
/// the default segment size: opening reads a segment without an index whole).
pub(super) const MERGE_CAP: u64 = 64 << 20;

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
/// oldest segments (the longest run whose live bytes fit [`MERGE_CAP`], and whose records
/// fit the segment's cap) or, if that
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
    let (mut live, mut records, mut freed, mut best) = (0u64, 0u64, 0u64, None);
    for (s, i) in &sealed {
        live += i.live;
        records += i.records;
        if live > MERGE_CAP.max(shared.segment_bytes) || records > shared.segment_records {
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

/// The file a rewrite writes, a frame at a time.
struct Output<'a> {
    file: &'a dyn VFile,
    tmp: &'a std::path::Path,
    seg: u32,
    /// Where the next frame goes.
    len: u64,
    /// The records of the next frame, back to back, their sizes, and which record each
    /// is and where it was (`None` for a delete kept).
    raws: Vec<u8>,
    sizes: Vec<usize>,
    olds: Vec<Option<(Key, Loc)>>,
    buf: Vec<u8>,
    /// Per put written: which and where it was, and where it is.
    moves: Vec<((Key, Loc), Loc)>,
    /// Bytes of deletes written.
    deletes: u64,
    /// Records written.
    records: u64,
}

impl Output<'_> {
    /// Takes what of `placed` (records of segment `seg`) must stay: live puts, and
    /// deletes unless the run starts at the `oldest` segment.
    fn copy(&mut self, st: &State, seg: u32, placed: &[Placed<'_>], oldest: bool) {
        for p in placed {
            let at = Loc {
                seg,
                off: p.off,
                bytes: p.bytes,
                frame: p.frame,
            };
            let keep = if p.change.is_delete() {
                (!oldest).then_some(None)
            } else if st.is_live(&p.change, at) {
                st.key(&p.change).map(|k| Some((k, at)))
            } else {
                None
            };
            if let Some(old) = keep {
                self.raws.extend_from_slice(p.raw);
                self.sizes.push(p.raw.len());
                self.olds.push(old);
            }
        }
    }

    /// Writes a frame once enough is waiting.
    fn flush_full(&mut self) -> Result<(), StoreError> {
        if self.raws.len() as u64 >= FRAME_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.sizes.is_empty() {
            return Ok(());
        }
        let mut at = 0;
        let raws = self.sizes.iter().map(|n| {
            let raw = &self.raws[at..at + n];
            at += n;
            raw
        });
        self.buf.clear();
        let offs = frame::encode_raw(raws, &mut self.buf)?;
        let frame = self.len as u32;
        for ((off, n), old) in offs.into_iter().zip(&self.sizes).zip(self.olds.drain(..)) {
            let new = Loc {
                seg: self.seg,
                off: frame + off,
                bytes: *n as u32,
                frame,
            };
            match old {
                Some(old) => self.moves.push((old, new)),
                None => self.deletes += new.bytes as u64,
            }
        }
        self.file
            .write_all_at(&self.buf, self.len)
            .map_err(|e| io("writing", self.tmp, e))?;
        self.len += self.buf.len() as u64;
        self.records += self.sizes.len() as u64;
        self.raws.clear();
        self.sizes.clear();
        Ok(())
    }
}

/// Whether the compactor has work.
pub(super) fn worth_it(shared: &Shared, st: &State) -> bool {
    target(shared, st).is_some()
}

/// The compaction thread: works whenever woken (or every [`IDLE`]) until told to stop.
pub(super) fn run(shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        let pause = match until_done(shared).and_then(|_| index_sealed(shared, true)) {
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
    let mut done = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        // Held for one step at a time: a page-in that keeps meeting compaction waits for
        // one step, not for all of them.
        let _one = shared.compacting()?;
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
/// With `not_latest`, the segment sealed last waits for the next to be sealed: when
/// consumers keep up, it holds nothing live by then and goes without ever being read back
/// for an index (which would read every body in it again).
pub(super) fn index_sealed(shared: &Shared, not_latest: bool) -> Result<usize, StoreError> {
    let todo: Vec<u32> = {
        let st = shared.state()?;
        let latest = st.segs.range(..st.newest).next_back().map(|(s, _)| *s);
        st.segs
            .iter()
            .filter(|(s, i)| **s != st.newest && !i.indexed)
            .filter(|(s, _)| !(not_latest && Some(**s) == latest))
            .map(|(s, _)| *s)
            .collect()
    };
    let mut done = 0;
    for seg in todo {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        // One segment a hold, its file as it is now (compaction may have replaced it).
        let _one = shared.compacting()?;
        let Some(file) = shared.state()?.files.get(&seg).cloned() else {
            continue;
        };
        // A segment that does not end cleanly is left to be read whole.
        let built = index::build(&*shared.fs, &shared.dir, seg, &*file)?;
        let mut st = shared.state_mut()?;
        if let Some(info) = st.segs.get_mut(&seg) {
            info.indexed = true;
        }
        for s in st.spilled.values_mut() {
            s.indexed(seg);
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
    st.replaced(seg, seg);
    shared.count_disk(&st);
    Ok(true)
}

/// Rewrites sealed segments `first..=last` into one file in `first`'s place, with only
/// what must stay.
fn rewrite(shared: &Shared, first: u32, last: u32, oldest: bool) -> Result<bool, StoreError> {
    let (fs, dir) = (&shared.fs, &shared.dir);
    // With whether each holds anything live: a sealed segment gets nothing new, so one
    // that holds nothing live now never will, and a merge (which drops deletes) need not
    // read it at all.
    let segs: Vec<(u32, Arc<dyn VFile>, bool)> = {
        let st = shared.state()?;
        if (first..=last).contains(&st.newest) {
            return Ok(false);
        }
        st.segs
            .range(first..=last)
            .filter_map(|(s, i)| Some((*s, st.files.get(s)?.clone(), i.live > 0)))
            .collect()
    };
    // The new file, written a frame (about FRAME_BYTES) at a time as the run is read:
    // what stays is live puts (with where they are now) and, unless the run starts at the
    // oldest segment, deletes. Their bytes are copied as they are. Memory holds the
    // read-ahead of the segment being read (a segment of the first format whole), one
    // frame being written, and per put kept which it is and where it was and is.
    let path = seg_path(dir, first);
    let tmp = dir.join(format!("{first:020}{COMPACT_SUFFIX}"));
    if fs.exists(&tmp) {
        fs.remove_file(&tmp).map_err(|e| io("removing", &tmp, e))?;
    }
    let f: Arc<dyn VFile> = Arc::from(fs.create_new(&tmp).map_err(|e| io("creating", &tmp, e))?);
    let mut out = Output {
        file: &*f,
        tmp: &tmp,
        seg: first,
        len: MAGIC.len() as u64,
        raws: Vec::new(),
        sizes: Vec::new(),
        olds: Vec::new(),
        buf: Vec::new(),
        moves: Vec::new(),
        deletes: 0,
        records: 0,
    };
    out.file
        .write_all_at(MAGIC, 0)
        .map_err(|e| io("writing", &tmp, e))?;
    for (seg, file, live) in &segs {
        if oldest && !live {
            continue;
        }
        let seg = *seg;
        let seg_file = seg_path(dir, seg);
        let len = file.len().map_err(|e| io("reading", &seg_file, e))?;
        let mut magic = [0; MAGIC.len()];
        file.read_exact_at(&mut magic, 0)
            .map_err(|e| io("reading", &seg_file, e))?;
        if &magic == MAGIC {
            // A frame at a time: memory holds one frame read and one being written.
            read::records(&**file, MAGIC.len() as u64, len, &seg_file, |frame| {
                out.copy(&*shared.state()?, seg, frame, oldest);
                out.flush_full()
            })?;
            continue;
        }
        // A segment of the first format, read whole (its frames are not checked alone).
        let bytes = file.read_all().map_err(|e| io("reading", &seg_file, e))?;
        let mut placed = Vec::new();
        let scanned = frame::scan(&bytes, false, |p| placed.push(p));
        if let Tail::Damaged(why) = scanned.tail {
            return Err(corrupt(format!(
                "segment {} is damaged at offset {}: {why}",
                seg_file.display(),
                scanned.valid
            )));
        }
        for batch in placed.chunks(BATCH) {
            out.copy(&*shared.state()?, seg, batch, oldest);
            out.flush_full()?;
        }
    }
    out.flush()?;
    let Output {
        len,
        moves,
        deletes,
        records,
        ..
    } = out;
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
        st.replaced(first, last);
        let (mut live, pinned) = (0u64, MAGIC.len() as u64 + deletes);
        for ((key, old), new) in &moves {
            if st.relocate(key, *old, *new) {
                live += u64::from(new.bytes);
            }
        }
        st.segs.insert(
            first,
            SegInfo {
                len,
                live,
                records,
                pinned,
                indexed: false,
            },
        );
        for (seg, ..) in segs.iter().filter(|(s, ..)| *s != first) {
            if let Some(info) = st.segs.get_mut(seg) {
                info.live = 0;
            }
        }
    }
    // The rest of the run goes, oldest first, each deletion durable before the next.
    for (seg, ..) in segs.iter().filter(|(s, ..)| *s != first) {
        let path = seg_path(dir, *seg);
        fs.remove_file(&path)
            .and_then(|()| fs.sync_dir(dir))
            .map_err(|e| io("deleting", &path, e))?;
        index::remove(&**fs, dir, *seg)?;
        let mut st = shared.state_mut()?;
        st.segs.remove(seg);
        st.files.remove(seg);
        st.replaced(*seg, *seg);
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
