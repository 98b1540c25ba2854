//! Integration tests of the broker's public API, as a front-end would use it.
//!
//! Time is always an explicit argument (milliseconds since the epoch), so leases, TTLs
//! and dedup windows are exercised by passing later `now` values, never by sleeping.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use trunkline_broker::{
    Broker, BrokerConfig, BrokerError, ClientUpdate, Delivery, LimitSettings, NewClient, Overflow,
    Publish, Published, ReceiveOptions, Settle, WaitHandle,
};
use trunkline_store::{MemoryStore, RedbStore};

/// A start time far from zero, so that ids (`>= now * 1024`) look like real ones.
const T0: u64 = 1_700_000_000_000;

fn broker_with(config: BrokerConfig) -> Broker {
    Broker::open(Arc::new(MemoryStore::default()), config, T0).expect("open broker")
}

fn broker() -> Broker {
    broker_with(BrokerConfig::default())
}

/// The principal of client `id`, as a front-end holds it.
fn who(b: &Broker, id: &str) -> Result<trunkline_broker::Principal, BrokerError> {
    b.principal(id)
        .ok_or_else(|| BrokerError::UnknownClient(id.into()))
}

/// Receive and settle as a client named by its id, as the front-ends do with the
/// principal of a request or session.
trait AsClient {
    async fn receive_as(
        &self,
        id: &str,
        queue: &str,
        opts: ReceiveOptions,
        now: u64,
    ) -> Result<Vec<Delivery>, BrokerError>;
    async fn settle_as(
        &self,
        id: &str,
        receipts: &[String],
        how: Settle,
        now: u64,
    ) -> Result<trunkline_broker::Settled, BrokerError>;
}

impl AsClient for Broker {
    async fn receive_as(
        &self,
        id: &str,
        queue: &str,
        opts: ReceiveOptions,
        now: u64,
    ) -> Result<Vec<Delivery>, BrokerError> {
        self.receive(&who(self, id)?, queue, opts, now).await
    }
    async fn settle_as(
        &self,
        id: &str,
        receipts: &[String],
        how: Settle,
        now: u64,
    ) -> Result<trunkline_broker::Settled, BrokerError> {
        self.settle(&who(self, id)?, receipts, how, now).await
    }
}

fn pats(ps: &[&str]) -> Vec<String> {
    ps.iter().map(|p| p.to_string()).collect()
}

/// Creates a client subscribed to `patterns`; returns its secret.
async fn client(b: &Broker, id: &str, patterns: &[&str]) -> String {
    client_with(b, id, patterns, LimitSettings::default()).await
}

async fn client_with(b: &Broker, id: &str, patterns: &[&str], inbox: LimitSettings) -> String {
    let mut c = NewClient::new(id, format!("client {id}"), pats(patterns));
    c.inbox = inbox;
    let (view, secret) = b.create_client(c, T0).await.expect("create client");
    assert_eq!(view.client_id, id);
    assert_eq!(view.inbox_depth, 0);
    secret
}

fn body(n: u64) -> Vec<u8> {
    format!("{{\"n\":{n}}}").into_bytes()
}

fn body_of(d: &Delivery) -> String {
    String::from_utf8(d.data.body.to_vec()).expect("utf-8 body")
}

fn bodies(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(body_of).collect()
}

/// Bodies with their delivery counts.
fn with_counts(ds: &[Delivery]) -> Vec<(String, u32)> {
    ds.iter().map(|d| (body_of(d), d.delivery_count)).collect()
}

fn b(n: u64) -> String {
    String::from_utf8(body(n)).expect("utf-8 body")
}

async fn publish(b: &Broker, topic: &str, n: u64, now: u64) -> Published {
    b.publish(Publish::new(topic, body(n), "pub"), now)
        .await
        .expect("publish")
}

async fn publish_id(b: &Broker, sender: &str, message_id: &str, n: u64, now: u64) -> Published {
    let mut p = Publish::new("dedup.t", body(n), sender);
    p.message_id = Some(message_id.to_owned());
    b.publish(p, now).await.expect("publish")
}

fn inbox(id: &str) -> String {
    format!("{id}-inbox")
}

fn dead(id: &str) -> String {
    format!("{id}-dead")
}

/// Auto-ack receive of everything ready in `id`'s inbox.
async fn drain(b: &Broker, id: &str, now: u64) -> Vec<Delivery> {
    b.receive_as(id, &inbox(id), ReceiveOptions::auto(1000), now)
        .await
        .expect("receive")
}

async fn drain_dead(b: &Broker, id: &str, now: u64) -> Vec<Delivery> {
    b.receive_as(id, &dead(id), ReceiveOptions::auto(1000), now)
        .await
        .expect("receive dead")
}

async fn lease(b: &Broker, id: &str, max: usize, lease_ms: u64, now: u64) -> Vec<Delivery> {
    b.receive_as(id, &inbox(id), ReceiveOptions::leased(max, lease_ms), now)
        .await
        .expect("leased receive")
}

fn receipts(ds: &[Delivery]) -> Vec<String> {
    ds.iter()
        .map(|d| d.receipt.clone().expect("leased delivery has a receipt"))
        .collect()
}

/// `(ready, leased)` of one queue.
fn depth(b: &Broker, queue: &str) -> (u64, u64) {
    b.queue_depths()
        .into_iter()
        .find(|d| &*d.name == queue)
        .map(|d| (d.ready, d.leased))
        .unwrap_or_else(|| panic!("no queue {queue}"))
}

fn inbox_depth(b: &Broker, id: &str) -> u64 {
    b.get_client(id).expect("client exists").inbox_depth
}

fn limits(
    max_length: Option<u64>,
    overflow: Option<Overflow>,
    max_deliveries: Option<u32>,
) -> LimitSettings {
    LimitSettings {
        max_length,
        overflow,
        max_deliveries,
    }
}

// ----- 1. routing ----------------------------------------------------------------------

#[tokio::test]
async fn wildcard_subscriptions_route_to_matching_inboxes_only() {
    let br = broker();
    client(&br, "star", &["fleet.*.status"]).await;
    client(&br, "hash", &["fleet.#"]).await;
    client(&br, "multi", &["alerts.#", "fleet.ah1.*"]).await;
    client(&br, "none", &["other.topic"]).await;

    let cases: &[(&str, u64, &[&str])] = &[
        ("fleet.ah1.status", 3, &["star", "hash", "multi"]),
        ("fleet.ah2.status", 2, &["star", "hash"]),
        ("fleet.ah1.status.extra", 1, &["hash"]),
        ("fleet", 1, &["hash"]),
        ("fleet.ah1", 1, &["hash"]),
        ("alerts.fire.north", 1, &["multi"]),
        ("alerts", 1, &["multi"]),
        ("fleetx.ah1.status", 0, &[]),
        ("nothing.here", 0, &[]),
    ];
    let mut expect: HashMap<&str, Vec<(String, String)>> = HashMap::new();
    for (n, (topic, count, who)) in cases.iter().enumerate() {
        let sent = publish(&br, topic, n as u64, T0).await;
        assert_eq!(sent.delivered_to, *count, "delivered_to for {topic}");
        assert!(!sent.duplicate);
        for w in *who {
            expect
                .entry(w)
                .or_default()
                .push((topic.to_string(), b(n as u64)));
        }
    }
    for id in ["star", "hash", "multi", "none"] {
        let got: Vec<(String, String)> = drain(&br, id, T0 + 1)
            .await
            .iter()
            .map(|d| (d.data.topic.clone(), body_of(d)))
            .collect();
        assert_eq!(got, expect.remove(id).unwrap_or_default(), "inbox of {id}");
        assert!(
            drain(&br, id, T0 + 2).await.is_empty(),
            "auto-ack removed them from {id}"
        );
    }
}

#[tokio::test]
async fn a_message_matching_several_patterns_of_one_client_is_delivered_once() {
    let br = broker();
    client(&br, "c", &["a.*", "a.b", "#", "*.b"]).await;
    client(&br, "d", &["a.b"]).await;
    let sent = publish(&br, "a.b", 1, T0).await;
    assert_eq!(sent.delivered_to, 2);
    let got = drain(&br, "c", T0).await;
    assert_eq!(bodies(&got), vec![b(1)]);
    assert_eq!(bodies(&drain(&br, "d", T0).await), vec![b(1)]);
    assert_eq!(br.counters().enqueued.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn delivery_carries_the_published_message() {
    let br = broker();
    client(&br, "c", &["x.y"]).await;
    let sent = br
        .publish(
            Publish::new("x.y", b"{\"k\":[1,2]}".to_vec(), "sender-1"),
            T0 + 5,
        )
        .await
        .expect("publish");
    assert_eq!(sent.delivered_to, 1);
    let got = drain(&br, "c", T0 + 6).await;
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.id, sent.id);
    assert_eq!(d.data.topic, "x.y");
    assert_eq!(&d.data.body[..], b"{\"k\":[1,2]}");
    assert_eq!(d.data.sender, "sender-1");
    assert_eq!(d.data.timestamp_ms, T0 + 5);
    assert_eq!(d.data.expires_at_ms, None);
    assert_eq!(d.delivery_count, 1);
    assert!(!d.redelivered());
    assert!(d.receipt.is_none(), "auto-ack deliveries have no receipt");
}

#[tokio::test]
async fn receive_is_fifo_and_respects_max() {
    let br = broker_with(BrokerConfig {
        max_receive: 3,
        ..BrokerConfig::default()
    });
    client(&br, "c", &["t"]).await;
    let mut ids = Vec::new();
    for n in 0..7 {
        ids.push(publish(&br, "t", n, T0).await.id);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    let first = br
        .receive_as("c", "c-inbox", ReceiveOptions::auto(2), T0)
        .await
        .expect("receive");
    assert_eq!(bodies(&first), vec![b(0), b(1)]);
    // max_receive (3) caps a larger request.
    let second = br
        .receive_as("c", "c-inbox", ReceiveOptions::auto(100), T0)
        .await
        .expect("receive");
    assert_eq!(bodies(&second), vec![b(2), b(3), b(4)]);
    assert_eq!(bodies(&drain(&br, "c", T0).await), vec![b(5), b(6)]);
    assert!(br
        .receive_as("c", "c-inbox", ReceiveOptions::auto(0), T0)
        .await
        .expect("receive")
        .is_empty());
}

#[tokio::test]
async fn broadcast_reaches_every_inbox_whatever_its_subscription() {
    let br = broker();
    client(&br, "a", &["a.only"]).await;
    client(&br, "b", &["b.#"]).await;
    client(&br, "c", &["c.*"]).await;
    let mut p = Publish::new("announce.all", body(1), "admin");
    p.broadcast = true;
    let sent = br.publish(p, T0).await.expect("broadcast");
    assert_eq!(sent.delivered_to, 3);
    for id in ["a", "b", "c"] {
        let got = drain(&br, id, T0).await;
        assert_eq!(bodies(&got), vec![b(1)], "{id}");
        assert_eq!(got[0].id, sent.id);
    }
    // Without the flag, the same topic reaches nobody.
    assert_eq!(publish(&br, "announce.all", 2, T0).await.delivered_to, 0);
}

#[tokio::test]
async fn publishing_with_no_subscriber_is_accepted_and_stores_nothing() {
    let br = broker();
    client(&br, "c", &["a"]).await;
    let sent = publish(&br, "b", 1, T0).await;
    assert_eq!((sent.delivered_to, sent.duplicate), (0, false));
    assert!(br
        .queue_depths()
        .iter()
        .all(|d| d.ready == 0 && d.leased == 0));
}

#[tokio::test]
async fn invalid_topics_are_refused() {
    let br = broker();
    client(&br, "c", &["#"]).await;
    for bad in ["", "a..b", ".a", "a.", "a.*", "a.#", "a b", "x*"] {
        let err = br.publish(Publish::new(bad, body(0), "p"), T0).await;
        assert!(
            matches!(err, Err(BrokerError::InvalidTopic { .. })),
            "{bad:?}: {err:?}"
        );
    }
    let long = "a".repeat(256);
    assert!(matches!(
        br.publish(Publish::new(long, body(0), "p"), T0).await,
        Err(BrokerError::InvalidTopic { .. })
    ));
    assert!(drain(&br, "c", T0).await.is_empty());
}

#[tokio::test]
async fn a_client_can_only_receive_from_its_own_queues() {
    let br = broker();
    client(&br, "a", &["t"]).await;
    client(&br, "b", &["t"]).await;
    publish(&br, "t", 1, T0).await;
    for (who, queue) in [
        ("a", "b-inbox"),
        ("a", "b-dead"),
        ("a", "nope"),
        ("b", "a-inbox"),
    ] {
        let r = br
            .receive_as(who, queue, ReceiveOptions::auto(10), T0)
            .await;
        // Refused before looking, so whether the queue exists is not told either.
        assert!(
            matches!(r, Err(BrokerError::Forbidden(ref m)) if m.contains(queue)),
            "{who} {queue}: {r:?}"
        );
    }
    // Nothing was taken from b by the refused attempts.
    assert_eq!(bodies(&drain(&br, "b", T0).await), vec![b(1)]);
    assert!(drain_dead(&br, "a", T0).await.is_empty());
}

// ----- 2. hot changes ------------------------------------------------------------------

#[tokio::test]
async fn a_client_created_later_receives_the_next_matching_message() {
    let br = broker();
    client(&br, "early", &["t.#"]).await;
    assert_eq!(publish(&br, "t.1", 1, T0).await.delivered_to, 1);
    client(&br, "late", &["t.*"]).await;
    assert_eq!(publish(&br, "t.2", 2, T0 + 1).await.delivered_to, 2);
    assert_eq!(bodies(&drain(&br, "late", T0 + 2).await), vec![b(2)]);
    assert_eq!(bodies(&drain(&br, "early", T0 + 2).await), vec![b(1), b(2)]);
    assert_eq!(br.client_count(), 2);
}

#[tokio::test]
async fn update_client_patterns_take_effect_for_the_next_publish() {
    let br = broker();
    client(&br, "c", &["old.#"]).await;
    assert_eq!(publish(&br, "old.x", 1, T0).await.delivered_to, 1);
    let view = br
        .update_client(
            "c",
            ClientUpdate {
                patterns: Some(pats(&["new.*"])),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(view.patterns, pats(&["new.*"]));
    assert_eq!(view.inbox_depth, 1, "messages already queued stay");
    assert_eq!(publish(&br, "old.x", 2, T0 + 1).await.delivered_to, 0);
    assert_eq!(publish(&br, "new.x", 3, T0 + 1).await.delivered_to, 1);
    assert_eq!(publish(&br, "new.x.y", 4, T0 + 1).await.delivered_to, 0);
    assert_eq!(bodies(&drain(&br, "c", T0 + 2).await), vec![b(1), b(3)]);

    // Other fields: name and roles change, patterns stay.
    let view = br
        .update_client(
            "c",
            ClientUpdate {
                client_name: Some("renamed".into()),
                roles: Some(pats(&["backend"])),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(view.client_name, "renamed");
    assert_eq!(view.roles, pats(&["backend"]));
    assert_eq!(view.patterns, pats(&["new.*"]));
    assert_eq!(br.get_client("c"), Some(view));
}

#[tokio::test]
async fn update_client_inbox_limits_apply_to_the_next_publish() {
    let br = broker();
    client(&br, "c", &["t"]).await;
    publish(&br, "t", 1, T0).await;
    publish(&br, "t", 2, T0).await;
    br.update_client(
        "c",
        ClientUpdate {
            inbox: Some(limits(Some(2), None, None)),
            ..Default::default()
        },
    )
    .await
    .expect("update");
    let r = br.publish(Publish::new("t", body(3), "p"), T0).await;
    assert!(matches!(r, Err(BrokerError::QueueFull { .. })), "{r:?}");
    br.update_client(
        "c",
        ClientUpdate {
            inbox: Some(limits(Some(2), Some(Overflow::DropOldest), None)),
            ..Default::default()
        },
    )
    .await
    .expect("update");
    publish(&br, "t", 4, T0).await;
    assert_eq!(bodies(&drain(&br, "c", T0).await), vec![b(2), b(4)]);
}

#[tokio::test]
async fn a_deleted_client_is_gone_everywhere() {
    let br = broker();
    let secret = client(&br, "gone", &["t.#"]).await;
    client(&br, "stay", &["t.#"]).await;
    assert_eq!(publish(&br, "t.1", 1, T0).await.delivered_to, 2);
    let before = br.principal("gone").expect("principal");
    br.delete_client("gone").await.expect("delete");
    assert!(before.is_revoked());

    assert!(br.get_client("gone").is_none());
    assert!(br.authenticate("gone", &secret).is_none());
    assert_eq!(br.client_count(), 1);
    assert!(br.list_clients().iter().all(|c| c.client_id != "gone"));
    for q in ["gone-inbox", "gone-dead"] {
        let r = br.receive(&before, q, ReceiveOptions::auto(10), T0).await;
        assert!(matches!(r, Err(BrokerError::Revoked(_))), "{q}: {r:?}");
        assert!(
            br.queue_depths().iter().all(|d| &*d.name != q),
            "{q} still listed"
        );
    }
    assert_eq!(publish(&br, "t.2", 2, T0).await.delivered_to, 1);
    let mut p = Publish::new("x", body(3), "p");
    p.broadcast = true;
    assert_eq!(br.publish(p, T0).await.expect("broadcast").delivered_to, 1);
    assert_eq!(
        bodies(&drain(&br, "stay", T0).await),
        vec![b(1), b(2), b(3)]
    );

    assert!(matches!(
        br.delete_client("gone").await,
        Err(BrokerError::UnknownClient(_))
    ));
    assert!(matches!(
        br.update_client("gone", ClientUpdate::default()).await,
        Err(BrokerError::UnknownClient(_))
    ));
    assert!(matches!(
        br.rotate_secret("gone").await,
        Err(BrokerError::UnknownClient(_))
    ));

    // The id can be used again, with an empty inbox and a new secret.
    let again = client(&br, "gone", &["u"]).await;
    assert_ne!(again, secret);
    assert!(br.authenticate("gone", &secret).is_none());
    assert!(br.authenticate("gone", &again).is_some());
    assert!(drain(&br, "gone", T0).await.is_empty());
    assert_eq!(publish(&br, "t.3", 4, T0).await.delivered_to, 1);
}

#[tokio::test]
async fn deleting_a_client_drops_its_leased_and_dead_messages() {
    let br = broker();
    client_with(&br, "c", &["t"], limits(None, None, Some(1))).await;
    for n in 0..3 {
        publish(&br, "t", n, T0).await;
    }
    let leased = lease(&br, "c", 2, 100, T0).await;
    br.settle_as(
        "c",
        &receipts(&leased[..1]),
        Settle::Nack { requeue: false },
        T0,
    )
    .await
    .expect("nack");
    assert_eq!(depth(&br, "c-dead"), (1, 0));
    let before = br.principal("c").expect("principal");
    br.delete_client("c").await.expect("delete");
    assert!(br.queue_depths().is_empty());
    // Its old receipts settle nothing: acks are refused, give-backs find nothing.
    let r = br
        .settle(&before, &receipts(&leased[1..]), Settle::Ack, T0)
        .await;
    assert!(matches!(r, Err(BrokerError::Revoked(_))), "{r:?}");
    let s = br
        .settle(
            &before,
            &receipts(&leased[1..]),
            Settle::Nack { requeue: true },
            T0,
        )
        .await
        .expect("give back");
    assert_eq!(s.done, 0);
    assert_eq!(s.unknown, receipts(&leased[1..]));
}

// ----- 3. manual ack -------------------------------------------------------------------

#[tokio::test]
async fn leased_messages_stay_until_acked() {
    let br = broker();
    client(&br, "c", &["t"]).await;
    for n in 0..3 {
        publish(&br, "t", n, T0).await;
    }
    let got = lease(&br, "c", 2, 1_000, T0).await;
    assert_eq!(bodies(&got), vec![b(0), b(1)]);
    assert!(got
        .iter()
        .all(|d| d.delivery_count == 1 && !d.redelivered()));
    let rs = receipts(&got);
    assert_ne!(rs[0], rs[1]);
    assert_eq!(depth(&br, "c-inbox"), (1, 2));
    assert_eq!(inbox_depth(&br, "c"), 3);

    // Leased messages are not handed out again while the lease runs.
    let next = lease(&br, "c", 10, 1_000, T0 + 10).await;
    assert_eq!(bodies(&next), vec![b(2)]);
    assert!(lease(&br, "c", 10, 1_000, T0 + 20).await.is_empty());

    let s = br
        .settle_as("c", &rs, Settle::Ack, T0 + 30)
        .await
        .expect("ack");
    assert_eq!(
        s,
        trunkline_broker::Settled {
            done: 2,
            unknown: vec![]
        }
    );
    assert_eq!(depth(&br, "c-inbox"), (0, 1));
    // Acking again is reported, not an error.
    let s = br
        .settle_as("c", &rs[..1], Settle::Ack, T0 + 31)
        .await
        .expect("ack again");
    assert_eq!((s.done, s.unknown.clone()), (0, rs[..1].to_vec()));

    // Long after the lease ran out, the acked ones never come back; the unacked one does.
    let later = lease(&br, "c", 10, 1_000, T0 + 10_000).await;
    assert_eq!(bodies(&later), vec![b(2)]);
    assert_eq!(later[0].delivery_count, 2);
    br.settle_as("c", &receipts(&later), Settle::Ack, T0 + 10_000)
        .await
        .expect("ack");
    assert!(lease(&br, "c", 10, 1_000, T0 + 100_000).await.is_empty());
    assert_eq!(inbox_depth(&br, "c"), 0);
    assert_eq!(br.counters().acked.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn nack_with_requeue_redelivers_in_place() {
    let br = broker();
    client(&br, "c", &["t"]).await;
    for n in 0..3 {
        publish(&br, "t", n, T0).await;
    }
    let first = lease(&br, "c", 1, 60_000, T0).await;
    assert_eq!(bodies(&first), vec![b(0)]);
    let s = br
        .settle_as(
            "c",
            &receipts(&first),
            Settle::Nack { requeue: true },
            T0 + 1,
        )
        .await
        .expect("nack");
    assert_eq!(s.done, 1);
    assert_eq!(depth(&br, "c-inbox"), (3, 0));
    // It goes back to its place: before the messages published after it.
    let again = lease(&br, "c", 10, 60_000, T0 + 2).await;
    assert_eq!(bodies(&again), vec![b(0), b(1), b(2)]);
    assert_eq!(again[0].delivery_count, 2);
    assert!(again[0].redelivered());
    assert_eq!(again[0].id, first[0].id);
    assert!(!again[1].redelivered() && !again[2].redelivered());
    assert_ne!(
        again[0].receipt, first[0].receipt,
        "a new delivery gets a new receipt"
    );
    // The old receipt settles nothing now; the new one does.
    let s = br
        .settle_as("c", &receipts(&first), Settle::Ack, T0 + 3)
        .await
        .expect("stale ack");
    assert_eq!((s.done, s.unknown), (0, receipts(&first)));
    let s = br
        .settle_as("c", &receipts(&again), Settle::Ack, T0 + 3)
        .await
        .expect("ack");
    assert_eq!(s.done, 3);
    assert_eq!(inbox_depth(&br, "c"), 0);
    assert_eq!(br.counters().nacked.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn an_expired_lease_brings_the_message_back() {
    let br = broker();
    client(&br, "c", &["t"]).await;
    publish(&br, "t", 7, T0).await;
    let first = lease(&br, "c", 10, 500, T0).await;
    assert_eq!(first.len(), 1);
    assert!(
        lease(&br, "c", 10, 500, T0 + 499).await.is_empty(),
        "lease still running"
    );
    let second = lease(&br, "c", 10, 500, T0 + 500).await;
    assert_eq!(bodies(&second), vec![b(7)]);
    assert_eq!(second[0].delivery_count, 2);
    assert!(second[0].redelivered());
    // Receipt of delivery 1 is stale; delivery 2's is good.
    let mut both = receipts(&first);
    both.extend(receipts(&second));
    let s = br
        .settle_as("c", &both, Settle::Ack, T0 + 600)
        .await
        .expect("settle");
    assert_eq!(s.done, 1);
    assert_eq!(s.unknown, receipts(&first));
    assert!(lease(&br, "c", 10, 500, T0 + 10_000).await.is_empty());
}

#[tokio::test]
async fn auto_receive_after_lease_expiry_counts_the_delivery() {
    let br = broker();
    client(&br, "c", &["t"]).await;
    publish(&br, "t", 1, T0).await;
    let first = lease(&br, "c", 1, 100, T0).await;
    let got = drain(&br, "c", T0 + 100).await;
    assert_eq!(bodies(&got), vec![b(1)]);
    assert_eq!(got[0].delivery_count, 2);
    assert!(got[0].redelivered());
    // It was auto-acked: the old receipt is unknown and nothing is left.
    let s = br
        .settle_as("c", &receipts(&first), Settle::Ack, T0 + 101)
        .await
        .expect("settle");
    assert_eq!(s.done, 0);
    assert_eq!(inbox_depth(&br, "c"), 0);
}

#[tokio::test]
async fn sweep_ends_expired_leases() {
    let br = broker();
    client(&br, "c", &["t"]).await;
    publish(&br, "t", 1, T0).await;
    lease(&br, "c", 1, 100, T0).await;
    br.sweep(T0 + 99).await.expect("sweep");
    assert_eq!(depth(&br, "c-inbox"), (0, 1));
    br.sweep(T0 + 100).await.expect("sweep");
    assert_eq!(depth(&br, "c-inbox"), (1, 0));
    let got = drain(&br, "c", T0 + 101).await;
    assert_eq!(got[0].delivery_count, 2);
}

#[tokio::test]
async fn receipts_of_other_clients_or_garbage_are_unknown() {
    let br = broker();
    client(&br, "a", &["t"]).await;
    client(&br, "b", &["t"]).await;
    publish(&br, "t", 1, T0).await;
    let a_got = lease(&br, "a", 1, 1_000, T0).await;
    let a_rs = receipts(&a_got);
    let mut tries = a_rs.clone();
    tries.extend([
        "".to_string(),
        "garbage".into(),
        "a-inbox/x/1".into(),
        "a-inbox/1".into(),
    ]);
    // b may not settle a's receipts, whether ack or nack.
    for how in [
        Settle::Ack,
        Settle::Nack { requeue: true },
        Settle::Nack { requeue: false },
    ] {
        let s = br
            .settle_as("b", &tries, how, T0 + 1)
            .await
            .expect("settle");
        assert_eq!(s.done, 0, "{how:?}");
        assert_eq!(s.unknown, tries, "{how:?}");
    }
    // a's lease is untouched and a can still ack.
    assert_eq!(depth(&br, "a-inbox"), (0, 1));
    assert_eq!(depth(&br, "b-dead"), (0, 0));
    let s = br
        .settle_as("a", &a_rs, Settle::Ack, T0 + 2)
        .await
        .expect("ack");
    assert_eq!(
        s,
        trunkline_broker::Settled {
            done: 1,
            unknown: vec![]
        }
    );
    // Unknown receipts of a's own queue with a made-up sequence number.
    let fake = format!("a-inbox/{}/1", u64::MAX);
    let s = br
        .settle_as("a", std::slice::from_ref(&fake), Settle::Ack, T0 + 3)
        .await
        .expect("settle");
    assert_eq!(s.unknown, vec![fake]);
    assert_eq!(bodies(&drain(&br, "b", T0).await), vec![b(1)]);
}

#[tokio::test]
async fn the_same_receipt_twice_in_one_call_settles_once() {
    let br = broker();
    client(&br, "c", &["t"]).await;
    publish(&br, "t", 1, T0).await;
    let r = receipts(&lease(&br, "c", 1, 1_000, T0).await);
    let twice = vec![r[0].clone(), r[0].clone()];
    let s = br
        .settle_as("c", &twice, Settle::Nack { requeue: true }, T0)
        .await
        .expect("nack");
    assert_eq!((s.done, s.unknown.len()), (1, 1));
    assert_eq!(depth(&br, "c-inbox"), (1, 0));
}

// ----- 4. dead letters -----------------------------------------------------------------

#[tokio::test]
async fn lease_expiries_past_max_deliveries_dead_letter() {
    let br = broker();
    client_with(&br, "c", &["t"], limits(None, None, Some(2))).await;
    let sent = publish(&br, "t", 1, T0).await;
    publish(&br, "t", 2, T0).await;
    let d1 = lease(&br, "c", 1, 100, T0).await;
    assert_eq!((bodies(&d1), d1[0].delivery_count), (vec![b(1)], 1));
    let d2 = lease(&br, "c", 1, 100, T0 + 100).await;
    assert_eq!((bodies(&d2), d2[0].delivery_count), (vec![b(1)], 2));
    // Second lease runs out: it has had its 2 deliveries, so it is dead-lettered.
    let next = lease(&br, "c", 10, 100, T0 + 200).await;
    assert_eq!(
        bodies(&next),
        vec![b(2)],
        "the exhausted message is not handed out again"
    );
    assert_eq!(depth(&br, "c-dead"), (1, 0));
    assert_eq!(br.counters().dead_lettered.load(Ordering::Relaxed), 1);
    let dl = drain_dead(&br, "c", T0 + 201).await;
    assert_eq!(bodies(&dl), vec![b(1)]);
    assert_eq!(dl[0].id, sent.id);
    assert_eq!(
        dl[0].delivery_count, 1,
        "delivery count restarts in the dead-letter queue"
    );
    // Stale receipts of the inbox deliveries are unknown.
    let s = br
        .settle_as("c", &receipts(&d2), Settle::Ack, T0 + 202)
        .await
        .expect("settle");
    assert_eq!(s.done, 0);
    assert!(drain_dead(&br, "c", T0 + 203).await.is_empty());
}

#[tokio::test]
async fn nack_without_requeue_dead_letters_at_once() {
    let br = broker();
    client_with(&br, "c", &["t"], limits(None, None, Some(5))).await;
    publish(&br, "t", 1, T0).await;
    publish(&br, "t", 2, T0).await;
    let got = lease(&br, "c", 2, 10_000, T0).await;
    let s = br
        .settle_as(
            "c",
            &receipts(&got[..1]),
            Settle::Nack { requeue: false },
            T0 + 1,
        )
        .await
        .expect("nack");
    assert_eq!(s.done, 1);
    assert_eq!(depth(&br, "c-inbox"), (0, 1));
    assert_eq!(depth(&br, "c-dead"), (1, 0));
    // The dead-letter queue can be consumed with leases too.
    let dl = br
        .receive_as("c", "c-dead", ReceiveOptions::leased(10, 1_000), T0 + 2)
        .await
        .expect("receive dead");
    assert_eq!(bodies(&dl), vec![b(1)]);
    let dr = receipts(&dl);
    assert!(dr[0].starts_with("c-dead/"), "{}", dr[0]);
    let s = br
        .settle_as("c", &dr, Settle::Ack, T0 + 3)
        .await
        .expect("ack dead");
    assert_eq!(s.done, 1);
    assert_eq!(depth(&br, "c-dead"), (0, 0));
}

#[tokio::test]
async fn nack_with_requeue_on_the_last_allowed_delivery_dead_letters() {
    let br = broker();
    client_with(&br, "c", &["t"], limits(None, None, Some(2))).await;
    publish(&br, "t", 1, T0).await;
    let d1 = lease(&br, "c", 1, 1_000, T0).await;
    br.settle_as("c", &receipts(&d1), Settle::Nack { requeue: true }, T0)
        .await
        .expect("nack");
    assert_eq!(depth(&br, "c-inbox"), (1, 0));
    let d2 = lease(&br, "c", 1, 1_000, T0).await;
    assert_eq!(d2[0].delivery_count, 2);
    br.settle_as("c", &receipts(&d2), Settle::Nack { requeue: true }, T0)
        .await
        .expect("nack");
    assert_eq!(depth(&br, "c-inbox"), (0, 0));
    assert_eq!(bodies(&drain_dead(&br, "c", T0).await), vec![b(1)]);
}

#[tokio::test]
async fn sweep_dead_letters_exhausted_leases() {
    let br = broker();
    client_with(&br, "c", &["t"], limits(None, None, Some(1))).await;
    publish(&br, "t", 1, T0).await;
    lease(&br, "c", 1, 50, T0).await;
    br.sweep(T0 + 50).await.expect("sweep");
    assert_eq!(depth(&br, "c-inbox"), (0, 0));
    assert_eq!(depth(&br, "c-dead"), (1, 0));
    assert_eq!(inbox_depth(&br, "c"), 0);
}

#[tokio::test]
async fn a_full_dead_letter_queue_drops_its_oldest() {
    let br = broker();
    client_with(&br, "c", &["t"], limits(Some(2), None, Some(1))).await;
    for round in 0..3 {
        publish(&br, "t", round, T0).await;
        let got = lease(&br, "c", 1, 1_000, T0).await;
        br.settle_as("c", &receipts(&got), Settle::Nack { requeue: false }, T0)
            .await
            .expect("nack");
    }
    // The drop is counted, though it happened while settling, not publishing.
    assert_eq!(br.counters().dropped_overflow.load(Ordering::Relaxed), 1);
    assert_eq!(bodies(&drain_dead(&br, "c", T0).await), vec![b(1), b(2)]);
}

#[tokio::test]
async fn updated_limits_apply_to_the_dead_letter_queue_too() {
    let br = broker();
    client_with(&br, "c", &["t"], limits(Some(10), None, Some(1))).await;
    for n in 0..3 {
        publish(&br, "t", n, T0).await;
    }
    let got = lease(&br, "c", 3, 100, T0).await;
    assert_eq!(got.len(), 3);
    br.update_client(
        "c",
        ClientUpdate {
            inbox: Some(limits(Some(2), None, Some(1))),
            ..Default::default()
        },
    )
    .await
    .expect("update");
    // All three leases run out at once: the dead-letter queue, as long as the inbox now,
    // keeps the last two (as it would after a restart, which builds it from the settings).
    br.sweep(T0 + 100).await.expect("sweep");
    assert_eq!(
        bodies(&drain_dead(&br, "c", T0 + 100).await),
        vec![b(1), b(2)]
    );
}

// ----- 5. TTL --------------------------------------------------------------------------

fn with_ttl(topic: &str, n: u64, ttl_ms: u64) -> Publish {
    let mut p = Publish::new(topic, body(n), "p");
    p.ttl_ms = Some(ttl_ms);
    p
}

#[tokio::test]
async fn expired_messages_are_not_delivered() {
    let br = broker();
    client(&br, "c", &["t"]).await;
    br.publish(with_ttl("t", 1, 100), T0)
        .await
        .expect("publish");
    br.publish(with_ttl("t", 2, 1_000), T0)
        .await
        .expect("publish");
    publish(&br, "t", 3, T0).await;
    // Before its deadline it is delivered with its expiry.
    let early = br
        .receive_as("c", "c-inbox", ReceiveOptions::leased(1, 10), T0 + 99)
        .await
        .expect("r");
    assert_eq!(bodies(&early), vec![b(1)]);
    assert_eq!(early[0].data.expires_at_ms, Some(T0 + 100));
    // Its lease ends after its TTL: it is dropped rather than redelivered.
    let got = drain(&br, "c", T0 + 200).await;
    assert_eq!(bodies(&got), vec![b(2), b(3)]);
    assert_eq!(inbox_depth(&br, "c"), 0);
    assert_eq!(br.counters().expired.load(Ordering::Relaxed), 1);

    br.publish(with_ttl("t", 4, 100), T0 + 300)
        .await
        .expect("publish");
    assert!(
        drain(&br, "c", T0 + 400).await.is_empty(),
        "expired exactly at its deadline"
    );
}

#[tokio::test]
async fn sweep_removes_expired_messages() {
    let br = broker();
    client(&br, "a", &["t"]).await;
    client(&br, "b", &["t"]).await;
    br.publish(with_ttl("t", 1, 100), T0)
        .await
        .expect("publish");
    br.publish(with_ttl("t", 2, 500), T0)
        .await
        .expect("publish");
    publish(&br, "t", 3, T0).await;
    assert_eq!((inbox_depth(&br, "a"), inbox_depth(&br, "b")), (3, 3));
    br.sweep(T0 + 99).await.expect("sweep");
    assert_eq!(inbox_depth(&br, "a"), 3);
    br.sweep(T0 + 100).await.expect("sweep");
    assert_eq!((inbox_depth(&br, "a"), inbox_depth(&br, "b")), (2, 2));
    assert_eq!(depth(&br, "a-inbox"), (2, 0));
    br.sweep(T0 + 10_000).await.expect("sweep");
    assert_eq!((inbox_depth(&br, "a"), inbox_depth(&br, "b")), (1, 1));
    assert_eq!(br.counters().expired.load(Ordering::Relaxed), 4);
    assert_eq!(bodies(&drain(&br, "a", T0 + 10_000).await), vec![b(3)]);
    assert_eq!(bodies(&drain(&br, "b", T0 + 10_000).await), vec![b(3)]);
}

// ----- 6. overflow ---------------------------------------------------------------------

#[tokio::test]
async fn reject_publish_refuses_and_enqueues_nowhere() {
    let br = broker();
    client_with(
        &br,
        "small",
        &["t"],
        limits(Some(2), Some(Overflow::RejectPublish), None),
    )
    .await;
    client(&br, "big", &["t"]).await;
    publish(&br, "t", 1, T0).await;
    publish(&br, "t", 2, T0).await;
    let r = br.publish(Publish::new("t", body(3), "p"), T0).await;
    match r {
        Err(BrokerError::QueueFull { queues }) => {
            assert_eq!(queues, vec!["small-inbox".to_string()])
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    assert_eq!(br.counters().rejected_full.load(Ordering::Relaxed), 1);
    assert_eq!((inbox_depth(&br, "small"), inbox_depth(&br, "big")), (2, 2));
    // Leased messages count toward the length.
    let leased = lease(&br, "small", 1, 1_000, T0).await;
    assert!(br
        .publish(Publish::new("t", body(4), "p"), T0)
        .await
        .is_err());
    br.settle_as("small", &receipts(&leased), Settle::Ack, T0)
        .await
        .expect("ack");
    // Room again.
    assert_eq!(publish(&br, "t", 5, T0).await.delivered_to, 2);
    assert_eq!(bodies(&drain(&br, "small", T0).await), vec![b(2), b(5)]);
    assert_eq!(bodies(&drain(&br, "big", T0).await), vec![b(1), b(2), b(5)]);
}

#[tokio::test]
async fn drop_oldest_makes_room() {
    let br = broker();
    client_with(
        &br,
        "c",
        &["t"],
        limits(Some(3), Some(Overflow::DropOldest), None),
    )
    .await;
    for n in 1..=5 {
        assert_eq!(publish(&br, "t", n, T0).await.delivered_to, 1);
    }
    assert_eq!(inbox_depth(&br, "c"), 3);
    assert_eq!(br.counters().dropped_overflow.load(Ordering::Relaxed), 2);
    assert_eq!(bodies(&drain(&br, "c", T0).await), vec![b(3), b(4), b(5)]);
}

#[tokio::test]
async fn drop_oldest_never_drops_a_leased_message() {
    let br = broker();
    client_with(
        &br,
        "c",
        &["t"],
        limits(Some(2), Some(Overflow::DropOldest), None),
    )
    .await;
    publish(&br, "t", 1, T0).await;
    publish(&br, "t", 2, T0).await;
    let leased = lease(&br, "c", 1, 1_000, T0).await;
    assert_eq!(bodies(&leased), vec![b(1)]);
    publish(&br, "t", 3, T0).await; // drops 2, the oldest ready one
                                    // Everything is leased or just arrived: the ready one (3) goes for 4.
    publish(&br, "t", 4, T0).await;
    let s = br
        .settle_as("c", &receipts(&leased), Settle::Ack, T0)
        .await
        .expect("ack");
    assert_eq!(s.done, 1);
    assert_eq!(bodies(&drain(&br, "c", T0).await), vec![b(4)]);
    // With every message leased, nothing can be dropped: the publish is refused.
    publish(&br, "t", 5, T0).await;
    publish(&br, "t", 6, T0).await;
    lease(&br, "c", 2, 1_000, T0).await;
    let r = br.publish(Publish::new("t", body(7), "p"), T0).await;
    assert!(matches!(r, Err(BrokerError::QueueFull { .. })), "{r:?}");
}

#[tokio::test]
async fn a_rejected_publish_drops_nothing_from_drop_oldest_inboxes() {
    // One full reject-publish inbox and several full drop-oldest ones on the same topic:
    // the refused publish must leave every inbox as it was, whatever order they are visited.
    let br = broker();
    client_with(
        &br,
        "strict",
        &["t"],
        limits(Some(1), Some(Overflow::RejectPublish), None),
    )
    .await;
    let lossy: Vec<String> = (0..8).map(|i| format!("lossy{i}")).collect();
    for id in &lossy {
        client_with(
            &br,
            id,
            &["t"],
            limits(Some(1), Some(Overflow::DropOldest), None),
        )
        .await;
    }
    assert_eq!(publish(&br, "t", 1, T0).await.delivered_to, 9);
    let r = br.publish(Publish::new("t", body(2), "p"), T0).await;
    assert!(
        matches!(r, Err(BrokerError::QueueFull { ref queues }) if queues == &["strict-inbox"]),
        "{r:?}"
    );
    assert_eq!(br.counters().dropped_overflow.load(Ordering::Relaxed), 0);
    for id in &lossy {
        assert_eq!(
            bodies(&drain(&br, id, T0).await),
            vec![b(1)],
            "{id} lost its message"
        );
    }
    assert_eq!(bodies(&drain(&br, "strict", T0).await), vec![b(1)]);
}

// ----- 7. dedup ------------------------------------------------------------------------

#[tokio::test]
async fn a_repeated_message_id_is_published_once() {
    let br = broker();
    client(&br, "c", &["dedup.#"]).await;
    let first = publish_id(&br, "s", "m-1", 1, T0).await;
    assert!(!first.duplicate);
    assert_eq!(first.delivered_to, 1);
    let second = publish_id(&br, "s", "m-1", 2, T0 + 10).await;
    assert_eq!(
        second,
        Published {
            id: first.id,
            delivered_to: 1,
            duplicate: true
        }
    );
    assert_eq!(br.counters().duplicates.load(Ordering::Relaxed), 1);
    let got = drain(&br, "c", T0 + 20).await;
    assert_eq!(bodies(&got), vec![b(1)], "only the first copy is enqueued");
    assert_eq!(got[0].id, first.id);
    // Still recognised after the copy was consumed.
    assert!(publish_id(&br, "s", "m-1", 3, T0 + 30).await.duplicate);
    assert!(drain(&br, "c", T0 + 40).await.is_empty());
    assert_eq!(br.dedup_len(), 1);
}

#[tokio::test]
async fn dedup_keys_are_per_sender_and_message_id() {
    let br = broker();
    client(&br, "c", &["dedup.t"]).await;
    let a = publish_id(&br, "alice", "m", 1, T0).await;
    let bob = publish_id(&br, "bob", "m", 2, T0).await;
    let a2 = publish_id(&br, "alice", "m2", 3, T0).await;
    assert!(!a.duplicate && !bob.duplicate && !a2.duplicate);
    assert!(a.id != bob.id && bob.id != a2.id);
    // A sender and id that would collide if the key were a plain concatenation.
    let odd = publish_id(&br, "alic", "em", 4, T0).await;
    assert!(!odd.duplicate);
    assert!(publish_id(&br, "bob", "m", 5, T0).await.duplicate);
    // Publishes without a message_id are never deduplicated.
    publish(&br, "dedup.t", 6, T0).await;
    publish(&br, "dedup.t", 6, T0).await;
    assert_eq!(
        bodies(&drain(&br, "c", T0).await),
        vec![b(1), b(2), b(3), b(4), b(6), b(6)]
    );
}

#[tokio::test]
async fn dedup_forgets_after_its_window() {
    let br = broker_with(BrokerConfig {
        dedup_window_ms: 1_000,
        ..BrokerConfig::default()
    });
    client(&br, "c", &["dedup.t"]).await;
    let first = publish_id(&br, "s", "m", 1, T0).await;
    assert!(publish_id(&br, "s", "m", 2, T0 + 999).await.duplicate);
    let again = publish_id(&br, "s", "m", 3, T0 + 1_000).await;
    assert!(
        !again.duplicate,
        "accepted again once the window has passed"
    );
    assert!(again.id > first.id);
    // The new publish opens a new window.
    let dup = publish_id(&br, "s", "m", 4, T0 + 1_999).await;
    assert_eq!(dup.id, again.id);
    assert!(dup.duplicate);
    assert_eq!(bodies(&drain(&br, "c", T0 + 2_000).await), vec![b(1), b(3)]);

    // sweep forgets expired records, but not live ones.
    publish_id(&br, "s", "other", 5, T0 + 1_500).await;
    assert_eq!(br.dedup_len(), 2);
    br.sweep(T0 + 2_000).await.expect("sweep");
    assert_eq!(br.dedup_len(), 1);
    assert!(publish_id(&br, "s", "other", 6, T0 + 2_100).await.duplicate);
    br.sweep(T0 + 2_500).await.expect("sweep");
    assert_eq!(br.dedup_len(), 0);
}

#[tokio::test]
async fn a_refused_publish_does_not_burn_its_message_id() {
    let br = broker();
    client_with(&br, "c", &["dedup.t"], limits(Some(1), None, None)).await;
    publish(&br, "dedup.t", 0, T0).await;
    let mut p = Publish::new("dedup.t", body(1), "s");
    p.message_id = Some("m".into());
    let r = br.publish(p, T0).await;
    assert!(matches!(r, Err(BrokerError::QueueFull { .. })), "{r:?}");
    assert_eq!(bodies(&drain(&br, "c", T0).await), vec![b(0)]);
    let retry = publish_id(&br, "s", "m", 1, T0 + 1).await;
    assert!(
        !retry.duplicate,
        "the retry of a refused publish goes through"
    );
    assert_eq!(bodies(&drain(&br, "c", T0 + 1).await), vec![b(1)]);
}

#[tokio::test]
async fn a_message_id_matching_nobody_is_still_remembered() {
    let br = broker();
    let first = publish_id(&br, "s", "m", 1, T0).await;
    assert_eq!(first.delivered_to, 0);
    client(&br, "c", &["dedup.t"]).await;
    let second = publish_id(&br, "s", "m", 2, T0).await;
    assert_eq!(
        second,
        Published {
            id: first.id,
            delivered_to: 0,
            duplicate: true
        }
    );
    assert!(drain(&br, "c", T0).await.is_empty());
}

// ----- 8. durability and recovery ------------------------------------------------------

fn open_redb(path: &Path, now: u64) -> Broker {
    open_redb_with(path, BrokerConfig::default(), now)
}

fn open_redb_with(path: &Path, config: BrokerConfig, now: u64) -> Broker {
    let store = RedbStore::open(path).expect("open redb store");
    Broker::open(Arc::new(store), config, now).expect("open broker")
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trunkline.redb");
    let br = open_redb(&path, T0);
    let secret_a = client(&br, "a", &["t.#"]).await;
    let secret_b = client_with(&br, "b", &["t.x"], limits(Some(50), None, Some(3))).await;
    let mut published = Vec::new();
    for n in 0..6 {
        let mut p = Publish::new("t.x", body(n), "pub");
        p.message_id = Some(format!("m{n}"));
        published.push(br.publish(p, T0 + n).await.expect("publish"));
    }
    let max_id_before = published.iter().map(|p| p.id).max().expect("ids");
    // a: 0,1 acked; 2,3 leased and unsettled; 4,5 never received.
    let got = lease(&br, "a", 4, 60_000, T0 + 10).await;
    assert_eq!(bodies(&got), vec![b(0), b(1), b(2), b(3)]);
    br.settle_as("a", &receipts(&got[..2]), Settle::Ack, T0 + 11)
        .await
        .expect("ack");
    // b: 0,1 auto-received; 2 nacked to the dead-letter queue; the rest stays.
    assert_eq!(
        bodies(
            &br.receive_as("b", "b-inbox", ReceiveOptions::auto(2), T0 + 12)
                .await
                .expect("r")
        ),
        vec![b(0), b(1)]
    );
    let bl = lease(&br, "b", 1, 60_000, T0 + 13).await;
    br.settle_as(
        "b",
        &receipts(&bl),
        Settle::Nack { requeue: false },
        T0 + 13,
    )
    .await
    .expect("nack");
    // A deleted client stays deleted.
    client(&br, "gone", &["t.#"]).await;
    br.delete_client("gone").await.expect("delete");
    let stale_receipts = receipts(&got[2..]);
    br.shutdown().unwrap_or_else(|_| panic!("the only handle"));

    let br = open_redb(&path, T0 + 1_000);
    // Clients and their secrets.
    assert_eq!(br.client_count(), 2);
    assert!(br.authenticate("a", &secret_a).is_some());
    assert!(br.authenticate("b", &secret_b).is_some());
    assert!(br.authenticate("a", &secret_b).is_none());
    assert!(br.get_client("gone").is_none());
    let b_view = br.get_client("b").expect("b");
    assert_eq!(b_view.inbox, limits(Some(50), None, Some(3)));
    assert_eq!(b_view.patterns, pats(&["t.x"]));
    assert_eq!(inbox_depth(&br, "a"), 4);
    assert_eq!(inbox_depth(&br, "b"), 3);
    assert_eq!(depth(&br, "b-dead"), (1, 0));
    // Routing still works.
    assert_eq!(publish(&br, "t.y", 100, T0 + 1_000).await.delivered_to, 1);

    // a: the leased ones are back with their count kept, then the never-received ones.
    let after = lease(&br, "a", 10, 60_000, T0 + 1_001).await;
    assert_eq!(bodies(&after), vec![b(2), b(3), b(4), b(5), b(100)]);
    let counts: Vec<u32> = after.iter().map(|d| d.delivery_count).collect();
    assert_eq!(counts, vec![2, 2, 1, 1, 1]);
    assert!(after[0].redelivered() && after[1].redelivered() && !after[2].redelivered());
    for (d, p) in after.iter().zip(&published[2..]) {
        assert_eq!(d.id, p.id, "ids are kept across the restart");
    }
    // Receipts from before the restart are stale now.
    let s = br
        .settle_as("a", &stale_receipts, Settle::Ack, T0 + 1_002)
        .await
        .expect("settle");
    assert_eq!(s.done, 0);
    let s = br
        .settle_as("a", &receipts(&after), Settle::Ack, T0 + 1_002)
        .await
        .expect("ack");
    assert_eq!(s.done, 5);
    assert_eq!(bodies(&drain_dead(&br, "b", T0 + 1_003).await), vec![b(2)]);

    // Dedup still knows the message_ids published before the restart.
    for (n, p) in published.iter().enumerate() {
        let mut again = Publish::new("t.x", body(n as u64), "pub");
        again.message_id = Some(format!("m{n}"));
        let r = br.publish(again, T0 + 2_000).await.expect("publish");
        assert_eq!(
            r,
            Published {
                id: p.id,
                delivered_to: p.delivered_to,
                duplicate: true
            }
        );
    }
    // New ids are greater than every id used before.
    let fresh = publish(&br, "t.x", 200, T0 + 2_000).await;
    assert!(fresh.id > max_id_before, "{} <= {max_id_before}", fresh.id);
    br.shutdown().unwrap_or_else(|_| panic!("the only handle"));

    // Everything acked or received stays gone across a further restart, and messages a
    // acked but b did not are still there for b.
    let br = open_redb(&path, T0 + 3_000);
    assert_eq!(bodies(&drain(&br, "a", T0 + 3_000).await), vec![b(200)]);
    assert_eq!(
        bodies(&drain(&br, "b", T0 + 3_000).await),
        vec![b(3), b(4), b(5), b(200)]
    );
    assert!(drain_dead(&br, "b", T0 + 3_000).await.is_empty());
    assert!(br
        .queue_depths()
        .iter()
        .all(|d| d.ready == 0 && d.leased == 0));
    br.shutdown().unwrap_or_else(|_| panic!("the only handle"));
}

#[tokio::test]
async fn secret_rotation_and_updates_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trunkline.redb");
    let br = open_redb(&path, T0);
    let old = client(&br, "c", &["old"]).await;
    let (_, new) = br.rotate_secret("c").await.expect("rotate");
    br.update_client(
        "c",
        ClientUpdate {
            patterns: Some(pats(&["new.#"])),
            ..Default::default()
        },
    )
    .await
    .expect("update");
    let (_, cid) = br.authenticate("c", &new).expect("new secret works");
    br.shutdown().unwrap_or_else(|_| panic!("the only handle"));

    let br = open_redb(&path, T0 + 1);
    assert!(br.authenticate("c", &old).is_none());
    let (_, cid_after) = br.authenticate("c", &new).expect("new secret still works");
    assert_eq!(cid, cid_after);
    assert!(br.check_credential("c", &cid).is_some());
    assert_eq!(publish(&br, "old", 1, T0 + 1).await.delivered_to, 0);
    assert_eq!(publish(&br, "new.x", 2, T0 + 1).await.delivered_to, 1);
    br.shutdown().unwrap_or_else(|_| panic!("the only handle"));
}

#[tokio::test]
async fn ttl_and_dedup_windows_are_judged_at_the_time_of_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trunkline.redb");
    let config = BrokerConfig {
        dedup_window_ms: 1_000,
        ..BrokerConfig::default()
    };
    let br = open_redb_with(&path, config.clone(), T0);
    client(&br, "c", &["dedup.t"]).await;
    let mut p = with_ttl("dedup.t", 1, 500);
    p.message_id = Some("short".into());
    br.publish(p, T0).await.expect("publish");
    publish_id(&br, "s", "long", 2, T0 + 600).await;
    br.shutdown().unwrap_or_else(|_| panic!("the only handle"));

    let br = open_redb_with(&path, config, T0 + 1_000);
    assert_eq!(
        br.dedup_len(),
        1,
        "the expired dedup record is forgotten at start"
    );
    let mut p = with_ttl("dedup.t", 3, 500);
    p.message_id = Some("short".into());
    assert!(!br.publish(p, T0 + 1_000).await.expect("publish").duplicate);
    assert!(publish_id(&br, "s", "long", 4, T0 + 1_000).await.duplicate);
    assert_eq!(bodies(&drain(&br, "c", T0 + 1_000).await), vec![b(2), b(3)]);
    br.shutdown().unwrap_or_else(|_| panic!("the only handle"));
}

#[tokio::test]
async fn a_lease_that_used_the_last_delivery_is_dead_lettered_by_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trunkline.redb");
    let br = open_redb(&path, T0);
    client_with(&br, "once", &["t"], limits(None, None, Some(1))).await;
    client_with(&br, "twice", &["t"], limits(None, None, Some(2))).await;
    publish(&br, "t", 1, T0).await;
    assert_eq!(lease(&br, "once", 1, 60_000, T0).await.len(), 1);
    assert_eq!(lease(&br, "twice", 1, 60_000, T0).await.len(), 1);
    br.shutdown().unwrap_or_else(|_| panic!("the only handle"));

    // The node stopped with both leases open: each ended with it.
    let br = open_redb(&path, T0 + 1_000);
    assert!(
        drain(&br, "once", T0 + 1_000).await.is_empty(),
        "no second delivery for max_deliveries 1"
    );
    let dl = drain_dead(&br, "once", T0 + 1_000).await;
    assert_eq!(bodies(&dl), vec![b(1)]);
    let again = lease(&br, "twice", 1, 100, T0 + 1_000).await;
    assert_eq!((bodies(&again), again[0].delivery_count), (vec![b(1)], 2));
    assert!(drain(&br, "twice", T0 + 1_100).await.is_empty());
    assert_eq!(
        bodies(&drain_dead(&br, "twice", T0 + 1_100).await),
        vec![b(1)]
    );
    br.shutdown().unwrap_or_else(|_| panic!("the only handle"));

    // And the move itself was durable.
    let br = open_redb(&path, T0 + 2_000);
    assert!(br
        .queue_depths()
        .iter()
        .all(|d| d.ready == 0 && d.leased == 0));
    br.shutdown().unwrap_or_else(|_| panic!("the only handle"));
}

#[tokio::test]
async fn shutdown_refuses_while_other_handles_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trunkline.redb");
    let br = open_redb(&path, T0);
    let other = br.clone();
    let br = match br.shutdown() {
        Ok(()) => panic!("shut down while a clone was alive"),
        Err(back) => back,
    };
    client(&br, "c", &["t"]).await;
    drop(other);
    br.shutdown().unwrap_or_else(|_| panic!("the only handle"));
    // Once shut down, the file can be opened again at once.
    let br = open_redb(&path, T0);
    assert!(br.get_client("c").is_some());
    br.shutdown().unwrap_or_else(|_| panic!("the only handle"));
}

// ----- waiting and concurrency ---------------------------------------------------------

#[tokio::test]
async fn waiters_are_woken_by_new_messages_nacks_and_deletion() {
    use std::time::Duration;
    let br = broker();
    client(&br, "c", &["t"]).await;
    assert!(br.waiter("nope-inbox").is_none());
    let w = br.waiter("c-inbox").expect("waiter");
    let woken = w.notified();
    publish(&br, "t", 1, T0).await;
    tokio::time::timeout(Duration::from_secs(10), woken)
        .await
        .expect("woken by publish");

    let got = lease(&br, "c", 1, 1_000, T0).await;
    let woken = w.notified();
    br.settle_as("c", &receipts(&got), Settle::Nack { requeue: true }, T0)
        .await
        .expect("nack");
    tokio::time::timeout(Duration::from_secs(10), woken)
        .await
        .expect("woken by nack");

    let woken = w.notified();
    br.delete_client("c").await.expect("delete");
    tokio::time::timeout(Duration::from_secs(10), woken)
        .await
        .expect("woken by deletion");
}

#[tokio::test]
async fn concurrent_duplicate_publishes_enqueue_once() {
    let br = broker();
    client(&br, "c", &["dedup.t"]).await;
    let mk = |n| {
        let mut p = Publish::new("dedup.t", body(n), "s");
        p.message_id = Some("same".into());
        p
    };
    let (r1, r2) = tokio::join!(br.publish(mk(1), T0), br.publish(mk(2), T0));
    let r1 = r1.expect("the first is accepted");
    assert!(!r1.duplicate);
    // The second either sees the first in flight or already done.
    match r2 {
        Err(BrokerError::DuplicateInFlight) => {}
        Ok(p) => assert_eq!(
            p,
            Published {
                duplicate: true,
                ..r1
            }
        ),
        Err(e) => panic!("{e:?}"),
    }
    assert_eq!(bodies(&drain(&br, "c", T0).await), vec![b(1)]);
    // Once settled, a retry is a plain duplicate.
    assert!(publish_id(&br, "s", "same", 3, T0).await.duplicate);
}

/// A memory store whose commits wait while its gate is closed, and fail once it is told to.
#[derive(Default)]
struct GatedStore {
    inner: MemoryStore,
    closed: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    commits_started: std::sync::atomic::AtomicUsize,
    failing: std::sync::atomic::AtomicBool,
}

impl GatedStore {
    fn set_closed(&self, closed: bool) {
        *self.closed.lock().expect("gate") = closed;
        self.opened.notify_all();
    }
}

impl trunkline_store::QueueStore for GatedStore {
    fn commit(&self, ops: &[trunkline_store::Op]) -> Result<(), trunkline_store::StoreError> {
        self.commits_started.fetch_add(1, Ordering::SeqCst);
        let mut closed = self.closed.lock().expect("gate");
        while *closed {
            closed = self.opened.wait(closed).expect("gate");
        }
        drop(closed);
        if self.failing.load(Ordering::SeqCst) {
            return Err(trunkline_store::StoreError::Failed("disk full".into()));
        }
        self.inner.commit(ops)
    }
    fn load(&self) -> Result<trunkline_store::Snapshot, trunkline_store::StoreError> {
        self.inner.load()
    }
    fn read_message(
        &self,
        id: u64,
    ) -> Result<Option<Arc<trunkline_store::StoredMessage>>, trunkline_store::StoreError> {
        self.inner.read_message(id)
    }
}

#[tokio::test]
async fn a_publish_cancelled_while_committing_leaks_nothing() {
    let store = Arc::new(GatedStore::default());
    let br = Broker::open(store.clone(), BrokerConfig::default(), T0).expect("open");
    client_with(
        &br,
        "c",
        &["dedup.t"],
        limits(Some(1), Some(Overflow::RejectPublish), None),
    )
    .await;
    store.set_closed(true);
    let started = store.commits_started.load(Ordering::SeqCst);
    let task = tokio::spawn({
        let br = br.clone();
        async move {
            let mut p = Publish::new("dedup.t", body(1), "s");
            p.message_id = Some("m".into());
            br.publish(p, T0).await
        }
    });
    // Wait until its commit is in the store, then cancel it (as a hung-up HTTP request is).
    while store.commits_started.load(Ordering::SeqCst) == started {
        tokio::task::yield_now().await;
    }
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());
    store.set_closed(false);

    // A publish whose commit was submitted completes whether or not anyone waits for it:
    // the message is delivered, its message_id is remembered (the retry is a duplicate,
    // not "in flight" for ever), and nothing stays reserved in the full-length-1 inbox.
    let mut retry = Publish::new("dedup.t", body(2), "s");
    retry.message_id = Some("m".into());
    let mut outcome = None;
    for _ in 0..1000 {
        match br.publish(retry.clone(), T0 + 1).await {
            // The commit thread finishes the first publish on its own time.
            Err(BrokerError::DuplicateInFlight) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            other => {
                outcome = Some(other.expect("retry"));
                break;
            }
        }
    }
    let retry = outcome.expect("the first publish settles");
    assert_eq!((retry.delivered_to, retry.duplicate), (1, true));
    assert_eq!(bodies(&drain(&br, "c", T0 + 1).await), vec![b(1)]);
    assert_eq!(publish(&br, "dedup.t", 3, T0 + 2).await.delivered_to, 1);
}

// A message put somewhere a consumer can take it from (requeued, or moved to the
// dead-letter queue) is visible there only once the commit holding that change is durable,
// in commit order, as a published message is.

/// A broker over a [`GatedStore`], with client `c` (at most `max_deliveries`) and client
/// `h`, whose publishes hold the commit thread while the gate is closed.
async fn gated_broker(max_deliveries: u32) -> (Broker, Arc<GatedStore>) {
    let store = Arc::new(GatedStore::default());
    let br = Broker::open(store.clone(), BrokerConfig::default(), T0).expect("open");
    client_with(&br, "c", &["t"], limits(None, None, Some(max_deliveries))).await;
    client(&br, "h", &["hold"]).await;
    (br, store)
}

/// Closes the gate and waits until a commit (a publish to `h`) is held in it: everything
/// submitted from now on waits behind it. A requeue writes nothing of its own (its entry
/// is stored as it will be), so this is what holds its turn.
async fn hold_commits(
    br: &Broker,
    store: &GatedStore,
) -> tokio::task::JoinHandle<Result<Published, BrokerError>> {
    store.set_closed(true);
    let started = store.commits_started.load(Ordering::SeqCst);
    let held = tokio::spawn({
        let br = br.clone();
        async move { br.publish(Publish::new("hold", body(0), "h"), T0).await }
    });
    while store.commits_started.load(Ordering::SeqCst) == started {
        tokio::task::yield_now().await;
    }
    held
}

/// Publishes messages 1 and 2 to `c` (at most `max_deliveries` each) and leases both for
/// 100 ms; then runs `change` (given the receipts), which moves them, while commits
/// are held, and checks what another consumer of `queue` sees: nothing while the change
/// is not durable (no message to receive, no wake-up), then `want` (bodies and delivery
/// counts) once it is. Returns what `change` returned.
async fn moved_once_durable<T, Fut>(
    max_deliveries: u32,
    change: impl FnOnce(Broker, Vec<String>) -> Fut,
    queue: &str,
    now: u64,
    want: &[(u64, u32)],
) -> T
where
    Fut: std::future::Future<Output = Result<T, BrokerError>> + Send + 'static,
    T: Send + 'static,
{
    use std::time::Duration;
    let (br, store) = gated_broker(max_deliveries).await;
    for n in 1..=2 {
        publish(&br, "t", n, T0).await;
    }
    let rs = receipts(&lease(&br, "c", 2, 100, T0).await);
    let held = hold_commits(&br, &store).await;
    let w = br.waiter(queue).expect("waiter");
    let mut woken = std::pin::pin!(w.notified());
    let before = depth(&br, "c-inbox");
    let change = tokio::spawn(change(br.clone(), rs));
    for _ in 0..100_000 {
        if depth(&br, "c-inbox") != before {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_ne!(depth(&br, "c-inbox"), before, "the change took nothing out");
    let early_wake = tokio::time::timeout(Duration::from_millis(50), woken.as_mut())
        .await
        .is_ok();
    let mut early = tokio::spawn({
        let br = br.clone();
        let queue = queue.to_owned();
        async move {
            br.receive_as("c", &queue, ReceiveOptions::auto(10), now)
                .await
        }
    });
    // Nothing to take costs no commit: the receive answers at once.
    let answer = tokio::time::timeout(Duration::from_secs(2), &mut early).await;
    store.set_closed(false);
    let answered = answer.is_ok();
    let early = match answer {
        Ok(r) => r,
        Err(_) => early.await,
    };
    let early = early.expect("join").expect("receive");
    assert!(
        early.is_empty(),
        "another consumer got {:?} from {queue} before the change that put it there was durable",
        bodies(&early)
    );
    assert!(
        answered,
        "a receive with nothing to take waited for a commit"
    );
    assert!(
        !early_wake,
        "{queue}'s waiters were woken before the change was durable"
    );
    held.await.expect("join").expect("held publish");
    let out = change.await.expect("join").expect("change");
    tokio::time::timeout(Duration::from_secs(5), woken)
        .await
        .expect("waiters woken once the change is durable");
    let late = br
        .receive_as("c", queue, ReceiveOptions::auto(10), now)
        .await
        .expect("receive");
    let got = with_counts(&late);
    let want: Vec<(String, u32)> = want.iter().map(|&(n, count)| (b(n), count)).collect();
    assert_eq!(got, want, "what {queue} holds once the change is durable");
    out
}

/// Nacks `rs` with requeue: each goes back to its place, or, on its last allowed
/// delivery, to the dead-letter queue.
async fn nack_all(br: Broker, rs: Vec<String>) -> Result<trunkline_broker::Settled, BrokerError> {
    br.settle_as("c", &rs, Settle::Nack { requeue: true }, T0 + 1)
        .await
}

/// Housekeeping once the leases `moved_once_durable` takes (100 ms) have run out.
async fn sweep_after_leases(br: Broker, _: Vec<String>) -> Result<(), BrokerError> {
    br.sweep(T0 + 100).await
}

#[tokio::test]
async fn nacked_messages_are_requeued_once_durable_and_keep_their_place() {
    // Their second deliveries, in the order they were published.
    let want = [(1, 2), (2, 2)];
    let settled = moved_once_durable(5, nack_all, "c-inbox", T0 + 2, &want).await;
    assert_eq!(settled.done, 2);
}

#[tokio::test]
async fn nacks_on_the_last_delivery_dead_letter_once_durable() {
    let want = [(1, 1), (2, 1)];
    let settled = moved_once_durable(1, nack_all, "c-dead", T0 + 2, &want).await;
    assert_eq!(settled.done, 2);
}

#[tokio::test]
async fn leases_ended_by_the_sweep_are_requeued_once_durable() {
    let want = [(1, 2), (2, 2)];
    moved_once_durable(5, sweep_after_leases, "c-inbox", T0 + 100, &want).await;
}

#[tokio::test]
async fn leases_exhausted_by_the_sweep_are_dead_lettered_once_durable() {
    let want = [(1, 1), (2, 1)];
    moved_once_durable(1, sweep_after_leases, "c-dead", T0 + 100, &want).await;
}

#[tokio::test]
async fn leases_ended_by_a_receive_are_requeued_once_durable() {
    // This receive ends both leases and takes one: it waits for them to be back first.
    let receive = |br: Broker, _| async move {
        br.receive_as("c", "c-inbox", ReceiveOptions::leased(1, 100), T0 + 100)
            .await
    };
    let took = moved_once_durable(5, receive, "c-inbox", T0 + 100, &[(2, 2)]).await;
    assert_eq!(with_counts(&took), vec![(b(1), 2)]);
}

#[tokio::test]
async fn moves_whose_commit_fails_are_visible_nowhere() {
    let (br, store) = gated_broker(5).await;
    for n in 1..=3 {
        publish(&br, "t", n, T0).await;
    }
    let rs = receipts(&lease(&br, "c", 3, 100, T0).await);
    store.failing.store(true, Ordering::SeqCst);
    // The store fails this commit, and the node every one after it (fail-stop): a requeue,
    // which writes nothing of its own, fails with the commit it comes after.
    let to_dead = br
        .settle_as("c", &rs[..1], Settle::Nack { requeue: false }, T0 + 1)
        .await;
    assert!(
        to_dead.is_err(),
        "a failed dead-lettering was acknowledged: {to_dead:?}"
    );
    let requeued = br
        .settle_as("c", &rs[1..2], Settle::Nack { requeue: true }, T0 + 1)
        .await;
    assert!(
        requeued.is_err(),
        "a requeue after a failed commit was acknowledged: {requeued:?}"
    );
    assert!(br.sweep(T0 + 100).await.is_err());
    for queue in ["c-inbox", "c-dead"] {
        assert_eq!(
            depth(&br, queue),
            (0, 0),
            "{queue} holds a move that failed"
        );
        let got = br
            .receive_as("c", queue, ReceiveOptions::auto(10), T0 + 100)
            .await;
        assert!(matches!(&got, Ok(d) if d.is_empty()), "{queue}: {got:?}");
    }
    assert_eq!(
        br.memory_used(),
        0,
        "memory of moves that failed is still counted"
    );
    // The store holds them where they durably were: a restart delivers them from the inbox.
    store.failing.store(false, Ordering::SeqCst);
    let again = Broker::open(store.clone(), BrokerConfig::default(), T0 + 200).expect("reopen");
    let want: Vec<(String, u32)> = (1..=3).map(|n| (b(n), 2)).collect();
    assert_eq!(with_counts(&drain(&again, "c", T0 + 200).await), want);
    assert!(drain_dead(&again, "c", T0 + 200).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_and_consumers_lose_and_duplicate_nothing() {
    const PUBLISHERS: u64 = 4;
    const PER: u64 = 150;
    let br = broker();
    client(&br, "c", &["load.#"]).await;
    client_with(
        &br,
        "bounded",
        &["load.#"],
        limits(Some(5), Some(Overflow::DropOldest), None),
    )
    .await;
    let mut pubs = Vec::new();
    for p in 0..PUBLISHERS {
        let br = br.clone();
        pubs.push(tokio::spawn(async move {
            for i in 0..PER {
                let n = p * PER + i;
                let sent = br
                    .publish(Publish::new(format!("load.{p}"), body(n), "p"), T0 + i)
                    .await
                    .expect("publish");
                assert_eq!(sent.delivered_to, 2);
            }
        }));
    }
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let br = br.clone();
        consumers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut idle = 0;
            // Long leases: nothing is redelivered, so every message is acked exactly once.
            while idle < 200 {
                let got = lease(&br, "c", 7, 10_000_000, T0).await;
                if got.is_empty() {
                    idle += 1;
                    tokio::task::yield_now().await;
                    continue;
                }
                idle = 0;
                let s = br
                    .settle_as("c", &receipts(&got), Settle::Ack, T0)
                    .await
                    .expect("ack");
                assert_eq!(s.done, got.len() as u64);
                acked.extend(got.iter().map(body_of));
            }
            acked
        }));
    }
    for p in pubs {
        p.await.expect("publisher");
    }
    let mut all: Vec<String> = Vec::new();
    for c in consumers {
        all.extend(c.await.expect("consumer"));
    }
    all.extend(bodies(&drain(&br, "c", T0).await));
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "a message was received twice");
    assert_eq!(all.len() as u64, PUBLISHERS * PER, "a message was lost");
    // The drop-oldest inbox never held more than its length, and kept the newest.
    assert_eq!(inbox_depth(&br, "bounded"), 5);
    assert_eq!(drain(&br, "bounded", T0).await.len(), 5);
    assert_eq!(
        br.counters().dropped_overflow.load(Ordering::Relaxed),
        PUBLISHERS * PER - 5
    );
}

#[tokio::test]
async fn queued_memory_is_counted_the_same_after_a_restart() {
    let store = Arc::new(MemoryStore::default());
    let br = Broker::open(store.clone(), BrokerConfig::default(), T0).expect("open");
    client_with(&br, "a", &["t.#"], limits(None, None, Some(1))).await;
    client(&br, "b", &["t.#", "u"]).await;
    for n in 0..5 {
        publish(&br, "t.x", n, T0).await;
    }
    let mut p = Publish::new("u", body(9), "pub");
    p.content_type = Some("text/plain".into());
    p.headers = vec![("type".into(), "note".into())];
    br.publish(p, T0).await.expect("publish");
    // a: one acked, two leased with their only allowed delivery (dead-lettered at the
    // restart); b: one received, one nacked to its dead-letter queue.
    let got = lease(&br, "a", 3, 60_000, T0 + 1).await;
    br.settle_as("a", &receipts(&got[..1]), Settle::Ack, T0 + 1)
        .await
        .expect("ack");
    br.receive_as("b", &inbox("b"), ReceiveOptions::auto(1), T0 + 1)
        .await
        .expect("receive");
    let bl = lease(&br, "b", 1, 60_000, T0 + 1).await;
    br.settle_as("b", &receipts(&bl), Settle::Nack { requeue: false }, T0 + 1)
        .await
        .expect("nack");
    let before = br.memory_used();
    // a holds 1-4; b holds 2-4 and the note, and 1 in its dead-letter queue: 9 entries of
    // 5 messages (0 is gone from both).
    // The index counts, whatever the bodies.
    let entries = 9 * trunkline_broker::footprint::ENTRY_BYTES;
    assert_eq!(
        before,
        entries + 5 * trunkline_broker::footprint::MESSAGE_BYTES
    );
    br.shutdown().unwrap_or_else(|_| panic!("the only handle"));

    let br = Broker::open(store, BrokerConfig::default(), T0 + 2).expect("reopen");
    assert_eq!(br.memory_used(), before);
    assert_eq!(
        depth(&br, &dead("a")),
        (2, 0),
        "leases past their last delivery"
    );
    for id in ["a", "b"] {
        drain(&br, id, T0 + 3).await;
        drain_dead(&br, id, T0 + 3).await;
    }
    assert_eq!(br.memory_used(), 0, "nothing held, nothing counted");
}

#[tokio::test]
async fn a_refused_batch_gives_back_the_memory_it_reserved() {
    let one = trunkline_broker::footprint::index_bytes(1);
    let br = broker_with(BrokerConfig {
        max_memory_bytes: one + one / 2,
        ..BrokerConfig::default()
    });
    client(&br, "a", &["t.#"]).await;
    let batch = (0..2)
        .map(|n| Publish::new("t.x", body(n), "pub"))
        .collect();
    let refused = br.publish_batch_start(batch, T0);
    assert!(
        matches!(refused, Err(BrokerError::NodeFull { .. })),
        "{:?}",
        refused.err()
    );
    assert_eq!(br.memory_used(), 0);
    publish(&br, "t.x", 0, T0).await;
    assert_eq!(br.memory_used(), one);
}

// ----- 9. auth and validation ----------------------------------------------------------

#[tokio::test]
async fn authenticate_checks_the_secret() {
    let br = broker();
    let secret = client(&br, "c", &["t"]).await;
    let mut admin = NewClient::new("root", "Root", pats(&["#"]));
    admin.roles = pats(&["admin", "backend"]);
    let (_, admin_secret) = br.create_client(admin, T0).await.expect("create");

    let (p, cid) = br.authenticate("c", &secret).expect("right secret");
    assert_eq!(&*p.client_id, "c");
    assert!(!p.is_admin());
    assert!(br.authenticate("c", "wrong").is_none());
    assert!(br.authenticate("c", "").is_none());
    assert!(br.authenticate("c", &admin_secret).is_none());
    assert!(br.authenticate("nobody", &secret).is_none());
    let (p, _) = br.authenticate("root", &admin_secret).expect("admin");
    assert!(p.is_admin());

    assert_eq!(
        br.check_credential("c", &cid).map(|p| p.is_admin()),
        Some(false)
    );
    assert!(br.check_credential("c", "other").is_none());
    assert!(br.check_credential("root", &cid).is_none());
    assert!(br.check_credential("nobody", &cid).is_none());
}

#[tokio::test]
async fn rotate_secret_invalidates_the_old_secret_and_credential() {
    let br = broker();
    let old = client(&br, "c", &["t"]).await;
    let (_, old_cid) = br.authenticate("c", &old).expect("auth");
    let (view, new) = br.rotate_secret("c").await.expect("rotate");
    assert_eq!(view.client_id, "c");
    assert_ne!(old, new);
    assert!(br.authenticate("c", &old).is_none());
    let (_, new_cid) = br.authenticate("c", &new).expect("new secret");
    assert_ne!(old_cid, new_cid);
    assert!(br.check_credential("c", &old_cid).is_none());
    assert!(br.check_credential("c", &new_cid).is_some());
    // The inbox is untouched by rotation.
    publish(&br, "t", 1, T0).await;
    assert_eq!(bodies(&drain(&br, "c", T0).await), vec![b(1)]);
}

#[tokio::test]
async fn deleting_and_recreating_a_client_invalidates_old_credentials() {
    let br = broker();
    let secret = client(&br, "c", &["t"]).await;
    let (_, cid) = br.authenticate("c", &secret).expect("auth");
    br.delete_client("c").await.expect("delete");
    assert!(br.check_credential("c", &cid).is_none());
    client(&br, "c", &["t"]).await;
    assert!(br.check_credential("c", &cid).is_none());
}

#[tokio::test]
async fn client_fields_are_validated() {
    let br = broker();
    for bad in ["", "A", "-a", ".a", "a b", "a/b", "é", &"a".repeat(65)] {
        let r = br
            .create_client(NewClient::new(bad, "n", pats(&["t"])), T0)
            .await;
        assert!(
            matches!(r, Err(BrokerError::InvalidClientId(ref id)) if id == bad),
            "{bad:?}: {r:?}"
        );
    }
    for bad in ["a..b", "a*", "a.b#", "*a.b", "", ".a", "a.", "a b", "##"] {
        let r = br
            .create_client(NewClient::new("c", "n", pats(&["ok", bad])), T0)
            .await;
        assert!(
            matches!(r, Err(BrokerError::InvalidPattern { ref pattern, .. }) if pattern == bad),
            "{bad:?}: {r:?}"
        );
    }
    let r = br.create_client(NewClient::new("c", "n", vec![]), T0).await;
    assert!(
        matches!(r, Err(BrokerError::InvalidArgument(_))),
        "no patterns: {r:?}"
    );
    let too_many: Vec<String> = (0..65).map(|i| format!("p{i}")).collect();
    let r = br
        .create_client(NewClient::new("c", "n", too_many), T0)
        .await;
    assert!(
        matches!(r, Err(BrokerError::InvalidArgument(_))),
        "65 patterns: {r:?}"
    );
    for name in ["", "   ", &"n".repeat(257)] {
        let r = br
            .create_client(NewClient::new("c", name, pats(&["t"])), T0)
            .await;
        assert!(
            matches!(r, Err(BrokerError::InvalidArgument(_))),
            "name {name:?}: {r:?}"
        );
    }
    let mut c = NewClient::new("c", "n", pats(&["t"]));
    c.roles = pats(&["backend", "superuser"]);
    let r = br.create_client(c, T0).await;
    assert!(
        matches!(r, Err(BrokerError::InvalidArgument(ref m)) if m.contains("superuser")),
        "{r:?}"
    );
    for bad in [limits(Some(0), None, None), limits(None, None, Some(0))] {
        let mut c = NewClient::new("c", "n", pats(&["t"]));
        c.inbox = bad;
        let r = br.create_client(c, T0).await;
        assert!(
            matches!(r, Err(BrokerError::InvalidArgument(_))),
            "{bad:?}: {r:?}"
        );
    }
    assert_eq!(
        br.client_count(),
        0,
        "nothing was created by the refused requests"
    );
    assert!(br.queue_depths().is_empty());

    // Valid edge cases.
    let mut c = NewClient::new("0.x_y-z", "n", pats(&["#", "*", "a.*.#"]));
    c.roles = pats(&["admin", "backend"]);
    br.create_client(c, T0).await.expect("valid client");
    client(&br, &"a".repeat(64), &["t"]).await;

    // The same id again.
    let r = br
        .create_client(NewClient::new("0.x_y-z", "other", pats(&["t"])), T0)
        .await;
    assert!(
        matches!(r, Err(BrokerError::ClientExists(ref id)) if id == "0.x_y-z"),
        "{r:?}"
    );
    assert_eq!(br.get_client("0.x_y-z").expect("kept").client_name, "n");

    // Updates are validated the same way, and a refused one changes nothing.
    for u in [
        ClientUpdate {
            patterns: Some(pats(&["a..b"])),
            ..Default::default()
        },
        ClientUpdate {
            patterns: Some(vec![]),
            ..Default::default()
        },
        ClientUpdate {
            roles: Some(pats(&["root"])),
            ..Default::default()
        },
        ClientUpdate {
            client_name: Some(String::new()),
            ..Default::default()
        },
        ClientUpdate {
            inbox: Some(limits(Some(0), None, None)),
            ..Default::default()
        },
    ] {
        let r = br.update_client("0.x_y-z", u.clone()).await;
        assert!(
            matches!(
                r,
                Err(BrokerError::InvalidPattern { .. } | BrokerError::InvalidArgument(_))
            ),
            "{u:?}: {r:?}"
        );
    }
    let view = br.get_client("0.x_y-z").expect("kept");
    assert_eq!(view.patterns, pats(&["#", "*", "a.*.#"]));
    assert_eq!(view.roles.len(), 2);
    let ids: Vec<String> = br.list_clients().into_iter().map(|c| c.client_id).collect();
    assert_eq!(ids, vec!["0.x_y-z".to_string(), "a".repeat(64)]);
}

// ----- 10. model-based property test ---------------------------------------------------

mod model {
    use super::*;
    use proptest::prelude::*;

    const MAX_DELIVERIES: u32 = 3;

    #[derive(Debug, Clone)]
    pub enum Step {
        Publish,
        /// Receive up to `max`, leased for `lease` ms if given, else auto-ack.
        Receive {
            max: usize,
            lease: Option<u64>,
        },
        Ack(usize),
        Nack(usize, bool),
        Advance(u64),
        Sweep,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Publish),
            1 => (0usize..4).prop_map(|max| Step::Receive { max, lease: None }),
            2 => (1usize..4, 1u64..300).prop_map(|(max, l)| Step::Receive { max, lease: Some(l) }),
            2 => any::<usize>().prop_map(Step::Ack),
            1 => (any::<usize>(), any::<bool>()).prop_map(|(i, r)| Step::Nack(i, r)),
            2 => (0u64..200).prop_map(Step::Advance),
            1 => Just(Step::Sweep),
        ]
    }

    /// The queue as a user should see it; messages are numbered in publish order.
    #[derive(Default, Debug)]
    struct Model {
        /// Ready messages in their place (publish order) with their delivery count.
        ready: BTreeMap<u64, u32>,
        /// Leased: message -> (delivery count, deadline).
        leased: BTreeMap<u64, (u32, u64)>,
        /// Dead-lettered, in the order they arrived there.
        dead: VecDeque<u64>,
        /// Acked or received without a lease: must never be seen again.
        done: BTreeSet<u64>,
    }

    impl Model {
        fn requeue_or_dead(&mut self, n: u64, count: u32, requeue: bool) {
            if requeue && count < MAX_DELIVERIES {
                self.ready.insert(n, count);
            } else {
                self.dead.push_back(n);
            }
        }

        fn reclaim(&mut self, now: u64) {
            let mut expired: Vec<(u64, u64, u32)> = self
                .leased
                .iter()
                .filter(|(_, (_, deadline))| *deadline <= now)
                .map(|(n, (count, deadline))| (*deadline, *n, *count))
                .collect();
            expired.sort();
            for (_, n, count) in expired {
                self.leased.remove(&n);
                self.requeue_or_dead(n, count, true);
            }
        }

        fn take(&mut self, max: usize, lease: Option<(u64, u64)>) -> Vec<(u64, u32)> {
            let mut out = Vec::new();
            while out.len() < max {
                let Some((n, count)) = self.ready.pop_first() else {
                    break;
                };
                let count = count + 1;
                match lease {
                    Some((now, ms)) => {
                        self.leased.insert(n, (count, now + ms));
                    }
                    None => {
                        self.done.insert(n);
                    }
                }
                out.push((n, count));
            }
            out
        }

        /// Settles delivery `count` of message `n`; false if that lease is not open.
        fn settle(&mut self, n: u64, count: u32, how: Settle) -> bool {
            match self.leased.get(&n) {
                Some((c, _)) if *c == count => {}
                _ => return false,
            }
            self.leased.remove(&n);
            match how {
                Settle::Ack => {
                    self.done.insert(n);
                }
                Settle::Nack { requeue } => self.requeue_or_dead(n, count, requeue),
            }
            true
        }
    }

    fn number(d: &Delivery) -> u64 {
        body_of(d)
            .trim_start_matches("{\"n\":")
            .trim_end_matches('}')
            .parse()
            .expect("numbered body")
    }

    async fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
        let br = broker();
        let mut c = NewClient::new("c", "model", pats(&["q.#"]));
        c.inbox = limits(None, None, Some(MAX_DELIVERIES));
        br.create_client(c, T0)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut m = Model::default();
        let mut now = T0;
        let mut published = 0u64;
        // Every receipt handed out: (receipt, message, delivery count).
        let mut handed: Vec<(String, u64, u32)> = Vec::new();
        let mut seen_ids: HashMap<u64, u64> = HashMap::new();

        for s in steps {
            match s {
                Step::Publish => {
                    let r = publish(&br, "q.x", published, now).await;
                    prop_assert_eq!(r.delivered_to, 1);
                    prop_assert!(seen_ids.insert(r.id, published).is_none(), "id reused");
                    m.ready.insert(published, 0);
                    published += 1;
                }
                Step::Receive {
                    max,
                    lease: lease_ms,
                } => {
                    let opts = ReceiveOptions { max, lease_ms };
                    let got = br
                        .receive_as("c", "c-inbox", opts, now)
                        .await
                        .expect("receive");
                    m.reclaim(now);
                    let want = m.take(max, lease_ms.map(|l| (now, l)));
                    let got_pairs: Vec<(u64, u32)> =
                        got.iter().map(|d| (number(d), d.delivery_count)).collect();
                    prop_assert_eq!(&got_pairs, &want);
                    for d in &got {
                        prop_assert_eq!(seen_ids.get(&d.id), Some(&number(d)));
                        prop_assert_eq!(d.redelivered(), d.delivery_count > 1);
                        if let Some(r) = &d.receipt {
                            handed.push((r.clone(), number(d), d.delivery_count));
                        }
                        prop_assert_eq!(d.receipt.is_some(), lease_ms.is_some());
                    }
                }
                Step::Ack(i) | Step::Nack(i, _) => {
                    if handed.is_empty() {
                        continue;
                    }
                    let (r, n, count) = handed[i % handed.len()].clone();
                    let how = match s {
                        Step::Nack(_, requeue) => Settle::Nack { requeue },
                        _ => Settle::Ack,
                    };
                    let out = br
                        .settle_as("c", std::slice::from_ref(&r), how, now)
                        .await
                        .expect("settle");
                    let ok = m.settle(n, count, how);
                    prop_assert_eq!(out.done, u64::from(ok), "settle {:?} {} of {}", how, r, n);
                    prop_assert_eq!(out.unknown.len(), usize::from(!ok));
                }
                Step::Advance(ms) => now += ms,
                Step::Sweep => {
                    br.sweep(now).await.expect("sweep");
                    m.reclaim(now);
                }
            }
            prop_assert_eq!(
                depth(&br, "c-inbox"),
                (m.ready.len() as u64, m.leased.len() as u64)
            );
            prop_assert_eq!(depth(&br, "c-dead"), (m.dead.len() as u64, 0));
            // Each entry held, and each message (one entry each here), is counted.
            let held: u64 = m
                .ready
                .keys()
                .chain(m.leased.keys())
                .chain(m.dead.iter())
                .map(|_| trunkline_broker::footprint::index_bytes(1))
                .sum();
            prop_assert_eq!(br.memory_used(), held);
        }

        // Nothing published is lost and nothing acked comes back: once every lease has run
        // out, the inbox and the dead-letter queue hold exactly what the model says.
        now += 1_000_000;
        let mut left: Vec<u64> = Vec::new();
        loop {
            let got = drain(&br, "c", now).await;
            if got.is_empty() {
                break;
            }
            left.extend(got.iter().map(number));
        }
        m.reclaim(now);
        let dead: Vec<u64> = drain_dead(&br, "c", now).await.iter().map(number).collect();
        let live: Vec<u64> = m.ready.keys().copied().collect();
        prop_assert_eq!(&left, &live);
        prop_assert_eq!(&dead, &Vec::from(m.dead.clone()));
        let mut all: HashSet<u64> = m.done.iter().copied().collect();
        for n in left.iter().chain(&dead) {
            prop_assert!(!m.done.contains(n), "acked message {} came back", n);
            prop_assert!(all.insert(*n), "message {} twice", n);
        }
        prop_assert_eq!(
            all.len() as u64,
            published,
            "every published message is accounted for"
        );
        prop_assert_eq!(br.memory_used(), 0, "nothing held, nothing counted");
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn a_single_queue_behaves_like_its_model(steps in proptest::collection::vec(step(), 1..80)) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(run(steps))?;
        }
    }
}

/// Bodies past the hot-body cache are let go and read back from the log when delivered:
/// every message arrives whole and in order, leased and auto-acked, before and after a
/// restart, while the bodies held stay within the budget.
#[tokio::test]
async fn bodies_past_the_cache_are_read_back_from_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = 8 << 10;
    let open = || {
        let store =
            Arc::new(trunkline_store::LogStore::open_with(dir.path(), 64 << 10).expect("open log"));
        let config = BrokerConfig {
            body_cache_bytes: budget,
            ..BrokerConfig::default()
        };
        Broker::open(store, config, T0).expect("open broker")
    };
    let big = |n: u64| format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(1000));
    let br = open();
    client(&br, "a", &["t.#"]).await;
    for n in 0..200 {
        br.publish(Publish::new("t.x", big(n).into_bytes(), "pub"), T0 + n)
            .await
            .expect("publish");
        assert!(
            br.body_cache().0 <= budget,
            "{} bytes held",
            br.body_cache().0
        );
    }
    // Leased, then acked: the oldest were let go long ago.
    let got = lease(&br, "a", 50, 60_000, T0 + 300).await;
    assert_eq!(bodies(&got), (0..50).map(big).collect::<Vec<_>>());
    br.settle_as("a", &receipts(&got), Settle::Ack, T0 + 301)
        .await
        .expect("ack");
    // Auto-acked: the delete commits after the bodies were read.
    let got = br
        .receive_as("a", &inbox("a"), ReceiveOptions::auto(50), T0 + 302)
        .await
        .expect("receive");
    assert_eq!(bodies(&got), (50..100).map(big).collect::<Vec<_>>());
    assert!(br.body_cache().0 <= budget);
    br.shutdown().unwrap_or_else(|_| panic!("the only handle"));
    // After a restart only what fits the budget is held; the rest reads back.
    let br = open();
    assert!(br.body_cache().0 <= budget);
    assert_eq!(
        bodies(&drain(&br, "a", T0 + 400).await),
        (100..200).map(big).collect::<Vec<_>>()
    );
}

/// The node-wide cap counts the index of what is queued, not the bodies (they are in the
/// store): a backlog of bodies far larger than the cap is accepted, and the body cache
/// takes only what the index leaves under the cap. A queue past its head keeps the rest
/// in the store once the node is pressed, and every queue keeps what passes three quarters
/// of the cap there.
#[tokio::test]
async fn the_memory_cap_counts_the_index_and_the_cache_takes_what_it_leaves() {
    use trunkline_broker::footprint::{bare_at, index_bytes, PRESSED_HEAD};
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        Arc::new(trunkline_store::LogStore::open_with(dir.path(), 1 << 20).expect("open log"));
    let cap = 100 * index_bytes(1);
    let config = BrokerConfig {
        max_memory_bytes: cap,
        body_cache_bytes: u64::MAX,
        ..BrokerConfig::default()
    };
    let br = Broker::open(store, config, T0).expect("open broker");
    client(&br, "a", &["t.#"]).await;
    let big = |n: u64| format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(16 << 10));
    // 150 bodies of 16 KiB: 2.4 MB, 120 times the cap.
    for n in 0..150 {
        br.publish(Publish::new("t.x", big(n).into_bytes(), "pub"), T0 + n)
            .await
            .expect("publish: bodies do not count against the cap");
        let (cached, limit) = br.body_cache();
        assert_eq!(
            limit,
            cap - br.memory_used(),
            "the cache takes what is left"
        );
        assert!(cached <= limit, "{cached} bytes cached over {limit}");
    }
    // In memory until the node is pressed (half the cap, the publish that presses it
    // included), in the store after.
    let held = br.memory_used();
    assert_eq!(held, cap / 2 - index_bytes(1));
    // Heads of other queues, each short of where it would spill, take it to three
    // quarters of the cap; past that queues keep no head: every publish is taken, into
    // the store only.
    for c in 0..4 {
        client(&br, &format!("h{c}"), &[&format!("u.h{c}")]).await;
    }
    for n in 0..4 * PRESSED_HEAD as u64 {
        let topic = format!("u.h{}", n % 4);
        br.publish(Publish::new(&topic, big(n).into_bytes(), "pub"), T0 + 200)
            .await
            .expect("taken: past three quarters of the cap, into the store");
        assert!(br.memory_used() <= bare_at(cap));
    }
    // (The publish that reaches three quarters included, as above.)
    let held = bare_at(cap) - index_bytes(1);
    assert_eq!(br.memory_used(), held);
    let (cached, limit) = br.body_cache();
    assert!(
        cached <= limit && limit == cap - held,
        "{cached} of {limit}"
    );
    assert_eq!(
        bodies(&drain(&br, "a", T0 + 300).await),
        (0..150).map(big).collect::<Vec<_>>()
    );
    for c in 0..4 {
        drain(&br, &format!("h{c}"), T0 + 300).await;
    }
    assert_eq!(br.memory_used(), 0);
}
