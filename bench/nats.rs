//! `trunkline-bench nats-durable`: the durable publish → consume → ack scenario of
//! `stomp-durable`, against NATS JetStream (file storage) through the `async-nats` client:
//! publishers keep up to `--window` publish acks outstanding, each consumer is a durable
//! pull consumer on its own subject with `max_ack_pending = --prefetch`, acking every
//! message.
//!
//! Caveat for comparisons: JetStream acknowledges a publish once the message is written
//! to its file store, and syncs to disk on its own schedule (every two minutes by
//! default), not before each acknowledgement as Trunkline and RabbitMQ do.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, stream::StorageType};
use futures::StreamExt;

use crate::load::{self, LoadArgs};
use crate::{cpu_ticks, sys};

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
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmd)
            .starts_with("nats-server")
            .then_some(pid)
    })
}

pub async fn run(a: &NatsArgs) -> Result<bool> {
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
    let start = Instant::now();
    let deadline = start + Duration::from_secs(a.load.duration_limit);
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
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(Some(Ok(m))) = tokio::time::timeout(left, messages.next()).await else {
                    break;
                };
                if let Some(sent) = load::sent_ns(&m.payload) {
                    lat.push((start.elapsed().as_nanos() as u64).saturating_sub(sent));
                }
                if m.ack().await.is_err() {
                    break;
                }
            }
            lat
        }));
    }

    let cpu0 = cpu_ticks(pid)?;
    let run_start = Instant::now();
    let pad = load::padding(a.load.size);
    let per_pub = total / a.load.publishers as u64;
    let mut publishers = Vec::new();
    for p in 0..a.load.publishers {
        let js = jetstream::new(async_nats::connect(&a.nats).await.context("connect")?);
        let (pad, npub, consumers_n, window) = (
            pad.clone(),
            a.load.publishers,
            a.load.consumers,
            a.load.window,
        );
        let extra = u64::from((p as u64) < total % a.load.publishers as u64);
        publishers.push(tokio::spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel(window);
            let waiter = tokio::spawn(async move {
                let mut lat = Vec::new();
                while let Some((t0, ack)) = rx.recv().await {
                    let ack: jetstream::context::PublishAckFuture = ack;
                    if ack.await.is_err() {
                        break;
                    }
                    lat.push((start.elapsed().as_nanos() as u64).saturating_sub(t0));
                }
                lat
            });
            for i in 0..per_pub + extra {
                if Instant::now() > deadline {
                    break;
                }
                let n = i as usize * npub + p;
                let t0 = start.elapsed().as_nanos() as u64;
                let body = load::body(t0, &pad);
                let Ok(ack) = js
                    .publish(format!("bench.{}", n % consumers_n), body.into())
                    .await
                else {
                    break;
                };
                // The channel's capacity is the window of unacknowledged publishes.
                if tx.send((t0, ack)).await.is_err() {
                    break;
                }
            }
            drop(tx);
            waiter.await.unwrap_or_default()
        }));
    }
    let mut publish_lat = Vec::new();
    for p in publishers {
        publish_lat.extend(p.await.unwrap_or_default());
    }
    let mut e2e = Vec::new();
    for c in consumers {
        e2e.extend(c.await.unwrap_or_default());
    }
    let elapsed = run_start.elapsed().as_secs_f64();
    let cpu_s = (cpu_ticks(pid)? - cpu0) as f64 / sys::clock_ticks_per_sec()?;
    let _ = js.delete_stream("BENCH").await;
    load::report(
        "nats-durable",
        &a.load,
        load::Outcome {
            total,
            publish_ns: publish_lat,
            end_to_end_ns: e2e,
            elapsed_s: elapsed,
            server_cpu_s: cpu_s,
            server_pid: pid,
        },
    )
}
