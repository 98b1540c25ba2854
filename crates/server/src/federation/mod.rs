//! Federation with peer nodes, as Swaptacular's `swpt_stomp` does it (docs/federation.md):
//! the node database, a STOMP server over mutual TLS that peers send to, and links that
//! forward declared queues to peers.
//!
//! - [`gate`]: which peers may be connected, with what rights, and what their messages
//!   become here.
//! - [`tls`]: TLS 1.3 between peers, chains verified by `trunkline_federation::chain`.
//! - [`link`]: a declared queue forwarded to a peer; [`Links`] runs one per queue
//!   labelled with an active peer.
//!
//! The listener is [`crate::stomp_listener`] with a [`Gate`]: the same sessions, receipts,
//! limits and authorization check as for clients, with peers for clients.

pub mod gate;
pub mod link;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet};
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

/// What `configure-queue PEER QUEUE` declares: a queue bound to what this node sends
/// `peer` ([`trunkline_federation::topology::queue_binding`]), labelled with the peer so
/// that a link forwards it, long enough for a peer away for a while, and not
/// dead-lettering a message for having been taken many times (a link takes its messages
/// again after each restart of the node).
pub fn forward_spec(
    node: &trunkline_federation::NodeData,
    peer: &trunkline_federation::PeerData,
) -> Result<trunkline_broker::QueueSpec, String> {
    let binding = trunkline_federation::topology::queue_binding(node, peer)
        .ok_or_else(|| {
            format!(
                "a node of type {:?} does not link to one of type {:?}",
                node.node_type.as_str(),
                peer.node_type.as_str()
            )
        })?
        .map_err(|e| e.to_string())?;
    Ok(trunkline_broker::QueueSpec {
        bindings: vec![binding],
        limits: trunkline_broker::LimitSettings {
            max_length: Some(100_000_000),
            overflow: None,
            max_deliveries: Some(trunkline_broker::registry::MAX_DELIVERIES_LIMIT),
        },
        labels: [(link::PEER_LABEL.to_owned(), peer.node_id.clone())].into(),
    })
}

/// The links a node runs, and their numbers.
#[derive(Default)]
pub struct Links {
    running: std::sync::Mutex<BTreeMap<(String, String), Running>>,
    /// Every link's numbers since the node started, kept across the link's restarts
    /// (its peer deactivated and activated again), so that its counters only grow.
    stats: std::sync::Mutex<BTreeMap<(String, String), Arc<link::LinkStats>>>,
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<link::LinkEnd>,
}

impl Links {
    /// `(peer, queue, numbers)` of every link run since the node started, ordered.
    pub fn stats(&self) -> Vec<(String, String, Arc<link::LinkStats>)> {
        lock(&self.stats)
            .iter()
            .map(|((p, q), s)| (p.clone(), q.clone(), s.clone()))
            .collect()
    }

    /// `(peer, queue)` of each declared queue labelled with an active peer. Reads the
    /// node database: blocks.
    fn wanted(
        broker: &Arc<dyn trunkline_broker::Backend>,
        env: &link::LinkEnv,
    ) -> BTreeSet<(String, String)> {
        broker
            .list_queues()
            .into_iter()
            .filter_map(|q| {
                let peer = q.labels.get(link::PEER_LABEL)?.clone();
                matches!(env.db.peer(&peer, true), Ok(Some(_))).then_some((peer, q.name))
            })
            .collect()
    }

    /// Starts a link for each of `wanted`, and stops those no longer in it.
    fn reconcile(
        &self,
        wanted: BTreeSet<(String, String)>,
        broker: &Arc<dyn trunkline_broker::Backend>,
        env: &Arc<link::LinkEnv>,
        shutdown: &CancellationToken,
    ) {
        let mut running = lock(&self.running);
        running.retain(|key, r| {
            let keep = wanted.contains(key) && !r.task.is_finished();
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        for (peer, queue) in wanted {
            if running.contains_key(&(peer.clone(), queue.clone())) {
                continue;
            }
            let stats = lock(&self.stats)
                .entry((peer.clone(), queue.clone()))
                .or_default()
                .clone();
            let stop = shutdown.child_token();
            tracing::info!(peer = %peer, queue = %queue, "link starting");
            let source = Arc::new(link::BrokerSource::new(broker.clone(), &peer, &queue));
            let task = tokio::spawn(link::run(
                env.clone(),
                source,
                peer.clone(),
                queue.clone(),
                stats.clone(),
                stop.clone(),
            ));
            running.insert((peer, queue), Running { stop, task });
        }
    }

    /// Stops every link and waits until each gave back what it held.
    async fn stop_all(&self) {
        let all: Vec<Running> = std::mem::take(&mut *lock(&self.running))
            .into_values()
            .collect();
        for r in all {
            r.stop.cancel();
            let _ = r.task.await;
        }
    }
}

/// Runs the node's links: looks at declared queues and the node database every `period`
/// until `shutdown`, then stops them all. Of the nodes of a cluster, one runs each link:
/// the one that holds its claim ([`trunkline_broker::Backend::claim`]); when that node
/// goes, another takes the claim and the link within a `period`.
pub async fn run_links(
    links: Arc<Links>,
    broker: Arc<dyn trunkline_broker::Backend>,
    env: Arc<link::LinkEnv>,
    period: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let (b, e) = (broker.clone(), env.clone());
        // Reads the node database: off the runtime's workers.
        let wanted = tokio::task::spawn_blocking(move || Links::wanted(&b, &e))
            .await
            .unwrap_or_default();
        let mut held = BTreeSet::new();
        for (peer, queue) in wanted {
            if broker.claim(&format!("link.{peer}.{queue}")).await {
                held.insert((peer, queue));
            }
        }
        links.reconcile(held, &broker, &env, &shutdown);
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    links.stop_all().await;
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
