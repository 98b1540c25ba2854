//! The cluster's shared `message_id` records: a RabbitMQ stream (`<namespace>:dedup`) that
//! every node appends the answers of its publishes with a `message_id` to, and follows
//! from one window back (`x-stream-offset` as a time), so that a publisher's retry through
//! another node is answered with the first publish's answer and enqueues nothing.
//!
//! A record is appended through the node's publisher once the publish is confirmed, and
//! the publish is answered once RabbitMQ confirms the record too: a node that dies after
//! answering has told the others. Two publishes of one `message_id` reaching two nodes
//! within the time a record takes to cross (milliseconds) can both be taken; the stream
//! keeps records for the window (`x-max-age`), so a node that starts learns those still
//! current.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use trunkline_broker::{Broker, BrokerError, DedupRecord};

use crate::Amqp;

/// Records read at once.
const PREFETCH: u16 = 1000;

#[derive(Serialize, Deserialize)]
struct Record {
    origin: String,
    key: String,
    rec: DedupRecord,
}

fn unavailable(what: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("RabbitMQ: dedup log: {what}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A node's end of the shared dedup records.
pub struct DedupLog {
    amqp: Arc<Amqp>,
    registry: Broker,
    stream: String,
    window_ms: u64,
    /// The offset of the next record to read (-1: from one window back).
    next_offset: AtomicI64,
}

impl DedupLog {
    /// Declares the stream (records kept for `window_ms`) and follows it until `stop`.
    pub async fn open(
        amqp: Arc<Amqp>,
        registry: Broker,
        window_ms: u64,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, BrokerError> {
        let stream = amqp.names().stream("dedup");
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(b"stream".to_vec())),
        );
        let age = format!("{}s", window_ms.div_ceil(1000).max(1));
        args.insert(
            "x-max-age".into(),
            AMQPValue::LongString(LongString::from(age.into_bytes())),
        );
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        amqp.with_admin_channel("declare the dedup stream", |ch| {
            let (stream, args) = (stream.clone(), args.clone());
            async move {
                ch.queue_declare(stream.as_str().into(), opts, args)
                    .await
                    .map(drop)
            }
        })
        .await?;
        let log = Arc::new(DedupLog {
            amqp,
            registry,
            stream,
            window_ms,
            next_offset: AtomicI64::new(-1),
        });
        crate::follow::spawn(&log, stop);
        Ok(log)
    }

    /// Tells the other nodes the answer kept under `key`; `done` once RabbitMQ has it
    /// (or could not take it: the publish stays answered, the others just do not know).
    pub fn tell(&self, key: String, rec: DedupRecord, done: Box<dyn FnOnce() + Send>) {
        let record = Record {
            origin: self.amqp.origin().to_owned(),
            key,
            rec,
        };
        let body = serde_json::to_vec(&record).unwrap_or_default();
        self.amqp.append(
            &self.stream,
            body,
            Box::new(move |r| {
                if let Err(e) = r {
                    tracing::warn!(cause = %e, "a dedup record did not reach the other nodes");
                }
                done();
            }),
        );
    }

    async fn read(&self, stop: &CancellationToken) -> Result<(), BrokerError> {
        let ch = self.amqp.admin_channel().await?;
        ch.basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let from = match self.next_offset.load(Ordering::Relaxed) {
            // One window back, as a time in seconds.
            -1 => AMQPValue::Timestamp(now_ms().saturating_sub(self.window_ms) / 1000),
            n => AMQPValue::LongLongInt(n),
        };
        let mut args = FieldTable::default();
        args.insert("x-stream-offset".into(), from);
        let tag = format!("dedup-{}", self.amqp.origin());
        let mut consumer = ch
            .basic_consume(
                self.stream.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .map_err(unavailable)?;
        let origin = self.amqp.origin();
        loop {
            let next = tokio::select! {
                d = consumer.next() => d,
                () = stop.cancelled() => return Ok(()),
            };
            let Some(d) = next else {
                return Err(unavailable("the stream's consumer ended"));
            };
            let d = d.map_err(unavailable)?;
            let offset = d
                .properties
                .headers()
                .as_ref()
                .and_then(|h| {
                    h.inner()
                        .get("x-stream-offset")
                        .and_then(crate::message::int)
                })
                .map_or(-1, |o| o as i64);
            if offset >= self.next_offset.load(Ordering::Relaxed) {
                self.next_offset.store(offset + 1, Ordering::Relaxed);
                match serde_json::from_slice::<Record>(&d.data) {
                    Ok(r) if r.origin != origin => {
                        self.registry.dedup_learn(r.key, r.rec, now_ms());
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(offset, cause = %e, "a dedup record that is not one"),
                }
            }
            d.acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(unavailable)?;
        }
    }
}

impl crate::follow::Follower for DedupLog {
    const WHAT: &'static str = "the dedup log";
    fn run<'a>(
        &'a self,
        stop: &'a CancellationToken,
    ) -> trunkline_broker::backend::BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.read(stop))
    }
}
