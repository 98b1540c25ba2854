//! The node's place in a cluster's live engine (`docs/scale-out.md`): what it tells the
//! other nodes through the engine's [`Bus`], and what it does with what they tell it.
//!
//! - Every change of what this node holds (a member joined or left a channel, the
//!   functions served under an RPC name, a session's exposed functions) goes to every
//!   node, numbered; when the bus links (again) the node sends all it holds and asks for
//!   theirs. [`Peers`] keeps what the others hold: channel members are the union over
//!   nodes, and presence changes elsewhere are told to this node's members.
//! - Every `beat` the node says it is alive; a node not heard from for `timeout` (the
//!   WebSocket keepalive) is gone: its members leave, and calls to it end.
//! - A call to an RPC name no session here serves, or to a session of another node, is
//!   handed to a node that serves it; its parts and outcome come back the same way.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use trunkline_realtime::peers::Effect;
use trunkline_realtime::{Answer, Bus, BusSink, Change, Crossing, Holdings, Kind, Peers, To};

use super::{Calls, Channels};

pub struct Mesh {
    bus: Arc<dyn Bus>,
    peers: Mutex<Peers>,
    /// Changes sent so far. Held while this node's holdings change and the change is
    /// sent, so that changes go out in the order they were made and the holdings sent
    /// whole always match the count sent with them.
    seq: Mutex<u64>,
    channels: OnceLock<Weak<Channels>>,
    calls: OnceLock<Weak<Calls>>,
    timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A change being made: the holdings change while it is held, then [`Changing::send`].
pub struct Changing<'a> {
    mesh: &'a Mesh,
    seq: MutexGuard<'a, u64>,
}

impl Changing<'_> {
    pub fn send(&mut self, change: Change) {
        *self.seq += 1;
        let c = Crossing::Change {
            seq: *self.seq,
            change,
        };
        self.mesh.bus.send(To::All, &c);
    }
}

/// The name a node goes by as a callee of the calls handed to it.
pub fn callee_name(origin: &str) -> String {
    format!("@{origin}")
}

impl Mesh {
    /// A node gone silent for `timeout` is gone.
    pub fn new(bus: Arc<dyn Bus>, timeout: Duration) -> Arc<Mesh> {
        Arc::new(Mesh {
            bus,
            peers: Mutex::new(Peers::default()),
            seq: Mutex::new(0),
            channels: OnceLock::new(),
            calls: OnceLock::new(),
            timeout,
        })
    }

    /// Starts taking the other nodes' crossings for `channels` and `calls`, and beating
    /// every `beat` until `shutdown`.
    pub fn attach(
        self: &Arc<Self>,
        channels: &Arc<Channels>,
        calls: &Arc<Calls>,
        beat: Duration,
        shutdown: CancellationToken,
    ) {
        let _ = self.channels.set(Arc::downgrade(channels));
        let _ = self.calls.set(Arc::downgrade(calls));
        self.bus.deliver_to(Arc::new(Sink(Arc::downgrade(self))));
        // The bus may have linked before: say who this node is (the beats would too).
        self.send_holdings(To::All, true);
        tokio::spawn(beats(Arc::downgrade(self), beat, shutdown));
    }

    pub fn bus(&self) -> &dyn Bus {
        &*self.bus
    }

    pub fn peers(&self) -> MutexGuard<'_, Peers> {
        lock(&self.peers)
    }

    /// Begins a change of this node's holdings.
    pub fn changing(&self) -> Changing<'_> {
        Changing {
            mesh: self,
            seq: lock(&self.seq),
        }
    }

    fn channels(&self) -> Option<Arc<Channels>> {
        self.channels.get().and_then(Weak::upgrade)
    }

    fn calls(&self) -> Option<Arc<Calls>> {
        self.calls.get().and_then(Weak::upgrade)
    }

    /// Sends all this node holds to `to`.
    fn send_holdings(&self, to: To<'_>, ask: bool) {
        let (Some(channels), Some(calls)) = (self.channels(), self.calls()) else {
            return;
        };
        let seq = lock(&self.seq);
        let (servers, exposed) = calls.engine().holdings();
        let holdings = Holdings {
            members: channels.local().all_members(),
            servers,
            exposed,
        };
        let c = Crossing::Holdings {
            seq: *seq,
            holdings,
            ask,
        };
        self.bus.send(to, &c);
    }

    fn tell(&self, effects: &[Effect]) {
        if let Some(channels) = self.channels() {
            for e in effects {
                channels.local().tell(e);
            }
        }
    }

    fn received(&self, from: &str, c: Crossing) {
        let now = Instant::now();
        match c {
            Crossing::Message(m) => {
                if let Some(channels) = self.channels() {
                    let except = m.except.as_deref();
                    channels
                        .local()
                        .publish(&m.channel, &m.message, &m.from, except);
                }
            }
            Crossing::Call(call) => {
                if let Some(calls) = self.calls() {
                    calls.serve_from(from, call);
                }
            }
            Crossing::Part { id, kind, data } => self.answer(from, kind, id, Answer::Next(data)),
            Crossing::End { id, kind, result } => {
                let answer = match result {
                    Ok(v) => Answer::End(v),
                    Err(e) => Answer::Failed(e),
                };
                self.answer(from, kind, id, answer);
            }
            c => {
                let taken = self.peers().take(from, &c, now);
                self.tell(&taken.effects);
                if taken.ask {
                    self.bus.send(To::Node(from), &Crossing::Ask);
                }
                if taken.answer {
                    self.send_holdings(To::Node(from), false);
                }
            }
        }
    }

    fn answer(&self, from: &str, kind: Kind, id: u64, answer: Answer) {
        if let Some(calls) = self.calls() {
            let callee = callee_name(from);
            calls
                .engine()
                .answer(kind, &callee, &id.to_string(), answer);
        }
    }

    /// Says this node is alive; forgets the nodes gone silent.
    fn beat(&self) {
        let seq = *lock(&self.seq);
        self.bus.send(To::All, &Crossing::Beat { seq });
        let (gone, effects) = self.peers().expire(Instant::now(), self.timeout);
        for origin in &gone {
            tracing::warn!(node = %origin, "live engine: a node went silent; its members leave");
            if let Some(calls) = self.calls() {
                calls.engine().session_gone(&callee_name(origin));
            }
        }
        self.tell(&effects);
    }
}

/// The bus's way back to the mesh (weak: the bus lives in the engine, which outlives it).
struct Sink(Weak<Mesh>);

impl BusSink for Sink {
    fn linked(&self) {
        if let Some(m) = self.0.upgrade() {
            m.send_holdings(To::All, true);
        }
    }

    fn received(&self, from: &str, c: Crossing) {
        if let Some(m) = self.0.upgrade() {
            m.received(from, c);
        }
    }
}

async fn beats(mesh: Weak<Mesh>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match mesh.upgrade() {
            Some(m) => m.beat(),
            None => return,
        }
    }
}
