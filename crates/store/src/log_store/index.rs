//! Index files: what a sealed segment changes, without its bodies, so that reopening the
//! log reads a few bytes per record instead of every body.
//!
//! `<number, 20 digits>.idx` beside its segment, written by the background thread once
//! the segment after it is sealed too (and again after compaction rewrites it):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `TLIDX003` |
//! | 8 | the segment's length, u64 little endian |
//! | 12 | the header of its first frame (zeros if none) |
//! | 8 | the offset of its last frame, u64 little endian (0 if none) |
//! | 12 | the header of its last frame (zeros if none) |
//! | 8 | frames in the segment, u64 little endian |
//! | 8 | records that follow, u64 little endian |
//! | 8 | where the directory starts in this file, u64 little endian |
//! | 8 | where the table of names starts in this file, u64 little endian |
//! | n | records: offset in the segment, size, the offset of its frame, and the [`Change`] of each op, postcard |
//! | n | the directory: per queue with entries put here (by name), where in this file each put of one is, and the put of its message if it is here |
//! | n | the table of names: per queue, in the directory's order, where its part starts |
//! | 4 | CRC-32 of everything before it |
//!
//! The directory, all integers u32 little endian: the number of queues, then per queue, in
//! the byte order of their names, the length of its name, the name, the number of its
//! puts, and per put the offset in this file of its record and of its message's record
//! (`u32::MAX` if the message was put in another segment). The table, u32 little endian,
//! makes the directory searchable by bisection. A page-in of one queue ([`read_queue`])
//! finds its part through the table and reads its puts and their messages, each with a
//! positioned read, without reading or decoding anything else: draining one of many
//! queues that share a segment costs what it takes, not the file.
//!
//! An index is a cache, never the only copy of anything: it is not synced, and one that
//! is missing, torn (its CRC), or not of the segment beside it (its length and the
//! headers of its first and last frames, each with the CRC of its payload, must match
//! the segment's) is ignored, and the segment is read whole instead. The CRC is checked
//! when the file is read whole (at open); a page-in reads parts of files this process
//! wrote or checked.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::change::Change;
use super::frame::{Placed, HEADER, MAGIC};
use super::{change, io, read, seg_path};
use crate::fs::{VFile, Vfs};
use crate::StoreError;

const IDX_MAGIC: &[u8; 8] = b"TLIDX003";
const FIXED: usize = 8 + 8 + HEADER + 8 + HEADER + 8 + 8 + 8 + 8;
/// Where the header's fields are.
const LEN_AT: usize = 8;
const FIRST_AT: usize = 16;
const LAST_OFF_AT: usize = 16 + HEADER;
const LAST_AT: usize = 24 + HEADER;
const FRAMES_AT: usize = 24 + 2 * HEADER;
const COUNT_AT: usize = 32 + 2 * HEADER;
const DIR_AT: usize = 40 + 2 * HEADER;
const TABLE_AT: usize = 48 + 2 * HEADER;
/// A first read of a record in [`read_queue`] (most are far smaller).
const RECORD_GUESS: usize = 256;
/// In the directory: a message put in another segment.
const ELSEWHERE: u32 = u32::MAX;

pub(crate) fn idx_path(dir: &Path, seg: u32) -> PathBuf {
    dir.join(format!("{seg:020}.idx"))
}

/// Suffix of an index being written; renamed to `.idx` when whole.
pub(crate) const IDX_NEW_SUFFIX: &str = ".idx.new";

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// What a valid index says of its segment.
pub(crate) struct Summary {
    pub len: u64,
    pub frames: u64,
}

/// A valid index file of a segment as it is now: its bytes (without the CRC) and what
/// its header says.
struct Loaded {
    body: Vec<u8>,
    summary: Summary,
    count: u64,
    dir_at: usize,
}

/// Reads the index of segment `seg` (open as `file`) if there is a valid one for the
/// segment as it is.
fn load(fs: &dyn Vfs, dir: &Path, seg: u32, file: &dyn VFile) -> Option<Loaded> {
    let path = idx_path(dir, seg);
    if !fs.exists(&path) {
        return None;
    }
    let mut body = fs.open(&path).and_then(|f| f.read_all()).ok()?;
    if body.len() < FIXED + 4 || &body[..8] != IDX_MAGIC {
        return None;
    }
    let crc = body.split_off(body.len() - 4);
    if crc32fast::hash(&body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let len = u64_at(&body, LEN_AT);
    let frames = u64_at(&body, FRAMES_AT);
    let count = u64_at(&body, COUNT_AT);
    let dir_at = usize::try_from(u64_at(&body, DIR_AT)).ok()?;
    if !of_segment(&body, file) {
        return None;
    }
    (FIXED..=body.len()).contains(&dir_at).then_some(Loaded {
        body,
        summary: Summary { len, frames },
        count,
        dir_at,
    })
}

/// The record at the start of `b`, and what follows it.
fn take_record(b: &[u8]) -> Option<(Placed<'_>, &[u8])> {
    let ((off, bytes, frame), tail) = postcard::take_from_bytes::<(u32, u32, u32)>(b).ok()?;
    let (change, tail) = change::take_change(tail).ok()?;
    let placed = Placed {
        change,
        raw: &[],
        off,
        bytes,
        frame,
    };
    Some((placed, tail))
}

/// Reads the index of segment `seg` (open as `file`), handing each record to `apply` (as
/// a scan of the segment would, without its bytes), if there is a valid one for the
/// segment as it is; `None` (nothing handed) otherwise.
pub(crate) fn read(
    fs: &dyn Vfs,
    dir: &Path,
    seg: u32,
    file: &dyn VFile,
    apply: impl FnMut(Placed<'_>),
) -> Option<Summary> {
    Some(check(fs, dir, seg, file)?.hand(apply))
}

/// A valid index file, read and decoded once: [`Checked::hand`] cannot fail. The open
/// checks the next segment's while it applies one's ([`check`] on another thread).
pub(crate) struct Checked(Loaded);

/// Reads and checks the index of segment `seg` (open as `file`): `None` if there is no
/// valid one for the segment as it is.
pub(crate) fn check(fs: &dyn Vfs, dir: &Path, seg: u32, file: &dyn VFile) -> Option<Checked> {
    let loaded = load(fs, dir, seg, file)?;
    // Decoded whole before anything is handed on, so that a bad index hands nothing; and
    // decoded again to hand each on, so that memory holds the file, not its records too.
    loaded.records(None)?;
    Some(Checked(loaded))
}

impl Checked {
    /// Hands each record to `apply`.
    pub fn hand(self, mut apply: impl FnMut(Placed<'_>)) -> Summary {
        let _ = self.0.records(Some(&mut apply));
        self.0.summary
    }
}

impl Loaded {
    /// Decodes every record, handing each to `each` if set; `None` if one does not decode
    /// or bytes are left over.
    fn records(&self, mut each: Option<&mut dyn FnMut(Placed<'_>)>) -> Option<()> {
        let mut rest = &self.body[FIXED..self.dir_at];
        for _ in 0..self.count {
            let (placed, tail) = take_record(rest)?;
            if let Some(each) = each.as_mut() {
                each(placed);
            }
            rest = tail;
        }
        rest.is_empty().then_some(())
    }
}

/// Reads what the index of segment `seg` (open as `file`) lists of `queue`: each put of an
/// entry of it, in log order, each after the put of its message when that is in this
/// segment too. `None` (nothing handed) if there is no index for the segment as it is, or
/// it cannot be read. Positioned reads of its header, the table and the directory's part
/// for `queue` (found by bisection), and of each record listed there.
pub(crate) fn read_queue(
    fs: &dyn Vfs,
    dir: &Path,
    seg: u32,
    file: &dyn VFile,
    queue: &str,
    mut apply: impl FnMut(Placed<'_>),
) -> Option<()> {
    let idx = fs.open(&idx_path(dir, seg)).ok()?;
    let size = idx.len().ok()?;
    // Never past the file, whatever a damaged one says.
    let read = |at: u64, n: usize| -> Option<Vec<u8>> {
        if at.checked_add(n as u64)? > size {
            return None;
        }
        let mut buf = vec![0; n];
        idx.read_exact_at(&mut buf, at).is_ok().then_some(buf)
    };
    let u32_at =
        |at: u64| -> Option<u32> { Some(u32::from_le_bytes(read(at, 4)?.try_into().ok()?)) };
    let head = read(0, FIXED)?;
    if &head[..8] != IDX_MAGIC || !of_segment(&head, file) {
        return None;
    }
    let (dir_at, table_at) = (u64_at(&head, DIR_AT), u64_at(&head, TABLE_AT));
    // The part of queue `i` in the directory: where it starts, and its name.
    let part = |i: u64| -> Option<(u64, Vec<u8>)> {
        let at = u64::from(u32_at(table_at.checked_add(4 * i)?)?);
        let name_len = u32_at(at)? as usize;
        Some((at, read(at + 4, name_len)?))
    };
    let (mut lo, mut hi) = (0u64, u64::from(u32_at(dir_at)?));
    let at = loop {
        if lo >= hi {
            return Some(());
        }
        let mid = lo + (hi - lo) / 2;
        let (at, name) = part(mid)?;
        match name.as_slice().cmp(queue.as_bytes()) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => break at + 4 + name.len() as u64,
        }
    };
    let n = u32_at(at)? as usize;
    let puts = read(at + 4, 8 * n)?;
    let put = |i: usize, half: usize| -> u32 {
        let b = &puts[8 * i + 4 * half..8 * i + 4 * half + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    };
    let ats: Vec<u64> = (0..n)
        .flat_map(|i| [put(i, 1), put(i, 0)])
        .filter(|&at| at != ELSEWHERE)
        .map(u64::from)
        .collect();
    // The records lie close together (a queue with most of the segment's entries): one
    // read of the stretch holding them; else (one of many queues) a read each.
    let (lo, hi) = (ats.iter().min().copied(), ats.iter().max().copied());
    let stretch = match (lo, hi) {
        (Some(lo), Some(hi)) if hi - lo <= 8 * (RECORD_GUESS * ats.len()) as u64 => {
            let left = size.checked_sub(lo)?;
            Some((
                lo,
                read(lo, (hi - lo + 16 * RECORD_GUESS as u64).min(left) as usize)?,
            ))
        }
        _ => None,
    };
    // Each record read whole (from the stretch, or a first guess at its size, then all
    // that can be), all checked before anything is handed on.
    let mut raws: Vec<Vec<u8>> = Vec::new();
    let mut places = Vec::with_capacity(ats.len());
    for &at in &ats {
        if let Some((lo, bytes)) = &stretch {
            let off = usize::try_from(at - lo).ok()?;
            if bytes.get(off..).and_then(take_record).is_some() {
                places.push((None, off));
                continue;
            }
        }
        let left = usize::try_from(size.checked_sub(at)?).ok()?;
        let mut raw = Vec::new();
        for guess in [RECORD_GUESS, 16 * RECORD_GUESS, usize::MAX] {
            raw = read(at, guess.min(left))?;
            if take_record(&raw).is_some() {
                break;
            }
        }
        places.push((Some(raws.len()), 0));
        raws.push(raw);
    }
    let mut found = Vec::with_capacity(places.len());
    for (raw, off) in places {
        let bytes = match raw {
            Some(i) => &raws[i][..],
            None => &stretch.as_ref()?.1[off..],
        };
        found.push(take_record(bytes)?.0);
    }
    found.into_iter().for_each(&mut apply);
    Some(())
}

/// Whether the index whose header is `head` is of the segment `file` as it is now (its
/// length and the headers of its first and last frames: compaction rewrites a segment in
/// place).
fn of_segment(head: &[u8], file: &dyn VFile) -> bool {
    let frames = u64_at(head, FRAMES_AT);
    let mut buf = [0; HEADER];
    let mut at =
        |off: u64, want: &[u8]| file.read_exact_at(&mut buf, off).is_ok() && buf.as_slice() == want;
    file.len().ok() == Some(u64_at(head, LEN_AT))
        && (frames == 0
            || (at(MAGIC.len() as u64, &head[FIRST_AT..FIRST_AT + HEADER])
                && at(u64_at(head, LAST_OFF_AT), &head[LAST_AT..LAST_AT + HEADER])))
}

/// Writes the index of sealed segment `seg` (open as `file`), read a frame at a time
/// (segments that compaction merged can be large). Not synced: see the module's opening.
/// Does nothing if the segment is not whole frames of this version end to end.
pub(crate) fn build(
    fs: &dyn Vfs,
    dir: &Path,
    seg: u32,
    file: &dyn VFile,
) -> Result<bool, StoreError> {
    let seg_file = seg_path(dir, seg);
    let len = file.len().map_err(|e| io("reading", &seg_file, e))?;
    let mut magic = [0; MAGIC.len()];
    if file.read_exact_at(&mut magic, 0).is_err() || &magic != MAGIC {
        return Ok(false);
    }
    let mut out = Vec::with_capacity(FIXED + 4 + (len / 32) as usize);
    out.extend_from_slice(IDX_MAGIC);
    out.resize(FIXED, 0);
    let (mut count, mut frames) = (0u64, 0u64);
    let (mut first, mut last) = ([0; HEADER], [0; HEADER]);
    let mut last_at = 0u64;
    // Where each message's put is in the file, and each queue's puts with their messages'.
    let mut messages: HashMap<u64, u32> = HashMap::new();
    let mut queues: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
    let read = read::frames(
        file,
        MAGIC.len() as u64,
        len,
        &seg_file,
        |at, header, payload| {
            if frames == 0 {
                first = *header;
            }
            (last, last_at) = (*header, at);
            for p in read::placed(at, payload, &seg_file)? {
                let here = u32::try_from(out.len())
                    .map_err(|_| StoreError::Engine("an index past 4 GiB".into()))?;
                match p.change {
                    Change::PutMessage { id, .. } => {
                        messages.insert(id, here);
                    }
                    Change::PutEntry { queue, entry, .. } => {
                        let msg = messages.get(&entry.msg_id).copied().unwrap_or(ELSEWHERE);
                        match queues.get_mut(queue) {
                            Some(puts) => puts.push((here, msg)),
                            None => {
                                queues.insert(queue.to_owned(), vec![(here, msg)]);
                            }
                        }
                    }
                    _ => {}
                }
                let record = ((p.off, p.bytes, p.frame), &p.change);
                out = postcard::to_extend(&record, std::mem::take(&mut out))
                    .map_err(|e| StoreError::Engine(format!("encoding an index: {e}")))?;
                count += 1;
            }
            frames += 1;
            Ok(())
        },
    );
    if read.is_err() {
        return Ok(false);
    }
    let dir_at = out.len() as u64;
    out.extend_from_slice(&(queues.len() as u32).to_le_bytes());
    let mut parts = Vec::with_capacity(queues.len());
    for (name, puts) in &queues {
        parts.push(out.len() as u32);
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(puts.len() as u32).to_le_bytes());
        for (entry, msg) in puts {
            out.extend_from_slice(&entry.to_le_bytes());
            out.extend_from_slice(&msg.to_le_bytes());
        }
    }
    let table_at = out.len() as u64;
    for at in parts {
        out.extend_from_slice(&at.to_le_bytes());
    }
    out[LEN_AT..LEN_AT + 8].copy_from_slice(&len.to_le_bytes());
    out[FIRST_AT..FIRST_AT + HEADER].copy_from_slice(&first);
    out[LAST_OFF_AT..LAST_OFF_AT + 8].copy_from_slice(&last_at.to_le_bytes());
    out[LAST_AT..LAST_AT + HEADER].copy_from_slice(&last);
    out[FRAMES_AT..FRAMES_AT + 8].copy_from_slice(&frames.to_le_bytes());
    out[COUNT_AT..COUNT_AT + 8].copy_from_slice(&count.to_le_bytes());
    out[DIR_AT..DIR_AT + 8].copy_from_slice(&dir_at.to_le_bytes());
    out[TABLE_AT..FIXED].copy_from_slice(&table_at.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let path = idx_path(dir, seg);
    let tmp = dir.join(format!("{seg:020}{IDX_NEW_SUFFIX}"));
    if fs.exists(&tmp) {
        fs.remove_file(&tmp).map_err(|e| io("removing", &tmp, e))?;
    }
    let f = fs.create_new(&tmp).map_err(|e| io("creating", &tmp, e))?;
    f.write_all_at(&out, 0)
        .and_then(|()| fs.rename(&tmp, &path))
        .map_err(|e| io("writing", &path, e))?;
    Ok(true)
}

/// Removes the index of `seg`, if there is one.
pub(crate) fn remove(fs: &dyn Vfs, dir: &Path, seg: u32) -> Result<(), StoreError> {
    let path = idx_path(dir, seg);
    if fs.exists(&path) {
        fs.remove_file(&path)
            .map_err(|e| io("removing", &path, e))?;
    }
    Ok(())
}
