//! The server session driven in virtual time, without sockets.

use bytes::Bytes;
use trunkline_proto::{Command, Frame, Item};
use trunkline_stomp::{
    AckMode, Delivered, Destination, Event, Outgoing, ServerConfig, ServerSession, StompError,
};

fn frame(cmd: Command, headers: &[(&str, &str)]) -> Item {
    let mut f = Frame::new(cmd);
    for (k, v) in headers {
        f = f.header(k.to_string(), *v);
    }
    Item::Frame(f)
}

fn sent(s: &mut ServerSession, now: u64) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(o) = s.poll_transmit(now) {
        if let Outgoing::Frame(f) = o {
            out.push(f);
        }
    }
    out
}

fn events(s: &mut ServerSession) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn connected(config: ServerConfig, heartbeat: &str) -> ServerSession {
    let mut s = ServerSession::new(config, 0);
    s.handle_item(
        0,
        frame(
            Command::Connect,
            &[
                ("accept-version", "1.1,1.2"),
                ("host", "/"),
                ("login", "c1"),
                ("passcode", "pw"),
                ("heart-beat", heartbeat),
            ],
        ),
    );
    assert_eq!(
        events(&mut s),
        vec![Event::Authenticate {
            login: Some("c1".into()),
            passcode: Some("pw".into())
        }]
    );
    assert!(!s.wants_read(), "no reading while authenticating");
    s.authenticated(0, Ok("c1".into()));
    let f = sent(&mut s, 0);
    assert_eq!(f[0].command, Command::Connected);
    assert_eq!(f[0].get("version"), Some("1.2"));
    s
}

fn publish_ops(evs: &[Event]) -> Vec<u64> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Publish { op, .. } => Some(*op),
            _ => None,
        })
        .collect()
}

fn receipts(frames: &[Frame]) -> Vec<&str> {
    frames
        .iter()
        .filter(|f| f.command == Command::Receipt)
        .filter_map(|f| f.get("receipt-id"))
        .collect()
}

#[test]
fn refuses_old_versions_and_frames_before_connect() {
    let mut s = ServerSession::new(ServerConfig::default(), 0);
    s.handle_item(0, frame(Command::Connect, &[("accept-version", "1.0,1.1")]));
    let f = sent(&mut s, 0);
    assert_eq!(
        (f[0].command, f[0].get("code")),
        (Command::Error, Some("unsupported_version"))
    );
    assert!(matches!(events(&mut s).last(), Some(Event::Close { .. })));

    let mut s = ServerSession::new(ServerConfig::default(), 0);
    s.handle_item(
        0,
        frame(
            Command::Send,
            &[("destination", "/topic/a"), ("receipt", "r1")],
        ),
    );
    let f = sent(&mut s, 0);
    assert_eq!(
        (f[0].command, f[0].get("code"), f[0].get("receipt-id")),
        (Command::Error, Some("protocol_error"), Some("r1"))
    );
}

#[test]
fn connect_timeout_and_failed_login() {
    let mut s = ServerSession::new(
        ServerConfig {
            connect_timeout_ms: 100,
            ..Default::default()
        },
        0,
    );
    assert_eq!(s.poll_timeout(), Some(100));
    s.handle_timeout(99);
    assert!(!s.is_closing());
    s.handle_timeout(100);
    assert!(s.is_closing());
    assert_eq!(sent(&mut s, 100)[0].get("code"), Some("request_timeout"));

    let mut s = ServerSession::new(ServerConfig::default(), 0);
    s.handle_item(0, frame(Command::Stomp, &[("accept-version", "1.2")]));
    events(&mut s);
    s.authenticated(
        1,
        Err(StompError::new(
            "invalid_credentials",
            "unknown client or wrong secret",
        )),
    );
    let f = sent(&mut s, 1);
    assert_eq!(
        (f[0].command, f[0].get("code")),
        (Command::Error, Some("invalid_credentials"))
    );
    assert!(s.is_closing());
}

#[test]
fn receipts_go_out_in_order_and_each_confirms_everything_before_it() {
    let mut s = connected(ServerConfig::default(), "0,0");
    for r in ["m1", "m2", "m3"] {
        s.handle_item(
            1,
            frame(
                Command::Send,
                &[("destination", "/topic/a.b"), ("receipt", r)],
            ),
        );
    }
    let ops = publish_ops(&events(&mut s));
    assert_eq!(ops.len(), 3);
    s.complete(ops[2], Ok(()));
    assert!(
        receipts(&sent(&mut s, 2)).is_empty(),
        "m3 waits for m1 and m2"
    );
    s.complete(ops[0], Ok(()));
    assert_eq!(receipts(&sent(&mut s, 3)), ["m1"]);
    s.complete(ops[1], Ok(()));
    assert_eq!(receipts(&sent(&mut s, 4)), ["m2", "m3"]);
}

#[test]
fn cumulative_receipts_confirm_a_run_with_its_newest() {
    let config = ServerConfig {
        cumulative_receipts: true,
        ..ServerConfig::default()
    };
    let mut s = connected(config, "0,0");
    for r in ["1", "2", "3", "4"] {
        s.handle_item(
            1,
            frame(
                Command::Send,
                &[("destination", "/exchange/accounts_in"), ("receipt", r)],
            ),
        );
    }
    let evs = events(&mut s);
    assert!(
        matches!(&evs[0], Event::Publish { destination: Destination::Exchange(e), .. } if e == "accounts_in")
    );
    let ops = publish_ops(&evs);
    s.complete(ops[1], Ok(()));
    s.complete(ops[2], Ok(()));
    assert!(receipts(&sent(&mut s, 2)).is_empty(), "all wait for 1");
    s.complete(ops[0], Ok(()));
    assert_eq!(receipts(&sent(&mut s, 3)), ["3"], "one receipt for 1 to 3");
    s.complete(ops[3], Ok(()));
    assert_eq!(receipts(&sent(&mut s, 4)), ["4"]);
    s.handle_item(5, frame(Command::Disconnect, &[("receipt", "bye")]));
    assert_eq!(receipts(&sent(&mut s, 5)), ["bye"]);
}

#[test]
fn send_carries_destination_content_type_and_custom_headers() {
    let mut s = connected(ServerConfig::default(), "0,0");
    let mut f = Frame::new(Command::Send)
        .header("destination", "/queue/c2-inbox")
        .header("content-type", "application/json")
        .header("type", "PrepareTransfer")
        .header("persistent", "true")
        .header("receipt", "9");
    f.body = Bytes::from_static(b"{\"x\":1}");
    s.handle_item(1, Item::Frame(f));
    match events(&mut s).as_slice() {
        [Event::Publish {
            destination,
            body,
            content_type,
            headers,
            ..
        }] => {
            assert_eq!(destination, &Destination::Queue("c2-inbox".into()));
            assert_eq!(&body[..], b"{\"x\":1}");
            assert_eq!(content_type.as_deref(), Some("application/json"));
            assert_eq!(
                headers,
                &vec![
                    ("type".to_string(), "PrepareTransfer".to_string()),
                    ("persistent".to_string(), "true".to_string())
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    s.handle_item(2, frame(Command::Send, &[("destination", "/temp-queue/x")]));
    assert_eq!(sent(&mut s, 2)[0].get("code"), Some("invalid_destination"));
}

#[test]
fn a_full_buffer_stops_reading_until_commits_catch_up() {
    let mut s = connected(
        ServerConfig {
            buffer: 3,
            ..Default::default()
        },
        "0,0",
    );
    for _ in 0..3 {
        assert!(s.wants_read());
        s.handle_item(1, frame(Command::Send, &[("destination", "/topic/a")]));
    }
    assert!(!s.wants_read());
    let ops = publish_ops(&events(&mut s));
    s.complete(ops[0], Ok(()));
    assert!(s.wants_read());
}

#[test]
fn a_failed_publish_is_an_error_naming_its_receipt_then_close() {
    let mut s = connected(ServerConfig::default(), "0,0");
    s.handle_item(
        1,
        frame(
            Command::Send,
            &[("destination", "/topic/a"), ("receipt", "m1")],
        ),
    );
    let ops = publish_ops(&events(&mut s));
    s.complete(ops[0], Err(StompError::new("queue_full", "queue full")));
    let f = sent(&mut s, 2);
    assert_eq!(
        (f[0].command, f[0].get("code"), f[0].get("receipt-id")),
        (Command::Error, Some("queue_full"), Some("m1"))
    );
    assert!(matches!(events(&mut s).as_slice(), [Event::Close { .. }]));
}

#[test]
fn nothing_goes_out_after_error() {
    // A SUBSCRIBE and a SEND still in the driver's hands when a bad frame ends the session
    // (the malformed-input test met this): their receipts and any delivery must not
    // follow the ERROR, and leased messages go back.
    let mut s = connected(ServerConfig::default(), "0,0");
    assert_eq!(subscribe(&mut s, "s1", "client-individual", "2"), 2);
    s.handle_item(
        1,
        frame(
            Command::Send,
            &[("destination", "/topic/a"), ("receipt", "m1")],
        ),
    );
    let ops = publish_ops(&events(&mut s));
    s.decode_failed("malformed_frame", "bad header".into());
    s.complete(ops[0], Ok(()));
    s.deliver("s1", vec![message(1)]);
    let f = sent(&mut s, 2);
    assert_eq!(
        f.iter().map(|f| f.command).collect::<Vec<_>>(),
        vec![Command::Error],
        "{f:?}"
    );
    let evs = events(&mut s);
    assert!(matches!(evs.first(), Some(Event::Close { .. })), "{evs:?}");
    assert!(
        evs.iter().any(
            |e| matches!(e, Event::Unsubscribe { unacked, .. } if unacked == &["c1-inbox/1/1"])
        ),
        "{evs:?}"
    );
}

fn subscribe(s: &mut ServerSession, id: &str, ack: &str, prefetch: &str) -> usize {
    s.handle_item(
        1,
        frame(
            Command::Subscribe,
            &[
                ("id", id),
                ("destination", "/queue/c1-inbox"),
                ("ack", ack),
                ("prefetch-count", prefetch),
            ],
        ),
    );
    let op = match events(s).as_slice() {
        [Event::Subscribe {
            op,
            ack: mode,
            destination,
            ..
        }] => {
            assert_eq!(destination, &Destination::Queue("c1-inbox".into()));
            assert_ne!(*mode, AckMode::Auto);
            *op
        }
        other => panic!("{other:?}"),
    };
    s.complete(op, Ok(()));
    match events(s).as_slice() {
        [Event::Fetch { id: fid, max }] => {
            assert_eq!(fid, id);
            *max
        }
        other => panic!("{other:?}"),
    }
}

fn message(n: u64) -> Delivered {
    Delivered {
        message_id: n,
        destination: "/queue/c1-inbox".into(),
        body: Bytes::from(format!("{n}")),
        content_type: None,
        headers: vec![("type".into(), "T".into())],
        redelivered: n == 2,
        receipt: Some(format!("c1-inbox/{n}/1")),
    }
}

#[test]
fn client_individual_ack_settles_one_message_and_refills_the_window() {
    let mut s = connected(ServerConfig::default(), "0,0");
    assert_eq!(subscribe(&mut s, "s1", "client-individual", "2"), 2);
    s.deliver("s1", vec![message(1), message(2)]);
    let f = sent(&mut s, 2);
    assert_eq!(f.len(), 2);
    assert_eq!(
        (
            f[0].get("subscription"),
            f[0].get("ack"),
            f[0].get("message-id")
        ),
        (Some("s1"), Some("c1-inbox/1/1"), Some("1"))
    );
    assert_eq!(
        (f[1].get("redelivered"), f[1].get("type")),
        (Some("true"), Some("T"))
    );
    assert!(events(&mut s).is_empty(), "the window is full: no fetch");
    s.handle_item(
        3,
        frame(Command::Ack, &[("id", "c1-inbox/2/1"), ("receipt", "a1")]),
    );
    let ev = events(&mut s);
    let op = match &ev[..] {
        [Event::Settle {
            op,
            receipts,
            ack: true,
        }, Event::Fetch { max: 1, .. }] => {
            assert_eq!(receipts, &vec!["c1-inbox/2/1".to_string()]);
            *op
        }
        other => panic!("{other:?}"),
    };
    assert!(
        receipts(&sent(&mut s, 3)).is_empty(),
        "the receipt waits for the settle"
    );
    s.complete(op, Ok(()));
    assert_eq!(receipts(&sent(&mut s, 4)), ["a1"]);
    // Acking it again is an error.
    s.handle_item(5, frame(Command::Ack, &[("id", "c1-inbox/2/1")]));
    assert_eq!(sent(&mut s, 5)[0].get("code"), Some("unknown_receipt"));
    match events(&mut s).as_slice() {
        [Event::Close { unacked }] => assert_eq!(
            unacked,
            &vec!["c1-inbox/1/1".to_string()],
            "the unacked one goes back"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn client_ack_is_cumulative_and_nack_gives_back() {
    let mut s = connected(ServerConfig::default(), "0,0");
    subscribe(&mut s, "s1", "client", "10");
    s.deliver("s1", vec![message(1), message(2), message(3)]);
    sent(&mut s, 2);
    events(&mut s);
    s.handle_item(3, frame(Command::Ack, &[("id", "c1-inbox/2/1")]));
    match events(&mut s).as_slice() {
        [Event::Settle {
            receipts,
            ack: true,
            ..
        }, ..] => assert_eq!(
            receipts,
            &vec!["c1-inbox/1/1".to_string(), "c1-inbox/2/1".to_string()]
        ),
        other => panic!("{other:?}"),
    }
    s.handle_item(4, frame(Command::Nack, &[("id", "c1-inbox/3/1")]));
    match events(&mut s).as_slice() {
        [Event::Settle {
            receipts,
            ack: false,
            ..
        }, ..] => assert_eq!(receipts, &vec!["c1-inbox/3/1".to_string()]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_nack_refills_the_window_once_settled() {
    let mut s = connected(ServerConfig::default(), "0,0");
    subscribe(&mut s, "s1", "client-individual", "2");
    s.deliver("s1", vec![message(1), message(2)]);
    sent(&mut s, 2);
    assert!(events(&mut s).is_empty(), "the window is full: no fetch");
    s.handle_item(3, frame(Command::Nack, &[("id", "c1-inbox/1/1")]));
    // The message given back keeps its place, but is deliverable only once the settle is
    // done: a fetch before that would hand out later messages ahead of it.
    let op = match events(&mut s).as_slice() {
        [Event::Settle { op, ack: false, .. }] => *op,
        other => panic!("{other:?}"),
    };
    s.complete(op, Ok(()));
    match events(&mut s).as_slice() {
        [Event::Fetch { id, max: 1 }] => assert_eq!(id, "s1"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn transactions_hold_frames_until_commit() {
    let mut s = connected(ServerConfig::default(), "0,0");
    s.handle_item(1, frame(Command::Begin, &[("transaction", "t1")]));
    s.handle_item(
        1,
        frame(
            Command::Send,
            &[("destination", "/topic/a"), ("transaction", "t1")],
        ),
    );
    s.handle_item(
        1,
        frame(
            Command::Send,
            &[("destination", "/topic/b"), ("transaction", "t1")],
        ),
    );
    assert!(events(&mut s).is_empty());
    s.handle_item(
        2,
        frame(Command::Commit, &[("transaction", "t1"), ("receipt", "c")]),
    );
    // The transaction's SENDs are one atomic publish.
    let op = match events(&mut s).as_slice() {
        [Event::PublishBatch { op, items }] => {
            assert_eq!(
                items
                    .iter()
                    .map(|i| i.destination.clone())
                    .collect::<Vec<_>>(),
                vec![
                    Destination::Topic("a".into()),
                    Destination::Topic("b".into())
                ]
            );
            *op
        }
        other => panic!("{other:?}"),
    };
    assert!(
        receipts(&sent(&mut s, 2)).is_empty(),
        "the COMMIT receipt waits for the batch"
    );
    s.complete(op, Ok(()));
    assert_eq!(receipts(&sent(&mut s, 3)), ["c"]);
    s.handle_item(4, frame(Command::Begin, &[("transaction", "t2")]));
    s.handle_item(
        4,
        frame(
            Command::Send,
            &[("destination", "/topic/a"), ("transaction", "t2")],
        ),
    );
    s.handle_item(4, frame(Command::Abort, &[("transaction", "t2")]));
    assert!(events(&mut s).is_empty(), "aborted: nothing published");
    s.handle_item(
        5,
        frame(
            Command::Send,
            &[("destination", "/topic/a"), ("transaction", "t2")],
        ),
    );
    assert_eq!(sent(&mut s, 5)[0].get("code"), Some("protocol_error"));
}

#[test]
fn disconnect_receipt_waits_for_everything_before_it() {
    let mut s = connected(ServerConfig::default(), "0,0");
    s.handle_item(1, frame(Command::Send, &[("destination", "/topic/a")]));
    s.handle_item(1, frame(Command::Disconnect, &[("receipt", "bye")]));
    let ops = publish_ops(&events(&mut s));
    assert!(receipts(&sent(&mut s, 1)).is_empty());
    assert!(!s.wants_read());
    s.complete(ops[0], Ok(()));
    assert_eq!(receipts(&sent(&mut s, 2)), ["bye"]);
    assert!(matches!(events(&mut s).as_slice(), [Event::Close { .. }]));
}

#[test]
fn heart_beats_are_negotiated_sent_and_enforced() {
    // Client can send every 1000 ms and wants one every 2000 ms; the server (3000, 500).
    let config = ServerConfig {
        heartbeat_send_ms: 3000,
        heartbeat_recv_ms: 500,
        ..Default::default()
    };
    let mut s = connected(config, "1000,2000");
    // The server sends every max(3000, 2000) ms and expects every max(1000, 500) ms.
    s.handle_item(2900, Item::HeartBeat);
    s.handle_timeout(2999);
    assert_eq!(s.poll_transmit(2999), None);
    s.handle_timeout(3000);
    assert_eq!(s.poll_transmit(3000), Some(Outgoing::HeartBeat));
    s.handle_timeout(2900 + 2999);
    assert!(!s.is_closing());
    s.handle_timeout(2900 + 3000);
    assert!(
        s.is_closing(),
        "silent for twice the interval plus a second"
    );
    assert_eq!(sent(&mut s, 5900)[0].get("code"), Some("heartbeat_timeout"));
}

#[test]
fn no_heart_beats_when_either_side_says_zero() {
    let mut s = connected(ServerConfig::default(), "0,0");
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(1_000_000);
    assert!(!s.is_closing());
}
