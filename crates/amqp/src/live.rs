//! Live traffic between the nodes of a cluster: a topic exchange (`<namespace>.live`)
//! whose messages are transient, and a queue per node (`<namespace>:node.<origin>`,
//! exclusive: it goes with the node's connection).
//!
//! A node binds its queue with each pattern its live subscribers (STOMP `/topic/…`)
//! follow, counted, unbound when the last one goes. After a publish to a topic is
//! confirmed, the node hands it to its own subscribers and sends a copy to the exchange
//! with the topic as routing key (at most 255 bytes, as AMQP's): RabbitMQ gives it to each
//! node that follows a matching pattern (Trunkline's patterns are AMQP's). A node ignores
//! the copies it sent.
//!
//! The live engines' [`Crossing`]s go through a second topic exchange,
//! `<namespace>.channels` (this is the node's [`Bus`]):
//! - channel messages (WebSocket channels, and the backend's publishes to them): routing
//!   key `c.<channel>` (`s.<channel>` for a system channel), bound while the node has
//!   members of the channel, and `s.#` while it has `sys:*` watchers. The receiving node
//!   delivers the message to its members as if it were published there;
//! - to every node (changes of what a node holds, its beats): key `all`, always bound;
//! - to one node (calls, their parts and ends, holdings asked for): key `n.<origin>`,
//!   always bound by that node.
//!
//! Live means best effort, as on one node: a copy is not confirmed, a node that cannot
//! keep up (or whose link is down) misses messages, counted in `missed`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trunkline_broker::{Broker, BrokerError};
use trunkline_realtime::{names, Bus, BusSink, Crossing, To};
use trunkline_store::StoredMessage;

use crate::{message, Amqp};

/// Copies waiting to be sent; past this, new ones are dropped (and counted missed).
const OUTGOING: usize = 10_000;
/// The header naming the node that sent a copy.
const ORIGIN: &str = "x-tl-origin";

/// A copy on its way out.
enum Copy {
    Topic { id: u64, data: Arc<StoredMessage> },
    Crossing { key: String, body: Vec<u8> },
}

/// Which exchange a binding is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Route {
    Topics,
    Channels,
}

/// A node's end of the live exchanges.
pub struct LiveLink {
    me: Weak<LiveLink>,
    amqp: Arc<Amqp>,
    registry: Broker,
    /// The exchanges of topics and of channels.
    topics: String,
    channels: String,
    queue: String,
    /// Binding keys followed and how many of this node's subscribers need each.
    keys: Mutex<HashMap<(Route, String), usize>>,
    out: mpsc::Sender<Copy>,
    /// The channel the node's queue is consumed on; bindings are made on it too.
    channel: tokio::sync::Mutex<Option<Channel>>,
    sink: std::sync::OnceLock<Arc<dyn BusSink>>,
    /// The keys always bound: every node's, and this node's own.
    fixed: [String; 2],
}

/// The routing key of a channel's messages.
fn channel_key(channel: &str) -> String {
    if names::is_system(channel) {
        format!("s.{channel}")
    } else {
        format!("c.{channel}")
    }
}

/// What every system channel's messages match.
const ALL_SYSTEM: &str = "s.#";
/// What goes to every node.
const ALL_NODES: &str = "all";

/// The routing key of what goes to one node: its origin, with the characters that mean
/// something in a binding key replaced.
fn node_key(origin: &str) -> String {
    let safe: String = origin
        .chars()
        .map(|c| if matches!(c, '*' | '#') { '_' } else { c })
        .collect();
    format!("n.{safe}")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unavailable(what: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("RabbitMQ: live link: {what}"))
}

impl LiveLink {
    /// Declares the exchange and starts linking (until `stop`): the node's queue, its
    /// bindings, the copies it sends and those it gets.
    pub async fn open(
        amqp: Arc<Amqp>,
        registry: Broker,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, BrokerError> {
        let topics = amqp.names().live_exchange();
        let channels = amqp.names().channels_exchange();
        for ex in [topics.clone(), channels.clone()] {
            amqp.with_admin_channel("declare a live exchange", |ch| async move {
                let opts = ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                ch.exchange_declare(
                    ex.as_str().into(),
                    ExchangeKind::Topic,
                    opts,
                    FieldTable::default(),
                )
                .await
            })
            .await?;
        }
        let (out, rx) = mpsc::channel(OUTGOING);
        let fixed = [ALL_NODES.to_owned(), node_key(amqp.origin())];
        let link = Arc::new_cyclic(|me| LiveLink {
            me: me.clone(),
            queue: amqp.names().stream(&format!("node.{}", amqp.origin())),
            amqp,
            registry,
            topics,
            channels,
            keys: Mutex::default(),
            out,
            channel: tokio::sync::Mutex::new(None),
            sink: std::sync::OnceLock::new(),
            fixed,
        });
        crate::follow::spawn(&link, stop.clone());
        tokio::spawn(send(Arc::downgrade(&link), rx, stop));
        Ok(link)
    }

    /// Follows `pattern` (this node's subscribers need it); [`LiveLink::unfollow`] once
    /// each is gone.
    pub fn follow(&self, pattern: &str) {
        self.count((Route::Topics, pattern.to_owned()), true);
    }

    pub fn unfollow(&self, pattern: &str) {
        self.count((Route::Topics, pattern.to_owned()), false);
    }

    /// Counts one more (or one less) need of a binding; binds it for the first and
    /// unbinds it after the last, in the background (a subscription may end outside a
    /// task).
    fn count(&self, key: (Route, String), add: bool) {
        let change = {
            let mut keys = lock(&self.keys);
            let n = keys.entry(key.clone()).or_insert(0);
            if add {
                *n += 1;
                *n == 1
            } else {
                *n = n.saturating_sub(1);
                let last = *n == 0;
                if last {
                    keys.remove(&key);
                }
                last
            }
        };
        if change {
            if let (Ok(rt), Some(link)) = (tokio::runtime::Handle::try_current(), self.me.upgrade())
            {
                rt.spawn(async move { link.bind(&key, add).await });
            }
        }
    }

    fn exchange(&self, route: Route) -> &str {
        match route {
            Route::Topics => &self.topics,
            Route::Channels => &self.channels,
        }
    }

    /// Sends a copy of a message just published to a topic to the nodes that follow it.
    pub fn send(&self, id: u64, data: Arc<StoredMessage>) {
        if self.out.try_send(Copy::Topic { id, data }).is_err() {
            self.registry
                .live_counters()
                .missed
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Binds (or unbinds) `key`, if linked now; bindings are made again on each link.
    async fn bind(&self, key: &(Route, String), add: bool) {
        let ch = self.channel.lock().await;
        let Some(ch) = ch.as_ref() else { return };
        // It may have changed while waiting for the channel.
        if lock(&self.keys).contains_key(key) != add {
            return;
        }
        let (route, k) = key;
        let (q, e) = (self.queue.as_str().into(), self.exchange(*route).into());
        let r = if add {
            let opts = QueueBindOptions::default();
            ch.queue_bind(q, e, k.as_str().into(), opts, FieldTable::default())
                .await
        } else {
            ch.queue_unbind(q, e, k.as_str().into(), FieldTable::default())
                .await
        };
        if let Err(e) = r {
            tracing::warn!(key = %k, cause = %e, "live link: binding");
        }
    }

    /// Declares the node's queue, binds what is followed and hands what arrives to this
    /// node's subscribers, until the channel closes or `stop`.
    async fn link(&self, stop: &CancellationToken) -> Result<(), BrokerError> {
        let ch = self.amqp.admin_channel().await?;
        let opts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        ch.queue_declare(self.queue.as_str().into(), opts, FieldTable::default())
            .await
            .map_err(unavailable)?;
        let mut consumer = ch
            .basic_consume(
                self.queue.as_str().into(),
                "live".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        {
            let mut held = self.channel.lock().await;
            let mut keys: Vec<(Route, String)> = lock(&self.keys).keys().cloned().collect();
            keys.extend(self.fixed.iter().map(|k| (Route::Channels, k.clone())));
            for (route, key) in keys {
                let (q, e) = (self.queue.as_str().into(), self.exchange(route).into());
                ch.queue_bind(
                    q,
                    e,
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(unavailable)?;
            }
            *held = Some(ch.clone());
        }
        if let Some(sink) = self.sink.get() {
            sink.linked();
        }
        let origin = self.amqp.origin();
        let r = loop {
            let next = tokio::select! {
                d = consumer.next() => d,
                () = stop.cancelled() => break Ok(()),
            };
            let d = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => break Err(unavailable(e)),
                None => break Err(unavailable("the node's queue's consumer ended")),
            };
            let from = d
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(ORIGIN).and_then(message::string));
            if from.as_deref() == Some(origin) {
                continue;
            }
            if d.exchange.as_str() == self.channels {
                let crossing = Crossing::from_bytes(&d.data);
                if let (Some(c), Some(from), Some(sink)) = (crossing, from, self.sink.get()) {
                    sink.received(&from, c);
                }
                continue;
            }
            let topic = d.routing_key.to_string();
            let (id, data, _) = message::read(&d.properties, d.data, &topic);
            self.registry.publish_live(id, Arc::new(data));
        };
        *self.channel.lock().await = None;
        r
    }
}

/// Sends copies, in order, on a channel of their own.
async fn send(link: Weak<LiveLink>, mut rx: mpsc::Receiver<Copy>, stop: CancellationToken) {
    let mut ch: Option<Channel> = None;
    loop {
        let copy = tokio::select! {
            c = rx.recv() => c,
            () = stop.cancelled() => return,
        };
        let Some(copy) = copy else { return };
        let Some(l) = link.upgrade() else { return };
        if ch.as_ref().is_none_or(|c| !c.status().connected()) {
            ch = l.amqp.admin_channel().await.ok();
        }
        let Some(c) = ch.as_ref() else {
            l.registry
                .live_counters()
                .missed
                .fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (exchange, key, body, props) = match copy {
            Copy::Topic { id, data } => {
                let props = message::properties(id, &data, None);
                (&l.topics, data.topic.clone(), data.body.to_vec(), props)
            }
            Copy::Crossing { key, body } => {
                let props = lapin::BasicProperties::default();
                (&l.channels, key, body, props)
            }
        };
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(
            ORIGIN.into(),
            AMQPValue::LongString(LongString::from(l.amqp.origin().as_bytes().to_vec())),
        );
        let props = props.with_delivery_mode(1).with_headers(headers);
        let r = c
            .basic_publish(
                exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await;
        if r.is_err() {
            ch = None;
        }
    }
}

impl crate::follow::Follower for LiveLink {
    const WHAT: &'static str = "the live exchange";
    fn run<'a>(
        &'a self,
        stop: &'a CancellationToken,
    ) -> trunkline_broker::backend::BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.link(stop))
    }
}

impl Bus for LiveLink {
    fn origin(&self) -> &str {
        self.amqp.origin()
    }

    fn send(&self, to: To<'_>, c: &Crossing) {
        let key = match to {
            To::Channel(channel) => channel_key(channel),
            To::All => ALL_NODES.to_owned(),
            To::Node(origin) => node_key(origin),
        };
        let body = c.to_bytes();
        if self.out.try_send(Copy::Crossing { key, body }).is_err() {
            self.registry
                .live_counters()
                .missed
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn follow(&self, channel: &str) {
        self.count((Route::Channels, channel_key(channel)), true);
    }

    fn unfollow(&self, channel: &str) {
        self.count((Route::Channels, channel_key(channel)), false);
    }

    fn follow_system(&self) {
        self.count((Route::Channels, ALL_SYSTEM.to_owned()), true);
    }

    fn unfollow_system(&self) {
        self.count((Route::Channels, ALL_SYSTEM.to_owned()), false);
    }

    fn deliver_to(&self, sink: Arc<dyn BusSink>) {
        if self.sink.set(sink).is_err() {
            tracing::warn!("live link: crossings already go elsewhere");
        }
    }
}
