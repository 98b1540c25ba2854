//! `trunkline twin` (a twin's key and its registration) and `trunkline peer`: a twin's
//! gateway with RMB's Redis API (docs/relays.md), so that applications written for
//! threefoldtech's `rmb-peer` work unchanged.
//!
//! - `msgbus.system.local`: requests from applications, one envelope per destination, all
//!   with one fresh uid; what they need to route the responses back (their `ref` and
//!   `ret`) is kept in `msgbus.backlog.<uid>` until the request expires.
//! - `msgbus.<cmd>`: requests from other twins, for the application serving `cmd`
//!   (trimmed to the newest 10 000); it answers on `msgbus.system.reply`.
//! - the request's `ret` queue: the responses, with the application's own `ref`; a
//!   request that could not be sent is answered there with `err` (103: unknown twin).
//! - `rmb.version` is answered by the gateway itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::{Args, Subcommand};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use trunkline_client::peer::{codes, Draft, Peer, PeerConfig};
use trunkline_client::relay::{unix_now, Directory};
use trunkline_envelope::envelope::{DEFAULT_TTL, MAX_TTL};
use trunkline_envelope::{Address, Envelope, Identity, Kind};

use crate::{connect, print_json, CredsArgs, Failure};

/// Requests from local applications.
pub const LOCAL: &str = "msgbus.system.local";
/// Responses from local applications.
pub const REPLY: &str = "msgbus.system.reply";
/// Most entries kept in a command or reply queue.
const MAX_QUEUE: isize = 10_000;

#[derive(Subcommand)]
pub enum TwinCommand {
    /// Make a new twin key: writes its seed (hex, mode 0600) and prints its public key.
    Keygen {
        #[arg(long)]
        seed_file: PathBuf,
    },
    /// Register the key of a seed file as a new twin (needs client credentials); prints it.
    Register {
        #[command(flatten)]
        creds: CredsArgs,
        #[arg(long)]
        seed_file: PathBuf,
        /// A relay the twin is reached through (repeat, at most 4).
        #[arg(long = "relay")]
        relays: Vec<String>,
    },
}

#[derive(Args)]
pub struct PeerArgs {
    /// The twin's seed: 64 hex digits (as `trunkline twin keygen` writes).
    #[arg(long, env = "TRUNKLINE_PEER_SEED_FILE")]
    seed_file: PathBuf,
    /// A relay to connect to (repeat, at most 4): `http://host:port` or `wss://host`.
    #[arg(long = "relay", required = true)]
    relays: Vec<String>,
    /// The node whose twin registry to read (default: the first relay).
    #[arg(long)]
    registry: Option<String>,
    /// The Redis the applications use.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Connect as this session of the twin (default: the twin's own).
    #[arg(long)]
    session: Option<String>,
    /// Do not update the registry when the twin's relays there differ from --relay.
    #[arg(long)]
    no_update: bool,
}

fn read_seed(path: &Path) -> Result<Identity, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    let text = text.trim().trim_start_matches("0x");
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<_>>()
        .unwrap_or_default();
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| Failure::Usage(format!("{}: not a seed (64 hex digits)", path.display())))?;
    Ok(Identity::from_seed(&seed))
}

pub async fn twin(cmd: TwinCommand) -> Result<(), Failure> {
    match cmd {
        TwinCommand::Keygen { seed_file } => {
            let id = Identity::generate().map_err(|e| Failure::Usage(e.to_string()))?;
            let hex: String = id.seed().iter().map(|b| format!("{b:02x}")).collect();
            trunkline_store::fs::write_file(
                &trunkline_store::fs::RealFs,
                &seed_file,
                hex.as_bytes(),
            )
            .map_err(|e| Failure::Usage(format!("{}: {e}", seed_file.display())))?;
            println!("{}", id.public().to_text());
            Ok(())
        }
        TwinCommand::Register {
            creds,
            seed_file,
            relays,
        } => {
            let id = read_seed(&seed_file)?;
            let info = connect(&creds)?.register_twin(&id, &relays).await?;
            print_json(&info)
        }
    }
}

/// A request from an application (`msgbus.system.local`). Optional keys may be missing;
/// unknown keys are ignored.
#[derive(Debug, Deserialize)]
struct OutgoingRequest {
    #[serde(rename = "ref", default)]
    reference: Option<String>,
    #[serde(rename = "cmd")]
    command: String,
    #[serde(rename = "exp", default)]
    expiration: u64,
    #[serde(rename = "dat", default)]
    data: String,
    #[serde(rename = "tag", default)]
    tags: Option<String>,
    #[serde(rename = "dst", default)]
    destinations: Vec<u32>,
    #[serde(rename = "ret")]
    reply_to: String,
    #[serde(rename = "shm", default)]
    schema: Option<String>,
    #[serde(rename = "now", default)]
    timestamp: u64,
}

/// An error as the JSON API carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JsonError {
    code: u32,
    message: String,
}

/// A response from an application (`msgbus.system.reply`).
#[derive(Debug, Deserialize)]
struct OutgoingResponse {
    #[serde(rename = "ref", default)]
    reference: Option<String>,
    #[serde(rename = "dat", default)]
    data: String,
    #[serde(rename = "dst")]
    destination: String,
    #[serde(rename = "shm", default)]
    schema: Option<String>,
    #[serde(rename = "err", default)]
    error: Option<JsonError>,
}

/// A request for an application (`msgbus.<cmd>`).
#[derive(Debug, Serialize)]
struct IncomingRequest<'a> {
    ver: u32,
    #[serde(rename = "ref")]
    reference: &'a str,
    src: String,
    cmd: &'a str,
    exp: u32,
    dat: String,
    tag: &'a Option<String>,
    ret: &'static str,
    shm: &'a Option<String>,
    now: u64,
}

/// A response for an application (its request's `ret`).
#[derive(Debug, Serialize)]
struct IncomingResponse {
    ver: u32,
    #[serde(rename = "ref")]
    reference: Option<String>,
    dat: String,
    src: String,
    shm: Option<String>,
    now: u64,
    err: Option<JsonError>,
}

/// What the gateway keeps of a request until it expires.
#[derive(Debug, Serialize, Deserialize)]
struct Backlog {
    #[serde(rename = "ref")]
    reference: Option<String>,
    ret: String,
}

fn backlog_key(uid: &str) -> String {
    format!("msgbus.backlog.{uid}")
}

type Conn = redis::aio::ConnectionManager;

pub async fn run(a: PeerArgs) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRUNKLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let identity = read_seed(&a.seed_file)?;
    let registry = a
        .registry
        .clone()
        .unwrap_or_else(|| trunkline_client::relay::node_url(&a.relays[0]));
    let directory = Directory::new(&registry)?;
    let twin = directory.find(&identity.public()).await?.ok_or_else(|| {
        Failure::Usage(format!(
            "key {} is not a twin of {registry}: register it first (trunkline twin register)",
            identity.public().to_text()
        ))
    })?;
    if !a.no_update && twin.relays != a.relays {
        directory
            .update(twin.id, &identity, &identity.public(), &a.relays)
            .await?;
        tracing::info!(twin = twin.id, relays = ?a.relays, "peer: the registry now lists these relays");
    }
    let redis = redis::Client::open(a.redis.as_str())
        .map_err(|e| Failure::Usage(format!("--redis: {e}")))?;
    let unreachable = |e: redis::RedisError| Failure::Unreachable(format!("redis: {e}"));
    // Connections that come back by themselves when Redis does (again and again, at most
    // 2 s apart). BRPOP blocks: a client-side timeout would drop what the server popped
    // meanwhile, so the popping one has none.
    let again = || {
        redis::aio::ConnectionManagerConfig::new()
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(usize::MAX)
    };
    let pushes = redis
        .get_connection_manager_with_config(again())
        .await
        .map_err(unreachable)?;
    let pops = redis
        .get_connection_manager_with_config(again().set_response_timeout(None))
        .await
        .map_err(unreachable)?;
    let (peer, inbox) = Peer::start(PeerConfig {
        identity,
        twin: twin.id,
        session: a.session.clone(),
        relays: a.relays.clone(),
        registry,
    })?;
    tracing::info!(twin = twin.id, "peer: running");
    let down = tokio::spawn(downstream(peer.clone(), pushes.clone(), inbox));
    let up = upstream(peer, pushes, pops);
    tokio::select! {
        r = up => r,
        _ = down => Err(Failure::Unreachable("the relays' side stopped".into())),
        _ = crate::signal() => Ok(()),
    }
}

/// Takes what applications push and sends it.
async fn upstream(peer: Peer, mut pushes: Conn, mut pops: Conn) -> Result<(), Failure> {
    loop {
        let got: Option<(String, String)> = match pops.brpop(&[LOCAL, REPLY], 1.0).await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "peer: redis");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some((queue, value)) = got else { continue };
        if queue == LOCAL {
            match serde_json::from_str::<OutgoingRequest>(&value) {
                Ok(r) => request(&peer, &mut pushes, r).await,
                Err(e) => tracing::warn!(error = %e, "peer: not a request, dropped"),
            }
        } else {
            match serde_json::from_str::<OutgoingResponse>(&value) {
                Ok(r) => response(&peer, r).await,
                Err(e) => tracing::warn!(error = %e, "peer: not a response, dropped"),
            }
        }
    }
}

/// Runs `cmd` on `conn`, once more if it failed: the first command after Redis came
/// back fails, and makes the connection connect again.
async fn query<T: redis::FromRedisValue>(
    conn: &mut Conn,
    cmd: &redis::Pipeline,
) -> redis::RedisResult<T> {
    match cmd.query_async(conn).await {
        Ok(v) => Ok(v),
        Err(_) => {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cmd.query_async(conn).await
        }
    }
}

async fn push(conn: &mut Conn, queue: &str, value: &impl Serialize) {
    let Ok(json) = serde_json::to_string(value) else {
        return;
    };
    let mut cmd = redis::pipe();
    cmd.lpush(queue, json)
        .ignore()
        .ltrim(queue, 0, MAX_QUEUE - 1)
        .ignore();
    if let Err(e) = query::<()>(conn, &cmd).await {
        tracing::warn!(queue, error = %e, "peer: cannot push to redis");
    }
}

/// A response to `ret` saying a request failed.
fn failure(reference: &Option<String>, code: u32, message: String) -> IncomingResponse {
    IncomingResponse {
        ver: 1,
        reference: reference.clone(),
        dat: String::new(),
        src: String::new(),
        shm: None,
        now: unix_now(),
        err: Some(JsonError { code, message }),
    }
}

async fn request(peer: &Peer, conn: &mut Conn, r: OutgoingRequest) {
    let now = unix_now();
    let created = if r.timestamp == 0 || r.timestamp > now {
        now
    } else {
        r.timestamp
    };
    let ttl = if r.expiration == 0 {
        DEFAULT_TTL as u64
    } else {
        r.expiration.min(MAX_TTL as u64)
    };
    let left = (created + ttl).saturating_sub(now);
    if left == 0 {
        tracing::info!(cmd = %r.command, "peer: an expired request, dropped");
        return;
    }
    let payload = match STANDARD.decode(&r.data) {
        Ok(p) => p,
        Err(e) => {
            for _ in &r.destinations {
                let f = failure(&r.reference, codes::INVALID_PAYLOAD, format!("dat: {e}"));
                push(conn, &r.reply_to, &f).await;
            }
            return;
        }
    };
    let uid = trunkline_client::peer::new_uid();
    let backlog = Backlog {
        reference: r.reference.clone(),
        ret: r.reply_to.clone(),
    };
    let mut set = redis::pipe();
    set.set_ex(
        backlog_key(&uid),
        serde_json::to_string(&backlog).unwrap_or_default(),
        left,
    )
    .ignore();
    if let Err(e) = query::<()>(conn, &set).await {
        tracing::warn!(error = %e, "peer: cannot keep the request's backlog");
    }
    for dst in &r.destinations {
        let draft = Draft {
            uid: uid.clone(),
            destination: Address::twin(*dst),
            kind: Kind::Request {
                command: r.command.clone(),
            },
            payload: payload.clone(),
            ttl: ttl as u32,
            created,
            tags: r.tags.clone(),
            schema: r.schema.clone(),
        };
        if let Err(e) = peer.send(draft).await {
            push(
                conn,
                &r.reply_to,
                &failure(&r.reference, e.code(), e.to_string()),
            )
            .await;
        }
    }
}

async fn response(peer: &Peer, r: OutgoingResponse) {
    let Some(to) = Address::parse(&r.destination) else {
        tracing::warn!(dst = %r.destination, "peer: a response to no twin, dropped");
        return;
    };
    let uid = r.reference.unwrap_or_default();
    let mut draft = match r.error {
        Some(e) => Draft::error(to, &uid, e.code, &e.message),
        None => match STANDARD.decode(&r.data) {
            Ok(p) => Draft::response(to, &uid, p),
            Err(e) => Draft::error(to, &uid, codes::INVALID_PAYLOAD, &format!("dat: {e}")),
        },
    };
    draft.ttl = MAX_TTL;
    draft.schema = r.schema;
    if let Err(e) = peer.send(draft).await {
        tracing::warn!(error = %e, "peer: a response was not sent");
    }
}

/// The gateway's own commands (RMB's `rmb` plugin).
async fn builtin(peer: &Peer, env: &Envelope, command: &str) {
    let draft = match command {
        "rmb.version" => {
            let v = serde_json::to_vec(env!("CARGO_PKG_VERSION")).unwrap_or_default();
            Draft::response(env.source.clone(), &env.uid, v)
        }
        other => Draft::error(
            env.source.clone(),
            &env.uid,
            codes::OTHER,
            &format!("unknown command {other}"),
        ),
    };
    if let Err(e) = peer.send(draft).await {
        tracing::warn!(error = %e, "peer: an answer was not sent");
    }
}

/// Hands what the relays deliver to the applications.
async fn downstream(peer: Peer, mut conn: Conn, mut inbox: tokio::sync::mpsc::Receiver<Envelope>) {
    while let Some(env) = inbox.recv().await {
        let dat = STANDARD.encode(env.payload.bytes());
        match &env.kind {
            Kind::Request { command } if command.starts_with("rmb.") => {
                builtin(&peer, &env, command).await;
            }
            Kind::Request { command } => {
                let r = IncomingRequest {
                    ver: 1,
                    reference: &env.uid,
                    src: env.source.to_string(),
                    cmd: command,
                    exp: env.expiration,
                    dat,
                    tag: &env.tags,
                    ret: REPLY,
                    shm: &env.schema,
                    now: env.timestamp,
                };
                push(&mut conn, &format!("msgbus.{command}"), &r).await;
            }
            Kind::Response | Kind::Error { .. } => {
                let mut get = redis::pipe();
                get.get(backlog_key(&env.uid));
                let backlog: Option<String> = query::<(Option<String>,)>(&mut conn, &get)
                    .await
                    .map_or(None, |(b,)| b);
                let Some(b) = backlog.and_then(|b| serde_json::from_str::<Backlog>(&b).ok()) else {
                    tracing::info!(uid = %env.uid, "peer: the reply of an expired request, dropped");
                    continue;
                };
                let err = match &env.kind {
                    Kind::Error { code, message } => Some(JsonError {
                        code: *code,
                        message: message.clone(),
                    }),
                    _ => None,
                };
                let r = IncomingResponse {
                    ver: 1,
                    reference: b.reference,
                    dat,
                    src: env.source.to_string(),
                    shm: env.schema.clone(),
                    now: env.timestamp,
                    err,
                };
                push(&mut conn, &b.ret, &r).await;
            }
            Kind::Ping | Kind::Pong => {}
        }
    }
}
