//! RPC and client functions: calls to functions that WebSocket sessions serve (see
//! `docs/ws-protocol.md`).
//!
//! - **RPC**: a session registers as server `name` with a set of functions; a call to
//!   `name.function` goes to one of the sessions serving that name that has the function
//!   and room in its queue, in turn (several sessions serving one name share its calls).
//! - **Client functions**: a session exposes functions; a call names the session.
//!
//! Both work the same from there: the callee gets a `call` push with a call id; it may
//! answer with `next` parts, then `end` or `exception`. The caller is a session (parts and
//! the outcome are pushed to it as they come) or a collector (a backend's HTTP request, or
//! one target of a call on a channel's members), which gets the parts and the outcome at
//! the end. A call ends with the callee's `end` or `exception`, with `call_timeout` when its
//! time is up, `callee_gone` when the callee's session ends first, and is refused with
//! `callee_busy` when every callee has `max_pending` calls already, or `no_callee` when no
//! session serves the function. An answer to a call that ended is not delivered (the callee
//! is told `delivered: false`), and a callee is told (`cancelled`) when a call it holds
//! times out or its caller goes away.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use trunkline_api::ErrorCode;

use crate::channels::{self, envelope, CallId, Mailbox, MemberInfo};

/// Time a call may take when the caller does not say.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Longest time a call may be given.
pub const MAX_TIMEOUT_MS: u64 = 300_000;
/// `next` parts a collected call keeps; more are counted but not kept.
const MAX_PARTS: usize = 1024;

/// Which kind of call, and the WebSocket service that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Rpc,
    Function,
}

impl Kind {
    pub fn service(self) -> &'static str {
        match self {
            Kind::Rpc => "rpc",
            Kind::Function => "functions",
        }
    }
}

/// Why a call did not give a result.
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    pub code: ErrorCode,
    pub message: String,
    /// The callee's `{code, message}` when it raised an exception.
    pub exception: Option<Value>,
}

impl CallError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        CallError {
            code,
            message: message.into(),
            exception: None,
        }
    }

    /// As JSON: `{code, message}`, plus `exception` if the callee raised one.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"code": self.code, "message": self.message});
        if let Some(e) = &self.exception {
            v["exception"] = e.clone();
        }
        v
    }
}

/// How a collected call ended: its parts (at most 1024 kept) and its outcome.
#[derive(Debug)]
pub struct Outcome {
    pub parts: Vec<Value>,
    pub result: Result<Value, CallError>,
}

/// Where a call's parts and outcome go.
pub enum Reply {
    /// Pushed to the calling session as they come, with the caller's `callId`.
    Session {
        session_id: String,
        mailbox: Mailbox,
        call_id: CallId,
    },
    /// Collected and handed over at the end.
    Collect(oneshot::Sender<Outcome>),
}

impl Reply {
    /// A collector, and where its outcome arrives.
    pub fn collect() -> (Reply, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        (Reply::Collect(tx), rx)
    }
}

/// What a callee says about a call it holds.
pub enum Answer {
    Next(Value),
    End(Value),
    Exception { code: String, message: String },
}

/// One call to make.
pub struct Request {
    pub function: String,
    pub payload: Value,
    /// Who calls, as the callee sees it.
    pub from: Value,
    pub timeout: Duration,
    pub reply: Reply,
}

struct Pending {
    kind: Kind,
    callee: String,
    reply: Reply,
    parts: Vec<Value>,
    timer: JoinHandle<()>,
}

/// The sessions serving one RPC server name, each with its functions.
#[derive(Default)]
struct Server {
    sessions: Vec<(String, HashSet<String>)>,
    /// Where the next call starts looking, so that calls go round.
    next: usize,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    pending: HashMap<u64, Pending>,
    /// Calls each callee holds now.
    load: HashMap<String, usize>,
    servers: HashMap<String, Server>,
    /// Client functions each session exposes.
    exposed: HashMap<String, HashSet<String>>,
    /// How to reach the sessions that serve or expose functions.
    callees: HashMap<String, Mailbox>,
    /// The pending calls each session takes part in, as callee or as calling session, so
    /// that a session's end finds its calls without looking at every other one.
    involved: HashMap<String, HashSet<u64>>,
}

impl Inner {
    /// The sessions call `p` involves: its callee, and its caller if that is a session.
    fn parties(p: &Pending) -> impl Iterator<Item = &str> {
        let caller = match &p.reply {
            Reply::Session { session_id, .. } => Some(session_id.as_str()),
            Reply::Collect(_) => None,
        };
        std::iter::once(p.callee.as_str()).chain(caller)
    }
}

/// Every call of the node.
pub struct Calls {
    inner: Mutex<Inner>,
    /// Calls one callee may hold at once.
    max_pending: usize,
}

fn push(mailbox: &Mailbox, service: &str, message: Value) {
    mailbox.push(envelope(Some(service), message));
}

impl Calls {
    pub fn new(max_pending: usize) -> Self {
        Calls {
            inner: Mutex::new(Inner::default()),
            max_pending: max_pending.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `session` serves RPC server `name` with `functions` (replacing what it had).
    pub fn register(&self, name: &str, session: &str, mailbox: &Mailbox, functions: Vec<String>) {
        let mut inner = self.lock();
        inner.callees.insert(session.to_owned(), mailbox.clone());
        let server = inner.servers.entry(name.to_owned()).or_default();
        let functions = functions.into_iter().collect();
        match server.sessions.iter_mut().find(|(s, _)| s == session) {
            Some(entry) => entry.1 = functions,
            None => server.sessions.push((session.to_owned(), functions)),
        }
    }

    /// `session` no longer serves `name`; false if it did not.
    pub fn unregister(&self, name: &str, session: &str) -> bool {
        let mut inner = self.lock();
        let Some(server) = inner.servers.get_mut(name) else {
            return false;
        };
        let before = server.sessions.len();
        server.sessions.retain(|(s, _)| s != session);
        let found = server.sessions.len() < before;
        if server.sessions.is_empty() {
            inner.servers.remove(name);
        }
        found
    }

    /// `session` exposes client `functions` (replacing what it had).
    pub fn expose(&self, session: &str, mailbox: &Mailbox, functions: Vec<String>) {
        let mut inner = self.lock();
        inner.callees.insert(session.to_owned(), mailbox.clone());
        inner
            .exposed
            .insert(session.to_owned(), functions.into_iter().collect());
    }

    /// Calls `server.function` on one of the sessions serving it.
    pub fn call_rpc(self: &Arc<Self>, server: &str, req: Request) -> Result<(), CallError> {
        let mut inner = self.lock();
        let max = self.max_pending;
        let Inner { servers, load, .. } = &mut *inner;
        let entry = servers.get_mut(server).ok_or_else(|| {
            CallError::new(ErrorCode::NoCallee, format!("no session serves `{server}`"))
        })?;
        let n = entry.sessions.len();
        let mut serving = 0;
        let mut chosen = None;
        for k in 0..n {
            let i = (entry.next + k) % n;
            let (session, functions) = &entry.sessions[i];
            if !functions.contains(&req.function) {
                continue;
            }
            serving += 1;
            if load.get(session).copied().unwrap_or(0) < max {
                chosen = Some(session.clone());
                entry.next = (i + 1) % n;
                break;
            }
        }
        match chosen {
            Some(callee) => {
                let extra = json!({"server": server});
                self.dispatch(&mut inner, Kind::Rpc, callee, req, extra)
            }
            None if serving == 0 => Err(CallError::new(
                ErrorCode::NoCallee,
                format!(
                    "no session serving `{server}` has the function `{}`",
                    req.function
                ),
            )),
            None => Err(CallError::new(
                ErrorCode::CalleeBusy,
                format!("every session serving `{server}` holds {max} calls already"),
            )),
        }
    }

    /// Calls a client function of one session.
    pub fn call_function(self: &Arc<Self>, session: &str, req: Request) -> Result<(), CallError> {
        let mut inner = self.lock();
        if !inner
            .exposed
            .get(session)
            .is_some_and(|f| f.contains(&req.function))
        {
            return Err(CallError::new(
                ErrorCode::NoCallee,
                format!(
                    "session `{session}` does not expose a function `{}`",
                    req.function
                ),
            ));
        }
        if inner.load.get(session).copied().unwrap_or(0) >= self.max_pending {
            return Err(CallError::new(
                ErrorCode::CalleeBusy,
                format!(
                    "session `{session}` holds {} calls already",
                    self.max_pending
                ),
            ));
        }
        self.dispatch(
            &mut inner,
            Kind::Function,
            session.to_owned(),
            req,
            json!({}),
        )
    }

    /// Gives the call an id, hands it to the callee and starts its clock.
    fn dispatch(
        self: &Arc<Self>,
        inner: &mut Inner,
        kind: Kind,
        callee: String,
        req: Request,
        mut frame: Value,
    ) -> Result<(), CallError> {
        let Some(mailbox) = inner.callees.get(&callee) else {
            return Err(CallError::new(
                ErrorCode::CalleeGone,
                format!("session `{callee}` is gone"),
            ));
        };
        inner.next_id += 1;
        let id = inner.next_id;
        frame["type"] = json!("call");
        frame["id"] = json!(id.to_string());
        frame["function"] = json!(req.function);
        frame["payload"] = req.payload;
        frame["from"] = req.from;
        frame["timeout_ms"] = json!(req.timeout.as_millis() as u64);
        push(mailbox, kind.service(), frame);
        let calls = Arc::downgrade(self);
        let timeout = req.timeout;
        let timer = tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(calls) = calls.upgrade() {
                calls.expire(id, timeout);
            }
        });
        *inner.load.entry(callee.clone()).or_default() += 1;
        let p = Pending {
            kind,
            callee,
            reply: req.reply,
            parts: Vec::new(),
            timer,
        };
        for session in Inner::parties(&p) {
            inner
                .involved
                .entry(session.to_owned())
                .or_default()
                .insert(id);
        }
        inner.pending.insert(id, p);
        Ok(())
    }

    /// A callee's answer to call `id`; false when the call is not (or no longer) one this
    /// session holds, so the answer went nowhere.
    pub fn answer(&self, kind: Kind, session: &str, id: &str, answer: Answer) -> bool {
        let Ok(id) = id.parse::<u64>() else {
            return false;
        };
        let mut inner = self.lock();
        let Some(p) = inner.pending.get_mut(&id) else {
            return false;
        };
        if p.kind != kind || p.callee != session {
            return false;
        }
        let result = match answer {
            Answer::Next(data) => {
                match &p.reply {
                    Reply::Session {
                        mailbox, call_id, ..
                    } => {
                        mailbox.push(channels::answer(
                            Some(kind.service()),
                            call_id,
                            json!({"type": "next", "data": data}),
                        ));
                    }
                    Reply::Collect(_) if p.parts.len() < MAX_PARTS => p.parts.push(data),
                    Reply::Collect(_) => {}
                }
                return true;
            }
            Answer::End(data) => Ok(data),
            Answer::Exception { code, message } => Err(CallError {
                code: ErrorCode::CallException,
                message: format!("the function raised `{code}`: {message}"),
                exception: Some(json!({"code": code, "message": message})),
            }),
        };
        if let Some(p) = take(&mut inner, id) {
            finish(p, result);
        }
        true
    }

    /// Call `id`'s time is up.
    fn expire(&self, id: u64, after: Duration) {
        let mut inner = self.lock();
        let Some(p) = take(&mut inner, id) else {
            return;
        };
        tell_cancelled(&inner, &p, id, "timeout");
        finish(
            p,
            Err(CallError::new(
                ErrorCode::CallTimeout,
                format!("no answer within {} ms", after.as_millis()),
            )),
        );
    }

    /// A session ended: it serves and exposes nothing more, the calls it held end with
    /// `callee_gone`, and the calls it made are dropped (their callees are told).
    pub fn session_gone(&self, session: &str) {
        let mut inner = self.lock();
        inner.callees.remove(session);
        inner.exposed.remove(session);
        inner.servers.retain(|_, s| {
            s.sessions.retain(|(id, _)| id != session);
            !s.sessions.is_empty()
        });
        let ids = inner.involved.remove(session).unwrap_or_default();
        for id in ids {
            let Some(p) = take(&mut inner, id) else {
                continue;
            };
            if p.callee == session {
                finish(
                    p,
                    Err(CallError::new(
                        ErrorCode::CalleeGone,
                        format!("session `{session}` ended before it answered"),
                    )),
                );
            } else {
                tell_cancelled(&inner, &p, id, "caller_gone");
                p.timer.abort();
            }
        }
    }

    /// Calls waiting for an answer now.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

/// Removes call `id`, giving its callee's place back.
fn take(inner: &mut Inner, id: u64) -> Option<Pending> {
    let p = inner.pending.remove(&id)?;
    for session in Inner::parties(&p) {
        if let Some(ids) = inner.involved.get_mut(session) {
            ids.remove(&id);
            if ids.is_empty() {
                inner.involved.remove(session);
            }
        }
    }
    if let Some(n) = inner.load.get_mut(&p.callee) {
        *n -= 1;
        if *n == 0 {
            inner.load.remove(&p.callee);
        }
    }
    Some(p)
}

/// Tells a callee that a call it holds ended without its answer.
fn tell_cancelled(inner: &Inner, p: &Pending, id: u64, reason: &str) {
    if let Some(mailbox) = inner.callees.get(&p.callee) {
        push(
            mailbox,
            p.kind.service(),
            json!({"type": "cancelled", "id": id.to_string(), "reason": reason}),
        );
    }
}

/// Hands a call's outcome to its caller.
fn finish(p: Pending, result: Result<Value, CallError>) {
    p.timer.abort();
    let service = p.kind.service();
    match p.reply {
        Reply::Session {
            mailbox, call_id, ..
        } => {
            let message = match result {
                Ok(data) => json!({"type": "response", "data": data}),
                Err(e) => {
                    let mut m = e.to_json();
                    m["type"] = json!("error");
                    m
                }
            };
            mailbox.push(channels::answer(Some(service), &call_id, message));
        }
        Reply::Collect(done) => {
            let _ = done.send(Outcome {
                parts: p.parts,
                result,
            });
        }
    }
}

/// A call's timeout from its `timeout_ms` (1 to 300 000; 10 000 when absent).
pub fn timeout_of(v: Option<&Value>) -> Result<Duration, String> {
    let ms = match v {
        None | Some(Value::Null) => Some(DEFAULT_TIMEOUT_MS as f64),
        Some(v) => v.as_f64(),
    };
    match ms {
        Some(ms) if (1.0..=MAX_TIMEOUT_MS as f64).contains(&ms) && ms.fract() == 0.0 => {
            Ok(Duration::from_millis(ms as u64))
        }
        _ => Err(format!("timeout_ms must be 1 to {MAX_TIMEOUT_MS}")),
    }
}

/// Waits for a collected call that `started` (or did not).
pub async fn outcome(started: Result<(), CallError>, done: oneshot::Receiver<Outcome>) -> Outcome {
    let result = match started {
        Err(e) => Err(e),
        Ok(()) => match done.await {
            Ok(o) => return o,
            Err(_) => Err(CallError::new(ErrorCode::Internal, "the call was lost")),
        },
    };
    Outcome {
        parts: Vec::new(),
        result,
    }
}

/// Calls a client function on each of `members` at once; each member's answer
/// (`{session_id, client_id, info, data}`) or error (`…, error: {code, message}`), with
/// its `parts` if it sent any. `req.reply` is not used: each call is collected.
pub async fn call_members(
    calls: &Arc<Calls>,
    members: Vec<MemberInfo>,
    req: Request,
) -> Vec<Value> {
    let waits = members.into_iter().map(|m| {
        let (reply, done) = Reply::collect();
        let started = calls.call_function(
            &m.session_id,
            Request {
                function: req.function.clone(),
                payload: req.payload.clone(),
                from: req.from.clone(),
                timeout: req.timeout,
                reply,
            },
        );
        async move {
            let o = outcome(started, done).await;
            let mut entry =
                json!({"session_id": m.session_id, "client_id": m.client_id, "info": m.info});
            match o.result {
                Ok(data) => entry["data"] = data,
                Err(e) => entry["error"] = e.to_json(),
            }
            if !o.parts.is_empty() {
                entry["parts"] = json!(o.parts);
            }
            entry
        }
    });
    futures::future::join_all(waits).await
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn mailbox() -> (Mailbox, mpsc::Receiver<crate::channels::Frame>) {
        let (tx, rx) = mpsc::channel(16);
        let kick = CancellationToken::new();
        (Mailbox { tx, kick }, rx)
    }

    fn request(reply: Reply) -> Request {
        Request {
            function: "f".into(),
            payload: json!({}),
            from: json!({}),
            timeout: Duration::from_secs(60),
            reply,
        }
    }

    /// The calls a session takes part in are found through its own index, and nothing
    /// stays behind in it once the calls end, whichever way they end.
    #[tokio::test]
    async fn a_sessions_end_finds_its_calls_and_leaves_no_trace() {
        let calls = Arc::new(Calls::new(10));
        let (callee, _callee_rx) = mailbox();
        let (caller, _caller_rx) = mailbox();
        calls.expose("a", &callee, vec!["f".into()]);
        calls.expose("c", &callee, vec!["f".into()]);
        // b calls a twice; a backend calls a and c.
        for _ in 0..2 {
            let reply = Reply::Session {
                session_id: "b".into(),
                mailbox: caller.clone(),
                call_id: None,
            };
            calls.call_function("a", request(reply)).expect("call a");
        }
        let (reply, from_a) = Reply::collect();
        calls
            .call_function("a", request(reply))
            .expect("backend call a");
        let (reply, from_c) = Reply::collect();
        calls
            .call_function("c", request(reply))
            .expect("backend call c");
        assert_eq!(calls.pending(), 4);

        // The caller b goes: its two calls are dropped, the backend's stay.
        calls.session_gone("b");
        assert_eq!(calls.pending(), 2);
        // The callee a goes: the backend's call to it ends with callee_gone.
        calls.session_gone("a");
        let outcome = from_a.await.expect("outcome");
        assert_eq!(
            outcome.result.map_err(|e| e.code),
            Err(ErrorCode::CalleeGone)
        );
        // c answers its call.
        let id = calls
            .lock()
            .pending
            .keys()
            .copied()
            .next()
            .expect("c's call");
        assert!(calls.answer(Kind::Function, "c", &id.to_string(), Answer::End(json!(7))));
        assert_eq!(from_c.await.expect("outcome").result.ok(), Some(json!(7)));

        assert_eq!(calls.pending(), 0);
        assert!(calls.lock().involved.is_empty(), "index left behind");
    }
}
