//! `trunkline-bench stomp-durable`: durable publish → consume → ack over STOMP, the same
//! client code against Trunkline or against RabbitMQ's STOMP plugin, so that the two are
//! compared on equal terms.
//!
//! Publishers send `--messages` messages of `--size` bytes round-robin to one queue per
//! consumer, each with a receipt (Trunkline: after the message is durable; RabbitMQ:
//! `persistent:true` to a durable queue, receipt after the publisher confirm), keeping up
//! to `--window` unconfirmed. Consumers subscribe with `ack:client-individual` and
//! `prefetch-count`, and ack every message.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use trunkline_client::stomp::{StompClient, StompOptions};

use crate::load::{self, LoadArgs};
use crate::{admin_aside, cpu_ticks, create_client, http_client, sys, Server};

#[derive(clap::Args, Clone, Debug)]
pub struct StompArgs {
    /// `trunkline` (started for the run from --server-bin) or `rabbitmq` (already running
    /// at --rabbitmq, e.g. started by scripts/rabbitmq.sh).
    #[arg(long, default_value = "trunkline")]
    pub target: String,
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// RabbitMQ's STOMP address.
    #[arg(long, default_value = "127.0.0.1:25674")]
    pub rabbitmq: String,
    /// RabbitMQ's server process, for CPU per message (default: found by name).
    #[arg(long)]
    pub server_pid: Option<u32>,
    #[command(flatten)]
    pub load: LoadArgs,
}

fn now_ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

/// The pid of RabbitMQ's Erlang VM (`beam.smp`), found in /proc.
fn find_beam() -> Option<u32> {
    let mut found = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("beam.smp") && cmd.contains("rabbit") {
            found = Some(pid);
        }
    }
    found
}

struct Target {
    addr: String,
    login: String,
    passcode: String,
    pid: u32,
    /// Queue (STOMP destination) of each consumer.
    queues: Vec<String>,
    consumer_logins: Vec<(String, String)>,
    extra_headers: Vec<(&'static str, &'static str)>,
    _server: Option<Server>,
}

async fn prepare(a: &StompArgs) -> Result<Target> {
    match a.target.as_str() {
        "trunkline" => {
            let bin = a
                .server_bin
                .clone()
                .ok_or_else(|| anyhow!("--server-bin is required for --target trunkline"))?;
            let server = Server::start(&bin, &std::env::temp_dir()).await?;
            let http = http_client()?;
            // Each message has exactly one home: move the admin's `#` aside.
            let admin = admin_aside(&http, &server).await?;
            let mut queues = Vec::new();
            let mut logins = Vec::new();
            for c in 0..a.load.consumers {
                let id = format!("bench-c{c}");
                let secret =
                    create_client(&http, &server.api, &admin, &id, &format!("bench.none.{c}"))
                        .await?;
                queues.push(format!("/queue/{id}-inbox"));
                logins.push((id, secret));
            }
            Ok(Target {
                addr: server.stomp.clone(),
                login: "admin".into(),
                passcode: server.admin_secret.clone(),
                pid: server.pid,
                queues,
                consumer_logins: logins,
                extra_headers: vec![("content-type", "application/json")],
                _server: Some(server),
            })
        }
        "rabbitmq" => {
            let pid = a
                .server_pid
                .or_else(find_beam)
                .ok_or_else(|| anyhow!("no RabbitMQ process found; pass --server-pid"))?;
            let run = std::process::id();
            Ok(Target {
                addr: a.rabbitmq.clone(),
                login: "guest".into(),
                passcode: "guest".into(),
                pid,
                queues: (0..a.load.consumers)
                    .map(|c| format!("/queue/bench-{run}-{c}"))
                    .collect(),
                consumer_logins: (0..a.load.consumers)
                    .map(|_| ("guest".into(), "guest".into()))
                    .collect(),
                extra_headers: vec![("content-type", "application/json"), ("persistent", "true")],
                _server: None,
            })
        }
        other => bail!("--target must be trunkline or rabbitmq, not {other}"),
    }
}

pub(crate) fn options(addr: &str, login: &str, passcode: &str, window: usize) -> StompOptions {
    let mut o = StompOptions::new(addr, login, passcode);
    o.session.window = window;
    o.reconnect = false;
    o
}

pub async fn run(a: &StompArgs) -> Result<bool> {
    let t = prepare(a).await?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(a.load.duration_limit);
    let (per_consumer, total) = a.load.split();

    // Consumers first, so that the queues exist (RabbitMQ declares them on SUBSCRIBE).
    let mut consumers = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(a.load.consumers);
    for (c, queue) in t.queues.iter().enumerate() {
        let (login, pass) = t.consumer_logins[c].clone();
        let client = StompClient::connect(options(&t.addr, &login, &pass, 1))
            .await
            .context("consumer connect")?;
        let mut rx = client
            .subscribe(queue, "client-individual", Some(a.load.prefetch))
            .await?;
        let ready = ready_tx.clone();
        consumers.push(tokio::spawn(async move {
            let _ = ready.send(()).await;
            let mut lat = Vec::with_capacity(per_consumer as usize);
            while (lat.len() as u64) < per_consumer {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(Some(m)) = tokio::time::timeout(left, rx.recv()).await else {
                    break;
                };
                if let Some(sent) = load::sent_ns(&m.body) {
                    lat.push(now_ns(start).saturating_sub(sent));
                }
                if client.ack(&m).await.is_err() {
                    break;
                }
            }
            let _ = client.disconnect().await;
            lat
        }));
    }
    for _ in 0..a.load.consumers {
        ready_rx.recv().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let cpu0 = cpu_ticks(t.pid)?;
    let start_run = Instant::now();
    let pad = load::padding(a.load.size);
    let mut publishers = Vec::new();
    let per_pub = total / a.load.publishers as u64;
    let queues = Arc::new(t.queues.clone());
    for p in 0..a.load.publishers {
        let client = StompClient::connect(options(&t.addr, &t.login, &t.passcode, a.load.window))
            .await
            .context("publisher connect")?;
        let (queues, pad, headers) = (queues.clone(), pad.clone(), t.extra_headers.clone());
        let npub = a.load.publishers;
        let extra = if (p as u64) < total % a.load.publishers as u64 {
            1
        } else {
            0
        };
        publishers.push(tokio::spawn(async move {
            let (conf_tx, mut conf_rx) = tokio::sync::mpsc::channel(4096);
            let waiter = tokio::spawn(async move {
                let mut lat = Vec::new();
                while let Some((t0, conf)) = conf_rx.recv().await {
                    let conf: trunkline_client::stomp::Confirmation = conf;
                    if conf.await.is_err() {
                        break;
                    }
                    lat.push(now_ns(start).saturating_sub(t0));
                }
                lat
            });
            for i in 0..per_pub + extra {
                if Instant::now() > deadline {
                    break;
                }
                // Publishers interleave, so that every queue gets an equal share.
                let n = i as usize * npub + p;
                let q = &queues[n % queues.len()];
                let t0 = now_ns(start);
                let body = load::body(t0, &pad);
                let Ok(conf) = client.send(q, &headers, body.into_bytes()).await else {
                    break;
                };
                if conf_tx.send((t0, conf)).await.is_err() {
                    break;
                }
            }
            drop(conf_tx);
            let lat = waiter.await.unwrap_or_default();
            let _ = client.disconnect().await;
            lat
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
    let elapsed = start_run.elapsed().as_secs_f64();
    let cpu1 = cpu_ticks(t.pid)?;
    let cpu_s = (cpu1 - cpu0) as f64 / sys::clock_ticks_per_sec()?;
    load::report(
        &format!("stomp-durable {}", a.target),
        &a.load,
        load::Outcome {
            total,
            publish_ns: publish_lat,
            end_to_end_ns: e2e,
            elapsed_s: elapsed,
            server_cpu_s: cpu_s,
            server_pid: t.pid,
        },
    )
}
