//! The wire format: exact bytes, the STOMP 1.2 specification's examples, escaping,
//! repeated headers, line endings, bodies and heart-beats.

mod common;

use bytes::{Bytes, BytesMut};
use common::{decode_one, decode_whole, encoded};
use trunkline_proto::{
    decode, encode, encode_heartbeat, Command, DecodeError, EncodeError, Frame, Item, Limits,
};

fn frame(command: Command, headers: &[(&str, &str)], body: &[u8]) -> Frame {
    Frame {
        command,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string().into(), v.to_string()))
            .collect(),
        body: Bytes::copy_from_slice(body),
    }
}

// ---- exact bytes -------------------------------------------------------------------

#[test]
fn encodes_exact_bytes() {
    assert_eq!(
        encoded(&Frame::new(Command::Disconnect)),
        b"DISCONNECT\n\n\0"
    );
    assert_eq!(
        encoded(
            &Frame::new(Command::Send)
                .header("destination", "/queue/a")
                .header("receipt", "m-1")
                .body("hi")
        ),
        b"SEND\ndestination:/queue/a\nreceipt:m-1\ncontent-length:2\n\nhi\0"
    );
    assert_eq!(
        encoded(
            &Frame::new(Command::Error)
                .header("message", "bad: a\\b\r\n")
                .body(&b"x\0y"[..])
        ),
        b"ERROR\nmessage:bad\\c a\\\\b\\r\\n\ncontent-length:3\n\nx\0y\0"
    );
    assert_eq!(
        encoded(
            &Frame::new(Command::Connected)
                .header("version", "1.2")
                .header("heart-beat", "5000,30000")
                .header("server", "trunkline/0.1 a:b\\c")
        ),
        b"CONNECTED\nversion:1.2\nheart-beat:5000,30000\nserver:trunkline/0.1 a:b\\c\n\n\0"
    );
}

#[test]
fn encode_puts_the_real_length_in_the_first_content_length() {
    let f = Frame::new(Command::Message)
        .header("subscription", "0")
        .header("content-length", "999")
        .header("content-length", "5")
        .body("abc");
    assert_eq!(
        encoded(&f),
        b"MESSAGE\nsubscription:0\ncontent-length:3\ncontent-length:5\n\nabc\0"
    );
    let decoded = decode_one(&encoded(&f)).expect("decodes");
    assert_eq!(decoded.content_length(), Some(3));
    assert_eq!(&decoded.body[..], b"abc");
}

#[test]
fn empty_body_gets_no_content_length_unless_the_frame_has_one() {
    assert_eq!(
        encoded(&Frame::new(Command::Receipt).header("receipt-id", "1")),
        b"RECEIPT\nreceipt-id:1\n\n\0"
    );
    assert_eq!(
        encoded(&Frame::new(Command::Send).header("content-length", "7")),
        b"SEND\ncontent-length:0\n\n\0"
    );
}

#[test]
fn heartbeat_is_one_lf() {
    let mut dst = BytesMut::new();
    encode_heartbeat(&mut dst);
    assert_eq!(&dst[..], b"\n");
}

#[test]
fn encode_appends_and_leaves_dst_alone_on_error() {
    let mut dst = BytesMut::from(&b"prefix"[..]);
    encode(&Frame::new(Command::Ack).header("id", "1"), &mut dst).expect("encodable");
    assert_eq!(&dst[..], b"prefixACK\nid:1\n\n\0");

    let mut dst = BytesMut::from(&b"prefix"[..]);
    let bad = Frame::new(Command::Connect)
        .header("host", "/")
        .header("passcode", "a\nb");
    assert_eq!(
        encode(&bad, &mut dst),
        Err(EncodeError::Unencodable {
            command: Command::Connect,
            name: "passcode".into()
        })
    );
    assert_eq!(&dst[..], b"prefix");
}

#[test]
fn unencodable_headers_are_refused() {
    let enc = |f: Frame| encode(&f, &mut BytesMut::new());
    assert_eq!(
        enc(Frame::new(Command::Send).header("", "v")),
        Err(EncodeError::EmptyHeaderName { index: 0 })
    );
    assert!(enc(Frame::new(Command::Send).header("a", "nul\0")).is_err());
    assert!(enc(Frame::new(Command::Connect).header("a:b", "v")).is_err());
    assert!(enc(Frame::new(Command::Connected).header("a", "\r")).is_err());
    // The same octets are fine where escaping applies.
    assert!(enc(Frame::new(Command::Send).header("a:b", "\r\n")).is_ok());
    // A ':' in a value needs no escape: the decoder splits at the first ':'.
    assert!(enc(Frame::new(Command::Connect).header("passcode", "a:b")).is_ok());
}

// ---- the specification's examples ----------------------------------------------------

#[test]
fn decodes_the_spec_examples() {
    let connect =
        decode_one(b"CONNECT\naccept-version:1.2\nhost:stomp.github.org\n\n\0").expect("CONNECT");
    assert_eq!(
        connect,
        frame(
            Command::Connect,
            &[("accept-version", "1.2"), ("host", "stomp.github.org")],
            b""
        )
    );

    let connected = decode_one(b"CONNECTED\nversion:1.2\n\n\0").expect("CONNECTED");
    assert_eq!(
        connected,
        frame(Command::Connected, &[("version", "1.2")], b"")
    );

    let send =
        decode_one(b"SEND\ndestination:/queue/a\ncontent-type:text/plain\n\nhello queue a\n\0")
            .expect("SEND");
    assert_eq!(
        send,
        frame(
            Command::Send,
            &[("destination", "/queue/a"), ("content-type", "text/plain")],
            b"hello queue a\n"
        )
    );

    let subscribe =
        decode_one(b"SUBSCRIBE\nid:0\ndestination:/queue/foo\nack:client\n\n\0").expect("SUB");
    assert_eq!(subscribe.command, Command::Subscribe);
    assert_eq!(subscribe.get("ack"), Some("client"));

    let message = decode_one(
        b"MESSAGE\nsubscription:0\nmessage-id:007\ndestination:/queue/a\ncontent-type:text/plain\n\nhello queue a\0",
    )
    .expect("MESSAGE");
    assert_eq!(message.get("message-id"), Some("007"));
    assert_eq!(&message.body[..], b"hello queue a");

    // The specification's ERROR example says `content-length:171`, but its body as printed
    // is 170 octets; the length is computed here so that the example is self-consistent.
    let body = "The message:\n-----\nMESSAGE\ndestined:/queue/a\nreceipt:message-12345\n\nHello queue a!\n-----\nDid not contain a destination header, which is REQUIRED\nfor message propagation.\n";
    let error = format!(
        "ERROR\nreceipt-id:message-12345\ncontent-type:text/plain\ncontent-length:{}\nmessage:malformed frame received\n\n{body}\0",
        body.len()
    );
    let error = decode_one(error.as_bytes()).expect("ERROR");
    assert_eq!(error.get("message"), Some("malformed frame received"));
    assert_eq!(error.content_length(), Some(body.len()));
    assert_eq!(&error.body[..], body.as_bytes());

    let stomp = decode_one(b"STOMP\naccept-version:1.2\nhost:/\nheart-beat:5000,30000\n\n\0")
        .expect("STOMP");
    assert_eq!(stomp.get("heart-beat"), Some("5000,30000"));

    for line in [
        "BEGIN\ntransaction:tx1",
        "COMMIT\ntransaction:tx1",
        "ABORT\ntransaction:tx1",
        "ACK\nid:12345\ntransaction:tx1",
        "NACK\nid:12345",
        "UNSUBSCRIBE\nid:0",
        "DISCONNECT\nreceipt:77",
        "RECEIPT\nreceipt-id:77",
    ] {
        let f = decode_one(format!("{line}\n\n\0").as_bytes()).expect(line);
        assert_eq!(Some(f.command.as_str()), line.split('\n').next());
    }
}

// ---- escaping ------------------------------------------------------------------------

#[test]
fn escapes_round_trip_in_escaped_frames() {
    let f = Frame::new(Command::Send)
        .header("a:b\\c", "line1\nline2\r:\\")
        .header("é", "ü");
    let bytes = encoded(&f);
    assert_eq!(
        bytes,
        "SEND\na\\cb\\\\c:line1\\nline2\\r\\c\\\\\né:ü\n\n\0".as_bytes()
    );
    assert_eq!(decode_one(&bytes).expect("decodes"), f);
}

#[test]
fn connect_and_connected_headers_are_not_unescaped() {
    let f = decode_one(b"CONNECT\nlogin:a\\nb\npasscode:x:y\\c\n\n\0").expect("CONNECT");
    assert_eq!(f.get("login"), Some("a\\nb"));
    assert_eq!(f.get("passcode"), Some("x:y\\c"));
    assert_eq!(encoded(&f), b"CONNECT\nlogin:a\\nb\npasscode:x:y\\c\n\n\0");

    // `\t` is no escape, but CONNECTED takes it verbatim.
    let f = decode_one(b"CONNECTED\nserver:x\\t\n\n\0").expect("CONNECTED");
    assert_eq!(f.get("server"), Some("x\\t"));
    // The same line in a SEND is a fatal error.
    assert_eq!(
        decode_whole(b"SEND\nserver:x\\t\n\n\0"),
        Err(DecodeError::BadEscape { line: 2 })
    );
}

#[test]
fn bad_escapes_are_refused() {
    for bad in [
        &b"SEND\na:\\t\n\n\0"[..],
        b"SEND\na:b\\\n\n\0",
        b"SEND\n\\x:b\n\n\0",
    ] {
        assert_eq!(
            decode_whole(bad),
            Err(DecodeError::BadEscape { line: 2 }),
            "{bad:?}"
        );
    }
}

// ---- headers ------------------------------------------------------------------------

#[test]
fn repeated_header_first_wins_and_all_are_kept() {
    let f = decode_one(b"MESSAGE\nfoo:World\nfoo:Hello\n\n\0").expect("decodes");
    assert_eq!(f.get("foo"), Some("World"));
    assert_eq!(f.headers.len(), 2);
    assert_eq!(encoded(&f), b"MESSAGE\nfoo:World\nfoo:Hello\n\n\0");
}

#[test]
fn only_the_first_content_length_counts() {
    let f = decode_one(b"SEND\ncontent-length:2\ncontent-length:junk\n\na\0\0").expect("decodes");
    assert_eq!(&f.body[..], b"a\0");
}

#[test]
fn values_may_be_empty_and_contain_colons() {
    let f = decode_one(b"SEND\nempty:\nurl:http://x:1/\n\n\0").expect("decodes");
    assert_eq!(f.get("empty"), Some(""));
    assert_eq!(f.get("url"), Some("http://x:1/"));
}

#[test]
fn malformed_headers_are_refused() {
    let cases: [(&[u8], DecodeError); 5] = [
        (
            b"SEND\nnocolon\n\n\0",
            DecodeError::MalformedHeader { line: 2 },
        ),
        (
            b"SEND\na:1\n:empty-name\n\n\0",
            DecodeError::MalformedHeader { line: 3 },
        ),
        (
            b"SEND\na:b\rc\n\n\0",
            DecodeError::MalformedHeader { line: 2 },
        ),
        (
            b"SEND\na:b\0\n\n\0",
            DecodeError::MalformedHeader { line: 2 },
        ),
        (b"SEND\na:\xff\n\n\0", DecodeError::InvalidUtf8 { line: 2 }),
    ];
    for (input, expected) in cases {
        let got = decode_whole(input);
        assert_eq!(got, Err(expected.clone()), "{input:?}");
        assert_eq!(got.err().map(|e| e.code()), Some(expected.code()));
    }
}

#[test]
fn unknown_commands_are_refused() {
    assert_eq!(
        decode_whole(b"send\n\n\0"),
        Err(DecodeError::UnknownCommand {
            command: "send".into()
        })
    );
    assert_eq!(
        decode_whole(b"\rSEND\n\n\0").map_err(|e| e.code()),
        Err("unknown_command")
    );
    // A NUL between frames is no heart-beat.
    assert_eq!(
        decode_whole(b"\0SEND\n\n\0").map_err(|e| e.code()),
        Err("unknown_command")
    );
}

#[test]
fn invalid_content_lengths_are_refused() {
    for value in [
        "",
        "-1",
        "+1",
        "01",
        " 1",
        "1 ",
        "0x10",
        "1e3",
        "99999999999999999999999",
    ] {
        let input = format!("SEND\ncontent-length:{value}\n\nx\0");
        assert_eq!(
            decode_whole(input.as_bytes()),
            Err(DecodeError::InvalidContentLength {
                value: value.into()
            }),
            "{value:?}"
        );
    }
}

// ---- line endings -------------------------------------------------------------------

#[test]
fn crlf_line_endings_decode_like_lf() {
    let lf = decode_one(b"SEND\ndestination:/a\nx:1\n\nbody\0").expect("lf");
    let crlf = decode_one(b"SEND\r\ndestination:/a\r\nx:1\r\n\r\nbody\0").expect("crlf");
    let mixed = decode_one(b"SEND\r\ndestination:/a\nx:1\r\n\nbody\0").expect("mixed");
    assert_eq!(lf, crlf);
    assert_eq!(lf, mixed);
    assert_eq!(crlf.get("x"), Some("1"));
}

// ---- bodies -------------------------------------------------------------------------

#[test]
fn content_length_bodies_may_contain_nuls() {
    let input = b"SEND\ncontent-length:5\n\n\0a\0b\0\0";
    let f = decode_one(input).expect("decodes");
    assert_eq!(&f.body[..], b"\0a\0b\0");
    assert_eq!(encoded(&f), input);
}

#[test]
fn without_content_length_the_body_ends_at_the_first_nul() {
    // "cd\0" then starts the next frame, whose command line is still incomplete.
    let (items, err, left) = common::decode_chunked(b"SEND\n\nab\0cd\0", &[], Limits::default());
    assert_eq!(err, None);
    assert_eq!(items, [Item::Frame(Frame::new(Command::Send).body("ab"))]);
    assert_eq!(left, 3);
}

#[test]
fn a_content_length_body_not_followed_by_nul_is_refused() {
    assert_eq!(
        decode_whole(b"SEND\ncontent-length:2\n\nabc\0"),
        Err(DecodeError::MissingNul)
    );
    // The error comes as soon as the byte after the body is there.
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:2\n\nabc"[..]);
    assert_eq!(
        decode(&mut buf, &Limits::default()),
        Err(DecodeError::MissingNul)
    );
}

// ---- heart-beats --------------------------------------------------------------------

#[test]
fn eols_between_frames_are_heartbeats() {
    let items =
        decode_whole(b"\n\r\nSEND\n\na\0\n\r\n\nRECEIPT\nreceipt-id:1\n\n\0\n").expect("ok");
    let hb = Item::HeartBeat;
    let send = Item::Frame(Frame::new(Command::Send).body("a"));
    let receipt = Item::Frame(Frame::new(Command::Receipt).header("receipt-id", "1"));
    assert_eq!(
        items,
        [
            hb.clone(),
            hb.clone(),
            send,
            hb.clone(),
            hb.clone(),
            hb.clone(),
            receipt,
            hb
        ]
    );
}

#[test]
fn a_lone_cr_waits_for_its_lf() {
    let mut buf = BytesMut::from(&b"\r"[..]);
    assert_eq!(decode(&mut buf, &Limits::default()), Ok(None));
    assert_eq!(&buf[..], b"\r");
    buf.extend_from_slice(b"\n");
    assert_eq!(
        decode(&mut buf, &Limits::default()),
        Ok(Some(Item::HeartBeat))
    );
    assert!(buf.is_empty());
}

#[test]
fn decode_consumes_exactly_one_item() {
    let mut buf = BytesMut::from(&b"SEND\n\na\0SEND\n\nb\0\nREST"[..]);
    let limits = Limits::default();
    assert!(matches!(
        decode(&mut buf, &limits),
        Ok(Some(Item::Frame(_)))
    ));
    assert_eq!(&buf[..], b"SEND\n\nb\0\nREST");
    assert!(matches!(
        decode(&mut buf, &limits),
        Ok(Some(Item::Frame(_)))
    ));
    assert_eq!(decode(&mut buf, &limits), Ok(Some(Item::HeartBeat)));
    assert_eq!(decode(&mut buf, &limits), Ok(None));
    assert_eq!(&buf[..], b"REST");
}

#[test]
fn error_codes_are_distinct() {
    let all = [
        DecodeError::FrameTooLarge { size: 0, max: 0 },
        DecodeError::HeaderBlockTooLarge { max: 0 },
        DecodeError::TooManyHeaders { max: 0 },
        DecodeError::BodyTooLarge { size: 0, max: 0 },
        DecodeError::BadEscape { line: 0 },
        DecodeError::MalformedHeader { line: 0 },
        DecodeError::UnknownCommand {
            command: String::new(),
        },
        DecodeError::MissingNul,
        DecodeError::InvalidContentLength {
            value: String::new(),
        },
        DecodeError::InvalidUtf8 { line: 0 },
    ];
    let codes: std::collections::HashSet<_> = all.iter().map(|e| e.code()).collect();
    assert_eq!(codes.len(), all.len());
}
