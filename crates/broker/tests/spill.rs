//! Queues longer than memory: past `queue_memory_entries` ready entries, new ones stay in
//! the log only and come back in order as consumers reach them. On a real log, with its
//! background compaction running.

use std::path::Path;
use std::sync::Arc;

use trunkline_broker::footprint::{index_bytes, node_spill, ENTRY_BYTES, MESSAGE_BYTES};
use trunkline_broker::{
    Broker, BrokerConfig, Delivery, NewClient, Publish, ReceiveOptions, Settle,
};
use trunkline_store::fs::RealFs;
use trunkline_store::{LogOptions, LogStore, QueueStore};

const T0: u64 = 1_700_000_000_000;
/// Ready entries of one queue held in memory.
const HOT: usize = 50;

fn open(dir: &Path) -> Broker {
    let store = Arc::new(LogStore::open_with(dir, 64 << 10).expect("open log"));
    let config = BrokerConfig {
        queue_memory_entries: HOT,
        ..BrokerConfig::default()
    };
    Broker::open(store, config, T0).expect("open broker")
}

/// As a node opens it: the log spills long queues as it is replayed, messages delivered
/// `max_deliveries` times go to the dead-letter queue.
fn open_spilling(dir: &Path, max_deliveries: u32) -> Broker {
    let options = LogOptions {
        segment_bytes: 64 << 10,
        spill_entries: Some(HOT),
        ..LogOptions::default()
    };
    let store = Arc::new(LogStore::open_on(Arc::new(RealFs), dir, options).expect("open log"));
    let mut config = BrokerConfig {
        queue_memory_entries: HOT,
        ..BrokerConfig::default()
    };
    config.default_limits.max_deliveries = max_deliveries;
    Broker::open(store, config, T0).expect("open broker")
}

async fn client(b: &Broker, id: &str, pattern: &str) {
    let c = NewClient::new(id, id, vec![pattern.to_owned()]);
    b.create_client(c, T0).await.expect("create client");
}

async fn publish(b: &Broker, topic: &str, n: u64) {
    let body = format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(200));
    b.publish(Publish::new(topic, body.into_bytes(), "pub"), T0 + n)
        .await
        .expect("publish");
}

fn n_of(d: &Delivery) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&d.data.body).expect("json body");
    v["n"].as_u64().expect("n")
}

fn ready(b: &Broker, queue: &str) -> u64 {
    b.queue_depths()
        .iter()
        .find(|d| &*d.name == queue)
        .map_or(0, |d| d.ready)
}

/// Receives everything from `id`'s inbox, `max` at a time, leased; acks all but every
/// seventh of the first delivery, which is nacked back once. Returns `n` in the order
/// first delivered.
async fn drain(b: &Broker, id: &str, max: usize, now: u64) -> Vec<u64> {
    let who = b.principal(id).expect("principal");
    let queue = format!("{id}-inbox");
    let mut out = Vec::new();
    loop {
        let got = b
            .receive(&who, &queue, ReceiveOptions::leased(max, 60_000), now)
            .await
            .expect("receive");
        if got.is_empty() {
            return out;
        }
        let (mut ack, mut nack) = (Vec::new(), Vec::new());
        for d in got {
            let receipt = d.receipt.clone().expect("receipt");
            if d.delivery_count == 1 {
                out.push(n_of(&d));
                if n_of(&d).is_multiple_of(7) {
                    nack.push(receipt);
                    continue;
                }
            }
            ack.push(receipt);
        }
        b.settle(&who, &ack, Settle::Ack, now).await.expect("ack");
        b.settle(&who, &nack, Settle::Nack { requeue: true }, now)
            .await
            .expect("nack");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_past_memory_stays_in_the_log_and_drains_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = open(dir.path());
    client(&b, "a", "t.#").await;
    client(&b, "b", "t.b.#").await;
    let n: u64 = 3000;
    for i in 0..n {
        // One in five goes to both.
        let topic = if i.is_multiple_of(5) {
            "t.b.x"
        } else {
            "t.a.x"
        };
        publish(&b, topic, i).await;
    }
    assert_eq!(ready(&b, "a-inbox"), n);
    assert_eq!(ready(&b, "b-inbox"), n / 5);
    // In memory: the entries held with their messages, and the messages shared by two
    // queues.
    let bound = 2 * HOT as u64 * (ENTRY_BYTES + MESSAGE_BYTES) + (n / 5) * MESSAGE_BYTES;
    assert!(
        b.memory_used() <= bound,
        "{} bytes of index in memory for {n} queued (bound {bound})",
        b.memory_used()
    );
    assert_eq!(drain(&b, "a", 64, T0 + n).await, (0..n).collect::<Vec<_>>());
    let to_b: Vec<u64> = (0..n).filter(|i| i % 5 == 0).collect();
    assert_eq!(drain(&b, "b", 1000, T0 + n).await, to_b);
    assert_eq!((ready(&b, "a-inbox"), ready(&b, "b-inbox")), (0, 0));
    assert_eq!(b.memory_used(), 0, "everything consumed, nothing counted");
    // Drained, the queue holds new messages in memory again.
    publish(&b, "t.a.x", n).await;
    assert_eq!(drain(&b, "a", 10, T0 + n + 1).await, vec![n]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spilled_backlog_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = open(dir.path());
    client(&b, "a", "t.#").await;
    for i in 0..600 {
        publish(&b, "t.x", i).await;
    }
    let who = b.principal("a").expect("principal");
    let first = b
        .receive(&who, "a-inbox", ReceiveOptions::auto(100), T0 + 600)
        .await
        .expect("receive");
    assert_eq!(
        first.iter().map(n_of).collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>()
    );
    drop(who);
    b.shutdown().map_err(|_| "still shared").expect("shutdown");
    let b = open(dir.path());
    assert_eq!(ready(&b, "a-inbox"), 500);
    assert_eq!(
        drain(&b, "a", 1000, T0 + 700).await,
        (100..600).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_client_removes_what_it_kept_in_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = open(dir.path());
    client(&b, "a", "t.#").await;
    client(&b, "keep", "t.keep").await;
    for i in 0..2000 {
        publish(&b, "t.x", i).await;
    }
    publish(&b, "t.keep", 1).await;
    b.delete_client("a").await.expect("delete");
    assert_eq!(b.memory_used(), index_bytes(1));
    b.shutdown().map_err(|_| "still shared").expect("shutdown");
    let store = LogStore::open_with(dir.path(), 64 << 10).expect("reopen");
    let snap = store.load().expect("load");
    assert_eq!((snap.messages.len(), snap.entries.len()), (1, 1));
}

/// A node restarted over a backlog longer than memory keeps it on disk from the start:
/// memory holds the head of the queue, depth counts the rest, everything drains in order,
/// and what was leased `max_deliveries` times when the node stopped goes to the dead-letter
/// queue (from memory and from disk alike), not out once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_over_a_long_backlog_keeps_it_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n: u64 = 1500;
    {
        let b = open_spilling(dir.path(), 2);
        client(&b, "a", "t.#").await;
        for i in 0..n {
            publish(&b, "t.x", i).await;
        }
        // The first 100 are delivered twice (all they may be) and still leased at the
        // stop.
        let who = b.principal("a").expect("principal");
        for round in 0..2 {
            let got = b
                .receive(&who, "a-inbox", ReceiveOptions::leased(100, 60_000), T0 + n)
                .await
                .expect("receive");
            assert_eq!(got.len(), 100);
            if round == 0 {
                let r: Vec<String> = got.iter().filter_map(|d| d.receipt.clone()).collect();
                b.settle(&who, &r, Settle::Nack { requeue: true }, T0 + n)
                    .await
                    .expect("nack");
            }
        }
        drop(who);
        b.shutdown().map_err(|_| "still shared").expect("shutdown");
    }
    let b = open_spilling(dir.path(), 2);
    // The head in memory (the first HOT, out of which the dead-letter queue took those
    // worn out); the rest counted, on disk.
    assert!(
        b.memory_used() <= 2 * HOT as u64 * (ENTRY_BYTES + MESSAGE_BYTES),
        "{} bytes in memory after a restart over {n} queued",
        b.memory_used()
    );
    assert_eq!(ready(&b, "a-inbox") + ready(&b, "a-dead"), n);
    let rest = drain(&b, "a", 64, T0 + n + 1).await;
    assert_eq!(rest, (100..n).collect::<Vec<_>>());
    assert_eq!(ready(&b, "a-dead"), 100);
    let who = b.principal("a").expect("principal");
    let dead = b
        .receive(&who, "a-dead", ReceiveOptions::auto(1000), T0 + n + 2)
        .await
        .expect("receive dead");
    assert_eq!(
        dead.iter().map(n_of).collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>()
    );
    assert_eq!(b.memory_used(), 0, "everything consumed, nothing counted");
}

/// A node whose memory cap holds the heads of a few queues only, as a node opens it (the
/// log replayed with the same node-wide bound).
fn open_pressed(dir: &Path, max_memory_bytes: u64) -> Broker {
    let options = LogOptions {
        segment_bytes: 64 << 10,
        spill_entries: Some(10_000),
        spill_node: Some(node_spill(max_memory_bytes)),
        ..LogOptions::default()
    };
    let store = Arc::new(LogStore::open_on(Arc::new(RealFs), dir, options).expect("open log"));
    let config = BrokerConfig {
        queue_memory_entries: 10_000,
        max_memory_bytes,
        ..BrokerConfig::default()
    };
    Broker::open(store, config, T0).expect("open broker")
}

/// A backlog spread over more queues than memory holds the heads of: no queue is long,
/// yet once the node is pressed each keeps a head in memory and the rest in the log, so
/// every publish is taken (none refused with `node_full`), memory stays under its cap,
/// and after a restart every queue drains in order, every message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_over_many_queues_is_bounded_by_disk_not_memory() {
    // Room for about 3 000 entries in all: a tenth of the backlog.
    many_queues(40, 300, 3_000 * index_bytes(1)).await;
}

/// A fleet offline: a few messages for each of more queues than memory holds even the
/// shortest heads of (1 000 queues of 5, room for 1 500 entries). Past three quarters of
/// the cap queues keep no head, so this too is bounded by disk, at start as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_messages_for_each_of_many_queues_are_bounded_by_disk_not_memory() {
    many_queues(1_000, 5, 1_500 * index_bytes(1)).await;
}

/// `per` messages for each of `clients` queues, published in turns, on a node whose cap is
/// `cap`: every publish taken, memory under the cap before and after a restart, and every
/// queue drained in order, every message once.
async fn many_queues(clients: u64, per: u64, cap: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let b = open_pressed(dir.path(), cap);
        for c in 0..clients {
            client(&b, &format!("c{c}"), &format!("t.c{c}")).await;
        }
        for i in 0..per {
            for c in 0..clients {
                publish(&b, &format!("t.c{c}"), i).await;
                assert!(b.memory_used() <= cap, "{} of {cap}", b.memory_used());
            }
        }
        for c in 0..clients {
            assert_eq!(ready(&b, &format!("c{c}-inbox")), per);
        }
        b.shutdown().map_err(|_| "still shared").expect("shutdown");
    }
    let b = open_pressed(dir.path(), cap);
    assert!(
        b.memory_used() <= cap,
        "{} bytes in memory after a restart, of {cap}",
        b.memory_used()
    );
    for c in 0..clients {
        let id = format!("c{c}");
        assert_eq!(ready(&b, &format!("{id}-inbox")), per);
        let got = drain(&b, &id, 50, T0 + per + 1).await;
        assert_eq!(got, (0..per).collect::<Vec<_>>(), "client {id}");
    }
    assert_eq!(b.memory_used(), 0, "everything consumed, nothing counted");
}

/// Messages queued in several queues, some of their entries kept on disk only, across a
/// restart: the first queue to bring one back (or to hold it in memory) and settle it must
/// not delete it while another queue's entry on disk still refers to it. Here `a` spills
/// first (its first 50 are its own), so of the messages both get, `b` holds the first 50
/// in memory while `a` keeps them on disk; the rest both keep on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_kept_on_disk_survives_a_restart_in_every_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n: u64 = 400;
    {
        let b = open_spilling(dir.path(), 10);
        client(&b, "a", "t.#").await;
        client(&b, "b", "t.x").await;
        for i in 0..n {
            publish(&b, if i < 100 { "t.y" } else { "t.x" }, i).await;
        }
        b.shutdown().map_err(|_| "still shared").expect("shutdown");
    }
    let b = open_spilling(dir.path(), 10);
    assert_eq!((ready(&b, "a-inbox"), ready(&b, "b-inbox")), (n, n - 100));
    let got = drain(&b, "b", 64, T0 + n + 1).await;
    assert_eq!(got, (100..n).collect::<Vec<_>>());
    let got = drain(&b, "a", 64, T0 + n + 2).await;
    assert_eq!(got, (0..n).collect::<Vec<_>>());
    assert_eq!(b.memory_used(), 0, "everything consumed, nothing counted");
}
