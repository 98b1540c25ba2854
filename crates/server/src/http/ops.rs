//! Operations endpoints: `/healthz`, `/metrics`, `/openapi.json`, and the fallbacks.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use trunkline_api::{ErrorCode, Health};

use super::error::ApiError;
use super::AppState;

/// `GET /healthz`: 200 while the node can store messages, 503 once its store failed.
pub async fn healthz(State(state): State<AppState>) -> Response {
    let failed = !state.broker.healthy();
    let health = Health {
        status: if failed { "store_failed" } else { "ok" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let status = if failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(health)).into_response()
}

/// `GET /openapi.json`: the document of this listener.
pub async fn openapi(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(state.backend, &state.config).to_string(),
    )
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint; see /openapi.json")
}

/// Every request but `/healthz` on a connection from the reserve.
pub async fn listener_full() -> ApiError {
    let mut e = ApiError::new(
        ErrorCode::TooManyConnections,
        "the node holds as many connections as it may; retry later",
    );
    e.retry_after = Some(1);
    e
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take that method; see /openapi.json",
    )
}

/// `GET /metrics` (backend listener only): the OpenMetrics text format, read from the
/// node's counters now ([`crate::metrics`]).
pub async fn metrics(State(state): State<AppState>) -> Response {
    match crate::metrics::encode(&state.metrics) {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => {
            tracing::error!("encoding /metrics failed");
            ApiError::new(ErrorCode::Internal, "the metrics could not be encoded").into_response()
        }
    }
}
