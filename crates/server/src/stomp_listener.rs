//! STOMP over TCP: the accept loop and one driver task per connection.
//!
//! The driver owns the socket and a [`ServerSession`]. It feeds the session what it reads
//! (through the incremental [`Decoder`]) and the time, carries out the session's
//! [`Event`]s against the broker in spawned tasks, and writes what the session hands out.
//! Outcomes come back on two channels: one for operations (always read, so receipts flow)
//! and one for deliveries, read only while the write buffer is small, so a consumer that
//! does not read its socket holds back its own deliveries and nobody else's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use trunkline_api::ErrorCode;
use trunkline_auth::{Claims, Throttle, TokenKey};
use trunkline_broker::{
    Backend, BrokerError, Delivery, Principal, Publish, ReceiveOptions, Sent, Settle, Target,
};
use trunkline_proto::{encode, encode_heartbeat, DecodeError, Decoder, Limits};
use trunkline_stomp::{
    AckMode, Delivered, Destination, Event, Outgoing, PublishItem, ServerConfig, ServerSession,
    StompError,
};

use crate::config::Config;
use crate::error::ApiError;
use crate::federation::{Admitted, Gate};
use crate::listener::PerAddress;
use crate::state::now_ms;

/// Write buffer size past which deliveries wait.
const WRITE_HIGH_WATER: usize = 1 << 20;
/// Room a read gets at least (more for the rest of a large frame).
const READ_CHUNK: usize = 16 << 10;
/// Bodies at least this large are published without a copy.
const ZERO_COPY_BODY: usize = 4 * READ_CHUNK;
/// Messages a live subscription may have waiting before it counts as a slow consumer.
const LIVE_CAPACITY: usize = 1000;

/// What every connection shares.
#[derive(Clone)]
pub struct StompContext {
    pub broker: Arc<dyn Backend>,
    pub token_key: Arc<TokenKey>,
    pub throttle: Arc<Throttle>,
    pub config: Arc<Config>,
    pub connections: Arc<AtomicU64>,
    /// Set for the federation listener: its connections are peer nodes, let in by the
    /// gate (by certificate), and send to this node's inbound exchange only.
    pub peers: Option<Arc<Gate>>,
}

/// Serves STOMP on `listener` (over TLS with `tls`) until `shutdown`, then closes every
/// connection.
pub async fn serve(
    listener: TcpListener,
    ctx: StompContext,
    shutdown: CancellationToken,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let permits = Arc::new(Semaphore::new(ctx.config.stomp.max_connections));
    let name = if ctx.peers.is_some() {
        "federation"
    } else {
        "stomp"
    };
    let per_address = Arc::new(PerAddress::default());
    let per_address_max = Some(ctx.config.stomp.max_connections_per_address);
    let tasks = TaskTracker::new();
    let mut next_id = 0u64;
    // Accept first, then decide: a connection over a cap is told at once (plain TCP) or
    // closed (TLS, before any handshake), rather than left waiting in the kernel's queue
    // while slow clients hold every place.
    while let Some((stream, peer)) = crate::listener::accept_next(&listener, &shutdown, name).await
    {
        let Some(slot) = PerAddress::enter(&per_address, peer.ip(), per_address_max) else {
            tracing::debug!(peer = %peer, "STOMP connection refused: per-address cap");
            refuse(
                stream,
                tls.is_some(),
                "too many connections from your address; retry later",
            );
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(peer = %peer, "STOMP connection refused: listener full");
            refuse(
                stream,
                tls.is_some(),
                "the node holds as many STOMP connections as it may; retry later",
            );
            continue;
        };
        next_id += 1;
        let (ctx, shutdown, tls) = (ctx.clone(), shutdown.clone(), tls.clone());
        let conn_id = next_id;
        tasks.spawn(async move {
            ctx.connections.fetch_add(1, Ordering::Relaxed);
            let span = tracing::debug_span!("stomp", conn_id, peer = %peer, tls = tls.is_some());
            let mut conn = Connection::new(ctx.clone(), conn_id, peer.ip());
            match tls {
                None => conn.run(stream, shutdown).instrument(span).await,
                Some(acceptor) => {
                    let timeout = Duration::from_secs(ctx.config.stomp.connect_timeout_secs);
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            // A peer is the node its certificate names (its chain was
                            // verified in the handshake); a client, its subject.
                            let who = if ctx.peers.is_some() {
                                |c: &rustls::pki_types::CertificateDer<'_>| {
                                    trunkline_federation::peer_node_id(c)
                                }
                            } else {
                                crate::tls::identity
                            };
                            conn.cert_identity = tls_stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(who);
                            conn.run(tls_stream, shutdown).instrument(span).await
                        }
                        Ok(Err(e)) => {
                            tracing::info!(parent: &span, cause = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::info!(parent: &span, "TLS handshake timed out"),
                    }
                }
            }
            ctx.connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            drop(slot);
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// Answers a connection over a cap with `ERROR too_many_connections` when it is plain TCP
/// (the socket's empty send buffer takes it at once) and closes it.
fn refuse(stream: tokio::net::TcpStream, tls: bool, message: &str) {
    if tls {
        return;
    }
    let frame = trunkline_proto::Frame::new(trunkline_proto::Command::Error)
        .header("code", ErrorCode::TooManyConnections.as_str())
        .header("message", message)
        .header("content-type", "text/plain")
        .body(message.as_bytes().to_vec());
    let mut out = BytesMut::new();
    if encode(&frame, &mut out).is_ok() {
        let _ = stream.try_write(&out);
    }
}

/// What feeds one subscription.
struct SubTask {
    destination: Destination,
    ack: AckMode,
    /// Stops its fetch loop (never in the middle of a receive: what a receive took must
    /// reach the session or go back to the queue).
    cancel: CancellationToken,
    /// The forwarder of a live subscription (holds no leases, so it may be aborted).
    live: Option<JoinHandle<()>>,
}

/// An outcome reported back to the driver.
enum Done {
    Op(u64, Result<(), StompError>),
    Deliver(String, Vec<Delivered>),
    Lagged(String),
    /// Ends the connection with this `ERROR` (a subscription's queue became unreadable,
    /// the client was deleted or its secret rotated).
    Fail(StompError),
}

fn stomp_error(code: ErrorCode, message: impl Into<String>) -> StompError {
    StompError::new(code.as_str(), message)
}

/// `/exchange/<name>` (without a routing key) is for peer nodes only.
fn no_exchange(name: &str) -> StompError {
    stomp_error(
        ErrorCode::InvalidDestination,
        format!("/exchange/{name} is for peer nodes on the federation listener; use /topic/<key> or /queue/<name>"),
    )
}

/// What the session hears of finished broker work.
fn outcome<T>(r: Result<T, BrokerError>) -> Result<(), StompError> {
    r.map(|_| ()).map_err(broker_error)
}

/// A broker error as an `ERROR` frame: the same code and message HTTP answers with.
fn broker_error(e: BrokerError) -> StompError {
    let e = ApiError::from(e);
    stomp_error(e.code, e.message)
}

fn decode_error(e: &DecodeError) -> (&'static str, String) {
    let code = match e {
        DecodeError::FrameTooLarge { .. }
        | DecodeError::HeaderBlockTooLarge { .. }
        | DecodeError::TooManyHeaders { .. }
        | DecodeError::BodyTooLarge { .. } => ErrorCode::FrameTooLarge,
        _ => ErrorCode::MalformedFrame,
    };
    (code.as_str(), e.to_string())
}

struct Connection {
    ctx: StompContext,
    session: ServerSession,
    decoder: Decoder,
    principal: Option<Principal>,
    ops_tx: mpsc::UnboundedSender<Done>,
    ops_rx: mpsc::UnboundedReceiver<Done>,
    deliveries_tx: mpsc::Sender<Done>,
    deliveries_rx: mpsc::Receiver<Done>,
    /// Per subscription: the task feeding it (fetch loop or live forwarder) and its queue.
    subscriptions: HashMap<String, SubTask>,
    /// Broker calls under way; awaited before the connection ends.
    inflight: TaskTracker,
    /// The client a verified TLS client certificate names.
    cert_identity: Option<String>,
    /// Ends the connection when the client is deleted or its secret rotated.
    revocation_watch: Option<JoinHandle<()>>,
    /// The peer's address, which failed logins are counted by.
    peer: std::net::IpAddr,
    /// On the federation listener: the peer node this connection was let in as.
    admitted: Option<Admitted>,
}

impl Connection {
    fn new(ctx: StompContext, conn_id: u64, peer: std::net::IpAddr) -> Self {
        let st = &ctx.config.stomp;
        let mut config = ServerConfig {
            heartbeat_send_ms: st.heartbeat_send_ms,
            heartbeat_recv_ms: st.heartbeat_recv_ms,
            connect_timeout_ms: st.connect_timeout_secs * 1000,
            buffer: st.buffer,
            max_prefetch: st.max_prefetch,
            ..ServerConfig::default()
        };
        let mut limits = Limits {
            max_body_bytes: ctx.config.http_limits.max_body_bytes,
            ..Limits::default()
        };
        if ctx.peers.is_some() {
            // As swpt_stomp's server: its buffer, one receipt for what is confirmed
            // together, frames of the size peers send.
            let f = &ctx.config.federation;
            config.buffer = f.buffer;
            config.cumulative_receipts = true;
            limits.max_body_bytes = f.max_frame_bytes;
            limits.max_frame_bytes = f.max_frame_bytes + (16 << 10);
        }
        let mut session = ServerSession::new(config, now_ms());
        session.set_session_id(format!("session-{conn_id}"));
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let (deliveries_tx, deliveries_rx) = mpsc::channel(64);
        Connection {
            ctx,
            session,
            decoder: Decoder::new(limits),
            principal: None,
            ops_tx,
            ops_rx,
            deliveries_tx,
            deliveries_rx,
            subscriptions: HashMap::new(),
            inflight: TaskTracker::new(),
            cert_identity: None,
            revocation_watch: None,
            peer,
            admitted: None,
        }
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        stream: S,
        shutdown: CancellationToken,
    ) {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
        let mut wbuf = BytesMut::with_capacity(16 * 1024);
        let mut partial_since: Option<tokio::time::Instant> = None;
        loop {
            self.drive(&mut wbuf);
            // Frames that arrived while the session could not take them (pipelined after
            // CONNECT, or past a full buffer) are decoded once it can.
            if self.session.wants_read() && !rbuf.is_empty() && self.decode(&mut rbuf) {
                partial_since = None;
                continue;
            }
            if self.session.is_closing() {
                // Flush what is queued (the ERROR or last RECEIPT), then close.
                let _ = tokio::time::timeout(Duration::from_secs(5), wr.write_all(&wbuf)).await;
                let _ = wr.shutdown().await;
                break;
            }
            // A frame that has started must finish within the frame timeout, heart-beats
            // or not: a peer trickling one frame forever holds a connection for nothing.
            // The clock runs only while we wait on the peer for the rest of a frame, and
            // restarts whenever a frame completes.
            if rbuf.is_empty() || !self.session.wants_read() {
                partial_since = None;
            } else if partial_since.is_none() {
                partial_since = Some(tokio::time::Instant::now());
            }
            let frame_timeout = Duration::from_secs(self.ctx.config.stomp.frame_timeout_secs);
            let frame_deadline = partial_since.map(|t| t + frame_timeout);
            let session_deadline = self.session.poll_timeout().map(|t| {
                tokio::time::Instant::now() + Duration::from_millis(t.saturating_sub(now_ms()))
            });
            let timeout = match (session_deadline, frame_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let can_read = self.session.wants_read();
            if can_read {
                // Room for the rest of a large frame at once: grown as it arrives, the
                // buffer would copy what it holds each time.
                let want = self.decoder.frame_len();
                if rbuf.capacity() < want || rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
                    rbuf.reserve(want.saturating_sub(rbuf.len()).max(READ_CHUNK));
                }
            }
            let can_deliver = wbuf.len() < WRITE_HIGH_WATER;
            tokio::select! {
                r = rd.read_buf(&mut rbuf), if can_read => match r {
                    Ok(0) | Err(_) => {
                        // The peer is gone: nothing more will be written either.
                        self.close_now().await;
                        break;
                    }
                    Ok(_) => {
                        if self.decode(&mut rbuf) {
                            partial_since = None;
                        }
                    }
                },
                r = wr.write_buf(&mut wbuf), if !wbuf.is_empty() => {
                    if r.is_err() {
                        self.close_now().await;
                        break;
                    }
                }
                Some(done) = self.ops_rx.recv() => {
                    // Everything finished by now, before anything is written: a run of
                    // operations confirmed together gets one cumulative receipt.
                    self.done(done);
                    while let Ok(done) = self.ops_rx.try_recv() {
                        self.done(done);
                    }
                }
                Some(done) = self.deliveries_rx.recv(), if can_deliver => self.done(done),
                _ = async { match timeout { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                    if frame_deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
                        self.session.decode_failed(
                            ErrorCode::RequestTimeout.as_str(),
                            format!("a frame was not completed within {} s", frame_timeout.as_secs()),
                        );
                    }
                    self.session.handle_timeout(now_ms());
                }
                _ = shutdown.cancelled() => {
                    self.session.decode_failed(ErrorCode::Unavailable.as_str(), "the node is shutting down".into());
                }
            }
        }
        if let Some(w) = self.revocation_watch.take() {
            w.abort();
        }
        self.stop_subscriptions();
        self.give_back_undelivered();
        self.inflight.close();
        self.inflight.wait().await;
    }

    /// Decodes what is buffered while the session takes it; true if anything was handled.
    fn decode(&mut self, rbuf: &mut BytesMut) -> bool {
        let mut handled = false;
        loop {
            match self.decoder.decode(rbuf) {
                Ok(Some(item)) => {
                    handled = true;
                    self.session.handle_item(now_ms(), item);
                    if !self.session.wants_read() {
                        // Leave the rest buffered until the session can take more.
                        return handled;
                    }
                }
                Ok(None) => return handled,
                Err(e) => {
                    let (code, message) = decode_error(&e);
                    self.session.decode_failed(code, message);
                    rbuf.clear();
                    return true;
                }
            }
        }
    }

    /// Runs the session's events and moves its output into `wbuf`.
    fn drive(&mut self, wbuf: &mut BytesMut) {
        while let Some(ev) = self.session.poll_event() {
            self.event(ev);
        }
        let now = now_ms();
        while let Some(out) = self.session.poll_transmit(now) {
            match out {
                Outgoing::HeartBeat => encode_heartbeat(wbuf),
                Outgoing::Frame(f) => {
                    if let Err(e) = encode(&f, wbuf) {
                        tracing::error!(cause = %e, "cannot encode a frame");
                    }
                }
            }
        }
    }

    fn done(&mut self, done: Done) {
        match done {
            Done::Op(op, r) => self.session.complete(op, r),
            Done::Deliver(id, msgs) => self.session.deliver(&id, msgs),
            Done::Lagged(id) => self.session.lagged(&id),
            Done::Fail(e) => self.session.decode_failed(e.code, e.message),
        }
    }

    fn client_id(&self) -> Arc<str> {
        self.principal
            .as_ref()
            .map(|p| p.client_id.clone())
            .unwrap_or_else(|| Arc::from(""))
    }

    /// Who this connection acts for. The session asks for work only once authenticated.
    fn who(&self) -> Result<Principal, StompError> {
        self.principal
            .clone()
            .ok_or_else(|| stomp_error(ErrorCode::MissingCredentials, "not authenticated"))
    }

    /// Checks that this connection may publish `p` (the one rule every protocol applies).
    fn may_publish(&self, p: &Publish) -> Result<(), StompError> {
        self.who()?.check_publish(p).map_err(broker_error)
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Authenticate { login, passcode } => {
                let r = self.authenticate(login, passcode);
                if r.is_ok() {
                    self.watch_revocation();
                }
                self.session.authenticated(now_ms(), r);
            }
            Event::Publish {
                op,
                destination,
                body,
                content_type,
                headers,
            } => {
                let p = self.to_publish(PublishItem {
                    destination,
                    body,
                    content_type,
                    headers,
                });
                let p = match p {
                    Ok(p) => p,
                    Err(e) => return self.session.complete(op, Err(e)),
                };
                if let Err(e) = self.may_publish(&p) {
                    self.session.complete(op, Err(e));
                    return;
                }
                // Started here, in frame order, so that this connection's messages are
                // committed and become visible in the order they were sent. The outcome
                // comes back from the commit thread straight into this connection's queue.
                let tx = self.ops_tx.clone();
                let done = move |r: Result<_, BrokerError>| {
                    let _ = tx.send(Done::Op(op, outcome(r)));
                };
                match self.ctx.broker.publish_then(p, now_ms(), Box::new(done)) {
                    Ok(Sent::Later) => {}
                    Ok(Sent::Now(r)) => self.session.complete(op, outcome(r)),
                    Err(e) => self.session.complete(op, Err(broker_error(e))),
                }
            }
            Event::PublishBatch { op, items } => {
                let ps: Result<Vec<Publish>, StompError> =
                    items.into_iter().map(|i| self.to_publish(i)).collect();
                let ps = match ps {
                    Ok(ps) => ps,
                    Err(e) => return self.session.complete(op, Err(e)),
                };
                if let Err(e) = ps.iter().try_for_each(|p| self.may_publish(p)) {
                    self.session.complete(op, Err(e));
                    return;
                }
                match self.ctx.broker.publish_batch_start(ps, now_ms()) {
                    Ok(ticket) => self.report_when_done(op, ticket),
                    Err(e) => self.session.complete(op, Err(broker_error(e))),
                }
            }
            Event::Subscribe {
                op,
                id,
                destination,
                ack,
            } => {
                let r = self.subscribe(&id, &destination, ack);
                self.session.complete(op, r);
            }
            Event::Fetch { id, max } => self.fetch(id, max),
            Event::Unsubscribe { id, unacked } => {
                if let Some(sub) = self.subscriptions.remove(&id) {
                    stop(sub);
                }
                self.give_back(unacked);
            }
            Event::Settle { op, receipts, ack } => {
                let how = if ack {
                    Settle::Ack
                } else {
                    Settle::Nack { requeue: true }
                };
                let who = match self.who() {
                    Ok(who) => who,
                    Err(e) => return self.session.complete(op, Err(e)),
                };
                let broker = self.ctx.broker.clone();
                self.report_when_done(op, async move {
                    broker.settle(&who, &receipts, how, now_ms()).await
                });
            }
            Event::Close { unacked } => {
                self.stop_subscriptions();
                self.give_back(unacked);
            }
        }
    }

    /// Reports the outcome of broker work for operation `op` to the session when it ends.
    fn report_when_done<T>(
        &self,
        op: u64,
        work: impl std::future::Future<Output = Result<T, BrokerError>> + Send + 'static,
    ) {
        let tx = self.ops_tx.clone();
        self.inflight.spawn(async move {
            let r = outcome(work.await);
            let _ = tx.send(Done::Op(op, r));
        });
    }

    /// A `SEND` as a broker publish. A body that is not JSON keeps its content type (the
    /// HTTP API shows it as a string); JSON bodies are stored as the HTTP API stores them.
    /// A peer's is what the gate makes of it.
    fn to_publish(&self, item: PublishItem) -> Result<Publish, StompError> {
        if let (Some(gate), Some(admitted)) = (&self.ctx.peers, &self.admitted) {
            return gate.inbound(
                admitted,
                &item.destination,
                item.content_type.as_deref(),
                &item.headers,
                &item.body,
                now_ms(),
            );
        }
        let mut p = Publish::new(String::new(), Vec::new(), self.client_id().to_string());
        match item.destination {
            Destination::Topic(t) => p.topic = t,
            Destination::Queue(q) => {
                p.topic = q.clone();
                p.queue = Some(q);
            }
            Destination::Exchange(e) => return Err(no_exchange(&e)),
        }
        let is_json = item
            .content_type
            .as_deref()
            .is_none_or(|c| c.starts_with("application/json"))
            && serde_json::from_slice::<serde::de::IgnoredAny>(&item.body).is_ok();
        p.content_type = if is_json {
            None
        } else {
            Some(
                item.content_type
                    .unwrap_or_else(|| "application/octet-stream".into()),
            )
        };
        // The decoded body shares the connection's read buffer. A small one is copied, so
        // that a queued message does not keep a buffer of other frames alive; a large one
        // is kept as it is: the buffer was made for its frame (see `run`), and copying it
        // would cost more than the little it shares.
        p.body = if item.body.len() >= ZERO_COPY_BODY {
            item.body
        } else {
            Bytes::copy_from_slice(&item.body)
        };
        p.headers = item.headers;
        Ok(p)
    }

    fn authenticate(
        &mut self,
        login: Option<String>,
        passcode: Option<String>,
    ) -> Result<String, StompError> {
        if let Some(gate) = &self.ctx.peers {
            // The certificate is the credential; swpt_stomp's login and passcode are not
            // needed (it sends them only when the peer's stomp.toml asks).
            let Some(id) = self.cert_identity.clone() else {
                return Err(stomp_error(
                    ErrorCode::UnknownPeer,
                    "the certificate names no node",
                ));
            };
            let admitted = gate.admit(&id)?;
            tracing::info!(peer = %id, "federation: peer connected");
            self.principal = Some(admitted.principal.clone());
            self.admitted = Some(admitted);
            return Ok(id);
        }
        let now = now_ms() / 1000;
        if let Some(id) = self.cert_identity.clone() {
            // A verified certificate is the credential; a login, if given, must agree.
            if login.as_deref().is_some_and(|l| !l.is_empty() && l != id) {
                return Err(stomp_error(
                    ErrorCode::Forbidden,
                    format!(
                        "the certificate names `{id}`, not `{}`",
                        login.unwrap_or_default()
                    ),
                ));
            }
            let principal = self.ctx.broker.principal(&id).ok_or_else(|| {
                stomp_error(
                    ErrorCode::UnknownClient,
                    format!("the certificate names `{id}`, which is not a client"),
                )
            })?;
            self.principal = Some(principal);
            return Ok(id);
        }
        let Some(passcode) = passcode else {
            return Err(stomp_error(
                ErrorCode::MissingCredentials,
                "CONNECT needs login and passcode (client id and secret, or a token as passcode)",
            ));
        };
        let principal = if passcode.starts_with("tl1.") {
            let claims: Claims =
                self.ctx
                    .token_key
                    .verify(&passcode, now)
                    .map_err(|e| match e {
                        trunkline_auth::TokenError::Expired { .. } => {
                            stomp_error(ErrorCode::TokenExpired, "the token has expired")
                        }
                        _ => stomp_error(ErrorCode::InvalidToken, "the token is not valid"),
                    })?;
            if login
                .as_deref()
                .is_some_and(|l| !l.is_empty() && l != claims.sub)
            {
                return Err(stomp_error(
                    ErrorCode::InvalidToken,
                    "the token belongs to another client",
                ));
            }
            self.ctx
                .broker
                .check_credential(&claims.sub, &claims.cid)
                .ok_or_else(|| {
                    stomp_error(
                        ErrorCode::InvalidToken,
                        "the token's client was deleted or its secret rotated",
                    )
                })?
        } else {
            let login = login.unwrap_or_default();
            if let Err(wait) = self.ctx.throttle.check(self.peer, &login, now) {
                return Err(stomp_error(
                    ErrorCode::Throttled,
                    format!("too many failed attempts; retry in {wait} s"),
                ));
            }
            match self.ctx.broker.authenticate(&login, &passcode) {
                Some((p, _)) => {
                    self.ctx.throttle.success(self.peer, &login);
                    p
                }
                None => {
                    self.ctx.throttle.failure(self.peer, &login, now);
                    tracing::info!(client_id = %login, "STOMP login refused");
                    return Err(stomp_error(
                        ErrorCode::InvalidCredentials,
                        "unknown client or wrong secret",
                    ));
                }
            }
        };
        let id = principal.client_id.to_string();
        self.principal = Some(principal);
        Ok(id)
    }

    fn subscribe(
        &mut self,
        id: &str,
        destination: &Destination,
        ack: AckMode,
    ) -> Result<(), StompError> {
        let who = self.who()?;
        match destination {
            Destination::Queue(q) => {
                who.check_read(Target::Queue(q)).map_err(broker_error)?;
                let sub = SubTask {
                    destination: destination.clone(),
                    ack,
                    cancel: CancellationToken::new(),
                    live: None,
                };
                self.subscriptions.insert(id.to_owned(), sub);
            }
            Destination::Exchange(e) => return Err(no_exchange(e)),
            Destination::Topic(pattern) => {
                let mut live = self
                    .ctx
                    .broker
                    .subscribe_live(Some(&who), pattern, LIVE_CAPACITY)
                    .map_err(broker_error)?;
                let (tx, sub_id) = (self.deliveries_tx.clone(), id.to_owned());
                let task = tokio::spawn(async move {
                    while let Some(m) = live.recv().await {
                        if live.lagged() {
                            let _ = tx.send(Done::Lagged(sub_id.clone())).await;
                            return;
                        }
                        let mut batch = vec![m];
                        while batch.len() < 64 {
                            match live.try_recv() {
                                Some(m) => batch.push(m),
                                None => break,
                            }
                        }
                        let msgs = batch
                            .into_iter()
                            .map(|m| {
                                delivered(
                                    m.id,
                                    &m.data,
                                    format!("/topic/{}", m.data.topic),
                                    false,
                                    None,
                                )
                            })
                            .collect();
                        if tx.send(Done::Deliver(sub_id.clone(), msgs)).await.is_err() {
                            return;
                        }
                    }
                });
                let sub = SubTask {
                    destination: destination.clone(),
                    ack,
                    cancel: CancellationToken::new(),
                    live: Some(task),
                };
                self.subscriptions.insert(id.to_owned(), sub);
            }
        }
        Ok(())
    }

    fn fetch(&mut self, id: String, max: usize) {
        let Ok(who) = self.who() else { return };
        let lease_ms = self.ctx.config.stomp.lease_secs * 1000;
        let Some(SubTask {
            destination: Destination::Queue(queue),
            ack,
            cancel,
            ..
        }) = self.subscriptions.get(&id)
        else {
            return;
        };
        let cancel = cancel.clone();
        let opts = match ack {
            AckMode::Auto => ReceiveOptions::auto(max),
            _ => ReceiveOptions::leased(max, lease_ms),
        };
        let (broker, tx, queue) = (
            self.ctx.broker.clone(),
            self.deliveries_tx.clone(),
            queue.clone(),
        );
        let sub_id = id.clone();
        self.inflight.spawn(async move {
            let got = match broker
                .receive_wait(&who, &queue, opts, None, &cancel, &now_ms)
                .await
            {
                Ok(got) => got,
                // No longer allowed (a grant withdrawn, the client deleted or its
                // secret rotated): the connection ends with the reason.
                Err(e @ (BrokerError::Forbidden(_) | BrokerError::Revoked(_))) => {
                    let _ = tx.send(Done::Fail(broker_error(e))).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(cause = %e, queue = %queue, "fetch failed");
                    return;
                }
            };
            if got.is_empty() {
                return;
            }
            let dest = format!("/queue/{queue}");
            let msgs: Vec<Delivered> = got.into_iter().map(|d| from_delivery(d, &dest)).collect();
            if let Err(mpsc::error::SendError(Done::Deliver(_, msgs))) =
                tx.send(Done::Deliver(sub_id, msgs)).await
            {
                // The connection is gone: what was leased for it goes back now.
                let receipts: Vec<String> = msgs.into_iter().filter_map(|m| m.receipt).collect();
                let _ = broker
                    .settle(&who, &receipts, Settle::Nack { requeue: true }, now_ms())
                    .await;
            }
        });
    }

    /// Ends the connection with an `ERROR credentials_revoked` once its client is deleted or
    /// its secret rotated: what it holds goes back, its subscriptions end.
    fn watch_revocation(&mut self) {
        let Some(token) = self.principal.as_ref().map(Principal::revocation) else {
            return;
        };
        let tx = self.ops_tx.clone();
        let peer = self.admitted.is_some();
        self.revocation_watch = Some(tokio::spawn(async move {
            token.cancelled().await;
            let _ = tx.send(Done::Fail(stomp_error(
                ErrorCode::CredentialsRevoked,
                if peer {
                    "the peer was deactivated or removed from the node database, or its data changed"
                } else {
                    "the client was deleted or its secret rotated; connect again with current credentials"
                },
            )));
        }));
    }

    /// Gives unacknowledged deliveries back to their queues.
    fn give_back(&mut self, receipts: Vec<String>) {
        if receipts.is_empty() {
            return;
        }
        let Ok(who) = self.who() else { return };
        let broker = self.ctx.broker.clone();
        self.inflight.spawn(async move {
            if let Err(e) = broker.settle(&who, &receipts, Settle::Nack { requeue: true }, now_ms()).await {
                tracing::warn!(cause = %e, "could not give back unacknowledged messages; their leases will expire");
            }
        });
    }

    fn stop_subscriptions(&mut self) {
        for (_, sub) in self.subscriptions.drain() {
            stop(sub);
        }
    }

    /// At the end of the connection: deliveries that never reached the session go back.
    fn give_back_undelivered(&mut self) {
        self.deliveries_rx.close();
        let mut receipts = Vec::new();
        while let Ok(done) = self.deliveries_rx.try_recv() {
            if let Done::Deliver(_, msgs) = done {
                receipts.extend(msgs.into_iter().filter_map(|m| m.receipt));
            }
        }
        self.give_back(receipts);
    }

    /// The peer went away: give back what it held.
    async fn close_now(&mut self) {
        self.session
            .decode_failed(ErrorCode::Unavailable.as_str(), "connection closed".into());
        while let Some(ev) = self.session.poll_event() {
            self.event(ev);
        }
    }
}

fn stop(sub: SubTask) {
    sub.cancel.cancel();
    if let Some(t) = sub.live {
        t.abort();
    }
}

fn delivered(
    id: u64,
    data: &Arc<trunkline_store::StoredMessage>,
    destination: String,
    redelivered: bool,
    receipt: Option<String>,
) -> Delivered {
    // The server's own headers first: with repeated headers the first one counts.
    let mut headers = Vec::with_capacity(2 + data.headers.len());
    headers.push(("topic".into(), data.topic.clone()));
    headers.push(("sender".into(), data.sender.clone()));
    headers.extend(
        data.headers
            .iter()
            .map(|(k, v)| (k.clone().into(), v.clone())),
    );
    Delivered {
        message_id: id,
        destination,
        // Shared with the stored message, not copied.
        body: data.body.clone(),
        content_type: data.content_type.clone(),
        headers,
        redelivered,
        receipt,
    }
}

fn from_delivery(d: Delivery, destination: &str) -> Delivered {
    let redelivered = d.redelivered();
    delivered(
        d.id,
        &d.data,
        destination.to_owned(),
        redelivered,
        d.receipt,
    )
}
