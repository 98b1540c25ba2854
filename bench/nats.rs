//! `trunkline-bench nats-durable`: the durable publish → consume → ack scenario of
//! `stomp-durable`, against NATS JetStream (file storage) through the `async-nats` client:
//! publishers (`load::publish`) keep up to `--window` publish acks outstanding, each
//! consumer is a durable pull consumer on its own subject with `max_ack_pending =
//! --prefetch`, acking every message.
//!
//! Caveat for comparisons: by default JetStream acknowledges a publish once the message
//! is written to its file store, and syncs to disk on its own schedule (every two minutes),
//! not before each acknowledgement as Trunkline and RabbitMQ do. Servers from 2.10 on
//! sync every write first with `jetstream { sync_interval: always }`. With `--monitor`,
//! the run asks the server (`/varz`) for its version, its sync setting and its store
//! directory, and reports them.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, stream::StorageType};
use futures::StreamExt;

use crate::disk::Placement;
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
    /// The server's HTTP monitoring address (`nats-server -m`, or `http:` in its config),
    /// to read its store directory and sync setting from `/varz`.
    #[arg(long)]
    pub monitor: Option<String>,
    #[command(flatten)]
    pub load: LoadArgs,
}

pub(crate) fn find_nats() -> Option<u32> {
    find_process(|cmd| cmd.starts_with("nats-server"))
}

/// The server as a run's system: its version (from its INFO), and with `monitor` its sync
/// setting and store directory (from `/varz`).
async fn system(client: &async_nats::Client, monitor: Option<&str>, pid: u32) -> load::System {
    let version = client.server_info().version;
    let mut system = load::System {
        server: format!("nats-server {version}"),
        settings: None,
        data: Err("unknown: pass --monitor to ask the server for its store_dir".into()),
        pid,
    };
    let Some(monitor) = monitor else {
        return system;
    };
    let varz = async {
        let resp = crate::http_client()?
            .get(format!("http://{monitor}/varz"))
            .send()
            .await?;
        anyhow::Ok(resp.error_for_status()?.json::<serde_json::Value>().await?)
    };
    let varz = match varz.await {
        Ok(v) => v,
        Err(e) => {
            system.data = Err(format!("GET http://{monitor}/varz: {e:#}"));
            return system;
        }
    };
    if varz["version"].as_str().is_some_and(|v| v != version) {
        system.data = Err(format!(
            "{monitor} is the monitor of nats-server {} , not of the {version} the bench talks to",
            varz["version"]
        ));
        return system;
    }
    let js = &varz["jetstream"]["config"];
    system.settings = Some(sync_setting(js));
    system.data = match js["store_dir"].as_str() {
        Some(dir) => Placement::of(dir.as_ref(), "store_dir from the server's /varz")
            .map_err(|e| format!("{e:#}")),
        None => Err("the server's /varz has no jetstream.config.store_dir".into()),
    };
    system
}

/// How a server syncs JetStream writes, from its `/varz` `jetstream.config`.
fn sync_setting(js: &serde_json::Value) -> String {
    if js["sync_always"].as_bool() == Some(true) {
        "sync_interval always (each write synced before its ack)".into()
    } else if let Some(ns) = js["sync_interval"].as_u64() {
        format!("sync_interval {} s (acks before syncing)", ns as f64 / 1e9)
    } else {
        "sync_interval not reported (before 2.10: syncs every 2 min, acks before syncing)".into()
    }
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
    let system = system(&client, a.monitor.as_deref(), pid).await;
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
        let queues = a.load.consumers;
        consumers.push(tokio::spawn(async move {
            let mut ledger = load::Ledger::new(clock, total, c, queues);
            while ledger.distinct() < per_consumer {
                let Ok(Some(Ok(m))) = tokio::time::timeout(clock.left(), messages.next()).await
                else {
                    break;
                };
                ledger.delivered(&m.payload);
                if m.ack().await.is_err() {
                    break;
                }
            }
            load::Consumed {
                ledger,
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
    let report = load::report("nats-durable", &a.load, &system, outcome);
    let _ = js.delete_stream("BENCH").await;
    report
}
