//! Authorization as the broker enforces it: read and write rights, grants that follow
//! their queues, and principals that changes to a client reach at once.

use std::sync::Arc;

use trunkline_broker::{
    Broker, BrokerConfig, BrokerError, ClientUpdate, NewClient, Publish, ReceiveOptions, Settle,
    Target,
};
use trunkline_store::{MemoryStore, QueueStore};

const T0: u64 = 1_700_000_000_000;

fn pats(ps: &[&str]) -> Vec<String> {
    ps.iter().map(|p| p.to_string()).collect()
}

async fn client(b: &Broker, id: &str, patterns: &[&str]) -> String {
    b.create_client(NewClient::new(id, id, pats(patterns)), T0)
        .await
        .expect("create client")
        .1
}

#[tokio::test]
async fn grants_name_existing_queues_and_go_with_them() {
    let store: Arc<dyn QueueStore> = Arc::new(MemoryStore::default());
    let b = Broker::open(store.clone(), BrokerConfig::default(), T0).expect("open");
    client(&b, "reader", &["r"]).await;
    // A grant of a queue that does not exist yet is refused...
    let r = b
        .update_client(
            "reader",
            ClientUpdate {
                grants: Some(pats(&["zz-inbox"])),
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(r, Err(BrokerError::GrantOfUnknownQueue(ref q)) if q == "zz-inbox"),
        "{r:?}"
    );
    let mut c = NewClient::new("other", "o", pats(&["t"]));
    c.write_grants = pats(&["zz-inbox"]);
    assert!(matches!(
        b.create_client(c, T0).await,
        Err(BrokerError::GrantOfUnknownQueue(_))
    ));
    // ...so creating `zz` later gives `reader` nothing.
    client(&b, "zz", &["secret.#"]).await;
    b.publish(Publish::new("secret.x", b"1".to_vec(), "p"), T0)
        .await
        .expect("publish");
    let reader = b.principal("reader").expect("reader");
    let r = b
        .receive(&reader, "zz-inbox", ReceiveOptions::auto(10), T0)
        .await;
    assert!(matches!(r, Err(BrokerError::Forbidden(_))), "{r:?}");

    // Granted now that it exists, it is readable; when `zz` is deleted the grant goes,
    // and a new `zz` is not readable through it.
    b.update_client(
        "reader",
        ClientUpdate {
            grants: Some(pats(&["zz-inbox"])),
            ..Default::default()
        },
    )
    .await
    .expect("grant");
    let got = b
        .receive(&reader, "zz-inbox", ReceiveOptions::auto(10), T0)
        .await
        .expect("granted read");
    assert_eq!(got.len(), 1);
    b.delete_client("zz").await.expect("delete");
    assert!(b.get_client("reader").expect("reader").grants.is_empty());
    client(&b, "zz", &["secret.#"]).await;
    let r = b
        .receive(&reader, "zz-inbox", ReceiveOptions::auto(10), T0)
        .await;
    assert!(matches!(r, Err(BrokerError::Forbidden(_))), "{r:?}");

    // And the removal is durable.
    drop(reader);
    b.shutdown().ok().expect("only handle");
    let b = Broker::open(store, BrokerConfig::default(), T0).expect("reopen");
    assert!(b.get_client("reader").expect("reader").grants.is_empty());
}

#[tokio::test]
async fn write_rights() {
    let b = Broker::open(
        Arc::new(MemoryStore::default()),
        BrokerConfig::default(),
        T0,
    )
    .expect("open");
    client(&b, "ops", &["ops.#"]).await;
    let mut c = NewClient::new("w", "w", pats(&["w.#"]));
    c.publish = Some(pats(&["w.#"]));
    c.write_grants = pats(&["ops-inbox"]);
    let (view, _) = b.create_client(c, T0).await.expect("create");
    assert_eq!(view.publish, pats(&["w.#"]));
    let dead = NewClient {
        write_grants: pats(&["ops-dead"]),
        ..NewClient::new("x", "x", pats(&["x"]))
    };
    assert!(matches!(
        b.create_client(dead, T0).await,
        Err(BrokerError::InvalidArgument(_))
    ));
    let w = b.principal("w").expect("w");
    let ok = |t: Target| w.check_write(t).is_ok();
    assert!(ok(Target::Topic("w.1")));
    assert!(!ok(Target::Topic("ops.1")));
    assert!(!ok(Target::Broadcast));
    assert!(ok(Target::Queue("w-inbox")));
    assert!(ok(Target::Queue("ops-inbox")));
    assert!(!ok(Target::Queue("ops-dead")));
    assert!(!ok(Target::Queue("w-dead")));
    // Widening it again to every topic lists it as `#`.
    let v = b
        .update_client(
            "w",
            ClientUpdate {
                publish: Some(pats(&["#"])),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(v.publish, pats(&["#"]));
    assert!(ok(Target::Broadcast), "the same principal sees the change");
}

#[tokio::test]
async fn rotation_and_deletion_revoke_principals() {
    let b = Broker::open(
        Arc::new(MemoryStore::default()),
        BrokerConfig::default(),
        T0,
    )
    .expect("open");
    let secret = client(&b, "x", &["t"]).await;
    let (old, _) = b.authenticate("x", &secret).expect("login");
    let token = old.revocation();
    b.rotate_secret("x").await.expect("rotate");
    assert!(token.is_cancelled());
    assert!(matches!(old.access(), Err(BrokerError::Revoked(_))));
    assert!(b.authenticate("x", &secret).is_none());
    let now = b.principal("x").expect("x");
    assert!(!now.is_revoked());
    // Updates keep principals valid.
    b.update_client(
        "x",
        ClientUpdate {
            client_name: Some("X".into()),
            ..Default::default()
        },
    )
    .await
    .expect("update");
    assert!(!now.is_revoked());
    b.delete_client("x").await.expect("delete");
    assert!(now.is_revoked());
    client(&b, "x", &["t"]).await;
    assert!(
        now.is_revoked(),
        "a new client of the same id is someone else"
    );
    let r = b
        .settle(&now, &["x-inbox/1/1".into()], Settle::Ack, T0)
        .await;
    assert!(matches!(r, Err(BrokerError::Revoked(_))), "{r:?}");
}

#[tokio::test]
async fn live_subscriptions_are_narrowed_to_what_the_client_may_read() {
    let b = Broker::open(
        Arc::new(MemoryStore::default()),
        BrokerConfig::default(),
        T0,
    )
    .expect("open");
    client(&b, "cb", &["b.#"]).await;
    let cb = b.principal("cb").expect("cb");
    let mut wide = b.subscribe_live(Some(&cb), "#", 100).expect("subscribe");
    for t in ["a.secret", "b.1", "x.b", "b.2.3"] {
        b.publish(Publish::new(t, b"1".to_vec(), "p"), T0)
            .await
            .expect("publish");
    }
    let mut got = Vec::new();
    while let Some(m) = wide.try_recv() {
        got.push(m.data.topic.clone());
    }
    assert_eq!(got, ["b.1", "b.2.3"]);
    // A change of subscription reaches the open subscription.
    b.update_client(
        "cb",
        ClientUpdate {
            patterns: Some(pats(&["a.#"])),
            ..Default::default()
        },
    )
    .await
    .expect("update");
    for t in ["a.secret", "b.1"] {
        b.publish(Publish::new(t, b"1".to_vec(), "p"), T0)
            .await
            .expect("publish");
    }
    assert_eq!(
        wide.try_recv().map(|m| m.data.topic.clone()).as_deref(),
        Some("a.secret")
    );
    assert!(wide.try_recv().is_none());
    // Deleted: nothing more.
    b.delete_client("cb").await.expect("delete");
    b.publish(Publish::new("a.x", b"1".to_vec(), "p"), T0)
        .await
        .expect("publish");
    assert!(wide.try_recv().is_none());
    assert!(matches!(
        b.subscribe_live(Some(&cb), "#", 1),
        Err(BrokerError::Revoked(_))
    ));
}

mod property {
    //! No message outside a client's read rights reaches it, whatever the clients'
    //! patterns, grants and live subscriptions: checked against a reference matcher.

    use super::*;
    use proptest::prelude::*;
    use trunkline_broker::topic::naive_match;

    const WORDS: &[&str] = &["a", "b", "c"];

    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(WORDS), 1..4).prop_map(|w| w.join("."))
    }

    fn pattern() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(&["a", "b", "c", "*", "#"][..]),
            1..4,
        )
        .prop_map(|w| w.join("."))
    }

    #[derive(Debug, Clone)]
    struct Spec {
        read: Vec<String>,
        publish: Option<Vec<String>>,
        /// Indexes of other clients whose inbox it may read.
        grants: Vec<usize>,
        live: String,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            proptest::collection::vec(pattern(), 1..3),
            proptest::option::of(proptest::collection::vec(pattern(), 1..3)),
            proptest::collection::vec(0usize..3, 0..2),
            pattern(),
        )
            .prop_map(|(read, publish, grants, live)| Spec {
                read,
                publish,
                grants,
                live,
            })
    }

    fn matches_any(patterns: &[String], topic: &str) -> bool {
        patterns.iter().any(|p| naive_match(p, topic))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn nothing_outside_the_read_rights_is_delivered(
            specs in proptest::collection::vec(spec(), 3),
            sends in proptest::collection::vec((0usize..3, topic(), any::<bool>()), 1..20),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            rt.block_on(async {
                let b = Broker::open(Arc::new(MemoryStore::default()), BrokerConfig::default(), T0)
                    .expect("open");
                let ids: Vec<String> = (0..specs.len()).map(|i| format!("c{i}")).collect();
                for (i, s) in specs.iter().enumerate() {
                    let mut c = NewClient::new(ids[i].clone(), "n", s.read.clone());
                    c.publish = s.publish.clone();
                    b.create_client(c, T0).await.expect("create");
                }
                for (i, s) in specs.iter().enumerate() {
                    let grants: Vec<String> = s.grants.iter().filter(|g| **g != i)
                        .map(|g| format!("c{g}-inbox")).collect();
                    b.update_client(&ids[i], ClientUpdate { grants: Some(grants), ..Default::default() })
                        .await.expect("grant");
                }
                let who: Vec<_> = ids.iter().map(|id| b.principal(id).expect("principal")).collect();
                let mut live: Vec<_> = specs.iter().zip(&who)
                    .map(|(s, p)| b.subscribe_live(Some(p), &s.live, 1000).expect("live"))
                    .collect();
                for (from, topic, broadcast) in &sends {
                    let mut p = Publish::new(topic.clone(), b"1".to_vec(), ids[*from].clone());
                    p.broadcast = *broadcast;
                    let allowed = if *broadcast {
                        specs[*from].publish.as_ref().is_none_or(|ps| ps.iter().any(|p| p == "#"))
                    } else {
                        specs[*from].publish.as_ref().is_none_or(|ps| matches_any(ps, topic))
                    };
                    let checked = who[*from].check_publish(&p);
                    prop_assert_eq!(checked.is_ok(), allowed, "publish rule for {:?}", p.topic);
                    if checked.is_ok() {
                        b.publish(p, T0).await.expect("publish");
                    }
                }
                for (i, s) in specs.iter().enumerate() {
                    while let Some(m) = live[i].try_recv() {
                        let t = &m.data.topic;
                        prop_assert!(matches_any(&s.read, t) && naive_match(&s.live, t),
                            "c{} live {:?} got {}", i, s.live, t);
                    }
                    for (j, owner) in specs.iter().enumerate() {
                        let q = format!("c{j}-inbox");
                        let r = b.receive(&who[i], &q, ReceiveOptions::auto(1000), T0).await;
                        let may = i == j || s.grants.contains(&j);
                        prop_assert_eq!(r.is_ok(), may, "c{} reading {}", i, q);
                        for d in r.unwrap_or_default() {
                            let t = &d.data.topic;
                            // In an inbox: what its owner subscribed to, or a broadcast.
                            let broadcast = sends.iter().any(|(_, st, bc)| *bc && st == t);
                            prop_assert!(matches_any(&owner.read, t) || broadcast,
                                "{} held {}", q, t);
                        }
                    }
                }
                Ok(())
            })?;
        }
    }
}
