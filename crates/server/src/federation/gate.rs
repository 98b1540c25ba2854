//! Who of our peers may be connected, and what a peer's message becomes here.
//!
//! A peer is admitted by the node id its verified certificate names, if the node database
//! lists it as active now (read again at each admission), and while it holds fewer than
//! `max_connections_per_peer` connections. It gets a [`Principal`] from an [`Issuer`] of
//! its own, limited to publishing under this node's inbound exchange
//! (`accounts_in.#`, `creditors_in.#` or `debtors_in.#`): its messages go through the same
//! check as every client's. [`Gate::refresh`] reads the database again every few
//! seconds; a peer gone, deactivated or changed has its issuer revoked, which closes its
//! sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use trunkline_api::ErrorCode;
use trunkline_broker::{Access, Issuer, Principal, Publish};
use trunkline_federation::{check_inbound, NodeData, NodeDatabase, PeerData};
use trunkline_stomp::{Destination, StompError};

/// A peer's principal issuer, its data as last read, and its open connections.
struct Known {
    data: Arc<PeerData>,
    issuer: Issuer,
    connections: Arc<AtomicUsize>,
}

/// Admits peers and turns their messages into publishes.
pub struct Gate {
    db: NodeDatabase,
    node: NodeData,
    max_connections_per_peer: usize,
    known: Mutex<HashMap<String, Known>>,
}

/// A peer connection let in: who it acts as, and its place among the peer's connections
/// (given back when this is dropped).
pub struct Admitted {
    pub principal: Principal,
    pub peer: Arc<PeerData>,
    connections: Arc<AtomicUsize>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

fn refused(code: ErrorCode, message: impl Into<String>) -> StompError {
    StompError::new(code.as_str(), message)
}

/// The name a peer's principal goes by (in logs and refusals).
pub fn principal_name(peer_id: &str) -> String {
    format!("peer:{peer_id}")
}

impl Gate {
    pub fn new(db: NodeDatabase, node: NodeData, max_connections_per_peer: usize) -> Self {
        Gate {
            db,
            node,
            max_connections_per_peer,
            known: Mutex::new(HashMap::new()),
        }
    }

    pub fn node(&self) -> &NodeData {
        &self.node
    }

    pub fn db(&self) -> &NodeDatabase {
        &self.db
    }

    /// The exchange peers send to here, `/exchange/<this>`.
    pub fn exchange(&self) -> &'static str {
        self.node.node_type.inbound_exchange()
    }

    fn access(&self, peer_id: &str) -> Access {
        Access::limited(
            &principal_name(peer_id),
            &[format!("{}.#", self.exchange())],
            &[],
        )
    }

    /// Lets in a connection whose certificate names `peer_id`, if it is an active peer now
    /// with room for one more connection.
    pub fn admit(&self, peer_id: &str) -> Result<Admitted, StompError> {
        let data = match self.db.peer(peer_id, true) {
            Ok(Some(d)) => Arc::new(d),
            Ok(None) => {
                self.forget(peer_id);
                return Err(refused(
                    ErrorCode::UnknownPeer,
                    format!(
                        "node {peer_id} is not an active peer of node {}",
                        self.node.node_id
                    ),
                ));
            }
            Err(e) => {
                tracing::warn!(peer = peer_id, cause = %e, "cannot read the peer's data");
                return Err(refused(
                    ErrorCode::UnknownPeer,
                    format!("the data of peer {peer_id} cannot be read"),
                ));
            }
        };
        let mut known = lock(&self.known);
        let entry = match known.get(peer_id) {
            Some(k) if k.data == data && !k.issuer.is_revoked() => known.get_mut(peer_id),
            _ => {
                if let Some(old) = known.remove(peer_id) {
                    old.issuer.revoke();
                }
                known.insert(
                    peer_id.to_owned(),
                    Known {
                        data,
                        issuer: Issuer::new(self.access(peer_id)),
                        connections: Arc::new(AtomicUsize::new(0)),
                    },
                );
                known.get_mut(peer_id)
            }
        };
        let Some(k) = entry else {
            return Err(refused(ErrorCode::Unavailable, "peer table"));
        };
        let taken = k.connections.fetch_add(1, Ordering::AcqRel);
        if taken >= self.max_connections_per_peer {
            k.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(refused(
                ErrorCode::UnknownPeer,
                format!(
                    "peer {peer_id} has {} connections open, as many as it may",
                    self.max_connections_per_peer
                ),
            ));
        }
        Ok(Admitted {
            principal: k.issuer.principal(),
            peer: k.data.clone(),
            connections: k.connections.clone(),
        })
    }

    fn forget(&self, peer_id: &str) {
        if let Some(old) = lock(&self.known).remove(peer_id) {
            old.issuer.revoke();
            tracing::info!(
                peer = peer_id,
                "peer no longer active: its connections are closed"
            );
        }
    }

    /// Reads the data of every peer with connections again; one that is no longer active,
    /// or whose data changed, loses its connections (they may come back at once with the
    /// new data).
    pub fn refresh(&self) {
        let ids: Vec<(String, Arc<PeerData>)> = lock(&self.known)
            .iter()
            .map(|(id, k)| (id.clone(), k.data.clone()))
            .collect();
        for (id, data) in ids {
            match self.db.peer(&id, true) {
                Ok(Some(now)) if now == *data => {}
                Ok(_) => self.forget(&id),
                // Unreadable for now (being rewritten?): keep what was read before.
                Err(e) => tracing::warn!(peer = %id, cause = %e, "cannot read the peer's data"),
            }
        }
    }

    /// What a peer's `SEND` publishes here: only to `/exchange/<our inbound exchange>`, only
    /// a message [`check_inbound`] takes, routed by its routing key under the exchange
    /// (`creditors_in.0.1.…`), with its SMP headers.
    pub fn inbound(
        &self,
        admitted: &Admitted,
        destination: &Destination,
        content_type: Option<&str>,
        headers: &[(String, String)],
        body: &[u8],
        now_ms: u64,
    ) -> Result<Publish, StompError> {
        let exchange = self.exchange();
        if *destination != Destination::Exchange(exchange.to_owned()) {
            return Err(refused(
                ErrorCode::InvalidDestination,
                format!(
                    "a peer sends to /exchange/{exchange} only, not {}",
                    destination.to_header()
                ),
            ));
        }
        let message_type = headers
            .iter()
            .find(|(k, _)| k == "type")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        let taken = check_inbound(
            &self.node,
            &admitted.peer,
            message_type,
            content_type.unwrap_or_default(),
            body,
            now_ms as i64,
        )
        .map_err(|r| refused(ErrorCode::InvalidMessage, r.0))?;
        let mut p = Publish::new(
            format!("{exchange}.{}", taken.routing_key),
            Bytes::from(taken.body),
            admitted.principal.client_id.to_string(),
        );
        p.headers = taken.headers;
        p.headers.push(("type".into(), taken.message_type));
        Ok(p)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
