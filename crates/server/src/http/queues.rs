//! `/queue`: declaring queues. Admins (or the backend key) only; clients read and write a
//! declared queue by the grants an admin gives them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json as AxumJson;
use trunkline_api::{DeclareQueue, ErrorCode, QueueInfo};
use trunkline_broker::{QueueSpec, QueueView};

use super::clients::{limits_in, limits_out};
use super::error::{ApiError, ApiResult};
use super::extract::{Admin, Json, Path};
use super::{now_ms, AppState};

fn info(v: QueueView) -> QueueInfo {
    QueueInfo {
        limits: limits_out(&v.limits),
        name: v.name,
        bindings: v.bindings,
        labels: v.labels,
        dead_letter: v.dead_letter,
        depth: v.depth,
        dead_depth: v.dead_depth,
    }
}

/// A queue with its depths as the engine counts them now.
async fn counted(state: &AppState, mut v: QueueView) -> QueueInfo {
    if let Ok(d) = state.broker.depth(&v.name).await {
        v.depth = d;
    }
    if let Ok(d) = state.broker.depth(&v.dead_letter).await {
        v.dead_depth = d;
    }
    info(v)
}

/// `GET /queue`: every declared queue.
pub async fn list(State(state): State<AppState>, _admin: Admin) -> AxumJson<Vec<QueueInfo>> {
    let mut out = Vec::new();
    for v in state.broker.list_queues() {
        out.push(counted(&state, v).await);
    }
    AxumJson(out)
}

/// `GET /queue/{name}`.
pub async fn show(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> ApiResult<AxumJson<QueueInfo>> {
    let v = state.broker.get_queue(&name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownQueue,
            format!("no declared queue named `{name}`"),
        )
    })?;
    Ok(AxumJson(counted(&state, v).await))
}

/// `PUT /queue/{name}` → 201 when made, 200 when changed.
pub async fn declare(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    Json(body): Json<DeclareQueue>,
) -> ApiResult<(StatusCode, AxumJson<QueueInfo>)> {
    let spec = QueueSpec {
        bindings: body.bindings,
        limits: limits_in(&body.limits),
        labels: body.labels,
    };
    let (view, made) = state.broker.declare_queue(&name, spec, now_ms()).await?;
    tracing::info!(queue = %name, made, by = admin.client_id().unwrap_or("backend"), "queue declared");
    let status = if made {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, AxumJson(info(view))))
}

/// `DELETE /queue/{name}` → 204; its dead-letter queue, what both hold and the grants
/// naming them go with it.
pub async fn delete(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.broker.delete_queue(&name).await?;
    tracing::info!(queue = %name, "queue deleted");
    Ok(StatusCode::NO_CONTENT)
}
