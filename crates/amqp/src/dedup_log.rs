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

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use lapin::types::AMQPValue;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use trunkline_broker::{Broker, BrokerError, DedupRecord};

use crate::Amqp;

#[derive(Serialize, Deserialize)]
struct Record {
    origin: String,
    key: String,
    rec: DedupRecord,
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
        crate::streams::declare(&amqp, &stream, Some(window_ms.div_ceil(1000))).await?;
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

    /// Reads the stream from one window back (then from where it stopped), learning the
    /// other nodes' records, until the channel closes or `stop`.
    async fn read(&self, stop: &CancellationToken) -> Result<(), BrokerError> {
        let start = AMQPValue::Timestamp(now_ms().saturating_sub(self.window_ms) / 1000);
        let tag = format!("dedup-{}", self.amqp.origin());
        let origin = self.amqp.origin();
        let each = |offset, body: Vec<u8>| {
            match serde_json::from_slice::<Record>(&body) {
                Ok(r) if r.origin != origin => {
                    self.registry.dedup_learn(r.key, r.rec, now_ms());
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(offset, cause = %e, "a dedup record that is not one"),
            }
            std::future::ready(())
        };
        crate::streams::read(
            &self.amqp,
            &self.stream,
            &tag,
            start,
            &self.next_offset,
            stop,
            each,
        )
        .await
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
