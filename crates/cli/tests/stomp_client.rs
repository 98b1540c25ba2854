//! Trunkline's own STOMP client against a real node: windowed sends with receipts,
//! subscriptions with acks, and reconnecting through a `kill -9` without losing a
//! confirmed message.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use trunkline_client::stomp::{StompClient, StompClientError, StompOptions};
use trunkline_client::ReceiveOptions;
use trunkline_testkit::{free_port, ProcessServer, TestServer};

#[tokio::test]
async fn sends_subscribes_and_acks() {
    let server = TestServer::start().await;
    let secret = server.admin_credentials().secret;
    let fleet = server.new_client("fleet", &["fleet.#"]).await;
    let c = StompClient::connect(StompOptions::new(
        server.stomp.clone(),
        "admin",
        secret.clone(),
    ))
    .await
    .expect("connect");
    let mut confirmations = Vec::new();
    for i in 0..300 {
        confirmations.push(
            c.send(
                "/topic/fleet.x",
                &[("content-type", "application/json")],
                format!("{i}"),
            )
            .await
            .expect("send"),
        );
    }
    for conf in confirmations {
        conf.await.expect("confirmed");
    }
    let got = fleet
        .receive(&ReceiveOptions {
            max_messages: 1000,
            ..Default::default()
        })
        .await
        .expect("receive");
    assert_eq!(got.len(), 300, "every confirmed message is in the inbox");

    let mut sub = c
        .subscribe("/queue/admin-inbox", "client-individual", Some(10))
        .await
        .expect("subscribe");
    let mut seen = 0;
    while seen < 300 {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .expect("a message in time")
            .expect("open");
        c.ack(&m).await.expect("ack");
        seen += 1;
    }
    c.disconnect().await.expect("disconnect");
    let admin = server.admin();
    assert!(
        admin
            .receive(&ReceiveOptions::default())
            .await
            .expect("receive")
            .is_empty(),
        "all acked"
    );

    let refused =
        StompClient::connect(StompOptions::new(server.stomp.clone(), "admin", "wrong")).await;
    assert!(
        matches!(refused, Err(StompClientError::Refused { ref code, .. }) if code == "invalid_credentials"),
        "{:?}",
        refused.err()
    );
    server.stop().await;
}

#[tokio::test]
async fn publishes_without_receipts_to_live_subscribers() {
    let server = TestServer::start().await;
    let secret = server.admin_credentials().secret;
    let fleet = server.new_client("fleet", &["fleet.#"]).await;
    let mut o = StompOptions::new(server.stomp.clone(), "admin", secret);
    // One unconfirmed send at a time: publishes must not need room in the window.
    o.session.window = 1;
    let c = StompClient::connect(o).await.expect("connect");
    // Same connection: the server handles frames in order, so the subscription is in
    // place before the first publish.
    let mut live = c
        .subscribe("/topic/fleet.*", "auto", None)
        .await
        .expect("subscribe");
    // Read as messages come: a full subscription channel holds up the whole connection,
    // receipts included.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 301 {
            let m = tokio::time::timeout(Duration::from_secs(10), live.recv())
                .await
                .expect("a live message in time")
                .expect("open");
            assert_eq!(m.ack, None, "ack: auto");
            got.push(String::from_utf8_lossy(&m.body).into_owned());
        }
        got
    });
    let json = [("content-type", "application/json")];
    for i in 0..300 {
        c.publish("/topic/fleet.x", &json, format!("{i}"))
            .await
            .expect("publish");
    }
    let last = c.send("/topic/fleet.x", &json, "300").await.expect("send");
    tokio::time::timeout(Duration::from_secs(10), last)
        .await
        .expect("confirmed in time")
        .expect("confirmed");
    // The receipt of the last send covers the publishes before it.
    let stored = fleet
        .receive(&ReceiveOptions {
            max_messages: 1000,
            ..Default::default()
        })
        .await
        .expect("receive");
    assert_eq!(
        stored
            .iter()
            .filter_map(|m| m.body.as_u64())
            .collect::<Vec<_>>(),
        (0..=300).collect::<Vec<u64>>(),
        "every message is in the inbox, in order, once the last one is confirmed"
    );
    assert_eq!(
        reader.await.expect("reader"),
        (0..=300).map(|i| i.to_string()).collect::<Vec<_>>(),
        "every message reaches the live subscriber, in order"
    );
    c.disconnect().await.expect("disconnect");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_resends_through_a_kill_9() {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_trunkline"));
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let stomp = format!("127.0.0.1:{}", free_port());
    let mut node = ProcessServer::start_on(&bin, &dir, &stomp).expect("start");
    let secret = node.admin_credentials().secret;
    let c = StompClient::connect(StompOptions::new(stomp.clone(), "admin", secret.clone()))
        .await
        .expect("connect");
    let total = 3000u64;
    let handed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sender = {
        let c = c.clone();
        let handed = handed.clone();
        tokio::spawn(async move {
            let mut confs = Vec::new();
            for i in 0..total {
                handed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let conf = c
                    .send(
                        "/topic/load.m",
                        &[("content-type", "application/json")],
                        format!("{i}"),
                    )
                    .await
                    .expect("send");
                confs.push((i, conf));
            }
            let mut confirmed = Vec::new();
            for (i, conf) in confs {
                if tokio::time::timeout(Duration::from_secs(60), conf)
                    .await
                    .expect("confirmed in time")
                    .is_ok()
                {
                    confirmed.push(i);
                }
            }
            confirmed
        })
    };
    // Kill it part-way: once some sends are confirmed and many are still to come.
    let deadline = Instant::now() + Duration::from_secs(30);
    while handed.load(std::sync::atomic::Ordering::Relaxed) < 500 {
        assert!(Instant::now() < deadline, "sending did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    node.kill9();
    let at_kill = handed.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        at_kill < total,
        "the kill came after everything was sent; the test proves nothing"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let node = ProcessServer::start_on(&bin, &dir, &stomp).expect("restart");
    let confirmed = sender.await.expect("sender");
    eprintln!("{at_kill} of {total} sends handed to the client when the node was killed");
    assert_eq!(
        confirmed.len() as u64,
        total,
        "every send is confirmed in the end"
    );
    let admin = trunkline_client::Client::new(&node.http, "admin", &secret).expect("client");
    let mut stored = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = admin
            .receive(&ReceiveOptions {
                max_messages: 1000,
                ..Default::default()
            })
            .await
            .expect("receive");
        if got.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline);
        stored.extend(got.into_iter().filter_map(|m| m.body.as_u64()));
    }
    let missing: Vec<u64> = confirmed
        .iter()
        .copied()
        .filter(|i| !stored.contains(i))
        .collect();
    assert!(
        missing.is_empty(),
        "confirmed but lost: {:?}",
        &missing[..missing.len().min(10)]
    );
    drop(c);
}
