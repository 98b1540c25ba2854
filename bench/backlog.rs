//! `trunkline-bench backlog`: a backlog larger than memory. The node runs in a process
//! whose address space is limited (`--limit-mib`, `RLIMIT_AS` through `ulimit -v`, with
//! `MALLOC_ARENA_MAX=2` so that glibc does not reserve an arena per thread), its memory
//! cap (`inbox.max_memory_bytes`) set to `--cap-mib`. One STOMP publisher fills the inboxes
//! of `--clients` offline clients (one by default; message k goes to client k mod N) with
//! `--size`-byte messages (receipts, `--window` unconfirmed) until `--gib` were accepted,
//! the node refuses one, or `--fill-limit` seconds pass. Then each client in turn drains
//! its inbox (`ack:client-individual`, prefetch 1000), checking that every accepted
//! message arrives once and in order. Reports time to fill and drain, the node's
//! peak resident set, and the disk its data directory took. With `--restart` the node is
//! stopped once filled and started again under the same limit before the drain (the
//! drain's peak is then the restarted process's).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::stream::{FuturesOrdered, StreamExt};
use serde_json::{json, Value};
use trunkline_client::stomp::StompClient;

use crate::stomp::options;
use crate::{admin_aside, create_client, grant_writes, http_client, peak_rss_kib, rss_kib, Server};

#[derive(clap::Args, Clone, Debug)]
pub struct BacklogArgs {
    /// The `trunkline` server binary (a release build).
    #[arg(long)]
    pub server_bin: PathBuf,
    /// Bytes of bodies to queue, in GiB.
    #[arg(long, default_value_t = 20.0)]
    pub gib: f64,
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Offline clients the backlog is spread over.
    #[arg(long, default_value_t = 1)]
    pub clients: u64,
    /// The node's address-space limit, MiB.
    #[arg(long, default_value_t = 512)]
    pub limit_mib: u64,
    /// `inbox.max_memory_bytes`, MiB (default: half the limit).
    #[arg(long)]
    pub cap_mib: Option<u64>,
    /// Unconfirmed messages in flight.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// Seconds the fill, and then the drain, may take at most.
    #[arg(long, default_value_t = 3600)]
    pub fill_limit: u64,
    /// Directory in which to make the server's data directory.
    #[arg(long)]
    pub tmp_dir: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Stop the node once filled (SIGTERM) and start it again, under the same limit,
    /// before the drain.
    #[arg(long)]
    pub restart: bool,
    /// The node's `[store] direct_write_bytes` (0: every write through the page cache);
    /// its default if not given.
    #[arg(long)]
    pub direct_write_bytes: Option<usize>,
}

/// Bytes in the files under `dir`.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub async fn run(a: &BacklogArgs) -> Result<bool> {
    let cap = a.cap_mib.unwrap_or(a.limit_mib / 2) << 20;
    let mut config = format!("[inbox]\nmax_memory_bytes = {cap}\nmax_length = 1000000000\n");
    if let Some(b) = a.direct_write_bytes {
        config += &format!("[store]\ndirect_write_bytes = {b}\n");
    }
    let parent = a.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut server =
        Server::start_limited(&a.server_bin, &parent, Some(&config), a.limit_mib << 20)
            .await
            .context("starting the node under its memory limit")?;
    let http = http_client()?;
    let admin = admin_aside(&http, &server).await?;
    let clients = a.clients.max(1);
    // Client i is `backlog` (the first) or `backlog<i>`.
    let id = |i: u64| match i {
        0 => "backlog".to_string(),
        i => format!("backlog{i}"),
    };
    // One client: published to its queue (a write grant); more: each subscribed to its own
    // topic, published by topic (a client's write grants name at most 64 queues).
    let topic = |i: u64| format!("backlog.c{i}");
    let mut secrets = Vec::new();
    for i in 0..clients {
        let subscription = if clients == 1 {
            "backlog.none".to_string()
        } else {
            topic(i)
        };
        secrets.push(create_client(&http, &server.api, &admin, &id(i), &subscription).await?);
    }
    let queues: Vec<String> = (0..clients)
        .map(|i| format!("/queue/{}-inbox", id(i)))
        .collect();
    let targets: Vec<String> = if clients == 1 {
        grant_writes(&http, &server.api, &admin, &["backlog-inbox".to_string()]).await?;
        queues.clone()
    } else {
        (0..clients)
            .map(|i| format!("/topic/{}", topic(i)))
            .collect()
    };
    let base_rss = rss_kib(server.pid)?;

    // Fill: bodies `{"n":N,"pad":"xxx…"}` of `size` bytes, N counting from 0 in each
    // inbox.
    let want = ((a.gib * (1u64 << 30) as f64) / a.size as f64) as u64;
    let publisher = StompClient::connect(options(
        &server.stomp,
        "admin",
        &server.admin_secret,
        a.window,
    ))
    .await?;
    let pad = |n: u64| {
        let head = format!("{{\"n\":{n},\"pad\":\"");
        let fill = a.size.saturating_sub(head.len() + 2);
        format!("{head}{}\"}}", "x".repeat(fill))
    };
    let started = Instant::now();
    let limit = Duration::from_secs(a.fill_limit);
    let mut inflight = FuturesOrdered::new();
    let (mut accepted, mut refusal) = (0u64, None::<String>);
    let mut sent = 0u64;
    let mut peak_rss = base_rss;
    let mut closed = false;
    while accepted < want && refusal.is_none() && started.elapsed() < limit {
        while !closed && sent < want && inflight.len() < a.window {
            // A refusal closes the connection: what was sent before it still confirms
            // or fails below, with the server's reason.
            let (to, n) = ((sent % clients) as usize, sent / clients);
            match publisher
                .send(
                    &targets[to],
                    &[("content-type", "application/json")],
                    pad(n),
                )
                .await
            {
                Ok(c) => inflight.push_back(c),
                Err(_) => closed = true,
            }
            sent += 1;
        }
        match inflight.next().await {
            Some(Ok(())) => accepted += 1,
            Some(Err(e)) => refusal = Some(e.to_string()),
            None => break,
        }
        if accepted.is_multiple_of(100_000) {
            peak_rss = peak_rss.max(rss_kib(server.pid).unwrap_or(0));
        }
    }
    // What is still in flight after a refusal may have been accepted before it.
    while let Some(r) = inflight.next().await {
        if r.is_ok() {
            accepted += 1;
        }
    }
    let fill = started.elapsed();
    let disk = disk_bytes(&server.dir);
    let filled_rss = rss_kib(server.pid).unwrap_or(0);
    peak_rss = peak_rss.max(peak_rss_kib(server.pid).unwrap_or(0));
    drop(publisher);
    println!(
        "backlog: {accepted} messages of {} B for {clients} client(s) accepted in {:.1} s ({:.0}/s){}; data directory {:.2} GiB; node RSS {} MiB (peak {} MiB)",
        a.size,
        fill.as_secs_f64(),
        accepted as f64 / fill.as_secs_f64().max(1e-9),
        refusal
            .as_deref()
            .map(|r| format!(", then refused: {r}"))
            .unwrap_or_default(),
        disk as f64 / f64::from(1u32 << 30),
        filled_rss >> 10,
        peak_rss >> 10,
    );

    let mut restarted = None;
    if a.restart {
        let took = server
            .restart(limit)
            .await
            .context("restarting the node over the backlog")?;
        let rss = rss_kib(server.pid).unwrap_or(0);
        let peak = peak_rss_kib(server.pid).unwrap_or(0);
        println!(
            "backlog: restarted over {accepted} queued in {:.1} s; node RSS {} MiB (peak {} MiB)",
            took.as_secs_f64(),
            rss >> 10,
            peak >> 10
        );
        peak_rss = peak;
        restarted = Some((took, rss, peak));
    }

    // Drain, in order, each once: one client after the other.
    let started = Instant::now();
    let (mut next, mut out_of_order) = (0u64, 0u64);
    for (i, (queue, secret)) in queues.iter().zip(&secrets).enumerate() {
        // Of the accepted messages (the first `accepted` sent), those for this client.
        let mine = accepted / clients + u64::from((i as u64) < accepted % clients);
        let consumer =
            StompClient::connect(options(&server.stomp, &id(i as u64), secret, a.window)).await?;
        let mut rx = consumer
            .subscribe(queue, "client-individual", Some(1000))
            .await?;
        let mut n_next = 0u64;
        while n_next < mine && started.elapsed() < limit {
            let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await else {
                break;
            };
            let n = serde_json::from_slice::<Value>(&m.body)
                .ok()
                .and_then(|v| v["n"].as_u64());
            if n != Some(n_next) {
                out_of_order += 1;
            }
            n_next += 1;
            next += 1;
            consumer.ack(&m).await?;
            if next.is_multiple_of(100_000) {
                peak_rss = peak_rss.max(rss_kib(server.pid).unwrap_or(0));
            }
        }
        if n_next < mine {
            break;
        }
    }
    let drain = started.elapsed();
    peak_rss = peak_rss.max(peak_rss_kib(server.pid).unwrap_or(0));
    let complete = next == accepted && out_of_order == 0;
    println!(
        "backlog: drained {next} of {accepted} in {:.1} s ({:.0}/s), {out_of_order} out of order; node RSS {} MiB at start, peak {} MiB, limit {} MiB, memory cap {} MiB{}",
        drain.as_secs_f64(),
        next as f64 / drain.as_secs_f64().max(1e-9),
        base_rss >> 10,
        peak_rss >> 10,
        a.limit_mib,
        cap >> 20,
        if complete { "" } else { " (INCOMPLETE)" }
    );
    if let Some(path) = &a.json {
        let v = json!({
            "scenario": "backlog", "size": a.size, "clients": clients, "wanted": want,
            "accepted": accepted,
            "refusal": refusal, "fill_seconds": fill.as_secs_f64(), "drained": next,
            "out_of_order": out_of_order, "drain_seconds": drain.as_secs_f64(),
            "disk_bytes": disk, "rss_start_kib": base_rss, "rss_filled_kib": filled_rss,
            "rss_peak_kib": peak_rss,
            "limit_mib": a.limit_mib, "cap_bytes": cap, "complete": complete,
            "restart_seconds": restarted.map(|r| r.0.as_secs_f64()),
            "rss_restarted_kib": restarted.map(|r| r.1),
            "rss_restart_peak_kib": restarted.map(|r| r.2),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&v)?)?;
    }
    if !complete {
        let m = crate::metrics(&http, &server.backend)
            .await
            .unwrap_or_default();
        let mut left: Vec<_> = m
            .iter()
            .filter(|(k, _)| k.contains("backlog") && k.contains("-inbox"))
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        left.sort();
        bail!(
            "the backlog did not drain whole and in order; the node says: {}; its log ends:\n{}",
            left.join(", "),
            server.log_tail(80)
        );
    }
    Ok(accepted == want)
}
