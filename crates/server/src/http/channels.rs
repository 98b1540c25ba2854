//! The backend's channel endpoints (backend listener; `X-Backend-Key` or an admin token):
//! mint channel tokens, publish to a channel, list its members.

use axum::extract::State;
use axum::Json as AxumJson;
use serde::Deserialize;
use serde_json::{json, Value};
use trunkline_api::ErrorCode;
use trunkline_auth::ChannelClaims;

use super::error::{ApiError, ApiResult};
use super::extract::{Admin, Json, Path};
use super::{now_ms, AppState};
use trunkline_realtime::names::invalid_name;
use trunkline_realtime::{Caller, MemberInfo};

/// Longest a channel token may live.
const MAX_TOKEN_SECS: u64 = 7 * 24 * 3600;

pub(super) fn channel_name(name: &str) -> ApiResult<()> {
    match invalid_name(name) {
        Some(why) => Err(ApiError::new(ErrorCode::InvalidBody, why)),
        None => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintToken {
    sid: String,
    cname: String,
    #[serde(rename = "pub", default)]
    publish: bool,
    #[serde(default)]
    conn_info: Option<Value>,
    /// Seconds the token lives (default 3600). A number, so that `60.0` is 60 as JSON
    /// Schema's `integer` says.
    #[serde(default)]
    ttl: Option<f64>,
}

/// `POST /channel-token {sid, cname, pub?, conn_info?, ttl?}` → `{token, exp}`. The token
/// names the client of session `sid` too, so `sid` must be an open session.
pub async fn mint(
    State(state): State<AppState>,
    _admin: Admin,
    Json(b): Json<MintToken>,
) -> ApiResult<AxumJson<Value>> {
    channel_name(&b.cname)?;
    let ttl = b.ttl.unwrap_or(3600.0);
    if !(1.0..=MAX_TOKEN_SECS as f64).contains(&ttl) || ttl.fract() != 0.0 {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!("ttl must be 1 to {MAX_TOKEN_SECS} seconds"),
        ));
    }
    let client_id = state
        .sessions
        .client_of(&b.sid)
        .map_err(|_| no_session(&b.sid))?;
    let exp = now_ms() / 1000 + ttl as u64;
    let claims = ChannelClaims {
        sid: b.sid,
        client_id: client_id.to_string(),
        cname: b.cname,
        publish: b.publish,
        conn_info: b.conn_info,
        exp,
    };
    let token = trunkline_auth::channel::sign(&state.keys.channel_key, &claims);
    Ok(AxumJson(json!({"token": token, "exp": exp})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    message: Value,
}

/// `POST /channels/{channel}/publish {message}` → `{delivered}`.
pub async fn publish(
    State(state): State<AppState>,
    _admin: Admin,
    Path(channel): Path<String>,
    Json(b): Json<PublishBody>,
) -> ApiResult<AxumJson<Value>> {
    channel_name(&channel)?;
    let n = state
        .channels
        .publish(&channel, &b.message, &Caller::Backend, None);
    Ok(AxumJson(json!({"delivered": n})))
}

/// `GET /channels/{channel}/members` → `[{session_id, client_id, info}]`.
pub async fn members(
    State(state): State<AppState>,
    _admin: Admin,
    Path(channel): Path<String>,
) -> ApiResult<AxumJson<Vec<MemberInfo>>> {
    channel_name(&channel)?;
    Ok(AxumJson(state.channels.members(&channel)))
}

/// `POST /backend`: Snorky's backend interface. The body is `{service, message: {command,
/// params, callId?}}`; the answer, HTTP 200 whatever the outcome, is in the same wrapping:
/// `{type: "response", callId, data}` or `{type: "error", callId, message}` (`callId` only
/// if the call had one). Service `pubsub`, command `publish {channel, message}` publishes to
/// a channel, as Snorky's `PubSubBackend` does, so that its Python `SnorkyBackend` works
/// unchanged.
pub async fn snorky(
    State(state): State<AppState>,
    _admin: Admin,
    Json(body): Json<Value>,
) -> ApiResult<AxumJson<Value>> {
    let service = body.get("service").and_then(Value::as_str);
    let message = body.get("message").and_then(Value::as_object);
    let (Some(service), Some(message)) = (service, message) else {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "expected {\"service\": <name>, \"message\": {\"command\", \"params\", \"callId\"?}}",
        ));
    };
    let call_id = message.get("callId").cloned();
    let command = message.get("command").and_then(Value::as_str);
    let params = message.get("params").cloned().unwrap_or(json!({}));
    let (Some(command), true) = (command, params.is_object()) else {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "message.command must be a string and message.params an object",
        ));
    };
    let outcome: Result<Value, &str> = match (service, command) {
        ("pubsub", "publish") => {
            match (
                params.get("channel").and_then(Value::as_str),
                params.get("message"),
            ) {
                (Some(channel), Some(msg)) if invalid_name(channel).is_none() => {
                    state.channels.publish(channel, msg, &Caller::Backend, None);
                    Ok(Value::Null)
                }
                _ => Err("Invalid params"),
            }
        }
        ("pubsub", _) => Err("Unknown command"),
        _ => Err("Unknown service"),
    };
    let mut answer = match outcome {
        Ok(data) => json!({"type": "response", "data": data}),
        Err(why) => json!({"type": "error", "message": why}),
    };
    if let Some(id) = call_id {
        answer["callId"] = id;
    }
    Ok(AxumJson(json!({"service": service, "message": answer})))
}

fn no_session(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::UnknownSession,
        format!("no open WebSocket session `{id}`"),
    )
}

/// `POST /sessions/{id}/send {message}`: a push to one session.
pub async fn send_to_session(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    Json(b): Json<PublishBody>,
) -> ApiResult<AxumJson<Value>> {
    state
        .sessions
        .send(&id, &b.message)
        .map_err(|_| no_session(&id))?;
    Ok(AxumJson(json!({})))
}

/// `DELETE /sessions/{id}`: closes a session (code 4000).
pub async fn disconnect(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<AxumJson<Value>> {
    state
        .sessions
        .disconnect(&id)
        .map_err(|_| no_session(&id))?;
    Ok(AxumJson(json!({})))
}
