//! Reading a message back from the log: the first read in a frame reads the whole frame
//! and checks its CRCs (the open read the index files, not the bodies, so this is where
//! damage to a body shows). A frame checked is remembered, and later reads in it read the
//! record alone: a group commit of large messages is one large frame, and reading it
//! whole for each of its messages would multiply the I/O by their number. Frames of up
//! to [`KEEP_ONE`] are also kept for the next reads: a consumer draining a backlog reads
//! on through the same frames, so most of its reads cost no I/O.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::change;
use super::frame::{self, Placed, Version, HEADER};
use super::state::{Loc, State, NO_FRAME};
use super::{corrupt, io, seg_path};
use crate::fs::VFile;
use crate::{Op, StoreError, StoredMessage};

/// Frames kept, at most this many...
const KEEP_FRAMES: usize = 16;
/// ...and this many bytes of them...
const KEEP_BYTES: usize = 16 << 20;
/// ...each at most this large.
const KEEP_ONE: usize = 1 << 20;
/// Frames remembered as checked, at most (then forgotten, to be checked again).
const CHECKED_MAX: usize = 1 << 20;

struct Kept {
    /// The file it was read from: compaction replaces a segment's file in place.
    file: Arc<dyn VFile>,
    frame: u32,
    payload: Arc<[u8]>,
}

/// The frames read last, and those checked.
#[derive(Default)]
pub(crate) struct Frames {
    kept: Mutex<VecDeque<Kept>>,
    /// Per segment, the file they are in and the frames of it checked.
    checked: Mutex<Checked>,
}

#[derive(Default)]
struct Checked {
    segs: HashMap<u32, (Arc<dyn VFile>, HashSet<u32>)>,
    count: usize,
}

impl Frames {
    fn is_checked(&self, seg: u32, file: &Arc<dyn VFile>, frame: u32) -> bool {
        let Ok(c) = self.checked.lock() else {
            return false;
        };
        c.segs
            .get(&seg)
            .is_some_and(|(f, set)| Arc::ptr_eq(f, file) && set.contains(&frame))
    }

    fn checked(&self, seg: u32, file: &Arc<dyn VFile>, frame: u32) {
        let Ok(mut c) = self.checked.lock() else {
            return;
        };
        if c.count >= CHECKED_MAX {
            *c = Checked::default();
        }
        let (f, set) = c
            .segs
            .entry(seg)
            .or_insert_with(|| (file.clone(), HashSet::new()));
        if !Arc::ptr_eq(f, file) {
            // Compaction replaced the segment: what was checked was another file.
            *f = file.clone();
            set.clear();
        }
        if set.insert(frame) {
            c.count += 1;
        }
    }

    fn find(&self, file: &Arc<dyn VFile>, frame: u32) -> Option<Arc<[u8]>> {
        let kept = self.kept.lock().ok()?;
        kept.iter()
            .rev()
            .find(|k| k.frame == frame && Arc::ptr_eq(&k.file, file))
            .map(|k| k.payload.clone())
    }

    fn keep(&self, file: Arc<dyn VFile>, frame: u32, payload: Arc<[u8]>) {
        if payload.len() > KEEP_ONE {
            return;
        }
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        kept.push_back(Kept {
            file,
            frame,
            payload,
        });
        let mut bytes: usize = kept.iter().map(|k| k.payload.len()).sum();
        while kept.len() > KEEP_FRAMES || (kept.len() > 1 && bytes > KEEP_BYTES) {
            if let Some(k) = kept.pop_front() {
                bytes -= k.payload.len();
            }
        }
    }
}

/// The header and payload of the frame at `frame` in `file`, checked.
pub(crate) fn frame(
    file: &dyn VFile,
    frame: u32,
    path: &Path,
) -> Result<([u8; HEADER], Vec<u8>), StoreError> {
    let mut header = [0; HEADER];
    file.read_exact_at(&mut header, u64::from(frame))
        .map_err(|e| io("reading", path, e))?;
    let bad = |what: &str| {
        corrupt(format!(
            "segment {} is damaged at offset {frame}: {what}. `trunkline store check` shows \
             the damage",
            path.display()
        ))
    };
    let Some(len) = frame::payload_len(&header, Version::V2) else {
        return Err(bad("a frame header does not match its CRC"));
    };
    let mut payload = vec![0; len];
    file.read_exact_at(&mut payload, u64::from(frame) + HEADER as u64)
        .map_err(|e| io("reading", path, e))?;
    if !frame::payload_matches(&header, &payload) {
        return Err(bad("a frame does not match its CRC"));
    }
    Ok((header, payload))
}

/// Bytes a sequential read of frames fetches at a time.
const READ_AHEAD: usize = 1 << 20;

/// Reads the frames of `file` from offset `from` to `to` (both frame boundaries) in order,
/// [`READ_AHEAD`] bytes at a time (more for a larger frame), each checked, and hands each
/// frame's offset, header and payload to `each`. Memory holds one read-ahead buffer.
pub(crate) fn frames(
    file: &dyn VFile,
    from: u64,
    to: u64,
    path: &Path,
    mut each: impl FnMut(u64, &[u8; HEADER], &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut buf: Vec<u8> = Vec::new();
    // `buf` holds the file from `base` on; `at` is the next frame.
    let (mut base, mut at) = (from, from);
    // Makes `buf` hold `[at, at + n)`, reading ahead as far as `to`.
    let fill = |buf: &mut Vec<u8>, base: &mut u64, at: u64, n: usize| -> Result<(), StoreError> {
        let have = (*base + buf.len() as u64).saturating_sub(at) as usize;
        if at >= *base && have >= n {
            return Ok(());
        }
        let keep = if at >= *base { have } else { 0 };
        let start = buf.len() - keep;
        buf.drain(..start);
        *base = at;
        let want = n.max(READ_AHEAD).min((to - at) as usize).max(n);
        let old = buf.len();
        buf.resize(want, 0);
        file.read_exact_at(&mut buf[old..], at + old as u64)
            .map_err(|e| io("reading", path, e))
    };
    while at < to {
        let bad = |what: &str| {
            corrupt(format!(
                "segment {} is damaged at offset {at}: {what}. `trunkline store check` shows \
                 the damage",
                path.display()
            ))
        };
        if to - at < HEADER as u64 {
            return Err(bad("a frame header runs past the end"));
        }
        fill(&mut buf, &mut base, at, HEADER)?;
        let off = (at - base) as usize;
        let mut header = [0; HEADER];
        header.copy_from_slice(&buf[off..off + HEADER]);
        let Some(len) = frame::payload_len(&header, Version::V2) else {
            return Err(bad("a frame header does not match its CRC"));
        };
        if (to - at - HEADER as u64) < len as u64 {
            return Err(bad("a frame runs past the end"));
        }
        fill(&mut buf, &mut base, at, HEADER + len)?;
        let off = (at - base) as usize;
        let payload = &buf[off + HEADER..off + HEADER + len];
        if !frame::payload_matches(&header, payload) {
            return Err(bad("a frame does not match its CRC"));
        }
        each(at, &header, payload)?;
        at += (HEADER + len) as u64;
    }
    Ok(())
}

/// The records of one frame's `payload` (the frame at `at`), decoded.
pub(crate) fn placed<'a>(
    at: u64,
    payload: &'a [u8],
    path: &Path,
) -> Result<Vec<Placed<'a>>, StoreError> {
    let start = at + HEADER as u64;
    let mut rest = payload;
    let mut placed = Vec::new();
    while !rest.is_empty() {
        let (change, tail) = change::take_op(rest).map_err(|e| {
            corrupt(format!(
                "segment {} holds a record it cannot decode in the frame at {at}: {e}",
                path.display()
            ))
        })?;
        let off = start + (payload.len() - rest.len()) as u64;
        let raw = &rest[..rest.len() - tail.len()];
        placed.push(Placed {
            change,
            raw,
            off: off as u32,
            bytes: raw.len() as u32,
            frame: at as u32,
        });
        rest = tail;
    }
    Ok(placed)
}

/// Reads the frames of `file` from `from` to `to` as [`frames`] does and hands each
/// frame's records to `each` together (so that a caller can take a lock once a frame).
pub(crate) fn records(
    file: &dyn VFile,
    from: u64,
    to: u64,
    path: &Path,
    mut each: impl FnMut(&[Placed<'_>]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    frames(file, from, to, path, |at, _, payload| {
        each(&placed(at, payload, path)?)
    })
}

/// Reads and decodes the message `id` at `loc`.
pub(crate) fn message(
    dir: &Path,
    st: &State,
    frames: &Frames,
    id: u64,
    loc: Loc,
) -> Result<Arc<StoredMessage>, StoreError> {
    let path = seg_path(dir, loc.seg);
    let file = st.files.get(&loc.seg).ok_or_else(|| {
        corrupt(format!(
            "message {id} is in segment {}, which is not open",
            loc.seg
        ))
    })?;
    match op_at(frames, file, loc, &path)? {
        Op::PutMessage { id: got, msg } if got == id => Ok(msg),
        _ => Err(corrupt(format!(
            "the log does not hold message {id} where it should"
        ))),
    }
}

/// Reads and decodes the record at `loc` in `file` (at `path`): the first read in a frame
/// reads the whole frame and checks it; later ones read the record alone.
pub(crate) fn op_at(
    frames: &Frames,
    file: &Arc<dyn VFile>,
    loc: Loc,
    path: &Path,
) -> Result<Op, StoreError> {
    let misplaced = || {
        corrupt(format!(
            "segment {} holds no record at offset {} ({} bytes)",
            path.display(),
            loc.off,
            loc.bytes
        ))
    };
    let kept = match loc.frame {
        NO_FRAME => None,
        at => frames.find(file, at),
    };
    let decoded = if kept.is_none()
        && (loc.frame == NO_FRAME || frames.is_checked(loc.seg, file, loc.frame))
    {
        // The record alone: in a frame checked before (or in a segment of the first
        // format, whose frames are not checked alone).
        let mut buf = vec![0; loc.bytes as usize];
        file.read_exact_at(&mut buf, u64::from(loc.off))
            .map_err(|e| io("reading", path, e))?;
        postcard::from_bytes::<Op>(&buf)
    } else {
        let payload = match kept {
            Some(p) => p,
            None => {
                let p: Arc<[u8]> = frame(&**file, loc.frame, path)?.1.into();
                frames.checked(loc.seg, file, loc.frame);
                frames.keep(file.clone(), loc.frame, p.clone());
                p
            }
        };
        let start = (loc.off as usize)
            .checked_sub(loc.frame as usize + HEADER)
            .ok_or_else(misplaced)?;
        let record = payload
            .get(start..start + loc.bytes as usize)
            .ok_or_else(misplaced)?;
        postcard::from_bytes::<Op>(record)
    };
    decoded.map_err(|e| {
        corrupt(format!(
            "segment {} holds a record it cannot decode at offset {}: {e}",
            path.display(),
            loc.off
        ))
    })
}
