//! `trunkline-bench nats-durable`: the durable publish → consume → ack scenario of
//! `stomp-durable`, against NATS JetStream (file storage) through the `async-nats` client:
//! publishers (`load::publish`) keep up to `--window` publish acks outstanding, each
//! consumer is a durable pull consumer on its own subject with `max_ack_pending =
//! --prefetch`, acking every message.
//!
//! Caveat for comparisons: JetStream acknowledges a publish once the message is written
//! to its file store, and syncs to disk on its own schedule (every two minutes by
//! default), not before each acknowledgement as Trunkline and RabbitMQ do.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, stream::StorageType};
use futures::StreamExt;

use crate::find_process;
use crate::load::{self, LoadArgs};

#[derive(clap::Args, Clone, Debug)]
pub struct NatsArgs {
    /// NATS address (a `nats-server -js` started by bench/compare.sh).
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub nats: String,
    /// The server process, for CPU per message (default: found by name).
    #[arg(long)]
    pub server_pid: Option<u32>,
    #[command(flatten)]
    pub load: LoadArgs,
}

pub(crate) fn find_nats() -> Option<u32> {
    find_process(|cmd| cmd.starts_with("nats-server"))
}

pub async fn run(a: &NatsArgs) -> Result<bool> {
    a.load.check()?;
    let pid = a
        .server_pid
        .or_else(find_nats)
        .ok_or_else(|| anyhow!("no nats-server process; pass --server-pid"))?;
    let client = async_nats::connect(&a.nats)
        .await
        .context("connect to NATS")?;
    let js = jetstream::new(client);
    let _ = js.delete_stream("BENCH").await;
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "BENCH".into(),
            subjects: vec!["bench.>".into()],
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("create stream: {e}"))?;
    let clock = load::Clock::new(&a.load);
    let (per_consumer, total) = a.load.split();

    let mut consumers = Vec::new();
    for c in 0..a.load.consumers {
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(format!("c{c}")),
                filter_subject: format!("bench.{c}"),
                ack_policy: AckPolicy::Explicit,
                max_ack_pending: a.load.prefetch as i64,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("create consumer: {e}"))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| anyhow!("consume: {e}"))?;
        consumers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_consumer as usize);
            while (lat.len() as u64) < per_consumer {
                let Ok(Some(Ok(m))) = tokio::time::timeout(clock.left(), messages.next()).await
                else {
                    break;
                };
                if let Some(l) = clock.end_to_end(&m.payload) {
                    lat.push(l);
                }
                if m.ack().await.is_err() {
                    break;
                }
            }
            load::Consumed {
                end_to_end_ns: lat,
                done: Instant::now(),
            }
        }));
    }

    let mut contexts = Vec::with_capacity(a.load.publishers);
    for _ in 0..a.load.publishers {
        contexts.push(jetstream::new(
            async_nats::connect(&a.nats).await.context("connect")?,
        ));
    }
    let meter = load::Meter::start(pid)?;
    let mut schedule = load::Schedule::start(&a.load, clock, total);
    let pad = Arc::new(load::padding(a.load.size));
    let consumers_n = a.load.consumers as u64;
    let mut publishers = Vec::new();
    for (p, js) in contexts.into_iter().enumerate() {
        let (part, pad) = (schedule.publisher(p), pad.clone());
        publishers.push(tokio::spawn(async move {
            load::publish(part, &pad, |n, body| {
                let js = &js;
                async move {
                    let ack = js
                        .publish(format!("bench.{}", n % consumers_n), body.into())
                        .await
                        .map_err(|e| anyhow!("publish: {e}"))?;
                    Ok(async move { ack.await.map(drop).map_err(|e| anyhow!("publish ack: {e}")) })
                }
            })
            .await
        }));
    }
    let outcome = meter
        .finish(total, a.load.rate, publishers, consumers)
        .await?;
    let _ = js.delete_stream("BENCH").await;
    load::report("nats-durable", &a.load, outcome)
}
