//! The node's live engine: the channels and calls of `trunkline_realtime`, reaching
//! sessions through WebSocket mailboxes, with the clock that ends calls at their deadline
//! and the waits of collected calls (a backend's request, a call on a channel's members).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;
use trunkline_api::ErrorCode;
use trunkline_realtime::{Answer, CallError, Kind, MemberInfo};

use crate::ws::frames::{call_error_json, WsMailbox};

pub use trunkline_realtime::{Outcome, Reply};

/// Every channel of the node.
pub type Channels = trunkline_realtime::Channels<WsMailbox>;
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
