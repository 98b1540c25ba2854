//! Relay to relay: an envelope whose destination is reached through another relay waits
//! in a durable queue of that relay's (`rmb.relay.<name hash>`), until a worker that holds a
//! connection to it has written it there. The worker logs in as this relay, with this
//! relay's key, which the other relay must list among its peers; it reconnects after a
//! pause doubling from 1 s to 15 s. An envelope that expires while it waits is dropped
//! (its queue's time to live is the envelope's). Of the nodes of a cluster, one forwards to
//! each relay: the one holding the claim `relay.<name>` (`Backend::claim`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_util::sync::CancellationToken;
use trunkline_broker::authz::{Access, Issuer};
use trunkline_broker::{LimitSettings, Overflow, Publish, QueueSpec};
use trunkline_client::relay::{unix_now, RelayConn, Twin};
use trunkline_envelope::{Envelope, Who};

use super::{Relay, ENVELOPE_TYPE, QUEUE_PREFIX};
use crate::state::now_ms;

/// The label a forwarding queue carries with its relay's name.
const RELAY_LABEL: &str = "relay.forward";
/// How long the other relay has to confirm a batch.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Most envelopes waiting for one relay.
const MAX_WAITING: u64 = 100_000;
/// How often a node that does not forward to a relay asks whether it should.
const CLAIM_AGAIN: Duration = Duration::from_secs(2);

/// Starts and feeds the workers.
pub struct Forwarder {
    relay: Weak<Relay>,
    shutdown: CancellationToken,
    /// Relay name → its queue, once its worker runs.
    workers: Mutex<HashMap<String, String>>,
}

impl Forwarder {
    pub(super) fn new(relay: Weak<Relay>, shutdown: CancellationToken) -> Self {
        Forwarder {
            relay,
            shutdown,
            workers: Mutex::new(HashMap::new()),
        }
    }

    /// The queue of the relay named `name`.
    pub fn queue_name(name: &str) -> String {
        let h = Sha256::digest(name.as_bytes());
        let hex: String = h[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("{QUEUE_PREFIX}relay.{hex}")
    }

    /// Starts workers for the relays whose queues hold envelopes from before a restart.
    pub fn resume(&self) {
        let Some(relay) = self.relay.upgrade() else {
            return;
        };
        for q in relay.broker().list_queues() {
            if let Some(name) = q.labels.get(RELAY_LABEL) {
                if relay.peer_key(name).is_some() {
                    self.start(&relay, name, q.name.clone());
                }
            }
        }
    }

    fn start(&self, relay: &Arc<Relay>, name: &str, queue: String) {
        let Ok(mut w) = self.workers.lock() else {
            return;
        };
        if w.contains_key(name) {
            return;
        }
        w.insert(name.to_owned(), queue.clone());
        tokio::spawn(run(
            relay.clone(),
            name.to_owned(),
            queue,
            self.shutdown.clone(),
        ));
    }

    /// Queues `env` for a relay of `dest` that is a peer of this one.
    pub async fn submit(
        &self,
        dest: &Twin,
        env: &Envelope,
        bytes: &[u8],
        ack: &mut Option<super::Ack>,
    ) -> Result<(), String> {
        let relay = self.relay.upgrade().ok_or("the relay is stopping")?;
        let Some(name) = dest.relays.iter().find(|r| relay.peer_key(r).is_some()) else {
            return Err(format!(
                "no relay of twin {} is a peer of this relay",
                dest.id
            ));
        };
        let queue = Self::queue_name(name);
        if !relay.broker().has_queue(&queue) {
            let mut labels = BTreeMap::new();
            labels.insert(RELAY_LABEL.to_owned(), name.clone());
            let spec = QueueSpec {
                bindings: Vec::new(),
                limits: LimitSettings {
                    max_length: Some(MAX_WAITING),
                    overflow: Some(Overflow::DropOldest),
                    max_deliveries: None,
                },
                labels,
            };
            relay
                .broker()
                .declare_queue(&queue, spec, now_ms())
                .await
                .map_err(|e| e.to_string())?;
        }
        self.start(&relay, name, queue.clone());
        let left = env.expires_at().saturating_sub(unix_now()).max(1);
        let mut p = Publish::new(queue.clone(), bytes.to_vec(), env.source.to_string());
        p.queue = Some(queue);
        p.ttl_ms = Some(left * 1000);
        p.content_type = Some(ENVELOPE_TYPE.to_owned());
        let stored = ack.take();
        relay
            .broker()
            .publish_then(
                p,
                now_ms(),
                Box::new(move |r| {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "relay: a forwarded envelope was not stored");
                    }
                    drop(stored);
                }),
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Keeps a connection to relay `name` and writes its queue there until shutdown.
async fn run(relay: Arc<Relay>, name: String, queue: String, stop: CancellationToken) {
    let issuer = Issuer::new(Access::limited(
        &format!("relay-forward:{name}"),
        &[],
        std::slice::from_ref(&queue),
    ));
    let me = issuer.principal();
    let broker = relay.broker().clone();
    let mut backoff = Duration::from_secs(1);
    while !stop.is_cancelled() {
        // Of the nodes of a cluster, the one holding the claim forwards to this relay;
        // the others look again now and then (the claim goes with a node that goes).
        if !broker.claim(&format!("relay.{name}")).await {
            tokio::select! {
                _ = tokio::time::sleep(CLAIM_AGAIN) => {}
                _ = stop.cancelled() => return,
            }
            continue;
        }
        let who = Who::Relay {
            name: relay.name().to_owned(),
        };
        let conn = tokio::select! {
            c = RelayConn::connect(&name, relay.identity(), who) => c,
            _ = stop.cancelled() => return,
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(relay = %name, error = %e, "relay: cannot reach a peer relay");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(15));
                continue;
            }
        };
        tracing::info!(relay = %name, "relay: forwarding to a peer relay");
        let (mut sink, mut stream) = conn.split();
        // Envelopes written on this connection, and confirmed by the other relay.
        let (mut written, mut confirmed) = (0u64, 0u64);
        loop {
            // A node that lost RabbitMQ lost its claim too: another may be forwarding.
            if !broker.claim(&format!("relay.{name}")).await {
                break;
            }
            let got = tokio::select! {
                g = super::lease(&broker, &me, &queue, &stop) => g,
                // Between batches the other relay has nothing more to say.
                f = stream.next() => match f {
                    Some(Ok(_)) => continue,
                    _ => break,
                },
            };
            let batch = match got {
                Ok(b) if b.is_empty() => {
                    if stop.is_cancelled() {
                        return;
                    }
                    continue;
                }
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(queue, error = %e, "relay: cannot read a forwarding queue");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Acked here once the other relay confirms it stored them (synced there).
            let mut ok = super::write_batch(&mut sink, &batch, Frame::Binary).await;
            written += batch.len() as u64;
            let wait = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
            while ok && confirmed < written {
                match tokio::time::timeout_at(wait, stream.next()).await {
                    Ok(Some(Ok(Frame::Text(t)))) => {
                        if let Ok(s) = serde_json::from_str::<trunkline_api::RelayStored>(&t) {
                            confirmed = confirmed.max(s.stored);
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => ok = false,
                }
            }
            super::settle(&broker, &me, &batch, ok).await;
            if !ok {
                break;
            }
            backoff = Duration::from_secs(1);
        }
    }
}
