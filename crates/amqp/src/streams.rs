//! RabbitMQ streams as the cluster's shared logs (the registry's, the dedup records'):
//! declaring one, and reading it from a point on, record by record, with each record's
//! offset so that a reader that reconnects goes on where it stopped.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use tokio_util::sync::CancellationToken;
use trunkline_broker::BrokerError;

use crate::Amqp;

/// Records read at once.
const PREFETCH: u16 = 512;

fn unavailable(stream: &str, what: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("RabbitMQ: stream {stream}: {what}"))
}

/// Declares stream `name` (RabbitMQ's name), durable; records older than `max_age_secs`
/// (if given) are dropped.
pub(crate) async fn declare(
    amqp: &Amqp,
    name: &str,
    max_age_secs: Option<u64>,
) -> Result<(), BrokerError> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(b"stream".to_vec())),
    );
    if let Some(secs) = max_age_secs {
        let age = format!("{}s", secs.max(1));
        args.insert(
            "x-max-age".into(),
            AMQPValue::LongString(LongString::from(age.into_bytes())),
        );
    }
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    amqp.with_admin_channel("declare a stream", |ch| async move {
        ch.queue_declare(name.into(), opts, args).await.map(drop)
    })
    .await
}

/// Reads stream `name` from `next` on (or from `start` while `next` is -1), handing each
/// record's offset and body to `each` in order, and moving `next` past it, until the
/// channel closes (an error: the follower reads again) or `stop`. A stream may start a
/// consumer at the chunk before the offset asked for: those records are skipped.
pub(crate) async fn read<F, Fut>(
    amqp: &Amqp,
    name: &str,
    tag: &str,
    start: AMQPValue,
    next: &AtomicI64,
    stop: &CancellationToken,
    mut each: F,
) -> Result<(), BrokerError>
where
    F: FnMut(i64, Vec<u8>) -> Fut,
    Fut: Future<Output = ()>,
{
    let ch = amqp.admin_channel().await?;
    ch.basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(|e| unavailable(name, e))?;
    let from = match next.load(Ordering::Relaxed) {
        -1 => start,
        n => AMQPValue::LongLongInt(n),
    };
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), from);
    let mut consumer = ch
        .basic_consume(
            name.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .map_err(|e| unavailable(name, e))?;
    loop {
        let d = tokio::select! {
            d = consumer.next() => d,
            () = stop.cancelled() => return Ok(()),
        };
        let Some(d) = d else {
            return Err(unavailable(name, "the consumer ended"));
        };
        let d = d.map_err(|e| unavailable(name, e))?;
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
        if offset >= next.load(Ordering::Relaxed) {
            each(offset, d.data).await;
            next.store(offset + 1, Ordering::Relaxed);
        }
        d.acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| unavailable(name, e))?;
    }
}
