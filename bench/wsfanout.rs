//! `trunkline-bench wsfanout`: live fan-out over WebSocket, one publisher session →
//! `--sessions` receiver sessions, against
//!
//! - Trunkline: a server started for the run (with `[ws] rate_per_sec` raised so that the
//!   one publisher is not rate limited); every session authenticates with a client token
//!   on the upgrade; the receivers subscribe to the public channel `bench`; the publisher
//!   sends `channel.publish` calls with a channel token (`pub: true`, minted by the
//!   backend's `POST /channel-token`) without waiting for the answers, which a task reads
//!   and checks (`delivered` must be `--sessions`); or
//! - Node: `bench/node/ws-broadcast.mjs`, the plain broadcast server of npm `ws` (every
//!   message relayed to every other open client), started for the run; the receivers
//!   only connect, the publisher sends the bodies as text frames.
//!
//! The load is `fanout`'s loop (credit, lost and out-of-order counting, end-to-end latency
//! from the send time in each body, the stall check, the report). Before any message, the
//! process's RSS is read with no session open and again once every receiver is connected
//! (and subscribed): the difference over `--sessions` is the memory per idle session.
//!
//! Every receiver has its own connection, read by its own task in this process, on the
//! same cores as the server: compare server CPU per delivery, not only deliveries/s.

use std::fs::File;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::stream::{SplitSink, StreamExt, TryStreamExt};
use futures::SinkExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::fanout::{self, Load, Target};
use crate::{
    create_client, expect_json, fmt, get_token, http_client, rss_kib, stop_child, sys, Server,
    START_TIMEOUT,
};

/// Trunkline's channel (public: no token needed to subscribe).
const CHANNEL: &str = "bench";
/// Trunkline's settings for the run: one session publishes every message, far past the
/// default 100 per second; every session comes from the one loopback address, past the
/// default 256 connections per address.
const TRUNKLINE_CONFIG: &str =
    "[ws]\nrate_per_sec = 1000000000\n\n[http_limits]\nmax_connections_per_address = 100000\n";
/// Time allowed for one connection (upgrade, and for Trunkline the welcome and subscribe).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Sessions connecting at once.
const CONNECTING: usize = 32;
/// Pause before reading a server's RSS, for its allocations to settle.
const SETTLE: Duration = Duration::from_millis(500);
/// The read buffer of each client connection. tungstenite zero-fills the free part of
/// its read buffer before every read (128 KiB by default): with one frame per read that
/// was half of this process's CPU. 16 KiB still takes a dozen 1 KiB frames per read.
const READ_BUFFER: usize = 16 * 1024;
/// Time allowed for the answer to the last publish.
const LAST_ANSWER: Duration = Duration::from_secs(10);

#[derive(clap::Args, Clone, Debug)]
pub struct WsFanoutArgs {
    /// `trunkline` (started from --server-bin) or `node` (--node-script started with
    /// --node); both are started for the run.
    #[arg(long, default_value = "trunkline")]
    pub target: String,
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// The Node.js binary.
    #[arg(long, default_value = "node")]
    pub node: PathBuf,
    /// The broadcast server (needs `npm ci` in its directory).
    #[arg(long, default_value = "bench/node/ws-broadcast.mjs")]
    pub node_script: PathBuf,
    /// Receiver sessions, each on its own connection.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Messages to publish; each goes to every receiver.
    #[arg(long, default_value_t = 2000)]
    pub messages: u64,
    /// Size of each message body, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// The publisher pauses while it is more than this many messages ahead of the slowest
    /// receiver. Trunkline closes a session with 1024 frames queued (4429): keep it well
    /// below.
    #[arg(long, default_value_t = 50)]
    pub credit: u64,
    /// Stop after this many seconds even if not every message was delivered.
    #[arg(long, default_value_t = 60)]
    pub duration_limit: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

// ---------------------------------------------------------------------------------------
// The server processes.

/// `ws-broadcast.mjs` started for the run. Dropping it stops the process.
struct NodeServer {
    child: Option<Child>,
    pid: u32,
    port: u16,
    /// `ws <version> on Node <version>`, as the script says.
    version: String,
    /// Holds the process's stderr (`node.log`).
    dir: tempfile::TempDir,
}

impl NodeServer {
    async fn start(node: &Path, script: &Path) -> Result<NodeServer> {
        let dir = tempfile::Builder::new()
            .prefix("trunkline-bench-node-")
            .tempdir()
            .context("cannot make a temporary directory")?;
        let log = File::create(dir.path().join("node.log")).context("cannot create node.log")?;
        let mut child = Command::new(node)
            .arg(script)
            .args(["127.0.0.1", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} {}", node.display(), script.display()))?;
        let stdout = child.stdout.take();
        let mut server = NodeServer {
            pid: child.id(),
            child: Some(child),
            port: 0,
            version: String::new(),
            dir,
        };
        let stdout = stdout.ok_or_else(|| anyhow!("no stdout from node"))?;
        // The first line, {"port": N, "pid": P}; read on a thread (pipes block). If it
        // never comes, dropping `server` kills node, which ends the read.
        let line = tokio::time::timeout(
            START_TIMEOUT,
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                std::io::BufReader::new(stdout)
                    .read_line(&mut line)
                    .map(|_| line)
            }),
        )
        .await;
        let line = match line {
            Ok(Ok(Ok(line))) if !line.is_empty() => line,
            _ => bail!(
                "{} did not say it listens within {START_TIMEOUT:?} (is `npm ci` done in its directory?); its log:\n{}",
                script.display(),
                server.log_tail(30)
            ),
        };
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("{} printed {line:?}, not JSON", script.display()))?;
        server.port = v["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| anyhow!("no port in {line:?}"))?;
        server.version = v["server"].as_str().unwrap_or_default().to_owned();
        if v["pid"].as_u64() != Some(u64::from(server.pid)) {
            bail!(
                "node says its pid is {} but the started process is {}: is --node a wrapper script?",
                v["pid"],
                server.pid
            );
        }
        Ok(server)
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, "node");
        }
    }
}

/// The server under test.
enum Process {
    Trunkline(Server),
    Node(NodeServer),
}

impl Process {
    fn pid(&self) -> u32 {
        match self {
            Process::Trunkline(s) => s.pid,
            Process::Node(n) => n.pid,
        }
    }

    /// What ran, for the report.
    fn describe(&self, a: &WsFanoutArgs) -> String {
        match self {
            Process::Trunkline(_) => {
                let bin = a.server_bin.as_deref().unwrap_or(Path::new("?"));
                format!("trunkline {}", bin.display())
            }
            Process::Node(n) => n.version.clone(),
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        match self {
            Process::Trunkline(s) => s.log_tail(lines),
            Process::Node(n) => n.log_tail(lines),
        }
    }

    /// Stops the process (blocks).
    fn stop(self) {
        match self {
            Process::Trunkline(mut s) => {
                s.stop();
            }
            Process::Node(n) => drop(n),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sessions.

async fn connect(url: &str, token: Option<&str>) -> Result<Ws> {
    let mut req = url.into_client_request()?;
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    let (ws, _) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(
            req,
            Some(WebSocketConfig::default().read_buffer_size(READ_BUFFER)),
            true,
        ),
    )
    .await
    .map_err(|_| anyhow!("connecting to {url} took more than {CONNECT_TIMEOUT:?}"))?
    .with_context(|| format!("cannot connect to {url}"))?;
    Ok(ws)
}

/// The next frame, within [`CONNECT_TIMEOUT`] of `since`.
async fn next_frame(ws: &mut Ws, since: tokio::time::Instant) -> Result<Message> {
    tokio::time::timeout_at(since + CONNECT_TIMEOUT, ws.next())
        .await
        .map_err(|_| anyhow!("no answer within {CONNECT_TIMEOUT:?}"))?
        .ok_or_else(|| anyhow!("the server closed the connection"))?
        .map_err(Into::into)
}

/// The next text frame as JSON (the library answers pings meanwhile).
async fn next_json(ws: &mut Ws) -> Result<Value> {
    let since = tokio::time::Instant::now();
    loop {
        match next_frame(ws, since).await? {
            Message::Text(t) => return Ok(serde_json::from_str(&t)?),
            Message::Close(c) => bail!("the server closed the session: {c:?}"),
            _ => continue,
        }
    }
}

/// A Trunkline session and its id, from the welcome.
async fn trunkline_session(url: &str, token: &str) -> Result<(Ws, String)> {
    let mut ws = connect(url, Some(token)).await?;
    let welcome = next_json(&mut ws).await?;
    let sid = welcome["message"]["sessionId"]
        .as_str()
        .ok_or_else(|| anyhow!("expected a welcome, got {welcome}"))?
        .to_owned();
    Ok((ws, sid))
}

/// A Trunkline receiver: a session subscribed to [`CHANNEL`].
async fn trunkline_receiver(url: &str, token: &str) -> Result<Ws> {
    let (mut ws, _) = trunkline_session(url, token).await?;
    let call = json!({"service": "channel",
        "message": {"command": "subscribe", "params": {"channel": CHANNEL}, "callId": 1}});
    ws.send(Message::Text(call.to_string().into())).await?;
    let answer = next_json(&mut ws).await?;
    if answer["message"]["type"] != "response" {
        bail!("subscribe to {CHANNEL}: {answer}");
    }
    Ok(ws)
}

/// A Node client, once the server has it: the answer to a ping comes after the server
/// added the connection to its clients.
async fn node_client(url: &str) -> Result<Ws> {
    let mut ws = connect(url, None).await?;
    ws.send(Message::Ping(Bytes::from_static(b"ready"))).await?;
    let since = tokio::time::Instant::now();
    while !matches!(next_frame(&mut ws, since).await?, Message::Pong(_)) {}
    Ok(ws)
}

/// What the publisher's session got back.
#[derive(Default)]
struct Answers {
    /// Trunkline's answers to `publish`.
    answered: u64,
    /// Error answers (each a message not delivered).
    errors: u64,
    first_error: Option<String>,
    /// Answers whose `delivered` was not the number of receivers.
    short: u64,
    /// Other frames (Node sends the publisher nothing).
    unexpected: u64,
}

/// The publishing session. Trunkline's answers are read and checked by a task of their
/// own, so publishing never waits for them (but for the last one).
pub(crate) struct Publisher {
    sink: SplitSink<Ws, Message>,
    /// Trunkline: the channel token; each body goes in a `publish` call. Node: `None`,
    /// each body is sent as it is.
    token: Option<String>,
    /// The last callId sent.
    calls: u64,
    /// The last callId answered.
    answered: watch::Receiver<u64>,
}

impl Publisher {
    fn new(ws: Ws, token: Option<String>, receivers: usize) -> (Publisher, Arc<Mutex<Answers>>) {
        let (sink, mut stream) = ws.split();
        let answers = Arc::new(Mutex::new(Answers::default()));
        let (tx, answered) = watch::channel(0);
        let seen = answers.clone();
        // Ends when the connection does, at the latest when the server is stopped.
        tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                let Message::Text(text) = frame else { continue };
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let m = &v["message"];
                let mut a = seen.lock().unwrap_or_else(|p| p.into_inner());
                match (m["type"].as_str(), m["callId"].as_u64()) {
                    (Some("response"), Some(id)) => {
                        a.answered += 1;
                        if m["data"]["delivered"].as_u64() != Some(receivers as u64) {
                            a.short += 1;
                        }
                        let _ = tx.send(id);
                    }
                    (Some("error"), Some(id)) => {
                        a.errors += 1;
                        a.first_error.get_or_insert_with(|| m.to_string());
                        let _ = tx.send(id);
                    }
                    _ => a.unexpected += 1,
                }
            }
        });
        let p = Publisher {
            sink,
            token,
            calls: 0,
            answered,
        };
        (p, answers)
    }

    /// Sends `body`; for the `last` one, waits for Trunkline's answer (answers come in
    /// the order of the calls, so it covers every one before).
    pub async fn publish(&mut self, body: String, last: bool) -> Result<()> {
        let Some(token) = &self.token else {
            return Ok(self.sink.send(Message::Text(body.into())).await?);
        };
        self.calls += 1;
        let frame = format!(
            r#"{{"service":"channel","message":{{"command":"publish","params":{{"channel":"{CHANNEL}","token":"{token}","message":{body}}},"callId":{}}}}}"#,
            self.calls
        );
        self.sink.send(Message::Text(frame.into())).await?;
        if last {
            let want = self.calls;
            tokio::time::timeout(LAST_ANSWER, self.answered.wait_for(|&n| n >= want))
                .await
                .map_err(|_| anyhow!("no answer to the last publish within {LAST_ANSWER:?}"))?
                .map_err(|_| anyhow!("the publisher's session ended"))?;
        }
        Ok(())
    }
}

/// Connects `n` sessions with `open`, [`CONNECTING`] at a time, and splits each: the
/// read halves become the receivers' streams of text frames, the write halves stay open
/// until the end of the run (so closing 1000 connections is not part of the measured CPU).
async fn receivers<F, Fut>(
    n: usize,
    open: F,
) -> Result<(
    Vec<futures::stream::BoxStream<'static, Bytes>>,
    Vec<Box<dyn std::any::Any + Send>>,
)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Ws>>,
{
    let sessions: Vec<Ws> = futures::stream::iter(0..n)
        .map(|_| open())
        .buffer_unordered(CONNECTING)
        .try_collect()
        .await?;
    let mut streams = Vec::with_capacity(n);
    let mut sinks: Vec<Box<dyn std::any::Any + Send>> = Vec::with_capacity(n);
    for ws in sessions {
        let (sink, stream) = ws.split();
        streams.push(
            stream
                .take_while(|f| std::future::ready(f.is_ok()))
                .filter_map(|f| {
                    std::future::ready(match f {
                        Ok(Message::Text(t)) => Some(Bytes::from(t)),
                        _ => None,
                    })
                })
                .boxed(),
        );
        sinks.push(Box::new(sink));
    }
    Ok((streams, sinks))
}

/// The memory of idle sessions: the server's RSS before any and with every receiver.
struct Idle {
    before_kib: u64,
    after_kib: u64,
    connect_s: f64,
}

/// Connects the receivers (measuring the idle memory) and the publisher.
async fn prepare(
    a: &WsFanoutArgs,
    process: &Process,
) -> Result<(Target, Idle, Arc<Mutex<Answers>>)> {
    let pid = process.pid();
    let n = a.sessions;
    let before = |pid| async move {
        tokio::time::sleep(SETTLE).await;
        rss_kib(pid)
    };
    let started = Instant::now();
    let (idle, streams, sinks, publisher) = match process {
        Process::Trunkline(server) => {
            let http = http_client()?;
            let api = server.api.as_str();
            let admin = get_token(&http, api, "admin", &server.admin_secret).await?;
            let secret = create_client(&http, api, &admin, "bench-ws", "bench-ws.unused").await?;
            let token = get_token(&http, api, "bench-ws", &secret).await?;
            let url = format!("{}/ws", api.replacen("http://", "ws://", 1));
            let before_kib = before(pid).await?;
            let (streams, sinks) = receivers(n, || trunkline_receiver(&url, &token)).await?;
            let connect_s = started.elapsed().as_secs_f64();
            let after_kib = before(pid).await?;
            let (ws, sid) = trunkline_session(&url, &token).await?;
            let resp = http
                .post(format!("{}/channel-token", server.backend))
                .bearer_auth(&admin)
                .json(&json!({"sid": sid, "cname": CHANNEL, "pub": true}))
                .send()
                .await
                .context("POST /channel-token")?;
            let minted = expect_json("POST /channel-token", resp, StatusCode::OK).await?;
            let channel_token = minted["token"]
                .as_str()
                .ok_or_else(|| anyhow!("POST /channel-token: no token in {minted}"))?
                .to_owned();
            let idle = Idle {
                before_kib,
                after_kib,
                connect_s,
            };
            (idle, streams, sinks, (ws, Some(channel_token)))
        }
        Process::Node(node) => {
            let url = format!("ws://127.0.0.1:{}/", node.port);
            let before_kib = before(pid).await?;
            let (streams, sinks) = receivers(n, || node_client(&url)).await?;
            let connect_s = started.elapsed().as_secs_f64();
            let after_kib = before(pid).await?;
            let idle = Idle {
                before_kib,
                after_kib,
                connect_s,
            };
            (idle, streams, sinks, (node_client(&url).await?, None))
        }
    };
    let (publisher, answers) = Publisher::new(publisher.0, publisher.1, n);
    let target = Target {
        pid,
        publisher: fanout::Publisher::WebSocket(publisher),
        subscribers: streams,
        _connections: sinks,
    };
    Ok((target, idle, answers))
}

async fn start(a: &WsFanoutArgs) -> Result<Process> {
    match a.target.as_str() {
        "trunkline" => {
            let server =
                Server::for_target(a.server_bin.as_deref(), Some(TRUNKLINE_CONFIG), None).await?;
            eprintln!("server pid {} on {}", server.pid, server.api);
            Ok(Process::Trunkline(server))
        }
        "node" => {
            let node = NodeServer::start(&a.node, &a.node_script).await?;
            eprintln!("node pid {} on 127.0.0.1:{}", node.pid, node.port);
            Ok(Process::Node(node))
        }
        other => bail!("--target must be trunkline or node, not {other}"),
    }
}

/// Runs the scenario; true if every receiver got every message.
pub async fn run(a: &WsFanoutArgs) -> Result<bool> {
    let load = Load {
        scenario: "wsfanout",
        target: a.target.clone(),
        messages: a.messages,
        size: a.size,
        credit: a.credit,
        duration_limit: a.duration_limit,
    };
    load.check(a.sessions)?;
    // Both ends of every connection are on this machine, in this process and in the
    // server it starts (which inherits the limit).
    let want = 2 * a.sessions as u64 + 256;
    match sys::raise_open_files(want) {
        Ok(n) if n >= want => {}
        Ok(n) => eprintln!("warning: at most {n} open files (wanted {want}); sessions may fail"),
        Err(e) => eprintln!("warning: cannot raise the open files limit: {e}"),
    }
    let process = start(a).await?;
    let prepared = tokio::select! {
        r = prepare(a, &process) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let (target, idle, answers) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("the server's log ends with:\n{}", process.log_tail(20));
            return Err(e);
        }
    };
    let log_tail = || Some(process.log_tail(20));
    let mut report = fanout::measured(&load, target, true, &log_tail).await?;
    let server = process.describe(a);
    tokio::task::block_in_place(|| process.stop());

    let n = a.sessions as f64;
    let answers = answers.lock().unwrap_or_else(|p| p.into_inner());
    let extra = json!({
        "server": server,
        "sessions": a.sessions,
        "connect_s": idle.connect_s,
        "server_rss_before_sessions_kib": idle.before_kib,
        "server_rss_idle_sessions_kib": idle.after_kib,
        "idle_session_kib": (idle.after_kib as f64 - idle.before_kib as f64) / n,
        "publish_answers": answers.answered,
        "publish_errors": answers.errors,
        "first_publish_error": answers.first_error,
        "short_publishes": answers.short,
        "unexpected_frames": answers.unexpected,
    });
    if let (Some(r), Value::Object(x)) = (report.as_object_mut(), extra) {
        r.extend(x);
    }
    let complete = fanout::finish(&report, a.json.as_deref())?;
    print_sessions(&report);
    Ok(complete)
}

fn print_sessions(r: &Value) {
    let mib = |k: &str| fmt(&json!(r[k].as_f64().map(|v| v / 1024.0)), 1);
    println!(
        "  idle sessions {} KiB each (server RSS {} → {} MiB with {} sessions, connected in {} s)",
        fmt(&r["idle_session_kib"], 1),
        mib("server_rss_before_sessions_kib"),
        mib("server_rss_idle_sessions_kib"),
        r["sessions"],
        fmt(&r["connect_s"], 2),
    );
    if r["target"] == "trunkline" {
        println!(
            "  publish answers {} ({} errors, {} short of every session){}",
            r["publish_answers"],
            r["publish_errors"],
            r["short_publishes"],
            r["first_publish_error"]
                .as_str()
                .map(|e| format!("; first error {e}"))
                .unwrap_or_default(),
        );
    }
}
