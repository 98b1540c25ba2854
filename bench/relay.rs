//! `trunkline-bench relay`: request/response between two twins through one relay (a
//! `trunkline serve` started for the run), measured three ways:
//!
//! - `direct`: both twins are gateways of the Rust SDK (`trunkline_client::peer`) in this
//!   process: sealed, signed, checked by the relay, stored in the destination session's
//!   queue (synced) and written to it, opened; the answer the same way back.
//! - `redis`: each twin is a `trunkline peer` process with a redis-server of its own, and
//!   this process is the applications, in RMB's shapes: requests LPUSHed to
//!   `msgbus.system.local`, the service BRPOPs `msgbus.<cmd>` and answers on
//!   `msgbus.system.reply`, responses BLPOPed from the `ret` queue. One Redis hop more on
//!   each side, each way.
//! - `rss`: the node's resident memory per connected session (`--connections` logins of
//!   one twin's sessions, each with its queue).
//!
//! Reported: round trips per second with `--window` in flight, their latency, and the
//! CPU the node (and the gateways) spent per round trip. RMB's own relay is not run
//! beside it: it needs a TFChain node to look twins up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use trunkline_client::peer::{Draft, Peer, PeerConfig};
use trunkline_client::relay::RelayConn;
use trunkline_client::Client;
use trunkline_envelope::{Address, Identity, Kind, Who};

use crate::{cpu_ticks, latency_json, rss_kib, sys, Server};

#[derive(clap::Args, Clone, Debug)]
pub struct RelayArgs {
    /// The `trunkline` binary (a release build): the node, and `trunkline peer`.
    #[arg(long)]
    pub server_bin: PathBuf,
    /// Round trips per mode.
    #[arg(long, default_value_t = 5_000)]
    pub requests: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Payload bytes of each request (and answer).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Sessions connected at once for the memory measure.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Seconds a mode may take at most.
    #[arg(long, default_value_t = 120)]
    pub limit: u64,
    /// Directory in which to make the node's data directory.
    #[arg(long)]
    pub tmp_dir: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The node's settings: no cap on sessions per twin or rate, and room for the memory
/// measure's connections from one address.
const CONFIG: &str =
    "[relay]\nmax_sessions_per_twin = 100000\nrate_messages_per_minute = 100000000\n\
    [http_limits]\nmax_connections = 20000\nmax_connections_per_address = 20000\n";

struct Meter {
    pids: Vec<u32>,
    ticks: Vec<u64>,
    start: Instant,
}

impl Meter {
    fn start(pids: Vec<u32>) -> Result<Self> {
        let ticks = pids.iter().map(|p| cpu_ticks(*p)).collect::<Result<_>>()?;
        Ok(Meter {
            pids,
            ticks,
            start: Instant::now(),
        })
    }

    /// Seconds elapsed, and CPU µs per round trip of each process.
    fn stop(&self, round_trips: u64) -> Result<(f64, Vec<f64>)> {
        let hz = sys::clock_ticks_per_sec()?;
        let elapsed = self.start.elapsed().as_secs_f64();
        let per = self
            .pids
            .iter()
            .zip(&self.ticks)
            .map(|(p, t0)| {
                let t = cpu_ticks(*p)?;
                Ok((t - t0) as f64 / hz * 1e6 / round_trips.max(1) as f64)
            })
            .collect::<Result<_>>()?;
        Ok((elapsed, per))
    }
}

/// Requests in flight, and the round trips done.
struct Flights<K> {
    sent_at: HashMap<K, Instant>,
    lat: Vec<u64>,
    done: u64,
}

impl<K: std::hash::Hash + Eq> Flights<K> {
    fn new() -> Self {
        Flights {
            sent_at: HashMap::new(),
            lat: Vec::new(),
            done: 0,
        }
    }

    fn answered(&mut self, k: &K) {
        if let Some(t) = self.sent_at.remove(k) {
            self.lat.push(t.elapsed().as_nanos() as u64);
            self.done += 1;
        }
    }

    /// Round trips, their rate and latency, and the CPU of the meter's first process.
    fn report(self, meter: &Meter) -> Result<(Value, Vec<f64>)> {
        let (secs, cpu) = meter.stop(self.done)?;
        let v = json!({
            "round_trips": self.done,
            "per_sec": self.done as f64 / secs,
            "latency": latency_json(self.lat),
            "node_cpu_us_per_round_trip": cpu[0],
        });
        Ok((v, cpu))
    }
}

async fn direct(a: &RelayArgs, server: &Server, admin: &Client) -> Result<Value> {
    let (ka, kb) = (Identity::generate()?, Identity::generate()?);
    let ta = admin.register_twin(&ka, &[]).await?.id;
    let tb = admin.register_twin(&kb, &[]).await?.id;
    let (pa, mut ina) = Peer::start(PeerConfig::new(ka, ta, &server.api))?;
    let (pb, mut inb) = Peer::start(PeerConfig::new(kb, tb, &server.api))?;
    // The service: answers each request with its payload.
    let service = tokio::spawn(async move {
        while let Some(req) = inb.recv().await {
            let body = req.payload.bytes().to_vec();
            if pb
                .send(Draft::response(req.source, &req.uid, body))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let payload = vec![b'x'; a.size];
    // Warm up: connections up, registry read.
    for _ in 0..10 {
        pa.send(Draft::request(Address::twin(tb), "bench", payload.clone()))
            .await?;
        tokio::time::timeout(Duration::from_secs(10), ina.recv())
            .await?
            .context("peer stopped")?;
    }
    let meter = Meter::start(vec![server.pid])?;
    let deadline = Instant::now() + Duration::from_secs(a.limit);
    let mut f: Flights<String> = Flights::new();
    let mut sent = 0u64;
    while f.done < a.requests && Instant::now() < deadline {
        while sent < a.requests && f.sent_at.len() < a.window {
            let uid = pa
                .send(Draft::request(Address::twin(tb), "bench", payload.clone()))
                .await?;
            f.sent_at.insert(uid, Instant::now());
            sent += 1;
        }
        let Ok(Some(resp)) = tokio::time::timeout(Duration::from_secs(10), ina.recv()).await else {
            bail!("no response within 10 s ({} done)", f.done);
        };
        if resp.kind != Kind::Response {
            bail!("not a response: {:?}", resp.kind);
        }
        f.answered(&resp.uid);
    }
    service.abort();
    Ok(f.report(&meter)?.0)
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_redis(dir: &std::path::Path) -> Result<(Proc, String)> {
    let port = free_port()?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("redis-server (apt-get install redis-server)")?;
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
            if pong.is_ok() {
                return Ok((Proc(child), url));
            }
        }
        if Instant::now() > deadline {
            bail!("redis-server did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn gateway(
    a: &RelayArgs,
    server: &Server,
    admin: &Client,
    dir: &std::path::Path,
    name: &str,
) -> Result<(u32, Proc, Proc, String)> {
    let key = Identity::generate()?;
    let twin = admin.register_twin(&key, &[]).await?.id;
    let hex: String = key.seed().iter().map(|b| format!("{b:02x}")).collect();
    let seed = dir.join(format!("{name}.seed"));
    std::fs::write(&seed, hex)?;
    let (redis, url) = start_redis(dir).await?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = Command::new(&a.server_bin)
        .args([
            "peer",
            "--no-update",
            "--relay",
            &server.api,
            "--redis",
            &url,
            "--seed-file",
        ])
        .arg(&seed)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    Ok((twin, Proc(child), redis, url))
}

async fn redis_mode(a: &RelayArgs, server: &Server, admin: &Client) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let (_ta, ga, _ra, ua) = gateway(a, server, admin, dir.path(), "a").await?;
    let (tb, gb, _rb, ub) = gateway(a, server, admin, dir.path(), "b").await?;
    let b64 = base64::engine::general_purpose::STANDARD;
    // The service, as msg_handler.py: pop, swap, push back.
    let blocking = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let cb = redis::Client::open(ub.as_str())?;
    let mut svc = cb
        .get_multiplexed_async_connection_with_config(&blocking)
        .await?;
    let service = tokio::spawn(async move {
        loop {
            let got: Option<(String, String)> = match redis::cmd("BRPOP")
                .arg("msgbus.bench")
                .arg(1)
                .query_async(&mut svc)
                .await
            {
                Ok(g) => g,
                Err(_) => return,
            };
            let Some((_, v)) = got else { continue };
            let Ok(mut m) = serde_json::from_str::<Value>(&v) else {
                continue;
            };
            m["dst"] = m["src"].clone();
            let out = m.to_string();
            let r: redis::RedisResult<()> = redis::cmd("LPUSH")
                .arg("msgbus.system.reply")
                .arg(out)
                .query_async(&mut svc)
                .await;
            if r.is_err() {
                return;
            }
        }
    });
    let ca = redis::Client::open(ua.as_str())?;
    let mut push = ca.get_multiplexed_async_connection().await?;
    let mut pop = ca
        .get_multiplexed_async_connection_with_config(&blocking)
        .await?;
    let dat = b64.encode(vec![b'x'; a.size]);
    let ret = "bench.ret";
    let request = |i: u64| {
        json!({"ver": 1, "ref": i.to_string(), "cmd": "bench", "exp": 300, "dat": dat,
            "dst": [tb], "ret": ret, "shm": null, "now": trunkline_client::relay::unix_now()})
        .to_string()
    };
    // Warm up: both gateways connected.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _: () = redis::cmd("LPUSH")
            .arg("msgbus.system.local")
            .arg(request(u64::MAX))
            .query_async(&mut push)
            .await?;
        let got: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(ret)
            .arg(2)
            .query_async(&mut pop)
            .await?;
        if got.is_some() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the gateways did not connect (see their logs)");
        }
    }
    let _: () = redis::cmd("DEL").arg(ret).query_async(&mut push).await?;
    let meter = Meter::start(vec![server.pid, ga.0.id(), gb.0.id()])?;
    let deadline = Instant::now() + Duration::from_secs(a.limit);
    let mut f: Flights<u64> = Flights::new();
    let mut sent = 0u64;
    while f.done < a.requests && Instant::now() < deadline {
        while sent < a.requests && f.sent_at.len() < a.window {
            let _: () = redis::cmd("LPUSH")
                .arg("msgbus.system.local")
                .arg(request(sent))
                .query_async(&mut push)
                .await?;
            f.sent_at.insert(sent, Instant::now());
            sent += 1;
        }
        let got: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(ret)
            .arg(10)
            .query_async(&mut pop)
            .await?;
        let (_, v) = got.ok_or_else(|| anyhow!("no response within 10 s ({} done)", f.done))?;
        let m: Value = serde_json::from_str(&v)?;
        if !m["err"].is_null() {
            bail!("an error response: {m}");
        }
        let i: u64 = m["ref"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or(u64::MAX);
        f.answered(&i);
    }
    service.abort();
    let (mut v, cpu) = f.report(&meter)?;
    v["gateways_cpu_us_per_round_trip"] = json!(cpu[1] + cpu[2]);
    Ok(v)
}

async fn rss(a: &RelayArgs, server: &Server, admin: &Client) -> Result<Value> {
    sys::raise_open_files(a.connections as u64 * 2 + 256)?;
    let key = Identity::generate()?;
    let twin = admin.register_twin(&key, &[]).await?.id;
    let before = rss_kib(server.pid)?;
    let mut conns = Vec::with_capacity(a.connections);
    let start = Instant::now();
    for i in 0..a.connections {
        let who = Who::Twin {
            id: twin,
            session: Some(format!("s{i}")),
        };
        conns.push(RelayConn::connect(&server.api, &key, who).await?);
    }
    let login_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(server.pid)?;
    drop(conns);
    Ok(json!({
        "connections": a.connections,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": (after.saturating_sub(before)) as f64 / a.connections as f64,
        "logins_per_sec": a.connections as f64 / login_secs,
    }))
}

pub async fn run(a: &RelayArgs) -> Result<bool> {
    let parent = a.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let server = Server::start_with(&a.server_bin, &parent, Some(CONFIG)).await?;
    let admin = Client::new(&server.api, "admin", &server.admin_secret)?;
    let direct = direct(a, &server, &admin).await?;
    println!("direct (SDK gateways): {direct}");
    let redis = redis_mode(a, &server, &admin).await?;
    println!("redis (trunkline peer + redis-server each side): {redis}");
    let rss = rss(a, &server, &admin).await?;
    println!("rss: {rss}");
    let out = json!({"bench": "relay", "requests": a.requests, "window": a.window,
        "size": a.size, "direct": direct, "redis": redis, "rss": rss});
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&out)?)?;
    }
    Ok(true)
}
