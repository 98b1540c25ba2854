//! `trunkline`: run a node, manage clients, send and receive messages.

mod federation;
mod peer;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use trunkline_api::{CreateClient, CredentialsFile, QueueSettings, Subscription, UpdateClient};
use trunkline_client::{Client, Error as ClientError, ReceiveOptions};
use trunkline_server::config::{LogFormat, StoreEngine, DEFAULT_CONFIG};
use trunkline_server::{Config, Secrets};

#[derive(Parser)]
#[command(
    name = "trunkline",
    version,
    about = "Trunkline: a durable, secure message backbone"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(ServeArgs),
    /// Show configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect or repair the data directory's log (with the node stopped).
    #[command(subcommand)]
    Store(StoreCommand),
    /// Manage clients (needs admin credentials).
    #[command(subcommand)]
    Client(ClientCommand),
    /// Publish a message to a topic.
    Send {
        #[command(flatten)]
        creds: CredsArgs,
        topic: String,
        /// The body: JSON, or any other text (sent as a JSON string).
        body: String,
        /// Dedup key: a repeat within the node's window is not delivered again.
        #[arg(long)]
        message_id: Option<String>,
        /// Seconds until the message expires undelivered.
        #[arg(long)]
        ttl: Option<f64>,
    },
    /// Broadcast a message to every inbox.
    Notify {
        #[command(flatten)]
        creds: CredsArgs,
        body: String,
    },
    /// A twin's key and its registration with a node's registry (for relays).
    #[command(subcommand)]
    Twin(peer::TwinCommand),
    /// Run a twin's gateway to its relays, with RMB's Redis API (as rmb-peer).
    Peer(peer::PeerArgs),
    /// Federation with peer nodes, as swpt_stomp does it: configure-queue, link, drain.
    #[command(subcommand)]
    Federation(federation::FederationCommand),
    /// Send and subscribe over STOMP.
    #[command(subcommand)]
    Stomp(StompCommand),
    /// Take messages from your inbox and print them, one JSON object per line.
    Receive {
        #[command(flatten)]
        creds: CredsArgs,
        /// At most this many per request.
        #[arg(long, default_value_t = 10)]
        max: usize,
        /// Keep waiting for more until interrupted.
        #[arg(long)]
        follow: bool,
        /// Ack each batch after printing it (at-least-once) instead of the destructive read.
        #[arg(long)]
        manual_ack: bool,
        /// Read the dead-letter queue.
        #[arg(long)]
        dead: bool,
        /// Read this queue, granted to you, instead of your inbox.
        #[arg(long, conflicts_with = "dead")]
        queue: Option<String>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file (see `trunkline config default`).
    #[arg(long, env = "TRUNKLINE_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "TRUNKLINE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Public HTTP listener, e.g. 0.0.0.0:8087 (port 0 picks one).
    #[arg(long, env = "TRUNKLINE_HTTP")]
    http: Option<SocketAddr>,
    /// Backend HTTP listener, e.g. 127.0.0.1:8088.
    #[arg(long, env = "TRUNKLINE_BACKEND")]
    backend: Option<SocketAddr>,
    /// STOMP listener, e.g. 0.0.0.0:61613, or `off`.
    #[arg(long, env = "TRUNKLINE_STOMP")]
    stomp: Option<String>,
    /// Storage engine: `log` (default) or `redb`.
    #[arg(long, env = "TRUNKLINE_STORE_ENGINE")]
    store_engine: Option<String>,
    /// Keep messages in a RabbitMQ cluster: `amqp://…` URLs, comma-separated.
    #[arg(long, env = "TRUNKLINE_BROKER")]
    broker: Option<String>,
    /// With --broker: this node's name in the cluster ([a-z0-9-]).
    #[arg(long = "node", env = "TRUNKLINE_NODE")]
    node_name: Option<String>,
    /// With --broker: the prefix of every name the cluster declares in RabbitMQ.
    #[arg(long, env = "TRUNKLINE_NAMESPACE")]
    namespace: Option<String>,
    /// Unconfirmed STOMP operations per connection before reading pauses.
    #[arg(long, env = "TRUNKLINE_STOMP_BUFFER")]
    stomp_buffer: Option<usize>,
    /// STOMP over TLS 1.3 listener, e.g. 0.0.0.0:61614 (needs --tls-cert and --tls-key).
    #[arg(long, env = "TRUNKLINE_STOMP_TLS")]
    stomp_tls: Option<SocketAddr>,
    /// PEM certificate chain of the server.
    #[arg(long, env = "TRUNKLINE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the server.
    #[arg(long, env = "TRUNKLINE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates; clients must then present a certificate signed by one.
    #[arg(long, env = "TRUNKLINE_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// The federation node database (a directory or file:// URL): federation is on.
    #[arg(long, env = "TRUNKLINE_FEDERATION_NODEDATA")]
    nodedata: Option<String>,
    /// Federation listener, e.g. 0.0.0.0:1234.
    #[arg(long, env = "TRUNKLINE_FEDERATION_LISTEN")]
    federation_listen: Option<SocketAddr>,
    /// This node's certificate for federation (O=Swaptacular Nodes Registry).
    #[arg(long, env = "TRUNKLINE_FEDERATION_CERT")]
    federation_cert: Option<PathBuf>,
    /// Its private key.
    #[arg(long, env = "TRUNKLINE_FEDERATION_KEY")]
    federation_key: Option<PathBuf>,
    /// `text` or `json`.
    #[arg(long, env = "TRUNKLINE_LOG_FORMAT")]
    log_format: Option<String>,
    /// A tracing filter such as `info` or `debug`.
    #[arg(long, env = "TRUNKLINE_LOG_LEVEL")]
    log_level: Option<String>,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Read the log without changing it: what it holds, and where it is damaged.
    /// Exits with 1 if it is damaged.
    Check(StoreArgs),
    /// Cut the log at its first damage: keep everything before it, drop the rest, and say
    /// what was dropped. Stop the node first (the log is locked while a node has it open).
    Recover(StoreArgs),
}

#[derive(Args)]
struct StoreArgs {
    /// TOML configuration file, for its `data_dir`.
    #[arg(long, env = "TRUNKLINE_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "TRUNKLINE_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

// Parsed once at start-up; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the default configuration file.
    Default,
    /// Print the configuration a `serve` with these settings would use.
    Show(ServeArgs),
}

#[derive(Args, Clone)]
pub(crate) struct CredsArgs {
    /// Credentials file ({api, client_id, client_name, subscription, secret}).
    #[arg(
        long,
        env = "TRUNKLINE_CREDENTIALS",
        default_value = "trunkline-data/admin.json"
    )]
    credentials: PathBuf,
    /// Node URL, overriding the file's `api`.
    #[arg(long, env = "TRUNKLINE_API")]
    api: Option<String>,
}

#[derive(Args, Clone)]
pub(crate) struct StompArgs {
    #[command(flatten)]
    creds: CredsArgs,
    /// STOMP address (default: the credentials file's host, port 61613).
    #[arg(long = "stomp", env = "TRUNKLINE_STOMP_ADDR")]
    addr: Option<String>,
}

#[derive(Subcommand)]
enum StompCommand {
    /// Send one message and wait for its receipt (it is then durable).
    Send {
        #[command(flatten)]
        stomp: StompArgs,
        /// e.g. /topic/fleet.ah1.status or /queue/noc-c2-inbox
        destination: String,
        body: String,
        #[arg(long, default_value = "application/json")]
        content_type: String,
        /// Extra header NAME=VALUE; repeat for several.
        #[arg(long = "header")]
        headers: Vec<String>,
    },
    /// Subscribe and print each message as one JSON object per line.
    Subscribe {
        #[command(flatten)]
        stomp: StompArgs,
        /// e.g. /queue/<you>-inbox or /topic/fleet.#
        destination: String,
        /// auto, client or client-individual (messages are acked after printing).
        #[arg(long, default_value = "client-individual")]
        ack: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Create a client and print its credentials file (the secret is shown only once).
    Create {
        #[command(flatten)]
        creds: CredsArgs,
        client_id: String,
        /// Display name (defaults to the id).
        #[arg(long)]
        name: Option<String>,
        /// Subscription pattern; repeat for several.
        #[arg(long = "sub", required = true)]
        subscription: Vec<String>,
        /// Topic pattern it may publish to; repeat for several (default: every topic).
        #[arg(long = "publish")]
        publish: Vec<String>,
        /// Role (admin, backend); repeat for several.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Another queue it may read (such as `<other>-inbox`); repeat for several.
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// Another queue it may put messages into; repeat for several.
        #[arg(long = "write-grant")]
        write_grants: Vec<String>,
        /// A topic pattern it may also read live, without it routing into its inbox.
        #[arg(long = "read-topic")]
        read_topics: Vec<String>,
        /// Write the credentials file here (mode 0600) instead of printing it.
        #[arg(long)]
        save: Option<PathBuf>,
    },
    /// List clients.
    List {
        #[command(flatten)]
        creds: CredsArgs,
    },
    /// Show one client.
    Show {
        #[command(flatten)]
        creds: CredsArgs,
        client_id: String,
    },
    /// Change a client's name, subscription, publish patterns, roles or grants (its open
    /// sessions get the new rights at once).
    Update {
        #[command(flatten)]
        creds: CredsArgs,
        client_id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "sub")]
        subscription: Vec<String>,
        /// Topic patterns it may publish to (`#`: every topic).
        #[arg(long = "publish")]
        publish: Vec<String>,
        #[arg(long = "role")]
        roles: Option<Vec<String>>,
        /// Replaces its read grants.
        #[arg(long = "grant")]
        grants: Option<Vec<String>>,
        /// Replaces its write grants.
        #[arg(long = "write-grant")]
        write_grants: Option<Vec<String>>,
        /// Replaces the topic patterns it may also read live.
        #[arg(long = "read-topic")]
        read_topics: Option<Vec<String>>,
        #[arg(long)]
        max_length: Option<u64>,
    },
    /// Delete a client and its inbox.
    Delete {
        #[command(flatten)]
        creds: CredsArgs,
        client_id: String,
    },
    /// Give a client a new secret (old tokens stop working).
    Rotate {
        #[command(flatten)]
        creds: CredsArgs,
        client_id: String,
        #[arg(long)]
        save: Option<PathBuf>,
    },
}

/// Exit codes: 0 done, 1 the node refused, 2 bad usage or local files, 3 node unreachable.
#[derive(Debug)]
pub(crate) enum Failure {
    Refused(String),
    Usage(String),
    Unreachable(String),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Transport(m) => Failure::Unreachable(m),
            ClientError::Config(m) => Failure::Usage(m),
            other => Failure::Refused(other.to_string()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(dispatch(cli.command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Unreachable(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(3)
        }
    }
}

/// The log directory of the data directory that `a` names (or the configured one).
fn log_dir(a: &StoreArgs) -> Result<PathBuf, Failure> {
    let data_dir = match (&a.data_dir, &a.config) {
        (Some(d), _) => d.clone(),
        (None, Some(path)) => {
            Config::from_file(path)
                .map_err(|e| Failure::Usage(e.to_string()))?
                .data_dir
        }
        (None, None) => Config::default().data_dir,
    };
    let dir = trunkline_server::node::log_dir(&data_dir);
    if !dir.is_dir() {
        return Err(Failure::Usage(format!(
            "{} holds no log (is the data directory right, and the engine `log`?)",
            dir.display()
        )));
    }
    Ok(dir)
}

fn store_check(a: &StoreArgs) -> Result<(), Failure> {
    use trunkline_store::log_store::{check, Tail};
    let dir = log_dir(a)?;
    let r =
        check(&trunkline_store::fs::RealFs, &dir).map_err(|e| Failure::Refused(e.to_string()))?;
    println!(
        "log {}: {} segments read, {} messages, {} queue entries, {} records",
        dir.display(),
        r.segments.len(),
        r.messages,
        r.entries,
        r.records
    );
    for s in &r.segments {
        let state = match &s.tail {
            Tail::Clean => "whole".to_owned(),
            Tail::Torn => "ends in a torn frame (a crash while it was written; never \
                           acknowledged; cut off when the node starts)"
                .to_owned(),
            Tail::Damaged(why) => format!("DAMAGED at offset {}: {why}", s.bytes),
        };
        println!(
            "  segment {}: {} frames, {} bytes, {state}",
            s.segment, s.frames, s.bytes
        );
    }
    match r.damage() {
        None => Ok(()),
        Some((seg, offset, _)) => {
            if !r.unread.is_empty() {
                println!("  not read (after the damage): segments {:?}", r.unread);
            }
            Err(Failure::Refused(format!(
                "the log is damaged; the node will not start on it. `trunkline store recover` \
                 keeps everything before offset {offset} of segment {seg} and drops the rest"
            )))
        }
    }
}

fn store_recover(a: &StoreArgs) -> Result<(), Failure> {
    use trunkline_store::log_store::{LogOptions, Recover};
    let dir = log_dir(a)?;
    let options = LogOptions {
        recover: Recover::Truncate,
        background_compaction: false,
        ..LogOptions::default()
    };
    let store = trunkline_store::LogStore::open_on(
        std::sync::Arc::new(trunkline_store::fs::RealFs),
        &dir,
        options,
    )
    .map_err(|e| Failure::Refused(e.to_string()))?;
    match store.recovered() {
        None => println!(
            "the log in {} is not damaged; nothing was changed",
            dir.display()
        ),
        Some(r) => println!(
            "cut segment {} at offset {} ({}); dropped {} bytes{}",
            r.segment,
            r.offset,
            r.why,
            r.dropped_bytes,
            if r.dropped_segments.is_empty() {
                String::new()
            } else {
                format!(", and segments {:?}", r.dropped_segments)
            }
        ),
    }
    Ok(())
}

fn effective_config(a: &ServeArgs) -> Result<Config, Failure> {
    let mut c = match &a.config {
        Some(path) => Config::from_file(path).map_err(|e| Failure::Usage(e.to_string()))?,
        None => Config::default(),
    };
    if let Some(d) = &a.data_dir {
        c.data_dir = d.clone();
    }
    if let Some(h) = a.http {
        c.http = h;
    }
    if let Some(b) = a.backend {
        c.backend = b;
    }
    match a.stomp.as_deref() {
        None => {}
        Some("off") => c.stomp.enabled = false,
        Some(addr) => {
            c.stomp.enabled = true;
            c.stomp.listen = addr.parse().map_err(|_| {
                Failure::Usage(format!(
                    "--stomp must be an address such as 127.0.0.1:61613, or off; got `{addr}`"
                ))
            })?;
        }
    }
    if let Some(b) = &a.broker {
        c.broker.url = b.clone();
    }
    if let Some(n) = &a.node_name {
        c.broker.node = n.clone();
    }
    if let Some(n) = &a.namespace {
        c.broker.namespace = n.clone();
    }
    if let Some(e) = &a.store_engine {
        c.store.engine = match e.as_str() {
            "log" => StoreEngine::Log,
            "redb" => StoreEngine::Redb,
            other => {
                return Err(Failure::Usage(format!(
                    "store engine must be log or redb, not `{other}`"
                )))
            }
        };
    }
    if let Some(b) = a.stomp_buffer {
        c.stomp.buffer = b;
    }
    if a.stomp_tls.is_some() {
        c.stomp.tls_listen = a.stomp_tls;
    }
    if a.tls_cert.is_some() {
        c.stomp.tls_cert = a.tls_cert.clone();
    }
    if a.tls_key.is_some() {
        c.stomp.tls_key = a.tls_key.clone();
    }
    if a.tls_client_ca.is_some() {
        c.stomp.tls_client_ca = a.tls_client_ca.clone();
    }
    if a.nodedata.is_some() {
        c.federation.nodedata = a.nodedata.clone();
    }
    if let Some(l) = a.federation_listen {
        c.federation.listen = l;
    }
    if let Some(p) = &a.federation_cert {
        c.federation.cert = p.clone();
    }
    if let Some(p) = &a.federation_key {
        c.federation.key = p.clone();
    }
    if let Some(f) = &a.log_format {
        c.log.format = match f.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(Failure::Usage(format!(
                    "log format must be text or json, not `{other}`"
                )))
            }
        };
    }
    if let Some(l) = &a.log_level {
        c.log.level = l.clone();
    }
    let lifetime = std::env::var("TRUNKLINE_TOKEN_LIFETIME")
        .ok()
        .or_else(|| std::env::var("SOAR_TOKEN_LIFETIME").ok());
    if let Some(h) = lifetime {
        c.auth.token_lifetime_hours = h.trim().parse().map_err(|_| {
            Failure::Usage(format!(
                "token lifetime must be a number of hours, not `{h}`"
            ))
        })?;
    }
    c.validate().map_err(|e| Failure::Usage(e.to_string()))?;
    Ok(c)
}

fn init_logs(c: &Config) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_new(&c.log.level)
        .map_err(|e| Failure::Usage(format!("log level `{}`: {e}", c.log.level)))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match c.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled: the node writes `listen.json` while it starts, and a
/// SIGTERM sent as soon as that file appears must stop it cleanly, not kill it.
pub(crate) fn signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    async move {
        #[cfg(unix)]
        {
            let term = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! { _ = term => {}, _ = int => {} }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn secrets() -> Secrets {
    let var = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
    };
    Secrets {
        token_secret: var(&["TRUNKLINE_TOKEN_SECRET", "SOAR_TOKEN_SECRET"]),
        backend_key: var(&["TRUNKLINE_BACKEND_KEY"]),
        channel_secret: var(&["TRUNKLINE_CHANNEL_SECRET"]),
    }
}

pub(crate) fn connect(a: &CredsArgs) -> Result<Client, Failure> {
    let text = std::fs::read_to_string(&a.credentials).map_err(|e| {
        Failure::Usage(format!(
            "cannot read credentials file {}: {e} (use --credentials FILE)",
            a.credentials.display()
        ))
    })?;
    let mut creds: CredentialsFile = serde_json::from_str(&text).map_err(|e| {
        Failure::Usage(format!(
            "{} is not a credentials file: {e}",
            a.credentials.display()
        ))
    })?;
    if let Some(api) = &a.api {
        creds.api = api.clone();
    }
    Ok(Client::from_credentials(&creds)?)
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Failure::Usage(e.to_string()))?;
    println!("{s}");
    Ok(())
}

fn save_private(path: &PathBuf, v: &CredentialsFile) -> Result<(), Failure> {
    let json = serde_json::to_vec_pretty(v).map_err(|e| Failure::Usage(e.to_string()))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
        .and_then(|mut f| f.write_all(&json))
        .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))?;
    eprintln!("credentials saved to {}", path.display());
    Ok(())
}

/// Prints new credentials as a credentials file, or saves them (mode 0600).
fn emit_credentials(
    c: &Client,
    creds: trunkline_api::ClientCredentials,
    save: Option<PathBuf>,
) -> Result<(), Failure> {
    let file = CredentialsFile {
        api: c.base_url().to_owned(),
        client_id: creds.client_id,
        client_name: creds.client_name,
        subscription: creds.subscription,
        secret: creds.secret,
    };
    match save {
        Some(path) => save_private(&path, &file),
        None => print_json(&file),
    }
}

/// A body argument: JSON as given, anything else as a JSON string.
fn body_value(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_owned()))
}

/// Raises the soft limit on open files to the hard one, as a server should: the log holds
/// a descriptor per segment (a backlog of tiny fan-out entries makes hundreds), and every
/// connection takes one; the usual soft limit is 1 024.
fn raise_open_files() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let l = getrlimit(Resource::Nofile);
    let (Some(current), Some(maximum)) = (l.current, l.maximum) else {
        return;
    };
    if current >= maximum {
        return;
    }
    let raised = Rlimit {
        current: Some(maximum),
        maximum: Some(maximum),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(from = current, to = maximum, "raised the open files limit"),
        Err(e) => tracing::warn!(limit = current, cause = %e, "cannot raise the open files limit"),
    }
}

async fn dispatch(cmd: Command) -> Result<(), Failure> {
    match cmd {
        Command::Serve(a) => {
            let c = effective_config(&a)?;
            init_logs(&c)?;
            raise_open_files();
            trunkline_server::run(c, secrets(), signal())
                .await
                .map_err(|e| Failure::Usage(e.to_string()))
        }
        Command::Store(StoreCommand::Check(a)) => store_check(&a),
        Command::Store(StoreCommand::Recover(a)) => store_recover(&a),
        Command::Config(ConfigCommand::Default) => {
            print!("{DEFAULT_CONFIG}");
            Ok(())
        }
        Command::Config(ConfigCommand::Show(a)) => {
            print!("{}", effective_config(&a)?.to_toml());
            Ok(())
        }
        Command::Client(cmd) => client_command(cmd).await,
        Command::Stomp(cmd) => stomp_command(cmd).await,
        Command::Federation(cmd) => federation::run(cmd).await,
        Command::Twin(cmd) => peer::twin(cmd).await,
        Command::Peer(args) => peer::run(args).await,
        Command::Send {
            creds,
            topic,
            body,
            message_id,
            ttl,
        } => {
            let c = connect(&creds)?;
            let mut req = serde_json::json!({"topic": topic, "body": body_value(&body)});
            if let Some(m) = message_id {
                req["message_id"] = m.into();
            }
            if let Some(t) = ttl {
                req["ttl"] = t.into();
            }
            print_json(&c.send_raw(&req).await?)
        }
        Command::Notify { creds, body } => {
            let c = connect(&creds)?;
            print_json(&c.notify(&body_value(&body)).await?)
        }
        Command::Receive {
            creds,
            max,
            follow,
            manual_ack,
            dead,
            queue,
        } => {
            let c = connect(&creds)?;
            let opts = ReceiveOptions {
                max_messages: max,
                lease: manual_ack.then_some(60),
                wait: if follow { 25 } else { 0 },
                dead,
                queue,
            };
            loop {
                let batch = tokio::select! {
                    b = c.receive(&opts) => b,
                    _ = signal() => return Ok(()),
                };
                let batch = match batch {
                    Ok(b) => b,
                    Err(ClientError::Transport(m)) if follow => {
                        eprintln!("warning: {m}; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let mut out = std::io::stdout().lock();
                let mut receipts = Vec::new();
                for m in &batch {
                    let line = serde_json::json!({
                        "id": m.id, "topic": m.topic, "body": m.body, "sender": m.sender,
                        "timestamp": m.timestamp, "redelivered": m.redelivered,
                        "delivery_count": m.delivery_count,
                    });
                    let _ = writeln!(out, "{line}");
                    receipts.extend(m.receipt.clone());
                }
                let _ = out.flush();
                drop(out);
                if !receipts.is_empty() {
                    c.ack(&receipts).await?;
                }
                if !follow && batch.len() < max {
                    return Ok(());
                }
                if !follow {
                    // Drained one full batch; keep going until the inbox is empty.
                    continue;
                }
            }
        }
    }
}

async fn client_command(cmd: ClientCommand) -> Result<(), Failure> {
    match cmd {
        ClientCommand::Create {
            creds,
            client_id,
            name,
            subscription,
            publish,
            roles,
            grants,
            write_grants,
            read_topics,
            save,
        } => {
            let c = connect(&creds)?;
            let created = c
                .create_client(&CreateClient {
                    client_name: name.unwrap_or_else(|| client_id.clone()),
                    client_id,
                    subscription: Subscription::from_patterns(subscription),
                    publish: (!publish.is_empty()).then(|| Subscription::from_patterns(publish)),
                    roles,
                    grants,
                    write_grants,
                    read_topics,
                    inbox: QueueSettings::default(),
                })
                .await?;
            emit_credentials(&c, created, save)
        }
        ClientCommand::List { creds } => print_json(&connect(&creds)?.list_clients().await?),
        ClientCommand::Show { creds, client_id } => {
            print_json(&connect(&creds)?.get_client(&client_id).await?)
        }
        ClientCommand::Update {
            creds,
            client_id,
            name,
            subscription,
            publish,
            roles,
            grants,
            write_grants,
            read_topics,
            max_length,
        } => {
            let u = UpdateClient {
                client_name: name,
                subscription: (!subscription.is_empty())
                    .then(|| Subscription::from_patterns(subscription)),
                publish: (!publish.is_empty()).then(|| Subscription::from_patterns(publish)),
                roles,
                grants,
                write_grants,
                read_topics,
                inbox: max_length.map(|m| QueueSettings {
                    max_length: Some(m),
                    ..Default::default()
                }),
            };
            print_json(&connect(&creds)?.update_client(&client_id, &u).await?)
        }
        ClientCommand::Delete { creds, client_id } => {
            connect(&creds)?.delete_client(&client_id).await?;
            eprintln!("client `{client_id}` deleted");
            Ok(())
        }
        ClientCommand::Rotate {
            creds,
            client_id,
            save,
        } => {
            let c = connect(&creds)?;
            let r = c.rotate_secret(&client_id).await?;
            emit_credentials(&c, r, save)
        }
    }
}

pub(crate) fn stomp_options(
    a: &StompArgs,
) -> Result<trunkline_client::stomp::StompOptions, Failure> {
    let text = std::fs::read_to_string(&a.creds.credentials).map_err(|e| {
        Failure::Usage(format!(
            "cannot read credentials file {}: {e}",
            a.creds.credentials.display()
        ))
    })?;
    let creds: CredentialsFile = serde_json::from_str(&text).map_err(|e| {
        Failure::Usage(format!(
            "{} is not a credentials file: {e}",
            a.creds.credentials.display()
        ))
    })?;
    let addr = match &a.addr {
        Some(addr) => addr.clone(),
        None => {
            let api = a.creds.api.clone().unwrap_or(creds.api.clone());
            let host = api
                .split("://")
                .nth(1)
                .unwrap_or(&api)
                .split(['/', ':'])
                .next()
                .unwrap_or("127.0.0.1")
                .to_owned();
            format!("{host}:61613")
        }
    };
    let mut o = trunkline_client::stomp::StompOptions::new(addr, creds.client_id, creds.secret);
    o.reconnect = false;
    Ok(o)
}

pub(crate) fn stomp_failure(e: trunkline_client::stomp::StompClientError) -> Failure {
    use trunkline_client::stomp::StompClientError as E;
    match e {
        E::Connect(m) => Failure::Unreachable(m),
        other => Failure::Refused(other.to_string()),
    }
}

async fn stomp_command(cmd: StompCommand) -> Result<(), Failure> {
    use trunkline_client::stomp::StompClient;
    match cmd {
        StompCommand::Send {
            stomp,
            destination,
            body,
            content_type,
            headers,
        } => {
            let c = StompClient::connect(stomp_options(&stomp)?)
                .await
                .map_err(stomp_failure)?;
            let mut hs: Vec<(&str, &str)> = vec![("content-type", content_type.as_str())];
            for h in &headers {
                let Some((k, v)) = h.split_once('=') else {
                    return Err(Failure::Usage(format!(
                        "--header takes NAME=VALUE, not `{h}`"
                    )));
                };
                hs.push((k, v));
            }
            let conf = c
                .send(&destination, &hs, body.into_bytes())
                .await
                .map_err(stomp_failure)?;
            conf.await.map_err(stomp_failure)?;
            c.disconnect().await.map_err(stomp_failure)?;
            print_json(&serde_json::json!({"confirmed": true}))
        }
        StompCommand::Subscribe {
            stomp,
            destination,
            ack,
            count,
        } => {
            let c = StompClient::connect(stomp_options(&stomp)?)
                .await
                .map_err(stomp_failure)?;
            let mut rx = c
                .subscribe(&destination, &ack, None)
                .await
                .map_err(stomp_failure)?;
            let mut n = 0u64;
            loop {
                if count.is_some_and(|max| n >= max) {
                    break;
                }
                let m = tokio::select! {
                    m = rx.recv() => m,
                    _ = signal() => None,
                };
                let Some(m) = m else { break };
                let headers: serde_json::Map<String, serde_json::Value> = m
                    .headers
                    .iter()
                    .rev()
                    .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
                    .collect();
                let line = serde_json::json!({
                    "destination": m.destination,
                    "redelivered": m.redelivered,
                    "headers": headers,
                    "body": String::from_utf8_lossy(&m.body),
                });
                println!("{line}");
                c.ack(&m).await.map_err(stomp_failure)?;
                n += 1;
            }
            c.disconnect().await.map_err(stomp_failure)
        }
    }
}
