//! Live subscriptions: a non-durable stream of every message published to a matching
//! topic from now on, for whoever is connected (STOMP `/topic/…`, WebSocket channels).
//!
//! Nothing is stored for them. Each subscription has a bounded channel; a subscriber that
//! falls behind by more than its capacity misses messages and is marked `lagged`, which the
//! session turns into its slow-consumer policy (typically: tell the client and close).
//!
//! A subscription made for a client gets only what the client may read *now*: the
//! messages its pattern matches and its subscription patterns allow (the intersection),
//! checked per message against the client's current rights, and nothing once the client
//! is deleted or its secret rotated.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

use tokio::sync::mpsc;
use trunkline_store::StoredMessage;

use crate::authz::Principal;
use crate::topic::TopicTrie;

/// A message delivered live.
#[derive(Debug, Clone)]
pub struct LiveMessage {
    pub id: u64,
    pub data: Arc<StoredMessage>,
}

struct Sender {
    tx: mpsc::Sender<LiveMessage>,
    lagged: Arc<AtomicBool>,
    pattern: String,
    /// Whose rights filter what it gets; `None` for the node's own subscribers.
    reader: Option<Principal>,
}

/// Every live subscription of a node.
#[derive(Default)]
pub(crate) struct Live {
    trie: TopicTrie<u64>,
    subs: HashMap<u64, Sender>,
    next: u64,
}

impl Live {
    pub fn add(
        &mut self,
        pattern: String,
        capacity: usize,
        reader: Option<Principal>,
    ) -> (u64, mpsc::Receiver<LiveMessage>, Arc<AtomicBool>) {
        self.next += 1;
        let id = self.next;
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let lagged = Arc::new(AtomicBool::new(false));
        self.trie.insert(&pattern, id);
        self.subs.insert(
            id,
            Sender {
                tx,
                lagged: lagged.clone(),
                pattern,
                reader,
            },
        );
        (id, rx, lagged)
    }

    pub fn remove(&mut self, id: u64) {
        if let Some(s) = self.subs.remove(&id) {
            self.trie.remove(&s.pattern, &id);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// Hands `msg` to every matching subscription that has room; returns how many got it
    /// and how many missed it because they were full.
    pub fn fan_out(&self, msg: &LiveMessage) -> (u64, u64) {
        let mut ids = Vec::new();
        self.trie.matches(&msg.data.topic, &mut ids);
        // Split once for every subscriber whose rights are checked.
        let mut words: Option<Vec<&str>> = None;
        let (mut sent, mut missed) = (0, 0);
        for id in ids {
            let Some(s) = self.subs.get(&id) else {
                continue;
            };
            if let Some(reader) = &s.reader {
                let words = words.get_or_insert_with(|| msg.data.topic.split('.').collect());
                if reader.with_access(|a| a.may_read_words(words)) != Some(true) {
                    continue;
                }
            }
            match s.tx.try_send(msg.clone()) {
                Ok(()) => sent += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.lagged.store(true, Ordering::Relaxed);
                    missed += 1;
                }
                // The subscriber is gone; its guard removes it.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        (sent, missed)
    }
}

/// One live subscription. Dropping it unsubscribes.
pub struct LiveSubscription {
    pub(crate) id: u64,
    pub(crate) rx: mpsc::Receiver<LiveMessage>,
    pub(crate) lagged: Arc<AtomicBool>,
    pub(crate) live: Weak<RwLock<Live>>,
}

impl LiveSubscription {
    /// The next message; `None` once the broker is gone.
    pub async fn recv(&mut self) -> Option<LiveMessage> {
        self.rx.recv().await
    }

    /// A message if one is waiting.
    pub fn try_recv(&mut self) -> Option<LiveMessage> {
        self.rx.try_recv().ok()
    }

    /// True once a message was missed because this subscriber was too slow.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Relaxed)
    }
}

impl Drop for LiveSubscription {
    fn drop(&mut self) {
        if let Some(live) = self.live.upgrade() {
            live.write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(self.id);
        }
    }
}

/// Counters of live delivery.
#[derive(Debug, Default)]
pub struct LiveCounters {
    pub delivered: AtomicU64,
    pub missed: AtomicU64,
}
