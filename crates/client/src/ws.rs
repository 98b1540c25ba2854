//! WebSocket sessions (`GET /ws`, see `docs/ws-protocol.md`): channels with presence,
//! the inbox pushed, RPC and client functions.
//!
//! A [`WsSession`] owns one connection. A background task reads it: answers go to the call
//! that waits for them, calls to this session's functions go to the handler given to
//! [`WsSession::serve`] or [`WsSession::expose`], and every other push (channel messages,
//! joins and leaves, inbox deliveries, pushes from backends) is an [`Event`] read with
//! [`WsSession::next_event`]. Read the events: once 10 000 are waiting the task stops
//! reading the connection (answers too) until there is room.
//!
//! ```no_run
//! # async fn f() -> Result<(), trunkline_client::Error> {
//! use trunkline_client::ws::{Event, WsSession};
//! let s = WsSession::connect("http://127.0.0.1:8087", "<token>").await?;
//! s.expose(&["load"], |call| async move {
//!     let _ = call.end(serde_json::json!({"load": 0.4})).await;
//! }).await?;
//! s.subscribe("news", None).await?;
//! while let Some(e) = s.next_event().await {
//!     if let Event::Message { channel, message, .. } = e {
//!         println!("{channel}: {message}");
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::{Error, ErrorCode};

/// Events waiting to be read before the session stops reading its connection.
const EVENTS: usize = 10_000;

/// A push from the node that is not an answer to one of this session's calls.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A message on a channel this session is subscribed to (or follows through `sys:*`).
    Message {
        channel: String,
        message: Value,
        from: Value,
    },
    /// A member joined a presence or system channel.
    Joined { channel: String, member: Member },
    /// A member left a presence or system channel.
    Left { channel: String, member: Member },
    /// A delivery from the subscribed queue: the fields of `/receive`, `receipt` among them.
    Inbox(Value),
    /// A push from a backend to this session (`POST /sessions/{id}/send`).
    Direct { message: Value, from: Value },
    /// A call to a function of this session that has no handler: answer it.
    Call(IncomingCall),
    /// Anything else, as it came.
    Other { service: String, message: Value },
}

/// A member of a presence or system channel.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Member {
    pub session_id: String,
    pub client_id: String,
    #[serde(default)]
    pub info: Value,
}

/// The answer to `subscribe`.
#[derive(Debug, Clone)]
pub struct Subscribed {
    /// Whether this session may publish to the channel.
    pub publish: bool,
    /// The members before this session joined (presence and system channels).
    pub members: Vec<Member>,
}

/// What a call returned: the `end` data and the `next` parts before it.
#[derive(Debug, Clone, PartialEq)]
pub struct CallResult {
    pub data: Value,
    pub parts: Vec<Value>,
}

/// A call to one of this session's functions (RPC or client function). Answer it with
/// [`next`](Self::next) parts, then [`end`](Self::end) or [`exception`](Self::exception);
/// each says whether the caller still waited (`false`: it timed out or went away).
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingCall {
    /// `rpc` or `functions`.
    pub service: String,
    /// The RPC server name (RPC calls only).
    pub server: Option<String>,
    pub id: String,
    pub function: String,
    pub payload: Value,
    /// `{session_id, client_id}` of a calling session, or `{backend: true}`.
    pub from: Value,
    out: Out,
}

impl IncomingCall {
    async fn answer(&self, command: &str, params: Value) -> Result<bool, Error> {
        let v = self.out.request(&self.service, command, params).await?;
        Ok(v["delivered"].as_bool().unwrap_or(false))
    }

    /// A part of the answer; more may follow.
    pub async fn next(&self, data: Value) -> Result<bool, Error> {
        self.answer("next", json!({"id": self.id, "data": data}))
            .await
    }

    /// The answer; the call is over.
    pub async fn end(self, data: Value) -> Result<bool, Error> {
        self.answer("end", json!({"id": self.id, "data": data}))
            .await
    }

    /// The call failed: the caller gets `call_exception` with this code and message.
    pub async fn exception(self, code: &str, message: &str) -> Result<bool, Error> {
        self.answer(
            "exception",
            json!({"id": self.id, "code": code, "message": message}),
        )
        .await
    }
}

type Handler = Arc<dyn Fn(IncomingCall) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What waits for the answer to a call.
struct Waiter {
    done: oneshot::Sender<Result<CallResult, Error>>,
    /// `next` parts of an RPC or client-function call.
    parts: Vec<Value>,
}

#[derive(Default)]
struct Shared {
    waiting: HashMap<u64, Waiter>,
    /// RPC handlers by server name; the client-function handler under `""`.
    handlers: HashMap<(String, String), Handler>,
    /// Why the session ended, once it has.
    closed: Option<String>,
}

/// The writing side, shared by the session and the calls it hands to handlers.
#[derive(Clone)]
struct Out {
    frames: mpsc::Sender<Frame>,
    shared: Arc<Mutex<Shared>>,
    next_id: Arc<AtomicU64>,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Out")
    }
}

impl PartialEq for Out {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

fn closed_error(shared: &Mutex<Shared>) -> Error {
    Error::Closed(
        lock(shared)
            .closed
            .clone()
            .unwrap_or_else(|| "the session ended".into()),
    )
}

impl Out {
    /// Sends a call and waits for its answer (`data` of a `response`).
    async fn request(&self, service: &str, command: &str, params: Value) -> Result<Value, Error> {
        self.exchange(service, command, params)
            .await
            .map(|r| r.data)
    }

    /// Sends a call and waits for its answer, with the `next` parts that came before it.
    async fn exchange(
        &self,
        service: &str,
        command: &str,
        params: Value,
    ) -> Result<CallResult, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, answer) = oneshot::channel();
        {
            let mut s = lock(&self.shared);
            if s.closed.is_some() {
                drop(s);
                return Err(closed_error(&self.shared));
            }
            s.waiting.insert(
                id,
                Waiter {
                    done,
                    parts: Vec::new(),
                },
            );
        }
        let frame = json!({"service": service, "message": {"command": command, "params": params, "callId": id}});
        if self
            .frames
            .send(Frame::Text(frame.to_string().into()))
            .await
            .is_err()
        {
            lock(&self.shared).waiting.remove(&id);
            return Err(closed_error(&self.shared));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(closed_error(&self.shared)))
    }
}

/// One WebSocket session with a node.
pub struct WsSession {
    out: Out,
    /// The reading and writing tasks: dropping the session stops both, which drops the
    /// connection (use [`WsSession::close`] to say goodbye first).
    tasks: [tokio::task::JoinHandle<()>; 2],
    events: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    session_id: String,
    client_id: String,
}

impl WsSession {
    /// Opens a session at `base` (`http://host:port`, the public listener) with a client
    /// token, and waits for its welcome.
    pub async fn connect(base: &str, token: &str) -> Result<Self, Error> {
        let url = format!(
            "{}/ws",
            base.trim_end_matches('/')
                .replacen("http://", "ws://", 1)
                .replacen("https://", "wss://", 1)
        );
        let mut req = url
            .into_client_request()
            .map_err(|e| Error::Config(e.to_string()))?;
        let auth = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::Config("the token is not a valid header value".into()))?;
        req.headers_mut().insert("authorization", auth);
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => {
                    let body = resp.body().as_deref().unwrap_or_default();
                    let detail = serde_json::from_slice::<crate::ErrorBody>(body).ok();
                    Error::Api {
                        status: resp.status().as_u16(),
                        code: detail
                            .as_ref()
                            .map_or("unknown".into(), |d| d.error.code.clone()),
                        message: detail
                            .map_or_else(|| resp.status().to_string(), |d| d.error.message),
                    }
                }
                e => Error::Transport(e.to_string()),
            })?;
        let welcome = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(frame) = ws.next().await {
                if let Frame::Text(t) = frame.map_err(|e| Error::Transport(e.to_string()))? {
                    return serde_json::from_str::<Value>(&t)
                        .map_err(|e| Error::Decode(e.to_string()));
                }
            }
            Err(Error::Closed("closed before the welcome".into()))
        })
        .await
        .map_err(|_| Error::Transport("no welcome within 30 s".into()))??;
        let m = &welcome["message"];
        let (Some("welcome"), Some(session_id)) = (m["type"].as_str(), m["sessionId"].as_str())
        else {
            return Err(Error::Decode(format!("expected a welcome, got {welcome}")));
        };
        let session_id = session_id.to_owned();
        let client_id = m["clientId"].as_str().unwrap_or_default().to_owned();

        let (frames, mut to_send) = mpsc::channel::<Frame>(1024);
        let (events_tx, events) = mpsc::channel(EVENTS);
        let out = Out {
            frames,
            shared: Arc::new(Mutex::new(Shared::default())),
            next_id: Arc::new(AtomicU64::new(1)),
        };
        let (mut sink, mut stream) = ws.split();
        let writer = tokio::spawn(async move {
            while let Some(f) = to_send.recv().await {
                if sink.send(f).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let inbound = out.clone();
        let reader = tokio::spawn(async move {
            let why = loop {
                match stream.next().await {
                    Some(Ok(Frame::Text(t))) => {
                        if let Ok(v) = serde_json::from_str::<Value>(&t) {
                            if let Some(event) = inbound.dispatch(v) {
                                if events_tx.send(event).await.is_err() {
                                    // Nobody reads events any more; answers still flow.
                                }
                            }
                        }
                    }
                    Some(Ok(Frame::Close(c))) => {
                        break c.map_or("closed by the node".into(), |c| {
                            format!("closed by the node: {} {}", u16::from(c.code), c.reason)
                        })
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("connection lost: {e}"),
                    None => break "connection closed".into(),
                }
            };
            let waiting = {
                let mut s = lock(&inbound.shared);
                s.closed = Some(why.clone());
                std::mem::take(&mut s.waiting)
            };
            for (_, w) in waiting {
                let _ = w.done.send(Err(Error::Closed(why.clone())));
            }
        });
        Ok(WsSession {
            tasks: [reader, writer],
            out,
            events: tokio::sync::Mutex::new(events),
            session_id,
            client_id,
        })
    }

    /// Says goodbye (a close frame) and waits, at most 5 s, for the node to close.
    pub async fn close(mut self) {
        if self.out.frames.send(Frame::Close(None)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.tasks[0]).await;
        }
    }

    /// The session id the node gave (`ws-N`): channel tokens are minted for it.
    pub fn id(&self) -> &str {
        &self.session_id
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Why the session ended, once it has.
    pub fn closed(&self) -> Option<String> {
        lock(&self.out.shared).closed.clone()
    }

    /// The next push; `None` once the session has ended and every event was read.
    pub async fn next_event(&self) -> Option<Event> {
        self.events.lock().await.recv().await
    }

    /// Any call: `data` of the answer, or the node's error.
    pub async fn request(
        &self,
        service: &str,
        command: &str,
        params: Value,
    ) -> Result<Value, Error> {
        self.out.request(service, command, params).await
    }

    /// Joins a channel (`token` for `pvt:`, `prs:` and `sys:` channels).
    pub async fn subscribe(&self, channel: &str, token: Option<&str>) -> Result<Subscribed, Error> {
        let v = self
            .request(
                "channel",
                "subscribe",
                json!({"channel": channel, "token": token}),
            )
            .await?;
        let members = serde_json::from_value(v["members"].clone()).unwrap_or_default();
        Ok(Subscribed {
            publish: v["publish"].as_bool().unwrap_or(false),
            members,
        })
    }

    pub async fn unsubscribe(&self, channel: &str) -> Result<(), Error> {
        self.request("channel", "unsubscribe", json!({"channel": channel}))
            .await
            .map(drop)
    }

    /// Publishes to a channel; the number of sessions it was queued for.
    pub async fn publish(
        &self,
        channel: &str,
        message: &Value,
        exclude_self: bool,
    ) -> Result<u64, Error> {
        let v = self
            .request(
                "channel",
                "publish",
                json!({"channel": channel, "message": message, "exclude_self": exclude_self}),
            )
            .await?;
        Ok(v["delivered"].as_u64().unwrap_or(0))
    }

    /// Starts the push of this client's inbox: `window` unsettled at most, each leased for
    /// `lease` seconds. Deliveries arrive as [`Event::Inbox`].
    pub async fn subscribe_inbox(&self, window: u32, lease: u64) -> Result<(), Error> {
        self.request(
            "inbox",
            "subscribe",
            json!({"window": window, "lease": lease}),
        )
        .await
        .map(drop)
    }

    pub async fn ack(&self, receipts: &[String]) -> Result<Value, Error> {
        self.request("inbox", "ack", json!({"receipts": receipts}))
            .await
    }

    pub async fn nack(&self, receipts: &[String], requeue: bool) -> Result<Value, Error> {
        self.request(
            "inbox",
            "nack",
            json!({"receipts": receipts, "requeue": requeue}),
        )
        .await
    }

    /// Serves RPC server `name` with `functions`; `handler` answers each call (it runs in
    /// its own task). `token`: a channel token for `name` with `pub: true`, unless this is
    /// an admin client's session.
    pub async fn serve<F, Fut>(
        &self,
        name: &str,
        functions: &[&str],
        token: Option<&str>,
        handler: F,
    ) -> Result<(), Error>
    where
        F: Fn(IncomingCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.set_handler("rpc", name, handler);
        self.request(
            "rpc",
            "register",
            json!({"name": name, "functions": functions, "token": token}),
        )
        .await
        .map(drop)
    }

    /// Exposes client `functions`, answered by `handler` (each call in its own task).
    pub async fn expose<F, Fut>(&self, functions: &[&str], handler: F) -> Result<(), Error>
    where
        F: Fn(IncomingCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.set_handler("functions", "", handler);
        self.request("functions", "expose", json!({"functions": functions}))
            .await
            .map(drop)
    }

    fn set_handler<F, Fut>(&self, service: &str, name: &str, handler: F)
    where
        F: Fn(IncomingCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let h: Handler = Arc::new(move |call| Box::pin(handler(call)));
        lock(&self.out.shared)
            .handlers
            .insert((service.to_owned(), name.to_owned()), h);
    }

    /// Calls `server.function` (`token` for `pvt:`, `prs:` and `sys:` names).
    pub async fn call_rpc(
        &self,
        server: &str,
        function: &str,
        payload: Value,
        timeout: Duration,
        token: Option<&str>,
    ) -> Result<CallResult, Error> {
        self.call(
            "rpc",
            json!({"server": server, "function": function, "payload": payload,
                   "timeout_ms": timeout.as_millis() as u64, "token": token}),
        )
        .await
    }

    /// Calls a client function of one session.
    pub async fn call_function(
        &self,
        session_id: &str,
        function: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<CallResult, Error> {
        self.call(
            "functions",
            json!({"session_id": session_id, "function": function, "payload": payload,
                   "timeout_ms": timeout.as_millis() as u64}),
        )
        .await
    }

    /// Calls a client function of every other member of a channel; each member's answer
    /// or error (`[{session_id, client_id, info, data | error}]`).
    pub async fn call_channel(
        &self,
        channel: &str,
        function: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<Vec<Value>, Error> {
        let v = self
            .request(
                "functions",
                "call",
                json!({"channel": channel, "function": function, "payload": payload,
                       "timeout_ms": timeout.as_millis() as u64}),
            )
            .await?;
        serde_json::from_value(v).map_err(|e| Error::Decode(e.to_string()))
    }

    async fn call(&self, service: &str, params: Value) -> Result<CallResult, Error> {
        self.out.exchange(service, "call", params).await
    }
}

impl Drop for WsSession {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Out {
    /// Routes one frame from the node; the event for the application, if it is one.
    fn dispatch(&self, v: Value) -> Option<Event> {
        let service = v["service"].as_str().unwrap_or_default().to_owned();
        let m = &v["message"];
        let kind = m["type"].as_str().unwrap_or_default();
        let call_id = m["callId"].as_u64();
        match (kind, call_id) {
            ("response" | "error", Some(id)) => {
                let w = lock(&self.shared).waiting.remove(&id)?;
                let answer = if kind == "response" {
                    Ok(CallResult {
                        data: m["data"].clone(),
                        parts: w.parts,
                    })
                } else {
                    Err(call_error(m))
                };
                let _ = w.done.send(answer);
                None
            }
            ("next", Some(id)) => {
                if let Some(w) = lock(&self.shared).waiting.get_mut(&id) {
                    w.parts.push(m["data"].clone());
                }
                None
            }
            ("call", _) => {
                let call = IncomingCall {
                    service: service.clone(),
                    server: m["server"].as_str().map(str::to_owned),
                    id: m["id"].as_str().unwrap_or_default().to_owned(),
                    function: m["function"].as_str().unwrap_or_default().to_owned(),
                    payload: m["payload"].clone(),
                    from: m["from"].clone(),
                    out: self.clone(),
                };
                let key = (service, call.server.clone().unwrap_or_default());
                let handler = lock(&self.shared).handlers.get(&key).cloned();
                match handler {
                    Some(h) => {
                        tokio::spawn(h(call));
                        None
                    }
                    None => Some(Event::Call(call)),
                }
            }
            _ => Some(event(service, m)),
        }
    }
}

/// The error of a call's `error` answer.
fn call_error(m: &Value) -> Error {
    let code = m["code"].as_str().unwrap_or("unknown").to_owned();
    let message = m["message"].as_str().unwrap_or_default().to_owned();
    if let Some(e) = m.get("exception") {
        return Error::Exception {
            code: e["code"].as_str().unwrap_or_default().to_owned(),
            message: e["message"].as_str().unwrap_or_default().to_owned(),
        };
    }
    Error::Api {
        status: ErrorCode::from_code(&code).map_or(400, ErrorCode::status),
        code,
        message,
    }
}

fn event(service: String, m: &Value) -> Event {
    let channel = m["channel"].as_str().unwrap_or_default().to_owned();
    let member = serde_json::from_value::<Member>(m["member"].clone()).ok();
    match (service.as_str(), m["type"].as_str(), member) {
        ("channel", Some("message"), _) => Event::Message {
            channel,
            message: m["message"].clone(),
            from: m["from"].clone(),
        },
        ("channel", Some("joined"), Some(member)) => Event::Joined { channel, member },
        ("channel", Some("left"), Some(member)) => Event::Left { channel, member },
        ("inbox", Some("message"), _) => Event::Inbox(m.clone()),
        ("session", Some("message"), _) => Event::Direct {
            message: m["message"].clone(),
            from: m["from"].clone(),
        },
        _ => Event::Other {
            service,
            message: m.clone(),
        },
    }
}
