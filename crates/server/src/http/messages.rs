//! `/send`, `/notify`, `/receive`, `/ack`, `/nack`.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json as AxumJson;
use serde::Deserialize;
use serde_json::value::RawValue;
use trunkline_api::{AckResponse, ErrorCode, SendResponse};
use trunkline_broker::{Publish, ReceiveOptions, Settle};

use super::error::{ApiError, ApiResult};
use super::extract::{depth, parse_json, Caller, JsonBytes, Query, MAX_DEPTH};
use super::{now_ms, AppState};
use crate::delivery::{readable_queue, render, MAX_LEASE_SECS};

/// Longest publisher `message_id`, in bytes.
const MAX_MESSAGE_ID: usize = 256;

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
            &now_ms,
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
    use super::parse_publish;
    use crate::extract::depth;
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
