//! The node's live engine: the channels and calls of `trunkline_realtime`, reaching
//! sessions through WebSocket mailboxes, with the clock that ends calls at their deadline
//! and the waits of collected calls (a backend's request, a call on a channel's members).
//! In a cluster, channel messages also cross to the other nodes through the engine's
//! [`ChannelBus`].

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;
use trunkline_api::ErrorCode;
use trunkline_realtime::{Answer, CallError, Caller, ChannelBus, Kind, MemberInfo, Relayed};

use crate::ws::frames::{call_error_json, WsMailbox};

pub use trunkline_realtime::{Outcome, Reply};

/// Every channel of the node, and (in a cluster) the bus to the other nodes' channels.
pub struct Channels {
    local: trunkline_realtime::Channels<WsMailbox>,
    bus: Option<Arc<dyn ChannelBus>>,
}

impl Channels {
    /// The node's channels; with a `bus`, messages published here reach the members on
    /// other nodes, and theirs reach the members here.
    pub fn new(bus: Option<Arc<dyn ChannelBus>>) -> Arc<Self> {
        let channels = Arc::new(Channels {
            local: trunkline_realtime::Channels::default(),
            bus,
        });
        if let Some(bus) = &channels.bus {
            let here = Arc::downgrade(&channels);
            bus.deliver_to(Box::new(move |m: Relayed| {
                if let Some(c) = here.upgrade() {
                    c.local
                        .publish(&m.channel, &m.message, &m.from, m.except.as_deref());
                }
            }));
        }
        channels
    }

    /// See [`trunkline_realtime::Channels::join`].
    pub fn join(
        &self,
        channel: &str,
        info: MemberInfo,
        mailbox: WsMailbox,
        style: <WsMailbox as trunkline_realtime::Mailbox>::Style,
    ) -> Vec<MemberInfo> {
        let again = self.local.is_member(channel, &info.session_id);
        let before = self.local.join(channel, info, mailbox, style);
        if let (Some(bus), false) = (&self.bus, again) {
            bus.follow(channel);
        }
        before
    }

    /// See [`trunkline_realtime::Channels::leave`].
    pub fn leave(&self, channel: &str, session_id: &str) -> bool {
        let left = self.local.leave(channel, session_id);
        if let (Some(bus), true) = (&self.bus, left) {
            bus.unfollow(channel);
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
        if let Some(bus) = &self.bus {
            bus.send(&Relayed {
                channel: channel.to_owned(),
                message: message.clone(),
                from: from.clone(),
                except: except.map(str::to_owned),
            });
        }
        n
    }

    /// See [`trunkline_realtime::Channels::watch_system`].
    pub fn watch_system(
        &self,
        session_id: &str,
        mailbox: WsMailbox,
    ) -> std::collections::HashMap<String, Vec<MemberInfo>> {
        let was = self.local.unwatch_system(session_id);
        let members = self.local.watch_system(session_id, mailbox);
        if let (Some(bus), false) = (&self.bus, was) {
            bus.follow_system();
        }
        members
    }

    pub fn unwatch_system(&self, session_id: &str) -> bool {
        let was = self.local.unwatch_system(session_id);
        if let (Some(bus), true) = (&self.bus, was) {
            bus.unfollow_system();
        }
        was
    }

    pub fn is_member(&self, channel: &str, session_id: &str) -> bool {
        self.local.is_member(channel, session_id)
    }

    /// The members of a channel on this node.
    pub fn members(&self, channel: &str) -> Vec<MemberInfo> {
        self.local.members(channel)
    }

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

/// Every call of the node, and the clock that times them out.
pub struct Calls {
    engine: trunkline_realtime::Calls<WsMailbox>,
    /// Told of each new call, whose deadline may come before the one the clock waits for.
    wake: Arc<Notify>,
}

impl Calls {
    /// The calls, with their clock running until `shutdown` or until they are dropped.
    pub fn start(max_pending: usize, shutdown: CancellationToken) -> Arc<Self> {
        let wake = Arc::new(Notify::new());
        let calls = Arc::new(Calls {
            engine: trunkline_realtime::Calls::new(max_pending),
            wake: wake.clone(),
        });
        tokio::spawn(clock(Arc::downgrade(&calls), wake, shutdown));
        calls
    }

    /// `session` serves RPC server `name` with `functions`.
    pub fn register(&self, name: &str, session: &str, mailbox: &WsMailbox, functions: Vec<String>) {
        self.engine.register(name, session, mailbox, functions);
    }

    /// `session` no longer serves `name`; false if it did not.
    pub fn unregister(&self, name: &str, session: &str) -> bool {
        self.engine.unregister(name, session)
    }

    /// `session` exposes client `functions`.
    pub fn expose(&self, session: &str, mailbox: &WsMailbox, functions: Vec<String>) {
        self.engine.expose(session, mailbox, functions);
    }

    /// Calls `server.function` on one of the sessions serving it.
    pub fn call_rpc(&self, server: &str, req: Request) -> Result<(), CallError> {
        let started = self.engine.call_rpc(Instant::now(), server, req);
        self.wake.notify_one();
        started
    }

    /// Calls a client function of one session.
    pub fn call_function(&self, session: &str, req: Request) -> Result<(), CallError> {
        let started = self.engine.call_function(Instant::now(), session, req);
        self.wake.notify_one();
        started
    }

    /// A callee's answer to call `id`; false when it went nowhere.
    pub fn answer(&self, kind: Kind, session: &str, id: &str, answer: Answer) -> bool {
        self.engine.answer(kind, session, id, answer)
    }

    /// A session ended: its calls end or are dropped.
    pub fn session_gone(&self, session: &str) {
        self.engine.session_gone(session);
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
