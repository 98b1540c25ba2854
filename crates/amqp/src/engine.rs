//! The connection to RabbitMQ and the message path over it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use trunkline_broker::{
    dead_name, inbox_name, BrokerError, Delivery, Limits, Publish, ReceiveOptions, Settle, Settled,
};

use crate::leases::{Leases, Op};
use crate::message;
use crate::topology::{queue_arguments, Exchange, Names};

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// `amqp://` URLs of the cluster's nodes, tried in turn.
    pub urls: Vec<String>,
    /// This Trunkline node's id (`[a-z0-9-]`), in the receipts it gives.
    pub node: String,
    /// Prefix of every exchange and queue name (empty: `trunkline`): the nodes of one
    /// Trunkline cluster share it.
    pub namespace: String,
}

/// Time allowed to connect to one URL, or for one operation to be answered.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The connection and its two channels: one in confirm mode for publishing, one that
/// takes deliveries and holds the leased ones.
struct Link {
    conn: Connection,
    publish: Channel,
    take: Channel,
    /// The consuming channel's number in the leases.
    take_no: u64,
    /// Which connection of this engine it is (one more for each connect).
    generation: u64,
}

/// What a publish's starter is told once RabbitMQ confirms it: the message's id.
pub type Confirmed = Box<dyn FnOnce(Result<u64, BrokerError>) + Send + 'static>;

/// What the publisher task is asked: a publish, or a barrier (told once every publish
/// before it has its outcome). Nearly every item is a publish: boxing it to shrink the
/// rare barrier would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
enum Work {
    Publish(Outgoing),
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// A publish on its way to the publisher task.
struct Outgoing {
    id: u64,
    exchange: String,
    key: String,
    props: lapin::BasicProperties,
    body: bytes::Bytes,
    done: Confirmed,
}

/// RabbitMQ as the durable engine of one Trunkline node.
pub struct Amqp {
    config: AmqpConfig,
    names: Names,
    link: tokio::sync::Mutex<Option<Link>>,
    /// The next URL to try.
    next_url: AtomicU64,
    leases: Mutex<Leases>,
    /// Message ids: milliseconds at start, shifted, plus a count; unique per node (and,
    /// with the node's number in the low bits, across nodes).
    ids: AtomicU64,
    outgoing: tokio::sync::mpsc::UnboundedSender<Work>,
    /// This start of this node: `<node>/<random>` (a node restarted under the same name
    /// is another origin).
    origin: String,
    /// Connections opened so far.
    generations: AtomicU64,
    /// Claims held ([`Amqp::claim`]), with the connection that holds each.
    claims: Mutex<std::collections::HashMap<String, u64>>,
    /// Consumers feeding the receives that wait ([`Amqp::receive_fed`]).
    pub(crate) feeds: crate::feeds::Feeds,
    /// Acks gathered to be sent together ([`crate::acks`]).
    pub(crate) acks: crate::acks::Acks,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("RabbitMQ: {what}: {e}"))
}

/// A channel in confirm mode, for publishing.
async fn publish_channel(conn: &Connection) -> Result<Channel, BrokerError> {
    let ch = timed("open a channel", conn.create_channel()).await?;
    timed(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    Ok(ch)
}

/// Waits for an AMQP operation, at most [`TIMEOUT`].
async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(what, e)),
        Err(_) => Err(unavailable(what, "no answer in time")),
    }
}

impl Amqp {
    /// Connects (to the first URL that answers) and declares the exchanges.
    pub async fn connect(config: AmqpConfig, now_ms: u64) -> Result<Arc<Self>, BrokerError> {
        if config.urls.is_empty() {
            return Err(BrokerError::InvalidArgument("no RabbitMQ URL given".into()));
        }
        let node = config.node.clone();
        let origin = format!("{node}/{:016x}", rand::random::<u64>());
        let (outgoing, rx) = tokio::sync::mpsc::unbounded_channel();
        let amqp = Arc::new(Amqp {
            names: Names::new(&config.namespace),
            config,
            link: tokio::sync::Mutex::new(None),
            next_url: AtomicU64::new(0),
            leases: Mutex::new(Leases::new(node)),
            ids: AtomicU64::new(now_ms << 16),
            outgoing,
            origin,
            generations: AtomicU64::new(0),
            claims: Mutex::default(),
            feeds: Default::default(),
            acks: Default::default(),
        });
        tokio::spawn(publisher(Arc::downgrade(&amqp), rx));
        tokio::spawn(crate::acks::acker(Arc::downgrade(&amqp)));
        let (publish, _, _) = amqp.channels().await?;
        for (e, kind) in [
            (Exchange::Topic, ExchangeKind::Topic),
            (Exchange::Notify, ExchangeKind::Fanout),
        ] {
            let name = amqp.names.exchange(e);
            let opts = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            let declare =
                publish.exchange_declare(name.as_str().into(), kind, opts, FieldTable::default());
            amqp.check(timed("declare exchange", declare).await).await?;
        }
        Ok(amqp)
    }

    pub(crate) fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The channels, connecting first if there is no connection (or it was lost).
    pub(crate) async fn channels(&self) -> Result<(Channel, Channel, u64), BrokerError> {
        let mut link = self.link.lock().await;
        if let Some(l) = link.as_mut() {
            if l.conn.status().connected() {
                // A channel RabbitMQ closed (3.10 closes a publishing channel when a queue
                // it routes to is deleted at that moment) is opened again on its own: the
                // other keeps what it holds.
                if !l.publish.status().connected() {
                    tracing::warn!("the publishing channel to RabbitMQ closed; opening another");
                    l.publish = publish_channel(&l.conn).await?;
                }
                if !l.take.status().connected() {
                    tracing::warn!(
                        "the consuming channel to RabbitMQ closed; its leases went back"
                    );
                    l.take = timed("open a channel", l.conn.create_channel()).await?;
                    let mut leases = self.leases();
                    leases.closed(l.take_no);
                    l.take_no = leases.opened();
                }
                return Ok((l.publish.clone(), l.take.clone(), l.take_no));
            }
            tracing::warn!("the connection to RabbitMQ was lost; connecting again");
        }
        *link = None;
        let n = self.config.urls.len() as u64;
        let mut last = None;
        for _ in 0..n {
            let i = self.next_url.fetch_add(1, Ordering::Relaxed) % n;
            let url = &self.config.urls[i as usize];
            match self.open(url).await {
                Ok(l) => {
                    let got = (l.publish.clone(), l.take.clone(), l.take_no);
                    // Stay with this URL while it works.
                    self.next_url.store(i, Ordering::Relaxed);
                    *link = Some(l);
                    return Ok(got);
                }
                Err(e) => {
                    tracing::warn!(url = %url, cause = %e, "could not connect to RabbitMQ");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| unavailable("connect", "no URL")))
    }

    async fn open(&self, url: &str) -> Result<Link, BrokerError> {
        let conn = timed(
            "connect",
            Connection::connect(url, ConnectionProperties::default()),
        )
        .await?;
        let publish = publish_channel(&conn).await?;
        let take = timed("open a channel", conn.create_channel()).await?;
        // A new connection: every channel of the last one closed with it.
        let take_no = {
            let mut leases = self.leases();
            leases.closed_all();
            leases.opened()
        };
        Ok(Link {
            conn,
            publish,
            take,
            take_no,
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
        })
    }

    /// The names of this cluster's exchanges and queues.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// This Trunkline node's id.
    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// This start of this node (`<node>/<random>`), as other nodes tell it from others.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Runs `f` on an admin channel ([`Amqp::admin_channel`]), at most [`TIMEOUT`], and
    /// closes the channel.
    pub(crate) async fn with_admin_channel<T, F, Fut>(
        &self,
        what: &str,
        f: F,
    ) -> Result<T, BrokerError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = lapin::Result<T>>,
    {
        let ch = self.admin_channel().await?;
        let r = timed(what, f(ch.clone())).await;
        self.done_with(ch, r).await
    }

    /// A channel of its own for one declaration, binding, deletion or inspection: RabbitMQ
    /// answers a refused one (a queue declared again with other arguments, a passive
    /// declare of a queue that is gone) by closing its channel, which must not be the
    /// channel that publishes or holds leases. Closed again by [`Amqp::done_with`].
    pub(crate) async fn admin_channel(&self) -> Result<Channel, BrokerError> {
        self.channels().await?;
        let link = self.link.lock().await;
        let Some(l) = link.as_ref() else {
            return Err(unavailable("open a channel", "not connected"));
        };
        timed("open a channel", l.conn.create_channel()).await
    }

    /// Closes an admin channel (if RabbitMQ has not closed it already) and passes `r` on.
    async fn done_with<T>(&self, ch: Channel, r: Result<T, BrokerError>) -> Result<T, BrokerError> {
        if ch.status().connected() {
            let _ = tokio::time::timeout(TIMEOUT, ch.close(200, "done".into())).await;
        }
        self.check(r).await
    }

    /// Passes a result on; after a failure, the link is dropped if its connection is no
    /// longer open, so that the next call connects again (a closed channel alone is
    /// opened again by [`Amqp::channels`]).
    async fn check<T>(&self, r: Result<T, BrokerError>) -> Result<T, BrokerError> {
        if r.is_err() {
            let mut link = self.link.lock().await;
            if link.as_ref().is_some_and(|l| !l.conn.status().connected()) {
                *link = None;
            }
        }
        r
    }

    /// Declares a quorum queue with `limits`, dead-lettering into `dead` (which it
    /// declares too, without a dead-letter queue of its own).
    pub async fn declare_queue(
        &self,
        name: &str,
        limits: &Limits,
        dead: Option<&str>,
    ) -> Result<(), BrokerError> {
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        // A dead-letter queue drops its oldest past its length, as the embedded engine's
        // do.
        let dead_limits = Limits {
            overflow: trunkline_broker::Overflow::DropOldest,
            ..*limits
        };
        let dead = dead.map(|d| self.names.queue(d));
        let name = self.names.queue(name);
        self.with_admin_channel("declare queue", |ch| async move {
            if let Some(dead) = &dead {
                let args = queue_arguments(&dead_limits, None);
                ch.queue_declare(dead.as_str().into(), opts, args).await?;
            }
            let args = queue_arguments(limits, dead.as_deref());
            ch.queue_declare(name.as_str().into(), opts, args)
                .await
                .map(drop)
        })
        .await
    }

    /// Declares a client's inbox and dead-letter queue, bound to the notify exchange and
    /// to the topic exchange with `patterns`.
    pub async fn declare_inbox(
        &self,
        client_id: &str,
        patterns: &[String],
        limits: &Limits,
    ) -> Result<(), BrokerError> {
        let inbox = inbox_name(client_id);
        self.declare_queue(&inbox, limits, Some(&dead_name(client_id)))
            .await?;
        self.bindings(&inbox, Exchange::Notify, &[String::new()], &[])
            .await?;
        self.bindings(&inbox, Exchange::Topic, patterns, &[]).await
    }

    /// Binds `queue` to `exchange` with each key of `add` and unbinds it from each of
    /// `remove` (keys are topic patterns for the topic exchange), on one channel.
    pub async fn bindings(
        &self,
        queue: &str,
        exchange: Exchange,
        add: &[String],
        remove: &[String],
    ) -> Result<(), BrokerError> {
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let (queue, exchange) = (self.names.queue(queue), self.names.exchange(exchange));
        self.with_admin_channel("bind", |ch| async move {
            for key in add {
                let (q, e) = (queue.as_str().into(), exchange.as_str().into());
                let opts = QueueBindOptions::default();
                ch.queue_bind(q, e, key.as_str().into(), opts, FieldTable::default())
                    .await?;
            }
            for key in remove {
                let (q, e) = (queue.as_str().into(), exchange.as_str().into());
                ch.queue_unbind(q, e, key.as_str().into(), FieldTable::default())
                    .await?;
            }
            Ok(())
        })
        .await
    }

    /// Deletes a queue and what it holds.
    pub async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        let name = self.names.queue(name);
        self.with_admin_channel("delete queue", |ch| async move {
            ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await
                .map(drop)
        })
        .await
    }

    /// Messages ready in a queue (not those leased).
    pub async fn depth(&self, name: &str) -> Result<u64, BrokerError> {
        self.depths(&[name.to_owned()])
            .await
            .pop()
            .flatten()
            .ok_or_else(|| unavailable("inspect queue", format!("no queue `{name}`")))
    }

    /// Whether this node holds the claim on `name` (taking it if it is free): at most one
    /// node of the cluster holds a name at a time. A claim is an exclusive queue
    /// (`<ns>:claim.<name>`): it belongs to the connection that declared it, so it goes
    /// when that connection goes (the node died, or lost RabbitMQ), and another node may
    /// take it then.
    pub async fn claim(&self, name: &str) -> bool {
        let generation = {
            let _ = self.channels().await;
            match self.link.lock().await.as_ref() {
                Some(l) if l.conn.status().connected() => l.generation,
                _ => return false,
            }
        };
        let held = self
            .claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied();
        if held == Some(generation) {
            return true;
        }
        let queue = self.names.stream(&format!("claim.{name}"));
        let opts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        // Another connection's exclusive queue: RESOURCE_LOCKED, which closes the channel.
        let taken = self
            .with_admin_channel("claim", |ch| async move {
                ch.queue_declare(queue.as_str().into(), opts, FieldTable::default())
                    .await
                    .map(drop)
            })
            .await
            .is_ok();
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        if taken {
            claims.insert(name.to_owned(), generation);
        } else {
            claims.remove(name);
        }
        taken
    }

    /// Messages ready in each of `names` (`None` for a queue RabbitMQ does not have), asked
    /// one after the other on one admin channel (a missing queue closes it; another is
    /// opened).
    pub async fn depths(&self, names: &[String]) -> Vec<Option<u64>> {
        let mut out = Vec::with_capacity(names.len());
        let mut ch: Option<Channel> = None;
        for name in names {
            if ch.as_ref().is_none_or(|c| !c.status().connected()) {
                ch = self.admin_channel().await.ok();
            }
            let Some(c) = ch.as_ref() else {
                out.push(None);
                continue;
            };
            let opts = QueueDeclareOptions {
                passive: true,
                durable: true,
                ..Default::default()
            };
            let q = self.names.queue(name);
            let r = timed(
                "inspect queue",
                c.queue_declare(q.as_str().into(), opts, FieldTable::default()),
            )
            .await;
            out.push(r.ok().map(|q| u64::from(q.message_count())));
        }
        if let Some(c) = ch {
            let _ = self.done_with(c, Ok(())).await;
        }
        out
    }

    /// Publishes and waits for RabbitMQ's confirm (the message is on the queues' quorum);
    /// the message's id. A queue that refuses it (full, `reject-publish`) is `QueueFull`.
    pub async fn publish(&self, p: &Publish, now_ms: u64) -> Result<u64, BrokerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.publish_then(p, now_ms, Box::new(move |r| drop(tx.send(r))));
        rx.await
            .unwrap_or_else(|_| Err(unavailable("publish", "the publisher stopped")))
    }

    /// Starts a publish; `done` gets the outcome once RabbitMQ confirms (or refuses) it.
    /// Publishes go out in the order they are started, one after the other on the
    /// confirm channel, while their confirms are awaited together.
    pub fn publish_then(&self, p: &Publish, now_ms: u64, done: Confirmed) {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let data = p.stored(now_ms);
        let (exchange, key) = match (&p.queue, p.broadcast) {
            (Some(q), _) => (String::new(), self.names.queue(q)),
            (None, true) => (self.names.exchange(Exchange::Notify), p.topic.clone()),
            (None, false) => (self.names.exchange(Exchange::Topic), p.topic.clone()),
        };
        let out = Outgoing {
            id,
            exchange,
            key,
            props: message::properties(id, &data, p.ttl_ms),
            body: p.body.clone(),
            done,
        };
        if let Err(tokio::sync::mpsc::error::SendError(Work::Publish(out))) =
            self.outgoing.send(Work::Publish(out))
        {
            (out.done)(Err(unavailable("publish", "the publisher stopped")));
        }
    }

    /// Appends `body` to stream `stream` (RabbitMQ's name) through the publisher, in order
    /// with this node's publishes; `done` once RabbitMQ confirms it.
    pub fn append(&self, stream: &str, body: Vec<u8>, done: Confirmed) {
        let out = Outgoing {
            id: 0,
            exchange: String::new(),
            key: stream.to_owned(),
            props: lapin::BasicProperties::default().with_delivery_mode(2),
            body: body.into(),
            done,
        };
        if let Err(tokio::sync::mpsc::error::SendError(Work::Publish(out))) =
            self.outgoing.send(Work::Publish(out))
        {
            (out.done)(Err(unavailable("append", "the publisher stopped")));
        }
    }

    /// Returns once every publish started before it has its outcome: a queue this node no
    /// longer routes to gets nothing more from it after that.
    pub async fn published(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.outgoing.send(Work::Barrier(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Takes up to `opts.max` messages from `queue`: removed at once (auto-ack), or leased
    /// for `opts.lease_ms` (settle with [`Amqp::settle`] by receipt).
    pub async fn receive(
        &self,
        queue: &str,
        opts: ReceiveOptions,
        now_ms: u64,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let (_, ch, take_no) = self.channels().await?;
        let name: Arc<str> = Arc::from(queue);
        let queue = self.names.queue(queue);
        let mut got = Vec::new();
        while got.len() < opts.max {
            let get = ch.basic_get(
                queue.as_str().into(),
                BasicGetOptions {
                    no_ack: opts.lease_ms.is_none(),
                },
            );
            let Some(m) = self.check(timed("get", get).await).await? else {
                break;
            };
            let d = m.delivery;
            let (id, data, delivery_count) =
                message::read(&d.properties, d.data, d.routing_key.as_str());
            let receipt = match opts.lease_ms {
                Some(ms) => {
                    let until = now_ms.saturating_add(ms);
                    let held = self
                        .leases()
                        .hold(take_no, d.delivery_tag, until, name.clone());
                    // None: the channel was opened again meanwhile; this delivery went back.
                    let Some(receipt) = held else { break };
                    Some(receipt)
                }
                None => None,
            };
            got.push(Delivery {
                id,
                data: Arc::new(data),
                delivery_count,
                receipt,
            });
        }
        Ok(got)
    }

    /// Acks or gives back leased deliveries by receipt, of queues `may_settle` allows.
    /// Receipts this node does not hold on a channel open now (settled already, lease
    /// ended, another node's, or of a channel since closed) or of another queue are
    /// `unknown`: their deliveries are, or will be, delivered again.
    pub async fn settle(
        &self,
        receipts: &[String],
        how: Settle,
        may_settle: impl Fn(&str) -> bool,
    ) -> Result<Settled, BrokerError> {
        let mut out = Settled::default();
        let op = match how {
            Settle::Ack => Op::Ack { multiple: false },
            Settle::Nack { requeue } => Op::Nack { requeue },
        };
        {
            // Out of the held table and into the waiting settlements in one step.
            let mut leases = self.leases();
            for r in receipts {
                match leases.take(r, &may_settle) {
                    Some(h) => {
                        leases.settle_later(h.channel, h.tag, op);
                        out.done += 1;
                    }
                    None => out.unknown.push(r.clone()),
                }
            }
        }
        match how {
            Settle::Ack => self.acks.soon(),
            // What is given back goes back now.
            Settle::Nack { .. } => self.flush_acks(None).await,
        }
        // A stopped reader's feed ends once its last lease is settled.
        if self.feeds.waiting_to_end() {
            self.tidy_feeds(0).await;
        }
        Ok(out)
    }

    /// The channel numbered `no`: the consuming channel of `take`, or a feed's.
    pub(crate) fn channel_no(&self, take: &(Channel, Channel, u64), no: u64) -> Option<Channel> {
        if no == take.2 {
            Some(take.1.clone())
        } else {
            self.feeds.channel(no)
        }
    }

    /// Gives back every delivery whose lease ended by `now_ms` (delivered again, counted);
    /// how many. Ends the feeds that are done ([`crate::feeds`]).
    pub async fn sweep(&self, now_ms: u64) -> Result<usize, BrokerError> {
        let ended = {
            let mut leases = self.leases();
            let ended = leases.take_ended(now_ms);
            for h in &ended {
                leases.settle_later(h.channel, h.tag, Op::Nack { requeue: true });
            }
            ended.len()
        };
        if ended > 0 {
            self.flush_acks(None).await;
        }
        self.tidy_feeds(now_ms).await;
        Ok(ended)
    }

    /// A fresh message id (for a publish that goes to no queue, only to live subscribers).
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the connection is up now.
    pub async fn connected(&self) -> bool {
        self.link
            .lock()
            .await
            .as_ref()
            .is_some_and(|l| l.conn.status().connected())
    }

    /// Deliveries of `queue` this node holds now: leased, and pushed to a feed and not
    /// yet handed out.
    pub fn leased_of(&self, queue: &str) -> usize {
        self.leases().count_of(queue) + self.feeds.buffered_of(queue)
    }

    /// Leases held now.
    pub fn leased(&self) -> usize {
        self.leases().len()
    }

    /// Closes the connection; leased deliveries go back to their queues.
    pub async fn close(&self) {
        self.flush_acks(None).await;
        if let Some(l) = self.link.lock().await.take() {
            let _ = tokio::time::timeout(TIMEOUT, l.conn.close(200, "bye".into())).await;
        }
    }
}

/// A publish's outcome to come, with whom to tell.
type Pending = std::pin::Pin<
    Box<dyn std::future::Future<Output = (Result<u64, BrokerError>, Confirmed)> + Send>,
>;

/// Sends publishes in the order they were started and hands each its confirm. Ends when
/// the engine is dropped.
async fn publisher(
    amqp: std::sync::Weak<Amqp>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Work>,
) {
    use futures::stream::{FuturesOrdered, StreamExt};
    // In publish order: a publish's outcome (and its live fan-out) follows the one before.
    let mut confirms = FuturesOrdered::new();
    loop {
        tokio::select! {
            work = rx.recv() => {
                let out = match work {
                    None => break,
                    // After every publish before it, in confirm order.
                    Some(Work::Barrier(tx)) => {
                        let done: Confirmed = Box::new(move |_| {
                            let _ = tx.send(());
                        });
                        confirms.push_back(Box::pin(async move { (Ok(0u64), done) }) as Pending);
                        continue;
                    }
                    Some(Work::Publish(out)) => out,
                };
                let Some(engine) = amqp.upgrade() else {
                    (out.done)(Err(unavailable("publish", "the engine stopped")));
                    break;
                };
                let Outgoing { id, exchange, key, props, body, done } = out;
                let ch = match engine.channels().await {
                    Ok((ch, _, _)) => ch,
                    Err(e) => {
                        done(Err(e));
                        continue;
                    }
                };
                // Polled once here, the publish hands its frames to the connection (in
                // publish order, with its confirm's number); the wait for them to be
                // written and confirmed goes on in `confirms`, so that the next publish
                // does not wait for this one's write.
                let mut publish = Box::pin(async move {
                    let publish = ch.basic_publish(
                        exchange.as_str().into(),
                        key.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        props,
                    );
                    (timed("publish", publish).await, key)
                });
                let first = futures::poll!(publish.as_mut());
                let weak = amqp.clone();
                confirms.push_back(Box::pin(async move {
                    let (sent, key) = match first {
                        std::task::Poll::Ready(out) => out,
                        std::task::Poll::Pending => publish.await,
                    };
                    let sent = match weak.upgrade() {
                        Some(engine) => engine.check(sent).await,
                        None => sent,
                    };
                    let r = match sent {
                        Err(e) => Err(e),
                        Ok(confirm) => match tokio::time::timeout(TIMEOUT, confirm).await {
                            Ok(Ok(Confirmation::Ack(_))) => Ok(id),
                            Ok(Ok(Confirmation::Nack(_))) => Err(BrokerError::QueueFull { queues: vec![key] }),
                            Ok(Ok(Confirmation::NotRequested)) => Err(unavailable("publish", "the channel is not in confirm mode")),
                            Ok(Err(e)) => Err(unavailable("publish", e)),
                            Err(_) => Err(unavailable("publish", "no confirm in time")),
                        },
                    };
                    (r, done)
                }) as Pending);
            }
            Some((r, done)) = confirms.next(), if !confirms.is_empty() => done(r),
        }
    }
    while let Some((r, done)) = confirms.next().await {
        done(r);
    }
}
