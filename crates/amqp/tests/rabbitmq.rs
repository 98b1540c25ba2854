//! The AMQP engine against a real RabbitMQ: routing by topic, `/notify`, point to point,
//! leases with receipts, delivery counts, dead letters after `max_deliveries`, length
//! limits, TTL, and leases given back when the node's connection goes.
//! `scripts/test.sh` starts a private RabbitMQ (`scripts/rabbitmq.sh`) and sets
//! `TRUNKLINE_TEST_AMQP`; CI requires it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use trunkline_amqp::{Amqp, AmqpConfig};
use trunkline_broker::{BrokerError, Limits, Overflow, Publish, ReceiveOptions, Settle};

fn urls() -> Option<Vec<String>> {
    match std::env::var("TRUNKLINE_TEST_AMQP") {
        Ok(u) if !u.is_empty() => Some(u.split(',').map(str::to_owned).collect()),
        _ => {
            assert!(
                std::env::var("CI").is_err(),
                "CI must run this test against RabbitMQ: set TRUNKLINE_TEST_AMQP (scripts/test.sh does)"
            );
            eprintln!("skipped: TRUNKLINE_TEST_AMQP is not set (run scripts/rabbitmq.sh start)");
            None
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A name no other test run uses.
fn unique(what: &str) -> String {
    format!(
        "tl-test-{what}-{}-{}",
        std::process::id(),
        now_ms() % 1_000_000
    )
}

async fn connect(urls: Vec<String>, node: &str) -> Arc<Amqp> {
    let config = AmqpConfig {
        urls,
        node: node.into(),
        namespace: "tl-test".into(),
    };
    Amqp::connect(config, now_ms()).await.expect("connect")
}

const LIMITS: Limits = Limits {
    max_length: 100,
    overflow: Overflow::RejectPublish,
    max_deliveries: 3,
};

fn bodies(got: &[trunkline_broker::Delivery]) -> Vec<String> {
    got.iter()
        .map(|d| String::from_utf8_lossy(&d.data.body).into_owned())
        .collect()
}

#[tokio::test]
async fn topics_route_to_inboxes_by_pattern_and_notify_reaches_every_inbox() {
    let Some(urls) = urls() else { return };
    let a = connect(urls, "n1").await;
    let (c1, c2) = (unique("route-a"), unique("route-b"));
    let word = unique("w").replace('-', "_");
    a.declare_inbox(&c1, &[format!("{word}.*.status")], &LIMITS)
        .await
        .expect("inbox 1");
    a.declare_inbox(&c2, &[format!("{word}.#")], &LIMITS)
        .await
        .expect("inbox 2");
    let topic = format!("{word}.7.status");
    let mut p = Publish::new(topic.clone(), "\"s\"", "sender-1");
    p.headers = vec![("type".into(), "T".into())];
    let id = a.publish(&p, now_ms()).await.expect("publish");
    a.publish(
        &Publish::new(format!("{word}.7.fuel"), "\"f\"", "sender-1"),
        now_ms(),
    )
    .await
    .expect("publish");
    let mut n = Publish::new("notice", "\"all\"", "admin");
    n.broadcast = true;
    a.publish(&n, now_ms()).await.expect("notify");

    let inbox1 = format!("{c1}-inbox");
    let got = a
        .receive(&inbox1, ReceiveOptions::auto(10), now_ms())
        .await
        .expect("receive");
    assert_eq!(bodies(&got), ["\"s\"", "\"all\""]);
    assert_eq!(got[0].id, id);
    assert_eq!(got[0].data.topic, topic);
    assert_eq!(got[0].data.sender, "sender-1");
    assert_eq!(got[0].data.headers, p.headers);
    assert_eq!(got[0].delivery_count, 1);
    assert!(got[0].receipt.is_none(), "auto-ack gives no receipt");
    let got = a
        .receive(&format!("{c2}-inbox"), ReceiveOptions::auto(10), now_ms())
        .await
        .expect("receive");
    assert_eq!(bodies(&got), ["\"s\"", "\"f\"", "\"all\""]);
    assert!(a
        .receive(&inbox1, ReceiveOptions::auto(10), now_ms())
        .await
        .expect("empty")
        .is_empty());
    for c in [&c1, &c2] {
        a.delete_queue(&format!("{c}-inbox")).await.expect("delete");
        a.delete_queue(&format!("{c}-dead")).await.expect("delete");
    }
    a.close().await;
}

#[tokio::test]
async fn leases_are_settled_by_receipt_once_and_dead_letter_after_max_deliveries() {
    let Some(urls) = urls() else { return };
    let a = connect(urls, "n1").await;
    let q = unique("lease");
    let dead = format!("{q}.XQ");
    a.declare_queue(&q, &LIMITS, Some(&dead))
        .await
        .expect("declare");
    let mut p = Publish::new("t", "\"one\"", "s");
    p.queue = Some(q.clone());
    a.publish(&p, now_ms()).await.expect("publish");
    let mut p2 = p.clone();
    p2.body = "\"two\"".into();
    a.publish(&p2, now_ms()).await.expect("publish");

    let lease = ReceiveOptions::leased(10, 30_000);
    let got = a.receive(&q, lease, now_ms()).await.expect("receive");
    assert_eq!(bodies(&got), ["\"one\"", "\"two\""]);
    let r1 = got[0].receipt.clone().expect("receipt");
    let r2 = got[1].receipt.clone().expect("receipt");
    assert_eq!(a.leased(), 2);
    // Ack one; acking it again, or a made-up receipt, is unknown (and harms nothing).
    let s = a
        .settle(std::slice::from_ref(&r1), Settle::Ack, |_| true)
        .await
        .expect("ack");
    assert_eq!((s.done, s.unknown.len()), (1, 0));
    let s = a
        .settle(
            &[r1.clone(), "n1/99/1".into(), "n2/1/1".into()],
            Settle::Ack,
            |_| true,
        )
        .await
        .expect("ack again");
    assert_eq!((s.done, s.unknown.len()), (0, 3));

    // Only a reader of the delivery's queue may settle it.
    let s = a
        .settle(std::slice::from_ref(&r2), Settle::Ack, |queue| queue != q)
        .await
        .expect("ack by another");
    assert_eq!((s.done, s.unknown.len()), (0, 1));

    // "two" is given back twice (a nack, then an ended lease): its third delivery says so,
    // and giving it back once more sends it to the dead-letter queue.
    a.settle(&[r2], Settle::Nack { requeue: true }, |_| true)
        .await
        .expect("nack");
    let got = a.receive(&q, lease, now_ms()).await.expect("again");
    assert_eq!(
        (bodies(&got), got[0].delivery_count),
        (vec!["\"two\"".to_owned()], 2)
    );
    assert_eq!(
        a.sweep(now_ms() + 60_000).await.expect("sweep"),
        1,
        "the lease ended"
    );
    let got = a.receive(&q, lease, now_ms()).await.expect("third");
    assert_eq!(got[0].delivery_count, 3);
    let r = got[0].receipt.clone().expect("receipt");
    a.settle(&[r], Settle::Nack { requeue: true }, |_| true)
        .await
        .expect("nack");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let dl = loop {
        let dl = a
            .receive(&dead, ReceiveOptions::auto(10), now_ms())
            .await
            .expect("dead");
        if !dl.is_empty() || tokio::time::Instant::now() > deadline {
            break dl;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(bodies(&dl), ["\"two\""]);
    assert!(a
        .receive(&q, lease, now_ms())
        .await
        .expect("empty")
        .is_empty());
    // nack without requeue dead-letters at once.
    a.publish(&p, now_ms()).await.expect("publish");
    let got = a.receive(&q, lease, now_ms()).await.expect("receive");
    let r = got[0].receipt.clone().expect("receipt");
    a.settle(&[r], Settle::Nack { requeue: false }, |_| true)
        .await
        .expect("reject");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.depth(&dead).await.expect("depth") == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.depth(&dead).await.expect("depth"), 1);
    a.delete_queue(&q).await.expect("delete");
    a.delete_queue(&dead).await.expect("delete");
    a.close().await;
}

#[tokio::test]
async fn a_node_that_goes_gives_its_leases_back_and_full_queues_refuse() {
    let Some(urls) = urls() else { return };
    let q = unique("gone");
    let a = connect(urls.clone(), "n1").await;
    let limits = Limits {
        max_length: 2,
        ..LIMITS
    };
    a.declare_queue(&q, &limits, Some(&format!("{q}.XQ")))
        .await
        .expect("declare");
    let mut p = Publish::new("t", "\"m\"", "s");
    p.queue = Some(q.clone());
    let mut refused = None;
    for i in 0..5 {
        match a.publish(&p, now_ms()).await {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    // A quorum queue refuses once it is over its limit: it holds one more (see
    // docs/scale-out.md).
    let (i, e) = refused.expect("a full queue refuses");
    assert_eq!(i, 3, "refused at the fourth publish");
    assert!(matches!(e, BrokerError::QueueFull { .. }), "{e}");

    let got = a
        .receive(&q, ReceiveOptions::leased(2, 60_000), now_ms())
        .await
        .expect("lease");
    assert_eq!(got.len(), 2);
    a.close().await;
    // Another node sees them again at once, delivered once before.
    let b = connect(urls, "n2").await;
    let got = b
        .receive(&q, ReceiveOptions::auto(10), now_ms())
        .await
        .expect("receive");
    assert_eq!(got.len(), 3);
    assert_eq!(
        got.iter().filter(|d| d.delivery_count == 2).count(),
        2,
        "the two leased ones came back"
    );
    b.delete_queue(&q).await.expect("delete");
    b.delete_queue(&format!("{q}.XQ")).await.expect("delete");
    b.close().await;
}

#[tokio::test]
async fn a_message_past_its_ttl_is_not_delivered() {
    let Some(urls) = urls() else { return };
    let a = connect(urls, "n1").await;
    let q = unique("ttl");
    a.declare_queue(&q, &LIMITS, None).await.expect("declare");
    let mut p = Publish::new("t", "\"short\"", "s");
    p.queue = Some(q.clone());
    p.ttl_ms = Some(100);
    a.publish(&p, now_ms()).await.expect("publish");
    p.ttl_ms = None;
    p.body = "\"kept\"".into();
    a.publish(&p, now_ms()).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let got = a
        .receive(&q, ReceiveOptions::auto(10), now_ms())
        .await
        .expect("receive");
    assert_eq!(bodies(&got), ["\"kept\""]);
    a.delete_queue(&q).await.expect("delete");
    a.close().await;
}

/// Receives that wait are fed by a consumer with a window: leased in order, settled by
/// receipt on the feed's channel, given back when a lease ends; a feed whose reader
/// stopped ends once nothing of it is leased, and what it was pushed goes to another.
#[tokio::test]
async fn a_feed_leases_in_order_and_gives_back_what_it_holds_when_its_reader_stops() {
    let Some(urls) = urls() else { return };
    let a = connect(urls, "n1").await;
    let q = unique("feed");
    a.declare_queue(&q, &LIMITS, None).await.expect("declare");
    for i in 0..6 {
        let mut p = Publish::new("t", format!("{i}"), "s");
        p.queue = Some(q.clone());
        a.publish(&p, now_ms()).await.expect("publish");
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let wait = Duration::from_secs(5);
    let yes = || true;
    let fed = |max| {
        let (a, q, stop) = (a.clone(), q.clone(), stop.clone());
        async move {
            a.receive_fed(
                "r1",
                &q,
                ReceiveOptions::leased(max, 30_000),
                now_ms(),
                wait,
                &stop,
                &yes,
            )
            .await
            .expect("receive")
            .expect("a feed")
        }
    };
    // A window of 2: the first receive gets what was pushed by then, in order.
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(fed(2).await);
    }
    assert_eq!(bodies(&got), ["0", "1"]);
    let r0 = got[0].receipt.clone().expect("receipt");
    assert!(r0.starts_with("n1/"), "{r0}");
    assert_eq!(
        a.leased_of(&q),
        2,
        "two leased, none more pushed: the window is full"
    );
    let s = a
        .settle(std::slice::from_ref(&r0), Settle::Ack, |_| true)
        .await
        .expect("ack");
    assert_eq!((s.done, s.unknown.len()), (1, 0));
    // The ended lease of "1" goes back, counted (a sweep this far ahead also ends the
    // feed as idle: what it was pushed goes back too, and comes again in some order).
    assert_eq!(a.sweep(now_ms() + 60_000).await.expect("sweep"), 1);
    // Until "1" comes again, what comes is acked (the window would hold it up).
    let mut again = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !bodies(&again).contains(&"1".to_owned()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            bodies(&again)
        );
        let got = fed(2).await;
        let others: Vec<String> = (got.iter())
            .filter(|d| &*d.data.body != b"1")
            .filter_map(|d| d.receipt.clone())
            .collect();
        a.settle(&others, Settle::Ack, |_| true).await.expect("ack");
        again.extend(got);
    }
    let one = again.iter().find(|d| &*d.data.body == b"1").expect("1");
    assert_eq!(one.delivery_count, 2);
    // The reader stops with "1" leased: the feed stays until it is settled, then ends,
    // and what it was pushed meanwhile is another reader's.
    stop.cancel();
    a.end_feed("r1", &q).await;
    let receipt = one.receipt.clone().expect("receipt");
    let s = a
        .settle(&[receipt], Settle::Ack, |_| true)
        .await
        .expect("ack");
    assert_eq!(s.done, 1);
    let other = tokio_util::sync::CancellationToken::new();
    let mut rest = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while rest.len() < 6 - 1 - again.len() && tokio::time::Instant::now() < deadline {
        let got = a
            .receive_fed(
                "r2",
                &q,
                ReceiveOptions::leased(10, 30_000),
                now_ms(),
                wait,
                &other,
                &yes,
            )
            .await
            .expect("receive")
            .expect("a feed");
        let receipts: Vec<String> = got.iter().filter_map(|d| d.receipt.clone()).collect();
        a.settle(&receipts, Settle::Ack, |_| true)
            .await
            .expect("ack");
        rest.extend(got);
    }
    let mut all: Vec<String> = bodies(&got[..1]);
    all.extend(bodies(&again));
    all.extend(bodies(&rest));
    all.sort();
    assert_eq!(all, ["0", "1", "2", "3", "4", "5"], "each once");
    a.delete_queue(&q).await.expect("delete");
    a.close().await;
}
