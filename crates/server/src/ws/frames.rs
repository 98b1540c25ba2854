//! What a WebSocket session is sent, as JSON text frames: `{"service", "message"}`
//! envelopes, answers that carry the caller's `callId`, and the live engine's events
//! rendered for the session's dialect ([`WsMailbox`]).

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trunkline_api::ErrorCode;
use trunkline_realtime::{CallError, CallId, Event, Kind, Mailbox};

/// A text frame for a session: cheap to clone, so one rendered push is shared by every
/// session it goes to.
pub type Frame = axum::extract::ws::Utf8Bytes;

/// Frames waiting for one session before it counts as a slow consumer.
pub const SESSION_QUEUE: usize = 1024;

/// `{"service": service, "message": message}` as a frame.
pub fn envelope(service: Option<&str>, message: impl Serialize) -> Frame {
    #[derive(Serialize)]
    struct Envelope<'a, T> {
        service: Option<&'a str>,
        message: T,
    }
    match serde_json::to_string(&Envelope { service, message }) {
        Ok(text) => text.into(),
        // Only a map with non-string keys fails, and no message has one.
        Err(_) => r#"{"service":null,"message":null}"#.into(),
    }
}

/// An answer to a call: `{"service": service, "message": {"callId": call_id, ..message}}`,
/// with the callId as the caller wrote it (`null` for `None`). `message` is an object
/// (`{type: "response", data}`, `{type: "error", code, message}`, ...).
pub fn answer(service: Option<&str>, call_id: &CallId, message: Value) -> Frame {
    #[derive(Serialize)]
    struct Message<'a> {
        #[serde(rename = "callId")]
        call_id: &'a CallId,
        #[serde(flatten)]
        rest: &'a Value,
    }
    // Only a `message` that is not an object cannot be flattened; every caller passes an
    // object. Such a frame would go without the callId.
    if !message.is_object() {
        return envelope(service, message);
    }
    envelope(
        service,
        Message {
            call_id,
            rest: &message,
        },
    )
}

/// An error answer to a call.
pub fn error_frame(service: Option<&str>, call_id: &CallId, code: ErrorCode, text: &str) -> Frame {
    answer(
        service,
        call_id,
        json!({"type": "error", "code": code, "message": text}),
    )
}

/// The WebSocket service that carries a kind of call.
pub fn service_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Rpc => "rpc",
        Kind::Function => "functions",
    }
}

/// A call's error as JSON: `{code, message}`, plus `exception` if the callee raised one.
pub fn call_error_json(e: &CallError) -> Value {
    let mut v = json!({"code": e.code, "message": e.message});
    if let Some(x) = &e.exception {
        v["exception"] = x.clone();
    }
    v
}

/// Which service a member subscribed to a channel with, and so the shape of what it is
/// sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    /// Service `channel`: messages with `from`, presence events.
    #[default]
    Native,
    /// Service `pubsub`, as Snorky's `PubSubService`: `{type: "message", channel,
    /// message}` only.
    Snorky,
}

/// How the live engine reaches a WebSocket session: its bounded queue of frames, and the
/// token that closes it as a slow consumer when the queue is full.
#[derive(Clone)]
pub struct WsMailbox {
    pub tx: mpsc::Sender<Frame>,
    /// Cancelled to close the session (slow consumer).
    pub kick: CancellationToken,
}

impl WsMailbox {
    /// A mailbox and the queue its session writes from.
    pub fn new() -> (Self, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let kick = CancellationToken::new();
        (WsMailbox { tx, kick }, rx)
    }
}

impl Mailbox for WsMailbox {
    type Frame = Frame;
    type Style = Flavor;

    fn render(flavor: Flavor, event: &Event<'_>) -> Option<Frame> {
        let frame = match (flavor, *event) {
            (
                Flavor::Snorky,
                Event::Message {
                    channel, message, ..
                },
            ) => envelope(
                Some("pubsub"),
                json!({"type": "message", "channel": channel, "message": message}),
            ),
            // Snorky's clients know of messages only.
            (Flavor::Snorky, _) => return None,
            // Sessions subscribe to channels, not to topic patterns.
            (_, Event::Topic { .. }) => return None,
            (_, Event::Joined { channel, member }) => envelope(
                Some("channel"),
                json!({"type": "joined", "channel": channel, "member": member}),
            ),
            (_, Event::Left { channel, member }) => envelope(
                Some("channel"),
                json!({"type": "left", "channel": channel, "member": member}),
            ),
            (
                _,
                Event::Message {
                    channel,
                    message,
                    from,
                },
            ) => envelope(
                Some("channel"),
                json!({"type": "message", "channel": channel, "message": message, "from": from}),
            ),
            (_, Event::Direct { message }) => envelope(
                Some("session"),
                json!({"type": "message", "message": message, "from": {"backend": true}}),
            ),
            (
                _,
                Event::Call {
                    kind,
                    id,
                    server,
                    function,
                    payload,
                    from,
                    timeout_ms,
                },
            ) => {
                let mut m = json!({"type": "call", "id": id.to_string(), "function": function,
                    "payload": payload, "from": from, "timeout_ms": timeout_ms});
                if let Some(server) = server {
                    m["server"] = json!(server);
                }
                envelope(Some(service_of(kind)), m)
            }
            (_, Event::Cancelled { kind, id, reason }) => envelope(
                Some(service_of(kind)),
                json!({"type": "cancelled", "id": id.to_string(), "reason": reason}),
            ),
            (
                _,
                Event::Part {
                    kind,
                    call_id,
                    data,
                },
            ) => answer(
                Some(service_of(kind)),
                call_id,
                json!({"type": "next", "data": data}),
            ),
            (
                _,
                Event::Outcome {
                    kind,
                    call_id,
                    result,
                },
            ) => {
                let message = match result {
                    Ok(data) => json!({"type": "response", "data": data}),
                    Err(e) => {
                        let mut m = call_error_json(e);
                        m["type"] = json!("error");
                        m
                    }
                };
                answer(Some(service_of(kind)), call_id, message)
            }
        };
        Some(frame)
    }

    /// Queues a frame. A full queue closes the session as a slow consumer.
    fn push(&self, frame: Frame) -> bool {
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

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

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
