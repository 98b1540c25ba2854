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
//! The server pings every `ping_secs` and closes a session it has heard nothing from
//! (frame or pong) for `idle_timeout_secs`. A session may send `rate_per_sec` messages per
//! second (bursts up to the same number); more get a `rate_limited` error each and are not
//! handled. At most `max_sessions` are open at once; the next upgrade gets 503.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use trunkline_api::ErrorCode;
use trunkline_broker::Principal;

use crate::http::error::ApiError;
use crate::http::extract::bearer_token;
use crate::http::AppState;

/// Close codes of our own (4000–4999 are for applications).
const CLOSE_AUTH: u16 = 4401;
const CLOSE_IDLE: u16 = 4408;
const CLOSE_GOING_AWAY: u16 = 1001;

/// Sessions of the node, for the cap, ids and `/metrics`.
#[derive(Default)]
pub struct Sessions {
    open: AtomicUsize,
    next_id: AtomicU64,
}

impl Sessions {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        Some(Place {
            sessions: self.clone(),
            id: format!("ws-{id}"),
        })
    }
}

struct Place {
    sessions: Arc<Sessions>,
    id: String,
}

impl Drop for Place {
    fn drop(&mut self) {
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
    ws.max_message_size(state.config.ws.max_message_bytes)
        .on_upgrade(move |socket| async move {
            Session::new(state, place, principal).run(socket).await;
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
struct Call {
    service: String,
    command: String,
    params: Value,
    call_id: Value,
}

/// Reads an envelope; the error names what is wrong (and the service and callId, if any).
fn parse(text: &str) -> Result<Call, (Option<String>, Value, String)> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| (None, Value::Null, format!("not JSON: {e}")))?;
    let service = v.get("service").and_then(Value::as_str).map(str::to_owned);
    let message = v.get("message");
    let call_id = message
        .and_then(|m| m.get("callId"))
        .cloned()
        .unwrap_or(Value::Null);
    let Some(service_name) = service.clone() else {
        return Err((
            None,
            call_id,
            "expected an object {\"service\": <name>, \"message\": {...}}".into(),
        ));
    };
    let Some(message) = message.and_then(Value::as_object) else {
        return Err((service, call_id, "`message` must be an object".into()));
    };
    let Some(command) = message.get("command").and_then(Value::as_str) else {
        return Err((
            service,
            call_id,
            "`message.command` must be a string".into(),
        ));
    };
    Ok(Call {
        service: service_name,
        command: command.to_owned(),
        params: message.get("params").cloned().unwrap_or(Value::Null),
        call_id,
    })
}

fn envelope(service: Option<&str>, message: Value) -> String {
    json!({"service": service, "message": message}).to_string()
}

fn error_frame(service: Option<&str>, call_id: &Value, code: ErrorCode, text: &str) -> String {
    envelope(
        service,
        json!({"type": "error", "callId": call_id, "code": code, "message": text}),
    )
}

struct Session {
    state: AppState,
    place: Place,
    principal: Option<Principal>,
    bucket: Bucket,
}

/// What one incoming frame calls for.
enum Next {
    Reply(String),
    Close(u16, String),
    Nothing,
}

impl Session {
    fn new(state: AppState, place: Place, principal: Option<Principal>) -> Self {
        let bucket = Bucket::new(state.config.ws.rate_per_sec);
        Session {
            state,
            place,
            principal,
            bucket,
        }
    }

    async fn run(mut self, socket: WebSocket) {
        let (mut tx, mut rx) = socket.split();
        let ws = self.state.config.ws.clone();
        let idle = Duration::from_secs(ws.idle_timeout_secs.max(1));
        let shutdown = self.state.shutdown.clone();
        let mut last_heard = Instant::now();
        let auth_deadline =
            tokio::time::Instant::now() + Duration::from_secs(ws.auth_timeout_secs.max(1));
        if self.principal.is_some() {
            let _ = tx.send(Message::Text(self.welcome().into())).await;
        }
        let mut ping = tokio::time::interval(Duration::from_secs(ws.ping_secs.max(1)));
        ping.tick().await;
        let close = loop {
            tokio::select! {
                frame = rx.next() => {
                    let Some(Ok(frame)) = frame else { break None };
                    last_heard = Instant::now();
                    let next = match frame {
                        Message::Text(text) => self.on_text(text.as_str()),
                        Message::Binary(_) => Next::Reply(error_frame(None, &Value::Null,
                            ErrorCode::MalformedMessage, "binary frames are not used; send JSON text")),
                        Message::Close(_) => break None,
                        Message::Ping(_) | Message::Pong(_) => Next::Nothing,
                    };
                    match next {
                        Next::Reply(text) => {
                            if tx.send(Message::Text(text.into())).await.is_err() {
                                break None;
                            }
                        }
                        Next::Close(code, why) => break Some((code, why)),
                        Next::Nothing => {}
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() >= idle {
                        break Some((CLOSE_IDLE, format!("nothing heard for {} s", idle.as_secs())));
                    }
                    if tx.send(Message::Ping(Default::default())).await.is_err() {
                        break None;
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
        if let Some((code, reason)) = close {
            tracing::debug!(session = %self.place.id, code, reason = %reason, "closing WebSocket session");
            let _ = tx
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: Utf8Bytes::from(reason),
                })))
                .await;
        }
        let _ = tx.close().await;
    }

    fn welcome(&self) -> String {
        envelope(
            Some("session"),
            json!({"type": "welcome", "sessionId": self.place.id,
                   "clientId": self.principal.as_ref().map(|p| p.client_id.to_string())}),
        )
    }

    fn on_text(&mut self, text: &str) -> Next {
        if !self.bucket.take(Instant::now()) {
            let service = parse(text).ok().map(|c| (c.service, c.call_id));
            let (service, call_id) = service.unwrap_or((String::new(), Value::Null));
            return Next::Reply(error_frame(
                Some(&service).filter(|s| !s.is_empty()).map(String::as_str),
                &call_id,
                ErrorCode::RateLimited,
                &format!(
                    "more than {} messages per second; this one was not handled",
                    self.state.config.ws.rate_per_sec
                ),
            ));
        }
        let call = match parse(text) {
            Ok(c) => c,
            Err((service, call_id, why)) => {
                return Next::Reply(error_frame(
                    service.as_deref(),
                    &call_id,
                    ErrorCode::MalformedMessage,
                    &why,
                ))
            }
        };
        let Some(principal) = self.principal.clone() else {
            return self.authenticate(&call);
        };
        let result = match call.service.as_str() {
            "session" => self.session_service(&call, &principal),
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
            Ok(data) => envelope(
                Some(&call.service),
                json!({"type": "response", "callId": call.call_id, "data": data}),
            ),
            Err((code, why)) => error_frame(Some(&call.service), &call.call_id, code, &why),
        })
    }

    /// The first call of a session that did not authenticate while upgrading.
    fn authenticate(&mut self, call: &Call) -> Next {
        if call.service != "auth" || call.command != "authenticate" {
            return Next::Close(
                CLOSE_AUTH,
                "authenticate first: {\"service\": \"auth\", \"message\": {\"command\": \"authenticate\", \"params\": {\"token\": ...}}}".into(),
            );
        }
        let token = call
            .params
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or("");
        match self.state.principal_of(token) {
            Ok(p) => {
                self.principal = Some(p);
                Next::Reply(self.welcome())
            }
            Err(e) => Next::Close(CLOSE_AUTH, format!("{}: {}", e.code, e.message)),
        }
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
