//! Federation with peer nodes, as Swaptacular's `swpt_stomp` does it (docs/federation.md):
//! the node database, a STOMP server over mutual TLS that peers send to, and links that
//! forward declared queues to peers.
//!
//! - [`gate`]: which peers may be connected, with what rights, and what their messages
//!   become here.
//! - [`tls`]: TLS 1.3 between peers, chains verified by `trunkline_federation::chain`.
//!
//! The listener is [`crate::stomp_listener`] with a [`Gate`]: the same sessions, receipts,
//! limits and authorization check as for clients, with peers for clients.

pub mod gate;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trunkline_federation::{DbError, NodeDatabase};

pub use gate::{Admitted, Gate};

use crate::config::FederationConfig;
use crate::tls::TlsError;

/// Why federation could not start.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("federation node database: {0}")]
    Db(#[from] DbError),
    #[error("federation TLS: {0}")]
    Tls(#[from] TlsError),
}

/// What the node runs for federation: the gate and the listener's TLS.
pub struct Federation {
    pub gate: Arc<Gate>,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl Federation {
    /// Reads the node database and our certificate; `None` when federation is off.
    pub fn open(config: &FederationConfig) -> Result<Option<Self>, FederationError> {
        let Some(url) = &config.nodedata else {
            return Ok(None);
        };
        let db = NodeDatabase::new(url);
        let node = db.node()?;
        let acceptor = tls::acceptor(&config.cert, &config.key, &node.root_cert)?;
        tracing::info!(
            node_id = %node.node_id,
            node_type = node.node_type.as_str(),
            nodedata = %db.root().display(),
            "federation: node database read"
        );
        Ok(Some(Federation {
            gate: Arc::new(Gate::new(db, node, config.max_connections_per_peer)),
            acceptor,
        }))
    }
}

/// Reads the peers' data again every `period` until `shutdown`.
pub async fn watch(gate: Arc<Gate>, period: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.cancelled() => return,
        }
        let g = gate.clone();
        // File reads: off the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || g.refresh()).await;
    }
}
