//! The backend's calls (backend listener; `X-Backend-Key` or an admin token): RPC to a
//! server name, and client functions of one session or of every member of a channel.
//! Each request waits for the outcome (at most the call's `timeout_ms`).

use std::time::Duration;

use axum::extract::State;
use axum::Json as AxumJson;
use serde::Deserialize;
use serde_json::{json, Value};
use trunkline_api::ErrorCode;

use super::channels::channel_name;
use super::error::{ApiError, ApiResult};
use super::extract::{Admin, Json, Path};
use super::AppState;
use trunkline_realtime::{CallError, Caller};

use crate::live::{self, Outcome, Request};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallBody {
    #[serde(default)]
    payload: Value,
    /// 1 to 300 000 (default 10 000).
    #[serde(default)]
    timeout_ms: Option<f64>,
}

impl CallBody {
    /// The call; its timeout ends a second before the request's own
    /// (`[http_limits] request_timeout_secs`), so the answer is `call_timeout`.
    fn request(
        self,
        state: &AppState,
        function: String,
    ) -> ApiResult<(Request, tokio::sync::oneshot::Receiver<Outcome>)> {
        let asked = live::timeout_of(self.timeout_ms)
            .map_err(|why| ApiError::new(ErrorCode::InvalidBody, why))?;
        let request_timeout = Duration::from_secs(state.config.http_limits.request_timeout_secs);
        let timeout = asked.min(
            request_timeout
                .saturating_sub(Duration::from_secs(1))
                .max(Duration::from_millis(1)),
        );
        let (reply, done) = live::collect();
        let req = Request {
            function,
            payload: self.payload,
            from: Caller::Backend,
            timeout,
            reply,
        };
        Ok((req, done))
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        let mut a = ApiError::new(e.code, e.message);
        a.details = e.exception.map(|x| json!({"exception": x}));
        a
    }
}

/// `{data, parts}` of a call that ended with `end`.
fn answer(o: Outcome) -> ApiResult<AxumJson<Value>> {
    let data = o.result?;
    Ok(AxumJson(json!({"data": data, "parts": o.parts})))
}

/// `POST /rpc/{server}/{function} {payload?, timeout_ms?}` → `{data, parts}`.
pub async fn rpc(
    State(state): State<AppState>,
    _admin: Admin,
    Path((server, function)): Path<(String, String)>,
    Json(b): Json<CallBody>,
) -> ApiResult<AxumJson<Value>> {
    let (req, done) = b.request(&state, function)?;
    let started = state.calls.call_rpc(&server, req);
    answer(live::outcome(started, done).await)
}

/// `POST /sessions/{session_id}/functions/{function} {payload?, timeout_ms?}` →
/// `{data, parts}`.
pub async fn session_function(
    State(state): State<AppState>,
    _admin: Admin,
    Path((session, function)): Path<(String, String)>,
    Json(b): Json<CallBody>,
) -> ApiResult<AxumJson<Value>> {
    let (req, done) = b.request(&state, function)?;
    let started = state.calls.call_function(&session, req);
    answer(live::outcome(started, done).await)
}

/// `POST /channels/{channel}/functions/{function} {payload?, timeout_ms?}` → every
/// member's answer or error: `[{session_id, client_id, info, data | error, parts?}]`.
pub async fn channel_function(
    State(state): State<AppState>,
    _admin: Admin,
    Path((channel, function)): Path<(String, String)>,
    Json(b): Json<CallBody>,
) -> ApiResult<AxumJson<Vec<Value>>> {
    channel_name(&channel)?;
    let (req, _) = b.request(&state, function)?;
    let members = state.channels.members(&channel);
    Ok(AxumJson(
        live::call_members(&state.calls, members, req).await,
    ))
}
