//! Each limit trips its error as soon as the buffered bytes prove it exceeded, without
//! the decoder waiting for (or the test sending) the whole oversized thing.

use bytes::BytesMut;
use trunkline_proto::{DecodeError, Decoder, Item, Limits};

fn small() -> Limits {
    Limits {
        max_frame_bytes: 1000,
        max_header_block_bytes: 100,
        max_headers: 3,
        max_body_bytes: 200,
    }
}

/// Feeds `input` one byte at a time; returns the error and how many bytes had been fed.
fn first_error(input: &[u8], limits: Limits) -> Option<(DecodeError, usize)> {
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    for (i, &b) in input.iter().enumerate() {
        buf.extend_from_slice(&[b]);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return Some((e, i + 1)),
            }
        }
    }
    None
}

#[test]
fn the_defaults_are_documented_values() {
    let l = Limits::default();
    assert_eq!(l.max_header_block_bytes, 8 * 1024);
    assert_eq!(l.max_headers, 64);
    assert_eq!(l.max_body_bytes, 1024 * 1024);
    assert_eq!(l.max_frame_bytes, 8 * 1024 + 1024 * 1024 + 1);
}

#[test]
fn a_header_block_that_never_ends_fails_once_past_the_limit() {
    let mut input = b"SEND\nx:".to_vec();
    input.resize(10_000, b'a');
    let (err, fed) = first_error(&input, small()).expect("fails");
    assert_eq!(err, DecodeError::HeaderBlockTooLarge { max: 100 });
    assert_eq!(
        fed, 100,
        "fails as soon as 100 bytes are buffered without a blank line"
    );
}

#[test]
fn a_header_block_of_exactly_the_limit_is_accepted() {
    // 5 (SEND\n) + 94 (header line) + 1 (blank line) = 100.
    let mut input = b"SEND\nx:".to_vec();
    input.resize(5 + 93, b'a');
    input.extend_from_slice(b"\n\n\0");
    let mut buf = BytesMut::from(&input[..]);
    let item = Decoder::new(small()).decode(&mut buf).expect("fits");
    assert!(matches!(item, Some(Item::Frame(_))));

    let mut input = b"SEND\nx:".to_vec();
    input.resize(5 + 94, b'a');
    input.extend_from_slice(b"\n\n\0");
    let mut buf = BytesMut::from(&input[..]);
    assert_eq!(
        Decoder::new(small()).decode(&mut buf),
        Err(DecodeError::HeaderBlockTooLarge { max: 100 })
    );
}

#[test]
fn too_many_headers_fail_at_the_first_extra_header_line() {
    let input = b"SEND\na:1\nb:2\nc:3\nd:4\n";
    let (err, fed) = first_error(input, small()).expect("fails");
    assert_eq!(err, DecodeError::TooManyHeaders { max: 3 });
    assert_eq!(fed, input.len());
    // Exactly the maximum is fine.
    let mut buf = BytesMut::from(&b"SEND\na:1\nb:2\nc:3\n\n\0"[..]);
    assert!(Decoder::new(small())
        .decode(&mut buf)
        .expect("fits")
        .is_some());
}

#[test]
fn a_declared_body_over_the_limit_fails_before_any_body_byte() {
    let input = b"SEND\ncontent-length:201\n\n";
    let (err, fed) = first_error(input, small()).expect("fails");
    assert_eq!(
        err,
        DecodeError::BodyTooLarge {
            size: 201,
            max: 200
        }
    );
    assert_eq!(fed, input.len());
    // A huge declared length does not make the decoder reserve anything either.
    let input = b"SEND\ncontent-length:4294967295\n\n";
    let (err, _) = first_error(input, Limits::default()).expect("fails");
    assert!(matches!(err, DecodeError::BodyTooLarge { .. }), "{err:?}");
}

#[test]
fn a_body_without_content_length_fails_once_past_the_limit() {
    let mut input = b"SEND\n\n".to_vec();
    let start = input.len();
    input.resize(100_000, b'z');
    let (err, fed) = first_error(&input, small()).expect("fails");
    assert_eq!(
        err,
        DecodeError::BodyTooLarge {
            size: 201,
            max: 200
        }
    );
    assert_eq!(fed, start + 201);

    // 200 bytes and the NUL fit.
    let mut input = b"SEND\n\n".to_vec();
    input.resize(start + 200, b'z');
    input.push(0);
    assert_eq!(first_error(&input, small()), None);
}

#[test]
fn the_frame_limit_binds_when_lower_than_its_parts() {
    let limits = Limits {
        max_frame_bytes: 50,
        ..small()
    };
    // Declared: 6 (SEND\n\n... with header) + body + NUL over 50.
    let input = b"SEND\ncontent-length:40\n\n";
    let (err, _) = first_error(input, limits).expect("fails");
    assert_eq!(
        err,
        DecodeError::FrameTooLarge {
            size: 24 + 40 + 1,
            max: 50
        }
    );

    // Undeclared body: fails once the 50th byte is buffered without a NUL.
    let mut input = b"SEND\n\n".to_vec();
    input.resize(1000, b'z');
    let (err, fed) = first_error(&input, limits).expect("fails");
    assert_eq!(err, DecodeError::FrameTooLarge { size: 51, max: 50 });
    assert_eq!(fed, 50);

    // Header block: the frame limit below the header-block limit binds there too.
    let limits = Limits {
        max_frame_bytes: 20,
        ..small()
    };
    let mut input = b"SEND\nx:".to_vec();
    input.resize(1000, b'a');
    let (err, fed) = first_error(&input, limits).expect("fails");
    assert_eq!(err, DecodeError::FrameTooLarge { size: 21, max: 20 });
    assert_eq!(fed, 20);

    // A frame of exactly the limit fits: 6 + 43 + 1 = 50.
    let limits = Limits {
        max_frame_bytes: 50,
        ..small()
    };
    let mut input = b"SEND\n\n".to_vec();
    input.resize(49, b'z');
    input.push(0);
    assert_eq!(first_error(&input, limits), None);
}

#[test]
fn a_long_command_line_fails_without_waiting_for_its_end() {
    let input = vec![b'A'; 10_000];
    let (err, fed) = first_error(&input, Limits::default()).expect("fails");
    assert_eq!(err.code(), "unknown_command");
    assert_eq!(fed, 13, "no command line is longer than UNSUBSCRIBE\\r");
}

#[test]
fn limits_hold_when_everything_arrives_at_once() {
    // One big read must not make the decoder scan or keep more than the limit allows.
    let mut input = b"SEND\nx:".to_vec();
    input.resize(1 << 20, b'a');
    let mut buf = BytesMut::from(&input[..]);
    assert_eq!(
        Decoder::new(small()).decode(&mut buf),
        Err(DecodeError::HeaderBlockTooLarge { max: 100 })
    );
}
