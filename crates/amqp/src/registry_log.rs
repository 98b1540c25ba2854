//! The registry's shared log: a RabbitMQ stream (`<namespace>:registry`) that every node
//! of a cluster reads from its start and then follows, applying each [`Change`] to its
//! own registry in the stream's one order (`docs/scale-out.md`).
//!
//! A node that takes an admin request decides the change (the broker's `plan_` methods),
//! appends it with a publisher confirm, and waits until it has read its own record back
//! and applied it: the outcome it answers with is the one every node reached, and if two
//! nodes changed the same thing at once, the record first in the stream won.
//!
//! Each node starts by appending a marker record and reading up to it, so it serves only
//! once it holds every change made before it started. The marker carries a fingerprint of
//! the node's token keys: a node whose keys differ from those of the node before it is
//! told in the log (tokens issued by one would be refused by the other).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, LongString};
use lapin::{BasicProperties, Confirmation};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use trunkline_broker::changes::Change;
use trunkline_broker::{Broker, BrokerError, SharedKeys};

use crate::Amqp;

/// How long a writer waits for its record to come back applied.
const APPLIED_WITHIN: Duration = Duration::from_secs(10);
/// One record of the log.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// The writer: `<node>/<start>` (a node's start is random, so a node restarted under
    /// the same name is another writer).
    origin: String,
    /// The writer's count; 0 is its start marker.
    seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    change: Option<Change>,
    /// In a start marker: the fingerprint of the writer's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keys: Option<String>,
    /// The cluster's keys, offered by a node that found none in the log: the first such
    /// record is the cluster's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secrets: Option<SharedKeys>,
}

type Outcome = Result<bool, BrokerError>;

/// A node's end of the shared log.
pub struct RegistryLog {
    amqp: Arc<Amqp>,
    registry: Broker,
    stream: String,
    origin: String,
    /// This node's keys.
    keys: SharedKeys,
    seq: AtomicU64,
    /// Writers waiting for their record, by seq.
    waiting: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    /// The offset of the next record to read (-1: from the first).
    next_offset: AtomicI64,
    /// The cluster's keys: the first offered in the log.
    shared: Mutex<Option<SharedKeys>>,
    /// How many records were applied (for those who wait for a change).
    applied: tokio::sync::watch::Sender<u64>,
}

fn unavailable(what: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("RabbitMQ: registry log: {what}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RegistryLog {
    /// Declares the stream, follows it into `registry` until `stop`, and returns once
    /// `registry` holds every change recorded before this call. `keys` are the node's;
    /// when the log holds no keys yet, they become the cluster's
    /// ([`RegistryLog::shared_keys`]).
    pub async fn open(
        amqp: Arc<Amqp>,
        registry: Broker,
        keys: SharedKeys,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, BrokerError> {
        let stream = amqp.names().stream("registry");
        crate::streams::declare(&amqp, &stream, None).await?;
        let log = Arc::new(RegistryLog {
            origin: amqp.origin().to_owned(),
            amqp,
            registry,
            stream,
            keys,
            seq: AtomicU64::new(1),
            waiting: Mutex::default(),
            next_offset: AtomicI64::new(-1),
            shared: Mutex::default(),
            applied: tokio::sync::watch::Sender::new(0),
        });
        crate::follow::spawn(&log, stop);
        // Everything before this marker is applied once the marker is read back.
        let fingerprint = log.keys.fingerprint();
        log.append(0, None, Some(fingerprint), None).await?;
        if lock(&log.shared).is_none() {
            // The first node of the cluster (or one of the first, at once: the first
            // offer in the log wins).
            let seq = log.seq.fetch_add(1, Ordering::Relaxed);
            log.append(seq, None, None, Some(log.keys.clone())).await?;
        }
        Ok(log)
    }

    /// The keys of the cluster: every node must use them.
    pub fn shared_keys(&self) -> Option<SharedKeys> {
        lock(&self.shared).clone()
    }

    /// How many records this node applied so far.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits (at most `within`) for a record applied after the first `seen`; whether one
    /// was.
    pub async fn applied_after(&self, seen: u64, within: std::time::Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(within, rx.wait_for(|n| *n > seen))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Records `change` and applies it (as every node does); what applying decided.
    pub async fn record(&self, change: Change) -> Result<bool, BrokerError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.append(seq, Some(change), None, None).await
    }

    /// Appends a record and waits until this node has read it back and applied it.
    async fn append(
        &self,
        seq: u64,
        change: Option<Change>,
        keys: Option<String>,
        secrets: Option<SharedKeys>,
    ) -> Result<bool, BrokerError> {
        let record = Record {
            origin: self.origin.clone(),
            seq,
            change,
            keys,
            secrets,
        };
        let body = serde_json::to_vec(&record).map_err(unavailable)?;
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(seq, tx);
        let stream = self.stream.clone();
        let sent = self
            .amqp
            .with_admin_channel("append to the registry log", |ch| async move {
                ch.confirm_select(ConfirmSelectOptions::default()).await?;
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into());
                let confirm = ch
                    .basic_publish(
                        "".into(),
                        stream.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        props,
                    )
                    .await?;
                confirm.await
            })
            .await;
        let outcome = match sent {
            Ok(Confirmation::Ack(_)) => {
                match tokio::time::timeout(APPLIED_WITHIN, rx).await {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(_)) => Err(unavailable("the log is no longer followed")),
                    // It may still be applied (by every node) later.
                    Err(_) => Err(unavailable(
                        "the change was recorded but not read back in time; it may take effect",
                    )),
                }
            }
            Ok(_) => Err(unavailable("RabbitMQ refused the record")),
            Err(e) => Err(e),
        };
        lock(&self.waiting).remove(&seq);
        outcome
    }

    /// Applies one record read from the stream.
    async fn apply(&self, offset: i64, body: &[u8]) {
        let record: Record = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(offset, cause = %e, "skipping a registry record that is not one");
                return;
            }
        };
        let outcome = match &record.change {
            Some(change) => {
                let r = self.registry.apply(change).await;
                if let Err(e) = &r {
                    tracing::debug!(offset, subject = %change.subject(), cause = %e, "registry change refused");
                }
                r
            }
            None => Ok(false),
        };
        if let Some(secrets) = record.secrets {
            lock(&self.shared).get_or_insert(secrets);
        }
        self.applied.send_modify(|n| *n += 1);
        if record.origin == self.origin {
            if let Some(tx) = lock(&self.waiting).remove(&record.seq) {
                let _ = tx.send(outcome);
            }
        }
    }

    /// Reads the stream from the next offset on, until the channel closes or `stop`.
    async fn read(&self, stop: &CancellationToken) -> Result<(), BrokerError> {
        let first = AMQPValue::LongString(LongString::from(b"first".to_vec()));
        let tag = format!("registry-{}", self.origin);
        let each = |offset, body: Vec<u8>| async move { self.apply(offset, &body).await };
        crate::streams::read(
            &self.amqp,
            &self.stream,
            &tag,
            first,
            &self.next_offset,
            stop,
            each,
        )
        .await
    }
}

impl crate::follow::Follower for RegistryLog {
    const WHAT: &'static str = "the registry log";
    fn run<'a>(
        &'a self,
        stop: &'a CancellationToken,
    ) -> trunkline_broker::backend::BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.read(stop))
    }
}
