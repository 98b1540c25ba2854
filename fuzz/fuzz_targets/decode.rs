//! Arbitrary bytes, fed to the decoder in arbitrary pieces.
//!
//! Checks that decoding never panics; that the chunked `Decoder` and the one-shot
//! `decode` agree on the items and on the error code; that `Ok(None)` leaves the buffer
//! alone; and that every decoded frame re-encodes to bytes that decode to the same frame
//! (with its `content-length` made exact, as `encode` documents) and re-encode to the
//! same bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use trunkline_proto::{decode, encode, DecodeError, Decoder, Frame, Item, Limits, CONTENT_LENGTH};

/// Small limits so that the fuzzer reaches every limit check quickly.
const LIMITS: Limits = Limits {
    max_frame_bytes: 600,
    max_header_block_bytes: 200,
    max_headers: 8,
    max_body_bytes: 300,
};

fuzz_target!(|data: &[u8]| {
    // The first byte seeds the chunk sizes; the rest is the stream.
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    for limits in [LIMITS, Limits::default()] {
        let chunked = run_chunked(input, seed, limits);
        let whole = run_whole(input, limits);
        assert_eq!(chunked.0, whole.0, "items differ between chunked and whole");
        assert_eq!(
            chunked.1.as_ref().map(DecodeError::code),
            whole.1.as_ref().map(DecodeError::code),
            "errors differ between chunked and whole"
        );
        for item in &chunked.0 {
            if let Item::Frame(frame) = item {
                check_round_trip(frame);
            }
        }
    }
});

/// Chunk sizes from a small xorshift generator: mostly tiny, sometimes large.
fn run_chunked(input: &[u8], seed: u8, limits: Limits) -> (Vec<Item>, Option<DecodeError>) {
    let mut state = u32::from(seed) | 0x9e37_7900;
    let mut next_size = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        if state % 4 == 0 {
            (state % 257) as usize + 1
        } else {
            (state % 7) as usize + 1
        }
    };
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = next_size().min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            let before = buf.clone();
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {
                    assert_eq!(buf, before, "Ok(None) must leave the buffer alone");
                    break;
                }
                Err(e) => return (items, Some(e)),
            }
        }
    }
    (items, None)
}

/// The stateless function on the whole input.
fn run_whole(input: &[u8], limits: Limits) -> (Vec<Item>, Option<DecodeError>) {
    let mut buf = BytesMut::from(input);
    let mut items = Vec::new();
    loop {
        match decode(&mut buf, &limits) {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return (items, None),
            Err(e) => return (items, Some(e)),
        }
    }
}

fn check_round_trip(frame: &Frame) {
    let mut wire = BytesMut::new();
    encode(frame, &mut wire).expect("a decoded frame is always encodable");
    let bytes = wire.clone().freeze();
    // Re-encoding may add a content-length header (one more header, a longer block), so
    // the frame can exceed the limits it was decoded under; this check is about content.
    let limits = Limits {
        max_frame_bytes: usize::MAX,
        max_header_block_bytes: usize::MAX,
        max_headers: usize::MAX,
        max_body_bytes: usize::MAX,
    };
    let again = match decode(&mut wire, &limits) {
        Ok(Some(Item::Frame(f))) => f,
        other => panic!("re-encoded frame did not decode: {other:?}\n{bytes:?}"),
    };
    assert!(wire.is_empty(), "re-encoding left bytes over");
    assert_eq!(
        again,
        with_exact_length(frame),
        "round trip changed the frame"
    );
    let mut twice = BytesMut::new();
    encode(&again, &mut twice).expect("encodable");
    assert_eq!(twice.freeze(), bytes, "re-encoding is not stable");
}

/// What `encode` documents: the first content-length carries the body's length, and a
/// non-empty body without one gets one at the end.
fn with_exact_length(frame: &Frame) -> Frame {
    let mut frame = frame.clone();
    let len = frame.body.len().to_string();
    match frame.headers.iter_mut().find(|(n, _)| n == CONTENT_LENGTH) {
        Some((_, v)) => *v = len,
        None if !frame.body.is_empty() => frame.headers.push((CONTENT_LENGTH.into(), len)),
        None => {}
    }
    frame
}
