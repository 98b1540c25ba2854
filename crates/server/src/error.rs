//! The one mapping from errors to HTTP answers.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use trunkline_api::{ErrorBody, ErrorCode};
use trunkline_broker::BrokerError;

/// An error answer: a registry code and a message safe to show the caller.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds, for 429 answers.
    pub retry_after: Option<u64>,
    /// Sent as `error.details`.
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
            details: None,
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = ErrorBody::new(self.code, self.message);
        body.error.details = self.details;
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.code.status() == 401 {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// The one mapping from broker errors to registry codes: HTTP answers, STOMP `ERROR`
/// frames and WebSocket error answers all go through it.
impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let code = match &e {
            BrokerError::InvalidTopic { .. } => ErrorCode::InvalidTopic,
            BrokerError::InvalidPattern { .. } => ErrorCode::InvalidPattern,
            BrokerError::InvalidClientId(_) => ErrorCode::InvalidClientId,
            BrokerError::InvalidArgument(_) => ErrorCode::InvalidBody,
            BrokerError::ClientExists(_) => ErrorCode::ClientExists,
            BrokerError::UnknownClient(_) => ErrorCode::UnknownClient,
            BrokerError::UnknownQueue(_) => ErrorCode::UnknownQueue,
            BrokerError::UnknownTwin(_) => ErrorCode::UnknownTwin,
            BrokerError::GrantOfUnknownQueue(_) => ErrorCode::GrantOfUnknownQueue,
            BrokerError::QueueNameTaken(_) => ErrorCode::QueueNameTaken,
            BrokerError::NoSuchQueueName(_) => ErrorCode::NotFound,
            BrokerError::TwinKeyTaken(_) => ErrorCode::TwinExists,
            BrokerError::QueueFull { .. } => ErrorCode::QueueFull,
            BrokerError::NodeFull { .. } => ErrorCode::NodeFull,
            BrokerError::DiskFull { .. } => ErrorCode::DiskFull,
            BrokerError::DuplicateInFlight => ErrorCode::DuplicateInFlight,
            BrokerError::LastAdmin(_) => ErrorCode::LastAdmin,
            BrokerError::Forbidden(_) => ErrorCode::Forbidden,
            BrokerError::Revoked(_) => ErrorCode::CredentialsRevoked,
            BrokerError::Unavailable(cause) => {
                tracing::error!(cause = %cause, "storage unavailable");
                return ApiError::new(
                    ErrorCode::Unavailable,
                    "the node cannot store messages right now; retry later or on another node",
                );
            }
            _ => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}
