//! Declared queues: durable queues with names of their own, filled by the topics they are
//! bound to (and by clients with write grants), read by clients with grants, each with its
//! dead-letter queue `<name>.XQ`. A client's inbox is a queue the broker declares for it;
//! these are the ones an admin declares (the federation forwards one to each peer).
//!
//! Declaring is idempotent: declaring a queue that exists replaces its bindings, limits
//! and labels and keeps what it holds.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use trunkline_store::{Op, RecordTable};

use crate::changes::Change;

use crate::queue::{Limits, Overflow, Queue};
use crate::registry::{LimitSettings, MAX_PATTERNS};
use crate::{lock, read, resolve, topic, Broker, BrokerConfig, BrokerError};

/// Longest declared queue name, in bytes.
pub const MAX_QUEUE_NAME: usize = 128;
/// Most labels a queue may carry.
pub const MAX_LABELS: usize = 16;
/// Longest label key or value, in bytes.
pub const MAX_LABEL_LEN: usize = 256;
/// What a dead-letter queue's name ends with (as swpt_stomp names them).
pub const DEAD_LETTER_SUFFIX: &str = ".XQ";

/// A declared queue as stored (JSON in the `queues` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueRecord {
    pub name: String,
    /// Topic patterns routed into the queue.
    pub bindings: Vec<String>,
    #[serde(default)]
    pub limits: LimitSettings,
    /// Free-form names for tools (the federation marks the peer a queue is forwarded to).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub created_ms: u64,
}

/// What to declare.
#[derive(Debug, Clone, Default)]
pub struct QueueSpec {
    pub bindings: Vec<String>,
    pub limits: LimitSettings,
    pub labels: BTreeMap<String, String>,
}

/// A declared queue as shown to callers.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueView {
    pub name: String,
    pub bindings: Vec<String>,
    pub limits: LimitSettings,
    pub labels: BTreeMap<String, String>,
    /// Its dead-letter queue's name.
    pub dead_letter: String,
    /// Messages in it (ready and leased).
    pub depth: u64,
    pub dead_depth: u64,
    pub created_ms: u64,
}

/// `true` if `name` may be declared: `[A-Za-z0-9][A-Za-z0-9._-]*`, at most
/// [`MAX_QUEUE_NAME`] bytes, and not a name the broker gives its own queues (ending in
/// `-inbox`, `-dead` or [`DEAD_LETTER_SUFFIX`]).
pub fn valid_queue_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_QUEUE_NAME
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && !name.ends_with("-inbox")
        && !name.ends_with("-dead")
        && !name.ends_with(DEAD_LETTER_SUFFIX)
}

/// The dead-letter queue of declared queue `name`.
pub fn dead_letter_of(name: &str) -> String {
    format!("{name}{DEAD_LETTER_SUFFIX}")
}

/// The queue and its dead-letter queue, as the broker keeps them.
pub(crate) fn queues_of(rec: &QueueRecord, config: &BrokerConfig) -> [Queue; 2] {
    let limits = resolve(&rec.limits, config);
    let dead: Arc<str> = Arc::from(dead_letter_of(&rec.name));
    [
        Queue::new(Arc::from(rec.name.as_str()), limits, Some(dead.clone())),
        Queue::new(
            dead,
            Limits {
                overflow: Overflow::DropOldest,
                ..limits
            },
            None,
        ),
    ]
}

pub(crate) fn queue_put(rec: &QueueRecord) -> Op {
    Op::PutRecord {
        table: RecordTable::Queues,
        key: rec.name.clone(),
        value: serde_json::to_vec(rec).unwrap_or_default(),
    }
}

fn check_spec(name: &str, spec: &QueueSpec) -> Result<(), BrokerError> {
    if !valid_queue_name(name) {
        let msg = format!(
            "invalid queue name `{name}`: it must match [A-Za-z0-9][A-Za-z0-9._-]*, be at most \
             {MAX_QUEUE_NAME} bytes, and not end in `-inbox`, `-dead` or `{DEAD_LETTER_SUFFIX}`"
        );
        // A well-formed name the broker keeps for its own queues conflicts; any other is
        // not a name.
        let reserved = valid_queue_name(
            name.trim_end_matches("-inbox")
                .trim_end_matches("-dead")
                .trim_end_matches(DEAD_LETTER_SUFFIX),
        );
        // A name no queue can have: there is nothing at that path (404).
        return Err(if reserved {
            BrokerError::QueueNameTaken(msg)
        } else {
            BrokerError::NoSuchQueueName(msg)
        });
    }
    if spec.bindings.len() > MAX_PATTERNS {
        return Err(BrokerError::InvalidArgument(format!(
            "bindings must have at most {MAX_PATTERNS} patterns"
        )));
    }
    for p in &spec.bindings {
        topic::validate_pattern(p).map_err(|cause| BrokerError::InvalidPattern {
            pattern: p.clone(),
            cause,
        })?;
    }
    if spec.labels.len() > MAX_LABELS
        || spec
            .labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > MAX_LABEL_LEN || v.len() > MAX_LABEL_LEN)
    {
        return Err(BrokerError::InvalidArgument(format!(
            "labels must be at most {MAX_LABELS}, with keys of 1 to {MAX_LABEL_LEN} bytes and \
             values of at most {MAX_LABEL_LEN}"
        )));
    }
    spec.limits.check()
}

impl Broker {
    /// Checks a declaration and makes the queue's record; applying [`Change::PutQueue`]
    /// declares it.
    pub fn plan_declare_queue(
        &self,
        name: &str,
        spec: QueueSpec,
        now: u64,
    ) -> Result<QueueRecord, BrokerError> {
        check_spec(name, &spec)?;
        let existing = read(&self.inner.registry).queues.get(name).cloned();
        if existing.is_none() && self.queue(name).is_some() {
            return Err(BrokerError::QueueNameTaken(format!(
                "`{name}` is taken by another queue"
            )));
        }
        let mut bindings = spec.bindings;
        bindings.sort();
        bindings.dedup();
        Ok(QueueRecord {
            name: name.to_owned(),
            bindings,
            limits: spec.limits,
            labels: spec.labels,
            created_ms: existing.as_ref().map_or(now, |e| e.created_ms),
        })
    }

    /// Declares queue `name` (and its dead-letter queue), or changes its bindings, limits
    /// and labels if it exists; returns it and whether it was made now. Messages published
    /// from the moment this returns are routed by the new bindings.
    pub async fn declare_queue(
        &self,
        name: &str,
        spec: QueueSpec,
        now: u64,
    ) -> Result<(QueueView, bool), BrokerError> {
        let _admin = self.inner.admin.lock().await;
        let queue = self.plan_declare_queue(name, spec, now)?;
        let made = self.apply_locked(&Change::PutQueue { queue }).await?;
        let view = self
            .get_queue(name)
            .ok_or_else(|| BrokerError::UnknownQueue(name.to_owned()))?;
        Ok((view, made))
    }

    /// Deletes declared queue `name`, its dead-letter queue, what they hold and the grants
    /// naming them.
    pub async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        self.apply(&Change::DeleteQueue {
            name: name.to_owned(),
        })
        .await
        .map(drop)
    }

    /// A declared queue.
    pub fn get_queue(&self, name: &str) -> Option<QueueView> {
        let rec = read(&self.inner.registry).queues.get(name).cloned()?;
        Some(self.queue_view(&rec))
    }

    /// Every declared queue, ordered by name.
    pub fn list_queues(&self) -> Vec<QueueView> {
        let mut recs: Vec<QueueRecord> = read(&self.inner.registry)
            .queues
            .values()
            .cloned()
            .collect();
        recs.sort_by(|a, b| a.name.cmp(&b.name));
        recs.iter().map(|r| self.queue_view(r)).collect()
    }

    /// Messages in queue `name` (ready and leased; 0 for no queue).
    pub fn depth_of(&self, name: &str) -> u64 {
        self.queue(name)
            .map(|c| lock(&c.state).depth())
            .unwrap_or(0)
    }

    /// Deliveries of queue `name` leased now (0 for no queue).
    pub fn leased_of(&self, name: &str) -> u64 {
        self.queue(name)
            .map(|c| lock(&c.state).leased_len())
            .unwrap_or(0)
    }

    fn queue_view(&self, rec: &QueueRecord) -> QueueView {
        let depth = |name: &str| self.depth_of(name);
        let dead_letter = dead_letter_of(&rec.name);
        QueueView {
            name: rec.name.clone(),
            bindings: rec.bindings.clone(),
            limits: rec.limits,
            labels: rec.labels.clone(),
            depth: depth(&rec.name),
            dead_depth: depth(&dead_letter),
            dead_letter,
            created_ms: rec.created_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        for ok in ["q", "Q1", "aa.x.1234abcd", "peer_1-out", &"a".repeat(128)] {
            assert!(valid_queue_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".q",
            "-q",
            "a b",
            "a/b",
            "c1-inbox",
            "c1-dead",
            "q.XQ",
            &"a".repeat(129),
            "é",
        ] {
            assert!(!valid_queue_name(bad), "{bad}");
        }
        assert_eq!(dead_letter_of("q"), "q.XQ");
    }
}
