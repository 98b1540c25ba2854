//! What a client reads, as every front-end shows it: which queue a client may read, and a
//! delivery as a JSON object (`/receive` answers, WebSocket `inbox` pushes).

use std::time::{Duration, SystemTime};

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;
use trunkline_api::ErrorCode;
use trunkline_broker::{dead_name, inbox_name, Delivery, Principal, Target};

use crate::error::{ApiError, ApiResult};

/// Longest lease, in seconds.
pub const MAX_LEASE_SECS: u64 = 12 * 3600;

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
                tracing::error!(id = d.id, "a stored body without content type is not JSON");
                return None;
            }
        },
    };
    let ts = SystemTime::UNIX_EPOCH + Duration::from_millis(data.timestamp_ms);
    Some(OutMessage {
        id: d.id,
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

/// Deliveries as the JSON array `/receive` answers with.
pub fn render(deliveries: &[Delivery]) -> Response {
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
