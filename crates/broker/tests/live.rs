//! Live subscriptions: what is published from now on, not stored.

use std::sync::Arc;

use trunkline_broker::{Broker, BrokerConfig, NewClient, Publish};
use trunkline_store::MemoryStore;

fn broker() -> Broker {
    Broker::open(Arc::new(MemoryStore::default()), BrokerConfig::default(), 0).expect("open")
}

#[tokio::test]
async fn live_subscribers_get_matching_messages_from_now_on() {
    let b = broker();
    b.publish(Publish::new("fleet.a.status", b"0".to_vec(), "p"), 1)
        .await
        .expect("publish");
    let mut sub = b
        .subscribe_live(None, "fleet.*.status", 10)
        .expect("subscribe");
    let mut all = b.subscribe_live(None, "#", 10).expect("subscribe");
    b.publish(Publish::new("fleet.a.status", b"1".to_vec(), "p"), 2)
        .await
        .expect("publish");
    b.publish(Publish::new("fleet.a.alarm", b"2".to_vec(), "p"), 3)
        .await
        .expect("publish");
    let m = sub.try_recv().expect("one message");
    assert_eq!(
        (m.data.topic.as_str(), &m.data.body[..]),
        ("fleet.a.status", &b"1"[..])
    );
    assert!(
        sub.try_recv().is_none(),
        "the earlier and the non-matching ones are not delivered"
    );
    assert_eq!(
        all.try_recv().map(|m| m.data.body.to_vec()),
        Some(b"1".to_vec())
    );
    assert_eq!(
        all.try_recv().map(|m| m.data.body.to_vec()),
        Some(b"2".to_vec())
    );
    assert_eq!(b.live_subscriptions(), 2);
    drop(sub);
    assert_eq!(b.live_subscriptions(), 1, "dropping unsubscribes");
    assert!(b.subscribe_live(None, "a..b", 1).is_err());
}

#[tokio::test]
async fn live_and_durable_routes_both_get_a_message() {
    let b = broker();
    b.create_client(NewClient::new("c", "c", vec!["x.#".into()]), 0)
        .await
        .expect("client");
    let mut sub = b.subscribe_live(None, "x.y", 10).expect("subscribe");
    let r = b
        .publish(Publish::new("x.y", b"1".to_vec(), "p"), 1)
        .await
        .expect("publish");
    assert_eq!(r.delivered_to, 1);
    assert_eq!(sub.try_recv().map(|m| m.id), Some(r.id));
}

#[tokio::test]
async fn a_slow_subscriber_is_marked_lagged_and_others_are_unaffected() {
    let b = broker();
    let mut slow = b.subscribe_live(None, "t", 2).expect("subscribe");
    let mut fast = b.subscribe_live(None, "t", 100).expect("subscribe");
    for i in 0..5u8 {
        b.publish(Publish::new("t", vec![b'0' + i], "p"), 1)
            .await
            .expect("publish");
        assert!(fast.try_recv().is_some());
    }
    assert!(slow.lagged());
    assert!(!fast.lagged());
    assert_eq!(
        slow.try_recv().map(|m| m.data.body.to_vec()),
        Some(b"0".to_vec())
    );
    assert_eq!(
        slow.try_recv().map(|m| m.data.body.to_vec()),
        Some(b"1".to_vec())
    );
    assert!(slow.try_recv().is_none());
    assert_eq!(
        b.live_counters()
            .missed
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

#[tokio::test]
async fn point_to_point_goes_to_one_queue_only() {
    let b = broker();
    b.create_client(NewClient::new("a", "a", vec!["#".into()]), 0)
        .await
        .expect("client");
    b.create_client(NewClient::new("b", "b", vec!["zzz".into()]), 0)
        .await
        .expect("client");
    let mut live = b.subscribe_live(None, "#", 10).expect("live");
    let mut p = Publish::new("b-inbox", b"1".to_vec(), "a");
    p.queue = Some("b-inbox".into());
    let r = b.publish(p, 1).await.expect("publish");
    assert_eq!(r.delivered_to, 1);
    let got = b
        .receive(
            &b.principal("b").expect("client"),
            "b-inbox",
            trunkline_broker::ReceiveOptions::auto(10),
            2,
        )
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    let got = b
        .receive(
            &b.principal("a").expect("client"),
            "a-inbox",
            trunkline_broker::ReceiveOptions::auto(10),
            2,
        )
        .await
        .expect("receive");
    assert!(
        got.is_empty(),
        "a `#` subscriber does not see point-to-point messages"
    );
    assert!(live.try_recv().is_none());
    let mut p = Publish::new("x", b"1".to_vec(), "a");
    p.queue = Some("nobody-inbox".into());
    assert!(matches!(
        b.publish(p, 3).await,
        Err(trunkline_broker::BrokerError::UnknownQueue(_))
    ));
}

#[tokio::test]
async fn a_batch_is_published_all_or_nothing() {
    use trunkline_broker::{LimitSettings, Overflow};
    let b = broker();
    let mut small = NewClient::new("small", "s", vec!["s.#".into()]);
    small.inbox = LimitSettings {
        max_length: Some(1),
        overflow: Some(Overflow::RejectPublish),
        max_deliveries: None,
    };
    b.create_client(small, 0).await.expect("client");
    b.create_client(NewClient::new("all", "a", vec!["#".into()]), 0)
        .await
        .expect("client");
    // The second message does not fit in `small`: nothing of the batch is published.
    let batch = vec![
        Publish::new("x.1", b"1".to_vec(), "p"),
        Publish::new("s.1", b"2".to_vec(), "p"),
        Publish::new("s.2", b"3".to_vec(), "p"),
    ];
    assert!(matches!(
        b.publish_batch_start(batch, 1),
        Err(trunkline_broker::BrokerError::QueueFull { .. })
    ));
    let got = b
        .receive(
            &b.principal("all").expect("client"),
            "all-inbox",
            trunkline_broker::ReceiveOptions::auto(10),
            2,
        )
        .await
        .expect("receive");
    assert!(got.is_empty(), "a refused batch publishes nothing");
    // A batch that fits goes in one piece, in order.
    let batch = vec![
        Publish::new("x.1", b"1".to_vec(), "p"),
        Publish::new("s.1", b"2".to_vec(), "p"),
    ];
    let r = b
        .publish_batch_start(batch, 3)
        .expect("start")
        .await
        .expect("batch");
    assert_eq!(
        r.iter().map(|p| p.delivered_to).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let got = b
        .receive(
            &b.principal("all").expect("client"),
            "all-inbox",
            trunkline_broker::ReceiveOptions::auto(10),
            4,
        )
        .await
        .expect("receive");
    assert_eq!(
        got.iter().map(|d| d.data.body.clone()).collect::<Vec<_>>(),
        vec![b"1".to_vec(), b"2".to_vec()]
    );
}

#[tokio::test]
async fn ids_and_receipts_never_repeat_even_if_the_clock_goes_back() {
    use trunkline_broker::{ReceiveOptions, Settle};
    let store = Arc::new(MemoryStore::default());
    let t0 = 1_800_000_000_000u64;
    let b = Broker::open(store.clone(), BrokerConfig::default(), t0).expect("open");
    b.create_client(NewClient::new("c", "c", vec!["t".into()]), t0)
        .await
        .expect("client");
    let first = b
        .publish(Publish::new("t", b"1".to_vec(), "p"), t0)
        .await
        .expect("publish");
    let got = b
        .receive(
            &b.principal("c").expect("client"),
            "c-inbox",
            ReceiveOptions::leased(1, 60_000),
            t0,
        )
        .await
        .expect("receive");
    let stale = got[0].receipt.clone().expect("receipt");
    b.settle(
        &b.principal("c").expect("client"),
        std::slice::from_ref(&stale),
        Settle::Ack,
        t0,
    )
    .await
    .expect("ack");
    b.shutdown().map_err(|_| "other handles").expect("shutdown");

    // The clock is an hour behind at the restart, and the queue is empty.
    let earlier = t0 - 3_600_000;
    let b = Broker::open(store, BrokerConfig::default(), earlier).expect("reopen");
    let second = b
        .publish(Publish::new("t", b"2".to_vec(), "p"), earlier)
        .await
        .expect("publish");
    assert!(second.id > first.id, "{} after {}", second.id, first.id);
    let got = b
        .receive(
            &b.principal("c").expect("client"),
            "c-inbox",
            ReceiveOptions::leased(1, 60_000),
            earlier,
        )
        .await
        .expect("receive");
    assert_ne!(got[0].receipt.as_ref(), Some(&stale));
    let r = b
        .settle(
            &b.principal("c").expect("client"),
            &[stale],
            Settle::Ack,
            earlier,
        )
        .await
        .expect("settle");
    assert_eq!(r.done, 0, "an old receipt does not settle a new message");
}

/// What a publish into `places` queues counts (its index; the body is not counted).
fn publish_cost(places: usize) -> u64 {
    trunkline_broker::footprint::index_bytes(places)
}

#[tokio::test]
async fn the_node_caps_queued_memory_and_frees_it_as_entries_and_messages_go() {
    use trunkline_broker::footprint::ENTRY_BYTES;
    let cost = publish_cost(2);
    let max = 2 * cost + cost / 2;
    let config = BrokerConfig {
        max_memory_bytes: max,
        ..BrokerConfig::default()
    };
    let b = Broker::open(Arc::new(MemoryStore::default()), config, 0).expect("open");
    b.create_client(NewClient::new("c", "c", vec!["#".into()]), 0)
        .await
        .expect("client");
    b.create_client(NewClient::new("d", "d", vec!["#".into()]), 0)
        .await
        .expect("client");
    let body = vec![b'1'; 40];
    b.publish(Publish::new("t", body.clone(), "p"), 1)
        .await
        .expect("one");
    b.publish(Publish::new("t", body.clone(), "p"), 1)
        .await
        .expect("two: a message counts once, and once per queue that holds it");
    assert_eq!(b.memory_used(), 2 * cost);
    let refused = b.publish(Publish::new("t", body.clone(), "p"), 1).await;
    match refused {
        Err(
            e @ trunkline_broker::BrokerError::NodeFull {
                used,
                needed,
                max: m,
            },
        ) => {
            assert_eq!((used, needed, m), (2 * cost, cost, max));
            assert!(
                e.to_string()
                    .contains("node memory for queued messages is full"),
                "{e}"
            );
        }
        other => panic!("expected node_full, got {other:?}"),
    }
    assert_eq!(
        b.memory_used(),
        2 * cost,
        "a refused publish counts nothing"
    );
    // One queue lets go of its entries: the messages stay, held by the other.
    b.receive(
        &b.principal("c").expect("client"),
        "c-inbox",
        trunkline_broker::ReceiveOptions::auto(10),
        2,
    )
    .await
    .expect("receive");
    assert_eq!(b.memory_used(), 2 * cost - 2 * ENTRY_BYTES);
    b.receive(
        &b.principal("d").expect("client"),
        "d-inbox",
        trunkline_broker::ReceiveOptions::auto(10),
        2,
    )
    .await
    .expect("receive");
    assert_eq!(b.memory_used(), 0);
    b.publish(Publish::new("t", body, "p"), 3)
        .await
        .expect("room again");
}

#[tokio::test]
async fn fan_out_of_tiny_messages_is_refused_once_its_entries_fill_the_cap() {
    // The old cap counted bodies only: 3 bytes a message, 500 copies of it unseen.
    let config = BrokerConfig {
        max_memory_bytes: 1 << 20,
        ..BrokerConfig::default()
    };
    let b = Broker::open(Arc::new(MemoryStore::default()), config, 0).expect("open");
    for i in 0..100 {
        b.create_client(
            NewClient::new(format!("c{i}"), "c", vec!["flood.#".into()]),
            0,
        )
        .await
        .expect("client");
    }
    let mut accepted = 0u64;
    let err = loop {
        match b
            .publish(Publish::new("flood.x", b"123".to_vec(), "p"), 1)
            .await
        {
            Ok(p) => {
                assert_eq!(p.delivered_to, 100);
                accepted += 1;
            }
            Err(e) => break e,
        }
        assert!(accepted < 1000, "never refused");
    };
    assert!(
        matches!(err, trunkline_broker::BrokerError::NodeFull { .. }),
        "{err:?}"
    );
    let cost = trunkline_broker::footprint::index_bytes(100);
    assert_eq!(accepted, (1 << 20) / cost);
    assert_eq!(b.memory_used(), accepted * cost);
}
