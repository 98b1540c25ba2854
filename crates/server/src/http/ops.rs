//! Operations endpoints: `/healthz`, `/metrics`, `/openapi.json`, and the fallbacks.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use trunkline_api::{ErrorCode, Health};

use super::error::ApiError;
use super::AppState;

/// `GET /healthz`: 200 while the node can store messages, 503 once its store failed.
pub async fn healthz(State(state): State<AppState>) -> Response {
    let failed = state.broker.committer().has_failed();
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

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &trunkline_store::commit::Histogram) {
    let (buckets, count, sum) = h.snapshot();
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (le, c) in buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {c}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
    );
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET /metrics` (backend listener only): Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let b = &state.broker;
    let c = b.counters();
    let mut out = String::with_capacity(4096);
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    counter(
        &mut out,
        "trunkline_messages_published_total",
        "Messages accepted by /send and /notify.",
        l(&c.published),
    );
    counter(
        &mut out,
        "trunkline_messages_enqueued_total",
        "Queue entries created by publishes (one per matching inbox).",
        l(&c.enqueued),
    );
    counter(
        &mut out,
        "trunkline_messages_delivered_total",
        "Messages handed to consumers.",
        l(&c.delivered),
    );
    counter(
        &mut out,
        "trunkline_messages_acked_total",
        "Leased deliveries acked.",
        l(&c.acked),
    );
    counter(
        &mut out,
        "trunkline_messages_nacked_total",
        "Leased deliveries nacked.",
        l(&c.nacked),
    );
    counter(
        &mut out,
        "trunkline_messages_expired_total",
        "Messages dropped because their TTL passed.",
        l(&c.expired),
    );
    counter(
        &mut out,
        "trunkline_messages_dead_lettered_total",
        "Messages moved to a dead-letter queue.",
        l(&c.dead_lettered),
    );
    counter(
        &mut out,
        "trunkline_messages_dropped_overflow_total",
        "Messages dropped by a drop-oldest queue.",
        l(&c.dropped_overflow),
    );
    counter(
        &mut out,
        "trunkline_publishes_rejected_full_total",
        "Publishes refused because a queue, or the memory for queued messages, was full.",
        l(&c.rejected_full),
    );
    counter(
        &mut out,
        "trunkline_publishes_duplicate_total",
        "Publishes recognised as duplicates by message_id.",
        l(&c.duplicates),
    );
    let s = b.committer().stats();
    counter(
        &mut out,
        "trunkline_commits_total",
        "Durable commits (each one sync).",
        l(&s.commits),
    );
    counter(
        &mut out,
        "trunkline_commit_ops_total",
        "Store operations committed.",
        l(&s.ops),
    );
    counter(
        &mut out,
        "trunkline_commit_failures_total",
        "Failed commits.",
        l(&s.failures),
    );
    histogram(
        &mut out,
        "trunkline_commit_batch_size",
        "Requests sharing one commit.",
        &s.batch_size,
    );
    histogram(
        &mut out,
        "trunkline_commit_seconds",
        "Time to write and sync one commit.",
        &s.latency,
    );
    gauge(
        &mut out,
        "trunkline_clients",
        "Registered clients.",
        b.client_count() as u64,
    );
    gauge(
        &mut out,
        "trunkline_dedup_entries",
        "Remembered publisher message ids.",
        b.dedup_len() as u64,
    );
    gauge(
        &mut out,
        "trunkline_queued_memory_bytes",
        "Memory held by queued messages as the node-wide cap counts it: queue entries, message records and bodies.",
        b.memory_used(),
    );
    gauge(
        &mut out,
        "trunkline_queued_memory_max_bytes",
        "The node-wide cap on memory held by queued messages (inbox.max_memory_bytes).",
        b.config().max_memory_bytes,
    );
    if let Some((used, max)) = b.disk_usage() {
        gauge(
            &mut out,
            "trunkline_store_disk_bytes",
            "Bytes the store's log takes on disk (the newest segment at its preallocated size).",
            used,
        );
        gauge(
            &mut out,
            "trunkline_store_disk_max_bytes",
            "The most disk the log may take (store.max_disk_bytes); past it publishes get 507 disk_full.",
            max,
        );
    }
    gauge(
        &mut out,
        "trunkline_stomp_connections",
        "Open STOMP connections.",
        l(&state.stomp_connections),
    );
    gauge(
        &mut out,
        "trunkline_ws_sessions",
        "Open WebSocket sessions.",
        state.sessions.open() as u64,
    );
    gauge(
        &mut out,
        "trunkline_ws_calls_pending",
        "RPC and client-function calls waiting for their callee's answer.",
        state.calls.pending() as u64,
    );
    gauge(
        &mut out,
        "trunkline_live_subscriptions",
        "Open live subscriptions.",
        b.live_subscriptions() as u64,
    );
    let lc = b.live_counters();
    counter(
        &mut out,
        "trunkline_live_delivered_total",
        "Messages handed to live subscribers.",
        l(&lc.delivered),
    );
    counter(
        &mut out,
        "trunkline_live_missed_total",
        "Messages live subscribers missed by falling behind.",
        l(&lc.missed),
    );
    let _ = writeln!(out, "# HELP trunkline_http_responses_total HTTP responses by status class.\n# TYPE trunkline_http_responses_total counter");
    for (i, n) in state.http.by_class.iter().enumerate() {
        let _ = writeln!(
            out,
            "trunkline_http_responses_total{{class=\"{}xx\"}} {}",
            i + 1,
            l(n)
        );
    }
    let mut depths = b.queue_depths();
    depths.sort_by(|a, b| a.name.cmp(&b.name));
    let _ = writeln!(out, "# HELP trunkline_queue_ready Messages ready for delivery.\n# TYPE trunkline_queue_ready gauge");
    for d in &depths {
        let _ = writeln!(
            out,
            "trunkline_queue_ready{{queue=\"{}\"}} {}",
            label(&d.name),
            d.ready
        );
    }
    let _ = writeln!(out, "# HELP trunkline_queue_leased Messages delivered and awaiting ack.\n# TYPE trunkline_queue_leased gauge");
    for d in &depths {
        let _ = writeln!(
            out,
            "trunkline_queue_leased{{queue=\"{}\"}} {}",
            label(&d.name),
            d.leased
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
