//! RPC and client functions: calls to functions that sessions serve.
//!
//! - **RPC**: a session registers as server `name` with a set of functions; a call to
//!   `name.function` goes to one of the sessions serving that name that has the function
//!   and room for it, in turn (several sessions serving one name share its calls).
//! - **Client functions**: a session exposes functions; a call names the session.
//!
//! Both work the same from there: the callee is told [`Event::Call`] with a call id; it may
//! answer with `next` parts, then `end` or `exception`. The caller is a session (parts and
//! the outcome are pushed to it as they come) or a collector (a backend's request, or one
//! target of a call on a channel's members), which gets the parts and the outcome at the
//! end. A call ends with the callee's `end` or `exception`; with `call_timeout` once
//! [`Calls::expire`] is called at or after its deadline; with `callee_gone` when the
//! callee's session ends first. It is refused with `callee_busy` when every callee holds
//! `max_pending` calls already, or `no_callee` when no session serves the function. An
//! answer to a call that ended goes nowhere (`answer` says false), and a callee is told
//! ([`Event::Cancelled`]) when a call it holds times out or its caller goes away.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use trunkline_api::ErrorCode;

use crate::{tell, CallError, CallId, Caller, Event, Kind, Mailbox};

/// `next` parts a collected call keeps; more are counted but not kept.
pub const MAX_PARTS: usize = 1024;

/// How a collected call ended: its parts (at most [`MAX_PARTS`] kept) and its outcome.
#[derive(Debug)]
pub struct Outcome {
    pub parts: Vec<Value>,
    pub result: Result<Value, CallError>,
}

/// Takes a collected call's outcome; called once, without the engine's lock held.
pub type Collector = Box<dyn FnOnce(Outcome) + Send>;

/// Where a call's parts and outcome go.
pub enum Reply<M> {
    /// Pushed to the calling session as they come, with the caller's `callId`.
    Session {
        session_id: String,
        mailbox: M,
        call_id: CallId,
    },
    /// Collected and handed over at the end.
    Collect(Collector),
    /// Handed on as they come (to a caller on another node, `caller` there: its calls
    /// end when [`Calls::session_gone`] is told `caller`).
    Stream {
        caller: String,
        part: Box<dyn Fn(Value) + Send>,
        end: Box<dyn FnOnce(Result<Value, CallError>) + Send>,
    },
}

/// What a callee says about a call it holds.
#[derive(Debug)]
pub enum Answer {
    Next(Value),
    End(Value),
    Exception {
        code: String,
        message: String,
    },
    /// The call failed where it was served (on another node).
    Failed(CallError),
}

/// One call to make.
pub struct Request<M> {
    pub function: String,
    pub payload: Value,
    /// Who calls, as the callee sees it.
    pub from: Caller,
    pub timeout: Duration,
    pub reply: Reply<M>,
}

struct Pending<M> {
    kind: Kind,
    callee: String,
    reply: Reply<M>,
    parts: Vec<Value>,
    timeout: Duration,
    deadline: Instant,
}

impl<M> Pending<M> {
    /// The sessions this call involves: its callee, and its caller if that is a session.
    fn parties(&self) -> impl Iterator<Item = &str> {
        let caller = match &self.reply {
            Reply::Session { session_id, .. } => Some(session_id.as_str()),
            Reply::Stream { caller, .. } => Some(caller.as_str()),
            Reply::Collect(_) => None,
        };
        std::iter::once(self.callee.as_str()).chain(caller)
    }
}

/// The sessions serving one RPC server name, each with its functions.
struct Server {
    sessions: Vec<(String, HashSet<String>)>,
    /// Where the next call starts looking, so that calls go round.
    next: usize,
}

struct Inner<M> {
    next_id: u64,
    pending: HashMap<u64, Pending<M>>,
    /// Pending calls by deadline.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Calls each callee holds now.
    load: HashMap<String, usize>,
    servers: HashMap<String, Server>,
    /// Client functions each session exposes.
    exposed: HashMap<String, HashSet<String>>,
    /// How to reach the sessions that serve or expose functions.
    callees: HashMap<String, M>,
    /// The pending calls each session takes part in, as callee or as calling session, so
    /// that a session's end finds its calls without looking at every other one.
    involved: HashMap<String, BTreeSet<u64>>,
}

/// Every call of the node.
pub struct Calls<M> {
    inner: Mutex<Inner<M>>,
    /// Calls one callee may hold at once.
    max_pending: usize,
}

impl<M: Mailbox> Calls<M> {
    pub fn new(max_pending: usize) -> Self {
        Calls {
            inner: Mutex::new(Inner {
                next_id: 0,
                pending: HashMap::new(),
                deadlines: BTreeSet::new(),
                load: HashMap::new(),
                servers: HashMap::new(),
                exposed: HashMap::new(),
                callees: HashMap::new(),
                involved: HashMap::new(),
            }),
            max_pending: max_pending.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<M>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `session` serves RPC server `name` with `functions` (replacing what it had).
    pub fn register(&self, name: &str, session: &str, mailbox: &M, functions: Vec<String>) {
        let mut inner = self.lock();
        inner.callees.insert(session.to_owned(), mailbox.clone());
        let server = inner
            .servers
            .entry(name.to_owned())
            .or_insert_with(|| Server {
                sessions: Vec::new(),
                next: 0,
            });
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
    pub fn expose(&self, session: &str, mailbox: &M, functions: Vec<String>) {
        let mut inner = self.lock();
        inner.callees.insert(session.to_owned(), mailbox.clone());
        inner
            .exposed
            .insert(session.to_owned(), functions.into_iter().collect());
    }

    /// Calls `server.function` on one of the sessions serving it, at `now`.
    pub fn call_rpc(&self, now: Instant, server: &str, req: Request<M>) -> Result<(), CallError> {
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
            Some(callee) => dispatch(&mut inner, now, Kind::Rpc, callee, Some(server), req),
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

    /// Calls a client function of one session, at `now`.
    pub fn call_function(
        &self,
        now: Instant,
        session: &str,
        req: Request<M>,
    ) -> Result<(), CallError> {
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
        dispatch(
            &mut inner,
            now,
            Kind::Function,
            session.to_owned(),
            None,
            req,
        )
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
                        tell(
                            mailbox,
                            &Event::Part {
                                kind,
                                call_id,
                                data: &data,
                            },
                        );
                    }
                    Reply::Stream { part, .. } => part(data),
                    Reply::Collect(_) if p.parts.len() < MAX_PARTS => p.parts.push(data),
                    Reply::Collect(_) => {}
                }
                return true;
            }
            Answer::End(data) => Ok(data),
            Answer::Exception { code, message } => Err(CallError {
                code: ErrorCode::CallException,
                message: format!("the function raised `{code}`: {message}"),
                exception: Some(serde_json::json!({"code": code, "message": message})),
            }),
            Answer::Failed(e) => Err(e),
        };
        let ended = take(&mut inner, id).map(|p| (p, result));
        drop(inner);
        finish(ended);
        true
    }

    /// Ends, with `call_timeout`, every call whose deadline is at or before `now`; how
    /// many.
    pub fn expire(&self, now: Instant) -> usize {
        let mut inner = self.lock();
        let mut ended = Vec::new();
        while let Some(&(deadline, id)) = inner.deadlines.first() {
            if deadline > now {
                break;
            }
            let Some(p) = take(&mut inner, id) else {
                continue;
            };
            tell_cancelled(&inner, &p, id, "timeout");
            let message = format!("no answer within {} ms", p.timeout.as_millis());
            ended.push((p, Err(CallError::new(ErrorCode::CallTimeout, message))));
        }
        drop(inner);
        let n = ended.len();
        finish(ended);
        n
    }

    /// When the next call times out, if any is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.lock().deadlines.first().map(|(d, _)| *d)
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
        let mut ended = Vec::new();
        for id in ids {
            let Some(p) = take(&mut inner, id) else {
                continue;
            };
            if p.callee == session {
                let message = format!("session `{session}` ended before it answered");
                ended.push((p, Err(CallError::new(ErrorCode::CalleeGone, message))));
            } else {
                tell_cancelled(&inner, &p, id, "caller_gone");
            }
        }
        drop(inner);
        finish(ended);
    }

    /// Calls waiting for an answer now.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Records a call that `callee` (a name for another node, which no session takes)
    /// serves, at `now`; its id, under which [`Calls::answer`] takes that node's parts
    /// and outcome. It ends as every call does: answered, timed out, or with
    /// `callee_gone` when [`Calls::session_gone`] is told `callee`.
    pub fn call_elsewhere(&self, now: Instant, kind: Kind, callee: &str, req: Request<M>) -> u64 {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        record(&mut inner, now, id, kind, callee.to_owned(), req);
        id
    }

    /// Whether a session here serves `function` under `server`.
    pub fn serves(&self, server: &str, function: &str) -> bool {
        self.lock()
            .servers
            .get(server)
            .is_some_and(|s| s.sessions.iter().any(|(_, f)| f.contains(function)))
    }

    /// Whether `session` is here and exposes `function`.
    pub fn exposes(&self, session: &str, function: &str) -> bool {
        self.lock()
            .exposed
            .get(session)
            .is_some_and(|f| f.contains(function))
    }

    /// The functions the sessions here serve under `server`, together.
    pub fn served_under(&self, server: &str) -> BTreeSet<String> {
        self.lock()
            .servers
            .get(server)
            .map(|s| {
                s.sessions
                    .iter()
                    .flat_map(|(_, f)| f.iter().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The server names `session` serves.
    pub fn served_by(&self, session: &str) -> Vec<String> {
        self.lock()
            .servers
            .iter()
            .filter(|(_, s)| s.sessions.iter().any(|(id, _)| id == session))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The functions `session` exposes.
    pub fn exposed_by(&self, session: &str) -> BTreeSet<String> {
        self.lock()
            .exposed
            .get(session)
            .map(|f| f.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every server name served here with its functions, and every session's exposed
    /// functions.
    #[allow(clippy::type_complexity)]
    pub fn holdings(
        &self,
    ) -> (
        BTreeMap<String, BTreeSet<String>>,
        BTreeMap<String, BTreeSet<String>>,
    ) {
        let inner = self.lock();
        let servers = inner
            .servers
            .iter()
            .map(|(name, s)| {
                let f = s.sessions.iter().flat_map(|(_, f)| f.iter().cloned());
                (name.clone(), f.collect())
            })
            .collect();
        let exposed = inner
            .exposed
            .iter()
            .map(|(sid, f)| (sid.clone(), f.iter().cloned().collect()))
            .collect();
        (servers, exposed)
    }
}

/// Gives the call an id, hands it to the callee and records its deadline.
fn dispatch<M: Mailbox>(
    inner: &mut Inner<M>,
    now: Instant,
    kind: Kind,
    callee: String,
    server: Option<&str>,
    req: Request<M>,
) -> Result<(), CallError> {
    let Some(mailbox) = inner.callees.get(&callee) else {
        return Err(CallError::new(
            ErrorCode::CalleeGone,
            format!("session `{callee}` is gone"),
        ));
    };
    inner.next_id += 1;
    let id = inner.next_id;
    tell(
        mailbox,
        &Event::Call {
            kind,
            id,
            server,
            function: &req.function,
            payload: &req.payload,
            from: &req.from,
            timeout_ms: req.timeout.as_millis() as u64,
        },
    );
    record(inner, now, id, kind, callee, req);
    Ok(())
}

/// Records call `id` as pending, with its deadline.
fn record<M>(
    inner: &mut Inner<M>,
    now: Instant,
    id: u64,
    kind: Kind,
    callee: String,
    req: Request<M>,
) {
    let deadline = now + req.timeout;
    *inner.load.entry(callee.clone()).or_default() += 1;
    let p = Pending {
        kind,
        callee,
        reply: req.reply,
        parts: Vec::new(),
        timeout: req.timeout,
        deadline,
    };
    for session in p.parties() {
        inner
            .involved
            .entry(session.to_owned())
            .or_default()
            .insert(id);
    }
    inner.deadlines.insert((deadline, id));
    inner.pending.insert(id, p);
}

/// Removes call `id`, giving its callee's place back.
fn take<M>(inner: &mut Inner<M>, id: u64) -> Option<Pending<M>> {
    let p = inner.pending.remove(&id)?;
    inner.deadlines.remove(&(p.deadline, id));
    for session in p.parties() {
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
fn tell_cancelled<M: Mailbox>(inner: &Inner<M>, p: &Pending<M>, id: u64, reason: &'static str) {
    if let Some(mailbox) = inner.callees.get(&p.callee) {
        let kind = p.kind;
        tell(mailbox, &Event::Cancelled { kind, id, reason });
    }
}

/// Hands calls' outcomes to their callers.
fn finish<M: Mailbox>(ended: impl IntoIterator<Item = (Pending<M>, Result<Value, CallError>)>) {
    for (p, result) in ended {
        match p.reply {
            Reply::Session {
                mailbox, call_id, ..
            } => {
                let kind = p.kind;
                tell(
                    &mailbox,
                    &Event::Outcome {
                        kind,
                        call_id: &call_id,
                        result: &result,
                    },
                );
            }
            Reply::Collect(done) => done(Outcome {
                parts: p.parts,
                result,
            }),
            Reply::Stream { end, .. } => end(result),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::*;
    use crate::testing::Inbox;

    type Got = Arc<Mutex<Option<Outcome>>>;

    fn collector() -> (Reply<Inbox>, Got) {
        let got: Got = Arc::default();
        let slot = got.clone();
        let reply = Reply::Collect(Box::new(move |o| *slot.lock().unwrap() = Some(o)));
        (reply, got)
    }

    fn request(reply: Reply<Inbox>, secs: u64) -> Request<Inbox> {
        Request {
            function: "f".into(),
            payload: json!({}),
            from: Caller::Backend,
            timeout: Duration::from_secs(secs),
            reply,
        }
    }

    fn session(sid: &str, mailbox: &Inbox) -> Reply<Inbox> {
        Reply::Session {
            session_id: sid.into(),
            mailbox: mailbox.clone(),
            call_id: None,
        }
    }

    fn outcome(got: &Got) -> Option<Result<Value, ErrorCode>> {
        got.lock()
            .unwrap()
            .take()
            .map(|o| o.result.map_err(|e| e.code))
    }

    /// A call served on another node ends with that node's answers, its timeout, or the
    /// node's end; a call from another node streams its parts there and is dropped
    /// when that node goes.
    #[test]
    fn calls_between_nodes_end_every_way_a_call_ends() {
        let t0 = Instant::now();
        let calls = Calls::<Inbox>::new(10);
        // Made here, served on node "@b": parts and outcome come back through answer.
        let (reply, got) = collector();
        let id = calls.call_elsewhere(t0, Kind::Rpc, "@b", request(reply, 5));
        assert!(calls.answer(Kind::Rpc, "@b", &id.to_string(), Answer::Next(json!(1))));
        assert!(!calls.answer(Kind::Rpc, "@c", &id.to_string(), Answer::Next(json!(2))));
        let failed = CallError::new(ErrorCode::CalleeBusy, "busy there");
        assert!(calls.answer(Kind::Rpc, "@b", &id.to_string(), Answer::Failed(failed)));
        assert_eq!(outcome(&got), Some(Err(ErrorCode::CalleeBusy)));
        let (reply, got) = collector();
        calls.call_elsewhere(t0, Kind::Rpc, "@b", request(reply, 5));
        assert_eq!(calls.expire(t0 + Duration::from_secs(5)), 1);
        assert_eq!(outcome(&got), Some(Err(ErrorCode::CallTimeout)));
        let (reply, got) = collector();
        calls.call_elsewhere(t0, Kind::Function, "@b", request(reply, 5));
        calls.session_gone("@b");
        assert_eq!(outcome(&got), Some(Err(ErrorCode::CalleeGone)));

        // Made on node "@c", served here: parts and the end stream there.
        let callee = Inbox::new(8);
        calls.expose("a", &callee, vec!["f".into()]);
        let streamed: Arc<Mutex<Vec<String>>> = Arc::default();
        let stream = |out: &Arc<Mutex<Vec<String>>>| {
            let (p, e) = (out.clone(), out.clone());
            Reply::Stream {
                caller: "@c".into(),
                part: Box::new(move |v| p.lock().unwrap().push(format!("part {v}"))),
                end: Box::new(move |r| e.lock().unwrap().push(format!("end {r:?}"))),
            }
        };
        calls
            .call_function(t0, "a", request(stream(&streamed), 5))
            .expect("call");
        assert!(calls.answer(Kind::Function, "a", "4", Answer::Next(json!(1))));
        assert!(calls.answer(Kind::Function, "a", "4", Answer::End(json!(2))));
        assert_eq!(
            *streamed.lock().unwrap(),
            vec!["part 1".to_owned(), "end Ok(Number(2))".to_owned()]
        );
        calls
            .call_function(t0, "a", request(stream(&streamed), 5))
            .expect("call");
        calls.session_gone("@c");
        assert_eq!(calls.pending(), 0);
        assert_eq!(
            callee.taken(),
            vec!["call 4 f", "call 5 f", "cancelled 5 caller_gone"]
        );
    }

    /// The calls a session takes part in are found through its own index, and nothing
    /// stays behind once the calls end, whichever way they end.
    #[test]
    fn a_sessions_end_finds_its_calls_and_leaves_no_trace() {
        let t0 = Instant::now();
        let calls = Calls::<Inbox>::new(10);
        let (callee, caller) = (Inbox::new(64), Inbox::new(64));
        calls.expose("a", &callee, vec!["f".into()]);
        calls.expose("c", &callee, vec!["f".into()]);
        for _ in 0..2 {
            let req = request(session("b", &caller), 60);
            calls.call_function(t0, "a", req).expect("call a");
        }
        let (reply, from_a) = collector();
        calls.call_function(t0, "a", request(reply, 60)).expect("a");
        let (reply, from_c) = collector();
        calls.call_function(t0, "c", request(reply, 60)).expect("c");
        assert_eq!(calls.pending(), 4);
        assert_eq!(
            callee.taken(),
            vec!["call 1 f", "call 2 f", "call 3 f", "call 4 f"]
        );

        // The caller b goes: its two calls are dropped and their callee told.
        calls.session_gone("b");
        assert_eq!(calls.pending(), 2);
        assert_eq!(
            callee.taken(),
            vec!["cancelled 1 caller_gone", "cancelled 2 caller_gone"]
        );
        // The callee a goes: the backend's call to it ends with callee_gone.
        calls.session_gone("a");
        assert_eq!(outcome(&from_a), Some(Err(ErrorCode::CalleeGone)));
        // c answers in parts, then ends; an answer after the end goes nowhere.
        assert!(calls.answer(Kind::Function, "c", "4", Answer::Next(json!(1))));
        assert!(outcome(&from_c).is_none());
        assert!(calls.answer(Kind::Function, "c", "4", Answer::End(json!(7))));
        let got = from_c.lock().unwrap().take().expect("outcome");
        assert_eq!(
            (got.parts, got.result.ok()),
            (vec![json!(1)], Some(json!(7)))
        );
        assert!(!calls.answer(Kind::Function, "c", "4", Answer::End(json!(8))));

        assert_eq!(calls.pending(), 0);
        assert_eq!(calls.next_deadline(), None);
        let inner = calls.lock();
        assert!(
            inner.involved.is_empty() && inner.load.is_empty(),
            "index left behind"
        );
    }

    #[test]
    fn calls_time_out_at_their_deadline_and_only_then() {
        let t0 = Instant::now();
        let calls = Calls::<Inbox>::new(10);
        let (callee, caller) = (Inbox::new(64), Inbox::new(64));
        calls.register("svc", "s", &callee, vec!["f".into()]);
        calls
            .call_rpc(t0, "svc", request(session("b", &caller), 2))
            .unwrap();
        calls
            .call_rpc(t0, "svc", request(session("b", &caller), 5))
            .unwrap();
        assert_eq!(calls.next_deadline(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(calls.expire(t0 + Duration::from_millis(1999)), 0);
        assert_eq!(calls.expire(t0 + Duration::from_secs(2)), 1);
        assert_eq!(caller.taken(), vec!["error call_timeout"]);
        assert_eq!(
            callee.taken(),
            vec!["call 1 f", "call 2 f", "cancelled 1 timeout"]
        );
        assert_eq!(calls.next_deadline(), Some(t0 + Duration::from_secs(5)));
        // The callee's late answer is not delivered; the other call's is.
        assert!(!calls.answer(Kind::Rpc, "s", "1", Answer::End(json!(1))));
        assert!(calls.answer(Kind::Rpc, "s", "2", Answer::End(json!(2))));
        assert_eq!(caller.taken(), vec!["response 2"]);
        // Only the callee may answer, and only in the kind it was called.
        calls
            .call_rpc(t0, "svc", request(session("b", &caller), 5))
            .unwrap();
        assert!(!calls.answer(Kind::Rpc, "b", "3", Answer::End(json!(0))));
        assert!(!calls.answer(Kind::Function, "s", "3", Answer::End(json!(0))));
    }

    #[test]
    fn rpc_calls_go_round_and_a_full_callee_is_skipped() {
        let t0 = Instant::now();
        let calls = Calls::<Inbox>::new(1);
        let (one, two) = (Inbox::new(64), Inbox::new(64));
        calls.register("svc", "1", &one, vec!["f".into()]);
        calls.register("svc", "2", &two, vec!["f".into(), "g".into()]);
        let caller = Inbox::new(64);
        let mut g = request(session("b", &caller), 9);
        g.function = "g".into();
        calls.call_rpc(t0, "svc", g).unwrap();
        assert_eq!(two.taken(), vec!["call 1 g"]);
        // 2 is full: f goes to 1; then both are full.
        calls
            .call_rpc(t0, "svc", request(session("b", &caller), 9))
            .unwrap();
        assert_eq!(one.taken(), vec!["call 2 f"]);
        let busy = calls.call_rpc(t0, "svc", request(session("b", &caller), 9));
        assert_eq!(busy.map_err(|e| e.code), Err(ErrorCode::CalleeBusy));
        let none = calls.call_rpc(t0, "other", request(session("b", &caller), 9));
        assert_eq!(none.map_err(|e| e.code), Err(ErrorCode::NoCallee));
        let mut h = request(session("b", &caller), 9);
        h.function = "h".into();
        let no_fn = calls.call_rpc(t0, "svc", h);
        assert_eq!(no_fn.map_err(|e| e.code), Err(ErrorCode::NoCallee));
        assert!(calls.unregister("svc", "1"));
        assert!(!calls.unregister("svc", "1"));
    }
}
