//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use bytes::BytesMut;
use trunkline_proto::{encode, DecodeError, Decoder, Frame, Item, Limits, CONTENT_LENGTH};

/// Feeds `input` to one `Decoder` in pieces of the given sizes (the last piece takes the
/// rest), draining every complete item after each piece. Returns the items and, if the
/// stream ended in an error, that error; also the bytes left undecoded.
pub fn decode_chunked(
    input: &[u8],
    chunks: &[usize],
    limits: Limits,
) -> (Vec<Item>, Option<DecodeError>, usize) {
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut rest = input;
    let mut sizes = chunks.iter().copied();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => return (items, Some(e), buf.len() + rest.len()),
            }
        }
    }
    let left = buf.len();
    (items, None, left)
}

/// Decodes everything in `input` given all at once.
pub fn decode_whole(input: &[u8]) -> Result<Vec<Item>, DecodeError> {
    let (items, err, _) = decode_chunked(input, &[input.len().max(1)], Limits::default());
    match err {
        Some(e) => Err(e),
        None => Ok(items),
    }
}

/// Decodes exactly one frame from `input` and checks nothing but EOLs follow it.
pub fn decode_one(input: &[u8]) -> Result<Frame, DecodeError> {
    let items = decode_whole(input)?;
    let mut frames = items.into_iter().filter_map(|i| match i {
        Item::Frame(f) => Some(f),
        Item::HeartBeat => None,
    });
    let frame = frames.next().expect("test input holds a frame");
    assert!(frames.next().is_none(), "test input holds one frame");
    Ok(frame)
}

pub fn encoded(frame: &Frame) -> Vec<u8> {
    let mut dst = BytesMut::new();
    encode(frame, &mut dst).expect("test frame is encodable");
    dst.to_vec()
}

/// What decoding the encoding of `frame` gives: the same frame with its first
/// `content-length` set to the body's length, or one appended if it had none and a body.
pub fn after_round_trip(frame: &Frame) -> Frame {
    let mut frame = frame.clone();
    let len = frame.body.len().to_string();
    match frame.headers.iter_mut().find(|(n, _)| n == CONTENT_LENGTH) {
        Some((_, v)) => *v = len,
        None if !frame.body.is_empty() => frame.headers.push((CONTENT_LENGTH.into(), len)),
        None => {}
    }
    frame
}
