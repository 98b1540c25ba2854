//! The Trunkline node: configuration, listeners, the HTTP API, metrics and shutdown.
//!
//! Modules:
//! - [`config`]: the typed [`Config`] and its shipped defaults ([`config::DEFAULT_CONFIG`]).
//! - [`node`]: [`Node::start`] opens the data directory and serves; [`Node::shutdown`]
//!   drains and closes; [`run`] does both around a signal future.
//! - [`http`]: the axum routers of the public and backend listeners, their extractors,
//!   and the one error-to-response mapping.
//! - [`listener`]: the accept loop with a connection cap and header timeout.
//! - [`metrics`]: what `/metrics` shows, read from the node's counters at scrape time.
//! - [`openapi`]: the document served at `/openapi.json`.
//! - [`relay`]: the relay twins exchange envelopes through (`GET /relay`).
//!
//! It does not install a log subscriber (the binary does) and holds no message state of
//! its own: that is the broker's.
//!
//! ```no_run
//! # async fn f() -> Result<(), trunkline_server::node::StartError> {
//! use trunkline_server::{Config, Node, Secrets};
//! let mut config = Config::default();
//! config.http = "127.0.0.1:0".parse().unwrap();
//! config.backend = "127.0.0.1:0".parse().unwrap();
//! let node = Node::start(config, Secrets::default()).await?;
//! println!("serving on {}", node.http_addr);
//! node.shutdown().await;
//! # Ok(()) }
//! ```

pub mod config;
pub mod delivery;
pub mod error;
pub mod extract;
pub mod federation;
pub mod http;
pub mod listener;
pub mod live;
pub mod metrics;
pub mod node;
pub mod openapi;
pub mod relay;
pub mod state;
pub mod stomp_listener;
pub mod tls;
pub mod ws;

pub use config::{Config, Secrets};
pub use node::{run, Node, StartError};
