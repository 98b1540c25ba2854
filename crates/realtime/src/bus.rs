//! How the channels of one node reach the other nodes of a cluster: a [`ChannelBus`]
//! carries a channel's messages to the nodes that have members of it (or that have
//! `sys:*` watchers, for a system channel), where they are delivered as if published
//! there. The embedded node has none; a cluster's engine provides one.

use serde_json::{json, Value};

use crate::Caller;

/// A channel message on its way between nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Relayed {
    pub channel: String,
    pub message: Value,
    pub from: Caller,
    /// A session that must not get it (the publisher's, with `exclude_self`).
    pub except: Option<String>,
}

impl Relayed {
    /// As it crosses: `{"channel", "message", "from", "except"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "channel": self.channel,
            "message": self.message,
            "from": self.from,
            "except": self.except,
        })
    }

    /// Read back from [`Relayed::to_json`]; `None` for anything else.
    pub fn from_json(v: &Value) -> Option<Relayed> {
        let from = match &v["from"] {
            f if f["backend"] == Value::Bool(true) => Caller::Backend,
            f => Caller::Session {
                session_id: f["session_id"].as_str()?.to_owned(),
                client_id: f["client_id"].as_str()?.to_owned(),
            },
        };
        Some(Relayed {
            channel: v["channel"].as_str()?.to_owned(),
            message: v.get("message")?.clone(),
            from,
            except: v["except"].as_str().map(str::to_owned),
        })
    }
}

/// What is told to the other nodes.
pub trait ChannelBus: Send + Sync {
    /// Sends a message published here to the other nodes.
    fn send(&self, m: &Relayed);
    /// A session here became a member of `channel` (each member counts once).
    fn follow(&self, channel: &str);
    /// A member of `channel` here left.
    fn unfollow(&self, channel: &str);
    /// A session here began to watch every system channel (`sys:*`; counted).
    fn follow_system(&self);
    fn unfollow_system(&self);
    /// Where messages from other nodes go (set once, by the node's channels).
    fn deliver_to(&self, sink: Box<dyn Fn(Relayed) + Send + Sync>);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relayed_message_reads_back() {
        for from in [
            Caller::Backend,
            Caller::Session {
                session_id: "ws-n1-x".into(),
                client_id: "c1".into(),
            },
        ] {
            let m = Relayed {
                channel: "prs:room.1".into(),
                message: json!({"text": "hi", "n": [1, 2]}),
                from,
                except: Some("ws-n1-x".into()),
            };
            assert_eq!(Relayed::from_json(&m.to_json()), Some(m));
        }
        assert_eq!(Relayed::from_json(&json!({"channel": 1})), None);
    }
}
