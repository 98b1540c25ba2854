//! Leases as unacked deliveries: which delivery tag of the current channel each receipt
//! names, and when its lease ends. Pure bookkeeping; the engine acks, nacks and sweeps.
//!
//! A receipt is `<node>/<epoch>/<tag>`: the node that holds the delivery, the channel it was
//! taken on (a new epoch each time the channel is opened again: deliveries of a closed
//! channel went back to their queue) and its delivery tag. A receipt is settled at most
//! once: acking a tag twice would be a channel error in AMQP, closing the channel and
//! returning every delivery it holds, so a tag leaves the table before it is acked.

use std::collections::{BTreeSet, HashMap};

/// One held delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub tag: u64,
    /// Milliseconds since the Unix epoch at which the lease ends.
    pub until_ms: u64,
}

/// Deliveries held on the node's consuming channel.
#[derive(Debug, Default)]
pub struct Leases {
    node: String,
    epoch: u64,
    held: HashMap<u64, u64>,
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

    /// Holds delivery `tag` until `until_ms`; its receipt.
    pub fn hold(&mut self, tag: u64, until_ms: u64) -> String {
        self.held.insert(tag, until_ms);
        self.by_end.insert((until_ms, tag));
        format!("{}/{}/{}", self.node, self.epoch, tag)
    }

    /// Takes the delivery a receipt names, if this node holds it on its current channel.
    pub fn take(&mut self, receipt: &str) -> Option<Held> {
        let mut parts = receipt.rsplitn(3, '/');
        let tag: u64 = parts.next()?.parse().ok()?;
        let epoch: u64 = parts.next()?.parse().ok()?;
        let node = parts.next()?;
        if node != self.node || epoch != self.epoch {
            return None;
        }
        let until_ms = self.held.remove(&tag)?;
        self.by_end.remove(&(until_ms, tag));
        Some(Held { tag, until_ms })
    }

    /// Takes every delivery whose lease ended at or before `now_ms`.
    pub fn take_ended(&mut self, now_ms: u64) -> Vec<Held> {
        let mut ended = Vec::new();
        while let Some(&(until_ms, tag)) = self.by_end.first() {
            if until_ms > now_ms {
                break;
            }
            self.by_end.pop_first();
            self.held.remove(&tag);
            ended.push(Held { tag, until_ms });
        }
        ended
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_is_settled_once_and_only_on_its_channel() {
        let mut l = Leases::new("n1");
        l.new_epoch();
        let a = l.hold(1, 100);
        let b = l.hold(2, 50);
        assert_eq!(a, "n1/1/1");
        assert_eq!(
            l.take(&a),
            Some(Held {
                tag: 1,
                until_ms: 100
            })
        );
        assert_eq!(l.take(&a), None, "settled twice");
        assert_eq!(l.take("n2/1/2"), None, "another node's");
        assert_eq!(l.take("n1/1/x"), None);
        assert_eq!(l.take("nonsense"), None);
        l.new_epoch();
        assert_eq!(l.take(&b), None, "a lease of a closed channel");
        assert!(l.is_empty());
    }

    #[test]
    fn ended_leases_come_out_in_order_of_their_end() {
        let mut l = Leases::new("n");
        l.new_epoch();
        l.hold(7, 30);
        l.hold(8, 10);
        let kept = l.hold(9, 99);
        assert_eq!(
            l.take_ended(30),
            vec![
                Held {
                    tag: 8,
                    until_ms: 10
                },
                Held {
                    tag: 7,
                    until_ms: 30
                }
            ]
        );
        assert_eq!(l.len(), 1);
        assert!(l.take(&kept).is_some());
    }
}
