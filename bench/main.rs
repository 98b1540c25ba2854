//! `trunkline-bench`: a load generator for Trunkline's durable path.
//!
//! `trunkline-bench durable --server-bin PATH` starts the given `trunkline` binary on a
//! fresh temporary data directory, creates one consumer client per consumer (subscribed
//! to `bench.<i>.#`) and one client per publisher, then has the publishers `POST /send`
//! sequentially (each one request in flight) while the consumers loop over
//! `GET /receive?ack=manual` and `POST /ack`. It stops when every message was received
//! and acked, or at the duration limit, and reports throughput, publish and end-to-end
//! latency, the server's CPU time per message, its peak RSS, and its group-commit figures
//! from `/metrics`. The server is stopped (SIGTERM, SIGKILL after 10 s) and its directory
//! removed at the end, also on errors and on Ctrl-C.
//!
//! See `bench/README.md` for how to read the numbers.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};

mod amqp;
mod backlog;
mod disk;
mod fanout;
mod federation;
mod guard;
mod load;
mod nats;
mod recovery;
mod relay;
mod routing;
mod stomp;
mod wsfanout;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Time allowed for one HTTP request (a long poll takes about `WAIT_SECS`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// `GET /receive?wait=`: bounds each consumer loop iteration when the inbox is empty.
const WAIT_SECS: u64 = 1;
/// `GET /receive?lease=`.
const LEASE_SECS: u64 = 30;
/// Time allowed for the server to write `listen.json`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Time between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Pause before retrying a failed request.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

#[derive(Parser)]
#[command(
    name = "trunkline-bench",
    version,
    about = "Load generator for Trunkline's durable path"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Durable publish → receive → ack over HTTP against a server started for the run.
    Durable(DurableArgs),
    /// Topic matching with many subscriptions, in process.
    Routing(routing::RoutingArgs),
    /// Time to recover a store full of queued messages, in process.
    Recovery(recovery::RecoveryArgs),
    /// A backlog larger than memory: an offline client's inbox filled, then drained in
    /// order, by a node in a memory-limited process.
    Backlog(backlog::BacklogArgs),
    /// Durable publish → consume → ack over STOMP, against Trunkline or RabbitMQ's STOMP
    /// plugin, with the same client code.
    StompDurable(stomp::StompArgs),
    /// The same durable scenario against NATS JetStream (file storage), via async-nats.
    NatsDurable(nats::NatsArgs),
    /// The CI regression check: server CPU per message against bench/guard.json.
    Guard(guard::GuardArgs),
    /// Live (non-durable) fan-out, one publisher to N subscribers, against Trunkline
    /// (STOMP /topic) or NATS core.
    Fanout(fanout::FanoutArgs),
    /// The same durable scenario against RabbitMQ over AMQP 0-9-1, via lapin.
    AmqpDurable(amqp::AmqpArgs),
    /// Live fan-out over WebSocket, one publisher session to many receiver sessions,
    /// against Trunkline (a public channel) or a plain Node `ws` broadcast server.
    Wsfanout(wsfanout::WsFanoutArgs),
    /// One federation link between two nodes (mutual TLS, STOMP, cumulative receipts):
    /// messages per second and CPU per message on each side.
    Federation(federation::FederationArgs),
    /// Request/response between two twins through one relay, with RMB's Redis gateways
    /// and without them, and the relay's memory per connected session.
    Relay(relay::RelayArgs),
}

#[derive(Args, Clone, Debug)]
struct DurableArgs {
    /// The `trunkline` server binary (a release build).
    #[arg(long)]
    server_bin: PathBuf,
    /// Concurrent publishers, each with one request in flight.
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// Consumers, each with its own client and inbox (`bench.<i>.#`).
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// Messages to publish in total.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Size of each message body (a JSON object), in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// `max_messages` of each `GET /receive` (1 to 1000).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Stop after this many seconds even if not every message was acked.
    #[arg(long, default_value_t = 120)]
    duration_limit: u64,
    /// One publisher sending sequentially: the rate of one synchronous durable publisher.
    #[arg(long)]
    sync_publisher: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Directory in which to make the server's temporary data directory (default: the
    /// system temp dir). Its file system decides what an fsync costs.
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Cmd::Durable(args) => rt.block_on(durable(args)),
        Cmd::Recovery(args) => rt.block_on(recovery::run(&args)).map(|_| true),
        Cmd::Backlog(args) => rt.block_on(backlog::run(&args)),
        Cmd::StompDurable(args) => rt.block_on(stomp::run(&args)),
        Cmd::NatsDurable(args) => rt.block_on(nats::run(&args)),
        Cmd::Guard(args) => guard::run(&args).and_then(|ok| {
            if ok {
                Ok(true)
            } else {
                Err(anyhow!(
                    "a check used more than its limit of server CPU per message in every run"
                ))
            }
        }),
        Cmd::Fanout(args) => rt.block_on(fanout::run(&args)),
        Cmd::AmqpDurable(args) => rt.block_on(amqp::run(&args)),
        Cmd::Wsfanout(args) => rt.block_on(wsfanout::run(&args)),
        Cmd::Federation(args) => rt.block_on(federation::run(&args)),
        Cmd::Relay(args) => rt.block_on(relay::run(&args)),
        Cmd::Routing(args) => {
            routing::run(&args);
            Ok(true)
        }
    };
    // An incomplete run still reports, but its numbers are not comparable: exit 2.
    // Tasks still running (only after an error or Ctrl-C) are cancelled here.
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("warning: the run is incomplete (the duration limit or a stall came first, a publish failed, or messages were missing, duplicated or foreign: see its report); its numbers are not comparable");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// The few system calls that need unsafe code.

#[allow(unsafe_code)]
mod sys {
    /// Clock ticks per second, the unit of `/proc/PID/stat` CPU times.
    pub fn clock_ticks_per_sec() -> anyhow::Result<f64> {
        // SAFETY: sysconf only reads a configuration value; it has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t <= 0 {
            anyhow::bail!("sysconf(_SC_CLK_TCK) failed");
        }
        Ok(t as f64)
    }

    /// Raises this process's soft limit of open files to at least `want` (within the hard
    /// limit); children started later inherit it. Returns the soft limit now.
    pub fn raise_open_files(want: u64) -> std::io::Result<u64> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit, which `lim` is.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur >= want as libc::rlim_t {
            return Ok(lim.rlim_cur);
        }
        lim.rlim_cur = lim.rlim_max.min(want as libc::rlim_t);
        // SAFETY: setrlimit reads one rlimit, which `lim` is.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(lim.rlim_cur)
    }

    /// Sends `sig` to process `pid`. Call only for a child that was not reaped yet, so
    /// that the pid cannot have been reused.
    pub fn signal(pid: u32, sig: libc::c_int) -> std::io::Result<()> {
        let pid =
            libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        let r = unsafe { libc::kill(pid, sig) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

// ---------------------------------------------------------------------------------------
// /proc readings.

/// utime + stime of `pid`, in clock ticks (fields 14 and 15 of `/proc/PID/stat`).
/// Bytes process `pid` has caused to be written to storage (`write_bytes` of
/// `/proc/PID/io`: counted as it dirties the page cache, so a file written and deleted
/// before writeback counts too). `None` where the kernel does not keep it.
fn disk_written(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let s = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Field 2, the command name, is in parentheses and may hold spaces: count fields from
    // the last ')'. What follows starts with field 3.
    let rest = s
        .rfind(')')
        .and_then(|i| s.get(i + 1..))
        .ok_or_else(|| anyhow!("{path}: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("{path}: no field {n}"))
    };
    Ok(field(14)? + field(15)?)
}

/// The pid of a running process whose command line (arguments joined by NUL) passes
/// `matches`, found in /proc (the highest pid if several do).
fn find_process(matches: impl Fn(&str) -> bool) -> Option<u32> {
    find_processes(matches).into_iter().max()
}

/// Every process whose command line `matches`.
fn find_processes(matches: impl Fn(&str) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            matches(&String::from_utf8_lossy(&cmd)).then_some(pid)
        })
        .collect()
}

fn is_beam(cmd: &str) -> bool {
    cmd.contains("beam.smp") && cmd.contains("rabbit")
}

/// The pid of RabbitMQ's Erlang VM (`beam.smp`), for its CPU time.
fn find_beam() -> Option<u32> {
    find_process(is_beam)
}

/// Every RabbitMQ Erlang VM on the machine (the nodes of a local cluster).
fn find_beams() -> Vec<u32> {
    find_processes(is_beam)
}

/// False once `pid` has exited (a zombie not yet reaped counts as exited).
fn alive(pid: u32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = s
        .rfind(')')
        .and_then(|i| s.get(i + 1..))
        .and_then(|rest| rest.split_whitespace().next());
    !matches!(state, None | Some("Z" | "X" | "x"))
}

/// Peak resident set size of `pid` (`VmHWM` of `/proc/PID/status`), in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM:")
}

/// Resident set size of `pid` now (`VmRSS` of `/proc/PID/status`), in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `kB` field of `/proc/PID/status`.
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let s = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("{path}: no {field}"))
}

/// The 1-minute load average, to tell a quiet machine from a busy one.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------
// The server process.

/// A `trunkline serve` started for the run. Dropping it stops the server and removes
/// its directory.
struct Server {
    child: Option<Child>,
    dir: PathBuf,
    pid: u32,
    /// Base URL of the public listener.
    api: String,
    /// Base URL of the backend listener (`/metrics`).
    backend: String,
    /// `host:port` of the STOMP listener.
    stomp: String,
    admin_secret: String,
    /// What `--version` printed.
    version: String,
    /// How it was started (for [`Server::restart`]).
    bin: PathBuf,
    config: Option<PathBuf>,
    limit_bytes: Option<u64>,
    /// A node joining another's cluster: the first node's admin secret (only the first
    /// node writes `admin.json`).
    joined: Option<String>,
}

impl Server {
    async fn start(bin: &Path, parent: &Path) -> Result<Server> {
        Server::start_with(bin, parent, None).await
    }

    /// The server of `--target trunkline`, from `--server-bin`, in `parent` (default: the
    /// system temp dir).
    async fn for_target(
        bin: Option<&Path>,
        config: Option<&str>,
        parent: Option<&Path>,
    ) -> Result<Server> {
        let bin = bin.ok_or_else(|| anyhow!("--server-bin is required for --target trunkline"))?;
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        Server::start_with(bin, &parent, config).await
    }

    /// The server as a run's system: its version and where its data directory is.
    fn system(&self) -> Result<load::System> {
        let data = self.dir.join("data");
        Ok(load::System {
            server: self.version.clone(),
            settings: None,
            data: disk::Placement::of(&data, "the data directory the bench gave the server")
                .map_err(|e| format!("{e:#}")),
            pid: self.pid,
        })
    }

    /// Starts the server with `config` (TOML, over the defaults) as its `--config` file.
    async fn start_with(bin: &Path, parent: &Path, config: Option<&str>) -> Result<Server> {
        Server::start_opts(bin, parent, config, None).await
    }

    /// [`Server::start_with`] in a process whose address space is limited to
    /// `limit_bytes` (`ulimit -v` in a `sh` that then `exec`s the node, so the pid is the
    /// node's; `MALLOC_ARENA_MAX=2`, as glibc otherwise reserves 64 MiB of address space
    /// per arena).
    async fn start_limited(
        bin: &Path,
        parent: &Path,
        config: Option<&str>,
        limit_bytes: u64,
    ) -> Result<Server> {
        Server::start_opts(bin, parent, config, Some(limit_bytes)).await
    }

    async fn start_opts(
        bin: &Path,
        parent: &Path,
        config: Option<&str>,
        limit_bytes: Option<u64>,
    ) -> Result<Server> {
        Server::start_full(bin, parent, config, limit_bytes, None).await
    }

    /// Another node of `first`'s cluster (`config` names the same RabbitMQ and
    /// namespace): it gets `first`'s key files, as an operator gives every node the same
    /// secrets.
    async fn start_joining(
        bin: &Path,
        parent: &Path,
        config: &str,
        first: &Server,
    ) -> Result<Server> {
        Server::start_full(bin, parent, Some(config), None, Some(first)).await
    }

    async fn start_full(
        bin: &Path,
        parent: &Path,
        config: Option<&str>,
        limit_bytes: Option<u64>,
        first: Option<&Server>,
    ) -> Result<Server> {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = parent.join(format!("trunkline-bench-{}-{stamp}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // From here on, dropping `server` removes the directory.
        let mut server = Server {
            child: None,
            dir,
            pid: 0,
            api: String::new(),
            backend: String::new(),
            stomp: String::new(),
            admin_secret: String::new(),
            version: String::new(),
            bin: bin.to_path_buf(),
            config: None,
            limit_bytes,
            joined: first.map(|f| f.admin_secret.clone()),
        };
        if let Some(first) = first {
            let (from, to) = (first.dir.join("data"), server.dir.join("data"));
            std::fs::create_dir_all(&to)?;
            for f in ["token.key", "backend.key", "channel.key"] {
                std::fs::copy(from.join(f), to.join(f))
                    .with_context(|| format!("cannot copy {f} from the first node"))?;
            }
        }
        server.version = Command::new(bin)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "trunkline".into());
        if let Some(text) = config {
            let path = server.dir.join("config.toml");
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            server.config = Some(path);
        }
        server.launch(START_TIMEOUT).await?;
        Ok(server)
    }

    /// Stops the server and starts it again on the same data directory, as it was
    /// started; waits up to `wait` for it to listen. Returns how long the start took.
    async fn restart(&mut self, wait: Duration) -> Result<Duration> {
        self.stop();
        let _ = std::fs::remove_file(self.dir.join("data").join("listen.json"));
        let started = Instant::now();
        self.launch(wait).await?;
        Ok(started.elapsed())
    }

    /// Spawns the server and waits (up to `wait`) until it listens.
    async fn launch(&mut self, wait: Duration) -> Result<()> {
        let bin = self.bin.clone();
        let data = self.dir.join("data");
        let log_path = self.dir.join("server.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let mut cmd = match self.limit_bytes {
            None => Command::new(&bin),
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -v {} && exec \"$@\"", limit / 1024))
                    .arg("sh")
                    .arg(&bin)
                    .env("MALLOC_ARENA_MAX", "2");
                sh
            }
        };
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--http",
                "127.0.0.1:0",
                "--backend",
                "127.0.0.1:0",
                "--stomp",
                "127.0.0.1:0",
            ])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(path) = &self.config {
            cmd.arg("--config").arg(path);
        }
        // The server reads its settings from TRUNKLINE_* variables too: start it from its
        // defaults (and `config`) whatever the caller's environment holds.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("TRUNKLINE_") || k.starts_with("SOAR_") {
                cmd.env_remove(&*k);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let server = self;
        server.pid = child.id();
        server.child = Some(child);

        let listen_path = data.join("listen.json");
        let started = Instant::now();
        let listen: Value = loop {
            if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                bail!(
                    "the server exited during start-up ({status}); its log:\n{}",
                    server.log_tail(30)
                );
            }
            // listen.json is written atomically (temp file + rename).
            if let Ok(text) = std::fs::read_to_string(&listen_path) {
                if let Ok(v) = serde_json::from_str(&text) {
                    break v;
                }
            }
            if started.elapsed() > wait {
                bail!(
                    "the server did not write {} within {wait:?}; its log:\n{}",
                    listen_path.display(),
                    server.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let addr = |k: &str| -> Result<String> {
            listen[k]
                .as_str()
                .map(|a| format!("http://{a}"))
                .ok_or_else(|| anyhow!("listen.json has no `{k}`: {listen}"))
        };
        server.api = addr("http")?;
        server.backend = addr("backend")?;
        server.stomp = listen["stomp"].as_str().unwrap_or_default().to_owned();
        if let Some(pid) = listen["pid"].as_u64() {
            if pid != u64::from(server.pid) {
                bail!(
                    "listen.json names pid {pid} but the started process is {}: is --server-bin a wrapper script?",
                    server.pid
                );
            }
        }
        if let Some(secret) = &server.joined {
            server.admin_secret = secret.clone();
            return Ok(());
        }
        let admin_path = data.join("admin.json");
        let admin: Value = serde_json::from_str(
            &std::fs::read_to_string(&admin_path)
                .with_context(|| format!("cannot read {}", admin_path.display()))?,
        )
        .with_context(|| format!("{} is not JSON", admin_path.display()))?;
        server.admin_secret = admin["secret"]
            .as_str()
            .ok_or_else(|| anyhow!("{} has no secret", admin_path.display()))?
            .to_owned();
        Ok(())
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the server: see [`stop_child`]. Blocks.
    fn stop(&mut self) -> Option<(Duration, String)> {
        self.child
            .take()
            .map(|mut c| stop_child(&mut c, "the server"))
    }
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`]. Returns how long the stop took and how the
/// process ended. `what` names it in warnings. Blocks.
fn stop_child(child: &mut Child, what: &str) -> (Duration, String) {
    let started = Instant::now();
    if let Ok(Some(status)) = child.try_wait() {
        return (Duration::ZERO, format!("had already exited ({status})"));
    }
    if let Err(e) = sys::signal(child.id(), libc::SIGTERM) {
        eprintln!("warning: cannot send SIGTERM to {what}: {e}");
    }
    while started.elapsed() < STOP_GRACE {
        match child.try_wait() {
            Ok(Some(status)) => return (started.elapsed(), describe(status)),
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    eprintln!("warning: {what} did not stop within {STOP_GRACE:?} of SIGTERM; sending SIGKILL");
    let _ = child.kill();
    let status = child.wait().map(describe).unwrap_or_else(|e| e.to_string());
    (started.elapsed(), format!("killed ({status})"))
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("warning: cannot remove {}: {e}", self.dir.display());
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP helpers.

/// One client per task: its connections are kept alive between requests.
fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")
}

/// The response's JSON if its status is `want`, an error naming the call otherwise.
async fn expect_json(what: &str, resp: reqwest::Response, want: StatusCode) -> Result<Value> {
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .with_context(|| format!("{what}: cannot read the answer"))?;
    if status != want {
        bail!(
            "{what}: HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
                .chars()
                .take(500)
                .collect::<String>()
        );
    }
    serde_json::from_slice(&bytes).with_context(|| format!("{what}: the answer is not JSON"))
}

async fn get_token(c: &reqwest::Client, api: &str, id: &str, secret: &str) -> Result<String> {
    let mut url = reqwest::Url::parse(&format!("{api}/token"))?;
    url.query_pairs_mut()
        .append_pair("client_id", id)
        .append_pair("secret", secret);
    let what = format!("GET /token for {id}");
    let v = expect_json(&what, c.get(url).send().await?, StatusCode::OK).await?;
    v["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{what}: no token in {v}"))
}

/// Creates a client and returns its secret.
async fn create_client(
    c: &reqwest::Client,
    api: &str,
    admin: &str,
    id: &str,
    subscription: &str,
) -> Result<String> {
    let what = format!("POST /client {id}");
    let resp = c
        .post(format!("{api}/client"))
        .bearer_auth(admin)
        .json(&json!({"client_id": id, "client_name": id, "subscription": subscription}))
        .send()
        .await
        .with_context(|| what.clone())?;
    let v = expect_json(&what, resp, StatusCode::CREATED).await?;
    v["secret"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{what}: no secret in {v}"))
}

/// The `admin` client's token, after pointing its subscription away from `#`. On first
/// start `admin` subscribes to `#`: every message would also go to its inbox (two queue
/// entries per message, and an inbox that fills up and then refuses publishes). Elsewhere,
/// each message has exactly the destinations a scenario made for it.
async fn admin_aside(http: &reqwest::Client, server: &Server) -> Result<String> {
    let api = server.api.as_str();
    let admin = get_token(http, api, "admin", &server.admin_secret).await?;
    patch_admin(
        http,
        api,
        &admin,
        json!({ "subscription": "bench-admin.unused" }),
    )
    .await?;
    Ok(admin)
}

/// Lets `admin` put messages straight into `queues` (STOMP `SEND /queue/…`), which a client
/// may do only into its own inbox and queues granted to it for writing.
async fn grant_writes(
    http: &reqwest::Client,
    api: &str,
    admin: &str,
    queues: &[String],
) -> Result<()> {
    patch_admin(http, api, admin, json!({ "write_grants": queues })).await
}

/// Lets `admin` subscribe live to `topics` (`read_topics`: live only, nothing routed into
/// its inbox), which a client may do only for topics its subscription or `read_topics`
/// match.
async fn grant_live_reads(
    http: &reqwest::Client,
    api: &str,
    admin: &str,
    topics: &[&str],
) -> Result<()> {
    patch_admin(http, api, admin, json!({ "read_topics": topics })).await
}

/// `PATCH /client/admin` with `change`, as the admin.
async fn patch_admin(http: &reqwest::Client, api: &str, admin: &str, change: Value) -> Result<()> {
    let what = format!("PATCH /client/admin {change}");
    let resp = http
        .patch(format!("{api}/client/admin"))
        .bearer_auth(admin)
        .json(&change)
        .send()
        .await
        .with_context(|| what.clone())?;
    expect_json(&what, resp, StatusCode::OK).await?;
    Ok(())
}

/// `/metrics` as `series → value` (series names include their labels).
async fn metrics(c: &reqwest::Client, backend: &str) -> Result<HashMap<String, f64>> {
    let resp = c
        .get(format!("{backend}/metrics"))
        .send()
        .await
        .context("GET /metrics")?;
    if !resp.status().is_success() {
        bail!("GET /metrics: HTTP {}", resp.status());
    }
    let text = resp.text().await.context("GET /metrics")?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// The load.

/// What every task shares.
struct Ctx {
    api: String,
    /// The clock of every timestamp in message bodies.
    t0: Instant,
    /// Nobody starts a request after this.
    deadline: Instant,
    /// Set when the server died: every loop stops.
    abort: AtomicBool,
    publishers: usize,
    consumers: usize,
    messages: u64,
    size: usize,
    batch: usize,
}

impl Ctx {
    /// True once no new request may start.
    fn stopped(&self) -> bool {
        self.abort.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }

    fn ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// Sequence numbers of publisher `p`'s messages, with the consumer each one is for:
    /// publisher `p` sends its `k`-th message to `bench.<(p + k) % consumers>.x`.
    fn assignments(&self, p: usize) -> impl Iterator<Item = (u64, usize)> + '_ {
        (p as u64..self.messages)
            .step_by(self.publishers)
            .enumerate()
            .map(move |(k, seq)| (seq, (p + k) % self.consumers))
    }

    /// Messages consumer `c` gets.
    fn expected(&self, c: usize) -> u64 {
        (0..self.publishers)
            .map(|p| self.assignments(p).filter(|&(_, to)| to == c).count() as u64)
            .sum()
    }
}

/// A `/send` request of exactly `size` body bytes (unless `size` is below the fixed
/// fields), naming its sequence number and send time.
fn send_request(seq: u64, p: usize, t_ns: u64, consumer: usize, size: usize, pad: &str) -> String {
    let head = format!(r#"{{"seq":{seq},"pub":{p},"t_ns":{t_ns},"pad":""#);
    let fill = size.saturating_sub(head.len() + 2).min(pad.len());
    format!(
        r#"{{"topic":"bench.{consumer}.x","body":{head}{}"}}}}"#,
        &pad[..fill]
    )
}

#[derive(Default)]
struct PubResult {
    sent: u64,
    /// Round trip of each accepted `/send`, in ns.
    latency_ns: Vec<u64>,
    /// Refused or failed `/send` calls (each retried).
    failures: u64,
    first_failure: Option<String>,
    /// Accepted sends whose `delivered_to` was not 1.
    misrouted: u64,
    done_at: Option<Instant>,
}

async fn publisher(ctx: Arc<Ctx>, p: usize, token: String) -> PubResult {
    let mut r = PubResult::default();
    let client = match http_client() {
        Ok(c) => c,
        Err(e) => {
            r.failures += 1;
            r.first_failure = Some(format!("{e:#}"));
            return r;
        }
    };
    let url = format!("{}/send", ctx.api);
    let auth = format!("Bearer {token}");
    let pad = "x".repeat(ctx.size);
    'messages: for (seq, consumer) in ctx.assignments(p) {
        if ctx.stopped() {
            break;
        }
        // The end-to-end clock starts before the first attempt, retries included.
        let t_ns = ctx.ns();
        let body = send_request(seq, p, t_ns, consumer, ctx.size, &pad);
        loop {
            let start = Instant::now();
            let outcome = client
                .post(&url)
                .header(AUTHORIZATION, &auth)
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            let failure = match outcome {
                Ok(resp) if resp.status() == StatusCode::ACCEPTED => match resp.bytes().await {
                    Ok(bytes) => {
                        r.latency_ns.push(start.elapsed().as_nanos() as u64);
                        r.sent += 1;
                        let to = serde_json::from_slice::<Value>(&bytes)
                            .ok()
                            .and_then(|v| v["delivered_to"].as_u64());
                        if to != Some(1) {
                            r.misrouted += 1;
                        }
                        continue 'messages;
                    }
                    Err(e) => format!("/send: cannot read the answer: {e}"),
                },
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    format!(
                        "/send: HTTP {status}: {}",
                        text.chars().take(300).collect::<String>()
                    )
                }
                Err(e) => format!("/send: {e}"),
            };
            r.failures += 1;
            r.first_failure.get_or_insert(failure);
            if ctx.stopped() {
                break 'messages;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    r.done_at = Some(Instant::now());
    r
}

#[derive(Default)]
struct ConsResult {
    expected: u64,
    /// Distinct messages received and acked.
    acked: u64,
    /// Send start → receive, in ns, for each message's first delivery.
    e2e_ns: Vec<u64>,
    /// Deliveries of a message received before.
    duplicates: u64,
    /// Receipts `/ack` did not know (lease expired or already settled).
    ack_unknown: u64,
    receives: u64,
    empty_receives: u64,
    /// Failed `/receive` or `/ack` calls.
    failures: u64,
    first_failure: Option<String>,
    /// When the last expected message was acked.
    done_at: Option<Instant>,
}

impl ConsResult {
    fn fail(&mut self, what: String) {
        self.failures += 1;
        self.first_failure.get_or_insert(what);
    }
}

async fn consumer(ctx: Arc<Ctx>, c: usize, token: String) -> ConsResult {
    let mut r = ConsResult {
        expected: ctx.expected(c),
        ..Default::default()
    };
    let client = match http_client() {
        Ok(cl) => cl,
        Err(e) => {
            r.fail(format!("{e:#}"));
            return r;
        }
    };
    let receive_url = format!(
        "{}/receive?max_messages={}&ack=manual&lease={LEASE_SECS}&wait={WAIT_SECS}",
        ctx.api, ctx.batch
    );
    let ack_url = format!("{}/ack", ctx.api);
    let auth = format!("Bearer {token}");
    let n = ctx.messages as usize;
    let mut received = vec![false; n];
    let mut acked = vec![false; n];
    while r.acked < r.expected && !ctx.stopped() {
        let bytes = match client
            .get(&receive_url)
            .header(AUTHORIZATION, &auth)
            .send()
            .await
        {
            Ok(resp) if resp.status() == StatusCode::OK => match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    r.fail(format!("/receive: cannot read the answer: {e}"));
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            },
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                r.fail(format!(
                    "/receive: HTTP {status}: {}",
                    text.chars().take(300).collect::<String>()
                ));
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            Err(e) => {
                r.fail(format!("/receive: {e}"));
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let now_ns = ctx.ns();
        r.receives += 1;
        let msgs: Vec<Value> = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => {
                r.fail(format!("/receive: the answer is not a JSON array: {e}"));
                continue;
            }
        };
        if msgs.is_empty() {
            r.empty_receives += 1;
            continue;
        }
        let mut batch: Vec<(String, usize)> = Vec::with_capacity(msgs.len());
        for m in &msgs {
            let body = &m["body"];
            let (Some(seq), Some(t_ns), Some(receipt)) = (
                body["seq"].as_u64(),
                body["t_ns"].as_u64(),
                m["receipt"].as_str(),
            ) else {
                r.fail(format!(
                    "/receive: unexpected message {}",
                    m.to_string().chars().take(200).collect::<String>()
                ));
                continue;
            };
            let Some(seen) = received.get_mut(seq as usize) else {
                r.fail(format!("/receive: unexpected sequence number {seq}"));
                continue;
            };
            if *seen {
                r.duplicates += 1;
            } else {
                *seen = true;
                r.e2e_ns.push(now_ns.saturating_sub(t_ns));
            }
            batch.push((receipt.to_owned(), seq as usize));
        }
        if batch.is_empty() {
            continue;
        }
        let receipts: Vec<&str> = batch.iter().map(|(rc, _)| rc.as_str()).collect();
        let answer = match client
            .post(&ack_url)
            .header(AUTHORIZATION, &auth)
            .json(&json!({ "receipts": receipts }))
            .send()
            .await
        {
            Ok(resp) => expect_json("/ack", resp, StatusCode::OK).await,
            Err(e) => Err(anyhow!("/ack: {e}")),
        };
        // On failure the messages come back once their lease ends.
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                r.fail(format!("{e:#}"));
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let unknown: HashSet<&str> = answer["unknown"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        r.ack_unknown += unknown.len() as u64;
        for (receipt, seq) in &batch {
            if !unknown.contains(receipt.as_str()) {
                if let Some(a) = acked.get_mut(*seq) {
                    if !*a {
                        *a = true;
                        r.acked += 1;
                    }
                }
            }
        }
    }
    if r.acked >= r.expected {
        r.done_at = Some(Instant::now());
    }
    r
}

// ---------------------------------------------------------------------------------------
// Results.

/// Nearest-rank percentile of sorted nanoseconds, in milliseconds.
fn percentile_ms(sorted: &[u64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    Some(sorted[i] as f64 / 1e6)
}

fn latency_json(mut ns: Vec<u64>) -> Value {
    ns.sort_unstable();
    let mean = if ns.is_empty() {
        None
    } else {
        Some(ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1e6)
    };
    json!({
        "count": ns.len(),
        "p50_ms": percentile_ms(&ns, 0.50),
        "p90_ms": percentile_ms(&ns, 0.90),
        "p99_ms": percentile_ms(&ns, 0.99),
        "max_ms": percentile_ms(&ns, 1.0),
        "mean_ms": mean,
    })
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn fmt(v: &Value, decimals: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.decimals$}"),
        None => "-".into(),
    }
}

fn print_table(r: &Value) {
    let c = &r["config"];
    let l = |k: &str, p: &str| fmt(&r[k][p], 2);
    let mode = if c["sync_publisher"].as_bool() == Some(true) {
        "sync publisher"
    } else {
        "concurrent publishers"
    };
    println!();
    println!(
        "trunkline-bench durable ({mode}): publishers {}, consumers {}, messages {} of {} B, receive batch {}",
        c["publishers"], c["consumers"], c["messages"], c["size"], c["batch"]
    );
    let rows: Vec<(&str, String)> = vec![
        (
            "messages",
            format!(
                "{} published, {} received+acked{}",
                r["published"],
                r["consumed_acked"],
                if r["complete"].as_bool() == Some(true) {
                    " (complete)".to_owned()
                } else {
                    format!(" (INCOMPLETE: duration limit {} s)", c["duration_limit_s"])
                }
            ),
        ),
        ("elapsed", format!("{} s", fmt(&r["elapsed_s"], 2))),
        (
            "throughput",
            format!(
                "{} msgs/s consumed+acked; publish {} msgs/s",
                fmt(&r["msgs_per_s"], 0),
                fmt(&r["publish_msgs_per_s"], 0)
            ),
        ),
        (
            "publish latency",
            format!(
                "p50 {} ms  p99 {} ms  max {} ms",
                l("publish_latency", "p50_ms"),
                l("publish_latency", "p99_ms"),
                l("publish_latency", "max_ms")
            ),
        ),
        (
            "end-to-end latency",
            format!(
                "p50 {} ms  p99 {} ms  max {} ms",
                l("e2e_latency", "p50_ms"),
                l("e2e_latency", "p99_ms"),
                l("e2e_latency", "max_ms")
            ),
        ),
        (
            "server CPU",
            format!(
                "{} µs/msg ({} s total)",
                fmt(&r["server_cpu_us_per_msg"], 0),
                fmt(&r["server_cpu_s"], 2)
            ),
        ),
        (
            "server peak RSS",
            format!("{} MiB", fmt(&r["server_peak_rss_mib"], 1)),
        ),
        (
            "commits",
            format!(
                "{} (mean batch {} requests, {} ops; mean commit {} ms; {} commits/msg)",
                r["commits"],
                fmt(&r["mean_commit_batch_size"], 2),
                fmt(&r["mean_ops_per_commit"], 1),
                fmt(&r["mean_commit_ms"], 2),
                fmt(&r["commits_per_msg"], 2)
            ),
        ),
        (
            "bench CPU",
            format!(
                "{} s (load generator, same machine); load avg before {}",
                fmt(&r["bench_cpu_s"], 2),
                fmt(&r["load_avg_1m_before"], 2)
            ),
        ),
        (
            "problems",
            format!(
                "{} publish failures, {} receive/ack failures, {} duplicates, {} unknown receipts, {} misrouted",
                r["publish_failures"],
                r["consume_failures"],
                r["duplicates"],
                r["ack_unknown"],
                r["misrouted"]
            ),
        ),
    ];
    for (k, v) in rows {
        println!("  {k:<20} {v}");
    }
    for key in ["first_publish_failure", "first_consume_failure"] {
        if let Some(s) = r[key].as_str() {
            println!("  {key:<20} {s}");
        }
    }
    println!();
}

// ---------------------------------------------------------------------------------------
// The `durable` command.

/// Runs the benchmark; true when every message was received and acked.
async fn durable(mut a: DurableArgs) -> Result<bool> {
    if a.sync_publisher && a.publishers != 1 {
        a.publishers = 1;
    }
    if a.publishers == 0 || a.consumers == 0 || a.messages == 0 || a.duration_limit == 0 {
        bail!("--publishers, --consumers, --messages and --duration-limit must be at least 1");
    }
    if !(1..=1000).contains(&a.batch) {
        bail!("--batch must be 1 to 1000 (the server's max_messages limit)");
    }
    if a.size > 512 * 1024 {
        bail!("--size must be at most 512 KiB (the server takes bodies up to 1 MiB)");
    }
    let parent = a.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut server = Server::start(&a.server_bin, &parent).await?;
    eprintln!(
        "server pid {} on {} (data in {})",
        server.pid,
        server.api,
        server.dir.display()
    );
    let result = tokio::select! {
        r = run(&server, &a) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let mut report = match result {
        Ok(report) => report,
        Err(e) => {
            eprintln!("the server's log ends with:\n{}", server.log_tail(20));
            return Err(e);
        }
    };
    let stop = tokio::task::block_in_place(|| server.stop());
    if let Some((took, how)) = stop {
        report["server_stop"] = json!({"seconds": took.as_secs_f64(), "how": how});
    }
    drop(server);
    print_table(&report);
    if let Some(path) = &a.json {
        let mut f =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        serde_json::to_writer_pretty(&mut f, &report)?;
        writeln!(f)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(report["complete"].as_bool() == Some(true))
}

async fn run(server: &Server, a: &DurableArgs) -> Result<Value> {
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let http = http_client()?;
    let api = server.api.as_str();
    let admin = admin_aside(&http, server).await?;

    let mut consumer_tokens = Vec::with_capacity(a.consumers);
    for i in 0..a.consumers {
        let id = format!("bench-c{i}");
        let secret = create_client(&http, api, &admin, &id, &format!("bench.{i}.#")).await?;
        consumer_tokens.push(get_token(&http, api, &id, &secret).await?);
    }
    let mut publisher_tokens = Vec::with_capacity(a.publishers);
    for i in 0..a.publishers {
        let id = format!("bench-p{i}");
        // Publishers need a client; nothing is ever sent to this subscription.
        let secret =
            create_client(&http, api, &admin, &id, &format!("bench-pub.{i}.unused")).await?;
        publisher_tokens.push(get_token(&http, api, &id, &secret).await?);
    }

    let tick = sys::clock_ticks_per_sec()?;
    let load_before = load_average();
    let metrics_before = metrics(&http, &server.backend).await?;
    let cpu_before = cpu_ticks(server.pid)?;
    let bench_cpu_before = cpu_ticks(std::process::id())?;
    let t0 = Instant::now();
    let limit = Duration::from_secs(a.duration_limit);
    let ctx = Arc::new(Ctx {
        api: api.to_owned(),
        t0,
        deadline: t0 + limit,
        abort: AtomicBool::new(false),
        publishers: a.publishers,
        consumers: a.consumers,
        messages: a.messages,
        size: a.size,
        batch: a.batch,
    });

    let consumers: Vec<_> = consumer_tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| tokio::spawn(consumer(ctx.clone(), i, t)))
        .collect();
    let publishers: Vec<_> = publisher_tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| tokio::spawn(publisher(ctx.clone(), i, t)))
        .collect();
    // Stops every loop if the server dies, rather than retrying until the deadline.
    let watchdog = {
        let ctx = ctx.clone();
        let pid = server.pid;
        tokio::spawn(async move {
            while !ctx.stopped() {
                if !alive(pid) {
                    ctx.abort.store(true, Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Every loop stops at the deadline and every request times out, so this is a
    // backstop only.
    let hard_stop = tokio::time::Instant::from_std(ctx.deadline + REQUEST_TIMEOUT * 2);
    let mut pubs = Vec::new();
    for h in publishers {
        let abort = h.abort_handle();
        match tokio::time::timeout_at(hard_stop, h).await {
            Ok(r) => pubs.push(r.context("a publisher task failed")?),
            Err(_) => {
                abort.abort();
                bail!("a publisher did not stop by the duration limit")
            }
        }
    }
    let mut cons = Vec::new();
    for h in consumers {
        let abort = h.abort_handle();
        match tokio::time::timeout_at(hard_stop, h).await {
            Ok(r) => cons.push(r.context("a consumer task failed")?),
            Err(_) => {
                abort.abort();
                bail!("a consumer did not stop by the duration limit")
            }
        }
    }
    watchdog.abort();
    let ended = Instant::now();
    if ctx.abort.load(Ordering::Relaxed) || !alive(server.pid) {
        bail!(
            "the server exited during the run ({} messages published, {} acked)",
            pubs.iter().map(|p| p.sent).sum::<u64>(),
            cons.iter().map(|c| c.acked).sum::<u64>()
        );
    }
    let cpu_after = cpu_ticks(server.pid)?;
    let bench_cpu_after = cpu_ticks(std::process::id())?;
    let rss_kib = peak_rss_kib(server.pid)?;
    let metrics_after = metrics(&http, &server.backend).await?;

    let published: u64 = pubs.iter().map(|p| p.sent).sum();
    let consumed: u64 = cons.iter().map(|c| c.acked).sum();
    let complete = consumed == a.messages && cons.iter().all(|c| c.done_at.is_some());
    // Time to the last ack when complete, else until everything stopped.
    let end = if complete {
        cons.iter().filter_map(|c| c.done_at).max().unwrap_or(ended)
    } else {
        ended
    };
    let elapsed = end.duration_since(t0).as_secs_f64();
    let publish_end = pubs.iter().filter_map(|p| p.done_at).max().unwrap_or(ended);
    let publish_elapsed = publish_end.duration_since(t0).as_secs_f64();
    let server_cpu_s = cpu_after.saturating_sub(cpu_before) as f64 / tick;
    let bench_cpu_s = bench_cpu_after.saturating_sub(bench_cpu_before) as f64 / tick;
    // CPU per message: per message consumed and acked, or per message published when
    // nothing was consumed.
    let per_msg = if consumed > 0 { consumed } else { published };

    let delta = |k: &str| {
        metrics_after.get(k).copied().unwrap_or(0.0) - metrics_before.get(k).copied().unwrap_or(0.0)
    };
    let commits = delta("trunkline_commits_total");
    let batch_sum = delta("trunkline_commit_batch_size_sum");
    let batch_count = delta("trunkline_commit_batch_size_count");
    // OpenMetrics writes bucket bounds as floats: `le="1.0"`.
    let single = delta("trunkline_commit_batch_size_bucket{le=\"1.0\"}");
    let commit_secs = delta("trunkline_commit_seconds_sum");
    let commit_count = delta("trunkline_commit_seconds_count");
    let ops = delta("trunkline_commit_ops_total");

    let first = |it: &mut dyn Iterator<Item = &Option<String>>| it.flatten().next().cloned();
    let data = match server.system()?.data {
        Ok(p) => p.to_json(),
        Err(e) => json!({ "error": e }),
    };
    let report = json!({
        "mode": if a.sync_publisher { "sync-publisher" } else { "durable" },
        "started_unix_s": started_unix_s,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "config": {
            "publishers": a.publishers,
            "consumers": a.consumers,
            "messages": a.messages,
            "size": a.size,
            "batch": a.batch,
            "duration_limit_s": a.duration_limit,
            "sync_publisher": a.sync_publisher,
            "server_bin": a.server_bin.display().to_string(),
            "data_parent": parent_display(&server.dir),
            "lease_s": LEASE_SECS,
            "wait_s": WAIT_SECS,
        },
        "data": data,
        "published": published,
        "consumed_acked": consumed,
        "complete": complete,
        "elapsed_s": elapsed,
        "msgs_per_s": ratio(consumed as f64, elapsed),
        "publish_elapsed_s": publish_elapsed,
        "publish_msgs_per_s": ratio(published as f64, publish_elapsed),
        "publish_latency": latency_json(pubs.iter_mut().flat_map(|p| std::mem::take(&mut p.latency_ns)).collect()),
        "e2e_latency": latency_json(cons.iter_mut().flat_map(|c| std::mem::take(&mut c.e2e_ns)).collect()),
        "server_cpu_s": server_cpu_s,
        "server_cpu_us_per_msg": ratio(server_cpu_s * 1e6, per_msg as f64),
        "server_peak_rss_kib": rss_kib,
        "server_peak_rss_mib": rss_kib as f64 / 1024.0,
        "commits": commits as u64,
        "commits_per_msg": ratio(commits, per_msg as f64),
        "mean_commit_batch_size": ratio(batch_sum, batch_count),
        "single_request_commit_share": ratio(single, batch_count),
        "mean_ops_per_commit": ratio(ops, commits),
        "mean_commit_ms": ratio(commit_secs * 1e3, commit_count),
        "server_messages_delivered": delta("trunkline_messages_delivered_total") as u64,
        "server_messages_acked": delta("trunkline_messages_acked_total") as u64,
        "bench_cpu_s": bench_cpu_s,
        "load_avg_1m_before": load_before,
        "receives": cons.iter().map(|c| c.receives).sum::<u64>(),
        "empty_receives": cons.iter().map(|c| c.empty_receives).sum::<u64>(),
        "mean_msgs_per_receive": ratio(
            (consumed + cons.iter().map(|c| c.duplicates).sum::<u64>()) as f64,
            cons.iter().map(|c| c.receives - c.empty_receives).sum::<u64>() as f64,
        ),
        "publish_failures": pubs.iter().map(|p| p.failures).sum::<u64>(),
        "first_publish_failure": first(&mut pubs.iter().map(|p| &p.first_failure)),
        "consume_failures": cons.iter().map(|c| c.failures).sum::<u64>(),
        "first_consume_failure": first(&mut cons.iter().map(|c| &c.first_failure)),
        "duplicates": cons.iter().map(|c| c.duplicates).sum::<u64>(),
        "ack_unknown": cons.iter().map(|c| c.ack_unknown).sum::<u64>(),
        "misrouted": pubs.iter().map(|p| p.misrouted).sum::<u64>(),
        "expected_per_consumer": cons.iter().map(|c| c.expected).collect::<Vec<_>>(),
    });
    Ok(report)
}

fn parent_display(dir: &Path) -> String {
    dir.parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}
