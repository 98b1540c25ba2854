//! Live subscriptions to topic patterns: a non-durable stream of every message published
//! to a matching topic from now on, for whoever is subscribed (STOMP `/topic/…`).
//!
//! Nothing is stored for them. Each subscription is a mailbox, which decides per message
//! whether its reader may have it ([`Mailbox::admits`]) and what to do when it is full
//! (the front-end's slow-consumer policy). The owner holds `Topics` behind its own lock:
//! publishing needs only `&self`, so publishers do not wait for each other.

use std::collections::HashMap;
use std::sync::Arc;

use trunkline_store::StoredMessage;

use crate::fanout::Fanout;
use crate::topic::TopicTrie;
use crate::{Event, Mailbox};

struct Subscription<M> {
    pattern: String,
    mailbox: M,
}

/// Every live topic subscription of a node.
pub struct Topics<M> {
    trie: TopicTrie<u64>,
    subs: HashMap<u64, Subscription<M>>,
    next: u64,
}

impl<M> Default for Topics<M> {
    fn default() -> Self {
        Topics {
            trie: TopicTrie::new(),
            subs: HashMap::new(),
            next: 0,
        }
    }
}

impl<M: Mailbox> Topics<M> {
    /// Subscribes `mailbox` to `pattern` (checked by the caller); the subscription's id.
    pub fn add(&mut self, pattern: String, mailbox: M) -> u64 {
        self.next += 1;
        let id = self.next;
        self.trie.insert(&pattern, id);
        self.subs.insert(id, Subscription { pattern, mailbox });
        id
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

    /// Hands message `id` to every matching subscription that admits it; how many got it
    /// and how many did not because they were full (or gone).
    pub fn publish(&self, id: u64, message: &Arc<StoredMessage>) -> (u64, u64) {
        let mut ids = Vec::new();
        self.trie.matches(&message.topic, &mut ids);
        let mut out = Fanout::<M>::new(Event::Topic { id, message });
        // Split once, for every subscriber whose rights are checked.
        let words: Vec<&str> = message.topic.split('.').collect();
        let (mut sent, mut missed) = (0, 0);
        for sub in ids.iter().filter_map(|i| self.subs.get(i)) {
            if !sub.mailbox.admits(&words) {
                continue;
            }
            if out.push(&sub.mailbox, M::Style::default()) {
                sent += 1;
            } else {
                missed += 1;
            }
        }
        (sent, missed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Inbox;

    fn message(topic: &str) -> Arc<StoredMessage> {
        Arc::new(StoredMessage {
            topic: topic.into(),
            body: Default::default(),
            sender: "s".into(),
            timestamp_ms: 0,
            expires_at_ms: None,
            content_type: None,
            headers: Vec::new(),
        })
    }

    #[test]
    fn matching_subscriptions_get_each_message_and_full_ones_miss_it() {
        let mut t = Topics::<Inbox>::default();
        let (status, all, tiny) = (Inbox::new(8), Inbox::new(8), Inbox::new(1));
        let s = t.add("fleet.*.status".into(), status.clone());
        t.add("#".into(), all.clone());
        t.add("fleet.#".into(), tiny.clone());
        assert_eq!(t.publish(1, &message("fleet.7.status")), (3, 0));
        assert_eq!(t.publish(2, &message("fleet.7.fuel")), (1, 1));
        assert_eq!(t.publish(3, &message("weather")), (1, 0));
        assert_eq!(status.taken(), vec!["topic 1 fleet.7.status"]);
        assert_eq!(all.taken().len(), 3);
        assert_eq!(tiny.taken(), vec!["topic 1 fleet.7.status"]);
        t.remove(s);
        assert_eq!(t.len(), 2);
        assert_eq!(t.publish(4, &message("fleet.7.status")), (2, 0));
        assert!(status.taken().is_empty());
    }
}
