//! `/token`: client credentials for bearer tokens.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::header;
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use trunkline_api::{ErrorCode, OAuthTokenResponse, TokenResponse};
use trunkline_auth::Claims;

use super::error::{ApiError, ApiResult};
use super::extract::{parse_json, Body, Query};
use super::{now_ms, AppState};

#[derive(Deserialize)]
pub struct TokenQuery {
    client_id: Option<String>,
    secret: Option<String>,
}

/// Checks a client's secret, with throttling of repeated failures from `peer`'s address
/// ([`trunkline_auth::throttle`]), and signs a token.
async fn issue(
    state: &AppState,
    peer: IpAddr,
    client_id: &str,
    secret: &str,
) -> ApiResult<(String, u64)> {
    let now = now_ms() / 1000;
    if let Err(wait) = state.throttle.check(peer, client_id, now) {
        let mut e = ApiError::new(
            ErrorCode::Throttled,
            format!("too many failed attempts from your address; retry in {wait} s"),
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    let found = state
        .settled(|| state.broker.authenticate(client_id, secret))
        .await;
    let Some((principal, cid)) = found else {
        state.throttle.failure(peer, client_id, now);
        tracing::info!(client_id, peer = %peer, "token refused: wrong client id or secret");
        return Err(ApiError::new(
            ErrorCode::InvalidCredentials,
            "unknown client or wrong secret",
        ));
    };
    state.throttle.success(peer, client_id);
    let lifetime = state.token_lifetime().as_secs().max(1);
    let exp = now + lifetime;
    let token = state.keys.token_key.sign(&Claims {
        sub: principal.client_id.to_string(),
        cid,
        exp,
    });
    Ok((token, exp))
}

/// `GET /token?client_id=..&secret=..` (the NOC's grant).
pub async fn get_token(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<TokenQuery>,
) -> ApiResult<Json<TokenResponse>> {
    let (Some(id), Some(secret)) = (q.client_id, q.secret) else {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            "client_id and secret are required query parameters",
        ));
    };
    let (token, exp) = issue(&state, peer.ip(), &id, &secret).await?;
    let expiry =
        humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(exp));
    Ok(Json(TokenResponse {
        token,
        expiry: expiry.to_string(),
    }))
}

#[derive(Deserialize)]
struct OAuthFields {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// `POST /token`: OAuth2 client-credentials grant, as a form or JSON, with the
/// credentials in the body or in HTTP Basic auth.
pub async fn post_token(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> ApiResult<Json<OAuthTokenResponse>> {
    let (parts, body) = req.into_parts();
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let basic = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    let Body(bytes) = Body::from_request(Request::from_parts(parts, body), &()).await?;
    let fields: OAuthFields = if ct.starts_with("application/x-www-form-urlencoded") {
        serde_urlencoded::from_bytes(&bytes)
            .map_err(|e| ApiError::new(ErrorCode::InvalidBody, format!("bad form: {e}")))?
    } else if ct.is_empty() || ct.starts_with("application/json") {
        parse_json(&bytes)?
    } else {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send application/x-www-form-urlencoded or application/json",
        ));
    };
    if fields.grant_type.as_deref() != Some("client_credentials") {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "grant_type must be `client_credentials`",
        ));
    }
    let (id, secret) = match (fields.client_id, fields.client_secret, basic) {
        (Some(id), Some(secret), _) => (id, secret),
        (_, _, Some(b)) => match b.split_once(':') {
            Some((id, secret)) => (id.to_owned(), secret.to_owned()),
            None => {
                return Err(ApiError::new(
                    ErrorCode::InvalidCredentials,
                    "bad Basic credentials",
                ))
            }
        },
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                "client_id and client_secret are required (in the body or as HTTP Basic auth)",
            ))
        }
    };
    let (token, exp) = issue(&state, peer.ip(), &id, &secret).await?;
    Ok(Json(OAuthTokenResponse {
        access_token: token,
        token_type: "Bearer".into(),
        expires_in: exp.saturating_sub(now_ms() / 1000),
    }))
}
