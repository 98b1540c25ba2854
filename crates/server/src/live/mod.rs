//! The node's live engine: the channels and calls of `trunkline_realtime`, reaching
//! sessions through WebSocket mailboxes, with the clock that ends calls at their deadline
//! and the waits of collected calls (a backend's request, a call on a channel's members).
//! In a cluster, the [`mesh`] links it to the other nodes' engines: channel messages,
//! members and presence, and calls cross between nodes.

pub mod mesh;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;
use trunkline_api::ErrorCode;
use trunkline_realtime::{
    Answer, CallError, Caller, Change, Crossing, HandedCall, Kind, MemberInfo, Relayed, To,
};

use crate::ws::frames::{call_error_json, WsMailbox};
use mesh::Mesh;

pub use trunkline_realtime::{Outcome, Reply};

/// Every channel of the node and, in a cluster, the members of the other nodes'.
pub struct Channels {
    local: trunkline_realtime::Channels<WsMailbox>,
    mesh: Option<Arc<Mesh>>,
}

impl Channels {
    /// The node's channels; with a `mesh`, messages published here reach the members on
    /// other nodes, and theirs reach the members here.
    pub fn new(mesh: Option<Arc<Mesh>>) -> Arc<Self> {
        Arc::new(Channels {
            local: trunkline_realtime::Channels::default(),
            mesh,
        })
    }

    /// The channels of this node alone.
    pub fn local(&self) -> &trunkline_realtime::Channels<WsMailbox> {
        &self.local
    }

    /// See [`trunkline_realtime::Channels::join`]; in a cluster the members before it
    /// include those of other nodes.
    pub fn join(
        &self,
        channel: &str,
        info: MemberInfo,
        mailbox: WsMailbox,
        style: <WsMailbox as trunkline_realtime::Mailbox>::Style,
    ) -> Vec<MemberInfo> {
        let Some(mesh) = &self.mesh else {
            return self.local.join(channel, info, mailbox, style);
        };
        let again = self.local.is_member(channel, &info.session_id);
        let mut change = mesh.changing();
        let mut before = self.local.join(channel, info.clone(), mailbox, style);
        change.send(Change::Joined {
            channel: channel.to_owned(),
            member: info,
        });
        drop(change);
        if !again {
            mesh.bus().follow(channel);
        }
        if trunkline_realtime::names::has_presence(channel) {
            before.extend(mesh.peers().members(channel));
        }
        before
    }

    /// See [`trunkline_realtime::Channels::leave`].
    pub fn leave(&self, channel: &str, session_id: &str) -> bool {
        let Some(mesh) = &self.mesh else {
            return self.local.leave(channel, session_id);
        };
        let mut change = mesh.changing();
        let left = self.local.leave(channel, session_id);
        if left {
            change.send(Change::Left {
                channel: channel.to_owned(),
                session_id: session_id.to_owned(),
            });
            drop(change);
            mesh.bus().unfollow(channel);
        }
        left
    }

    /// Sends `message` to every member (but `except`); the number of members on this
    /// node it was queued for (those on other nodes are not counted).
    pub fn publish(
        &self,
        channel: &str,
        message: &Value,
        from: &Caller,
        except: Option<&str>,
    ) -> usize {
        let n = self.local.publish(channel, message, from, except);
        if let Some(mesh) = &self.mesh {
            let m = Crossing::Message(Relayed {
                channel: channel.to_owned(),
                message: message.clone(),
                from: from.clone(),
                except: except.map(str::to_owned),
            });
            mesh.bus().send(To::Channel(channel), &m);
        }
        n
    }

    /// See [`trunkline_realtime::Channels::watch_system`]; in a cluster with the members
    /// of other nodes.
    pub fn watch_system(
        &self,
        session_id: &str,
        mailbox: WsMailbox,
    ) -> HashMap<String, Vec<MemberInfo>> {
        let was = self.local.unwatch_system(session_id);
        let mut members = self.local.watch_system(session_id, mailbox);
        if let Some(mesh) = &self.mesh {
            if !was {
                mesh.bus().follow_system();
            }
            for (channel, more) in mesh.peers().system_members() {
                members.entry(channel).or_default().extend(more);
            }
        }
        members
    }

    pub fn unwatch_system(&self, session_id: &str) -> bool {
        let was = self.local.unwatch_system(session_id);
        if let (Some(mesh), true) = (&self.mesh, was) {
            mesh.bus().unfollow_system();
        }
        was
    }

    /// Whether `session_id` is a member of `channel`, here or on another node.
    pub fn is_member(&self, channel: &str, session_id: &str) -> bool {
        self.local.is_member(channel, session_id)
            || self
                .mesh
                .as_ref()
                .is_some_and(|m| m.peers().is_member(channel, session_id))
    }

    /// The members of a channel, on every node.
    pub fn members(&self, channel: &str) -> Vec<MemberInfo> {
        let mut members = self.local.members(channel);
        if let Some(mesh) = &self.mesh {
            members.extend(mesh.peers().members(channel));
        }
        members
    }

    /// Channels with at least one member on this node.
    pub fn len(&self) -> usize {
        self.local.len()
    }

    pub fn is_empty(&self) -> bool {
        self.local.is_empty()
    }
}

/// One call to make.
pub type Request = trunkline_realtime::Request<WsMailbox>;

/// Time a call may take when the caller does not say.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Longest time a call may be given.
pub const MAX_TIMEOUT_MS: u64 = 300_000;

/// Every call of the node, and the clock that times them out. In a cluster, calls no
/// session here serves go to a node that serves them.
pub struct Calls {
    engine: trunkline_realtime::Calls<WsMailbox>,
    /// Told of each new call, whose deadline may come before the one the clock waits for.
    wake: Arc<Notify>,
    mesh: Option<Arc<Mesh>>,
}

impl Calls {
    /// The calls, with their clock running until `shutdown` or until they are dropped.
    pub fn start(
        max_pending: usize,
        mesh: Option<Arc<Mesh>>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let wake = Arc::new(Notify::new());
        let calls = Arc::new(Calls {
            engine: trunkline_realtime::Calls::new(max_pending),
            wake: wake.clone(),
            mesh,
        });
        tokio::spawn(clock(Arc::downgrade(&calls), wake, shutdown));
        calls
    }

    /// The calls of this node alone.
    pub fn engine(&self) -> &trunkline_realtime::Calls<WsMailbox> {
        &self.engine
    }

    /// Tells the other nodes what this node serves under `name` now.
    fn serves(
        change: &mut mesh::Changing<'_>,
        engine: &trunkline_realtime::Calls<WsMailbox>,
        name: &str,
    ) {
        change.send(Change::Serves {
            name: name.to_owned(),
            functions: engine.served_under(name),
        });
    }

    /// `session` serves RPC server `name` with `functions`.
    pub fn register(&self, name: &str, session: &str, mailbox: &WsMailbox, functions: Vec<String>) {
        let mut change = self.mesh.as_ref().map(|m| m.changing());
        self.engine.register(name, session, mailbox, functions);
        if let Some(change) = &mut change {
            Self::serves(change, &self.engine, name);
        }
    }

    /// `session` no longer serves `name`; false if it did not.
    pub fn unregister(&self, name: &str, session: &str) -> bool {
        let mut change = self.mesh.as_ref().map(|m| m.changing());
        let found = self.engine.unregister(name, session);
        if let (Some(change), true) = (&mut change, found) {
            Self::serves(change, &self.engine, name);
        }
        found
    }

    /// `session` exposes client `functions`.
    pub fn expose(&self, session: &str, mailbox: &WsMailbox, functions: Vec<String>) {
        let mut change = self.mesh.as_ref().map(|m| m.changing());
        self.engine.expose(session, mailbox, functions);
        if let Some(change) = &mut change {
            change.send(Change::Exposes {
                session_id: session.to_owned(),
                functions: self.engine.exposed_by(session),
            });
        }
    }

    /// Calls `server.function` on one of the sessions serving it: here if one does,
    /// else on another node whose sessions do.
    pub fn call_rpc(&self, server: &str, req: Request) -> Result<(), CallError> {
        self.call(Kind::Rpc, server, req)
    }

    /// Calls a client function of one session, here or on another node.
    pub fn call_function(&self, session: &str, req: Request) -> Result<(), CallError> {
        self.call(Kind::Function, session, req)
    }

    /// A call to `target` (an RPC server name or a session id), here if a session here
    /// serves it, else handed to a node whose session does.
    fn call(&self, kind: Kind, target: &str, req: Request) -> Result<(), CallError> {
        if let Some(mesh) = &self.mesh {
            let (e, f) = (&self.engine, req.function.as_str());
            let here = match kind {
                Kind::Rpc => e.serves(target, f),
                Kind::Function => e.exposes(target, f),
            };
            let node = match kind {
                _ if here => None,
                Kind::Rpc => mesh.peers().server_node(target, f),
                Kind::Function => mesh.peers().session_node(target, f),
            };
            if let Some(node) = node {
                self.elsewhere(mesh, &node, kind, target, req);
                return Ok(());
            }
        }
        self.call_here(kind, target, req)
    }

    fn call_here(&self, kind: Kind, target: &str, req: Request) -> Result<(), CallError> {
        let now = Instant::now();
        let started = match kind {
            Kind::Rpc => self.engine.call_rpc(now, target, req),
            Kind::Function => self.engine.call_function(now, target, req),
        };
        self.wake.notify_one();
        started
    }

    /// Hands a call to `node`, where `target` serves it.
    fn elsewhere(&self, mesh: &Mesh, node: &str, kind: Kind, target: &str, req: Request) {
        let call = HandedCall {
            id: 0,
            kind,
            target: target.to_owned(),
            function: req.function.clone(),
            payload: req.payload.clone(),
            from: req.from.clone(),
            timeout_ms: req.timeout.as_millis() as u64,
        };
        let callee = mesh::callee_name(node);
        let id = self
            .engine
            .call_elsewhere(Instant::now(), kind, &callee, req);
        self.wake.notify_one();
        mesh.bus()
            .send(To::Node(node), &Crossing::Call(HandedCall { id, ..call }));
    }

    /// Serves a call from node `from` with a session here; its parts and outcome go back
    /// there.
    pub fn serve_from(&self, from: &str, call: HandedCall) {
        let Some(mesh) = &self.mesh else { return };
        let (id, kind) = (call.id, call.kind);
        let (to_parts, to_end) = (Arc::downgrade(mesh), Arc::downgrade(mesh));
        let (node, node_end) = (from.to_owned(), from.to_owned());
        let reply = Reply::Stream {
            caller: mesh::callee_name(from),
            part: Box::new(move |data| {
                if let Some(m) = to_parts.upgrade() {
                    m.bus()
                        .send(To::Node(&node), &Crossing::Part { id, kind, data });
                }
            }),
            end: Box::new(move |result| {
                if let Some(m) = to_end.upgrade() {
                    m.bus()
                        .send(To::Node(&node_end), &Crossing::End { id, kind, result });
                }
            }),
        };
        let req = Request {
            function: call.function,
            payload: call.payload,
            from: call.from,
            timeout: Duration::from_millis(call.timeout_ms.clamp(1, MAX_TIMEOUT_MS)),
            reply,
        };
        if let Err(e) = self.call_here(kind, &call.target, req) {
            let end = Crossing::End {
                id,
                kind,
                result: Err(e),
            };
            mesh.bus().send(To::Node(from), &end);
        }
    }

    /// A callee's answer to call `id`; false when it went nowhere.
    pub fn answer(&self, kind: Kind, session: &str, id: &str, answer: Answer) -> bool {
        self.engine.answer(kind, session, id, answer)
    }

    /// A session ended: its calls end or are dropped (and in a cluster, the other nodes
    /// learn that it serves and exposes nothing more).
    pub fn session_gone(&self, session: &str) {
        let Some(mesh) = &self.mesh else {
            return self.engine.session_gone(session);
        };
        let mut change = mesh.changing();
        let served = self.engine.served_by(session);
        let exposed = !self.engine.exposed_by(session).is_empty();
        self.engine.session_gone(session);
        for name in served {
            Self::serves(&mut change, &self.engine, &name);
        }
        if exposed {
            change.send(Change::Exposes {
                session_id: session.to_owned(),
                functions: Default::default(),
            });
        }
    }

    /// Calls waiting for an answer now.
    pub fn pending(&self) -> usize {
        self.engine.pending()
    }
}

/// Ends calls at their deadline: sleeps until the earliest, or until a new call comes.
async fn clock(calls: Weak<Calls>, wake: Arc<Notify>, shutdown: CancellationToken) {
    loop {
        let Some(next) = calls.upgrade().map(|c| c.engine.next_deadline()) else {
            return;
        };
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = due => {}
            () = wake.notified() => {}
            () = shutdown.cancelled() => return,
        }
        match calls.upgrade() {
            Some(c) => c.engine.expire(Instant::now()),
            None => return,
        };
    }
}

/// A collector, and where its outcome arrives.
pub fn collect() -> (Reply<WsMailbox>, oneshot::Receiver<Outcome>) {
    let (tx, rx) = oneshot::channel();
    let reply = Reply::Collect(Box::new(move |o| {
        let _ = tx.send(o);
    }));
    (reply, rx)
}

/// A call's timeout from its `timeout_ms` (1 to 300 000; 10 000 when absent).
pub fn timeout_of(ms: Option<f64>) -> Result<Duration, String> {
    match ms.or(Some(DEFAULT_TIMEOUT_MS as f64)) {
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
pub async fn call_members(calls: &Calls, members: Vec<MemberInfo>, req: Request) -> Vec<Value> {
    let waits = members.into_iter().map(|m| {
        let (reply, done) = collect();
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
                Err(e) => entry["error"] = call_error_json(&e),
            }
            if !o.parts.is_empty() {
                entry["parts"] = json!(o.parts);
            }
            entry
        }
    });
    futures::future::join_all(waits).await
}
