//! `trunkline-bench stomp-durable`: durable publish → consume → ack over STOMP, the same
//! client code against Trunkline or against RabbitMQ's STOMP plugin, so that the two are
//! compared on equal terms.
//!
//! Publishers send `--messages` messages of `--size` bytes round-robin to one queue per
//! consumer, each with a receipt (Trunkline: after the message is durable; RabbitMQ:
//! `persistent:true` to a durable queue, receipt after the publisher confirm), keeping up
//! to `--window` unconfirmed, at a fixed `--rate` if given (the publisher loop is
//! `load::publish`). Consumers subscribe with `ack:client-individual` and
//! `prefetch-count`, and ack every message.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::FutureExt;
use trunkline_client::stomp::{StompClient, StompOptions};

use crate::amqp;
use crate::load::{self, LoadArgs};
use crate::{admin_aside, create_client, find_beam, grant_writes, http_client, Server};

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
    /// RabbitMQ's AMQP URI, to delete the run's queues before and after it.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:25673/%2f")]
    pub amqp: String,
    /// RabbitMQ's server process, for CPU per message (default: found by name).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Trunkline: the directory in which to make the server's data directory (default:
    /// the system temp dir). Its file system decides what an fsync costs.
    #[arg(long)]
    pub tmp_dir: Option<PathBuf>,
    #[command(flatten)]
    pub load: LoadArgs,
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
    /// RabbitMQ: the queues' AMQP names, deleted before and after the run.
    rabbitmq_queues: Vec<String>,
    /// What the server is and where it keeps its data (for RabbitMQ, learnt once the
    /// queues exist, after the run).
    system: load::System,
    _server: Option<Server>,
}

async fn prepare(a: &StompArgs) -> Result<Target> {
    match a.target.as_str() {
        "trunkline" => {
            let server =
                Server::for_target(a.server_bin.as_deref(), None, a.tmp_dir.as_deref()).await?;
            let system = server.system()?;
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
            let names: Vec<String> = logins.iter().map(|(id, _)| format!("{id}-inbox")).collect();
            grant_writes(&http, &server.api, &admin, &names).await?;
            Ok(Target {
                addr: server.stomp.clone(),
                login: "admin".into(),
                passcode: server.admin_secret.clone(),
                pid: server.pid,
                queues,
                consumer_logins: logins,
                extra_headers: vec![("content-type", "application/json")],
                rabbitmq_queues: Vec::new(),
                system,
                _server: Some(server),
            })
        }
        "rabbitmq" => {
            let pid = a
                .server_pid
                .or_else(find_beam)
                .ok_or_else(|| anyhow!("no RabbitMQ process found; pass --server-pid"))?;
            // `/queue/NAME` is the durable AMQP queue NAME.
            let names: Vec<String> = (0..a.load.consumers)
                .map(|c| format!("trunkline-bench-stomp-{c}"))
                .collect();
            amqp::delete_queues(&a.amqp, &names).await?;
            Ok(Target {
                addr: a.rabbitmq.clone(),
                login: "guest".into(),
                passcode: "guest".into(),
                pid,
                queues: names.iter().map(|n| format!("/queue/{n}")).collect(),
                consumer_logins: (0..a.load.consumers)
                    .map(|_| ("guest".into(), "guest".into()))
                    .collect(),
                extra_headers: vec![("content-type", "application/json"), ("persistent", "true")],
                rabbitmq_queues: names,
                system: amqp::system(pid),
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
    a.load.check()?;
    let mut t = prepare(a).await?;
    let result = load(a, &mut t).await;
    let cleanup = amqp::delete_queues(&a.amqp, &t.rabbitmq_queues).await;
    let ok = result?;
    cleanup?;
    Ok(ok)
}

async fn load(a: &StompArgs, t: &mut Target) -> Result<bool> {
    let clock = load::Clock::new(&a.load);
    let (per_consumer, total) = a.load.split();

    // Consumers first, so that the queues exist (RabbitMQ declares them on SUBSCRIBE).
    let mut consumers = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(a.load.consumers);
    let queues_n = t.queues.len();
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
            let mut ledger = load::Ledger::new(clock, total, c, queues_n);
            while ledger.distinct() < per_consumer {
                let Ok(Some(m)) = tokio::time::timeout(clock.left(), rx.recv()).await else {
                    break;
                };
                ledger.delivered(&m.body);
                if client.ack(&m).await.is_err() {
                    break;
                }
            }
            let consumed = load::Consumed {
                ledger,
                done: Instant::now(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), client.disconnect()).await;
            consumed
        }));
    }
    for _ in 0..a.load.consumers {
        ready_rx.recv().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut clients = Vec::with_capacity(a.load.publishers);
    for _ in 0..a.load.publishers {
        // The client's own window is never the limit: load::publish keeps at most
        // --window messages unconfirmed.
        let client = StompClient::connect(options(&t.addr, &t.login, &t.passcode, a.load.window))
            .await
            .context("publisher connect")?;
        clients.push(client);
    }
    let meter = load::Meter::start(t.pid)?;
    let mut schedule = load::Schedule::start(&a.load, clock, total);
    let pad = Arc::new(load::padding(a.load.size));
    let queues = Arc::new(t.queues.clone());
    let mut publishers = Vec::new();
    for (p, client) in clients.into_iter().enumerate() {
        let (part, queues, pad) = (schedule.publisher(p), queues.clone(), pad.clone());
        let headers = t.extra_headers.clone();
        publishers.push(tokio::spawn(async move {
            let published = load::publish(part, &pad, |n, body| {
                let (client, queues, headers) = (&client, &queues, &headers);
                async move {
                    let q = &queues[n as usize % queues.len()];
                    let confirmation = client.send(q, headers, body.into_bytes()).await?;
                    Ok(confirmation.map(|r| r.map_err(anyhow::Error::from)))
                }
            })
            .await;
            let _ = tokio::time::timeout(Duration::from_secs(5), client.disconnect()).await;
            published
        }));
    }
    let outcome = meter
        .finish(total, a.load.rate, publishers, consumers)
        .await?;
    if !t.rabbitmq_queues.is_empty() {
        t.system = amqp::system(t.pid);
    }
    load::report(
        &format!("stomp-durable {}", a.target),
        &a.load,
        &t.system,
        outcome,
    )
}
