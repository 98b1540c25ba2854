//! What a WebSocket session is asked: the `{"service", "message": {"command", "params",
//! "callId"}}` envelope read leniently enough that an error answer can still name the
//! service and echo the callId, then the call read into a typed [`Command`], so the
//! services work on checked values, never on `serde_json::Value` lookups.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use trunkline_api::ErrorCode;
use trunkline_broker::Settle;
use trunkline_realtime::{Answer, CallId, Kind};

use super::frames::Flavor;
use crate::delivery::MAX_LEASE_SECS;
use crate::live;

/// One incoming call, once the envelope has been read.
#[derive(Debug)]
pub struct Call {
    pub service: String,
    pub command: String,
    pub params: Value,
    /// Kept as the raw JSON it came as, to be echoed byte for byte.
    pub call_id: CallId,
}

/// An envelope as it comes, its parts still raw: one that is wrong does not hide the
/// others, so the error answer still names the service and echoes the callId.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    service: Option<&'a RawValue>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
}

/// The `message` of a call.
#[derive(Deserialize)]
struct CallMessage<'a> {
    #[serde(borrow)]
    command: Option<&'a RawValue>,
    params: Option<Value>,
    #[serde(rename = "callId")]
    call_id: CallId,
}

/// Whether raw JSON is an object (serde would read a struct from an array too).
fn is_object(raw: &str) -> bool {
    raw.trim_start().starts_with('{')
}

/// A JSON string's value, or `None` for anything else.
fn string_of(raw: &RawValue) -> Option<String> {
    serde_json::from_str(raw.get()).ok()
}

/// A call that could not be read: the service and callId if they could be, and why.
#[derive(Debug)]
pub struct Unreadable {
    pub service: Option<String>,
    pub call_id: CallId,
    pub why: String,
}

/// Reads an envelope; the error names what is wrong (and the service and callId, if any).
pub fn parse_envelope(text: &str) -> Result<Call, Unreadable> {
    const EXPECTED: &str = "expected an object {\"service\": <name>, \"message\": {...}}";
    let unreadable = |service, call_id, why: &str| Unreadable {
        service,
        call_id,
        why: why.to_owned(),
    };
    let envelope: Envelope = match serde_json::from_str(text) {
        Ok(envelope) if is_object(text) => envelope,
        Ok(_) => return Err(unreadable(None, None, EXPECTED)),
        Err(e) if e.is_syntax() || e.is_eof() => {
            return Err(unreadable(None, None, &format!("not JSON: {e}")))
        }
        Err(e) => return Err(unreadable(None, None, &format!("{EXPECTED}: {e}"))),
    };
    let message = envelope
        .message
        .filter(|m| is_object(m.get()))
        .and_then(|m| serde_json::from_str::<CallMessage>(m.get()).ok());
    let call_id = message.as_ref().and_then(|m| m.call_id.clone());
    // A callId is echoed as it came; one the caller could not read back is not echoed.
    let bad_id = call_id.as_deref().is_some_and(|c| !readable_call_id(c));
    let call_id = call_id.filter(|_| !bad_id);
    let Some(service) = envelope.service.and_then(string_of) else {
        return Err(unreadable(None, call_id, EXPECTED));
    };
    if bad_id {
        return Err(unreadable(
            Some(service),
            None,
            "`message.callId` must be JSON of at most 256 bytes, nested at most 16 deep, that \
             reads back as it is (no lone surrogates, no numbers out of range)",
        ));
    }
    let Some(message) = message else {
        return Err(unreadable(
            Some(service),
            call_id,
            "`message` must be an object",
        ));
    };
    let Some(command) = message.command.and_then(string_of) else {
        return Err(unreadable(
            Some(service),
            call_id,
            "`message.command` must be a string",
        ));
    };
    Ok(Call {
        service,
        command,
        params: message.params.unwrap_or(Value::Null),
        call_id,
    })
}

/// Longest callId, in bytes, and its deepest nesting of arrays and objects.
const MAX_CALL_ID: usize = 256;
const MAX_CALL_ID_DEPTH: usize = 16;

/// Whether a callId, echoed byte for byte inside an answer, is JSON that a caller's
/// parser reads back: not too long nor too deep, no lone surrogate escape, no number out
/// of range.
fn readable_call_id(raw: &RawValue) -> bool {
    let text = raw.get();
    text.len() <= MAX_CALL_ID
        && crate::extract::depth(text.as_bytes()) <= MAX_CALL_ID_DEPTH
        && serde_json::from_str::<Value>(text).is_ok()
}

/// Why a call is refused: a registry code and a message for the caller.
pub type Refusal = (ErrorCode, String);

/// A call, read and checked.
#[derive(Debug)]
pub enum Command {
    /// `auth.authenticate {token}`: the first call of a session that did not
    /// authenticate while upgrading.
    Authenticate { token: String },
    /// `session.whoami`.
    Whoami,
    /// `session.ping`.
    Ping,
    /// `inbox.subscribe {queue?, window?, lease?}`.
    Subscribe {
        queue: Option<String>,
        window: u64,
        lease_secs: u64,
    },
    /// `inbox.unsubscribe`.
    Unsubscribe,
    /// `inbox.ack {receipts}`, `inbox.nack {receipts, requeue?}`.
    Settle { receipts: Vec<String>, how: Settle },
    /// `sys:*` through service `channel`: follow every system channel.
    WatchSystem { op: ChannelOp },
    /// Services `channel` and `pubsub` (Snorky's dialect).
    Channel {
        flavor: Flavor,
        channel: String,
        /// A channel token, not yet checked.
        token: Option<String>,
        op: ChannelOp,
    },
    /// `rpc.register {name, functions, token?}`.
    Register {
        name: String,
        functions: Vec<String>,
        token: Option<String>,
    },
    /// `rpc.unregister {name}`.
    Unregister { name: String },
    /// `rpc.call {server, function, payload?, timeout_ms?, token?}`.
    CallRpc {
        server: String,
        token: Option<String>,
        call: CallParams,
    },
    /// `functions.expose {functions}`.
    Expose { functions: Vec<String> },
    /// `functions.call {session_id | channel, function, payload?, timeout_ms?}`.
    CallFunction { target: Target, call: CallParams },
    /// `next`, `end`, `exception` of service `rpc` or `functions`: a callee's answer.
    Answer {
        kind: Kind,
        id: String,
        answer: Answer,
    },
}

/// What a channel call does.
#[derive(Debug)]
pub enum ChannelOp {
    Subscribe,
    Unsubscribe,
    Publish { message: Value, exclude_self: bool },
}

/// Which sessions a client-function call goes to.
#[derive(Debug)]
pub enum Target {
    Session(String),
    /// Every member of the channel but the caller.
    Channel(String),
}

/// The function, payload and timeout of a call to make.
#[derive(Debug)]
pub struct CallParams {
    pub function: String,
    pub payload: Value,
    pub timeout: Duration,
}

#[derive(Deserialize)]
struct TokenParams {
    #[serde(default)]
    token: String,
}

#[derive(Deserialize)]
struct SubscribeParams {
    queue: Option<String>,
    window: Option<u64>,
    lease: Option<u64>,
}

#[derive(Deserialize)]
struct SettleParams {
    receipts: Vec<String>,
    requeue: Option<bool>,
}

#[derive(Deserialize)]
struct ChannelParams {
    channel: String,
    token: Option<String>,
    #[serde(default)]
    message: Value,
    #[serde(default)]
    exclude_self: bool,
}

#[derive(Deserialize)]
struct RegisterParams {
    name: String,
    functions: Vec<String>,
    token: Option<String>,
}

#[derive(Deserialize)]
struct NameParams {
    name: String,
}

#[derive(Deserialize)]
struct FunctionsParams {
    functions: Vec<String>,
}

#[derive(Deserialize)]
struct CallRpcParams {
    server: String,
    token: Option<String>,
    #[serde(flatten)]
    call: RawCall,
}

#[derive(Deserialize)]
struct CallFunctionParams {
    session_id: Option<String>,
    channel: Option<String>,
    #[serde(flatten)]
    call: RawCall,
}

#[derive(Deserialize)]
struct RawCall {
    function: String,
    #[serde(default)]
    payload: Value,
    timeout_ms: Option<f64>,
}

#[derive(Deserialize)]
struct AnswerParams {
    id: String,
    #[serde(default)]
    data: Value,
    code: Option<String>,
    #[serde(default)]
    message: String,
}

impl RawCall {
    fn checked(self) -> Result<CallParams, Refusal> {
        Ok(CallParams {
            function: self.function,
            payload: self.payload,
            timeout: live::timeout_of(self.timeout_ms).map_err(invalid)?,
        })
    }
}

fn invalid(why: String) -> Refusal {
    (ErrorCode::InvalidParams, why)
}

/// `params` read as `T` (absent or `null` params read as `{}`).
fn params<T: DeserializeOwned>(call: &Call) -> Result<T, Refusal> {
    let empty = Value::Object(Default::default());
    let p = match &call.params {
        Value::Null => &empty,
        p @ Value::Object(_) => p,
        _ => return Err(invalid("params must be an object".into())),
    };
    T::deserialize(p).map_err(|e| invalid(format!("params: {e}")))
}

/// `functions`: 1 to 256 function names of 1 to 128 characters.
fn function_names(f: Vec<String>) -> Result<Vec<String>, Refusal> {
    if (1..=256).contains(&f.len()) && f.iter().all(|n| (1..=128).contains(&n.len())) {
        return Ok(f);
    }
    Err(invalid(
        "params.functions must be an array of 1 to 256 names of 1 to 128 characters".into(),
    ))
}

fn unknown(service: &str, command: &str, known: &str) -> Refusal {
    (
        ErrorCode::UnknownCommand,
        format!("service `{service}` has no command `{command}` ({known})"),
    )
}

impl Command {
    /// Reads a call; `max_window` is the largest inbox window (the broker's
    /// `max_receive`).
    pub fn parse(call: &Call, max_window: u64) -> Result<Command, Refusal> {
        let command = call.command.as_str();
        let c = match (call.service.as_str(), command) {
            ("auth", "authenticate") => {
                let p: TokenParams = params(call)?;
                Command::Authenticate { token: p.token }
            }
            ("auth", other) => return Err(unknown("auth", other, "authenticate")),
            ("session", "whoami") => Command::Whoami,
            ("session", "ping") => Command::Ping,
            ("session", other) => return Err(unknown("session", other, "whoami, ping")),
            ("inbox", "subscribe") => {
                let p: SubscribeParams = params(call)?;
                let window = p.window.unwrap_or(10);
                if !(1..=max_window).contains(&window) {
                    return Err(invalid(format!("window must be 1 to {max_window}")));
                }
                let lease_secs = p.lease.unwrap_or(30);
                if !(1..=MAX_LEASE_SECS).contains(&lease_secs) {
                    return Err(invalid(format!(
                        "lease must be 1 to {MAX_LEASE_SECS} seconds"
                    )));
                }
                Command::Subscribe {
                    queue: p.queue,
                    window,
                    lease_secs,
                }
            }
            ("inbox", "unsubscribe") => Command::Unsubscribe,
            ("inbox", verb @ ("ack" | "nack")) => {
                let p: SettleParams = params(call)?;
                let how = match (verb, p.requeue) {
                    ("ack", None) => Settle::Ack,
                    ("ack", Some(_)) => return Err(invalid("requeue applies to nack only".into())),
                    (_, requeue) => Settle::Nack {
                        requeue: requeue.unwrap_or(true),
                    },
                };
                Command::Settle {
                    receipts: p.receipts,
                    how,
                }
            }
            ("inbox", other) => {
                return Err(unknown("inbox", other, "subscribe, unsubscribe, ack, nack"))
            }
            (service @ ("channel" | "pubsub"), verb) => {
                let flavor = match service {
                    "channel" => Flavor::Native,
                    _ => Flavor::Snorky,
                };
                let op = |message, exclude_self| match verb {
                    "subscribe" => Ok(ChannelOp::Subscribe),
                    "unsubscribe" => Ok(ChannelOp::Unsubscribe),
                    "publish" => Ok(ChannelOp::Publish {
                        message,
                        exclude_self,
                    }),
                    other => Err(unknown(service, other, "subscribe, unsubscribe, publish")),
                };
                // The command first: an unknown one is named as such, whatever its params.
                op(Value::Null, false)?;
                let p: ChannelParams = params(call)?;
                let op = op(p.message, p.exclude_self)?;
                if p.channel == trunkline_realtime::names::ALL_SYSTEM {
                    if flavor == Flavor::Snorky {
                        return Err(invalid("`sys:*` is for service `channel`".into()));
                    }
                    return Ok(Command::WatchSystem { op });
                }
                if let Some(why) = trunkline_realtime::names::invalid_name(&p.channel) {
                    return Err(invalid(why));
                }
                Command::Channel {
                    flavor,
                    channel: p.channel,
                    token: p.token,
                    op,
                }
            }
            ("rpc", "register") => {
                let p: RegisterParams = params(call)?;
                Command::Register {
                    name: p.name,
                    functions: function_names(p.functions)?,
                    token: p.token,
                }
            }
            ("rpc", "unregister") => {
                let p: NameParams = params(call)?;
                Command::Unregister { name: p.name }
            }
            ("rpc", "call") => {
                let p: CallRpcParams = params(call)?;
                Command::CallRpc {
                    server: p.server,
                    token: p.token,
                    call: p.call.checked()?,
                }
            }
            ("functions", "expose") => {
                let p: FunctionsParams = params(call)?;
                Command::Expose {
                    functions: function_names(p.functions)?,
                }
            }
            ("functions", "call") => {
                let p: CallFunctionParams = params(call)?;
                let target = match (p.session_id, p.channel) {
                    (Some(s), None) => Target::Session(s),
                    (None, Some(c)) => Target::Channel(c),
                    _ => {
                        return Err(invalid(
                            "give params.session_id or params.channel (a string), not both".into(),
                        ))
                    }
                };
                Command::CallFunction {
                    target,
                    call: p.call.checked()?,
                }
            }
            (service @ ("rpc" | "functions"), verb @ ("next" | "end" | "exception")) => {
                let kind = match service {
                    "rpc" => Kind::Rpc,
                    _ => Kind::Function,
                };
                let p: AnswerParams = params(call)?;
                let answer = match verb {
                    "next" => Answer::Next(p.data),
                    "end" => Answer::End(p.data),
                    _ => Answer::Exception {
                        code: p
                            .code
                            .ok_or_else(|| invalid("params.code must be a string".into()))?,
                        message: p.message,
                    },
                };
                Command::Answer {
                    kind,
                    id: p.id,
                    answer,
                }
            }
            ("rpc", other) => {
                return Err(unknown(
                    "rpc",
                    other,
                    "register, unregister, call, next, end, exception",
                ))
            }
            ("functions", other) => {
                return Err(unknown(
                    "functions",
                    other,
                    "expose, call, next, end, exception",
                ))
            }
            (other, _) => {
                return Err((
                    ErrorCode::UnknownService,
                    format!("no service `{other}`; see docs/ws-protocol.md"),
                ))
            }
        };
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Command, Refusal> {
        Command::parse(&parse_envelope(text).expect("an envelope"), 100)
    }

    #[test]
    fn an_envelope_is_an_object_and_its_errors_keep_the_service_and_call_id() {
        let call = parse_envelope(
            r#"{"service":"session","message":{"command":"ping","callId":1180591620717411303424}}"#,
        )
        .expect("a call");
        assert_eq!(
            (call.service.as_str(), call.command.as_str()),
            ("session", "ping")
        );
        assert_eq!(
            call.call_id.as_deref().map(RawValue::get),
            Some("1180591620717411303424")
        );
        // serde reads a struct from an array as well; an envelope is an object only.
        for text in [
            r#"["session",{"command":"ping"}]"#,
            r#"{"service":"session","message":["ping",null,1]}"#,
            "null",
            "{nope",
        ] {
            assert!(parse_envelope(text).is_err(), "{text}");
        }
        let Err(u) =
            parse_envelope(r#"{"service":"session","message":{"command":7,"callId":"c"}}"#)
        else {
            panic!("a number is no command");
        };
        assert_eq!(u.service.as_deref(), Some("session"));
        assert_eq!(u.call_id.as_deref().map(RawValue::get), Some(r#""c""#));
        let Err(u) = parse_envelope(r#"{"service":3,"message":{"command":"x","callId":[1]}}"#)
        else {
            panic!("a number is no service");
        };
        assert_eq!(
            (u.service, u.call_id.as_deref().map(RawValue::get)),
            (None, Some("[1]"))
        );
    }

    #[test]
    fn calls_are_read_into_checked_commands() {
        let c =
            parse(r#"{"service":"inbox","message":{"command":"subscribe","params":{"window":5}}}"#);
        assert!(
            matches!(
                c,
                Ok(Command::Subscribe {
                    queue: None,
                    window: 5,
                    lease_secs: 30
                })
            ),
            "{c:?}"
        );
        let c = parse(
            r#"{"service":"inbox","message":{"command":"nack","params":{"receipts":["r"],"requeue":false}}}"#,
        );
        assert!(
            matches!(
                c,
                Ok(Command::Settle {
                    how: Settle::Nack { requeue: false },
                    ..
                })
            ),
            "{c:?}"
        );
        let c = parse(
            r#"{"service":"functions","message":{"command":"call","params":{"channel":"prs:a","function":"f","timeout_ms":50.0}}}"#,
        );
        assert!(
            matches!(&c, Ok(Command::CallFunction { target: Target::Channel(ch), call }) if ch == "prs:a" && call.timeout == Duration::from_millis(50)),
            "{c:?}"
        );
        let c = parse(
            r#"{"service":"channel","message":{"command":"subscribe","params":{"channel":"sys:*"}}}"#,
        );
        assert!(
            matches!(
                c,
                Ok(Command::WatchSystem {
                    op: ChannelOp::Subscribe
                })
            ),
            "{c:?}"
        );

        let refused = |text: &str| parse(text).expect_err(text).0;
        for (text, code) in [
            (
                r#"{"service":"inbox","message":{"command":"subscribe","params":{"window":0}}}"#,
                ErrorCode::InvalidParams,
            ),
            (
                r#"{"service":"inbox","message":{"command":"subscribe","params":{"window":101}}}"#,
                ErrorCode::InvalidParams,
            ),
            (
                r#"{"service":"inbox","message":{"command":"ack","params":{"receipts":["r"],"requeue":true}}}"#,
                ErrorCode::InvalidParams,
            ),
            (
                r#"{"service":"inbox","message":{"command":"ack","params":[1]}}"#,
                ErrorCode::InvalidParams,
            ),
            (
                r#"{"service":"channel","message":{"command":"subscribe","params":{"channel":"a b"}}}"#,
                ErrorCode::InvalidParams,
            ),
            (
                r#"{"service":"channel","message":{"command":"shout","params":7}}"#,
                ErrorCode::UnknownCommand,
            ),
            (
                r#"{"service":"pubsub","message":{"command":"subscribe","params":{"channel":"sys:*"}}}"#,
                ErrorCode::InvalidParams,
            ),
            (
                r#"{"service":"rpc","message":{"command":"register","params":{"name":"s","functions":[]}}}"#,
                ErrorCode::InvalidParams,
            ),
            (
                r#"{"service":"rpc","message":{"command":"call","params":{"server":"s","function":"f","timeout_ms":0}}}"#,
                ErrorCode::InvalidParams,
            ),
            (
                r#"{"service":"functions","message":{"command":"call","params":{"session_id":"a","channel":"b","function":"f"}}}"#,
                ErrorCode::InvalidParams,
            ),
            (
                r#"{"service":"functions","message":{"command":"exception","params":{"id":"1"}}}"#,
                ErrorCode::InvalidParams,
            ),
            (
                r#"{"service":"nope","message":{"command":"x"}}"#,
                ErrorCode::UnknownService,
            ),
        ] {
            assert_eq!(refused(text), code, "{text}");
        }
    }
}
