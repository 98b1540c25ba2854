//! Leases as unacked deliveries: which delivery tag of the current channel each receipt
//! names, and when its lease ends. Pure bookkeeping; the engine acks, nacks and sweeps.
//!
//! A receipt is `<node>/<epoch>/<tag>`: the node that holds the delivery, the channel it was
//! taken on (a new epoch each time the channel is opened again: deliveries of a closed
//! channel went back to their queue) and its delivery tag. A receipt is settled at most
//! once: acking a tag twice would be a channel error in AMQP, closing the channel and
//! returning every delivery it holds, so a tag leaves the table before it is acked.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// One held delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub tag: u64,
    /// Milliseconds since the Unix epoch at which the lease ends.
    pub until_ms: u64,
    /// The queue it came from (Trunkline's name): only who may read it may settle it.
    pub queue: Arc<str>,
}

/// Deliveries held on the node's consuming channel.
#[derive(Debug, Default)]
pub struct Leases {
    node: String,
    epoch: u64,
    held: HashMap<u64, (u64, Arc<str>)>,
    by_end: BTreeSet<(u64, u64)>,
}

impl Leases {
    pub fn new(node: impl Into<String>) -> Self {
        Leases {
            node: node.into(),
            ..Leases::default()
        }
    }

    /// The channel was opened again: every lease held on the old one is gone (RabbitMQ
    /// gave its deliveries back).
    pub fn new_epoch(&mut self) -> u64 {
        self.epoch += 1;
        self.held.clear();
        self.by_end.clear();
        self.epoch
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Holds delivery `tag` of `queue` until `until_ms`; its receipt.
    pub fn hold(&mut self, tag: u64, until_ms: u64, queue: Arc<str>) -> String {
        self.held.insert(tag, (until_ms, queue));
        self.by_end.insert((until_ms, tag));
        format!("{}/{}/{}", self.node, self.epoch, tag)
    }

    /// Takes the delivery a receipt names, if this node holds it on its current channel
    /// and `may_settle` allows its queue.
    pub fn take(&mut self, receipt: &str, may_settle: impl Fn(&str) -> bool) -> Option<Held> {
        let mut parts = receipt.rsplitn(3, '/');
        let tag: u64 = parts.next()?.parse().ok()?;
        let epoch: u64 = parts.next()?.parse().ok()?;
        let node = parts.next()?;
        if node != self.node || epoch != self.epoch {
            return None;
        }
        let (until_ms, queue) = self.held.get(&tag)?.clone();
        if !may_settle(&queue) {
            return None;
        }
        self.held.remove(&tag);
        self.by_end.remove(&(until_ms, tag));
        Some(Held {
            tag,
            until_ms,
            queue,
        })
    }

    /// Takes every delivery whose lease ended at or before `now_ms`.
    pub fn take_ended(&mut self, now_ms: u64) -> Vec<Held> {
        let mut ended = Vec::new();
        while let Some(&(until_ms, tag)) = self.by_end.first() {
            if until_ms > now_ms {
                break;
            }
            self.by_end.pop_first();
            if let Some((_, queue)) = self.held.remove(&tag) {
                ended.push(Held {
                    tag,
                    until_ms,
                    queue,
                });
            }
        }
        ended
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Deliveries held of `queue`.
    pub fn count_of(&self, queue: &str) -> usize {
        self.held.values().filter(|(_, q)| &**q == queue).count()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    fn any(_: &str) -> bool {
        true
    }

    #[test]
    fn a_receipt_is_settled_once_only_on_its_channel_and_by_a_reader_of_its_queue() {
        let mut l = Leases::new("n1");
        l.new_epoch();
        let a = l.hold(1, 100, q("a-inbox"));
        let b = l.hold(2, 50, q("b-inbox"));
        assert_eq!(a, "n1/1/1");
        assert_eq!(l.take(&a, |q| q == "b-inbox"), None, "not its reader's");
        let held = l.take(&a, |q| q == "a-inbox").expect("held");
        assert_eq!((held.tag, held.until_ms, &*held.queue), (1, 100, "a-inbox"));
        assert_eq!(l.take(&a, any), None, "settled twice");
        assert_eq!(l.take("n2/1/2", any), None, "another node's");
        assert_eq!(l.take("n1/1/x", any), None);
        assert_eq!(l.take("nonsense", any), None);
        l.new_epoch();
        assert_eq!(l.take(&b, any), None, "a lease of a closed channel");
        assert!(l.is_empty());
    }

    #[test]
    fn ended_leases_come_out_in_order_of_their_end() {
        let mut l = Leases::new("n");
        l.new_epoch();
        l.hold(7, 30, q("x"));
        l.hold(8, 10, q("x"));
        let kept = l.hold(9, 99, q("x"));
        let ended: Vec<(u64, u64)> = l
            .take_ended(30)
            .iter()
            .map(|h| (h.tag, h.until_ms))
            .collect();
        assert_eq!(ended, vec![(8, 10), (7, 30)]);
        assert_eq!(l.len(), 1);
        assert!(l.take(&kept, any).is_some());
    }
}
