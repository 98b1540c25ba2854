//! The relay (`GET /relay`) with gateways of the Rust SDK (`trunkline_client::peer`):
//! requests and responses between twins, sealed end to end; sessions offline and back;
//! and what an attacker tries, refused.

use std::time::Duration;

use trunkline_client::peer::{codes, Draft, Peer, PeerConfig};
use trunkline_client::relay::{unix_now, RelayConn};
use trunkline_envelope::{Address, Envelope, Identity, Kind, Payload, Who};
use trunkline_testkit::TestServer;

/// Registers a twin for a fresh key; returns the key and the twin's id.
async fn twin(server: &TestServer, seed: u8, relays: &[String]) -> (Identity, u32) {
    let id = Identity::from_seed(&[seed; 32]);
    let info = server
        .admin()
        .register_twin(&id, relays)
        .await
        .expect("register twin");
    (id, info.id)
}

fn peer(
    server: &TestServer,
    identity: &Identity,
    twin: u32,
) -> (Peer, tokio::sync::mpsc::Receiver<Envelope>) {
    Peer::start(PeerConfig::new(identity.clone(), twin, &server.http)).expect("peer")
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<Envelope>) -> Envelope {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an envelope in time")
        .expect("the peer runs")
}

#[tokio::test]
async fn twins_exchange_sealed_requests_and_responses_through_one_relay() {
    let server = TestServer::start().await;
    let (alice_key, alice) = twin(&server, 1, &[]).await;
    let (bob_key, bob) = twin(&server, 2, &[]).await;
    let (a, mut a_in) = peer(&server, &alice_key, alice);
    let (b, mut b_in) = peer(&server, &bob_key, bob);

    for i in 0..20u32 {
        let body = format!("question {i}").into_bytes();
        let uid = a
            .send(Draft::request(Address::twin(bob), "echo", body.clone()))
            .await
            .expect("send");
        let req = next(&mut b_in).await;
        assert_eq!(req.uid, uid);
        assert_eq!(req.source, Address::twin(alice));
        assert_eq!(
            req.kind,
            Kind::Request {
                command: "echo".into()
            }
        );
        assert_eq!(req.payload, Payload::Plain(body.clone()));
        b.send(Draft::response(req.source.clone(), &req.uid, body.clone()))
            .await
            .expect("answer");
        let resp = next(&mut a_in).await;
        assert_eq!(
            (resp.uid.as_str(), &resp.kind),
            (uid.as_str(), &Kind::Response)
        );
        assert_eq!(resp.source, Address::twin(bob));
        assert_eq!(resp.payload, Payload::Plain(body));
    }

    // To itself, through the relay too.
    let uid = a
        .send(Draft::request(Address::twin(alice), "self", b"me".to_vec()))
        .await
        .expect("send to self");
    let got = next(&mut a_in).await;
    assert_eq!(
        (got.uid, got.payload),
        (uid, Payload::Plain(b"me".to_vec()))
    );

    // What the relay counted (a delivery is counted once its ack is synced, which may
    // end after the envelope arrived).
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text =
            trunkline_testkit::metrics_text(&http, &server.backend, &server.backend_key).await;
        let delivered = trunkline_testkit::metric(&text, "trunkline_relay_delivered_total");
        if delivered >= Some(41) || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let m = |name| trunkline_testkit::metric(&text, name).unwrap_or(0);
    assert_eq!(m("trunkline_relay_stored_total"), 41, "{text}");
    assert_eq!(m("trunkline_relay_delivered_total"), 41);
    assert_eq!(m("trunkline_relay_connections"), 2);
    assert_eq!(m("trunkline_relay_refused_total"), 0);

    // A twin the registry does not have: refused before anything is sent.
    let e = a
        .send(Draft::request(Address::twin(999), "x", Vec::new()))
        .await
        .expect_err("unknown twin");
    assert_eq!(e.code(), codes::UNKNOWN_TWIN);
    server.stop().await;
}

#[tokio::test]
async fn a_session_offline_gets_its_envelopes_in_order_when_it_returns() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start_in(dir.path(), |_| {}).await;
    let (alice_key, alice) = twin(&server, 1, &[]).await;
    let (bob_key, bob) = twin(&server, 2, &[]).await;
    let (a, _a_in) = peer(&server, &alice_key, alice);
    let mut sent = Vec::new();
    for i in 0..50u32 {
        let uid = a
            .send(Draft::request(
                Address::twin(bob),
                "later",
                i.to_be_bytes().to_vec(),
            ))
            .await
            .expect("send");
        sent.push(uid);
    }
    // Each is in bob's queue, durable, before bob ever connects.
    let queue = trunkline_server::relay::Relay::queue_name(&Address::twin(bob));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let depth = server.depth(&queue).await;
        if depth == 50 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "queued: {depth}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(a);
    let (_b, mut b_in) = peer(&server, &bob_key, bob);
    for (i, uid) in sent.iter().enumerate() {
        let got = next(&mut b_in).await;
        assert_eq!(&got.uid, uid, "envelope {i} in order");
        assert_eq!(
            got.payload,
            Payload::Plain((i as u32).to_be_bytes().to_vec())
        );
    }
    server.stop().await;
}

/// A raw connection logged in as `who` with `key`, for what the SDK would never send.
async fn raw(server: &TestServer, key: &Identity, twin: u32) -> RelayConn {
    RelayConn::connect(
        &server.http,
        key,
        Who::Twin {
            id: twin,
            session: None,
        },
    )
    .await
    .expect("login")
}

#[tokio::test]
async fn a_login_signed_by_another_twin_is_refused() {
    let server = TestServer::start().await;
    let (_alice_key, alice) = twin(&server, 1, &[]).await;
    let (mallory_key, _mallory) = twin(&server, 9, &[]).await;
    let err = RelayConn::connect(
        &server.http,
        &mallory_key,
        Who::Twin {
            id: alice,
            session: None,
        },
    )
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("login refused"), "{err}");
    server.stop().await;
}

/// Sends raw bytes as alice and returns what the relay answers, if anything, within 2 s.
async fn answer_to(conn: RelayConn, bytes: Vec<u8>) -> Option<Envelope> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut sink, mut stream) = conn.split();
    sink.send(Message::Binary(bytes.into()))
        .await
        .expect("send");
    match tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
        Ok(Some(Ok(Message::Binary(b)))) => Some(Envelope::decode(&b).expect("an envelope")),
        _ => None,
    }
}

#[tokio::test]
async fn forged_tampered_replayed_and_expired_envelopes_do_not_pass() {
    let server = TestServer::start().await;
    let (alice_key, alice) = twin(&server, 1, &[]).await;
    let (bob_key, bob) = twin(&server, 2, &[]).await;
    let (mallory_key, mallory) = twin(&server, 9, &[]).await;
    let (_b, mut b_in) = peer(&server, &bob_key, bob);
    let relay_key = RelayConn::connect(
        &server.http,
        &alice_key,
        Who::Twin {
            id: alice,
            session: None,
        },
    )
    .await
    .expect("login")
    .relay_key;

    let make = |from: u32, key: &Identity, now: u64, ttl: u32, uid: &str| {
        let ad = trunkline_envelope::seal::associated_data(
            &Address::twin(from),
            &Address::twin(bob),
            uid,
        );
        let cipher =
            trunkline_envelope::seal::seal(b"canary", key, &bob_key.public(), &ad).expect("seal");
        let mut e = Envelope::new(
            uid,
            Address::twin(from),
            Address::twin(bob),
            Kind::Request {
                command: "c".into(),
            },
            Payload::Cipher(cipher),
            now,
            ttl,
        );
        e.sign(key).expect("sign");
        e
    };
    let refused = |e: Option<Envelope>, code: u32| {
        let e = e.expect("an error envelope");
        e.verify(&relay_key).expect("signed by the relay");
        assert_eq!(e.source, Address::twin(0));
        match e.kind {
            Kind::Error { code: c, .. } => assert_eq!(c, code),
            k => panic!("not an error: {k:?}"),
        }
    };
    let now = unix_now();

    // Mallory, logged in as mallory, sends as alice (signed by mallory): wrong source.
    let forged = make(alice, &mallory_key, now, 60, "forged");
    let e = answer_to(
        raw(&server, &mallory_key, mallory).await,
        forged.encode().unwrap(),
    )
    .await;
    refused(e, codes::INVALID_ENVELOPE);

    // Alice's envelope re-signed by mallory, sent on alice's connection: bad signature.
    let mut resigned = make(alice, &alice_key, now, 60, "resigned");
    resigned.sign(&mallory_key).unwrap();
    let e = answer_to(
        raw(&server, &alice_key, alice).await,
        resigned.encode().unwrap(),
    )
    .await;
    refused(e, codes::INVALID_SIGNATURE);

    // Tampered: a header field and a payload byte changed after signing.
    let mut t = make(alice, &alice_key, now, 60, "tamper");
    t.kind = Kind::Request {
        command: "d".into(),
    };
    let e = answer_to(raw(&server, &alice_key, alice).await, t.encode().unwrap()).await;
    refused(e, codes::INVALID_SIGNATURE);
    let mut wire = make(alice, &alice_key, now, 60, "tamper2")
        .encode()
        .unwrap();
    let n = wire.len();
    wire[n - 70] ^= 1;
    let e = answer_to(raw(&server, &alice_key, alice).await, wire).await;
    refused(e, codes::INVALID_SIGNATURE);

    // Expired.
    let old = make(alice, &alice_key, now - 120, 60, "old");
    let e = answer_to(raw(&server, &alice_key, alice).await, old.encode().unwrap()).await;
    refused(e, codes::EXPIRED);

    // A good one, then the same bytes again: delivered once.
    let good = make(alice, &alice_key, now, 60, "good").encode().unwrap();
    assert!(
        answer_to(raw(&server, &alice_key, alice).await, good.clone())
            .await
            .is_none()
    );
    assert!(answer_to(raw(&server, &alice_key, alice).await, good)
        .await
        .is_none());
    let got = next(&mut b_in).await;
    assert_eq!(got.uid, "good");
    assert_eq!(got.payload, Payload::Plain(b"canary".to_vec()));
    // Nothing else reached bob: none of the refused ones, and not the replay.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), b_in.recv())
            .await
            .is_err(),
        "only the good envelope reaches bob"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_relay_holds_ciphertext_only() {
    if TestServer::on_rabbitmq() {
        eprintln!("skipped: with a RabbitMQ broker the envelopes are in RabbitMQ's files");
        return;
    }
    let server = TestServer::start().await;
    let (alice_key, alice) = twin(&server, 1, &[]).await;
    let (_bob_key, bob) = twin(&server, 2, &[]).await;
    let (a, _a_in) = peer(&server, &alice_key, alice);
    let canary = b"CANARY-the-relay-must-not-read-this".to_vec();
    a.send(Draft::request(Address::twin(bob), "secret", canary.clone()))
        .await
        .expect("send");
    let uid = a
        .send(Draft::request(
            Address::twin(bob),
            "secret2",
            canary.clone(),
        ))
        .await
        .expect("send");
    // Both wait in bob's queue, durable: on the relay's disk. Its files hold the
    // envelope (its uid is there) but not the canary.
    let queue = trunkline_server::relay::Relay::queue_name(&Address::twin(bob));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server.depth(&queue).await < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut files = vec![server.data_dir().to_owned()];
    let (mut uid_seen, mut canary_seen, mut bytes) = (false, false, 0usize);
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(
                std::fs::read_dir(&p)
                    .expect("dir")
                    .map(|e| e.expect("entry").path()),
            );
        } else if let Ok(b) = std::fs::read(&p) {
            bytes += b.len();
            uid_seen |= b.windows(uid.len()).any(|w| w == uid.as_bytes());
            canary_seen |= b.windows(canary.len()).any(|w| w == canary);
        }
    }
    assert!(
        uid_seen,
        "the envelope is in the relay's files ({bytes} bytes read)"
    );
    assert!(!canary_seen, "the payload is not readable there");
    server.stop().await;
}

/// Two nodes whose relays forward to each other, the first one's registry shared (as
/// RMB's relays share the chain). Ports are picked first: each relay's configuration
/// names the other.
async fn two_relays() -> (TestServer, TestServer, Identity, Identity) {
    use trunkline_server::config::RelayPeer;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (k1, k2) = (
        Identity::from_seed(&[101; 32]),
        Identity::from_seed(&[102; 32]),
    );
    std::fs::write(d1.path().join("relay.seed"), k1.seed()).unwrap();
    std::fs::write(d2.path().join("relay.seed"), k2.seed()).unwrap();
    let (p1, p2) = (
        trunkline_testkit::free_port(),
        trunkline_testkit::free_port(),
    );
    let (n1, n2) = (
        format!("http://127.0.0.1:{p1}"),
        format!("http://127.0.0.1:{p2}"),
    );
    let peer = |name: &str, key: &Identity| RelayPeer {
        name: name.to_owned(),
        key: key.public().to_text(),
    };
    let (peer1, peer2) = (peer(&n1, &k1), peer(&n2, &k2));
    let mut s1 = TestServer::start_in(d1.path(), |c| {
        c.http = format!("127.0.0.1:{p1}").parse().unwrap();
        c.relay.peers = vec![peer2];
    })
    .await;
    let n1c = n1.clone();
    let mut s2 = TestServer::start_in(d2.path(), |c| {
        c.http = format!("127.0.0.1:{p2}").parse().unwrap();
        c.relay.peers = vec![peer1];
        c.relay.registry = n1c;
    })
    .await;
    s1.keep_dir(d1);
    s2.keep_dir(d2);
    (s1, s2, k1, k2)
}

#[tokio::test]
async fn twins_of_two_relays_reach_each_other_through_forwarding() {
    let (s1, s2, _k1, _k2) = two_relays().await;
    let (alice_key, alice) = twin(&s1, 1, std::slice::from_ref(&s1.http)).await;
    let (bob_key, bob) = twin(&s1, 2, std::slice::from_ref(&s2.http)).await;
    let (a, mut a_in) = peer(&s1, &alice_key, alice);
    let (b, mut b_in) = Peer::start(PeerConfig {
        relays: vec![s2.http.clone()],
        ..PeerConfig::new(bob_key.clone(), bob, &s1.http)
    })
    .expect("peer");
    for i in 0..20u32 {
        let uid = a
            .send(Draft::request(
                Address::twin(bob),
                "echo",
                i.to_be_bytes().to_vec(),
            ))
            .await
            .expect("send");
        let req = next(&mut b_in).await;
        assert_eq!(
            (req.uid.as_str(), &req.source),
            (uid.as_str(), &Address::twin(alice))
        );
        b.send(Draft::response(
            req.source.clone(),
            &req.uid,
            req.payload.bytes().to_vec(),
        ))
        .await
        .expect("answer");
        let resp = next(&mut a_in).await;
        assert_eq!(resp.uid, uid);
        assert_eq!(resp.payload, Payload::Plain(i.to_be_bytes().to_vec()));
    }
    s2.stop().await;
    s1.stop().await;
}

#[tokio::test]
async fn relays_not_listed_as_peers_cannot_log_in() {
    let (s1, s2, _k1, k2) = two_relays().await;
    let stranger = Identity::from_seed(&[66; 32]);
    for (key, name) in [
        (&stranger, "http://127.0.0.1:1".to_owned()),
        // A listed relay's name with another key.
        (&stranger, s2.http.clone()),
        // A listed key under another name.
        (&k2, "http://127.0.0.1:1".to_owned()),
    ] {
        let err = RelayConn::connect(&s1.http, key, Who::Relay { name: name.clone() })
            .await
            .err()
            .unwrap_or_else(|| panic!("{name} logged in"));
        assert!(err.to_string().contains("login refused"), "{err}");
    }
    // The listed one, with its key, may.
    RelayConn::connect(
        &s1.http,
        &k2,
        Who::Relay {
            name: s2.http.clone(),
        },
    )
    .await
    .expect("the peer relay logs in");
    s2.stop().await;
    s1.stop().await;
}

/// What a raw connection gave next.
enum Got {
    Frame(tokio_tungstenite::tungstenite::Message),
    Closed,
    /// Nothing within the time.
    Quiet,
}

async fn frame(stream: &mut trunkline_client::relay::RelayStream, within: Duration) -> Got {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    match tokio::time::timeout(within, stream.next()).await {
        Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => Got::Closed,
        Ok(Some(Ok(m))) => Got::Frame(m),
        Err(_) => Got::Quiet,
    }
}

/// Reads frames until one is an envelope; `None` if the connection closes or is quiet.
async fn next_envelope(stream: &mut trunkline_client::relay::RelayStream) -> Option<Envelope> {
    use tokio_tungstenite::tungstenite::Message;
    for _ in 0..20 {
        match frame(stream, Duration::from_secs(5)).await {
            Got::Frame(Message::Binary(b)) => {
                return Some(Envelope::decode(&b).expect("an envelope"))
            }
            Got::Frame(_) => {}
            Got::Closed | Got::Quiet => return None,
        }
    }
    None
}

/// Does the connection close within `within`?
async fn closes_within(
    stream: &mut trunkline_client::relay::RelayStream,
    within: Duration,
) -> bool {
    let end = tokio::time::Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        match frame(stream, left).await {
            Got::Closed => return true,
            Got::Frame(_) => {}
            Got::Quiet => return false,
        }
    }
}

#[tokio::test]
async fn the_relay_answers_pings_and_confirms_what_it_stored() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = TestServer::start().await;
    let (alice_key, alice) = twin(&server, 1, &[]).await;
    let conn = raw(&server, &alice_key, alice).await;
    let relay_key = conn.relay_key;
    let (mut sink, mut stream) = conn.split();
    let mut ping = Envelope::new(
        "p1",
        Address::twin(alice),
        Address::twin(0),
        Kind::Ping,
        Payload::Plain(Vec::new()),
        unix_now(),
        60,
    );
    ping.sign(&alice_key).unwrap();
    sink.send(Message::Binary(ping.encode().unwrap().into()))
        .await
        .unwrap();
    let pong = next_envelope(&mut stream).await.expect("a pong");
    assert_eq!((&pong.kind, pong.uid.as_str()), (&Kind::Pong, "p1"));
    pong.verify(&relay_key).expect("signed by the relay");
    // And the first envelope is confirmed.
    let mut stored = 0;
    for _ in 0..5 {
        if let Got::Frame(Message::Text(t)) = frame(&mut stream, Duration::from_secs(5)).await {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            stored = v["stored"].as_u64().unwrap_or(0);
            if stored == 1 {
                break;
            }
        }
    }
    assert_eq!(stored, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_newer_login_ends_the_older_connection_of_a_session() {
    let server = TestServer::start().await;
    let (alice_key, alice) = twin(&server, 1, &[]).await;
    let (_, mut old) = raw(&server, &alice_key, alice).await.split();
    let _newer = raw(&server, &alice_key, alice).await;
    assert!(
        closes_within(&mut old, Duration::from_secs(5)).await,
        "the older one is closed"
    );
    server.stop().await;
}

#[tokio::test]
async fn text_frames_and_bytes_that_are_no_envelope_close_the_connection() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = TestServer::start().await;
    let (alice_key, alice) = twin(&server, 1, &[]).await;
    for bad in [
        Message::Text("{\"hello\": 1}".into()),
        Message::Binary(b"TLE\x01 not really".to_vec().into()),
    ] {
        let (mut sink, mut stream) = raw(&server, &alice_key, alice).await.split();
        sink.send(bad).await.unwrap();
        assert!(closes_within(&mut stream, Duration::from_secs(5)).await);
    }
    // Larger than max_envelope_bytes (4 MiB): closed, nothing stored.
    let (mut sink, mut stream) = raw(&server, &alice_key, alice).await.split();
    let _ = sink.send(Message::Binary(vec![0u8; 5 << 20].into())).await;
    assert!(closes_within(&mut stream, Duration::from_secs(5)).await);
    server.stop().await;
}

#[tokio::test]
async fn a_twin_past_its_rate_gets_errors_and_stays_connected() {
    let server = TestServer::start_with(|c| c.relay.rate_messages_per_minute = 5).await;
    let (alice_key, alice) = twin(&server, 1, &[]).await;
    let (_bob_key, bob) = twin(&server, 2, &[]).await;
    let (a, mut a_in) = peer(&server, &alice_key, alice);
    for _ in 0..8 {
        a.send(Draft::request(Address::twin(bob), "flood", Vec::new()))
            .await
            .expect("send");
    }
    let mut limited = 0;
    for _ in 0..3 {
        let e = next(&mut a_in).await;
        assert_eq!(e.source, Address::twin(0));
        if let Kind::Error { code, .. } = e.kind {
            assert_eq!(code, codes::RATE_LIMITED);
            limited += 1;
        }
    }
    assert_eq!(limited, 3, "the 6th to 8th are refused");
    // The first 5 are stored (the refusals may come back before their syncs end).
    let queue = trunkline_server::relay::Relay::queue_name(&Address::twin(bob));
    let depth = || server.depth(&queue);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while depth().await < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(depth().await, 5);
    server.stop().await;
}

#[tokio::test]
async fn a_twin_has_at_most_its_sessions_waiting() {
    let server = TestServer::start_with(|c| c.relay.max_sessions_per_twin = 2).await;
    let (alice_key, alice) = twin(&server, 1, &[]).await;
    let login = |s: &str| {
        RelayConn::connect(
            &server.http,
            &alice_key,
            Who::Twin {
                id: alice,
                session: Some(s.to_owned()),
            },
        )
    };
    let _one = login("one").await.expect("one");
    let _two = login("two").await.expect("two");
    let err = login("three")
        .await
        .err()
        .expect("a third session is refused");
    assert!(err.to_string().contains("sessions"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn a_twin_whose_key_changes_loses_its_connections() {
    let server = TestServer::start().await;
    let (alice_key, alice) = twin(&server, 1, &[]).await;
    let (_, mut stream) = raw(&server, &alice_key, alice).await.split();
    // The twin hands its id to a new key (signed with the old one).
    let new_key = Identity::from_seed(&[11; 32]);
    trunkline_client::relay::Directory::new(&server.http)
        .unwrap()
        .update(alice, &alice_key, &new_key.public(), &[])
        .await
        .expect("key changed");
    // The relay looks again every 5 s.
    assert!(
        closes_within(&mut stream, Duration::from_secs(12)).await,
        "the old key's connection ends"
    );
    // The old key cannot log in again; the new one can.
    assert!(RelayConn::connect(
        &server.http,
        &alice_key,
        Who::Twin {
            id: alice,
            session: None
        }
    )
    .await
    .is_err());
    raw(&server, &new_key, alice).await;
    server.stop().await;
}

#[tokio::test]
async fn clients_cannot_read_or_write_the_relays_queues() {
    let server = TestServer::start().await;
    let (alice_key, alice) = twin(&server, 1, &[]).await;
    let (_bob_key, bob) = twin(&server, 2, &[]).await;
    let (a, _a_in) = peer(&server, &alice_key, alice);
    a.send(Draft::request(
        Address::twin(bob),
        "canary",
        b"canary".to_vec(),
    ))
    .await
    .expect("send");
    let queue = trunkline_server::relay::Relay::queue_name(&Address::twin(bob));
    let depth = || server.depth(&queue);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while depth().await < 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A client that sees every topic, with a queue of its own: not the relay's.
    let mallory = server.new_client("mallory", &["#"]).await;
    let err = mallory
        .receive(&trunkline_client::ReceiveOptions {
            queue: Some(queue.clone()),
            ..Default::default()
        })
        .await
        .expect_err("the relay's queue is not the client's to read");
    assert_eq!(
        err.code(),
        Some(trunkline_client::ErrorCode::Forbidden),
        "{err}"
    );
    // Its inbox got no copy of the envelope either (the relay does not publish to topics).
    let got = mallory
        .receive(&trunkline_client::ReceiveOptions::default())
        .await
        .expect("own inbox");
    assert!(got.is_empty(), "{got:?}");
    // Writing into it, as a topic or as the queue: not a way in.
    let _ = mallory
        .send(&format!("rmb.{bob}"), &serde_json::json!("x"))
        .await;
    assert_eq!(depth().await, 1, "still only the canary");
    server.stop().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed() {
    let server = TestServer::start_with(|c| c.relay.idle_timeout_secs = 2).await;
    let (alice_key, alice) = twin(&server, 1, &[]).await;
    // Logged in, then never read (so never a pong) and never written.
    let (_sink, mut stream) = raw(&server, &alice_key, alice).await.split();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(closes_within(&mut stream, Duration::from_secs(2)).await);
    // A gateway that answers pings stays.
    let (_a, _a_in) = peer(&server, &alice_key, alice);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let text = trunkline_testkit::metrics_text(
        &reqwest::Client::new(),
        &server.backend,
        &server.backend_key,
    )
    .await;
    assert_eq!(
        trunkline_testkit::metric(&text, "trunkline_relay_connections"),
        Some(1)
    );
    server.stop().await;
}
