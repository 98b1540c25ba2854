//! How the live engines of a cluster's nodes reach each other. A [`Bus`] carries
//! [`Crossing`]s between nodes: channel messages to the nodes with members of the channel,
//! what each node holds (channel members, RPC servers, exposed client functions) to every
//! node, and calls with their parts and outcomes to the node that serves or made them.
//! The embedded node has no bus; a cluster's engine provides one.
//!
//! What a node holds reaches the others as numbered [`Change`]s, with a whole
//! [`Holdings`] when a node (re)joins or another one missed a change, and a beat that
//! says the node is alive ([`crate::Peers`] keeps the other nodes' holdings).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{CallError, Caller, Kind, MemberInfo};

/// A channel message on its way between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Relayed {
    pub channel: String,
    pub message: Value,
    pub from: Caller,
    /// A session that must not get it (the publisher's, with `exclude_self`).
    #[serde(default)]
    pub except: Option<String>,
}

/// What one node holds that the others must know of.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Holdings {
    /// The members of each channel, by channel.
    pub members: BTreeMap<String, Vec<MemberInfo>>,
    /// The functions served under each RPC server name (by any of the node's sessions).
    pub servers: BTreeMap<String, BTreeSet<String>>,
    /// The client functions each session exposes, by session id.
    pub exposed: BTreeMap<String, BTreeSet<String>>,
}

/// One change of what a node holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    Joined {
        channel: String,
        member: MemberInfo,
    },
    Left {
        channel: String,
        session_id: String,
    },
    /// The functions the node's sessions serve under `name` now (none: it serves no more).
    Serves {
        name: String,
        functions: BTreeSet<String>,
    },
    /// The client functions a session exposes now (none: it is gone).
    Exposes {
        session_id: String,
        functions: BTreeSet<String>,
    },
}

/// What crosses between nodes. Changes, holdings and beats carry the sender's count of
/// changes (`seq`), so a receiver sees a change it missed and asks for the holdings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Crossing {
    /// A channel message, delivered to the receiver's members as if published there.
    Message(Relayed),
    Change {
        seq: u64,
        #[serde(flatten)]
        change: Change,
    },
    /// Everything the sender holds; with `ask`, the receiver answers with its own.
    Holdings {
        seq: u64,
        holdings: Holdings,
        ask: bool,
    },
    /// The sender is alive.
    Beat { seq: u64 },
    /// Asks the receiver for its holdings.
    Ask,
    /// A call for one of the receiver's sessions.
    Call(HandedCall),
    /// One part of the answer to call `id` the receiver made.
    Part { id: u64, kind: Kind, data: Value },
    /// How call `id` the receiver made ended.
    End {
        id: u64,
        kind: Kind,
        result: Result<Value, CallError>,
    },
}

/// A call handed to the node whose session serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandedCall {
    /// The caller's node's number for it.
    pub id: u64,
    pub kind: Kind,
    /// The RPC server name, or the session id.
    pub target: String,
    pub function: String,
    pub payload: Value,
    pub from: Caller,
    pub timeout_ms: u64,
}

impl Crossing {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for bytes that are no crossing (from a newer node, or not from a node).
    pub fn from_bytes(b: &[u8]) -> Option<Crossing> {
        serde_json::from_slice(b).ok()
    }
}

/// Where a crossing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To<'a> {
    /// The nodes with members of the channel (or `sys:*` watchers, for a system channel).
    Channel(&'a str),
    /// Every other node.
    All,
    /// One node, by its origin.
    Node(&'a str),
}

/// A node's end of the bus.
pub trait Bus: Send + Sync {
    /// This node's name on the bus (unique per run).
    fn origin(&self) -> &str;
    /// Sends, in order with what this node sent before; best effort.
    fn send(&self, to: To<'_>, c: &Crossing);
    /// A session here became a member of `channel` (each member counts once).
    fn follow(&self, channel: &str);
    /// A member of `channel` here left.
    fn unfollow(&self, channel: &str);
    /// A session here began to watch every system channel (`sys:*`; counted).
    fn follow_system(&self);
    fn unfollow_system(&self);
    /// Where crossings from other nodes go (set once).
    fn deliver_to(&self, sink: std::sync::Arc<dyn BusSink>);
}

/// What a node does with the bus's news.
pub trait BusSink: Send + Sync {
    /// The bus is linked (again): what was sent or received meanwhile may be lost.
    fn linked(&self);
    /// A crossing from node `from`.
    fn received(&self, from: &str, c: Crossing);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use trunkline_api::ErrorCode;

    #[test]
    fn crossings_read_back() {
        let member = MemberInfo {
            session_id: "ws-1".into(),
            client_id: "c1".into(),
            info: json!({"name": "a"}),
        };
        let mut holdings = Holdings::default();
        holdings
            .members
            .insert("prs:r".into(), vec![member.clone()]);
        holdings
            .servers
            .insert("calc".into(), ["add".to_owned()].into());
        let all = [
            Crossing::Message(Relayed {
                channel: "prs:room.1".into(),
                message: json!({"text": "hi", "n": [1, 2]}),
                from: Caller::Backend,
                except: Some("ws-n1-x".into()),
            }),
            Crossing::Message(Relayed {
                channel: "c".into(),
                message: json!(null),
                from: Caller::Session {
                    session_id: "ws-n1-x".into(),
                    client_id: "c1".into(),
                },
                except: None,
            }),
            Crossing::Change {
                seq: 7,
                change: Change::Joined {
                    channel: "prs:r".into(),
                    member,
                },
            },
            Crossing::Change {
                seq: 8,
                change: Change::Exposes {
                    session_id: "ws-1".into(),
                    functions: BTreeSet::new(),
                },
            },
            Crossing::Holdings {
                seq: 8,
                holdings,
                ask: true,
            },
            Crossing::Beat { seq: 9 },
            Crossing::Ask,
            Crossing::Call(HandedCall {
                id: 3,
                kind: Kind::Rpc,
                target: "calc".into(),
                function: "add".into(),
                payload: json!([1, 2]),
                from: Caller::Backend,
                timeout_ms: 500,
            }),
            Crossing::Part {
                id: 3,
                kind: Kind::Rpc,
                data: json!(1),
            },
            Crossing::End {
                id: 3,
                kind: Kind::Function,
                result: Err(CallError::new(ErrorCode::CalleeBusy, "busy")),
            },
            Crossing::End {
                id: 4,
                kind: Kind::Function,
                result: Ok(json!({"x": 1})),
            },
        ];
        for c in all {
            assert_eq!(Crossing::from_bytes(&c.to_bytes()), Some(c));
        }
        assert_eq!(Crossing::from_bytes(br#"{"t": "nonsense"}"#), None);
        assert_eq!(Crossing::from_bytes(b"not json"), None);
    }
}
