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
use crate::{admin_aside, create_client, find_beam, find_beams, grant_writes, http_client, Server};

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
    /// Trunkline: keep messages in this RabbitMQ (`amqp://` URLs, comma-separated, as
    /// `serve --broker` takes them); RabbitMQ's CPU is measured too (every RabbitMQ
    /// process on the machine).
    #[arg(long)]
    pub broker: Option<String>,
    /// Trunkline with --broker: this many nodes of one cluster, node `i` listing the URLs
    /// from the `i`-th on; publishers and consumers are spread over them.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    #[command(flatten)]
    pub load: LoadArgs,
}

struct Target {
    /// Where clients connect: publisher `p` and consumer `c` to `addrs[p % n]`, `addrs[c % n]`.
    addrs: Vec<String>,
    login: String,
    passcode: String,
    /// The server's processes (every node).
    pids: Vec<u32>,
    /// The broker's processes under Trunkline nodes (RabbitMQ), if any.
    broker_pids: Vec<u32>,
    /// Queue (STOMP destination) of each consumer.
    queues: Vec<String>,
    consumer_logins: Vec<(String, String)>,
    extra_headers: Vec<(&'static str, &'static str)>,
    /// RabbitMQ: the queues' AMQP names, deleted before and after the run.
    rabbitmq_queues: Vec<String>,
    /// What the server is and where it keeps its data (for RabbitMQ, learnt once the
    /// queues exist, after the run).
    system: load::System,
    _servers: Vec<Server>,
}

/// The Trunkline nodes of a run: one embedded node, or `a.nodes` nodes of one cluster
/// over `a.broker`.
async fn start_nodes(a: &StompArgs) -> Result<Vec<Server>> {
    let Some(broker) = &a.broker else {
        return Ok(vec![
            Server::for_target(a.server_bin.as_deref(), None, a.tmp_dir.as_deref()).await?,
        ]);
    };
    let bin = a
        .server_bin
        .as_deref()
        .ok_or_else(|| anyhow!("--server-bin is required for --target trunkline"))?;
    let parent = a.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let urls: Vec<&str> = broker.split(',').collect();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let namespace = format!("bench-{}-{stamp}", std::process::id());
    let config = |i: usize| {
        let mut order = urls.clone();
        order.rotate_left(i % urls.len());
        format!(
            "[broker]\nurl = \"{}\"\nnamespace = \"{namespace}\"\nnode = \"n{}\"\n",
            order.join(","),
            i + 1
        )
    };
    let first = Server::start_with(bin, &parent, Some(&config(0))).await?;
    let mut nodes = Vec::with_capacity(a.nodes.max(1));
    for i in 1..a.nodes.max(1) {
        nodes.push(Server::start_joining(bin, &parent, &config(i), &first).await?);
    }
    nodes.insert(0, first);
    Ok(nodes)
}

async fn prepare(a: &StompArgs) -> Result<Target> {
    match a.target.as_str() {
        "trunkline" => {
            let servers = start_nodes(a).await?;
            let server = &servers[0];
            let system = server.system()?;
            let http = http_client()?;
            // Each message has exactly one home: move the admin's `#` aside.
            let admin = admin_aside(&http, server).await?;
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
                addrs: servers.iter().map(|s| s.stomp.clone()).collect(),
                login: "admin".into(),
                passcode: server.admin_secret.clone(),
                pids: servers.iter().map(|s| s.pid).collect(),
                broker_pids: if a.broker.is_some() {
                    find_beams()
                } else {
                    Vec::new()
                },
                queues,
                consumer_logins: logins,
                extra_headers: vec![("content-type", "application/json")],
                rabbitmq_queues: Vec::new(),
                system,
                _servers: servers,
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
                addrs: vec![a.rabbitmq.clone()],
                login: "guest".into(),
                passcode: "guest".into(),
                pids: vec![pid],
                broker_pids: Vec::new(),
                queues: names.iter().map(|n| format!("/queue/{n}")).collect(),
                consumer_logins: (0..a.load.consumers)
                    .map(|_| ("guest".into(), "guest".into()))
                    .collect(),
                extra_headers: vec![("content-type", "application/json"), ("persistent", "true")],
                rabbitmq_queues: names,
                system: amqp::system(pid),
                _servers: Vec::new(),
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
        let addr = &t.addrs[c % t.addrs.len()];
        let client = StompClient::connect(options(addr, &login, &pass, 1))
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
    for p in 0..a.load.publishers {
        // The client's own window is never the limit: load::publish keeps at most
        // --window messages unconfirmed.
        let addr = &t.addrs[p % t.addrs.len()];
        let client = StompClient::connect(options(addr, &t.login, &t.passcode, a.load.window))
            .await
            .context("publisher connect")?;
        clients.push(client);
    }
    let meter = load::Meter::of(t.pids.clone(), t.broker_pids.clone())?;
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
        t.system = amqp::system(t.pids[0]);
    }
    let target = match &a.broker {
        Some(_) => format!(
            "stomp-durable trunkline ({} nodes over RabbitMQ)",
            t.pids.len()
        ),
        None => format!("stomp-durable {}", a.target),
    };
    load::report(&target, &a.load, &t.system, outcome)
}
