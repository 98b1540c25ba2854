//! The bytes of a segment: its header, its frames, and how a scan tells a torn last
//! write from damage.
//!
//! A segment starts with an 8-byte magic. Segments written by this version start with
//! `TLLOG002` and hold frames of
//!
//! | bytes | field |
//! |---|---|
//! | 4 | payload length, u32 little endian, never 0 |
//! | 4 | CRC-32 of the payload |
//! | 4 | CRC-32 of the 8 bytes before it (so a header can be recognised on its own) |
//! | n | payload: [`Op`]s, postcard-encoded, back to back |
//!
//! Segments of earlier versions start with `TLLOG001`, whose frames have no header CRC;
//! they are read, never written.
//!
//! Only one frame is ever in flight: the writer syncs each before it writes the next,
//! into space preallocated as zeros. So after a crash, bytes that are neither frames nor
//! zeros can only be that one frame, torn: at most one frame's extent of garbage, and no
//! whole frame after it. Anything else (a bad frame followed by a good one, a frame whose
//! header is whole but is followed by more than zeros, a bad frame in a sealed segment)
//! is damage, which the store refuses to open over unless told to recover.

use super::change::{self, Change};
use crate::{Op, StoreError};

pub(crate) const MAGIC: &[u8; 8] = b"TLLOG002";
pub(crate) const MAGIC_V1: &[u8; 8] = b"TLLOG001";
pub(crate) const HEADER: usize = 12;
const HEADER_V1: usize = 8;
/// Frames larger than this are refused on write and treated as damage on read.
pub(crate) const MAX_FRAME: usize = 1 << 30;

/// A segment's format version, from its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

impl Version {
    fn header(self) -> usize {
        match self {
            Version::V1 => HEADER_V1,
            Version::V2 => HEADER,
        }
    }
}

/// Room for the frame [`encode`] makes of `ops`: at least its size, unless its ops carry
/// long queue names or many short headers. A caller reserves it before encoding: a frame
/// of large bodies grown by doubling copies itself.
pub(crate) fn size_hint(ops: &[Op]) -> usize {
    HEADER
        + ops
            .iter()
            .map(|op| match op {
                Op::PutMessage { msg, .. } => {
                    64 + msg.body.len()
                        + msg.topic.len()
                        + msg.sender.len()
                        + msg
                            .headers
                            .iter()
                            .map(|(k, v)| 4 + k.len() + v.len())
                            .sum::<usize>()
                }
                Op::PutRecord { key, value, .. } => 64 + key.len() + value.len(),
                _ => 64,
            })
            .sum::<usize>()
}

/// Appends one frame holding `ops` to `buf`; returns each op's offset from the start of
/// the frame and its encoded size.
pub(crate) fn encode(ops: &[Op], buf: &mut Vec<u8>) -> Result<Vec<(u32, u32)>, StoreError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    let mut placed = Vec::with_capacity(ops.len());
    let mut out = std::mem::take(buf);
    for op in ops {
        let before = out.len();
        out = match postcard::to_extend(op, out) {
            Ok(out) => out,
            Err(e) => {
                return Err(StoreError::Engine(format!("encoding a log record: {e}")));
            }
        };
        placed.push(((before - start) as u32, (out.len() - before) as u32));
    }
    *buf = out;
    seal(buf, start)?;
    Ok(placed)
}

/// Appends one frame of ops already encoded to `buf`; returns each op's offset from the
/// start of the frame.
pub(crate) fn encode_raw<'a>(
    ops: impl Iterator<Item = &'a [u8]>,
    buf: &mut Vec<u8>,
) -> Result<Vec<u32>, StoreError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    let placed = ops
        .map(|raw| {
            let off = (buf.len() - start) as u32;
            buf.extend_from_slice(raw);
            off
        })
        .collect();
    seal(buf, start)?;
    Ok(placed)
}

/// Writes the header of the frame that starts at `start` and runs to the end of `buf`.
fn seal(buf: &mut Vec<u8>, start: usize) -> Result<(), StoreError> {
    let len = buf.len() - start - HEADER;
    if len > MAX_FRAME || len == 0 {
        buf.truncate(start);
        return Err(StoreError::Engine(format!(
            "a commit of {len} bytes does not fit the log's frame limits"
        )));
    }
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    let hcrc = crc32fast::hash(&buf[start..start + 8]);
    buf[start + 8..start + 12].copy_from_slice(&hcrc.to_le_bytes());
    Ok(())
}

/// How a segment ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// After the last frame, only zeros (or nothing).
    Clean,
    /// A frame cut short by a crash while it was written: never acknowledged.
    Torn,
    /// Bytes that no crash could leave: the disk or someone changed the file.
    Damaged(String),
}

/// One op of a segment: what it changes, its bytes (empty when read from an index file),
/// where it starts in the file, and
/// where the frame holding it starts (`state::NO_FRAME` in a segment of the first
/// format).
pub(crate) struct Placed<'a> {
    pub change: Change<'a>,
    pub raw: &'a [u8],
    pub off: u32,
    pub bytes: u32,
    pub frame: u32,
}

/// What a scan of a segment found.
#[derive(Debug, Clone)]
pub(crate) struct Scanned {
    pub version: Option<Version>,
    /// End of the last whole frame (the header's end if none): where writing goes on.
    pub valid: u64,
    pub frames: u64,
    pub tail: Tail,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The payload length `header` names, if it is a sound header of `version` (a length in
/// bounds and, from version 2, its own CRC).
pub(crate) fn payload_len(header: &[u8], version: Version) -> Option<usize> {
    let len = u32_at(header, 0) as usize;
    if len == 0 || len > MAX_FRAME {
        return None;
    }
    if version == Version::V2 && crc32fast::hash(&header[..8]) != u32_at(header, 8) {
        return None;
    }
    Some(len)
}

/// Whether `payload` is the one `header` was written with (its CRC).
pub(crate) fn payload_matches(header: &[u8], payload: &[u8]) -> bool {
    crc32fast::hash(payload) == u32_at(header, 4)
}

/// The frame whose header is at `at`, if one is whole there: its payload.
fn frame_at(bytes: &[u8], at: usize, version: Version) -> Option<&[u8]> {
    let header = bytes.get(at..at + version.header())?;
    let len = payload_len(header, version)?;
    let start = at + version.header();
    let payload = bytes.get(start..start + len)?;
    payload_matches(header, payload).then_some(payload)
}

/// Whether a whole frame starts anywhere after `at`. Version 2 headers carry their own
/// CRC, so most offsets are ruled out by 8 bytes; version 1 has only the payload's CRC,
/// so its search is bounded (a legacy segment is only ever scanned once, after upgrade).
fn frame_after(bytes: &[u8], at: usize, version: Version) -> bool {
    let mut budget: u64 = 1 << 30;
    let mut q = at + 1;
    while q < bytes.len() {
        // A header's length is not zero: skip runs of zeros (the preallocated end).
        match bytes[q..].iter().position(|b| *b != 0) {
            None => break,
            Some(k) if k > 3 => q += k - 3,
            Some(_) => {}
        }
        if version == Version::V1 {
            let Some(h) = bytes.get(q..q + 4) else { break };
            let len = u32_at(h, 0) as u64;
            if len == 0 || q as u64 + len > bytes.len() as u64 {
                q += 1;
                continue;
            }
            budget = budget.saturating_sub(len);
            if budget == 0 {
                break;
            }
        }
        if frame_at(bytes, q, version).is_some() {
            return true;
        }
        q += 1;
    }
    false
}

/// Reads every frame of a segment, in order, handing each op to `apply`; stops at the
/// first frame that is not whole and says why. `newest` says whether the segment was
/// the one being written (only it can end in a torn frame).
pub(crate) fn scan<'a>(
    bytes: &'a [u8],
    newest: bool,
    mut apply: impl FnMut(Placed<'a>),
) -> Scanned {
    let version = match bytes.get(..8) {
        Some(m) if m == MAGIC => Version::V2,
        Some(m) if m == MAGIC_V1 => Version::V1,
        _ => {
            let tail = if bytes.iter().all(|b| *b == 0) {
                Tail::Clean
            } else {
                Tail::Damaged("the segment does not start with a known header".into())
            };
            return Scanned {
                version: None,
                valid: 0,
                frames: 0,
                tail,
            };
        }
    };
    let mut pos = MAGIC.len();
    let mut frames = 0;
    let damaged = |why: String, pos: usize, frames| Scanned {
        version: Some(version),
        valid: pos as u64,
        frames,
        tail: Tail::Damaged(why),
    };
    loop {
        let rest = &bytes[pos..];
        if rest.iter().all(|b| *b == 0) {
            return Scanned {
                version: Some(version),
                valid: pos as u64,
                frames,
                tail: Tail::Clean,
            };
        }
        let Some(payload) = frame_at(bytes, pos, version) else {
            // Not a whole frame: the torn last write, or damage.
            let extent = match version {
                Version::V2
                    if rest.len() >= HEADER && crc32fast::hash(&rest[..8]) == u32_at(rest, 8) =>
                {
                    // The header is whole: the write covered exactly this frame.
                    Some(pos + HEADER + u32_at(rest, 0) as usize)
                }
                _ => None,
            };
            let after_is_clean = match extent {
                Some(end) => bytes.get(end..).is_none_or(|r| r.iter().all(|b| *b == 0)),
                None => !frame_after(bytes, pos, version),
            };
            if newest && after_is_clean {
                return Scanned {
                    version: Some(version),
                    valid: pos as u64,
                    frames,
                    tail: Tail::Torn,
                };
            }
            let why = if newest {
                format!("a bad frame at offset {pos} is followed by more data")
            } else {
                format!("a bad frame at offset {pos} in a sealed segment")
            };
            return damaged(why, pos, frames);
        };
        let start = pos + version.header();
        let mut rest = payload;
        let mut decoded = Vec::new();
        while !rest.is_empty() {
            match change::take_op(rest) {
                Ok((change, tail)) => {
                    let off = (start + payload.len() - rest.len()) as u32;
                    let size = rest.len() - tail.len();
                    decoded.push(Placed {
                        change,
                        raw: &rest[..size],
                        off,
                        bytes: size as u32,
                        frame: match version {
                            Version::V2 => pos as u32,
                            Version::V1 => super::state::NO_FRAME,
                        },
                    });
                    rest = tail;
                }
                Err(e) => {
                    return damaged(
                        format!("a frame at offset {pos} passes its CRC but does not decode: {e}"),
                        pos,
                        frames,
                    )
                }
            }
        }
        decoded.into_iter().for_each(&mut apply);
        frames += 1;
        pos = start + payload.len();
    }
}
