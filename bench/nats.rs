//! `trunkline-bench nats-durable`: the durable publish → consume → ack scenario of
//! `stomp-durable`, against NATS JetStream (file storage) through the `async-nats` client:
//! publishers keep up to `--window` publish acks outstanding, each consumer is a durable
//! pull consumer on its own subject with `max_ack_pending = --prefetch`, acking every
//! message.
//!
//! Caveat for comparisons: JetStream acknowledges a publish once the message is written
//! to its file store, and syncs to disk on its own schedule (every two minutes by
//! default), not before each acknowledgement as Trunkline and RabbitMQ do.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, stream::StorageType};
use futures::StreamExt;
use serde_json::json;

use crate::{cpu_ticks, latency_json, peak_rss_kib, sys};

#[derive(clap::Args, Clone, Debug)]
pub struct NatsArgs {
    /// NATS address (a `nats-server -js` started by bench/compare.sh).
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub nats: String,
    /// The server process, for CPU per message (default: found by name).
    #[arg(long)]
    pub server_pid: Option<u32>,
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    #[arg(long, default_value_t = 100)]
    pub window: usize,
    #[arg(long, default_value_t = 100)]
    pub prefetch: usize,
    #[arg(long, default_value_t = 120)]
    pub duration_limit: u64,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn find_nats() -> Option<u32> {
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
    let deadline = start + Duration::from_secs(a.duration_limit);
    let per_consumer = a.messages / a.consumers as u64;
    let total = per_consumer * a.consumers as u64;

    let mut consumers = Vec::new();
    for c in 0..a.consumers {
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(format!("c{c}")),
                filter_subject: format!("bench.{c}"),
                ack_policy: AckPolicy::Explicit,
                max_ack_pending: a.prefetch as i64,
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
                let sent = std::str::from_utf8(&m.payload[..20.min(m.payload.len())])
                    .ok()
                    .and_then(|s| {
                        s.trim_start_matches("{\"t\":")
                            .split(',')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    });
                if let Some(sent) = sent {
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
    let pad = "x".repeat(a.size.saturating_sub(40));
    let per_pub = total / a.publishers as u64;
    let mut publishers = Vec::new();
    for p in 0..a.publishers {
        let js = jetstream::new(async_nats::connect(&a.nats).await.context("connect")?);
        let (pad, npub, consumers_n, window) = (pad.clone(), a.publishers, a.consumers, a.window);
        let extra = u64::from((p as u64) < total % a.publishers as u64);
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
                let body = format!("{{\"t\":{t0},\"pad\":\"{pad}\"}}");
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
    let consumed = e2e.len() as u64;
    let r = json!({
        "target": "nats-jetstream", "messages": total, "size": a.size, "publishers": a.publishers,
        "consumers": a.consumers, "window": a.window, "prefetch": a.prefetch,
        "confirmed": publish_lat.len(), "consumed": consumed, "elapsed_s": elapsed,
        "msgs_per_s": consumed as f64 / elapsed,
        "server_cpu_us_per_msg": cpu_s * 1e6 / consumed.max(1) as f64,
        "server_peak_rss_mib": peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
        "publish_latency": latency_json(publish_lat),
        "end_to_end_latency": latency_json(e2e),
    });
    println!(
        "nats-durable: {} msgs of {} B: {:.0} msgs/s consumed+acked, server CPU {:.1} µs/msg, peak RSS {:.1} MiB",
        total,
        a.size,
        r["msgs_per_s"].as_f64().unwrap_or(0.0),
        r["server_cpu_us_per_msg"].as_f64().unwrap_or(0.0),
        r["server_peak_rss_mib"].as_f64().unwrap_or(0.0),
    );
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&r)?)?;
    }
    let _ = js.delete_stream("BENCH").await;
    Ok(consumed == total)
}
