//! The client registry: who exists, what they subscribe to, and the routing trie.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::authz::Holder;
use crate::named::QueueRecord;
use crate::topic::TopicTrie;

/// Longest client name, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Most patterns one client may subscribe to.
pub const MAX_PATTERNS: usize = 64;

/// Most a queue's `max_length` may be set to.
pub const MAX_LENGTH_LIMIT: u64 = 1_000_000_000;
/// Most a queue's `max_deliveries` may be set to.
pub const MAX_DELIVERIES_LIMIT: u32 = 1_000_000;

/// Per-client inbox limits as configured; `None` takes the node default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSettings {
    #[serde(default)]
    pub max_length: Option<u64>,
    #[serde(default)]
    pub overflow: Option<crate::Overflow>,
    #[serde(default)]
    pub max_deliveries: Option<u32>,
}

/// A client as stored (JSON in the `clients` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub client_id: String,
    pub client_name: String,
    pub patterns: Vec<String>,
    /// Topic patterns this client may publish to; `None`: every topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    pub roles: Vec<String>,
    /// Other queues (such as `<other>-inbox`) this client may consume from.
    #[serde(default)]
    pub grants: Vec<String>,
    /// Other queues this client may put messages into directly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_grants: Vec<String>,
    /// Topic patterns this client may also read live (STOMP `/topic/…`), without them
    /// routing into its inbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_topics: Vec<String>,
    /// Salted hash of the secret; the secret itself is never stored.
    pub secret_hash: String,
    /// Names the current secret; tokens carry it, so rotating invalidates them.
    pub credential_id: String,
    #[serde(default)]
    pub inbox: LimitSettings,
    pub created_ms: u64,
}

impl LimitSettings {
    /// `Err` (what is wrong) for limits out of their ranges.
    pub fn check(&self) -> Result<(), crate::BrokerError> {
        let length_ok = self
            .max_length
            .is_none_or(|l| (1..=MAX_LENGTH_LIMIT).contains(&l));
        let deliveries_ok = self
            .max_deliveries
            .is_none_or(|d| (1..=MAX_DELIVERIES_LIMIT).contains(&d));
        if length_ok && deliveries_ok {
            Ok(())
        } else {
            Err(crate::BrokerError::InvalidArgument(format!(
                "max_length must be 1 to {MAX_LENGTH_LIMIT} and max_deliveries 1 to {MAX_DELIVERIES_LIMIT}"
            )))
        }
    }
}

impl ClientRecord {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }
}

/// `true` if `id` matches `[a-z0-9][a-z0-9._-]{0,63}`.
pub fn valid_client_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

/// Name of a client's inbox queue.
pub fn inbox_name(client_id: &str) -> String {
    format!("{client_id}-inbox")
}

/// Name of a client's dead-letter queue.
pub fn dead_name(client_id: &str) -> String {
    format!("{client_id}-dead")
}

/// Clients and the trie routing topics to their inboxes.
#[derive(Default)]
pub(crate) struct Registry {
    pub clients: HashMap<String, ClientRecord>,
    pub trie: TopicTrie<Arc<str>>,
    /// Every inbox, for broadcasts.
    pub inboxes: Vec<Arc<str>>,
    /// Per client: what its principals share (its current rights, its revocation).
    pub holders: HashMap<String, Arc<Holder>>,
    /// Declared queues, by name.
    pub queues: HashMap<String, QueueRecord>,
    /// The relay's twins, by id.
    pub twins: std::collections::BTreeMap<u32, crate::twins::TwinRecord>,
}

impl Registry {
    pub fn insert(&mut self, rec: ClientRecord) {
        let inbox: Arc<str> = Arc::from(inbox_name(&rec.client_id));
        if let Some(old) = self.clients.remove(&rec.client_id) {
            for p in &old.patterns {
                self.trie.remove(p, &inbox);
            }
        } else {
            self.inboxes.push(inbox.clone());
        }
        for p in &rec.patterns {
            self.trie.insert(p, inbox.clone());
        }
        match self.holders.get(&rec.client_id) {
            // Same credential: open sessions carry on with the new rights.
            Some(h) if h.credential_id == rec.credential_id => h.update(&rec),
            // A new secret: sessions opened with the old one end.
            _ => {
                if let Some(old) = self
                    .holders
                    .insert(rec.client_id.clone(), Holder::new(&rec))
                {
                    old.revoke();
                }
            }
        }
        self.clients.insert(rec.client_id.clone(), rec);
    }

    /// A principal of `client_id` as it is now.
    pub fn principal(&self, client_id: &str) -> Option<crate::Principal> {
        self.holders
            .get(client_id)
            .map(|h| crate::Principal::new(h, client_id))
    }

    /// Adds or replaces a declared queue and routes its bindings to it.
    pub fn insert_queue(&mut self, rec: QueueRecord) {
        let name: Arc<str> = Arc::from(rec.name.as_str());
        if let Some(old) = self.queues.remove(&rec.name) {
            for p in &old.bindings {
                self.trie.remove(p, &name);
            }
        }
        for p in &rec.bindings {
            self.trie.insert(p, name.clone());
        }
        self.queues.insert(rec.name.clone(), rec);
    }

    /// Removes a declared queue and its bindings.
    pub fn remove_queue(&mut self, name: &str) -> Option<QueueRecord> {
        let rec = self.queues.remove(name)?;
        let arc: Arc<str> = Arc::from(name);
        for p in &rec.bindings {
            self.trie.remove(p, &arc);
        }
        Some(rec)
    }

    /// Takes `gone` (queues deleted) out of every client's grants; returns the clients
    /// changed, as they are now.
    pub fn drop_grants(&mut self, gone: &[String]) -> Vec<ClientRecord> {
        let holders: Vec<ClientRecord> = self
            .clients
            .values()
            .filter(|r| {
                r.grants
                    .iter()
                    .chain(&r.write_grants)
                    .any(|g| gone.contains(g))
            })
            .cloned()
            .collect();
        holders
            .into_iter()
            .map(|mut rec| {
                rec.grants.retain(|g| !gone.contains(g));
                rec.write_grants.retain(|g| !gone.contains(g));
                self.insert(rec.clone());
                rec
            })
            .collect()
    }

    pub fn remove(&mut self, client_id: &str) -> Option<ClientRecord> {
        let rec = self.clients.remove(client_id)?;
        let inbox = inbox_name(client_id);
        let inbox_arc: Arc<str> = Arc::from(inbox.as_str());
        for p in &rec.patterns {
            self.trie.remove(p, &inbox_arc);
        }
        self.inboxes.retain(|q| q.as_ref() != inbox);
        if let Some(h) = self.holders.remove(client_id) {
            h.revoke();
        }
        Some(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        for ok in ["a", "noc-c2", "0.x_y-z", &"a".repeat(64)] {
            assert!(valid_client_id(ok), "{ok}");
        }
        for bad in ["", "-a", "A", "a b", "a/b", ".a", &"a".repeat(65), "é"] {
            assert!(!valid_client_id(bad), "{bad}");
        }
    }
}
