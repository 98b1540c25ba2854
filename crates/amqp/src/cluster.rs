//! [`Cluster`]: the [`Backend`] of a node whose messages live in RabbitMQ.
//!
//! The node's own [`Broker`] keeps what is not messages: its replica of the client
//! registry (declared queues' specs, twins, principals and their revocation), kept by the
//! cluster's shared log ([`RegistryLog`]), the node's `message_id` dedup records, and live
//! subscriptions. A change of the registry is decided here, mirrored into RabbitMQ's
//! topology (each client's inbox and dead-letter queue, each declared queue, their
//! bindings), recorded in the log and applied by every node; messages go through [`Amqp`]
//! only (the changes of the registry are in `admin.rs`). Front-ends see the same
//! [`Backend`] as with the embedded engine;
//! `docs/scale-out.md` lists where the two differ.
//!
//! Live subscriptions (STOMP `/topic/…`) and channel messages reach every node
//! ([`LiveLink`]). Not yet: presence and calls between nodes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use trunkline_broker::backend::{BoxFuture, PublishDone};
use trunkline_broker::twins::TwinRecord;
use trunkline_broker::{
    dead_name, inbox_name, topic, Backend, BatchTicket, Broker, BrokerConfig, BrokerError,
    ClientUpdate, ClientView, Counters, Delivery, LiveCounters, LiveSubscription, NewClient,
    Principal, Publish, Published, QueueDepth, QueueSpec, QueueView, ReceiveOptions, Sent, Settle,
    Settled, Target, WaitHandle,
};
use trunkline_envelope::TwinClaim;

use crate::{Amqp, LiveLink, RegistryLog};

/// How often waiters on a queue are woken to look again: RabbitMQ does not tell a node
/// that another node published.
const POLL: Duration = Duration::from_millis(100);
/// How often the depth of every queue is asked of RabbitMQ (for `/metrics`).
const DEPTHS_EVERY: Duration = Duration::from_secs(5);

/// A queue's waiter: woken by this node's publishes to the queue, and every [`POLL`].
struct PollWaiter {
    notify: Notify,
}

impl WaitHandle for PollWaiter {
    fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

/// This node's waiters, by queue.
type Waiters = Arc<Mutex<HashMap<String, Weak<PollWaiter>>>>;

/// Outcomes of a batch's publishes, as they come.
type Outcomes = Arc<Mutex<Vec<Option<Result<Published, BrokerError>>>>>;

/// A node's backend over RabbitMQ.
pub struct Cluster {
    pub(crate) registry: Broker,
    pub(crate) amqp: Arc<Amqp>,
    pub(crate) log: Arc<RegistryLog>,
    pub(crate) live: Arc<LiveLink>,
    /// The `message_id` records every node shares.
    dedup: Arc<crate::dedup_log::DedupLog>,
    waiters: Waiters,
    /// Every queue's depth as last asked (ready: RabbitMQ's count; leased: this node's).
    depths: Mutex<Vec<QueueDepth>>,
    /// Held across each change of clients or queues, registry and RabbitMQ both: two
    /// changes of one client at once on this node would otherwise meet half done (a
    /// binding to a queue just deleted).
    pub(crate) admin: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    /// The backend: `registry` (opened with a shared registry) for what is not messages,
    /// `amqp` for messages. Returns once `registry` holds every change recorded in the
    /// shared log before this node started; `keys` are the node's (the cluster's, if it is
    /// the first: [`Backend::shared_keys`]).
    /// Wakes waiters and follows the log until `stop`.
    pub async fn open(
        registry: Broker,
        amqp: Arc<Amqp>,
        keys: trunkline_broker::SharedKeys,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<Arc<Self>, BrokerError> {
        let log = RegistryLog::open(amqp.clone(), registry.clone(), keys, stop.clone()).await?;
        let live = LiveLink::open(amqp.clone(), registry.clone(), stop.clone()).await?;
        let window = registry.config().dedup_window_ms;
        let dedup =
            crate::dedup_log::DedupLog::open(amqp.clone(), registry.clone(), window, stop.clone())
                .await?;
        let cluster = Arc::new(Cluster {
            registry,
            amqp,
            log,
            live,
            dedup,
            waiters: Arc::default(),
            depths: Mutex::default(),
            admin: tokio::sync::Mutex::new(()),
        });
        let weak = Arc::downgrade(&cluster);
        let until = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(DEPTHS_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = until.cancelled() => return,
                }
                let Some(c) = weak.upgrade() else { return };
                c.refresh_depths().await;
                // Leases that ran out go back, and feeds no longer read end, even on a
                // node no one receives from now.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                if let Err(e) = c.amqp.sweep(now).await {
                    tracing::debug!(cause = %e, "sweep");
                }
            }
        });
        let waiters = Arc::downgrade(&cluster.waiters);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                let Some(waiters) = waiters.upgrade() else {
                    return;
                };
                let mut w = lock(&waiters);
                w.retain(|_, w| match w.upgrade() {
                    Some(w) => {
                        w.notify.notify_waiters();
                        true
                    }
                    None => false,
                });
            }
        });
        Ok(cluster)
    }

    /// Asks RabbitMQ the depth of every queue the registry holds.
    async fn refresh_depths(&self) {
        let mut names = Vec::new();
        for c in self.registry.list_clients() {
            names.push(inbox_name(&c.client_id));
            names.push(dead_name(&c.client_id));
        }
        for q in self.registry.list_queues() {
            names.push(q.name.clone());
            names.push(q.dead_letter.clone());
        }
        let ready = self.amqp.depths(&names).await;
        let depths = names
            .into_iter()
            .zip(ready)
            .filter_map(|(name, ready)| {
                Some(QueueDepth {
                    leased: self.amqp.leased_of(&name) as u64,
                    ready: ready?,
                    name: Arc::from(name),
                })
            })
            .collect();
        *lock(&self.depths) = depths;
    }

    /// The node's registry (for what only it has: its store's metrics, shutdown).
    pub fn registry(&self) -> &Broker {
        &self.registry
    }

    pub fn amqp(&self) -> &Arc<Amqp> {
        &self.amqp
    }

    /// Checks a publish and finds where it goes.
    fn route(&self, p: &Publish) -> Result<Vec<Arc<str>>, BrokerError> {
        topic::validate_topic(&p.topic).map_err(|cause| BrokerError::InvalidTopic {
            topic: p.topic.clone(),
            cause,
        })?;
        self.registry.targets(p)
    }

    /// Publishes `p` (routed to `targets`); `done` gets the outcome once RabbitMQ
    /// confirms it. Live subscribers of this node get it then too.
    fn send(&self, p: Publish, targets: Vec<Arc<str>>, now: u64, done: PublishDone) {
        let counters_of = self.registry.clone();
        let delivered_to = targets.len() as u64;
        let live = p.queue.is_none();
        let data = Arc::new(p.stored(now));
        let waiters = self.waiters.clone();
        let link = self.live.clone();
        let finish = move |r: Result<u64, BrokerError>| {
            let c = counters_of.counters();
            let out = r.map(|id| {
                c.published.fetch_add(1, Ordering::Relaxed);
                c.enqueued.fetch_add(delivered_to, Ordering::Relaxed);
                if live {
                    // This node's subscribers, then the other nodes'.
                    counters_of.publish_live(id, data.clone());
                    link.send(id, data);
                }
                // Waiters on the queues it went to look again now, not at the next poll.
                let w = lock(&waiters);
                for q in &targets {
                    if let Some(w) = w.get(&**q).and_then(Weak::upgrade) {
                        w.notify.notify_waiters();
                    }
                }
                Published {
                    id,
                    delivered_to,
                    duplicate: false,
                }
            });
            if matches!(out, Err(BrokerError::QueueFull { .. })) {
                c.rejected_full.fetch_add(1, Ordering::Relaxed);
            }
            done(out);
        };
        if delivered_to == 0 {
            // Only live subscribers may see it: nothing to store.
            finish(Ok(self.amqp.next_id()));
            return;
        }
        self.amqp.publish_then(&p, now, Box::new(finish));
    }

    async fn receive_now(
        &self,
        who: &Principal,
        queue: &str,
        opts: ReceiveOptions,
        now: u64,
    ) -> Result<Vec<Delivery>, BrokerError> {
        who.check_read(Target::Queue(queue))?;
        if !self.registry.has_queue(queue) {
            return Err(BrokerError::UnknownQueue(queue.to_owned()));
        }
        // Leases that ran out go back first, so that this receive may take them.
        self.amqp.sweep(now).await?;
        let max = opts.max.min(self.registry.config().max_receive);
        let got = self
            .amqp
            .receive(queue, ReceiveOptions { max, ..opts }, now)
            .await?;
        self.registry
            .counters()
            .delivered
            .fetch_add(got.len() as u64, Ordering::Relaxed);
        Ok(got)
    }
}

impl Cluster {
    /// A receive that waits with no deadline (a subscription's, a link's): fed by a
    /// consumer ([`Amqp::receive_fed`]), looking at `who`'s rights again every second.
    /// `None` when the node has no room for another feed.
    async fn receive_fed(
        &self,
        who: &Principal,
        queue: &str,
        opts: ReceiveOptions,
        stop: &tokio_util::sync::CancellationToken,
        now: &(dyn Fn() -> u64 + Send + Sync),
    ) -> Result<Option<Vec<Delivery>>, BrokerError> {
        let max = opts.max.min(self.registry.config().max_receive);
        let reader = &who.client_id;
        loop {
            who.check_read(Target::Queue(queue))?;
            if !self.registry.has_queue(queue) {
                return Err(BrokerError::UnknownQueue(queue.to_owned()));
            }
            self.amqp.sweep(now()).await?;
            let opts = ReceiveOptions { max, ..opts };
            let may_read = || who.check_read(Target::Queue(queue)).is_ok();
            let wait = Duration::from_secs(1);
            let got = (self.amqp)
                .receive_fed(reader, queue, opts, now(), wait, stop, &may_read)
                .await?;
            let Some(got) = got else { return Ok(None) };
            if !got.is_empty() {
                self.registry
                    .counters()
                    .delivered
                    .fetch_add(got.len() as u64, Ordering::Relaxed);
                return Ok(Some(got));
            }
            if stop.is_cancelled() {
                // Its reader stopped: the feed ends once nothing of it is leased.
                self.amqp.end_feed(reader, queue).await;
                return Ok(Some(got));
            }
        }
    }
}

impl Backend for Cluster {
    fn config(&self) -> &BrokerConfig {
        self.registry.config()
    }

    fn healthy(&self) -> bool {
        Backend::healthy(&self.registry)
    }

    fn publish(&self, p: Publish, now: u64) -> BoxFuture<'_, Result<Published, BrokerError>> {
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            match self.publish_then(p, now, Box::new(move |r| drop(tx.send(r))))? {
                Sent::Now(r) => r,
                Sent::Later => rx.await.unwrap_or_else(|_| {
                    Err(BrokerError::Unavailable("the publish was lost".into()))
                }),
            }
        })
    }

    fn publish_then(&self, p: Publish, now: u64, done: PublishDone) -> Result<Sent, BrokerError> {
        let targets = self.route(&p)?;
        if let Some(first) = self.registry.dedup_begin(&p, now)? {
            return Ok(Sent::Now(Ok(first)));
        }
        if p.message_id.is_none() {
            self.send(p, targets, now, done);
            return Ok(Sent::Later);
        }
        // The answer is remembered before it is given, here and by the other nodes, so
        // that a retry that follows it is known wherever it goes.
        let (registry, kept, log) = (self.registry.clone(), p.clone(), self.dedup.clone());
        let remember: PublishDone = Box::new(move |out| {
            tokio::spawn(async move {
                match registry.dedup_end(&kept, out.as_ref().ok(), now).await {
                    Some((key, rec)) => log.tell(key, rec, Box::new(move || done(out))),
                    None => done(out),
                }
            });
        });
        self.send(p, targets, now, remember);
        Ok(Sent::Later)
    }

    /// One by one: RabbitMQ has no transaction across queues with confirms, so a refused
    /// message does not take back those before it (docs/scale-out.md).
    fn publish_batch_start(&self, ps: Vec<Publish>, now: u64) -> Result<BatchTicket, BrokerError> {
        let routed = ps
            .into_iter()
            .map(|p| self.route(&p).map(|t| (p, t)))
            .collect::<Result<Vec<_>, _>>()?;
        let (tx, ticket) = BatchTicket::pending();
        let n = routed.len();
        let results: Outcomes = Arc::new(Mutex::new((0..n).map(|_| None).collect()));
        let tx = Arc::new(Mutex::new(Some(tx)));
        if n == 0 {
            if let Some(tx) = lock(&tx).take() {
                let _ = tx.send(Ok(Vec::new()));
            }
        }
        for (i, (p, targets)) in routed.into_iter().enumerate() {
            let (results, tx) = (results.clone(), tx.clone());
            self.send(
                p,
                targets,
                now,
                Box::new(move |r| {
                    let mut all = lock(&results);
                    all[i] = Some(r);
                    if all.iter().all(Option::is_some) {
                        let out = all.drain(..).flatten().collect::<Result<Vec<_>, _>>();
                        if let Some(tx) = lock(&tx).take() {
                            let _ = tx.send(out);
                        }
                    }
                }),
            );
        }
        Ok(ticket)
    }

    fn receive<'a>(
        &'a self,
        who: &'a Principal,
        queue: &'a str,
        opts: ReceiveOptions,
        now: u64,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, BrokerError>> {
        Box::pin(self.receive_now(who, queue, opts, now))
    }

    fn receive_wait<'a>(
        &'a self,
        who: &'a Principal,
        queue: &'a str,
        opts: ReceiveOptions,
        deadline: Option<tokio::time::Instant>,
        stop: &'a tokio_util::sync::CancellationToken,
        now: &'a (dyn Fn() -> u64 + Send + Sync),
    ) -> BoxFuture<'a, Result<Vec<Delivery>, BrokerError>> {
        Box::pin(async move {
            if deadline.is_none() {
                if let Some(got) = self.receive_fed(who, queue, opts, stop, now).await? {
                    return Ok(got);
                }
            }
            let waiter = self.waiter(queue);
            loop {
                let notified = waiter.as_ref().map(|w| w.notified());
                let mut notified = std::pin::pin!(notified);
                if let Some(n) = notified.as_mut().as_pin_mut() {
                    n.enable();
                }
                let got = self.receive_now(who, queue, opts, now()).await?;
                if !got.is_empty() || deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
                    return Ok(got);
                }
                let until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + POLL);
                tokio::select! {
                    _ = async { if let Some(n) = notified.as_mut().as_pin_mut() { n.await } } => {}
                    () = tokio::time::sleep_until(until.min(tokio::time::Instant::now() + POLL)) => {}
                    () = stop.cancelled() => return Ok(Vec::new()),
                }
            }
        })
    }

    fn settle<'a>(
        &'a self,
        who: &'a Principal,
        receipts: &'a [String],
        how: Settle,
        _now: u64,
    ) -> BoxFuture<'a, Result<Settled, BrokerError>> {
        Box::pin(async move {
            // Giving deliveries back works for a revoked principal too (as embedded).
            if how != (Settle::Nack { requeue: true }) {
                who.access()?;
            }
            // Only deliveries of queues `who` may read: a receipt of another is unknown.
            let may = |q: &str| who.check_read(Target::Queue(q)).is_ok();
            let s = self.amqp.settle(receipts, how, may).await?;
            let c = self.registry.counters();
            match how {
                Settle::Ack => c.acked.fetch_add(s.done, Ordering::Relaxed),
                Settle::Nack { .. } => c.nacked.fetch_add(s.done, Ordering::Relaxed),
            };
            Ok(s)
        })
    }

    fn waiter(&self, queue: &str) -> Option<Arc<dyn WaitHandle>> {
        if !self.registry.has_queue(queue) {
            return None;
        }
        let mut w = lock(&self.waiters);
        if let Some(w) = w.get(queue).and_then(Weak::upgrade) {
            return Some(w);
        }
        let new = Arc::new(PollWaiter {
            notify: Notify::new(),
        });
        w.insert(queue.to_owned(), Arc::downgrade(&new));
        Some(new)
    }

    fn subscribe_live(
        &self,
        reader: Option<&Principal>,
        pattern: &str,
        capacity: usize,
    ) -> Result<LiveSubscription, BrokerError> {
        let sub = self.registry.subscribe_live(reader, pattern, capacity)?;
        // Messages published on other nodes come in through the live exchange.
        self.live.follow(pattern);
        let (live, pattern) = (self.live.clone(), pattern.to_owned());
        Ok(sub.on_drop(move || live.unfollow(&pattern)))
    }

    fn sweep(&self, now: u64) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.registry.sweep(now).await?;
            self.amqp.sweep(now).await.map(drop)
        })
    }

    fn create_client(
        &self,
        c: NewClient,
        now: u64,
    ) -> BoxFuture<'_, Result<(ClientView, String), BrokerError>> {
        Box::pin(self.create_client_now(c, now))
    }

    fn update_client<'a>(
        &'a self,
        client_id: &'a str,
        u: ClientUpdate,
    ) -> BoxFuture<'a, Result<ClientView, BrokerError>> {
        Box::pin(self.update_client_now(client_id, u))
    }

    fn rotate_secret<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<(ClientView, String), BrokerError>> {
        Box::pin(self.rotate_secret_now(client_id))
    }

    fn delete_client<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.delete_client_now(client_id))
    }

    fn get_client(&self, client_id: &str) -> Option<ClientView> {
        self.registry.get_client(client_id)
    }

    fn list_clients(&self) -> Vec<ClientView> {
        self.registry.list_clients()
    }

    fn client_count(&self) -> usize {
        self.registry.client_count()
    }

    fn authenticate(&self, client_id: &str, secret: &str) -> Option<(Principal, String)> {
        self.registry.authenticate(client_id, secret)
    }

    fn shared_keys(&self) -> Option<trunkline_broker::SharedKeys> {
        self.log.shared_keys()
    }

    fn registry_seen(&self) -> u64 {
        self.log.applied()
    }

    fn registry_after(&self, seen: u64, within: std::time::Duration) -> BoxFuture<'_, bool> {
        Box::pin(self.log.applied_after(seen, within))
    }

    fn principal(&self, client_id: &str) -> Option<Principal> {
        self.registry.principal(client_id)
    }

    fn check_credential(&self, client_id: &str, credential_id: &str) -> Option<Principal> {
        self.registry.check_credential(client_id, credential_id)
    }

    fn declare_queue<'a>(
        &'a self,
        name: &'a str,
        spec: QueueSpec,
        now: u64,
    ) -> BoxFuture<'a, Result<(QueueView, bool), BrokerError>> {
        Box::pin(self.declare_queue_now(name, spec, now))
    }

    fn delete_queue<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.delete_queue_now(name))
    }

    fn get_queue(&self, name: &str) -> Option<QueueView> {
        self.registry.get_queue(name)
    }

    fn depth<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<u64, BrokerError>> {
        Box::pin(async move {
            if !self.registry.has_queue(name) {
                return Ok(0);
            }
            // Ready (RabbitMQ's count) and leased by this node; other nodes' leases are
            // not counted.
            let ready = self.amqp.depth(name).await?;
            Ok(ready + self.amqp.leased_of(name) as u64)
        })
    }

    fn leased(&self, name: &str) -> u64 {
        self.amqp.leased_of(name) as u64
    }

    fn list_queues(&self) -> Vec<QueueView> {
        self.registry.list_queues()
    }

    fn has_queue(&self, name: &str) -> bool {
        self.registry.has_queue(name)
    }

    fn register_twin<'a>(
        &'a self,
        who: &'a Principal,
        claim: TwinClaim,
        signature: [u8; 64],
        now: u64,
    ) -> BoxFuture<'a, Result<TwinRecord, BrokerError>> {
        Box::pin(self.register_twin_now(who, claim, signature, now))
    }

    fn update_twin(
        &self,
        claim: TwinClaim,
        signature: [u8; 64],
        now: u64,
    ) -> BoxFuture<'_, Result<TwinRecord, BrokerError>> {
        Box::pin(self.update_twin_now(claim, signature, now))
    }

    fn get_twin(&self, id: u32) -> Option<TwinRecord> {
        self.registry.get_twin(id)
    }

    fn find_twin(&self, key: &str) -> Option<TwinRecord> {
        self.registry.find_twin(key)
    }

    fn claim<'a>(&'a self, name: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(self.amqp.claim(name))
    }

    fn bus(&self) -> Option<Arc<dyn trunkline_realtime::Bus>> {
        Some(self.live.clone())
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.amqp.close())
    }

    fn counters(&self) -> &Counters {
        self.registry.counters()
    }

    fn live_counters(&self) -> &LiveCounters {
        self.registry.live_counters()
    }

    fn live_subscriptions(&self) -> usize {
        self.registry.live_subscriptions()
    }

    /// As last asked of RabbitMQ (every few seconds: each count is a round trip).
    fn queue_depths(&self) -> Vec<QueueDepth> {
        lock(&self.depths).clone()
    }
}
