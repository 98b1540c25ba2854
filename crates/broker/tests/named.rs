//! Declared queues: bound to topics, read and written by grants, kept across a restart,
//! dead-lettered into `<name>.XQ`, and gone with their grants when deleted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use trunkline_broker::{
    Broker, BrokerConfig, BrokerError, ClientUpdate, LimitSettings, NewClient, Publish, QueueSpec,
    ReceiveOptions, Settle,
};
use trunkline_store::LogStore;

const T0: u64 = 1_700_000_000_000;

fn open(dir: &Path) -> Broker {
    let store = Arc::new(LogStore::open_with(dir, 64 << 10).expect("open log"));
    Broker::open(store, BrokerConfig::default(), T0).expect("open broker")
}

fn spec(bindings: &[&str]) -> QueueSpec {
    QueueSpec {
        bindings: bindings.iter().map(|b| b.to_string()).collect(),
        ..QueueSpec::default()
    }
}

async fn publish(b: &Broker, topic: &str, n: u64) -> u64 {
    let body = format!("{{\"n\":{n}}}");
    b.publish(Publish::new(topic, body.into_bytes(), "pub"), T0 + n)
        .await
        .expect("publish")
        .delivered_to
}

async fn drain(b: &Broker, who: &str, queue: &str) -> Vec<u64> {
    let p = b.principal(who).expect("principal");
    let got = b
        .receive(&p, queue, ReceiveOptions::auto(1000), T0)
        .await
        .expect("receive");
    got.iter()
        .map(|d| {
            let v: serde_json::Value = serde_json::from_slice(&d.data.body).unwrap();
            v["n"].as_u64().unwrap()
        })
        .collect()
}

async fn reader(b: &Broker, id: &str, grants: &[&str]) {
    let mut c = NewClient::new(id, id, vec!["nothing.here".into()]);
    c.grants = grants.iter().map(|g| g.to_string()).collect();
    b.create_client(c, T0).await.expect("create reader");
}

#[tokio::test]
async fn a_declared_queue_takes_its_bindings_and_is_read_by_grant_only() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let (view, made) = b
        .declare_queue(
            "to-peer",
            spec(&["to_creditors.0.#", "to_creditors.1.1.#"]),
            T0,
        )
        .await
        .unwrap();
    assert!(made);
    assert_eq!(view.dead_letter, "to-peer.XQ");
    assert_eq!(publish(&b, "to_creditors.0.1.0", 1).await, 1);
    assert_eq!(publish(&b, "to_creditors.1.0.0", 2).await, 0);
    assert_eq!(publish(&b, "to_creditors.1.1.0", 3).await, 1);
    reader(&b, "reader", &["to-peer"]).await;
    reader(&b, "other", &[]).await;
    let other = b.principal("other").unwrap();
    let refused = b
        .receive(&other, "to-peer", ReceiveOptions::auto(10), T0)
        .await;
    assert!(
        matches!(refused, Err(BrokerError::Forbidden(_))),
        "{refused:?}"
    );
    assert_eq!(drain(&b, "reader", "to-peer").await, vec![1, 3]);

    // Declared again: new bindings, what it holds stays.
    publish(&b, "to_creditors.0.0.0", 4).await;
    let (view, made) = b
        .declare_queue("to-peer", spec(&["to_creditors.1.#"]), T0)
        .await
        .unwrap();
    assert!(!made);
    assert_eq!(view.depth, 1);
    assert_eq!(view.bindings, vec!["to_creditors.1.#".to_string()]);
    assert_eq!(publish(&b, "to_creditors.0.0.0", 5).await, 0);
    assert_eq!(publish(&b, "to_creditors.1.0.0", 6).await, 1);
    assert_eq!(drain(&b, "reader", "to-peer").await, vec![4, 6]);
}

#[tokio::test]
async fn declared_queues_and_what_they_hold_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open(dir.path());
        let mut labels = BTreeMap::new();
        labels.insert("federation.peer".to_string(), "1234abcd".to_string());
        let s = QueueSpec {
            labels,
            ..spec(&["a.#"])
        };
        b.declare_queue("kept", s, T0).await.unwrap();
        reader(&b, "reader", &["kept"]).await;
        for n in 0..10 {
            publish(&b, "a.b", n).await;
        }
        b.shutdown().ok().expect("sole handle");
    }
    let b = open(dir.path());
    let view = b.get_queue("kept").expect("declared queue back");
    assert_eq!(view.depth, 10);
    assert_eq!(view.labels["federation.peer"], "1234abcd");
    assert_eq!(publish(&b, "a.c", 10).await, 1, "its binding is back");
    assert_eq!(
        drain(&b, "reader", "kept").await,
        (0..=10).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn spent_deliveries_go_to_the_dead_letter_queue_which_no_client_may_write() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let s = QueueSpec {
        limits: LimitSettings {
            max_deliveries: Some(1),
            ..LimitSettings::default()
        },
        ..spec(&["x"])
    };
    b.declare_queue("q", s, T0).await.unwrap();
    let mut c = NewClient::new("worker", "w", vec!["nothing".into()]);
    c.grants = vec!["q".into(), "q.XQ".into()];
    c.write_grants = vec!["q".into()];
    b.create_client(c, T0).await.unwrap();
    let w = b.principal("worker").unwrap();
    publish(&b, "x", 7).await;
    let got = b
        .receive(&w, "q", ReceiveOptions::leased(1, 1000), T0)
        .await
        .unwrap();
    let receipts: Vec<String> = got.iter().filter_map(|d| d.receipt.clone()).collect();
    b.settle(&w, &receipts, Settle::Nack { requeue: true }, T0)
        .await
        .unwrap();
    assert_eq!(drain(&b, "worker", "q.XQ").await, vec![7]);
    // A write grant of a dead-letter queue is refused, and so is a direct put.
    let refused = b
        .update_client(
            "worker",
            ClientUpdate {
                write_grants: Some(vec!["q.XQ".into()]),
                ..ClientUpdate::default()
            },
        )
        .await;
    assert!(
        matches!(refused, Err(BrokerError::InvalidArgument(_))),
        "{refused:?}"
    );
    let mut p = Publish::new("q.XQ", b"{}".to_vec(), "worker");
    p.queue = Some("q.XQ".into());
    assert!(matches!(
        w.check_publish(&p),
        Err(BrokerError::Forbidden(_))
    ));
    let mut p = Publish::new("q", b"{\"n\":8}".to_vec(), "worker");
    p.queue = Some("q".into());
    w.check_publish(&p).expect("write grant");
    b.publish(p, T0).await.unwrap();
    assert_eq!(drain(&b, "worker", "q").await, vec![8]);
}

#[tokio::test]
async fn deleting_a_queue_takes_its_messages_and_grants_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    b.declare_queue("gone", spec(&["g"]), T0).await.unwrap();
    reader(&b, "reader", &["gone", "gone.XQ"]).await;
    publish(&b, "g", 1).await;
    b.delete_queue("gone").await.unwrap();
    assert!(b.get_queue("gone").is_none());
    assert!(b.get_client("reader").unwrap().grants.is_empty());
    assert_eq!(publish(&b, "g", 2).await, 0);
    // Declared again: empty, and no grant came back with it.
    b.declare_queue("gone", spec(&["g"]), T0).await.unwrap();
    assert_eq!(b.get_queue("gone").unwrap().depth, 0);
    let r = b.principal("reader").unwrap();
    let refused = b.receive(&r, "gone", ReceiveOptions::auto(10), T0).await;
    assert!(matches!(refused, Err(BrokerError::Forbidden(_))));
    assert!(matches!(
        b.delete_queue("never").await,
        Err(BrokerError::UnknownQueue(_))
    ));
}

#[tokio::test]
async fn names_a_client_queue_takes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    for taken in ["c-inbox", "c-dead", "q.XQ"] {
        let r = b.declare_queue(taken, spec(&[]), T0).await;
        assert!(
            matches!(r, Err(BrokerError::QueueNameTaken(_))),
            "{taken}: {r:?}"
        );
    }
    for bad in ["", "a/b", "#", "-inbox"] {
        let r = b.declare_queue(bad, spec(&[]), T0).await;
        assert!(
            matches!(r, Err(BrokerError::NoSuchQueueName(_))),
            "{bad}: {r:?}"
        );
    }
    let r = b.declare_queue("q", spec(&["a.b*"]), T0).await;
    assert!(
        matches!(r, Err(BrokerError::InvalidPattern { .. })),
        "{r:?}"
    );
}
