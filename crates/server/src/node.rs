//! A running node: opening the data directory, keys, the first admin, listeners and the
//! housekeeping task, and shutting it all down in order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trunkline_api::{CredentialsFile, Subscription};
use trunkline_auth::{Throttle, ThrottleLimits, TokenKey};
use trunkline_broker::{
    footprint, Backend, Broker, LimitSettings, NewClient, Overflow, SharedKeys,
};
use trunkline_store::fs::RealFs;
use trunkline_store::{Committer, LogOptions, LogStore, QueueStore, RedbStore};

use crate::config::{Config, Secrets, StoreConfig, StoreEngine};
use crate::http;
use crate::listener;
use crate::state::{now_ms, AppState, HttpCounters, Keys};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("data directory {path}: {cause}")]
    DataDir { path: PathBuf, cause: String },
    #[error("cannot open the store (is another node using this data directory?): {0}")]
    Store(String),
    #[error("cannot listen on {addr}: {cause}")]
    Bind { addr: SocketAddr, cause: String },
    #[error("invalid secret: {0}")]
    Secret(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Federation(#[from] crate::federation::FederationError),
    #[error(transparent)]
    Relay(#[from] crate::relay::RelayError),
    #[error("RabbitMQ broker: {0}")]
    Broker(String),
}

/// The durable engine the front-ends use: the embedded broker, or, with `[broker] url`,
/// a RabbitMQ cluster with this broker as the node's registry.
async fn open_engine(
    config: &Config,
    broker: &Broker,
    http_addr: SocketAddr,
    keys: SharedKeys,
    shutdown: &CancellationToken,
) -> Result<Arc<dyn Backend>, StartError> {
    let urls = config.broker.urls();
    if urls.is_empty() {
        return Ok(Arc::new(broker.clone()));
    }
    let node = match config.broker.node.as_str() {
        "" => format!("n{}", http_addr.port()),
        n if n
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            n.to_owned()
        }
        n => {
            return Err(StartError::Broker(format!(
                "node `{n}`: a node's name is [a-z0-9-]"
            )))
        }
    };
    let amqp = trunkline_amqp::Amqp::connect(
        trunkline_amqp::AmqpConfig {
            urls,
            node,
            namespace: config.broker.namespace.clone(),
        },
        now_ms(),
    )
    .await
    .map_err(|e| StartError::Broker(e.to_string()))?;
    let cluster = trunkline_amqp::Cluster::open(broker.clone(), amqp, keys, shutdown.clone())
        .await
        .map_err(|e| StartError::Broker(e.to_string()))?;
    tracing::info!(brokers = %config.broker.url, "messages live in RabbitMQ");
    Ok(cluster)
}

/// On a node's (or a cluster's) first start: creates the `admin` client and writes its
/// credentials to `admin.json` in the data directory.
async fn bootstrap_admin(
    engine: &dyn Backend,
    dir: &Path,
    http_addr: SocketAddr,
) -> Result<(), StartError> {
    let admin_path = dir.join("admin.json");
    if engine.client_count() == 0 && !admin_path.exists() {
        let mut admin = NewClient::new("admin", "Administrator", vec!["#".into()]);
        admin.roles = vec!["admin".into()];
        // The admin sees every message (`#`, as the NOC's) but is rarely a consumer: a
        // reject-publish inbox nobody reads would, once full, refuse every publish on
        // the node. Its inbox keeps the latest messages instead.
        admin.inbox = LimitSettings {
            max_length: Some(ADMIN_INBOX_LENGTH),
            overflow: Some(Overflow::DropOldest),
            max_deliveries: None,
        };
        // In a cluster, a node starting at the same moment may have made it first.
        let (view, secret) = match engine.create_client(admin, now_ms()).await {
            Ok(made) => made,
            Err(trunkline_broker::BrokerError::ClientExists(_)) => return Ok(()),
            Err(e) => return Err(StartError::Store(e.to_string())),
        };
        let creds = CredentialsFile {
            api: public_url(http_addr),
            client_id: view.client_id,
            client_name: view.client_name,
            subscription: Subscription::from_patterns(view.patterns),
            secret,
        };
        let json = serde_json::to_vec_pretty(&creds).unwrap_or_default();
        write_private(&admin_path, &json).map_err(|e| data_err(&admin_path, e))?;
        tracing::info!(file = %admin_path.display(), "created client `admin`; its credentials are in this file");
    }
    Ok(())
}

/// A node that is serving. Dropping it without [`Node::shutdown`] leaves the tasks running
/// until the runtime ends.
pub struct Node {
    pub http_addr: SocketAddr,
    pub backend_addr: SocketAddr,
    /// The STOMP listener, when enabled.
    pub stomp_addr: Option<SocketAddr>,
    /// The STOMP-over-TLS listener, when configured.
    pub stomp_tls_addr: Option<SocketAddr>,
    /// The federation listener (peer nodes), when a node database is configured.
    pub federation_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    broker: Option<Broker>,
    /// What the front-ends use: the broker, or the cluster engine around it.
    engine: Option<Arc<dyn Backend>>,
    committer: Committer,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// The redb engine's file, and the log engine's directory, in the data directory.
const REDB_FILE: &str = "trunkline.redb";
const LOG_DIR: &str = "log";

/// Where the log engine keeps its segments in data directory `data_dir`.
pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(LOG_DIR)
}

/// Opens the configured engine; refuses a data directory that holds the other engine's
/// data rather than starting empty beside it. Returns the store and the disk budget the
/// node enforces (log engine only).
fn open_store(
    dir: &Path,
    c: &StoreConfig,
    max_memory_bytes: u64,
) -> Result<(Arc<dyn QueueStore>, Option<u64>), StartError> {
    let redb = dir.join(REDB_FILE);
    let log = dir.join(LOG_DIR);
    let fail = |e: trunkline_store::StoreError| StartError::Store(e.to_string());
    let (theirs, name) = match c.engine {
        StoreEngine::Log => (&redb, "redb"),
        StoreEngine::Redb => (&log, "log"),
    };
    if theirs.exists() {
        return Err(StartError::Store(format!(
            "{} holds data of the {name} engine; start with store engine {name} \
             (TRUNKLINE_STORE_ENGINE={name}) or move it away",
            theirs.display()
        )));
    }
    Ok(match c.engine {
        StoreEngine::Log => {
            let budget = match c.max_disk_bytes {
                0 => auto_disk_budget(dir, &log),
                max => max,
            };
            let options = LogOptions {
                segment_bytes: c.segment_mib.max(1) << 20,
                disk_budget: Some(budget),
                // A queue longer than the broker keeps in memory stays on disk at start too.
                spill_entries: Some(c.queue_memory_entries.max(1)),
                // So do the queues past their heads once the node holds as many entries
                // as a running node holds before it spills them, and every queue past
                // the point where a running node keeps no heads.
                spill_node: Some(footprint::node_spill(max_memory_bytes)),
                direct_write_min: Some(c.direct_write_bytes).filter(|&b| b > 0),
                ..LogOptions::default()
            };
            let store = LogStore::open_on(Arc::new(RealFs), &log, options).map_err(fail)?;
            tracing::info!(max_disk_bytes = budget, "log disk budget");
            (Arc::new(store), Some(budget))
        }
        StoreEngine::Redb => (Arc::new(RedbStore::open(&redb).map_err(fail)?), None),
    })
}

/// What the log takes now plus 80% of the free space of its file system.
fn auto_disk_budget(data_dir: &Path, log: &Path) -> u64 {
    let used: u64 = std::fs::read_dir(log)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    let free = trunkline_store::fs::free_bytes(data_dir).unwrap_or(0);
    used.saturating_add(free / 5 * 4)
}

/// Length of the bootstrap admin's inbox, which drops its oldest message when full.
const ADMIN_INBOX_LENGTH: u64 = 10_000;

fn data_err(path: &Path, e: impl std::fmt::Display) -> StartError {
    StartError::DataDir {
        path: path.to_owned(),
        cause: e.to_string(),
    }
}

/// Writes `contents` to `path` readable by the owner only, atomically and durably (the
/// rename and the directory synced, so a power loss cannot take the file back).
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    trunkline_store::fs::write_file(&RealFs, path, contents)
}

/// A key from the environment, or the one saved in `file`, or a new one saved there.
/// Refuses keys a node cannot use.
fn check_keys(keys: &SharedKeys) -> Result<(), StartError> {
    TokenKey::from_text(&keys.token)
        .map_err(|e| StartError::Secret(format!("token secret: {e}")))?;
    TokenKey::from_text(&keys.channel)
        .map_err(|e| StartError::Secret(format!("channel secret: {e}")))?;
    if keys.backend.len() < 16 {
        return Err(StartError::Secret(
            "the backend key must be at least 16 characters".into(),
        ));
    }
    Ok(())
}

/// A key from the environment, its file, or made now (then written to its file): the key,
/// and whether it was made now.
fn key_file(
    dir: &Path,
    file: &str,
    from_env: Option<&str>,
    make: impl FnOnce() -> String,
) -> Result<(String, bool), StartError> {
    if let Some(k) = from_env {
        return Ok((k.to_owned(), false));
    }
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(k) if !k.trim().is_empty() => Ok((k.trim().to_owned(), false)),
        Ok(_) | Err(_)
            if !path.exists()
                || std::fs::metadata(&path)
                    .map(|m| m.len() == 0)
                    .unwrap_or(true) =>
        {
            let k = make();
            write_private(&path, k.as_bytes()).map_err(|e| data_err(&path, e))?;
            tracing::info!(file = %path.display(), "generated a new key");
            Ok((k, true))
        }
        Ok(_) => unreachable!("invariant: an empty key file is handled above"),
        Err(e) => Err(data_err(&path, e)),
    }
}

/// Binds a listener and tells the address it got (port 0 picks one).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_err = |e: std::io::Error| StartError::Bind {
        addr,
        cause: e.to_string(),
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    Ok((listener, local))
}

fn public_url(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("http://{host}:{}", addr.port())
}

impl Node {
    /// Opens the data directory, recovers the store, binds both listeners and starts
    /// serving. On first start it creates the `admin` client and `admin.json`.
    pub async fn start(config: Config, secrets: Secrets) -> Result<Node, StartError> {
        config.validate()?;
        let dir = config.data_dir.clone();
        trunkline_store::fs::create_dir_all(&RealFs, &dir).map_err(|e| data_err(&dir, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        let (token_text, made_token) =
            key_file(&dir, "token.key", secrets.token_secret.as_deref(), || {
                TokenKey::generate().to_text()
            })?;
        let (backend_key, made_backend) = key_file(
            &dir,
            "backend.key",
            secrets.backend_key.as_deref(),
            trunkline_auth::generate_secret,
        )?;
        let (channel_text, made_channel) = key_file(
            &dir,
            "channel.key",
            secrets.channel_secret.as_deref(),
            || TokenKey::generate().to_text(),
        )?;
        let mut keys = SharedKeys {
            token: token_text,
            channel: channel_text,
            backend: backend_key,
        };
        // Made now, nothing given: a node joining a cluster takes the cluster's.
        let made_here = made_token && made_backend && made_channel;
        check_keys(&keys)?;

        let started = std::time::Instant::now();
        let broker = {
            let store_config = config.store.clone();
            let dir = dir.clone();
            let mut bc = config.broker_config();
            tokio::task::spawn_blocking(move || -> Result<Broker, StartError> {
                let (store, budget) = open_store(&dir, &store_config, bc.max_memory_bytes)?;
                bc.max_disk_bytes = budget;
                Broker::open(store, bc, now_ms()).map_err(|e| StartError::Store(e.to_string()))
            })
            .await
            .map_err(|e| StartError::Store(e.to_string()))??
        };
        let depth: u64 = broker
            .queue_depths()
            .iter()
            .map(|d| d.ready + d.leased)
            .sum();
        tracing::info!(
            clients = broker.client_count(),
            queued = depth,
            millis = started.elapsed().as_millis() as u64,
            "store recovered"
        );

        let (http_listener, http_addr) = bind(config.http).await?;
        let (backend_listener, backend_addr) = bind(config.backend).await?;
        let st = &config.stomp;
        let tls_acceptor = match (&st.tls_listen, &st.tls_cert, &st.tls_key) {
            (Some(_), Some(cert), Some(key)) => Some(
                crate::tls::acceptor(cert, key, st.tls_client_ca.as_deref())
                    .map_err(|e| StartError::Tls(e.to_string()))?,
            ),
            _ => None,
        };
        let (stomp_tls_listener, stomp_tls_addr) = match (st.enabled, st.tls_listen) {
            (true, Some(addr)) => {
                let (l, a) = bind(addr).await?;
                (Some(l), Some(a))
            }
            _ => (None, None),
        };
        let federation = crate::federation::Federation::open(&config.federation)?;
        let (federation_listener, federation_addr) = match &federation {
            Some(_) => {
                let (l, a) = bind(config.federation.listen).await?;
                (Some(l), Some(a))
            }
            None => (None, None),
        };
        let (stomp_listener, stomp_addr) = if st.enabled {
            let (l, a) = bind(st.listen).await?;
            (Some(l), Some(a))
        } else {
            (None, None)
        };

        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let config = Arc::new(config);
        let engine = open_engine(&config, &broker, http_addr, keys.clone(), &shutdown).await?;
        if let Some(shared) = engine.shared_keys() {
            if shared != keys {
                if !made_here {
                    return Err(StartError::Secret(format!(
                        "this node's keys (from its files or the environment, {}) are not those of \
                         the cluster in namespace `{}` ({}): give every node the same keys, or \
                         none (a node without keys takes the cluster's)",
                        keys.fingerprint(),
                        config.broker.namespace,
                        shared.fingerprint()
                    )));
                }
                check_keys(&shared)?;
                for (file, text) in [
                    ("token.key", &shared.token),
                    ("backend.key", &shared.backend),
                    ("channel.key", &shared.channel),
                ] {
                    let path = dir.join(file);
                    write_private(&path, text.as_bytes()).map_err(|e| data_err(&path, e))?;
                }
                tracing::info!(keys = %shared.fingerprint(), "took the cluster's keys");
                keys = shared;
            }
        }
        let token_key = TokenKey::from_text(&keys.token)
            .map_err(|e| StartError::Secret(format!("token secret: {e}")))?;
        let channel_key = TokenKey::from_text(&keys.channel)
            .map_err(|e| StartError::Secret(format!("channel secret: {e}")))?;
        let backend_key = keys.backend;
        bootstrap_admin(engine.as_ref(), &dir, http_addr).await?;
        // Written once the node is ready to serve: tools and tests wait for it.
        let listen = serde_json::json!({
            "http": http_addr.to_string(),
            "backend": backend_addr.to_string(),
            "stomp": stomp_addr.map(|a| a.to_string()),
            "stomp_tls": stomp_tls_addr.map(|a| a.to_string()),
            "federation": federation_addr.map(|a| a.to_string()),
            "pid": std::process::id(),
        });
        let listen_path = dir.join("listen.json");
        write_private(&listen_path, listen.to_string().as_bytes())
            .map_err(|e| data_err(&listen_path, e))?;
        let keys = Arc::new(Keys {
            token_key,
            backend_key,
            channel_key,
        });
        let a = &config.auth;
        let throttle = Arc::new(Throttle::new(ThrottleLimits {
            per_client_address: a.max_failed_logins,
            per_address: a.max_failed_logins_per_address,
            per_client: a.max_failed_logins_per_client,
            window_secs: a.failed_login_window_secs,
            capacity: 100_000,
        }));
        let counters = Arc::new(HttpCounters::default());
        let stomp_connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sessions = Arc::new(crate::ws::Sessions::default());
        // In a cluster, a node silent for the WebSocket keepalive is gone.
        let mesh = engine.bus().map(|bus| {
            crate::live::mesh::Mesh::new(bus, Duration::from_secs(config.ws.idle_timeout_secs))
        });
        let channels = crate::live::Channels::new(mesh.clone());
        let calls =
            crate::live::Calls::start(config.ws.max_pending_calls, mesh.clone(), shutdown.clone());
        if let Some(mesh) = &mesh {
            let beat = Duration::from_secs(config.ws.ping_secs.max(1));
            mesh.attach(&channels, &calls, beat, shutdown.clone());
        }
        let links = Arc::new(crate::federation::Links::default());
        let relay = if config.relay.enabled {
            let relay = crate::relay::Relay::open(
                &config.relay,
                &dir,
                public_url(http_addr),
                engine.clone(),
                shutdown.clone(),
            )?;
            relay.forward.resume();
            Some(relay)
        } else {
            None
        };
        let metrics = Arc::new(
            crate::metrics::NodeMetrics {
                broker: broker.clone(),
                engine: engine.clone(),
                http: counters.clone(),
                stomp_connections: stomp_connections.clone(),
                sessions: sessions.clone(),
                calls: calls.clone(),
                links: links.clone(),
                relay: relay.clone(),
            }
            .into_registry(),
        );
        let state = |backend| AppState {
            broker: engine.clone(),
            keys: keys.clone(),
            config: config.clone(),
            throttle: throttle.clone(),
            http: counters.clone(),
            shutdown: shutdown.clone(),
            backend,
            stomp_connections: stomp_connections.clone(),
            sessions: sessions.clone(),
            channels: channels.clone(),
            calls: calls.clone(),
            metrics: metrics.clone(),
            relay: relay.clone(),
        };
        let limits = &config.http_limits;
        let public_limits = listener::ConnectionLimits {
            max_connections: limits.max_connections,
            per_address: Some(limits.max_connections_per_address),
            header_timeout: Duration::from_secs(limits.header_timeout_secs),
        };
        tasks.spawn(listener::serve(
            http_listener,
            http::router(state(false)),
            http::reserve_router(state(false)),
            public_limits,
            shutdown.clone(),
            "public",
        ));
        tasks.spawn(listener::serve(
            backend_listener,
            http::router(state(true)),
            http::reserve_router(state(true)),
            listener::ConnectionLimits {
                per_address: None,
                ..public_limits
            },
            shutdown.clone(),
            "backend",
        ));
        if let Some(r) = &relay {
            tasks.spawn(r.clone().watch(Duration::from_secs(5), shutdown.clone()));
        }
        let ctx = crate::stomp_listener::StompContext {
            broker: engine.clone(),
            token_key: Arc::new(keys.token_key.clone()),
            throttle: throttle.clone(),
            config: config.clone(),
            connections: stomp_connections.clone(),
            peers: None,
        };
        if let (Some(f), Some(listener)) = (federation, federation_listener) {
            if config.federation.links {
                let env = Arc::new(crate::federation::link::LinkEnv {
                    db: f.gate.db().clone(),
                    node: f.gate.node().clone(),
                    cert: config.federation.cert.clone(),
                    key: config.federation.key.clone(),
                    buffer: config.federation.buffer,
                });
                tasks.spawn(crate::federation::run_links(
                    links.clone(),
                    engine.clone(),
                    env,
                    Duration::from_secs(config.federation.reread_secs),
                    shutdown.clone(),
                ));
            }
            if let Some(r) = &relay {
                tasks.spawn(r.clone().watch(Duration::from_secs(5), shutdown.clone()));
            }
            let ctx = crate::stomp_listener::StompContext {
                peers: Some(f.gate.clone()),
                connections: Arc::default(),
                ..ctx.clone()
            };
            tasks.spawn(crate::stomp_listener::serve(
                listener,
                ctx,
                shutdown.clone(),
                Some(f.acceptor),
            ));
            tasks.spawn(crate::federation::watch(
                f.gate,
                Duration::from_secs(config.federation.reread_secs),
                shutdown.clone(),
            ));
        }
        if let Some(listener) = stomp_listener {
            if let (Some(listener), Some(acceptor)) = (stomp_tls_listener, tls_acceptor) {
                tasks.spawn(crate::stomp_listener::serve(
                    listener,
                    ctx.clone(),
                    shutdown.clone(),
                    Some(acceptor),
                ));
            }
            tasks.spawn(crate::stomp_listener::serve(
                listener,
                ctx,
                shutdown.clone(),
                None,
            ));
        }
        {
            let broker = engine.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            if let Err(e) = broker.sweep(now_ms()).await {
                                tracing::warn!(cause = %e, "housekeeping failed");
                            }
                        }
                        _ = shutdown.cancelled() => break,
                    }
                }
            });
        }
        tasks.close();
        tracing::info!(
            http = %http_addr,
            backend = %backend_addr,
            stomp = %stomp_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            data_dir = %dir.display(),
            "trunkline listening"
        );
        Ok(Node {
            http_addr,
            backend_addr,
            stomp_addr,
            stomp_tls_addr,
            federation_addr,
            data_dir: dir,
            committer: broker.committer().clone(),
            broker: Some(broker),
            engine: Some(engine),
            shutdown,
            tasks,
        })
    }

    /// The broker, for in-process callers (tests, embedding).
    pub fn engine(&self) -> Option<&Arc<dyn Backend>> {
        self.engine.as_ref()
    }

    /// The node's own broker (with a RabbitMQ broker: its registry; messages are not here).
    pub fn broker(&self) -> Option<&Broker> {
        self.broker.as_ref()
    }

    /// A token that stops the node when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, lets open requests finish, and closes the store.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        self.tasks.wait().await;
        // Both hold the broker: the commit thread ends with its last handle.
        if let Some(engine) = self.engine.take() {
            engine.close().await;
        }
        self.broker = None;
        let committer = self.committer;
        // The commit thread ends once the last broker handle is gone; every acknowledged
        // message is already durable, so a stuck handle only delays closing the file.
        let joined = tokio::task::spawn_blocking(move || committer.join());
        if tokio::time::timeout(Duration::from_secs(10), joined)
            .await
            .is_err()
        {
            tracing::warn!("store still in use after shutdown; closing anyway");
        }
        tracing::info!("trunkline stopped");
    }
}

/// Runs a node until `signal` completes, then shuts it down.
pub async fn run(
    config: Config,
    secrets: Secrets,
    signal: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    let node = Node::start(config, secrets).await?;
    let token = node.shutdown_token();
    tokio::select! {
        _ = signal => tracing::info!("shutting down"),
        _ = token.cancelled() => {}
    }
    node.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(engine: StoreEngine) -> StoreConfig {
        StoreConfig {
            engine,
            segment_mib: 1,
            max_disk_bytes: 0,
            body_cache_bytes: 1 << 20,
            queue_memory_entries: 10_000,
            direct_write_bytes: 65_536,
        }
    }

    #[test]
    fn a_data_directory_of_the_other_engine_is_refused_not_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open_store(dir.path(), &config(StoreEngine::Redb), 1 << 30).expect("redb opens"));
        let err = open_store(dir.path(), &config(StoreEngine::Log), 1 << 30)
            .err()
            .expect("log engine must refuse a redb data directory")
            .to_string();
        assert!(
            err.contains("trunkline.redb") && err.contains("TRUNKLINE_STORE_ENGINE=redb"),
            "{err}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open_store(dir.path(), &config(StoreEngine::Log), 1 << 30).expect("log opens"));
        let err = open_store(dir.path(), &config(StoreEngine::Redb), 1 << 30)
            .err()
            .expect("redb engine must refuse a log data directory")
            .to_string();
        assert!(err.contains("engine log"), "{err}");
    }
}
