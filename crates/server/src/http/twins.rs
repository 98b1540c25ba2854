//! `/twins`: the relay's twin registry (docs/relays.md). A client registers a twin with the
//! twin's signed claim; a twin changes itself with a newer claim signed by its key; anyone
//! reads a twin (relays and gateways look keys and relays up here).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json as AxumJson;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use trunkline_api::{ErrorCode, TwinInfo};
use trunkline_broker::twins::TwinRecord;
use trunkline_envelope::{PublicKey, TwinClaim};

use super::error::{ApiError, ApiResult};
use super::extract::{Caller, Json, Path, Query};
use super::AppState;

/// A claim as JSON: the twin's key, its relays, when it was made, and the signature of the
/// key that signs it (base64url, 64 bytes).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    key: String,
    #[serde(default)]
    relays: Vec<String>,
    /// A whole number (`5.0` too: JSON does not tell the two apart).
    timestamp: serde_json::Number,
    signature: String,
}

fn info(t: TwinRecord) -> TwinInfo {
    TwinInfo {
        id: t.id,
        key: t.key,
        relays: t.relays,
        updated: t.updated,
    }
}

fn claim_of(id: u32, b: ClaimBody) -> ApiResult<(TwinClaim, [u8; 64])> {
    let bad = |m: String| ApiError::new(ErrorCode::InvalidBody, m);
    // What is not a key (not written as one, not a curve point) verifies nothing: 403, as
    // a signature that does not verify.
    let key = PublicKey::from_text(&b.key).map_err(|e| {
        ApiError::new(
            ErrorCode::Forbidden,
            format!("key: {e}: the claim cannot be verified"),
        )
    })?;
    let timestamp = match (b.timestamp.as_u64(), b.timestamp.as_f64()) {
        (Some(t), _) => t,
        (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => f as u64,
        _ => return Err(bad("timestamp: a whole number of seconds".into())),
    };
    // What does not decode to 64 bytes is no signature of the key's: 403, as one that does
    // not verify.
    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(&b.signature)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Forbidden,
                "signature: not 64 bytes in unpadded base64url, so not the key's",
            )
        })?;
    Ok((
        TwinClaim {
            id,
            key,
            relays: b.relays,
            timestamp,
        },
        signature,
    ))
}

fn now_secs() -> u64 {
    super::now_ms() / 1000
}

/// `POST /twins` (a client): registers the twin whose claim (id 0) its key signed → 201.
pub async fn register(
    State(state): State<AppState>,
    Caller(who): Caller,
    Json(body): Json<ClaimBody>,
) -> ApiResult<(StatusCode, AxumJson<TwinInfo>)> {
    let (claim, sig) = claim_of(0, body)?;
    let t = state
        .broker
        .register_twin(&who, claim, sig, now_secs())
        .await?;
    tracing::info!(twin = t.id, by = %who.client_id, "twin registered");
    Ok((StatusCode::CREATED, AxumJson(info(t))))
}

/// `PUT /twins/{id}`: a newer claim, signed by the key the twin holds now.
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<u32>,
    Json(body): Json<ClaimBody>,
) -> ApiResult<AxumJson<TwinInfo>> {
    let (claim, sig) = claim_of(id, body)?;
    let t = state.broker.update_twin(claim, sig, now_secs()).await?;
    tracing::info!(twin = t.id, "twin changed");
    Ok(AxumJson(info(t)))
}

/// `GET /twins/{id}`.
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<u32>,
) -> ApiResult<AxumJson<TwinInfo>> {
    state
        .broker
        .get_twin(id)
        .map(|t| AxumJson(info(t)))
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownTwin, format!("no twin {id}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByKey {
    key: String,
}

/// `GET /twins?key=ed25519:…`: the twin holding a key.
pub async fn find(
    State(state): State<AppState>,
    Query(q): Query<ByKey>,
) -> ApiResult<AxumJson<TwinInfo>> {
    state
        .broker
        .find_twin(&q.key)
        .map(|t| AxumJson(info(t)))
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownTwin, "no twin holds that key"))
}
