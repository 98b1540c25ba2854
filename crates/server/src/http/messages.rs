//! `/send`, `/notify`, `/receive`, `/ack`, `/nack`.

use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json as AxumJson;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use trunkline_api::{AckResponse, ErrorCode, SendResponse};
use trunkline_broker::{
    dead_name, inbox_name, Delivery, Principal, Publish, ReceiveOptions, Settle, Target,
};

use super::error::{ApiError, ApiResult};
use super::extract::{parse_json, Caller, JsonBytes, Query};
use super::{now_ms, AppState};

/// Longest publisher `message_id`, in bytes.
const MAX_MESSAGE_ID: usize = 256;
/// Longest lease, in seconds.
pub(crate) const MAX_LEASE_SECS: u64 = 12 * 3600;

#[derive(Deserialize)]
struct NocHeader {
    /// `Some(Null)` for an explicit `null`, which is refused like any non-string.
    #[serde(default, deserialize_with = "present")]
    destination: Option<serde_json::Value>,
}

/// Both body forms: `{topic, body}` and the NOC message `{header: {destination}, payload}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody<'a> {
    #[serde(default, deserialize_with = "present")]
    topic: Option<String>,
    /// Any JSON value, `null` included.
    #[serde(borrow, default, deserialize_with = "present")]
    body: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present")]
    header: Option<NocHeader>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present")]
    message_id: Option<String>,
    /// Seconds.
    #[serde(default, deserialize_with = "present")]
    ttl: Option<f64>,
}

/// A field that, when present, is read as its type: `null` is then either a value (for a
/// raw JSON body) or a type error (for a topic, a ttl, …), never "absent" as a plain
/// `Option` would read it.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Deepest nesting of arrays and objects accepted in a body: receivers in other
/// languages (Python's `json`, for one) fail on much deeper documents.
const MAX_DEPTH: usize = 128;

/// Nesting depth of valid JSON text, counting brackets outside strings.
pub(crate) fn depth(json: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Reads a `/send` (or, with `broadcast`, `/notify`) body from `sender`: both body forms,
/// the nesting limit, `message_id` and `ttl`. The topic is checked by the broker.
pub fn parse_publish(bytes: &[u8], sender: &str, broadcast: bool) -> ApiResult<Publish> {
    let b: SendBody = parse_json(bytes)?;
    // The envelope adds one level around the body.
    if depth(bytes) > MAX_DEPTH + 1 {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!("the body nests arrays and objects deeper than {MAX_DEPTH} levels"),
        ));
    }
    let (topic, body) = match (b.topic, b.body, b.header) {
        (Some(topic), Some(body), None) if b.payload.is_none() => (topic, body.get().as_bytes().to_vec()),
        (None, Some(body), None) if broadcast && b.payload.is_none() => {
            ("broadcast".to_owned(), body.get().as_bytes().to_vec())
        }
        (Some(_), None, None) | (None, None, None) if b.payload.is_none() => {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                "expected {\"topic\": ..., \"body\": ...} or a NOC message {\"header\": {\"destination\": ...}, \"payload\": ...}",
            ))
        }
        (None, None, Some(h)) => {
            let topic = match h.destination {
                Some(serde_json::Value::String(d)) => d,
                None if broadcast => "broadcast".to_owned(),
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidBody,
                        "header.destination must be a string: it is the topic",
                    ))
                }
            };
            // The whole NOC message is the body, so receivers get what was sent.
            (topic, bytes.to_vec())
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                "send either {topic, body} or a NOC message {header, payload}, not a mix",
            ))
        }
    };
    if let Some(id) = &b.message_id {
        if id.is_empty() || id.len() > MAX_MESSAGE_ID {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                format!("message_id must be 1 to {MAX_MESSAGE_ID} bytes"),
            ));
        }
    }
    let ttl_ms = match b.ttl {
        None => None,
        Some(t) if t.is_finite() && t > 0.0 && t <= 365.0 * 86400.0 => {
            Some(((t * 1000.0) as u64).max(1))
        }
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                "ttl is in seconds, more than 0 and at most a year",
            ))
        }
    };
    Ok(Publish {
        topic,
        body: body.into(),
        sender: sender.to_owned(),
        message_id: b.message_id,
        ttl_ms,
        broadcast,
        queue: None,
        content_type: None,
        headers: Vec::new(),
    })
}

async fn publish(
    state: AppState,
    caller: Caller,
    bytes: &[u8],
    broadcast: bool,
) -> ApiResult<Response> {
    let p = parse_publish(bytes, &caller.0.client_id, broadcast)?;
    caller.0.check_publish(&p)?;
    let r = state.broker.publish(p, now_ms()).await?;
    Ok((
        StatusCode::ACCEPTED,
        AxumJson(SendResponse {
            id: r.id,
            delivered_to: r.delivered_to,
            duplicate: r.duplicate,
        }),
    )
        .into_response())
}

/// `POST /send`: 202 once the message is durable in every matching inbox.
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    JsonBytes(bytes): JsonBytes,
) -> ApiResult<Response> {
    publish(state, caller, &bytes, false).await
}

/// `POST /notify`: to every inbox.
pub async fn notify(
    State(state): State<AppState>,
    caller: Caller,
    JsonBytes(bytes): JsonBytes,
) -> ApiResult<Response> {
    publish(state, caller, &bytes, true).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveQuery {
    max_messages: Option<usize>,
    /// `auto` (default, destructive as the NOC) or `manual`.
    ack: Option<String>,
    /// Lease in seconds for `ack=manual` (default 30).
    lease: Option<u64>,
    /// Seconds to wait for a message when the inbox is empty (long poll).
    wait: Option<u64>,
    /// `inbox` (default) or `dead`.
    queue: Option<String>,
}

#[derive(Serialize)]
struct OutMessage<'a> {
    id: u64,
    topic: &'a str,
    body: &'a RawValue,
    sender: &'a str,
    timestamp: String,
    redelivered: bool,
    delivery_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt: Option<&'a str>,
    /// Present when the body is not JSON (it is then shown as a string).
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    /// Publisher headers (from STOMP), first occurrence of each name.
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<std::collections::BTreeMap<&'a str, &'a str>>,
}

/// A body that is not JSON (it has a content type; sent over STOMP) as a JSON string of
/// its text; `None` for JSON bodies, which are shown as they are.
fn body_text(d: &Delivery) -> Option<Box<RawValue>> {
    let data = &d.data;
    data.content_type.as_ref().map(|_| {
        serde_json::value::to_raw_value(&String::from_utf8_lossy(&data.body))
            .unwrap_or_else(|_| RawValue::NULL.to_owned())
    })
}

/// One delivery as the API shows it (`text` from [`body_text`]); `None` if its stored body
/// is broken (logged).
fn out_message<'a>(d: &'a Delivery, text: &'a Option<Box<RawValue>>) -> Option<OutMessage<'a>> {
    let data = &d.data;
    let body: &RawValue = match text {
        Some(t) => t,
        None => match serde_json::from_slice(&data.body) {
            Ok(b) => b,
            Err(_) => {
                tracing::error!(
                    id = d.msg.id,
                    "a stored body without content type is not JSON"
                );
                return None;
            }
        },
    };
    let ts = SystemTime::UNIX_EPOCH + Duration::from_millis(data.timestamp_ms);
    Some(OutMessage {
        id: d.msg.id,
        topic: &data.topic,
        body,
        sender: &data.sender,
        timestamp: humantime::format_rfc3339_millis(ts).to_string(),
        redelivered: d.redelivered(),
        delivery_count: d.delivery_count,
        receipt: d.receipt.as_deref(),
        content_type: data.content_type.as_deref(),
        headers: (!data.headers.is_empty()).then(|| {
            data.headers
                .iter()
                .rev()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
        }),
    })
}

/// One delivery as a JSON object, the same fields `/receive` shows (for WebSocket pushes).
pub fn message_value(d: &Delivery) -> Option<serde_json::Value> {
    let text = body_text(d);
    out_message(d, &text).and_then(|m| serde_json::to_value(m).ok())
}

fn render(deliveries: &[Delivery]) -> Response {
    // `texts` holds the string forms of non-JSON bodies while `out` borrows them.
    let texts: Vec<Option<Box<RawValue>>> = deliveries.iter().map(body_text).collect();
    let out: Vec<OutMessage<'_>> = deliveries
        .iter()
        .zip(&texts)
        .filter_map(|(d, text)| out_message(d, text))
        .collect();
    match serde_json::to_vec(&out) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(_) => ApiError::new(ErrorCode::Internal, "cannot encode messages").into_response(),
    }
}

/// The queue a client asks to read: `inbox` (the default), `dead`, or another queue it
/// was granted (PATCH /client {grants}); `forbidden` for any other.
pub fn readable_queue(who: &Principal, name: Option<&str>) -> ApiResult<String> {
    let queue = match name {
        None | Some("inbox") => inbox_name(&who.client_id),
        Some("dead") => dead_name(&who.client_id),
        Some(other) => other.to_owned(),
    };
    who.check_read(Target::Queue(&queue))?;
    Ok(queue)
}

/// `GET /receive?max_messages=N&ack=auto|manual&lease=S&wait=S&queue=inbox|dead`.
pub async fn receive(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(q): Query<ReceiveQuery>,
) -> ApiResult<Response> {
    let max = q.max_messages.unwrap_or(10);
    if max == 0 || max > state.broker.config().max_receive {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            format!(
                "max_messages must be 1 to {}",
                state.broker.config().max_receive
            ),
        ));
    }
    let lease_ms = match (q.ack.as_deref(), q.lease) {
        (None | Some("auto"), None) => None,
        (Some("manual"), lease) => {
            let secs = lease.unwrap_or(30);
            if secs == 0 || secs > MAX_LEASE_SECS {
                return Err(ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!("lease must be 1 to {MAX_LEASE_SECS} seconds"),
                ));
            }
            Some(secs * 1000)
        }
        // A lease means nothing when messages are removed as they are returned.
        (None | Some("auto"), Some(secs)) => {
            if secs == 0 || secs > MAX_LEASE_SECS {
                return Err(ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!("lease must be 1 to {MAX_LEASE_SECS} seconds"),
                ));
            }
            None
        }
        (Some(other), _) => {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("ack must be `auto` or `manual`, not `{other}`"),
            ))
        }
    };
    let queue = readable_queue(&caller, q.queue.as_deref())?;
    let max_wait = state.config.http_limits.max_wait_secs;
    let wait = q.wait.unwrap_or(0);
    if wait > max_wait {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            format!("wait must be at most {max_wait} seconds"),
        ));
    }
    let opts = ReceiveOptions { max, lease_ms };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let got = state
        .broker
        .receive_wait(
            &caller,
            &queue,
            opts,
            Some(deadline),
            &state.shutdown,
            now_ms,
        )
        .await?;
    Ok(render(&got))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleBody {
    receipts: Vec<String>,
    /// For `/nack`: false sends the messages straight to the dead-letter queue.
    #[serde(default, deserialize_with = "present")]
    requeue: Option<bool>,
}

const MAX_RECEIPTS: usize = 10_000;

/// Reads a `/ack` (or, with `nack`, `/nack`) body: the receipts and how to settle them.
pub fn parse_settle(bytes: &[u8], nack: bool) -> ApiResult<(Vec<String>, Settle)> {
    let b: SettleBody = parse_json(bytes)?;
    if b.receipts.len() > MAX_RECEIPTS {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!("at most {MAX_RECEIPTS} receipts at a time"),
        ));
    }
    let how = match (nack, b.requeue) {
        (false, None) => Settle::Ack,
        (false, Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                "requeue applies to /nack only",
            ))
        }
        (true, requeue) => Settle::Nack {
            requeue: requeue.unwrap_or(true),
        },
    };
    Ok((b.receipts, how))
}

async fn settle(
    state: AppState,
    caller: Caller,
    bytes: &[u8],
    nack: bool,
) -> ApiResult<AxumJson<AckResponse>> {
    let (receipts, how) = parse_settle(bytes, nack)?;
    let r = state
        .broker
        .settle(&caller.0, &receipts, how, now_ms())
        .await?;
    Ok(AxumJson(AckResponse {
        done: r.done,
        unknown: r.unknown,
    }))
}

/// `POST /ack {receipts}`.
pub async fn ack(
    State(state): State<AppState>,
    caller: Caller,
    JsonBytes(bytes): JsonBytes,
) -> ApiResult<AxumJson<AckResponse>> {
    settle(state, caller, &bytes, false).await
}

/// `POST /nack {receipts, requeue?}`.
pub async fn nack(
    State(state): State<AppState>,
    caller: Caller,
    JsonBytes(bytes): JsonBytes,
) -> ApiResult<AxumJson<AckResponse>> {
    settle(state, caller, &bytes, true).await
}

#[cfg(test)]
mod tests {
    use super::{depth, parse_publish};
    use trunkline_api::ErrorCode;

    #[test]
    fn a_noc_message_is_stored_whole_so_all_of_it_must_be_json() {
        // Found by the http_body fuzz target: bytes that are not UTF-8 in a header field
        // the node ignores were accepted, stored, and then could not be shown by /receive.
        let bad = b"{\"header\":{\"destination\":\"a\",\"x\":\"\xff\"},\"payload\":1}";
        let e = parse_publish(bad, "c", false).err().map(|e| e.code);
        assert_eq!(e, Some(ErrorCode::MalformedJson));
        let good = br#"{"header":{"destination":"a","x":"\u00ff"},"payload":1}"#;
        let p = parse_publish(good, "c", false).expect("a NOC message");
        assert_eq!((p.topic.as_str(), &p.body[..]), ("a", &good[..]));
    }

    #[test]
    fn malformed_json_means_the_bytes_are_not_json() {
        let code = |b: &[u8]| parse_publish(b, "c", false).err().map(|e| e.code);
        // Valid JSON of the wrong shape, even when serde's typed parse calls it a syntax
        // error (nesting past its limit, a lone surrogate).
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(code(deep.as_bytes()), Some(ErrorCode::InvalidBody));
        assert_eq!(
            code(br#"{"topic":"\ud800","body":1}"#),
            Some(ErrorCode::InvalidBody)
        );
        // Not JSON, even past a shape error.
        assert_eq!(code(br#"{"colour":1,"#), Some(ErrorCode::MalformedJson));
        assert_eq!(
            code(b"{\"colour\":\"\xff\"}"),
            Some(ErrorCode::MalformedJson)
        );
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(depth(br#"1"#), 0);
        assert_eq!(depth(br#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(depth(br#"{"a":"[[[[\"[["}"#), 1);
        assert_eq!(depth(br#"[[],[[]]]"#), 3);
    }
}
