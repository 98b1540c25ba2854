//! Registry changes decided on one node and applied on all (a cluster's shared log): two
//! brokers applying one log in one order hold the same registry, decide conflicts alike,
//! and revoke the sessions of a client deleted or rotated elsewhere.

use std::sync::Arc;

use trunkline_broker::changes::Change;
use trunkline_broker::{Broker, BrokerConfig, BrokerError, ClientUpdate, NewClient, QueueSpec};
use trunkline_store::{LogStore, MemoryStore};

fn node() -> Broker {
    let config = BrokerConfig {
        shared_registry: true,
        ..BrokerConfig::default()
    };
    Broker::open(Arc::new(MemoryStore::default()), config, 0).unwrap()
}

/// Applies `change` on every node of `nodes`, in turn; what each decided.
async fn apply_all(nodes: &[&Broker], change: &Change) -> Vec<Result<bool, String>> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(n.apply(change).await.map_err(|e| e.to_string()));
    }
    out
}

#[tokio::test]
async fn every_node_applying_one_log_holds_the_same_registry() {
    let (a, b) = (node(), node());
    let mut log = Vec::new();
    let (c1, secret) = a
        .plan_create_client(NewClient::new("c1", "C1", vec!["x.*".into()]), 5)
        .unwrap();
    log.push(Change::CreateClient { client: c1 });
    // Node b, not yet having read c1, plans a client of the same id: the log's first wins.
    let (c1_again, _) = b
        .plan_create_client(NewClient::new("c1", "other", vec!["y".into()]), 6)
        .unwrap();
    log.push(Change::CreateClient { client: c1_again });
    let mut decided = Vec::new();
    for change in &log {
        decided.push(apply_all(&[&a, &b], change).await);
    }
    assert_eq!(decided[0], vec![Ok(true), Ok(true)]);
    assert!(decided[1]
        .iter()
        .all(|r| r.as_ref().is_err_and(|e| e.contains("already exists"))));
    assert_eq!(a.get_client("c1"), b.get_client("c1"));
    assert_eq!(b.get_client("c1").unwrap().client_name, "C1");
    // A client made on a logs in on b, with the secret a handed out.
    assert!(b.authenticate("c1", &secret).is_some());

    // A queue, granted on one node while deleted on the other: the grant that comes
    // after the deletion in the log is refused everywhere.
    let q = a
        .plan_declare_queue("jobs", QueueSpec::default(), 7)
        .unwrap();
    assert_eq!(
        apply_all(&[&a, &b], &Change::PutQueue { queue: q }).await,
        vec![Ok(true), Ok(true)]
    );
    let granted = b
        .plan_update_client(
            "c1",
            ClientUpdate {
                grants: Some(vec!["jobs".into()]),
                ..Default::default()
            },
        )
        .unwrap();
    apply_all(
        &[&a, &b],
        &Change::DeleteQueue {
            name: "jobs".into(),
        },
    )
    .await;
    let r = apply_all(&[&a, &b], &Change::UpdateClient { client: granted }).await;
    assert!(r
        .iter()
        .all(|r| r.as_ref().is_err_and(|e| e.contains("jobs"))));
    assert!(a.get_client("c1").unwrap().grants.is_empty());
    assert!(!b.has_queue("jobs") && !a.has_queue("jobs"));
}

#[tokio::test]
async fn a_change_made_elsewhere_reaches_open_sessions() {
    let (a, b) = (node(), node());
    let (c, _) = a
        .plan_create_client(NewClient::new("c", "C", vec!["x".into()]), 0)
        .unwrap();
    apply_all(&[&a, &b], &Change::CreateClient { client: c }).await;
    // A session on b, then the secret rotated through a.
    let on_b = b.principal("c").unwrap();
    assert!(on_b.access().is_ok());
    let (rotated, new_secret) = a.plan_rotate_secret("c").unwrap();
    apply_all(&[&a, &b], &Change::UpdateClient { client: rotated }).await;
    assert!(matches!(on_b.access(), Err(BrokerError::Revoked(_))));
    assert!(b.authenticate("c", &new_secret).is_some());
    // Deleted through a: b's new session ends too.
    let again = b.principal("c").unwrap();
    apply_all(
        &[&a, &b],
        &Change::DeleteClient {
            client_id: "c".into(),
        },
    )
    .await;
    assert!(matches!(again.access(), Err(BrokerError::Revoked(_))));
    assert!(b.get_client("c").is_none() && !b.has_queue("c-inbox"));
}

#[tokio::test]
async fn the_last_admin_stays_whichever_node_is_asked() {
    let (a, b) = (node(), node());
    for id in ["ad1", "ad2"] {
        let mut n = NewClient::new(id, id, vec!["#".into()]);
        n.roles = vec!["admin".into()];
        let (c, _) = a.plan_create_client(n, 0).unwrap();
        apply_all(&[&a, &b], &Change::CreateClient { client: c }).await;
    }
    // Each node, seeing two admins, lets one go; the log holds both deletions.
    let first = apply_all(
        &[&a, &b],
        &Change::DeleteClient {
            client_id: "ad1".into(),
        },
    )
    .await;
    let second = apply_all(
        &[&a, &b],
        &Change::DeleteClient {
            client_id: "ad2".into(),
        },
    )
    .await;
    assert_eq!(first, vec![Ok(false), Ok(false)]);
    assert!(second
        .iter()
        .all(|r| r.as_ref().is_err_and(|e| e.contains("last admin"))));
}

#[tokio::test]
async fn a_shared_registry_is_not_kept_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let open = |shared| {
        let store = Arc::new(LogStore::open_with(dir.path(), 64 << 10).unwrap());
        let config = BrokerConfig {
            shared_registry: shared,
            ..BrokerConfig::default()
        };
        Broker::open(store, config, 0).unwrap()
    };
    let b = open(true);
    b.create_client(NewClient::new("c", "C", vec!["x".into()]), 0)
        .await
        .unwrap();
    b.shutdown().ok().unwrap();
    // The log is the registry's record: the node starts empty and replays it.
    let b = open(true);
    assert_eq!(b.client_count(), 0);
    b.shutdown().ok().unwrap();
    let b = open(false);
    assert_eq!(b.client_count(), 0);
}
