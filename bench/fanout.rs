//! `trunkline-bench fanout`: live (non-durable) fan-out, one publisher → `--subscribers`
//! subscribers, against Trunkline (STOMP: SEND to and SUBSCRIBE to `/topic/bench.fanout`,
//! on a server started for the run) or NATS core (publish and subscribe to `bench.fanout`
//! through async-nats), measured the same way:
//!
//! - the publisher sends without per-message confirmation (Trunkline: `SEND` without a
//!   receipt; NATS: core publish), then asks for a receipt on the last message
//!   (Trunkline) or flushes (NATS), so it knows all was sent;
//! - it does not run ahead of the subscribers for ever: it pauses while it is more than
//!   `--credit` messages ahead of the slowest subscriber, and resumes once every
//!   subscriber is within `--credit / 2` (one wake-up per pause, not one per message).
//!   The counts are shared between the tasks of this process, so both systems run in the
//!   same closed loop. Trunkline closes a live subscriber more than 1000 messages behind
//!   (`ERROR slow_consumer`): keep `--credit` below that;
//! - every subscriber counts what it got, in order (each body carries its send time,
//!   which only grows), and the end-to-end latency of every delivery.
//!
//! Deliveries/s is messages × subscribers over the time from the first send to the moment
//! the last subscriber had everything. Lost messages (sent × subscribers − delivered) must
//! be 0 for a valid run.
//!
//! The loop (credit, counting, latency, the report) is shared with `wsfanout`, which
//! brings its own connections through [`Target`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use trunkline_client::stomp::StompClient;

use crate::{
    admin_aside, alive, cpu_ticks, fmt, grant_live_reads, http_client, latency_json, load,
    load_average, nats::find_nats, peak_rss_kib, stomp::options, sys, Server,
};

/// Trunkline's STOMP destination, and NATS's subject.
const TOPIC: &str = "/topic/bench.fanout";
const SUBJECT: &str = "bench.fanout";
/// The run ends when no subscriber got anything for this long (a lost message stalls the
/// publisher's credit for ever).
const STALL: Duration = Duration::from_secs(5);

#[derive(clap::Args, Clone, Debug)]
pub struct FanoutArgs {
    /// `trunkline` (started for the run from --server-bin) or `nats` (a nats-server already
    /// running at --nats).
    #[arg(long, default_value = "trunkline")]
    pub target: String,
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// NATS address.
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub nats: String,
    /// The nats-server process, for CPU and RSS (default: found by name).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Subscribers, each on its own connection.
    #[arg(long, default_value_t = 4)]
    pub subscribers: usize,
    /// Messages to publish; each goes to every subscriber.
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Size of each message body, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// The publisher pauses while it is more than this many messages ahead of the slowest
    /// subscriber.
    #[arg(long, default_value_t = 500)]
    pub credit: u64,
    /// Stop after this many seconds even if not every message was delivered.
    #[arg(long, default_value_t = 60)]
    pub duration_limit: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl FanoutArgs {
    fn load(&self) -> Load {
        Load {
            scenario: "fanout",
            target: self.target.clone(),
            messages: self.messages,
            size: self.size,
            credit: self.credit,
            duration_limit: self.duration_limit,
        }
    }
}

/// The shape of one fan-out run, whatever the protocol.
#[derive(Clone, Debug)]
pub(crate) struct Load {
    /// The subcommand, first word of the report.
    pub scenario: &'static str,
    pub target: String,
    pub messages: u64,
    pub size: usize,
    pub credit: u64,
    pub duration_limit: u64,
}

impl Load {
    pub fn check(&self, subscribers: usize) -> Result<()> {
        if subscribers == 0 || self.messages == 0 || self.duration_limit == 0 {
            bail!("the subscribers (sessions), --messages and --duration-limit must be at least 1");
        }
        if self.size > 512 * 1024 {
            bail!("--size must be at most 512 KiB (Trunkline takes bodies up to 1 MiB)");
        }
        Ok(())
    }
}

/// What the publisher and the subscribers share.
struct Shared {
    /// The clock of the send times in message bodies.
    t0: Instant,
    /// Messages each subscriber got so far.
    received: Vec<AtomicU64>,
    /// While the publisher is paused: the count every subscriber must reach before it
    /// resumes; `u64::MAX` while it runs.
    resume_at: AtomicU64,
    /// Wakes the paused publisher.
    wake: Notify,
}

impl Shared {
    fn ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    fn slowest(&self) -> u64 {
        self.received
            .iter()
            .map(|r| r.load(Ordering::SeqCst))
            .min()
            .unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.received.iter().map(|r| r.load(Ordering::SeqCst)).sum()
    }

    /// Subscriber `i` got one more message.
    fn got(&self, i: usize) {
        let n = self.received[i].fetch_add(1, Ordering::SeqCst) + 1;
        // Each subscriber crosses the mark once; the publisher, having set it, checks the
        // counts again, so a subscriber already past it needs no wake-up (SeqCst on both
        // sides: one of the two sees the other's write).
        if n == self.resume_at.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// Waits until the publisher, having sent `sent`, may send another: at once if it is
    /// at most `credit` ahead of the slowest subscriber, else once every subscriber is
    /// within `credit / 2`.
    async fn credit(&self, sent: u64, credit: u64) -> Credit {
        if sent.saturating_sub(self.slowest()) <= credit {
            return Credit::Ready;
        }
        let target = sent - credit / 2;
        self.resume_at.store(target, Ordering::SeqCst);
        let mut progress = (self.total(), Instant::now());
        while self.slowest() < target {
            // A left-over wake-up only makes this loop once more.
            let _ = tokio::time::timeout(Duration::from_millis(200), self.wake.notified()).await;
            let total = self.total();
            if total != progress.0 {
                progress = (total, Instant::now());
            } else if progress.1.elapsed() > STALL {
                self.resume_at.store(u64::MAX, Ordering::SeqCst);
                return Credit::Stalled;
            }
        }
        self.resume_at.store(u64::MAX, Ordering::SeqCst);
        Credit::AfterPause
    }
}

enum Credit {
    Ready,
    AfterPause,
    /// The subscribers stopped making progress.
    Stalled,
}

/// Sends the messages.
pub(crate) enum Publisher {
    Trunkline(StompClient),
    Nats(async_nats::Client),
    WebSocket(crate::wsfanout::Publisher),
}

impl Publisher {
    /// Sends `body`; for the `last` one, waits until the server has everything.
    async fn publish(&mut self, body: String, last: bool) -> Result<()> {
        match self {
            Publisher::Trunkline(c) => {
                let headers = [("content-type", "application/json")];
                if last {
                    // Confirmed in frame order: this receipt covers every SEND before it.
                    c.send(TOPIC, &headers, body).await?.await?;
                } else {
                    c.publish(TOPIC, &headers, body).await?;
                }
            }
            Publisher::Nats(c) => {
                c.publish(SUBJECT, Bytes::from(body)).await?;
                if last {
                    c.flush().await?;
                }
            }
            Publisher::WebSocket(p) => p.publish(body, last).await?,
        }
        Ok(())
    }
}

/// One system, connected and subscribed.
pub(crate) struct Target {
    /// The server process, for CPU and RSS.
    pub pid: u32,
    pub publisher: Publisher,
    /// The bodies each subscriber gets (or whole frames holding them: see
    /// [`load::sent_ns`]).
    pub subscribers: Vec<BoxStream<'static, Bytes>>,
    /// The subscribers' connections, open until the end of the run.
    pub _connections: Vec<Box<dyn std::any::Any + Send>>,
}

/// Connects and subscribes; for Trunkline, starts the server first.
async fn prepare(a: &FanoutArgs) -> Result<(Target, Option<Server>)> {
    match a.target.as_str() {
        "trunkline" => {
            let server = Server::for_target(a.server_bin.as_deref(), None, None).await?;
            eprintln!("server pid {} on {}", server.pid, server.stomp);
            // Live messages only: no inbox may match the topic, and the admin's subscribers
            // read it by a live-only grant.
            let http = http_client()?;
            let admin = admin_aside(&http, &server).await?;
            grant_live_reads(&http, &server.api, &admin, &[SUBJECT]).await?;
            let connect = || async {
                StompClient::connect(options(&server.stomp, "admin", &server.admin_secret, 1))
                    .await
                    .context("STOMP connect")
            };
            let mut subscribers = Vec::new();
            let mut connections: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
            for _ in 0..a.subscribers {
                let c = connect().await?;
                let mut rx = c.subscribe(TOPIC, "auto", None).await?;
                // The server handles a connection's frames in order and confirms them in
                // order: once this receipt is in, the subscription is in place.
                c.send("/topic/bench.fanout-ready", &[], "{}")
                    .await?
                    .await
                    .context("SUBSCRIBE")?;
                subscribers.push(
                    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
                        .map(|m| m.body)
                        .boxed(),
                );
                connections.push(Box::new(c));
            }
            let target = Target {
                pid: server.pid,
                publisher: Publisher::Trunkline(connect().await?),
                subscribers,
                _connections: connections,
            };
            Ok((target, Some(server)))
        }
        "nats" => {
            let pid = a
                .server_pid
                .or_else(find_nats)
                .ok_or_else(|| anyhow!("no nats-server process; pass --server-pid"))?;
            let connect = || async {
                async_nats::connect(&a.nats)
                    .await
                    .with_context(|| format!("connect to NATS at {}", a.nats))
            };
            let mut subscribers = Vec::new();
            let mut connections: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
            for _ in 0..a.subscribers {
                let c = connect().await?;
                let sub = c.subscribe(SUBJECT).await?;
                // A round trip: the server has the subscription.
                c.flush().await?;
                subscribers.push(sub.map(|m| m.payload).boxed());
                connections.push(Box::new(c));
            }
            let target = Target {
                pid,
                publisher: Publisher::Nats(connect().await?),
                subscribers,
                _connections: connections,
            };
            Ok((target, None))
        }
        other => bail!("--target must be trunkline or nats, not {other}"),
    }
}

#[derive(Default)]
struct SubResult {
    /// Send → arrival of each delivery, in ns.
    latency_ns: Vec<u64>,
    /// Deliveries whose send time was not after the previous one's (reordered or
    /// duplicated).
    out_of_order: u64,
    /// Bodies without a send time.
    malformed: u64,
    /// The stream ended before the run did (the server closed the connection).
    closed: bool,
    /// When the last delivery arrived.
    last_at: Option<Instant>,
}

async fn subscriber(
    shared: Arc<Shared>,
    i: usize,
    mut bodies: BoxStream<'static, Bytes>,
    mut stop: watch::Receiver<bool>,
    capacity: usize,
) -> SubResult {
    let mut r = SubResult {
        latency_ns: Vec::with_capacity(capacity),
        ..Default::default()
    };
    let mut previous = None;
    loop {
        let body = tokio::select! {
            biased;
            b = bodies.next() => b,
            _ = stop.changed() => break,
        };
        let Some(body) = body else {
            r.closed = true;
            break;
        };
        let now = shared.ns();
        match load::sent_ns(&body) {
            Some(t) => {
                r.latency_ns.push(now.saturating_sub(t));
                if previous.is_some_and(|p| t <= p) {
                    r.out_of_order += 1;
                }
                previous = Some(t);
            }
            None => r.malformed += 1,
        }
        r.last_at = Some(Instant::now());
        shared.got(i);
    }
    r
}

struct PubResult {
    sent: u64,
    /// Times it waited for credit.
    pauses: u64,
    /// When the last message was confirmed (Trunkline) or flushed (NATS).
    done_at: Option<Instant>,
    /// Why the publisher stopped early.
    stopped: Option<String>,
}

async fn publisher(shared: Arc<Shared>, mut p: Publisher, a: Load, deadline: Instant) -> PubResult {
    let pad = load::padding(a.size);
    let mut r = PubResult {
        sent: 0,
        pauses: 0,
        done_at: None,
        stopped: None,
    };
    for seq in 0..a.messages {
        if Instant::now() > deadline {
            r.stopped = Some("the duration limit".into());
            break;
        }
        match shared.credit(seq, a.credit).await {
            Credit::Ready => {}
            Credit::AfterPause => r.pauses += 1,
            Credit::Stalled => {
                r.stopped = Some(format!(
                    "the subscribers made no progress for {STALL:?} (lost messages?)"
                ));
                break;
            }
        }
        let body = load::body(shared.ns(), &pad);
        if let Err(e) = p.publish(body, seq + 1 == a.messages).await {
            r.stopped = Some(format!("publish failed: {e:#}"));
            break;
        }
        r.sent += 1;
    }
    if r.stopped.is_none() {
        r.done_at = Some(Instant::now());
    }
    r
}

/// Runs the scenario; true if every subscriber got every message.
pub async fn run(a: &FanoutArgs) -> Result<bool> {
    let load = a.load();
    load.check(a.subscribers)?;
    let (t, mut server) = prepare(a).await?;
    // Which server ran, as it says itself (NATS: the version in its INFO).
    let version = match (&t.publisher, &server) {
        (Publisher::Nats(c), _) => Some(format!("nats-server {}", c.server_info().version)),
        (_, Some(s)) => Some(s.version.clone()),
        _ => None,
    };
    let log_tail = || server.as_ref().map(|s| s.log_tail(20));
    let mut report = measured(&load, t, server.is_some(), &log_tail).await?;
    report["server"] = json!(version);
    tokio::task::block_in_place(|| server.as_mut().map(Server::stop));
    drop(server);
    finish(&report, a.json.as_deref())
}

/// [`measure`], stopped by Ctrl-C; `log_tail` (the end of the server's log, if the bench
/// started it) is printed when the run fails or is incomplete.
pub(crate) async fn measured(
    load: &Load,
    t: Target,
    fresh: bool,
    log_tail: &dyn Fn() -> Option<String>,
) -> Result<Value> {
    let result = tokio::select! {
        r = measure(load, t, fresh) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    if !result
        .as_ref()
        .is_ok_and(|r| r["complete"].as_bool() == Some(true))
    {
        if let Some(tail) = log_tail() {
            eprintln!("the server's log ends with:\n{tail}");
        }
    }
    result
}

/// Prints the report and writes it to `json`; true if the run was complete.
pub(crate) fn finish(report: &Value, json: Option<&Path>) -> Result<bool> {
    print_report(report);
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(report["complete"].as_bool() == Some(true))
}

/// Runs the load on a connected target. `fresh`: the server was started for this run.
async fn measure(a: &Load, t: Target, fresh: bool) -> Result<Value> {
    let n = t.subscribers.len();
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        received: (0..n).map(|_| AtomicU64::new(0)).collect(),
        resume_at: AtomicU64::new(u64::MAX),
        wake: Notify::new(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let capacity = a.messages.min(10_000_000) as usize;
    let subscribers: Vec<_> = t
        .subscribers
        .into_iter()
        .enumerate()
        .map(|(i, s)| tokio::spawn(subscriber(shared.clone(), i, s, stop_rx.clone(), capacity)))
        .collect();

    let tick = sys::clock_ticks_per_sec()?;
    let load_before = load_average();
    // Peak RSS of this run only, for a server that ran before it (NATS): writing 5 to
    // clear_refs resets VmHWM. Best effort.
    let rss_reset = std::fs::write(format!("/proc/{}/clear_refs", t.pid), "5").is_ok();
    let cpu0 = cpu_ticks(t.pid)?;
    let bench_cpu0 = cpu_ticks(std::process::id())?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(a.duration_limit);
    let pubr = tokio::spawn(publisher(shared.clone(), t.publisher, a.clone(), deadline))
        .await
        .context("the publisher task failed")?;

    // Wait for the subscribers to have everything, or to stop making progress.
    let want = pubr.sent * n as u64;
    let mut progress = (shared.total(), Instant::now());
    while shared.total() < want && Instant::now() < deadline {
        if !alive(t.pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let total = shared.total();
        if total != progress.0 {
            progress = (total, Instant::now());
        } else if progress.1.elapsed() > STALL {
            break;
        }
    }
    let _ = stop_tx.send(true);
    let mut subs = Vec::with_capacity(n);
    for s in subscribers {
        subs.push(s.await.context("a subscriber task failed")?);
    }
    let ended = Instant::now();
    if !alive(t.pid) {
        bail!("the server exited during the run");
    }
    let cpu1 = cpu_ticks(t.pid)?;
    let bench_cpu1 = cpu_ticks(std::process::id())?;
    let rss_kib = peak_rss_kib(t.pid)?;

    let delivered: u64 = subs.iter().map(|s| s.latency_ns.len() as u64).sum();
    let delivered_all: u64 = shared.total();
    let lost = want.saturating_sub(delivered_all);
    let complete = pubr.sent == a.messages && delivered_all == want;
    let end = if complete {
        subs.iter().filter_map(|s| s.last_at).max().unwrap_or(ended)
    } else {
        ended
    };
    let elapsed = end.duration_since(start).as_secs_f64();
    let publish_elapsed = pubr.done_at.map(|d| d.duration_since(start).as_secs_f64());
    let server_cpu_s = cpu1.saturating_sub(cpu0) as f64 / tick;
    let bench_cpu_s = bench_cpu1.saturating_sub(bench_cpu0) as f64 / tick;
    let per = delivered_all.max(1) as f64;
    Ok(json!({
        "scenario": a.scenario,
        "target": a.target,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "config": {
            "subscribers": n,
            "messages": a.messages,
            "size": a.size,
            "credit": a.credit,
            "duration_limit_s": a.duration_limit,
        },
        "sent": pubr.sent,
        "deliveries": delivered_all,
        "expected_deliveries": want,
        "lost": lost,
        "out_of_order": subs.iter().map(|s| s.out_of_order).sum::<u64>(),
        "malformed": subs.iter().map(|s| s.malformed).sum::<u64>(),
        "closed_subscribers": subs.iter().filter(|s| s.closed).count(),
        "publisher_stopped": pubr.stopped,
        "publisher_pauses": pubr.pauses,
        "complete": complete,
        "elapsed_s": elapsed,
        "deliveries_per_s": delivered_all as f64 / elapsed,
        "msgs_per_s": pubr.sent as f64 / elapsed,
        "publish_elapsed_s": publish_elapsed,
        "end_to_end_latency": latency_json(
            subs.iter_mut().flat_map(|s| std::mem::take(&mut s.latency_ns)).collect()
        ),
        "latency_samples": delivered,
        "server_cpu_s": server_cpu_s,
        "server_cpu_us_per_delivery": server_cpu_s * 1e6 / per,
        "server_peak_rss_mib": rss_kib as f64 / 1024.0,
        "server_peak_rss_of_run": rss_reset || fresh,
        "bench_cpu_s": bench_cpu_s,
        "bench_cpu_us_per_delivery": bench_cpu_s * 1e6 / per,
        "load_avg_1m_before": load_before,
    }))
}

fn print_report(r: &Value) {
    let c = &r["config"];
    let l = |p: &str| fmt(&r["end_to_end_latency"][p], 2);
    println!(
        "{} {}{}: {} msgs of {} B to {} subscribers (credit {}): {} deliveries/s, server CPU {} µs/delivery, peak RSS {} MiB",
        r["scenario"].as_str().unwrap_or(""),
        r["target"].as_str().unwrap_or(""),
        r["server"]
            .as_str()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default(),
        r["sent"],
        c["size"],
        c["subscribers"],
        c["credit"],
        fmt(&r["deliveries_per_s"], 0),
        fmt(&r["server_cpu_us_per_delivery"], 2),
        fmt(&r["server_peak_rss_mib"], 1),
    );
    println!(
        "  {} of {} deliveries ({} lost, {} out of order{}) in {} s; end-to-end latency p50 {} ms  p99 {} ms  max {} ms",
        r["deliveries"],
        r["expected_deliveries"],
        r["lost"],
        r["out_of_order"],
        if r["complete"].as_bool() == Some(true) {
            ", complete".to_owned()
        } else {
            format!(
                ", INCOMPLETE: {}",
                r["publisher_stopped"]
                    .as_str()
                    .unwrap_or("deliveries missing")
            )
        },
        fmt(&r["elapsed_s"], 2),
        l("p50_ms"),
        l("p99_ms"),
        l("max_ms"),
    );
    println!(
        "  bench CPU {} µs/delivery (same machine); load avg before {}",
        fmt(&r["bench_cpu_us_per_delivery"], 2),
        fmt(&r["load_avg_1m_before"], 2),
    );
}
