//! encode → decode gives back the frame, for random frames.

mod common;

use bytes::{Bytes, BytesMut};
use common::{after_round_trip, decode_chunked, encoded};
use proptest::prelude::*;
use trunkline_proto::{encode, Command, EncodeError, Frame, Item, Limits, CONTENT_LENGTH};

fn command() -> impl Strategy<Value = Command> {
    prop::sample::select(Command::ALL.to_vec())
}

/// Header text full of what escaping must handle. CONNECT and CONNECTED cannot carry
/// CR or LF at all, nor `:` in a name.
fn header(escaped: bool) -> impl Strategy<Value = (String, String)> {
    let (name, value) = if escaped {
        ("[a-z:\\\\\r\n é-]{1,8}", "[a-z0-9:\\\\\r\n é]{0,12}")
    } else {
        ("[a-z\\\\ é-]{1,8}", "[a-z0-9:\\\\ é]{0,12}")
    };
    (name, value)
}

fn frame() -> impl Strategy<Value = Frame> {
    command().prop_flat_map(|command| {
        let headers = prop::collection::vec(header(command.escapes_headers()), 0..6);
        let content_length = prop::option::of(prop_oneof![Just(0usize), 0usize..100]);
        let body = prop::collection::vec(prop_oneof![Just(0u8), Just(b'\n'), any::<u8>()], 0..64);
        (headers, content_length, body).prop_map(move |(mut headers, cl, body)| {
            if let Some(cl) = cl {
                // Sometimes a stale length, which encode must correct.
                headers.push((CONTENT_LENGTH.into(), cl.to_string()));
            }
            Frame {
                command,
                headers: headers.into_iter().map(|(k, v)| (k.into(), v)).collect(),
                body: Bytes::from(body),
            }
        })
    })
}

proptest! {
    #[test]
    fn encode_then_decode_gives_the_frame_back(frames in prop::collection::vec(frame(), 1..4), heartbeats in 0usize..3) {
        let mut wire = BytesMut::new();
        let mut expected = Vec::new();
        for f in &frames {
            encode(f, &mut wire).expect("generated frames are encodable");
            expected.push(Item::Frame(after_round_trip(f)));
            for _ in 0..heartbeats {
                wire.extend_from_slice(b"\n");
                expected.push(Item::HeartBeat);
            }
        }
        let (items, err, left) = decode_chunked(&wire, &[wire.len()], Limits::default());
        prop_assert_eq!(err, None);
        prop_assert_eq!(left, 0);
        prop_assert_eq!(&items, &expected);
        // Byte by byte too.
        let (items, err, _) = decode_chunked(&wire, &vec![1; wire.len()], Limits::default());
        prop_assert_eq!(err, None);
        prop_assert_eq!(items, expected);
    }

    #[test]
    fn re_encoding_a_decoded_frame_gives_the_same_bytes(f in frame()) {
        let once = encoded(&f);
        let (items, err, _) = decode_chunked(&once, &[once.len()], Limits::default());
        prop_assert_eq!(err, None);
        let Some(Item::Frame(decoded)) = items.into_iter().next() else {
            return Err(TestCaseError::fail("no frame"));
        };
        prop_assert_eq!(encoded(&decoded), once);
    }

    #[test]
    fn connect_headers_with_eols_are_refused_not_mangled(
        command in prop::sample::select(vec![Command::Connect, Command::Connected]),
        value in "[a-z]{0,3}[\r\n][a-z]{0,3}",
    ) {
        let f = Frame::new(command).header("login", value);
        let mut dst = BytesMut::new();
        prop_assert_eq!(
            encode(&f, &mut dst),
            Err(EncodeError::Unencodable { command, name: "login".into() })
        );
        prop_assert!(dst.is_empty());
    }
}
