//! `trunkline-bench amqp-durable`: the durable publish → consume → ack scenario of
//! `stomp-durable`, against RabbitMQ over its native protocol, AMQP 0-9-1, through the
//! `lapin` client.
//!
//! One durable queue per consumer (deleted and declared again before the run, deleted
//! after it, so that runs do not inherit each other's messages). Each publisher has its
//! own connection, a channel in confirm mode, and publishes persistent messages
//! (`delivery_mode` 2) to the default exchange, keeping up to `--window` unconfirmed;
//! publish latency runs to the publisher confirm, which RabbitMQ sends once the message
//! is on disk. Each consumer has its own connection, `basic.qos` prefetch `--prefetch`,
//! and acks every message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::disk::{self, Placement};
use crate::find_beams;
use crate::load::{self, LoadArgs};

#[derive(clap::Args, Clone, Debug)]
pub struct AmqpArgs {
    /// RabbitMQ's AMQP URI (scripts/rabbitmq.sh listens on 25673).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:25673/%2f")]
    pub amqp: String,
    /// RabbitMQ's server processes, for CPU per message (repeat for the nodes of a
    /// cluster; default: every RabbitMQ process on the machine).
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// Quorum queues (replicated, as Trunkline declares over RabbitMQ) instead of classic
    /// ones.
    #[arg(long)]
    pub quorum: bool,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Time allowed for connecting, declaring and deleting.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

async fn connect(uri: &str) -> Result<(Connection, Channel)> {
    let conn = tokio::time::timeout(
        SETUP_TIMEOUT,
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| anyhow!("{uri}: connection timed out"))?
    .with_context(|| format!("connect to {uri}"))?;
    let channel = conn.create_channel().await.context("open a channel")?;
    Ok((conn, channel))
}

/// RabbitMQ as a run's system: where it stores persistent messages, found from the files
/// its server process holds open (the store exists once a durable queue was declared).
pub(crate) fn system(pid: u32) -> load::System {
    let data = disk::rabbitmq_store(pid)
        .and_then(|dir| {
            Placement::of(
                &dir,
                "the directory of the msg_store_persistent file the server holds open",
            )
        })
        .map_err(|e| format!("{e:#}"));
    load::System {
        server: "RabbitMQ".into(),
        settings: None,
        data,
        pid,
    }
}

/// Deletes `queues` (those that exist) through a connection of its own, so that a run
/// inherits no messages from an earlier one and leaves none behind.
pub async fn delete_queues(uri: &str, queues: &[String]) -> Result<()> {
    if queues.is_empty() {
        return Ok(());
    }
    let (conn, channel) = connect(uri).await?;
    for q in queues {
        // Deleting a queue that does not exist succeeds.
        tokio::time::timeout(
            SETUP_TIMEOUT,
            channel.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
        )
        .await
        .map_err(|_| anyhow!("delete queue {q}: timed out"))?
        .with_context(|| format!("delete queue {q}"))?;
    }
    let _ = tokio::time::timeout(SETUP_TIMEOUT, conn.close(200, "bye".into())).await;
    Ok(())
}

pub async fn run(a: &AmqpArgs) -> Result<bool> {
    a.load.check()?;
    let pids = if a.server_pid.is_empty() {
        find_beams()
    } else {
        a.server_pid.clone()
    };
    if pids.is_empty() {
        bail!("no RabbitMQ process found; pass --server-pid");
    }
    let prefetch =
        u16::try_from(a.load.prefetch).map_err(|_| anyhow!("--prefetch must be at most 65535"))?;
    let queues: Vec<String> = (0..a.load.consumers)
        .map(|c| format!("trunkline-bench-amqp-{c}"))
        .collect();
    delete_queues(&a.amqp, &queues).await?;
    let result = load(a, &pids, prefetch, &queues).await;
    let cleanup = delete_queues(&a.amqp, &queues).await;
    let ok = result?;
    cleanup?;
    Ok(ok)
}

async fn load(a: &AmqpArgs, pids: &[u32], prefetch: u16, queues: &[String]) -> Result<bool> {
    let mut arguments = FieldTable::default();
    if a.quorum {
        arguments.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
    }
    let clock = load::Clock::new(&a.load);
    let (per_consumer, total) = a.load.split();

    let mut consumers = Vec::new();
    for (c, q) in queues.iter().enumerate() {
        let (conn, channel) = connect(&a.amqp).await?;
        channel
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments.clone(),
            )
            .await
            .with_context(|| format!("declare queue {q}"))?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .context("basic.qos")?;
        let mut deliveries = channel
            .basic_consume(
                q.as_str().into(),
                format!("bench-c{c}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consume from {q}"))?;
        let queues_n = queues.len();
        consumers.push(tokio::spawn(async move {
            let mut ledger = load::Ledger::new(clock, total, c, queues_n);
            while ledger.distinct() < per_consumer {
                let Ok(Some(Ok(d))) = tokio::time::timeout(clock.left(), deliveries.next()).await
                else {
                    break;
                };
                ledger.delivered(&d.data);
                if d.ack(BasicAckOptions::default()).await.is_err() {
                    break;
                }
            }
            let consumed = load::Consumed {
                ledger,
                done: Instant::now(),
            };
            let _ =
                tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bye".into())).await;
            consumed
        }));
    }

    let mut channels = Vec::with_capacity(a.load.publishers);
    for _ in 0..a.load.publishers {
        let (conn, channel) = connect(&a.amqp).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("confirm.select")?;
        channels.push((conn, channel));
    }
    let meter = load::Meter::of(pids.to_vec(), Vec::new())?;
    let mut schedule = load::Schedule::start(&a.load, clock, total);
    let pad = Arc::new(load::padding(a.load.size));
    let queues = Arc::new(queues.to_vec());
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let mut publishers = Vec::new();
    for (p, (conn, channel)) in channels.into_iter().enumerate() {
        let (part, pad, queues) = (schedule.publisher(p), pad.clone(), queues.clone());
        let properties = properties.clone();
        publishers.push(tokio::spawn(async move {
            let published = load::publish(part, &pad, |n, body| {
                let (channel, queues, properties) = (&channel, &queues, &properties);
                async move {
                    let q = &queues[n as usize % queues.len()];
                    let confirm = channel
                        .basic_publish(
                            "".into(),
                            q.as_str().into(),
                            BasicPublishOptions::default(),
                            body.as_bytes(),
                            properties.clone(),
                        )
                        .await?;
                    Ok(confirm.map(|r| match r {
                        Ok(Confirmation::Ack(_)) => Ok(()),
                        Ok(other) => bail!("publisher confirm: {other:?}"),
                        Err(e) => Err(anyhow::Error::from(e)),
                    }))
                }
            })
            .await;
            let _ =
                tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bye".into())).await;
            published
        }));
    }
    let outcome = meter
        .finish(total, a.load.rate, publishers, consumers)
        .await?;
    let target = if a.quorum {
        "amqp-durable rabbitmq (quorum queues)"
    } else {
        "amqp-durable rabbitmq"
    };
    load::report(target, &a.load, &system(pids[0]), outcome)
}
