//! Wire types of the Trunkline HTTP API and the registry of stable error codes.
//!
//! Modules:
//! - [`error`]: [`ErrorCode`], the one registry mapping each stable code to its HTTP
//!   status, and [`ErrorBody`], the JSON shape every error takes
//!   (`{"error": {"code", "message"}}`).
//! - [`types`]: request and response bodies of `/client`, `/token`, `/send`, `/notify`,
//!   `/receive`, `/ack` and `/nack`.
//!
//! This crate has no I/O and no async: the server, the Rust SDK and the CLI all share it.
//!
//! ```
//! use trunkline_api::{ErrorBody, ErrorCode};
//! let body = ErrorBody::new(ErrorCode::UnknownClient, "no client named 'x'");
//! assert_eq!(ErrorCode::UnknownClient.status(), 404);
//! assert_eq!(serde_json::to_value(&body).unwrap()["error"]["code"], "unknown_client");
//! ```

pub mod error;
pub mod types;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use types::*;
