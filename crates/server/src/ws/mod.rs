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
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trunkline_api::ErrorCode;
use trunkline_broker::{BrokerError, Principal, ReceiveOptions, Settle, WaitHandle};

use trunkline_realtime::names;

use self::frames::{envelope, error_frame, Frame, WsMailbox};
use crate::delivery::message_value;
use crate::error::ApiError;
use crate::extract::{bearer_token, Query};
use crate::state::{now_ms, AppState};

/// Close codes of our own (4000–4999 are for applications).
pub mod command;
pub mod frames;
mod services;

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
}

#[cfg(test)]
mod tests {
    use super::*;

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
