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
use trunkline_store::StoredMessage;

use crate::{message, Amqp};

/// Copies waiting to be sent; past this, new ones are dropped (and counted missed).
const OUTGOING: usize = 10_000;
/// The header naming the node that sent a copy.
const ORIGIN: &str = "x-tl-origin";

/// A copy on its way out.
struct Copy {
    id: u64,
    data: Arc<StoredMessage>,
}

/// A node's end of the live exchange.
pub struct LiveLink {
    amqp: Arc<Amqp>,
    registry: Broker,
    exchange: String,
    queue: String,
    /// Patterns followed and how many of this node's subscribers follow each.
    keys: Mutex<HashMap<String, usize>>,
    out: mpsc::Sender<Copy>,
    /// The channel the node's queue is consumed on; bindings are made on it too.
    channel: tokio::sync::Mutex<Option<Channel>>,
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
        let exchange = amqp.names().live_exchange();
        let ex = exchange.clone();
        amqp.with_admin_channel("declare the live exchange", |ch| async move {
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
        let (out, rx) = mpsc::channel(OUTGOING);
        let link = Arc::new(LiveLink {
            queue: amqp.names().stream(&format!("node.{}", amqp.origin())),
            amqp,
            registry,
            exchange,
            keys: Mutex::default(),
            out,
            channel: tokio::sync::Mutex::new(None),
        });
        crate::follow::spawn(&link, stop.clone());
        tokio::spawn(send(Arc::downgrade(&link), rx, stop));
        Ok(link)
    }

    /// Follows `pattern` (this node's subscribers need it); [`LiveLink::unfollow`] once
    /// each is gone.
    pub fn follow(self: &Arc<Self>, pattern: &str) {
        let key = pattern.to_owned();
        let first = {
            let mut keys = lock(&self.keys);
            let n = keys.entry(key.clone()).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            self.rebind(key, true);
        }
    }

    pub fn unfollow(self: &Arc<Self>, pattern: &str) {
        let key = pattern.to_owned();
        let last = {
            let mut keys = lock(&self.keys);
            match keys.get_mut(&key) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    keys.remove(&key);
                    true
                }
                None => false,
            }
        };
        if last {
            self.rebind(key, false);
        }
    }

    /// Binds or unbinds `key` in the background (a subscription may end outside a task).
    fn rebind(self: &Arc<Self>, key: String, add: bool) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let link = self.clone();
            rt.spawn(async move { link.bind(&key, add).await });
        }
    }

    /// Whether this node's queue is bound to `pattern` now (for tests and probes).
    pub async fn follows(&self, pattern: &str) -> bool {
        lock(&self.keys).contains_key(pattern) && self.channel.lock().await.is_some()
    }

    /// Sends a copy of a message just published to a topic to the nodes that follow it.
    pub fn send(&self, id: u64, data: Arc<StoredMessage>) {
        if self.out.try_send(Copy { id, data }).is_err() {
            self.registry
                .live_counters()
                .missed
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Binds (or unbinds) `key`, if linked now; bindings are made again on each link.
    async fn bind(&self, key: &str, add: bool) {
        let ch = self.channel.lock().await;
        let Some(ch) = ch.as_ref() else { return };
        // It may have changed while waiting for the channel.
        if lock(&self.keys).contains_key(key) != add {
            return;
        }
        let (q, e) = (self.queue.as_str().into(), self.exchange.as_str().into());
        let r = if add {
            let opts = QueueBindOptions::default();
            ch.queue_bind(q, e, key.into(), opts, FieldTable::default())
                .await
        } else {
            ch.queue_unbind(q, e, key.into(), FieldTable::default())
                .await
        };
        if let Err(e) = r {
            tracing::warn!(key, cause = %e, "live link: binding");
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
            let keys: Vec<String> = lock(&self.keys).keys().cloned().collect();
            for key in keys {
                let (q, e) = (self.queue.as_str().into(), self.exchange.as_str().into());
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
        let Some(Copy { id, data }) = copy else {
            return;
        };
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
        let mut props = message::properties(id, &data, None).with_delivery_mode(1);
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(
            ORIGIN.into(),
            AMQPValue::LongString(LongString::from(l.amqp.origin().as_bytes().to_vec())),
        );
        props = props.with_headers(headers);
        let r = c
            .basic_publish(
                l.exchange.as_str().into(),
                data.topic.as_str().into(),
                BasicPublishOptions::default(),
                &data.body,
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
