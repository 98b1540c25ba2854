//! Deduplication of publishes by the publisher's `message_id`.
//!
//! A `(sender, message_id)` seen within the window answers with the first publish's
//! result and enqueues nothing. Results are stored with the message in the same commit,
//! so a retry after a crash is still recognised. The table is bounded by `capacity`;
//! past it the oldest entries are forgotten early (their retries would then be accepted
//! again: at-least-once, never lost).

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// The stored answer to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupRecord {
    pub id: u64,
    pub delivered_to: u64,
    pub expires_ms: u64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum State {
    InFlight,
    Done(DedupRecord),
}

/// Store key of a `(sender, message_id)` pair.
pub(crate) fn key(sender: &str, message_id: &str) -> String {
    format!("{sender}\u{1f}{message_id}")
}

#[derive(Debug, Default)]
pub(crate) struct Dedup {
    map: HashMap<String, State>,
    /// Keys in the order their records expire (insertion order, as the window is fixed).
    order: VecDeque<(u64, String)>,
}

impl Dedup {
    pub fn get(&self, key: &str, now: u64) -> Option<State> {
        match self.map.get(key) {
            Some(State::Done(r)) if r.expires_ms <= now => None,
            other => other.copied(),
        }
    }

    pub fn begin(&mut self, key: String) {
        self.map.insert(key, State::InFlight);
    }

    pub fn abort(&mut self, key: &str) {
        if let Some(State::InFlight) = self.map.get(key) {
            self.map.remove(key);
        }
    }

    pub fn finish(&mut self, key: String, rec: DedupRecord) {
        self.order.push_back((rec.expires_ms, key.clone()));
        self.map.insert(key, State::Done(rec));
    }

    /// Forgets expired records and, past `capacity`, the oldest; returns the keys forgotten
    /// so that their stored records can be deleted.
    pub fn prune(&mut self, now: u64, capacity: usize) -> Vec<String> {
        let mut gone = Vec::new();
        while let Some((exp, _)) = self.order.front() {
            if *exp > now && self.order.len() <= capacity {
                break;
            }
            let Some((exp, key)) = self.order.pop_front() else {
                break;
            };
            // The key may have been published again after expiry: only its own record goes.
            if let Some(State::Done(r)) = self.map.get(&key) {
                if r.expires_ms == exp {
                    self.map.remove(&key);
                    gone.push(key);
                }
            }
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}
