//! The relay (docs/relays.md): twins log in at `GET /relay` and exchange envelopes they
//! sign and seal; the relay checks each one and routes it without being able to read it.
//!
//! - [`Relay::route`]: the one check every envelope passes (its source is who sent it,
//!   its signature is its source twin's, it is current, it was not taken before, its
//!   sender is within its rate), then where it goes: the relay's own answer (a ping),
//!   a queue of this node (its destination's relays include this one), or another relay.
//! - Queues: an envelope for a session of this relay waits in a declared queue of its
//!   own, `rmb.<twin>` or `rmb.<twin>.<session hash>`, bounded in length (the oldest go
//!   first) and age, durable before anything is said of it; the session's connection
//!   takes from it in order, and acks what it wrote ([`session`]).
//! - [`forward`]: envelopes whose twin is reached through another relay go there, over a
//!   connection this relay logs in to with its own key.

pub mod forward;
pub mod session;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trunkline_broker::{Backend, LimitSettings, Overflow, Publish, QueueSpec};
use trunkline_client::peer::codes;
use trunkline_client::relay::{unix_now, Directory, Twin};
use trunkline_envelope::{Address, Envelope, Identity, Kind, Payload, PublicKey, ReplayWindow};

use crate::config::RelayConfig;
use crate::state::now_ms;

/// The relay's key file in the data directory.
pub const SEED_FILE: &str = "relay.seed";
/// What names the relay's queues begin with.
pub const QUEUE_PREFIX: &str = "rmb.";
/// The label a relay queue carries with its twin.
const TWIN_LABEL: &str = "relay.twin";
/// Envelopes remembered against replays, relay-wide (about 40 MiB when full; past it the
/// one expiring first is forgotten, and the destination's gateway still catches a replay).
const REPLAY_WINDOW: usize = 1 << 18;
/// Seconds of the rate window.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Twins whose rate is kept at once.
const RATE_TWINS: usize = 100_000;

/// Who is logged in on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Logged {
    Twin(Address),
    /// Another relay, by its name.
    Relay(String),
}

impl std::fmt::Display for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Logged::Twin(a) => write!(f, "{a}"),
            Logged::Relay(n) => write!(f, "relay:{n}"),
        }
    }
}

/// What happens to an envelope that is not routed.
#[derive(Debug)]
pub enum Refusal {
    /// Answer the sender with this error envelope (encoded).
    Answer(Vec<u8>),
    /// Drop it: nothing can be said to anyone (a replay, a forwarded envelope).
    Drop(&'static str),
    /// Not an envelope: close the connection.
    Close(String),
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct RelayCounters {
    pub routed_local: std::sync::atomic::AtomicU64,
    pub forwarded: std::sync::atomic::AtomicU64,
    pub delivered: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
    pub replays: std::sync::atomic::AtomicU64,
    pub connections: std::sync::atomic::AtomicU64,
}

/// What a connection has confirmed: envelopes are numbered from 1 as they arrive; the
/// relay tells the sender `{"stored": n}` once the first `n` are handled (stored and
/// synced, queued for another relay and synced, or refused). Handled out of order (a
/// refusal is at once, a store waits for its sync), confirmed in order.
#[derive(Debug)]
pub struct Acker {
    state: Mutex<(u64, std::collections::BTreeSet<u64>)>,
    tx: tokio::sync::watch::Sender<u64>,
}

impl Acker {
    pub fn new() -> (Arc<Acker>, tokio::sync::watch::Receiver<u64>) {
        let (tx, rx) = tokio::sync::watch::channel(0);
        (
            Arc::new(Acker {
                state: Mutex::new((0, std::collections::BTreeSet::new())),
                tx,
            }),
            rx,
        )
    }

    /// Envelope `seq` is handled.
    pub fn done(&self, seq: u64) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let (contiguous, ahead) = &mut *s;
        if seq == *contiguous + 1 {
            *contiguous = seq;
            while ahead.remove(&(*contiguous + 1)) {
                *contiguous += 1;
            }
            let _ = self.tx.send(*contiguous);
        } else if seq > *contiguous {
            ahead.insert(seq);
        }
    }
}

/// Envelope `seq` of a connection: confirmed when dropped (handled, however it went:
/// a store's callback holds it until the store is synced, and drops it even when the
/// store fails or is never attempted).
#[derive(Debug)]
pub struct Ack {
    pub seq: u64,
    pub acker: Arc<Acker>,
}

impl Drop for Ack {
    fn drop(&mut self) {
        self.acker.done(self.seq);
    }
}

/// Where twins are looked up.
enum Registry {
    Local(Arc<dyn Backend>),
    Remote(Directory),
}

/// Sent by a twin in the current window.
struct Rate {
    since: Instant,
    count: u64,
    bytes: u64,
}

/// A logged-in connection as the relay reaches it.
struct Attached {
    generation: u64,
    close: CancellationToken,
    /// The key it logged in with.
    key: PublicKey,
}

/// The relay of a node.
pub struct Relay {
    name: String,
    identity: Identity,
    broker: Arc<dyn Backend>,
    registry: Registry,
    config: RelayConfig,
    /// Other relays: name → login key.
    peers: HashMap<String, PublicKey>,
    attached: Mutex<HashMap<Logged, Attached>>,
    generation: std::sync::atomic::AtomicU64,
    /// Queue names by twin: the relay's queues that exist.
    queues: Mutex<HashMap<u32, HashSet<String>>>,
    window: Mutex<ReplayWindow>,
    rates: Mutex<HashMap<u32, Rate>>,
    /// Keys read from the local registry, with the claim they came from.
    keys: Mutex<HashMap<u32, (u64, PublicKey)>>,
    pub(crate) forward: forward::Forwarder,
    pub counters: RelayCounters,
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay key file {path}: {cause}")]
    Seed { path: String, cause: String },
    #[error("relay.peers: {0}")]
    Peers(String),
    #[error("relay.registry: {0}")]
    Registry(String),
}

/// The relay's identity: the seed in `dir`, made on first start.
fn identity(dir: &Path) -> Result<Identity, RelayError> {
    let path = dir.join(SEED_FILE);
    let err = |cause: String| RelayError::Seed {
        path: path.display().to_string(),
        cause,
    };
    match std::fs::read(&path) {
        Ok(b) => {
            let seed: [u8; 32] = b.try_into().map_err(|_| err("not 32 bytes".into()))?;
            Ok(Identity::from_seed(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Identity::generate().map_err(|e| err(e.to_string()))?;
            trunkline_store::fs::write_file(&trunkline_store::fs::RealFs, &path, &id.seed())
                .map_err(|e| err(e.to_string()))?;
            Ok(id)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

impl Relay {
    /// The relay of the node whose data directory is `dir`, named `name` unless the
    /// configuration names it.
    pub fn open(
        config: &RelayConfig,
        dir: &Path,
        default_name: String,
        broker: Arc<dyn Backend>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Relay>, RelayError> {
        let identity = identity(dir)?;
        let name = if config.name.is_empty() {
            default_name
        } else {
            config.name.clone()
        };
        let registry = if config.registry.is_empty() {
            Registry::Local(broker.clone())
        } else {
            Registry::Remote(
                Directory::new(&config.registry)
                    .map_err(|e| RelayError::Registry(e.to_string()))?,
            )
        };
        let mut peers = HashMap::new();
        for p in &config.peers {
            let key = PublicKey::from_text(&p.key)
                .map_err(|e| RelayError::Peers(format!("{}: {e}", p.name)))?;
            peers.insert(p.name.clone(), key);
        }
        let mut queues: HashMap<u32, HashSet<String>> = HashMap::new();
        for q in broker.list_queues() {
            if let Some(t) = q.labels.get(TWIN_LABEL).and_then(|t| t.parse().ok()) {
                queues.entry(t).or_default().insert(q.name);
            }
        }
        let relay = Arc::new_cyclic(|weak| Relay {
            forward: forward::Forwarder::new(weak.clone(), shutdown),
            name,
            identity,
            broker,
            registry,
            config: config.clone(),
            peers,
            attached: Mutex::new(HashMap::new()),
            generation: Default::default(),
            queues: Mutex::new(queues),
            window: Mutex::new(ReplayWindow::new(REPLAY_WINDOW)),
            rates: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            counters: RelayCounters::default(),
        });
        tracing::info!(relay = %relay.name, key = %relay.identity.public().to_text(), "relay ready");
        Ok(relay)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key(&self) -> PublicKey {
        self.identity.public()
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    pub fn broker(&self) -> &Arc<dyn Backend> {
        &self.broker
    }

    /// The login key of relay `name`, if it is one of this relay's peers.
    pub fn peer_key(&self, name: &str) -> Option<PublicKey> {
        self.peers.get(name).copied()
    }

    /// Twin `id` from the registry.
    pub async fn twin(&self, id: u32) -> Result<Option<Twin>, String> {
        match &self.registry {
            Registry::Local(b) => {
                let Some(t) = b.get_twin(id) else {
                    return Ok(None);
                };
                // A key read once per claim: reading one is a point decompression.
                let cached = self
                    .keys
                    .lock()
                    .ok()
                    .and_then(|k| k.get(&id).filter(|(u, _)| *u == t.updated).map(|x| x.1));
                let key = match cached {
                    Some(k) => k,
                    None => {
                        let Ok(k) = PublicKey::from_text(&t.key) else {
                            return Ok(None);
                        };
                        if let Ok(mut keys) = self.keys.lock() {
                            if keys.len() >= RATE_TWINS {
                                keys.clear();
                            }
                            keys.insert(id, (t.updated, k));
                        }
                        k
                    }
                };
                Ok(Some(Twin {
                    id: t.id,
                    key,
                    relays: t.relays,
                }))
            }
            Registry::Remote(d) => d.twin(id).await.map_err(|e| e.to_string()),
        }
    }

    /// Does twin `t` reach this relay (it lists it, or lists none)?
    fn is_ours(&self, t: &Twin) -> bool {
        t.relays.is_empty() || t.relays.iter().any(|r| r == &self.name)
    }

    /// Records `who` as logged in; ends the connection logged in as `who` before.
    pub fn attach(&self, who: &Logged, key: PublicKey, close: CancellationToken) -> u64 {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let old = self.attached.lock().ok().and_then(|mut a| {
            a.insert(
                who.clone(),
                Attached {
                    generation,
                    close,
                    key,
                },
            )
        });
        if let Some(old) = old {
            tracing::info!(who = %who, "relay: a newer connection replaces this one");
            old.close.cancel();
        }
        generation
    }

    /// Every `period`, ends the connections of twins whose key changed or who left the
    /// registry since they logged in, until `stop`.
    pub async fn watch(self: Arc<Self>, period: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let twins: Vec<(Logged, PublicKey)> = match self.attached.lock() {
                Ok(a) => a
                    .iter()
                    .filter(|(w, _)| matches!(w, Logged::Twin(_)))
                    .map(|(w, x)| (w.clone(), x.key))
                    .collect(),
                Err(_) => continue,
            };
            for (who, key) in twins {
                let Logged::Twin(a) = &who else { continue };
                let now = match self.twin(a.twin).await {
                    Ok(t) => t.map(|t| t.key),
                    // The registry cannot be read: nothing is known to have changed.
                    Err(_) => continue,
                };
                if now != Some(key) {
                    tracing::info!(who = %who, "relay: the twin's key changed; its connection ends");
                    if let Ok(m) = self.attached.lock() {
                        if let Some(x) = m.get(&who) {
                            x.close.cancel();
                        }
                    }
                }
            }
        }
    }

    /// Forgets `who`'s connection `generation` (not a newer one).
    pub fn detach(&self, who: &Logged, generation: u64) {
        if let Ok(mut a) = self.attached.lock() {
            if a.get(who).is_some_and(|x| x.generation == generation) {
                a.remove(who);
            }
        }
    }

    /// The queue of session `a`.
    pub fn queue_name(a: &Address) -> String {
        match &a.session {
            None => format!("{QUEUE_PREFIX}{}", a.twin),
            Some(s) => {
                let h = Sha256::digest(s.as_bytes());
                let hex: String = h[..8].iter().map(|b| format!("{b:02x}")).collect();
                format!("{QUEUE_PREFIX}{}.{hex}", a.twin)
            }
        }
    }

    /// Declares the queue of session `a` unless it exists; refuses a new one past the
    /// twin's sessions.
    pub async fn ensure_queue(&self, a: &Address) -> Result<String, String> {
        let name = Self::queue_name(a);
        let (exists, count) = match self.queues.lock() {
            Ok(q) => q
                .get(&a.twin)
                .map(|s| (s.contains(&name), s.len()))
                .unwrap_or((false, 0)),
            Err(_) => (false, 0),
        };
        if exists && self.broker.has_queue(&name) {
            return Ok(name);
        }
        if !exists && count >= self.config.max_sessions_per_twin {
            return Err(format!(
                "twin {} has {count} sessions with envelopes waiting, the most this relay keeps",
                a.twin
            ));
        }
        let mut labels = BTreeMap::new();
        labels.insert(TWIN_LABEL.to_owned(), a.twin.to_string());
        if let Some(s) = &a.session {
            labels.insert("relay.session".to_owned(), s.clone());
        }
        let spec = QueueSpec {
            bindings: Vec::new(),
            limits: LimitSettings {
                max_length: Some(self.config.max_queued),
                overflow: Some(Overflow::DropOldest),
                max_deliveries: None,
            },
            labels,
        };
        self.broker
            .declare_queue(&name, spec, now_ms())
            .await
            .map_err(|e| e.to_string())?;
        if let Ok(mut q) = self.queues.lock() {
            q.entry(a.twin).or_default().insert(name.clone());
        }
        Ok(name)
    }

    /// Deletes the queue of a session that ended, if it holds nothing (a twin's default
    /// session keeps its queue).
    pub async fn release_queue(&self, a: &Address) {
        if a.session.is_none() {
            return;
        }
        let name = Self::queue_name(a);
        let empty = self.broker.get_queue(&name).is_some()
            && matches!(self.broker.depth(&name).await, Ok(0));
        if empty {
            let connected = self
                .attached
                .lock()
                .is_ok_and(|m| m.contains_key(&Logged::Twin(a.clone())));
            if !connected && self.broker.delete_queue(&name).await.is_ok() {
                if let Ok(mut q) = self.queues.lock() {
                    if let Some(s) = q.get_mut(&a.twin) {
                        s.remove(&name);
                    }
                }
            }
        }
    }

    /// An error envelope from the relay answering `env`, encoded.
    pub fn error_for(&self, env: &Envelope, code: u32, message: &str) -> Option<Vec<u8>> {
        if !matches!(env.kind, Kind::Request { .. }) {
            return None;
        }
        let mut e = Envelope::new(
            &env.uid,
            Address::twin(0),
            env.source.clone(),
            Kind::Error {
                code,
                message: message.chars().take(1000).collect(),
            },
            Payload::Plain(Vec::new()),
            unix_now(),
            trunkline_envelope::envelope::DEFAULT_TTL,
        );
        e.tags.clone_from(&env.tags);
        e.sign(&self.identity).ok()?;
        e.encode().ok()
    }

    fn refuse(&self, env: &Envelope, code: u32, message: &str) -> Refusal {
        self.counters
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(uid = %env.uid, source = %env.source, code, message, "relay: refused");
        match self.error_for(env, code, message) {
            Some(b) => Refusal::Answer(b),
            None => Refusal::Drop("refused"),
        }
    }

    /// Counts `bytes` against twin `twin`'s rate; false past it.
    fn within_rate(&self, twin: u32, bytes: usize) -> bool {
        let Ok(mut rates) = self.rates.lock() else {
            return true;
        };
        let now = Instant::now();
        if rates.len() >= RATE_TWINS {
            rates.retain(|_, r| now.duration_since(r.since) < RATE_WINDOW);
        }
        let r = rates.entry(twin).or_insert(Rate {
            since: now,
            count: 0,
            bytes: 0,
        });
        if now.duration_since(r.since) >= RATE_WINDOW {
            *r = Rate {
                since: now,
                count: 0,
                bytes: 0,
            };
        }
        r.count += 1;
        r.bytes += bytes as u64;
        r.count <= self.config.rate_messages_per_minute
            && r.bytes <= self.config.rate_bytes_per_minute
    }

    /// Checks an envelope `from` sent and sends it on its way. `answer` takes what the
    /// relay says back to `from` later (a publish that failed, a pong). `ack` is confirmed
    /// once the envelope is handled: here, whatever the outcome, or once stored.
    pub async fn route(
        &self,
        from: &Logged,
        bytes: &[u8],
        answer: &mpsc::Sender<Vec<u8>>,
        ack: Ack,
    ) -> Result<(), Refusal> {
        let mut ack = Some(ack);
        self.route_inner(from, bytes, answer, &mut ack).await
    }

    async fn route_inner(
        &self,
        from: &Logged,
        bytes: &[u8],
        answer: &mpsc::Sender<Vec<u8>>,
        ack: &mut Option<Ack>,
    ) -> Result<(), Refusal> {
        let env = Envelope::decode(bytes).map_err(|e| Refusal::Close(e.to_string()))?;
        if let Logged::Twin(a) = from {
            if &env.source != a {
                return Err(self.refuse(
                    &env,
                    codes::INVALID_ENVELOPE,
                    &format!("the source must be the logged-in twin {a}"),
                ));
            }
        }
        if env.source.twin == 0 {
            return Err(self.refuse(&env, codes::INVALID_ENVELOPE, "twin 0 is the relay's"));
        }
        let source = match self.twin(env.source.twin).await {
            Ok(Some(t)) => t,
            Ok(None) => return Err(self.refuse(&env, codes::UNKNOWN_TWIN, "unknown source twin")),
            Err(e) => return Err(self.refuse(&env, codes::OTHER, &e)),
        };
        if let Err(e) = env.verify(&source.key) {
            return Err(self.refuse(&env, codes::INVALID_SIGNATURE, &e.to_string()));
        }
        let now = unix_now();
        if let Err(e) = env.check_time(now) {
            return Err(self.refuse(&env, codes::EXPIRED, &e.to_string()));
        }
        let fresh = self
            .window
            .lock()
            .map(|mut w| w.check(&env, now).is_ok())
            .unwrap_or(true);
        if !fresh {
            self.counters
                .replays
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(Refusal::Drop("a replay"));
        }
        if !self.within_rate(env.source.twin, bytes.len()) {
            return Err(self.refuse(
                &env,
                codes::RATE_LIMITED,
                "exceeded rate limits, dropping message",
            ));
        }
        if env.destination.twin == 0 {
            if env.kind == Kind::Ping {
                if let Some(pong) = self.pong(&env) {
                    let _ = answer.try_send(pong);
                }
                return Ok(());
            }
            return Err(self.refuse(&env, codes::INVALID_ENVELOPE, "twin 0 takes pings only"));
        }
        let dest = match self.twin(env.destination.twin).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Err(self.refuse(&env, codes::UNKNOWN_TWIN, "unknown destination twin"))
            }
            Err(e) => return Err(self.refuse(&env, codes::OTHER, &e)),
        };
        if self.is_ours(&dest) {
            return self.enqueue(env, bytes, answer, ack).await;
        }
        if matches!(from, Logged::Relay(_)) {
            // Forwarded here, but not reached here: not forwarded again (no loops).
            return Err(Refusal::Drop(
                "forwarded envelope for a twin of another relay",
            ));
        }
        match self.forward.submit(&dest, &env, bytes, ack).await {
            Ok(()) => {
                self.counters
                    .forwarded
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(why) => Err(self.refuse(&env, codes::UNREACHABLE, &why)),
        }
    }

    /// Queues `env` for its session here; durable before it is delivered.
    async fn enqueue(
        &self,
        env: Envelope,
        bytes: &[u8],
        answer: &mpsc::Sender<Vec<u8>>,
        ack: &mut Option<Ack>,
    ) -> Result<(), Refusal> {
        let queue = match self.ensure_queue(&env.destination).await {
            Ok(q) => q,
            Err(why) => return Err(self.refuse(&env, codes::UNREACHABLE, &why)),
        };
        let left = env.expires_at().saturating_sub(unix_now()).max(1);
        let ttl = left.min(self.config.max_age_secs.max(1));
        let mut p = Publish::new(queue.clone(), bytes.to_vec(), env.source.to_string());
        p.queue = Some(queue);
        p.ttl_ms = Some(ttl * 1000);
        p.content_type = Some(ENVELOPE_TYPE.to_owned());
        let on_error = self.error_for(&env, codes::OTHER, "the relay could not store it");
        let answer = answer.clone();
        let stored = ack.take();
        let done = move |r: Result<trunkline_broker::Published, trunkline_broker::BrokerError>| {
            if let (Err(e), Some(b)) = (r, on_error) {
                tracing::warn!(error = %e, "relay: an envelope was not stored");
                let _ = answer.try_send(b);
            }
            drop(stored);
        };
        match self.broker.publish_then(p, now_ms(), Box::new(done)) {
            Ok(_) => {
                self.counters
                    .routed_local
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(self.refuse(&env, codes::OTHER, &e.to_string())),
        }
    }

    /// The relay's answer to a ping addressed to it.
    fn pong(&self, ping: &Envelope) -> Option<Vec<u8>> {
        let mut e = Envelope::new(
            &ping.uid,
            Address::twin(0),
            ping.source.clone(),
            Kind::Pong,
            Payload::Plain(Vec::new()),
            unix_now(),
            trunkline_envelope::envelope::DEFAULT_TTL,
        );
        e.sign(&self.identity).ok()?;
        e.encode().ok()
    }
}

/// The media type envelopes are stored with.
pub const ENVELOPE_TYPE: &str = "application/x-trunkline-envelope";

/// Envelopes leased from a queue at once.
const BATCH: usize = 64;
/// How long a lease lasts: written and acked well within it, or given back.
const LEASE_MS: u64 = 60_000;

/// The next envelopes of `queue` in order, leased to `me`, waiting for some until `stop`
/// (empty then).
async fn lease(
    broker: &Arc<dyn Backend>,
    me: &trunkline_broker::Principal,
    queue: &str,
    stop: &CancellationToken,
) -> Result<Vec<trunkline_broker::Delivery>, trunkline_broker::BrokerError> {
    let opts = trunkline_broker::ReceiveOptions::leased(BATCH, LEASE_MS);
    broker
        .receive_wait(me, queue, opts, None, stop, &now_ms)
        .await
}

/// Writes leased envelopes to a connection and flushes it; true when all was written.
async fn write_batch<S, M>(
    sink: &mut S,
    batch: &[trunkline_broker::Delivery],
    frame: impl Fn(bytes::Bytes) -> M,
) -> bool
where
    S: futures::Sink<M> + Unpin,
{
    use futures::SinkExt;
    for d in batch {
        if sink.feed(frame(d.data.body.clone())).await.is_err() {
            return false;
        }
    }
    sink.flush().await.is_ok()
}

/// Acks what was delivered (it leaves its queue), or gives it back in its place.
async fn settle(
    broker: &Arc<dyn Backend>,
    me: &trunkline_broker::Principal,
    batch: &[trunkline_broker::Delivery],
    delivered: bool,
) {
    let how = if delivered {
        trunkline_broker::Settle::Ack
    } else {
        trunkline_broker::Settle::Nack { requeue: true }
    };
    let receipts: Vec<String> = batch.iter().filter_map(|d| d.receipt.clone()).collect();
    if let Err(e) = broker.settle(me, &receipts, how, now_ms()).await {
        tracing::warn!(error = %e, "relay: cannot settle what was delivered");
    }
}
