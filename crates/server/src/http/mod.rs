//! HTTP front-end: the public client API and the backend API, as axum routers.
//!
//! Both listeners serve the same client API; the backend listener also accepts the
//! `X-Backend-Key` for client management and serves `/metrics`. Handlers are thin: they
//! authenticate, turn JSON into broker calls, and broker results into JSON.

pub use crate::error;
pub use crate::extract;
pub use crate::extract::{BodyLimit, TOKEN_BODY_BYTES};
pub use crate::state::{now_ms, AppState, HttpCounters, Keys};

pub mod calls;
pub mod channels;
pub mod clients;
pub mod messages;
pub mod ops;
pub mod queues;
pub mod tokens;
pub mod twins;

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use trunkline_api::ErrorCode;

use error::ApiError;

/// The router of one listener.
pub fn router(state: AppState) -> Router {
    let limits = &state.config.http_limits;
    let body_limit = BodyLimit {
        max_bytes: limits.max_body_bytes,
        timeout: Duration::from_secs(limits.body_timeout_secs),
    };
    let token_limit = BodyLimit {
        max_bytes: TOKEN_BODY_BYTES.min(limits.max_body_bytes),
        ..body_limit
    };
    let mut r = Router::new()
        .route("/client", post(clients::create).get(clients::list))
        .route(
            "/client/{client_id}",
            get(clients::show)
                .patch(clients::update)
                .delete(clients::delete),
        )
        .route("/client/{client_id}/secret", post(clients::rotate))
        .route("/twins", post(twins::register).get(twins::find))
        .route("/twins/{id}", get(twins::show).put(twins::update))
        .route("/queue", get(queues::list))
        .route(
            "/queue/{name}",
            get(queues::show)
                .put(queues::declare)
                .delete(queues::delete),
        )
        .route(
            "/token",
            get(tokens::get_token)
                .post(tokens::post_token)
                .layer(Extension(token_limit)),
        )
        .route("/send", post(messages::send))
        .route("/notify", post(messages::notify))
        .route("/receive", get(messages::receive))
        .route("/ack", post(messages::ack))
        .route("/nack", post(messages::nack))
        .route("/healthz", get(ops::healthz))
        .route("/openapi.json", get(ops::openapi));
    if state.backend {
        r = r
            .route("/metrics", get(ops::metrics))
            .route("/channel-token", post(channels::mint))
            .route("/channels/{channel}/publish", post(channels::publish))
            .route("/channels/{channel}/members", get(channels::members))
            .route("/backend", post(channels::snorky))
            .route("/rpc/{server}/{function}", post(calls::rpc))
            .route(
                "/sessions/{session_id}/functions/{function}",
                post(calls::session_function),
            )
            .route(
                "/channels/{channel}/functions/{function}",
                post(calls::channel_function),
            )
            .route(
                "/sessions/{session_id}/send",
                post(channels::send_to_session),
            )
            .route(
                "/sessions/{session_id}",
                axum::routing::delete(channels::disconnect),
            );
    } else {
        r = r
            .route("/ws", get(crate::ws::upgrade))
            .route("/relay", get(crate::relay::session::upgrade));
    }
    r.fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(Extension(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The router of connections accepted past the listener's cap ([`crate::listener`]):
/// `/healthz`, and `503 too_many_connections` for everything else.
pub fn reserve_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .fallback(ops::listener_full)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts and logs each request. Logs the path only: query strings may hold secrets
/// (`/token?secret=`), so they are never logged.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let start = std::time::Instant::now();
    let timeout = Duration::from_secs(state.config.http_limits.request_timeout_secs);
    let resp = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => axum::response::IntoResponse::into_response(ApiError::new(
            ErrorCode::RequestTimeout,
            "the request was not received or handled in time",
        )),
    };
    let status = resp.status().as_u16();
    let class = (status / 100).clamp(1, 5) as usize - 1;
    state.http.by_class[class].fetch_add(1, Ordering::Relaxed);
    tracing::debug!(
        method = %method,
        path = %path,
        status,
        micros = start.elapsed().as_micros() as u64,
        listener = if state.backend { "backend" } else { "public" },
        "request"
    );
    resp
}
