//! What every front-end handler shares: the node's broker, keys, configuration, live
//! engine and counters, and the check of a bearer token.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use trunkline_api::ErrorCode;
use trunkline_auth::{Throttle, TokenError, TokenKey};
use trunkline_broker::{Backend, Principal};

use crate::config::Config;
use crate::error::ApiError;

/// Keys the node checks credentials with.
pub struct Keys {
    pub token_key: TokenKey,
    pub backend_key: String,
    /// Signs and checks channel tokens (WebSocket `pvt:`, `prs:`, `sys:` channels).
    pub channel_key: TokenKey,
}

/// HTTP request counters by status class, for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpCounters {
    pub by_class: [AtomicU64; 5],
}

/// Shared state of every handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The durable engine (embedded, or a cluster's), as the front-ends see it.
    pub broker: Arc<dyn Backend>,
    pub keys: Arc<Keys>,
    pub config: Arc<Config>,
    pub throttle: Arc<Throttle>,
    pub http: Arc<HttpCounters>,
    pub shutdown: CancellationToken,
    /// True on the backend listener.
    pub backend: bool,
    /// Open STOMP connections, for `/metrics`.
    pub stomp_connections: Arc<AtomicU64>,
    /// WebSocket sessions (public listener), for the cap and `/metrics`.
    pub sessions: Arc<crate::ws::Sessions>,
    /// WebSocket channels, shared by both listeners (backends publish to them).
    pub channels: Arc<crate::live::Channels>,
    /// RPC and client-function calls, shared by both listeners (backends call too).
    pub calls: Arc<crate::live::Calls>,
    /// What `/metrics` encodes ([`crate::metrics`]).
    pub metrics: Arc<prometheus_client::registry::Registry>,
    /// The relay (`GET /relay`), when enabled.
    pub relay: Option<Arc<crate::relay::Relay>>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long a login that fails in a cluster waits for registry changes on their way
/// (a change made on one node reaches the others within it).
pub const REGISTRY_LAG: Duration = Duration::from_secs(1);

impl AppState {
    /// Checks a bearer token and that its client still holds the credential it names.
    pub fn principal_of(&self, token: &str) -> Result<Principal, ApiError> {
        let claims = self
            .keys
            .token_key
            .verify(token, now_ms() / 1000)
            .map_err(|e| match e {
                TokenError::Expired { .. } => ApiError::new(
                    ErrorCode::TokenExpired,
                    "the token has expired; get a new one from /token",
                ),
                _ => ApiError::new(ErrorCode::InvalidToken, "the token is not valid"),
            })?;
        self.broker
            .check_credential(&claims.sub, &claims.cid)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidToken,
                    "the token's client was deleted or its secret rotated; get a new token",
                )
            })
    }

    /// Looks something up in the client registry. In a cluster, a miss waits (at most
    /// [`REGISTRY_LAG`]) for the registry changes this node has not applied yet: a client
    /// made or changed through another node a moment ago may be on its way.
    pub async fn settled<T>(&self, mut look: impl FnMut() -> Option<T>) -> Option<T> {
        let deadline = std::time::Instant::now() + REGISTRY_LAG;
        loop {
            let seen = self.broker.registry_seen();
            if let Some(v) = look() {
                return Some(v);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || !self.broker.registry_after(seen, left).await {
                return None;
            }
        }
    }

    pub fn token_lifetime(&self) -> Duration {
        Duration::from_secs_f64(self.config.auth.token_lifetime_hours * 3600.0)
    }
}
