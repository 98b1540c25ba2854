//! Index files: what a sealed segment changes, without its bodies, so that reopening the
//! log reads a few bytes per record instead of every body.
//!
//! `<number, 20 digits>.idx` beside its segment, written by the background thread once
//! the segment after it is sealed too (and again after compaction rewrites it):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `TLIDX001` |
//! | 8 | the segment's length, u64 little endian |
//! | 12 | the header of its first frame (zeros if none) |
//! | 8 | the offset of its last frame, u64 little endian (0 if none) |
//! | 12 | the header of its last frame (zeros if none) |
//! | 8 | frames in the segment, u64 little endian |
//! | 8 | records that follow, u64 little endian |
//! | 8 | where the directory starts in this file, u64 little endian |
//! | n | records: offset in the segment, size, the offset of its frame, and the [`Change`] of each op, postcard |
//! | n | the directory: per queue with entries put here (by name), where in this file each put of one is, and the put of its message if it is here |
//! | 4 | CRC-32 of everything before it |
//!
//! The directory, all integers u32 little endian: the number of queues, then per queue the
//! length of its name, the name, the number of its puts, and per put the offset in this
//! file of its record and of its message's record (`u32::MAX` if the message was put in
//! another segment). A page-in of one queue ([`read_queue`]) reads its puts and their
//! messages there without decoding anything else.
//!
//! An index is a cache, never the only copy of anything: it is not synced, and one that
//! is missing, torn (its CRC), or not of the segment beside it (its length and the
//! headers of its first and last frames, each with the CRC of its payload, must match
//! the segment's) is ignored, and the segment is read whole instead.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::change::Change;
use super::frame::{Placed, HEADER, MAGIC};
use super::{change, io, read, seg_path};
use crate::fs::{VFile, Vfs};
use crate::StoreError;

const IDX_MAGIC: &[u8; 8] = b"TLIDX002";
const FIXED: usize = 8 + 8 + HEADER + 8 + HEADER + 8 + 8 + 8;
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
    let len = u64_at(&body, 8);
    let first = &body[16..16 + HEADER];
    let last_off = u64_at(&body, 16 + HEADER);
    let last = &body[24 + HEADER..24 + 2 * HEADER];
    let frames = u64_at(&body, 24 + 2 * HEADER);
    let count = u64_at(&body, 32 + 2 * HEADER);
    let dir_at = usize::try_from(u64_at(&body, 40 + 2 * HEADER)).ok()?;
    // Of this segment as it is now (compaction rewrites a segment in place).
    if file.len().ok()? != len || (frames > 0 && !headers_match(file, first, last_off, last)) {
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

/// The record at `at` in an index file's bytes.
fn record_at(body: &[u8], at: usize) -> Option<Placed<'_>> {
    take_record(body.get(at..)?).map(|(p, _)| p)
}

/// Reads the index of segment `seg` (open as `file`), handing each record to `apply` (as
/// a scan of the segment would, without its bytes), if there is a valid one for the
/// segment as it is; `None` (nothing handed) otherwise.
pub(crate) fn read(
    fs: &dyn Vfs,
    dir: &Path,
    seg: u32,
    file: &dyn VFile,
    mut apply: impl FnMut(Placed<'_>),
) -> Option<Summary> {
    let Loaded {
        body,
        summary,
        count,
        dir_at,
    } = load(fs, dir, seg, file)?;
    // Decoded whole before anything is handed on, so that a bad index hands nothing; and
    // decoded again to hand each on, so that memory holds the file, not its records too.
    let records = |mut each: Option<&mut dyn FnMut(Placed<'_>)>| -> Option<()> {
        let mut rest = &body[FIXED..dir_at];
        for _ in 0..count {
            let (placed, tail) = take_record(rest)?;
            if let Some(each) = each.as_mut() {
                each(placed);
            }
            rest = tail;
        }
        rest.is_empty().then_some(())
    };
    records(None)?;
    records(Some(&mut apply));
    Some(summary)
}

/// Reads what the index of segment `seg` (open as `file`) lists of `queue`: each put of an
/// entry of it, in log order, each after the put of its message when that is in this
/// segment too. `None` (nothing handed) if there is no valid index for the segment as it
/// is, or it cannot be read.
pub(crate) fn read_queue(
    fs: &dyn Vfs,
    dir: &Path,
    seg: u32,
    file: &dyn VFile,
    queue: &str,
    mut apply: impl FnMut(Placed<'_>),
) -> Option<()> {
    let Loaded { body, dir_at, .. } = load(fs, dir, seg, file)?;
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?))
    };
    let queues = u32_at(dir_at)?;
    let mut at = dir_at + 4;
    for _ in 0..queues {
        let name_len = u32_at(at)? as usize;
        let name = body.get(at + 4..at + 4 + name_len)?;
        let n = u32_at(at + 4 + name_len)? as usize;
        let puts = at + 8 + name_len;
        if name != queue.as_bytes() {
            at = puts + 8 * n;
            continue;
        }
        // Checked whole before anything is handed on.
        let mut found = Vec::with_capacity(2 * n);
        for i in 0..n {
            let (entry, msg) = (u32_at(puts + 8 * i)?, u32_at(puts + 8 * i + 4)?);
            if msg != ELSEWHERE {
                found.push(record_at(&body, msg as usize)?);
            }
            found.push(record_at(&body, entry as usize)?);
        }
        found.into_iter().for_each(&mut apply);
        return Some(());
    }
    Some(())
}

fn headers_match(file: &dyn VFile, first: &[u8], last_off: u64, last: &[u8]) -> bool {
    let mut buf = [0; HEADER];
    let mut at =
        |off: u64, want: &[u8]| file.read_exact_at(&mut buf, off).is_ok() && buf.as_slice() == want;
    at(MAGIC.len() as u64, first) && at(last_off, last)
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
    for (name, puts) in &queues {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(puts.len() as u32).to_le_bytes());
        for (entry, msg) in puts {
            out.extend_from_slice(&entry.to_le_bytes());
            out.extend_from_slice(&msg.to_le_bytes());
        }
    }
    out[8..16].copy_from_slice(&len.to_le_bytes());
    out[16..16 + HEADER].copy_from_slice(&first);
    out[16 + HEADER..24 + HEADER].copy_from_slice(&last_at.to_le_bytes());
    out[24 + HEADER..24 + 2 * HEADER].copy_from_slice(&last);
    out[24 + 2 * HEADER..32 + 2 * HEADER].copy_from_slice(&frames.to_le_bytes());
    out[32 + 2 * HEADER..40 + 2 * HEADER].copy_from_slice(&count.to_le_bytes());
    out[40 + 2 * HEADER..FIXED].copy_from_slice(&dir_at.to_le_bytes());
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
