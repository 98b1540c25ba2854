//! The live engine: channels with presence, RPC servers and client functions, for sessions
//! of any protocol.
//!
//! Nothing here does I/O or knows a wire format. A session is reached through its
//! [`Mailbox`]: the engine says what happened as a typed [`Event`], the mailbox's front-end
//! renders it into its own frame (WebSocket JSON today), once per publish and style, and
//! the same frame is queued for every member that takes that style. Time is an argument
//! ([`Calls::expire`] takes `now`), so the engine is tested without a clock or a runtime; the
//! server drives it from its tasks.
//!
//! - [`Channels`]: named groups of sessions, publish to all members, presence events on
//!   `prs:` and `sys:` channels, and `sys:*` watchers.
//! - [`Topics`]: live subscriptions to topic patterns (STOMP `/topic/…`): every message
//!   published to a matching topic from now on, nothing stored.
//! - [`Calls`]: calls to functions that sessions serve (RPC by server name, or a client
//!   function of one session), with parts, outcome, timeouts and load limits.

pub mod bus;
pub mod calls;
pub mod channels;
mod fanout;
pub mod names;
pub mod peers;
pub mod topic;
pub mod topics;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use trunkline_api::ErrorCode;
use trunkline_store::StoredMessage;

pub use bus::{Bus, BusSink, Change, Crossing, HandedCall, Holdings, Relayed, To};
pub use calls::{Answer, Calls, Outcome, Reply, Request};
pub use channels::Channels;
pub use peers::Peers;
pub use topics::Topics;

/// How the engine reaches one session.
///
/// `push` must not block and must not call back into the engine: it is called with the
/// engine's lock held, so that every member sees a channel's events in one order.
pub trait Mailbox: Clone + Send + Sync + 'static {
    /// A rendered push, cheap to clone: one is shared by every member it goes to.
    type Frame: Clone;
    /// How a member wants events rendered (the protocol or dialect it subscribed with).
    /// Members with equal styles share one frame.
    type Style: Copy + Eq + Default + Send + Sync + 'static;

    /// The frame for `event` in `style`, or `None` when that style is not told of it.
    fn render(style: Self::Style, event: &Event<'_>) -> Option<Self::Frame>;

    /// Queues a frame; whether it was queued. A full mailbox is the front-end's slow
    /// consumer, which it ends (the engine only counts it as not delivered).
    fn push(&self, frame: Self::Frame) -> bool;

    /// Whether this mailbox may be given a message published to the topic of these
    /// words, checked per message: what its client may read can change at any time.
    fn admits(&self, _topic_words: &[&str]) -> bool {
        true
    }
}

/// What presence shows of a member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberInfo {
    pub session_id: String,
    pub client_id: String,
    /// What the channel token's `conn_info` said of the member (`null` if nothing).
    pub info: Value,
}

/// Who sent a message or made a call, as its receivers see it.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// A session: `{"session_id", "client_id"}`.
    Session {
        session_id: String,
        client_id: String,
    },
    /// A backend (over the backend listener): `{"backend": true}`.
    Backend,
}

impl Serialize for Caller {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        match self {
            Caller::Session {
                session_id,
                client_id,
            } => {
                m.serialize_entry("session_id", session_id)?;
                m.serialize_entry("client_id", client_id)?;
            }
            Caller::Backend => m.serialize_entry("backend", &true)?,
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Caller {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            backend: bool,
            session_id: Option<String>,
            client_id: Option<String>,
        }
        match Wire::deserialize(d)? {
            Wire { backend: true, .. } => Ok(Caller::Backend),
            Wire {
                session_id: Some(session_id),
                client_id: Some(client_id),
                ..
            } => Ok(Caller::Session {
                session_id,
                client_id,
            }),
            _ => Err(serde::de::Error::custom(
                "a caller is {\"backend\": true} or {\"session_id\", \"client_id\"}",
            )),
        }
    }
}

/// A call's id as the caller wrote it (any JSON value), `None` when it had none or `null`.
/// It is kept as raw JSON and written back byte for byte: read into a `Value`, a number
/// such as `1180591620717411303424` would come back as `1.1805916207174113e21`.
pub type CallId = Option<Box<RawValue>>;

/// Which kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// To one of the sessions serving an RPC server name.
    Rpc,
    /// To a client function of one session.
    Function,
}

/// Why a call did not give a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallError {
    #[serde(deserialize_with = "code_of")]
    pub code: ErrorCode,
    pub message: String,
    /// The callee's `{code, message}` when it raised an exception.
    pub exception: Option<Value>,
}

/// An error code as written; one this node does not know reads as `internal`.
fn code_of<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
    let code = String::deserialize(d)?;
    Ok(ErrorCode::from_code(&code).unwrap_or(ErrorCode::Internal))
}

impl CallError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        CallError {
            code,
            message: message.into(),
            exception: None,
        }
    }
}

/// Something a session is told.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A member joined a presence channel.
    Joined {
        channel: &'a str,
        member: &'a MemberInfo,
    },
    /// A member left a presence channel.
    Left {
        channel: &'a str,
        member: &'a MemberInfo,
    },
    /// A message published to a channel.
    Message {
        channel: &'a str,
        message: &'a Value,
        from: &'a Caller,
    },
    /// A message for this session alone, from a backend.
    Direct { message: &'a Value },
    /// A message published to a topic, to a live subscription whose pattern matches it.
    Topic {
        id: u64,
        message: &'a Arc<StoredMessage>,
    },
    /// To a callee: a call to answer.
    Call {
        kind: Kind,
        id: u64,
        /// The RPC server name called (RPC only).
        server: Option<&'a str>,
        function: &'a str,
        payload: &'a Value,
        from: &'a Caller,
        timeout_ms: u64,
    },
    /// To a callee: a call it holds ended without its answer (`timeout`, `caller_gone`).
    Cancelled {
        kind: Kind,
        id: u64,
        reason: &'static str,
    },
    /// To a calling session: one part of the answer.
    Part {
        kind: Kind,
        call_id: &'a CallId,
        data: &'a Value,
    },
    /// To a calling session: how its call ended.
    Outcome {
        kind: Kind,
        call_id: &'a CallId,
        result: &'a Result<Value, CallError>,
    },
}

/// Renders `event` for a mailbox, in its default style.
pub(crate) fn tell<M: Mailbox>(mailbox: &M, event: &Event<'_>) -> bool {
    M::render(M::Style::default(), event).is_some_and(|f| mailbox.push(f))
}

/// A mailbox for the engine's tests: frames are short strings, kept in order.
#[cfg(test)]
pub(crate) mod testing {
    use std::cell::Cell;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum Style {
        /// Hears everything.
        #[default]
        Full,
        /// Hears messages only, in its own words.
        Terse,
    }

    #[derive(Clone)]
    pub struct Inbox {
        frames: Arc<Mutex<Vec<String>>>,
        capacity: usize,
    }

    thread_local! {
        static RENDERS: Cell<usize> = const { Cell::new(0) };
    }

    impl Inbox {
        pub fn new(capacity: usize) -> Self {
            Inbox {
                frames: Arc::default(),
                capacity,
            }
        }

        /// What was queued since the last call.
        pub fn taken(&self) -> Vec<String> {
            std::mem::take(&mut *self.frames.lock().unwrap())
        }

        /// Frames rendered on this thread so far.
        pub fn renders() -> usize {
            RENDERS.with(Cell::get)
        }
    }

    impl Mailbox for Inbox {
        type Frame = String;
        type Style = Style;

        fn render(style: Style, event: &Event<'_>) -> Option<String> {
            RENDERS.with(|r| r.set(r.get() + 1));
            let text = match (style, event) {
                (
                    Style::Terse,
                    Event::Message {
                        channel, message, ..
                    },
                ) => format!("terse {channel} {message}"),
                (Style::Terse, _) => return None,
                (_, Event::Joined { channel, member }) => {
                    format!("joined {channel} {}", member.session_id)
                }
                (_, Event::Left { channel, member }) => {
                    format!("left {channel} {}", member.session_id)
                }
                (
                    _,
                    Event::Message {
                        channel, message, ..
                    },
                ) => format!("message {channel} {message}"),
                (_, Event::Direct { message }) => format!("direct {message}"),
                (_, Event::Topic { id, message }) => format!("topic {id} {}", message.topic),
                (_, Event::Call { id, function, .. }) => format!("call {id} {function}"),
                (_, Event::Cancelled { id, reason, .. }) => format!("cancelled {id} {reason}"),
                (_, Event::Part { data, .. }) => format!("part {data}"),
                (_, Event::Outcome { result, .. }) => match result {
                    Ok(v) => format!("response {v}"),
                    Err(e) => format!("error {}", e.code),
                },
            };
            Some(text)
        }

        fn push(&self, frame: String) -> bool {
            let mut frames = self.frames.lock().unwrap();
            if frames.len() >= self.capacity {
                return false;
            }
            frames.push(frame);
            true
        }
    }
}
