//! Reading a message back from the log: the whole frame holding it, checked against its
//! CRCs (the open read the index files, not the bodies, so this is where damage to a
//! body shows), and kept for the next reads: a consumer draining a backlog reads on
//! through the same frames, so most of its reads cost no I/O.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::frame::HEADER;
use super::state::{Loc, State, NO_FRAME};
use super::{corrupt, io, seg_path};
use crate::fs::VFile;
use crate::{Op, StoreError, StoredMessage};

/// Frames kept, at most this many...
const KEEP_FRAMES: usize = 16;
/// ...and this many bytes of them (at least the newest, whatever its size).
const KEEP_BYTES: usize = 16 << 20;

struct Kept {
    /// The file it was read from: compaction replaces a segment's file in place.
    file: Arc<dyn VFile>,
    frame: u32,
    payload: Arc<[u8]>,
}

/// The frames read last.
#[derive(Default)]
pub(crate) struct Frames {
    kept: Mutex<VecDeque<Kept>>,
}

impl Frames {
    fn find(&self, file: &Arc<dyn VFile>, frame: u32) -> Option<Arc<[u8]>> {
        let kept = self.kept.lock().ok()?;
        kept.iter()
            .rev()
            .find(|k| k.frame == frame && Arc::ptr_eq(&k.file, file))
            .map(|k| k.payload.clone())
    }

    fn keep(&self, file: Arc<dyn VFile>, frame: u32, payload: Arc<[u8]>) {
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

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
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
    if crc32fast::hash(&header[..8]) != u32_at(&header, 8) {
        return Err(bad("a frame header does not match its CRC"));
    }
    let mut payload = vec![0; u32_at(&header, 0) as usize];
    file.read_exact_at(&mut payload, u64::from(frame) + HEADER as u64)
        .map_err(|e| io("reading", path, e))?;
    if crc32fast::hash(&payload) != u32_at(&header, 4) {
        return Err(bad("a frame does not match its CRC"));
    }
    Ok((header, payload))
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
    let misplaced = || {
        corrupt(format!(
            "the log does not hold message {id} where it should"
        ))
    };
    let decoded = if loc.frame == NO_FRAME {
        // A segment of the first format: the record alone.
        let mut buf = vec![0; loc.bytes as usize];
        file.read_exact_at(&mut buf, u64::from(loc.off))
            .map_err(|e| io("reading", &path, e))?;
        postcard::from_bytes::<Op>(&buf)
    } else {
        let payload = match frames.find(file, loc.frame) {
            Some(p) => p,
            None => {
                let p: Arc<[u8]> = frame(&**file, loc.frame, &path)?.1.into();
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
    match decoded {
        Ok(Op::PutMessage { id: got, msg }) if got == id => Ok(msg),
        Ok(_) => Err(misplaced()),
        Err(e) => Err(corrupt(format!("message {id}: {e}"))),
    }
}
