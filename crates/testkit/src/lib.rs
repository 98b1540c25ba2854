//! Test helpers for Trunkline: [`TestServer`] runs a real node in this process on
//! `127.0.0.1:0` with a temporary data directory; tests talk to it over real sockets.
//!
//! Dev-only: nothing here is meant for production use.
//!
//! ```no_run
//! # async fn f() {
//! let server = trunkline_testkit::TestServer::start().await;
//! let admin = server.admin();
//! assert!(admin.list_clients().await.unwrap().iter().any(|c| c.client_id == "admin"));
//! server.stop().await;
//! # }
//! ```

pub mod federation;
pub mod stomp;

use std::path::{Path, PathBuf};

use trunkline_api::CredentialsFile;
use trunkline_client::Client;
use trunkline_server::{Config, Node, Secrets};

pub use stomp::StompWire;

/// A node for one test. Stop it with [`TestServer::stop`] (or let the runtime end).
pub struct TestServer {
    node: Option<Node>,
    dir: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    pub http: String,
    pub backend: String,
    /// `host:port` of the STOMP listener.
    pub stomp: String,
    /// `host:port` of the STOMP-over-TLS listener, if configured.
    pub stomp_tls: String,
    /// `host:port` of the federation listener, if configured.
    pub federation: String,
    pub backend_key: String,
}

/// The configuration tests use: loopback, port 0, the given data directory.
pub fn test_config(data_dir: &Path) -> Config {
    let mut c = Config {
        data_dir: data_dir.to_owned(),
        http: "127.0.0.1:0".parse().expect("invariant: literal address"),
        backend: "127.0.0.1:0".parse().expect("invariant: literal address"),
        ..Config::default()
    };
    c.stomp.listen = "127.0.0.1:0".parse().expect("invariant: literal address");
    // The backend fixture: with TRUNKLINE_TEST_BROKER (amqp:// URLs), messages live in
    // that RabbitMQ, each data directory's under a namespace of its own (the same again
    // when a test restarts a node on it).
    if let Ok(url) = std::env::var("TRUNKLINE_TEST_BROKER") {
        if !url.is_empty() {
            c.broker.url = url;
            c.broker.namespace = namespace_of(data_dir);
        }
    }
    c
}

/// With `TRUNKLINE_TEST_LOG` set (a filter such as `warn`), in-process nodes log to
/// stderr (`--no-capture` shows it).
fn log_if_asked() {
    if let Ok(filter) = std::env::var("TRUNKLINE_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// The RabbitMQ namespace of the node on `data_dir` (temporary directories are unique).
fn namespace_of(data_dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut h);
    format!("tl-{:016x}", h.finish())
}

impl TestServer {
    /// A node with default settings in a fresh temporary directory.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A node whose configuration `tweak` may change first.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().to_owned();
        let mut s = Self::start_in(&path, tweak).await;
        s.dir = Some(dir);
        s
    }

    /// A node on an existing data directory (to test restarts); the directory is kept.
    pub async fn start_in(data_dir: &Path, tweak: impl FnOnce(&mut Config)) -> Self {
        log_if_asked();
        let mut c = test_config(data_dir);
        tweak(&mut c);
        let node = Node::start(c, Secrets::default())
            .await
            .expect("start node");
        let backend_key = std::fs::read_to_string(data_dir.join("backend.key"))
            .expect("read backend.key")
            .trim()
            .to_owned();
        TestServer {
            stomp: node.stomp_addr.map(|a| a.to_string()).unwrap_or_default(),
            stomp_tls: node
                .stomp_tls_addr
                .map(|a| a.to_string())
                .unwrap_or_default(),
            federation: node
                .federation_addr
                .map(|a| a.to_string())
                .unwrap_or_default(),
            http: format!("http://{}", node.http_addr),
            backend: format!("http://{}", node.backend_addr),
            node: Some(node),
            dir: None,
            data_dir: data_dir.to_owned(),
            backend_key,
        }
    }

    /// Removes `dir` when the server is stopped (for a server started in it).
    pub fn keep_dir(&mut self, dir: tempfile::TempDir) {
        self.dir = Some(dir);
    }

    /// The node's broker, for calls in process.
    pub fn broker(&self) -> Option<&trunkline_broker::Broker> {
        self.node.as_ref().and_then(|n| n.broker())
    }

    /// The engine the node's front-ends use (embedded, or over RabbitMQ).
    pub fn engine(&self) -> Option<&std::sync::Arc<dyn trunkline_broker::Backend>> {
        self.node.as_ref().and_then(|n| n.engine())
    }

    /// Messages in queue `name` now, as its engine counts them (0 once stopped).
    pub async fn depth(&self, name: &str) -> u64 {
        match self.engine() {
            Some(e) => e.depth(name).await.unwrap_or(0),
            None => 0,
        }
    }

    /// Whether this run keeps messages in RabbitMQ (TRUNKLINE_TEST_BROKER): for the few
    /// checks where its semantics differ (docs/scale-out.md).
    pub fn on_rabbitmq() -> bool {
        std::env::var("TRUNKLINE_TEST_BROKER").is_ok_and(|u| !u.is_empty())
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A request to the backend listener with the backend key: the status and the JSON
    /// answer (`null` if it was not JSON).
    pub async fn backend_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", self.backend))
            .header("X-Backend-Key", &self.backend_key);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("backend request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// `POST` to the backend listener with the backend key.
    pub async fn backend_post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.backend_request("POST", path, Some(&body)).await
    }

    /// The credentials the node wrote to `admin.json`.
    pub fn admin_credentials(&self) -> CredentialsFile {
        let text =
            std::fs::read_to_string(self.data_dir.join("admin.json")).expect("read admin.json");
        serde_json::from_str(&text).expect("parse admin.json")
    }

    /// A bearer token for `admin`, from `GET /token`.
    pub async fn admin_token(&self) -> String {
        let c = self.admin_credentials();
        token(&reqwest::Client::new(), &self.http, &c.client_id, &c.secret).await
    }

    /// An SDK client logged in as `admin`.
    pub fn admin(&self) -> Client {
        let c = self.admin_credentials();
        Client::new(&self.http, &c.client_id, &c.secret).expect("client")
    }

    /// An SDK client for `client_id` with `secret`.
    pub fn client(&self, client_id: &str, secret: &str) -> Client {
        Client::new(&self.http, client_id, secret).expect("client")
    }

    /// Creates a client subscribed to `patterns` and returns an SDK client for it.
    pub async fn new_client(&self, client_id: &str, patterns: &[&str]) -> Client {
        let created = self
            .admin()
            .create_client(&trunkline_api::CreateClient::new(
                client_id,
                trunkline_api::Subscription::from_patterns(
                    patterns.iter().map(|p| p.to_string()).collect(),
                ),
            ))
            .await
            .expect("create client");
        self.client(client_id, &created.secret)
    }

    /// Stops the node and waits until its store is closed. The temporary directory, if
    /// any, is removed; call [`TestServer::stop_keep`] to restart on it.
    pub async fn stop(mut self) {
        if let Some(n) = self.node.take() {
            n.shutdown().await;
        }
    }

    /// Stops the node and hands back the temporary directory so a restart can use it.
    pub async fn stop_keep(mut self) -> Option<tempfile::TempDir> {
        if let Some(n) = self.node.take() {
            n.shutdown().await;
        }
        self.dir.take()
    }
}

/// A node running as its own process (the real binary), for tests that kill it.
pub struct ProcessServer {
    pub child: std::process::Child,
    pub http: String,
    pub backend: String,
    /// `host:port` of the STOMP listener.
    pub stomp: String,
    pub data_dir: PathBuf,
}

impl ProcessServer {
    /// Starts `bin serve` on `data_dir` with both listeners on 127.0.0.1:0, and waits
    /// (at most 30 s) for it to write `listen.json`. Its log goes to `data_dir/../node.log`.
    pub fn start(bin: &Path, data_dir: &Path) -> std::io::Result<Self> {
        Self::start_on(bin, data_dir, "127.0.0.1:0")
    }

    /// As [`ProcessServer::start`], with STOMP on `stomp` (a fixed port survives restarts).
    pub fn start_on(bin: &Path, data_dir: &Path, stomp: &str) -> std::io::Result<Self> {
        Self::spawn(Self::serve_command(bin, data_dir, stomp), data_dir)
    }

    /// The command [`ProcessServer::start_on`] runs: `bin serve` on `data_dir`, both HTTP
    /// listeners on 127.0.0.1:0, STOMP on `stomp`, logging warnings. Add to it (a
    /// `--config`, environment) or run it under a wrapper, then [`ProcessServer::spawn`] it.
    pub fn serve_command(bin: &Path, data_dir: &Path, stomp: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(bin);
        cmd.args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:0",
            "--stomp",
            stomp,
            "--data-dir",
        ])
        .arg(data_dir)
        .env("TRUNKLINE_LOG_LEVEL", "warn");
        cmd
    }

    /// Runs `cmd`, a node serving `data_dir` (whose process id must be the child's: a
    /// wrapper must `exec` it), and waits (at most 30 s) for it to write `listen.json`. Its
    /// output goes to `data_dir/../node.log` (`data_dir` with the extension `log`).
    pub fn spawn(mut cmd: std::process::Command, data_dir: &Path) -> std::io::Result<Self> {
        let listen = data_dir.join("listen.json");
        let _ = std::fs::remove_file(&listen);
        let log_path = data_dir.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&listen) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    let addr = |k: &str| format!("http://{}", v[k].as_str().unwrap_or_default());
                    return Ok(ProcessServer {
                        stomp: v["stomp"].as_str().unwrap_or_default().to_owned(),
                        http: addr("http"),
                        backend: addr("backend"),
                        child,
                        data_dir: data_dir.to_owned(),
                    });
                }
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(std::io::Error::other(format!(
                    "node exited with {status}: {log}"
                )));
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return Err(std::io::Error::other("node did not start within 30 s"));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The credentials the node wrote to `admin.json`.
    pub fn admin_credentials(&self) -> CredentialsFile {
        let text =
            std::fs::read_to_string(self.data_dir.join("admin.json")).expect("read admin.json");
        serde_json::from_str(&text).expect("parse admin.json")
    }
}

impl Drop for ProcessServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of `var`, which names a RabbitMQ the test needs (`scripts/test.sh` starts a
/// private one and sets it). Unset, the test is skipped (`None`), except under CI, which
/// must run it.
pub fn rabbitmq_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("CI").is_err(),
                "CI must run this test against RabbitMQ: set {var} (scripts/test.sh does)"
            );
            eprintln!("skipped: {var} is not set (run scripts/rabbitmq.sh start)");
            None
        }
    }
}

/// A bearer token for `id` from the node at `base` (`GET /token`); panics if there is none.
pub async fn token(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> String {
    let r: serde_json::Value = http
        .get(format!("{base}/token"))
        .query(&[("client_id", id), ("secret", secret)])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token json");
    r["token"].as_str().expect("token field").to_owned()
}

/// Creates client `id` subscribed to `subscription` with the admin's token (`POST
/// /client`); returns its secret. Panics if the node refuses.
pub async fn create_client(
    http: &reqwest::Client,
    base: &str,
    admin_token: &str,
    id: &str,
    subscription: &str,
) -> String {
    let r: serde_json::Value = http
        .post(format!("{base}/client"))
        .bearer_auth(admin_token)
        .json(
            &serde_json::json!({"client_id": id, "client_name": id, "subscription": subscription}),
        )
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("create client {id}: {e}"))
        .json()
        .await
        .expect("client json");
    r["secret"].as_str().expect("secret field").to_owned()
}

/// The `/metrics` text of the node whose backend listener is at `backend`.
pub async fn metrics_text(http: &reqwest::Client, backend: &str, backend_key: &str) -> String {
    http.get(format!("{backend}/metrics"))
        .header("x-backend-key", backend_key)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of an unlabelled sample `name` in a `/metrics` text.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A loopback port that was free a moment ago (for servers that must keep their port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
