//! WebSocket channels: named groups of sessions with publish, and presence on `prs:` and
//! `sys:` channels (see `docs/ws-protocol.md`).
//!
//! Names are `[a-zA-Z0-9.:_-]{1,64}`; a name with `:` must start with `pvt:`, `prs:` or
//! `sys:`, and those channels need a channel token (a JWT the backend mints) bound to the
//! session and the channel. Public channels are open to any session.
//!
//! Each member has a bounded queue of frames to send. A member whose queue is full when a
//! message comes is a slow consumer: the policy is `disconnect` (its session is closed
//! with code 4429 and leaves every channel), so one slow reader never holds up the others
//! or grows memory without bound.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Frames waiting for one session before it counts as a slow consumer.
pub const SESSION_QUEUE: usize = 1024;

/// Why a channel name is refused, or `None` if it is valid.
pub fn invalid_name(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 64 {
        return Some("a channel name has 1 to 64 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '_' | '-')))
    {
        return Some(format!(
            "`{c}` is not allowed in a channel name ([a-zA-Z0-9.:_-])"
        ));
    }
    if name.contains(':') && !needs_token(name) {
        return Some("a channel name with `:` must start with `pvt:`, `prs:` or `sys:`".into());
    }
    None
}

/// Private, presence and system channels need a channel token.
pub fn needs_token(name: &str) -> bool {
    ["pvt:", "prs:", "sys:"].iter().any(|p| name.starts_with(p))
}

/// Members see each other join and leave on presence and system channels.
pub fn has_presence(name: &str) -> bool {
    name.starts_with("prs:") || name.starts_with("sys:")
}

/// What presence shows of a member.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemberInfo {
    pub session_id: String,
    pub client_id: String,
    pub info: Value,
}

/// A text frame for a session: cheap to clone, so one serialized push is shared by every
/// session it goes to.
pub type Frame = axum::extract::ws::Utf8Bytes;

/// How to reach a session.
#[derive(Clone)]
pub struct Mailbox {
    pub tx: mpsc::Sender<Frame>,
    /// Cancelled to close the session (slow consumer).
    pub kick: CancellationToken,
}

impl Mailbox {
    /// Queues a frame. A full queue closes the session as a slow consumer. Whether the
    /// frame was queued.
    pub fn push(&self, frame: Frame) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.kick.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// `{"service": service, "message": message}` as a frame.
pub fn envelope(service: Option<&str>, message: Value) -> Frame {
    json!({"service": service, "message": message})
        .to_string()
        .into()
}

/// A call's `callId` as the caller wrote it (any JSON value), `None` when it had none or
/// `null`. It is kept as raw JSON and written back byte for byte: read into a `Value`, a
/// number such as `1180591620717411303424` would come back as `1.1805916207174113e21`.
pub type CallId = Option<Box<RawValue>>;

/// An answer to a call: `{"service": service, "message": {"callId": call_id, ..message}}`,
/// with the callId as the caller wrote it (`null` for `None`). `message` is an object
/// (`{type: "response", data}`, `{type: "error", code, message}`, ...).
pub fn answer(service: Option<&str>, call_id: &CallId, message: Value) -> Frame {
    #[derive(Serialize)]
    struct Answer<'a> {
        service: Option<&'a str>,
        message: Message<'a>,
    }
    #[derive(Serialize)]
    struct Message<'a> {
        #[serde(rename = "callId")]
        call_id: &'a CallId,
        #[serde(flatten)]
        rest: &'a Value,
    }
    let text = serde_json::to_string(&Answer {
        service,
        message: Message {
            call_id,
            rest: &message,
        },
    });
    match text {
        Ok(text) => text.into(),
        // Only a `message` that is not an object cannot be flattened; every caller passes
        // an object, so this is not reached. The frame then goes without the callId.
        Err(_) => envelope(service, message),
    }
}

/// Which protocol a member subscribed with, and so the shape of what it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Service `channel`: messages with `from`, presence events.
    Native,
    /// Service `pubsub`, as Snorky's `PubSubService`: `{type: "message", channel,
    /// message}` only.
    Snorky,
}

struct Member {
    info: MemberInfo,
    mailbox: Mailbox,
    flavor: Flavor,
}

impl Member {
    fn native(&self) -> bool {
        self.flavor == Flavor::Native
    }
}

/// Every channel of the node.
#[derive(Default)]
pub struct Channels {
    inner: Mutex<HashMap<String, HashMap<String, Member>>>,
    /// Sessions that follow every `sys:` channel at once (`sys:*`), by session id. Taken
    /// only while `inner` is held, so events reach them in the channels' order.
    sys_watchers: Mutex<HashMap<String, Mailbox>>,
}

/// What a `sys:*` watcher subscribes to.
pub const ALL_SYSTEM: &str = "sys:*";

impl Channels {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Member>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watchers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Mailbox>> {
        self.sys_watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Passes a `sys:` channel's event to the `sys:*` watchers that are not members of it
    /// (members got it already) and not `except`.
    fn tell_watchers(
        &self,
        channel: &str,
        members: Option<&HashMap<String, Member>>,
        frame: &Frame,
        except: Option<&str>,
    ) {
        if !channel.starts_with("sys:") {
            return;
        }
        for (sid, mailbox) in self.watchers().iter() {
            if Some(sid.as_str()) == except || members.is_some_and(|m| m.contains_key(sid)) {
                continue;
            }
            mailbox.push(frame.clone());
        }
    }

    /// Follows every `sys:` channel; returns their members now.
    pub fn watch_system(
        &self,
        session_id: &str,
        mailbox: Mailbox,
    ) -> HashMap<String, Vec<MemberInfo>> {
        let all = self.lock();
        self.watchers().insert(session_id.to_owned(), mailbox);
        all.iter()
            .filter(|(name, _)| name.starts_with("sys:"))
            .map(|(name, m)| (name.clone(), m.values().map(|m| m.info.clone()).collect()))
            .collect()
    }

    /// Stops following every `sys:` channel.
    pub fn unwatch_system(&self, session_id: &str) -> bool {
        let _all = self.lock();
        self.watchers().remove(session_id).is_some()
    }

    /// Adds a member; returns the members before it (for presence channels) and tells
    /// them it joined.
    pub fn join(
        &self,
        channel: &str,
        info: MemberInfo,
        mailbox: Mailbox,
        flavor: Flavor,
    ) -> Vec<MemberInfo> {
        let mut all = self.lock();
        let members = all.entry(channel.to_owned()).or_default();
        let before: Vec<MemberInfo> = members.values().map(|m| m.info.clone()).collect();
        if has_presence(channel) {
            let joined = envelope(
                Some("channel"),
                json!({"type": "joined", "channel": channel, "member": info}),
            );
            deliver(members.values().filter(|m| m.native()), &joined, None);
            self.tell_watchers(channel, Some(members), &joined, Some(&info.session_id));
        }
        let member = Member {
            info,
            mailbox,
            flavor,
        };
        members.insert(member.info.session_id.clone(), member);
        if has_presence(channel) {
            before
        } else {
            Vec::new()
        }
    }

    /// Removes a member; its peers on a presence channel are told it left.
    pub fn leave(&self, channel: &str, session_id: &str) -> bool {
        let mut all = self.lock();
        let Some(members) = all.get_mut(channel) else {
            return false;
        };
        let Some(gone) = members.remove(session_id) else {
            return false;
        };
        if has_presence(channel) {
            let left = envelope(
                Some("channel"),
                json!({"type": "left", "channel": channel, "member": gone.info}),
            );
            deliver(members.values().filter(|m| m.native()), &left, None);
            self.tell_watchers(channel, Some(members), &left, Some(session_id));
        }
        if members.is_empty() {
            all.remove(channel);
        }
        true
    }

    /// Sends `message` to every member (but `except`); the number it was queued for.
    pub fn publish(
        &self,
        channel: &str,
        message: &Value,
        from: Value,
        except: Option<&str>,
    ) -> usize {
        let all = self.lock();
        let members = all.get(channel);
        let frame = envelope(
            Some("channel"),
            json!({"type": "message", "channel": channel, "message": message, "from": from}),
        );
        self.tell_watchers(channel, members, &frame, except);
        let Some(members) = members else {
            return 0;
        };
        let mut n = deliver(members.values().filter(|m| m.native()), &frame, except);
        let mut snorky = members.values().filter(|m| !m.native()).peekable();
        if snorky.peek().is_some() {
            let frame = envelope(
                Some("pubsub"),
                json!({"type": "message", "channel": channel, "message": message}),
            );
            n += deliver(snorky, &frame, except);
        }
        n
    }

    /// Whether `session_id` is a member of `channel`.
    pub fn is_member(&self, channel: &str, session_id: &str) -> bool {
        self.lock()
            .get(channel)
            .is_some_and(|m| m.contains_key(session_id))
    }

    /// The members of a channel.
    pub fn members(&self, channel: &str) -> Vec<MemberInfo> {
        self.lock()
            .get(channel)
            .map(|m| m.values().map(|m| m.info.clone()).collect())
            .unwrap_or_default()
    }
}

/// Queues `frame` for each member but `except`; a member with a full queue is kicked.
fn deliver<'a>(
    members: impl Iterator<Item = &'a Member>,
    frame: &Frame,
    except: Option<&str>,
) -> usize {
    members
        .filter(|m| Some(m.info.session_id.as_str()) != except)
        .filter(|m| m.mailbox.push(frame.clone()))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "news",
            "a.b-c_d",
            "pvt:x",
            "prs:room.1",
            "sys:commandControl",
            &"a".repeat(64),
        ] {
            assert_eq!(invalid_name(ok), None, "{ok}");
        }
        for bad in ["", "a b", "x:y", "abc:", &"a".repeat(65), "é", "a/b"] {
            assert!(invalid_name(bad).is_some(), "{bad}");
        }
        assert!(needs_token("pvt:a") && !needs_token("news"));
        assert!(has_presence("sys:a") && has_presence("prs:a") && !has_presence("pvt:a"));
    }

    #[test]
    fn an_answer_writes_the_call_id_as_the_caller_did() {
        for raw in [
            "1180591620717411303424",
            "-0.10",
            "1e400",
            r#""c-1""#,
            r#"{"a": [1, 2.50]}"#,
        ] {
            let id: CallId = Some(RawValue::from_string(raw.into()).expect("JSON"));
            let frame = answer(
                Some("session"),
                &id,
                json!({"type": "response", "data": "pong"}),
            );
            // (`1e400` is valid JSON that no `Value` holds, so the frame is read as text.)
            let text = frame.as_str();
            let head = format!(r#"{{"service":"session","message":{{"callId":{raw},"#);
            assert!(text.starts_with(&head), "{text}");
            assert!(text.contains(r#""data":"pong""#), "{text}");
            assert!(text.contains(r#""type":"response""#), "{text}");
        }
        let frame = answer(None, &None, json!({"type": "error", "code": "x"}));
        let v: Value = serde_json::from_str(frame.as_str()).expect("JSON");
        assert_eq!(
            v,
            json!({"service": null, "message": {"type": "error", "callId": null, "code": "x"}})
        );
    }
}
