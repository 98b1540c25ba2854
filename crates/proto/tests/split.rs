//! Input split anywhere decodes the same: every truncation point, byte by byte, and
//! random chunkings.

mod common;

use bytes::BytesMut;
use common::{decode_chunked, decode_whole};
use proptest::prelude::*;
use trunkline_proto::{decode, Decoder, Item, Limits};

/// A stream touching every path: heart-beats (LF and CRLF), CRLF lines, escapes, an
/// unescaped CONNECT, a content-length body with NULs, a NUL-terminated body, repeats.
const STREAM: &[u8] = b"\r\n\nCONNECT\r\naccept-version:1.2\r\nhost:a\\b:c\r\n\r\n\0\n\
SEND\ndestination:/queue/a\\cb\ncontent-length:5\nx:1\nx:2\n\na\0\r\n\0\0\r\n\
MESSAGE\nsubscription:0\nmessage-id:\\\\007\n\nhello queue a\0\r\n\
DISCONNECT\nreceipt:9\n\n\0";

fn expected() -> Vec<Item> {
    decode_whole(STREAM).expect("the test stream is valid")
}

#[test]
fn the_stream_decodes_to_what_it_says() {
    let items = expected();
    let frames: Vec<_> = items
        .iter()
        .filter_map(|i| match i {
            Item::Frame(f) => Some(f),
            Item::HeartBeat => None,
        })
        .collect();
    assert_eq!(frames.len(), 4);
    assert_eq!(frames[0].get("host"), Some("a\\b:c"));
    assert_eq!(frames[1].get("destination"), Some("/queue/a:b"));
    assert_eq!(&frames[1].body[..], b"a\0\r\n\0");
    assert_eq!(frames[1].get("x"), Some("1"));
    assert_eq!(frames[2].get("message-id"), Some("\\007"));
    assert_eq!(items.len(), 4 + 5, "four frames, five heart-beats");
}

#[test]
fn every_truncation_point_needs_more_bytes_and_is_never_an_error() {
    let all = expected();
    for cut in 0..=STREAM.len() {
        // Stateless decoding of the prefix: only whole items, then Ok(None).
        let mut buf = BytesMut::from(&STREAM[..cut]);
        let mut items = Vec::new();
        loop {
            let before = buf.len();
            match decode(&mut buf, &Limits::default()) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) leaves the buffer alone");
                    break;
                }
                Err(e) => panic!("cut at {cut}: {e:?}"),
            }
        }
        assert_eq!(items, all[..items.len()], "cut at {cut}");
        // Then the rest arrives and the same decoder state finishes the stream.
        buf.extend_from_slice(&STREAM[cut..]);
        while let Some(item) = decode(&mut buf, &Limits::default()).expect("valid") {
            items.push(item);
        }
        assert_eq!(items, all, "cut at {cut}");
        assert!(buf.is_empty());
    }
}

#[test]
fn a_decoder_resumes_at_every_truncation_point() {
    let all = expected();
    for cut in 0..=STREAM.len() {
        let (items, err, _) = decode_chunked(STREAM, &[cut], Limits::default());
        assert_eq!(err, None, "cut at {cut}");
        assert_eq!(items, all, "cut at {cut}");
    }
}

#[test]
fn byte_by_byte_gives_the_same_items() {
    let (items, err, left) = decode_chunked(STREAM, &[1; 1024], Limits::default());
    assert_eq!(err, None);
    assert_eq!(left, 0);
    assert_eq!(items, expected());
}

#[test]
fn a_decoder_whose_buffer_is_replaced_starts_over_instead_of_misreading() {
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&b"SEND\nlong-header-name:value\n"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    let mut other = BytesMut::from(&b"ACK\n"[..]);
    assert_eq!(decoder.decode(&mut other), Ok(None));
    other.extend_from_slice(b"id:1\n\n\0");
    let Ok(Some(Item::Frame(f))) = decoder.decode(&mut other) else {
        panic!("expected a frame");
    };
    assert_eq!(f.get("id"), Some("1"));
}

proptest! {
    #[test]
    fn random_chunkings_give_the_same_items(chunks in prop::collection::vec(1usize..40, 0..64)) {
        let (items, err, left) = decode_chunked(STREAM, &chunks, Limits::default());
        prop_assert_eq!(err, None);
        prop_assert_eq!(left, 0);
        prop_assert_eq!(items, expected());
    }

    /// Arbitrary bytes: a chunked decoder and a one-shot decoder agree on the items and
    /// on whether (and with which code) the stream fails.
    #[test]
    fn chunked_and_whole_agree_on_any_input(
        input in prop::collection::vec(
            prop_oneof![
                Just(b'\n'), Just(b'\r'), Just(b'\0'), Just(b':'), Just(b'\\'),
                Just(b'n'), Just(b'c'), b'A'..=b'Z', Just(b'5'), any::<u8>(),
            ],
            0..200,
        ),
        chunks in prop::collection::vec(1usize..20, 0..64),
        prefix in prop::sample::select(vec![&b""[..], b"SEND\n", b"SEND\ncontent-length:3\n", b"CONNECT\n"]),
    ) {
        let mut input = input;
        input.splice(0..0, prefix.iter().copied());
        let limits = Limits { max_frame_bytes: 150, max_header_block_bytes: 60, max_headers: 4, max_body_bytes: 80 };
        let whole = decode_chunked(&input, &[input.len().max(1)], limits);
        let chunked = decode_chunked(&input, &chunks, limits);
        prop_assert_eq!(&whole.0, &chunked.0);
        prop_assert_eq!(whole.1.map(|e| e.code()), chunked.1.map(|e| e.code()));
    }
}

/// A `Decoder` fed one byte at a time looks at each byte about once. A decoder that
/// rescanned from the frame's start on every call would do ~5·10¹¹ byte checks here and
/// take minutes; the linear one takes well under a second even unoptimised.
#[test]
fn byte_by_byte_decoding_of_a_large_frame_is_linear() {
    let limits = Limits::default();
    let mut input = b"SEND\n".to_vec();
    for i in 0..60 {
        input.extend_from_slice(format!("header-{i}:{}\n", "v".repeat(100)).as_bytes());
    }
    input.push(b'\n');
    input.resize(input.len() + limits.max_body_bytes, b'b');
    input.push(0);
    let started = std::time::Instant::now();
    let (items, err, left) = decode_chunked(&input, &vec![1; input.len()], limits);
    assert_eq!((err, left, items.len()), (None, 0, 1));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}
