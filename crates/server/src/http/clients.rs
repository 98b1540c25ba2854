//! `/client`: managing clients. Admins (or the backend key) manage everyone; a client may
//! read its own record and rotate its own secret.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json as AxumJson;
use trunkline_api::{
    ClientCredentials, ClientInfo, CreateClient, ErrorCode, OverflowPolicy, QueueSettings,
    Subscription, UpdateClient,
};
use trunkline_broker::{inbox_name, ClientUpdate, ClientView, LimitSettings, NewClient, Overflow};

use super::error::{ApiError, ApiResult};
use super::extract::{Admin, AdminOrSelf, Json, Path};
use super::{now_ms, AppState};

pub fn limits_in(s: &QueueSettings) -> LimitSettings {
    LimitSettings {
        max_length: s.max_length,
        overflow: s.overflow.map(|o| match o {
            OverflowPolicy::RejectPublish => Overflow::RejectPublish,
            OverflowPolicy::DropOldest => Overflow::DropOldest,
        }),
        max_deliveries: s.max_deliveries,
    }
}

pub fn limits_out(l: &LimitSettings) -> QueueSettings {
    QueueSettings {
        max_length: l.max_length,
        overflow: l.overflow.map(|o| match o {
            Overflow::RejectPublish => OverflowPolicy::RejectPublish,
            Overflow::DropOldest => OverflowPolicy::DropOldest,
        }),
        max_deliveries: l.max_deliveries,
    }
}

pub fn info(v: ClientView) -> ClientInfo {
    ClientInfo {
        inbox: limits_out(&v.inbox),
        client_id: v.client_id,
        client_name: v.client_name,
        subscription: Subscription::from_patterns(v.patterns),
        publish: Subscription::from_patterns(v.publish),
        roles: v.roles,
        grants: v.grants,
        write_grants: v.write_grants,
        read_topics: v.read_topics,
        inbox_depth: v.inbox_depth,
    }
}

fn credentials(v: ClientView, secret: String) -> ClientCredentials {
    ClientCredentials {
        client_id: v.client_id,
        client_name: v.client_name,
        subscription: Subscription::from_patterns(v.patterns),
        secret,
    }
}

fn not_self(who: &str, id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        format!("client `{who}` may only manage itself, not `{id}`"),
    )
}

/// `POST /client` → 201 with the secret, shown this once.
pub async fn create(
    State(state): State<AppState>,
    admin: Admin,
    Json(body): Json<CreateClient>,
) -> ApiResult<(StatusCode, AxumJson<ClientCredentials>)> {
    let new = NewClient {
        client_id: body.client_id,
        client_name: body.client_name,
        patterns: body.subscription.patterns(),
        publish: body.publish.map(|p| p.patterns()),
        roles: body.roles,
        grants: body.grants,
        write_grants: body.write_grants,
        read_topics: body.read_topics,
        inbox: limits_in(&body.inbox),
    };
    let (view, secret) = state.broker.create_client(new, now_ms()).await?;
    tracing::info!(client_id = %view.client_id, by = admin.client_id().unwrap_or("backend"), "client created");
    Ok((StatusCode::CREATED, AxumJson(credentials(view, secret))))
}

/// A client with its inbox's depth as the engine counts it now.
async fn counted(state: &AppState, mut v: ClientView) -> ClientInfo {
    if let Ok(d) = state.broker.depth(&inbox_name(&v.client_id)).await {
        v.inbox_depth = d;
    }
    info(v)
}

/// `GET /client`.
pub async fn list(State(state): State<AppState>, _admin: Admin) -> AxumJson<Vec<ClientInfo>> {
    let mut out = Vec::new();
    for v in state.broker.list_clients() {
        out.push(counted(&state, v).await);
    }
    AxumJson(out)
}

fn found(state: &AppState, id: &str) -> ApiResult<ClientView> {
    state.broker.get_client(id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownClient,
            format!("no client with id `{id}`"),
        )
    })
}

/// `GET /client/{id}`: admins, or the client itself.
pub async fn show(
    State(state): State<AppState>,
    AdminOrSelf(who): AdminOrSelf,
    Path(id): Path<String>,
) -> ApiResult<AxumJson<ClientInfo>> {
    if let Err(p) = &who {
        if *p.client_id != *id {
            return Err(not_self(&p.client_id, &id));
        }
    }
    let v = found(&state, &id)?;
    Ok(AxumJson(counted(&state, v).await))
}

/// `PATCH /client/{id}`: name, subscription, publish patterns, roles, grants, inbox limits.
/// Open sessions of the client get the new rights at once.
pub async fn update(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    Json(body): Json<UpdateClient>,
) -> ApiResult<AxumJson<ClientInfo>> {
    let u = ClientUpdate {
        client_name: body.client_name,
        patterns: body.subscription.map(|s| s.patterns()),
        publish: body.publish.map(|p| p.patterns()),
        roles: body.roles,
        grants: body.grants,
        write_grants: body.write_grants,
        read_topics: body.read_topics,
        inbox: body.inbox.as_ref().map(limits_in),
    };
    let view = state.broker.update_client(&id, u).await?;
    tracing::info!(client_id = %id, "client updated");
    Ok(AxumJson(info(view)))
}

/// `DELETE /client/{id}` → 204; its inbox, its tokens, grants of its queues and its open
/// sessions go with it.
pub async fn delete(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.broker.delete_client(&id).await?;
    tracing::info!(client_id = %id, "client deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /client/{id}/secret`: a new secret, shown once; old tokens stop working and
/// sessions opened before are closed.
pub async fn rotate(
    State(state): State<AppState>,
    AdminOrSelf(who): AdminOrSelf,
    Path(id): Path<String>,
) -> ApiResult<AxumJson<ClientCredentials>> {
    if let Err(p) = &who {
        if *p.client_id != *id {
            return Err(not_self(&p.client_id, &id));
        }
    }
    let (view, secret) = state.broker.rotate_secret(&id).await?;
    tracing::info!(client_id = %id, "client secret rotated");
    Ok(AxumJson(credentials(view, secret)))
}
