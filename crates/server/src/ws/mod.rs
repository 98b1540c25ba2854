//! WebSocket sessions: `GET /ws` on the public listener (see `docs/ws-protocol.md`).
//!
//! A session is authenticated by a bearer token: the `Authorization` header, a `?token=`
//! query (for browsers that cannot set headers; never logged), or a first message
//! `{"service": "auth", "message": {"command": "authenticate", "params": {"token": …}}}`
//! within `[ws] auth_timeout_secs`. Every frame is a JSON envelope
//! `{"service", "message"}`; a call is `{command, params, callId}` and is answered with
//! `{type: "response", callId, data}` or `{type: "error", callId, code, message}` in the
//! same service. Nothing malformed goes unanswered.
//!
//! Session ids are `ws-` and 128 random bits, so that they are not guessed and do not
//! repeat after a restart (a channel token names one).
//!
//! The server pings every `ping_secs` and closes a session it has heard nothing from
//! (frame or pong) for `idle_timeout_secs`, at that deadline; a write the peer does not take
//! by then ends it too. A session may send `rate_per_sec` messages per second (bursts up to
//! the same number); more get a `rate_limited` error each and are not handled. At most `max_sessions` are open at once; the next upgrade gets 503.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trunkline_api::ErrorCode;
use trunkline_broker::{BrokerError, Principal, ReceiveOptions, Settle, WaitHandle};

use trunkline_realtime::{names, Answer, CallId, Caller, Kind, Mailbox, MemberInfo};

use self::frames::{answer, envelope, error_frame, service_of, Flavor, Frame, WsMailbox};
use crate::delivery::{message_value, readable_queue, MAX_LEASE_SECS};
use crate::error::ApiError;
use crate::extract::{bearer_token, Query};
use crate::live::{self, Reply, Request};
use crate::state::{now_ms, AppState};

/// Close codes of our own (4000–4999 are for applications).
pub mod frames;

const CLOSE_AUTH: u16 = 4401;
const CLOSE_IDLE: u16 = 4408;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_SLOW: u16 = 4429;
const CLOSE_BY_BACKEND: u16 = 4000;
/// Close codes of RFC 6455 for frames the session cannot take.
const CLOSE_PROTOCOL: u16 = 1002;
const CLOSE_BAD_DATA: u16 = 1007;
const CLOSE_TOO_BIG: u16 = 1009;

/// Longest the close handshake may take (the close frame written, the peer's read): the
/// peer may read nothing (the session is closed for that), and its channels were left
/// already.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

/// A session's socket read buffer (it grows for larger frames).
pub(crate) const READ_BUFFER: usize = 4 * 1024;

/// Pushes written to a session's socket with one flush, at most.
const PUSH_BATCH: usize = 64;

/// Channels one session may join at once.
const MAX_JOINED: usize = 1024;

/// RPC server names one session may serve at once.
const MAX_SERVED: usize = 64;

/// Sessions of the node, for the cap, `/metrics` and the backend's reach.
#[derive(Default)]
pub struct Sessions {
    open: AtomicUsize,
    /// Authenticated sessions by id.
    live: std::sync::Mutex<HashMap<String, Reach>>,
}

/// How a backend reaches a session.
#[derive(Clone)]
struct Reach {
    /// The session's client, which the channel tokens minted for it name.
    client_id: Arc<str>,
    mailbox: WsMailbox,
    /// Cancelled to close the session on a backend's request.
    close: CancellationToken,
}

/// What a backend asked of a session that is not there.
#[derive(Debug)]
pub struct NoSession;

impl Sessions {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Reach>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reach(&self, id: &str) -> Result<Reach, NoSession> {
        self.live().get(id).cloned().ok_or(NoSession)
    }

    /// The client of an open, authenticated session.
    pub fn client_of(&self, id: &str) -> Result<Arc<str>, NoSession> {
        self.live()
            .get(id)
            .map(|r| r.client_id.clone())
            .ok_or(NoSession)
    }

    /// Queues a push for one session (a full queue closes it as a slow consumer).
    pub fn send(&self, id: &str, message: &Value) -> Result<(), NoSession> {
        let reach = self.reach(id)?;
        trunkline_realtime::channels::direct(&reach.mailbox, message);
        Ok(())
    }

    /// Closes a session (code 4000).
    pub fn disconnect(&self, id: &str) -> Result<(), NoSession> {
        self.reach(id)?.close.cancel();
        Ok(())
    }

    /// Takes a place, or `None` at the cap. The place is given back when the guard drops.
    fn admit(self: &Arc<Self>, max: usize) -> Option<Place> {
        let mut n = self.open.load(Ordering::Relaxed);
        loop {
            if n >= max {
                return None;
            }
            match self
                .open
                .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        Some(Place {
            sessions: self.clone(),
            id: new_session_id(),
        })
    }
}

/// `ws-` and 128 bits from the OS-seeded CSPRNG in hex: not guessed from another
/// session's id, and not met again after a restart, so a channel token minted for a
/// session is of no use to whoever gets the next session.
fn new_session_id() -> String {
    format!("ws-{:032x}", rand::random::<u128>())
}

struct Place {
    sessions: Arc<Sessions>,
    id: String,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.sessions.live().remove(&self.id);
        self.sessions.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// `GET /ws`: upgrades to a session.
pub async fn upgrade(
    State(state): State<AppState>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    slot: Option<axum::Extension<crate::listener::ConnectionSlot>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::new(
                ErrorCode::UpgradeRequired,
                format!("GET /ws must be a WebSocket upgrade request: {e}"),
            )
            .into_response()
        }
    };
    let principal = match (bearer_token(&headers), q.token.as_deref()) {
        (Some(Ok(token)), _) => match state.principal_of(token) {
            Ok(p) => Some(p),
            Err(e) => return e.into_response(),
        },
        (Some(Err(e)), _) => return e.into_response(),
        (None, Some(token)) => match state.principal_of(token) {
            Ok(p) => Some(p),
            Err(e) => return e.into_response(),
        },
        (None, None) => None,
    };
    let Some(place) = state.sessions.admit(state.config.ws.max_sessions) else {
        return ApiError::new(
            ErrorCode::TooManySessions,
            "the node holds as many WebSocket sessions as it may; retry later",
        )
        .into_response();
    };
    // tungstenite zero-fills its whole read buffer before each read: 128 KiB by default,
    // which cost a third of the CPU of a busy session and most of an idle one's memory.
    // The frame limit too, so that a frame's header announcing more is refused before its
    // payload is buffered (tungstenite's default is 16 MiB per frame).
    ws.max_message_size(state.config.ws.max_message_bytes)
        .max_frame_size(state.config.ws.max_message_bytes)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| async move {
            Session::new(state, place, principal).run(socket).await;
            // The session counted against its address's connections until now.
            drop(slot);
        })
}

/// A token bucket: `rate` per second, bursts of `rate`.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        Bucket {
            rate: f64::from(rate.max(1)),
            tokens: f64::from(rate.max(1)),
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One incoming call, once the envelope has been read.
#[derive(Debug)]
pub struct Call {
    pub service: String,
    pub command: String,
    pub params: Value,
    /// Kept as the raw JSON it came as, to be echoed byte for byte.
    pub call_id: CallId,
}

/// An envelope as it comes, its parts still raw: one that is wrong does not hide the
/// others, so the error answer still names the service and echoes the callId.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    service: Option<&'a RawValue>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
}

/// The `message` of a call.
#[derive(Deserialize)]
struct CallMessage<'a> {
    #[serde(borrow)]
    command: Option<&'a RawValue>,
    params: Option<Value>,
    #[serde(rename = "callId")]
    call_id: CallId,
}

/// Whether raw JSON is an object (serde would read a struct from an array too).
fn is_object(raw: &str) -> bool {
    raw.trim_start().starts_with('{')
}

/// A JSON string's value, or `None` for anything else.
fn string_of(raw: &RawValue) -> Option<String> {
    serde_json::from_str(raw.get()).ok()
}

/// A call that could not be read: the service and callId if they could be, and why.
#[derive(Debug)]
pub struct Unreadable {
    pub service: Option<String>,
    pub call_id: CallId,
    pub why: String,
}

/// Reads an envelope; the error names what is wrong (and the service and callId, if any).
pub fn parse_envelope(text: &str) -> Result<Call, Unreadable> {
    const EXPECTED: &str = "expected an object {\"service\": <name>, \"message\": {...}}";
    let unreadable = |service, call_id, why: &str| Unreadable {
        service,
        call_id,
        why: why.to_owned(),
    };
    let envelope: Envelope = match serde_json::from_str(text) {
        Ok(envelope) if is_object(text) => envelope,
        Ok(_) => return Err(unreadable(None, None, EXPECTED)),
        Err(e) if e.is_syntax() || e.is_eof() => {
            return Err(unreadable(None, None, &format!("not JSON: {e}")))
        }
        Err(e) => return Err(unreadable(None, None, &format!("{EXPECTED}: {e}"))),
    };
    let message = envelope
        .message
        .filter(|m| is_object(m.get()))
        .and_then(|m| serde_json::from_str::<CallMessage>(m.get()).ok());
    let call_id = message.as_ref().and_then(|m| m.call_id.clone());
    // A callId is echoed as it came; one the caller could not read back is not echoed.
    let bad_id = call_id.as_deref().is_some_and(|c| !readable_call_id(c));
    let call_id = call_id.filter(|_| !bad_id);
    let Some(service) = envelope.service.and_then(string_of) else {
        return Err(unreadable(None, call_id, EXPECTED));
    };
    if bad_id {
        return Err(unreadable(
            Some(service),
            None,
            "`message.callId` must be JSON of at most 256 bytes, nested at most 16 deep, that \
             reads back as it is (no lone surrogates, no numbers out of range)",
        ));
    }
    let Some(message) = message else {
        return Err(unreadable(
            Some(service),
            call_id,
            "`message` must be an object",
        ));
    };
    let Some(command) = message.command.and_then(string_of) else {
        return Err(unreadable(
            Some(service),
            call_id,
            "`message.command` must be a string",
        ));
    };
    Ok(Call {
        service,
        command,
        params: message.params.unwrap_or(Value::Null),
        call_id,
    })
}

/// Longest callId, in bytes, and its deepest nesting of arrays and objects.
const MAX_CALL_ID: usize = 256;
const MAX_CALL_ID_DEPTH: usize = 16;

/// Whether a callId, echoed byte for byte inside an answer, is JSON that a caller's
/// parser reads back: not too long nor too deep, no lone surrogate escape, no number out
/// of range.
fn readable_call_id(raw: &RawValue) -> bool {
    let text = raw.get();
    text.len() <= MAX_CALL_ID
        && crate::extract::depth(text.as_bytes()) <= MAX_CALL_ID_DEPTH
        && serde_json::from_str::<Value>(text).is_ok()
}

/// The session's subscription to one of its queues (inbox, dead, or a granted queue).
struct InboxSub {
    queue: String,
    window: usize,
    lease_ms: u64,
    /// Receipts pushed and not settled yet, with when their lease ends.
    in_flight: HashMap<String, Instant>,
    waiter: Option<Arc<dyn WaitHandle>>,
}

impl InboxSub {
    /// Room in the window; deliveries whose lease has ended no longer count.
    fn room(&mut self, now: Instant) -> usize {
        self.in_flight.retain(|_, until| *until > now);
        self.window.saturating_sub(self.in_flight.len())
    }
}

type Sink = SplitSink<WebSocket, Message>;

struct Session {
    state: AppState,
    place: Place,
    principal: Option<Principal>,
    bucket: Bucket,
    inbox: Option<InboxSub>,
    /// Channel frames for this session, and how channels reach it.
    mailbox: WsMailbox,
    pushes: mpsc::Receiver<Frame>,
    /// Channels joined, and whether this session may publish to each.
    joined: HashMap<String, bool>,
    /// Cancelled by a backend's `DELETE /sessions/{id}`.
    close: CancellationToken,
    /// Cancelled when the client is deleted or its secret rotated (a fresh, never
    /// cancelled one until the session is authenticated).
    revoked: CancellationToken,
    /// Whether the session made, served or exposed calls (so its end must be told).
    uses_calls: bool,
    /// RPC server names this session serves.
    serving: std::collections::HashSet<String>,
}

/// What one incoming frame calls for.
enum Next {
    Reply(Frame),
    /// Frames written in this order (the welcome, then the answer to `authenticate`).
    Replies(Vec<Frame>),
    /// Close the session with this code and reason, after writing the answer if any.
    Close(Option<Frame>, u16, String),
    Nothing,
}

/// How a session ends: with a close frame (code and reason), or `None` when the socket is
/// gone.
type Ending = Option<(u16, String)>;

/// Writes, but gives up at `deadline`, the session's idle deadline: a peer that takes
/// nothing for that long is as gone as one that sends nothing, and without a limit the
/// write would wait until TCP gives up (minutes), the session staying in its channels.
/// `Err` with how the session ends when the write failed or stalled.
async fn write_by<E>(
    deadline: tokio::time::Instant,
    idle: Duration,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), Ending> {
    match tokio::time::timeout_at(deadline, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(None),
        Err(_) => Err(Some(stalled(idle))),
    }
}

/// Writes frames with one flush.
async fn write_frames(
    tx: &mut Sink,
    frames: impl IntoIterator<Item = Frame>,
) -> Result<(), axum::Error> {
    for frame in frames {
        tx.feed(Message::Text(frame)).await?;
    }
    tx.flush().await
}

fn stalled(idle: Duration) -> (u16, String) {
    (
        CLOSE_IDLE,
        format!(
            "nothing heard for {} s; the peer reads nothing",
            idle.as_secs()
        ),
    )
}

/// The close code for what reading the socket failed with: RFC 6455's codes for frames
/// the session cannot take (each ends it), `None` when the connection itself is gone.
fn close_for(e: axum::Error) -> Ending {
    use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
    // axum wraps tungstenite's error; `tungstenite` is the version axum is built on.
    let e = match e.into_inner().downcast::<WsError>() {
        Ok(e) => *e,
        Err(e) => {
            tracing::debug!(cause = %e, "WebSocket read failed");
            return None;
        }
    };
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => Some((
            CLOSE_TOO_BIG,
            format!("a message of {size} bytes; at most {max_size}"),
        )),
        WsError::Capacity(c) => Some((CLOSE_TOO_BIG, c.to_string())),
        WsError::Utf8(why) => Some((CLOSE_BAD_DATA, format!("invalid UTF-8: {why}"))),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(p) => Some((CLOSE_PROTOCOL, p.to_string())),
        WsError::AttackAttempt => Some((CLOSE_PROTOCOL, "not a WebSocket frame".into())),
        e => {
            tracing::debug!(cause = %e, "WebSocket read failed");
            None
        }
    }
}

/// A close frame's reason is at most 123 bytes (its payload 125, with the code).
fn close_reason(mut reason: String) -> String {
    const MAX: usize = 123;
    if reason.len() > MAX {
        let mut end = MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

impl Session {
    fn new(state: AppState, place: Place, principal: Option<Principal>) -> Self {
        let bucket = Bucket::new(state.config.ws.rate_per_sec);
        let (mailbox, pushes) = WsMailbox::new();
        Session {
            state,
            place,
            principal,
            bucket,
            inbox: None,
            mailbox,
            pushes,
            joined: HashMap::new(),
            close: CancellationToken::new(),
            revoked: CancellationToken::new(),
            uses_calls: false,
            serving: Default::default(),
        }
    }

    async fn run(mut self, socket: WebSocket) {
        let (mut tx, mut rx) = socket.split();
        let ws = self.state.config.ws.clone();
        let idle = Duration::from_secs(ws.idle_timeout_secs.max(1));
        let shutdown = self.state.shutdown.clone();
        let mut last_heard = tokio::time::Instant::now();
        // Fires at last_heard + idle; if something was heard meanwhile it is set again to
        // the new deadline, so a silent session is closed on time, not at a later ping.
        let idle_timer = tokio::time::sleep_until(last_heard + idle);
        let mut idle_timer = std::pin::pin!(idle_timer);
        let auth_deadline =
            tokio::time::Instant::now() + Duration::from_secs(ws.auth_timeout_secs.max(1));
        if self.principal.is_some() {
            self.register();
            let _ = tx.send(Message::Text(self.welcome())).await;
        }
        let mut ping = tokio::time::interval(Duration::from_secs(ws.ping_secs.max(1)));
        ping.tick().await;
        let close = loop {
            // Push what the window has room for. The wake-up is armed first, so a message
            // that arrives after the fetch is not missed.
            let waiter = self.inbox.as_ref().and_then(|s| s.waiter.clone());
            let notified = waiter.as_ref().map(|w| w.notified());
            let mut notified = std::pin::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            let room = match self.fill(&mut tx, last_heard + idle, idle).await {
                Ok(room) => room,
                Err(ending) => break ending,
            };
            let wait_for_messages = room > 0 && notified.is_some();
            tokio::select! {
                _ = async { if let Some(n) = notified.as_mut().as_pin_mut() { n.await } }, if wait_for_messages => {}
                frame = rx.next() => {
                    let frame = match frame {
                        Some(Ok(frame)) => frame,
                        Some(Err(e)) => break close_for(e),
                        None => break None,
                    };
                    last_heard = tokio::time::Instant::now();
                    let next = match frame {
                        Message::Text(text) => self.on_text(text.as_str()).await,
                        Message::Binary(_) => Next::Reply(error_frame(None, &None,
                            ErrorCode::MalformedMessage, "binary frames are not used; send JSON text")),
                        Message::Close(_) => break None,
                        Message::Ping(_) | Message::Pong(_) => Next::Nothing,
                    };
                    let deadline = last_heard + idle;
                    let written = match next {
                        Next::Reply(text) => write_by(deadline, idle, tx.send(Message::Text(text))).await,
                        Next::Replies(frames) => write_by(deadline, idle, write_frames(&mut tx, frames)).await,
                        Next::Close(answer, code, why) => {
                            if let Some(text) = answer {
                                let _ = write_by(deadline, idle, tx.send(Message::Text(text))).await;
                            }
                            break Some((code, why));
                        }
                        Next::Nothing => Ok(()),
                    };
                    if let Err(ending) = written {
                        break ending;
                    }
                }
                Some(frame) = self.pushes.recv() => {
                    // Write what is queued with one flush.
                    let queued = std::iter::from_fn(|| self.pushes.try_recv().ok());
                    let frames = std::iter::once(frame).chain(queued).take(PUSH_BATCH);
                    if let Err(ending) = write_by(last_heard + idle, idle, write_frames(&mut tx, frames)).await {
                        break ending;
                    }
                }
                _ = self.close.cancelled() => {
                    break Some((CLOSE_BY_BACKEND, "disconnected by a backend".into()));
                }
                _ = self.revoked.cancelled() => {
                    break Some((CLOSE_AUTH, "credentials_revoked: the client was deleted or its secret rotated".into()));
                }
                _ = self.mailbox.kick.cancelled() => {
                    break Some((CLOSE_SLOW, "slow consumer: the session fell too far behind its channels".into()));
                }
                () = idle_timer.as_mut() => {
                    let due = last_heard + idle;
                    if due <= tokio::time::Instant::now() {
                        break Some((CLOSE_IDLE, format!("nothing heard for {} s", idle.as_secs())));
                    }
                    idle_timer.as_mut().reset(due);
                }
                _ = ping.tick() => {
                    let ping = tx.send(Message::Ping(Default::default()));
                    if let Err(ending) = write_by(last_heard + idle, idle, ping).await {
                        break ending;
                    }
                }
                _ = tokio::time::sleep_until(auth_deadline), if self.principal.is_none() => {
                    break Some((CLOSE_AUTH, "no authenticate call in time".into()));
                }
                _ = shutdown.cancelled() => {
                    break Some((CLOSE_GOING_AWAY, "the node is shutting down".into()));
                }
            }
        };
        // Leave first, and be out of the backend's reach: the close handshake may wait for a
        // peer that reads nothing.
        self.place.sessions.live().remove(&self.place.id);
        self.give_back_in_flight();
        if self.uses_calls {
            self.state.calls.session_gone(&self.place.id);
        }
        for channel in std::mem::take(&mut self.joined).into_keys() {
            if channel == names::ALL_SYSTEM {
                self.state.channels.unwatch_system(&self.place.id);
            } else {
                self.state.channels.leave(&channel, &self.place.id);
            }
        }
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
            if let Some((code, reason)) = close {
                tracing::debug!(session = %self.place.id, code, reason = %reason, "closing WebSocket session");
                let _ = tx
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: Utf8Bytes::from(close_reason(reason)),
                    })))
                    .await;
                // Read on until the peer's close: a socket dropped with bytes unread (a
                // pong, say) is reset, and the reset can reach the peer before it has read
                // the close frame, which it would then never see.
                while let Some(Ok(frame)) = rx.next().await {
                    if matches!(frame, Message::Close(_)) {
                        break;
                    }
                }
            }
            let _ = tx.close().await;
        })
        .await;
    }

    /// Fetches and pushes deliveries while the window has room; the room left (0 when
    /// full, or when not subscribed). `Err` when the socket is gone, or the peer took
    /// nothing by `deadline`.
    async fn fill(
        &mut self,
        tx: &mut Sink,
        deadline: tokio::time::Instant,
        idle: Duration,
    ) -> Result<usize, Ending> {
        let (Some(sub), Some(p)) = (self.inbox.as_mut(), self.principal.as_ref()) else {
            return Ok(0);
        };
        let room = sub.room(Instant::now());
        if room == 0 {
            return Ok(0);
        }
        let opts = ReceiveOptions::leased(room, sub.lease_ms);
        let got = match self
            .state
            .broker
            .receive(p, &sub.queue, opts, now_ms())
            .await
        {
            Ok(got) => got,
            // The queue is no longer readable (a grant withdrawn): the subscription ends
            // and the session is told. A revoked client's session is closed elsewhere.
            Err(e @ BrokerError::Forbidden(_)) => {
                let e = ApiError::from(e);
                let frame = envelope(
                    Some("inbox"),
                    json!({"type": "error", "code": e.code, "message": e.message, "queue": sub.queue}),
                );
                self.give_back_in_flight();
                write_by(deadline, idle, tx.send(Message::Text(frame))).await?;
                return Ok(0);
            }
            Err(e) => {
                tracing::warn!(session = %self.place.id, cause = %e, "inbox fetch failed");
                return Ok(room);
            }
        };
        let until = Instant::now() + Duration::from_millis(sub.lease_ms);
        // Every receipt is held before the first write, so that a write that fails or
        // stalls leaves none of them to wait for its lease's end.
        let mut frames = Vec::with_capacity(got.len());
        for d in &got {
            let Some(mut m) = message_value(d) else {
                continue;
            };
            if let Some(r) = &d.receipt {
                sub.in_flight.insert(r.clone(), until);
            }
            if let Some(o) = m.as_object_mut() {
                o.insert("type".into(), json!("message"));
                o.insert("queue".into(), json!(sub.queue));
            }
            frames.push(envelope(Some("inbox"), m));
        }
        if !frames.is_empty() {
            write_by(deadline, idle, write_frames(tx, frames)).await?;
        }
        Ok(if got.len() < room {
            room - got.len()
        } else {
            0
        })
    }

    /// Leased deliveries not settled go back to their queue at once (not at lease end).
    fn give_back_in_flight(&mut self) {
        let (Some(sub), Some(p)) = (self.inbox.take(), self.principal.as_ref()) else {
            return;
        };
        let receipts: Vec<String> = sub.in_flight.into_keys().collect();
        if receipts.is_empty() {
            return;
        }
        let (broker, who) = (self.state.broker.clone(), p.clone());
        tokio::spawn(async move {
            let how = Settle::Nack { requeue: true };
            if let Err(e) = broker.settle(&who, &receipts, how, now_ms()).await {
                tracing::warn!(cause = %e, "could not give back unacknowledged messages; their leases will expire");
            }
        });
    }

    /// Makes the (authenticated) session reachable by backends; `Place` undoes it.
    fn register(&mut self) {
        let Some(principal) = &self.principal else {
            return;
        };
        self.revoked = principal.revocation();
        let reach = Reach {
            client_id: principal.client_id.clone(),
            mailbox: self.mailbox.clone(),
            close: self.close.clone(),
        };
        self.place
            .sessions
            .live()
            .insert(self.place.id.clone(), reach);
    }

    fn welcome(&self) -> Frame {
        envelope(
            Some("session"),
            json!({"type": "welcome", "sessionId": self.place.id,
                   "clientId": self.principal.as_ref().map(|p| p.client_id.to_string())}),
        )
    }

    async fn on_text(&mut self, text: &str) -> Next {
        if !self.bucket.take(Instant::now()) {
            let (service, call_id) = match parse_envelope(text) {
                Ok(c) => (Some(c.service), c.call_id),
                Err(u) => (u.service, u.call_id),
            };
            return Next::Reply(error_frame(
                service.as_deref(),
                &call_id,
                ErrorCode::RateLimited,
                &format!(
                    "more than {} messages per second; this one was not handled",
                    self.state.config.ws.rate_per_sec
                ),
            ));
        }
        let call = match parse_envelope(text) {
            Ok(c) => c,
            Err(u) => {
                return Next::Reply(error_frame(
                    u.service.as_deref(),
                    &u.call_id,
                    ErrorCode::MalformedMessage,
                    &u.why,
                ))
            }
        };
        let Some(principal) = self.principal.clone() else {
            return self.authenticate(&call);
        };
        let result = match call.service.as_str() {
            "session" => self.session_service(&call, &principal).map(Some),
            "inbox" => self.inbox_service(&call, &principal).await.map(Some),
            "channel" => self
                .channel_service(&call, &principal, Flavor::Native)
                .map(Some),
            "pubsub" => return self.pubsub_service(&call, &principal),
            "rpc" => self.rpc_service(&call, &principal),
            "functions" => self.functions_service(&call, &principal),
            "auth" => Err((
                ErrorCode::ProtocolError,
                "this session is already authenticated".into(),
            )),
            other => Err((
                ErrorCode::UnknownService,
                format!("no service `{other}`; see docs/ws-protocol.md"),
            )),
        };
        Next::Reply(match result {
            Ok(None) => return Next::Nothing,
            Ok(Some(data)) => answer(
                Some(&call.service),
                &call.call_id,
                json!({"type": "response", "data": data}),
            ),
            Err((code, why)) => error_frame(Some(&call.service), &call.call_id, code, &why),
        })
    }

    /// The first call of a session that did not authenticate while upgrading. Accepted: the
    /// welcome push, then the answer (`{sessionId, clientId}`, as `whoami`). Refused, or
    /// another call: an error answer, then close 4401.
    fn authenticate(&mut self, call: &Call) -> Next {
        if call.service != "auth" || call.command != "authenticate" {
            let why = "authenticate first: {\"service\": \"auth\", \"message\": {\"command\": \"authenticate\", \"params\": {\"token\": ...}}}";
            let refused = error_frame(
                Some(&call.service),
                &call.call_id,
                ErrorCode::MissingCredentials,
                why,
            );
            return Next::Close(Some(refused), CLOSE_AUTH, why.into());
        }
        let token = call
            .params
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or("");
        match self.state.principal_of(token) {
            Ok(p) => {
                let data = json!({"sessionId": self.place.id, "clientId": &*p.client_id});
                self.principal = Some(p);
                self.register();
                let answered = answer(
                    Some("auth"),
                    &call.call_id,
                    json!({"type": "response", "data": data}),
                );
                Next::Replies(vec![self.welcome(), answered])
            }
            Err(e) => {
                let refused = error_frame(Some("auth"), &call.call_id, e.code, &e.message);
                Next::Close(
                    Some(refused),
                    CLOSE_AUTH,
                    format!("{}: {}", e.code, e.message),
                )
            }
        }
    }

    async fn inbox_service(
        &mut self,
        call: &Call,
        principal: &Principal,
    ) -> Result<Value, (ErrorCode, String)> {
        let bad = |why: String| (ErrorCode::InvalidParams, why);
        let p = &call.params;
        match call.command.as_str() {
            "subscribe" => {
                if self.inbox.is_some() {
                    return Err((
                        ErrorCode::ProtocolError,
                        "already subscribed; unsubscribe first".into(),
                    ));
                }
                let name = match p.get("queue") {
                    None => None,
                    Some(Value::String(q)) => Some(q.as_str()),
                    Some(_) => return Err(bad("queue must be a string".into())),
                };
                let queue = readable_queue(principal, name).map_err(|e| (e.code, e.message))?;
                let max = self.state.broker.config().max_receive as u64;
                let window = p
                    .get("window")
                    .map_or(Some(10), Value::as_u64)
                    .filter(|w| (1..=max).contains(w))
                    .ok_or_else(|| bad(format!("window must be 1 to {max}")))?;
                let lease = p
                    .get("lease")
                    .map_or(Some(30), Value::as_u64)
                    .filter(|l| (1..=MAX_LEASE_SECS).contains(l))
                    .ok_or_else(|| bad(format!("lease must be 1 to {MAX_LEASE_SECS} seconds")))?;
                let waiter = self
                    .state
                    .broker
                    .waiter(&queue)
                    .map(|w| w as Arc<dyn WaitHandle>);
                self.inbox = Some(InboxSub {
                    queue: queue.clone(),
                    window: window as usize,
                    lease_ms: lease * 1000,
                    in_flight: HashMap::new(),
                    waiter,
                });
                Ok(json!({"queue": queue, "window": window, "lease": lease}))
            }
            "unsubscribe" => {
                self.give_back_in_flight();
                Ok(json!({}))
            }
            "ack" | "nack" => {
                let receipts: Vec<String> = p
                    .get("receipts")
                    .and_then(|r| serde_json::from_value(r.clone()).ok())
                    .ok_or_else(|| bad("params.receipts must be an array of receipts".into()))?;
                let how = match (call.command.as_str(), p.get("requeue")) {
                    ("ack", None) => Settle::Ack,
                    ("ack", Some(_)) => return Err(bad("requeue applies to nack only".into())),
                    (_, None) => Settle::Nack { requeue: true },
                    (_, Some(r)) => Settle::Nack {
                        requeue: r
                            .as_bool()
                            .ok_or_else(|| bad("requeue must be true or false".into()))?,
                    },
                };
                if let Some(sub) = self.inbox.as_mut() {
                    for r in &receipts {
                        sub.in_flight.remove(r);
                    }
                }
                let r = self
                    .state
                    .broker
                    .settle(principal, &receipts, how, now_ms())
                    .await
                    .map_err(|e| {
                        let e = ApiError::from(e);
                        (e.code, e.message)
                    })?;
                Ok(json!({"done": r.done, "unknown": r.unknown}))
            }
            other => Err((
                ErrorCode::UnknownCommand,
                format!(
                    "service `inbox` has no command `{other}` (subscribe, unsubscribe, ack, nack)"
                ),
            )),
        }
    }

    /// Checks a channel token for this session, its client and `channel`.
    fn channel_token(
        &self,
        channel: &str,
        token: &str,
    ) -> Result<trunkline_auth::ChannelClaims, (ErrorCode, String)> {
        let now = now_ms() / 1000;
        let claims = trunkline_auth::channel::verify(&self.state.keys.channel_key, token, now)
            .map_err(|e| (ErrorCode::InvalidToken, format!("channel token: {e}")))?;
        let client = self.principal.as_ref().map_or("", |p| &*p.client_id);
        claims
            .check_use(&self.place.id, client, channel)
            .map_err(|e| (ErrorCode::Forbidden, e.to_string()))?;
        Ok(claims)
    }

    fn channel_service(
        &mut self,
        call: &Call,
        principal: &Principal,
        flavor: Flavor,
    ) -> Result<Value, (ErrorCode, String)> {
        let p = &call.params;
        if p.get("channel").and_then(Value::as_str) == Some(names::ALL_SYSTEM) {
            return self.system_watch(call, principal);
        }
        let channel = p
            .get("channel")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                (
                    ErrorCode::InvalidParams,
                    "params.channel must be a string".into(),
                )
            })?
            .to_owned();
        if let Some(why) = names::invalid_name(&channel) {
            return Err((ErrorCode::InvalidParams, why));
        }
        let token = match p.get("token") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(self.channel_token(&channel, t)?),
            Some(_) => {
                return Err((
                    ErrorCode::InvalidParams,
                    "params.token must be a string".into(),
                ))
            }
        };
        match call.command.as_str() {
            "subscribe" => {
                if names::needs_token(&channel) && token.is_none() && !principal.is_backend() {
                    return Err((
                        ErrorCode::Forbidden,
                        format!("`{channel}` needs a channel token (params.token)"),
                    ));
                }
                if self.joined.contains_key(&channel) {
                    return Err((
                        ErrorCode::ProtocolError,
                        format!("already subscribed to `{channel}`"),
                    ));
                }
                if self.joined.len() >= MAX_JOINED {
                    return Err((
                        ErrorCode::TooManySubscriptions,
                        format!("a session joins at most {MAX_JOINED} channels"),
                    ));
                }
                let may_publish =
                    principal.is_backend() || token.as_ref().is_some_and(|c| c.publish);
                let info = MemberInfo {
                    session_id: self.place.id.clone(),
                    client_id: principal.client_id.to_string(),
                    info: token.and_then(|c| c.conn_info).unwrap_or(Value::Null),
                };
                let members =
                    self.state
                        .channels
                        .join(&channel, info, self.mailbox.clone(), flavor);
                self.joined.insert(channel.clone(), may_publish);
                let mut data = json!({"channel": channel, "publish": may_publish});
                if names::has_presence(&channel) {
                    data["members"] = json!(members);
                }
                Ok(data)
            }
            "unsubscribe" => {
                if self.joined.remove(&channel).is_none() {
                    return Err((
                        ErrorCode::ProtocolError,
                        format!("not subscribed to `{channel}`"),
                    ));
                }
                self.state.channels.leave(&channel, &self.place.id);
                Ok(json!({}))
            }
            "publish" => {
                let allowed = principal.is_backend()
                    || token
                        .as_ref()
                        .map(|c| c.publish)
                        .or(self.joined.get(&channel).copied())
                        .unwrap_or(false);
                if !allowed {
                    return Err((
                        ErrorCode::Forbidden,
                        format!("publishing to `{channel}` needs a channel token with pub: true"),
                    ));
                }
                let message = p.get("message").cloned().unwrap_or(Value::Null);
                let exclude_self = p
                    .get("exclude_self")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let from = self.caller(principal);
                let n = self.state.channels.publish(
                    &channel,
                    &message,
                    &from,
                    exclude_self.then_some(self.place.id.as_str()),
                );
                Ok(json!({"delivered": n}))
            }
            other => Err((
                ErrorCode::UnknownCommand,
                format!(
                    "service `channel` has no command `{other}` (subscribe, unsubscribe, publish)"
                ),
            )),
        }
    }

    /// Service `pubsub`, as Snorky's `PubSubService` speaks it, so that Snorky's clients
    /// work unchanged: `subscribe {channel}`, `unsubscribe {channel}`, `publish {channel,
    /// message}` answered with `data: null`, errors worded as Snorky words them, messages
    /// pushed as `{type: "message", channel, message}`. The channels, tokens and publish
    /// rights are those of service `channel` (Snorky's default lets anyone publish; here
    /// end clients need `pub: true`).
    fn pubsub_service(&mut self, call: &Call, principal: &Principal) -> Next {
        let all_system =
            call.params.get("channel").and_then(Value::as_str) == Some(names::ALL_SYSTEM);
        let result = match call.command.as_str() {
            "subscribe" | "unsubscribe" | "publish" if all_system => Err((
                ErrorCode::InvalidParams,
                "`sys:*` is for service `channel`".into(),
            )),
            "subscribe" | "unsubscribe" | "publish" => {
                self.channel_service(call, principal, Flavor::Snorky)
            }
            _ => Err((ErrorCode::UnknownCommand, "Unknown command".into())),
        };
        let message = match result {
            Ok(_) => json!({"type": "response", "data": null}),
            Err((code, why)) => {
                let text = match code {
                    ErrorCode::ProtocolError if why.starts_with("already") => "Already subscribed",
                    ErrorCode::ProtocolError => "Not subscribed",
                    ErrorCode::Forbidden | ErrorCode::InvalidToken => "Not authorized",
                    ErrorCode::UnknownCommand => "Unknown command",
                    _ => "Invalid params",
                };
                json!({"type": "error", "code": code, "message": text, "detail": why})
            }
        };
        Next::Reply(answer(Some("pubsub"), &call.call_id, message))
    }

    /// `sys:*`: an admin session (a trusted backend) follows every `sys:` channel at once.
    fn system_watch(
        &mut self,
        call: &Call,
        principal: &Principal,
    ) -> Result<Value, (ErrorCode, String)> {
        let all = names::ALL_SYSTEM;
        match call.command.as_str() {
            "subscribe" if !principal.is_backend() => Err((
                ErrorCode::Forbidden,
                format!("only admin or backend clients may subscribe to `{all}`"),
            )),
            "subscribe" if self.joined.contains_key(all) => Err((
                ErrorCode::ProtocolError,
                format!("already subscribed to `{all}`"),
            )),
            "subscribe" => {
                let channels = self
                    .state
                    .channels
                    .watch_system(&self.place.id, self.mailbox.clone());
                self.joined.insert(all.to_owned(), false);
                Ok(json!({"channel": all, "channels": channels}))
            }
            "unsubscribe" if self.joined.remove(all).is_some() => {
                self.state.channels.unwatch_system(&self.place.id);
                Ok(json!({}))
            }
            "unsubscribe" => Err((
                ErrorCode::ProtocolError,
                format!("not subscribed to `{all}`"),
            )),
            _ => Err((
                ErrorCode::InvalidParams,
                format!("`{all}` can only be subscribed to, not published to"),
            )),
        }
    }

    /// Who this session is, as a callee sees it.
    fn caller(&self, principal: &Principal) -> Caller {
        Caller::Session {
            session_id: self.place.id.clone(),
            client_id: principal.client_id.to_string(),
        }
    }

    /// Checks that this session may use RPC server `name`: to serve it (admin or backend clients, or a
    /// channel token for `name` with `pub: true`) or to call it (any session for a public
    /// name; admin or backend clients or a token for `name` for `pvt:`, `prs:` and `sys:` names).
    fn rpc_allowed(
        &self,
        name: &str,
        params: &Value,
        principal: &Principal,
        serve: bool,
    ) -> Result<(), (ErrorCode, String)> {
        if let Some(why) = names::invalid_name(name) {
            return Err((ErrorCode::InvalidParams, format!("server name: {why}")));
        }
        if principal.is_backend() || !(serve || names::needs_token(name)) {
            return Ok(());
        }
        let claims = match params.get("token") {
            Some(Value::String(t)) => self.channel_token(name, t)?,
            _ if serve => return Err((ErrorCode::Forbidden, format!(
                "serving `{name}` needs an admin or backend client or a token for `{name}` with pub: true (params.token)"))),
            _ => return Err((ErrorCode::Forbidden, format!("calling `{name}` needs a token for it (params.token)"))),
        };
        if serve && !claims.publish {
            return Err((
                ErrorCode::Forbidden,
                format!("serving `{name}` needs a token with pub: true"),
            ));
        }
        Ok(())
    }

    fn rpc_service(
        &mut self,
        call: &Call,
        principal: &Principal,
    ) -> Result<Option<Value>, (ErrorCode, String)> {
        let p = &call.params;
        match call.command.as_str() {
            "register" => {
                let name = str_param(p, "name")?;
                let functions = functions_param(p)?;
                self.rpc_allowed(name, p, principal, true)?;
                if self.serving.len() >= MAX_SERVED && !self.serving.contains(name) {
                    return Err((
                        ErrorCode::ProtocolError,
                        format!("a session serves at most {MAX_SERVED} RPC names"),
                    ));
                }
                self.serving.insert(name.to_owned());
                self.uses_calls = true;
                self.state
                    .calls
                    .register(name, &self.place.id, &self.mailbox, functions.clone());
                Ok(Some(json!({"name": name, "functions": functions})))
            }
            "unregister" => {
                let name = str_param(p, "name")?;
                self.serving.remove(name);
                if !self.state.calls.unregister(name, &self.place.id) {
                    return Err((
                        ErrorCode::ProtocolError,
                        format!("this session does not serve `{name}`"),
                    ));
                }
                Ok(Some(json!({})))
            }
            "call" => {
                let server = str_param(p, "server")?;
                self.rpc_allowed(server, p, principal, false)?;
                let req = self.request(call, principal)?;
                self.uses_calls = true;
                self.state
                    .calls
                    .call_rpc(server, req)
                    .map_err(|e| (e.code, e.message))?;
                Ok(None)
            }
            "next" | "end" | "exception" => self.answer_call(Kind::Rpc, call),
            other => Err((
                ErrorCode::UnknownCommand,
                format!("service `rpc` has no command `{other}` (register, unregister, call, next, end, exception)"),
            )),
        }
    }

    fn functions_service(
        &mut self,
        call: &Call,
        principal: &Principal,
    ) -> Result<Option<Value>, (ErrorCode, String)> {
        let p = &call.params;
        match call.command.as_str() {
            "expose" => {
                let functions = functions_param(p)?;
                self.uses_calls = true;
                self.state
                    .calls
                    .expose(&self.place.id, &self.mailbox, functions.clone());
                Ok(Some(json!({"functions": functions})))
            }
            "call" => {
                let target = (
                    p.get("session_id").and_then(Value::as_str),
                    p.get("channel").and_then(Value::as_str),
                );
                let req = self.request(call, principal)?;
                self.uses_calls = true;
                match target {
                    (Some(session), None) => {
                        if !self.may_command(principal, |c| {
                            self.state.channels.is_member(c, session)
                        }) {
                            return Err((ErrorCode::Forbidden, format!(
                                "calling session `{session}` needs an admin or backend client, or publish rights on a channel it is a member of")));
                        }
                        self.state
                            .calls
                            .call_function(session, req)
                            .map_err(|e| (e.code, e.message))?;
                    }
                    (None, Some(channel)) => {
                        if !self.may_command(principal, |c| c == channel) {
                            return Err((ErrorCode::Forbidden, format!(
                                "calling the members of `{channel}` needs an admin or backend client, or publish rights on it")));
                        }
                        let mut members = self.state.channels.members(channel);
                        members.retain(|m| m.session_id != self.place.id);
                        let calls = self.state.calls.clone();
                        let mailbox = self.mailbox.clone();
                        let call_id = call.call_id.clone();
                        tokio::spawn(async move {
                            let results = live::call_members(&calls, members, req).await;
                            let frame = answer(
                                Some(service_of(Kind::Function)),
                                &call_id,
                                json!({"type": "response", "data": results}),
                            );
                            mailbox.push(frame);
                        });
                    }
                    _ => {
                        return Err((
                            ErrorCode::InvalidParams,
                            "give params.session_id or params.channel (a string), not both".into(),
                        ))
                    }
                }
                Ok(None)
            }
            "next" | "end" | "exception" => self.answer_call(Kind::Function, call),
            other => Err((
                ErrorCode::UnknownCommand,
                format!("service `functions` has no command `{other}` (expose, call, next, end, exception)"),
            )),
        }
    }

    /// Whether this session may call client functions of the sessions `on` a channel
    /// picks: admin and backend clients may call any; others need publish rights on such a channel.
    fn may_command(&self, principal: &Principal, on: impl Fn(&str) -> bool) -> bool {
        principal.is_backend()
            || self
                .joined
                .iter()
                .any(|(c, may_publish)| *may_publish && on(c))
    }

    /// The call this session asks for, answered to it.
    fn request(&self, call: &Call, principal: &Principal) -> Result<Request, (ErrorCode, String)> {
        let p = &call.params;
        Ok(Request {
            function: str_param(p, "function")?.to_owned(),
            payload: p.get("payload").cloned().unwrap_or(Value::Null),
            from: self.caller(principal),
            timeout: live::timeout_of(p.get("timeout_ms"))
                .map_err(|why| (ErrorCode::InvalidParams, why))?,
            reply: Reply::Session {
                session_id: self.place.id.clone(),
                mailbox: self.mailbox.clone(),
                call_id: call.call_id.clone(),
            },
        })
    }

    /// A callee's `next`, `end` or `exception` for a call it holds: `{delivered}`.
    fn answer_call(&self, kind: Kind, call: &Call) -> Result<Option<Value>, (ErrorCode, String)> {
        let p = &call.params;
        let id = str_param(p, "id")?;
        let data = p.get("data").cloned().unwrap_or(Value::Null);
        let answer = match call.command.as_str() {
            "next" => Answer::Next(data),
            "end" => Answer::End(data),
            _ => Answer::Exception {
                code: str_param(p, "code")?.to_owned(),
                message: p
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            },
        };
        let delivered = self.state.calls.answer(kind, &self.place.id, id, answer);
        Ok(Some(json!({"delivered": delivered})))
    }

    fn session_service(
        &self,
        call: &Call,
        principal: &Principal,
    ) -> Result<Value, (ErrorCode, String)> {
        match call.command.as_str() {
            "whoami" => Ok(json!({"sessionId": self.place.id, "clientId": &*principal.client_id})),
            "ping" => Ok(json!("pong")),
            other => Err((
                ErrorCode::UnknownCommand,
                format!("service `session` has no command `{other}` (whoami, ping)"),
            )),
        }
    }
}

/// A string parameter.
fn str_param<'a>(p: &'a Value, name: &str) -> Result<&'a str, (ErrorCode, String)> {
    p.get(name).and_then(Value::as_str).ok_or_else(|| {
        (
            ErrorCode::InvalidParams,
            format!("params.{name} must be a string"),
        )
    })
}

/// `params.functions`: 1 to 256 function names of 1 to 128 characters.
fn functions_param(p: &Value) -> Result<Vec<String>, (ErrorCode, String)> {
    p.get("functions")
        .and_then(|f| serde_json::from_value::<Vec<String>>(f.clone()).ok())
        .filter(|f| (1..=256).contains(&f.len()) && f.iter().all(|n| (1..=128).contains(&n.len())))
        .ok_or_else(|| {
            (
                ErrorCode::InvalidParams,
                "params.functions must be an array of 1 to 256 names of 1 to 128 characters".into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_is_an_object_and_its_errors_keep_the_service_and_call_id() {
        let call = parse_envelope(
            r#"{"service":"session","message":{"command":"ping","callId":1180591620717411303424}}"#,
        )
        .expect("a call");
        assert_eq!(
            (call.service.as_str(), call.command.as_str()),
            ("session", "ping")
        );
        assert_eq!(
            call.call_id.as_deref().map(RawValue::get),
            Some("1180591620717411303424")
        );
        // serde reads a struct from an array as well; an envelope is an object only.
        for text in [
            r#"["session",{"command":"ping"}]"#,
            r#"{"service":"session","message":["ping",null,1]}"#,
            "null",
            "{nope",
        ] {
            assert!(parse_envelope(text).is_err(), "{text}");
        }
        let Err(u) =
            parse_envelope(r#"{"service":"session","message":{"command":7,"callId":"c"}}"#)
        else {
            panic!("a number is no command");
        };
        assert_eq!(u.service.as_deref(), Some("session"));
        assert_eq!(u.call_id.as_deref().map(RawValue::get), Some(r#""c""#));
        let Err(u) = parse_envelope(r#"{"service":3,"message":{"command":"x","callId":[1]}}"#)
        else {
            panic!("a number is no service");
        };
        assert_eq!(
            (u.service, u.call_id.as_deref().map(RawValue::get)),
            (None, Some("[1]"))
        );
    }

    #[test]
    fn a_close_reason_fits_a_control_frame() {
        assert_eq!(close_reason("short".into()), "short");
        let long = close_reason("é".repeat(100));
        assert!(
            long.len() <= 123 && long.chars().all(|c| c == 'é'),
            "{long}"
        );
    }
}
