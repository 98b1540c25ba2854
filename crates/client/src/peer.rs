//! A twin's gateway to its relays, as RMB's `rmb-peer` is, without Redis: envelopes to and
//! from other twins, sealed for their recipient and signed, through up to four relays.
//!
//! [`Peer::start`] keeps a connection to each relay (again 2 s after one fails; a ping
//! when idle for 20 s, a new connection when nothing came for 40 s). [`Peer::send`] seals
//! a payload for its destination, signs the envelope and queues it; whichever relay is
//! connected takes it, and one that fails while sending gives it to the next until it
//! expires. Every envelope received is checked before it is handed over: the signature of
//! its source (the relay's own key for the relay's errors and pongs), its time, that it
//! was not taken before, and its sealed payload opened. A request that fails those checks
//! is answered with an error envelope, with RMB's codes ([`codes`]).
//!
//! ```no_run
//! # async fn f() -> Result<(), trunkline_client::Error> {
//! use trunkline_client::peer::{Draft, Peer, PeerConfig};
//! use trunkline_envelope::{Address, Identity, Kind};
//! let me = Identity::generate().unwrap();
//! let (peer, mut inbox) = Peer::start(PeerConfig::new(me, 41, "http://127.0.0.1:8087"))?;
//! peer.send(Draft::request(Address::twin(42), "echo", b"hi".to_vec())).await?;
//! while let Some(got) = inbox.recv().await {
//!     println!("{} from {}: {:?}", got.uid, got.source, got.payload.bytes());
//! }
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use stopping::CancelOnDrop;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Frame;
use trunkline_envelope::envelope::{DEFAULT_TTL, MAX_TTL};
use trunkline_envelope::{
    seal, Address, Envelope, EnvelopeError, Identity, Kind, Payload, PublicKey, ReplayWindow, Who,
};

use crate::relay::{unix_now, Directory, RelayConn, RelaySink, RelayStream};
use crate::{Error, RelayStored};

/// Error codes in error envelopes, as RMB's peer numbers them.
pub mod codes {
    /// Not an envelope.
    pub const INVALID_ENVELOPE: u32 = 100;
    /// The payload is not what its command takes.
    pub const INVALID_PAYLOAD: u32 = 101;
    /// Expired, or too far in the future.
    pub const EXPIRED: u32 = 102;
    /// The registry has no such twin.
    pub const UNKNOWN_TWIN: u32 = 103;
    /// The signature is not the source twin's.
    pub const INVALID_SIGNATURE: u32 = 104;
    /// A payload that must be sealed was not.
    pub const NOT_SEALED: u32 = 105;
    /// The sealed payload does not open.
    pub const CANNOT_OPEN: u32 = 106;
    /// The relay refused: the sender sends more than its rate.
    pub const RATE_LIMITED: u32 = 429;
    /// Anything else.
    pub const OTHER: u32 = 500;
    /// No relay of the destination could take it before it expired.
    pub const UNREACHABLE: u32 = 503;
}

/// Most relays a peer connects to.
pub const MAX_RELAYS: usize = 4;
/// Pause before connecting again to a relay that failed.
pub const RECONNECT: Duration = Duration::from_secs(2);
/// A ping after this long without sending.
const IDLE_PING: Duration = Duration::from_secs(20);
/// A new connection after this long without receiving.
const SILENT: Duration = Duration::from_secs(40);
/// Envelopes waiting for a relay.
const OUTBOX: usize = 4096;
/// Envelopes received and not yet read, before the peer stops reading its relays.
const INBOX: usize = 4096;
/// Envelopes written to a relay and not yet confirmed, before a connection stops taking
/// more.
const UNCONFIRMED: usize = 1024;
/// Envelopes remembered against replays.
const REPLAY_WINDOW: usize = 1 << 20;

/// How a peer runs.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub identity: Identity,
    pub twin: u32,
    /// `None`: the twin's default session (as `rmb-peer`'s).
    pub session: Option<String>,
    /// The relays, by name ([`crate::relay::relay_url`]), at most [`MAX_RELAYS`].
    pub relays: Vec<String>,
    /// The node whose twin registry to read (`http://127.0.0.1:8087`).
    pub registry: String,
}

impl PeerConfig {
    /// Twin `twin` with key `identity`, through the relay of the node at `node`, whose
    /// registry it reads too.
    pub fn new(identity: Identity, twin: u32, node: &str) -> Self {
        PeerConfig {
            identity,
            twin,
            session: None,
            relays: vec![node.to_owned()],
            registry: node.to_owned(),
        }
    }
}

/// An envelope to send: [`Peer::send`] stamps, seals and signs it.
#[derive(Debug, Clone)]
pub struct Draft {
    /// Empty: a fresh one.
    pub uid: String,
    pub destination: Address,
    pub kind: Kind,
    pub payload: Vec<u8>,
    /// Seconds it stays valid: 0 for the default (300), at most 1800.
    pub ttl: u32,
    /// The time it was made (seconds since 1970; 0: now). A draft made some time ago keeps
    /// its end: its ttl counts from then.
    pub created: u64,
    pub tags: Option<String>,
    pub schema: Option<String>,
}

impl Draft {
    pub fn request(destination: Address, command: &str, payload: Vec<u8>) -> Self {
        Draft {
            uid: String::new(),
            destination,
            kind: Kind::Request {
                command: command.to_owned(),
            },
            payload,
            ttl: 0,
            created: 0,
            tags: None,
            schema: None,
        }
    }

    /// The answer to request `uid` of `to`.
    pub fn response(to: Address, uid: &str, payload: Vec<u8>) -> Self {
        Draft {
            uid: uid.to_owned(),
            kind: Kind::Response,
            ..Draft::request(to, "", payload)
        }
    }

    /// An error answering request `uid` of `to`.
    pub fn error(to: Address, uid: &str, code: u32, message: &str) -> Self {
        Draft {
            uid: uid.to_owned(),
            kind: Kind::Error {
                code,
                message: message.chars().take(1000).collect(),
            },
            ..Draft::request(to, "", Vec::new())
        }
    }
}

/// Why an envelope could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("twin {0} is not in the registry")]
    UnknownTwin(u32),
    #[error("the envelope expired before it could be sent")]
    Expired,
    #[error("the registry could not be read: {0}")]
    Registry(Error),
    #[error("{0}")]
    Envelope(#[from] EnvelopeError),
    #[error("the peer stopped")]
    Stopped,
}

impl SendError {
    /// The RMB error code of the failure.
    pub fn code(&self) -> u32 {
        match self {
            SendError::UnknownTwin(_) => codes::UNKNOWN_TWIN,
            SendError::Expired => codes::EXPIRED,
            _ => codes::OTHER,
        }
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        Error::Transport(e.to_string())
    }
}

/// An encoded envelope waiting for a relay, and when it expires.
struct Outgoing {
    bytes: Vec<u8>,
    expires: u64,
}

struct Inner {
    identity: Identity,
    me: Address,
    directory: Directory,
    outbox: mpsc::Sender<Outgoing>,
    window: Mutex<ReplayWindow>,
    inbox: mpsc::Sender<Envelope>,
}

/// A running gateway. Cheap to clone; stops when the last clone is dropped.
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
    _stop: Arc<CancelOnDrop>,
}

impl Peer {
    /// Starts the connections to the relays; envelopes received and checked arrive on the
    /// receiver, their payloads opened ([`Payload::Plain`]).
    pub fn start(config: PeerConfig) -> Result<(Peer, mpsc::Receiver<Envelope>), Error> {
        if config.relays.is_empty() || config.relays.len() > MAX_RELAYS {
            return Err(Error::Config(format!(
                "a peer connects to 1 to {MAX_RELAYS} relays"
            )));
        }
        let (outbox, out_rx) = mpsc::channel(OUTBOX);
        let (inbox, in_rx) = mpsc::channel(INBOX);
        let inner = Arc::new(Inner {
            me: Address {
                twin: config.twin,
                session: config.session.clone(),
            },
            identity: config.identity.clone(),
            directory: Directory::new(&config.registry)?,
            outbox,
            window: Mutex::new(ReplayWindow::new(REPLAY_WINDOW)),
            inbox,
        });
        let stop = CancelOnDrop::default();
        let out_rx = Arc::new(tokio::sync::Mutex::new(out_rx));
        for relay in config.relays {
            let who = Who::Twin {
                id: config.twin,
                session: config.session.clone(),
            };
            tokio::spawn(stop.guard(run_relay(inner.clone(), relay, who, out_rx.clone())));
        }
        Ok((
            Peer {
                inner,
                _stop: Arc::new(stop),
            },
            in_rx,
        ))
    }

    /// This peer's address.
    pub fn address(&self) -> &Address {
        &self.inner.me
    }

    /// The registry this peer reads.
    pub fn directory(&self) -> &Directory {
        &self.inner.directory
    }

    /// Seals `draft`'s payload for its destination, signs it and queues it for a relay;
    /// returns its uid.
    pub async fn send(&self, draft: Draft) -> Result<String, SendError> {
        let env = self.inner.seal(draft).await?;
        self.inner.queue(&env).await?;
        Ok(env.uid)
    }
}

impl Inner {
    async fn seal(&self, d: Draft) -> Result<Envelope, SendError> {
        let now = unix_now();
        let created = if d.created == 0 || d.created > now {
            now
        } else {
            d.created
        };
        let ttl = if d.ttl == 0 { DEFAULT_TTL } else { d.ttl }.min(MAX_TTL) as u64;
        let left = (created + ttl).saturating_sub(now);
        if left == 0 {
            return Err(SendError::Expired);
        }
        let uid = if d.uid.is_empty() { new_uid() } else { d.uid };
        let key = self.key_of(d.destination.twin).await?;
        let ad = seal::associated_data(&self.me, &d.destination, &uid);
        let cipher = seal::seal(&d.payload, &self.identity, &key, &ad)?;
        let mut env = Envelope::new(
            &uid,
            self.me.clone(),
            d.destination,
            d.kind,
            Payload::Cipher(cipher),
            now,
            left as u32,
        );
        env.tags = d.tags;
        env.schema = d.schema;
        env.sign(&self.identity)?;
        Ok(env)
    }

    async fn key_of(&self, twin: u32) -> Result<PublicKey, SendError> {
        if twin == self.me.twin {
            return Ok(self.identity.public());
        }
        match self.directory.twin(twin).await {
            Ok(Some(t)) => Ok(t.key),
            Ok(None) => Err(SendError::UnknownTwin(twin)),
            Err(e) => Err(SendError::Registry(e)),
        }
    }

    async fn queue(&self, env: &Envelope) -> Result<(), SendError> {
        let out = Outgoing {
            bytes: env.encode()?,
            expires: env.expires_at(),
        };
        self.outbox.send(out).await.map_err(|_| SendError::Stopped)
    }

    /// Checks an envelope a relay (whose key is `relay`) delivered. `Ok(None)`: dropped
    /// without a word (a replay, or a bad envelope that is no request).
    async fn accept(&self, bytes: &[u8], relay: &PublicKey) -> Option<Envelope> {
        let mut env = match Envelope::decode(bytes) {
            Ok(e) => e,
            // Not an envelope: nothing to answer.
            Err(_) => return None,
        };
        match self.check(&mut env, relay).await {
            Ok(()) => Some(env),
            Err((code, message)) => {
                if matches!(env.kind, Kind::Request { .. }) && code != 0 {
                    let answer = Draft::error(env.source.clone(), &env.uid, code, &message);
                    if let Ok(e) = self.seal(answer).await {
                        let _ = self.queue(&e).await;
                    }
                }
                None
            }
        }
    }

    /// Code 0: drop without answering.
    async fn check(&self, env: &mut Envelope, relay: &PublicKey) -> Result<(), (u32, String)> {
        let now = unix_now();
        if env.destination.twin != self.me.twin {
            return Err((0, "not for this twin".into()));
        }
        let from_relay = env.source.twin == 0;
        let key = if from_relay {
            *relay
        } else {
            self.key_of(env.source.twin)
                .await
                .map_err(|e| (e.code(), e.to_string()))?
        };
        env.verify(&key)
            .map_err(|e| (codes::INVALID_SIGNATURE, e.to_string()))?;
        env.check_time(now)
            .map_err(|e| (codes::EXPIRED, e.to_string()))?;
        if let Ok(mut w) = self.window.lock() {
            w.check(env, now).map_err(|_| (0, "a replay".to_owned()))?;
        }
        match &env.payload {
            Payload::Cipher(c) => {
                let ad = seal::associated_data(&env.source, &env.destination, &env.uid);
                let plain = seal::open(c, &self.identity, &key, &ad)
                    .map_err(|e| (codes::CANNOT_OPEN, e.to_string()))?;
                env.payload = Payload::Plain(plain);
            }
            Payload::Plain(p) if !(from_relay || p.is_empty() && is_ping(&env.kind)) => {
                return Err((
                    codes::NOT_SEALED,
                    "payloads between twins must be sealed".into(),
                ));
            }
            Payload::Plain(_) => {}
        }
        Ok(())
    }
}

fn is_ping(k: &Kind) -> bool {
    matches!(k, Kind::Ping | Kind::Pong)
}

/// A fresh uid: 16 random bytes as a UUID (version 4).
pub fn new_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Keeps one relay connected until the peer stops.
async fn run_relay(
    inner: Arc<Inner>,
    relay: String,
    who: Who,
    outbox: Arc<tokio::sync::Mutex<mpsc::Receiver<Outgoing>>>,
) {
    let mut unconfirmed = VecDeque::new();
    loop {
        if let Ok(conn) = RelayConn::connect(&relay, &inner.identity, who.clone()).await {
            let key = conn.relay_key;
            let (sink, stream) = conn.split();
            serve(&inner, &key, sink, stream, &outbox, &mut unconfirmed).await;
            // What the relay did not confirm goes again, through whichever relay is up.
            for out in unconfirmed.drain(..) {
                if out.expires > unix_now() && inner.outbox.try_send(out).is_err() {
                    break;
                }
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Moves envelopes both ways on one connection until it fails. What it wrote stays in
/// `unconfirmed` until the relay says it stored it (`{"stored": n}`).
async fn serve(
    inner: &Inner,
    relay_key: &PublicKey,
    mut sink: RelaySink,
    mut stream: RelayStream,
    outbox: &tokio::sync::Mutex<mpsc::Receiver<Outgoing>>,
    unconfirmed: &mut VecDeque<Outgoing>,
) {
    let mut last_sent = tokio::time::Instant::now();
    let mut last_heard = tokio::time::Instant::now();
    let (mut written, mut confirmed) = (0u64, 0u64);
    loop {
        let ping_at = last_sent + IDLE_PING;
        let give_up_at = last_heard + SILENT;
        let room = unconfirmed.len() < UNCONFIRMED;
        tokio::select! {
            out = async { outbox.lock().await.recv().await }, if room => {
                let Some(out) = out else { return };
                if out.expires <= unix_now() {
                    continue;
                }
                let sent = sink.send(Frame::Binary(out.bytes.clone().into())).await;
                unconfirmed.push_back(out);
                if sent.is_err() {
                    return;
                }
                written += 1;
                last_sent = tokio::time::Instant::now();
            }
            frame = stream.next() => {
                last_heard = tokio::time::Instant::now();
                match frame {
                    Some(Ok(Frame::Binary(b))) => {
                        if let Some(env) = inner.accept(&b, relay_key).await {
                            if inner.inbox.send(env).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Ok(Frame::Text(t))) => {
                        if let Ok(s) = serde_json::from_str::<RelayStored>(&t) {
                            while confirmed < s.stored.min(written) {
                                unconfirmed.pop_front();
                                confirmed += 1;
                            }
                        }
                    }
                    Some(Ok(Frame::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                }
            }
            _ = tokio::time::sleep_until(ping_at) => {
                if sink.send(Frame::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
            }
            _ = tokio::time::sleep_until(give_up_at) => return,
        }
    }
}

/// Stops spawned tasks when dropped.
mod stopping {
    use std::future::Future;
    use tokio::sync::watch;

    pub struct CancelOnDrop {
        tx: watch::Sender<bool>,
    }

    impl Default for CancelOnDrop {
        fn default() -> Self {
            CancelOnDrop {
                tx: watch::channel(false).0,
            }
        }
    }

    impl CancelOnDrop {
        /// `f`, ended when this is dropped.
        pub fn guard<F: Future<Output = ()> + Send + 'static>(
            &self,
            f: F,
        ) -> impl Future<Output = ()> + Send + 'static {
            let mut rx = self.tx.subscribe();
            async move {
                tokio::select! {
                    _ = f => {}
                    _ = rx.wait_for(|stop| *stop) => {}
                }
            }
        }
    }

    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            let _ = self.tx.send(true);
        }
    }
}
