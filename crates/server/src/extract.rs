//! Extractors that turn every bad request into a clear [`ApiError`].

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use trunkline_api::ErrorCode;
use trunkline_auth::constant_time_eq;
use trunkline_broker::Principal;

use crate::error::ApiError;
use crate::state::AppState;

/// What a request body may be, as [`extract::Body`] reads it: set for every route, and
/// smaller for `/token`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    pub max_bytes: usize,
    /// From the end of the headers to the last byte of the body.
    pub timeout: Duration,
}

/// Largest `/token` body: client credentials take a few hundred bytes, and anyone may
/// send one.
pub const TOKEN_BODY_BYTES: usize = 4096;

/// The raw body, read under the route's [`BodyLimit`]: a declared `Content-Length` over
/// the limit is answered `413 body_too_large` before anything is read, a body that outgrows
/// the limit as it arrives likewise, and one that has not arrived within the limit's
/// timeout `408 request_timeout`.
///
/// hyper hands a body over in chunks that share its read buffer (8 KiB or more), and a
/// chunk still held keeps the whole buffer alive, so a body trickled a byte at a time and
/// kept as chunks pinned a buffer per byte (4.5 KiB per byte received, measured). The
/// chunks are therefore copied into one buffer that grows with what has arrived and
/// dropped at once; only a body that comes whole in one chunk is kept as it is.
pub struct Body(pub Bytes);

/// For a route left without a [`BodyLimit`]: the smallest limit the router sets.
const FALLBACK_LIMIT: BodyLimit = BodyLimit {
    max_bytes: TOKEN_BODY_BYTES,
    timeout: std::time::Duration::from_secs(10),
};

fn too_large() -> ApiError {
    ApiError::new(
        ErrorCode::BodyTooLarge,
        "the request body is larger than the limit",
    )
}

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .copied()
            .unwrap_or(FALLBACK_LIMIT);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit.max_bytes as u64) {
            return Err(too_large());
        }
        let mut chunks = req.into_body().into_data_stream();
        let read = async {
            let mut buf = BytesMut::new();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| {
                    ApiError::new(ErrorCode::InvalidBody, format!("cannot read the body: {e}"))
                })?;
                if buf.len() + chunk.len() > limit.max_bytes {
                    return Err(too_large());
                }
                if buf.is_empty() && declared == Some(chunk.len() as u64) {
                    return Ok(chunk);
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(buf.freeze())
        };
        match tokio::time::timeout(limit.timeout, read).await {
            Ok(body) => body.map(Body),
            Err(_) => Err(ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive within {} s",
                    limit.timeout.as_secs()
                ),
            )),
        }
    }
}

/// Parses JSON with syntax errors as `malformed_json` and shape errors as `invalid_body`.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    let malformed = |e: &dyn std::fmt::Display| {
        ApiError::new(
            ErrorCode::MalformedJson,
            format!("the body is not valid JSON: {e}"),
        )
    };
    // JSON text is UTF-8, all of it: serde checks only the strings it keeps, and a NOC
    // message is stored whole, so bad bytes in a field it ignores would reach receivers.
    let text = std::str::from_utf8(bytes).map_err(|e| malformed(&e))?;
    serde_json::from_str(text).map_err(|e| {
        // Whether the text is JSON at all, by a parse without a depth limit. serde's typed
        // parse cannot say: it may meet a shape error before a syntax error further on,
        // and calls a lone surrogate or nesting past 128 levels a syntax error. Checked
        // only on failure, so valid requests pay nothing.
        match serde_json::from_str::<&serde_json::value::RawValue>(text) {
            Err(syntax) => malformed(&syntax),
            Ok(_) => ApiError::new(ErrorCode::InvalidBody, e.to_string()),
        }
    })
}

/// A JSON object body. A content type other than JSON is refused; none at all is accepted, as
/// many scripts send JSON without saying so.
pub struct Json<T>(pub T);

pub fn check_json_content_type(parts: &Parts) -> Result<(), ApiError> {
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        if !(ct.starts_with("application/json") || ct.contains("+json")) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!("expected Content-Type: application/json, got `{ct}`"),
            ));
        }
    }
    Ok(())
}

/// A body that must be JSON (by content type), not yet parsed: for handlers that parse it
/// without copying.
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        check_json_content_type(&parts)?;
        let Body(bytes) = Body::from_request(Request::from_parts(parts, body), state).await?;
        Ok(JsonBytes(bytes))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let JsonBytes(bytes) = JsonBytes::from_request(req, state).await?;
        parse_json_object(&bytes).map(Json)
    }
}

/// Parses a body that must be a JSON object, as [`parse_json`] does (the [`Json`]
/// extractor's parsing, reachable without a request for tests and fuzzing).
pub fn parse_json_object<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    let value = parse_json(bytes)?;
    // Every body is an object; serde would take a struct from an array too.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "the body must be a JSON object",
        ));
    }
    Ok(value)
}

/// Query parameters, with bad ones answered as `invalid_query`. Credentials in the query
/// string (other than on `/token`, where the NOC puts them) are refused: URLs end up in
/// logs and browser histories.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(q)
            .map(Query)
            .map_err(|e| ApiError::new(ErrorCode::InvalidQuery, format!("bad query string: {e}")))
    }
}

/// Path parameters, with one that cannot be read (percent-decoded, it is not UTF-8)
/// answered as `not_found`: no client, channel or session has such a name.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| ApiError::new(ErrorCode::NotFound, format!("bad path: {}", e.body_text())))
    }
}

fn reject_query_credentials(parts: &Parts) -> Result<(), ApiError> {
    let q = parts.uri.query().unwrap_or("");
    for pair in q.split('&') {
        let key = pair.split('=').next().unwrap_or("");
        if matches!(
            key,
            "token" | "access_token" | "secret" | "key" | "backend_key"
        ) {
            return Err(ApiError::new(
                ErrorCode::CredentialsInWrongPlace,
                format!(
                    "`{key}` must not be sent in the query string; send `Authorization: Bearer <token>`"
                ),
            ));
        }
    }
    Ok(())
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    bearer_token(&parts.headers).unwrap_or_else(|| {
        Err(ApiError::new(
            ErrorCode::MissingCredentials,
            "send `Authorization: Bearer <token>`; get a token from /token",
        ))
    })
}

/// The token of an `Authorization: Bearer` header; `None` without the header.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<Result<&str, ApiError>> {
    let value = headers.get(header::AUTHORIZATION)?;
    Some(parse_bearer(value.to_str().unwrap_or("")))
}

fn parse_bearer(value: &str) -> Result<&str, ApiError> {
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidToken,
            "the Authorization header must be `Bearer <token>`",
        ));
    }
    Ok(token.trim())
}

/// The authenticated client making the request (`Authorization: Bearer <token>`).
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        reject_query_credentials(parts)?;
        let token = bearer(parts)?;
        state.principal_of(token).map(Caller)
    }
}

/// Someone allowed to manage clients: an admin client's token, or (on the backend
/// listener only) the `X-Backend-Key`.
pub enum Admin {
    Client(Principal),
    Backend,
}

impl Admin {
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Admin::Client(p) => Some(&p.client_id),
            Admin::Backend => None,
        }
    }
}

/// A caller that may be an admin or an ordinary client (for endpoints a client may use on
/// itself, such as reading its own record).
pub struct AdminOrSelf(pub Result<Admin, Principal>);

pub const BACKEND_KEY_HEADER: &str = "x-backend-key";

fn admin_from(parts: &Parts, state: &AppState) -> Result<Result<Admin, Principal>, ApiError> {
    reject_query_credentials(parts)?;
    if let Some(key) = parts.headers.get(BACKEND_KEY_HEADER) {
        if !state.backend {
            return Err(ApiError::new(
                ErrorCode::CredentialsInWrongPlace,
                "the backend key is accepted on the backend listener only",
            ));
        }
        if constant_time_eq(key.as_bytes(), state.keys.backend_key.as_bytes()) {
            return Ok(Ok(Admin::Backend));
        }
        return Err(ApiError::new(
            ErrorCode::InvalidBackendKey,
            "wrong X-Backend-Key",
        ));
    }
    let token = bearer(parts)?;
    let p = state.principal_of(token)?;
    Ok(if p.is_admin() {
        Ok(Admin::Client(p))
    } else {
        Err(p)
    })
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        admin_from(parts, state)?.map_err(|p| {
            ApiError::new(
                ErrorCode::Forbidden,
                format!("client `{}` is not an admin", p.client_id),
            )
        })
    }
}

impl FromRequestParts<AppState> for AdminOrSelf {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        admin_from(parts, state).map(AdminOrSelf)
    }
}

/// Deepest nesting of arrays and objects accepted in a body: receivers in other
/// languages (Python's `json`, for one) fail on much deeper documents.
pub const MAX_DEPTH: usize = 128;

/// Nesting depth of valid JSON text, counting brackets outside strings.
pub fn depth(json: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}
