//! The Trunkline engine: topic routing, durable queues, leases, acknowledgements,
//! redelivery, TTL, dead letters, overflow policies, dedup and the client registry.
//!
//! Modules:
//! - [`topic`]: topic and pattern validation, and the [`topic::TopicTrie`] router.
//! - [`queue`]: one queue's in-memory index of its durable entries.
//! - [`registry`]: client records and routing.
//! - [`named`]: queues an admin declares, with their bindings and dead-letter queues.
//! - [`twins`]: the relay's registry of twins (keys and relays).
//! - [`authz`]: who may read, write and manage what; [`Principal`], the identity every
//!   read and write is checked against.
//! - [`dedup`]: the publisher `message_id` window.
//! - [`footprint`]: what queued messages cost in memory, which the node-wide cap counts.
//!
//! A [`Broker`] is a cheap `Clone` handle. It speaks no protocol: HTTP, STOMP and
//! WebSocket front-ends call it. It does no I/O but through the store's [`Committer`]:
//! every operation builds the store ops that make it durable, commits them (sharing a
//! sync with whatever else is waiting), and only then returns. A message put where
//! consumers can take it (published, requeued by a nack or an ended lease, moved to a
//! dead-letter queue) holds a reserved place meanwhile and lands there only once that
//! commit is durable, on the commit thread in commit order; taking one out (a delivery,
//! an ack) is immediate, so nobody can take it twice.
//!
//! State is split so that no lock covers the whole broker: the registry (clients and
//! trie) behind one `RwLock`, the map of queues behind another, and each queue behind its
//! own `Mutex`. No lock is held across an `.await`; admin changes are serialised by an
//! async mutex of their own.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use trunkline_broker::{Broker, BrokerConfig, NewClient, Publish, ReceiveOptions};
//! let broker = Broker::open(Arc::new(trunkline_store::MemoryStore::default()),
//!     BrokerConfig::default(), 0).unwrap();
//! broker.create_client(NewClient::new("b", "B", vec!["fleet.*.status".into()]), 0).await.unwrap();
//! let sent = broker.publish(Publish::new("fleet.ah1.status", b"{\"ok\":true}".to_vec(), "a"), 0)
//!     .await.unwrap();
//! assert_eq!(sent.delivered_to, 1);
//! // Reads are made as a client (a `Principal`), whose rights the broker checks.
//! let b = broker.principal("b").unwrap();
//! let got = broker.receive(&b, "b-inbox", ReceiveOptions::auto(10), 1).await.unwrap();
//! assert_eq!(got[0].data.topic, "fleet.ah1.status");
//! # });
//! ```

pub mod authz;
pub mod backend;
pub mod changes;
pub mod clients;
pub mod dedup;
pub mod error;
pub mod footprint;
pub mod live;
pub mod named;
pub mod queue;
pub mod registry;
/// Topics, patterns and the trie that routes them (shared with the live engine).
pub use trunkline_realtime::topic;
pub mod twins;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use trunkline_store::{Committer, Op, QueueStore, RecordTable, StoreError, StoredMessage};

pub use authz::{Access, Issuer, Principal, Target, REMOVED_ROLES, ROLES};
pub use backend::{Backend, BoxFuture, PublishDone, SharedKeys};
pub use dedup::DedupRecord;
pub use error::BrokerError;
pub use live::{LiveCounters, LiveMessage, LiveSubscription};
pub use named::{dead_letter_of, valid_queue_name, QueueSpec, QueueView};
pub use queue::{Limits, Msg, Overflow};
pub use registry::{dead_name, inbox_name, valid_client_id, ClientRecord, LimitSettings};

use dedup::Dedup;
use queue::{BodyCache, Effects, Landed, Moved, Queue, Slot, Spill};
use registry::Registry;

/// Node-wide settings of the broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Inbox limits for clients that set none.
    pub default_limits: Limits,
    /// How long a publisher's `message_id` is remembered.
    pub dedup_window_ms: u64,
    /// Most remembered `message_id`s.
    pub dedup_capacity: usize,
    /// Most messages one receive may return.
    pub max_receive: usize,
    /// Most memory queued messages may take on the node, as [`footprint`] counts it: their
    /// index (queue entries and message records) and the bodies cached. Past it the index
    /// refuses publishes with [`BrokerError::NodeFull`]; the cache takes only what the
    /// index leaves.
    pub max_memory_bytes: u64,
    /// Most disk the store may take; past it publishes are refused with
    /// [`BrokerError::DiskFull`] (only with a store that keeps count, see
    /// [`QueueStore::disk_gauge`]).
    pub max_disk_bytes: Option<u64>,
    /// Most memory the bodies of queued messages are held in (as
    /// [`footprint::stored_body_bytes`] counts them; less when the index leaves less under
    /// `max_memory_bytes`); past it the oldest are let go and read back from the store
    /// when delivered.
    pub body_cache_bytes: u64,
    /// Most ready messages of one queue whose index is held in memory; past it, new ones
    /// are kept in the store only (with a store that can: the log), and brought back in
    /// order as consumers reach them, so that a backlog is bounded by disk, not memory.
    pub queue_memory_entries: usize,
    /// The registry (clients, declared queues, twins) is kept by a log the nodes of a
    /// cluster share ([`changes`]): it is neither loaded from the store nor written to it,
    /// and starts empty until the log's changes are applied.
    pub shared_registry: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            default_limits: Limits {
                max_length: 100_000,
                overflow: Overflow::RejectPublish,
                max_deliveries: 10,
            },
            dedup_window_ms: 10 * 60 * 1000,
            dedup_capacity: 1_000_000,
            max_receive: 1000,
            max_memory_bytes: 1 << 30,
            max_disk_bytes: None,
            body_cache_bytes: 256 << 20,
            queue_memory_entries: 10_000,
            shared_registry: false,
        }
    }
}

/// A publish request.
#[derive(Debug, Clone)]
pub struct Publish {
    pub topic: String,
    /// The body as raw JSON text.
    pub body: Bytes,
    pub sender: String,
    /// Publisher's id for dedup within the window.
    pub message_id: Option<String>,
    pub ttl_ms: Option<u64>,
    /// To every inbox, whatever its subscription.
    pub broadcast: bool,
    /// Straight into this queue (point to point), instead of routing by topic.
    pub queue: Option<String>,
    /// Media type of the body; `None` means JSON text.
    pub content_type: Option<String>,
    /// Headers carried to consumers.
    pub headers: Vec<(String, String)>,
}

impl Publish {
    pub fn new(
        topic: impl Into<String>,
        body: impl Into<Bytes>,
        sender: impl Into<String>,
    ) -> Self {
        Publish {
            topic: topic.into(),
            body: body.into(),
            sender: sender.into(),
            message_id: None,
            ttl_ms: None,
            broadcast: false,
            queue: None,
            content_type: None,
            headers: Vec::new(),
        }
    }
}

impl Publish {
    /// The message as stored, accepted at `now` (ms).
    pub fn stored(&self, now: u64) -> StoredMessage {
        StoredMessage {
            topic: self.topic.clone(),
            body: self.body.clone(),
            sender: self.sender.clone(),
            timestamp_ms: now,
            expires_at_ms: self.ttl_ms.map(|t| now.saturating_add(t)),
            content_type: self.content_type.clone(),
            headers: self.headers.clone(),
        }
    }
}

/// The answer to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub id: u64,
    pub delivered_to: u64,
    pub duplicate: bool,
}

/// How to receive.
#[derive(Debug, Clone, Copy)]
pub struct ReceiveOptions {
    pub max: usize,
    /// `None`: auto-ack, messages are removed as they are returned (the NOC's `/receive`).
    /// `Some(ms)`: leased for `ms`; settle with [`Broker::settle`].
    pub lease_ms: Option<u64>,
}

impl ReceiveOptions {
    pub fn auto(max: usize) -> Self {
        ReceiveOptions {
            max,
            lease_ms: None,
        }
    }
    pub fn leased(max: usize, lease_ms: u64) -> Self {
        ReceiveOptions {
            max,
            lease_ms: Some(lease_ms),
        }
    }
}

/// A message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message's id (the one its publish was answered with).
    pub id: u64,
    /// The message as stored (body and metadata).
    pub data: Arc<StoredMessage>,
    pub delivery_count: u32,
    /// For leased deliveries: what `settle` takes.
    pub receipt: Option<String>,
}

impl Delivery {
    pub fn redelivered(&self) -> bool {
        self.delivery_count > 1
    }
}

/// What to do with leased deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// Give back; `requeue: false` sends it straight to the dead-letter queue.
    Nack {
        requeue: bool,
    },
}

/// Result of settling receipts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    pub done: u64,
    pub unknown: Vec<String>,
}

/// A new client.
#[derive(Debug, Clone)]
pub struct NewClient {
    pub client_id: String,
    pub client_name: String,
    pub patterns: Vec<String>,
    /// Topic patterns it may publish to; `None`: every topic.
    pub publish: Option<Vec<String>>,
    pub roles: Vec<String>,
    /// Other queues this client may consume from.
    pub grants: Vec<String>,
    /// Other queues this client may put messages into.
    pub write_grants: Vec<String>,
    /// Topic patterns it may also read live, without them routing into its inbox.
    pub read_topics: Vec<String>,
    pub inbox: LimitSettings,
}

impl NewClient {
    pub fn new(id: impl Into<String>, name: impl Into<String>, patterns: Vec<String>) -> Self {
        NewClient {
            client_id: id.into(),
            client_name: name.into(),
            patterns,
            publish: None,
            roles: Vec::new(),
            grants: Vec::new(),
            write_grants: Vec::new(),
            read_topics: Vec::new(),
            inbox: LimitSettings::default(),
        }
    }
}

/// Changes to a client; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ClientUpdate {
    pub client_name: Option<String>,
    pub patterns: Option<Vec<String>>,
    /// `Some(["#"])` lets the client publish to every topic again.
    pub publish: Option<Vec<String>>,
    pub roles: Option<Vec<String>>,
    pub grants: Option<Vec<String>>,
    pub write_grants: Option<Vec<String>>,
    pub read_topics: Option<Vec<String>>,
    pub inbox: Option<LimitSettings>,
}

/// A client as shown to callers: never its secret or hash.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientView {
    pub client_id: String,
    pub client_name: String,
    pub patterns: Vec<String>,
    /// Topic patterns it may publish to (`["#"]`: every topic).
    pub publish: Vec<String>,
    pub roles: Vec<String>,
    pub grants: Vec<String>,
    pub write_grants: Vec<String>,
    pub read_topics: Vec<String>,
    pub inbox: LimitSettings,
    pub inbox_depth: u64,
}

/// Depths of one queue, for metrics.
#[derive(Debug, Clone)]
pub struct QueueDepth {
    pub name: Arc<str>,
    pub ready: u64,
    pub leased: u64,
}

/// Broker counters, read by `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub enqueued: AtomicU64,
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    pub nacked: AtomicU64,
    pub expired: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub dropped_overflow: AtomicU64,
    pub rejected_full: AtomicU64,
    pub duplicates: AtomicU64,
}

struct QueueCell {
    state: Mutex<Queue>,
    notify: Notify,
}

/// A place reserved in a queue by a change still committing, and the message that lands
/// there once the change is durable ([`Broker::land`]).
struct Place {
    cell: Arc<QueueCell>,
    seq: u64,
    slot: Slot,
    /// Put back at its own place (a requeue), not a fresh one.
    back: bool,
}

struct Inner {
    config: BrokerConfig,
    committer: Committer,
    registry: RwLock<Registry>,
    queues: RwLock<HashMap<Arc<str>, Arc<QueueCell>>>,
    dedup: Mutex<Dedup>,
    last_msg_id: AtomicU64,
    /// Serialises client changes, which are rare, so that check-then-commit is atomic.
    admin: tokio::sync::Mutex<()>,
    counters: Counters,
    live: Arc<RwLock<live::Live>>,
    live_counters: LiveCounters,
    /// The id floor last saved in the store.
    saved_floor: AtomicU64,
    /// Memory the index of queued messages takes (entries, records), against the cap.
    memory: Arc<footprint::Account>,
    /// Bytes the store takes on disk, if it keeps count.
    disk: Option<Arc<AtomicU64>>,
    /// Bodies held in memory; the rest are read back from `store`.
    bodies: Arc<BodyCache>,
    /// Weak: the committer owns the store, and closes it when it stops.
    store: std::sync::Weak<dyn QueueStore>,
    /// Messages queued in several queues with an entry kept in the store only, and how
    /// many such entries: held so that the entries brought back share them (and their
    /// count of references). A message queued once is let go instead, and made again when
    /// its entry is brought back.
    pinned: Mutex<HashMap<u64, (Arc<Msg>, u32)>>,
}

/// Entries a page-in asks the store for at least (it may bring more: a segment's worth).
const PAGE_IN: usize = 1024;

/// Meta record holding a floor under every id handed out so far.
const ID_FLOOR_KEY: &str = "id_floor";
/// The floor is saved (by `sweep`) once ids have moved this far past it...
const ID_SAVE_EVERY: u64 = 1 << 28;
/// ...so a restart starts this far above the saved floor, which covers what was handed out
/// after the last save (2^30 ids is also far below 2^53, the JavaScript-safe limit, after
/// thousands of restarts).
const ID_MARGIN: u64 = 1 << 30;

/// Handle to the engine. Cheap to clone: clones share one broker.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a queue lock is a bug; the state is still consistent enough
    // to go on serving (every change is committed before it is acknowledged).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// The op that stores `rec`.
pub(crate) fn client_put(rec: &ClientRecord) -> Op {
    Op::PutRecord {
        table: RecordTable::Clients,
        key: rec.client_id.clone(),
        value: serde_json::to_vec(rec).unwrap_or_default(),
    }
}

impl Broker {
    /// Recovers the broker from `store` and starts its committer. `now` is milliseconds
    /// since the epoch. Entries of queues that no longer exist and bodies no entry refers
    /// to (left by a crash in the middle of a client deletion) are removed.
    pub fn open(
        store: Arc<dyn QueueStore>,
        config: BrokerConfig,
        now: u64,
    ) -> Result<Self, StoreError> {
        let mut snap = store.load()?;
        let memory = Arc::new(footprint::Account::new(config.max_memory_bytes));
        let disk = store.disk_gauge();
        let stored_floor = snap
            .records(RecordTable::Meta)
            .iter()
            .find(|(k, _)| k == ID_FLOOR_KEY)
            .and_then(|(_, v)| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0);
        if config.shared_registry {
            for t in [
                RecordTable::Clients,
                RecordTable::Queues,
                RecordTable::Twins,
            ] {
                snap.records.remove(&t);
            }
        }
        let client_rows = snap
            .records
            .remove(&RecordTable::Clients)
            .unwrap_or_default();
        let dedup_rows_stored = snap.records.remove(&RecordTable::Dedup).unwrap_or_default();
        let mut registry = Registry::default();
        for (key, value) in &client_rows {
            let rec: ClientRecord =
                serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
                    table: "clients",
                    cause: format!("{key}: {e}"),
                })?;
            registry.insert(rec);
        }
        for (key, value) in snap
            .records
            .remove(&RecordTable::Queues)
            .unwrap_or_default()
        {
            let rec: named::QueueRecord =
                serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                    table: "queues",
                    cause: format!("{key}: {e}"),
                })?;
            registry.insert_queue(rec);
        }
        for (key, value) in snap.records.remove(&RecordTable::Twins).unwrap_or_default() {
            let rec: twins::TwinRecord =
                serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                    table: "twins",
                    cause: format!("{key}: {e}"),
                })?;
            registry.twins.insert(rec.id, rec);
        }
        let mut queues: HashMap<Arc<str>, Queue> = HashMap::new();
        for rec in registry.clients.values() {
            for q in client_queues(rec, &config) {
                queues.insert(q.name.clone(), q);
            }
        }
        for rec in registry.queues.values() {
            for q in named::queues_of(rec, &config) {
                queues.insert(q.name.clone(), q);
            }
        }
        // Ordered by id, as the snapshot's messages are.
        let mut msgs: Vec<(u64, Arc<Msg>)> = snap
            .messages
            .into_iter()
            .map(|(id, meta)| (id, Msg::restored(id, meta, Some(memory.clone()))))
            .collect();
        if !msgs.is_sorted_by_key(|(id, _)| *id) {
            msgs.sort_unstable_by_key(|(id, _)| *id);
        }
        let mut cleanup = Vec::new();
        // Records written by earlier versions may hold roles that were removed, and grants
        // of queues deleted before grants went with their queues: neither counts.
        let stale: Vec<ClientRecord> = registry
            .clients
            .values()
            .filter_map(|rec| {
                let mut rec = rec.clone();
                let before = (rec.roles.len(), rec.grants.len(), rec.write_grants.len());
                rec.roles.retain(|r| ROLES.contains(&r.as_str()));
                rec.grants.retain(|g| queues.contains_key(g.as_str()));
                rec.write_grants.retain(|g| queues.contains_key(g.as_str()));
                (before != (rec.roles.len(), rec.grants.len(), rec.write_grants.len()))
                    .then_some(rec)
            })
            .collect();
        for rec in stale {
            tracing::warn!(client_id = %rec.client_id, "dropping removed roles or grants of deleted queues");
            cleanup.push(client_put(&rec));
            registry.insert(rec);
        }
        // Entries come grouped by queue: look each queue up once. Within a queue, message
        // ids grow: search on from the last one found.
        let mut current: Option<(Arc<str>, Option<&mut Queue>)> = None;
        let mut next = 0;
        for (qname, seq, entry) in snap.entries {
            if current.as_ref().is_none_or(|(name, _)| *name != qname) {
                current = Some((qname.clone(), queues.get_mut(&*qname)));
            }
            let q = current.as_mut().and_then(|(_, q)| q.as_deref_mut());
            let found = find_msg(&msgs, next, entry.msg_id);
            next = found.map_or(next, |i| i + 1);
            let msg = found.map(|i| &msgs[i].1);
            match (q, msg) {
                (Some(q), Some(msg)) => {
                    // Counts the entry's memory, past the cap if need be: it is stored.
                    msg.add_ref();
                    q.restore(
                        seq,
                        Slot {
                            msg: msg.clone(),
                            delivery_count: entry.delivery_count,
                        },
                    );
                }
                _ => cleanup.push(Op::DeleteEntry { queue: qname, seq }),
            }
        }
        // Queues the store found longer than memory: the rest of them stays there. Those
        // of queues gone (a crash in the middle of a client deletion) are removed below.
        let mut vanished = Vec::new();
        for s in snap.spilled {
            match queues.get_mut(&*s.queue) {
                Some(q) => q.restore_cold(s.from, s.count, s.last),
                None => vanished.push(s.queue),
            }
        }
        // Messages that entries on disk only refer to too: those count as references, and
        // the message is held (pinned) for them to come back to, as while running.
        let mut pinned = HashMap::new();
        let mut next = 0;
        for (id, n) in snap.on_disk {
            let found = find_msg(&msgs, next, id);
            next = found.map_or(next, |i| i + 1);
            if let Some(i) = found {
                msgs[i].1.add_stored_refs(n);
                pinned.insert(id, (msgs[i].1.clone(), n));
            }
        }
        let mut last_msg_id = msgs.last().map_or(0, |(id, _)| *id);
        msgs.retain(|(id, m)| {
            if Arc::strong_count(m) == 1 {
                cleanup.push(Op::DeleteMessage { id: *id });
                false
            } else {
                memory.add(footprint::MESSAGE_BYTES);
                true
            }
        });
        // Bodies stay in the store until delivered (then cached while hot).
        let bodies = BodyCache::new(config.body_cache_bytes, Some(memory.clone()));
        // Entries restored with their last allowed delivery made were leased when the node
        // stopped, and their lease ended with it: they go where an expired lease would
        // (the dead-letter queue), not out for one delivery more than `max_deliveries`.
        let mut exhausted: Vec<(Option<Arc<str>>, Vec<Slot>)> = Vec::new();
        for q in queues.values_mut() {
            let mut moved = Moved::default();
            q.reclaim_restored(&mut cleanup, &mut moved);
            if !moved.dead.is_empty() {
                exhausted.push((q.dead_letter.clone(), moved.dead));
            }
        }
        // As every move does, they land once the commit below is durable.
        let mut landing: Vec<(Arc<str>, u64, Slot)> = Vec::new();
        for (target, dead) in exhausted {
            match target.as_deref().and_then(|t| queues.get_mut(t)) {
                Some(q) => {
                    let placed = q.reserve_moved(dead, now, &mut cleanup, &mut Effects::default());
                    landing.extend(placed.into_iter().map(|(seq, s)| (q.name.clone(), seq, s)));
                }
                None => {
                    for slot in dead {
                        slot.msg.release(&mut cleanup);
                    }
                }
            }
        }
        let mut dedup = Dedup::default();
        let mut dedup_rows: Vec<(String, DedupRecord)> = Vec::new();
        for (key, value) in dedup_rows_stored {
            match serde_json::from_slice::<DedupRecord>(&value) {
                Ok(r) if r.expires_ms > now => dedup_rows.push((key, r)),
                _ => cleanup.push(Op::DeleteRecord {
                    table: RecordTable::Dedup,
                    key,
                }),
            }
        }
        dedup_rows.sort_by_key(|(_, r)| r.expires_ms);
        for (key, r) in dedup_rows {
            last_msg_id = last_msg_id.max(r.id);
            dedup.finish(key, r);
        }
        // Ids and sequence numbers never go back, even if the clock does: start above
        // every id the last run may have handed out (the floor it last saved plus a margin
        // wider than what it can allocate between two saves), and save the new floor first.
        let floor = last_msg_id
            .max(stored_floor.saturating_add(ID_MARGIN))
            .max(now.saturating_mul(1024));
        last_msg_id = floor;
        for q in queues.values_mut() {
            q.lift_seq(floor);
        }
        cleanup.push(Op::PutRecord {
            table: RecordTable::Meta,
            key: ID_FLOOR_KEY.into(),
            value: floor.to_le_bytes().to_vec(),
        });
        if cleanup.len() > 1 {
            tracing::info!(
                ops = cleanup.len(),
                "removing orphaned records left by an unclean stop"
            );
        }
        store.commit(&cleanup)?;
        for queue in vanished {
            remove_stored(&*store, &queue)?;
        }
        for (name, seq, slot) in landing {
            if let Some(q) = queues.get_mut(&name) {
                q.land(seq, slot, false, &mut Vec::new());
            }
        }
        let spill = spill_of(Arc::downgrade(&store), &config, &memory);
        for q in queues.values_mut() {
            q.set_spill(spill.clone());
        }
        if memory.used() > memory.max() {
            // Nothing stored is dropped for it: publishes are refused until consumers
            // bring the node back under its cap.
            tracing::warn!(
                used = memory.used(),
                max = memory.max(),
                "the restored queues take more memory than max_memory_bytes allows"
            );
        }
        let queues = queues
            .into_iter()
            .map(|(name, q)| {
                (
                    name,
                    Arc::new(QueueCell {
                        state: Mutex::new(q),
                        notify: Notify::new(),
                    }),
                )
            })
            .collect();
        let committer = Committer::start(store.clone());
        let store: Arc<dyn QueueStore> = store;
        Ok(Broker {
            inner: Arc::new(Inner {
                config,
                committer,
                registry: RwLock::new(registry),
                queues: RwLock::new(queues),
                dedup: Mutex::new(dedup),
                last_msg_id: AtomicU64::new(last_msg_id),
                admin: tokio::sync::Mutex::new(()),
                counters: Counters::default(),
                live: Arc::default(),
                live_counters: LiveCounters::default(),
                saved_floor: AtomicU64::new(last_msg_id),
                memory,
                disk,
                bodies,
                store: Arc::downgrade(&store),
                pinned: Mutex::new(pinned),
            }),
        })
    }

    /// Stops the broker for good: waits until the committer has written what is queued
    /// and has closed the store, so that the store (its file) can be opened again at once.
    /// Merely dropping the last handle lets the commit thread finish on its own, later,
    /// and reopening the file before that fails (redb: "Database already open").
    ///
    /// Every other handle must be gone: if a clone of this broker still lives, this one is
    /// given back untouched as `Err`. Clones of its [`Committer`] (see
    /// [`Broker::committer`]) must be dropped too, or this waits for them. Blocks the
    /// calling thread until then, which is at most the time of one commit.
    pub fn shutdown(self) -> Result<(), Broker> {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => {
                inner.committer.join();
                Ok(())
            }
            Err(inner) => Err(Broker { inner }),
        }
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    pub fn committer(&self) -> &Committer {
        &self.inner.committer
    }

    fn store(&self) -> Result<Arc<dyn QueueStore>, BrokerError> {
        self.inner
            .store
            .upgrade()
            .ok_or_else(|| BrokerError::Unavailable("the store is closed".into()))
    }

    fn queue(&self, name: &str) -> Option<Arc<QueueCell>> {
        read(&self.inner.queues).get(name).cloned()
    }

    /// Is there a queue named `name` (an inbox, a declared queue, or a dead-letter queue)?
    pub fn has_queue(&self, name: &str) -> bool {
        read(&self.inner.queues).contains_key(name)
    }

    fn alloc_msg_id(&self, now: u64) -> u64 {
        let mut cur = self.inner.last_msg_id.load(Ordering::Relaxed);
        loop {
            let next = queue::next_id(cur, now);
            match self.inner.last_msg_id.compare_exchange_weak(
                cur,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(actual) => cur = actual,
            }
        }
    }

    // ----- publishing -------------------------------------------------------------------

    /// Publishes a message into every matching inbox (every inbox for a broadcast) and
    /// returns once it is durable in all of them.
    pub async fn publish(&self, p: Publish, now: u64) -> Result<Published, BrokerError> {
        self.publish_start(p, now)?.await
    }

    /// Starts a publish: routes it, reserves its places and submits its commit before
    /// returning; the ticket resolves once it is durable. Publishes started one after
    /// another are committed, made visible to consumers and answered in that order, so a
    /// connection that pipelines its messages keeps their order. The outcome does not
    /// depend on the ticket being awaited.
    pub fn publish_start(&self, p: Publish, now: u64) -> Result<PublishTicket, BrokerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        Ok(
            match self.publish_then(p, now, move |r| drop(tx.send(r)))? {
                Sent::Now(r) => PublishTicket::ready(r),
                Sent::Later => PublishTicket(TicketState::Waiting(rx)),
            },
        )
    }

    /// [`Broker::publish_start`] without a ticket: `done` runs with the outcome, on the
    /// commit thread in commit order (keep it short: it holds up later commits), or
    /// [`Sent::Now`] gives the outcome at once (a duplicate's first outcome). Saves a
    /// task and a channel per message for callers that gather outcomes themselves.
    pub fn publish_then(
        &self,
        p: Publish,
        now: u64,
        done: impl FnOnce(Result<Published, BrokerError>) + Send + 'static,
    ) -> Result<Sent, BrokerError> {
        topic::validate_topic(&p.topic).map_err(|cause| BrokerError::InvalidTopic {
            topic: p.topic.clone(),
            cause,
        })?;
        let dedup_key = p.message_id.as_deref().map(|m| dedup::key(&p.sender, m));
        if let Some(key) = &dedup_key {
            if let Some(first) = self.dedup_start(key, now)? {
                return Ok(Sent::Now(Ok(first)));
            }
        }
        let (prepared, ops) = match self.prepare(&p, dedup_key.as_deref(), now) {
            Ok(x) => x,
            Err(e) => {
                if let Some(key) = &dedup_key {
                    lock(&self.inner.dedup).abort(key);
                }
                return Err(e);
            }
        };
        let broker = self.clone();
        self.inner.committer.submit(
            ops,
            Box::new(move |r| {
                let out = broker.finish_publish(prepared, dedup_key, r.clone(), now);
                // Let go of the broker before answering: whoever is answered may be about to
                // shut it down, which needs the last handle.
                drop(broker);
                done(out);
            }),
        );
        Ok(Sent::Later)
    }

    /// Starts the dedup of a publish under `key`: the first publish's answer if this is a
    /// retry within the window, `DuplicateInFlight` while the first is under way, or
    /// `None` (the key is then in flight until finished or aborted).
    fn dedup_start(&self, key: &str, now: u64) -> Result<Option<Published>, BrokerError> {
        let mut d = lock(&self.inner.dedup);
        match d.get(key, now) {
            Some(dedup::State::InFlight) => Err(BrokerError::DuplicateInFlight),
            Some(dedup::State::Done(r)) => {
                self.inner
                    .counters
                    .duplicates
                    .fetch_add(1, Ordering::Relaxed);
                Ok(Some(Published {
                    id: r.id,
                    delivered_to: r.delivered_to,
                    duplicate: true,
                }))
            }
            None => {
                d.begin(key.to_owned());
                Ok(None)
            }
        }
    }

    /// For an engine that keeps messages elsewhere (a cluster's): starts the dedup of `p`
    /// (if it has a `message_id`). `Some` is the first publish's answer, to give again;
    /// after `None`, call [`Broker::dedup_end`] with the outcome.
    pub fn dedup_begin(&self, p: &Publish, now: u64) -> Result<Option<Published>, BrokerError> {
        match &p.message_id {
            Some(m) => self.dedup_start(&dedup::key(&p.sender, m), now),
            None => Ok(None),
        }
    }

    /// Ends what [`Broker::dedup_begin`] started: remembers a publish's answer for the
    /// window (in this node's store too, so a retry after a restart is still known), or
    /// forgets a publish that failed.
    /// The record kept, with its key (for a cluster to tell the other nodes).
    pub async fn dedup_end(
        &self,
        p: &Publish,
        outcome: Option<&Published>,
        now: u64,
    ) -> Option<(String, DedupRecord)> {
        let m = p.message_id.as_ref()?;
        let key = dedup::key(&p.sender, m);
        let Some(first) = outcome else {
            lock(&self.inner.dedup).abort(&key);
            return None;
        };
        let rec = DedupRecord {
            id: first.id,
            delivered_to: first.delivered_to,
            expires_ms: now + self.inner.config.dedup_window_ms,
        };
        let op = Op::PutRecord {
            table: RecordTable::Dedup,
            key: key.clone(),
            value: serde_json::to_vec(&rec).unwrap_or_default(),
        };
        if let Err(e) = self.inner.committer.commit(vec![op]).await {
            tracing::warn!(cause = %e, "a dedup record was not stored; a retry after a restart would be taken again");
        }
        lock(&self.inner.dedup).finish(key.clone(), rec);
        Some((key, rec))
    }

    /// A publish's answer another node of the cluster kept: a retry reaching this node
    /// within the window gets it too (unless this node knows the key already).
    pub fn dedup_learn(&self, key: String, rec: DedupRecord, now: u64) {
        if rec.expires_ms <= now {
            return;
        }
        let mut d = lock(&self.inner.dedup);
        if d.get(&key, now).is_none() {
            d.finish(key, rec);
        }
    }

    /// Routes, reserves places and builds the store ops of a publish.
    fn prepare(
        &self,
        p: &Publish,
        dedup_key: Option<&str>,
        now: u64,
    ) -> Result<(Prepared, Vec<Op>), BrokerError> {
        let (id, reserved) = self.reserve_places(p, now)?;
        Ok(self.build_publish(p, id, reserved, dedup_key, now))
    }

    /// A queue's limits, with the node's defaults where `s` leaves them open.
    pub fn resolve_limits(&self, s: &LimitSettings) -> Limits {
        resolve(s, &self.inner.config)
    }

    /// The queues a publish goes to: the one it names, every inbox (a broadcast), or those
    /// whose bindings match its topic.
    pub fn targets(&self, p: &Publish) -> Result<Vec<Arc<str>>, BrokerError> {
        let reg = read(&self.inner.registry);
        Ok(if let Some(q) = &p.queue {
            match read(&self.inner.queues).get_key_value(q.as_str()) {
                Some((name, _)) => vec![name.clone()],
                None => return Err(BrokerError::UnknownQueue(q.clone())),
            }
        } else if p.broadcast {
            reg.inboxes.clone()
        } else {
            let mut out = Vec::new();
            reg.trie.matches(&p.topic, &mut out);
            out
        })
    }

    /// Routes a publish and reserves its place in every target queue: all or none.
    #[allow(clippy::type_complexity)]
    fn reserve_places(
        &self,
        p: &Publish,
        now: u64,
    ) -> Result<(u64, Vec<(Arc<QueueCell>, u64)>), BrokerError> {
        let targets = self.targets(p)?;
        // Queued messages are indexed in memory (each entry, each record): a node-wide cap
        // keeps that bounded (bodies are in the store, and cached within the same cap). Checked first, so that a flood the node refuses
        // costs no queue lock; given back as entries and messages go.
        let needed = if targets.is_empty() {
            0
        } else {
            footprint::index_bytes(targets.len())
        };
        if let Some(err) = self.disk_full() {
            self.inner
                .counters
                .rejected_full
                .fetch_add(1, Ordering::Relaxed);
            return Err(err);
        }
        if let Err(full) = self.inner.memory.try_add(needed) {
            self.inner
                .counters
                .rejected_full
                .fetch_add(1, Ordering::Relaxed);
            return Err(BrokerError::NodeFull {
                used: full.used,
                needed,
                max: full.max,
            });
        }
        let id = self.alloc_msg_id(now);
        let mut reserved: Vec<(Arc<QueueCell>, u64)> = Vec::with_capacity(targets.len());
        let mut full = Vec::new();
        for name in &targets {
            let Some(cell) = self.queue(name) else {
                continue;
            };
            let r = lock(&cell.state).reserve(now);
            match r {
                Ok(seq) => reserved.push((cell, seq)),
                Err(()) => full.push(name.to_string()),
            }
        }
        if !full.is_empty() {
            // Nothing was dropped or enqueued anywhere: a refused publish changes nothing.
            for (cell, seq) in &reserved {
                lock(&cell.state).unreserve(*seq, false);
            }
            self.inner.memory.sub(needed);
            self.inner
                .counters
                .rejected_full
                .fetch_add(1, Ordering::Relaxed);
            return Err(BrokerError::QueueFull { queues: full });
        }
        if reserved.len() < targets.len() {
            // Queues deleted since routing: count only the places taken.
            let taken = if reserved.is_empty() {
                0
            } else {
                footprint::index_bytes(reserved.len())
            };
            self.inner.memory.sub(needed - taken);
        }
        Ok((id, reserved))
    }

    /// Makes room where the overflow policy drops, and builds the store ops of a publish
    /// whose places are reserved.
    fn build_publish(
        &self,
        p: &Publish,
        id: u64,
        reserved: Vec<(Arc<QueueCell>, u64)>,
        dedup_key: Option<&str>,
        now: u64,
    ) -> (Prepared, Vec<Op>) {
        let mut ops = Vec::with_capacity(reserved.len() + 2);
        let mut fx = Effects::default();
        // Every queue accepted: drop-oldest queues now drop what they must, durably in the
        // same commit as the message.
        for (cell, _) in &reserved {
            let mut q = lock(&cell.state);
            if q.over_length() {
                // What is dropped must be in memory; failing that, the queue stays over
                // its length until consumers bring it back.
                let _ = self.page_in(&mut q, PAGE_IN);
            }
            q.make_room(&mut ops, &mut fx);
        }
        let data = Arc::new(p.stored(now));
        let delivered_to = reserved.len() as u64;
        if !reserved.is_empty() {
            ops.push(Op::PutMessage {
                id,
                msg: data.clone(),
            });
            for (cell, seq) in &reserved {
                let name = lock(&cell.state).name.clone();
                ops.push(Op::PutEntry {
                    queue: name,
                    seq: *seq,
                    entry: trunkline_store::StoredEntry {
                        msg_id: id,
                        delivery_count: 0,
                    },
                });
            }
        }
        if let Some(key) = dedup_key {
            let rec = DedupRecord {
                id,
                delivered_to,
                expires_ms: now + self.inner.config.dedup_window_ms,
            };
            ops.push(Op::PutRecord {
                table: RecordTable::Dedup,
                key: key.to_owned(),
                value: serde_json::to_vec(&rec).unwrap_or_default(),
            });
        }
        let live = p.queue.is_none();
        (
            Prepared {
                id,
                data,
                reserved,
                fx,
                live,
            },
            ops,
        )
    }

    /// Publishes several messages atomically: one commit holds them all, or, if any is
    /// refused (a full queue, an unknown queue, a bad topic), none is published. They are
    /// made visible in order. `message_id` dedup does not apply to batches.
    pub fn publish_batch_start(
        &self,
        ps: Vec<Publish>,
        now: u64,
    ) -> Result<BatchTicket, BrokerError> {
        for p in &ps {
            topic::validate_topic(&p.topic).map_err(|cause| BrokerError::InvalidTopic {
                topic: p.topic.clone(),
                cause,
            })?;
            if p.message_id.is_some() {
                return Err(BrokerError::InvalidArgument(
                    "message_id is not supported in a batch".into(),
                ));
            }
        }
        let mut places = Vec::with_capacity(ps.len());
        for p in &ps {
            match self.reserve_places(p, now) {
                Ok(x) => places.push(x),
                Err(e) => {
                    for (_, reserved) in places {
                        if !reserved.is_empty() {
                            self.inner
                                .memory
                                .sub(footprint::index_bytes(reserved.len()));
                        }
                        for (cell, seq) in reserved {
                            lock(&cell.state).unreserve(seq, false);
                        }
                    }
                    return Err(e);
                }
            }
        }
        let mut ops = Vec::new();
        let mut prepared = Vec::with_capacity(ps.len());
        for (p, (id, reserved)) in ps.iter().zip(places) {
            let (prep, o) = self.build_publish(p, id, reserved, None, now);
            ops.extend(o);
            prepared.push(prep);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let broker = self.clone();
        self.inner.committer.submit(
            ops,
            Box::new(move |r| {
                let out: Result<Vec<Published>, BrokerError> = prepared
                    .into_iter()
                    .map(|prep| broker.finish_publish(prep, None, r.clone(), now))
                    .collect();
                drop(broker);
                let _ = tx.send(out);
            }),
        );
        Ok(BatchTicket(rx))
    }

    /// Runs on the commit thread, in commit order: makes the message visible (or gives
    /// its places back), feeds live subscribers, settles the dedup key.
    fn finish_publish(
        &self,
        prep: Prepared,
        dedup_key: Option<String>,
        committed: Result<(), trunkline_store::CommitError>,
        now: u64,
    ) -> Result<Published, BrokerError> {
        let delivered_to = prep.reserved.len() as u64;
        // Its entries and the message were counted when the places were reserved (a failed
        // commit gives them back as it releases each place).
        let msg = Msg::counted(
            prep.id,
            prep.data.clone(),
            delivered_to as u32,
            Some(self.inner.memory.clone()),
        );
        let places = prep
            .reserved
            .into_iter()
            .map(|(cell, seq)| Place {
                cell,
                seq,
                slot: Slot {
                    msg: msg.clone(),
                    delivery_count: 0,
                },
                back: false,
            })
            .collect();
        self.land(places, committed.is_ok());
        if let Some(key) = dedup_key {
            let mut d = lock(&self.inner.dedup);
            match &committed {
                Ok(()) => d.finish(
                    key,
                    DedupRecord {
                        id: prep.id,
                        delivered_to,
                        expires_ms: now + self.inner.config.dedup_window_ms,
                    },
                ),
                Err(_) => d.abort(&key),
            }
        }
        committed?;
        if prep.live {
            self.fan_out_live(LiveMessage {
                id: prep.id,
                data: prep.data,
            });
        }
        let c = &self.inner.counters;
        c.published.fetch_add(1, Ordering::Relaxed);
        c.enqueued.fetch_add(delivered_to, Ordering::Relaxed);
        c.dropped_overflow
            .fetch_add(prep.fx.dropped, Ordering::Relaxed);
        Ok(Published {
            id: prep.id,
            delivered_to,
            duplicate: false,
        })
    }

    /// Hands a message made durable elsewhere (by a cluster's engine) to this node's live
    /// subscribers.
    pub fn publish_live(&self, id: u64, data: Arc<StoredMessage>) {
        self.fan_out_live(LiveMessage { id, data });
    }

    /// Hands a committed message to matching live subscribers (none are waited for).
    fn fan_out_live(&self, msg: LiveMessage) {
        let live = read(&self.inner.live);
        if live.is_empty() {
            return;
        }
        let (sent, missed) = live.publish(msg.id, &msg.data);
        let c = &self.inner.live_counters;
        c.delivered.fetch_add(sent, Ordering::Relaxed);
        c.missed.fetch_add(missed, Ordering::Relaxed);
    }

    /// Subscribes to every message published from now on to a topic matching `pattern`,
    /// without storing anything. At most `capacity` messages wait for the subscriber; past
    /// that it misses messages and [`LiveSubscription::lagged`] turns true.
    ///
    /// For a client (`reader`), a wider pattern than it may read is narrowed: it gets
    /// only messages its current subscription patterns allow too. `None` subscribes the
    /// node itself, unfiltered: never on behalf of a client.
    pub fn subscribe_live(
        &self,
        reader: Option<&Principal>,
        pattern: &str,
        capacity: usize,
    ) -> Result<LiveSubscription, BrokerError> {
        topic::validate_pattern(pattern).map_err(|cause| BrokerError::InvalidPattern {
            pattern: pattern.to_owned(),
            cause,
        })?;
        if let Some(r) = reader {
            r.access()?;
        }
        let live = &self.inner.live;
        Ok(live::subscribe(
            live,
            pattern.to_owned(),
            capacity,
            reader.cloned(),
        ))
    }

    /// Live subscriptions open now.
    pub fn live_subscriptions(&self) -> usize {
        read(&self.inner.live).len()
    }

    pub fn live_counters(&self) -> &LiveCounters {
        &self.inner.live_counters
    }

    // ----- consuming --------------------------------------------------------------------

    /// Takes up to `opts.max` messages from `queue`, which `who` must be allowed to read
    /// ([`BrokerError::Forbidden`] otherwise, [`BrokerError::Revoked`] once its client is
    /// gone). Returns once the removal (auto-ack) or the lease's delivery count is durable.
    ///
    /// Leases of `queue` that ran out are ended first: those messages are back at their
    /// place (or in the dead-letter queue) once that is durable, and this receive may take
    /// them then.
    pub async fn receive(
        &self,
        who: &Principal,
        queue: &str,
        opts: ReceiveOptions,
        now: u64,
    ) -> Result<Vec<Delivery>, BrokerError> {
        who.check_read(Target::Queue(queue))?;
        let cell = self
            .queue(queue)
            .ok_or_else(|| BrokerError::UnknownQueue(queue.to_owned()))?;
        let max = opts.max.min(self.inner.config.max_receive);
        let mut fx = Effects::default();
        // Leases that ran out go back to their place (or on to the dead-letter queue) first,
        // deliverable once that is durable like every move; then this receive takes what is
        // ready, them included. What only goes away shares the take's commit.
        let (mut ops, mut moved) = (Vec::new(), Moved::default());
        let target = {
            let mut q = lock(&cell.state);
            q.reclaim(now, &mut ops, &mut moved);
            q.dead_letter.clone()
        };
        let places = self.place_moved(&cell, moved, target, now, &mut ops, &mut fx);
        if !places.is_empty() {
            self.commit_then_land(std::mem::take(&mut ops), places)
                .await?;
        }
        let mut worn = Moved::default();
        let (taken, target) = {
            let mut q = lock(&cell.state);
            let seqs = self.page_in(&mut q, max)?;
            q.reclaim_exhausted(&seqs, &mut ops, &mut worn);
            let taken = q.take(now, max, opts.lease_ms, &mut ops, &mut fx);
            (taken, q.dead_letter.clone())
        };
        // Entries brought back already delivered `max_deliveries` times move on to the
        // dead-letter queue in the take's commit.
        let places = self.place_moved(&cell, worn, target, now, &mut ops, &mut fx);
        // What is held is taken now (the cache may let it go any time); bodies let go are
        // read back before the take's commit (which may delete them), with no await in
        // between, so that the commit is submitted even if this caller goes away. The
        // reads are positioned reads, mostly from the page cache; they block this worker
        // while they last.
        let mut held: Vec<Option<Arc<StoredMessage>>> =
            taken.iter().map(|t| t.slot.msg.held()).collect();
        let read = self.read_back(&taken, &mut held);
        self.commit_then_land(ops, places).await?;
        let c = &self.inner.counters;
        c.delivered.fetch_add(taken.len() as u64, Ordering::Relaxed);
        c.expired.fetch_add(fx.expired, Ordering::Relaxed);
        c.dropped_overflow.fetch_add(fx.dropped, Ordering::Relaxed);
        read?;
        taken
            .into_iter()
            .zip(held)
            .map(|(t, data)| {
                let data = data.ok_or_else(|| {
                    BrokerError::Unavailable(format!(
                        "message {} is missing from the store",
                        t.slot.msg.id
                    ))
                })?;
                Ok(Delivery {
                    receipt: opts
                        .lease_ms
                        .map(|_| format!("{queue}/{}/{}", t.seq, t.slot.delivery_count)),
                    delivery_count: t.slot.delivery_count,
                    data,
                    id: t.slot.msg.id,
                })
            })
            .collect()
    }

    /// Reads back from the store the bodies of `taken` that `held` lacks, and holds them
    /// again.
    fn read_back(
        &self,
        taken: &[queue::Taken],
        held: &mut [Option<Arc<StoredMessage>>],
    ) -> Result<(), BrokerError> {
        for (t, h) in taken.iter().zip(held.iter_mut()) {
            if h.is_some() {
                continue;
            }
            let m = &t.slot.msg;
            let data = self
                .store()?
                .read_message(m.id)
                .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            let Some(data) = data else {
                tracing::error!(id = m.id, "a queued message is missing from the store");
                continue;
            };
            m.hold(data.clone());
            self.inner.bodies.admit(m);
            *h = Some(data);
        }
        Ok(())
    }

    /// Bytes of message bodies held in memory, and the most that may be now.
    pub fn body_cache(&self) -> (u64, u64) {
        (self.inner.bodies.used(), self.inner.bodies.limit())
    }

    /// A handle to wait on for new messages in `queue` (for long polling). Create the
    /// `notified()` future before trying to receive, so that no wake-up is missed.
    pub fn waiter(&self, queue: &str) -> Option<Arc<impl WaitHandle>> {
        self.queue(queue)
    }

    /// The long poll: receives from `queue` as [`Broker::receive`] does, and while there is
    /// nothing to take, waits for messages to arrive (a publish, a requeue; and looks again
    /// every second, for leases that ended) until `deadline`, or until `stop`. `now` reads
    /// the clock (milliseconds since the epoch) at each attempt. Empty at the deadline or
    /// the stop, or at once if the queue is gone.
    pub async fn receive_wait(
        &self,
        who: &Principal,
        queue: &str,
        opts: ReceiveOptions,
        deadline: Option<tokio::time::Instant>,
        stop: &tokio_util::sync::CancellationToken,
        now: impl Fn() -> u64,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let waiter = self.waiter(queue);
        loop {
            let notified = waiter.as_ref().map(|w| w.notified());
            let mut notified = std::pin::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            if stop.is_cancelled() {
                return Ok(Vec::new());
            }
            let got = self.receive(who, queue, opts, now()).await?;
            let past = deadline.is_some_and(|d| d <= tokio::time::Instant::now());
            let Some(n) = notified
                .as_mut()
                .as_pin_mut()
                .filter(|_| got.is_empty() && !past)
            else {
                return Ok(got);
            };
            let until = deadline
                .map_or(tokio::time::Instant::now() + Duration::from_secs(1), |d| {
                    d.min(tokio::time::Instant::now() + Duration::from_secs(1))
                });
            tokio::select! {
                _ = n => {}
                _ = tokio::time::sleep_until(until) => {}
                _ = stop.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    /// Where what a change took out of `cell` lands once the change is durable: back at
    /// its place in `cell`, or at a new place in the dead-letter queue `target` (gone for
    /// good if that queue is gone).
    fn place_moved(
        &self,
        cell: &Arc<QueueCell>,
        moved: Moved,
        target: Option<Arc<str>>,
        now: u64,
        ops: &mut Vec<Op>,
        fx: &mut Effects,
    ) -> Vec<Place> {
        let mut places: Vec<Place> = moved
            .back
            .into_iter()
            .map(|(seq, slot)| Place {
                cell: cell.clone(),
                seq,
                slot,
                back: true,
            })
            .collect();
        if moved.dead.is_empty() {
            return places;
        }
        let n = moved.dead.len() as u64;
        match target.and_then(|t| self.queue(&t)) {
            Some(dead) => {
                let placed = lock(&dead.state).reserve_moved(moved.dead, now, ops, fx);
                places.extend(placed.into_iter().map(|(seq, slot)| Place {
                    cell: dead.clone(),
                    seq,
                    slot,
                    back: false,
                }));
            }
            None => {
                for slot in moved.dead {
                    slot.msg.release(ops);
                }
            }
        }
        self.inner
            .counters
            .dead_lettered
            .fetch_add(n, Ordering::Relaxed);
        places
    }

    /// Commits `ops` and then, on the commit thread in commit order, lands `places`
    /// ([`Broker::land`]). Every change that puts a message where consumers can take it
    /// (a publish, a requeue, a dead-lettering) goes this way, so that nobody takes a
    /// message from a place before the change that put it there is durable. Submits before
    /// returning: the outcome does not depend on the future being awaited, which resolves
    /// once the places have landed.
    fn commit_then_land(
        &self,
        ops: Vec<Op>,
        places: Vec<Place>,
    ) -> impl std::future::Future<Output = Result<(), BrokerError>> {
        let answer = (!ops.is_empty() || !places.is_empty()).then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let broker = self.clone();
            self.inner.committer.submit(
                ops,
                Box::new(move |r| {
                    broker.land(places, r.is_ok());
                    // As in a publish: whoever is answered may be about to shut it down.
                    drop(broker);
                    let _ = tx.send(r.clone());
                }),
            );
            rx
        });
        async move {
            if let Some(rx) = answer {
                rx.await
                    .unwrap_or(Err(trunkline_store::CommitError::Stopped))?;
            }
            Ok(())
        }
    }

    /// Runs on the commit thread, in commit order, once the change that reserved `places`
    /// is committed: makes each message deliverable at its place and then wakes the
    /// queue's waiters (long polls, STOMP and WebSocket subscriptions). If the commit
    /// failed, nothing lands and the places are given back: the store still holds what it
    /// held before the change, which a restart restores, and no later commit is made.
    fn land(&self, places: Vec<Place>, committed: bool) {
        let mut removed = Vec::new();
        for Place {
            cell,
            seq,
            slot,
            back,
        } in places
        {
            if !committed {
                lock(&cell.state).unreserve(seq, back);
                // Not held in memory any more; the ops this would write are not needed,
                // nothing is written after a failed commit.
                slot.msg.release(&mut Vec::new());
                continue;
            }
            let landed = lock(&cell.state).land(seq, slot.clone(), back, &mut removed);
            match landed {
                Landed::Ready => self.inner.bodies.admit(&slot.msg),
                Landed::Stored(slot) => self.stash(slot.msg),
                Landed::Removed => continue,
            }
            cell.notify.notify_waiters();
        }
        if !removed.is_empty() {
            // Landed in a queue deleted meanwhile: its entry goes too (were it left, the
            // next start would remove it with the queue).
            self.inner.committer.submit(removed, Box::new(|_| {}));
        }
    }

    /// Lets go of a message whose entry landed in the store only: its memory (the entry's,
    /// and the message's unless another entry holds it) is no longer counted.
    fn stash(&self, msg: Arc<Msg>) {
        let memory = &self.inner.memory;
        memory.sub(footprint::ENTRY_BYTES);
        if msg.refs() > 1 {
            lock(&self.inner.pinned).entry(msg.id).or_insert((msg, 0)).1 += 1;
        } else if msg.account().is_some() {
            memory.sub(footprint::MESSAGE_BYTES);
        }
    }

    /// The message of an entry brought back from the store, counted again.
    fn unstash(&self, p: &trunkline_store::Paged) -> Arc<Msg> {
        let id = p.entry.msg_id;
        let memory = &self.inner.memory;
        {
            let mut pinned = lock(&self.inner.pinned);
            if let Some((msg, n)) = pinned.get_mut(&id) {
                let msg = msg.clone();
                *n -= 1;
                if *n == 0 {
                    pinned.remove(&id);
                }
                memory.add(footprint::ENTRY_BYTES);
                return msg;
            }
        }
        let msg = Msg::restored(id, p.meta, Some(memory.clone()));
        memory.add(footprint::MESSAGE_BYTES);
        msg.add_ref();
        if p.others > 0 {
            // Entries of other queues still on disk refer to it: held for them.
            msg.add_stored_refs(p.others);
            lock(&self.inner.pinned).insert(id, (msg.clone(), p.others));
        }
        msg
    }

    /// Brings entries of a spilled queue back from the store until `want` are ready in
    /// memory (or none is left there), and stops spilling it once none is. A positioned
    /// read of the log's index files (or frames), under the queue's lock: it blocks this
    /// worker while it lasts, once per segment's worth of entries.
    fn page_in(&self, q: &mut Queue, want: usize) -> Result<Vec<u64>, BrokerError> {
        // Entries spilled as the store replayed the log at start may have been leased
        // before: those delivered `max_deliveries` times are the caller's to move on.
        let mut worn = Vec::new();
        while q.wants_page(want) {
            let paged = self
                .store()?
                .page_in(&q.name, want.max(PAGE_IN))
                .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            if paged.is_empty() {
                break;
            }
            for p in paged {
                let slot = Slot {
                    msg: self.unstash(&p),
                    delivery_count: p.entry.delivery_count,
                };
                if p.entry.delivery_count >= q.limits.max_deliveries {
                    worn.push(p.seq);
                }
                q.bring_back(p.seq, slot);
            }
        }
        q.settle_cold();
        Ok(worn)
    }

    /// Acks or nacks leased deliveries, by their receipts, of queues `who` may read.
    ///
    /// Giving deliveries back (`Nack { requeue: true }`) also works for a principal revoked
    /// since (a session closing because its client's secret was rotated returns what it
    /// held at once); anything else needs a principal that is still valid.
    ///
    /// A nacked message is deliverable again (at its place, or in the dead-letter queue)
    /// only once the settle is durable, just before it returns.
    pub async fn settle(
        &self,
        who: &Principal,
        receipts: &[String],
        how: Settle,
        now: u64,
    ) -> Result<Settled, BrokerError> {
        let access = match how {
            Settle::Nack { requeue: true } => who.last_access(),
            _ => who.access()?,
        };
        let mut ops = Vec::new();
        let mut fx = Effects::default();
        let mut out = Settled::default();
        let mut by_queue: HashMap<&str, Vec<(u64, u32, &String)>> = HashMap::new();
        for r in receipts {
            match parse_receipt(r) {
                Some((q, seq, count)) if access.may_read(Target::Queue(q)) => {
                    by_queue.entry(q).or_default().push((seq, count, r))
                }
                _ => out.unknown.push(r.clone()),
            }
        }
        let mut places = Vec::new();
        for (qname, items) in by_queue {
            let Some(cell) = self.queue(qname) else {
                out.unknown
                    .extend(items.into_iter().map(|(_, _, r)| r.clone()));
                continue;
            };
            let mut moved = Moved::default();
            let target = {
                let mut q = lock(&cell.state);
                for (seq, count, r) in items {
                    let (ack, requeue) = match how {
                        Settle::Ack => (true, false),
                        Settle::Nack { requeue } => (false, requeue),
                    };
                    if q.settle(seq, count, ack, requeue, &mut ops, &mut moved) {
                        out.done += 1;
                    } else {
                        out.unknown.push(r.clone());
                    }
                }
                q.dead_letter.clone()
            };
            places.extend(self.place_moved(&cell, moved, target, now, &mut ops, &mut fx));
        }
        self.commit_then_land(ops, places).await?;
        let counter = match how {
            Settle::Ack => &self.inner.counters.acked,
            Settle::Nack { .. } => &self.inner.counters.nacked,
        };
        counter.fetch_add(out.done, Ordering::Relaxed);
        self.inner
            .counters
            .dropped_overflow
            .fetch_add(fx.dropped, Ordering::Relaxed);
        Ok(out)
    }

    /// Housekeeping, run about once a second: ends expired leases, drops expired messages,
    /// forgets old dedup records. Returns once its changes are durable; the messages whose
    /// leases it ended are deliverable again (at their place, or in the dead-letter queue)
    /// from then, not before.
    pub async fn sweep(&self, now: u64) -> Result<(), BrokerError> {
        let cells: Vec<Arc<QueueCell>> = read(&self.inner.queues).values().cloned().collect();
        let mut ops = Vec::new();
        let mut fx = Effects::default();
        let mut places = Vec::new();
        for cell in cells {
            let mut moved = Moved::default();
            let target = {
                let mut q = lock(&cell.state);
                q.reclaim(now, &mut ops, &mut moved);
                q.expire(now, &mut ops, &mut fx);
                q.dead_letter.clone()
            };
            places.extend(self.place_moved(&cell, moved, target, now, &mut ops, &mut fx));
        }
        let last = self.inner.last_msg_id.load(Ordering::Relaxed);
        if last
            >= self
                .inner
                .saved_floor
                .load(Ordering::Relaxed)
                .saturating_add(ID_SAVE_EVERY)
        {
            self.inner.saved_floor.store(last, Ordering::Relaxed);
            ops.push(Op::PutRecord {
                table: RecordTable::Meta,
                key: ID_FLOOR_KEY.into(),
                value: last.to_le_bytes().to_vec(),
            });
        }
        let forgotten = lock(&self.inner.dedup).prune(now, self.inner.config.dedup_capacity);
        ops.extend(forgotten.into_iter().map(|key| Op::DeleteRecord {
            table: RecordTable::Dedup,
            key,
        }));
        self.inner
            .counters
            .expired
            .fetch_add(fx.expired, Ordering::Relaxed);
        self.inner
            .counters
            .dropped_overflow
            .fetch_add(fx.dropped, Ordering::Relaxed);
        self.commit_then_land(ops, places).await
    }

    /// The refusal of a publish when the store takes all the disk it may.
    fn disk_full(&self) -> Option<BrokerError> {
        let max = self.inner.config.max_disk_bytes?;
        let used = self.inner.disk.as_ref()?.load(Ordering::Relaxed);
        (used >= max).then_some(BrokerError::DiskFull { used, max })
    }

    /// Bytes the store takes on disk, and the most it may take (if it keeps count).
    pub fn disk_usage(&self) -> Option<(u64, u64)> {
        let used = self.inner.disk.as_ref()?.load(Ordering::Relaxed);
        Some((used, self.inner.config.max_disk_bytes?))
    }

    /// Depth of every queue.
    pub fn queue_depths(&self) -> Vec<QueueDepth> {
        let cells: Vec<Arc<QueueCell>> = read(&self.inner.queues).values().cloned().collect();
        cells
            .iter()
            .map(|c| {
                let q = lock(&c.state);
                QueueDepth {
                    name: q.name.clone(),
                    ready: q.ready_len(),
                    leased: q.leased_len(),
                }
            })
            .collect()
    }

    /// Removes queues `gone` with what they hold, committing `ops` with the removal.
    pub(crate) async fn remove_queues(
        &self,
        gone: &[String],
        mut ops: Vec<Op>,
    ) -> Result<(), BrokerError> {
        let mut cells = Vec::new();
        for name in gone {
            let cell = write(&self.inner.queues).remove(name.as_str());
            if let Some(cell) = cell {
                lock(&cell.state).purge(&mut ops);
                cell.notify.notify_waiters();
                cells.push(cell);
            }
        }
        self.commit_registry(ops).await?;
        // What they kept in the store only goes a page at a time, each page's removal
        // committed before the next is read, so that memory holds one page.
        for cell in cells {
            loop {
                let mut ops = Vec::new();
                {
                    let mut q = lock(&cell.state);
                    self.page_in(&mut q, PAGE_IN)?;
                    q.purge(&mut ops);
                }
                if ops.is_empty() {
                    break;
                }
                self.inner.committer.commit(ops).await?;
            }
        }
        Ok(())
    }

    /// Makes queues `qs` (just committed as existing) take messages.
    pub(crate) fn add_queues(&self, qs: impl IntoIterator<Item = Queue>) {
        let mut queues = write(&self.inner.queues);
        for mut q in qs {
            // A queue made again under an old name must not meet its old receipts.
            q.lift_seq(self.inner.last_msg_id.load(Ordering::Relaxed));
            q.set_spill(spill_of(
                self.inner.store.clone(),
                &self.inner.config,
                &self.inner.memory,
            ));
            queues.insert(
                q.name.clone(),
                Arc::new(QueueCell {
                    state: Mutex::new(q),
                    notify: Notify::new(),
                }),
            );
        }
    }

    /// Memory held by queued messages, as the node-wide cap counts it ([`footprint`]).
    pub fn memory_used(&self) -> u64 {
        self.inner.memory.used()
    }

    /// Remembered `message_id`s.
    pub fn dedup_len(&self) -> usize {
        lock(&self.inner.dedup).len()
    }
}

/// A publish routed and submitted, waiting for its commit.
struct Prepared {
    id: u64,
    data: Arc<StoredMessage>,
    reserved: Vec<(Arc<QueueCell>, u64)>,
    fx: Effects,
    /// Routed by topic (not point to point): live subscribers get it too.
    live: bool,
}

enum TicketState {
    Ready(Option<Result<Published, BrokerError>>),
    Waiting(tokio::sync::oneshot::Receiver<Result<Published, BrokerError>>),
}

/// The outcome of a batch started with [`Broker::publish_batch_start`].
pub struct BatchTicket(tokio::sync::oneshot::Receiver<Result<Vec<Published>, BrokerError>>);

impl BatchTicket {
    /// A ticket resolved by whoever holds the sender (another engine's batch).
    pub fn pending() -> (
        tokio::sync::oneshot::Sender<Result<Vec<Published>, BrokerError>>,
        BatchTicket,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (tx, BatchTicket(rx))
    }
}

impl std::future::Future for BatchTicket {
    type Output = Result<Vec<Published>, BrokerError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| {
            r.unwrap_or_else(|_| Err(BrokerError::Unavailable("the committer stopped".into())))
        })
    }
}

/// Whether [`Broker::publish_then`] will call back, or already knows the outcome.
#[derive(Debug)]
pub enum Sent {
    /// The callback runs once the publish is durable (or failed).
    Later,
    /// The outcome, known at once; the callback will not run.
    Now(Result<Published, BrokerError>),
}

/// The outcome of a publish started with [`Broker::publish_start`].
pub struct PublishTicket(TicketState);

impl PublishTicket {
    fn ready(r: Result<Published, BrokerError>) -> Self {
        PublishTicket(TicketState::Ready(Some(r)))
    }
}

impl std::future::Future for PublishTicket {
    type Output = Result<Published, BrokerError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.0 {
            TicketState::Ready(r) => std::task::Poll::Ready(r.take().unwrap_or_else(|| {
                Err(BrokerError::Unavailable("polled after completion".into()))
            })),
            TicketState::Waiting(rx) => std::pin::Pin::new(rx).poll(cx).map(|r| {
                r.unwrap_or_else(|_| Err(BrokerError::Unavailable("the committer stopped".into())))
            }),
        }
    }
}

/// Something to wait on for new messages.
pub trait WaitHandle: Send + Sync {
    fn notified(&self) -> tokio::sync::futures::Notified<'_>;
}

impl WaitHandle for QueueCell {
    fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

fn resolve(s: &LimitSettings, config: &BrokerConfig) -> Limits {
    let d = config.default_limits;
    Limits {
        max_length: s.max_length.unwrap_or(d.max_length),
        overflow: s.overflow.unwrap_or(d.overflow),
        max_deliveries: s.max_deliveries.unwrap_or(d.max_deliveries),
    }
}

/// Removes the entries `store` keeps on disk only of `queue`, a queue gone, a page at a
/// time. Their messages stay: a message kept on disk only may be another queue's too
/// (one that is no queue's stays on disk until a start with no queue spilled removes it;
/// see docs/storage-format.md).
fn remove_stored(store: &dyn QueueStore, queue: &str) -> Result<(), StoreError> {
    let name: Arc<str> = Arc::from(queue);
    let mut removed = 0usize;
    loop {
        let paged = store.page_in(queue, PAGE_IN)?;
        if paged.is_empty() {
            break;
        }
        removed += paged.len();
        let ops: Vec<Op> = paged
            .iter()
            .map(|p| Op::DeleteEntry {
                queue: name.clone(),
                seq: p.seq,
            })
            .collect();
        store.commit(&ops)?;
    }
    store.unspill(queue);
    tracing::info!(
        queue,
        removed,
        "removed the entries of a queue that is gone"
    );
    Ok(())
}

/// How a queue of this broker spills what passes its memory.
fn spill_of(
    store: std::sync::Weak<dyn QueueStore>,
    config: &BrokerConfig,
    memory: &Arc<footprint::Account>,
) -> Spill {
    Spill {
        store,
        hot_max: config.queue_memory_entries,
        memory: memory.clone(),
    }
}

pub(crate) fn client_queues(rec: &ClientRecord, config: &BrokerConfig) -> [Queue; 2] {
    let limits = resolve(&rec.inbox, config);
    let dead: Arc<str> = Arc::from(dead_name(&rec.client_id));
    [
        Queue::new(
            Arc::from(inbox_name(&rec.client_id)),
            limits,
            Some(dead.clone()),
        ),
        Queue::new(
            dead,
            Limits {
                overflow: Overflow::DropOldest,
                ..limits
            },
            None,
        ),
    ]
}

/// Where message `id` is in `msgs` (ordered by id): searched forward from `from` first,
/// widening the range twofold each step (ids a queue holds grow, and the next is usually
/// near), then in the whole.
fn find_msg(msgs: &[(u64, Arc<Msg>)], from: usize, id: u64) -> Option<usize> {
    let rest = msgs.get(from..).unwrap_or_default();
    if rest.first().is_some_and(|(first, _)| *first <= id) {
        let mut end = 1;
        while end < rest.len() && rest[end - 1].0 < id {
            end = (end * 2).min(rest.len());
        }
        return rest[..end]
            .binary_search_by_key(&id, |(i, _)| *i)
            .ok()
            .map(|i| from + i);
    }
    msgs.binary_search_by_key(&id, |(i, _)| *i).ok()
}

fn parse_receipt(r: &str) -> Option<(&str, u64, u32)> {
    let mut it = r.rsplitn(3, '/');
    let count = it.next()?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    let queue = it.next()?;
    Some((queue, seq, count))
}
