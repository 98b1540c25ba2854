//! Node configuration: one typed [`Config`], defaults shipped as TOML.
//!
//! Precedence: the defaults below < a `--config` file < `TRUNKLINE_*` environment
//! variables < command-line flags (the last two are applied by the binary). Secrets (token
//! key, backend key) come only from the environment or from key files in the data
//! directory, never from the config file, so that the file can be shared and printed.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use trunkline_broker::{BrokerConfig, Limits, Overflow};

/// The defaults, as `trunkline config default` prints them.
pub const DEFAULT_CONFIG: &str = r#"# Trunkline node configuration.
# Precedence: this file < TRUNKLINE_* environment variables < command-line flags.

# Where the node keeps its store, keys and admin.json (TRUNKLINE_DATA_DIR, --data-dir).
data_dir = "./trunkline-data"
# Public HTTP API (TRUNKLINE_HTTP, --http). Port 0 picks a free port; the bound
# address is logged and written to <data_dir>/listen.json.
http = "0.0.0.0:8087"
# Backend HTTP API and /metrics (TRUNKLINE_BACKEND, --backend). Keep it private.
backend = "127.0.0.1:8088"

[store]
# "log" (the default: an append-only log of commits in <data_dir>/log/) or "redb" (the
# first engine, one file <data_dir>/trunkline.redb). Both sync every commit before any
# answer (TRUNKLINE_STORE_ENGINE, --store-engine).
engine = "log"
# Size at which the log starts a new segment file.
segment_mib = 64
# Most disk the log may take. Past it, publishes are refused with 507 disk_full (acks and
# deletes still go through, and compaction gives the space back); nothing accepted is
# dropped. 0: what the log takes at start plus 80% of the free space of its file system
# then. Not enforced with the redb engine.
max_disk_bytes = 0
# Most memory the bodies of queued messages are held in. Past it the oldest are let go
# and read back from the store when delivered.
body_cache_bytes = 268435456
# Most ready messages of one queue whose index is held in memory. Past it, new ones stay
# in the log only and are brought back in order as consumers reach them, so a backlog is
# bounded by disk, not memory (log engine only; redb holds every queue in memory). Once
# queued messages take half of inbox.max_memory_bytes, every queue past its first 32 ready
# messages does the same, however many queues share the backlog.
queue_memory_entries = 10000
# Commits of at least this many bytes are written to the log past the page cache
# (O_DIRECT, where the file system allows), sparing the kernel a copy of each large body;
# smaller ones, and bodies read back later, go through it. 0: never.
direct_write_bytes = 65536

[stomp]
# STOMP 1.2 over TCP (TRUNKLINE_STOMP, --stomp). Port 0 picks a free port.
enabled = true
listen = "0.0.0.0:61613"
# Unconfirmed operations (sends, acks) per connection before the server stops reading
# that socket until commits catch up (TRUNKLINE_STOMP_BUFFER).
buffer = 100
# Heart-beats the server offers: it can send every heartbeat_send_ms and wants to hear
# from the client every heartbeat_recv_ms (0 = not needed).
heartbeat_send_ms = 10000
heartbeat_recv_ms = 10000
# Time allowed between opening a connection and CONNECT.
connect_timeout_secs = 10
# Time allowed to finish a frame once its first byte has arrived.
frame_timeout_secs = 30
# Most open connections per STOMP listener; past it a connection gets
# ERROR too_many_connections (plain TCP; a TLS one is closed) at once.
max_connections = 10000
# Most open connections from one source address (IPv6: one /64), refused the same way.
max_connections_per_address = 256
# Most unacknowledged messages per queue subscription (caps prefetch-count).
max_prefetch = 100
# How long a delivery stays leased to a connection before it is given to someone else.
lease_secs = 1800
# STOMP over TLS 1.3 (--stomp-tls, --tls-cert, --tls-key, --tls-client-ca): off unless
# tls_listen is set, e.g. "0.0.0.0:61614". With tls_client_ca, clients must present a
# certificate signed by that CA; its subject's serialNumber (else CN) is the client id.
# tls_listen = "0.0.0.0:61614"
# tls_cert = "/etc/trunkline/server.pem"
# tls_key = "/etc/trunkline/server.key"
# tls_client_ca = "/etc/trunkline/clients-ca.pem"

[federation]
# Links with peer nodes as Swaptacular's swpt_stomp does (docs/federation.md): a STOMP
# server over mutual TLS 1.3 that peers send to, and a link to each ACTIVE peer for every
# queue `trunkline federation configure-queue` declared for it. Off unless nodedata is set
# (TRUNKLINE_FEDERATION_NODEDATA, --nodedata; a path or a file:// URL, as swpt_stomp's
# SWPT_NODEDATA_URL).
# nodedata = "/var/lib/swpt-nodedata"
# Where peers connect (TRUNKLINE_FEDERATION_LISTEN, --federation-listen).
listen = "0.0.0.0:1234"
# This node's certificate (subject O=Swaptacular Nodes Registry and serialNumber = its
# node id, signed by the node database's root-ca.crt) and its key: served to peers, and
# presented to them by links (after it, the peer's sub-ca.crt).
cert = "/etc/swpt/server.crt"
key = "/secrets/swpt-server.key"
# Messages a peer connection may have unconfirmed before the server stops reading it, and
# a link may have sent unconfirmed (swpt_stomp's SWPT_SERVER_BUFFER and SWPT_CLIENT_BUFFER).
buffer = 100
# Most open connections of one peer; more are closed at once.
max_connections_per_peer = 10
# How often the node database is read again: a peer deactivated or removed loses its
# connections and links within this many seconds.
reread_secs = 5
# Run a link for each declared queue labelled with an ACTIVE peer (off: only the
# `trunkline federation link` command forwards).
links = true
# Largest frame a peer may send, in bytes.
max_frame_bytes = 65536

[broker]
# Where messages live. Empty (the default): the embedded engine, in the data directory.
# One or more `amqp://user:password@host:port/vhost` URLs, comma-separated (the nodes of
# one RabbitMQ cluster, tried in turn): messages live in RabbitMQ's quorum queues
# (docs/scale-out.md), and the registry is shared by every node of the cluster
# through a RabbitMQ stream (TRUNKLINE_BROKER, --broker).
url = ""
# This node's name in receipts of deliveries it holds ([a-z0-9-]). Empty: "n" and the
# public listener's port (TRUNKLINE_NODE, --node).
node = ""
# Prefix of every exchange and queue this cluster declares in RabbitMQ (empty:
# "trunkline"): the nodes of one cluster share it; clusters sharing a RabbitMQ differ
# (TRUNKLINE_NAMESPACE, --namespace).
namespace = ""

[relay]
# The relay (docs/relays.md): twins log in at GET /relay (WebSocket, public listener) and
# exchange signed, sealed envelopes; offline sessions' envelopes wait in durable queues.
enabled = true
# The name twins list this relay under in the registry (a URL such as
# "https://relay.example", or "host:port" for wss://host:port/relay). Empty: the public
# listener's address, "http://<ip>:<port>".
name = ""
# Where twins are looked up: empty for this node's own registry, or another node's URL
# (relays that forward to each other share one registry, as RMB's share its chain).
registry = ""
# Envelopes kept for one offline session, and for how long: the oldest go first
# (RMB keeps 10 000 for an hour).
max_queued = 10000
max_age_secs = 3600
# Largest envelope, in bytes (payloads of 512 KiB and more pass).
max_envelope_bytes = 4194304
# Per twin, in any 60 s: most envelopes, and most bytes, it may send (RMB's --limit).
rate_messages_per_minute = 60000
rate_bytes_per_minute = 1073741824
# Sessions of one twin that may have envelopes waiting.
max_sessions_per_twin = 16
# A connection that sends nothing (not even a pong: the relay pings every third of this)
# for this many seconds is closed.
idle_timeout_secs = 60
# Other relays this one forwards to and takes forwarded envelopes from, by name, with the
# key each signs its login with ("ed25519:..."): relays not listed are refused.
# peers = [{ name = "https://relay2.example", key = "ed25519:..." }]
peers = []

[ws]
# WebSocket sessions at GET /ws on the public listener (docs/ws-protocol.md).
max_sessions = 10000
# The server pings every ping_secs and closes a session silent for idle_timeout_secs
# (ping_secs must be less than idle_timeout_secs).
ping_secs = 20
idle_timeout_secs = 60
# Time allowed for the first `authenticate` call when the upgrade carried no token.
auth_timeout_secs = 10
# Messages a session may send per second (bursts of as many); more get `rate_limited`.
rate_per_sec = 100
# Largest message a session may send, in bytes.
max_message_bytes = 1048576
# RPC and client-function calls one session may hold unanswered; more get `callee_busy`.
max_pending_calls = 100

[log]
# "text" or "json" (TRUNKLINE_LOG_FORMAT).
format = "text"
# A tracing filter such as "info" or "info,trunkline_server=debug" (TRUNKLINE_LOG_LEVEL).
level = "info"

[auth]
# Token lifetime in hours (TRUNKLINE_TOKEN_LIFETIME, or SOAR_TOKEN_LIFETIME).
token_lifetime_hours = 24
# Failed secrets for one client from one source address within the window before that
# address gets 429 for that client (STOMP: ERROR throttled), right secret or wrong. Other
# addresses are not affected: a guesser cannot lock a client out.
max_failed_logins = 5
failed_login_window_secs = 60
# Failed secrets from one source address (IPv6: one /64), over all clients, within the
# window before every login from that address gets 429.
max_failed_logins_per_address = 20
# Failed secrets for one client from all addresses within the window past which each
# address may fail only once for it: slows guessing spread over many addresses without
# refusing an address that has not failed (see trunkline_auth::throttle).
max_failed_logins_per_client = 100

[http_limits]
# Largest request body, in bytes (413 beyond; a declared Content-Length over it is refused
# before the body is read). /token takes at most 4 KiB whatever this says.
max_body_bytes = 1048576
# Most open connections per listener. Past it, 32 more are accepted to answer /healthz
# (others get 503 too_many_connections); past those, connections are refused with 503.
max_connections = 10000
# Most open connections from one source address (IPv6: one /64) on the public listener;
# more are answered 503 too_many_connections and closed.
max_connections_per_address = 256
# Time allowed to send a request's headers; to send its body once the headers are in (408
# beyond); and to handle a whole request.
header_timeout_secs = 10
body_timeout_secs = 15
request_timeout_secs = 90
# Longest /receive?wait=.
max_wait_secs = 60

[inbox]
# Defaults for client inboxes; each client may set its own.
max_length = 100000
# "reject-publish" (the publish fails with 507 queue_full) or "drop-oldest".
overflow = "reject-publish"
# Deliveries before an unacked message moves to <client>-dead.
max_deliveries = 10
# How long a publisher's message_id is remembered for dedup.
dedup_window_secs = 600
# Most memory queued messages may take on the whole node, counting what each holds:
# every queue entry (about 200 bytes: a message sent to 500 inboxes takes 500), every
# message record (about 200 bytes); bodies stay in the log (hot ones cached within this
# cap). Past half of it, queues keep what passes their first 32 ready messages in the log
# only (log engine); past all of it publishes are refused with 507 node_full until
# consumers catch up; nothing accepted is dropped.
# The process needs this much plus its base (tens of MiB) and what is in flight.
# (`max_queued_bytes`, its old name, which counted bodies only, is still read.)
max_memory_bytes = 1073741824
"#;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub backend: SocketAddr,
    pub store: StoreConfig,
    pub stomp: StompConfig,
    pub ws: WsConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub http_limits: HttpLimits,
    pub inbox: InboxConfig,
    pub federation: FederationConfig,
    pub relay: RelayConfig,
    pub broker: BrokerBackendConfig,
}

/// `[broker]`: see the default configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerBackendConfig {
    pub url: String,
    pub node: String,
    pub namespace: String,
}

impl BrokerBackendConfig {
    /// The RabbitMQ URLs, none for the embedded engine.
    pub fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// `[relay]`: see the default configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    pub enabled: bool,
    pub name: String,
    pub registry: String,
    pub max_queued: u64,
    pub max_age_secs: u64,
    pub max_envelope_bytes: usize,
    pub rate_messages_per_minute: u64,
    pub rate_bytes_per_minute: u64,
    pub max_sessions_per_twin: usize,
    pub idle_timeout_secs: u64,
    pub peers: Vec<RelayPeer>,
}

/// Another relay: its name and login key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayPeer {
    pub name: String,
    pub key: String,
}

/// `[federation]`: see the default configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// The node database (a path or `file://` URL); `None`: federation is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodedata: Option<String>,
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub buffer: usize,
    pub max_connections_per_peer: usize,
    pub reread_secs: u64,
    pub links: bool,
    pub max_frame_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsConfig {
    pub max_sessions: usize,
    pub ping_secs: u64,
    pub idle_timeout_secs: u64,
    pub auth_timeout_secs: u64,
    pub rate_per_sec: u32,
    pub max_message_bytes: usize,
    pub max_pending_calls: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub engine: StoreEngine,
    pub segment_mib: u64,
    /// 0: chosen at start from the free space (see the default configuration).
    #[serde(default)]
    pub max_disk_bytes: u64,
    #[serde(default = "default_body_cache_bytes")]
    pub body_cache_bytes: u64,
    #[serde(default = "default_queue_memory_entries")]
    pub queue_memory_entries: usize,
    /// 0: never.
    #[serde(default = "default_direct_write_bytes")]
    pub direct_write_bytes: usize,
}

fn default_direct_write_bytes() -> usize {
    trunkline_store::log_store::DIRECT_WRITE_MIN
}

fn default_queue_memory_entries() -> usize {
    BrokerConfig::default().queue_memory_entries
}

fn default_body_cache_bytes() -> u64 {
    256 << 20
}

/// Which storage engine keeps the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreEngine {
    Log,
    Redb,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StompConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub buffer: usize,
    pub heartbeat_send_ms: u64,
    pub heartbeat_recv_ms: u64,
    pub connect_timeout_secs: u64,
    pub frame_timeout_secs: u64,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub max_prefetch: usize,
    pub lease_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub token_lifetime_hours: f64,
    pub max_failed_logins: u32,
    pub failed_login_window_secs: u64,
    pub max_failed_logins_per_address: u32,
    pub max_failed_logins_per_client: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub header_timeout_secs: u64,
    pub body_timeout_secs: u64,
    pub request_timeout_secs: u64,
    pub max_wait_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxConfig {
    pub max_length: u64,
    pub overflow: Overflow,
    pub max_deliveries: u32,
    pub dedup_window_secs: u64,
    pub max_memory_bytes: u64,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read { path: PathBuf, cause: String },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid setting {setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

impl Default for Config {
    fn default() -> Self {
        match toml::from_str(DEFAULT_CONFIG) {
            Ok(c) => c,
            Err(e) => unreachable!("invariant: the shipped defaults parse: {e}"),
        }
    }
}

impl Config {
    /// Parses TOML; keys left out keep their defaults.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut base: toml::Table =
            toml::from_str(DEFAULT_CONFIG).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut over: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        rename_old_keys(&mut over)?;
        merge(&mut base, over);
        toml::Value::Table(base)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))
    }

    /// Reads a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            cause: e.to_string(),
        })?;
        Self::from_toml(&text)
    }

    /// Checks values that parse but cannot work, before any port is bound.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |setting, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.to_owned(),
            })
        };
        if !(self.auth.token_lifetime_hours > 0.0 && self.auth.token_lifetime_hours <= 24.0 * 366.0)
        {
            return bad(
                "auth.token_lifetime_hours",
                "must be more than 0 and at most a year",
            );
        }
        let a = &self.auth;
        if a.max_failed_logins == 0 || a.max_failed_logins_per_client == 0 {
            return bad(
                "auth",
                "max_failed_logins and max_failed_logins_per_client must be at least 1",
            );
        }
        if a.max_failed_logins_per_address < a.max_failed_logins {
            return bad(
                "auth.max_failed_logins_per_address",
                "must be at least max_failed_logins",
            );
        }
        if self.http_limits.max_body_bytes < 1024 {
            return bad("http_limits.max_body_bytes", "must be at least 1024");
        }
        let h = &self.http_limits;
        if h.max_connections == 0 || h.max_connections_per_address == 0 {
            return bad(
                "http_limits",
                "max_connections and max_connections_per_address must be at least 1",
            );
        }
        if h.header_timeout_secs == 0 || h.body_timeout_secs == 0 || h.request_timeout_secs == 0 {
            return bad("http_limits", "timeouts must be at least 1 second");
        }
        // A session is closed when nothing was heard for idle_timeout_secs; pings are what
        // a quiet but live peer answers, so they must come more often than that.
        if self.ws.ping_secs == 0 || self.ws.ping_secs >= self.ws.idle_timeout_secs {
            return bad(
                "ws.ping_secs",
                "must be at least 1 and less than ws.idle_timeout_secs (quiet sessions that answer pings would be closed as idle)",
            );
        }
        if self.http_limits.max_wait_secs >= self.http_limits.request_timeout_secs {
            return bad(
                "http_limits.max_wait_secs",
                "must be less than request_timeout_secs",
            );
        }
        if self.inbox.max_length == 0 || self.inbox.max_deliveries == 0 {
            return bad("inbox", "max_length and max_deliveries must be at least 1");
        }
        if self.inbox.max_memory_bytes < MIN_MEMORY_BYTES {
            return bad(
                "inbox.max_memory_bytes",
                "must be at least 1048576 (1 MiB): below that no fan-out fits",
            );
        }
        let st = &self.stomp;
        if st.buffer == 0
            || st.max_prefetch == 0
            || st.max_connections == 0
            || st.max_connections_per_address == 0
        {
            return bad(
                "stomp",
                "buffer, max_prefetch, max_connections and max_connections_per_address must be at least 1",
            );
        }
        if st.connect_timeout_secs == 0 || st.lease_secs == 0 || st.frame_timeout_secs == 0 {
            return bad(
                "stomp",
                "connect_timeout_secs and lease_secs must be at least 1",
            );
        }
        if st.tls_listen.is_some() && (st.tls_cert.is_none() || st.tls_key.is_none()) {
            return bad("stomp.tls_listen", "needs tls_cert and tls_key");
        }
        let f = &self.federation;
        if f.buffer == 0 || f.max_connections_per_peer == 0 || f.reread_secs == 0 {
            return bad(
                "federation",
                "buffer, max_connections_per_peer and reread_secs must be at least 1",
            );
        }
        if f.max_frame_bytes < 4096 {
            return bad("federation.max_frame_bytes", "must be at least 4096");
        }
        if self.http == self.backend && self.http.port() != 0 {
            return bad("backend", "must differ from http");
        }
        Ok(())
    }

    pub fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            default_limits: Limits {
                max_length: self.inbox.max_length,
                overflow: self.inbox.overflow,
                max_deliveries: self.inbox.max_deliveries,
            },
            dedup_window_ms: self.inbox.dedup_window_secs.saturating_mul(1000),
            max_memory_bytes: self.inbox.max_memory_bytes,
            body_cache_bytes: self.store.body_cache_bytes,
            queue_memory_entries: self.store.queue_memory_entries,
            // Over RabbitMQ the registry is the cluster's shared log's.
            shared_registry: !self.broker.urls().is_empty(),
            ..BrokerConfig::default()
        }
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// Smallest `inbox.max_memory_bytes` accepted.
const MIN_MEMORY_BYTES: u64 = 1 << 20;

/// Reads keys under the names they had before: `inbox.max_queued_bytes` (which counted
/// message bodies only) is now `inbox.max_memory_bytes` (which counts everything queued
/// messages hold, so the same number refuses sooner).
fn rename_old_keys(over: &mut toml::Table) -> Result<(), ConfigError> {
    let Some(toml::Value::Table(inbox)) = over.get_mut("inbox") else {
        return Ok(());
    };
    if let Some(v) = inbox.remove("max_queued_bytes") {
        if inbox.contains_key("max_memory_bytes") {
            return Err(ConfigError::Invalid {
                setting: "inbox.max_queued_bytes",
                reason: "is the old name of inbox.max_memory_bytes; set only one".into(),
            });
        }
        inbox.insert("max_memory_bytes".into(), v);
    }
    Ok(())
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Secrets taken from the environment; `None` means "use or make the key file".
#[derive(Clone, Default)]
pub struct Secrets {
    pub token_secret: Option<String>,
    pub backend_key: Option<String>,
    /// The app secret channel tokens (JWT, HS256) are signed with.
    pub channel_secret: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mask = |s: &Option<String>| if s.is_some() { "***" } else { "unset" };
        f.debug_struct("Secrets")
            .field("token_secret", &mask(&self.token_secret))
            .field("backend_key", &mask(&self.backend_key))
            .field("channel_secret", &mask(&self.channel_secret))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let c = Config::default();
        assert_eq!(c.http.port(), 8087);
        assert_eq!(c.backend.to_string(), "127.0.0.1:8088");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn partial_files_override_and_unknown_keys_fail() {
        let c = Config::from_toml("http = \"127.0.0.1:0\"\n[inbox]\nmax_length = 5\n");
        let c = c.map_err(|e| e.to_string());
        assert!(matches!(&c, Ok(c) if c.inbox.max_length == 5 && c.inbox.max_deliveries == 10));
        assert!(Config::from_toml("htp = \"x\"").is_err());
        assert!(Config::from_toml("[inbox]\nmax_lenght = 5").is_err());
        let mut c = Config::default();
        c.http_limits.max_wait_secs = 100;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.auth.max_failed_logins_per_address = c.auth.max_failed_logins - 1;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.http_limits.max_connections_per_address = 0;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.http_limits.body_timeout_secs = 0;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.ws.ping_secs = c.ws.idle_timeout_secs;
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_memory_cap_is_read_under_its_old_name_too() {
        let c = Config::from_toml("[inbox]\nmax_queued_bytes = 67108864\n");
        assert!(
            matches!(&c, Ok(c) if c.inbox.max_memory_bytes == 64 << 20),
            "{c:?}"
        );
        let c = Config::from_toml("[inbox]\nmax_memory_bytes = 5\nmax_queued_bytes = 6\n");
        assert!(c.is_err());
        let c = Config::from_toml("[inbox]\nmax_memory_bytes = 1000\n");
        assert!(c.is_ok_and(|c| c.validate().is_err()));
    }
}
