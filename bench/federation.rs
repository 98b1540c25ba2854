//! `trunkline-bench federation`: the throughput of one federation link. Two nodes run as
//! Swaptacular's accounting authority and creditors agent (node databases and
//! certificates made for the run, `trunkline_testkit::federation`), each in its own
//! process. The agent's queue for the authority (what `configure-queue` declares) is
//! filled with `--messages` ConfigureAccount messages of about `--size` bytes while the
//! authority is deactivated in the agent's database, so that its link does not run; then
//! the authority is activated again and the link drains the backlog into the authority
//! (mutual TLS 1.3, STOMP, window = `federation.buffer`, cumulative receipts, every
//! message durable on the authority before its receipt and acked on the agent after it).
//!
//! Reported: messages per second from the first message taken by the authority to the
//! last, and the CPU each process spent per message over that time (the sender's: read,
//! check, TLS, ack; the receiver's: TLS, check, route, commit).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::stream::{FuturesOrdered, StreamExt};
use serde_json::{json, Value};
use trunkline_client::stomp::StompClient;
use trunkline_testkit::federation::{triangle, AUTHORITY_ID as AA, CREDITORS_AGENT_ID as CA};

use crate::stomp::options;
use crate::{cpu_ticks, get_token, http_client, sys, Server};

#[derive(clap::Args, Clone, Debug)]
pub struct FederationArgs {
    /// The `trunkline` server binary (a release build).
    #[arg(long)]
    pub server_bin: PathBuf,
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    /// About this many bytes per message body (its `config_data` is padded; at most
    /// about 2 KB, the protocol's limit).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// The link's window (`federation.buffer`).
    #[arg(long, default_value_t = 100)]
    pub buffer: usize,
    /// Seconds the drain may take at most.
    #[arg(long, default_value_t = 300)]
    pub limit: u64,
    /// Directory in which to make the nodes' data directories.
    #[arg(long)]
    pub tmp_dir: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

const OWN_CREDITOR: i64 = 0x0000_0800_0000_0007;
const DEBTOR: i64 = 0x1234_abcd_0000_0001;

fn config(fed: &trunkline_testkit::federation::Federation, id: &str, buffer: usize) -> String {
    let n = fed.node(id);
    format!(
        "[federation]\nnodedata = {:?}\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\nreread_secs = 1\nbuffer = {buffer}\n",
        n.nodedata.display().to_string(),
        n.cert.display().to_string(),
        n.key.display().to_string()
    )
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    tok: &str,
    body: Value,
) -> Result<Value> {
    let r = http
        .request(method, &url)
        .bearer_auth(tok)
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{url}: {status} {v}");
    }
    Ok(v)
}

async fn depth(http: &reqwest::Client, server: &Server, tok: &str, queue: &str) -> Result<u64> {
    let v = call(
        http,
        reqwest::Method::GET,
        format!("{}/queue/{queue}", server.api),
        tok,
        Value::Null,
    )
    .await?;
    v["depth"].as_u64().context("depth")
}

pub async fn run(a: &FederationArgs) -> Result<bool> {
    let parent = a.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::tempdir_in(&parent)?;
    let fed = triangle(scratch.path());
    let aa = Server::start_with(&a.server_bin, &parent, Some(&config(&fed, AA, a.buffer))).await?;
    let aa_addr = std::fs::read_to_string(aa.dir.join("data").join("listen.json"))?;
    let aa_addr: Value = serde_json::from_str(&aa_addr)?;
    let aa_addr = aa_addr["federation"]
        .as_str()
        .context("no federation listener")?
        .to_owned();
    fed.set_servers(CA, AA, &[aa_addr.as_str()]);
    // The link stays down while the backlog is made.
    fed.deactivate(CA, AA);
    let ca = Server::start_with(&a.server_bin, &parent, Some(&config(&fed, CA, a.buffer))).await?;
    let http = http_client()?;
    let aa_tok = get_token(&http, &aa.api, "admin", &aa.admin_secret).await?;
    let ca_tok = get_token(&http, &ca.api, "admin", &ca.admin_secret).await?;
    call(
        &http,
        reqwest::Method::PUT,
        format!("{}/queue/taken", aa.api),
        &aa_tok,
        json!({"bindings": ["accounts_in.#"]}),
    )
    .await?;
    // The agent's queue for the authority, as configure-queue declares it (the peer is
    // read as not active: declared by hand with the same binding and label).
    call(
        &http,
        reqwest::Method::PUT,
        format!("{}/queue/to-aa", ca.api),
        &ca_tok,
        json!({"bindings": ["creditors_out.12.34.ab.cd.#"], "labels": {"federation.peer": AA},
            "limits": {"max_length": 100_000_000u64, "max_deliveries": 1_000_000}}),
    )
    .await?;

    // The backlog, over STOMP with receipts.
    let pad = a.size.saturating_sub(230).min(2000);
    let topic = "/topic/creditors_out.12.34.ab.cd.00.00.00.01";
    let client = StompClient::connect(options(&ca.stomp, "admin", &ca.admin_secret, 1000)).await?;
    let mut confirms = FuturesOrdered::new();
    for seq in 1..=a.messages {
        let body = json!({"type": "ConfigureAccount", "creditor_id": OWN_CREDITOR,
            "debtor_id": DEBTOR, "ts": "2026-12-07T00:00:00+00:00", "seqnum": seq,
            "negligible_amount": 0.0, "config_data": "x".repeat(pad), "config_flags": 0});
        let bytes = serde_json::to_vec(&body)?;
        confirms.push_back(
            client
                .send(topic, &[("content-type", "application/json")], bytes)
                .await?,
        );
        while confirms.len() > 2000 {
            confirms.next().await.transpose()?;
        }
    }
    while let Some(r) = confirms.next().await {
        r?;
    }
    client.disconnect().await?;
    let queued = depth(&http, &ca, &ca_tok, "to-aa").await?;
    if queued != a.messages {
        bail!("the agent queued {queued} of {} messages", a.messages);
    }

    // The link runs: from the first message taken to the last.
    let ticks = sys::clock_ticks_per_sec()?;
    let cpu0 = (cpu_ticks(ca.pid)?, cpu_ticks(aa.pid)?);
    let began = Instant::now();
    fed.reactivate(CA, AA);
    let limit = Duration::from_secs(a.limit);
    let mut first: Option<(Instant, (u64, u64))> = None;
    let mut taken = 0;
    while taken < a.messages && began.elapsed() < limit {
        taken = depth(&http, &aa, &aa_tok, "taken").await?;
        if taken > 0 && first.is_none() {
            first = Some((Instant::now(), (cpu_ticks(ca.pid)?, cpu_ticks(aa.pid)?)));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let done = Instant::now();
    let cpu1 = (cpu_ticks(ca.pid)?, cpu_ticks(aa.pid)?);
    let (start, cpu_start) = first.unwrap_or((began, cpu0));
    let secs = done.duration_since(start).as_secs_f64().max(1e-9);
    let per_msg = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / ticks / taken.max(1) as f64 * 1e6;
    let report = json!({
        "bench": "federation",
        "messages": a.messages,
        "delivered": taken,
        "body_bytes": a.size,
        "buffer": a.buffer,
        "seconds": secs,
        "messages_per_sec": taken as f64 / secs,
        "sender_cpu_us_per_msg": per_msg(cpu_start.0, cpu1.0),
        "receiver_cpu_us_per_msg": per_msg(cpu_start.1, cpu1.1),
        "link_start_seconds": start.duration_since(began).as_secs_f64(),
    });
    println!(
        "federation link: {taken} of {} messages (~{} B) in {secs:.2} s = {:.0} msg/s; CPU per message: sender {:.1} µs, receiver {:.1} µs (window {})",
        a.messages,
        a.size,
        taken as f64 / secs,
        report["sender_cpu_us_per_msg"].as_f64().unwrap_or(0.0),
        report["receiver_cpu_us_per_msg"].as_f64().unwrap_or(0.0),
        a.buffer
    );
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(taken == a.messages)
}
