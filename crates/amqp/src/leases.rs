//! Leases as unacked deliveries: which delivery tag of which channel each receipt names,
//! and when its lease ends. Pure bookkeeping; the engine acks, nacks and sweeps.
//!
//! A node takes deliveries on several channels: its consuming channel (`basic.get`) and
//! one channel per feed (a `basic.consume` consumer, `crate::feeds`). Each channel gets a
//! number when it is opened, never reused while the node runs; when a channel closes,
//! RabbitMQ gives its unacked deliveries back, and the leases on it are forgotten.
//!
//! A receipt is `<node>/<channel>/<tag>`: the node that holds the delivery, the channel
//! it was taken on and its delivery tag. A receipt is settled at most once: acking a tag
//! twice would be a channel error in AMQP, closing the channel and returning every
//! delivery it holds, so a tag leaves the table before it is acked.
//!
//! Settlements wait here until they are sent ([`Leases::due`]), so that acks can go
//! together: on a channel where deliveries are handed out in tag order, the acks below
//! every tag still held or waiting for a nack go as one `basic.ack` with `multiple`.
//! A delivery leaves the held table and joins the waiting settlements in one step, so
//! no tag is ever in neither.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// One held delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The channel's number.
    pub channel: u64,
    pub tag: u64,
    /// Milliseconds since the Unix epoch at which the lease ends.
    pub until_ms: u64,
    /// The queue it came from (Trunkline's name): only who may read it may settle it.
    pub queue: Arc<str>,
}

/// Deliveries held on the node's channels.
#[derive(Debug, Default)]
pub struct Leases {
    node: String,
    last_channel: u64,
    /// The channels open now.
    open: HashSet<u64>,
    held: HashMap<(u64, u64), (u64, Arc<str>)>,
    by_end: BTreeSet<(u64, u64, u64)>,
    /// Settlements not sent yet, by channel.
    waiting: HashMap<u64, Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    acks: Vec<u64>,
    nacks: Vec<(u64, bool)>,
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `multiple`: every unacked tag of the channel up to this one.
    Ack {
        multiple: bool,
    },
    Nack {
        requeue: bool,
    },
}

impl Leases {
    pub fn new(node: impl Into<String>) -> Self {
        Leases {
            node: node.into(),
            ..Leases::default()
        }
    }

    /// A channel was opened: its number.
    pub fn opened(&mut self) -> u64 {
        self.last_channel += 1;
        self.open.insert(self.last_channel);
        self.last_channel
    }

    /// Channel `channel` closed: every lease held on it is gone (RabbitMQ gave its
    /// deliveries back).
    pub fn closed(&mut self, channel: u64) {
        self.waiting.remove(&channel);
        if !self.open.remove(&channel) {
            return;
        }
        let gone: Vec<(u64, u64)> = self
            .held
            .keys()
            .filter(|(c, _)| *c == channel)
            .copied()
            .collect();
        for key in gone {
            if let Some((until_ms, _)) = self.held.remove(&key) {
                self.by_end.remove(&(until_ms, key.0, key.1));
            }
        }
    }

    /// The connection closed: every channel with it.
    pub fn closed_all(&mut self) {
        self.open.clear();
        self.waiting.clear();
        self.held.clear();
        self.by_end.clear();
    }

    /// Whether channel `channel` is open.
    pub fn is_open(&self, channel: u64) -> bool {
        self.open.contains(&channel)
    }

    /// Holds delivery `tag` of `channel` (of `queue`) until `until_ms`; its receipt, or
    /// `None` if the channel closed meanwhile (the delivery went back).
    pub fn hold(
        &mut self,
        channel: u64,
        tag: u64,
        until_ms: u64,
        queue: Arc<str>,
    ) -> Option<String> {
        if !self.open.contains(&channel) {
            return None;
        }
        self.held.insert((channel, tag), (until_ms, queue));
        self.by_end.insert((until_ms, channel, tag));
        Some(format!("{}/{}/{}", self.node, channel, tag))
    }

    /// Takes the delivery a receipt names, if this node holds it on a channel open now
    /// and `may_settle` allows its queue.
    pub fn take(&mut self, receipt: &str, may_settle: impl Fn(&str) -> bool) -> Option<Held> {
        let mut parts = receipt.rsplitn(3, '/');
        let tag: u64 = parts.next()?.parse().ok()?;
        let channel: u64 = parts.next()?.parse().ok()?;
        let node = parts.next()?;
        if node != self.node {
            return None;
        }
        let (until_ms, queue) = self.held.get(&(channel, tag))?.clone();
        if !may_settle(&queue) {
            return None;
        }
        self.held.remove(&(channel, tag));
        self.by_end.remove(&(until_ms, channel, tag));
        Some(Held {
            channel,
            tag,
            until_ms,
            queue,
        })
    }

    /// Takes every delivery whose lease ended at or before `now_ms`.
    pub fn take_ended(&mut self, now_ms: u64) -> Vec<Held> {
        let mut ended = Vec::new();
        while let Some(&(until_ms, channel, tag)) = self.by_end.first() {
            if until_ms > now_ms {
                break;
            }
            self.by_end.pop_first();
            if let Some((_, queue)) = self.held.remove(&(channel, tag)) {
                ended.push(Held {
                    channel,
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

    /// Deliveries held on `channel`.
    pub fn count_on(&self, channel: u64) -> usize {
        self.held.keys().filter(|(c, _)| *c == channel).count()
    }

    /// Delivery `tag` of `channel` is to be acked (or nacked) when settlements are next
    /// sent.
    pub fn settle_later(&mut self, channel: u64, tag: u64, op: Op) {
        if !self.open.contains(&channel) {
            return;
        }
        let w = self.waiting.entry(channel).or_default();
        match op {
            Op::Ack { .. } => w.acks.push(tag),
            Op::Nack { requeue } => w.nacks.push((tag, requeue)),
        }
    }

    /// Takes the settlements to send now (of every channel, or of `only`), by channel.
    /// On channels `in_order` says hand out deliveries in tag order, the acks below every
    /// tag still held or to be nacked become one ack with `multiple`.
    pub fn due(
        &mut self,
        only: Option<u64>,
        in_order: impl Fn(u64) -> bool,
    ) -> Vec<(u64, Vec<(u64, Op)>)> {
        let channels: Vec<u64> = match only {
            Some(c) => vec![c],
            None => self.waiting.keys().copied().collect(),
        };
        let mut out = Vec::new();
        for channel in channels {
            let Some(Waiting { mut acks, nacks }) = self.waiting.remove(&channel) else {
                continue;
            };
            acks.sort_unstable();
            let floor = self
                .held
                .keys()
                .filter(|(c, _)| *c == channel)
                .map(|(_, t)| *t)
                .chain(nacks.iter().map(|(t, _)| *t))
                .min();
            let below = if in_order(channel) {
                acks.partition_point(|t| floor.is_none_or(|f| *t < f))
            } else {
                0
            };
            let mut ops = Vec::with_capacity(acks.len() - below + nacks.len() + 1);
            if below > 0 {
                ops.push((acks[below - 1], Op::Ack { multiple: true }));
            }
            ops.extend(
                acks[below..]
                    .iter()
                    .map(|t| (*t, Op::Ack { multiple: false })),
            );
            ops.extend(
                nacks
                    .iter()
                    .map(|(t, requeue)| (*t, Op::Nack { requeue: *requeue })),
            );
            out.push((channel, ops));
        }
        out
    }

    /// Whether settlements wait to be sent.
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
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
        let ch = l.opened();
        let a = l.hold(ch, 1, 100, q("a-inbox")).expect("open");
        let b = l.hold(ch, 2, 50, q("b-inbox")).expect("open");
        assert_eq!(a, "n1/1/1");
        assert_eq!(l.take(&a, |q| q == "b-inbox"), None, "not its reader's");
        let held = l.take(&a, |q| q == "a-inbox").expect("held");
        assert_eq!(
            (held.channel, held.tag, held.until_ms, &*held.queue),
            (1, 1, 100, "a-inbox")
        );
        assert_eq!(l.take(&a, any), None, "settled twice");
        assert_eq!(l.take("n2/1/2", any), None, "another node's");
        assert_eq!(l.take("n1/2/2", any), None, "another channel's tag");
        assert_eq!(l.take("n1/1/x", any), None);
        assert_eq!(l.take("nonsense", any), None);
        l.closed(ch);
        assert_eq!(l.take(&b, any), None, "a lease of a closed channel");
        assert_eq!(l.hold(ch, 3, 10, q("a-inbox")), None, "taken as it closed");
        assert!(l.is_empty());
    }

    #[test]
    fn channels_hold_their_own_tags_and_close_alone() {
        let mut l = Leases::new("n");
        let (get, feed) = (l.opened(), l.opened());
        let on_get = l.hold(get, 1, 10, q("x")).expect("open");
        let on_feed = l.hold(feed, 1, 10, q("x")).expect("open");
        assert_ne!(on_get, on_feed, "tag 1 of each channel");
        l.hold(feed, 2, 10, q("x")).expect("open");
        assert_eq!((l.count_on(get), l.count_on(feed)), (1, 2));
        l.closed(feed);
        assert!(!l.is_open(feed) && l.is_open(get));
        assert_eq!(l.len(), 1);
        assert_eq!(l.take(&on_feed, any), None);
        assert_eq!(l.take(&on_get, any).map(|h| h.channel), Some(get));
    }

    #[test]
    fn acks_below_every_held_or_nacked_tag_go_as_one() {
        let mut l = Leases::new("n");
        let (get, feed) = (l.opened(), l.opened());
        let ack = Op::Ack { multiple: false };
        for tag in 1..=6 {
            l.hold(feed, tag, 10, q("x"));
            l.hold(get, tag, 10, q("x"));
        }
        // Tags 1, 2, 3 and 5 acked, 4 nacked, 6 still held.
        for tag in [3, 1, 2, 5] {
            let h = l.take(&format!("n/{feed}/{tag}"), any).expect("held");
            l.settle_later(h.channel, h.tag, ack);
            let h = l.take(&format!("n/{get}/{tag}"), any).expect("held");
            l.settle_later(h.channel, h.tag, ack);
        }
        let h = l.take(&format!("n/{feed}/4"), any).expect("held");
        l.settle_later(h.channel, h.tag, Op::Nack { requeue: true });
        let due = l.due(Some(feed), |c| c == feed);
        assert_eq!(
            due,
            vec![(
                feed,
                vec![
                    (3, Op::Ack { multiple: true }),
                    (5, ack),
                    (4, Op::Nack { requeue: true })
                ]
            )]
        );
        assert!(l.has_waiting(), "the other channel's wait");
        // On a channel that does not hand out in order, every ack goes alone.
        let due = l.due(None, |c| c == feed);
        assert_eq!(
            due,
            vec![(get, vec![(1, ack), (2, ack), (3, ack), (5, ack)])]
        );
        assert!(!l.has_waiting());
        // Nothing waits for a closed channel.
        let h = l.take(&format!("n/{feed}/6"), any).expect("held");
        l.settle_later(h.channel, h.tag, ack);
        l.closed(feed);
        assert!(l.due(None, |_| true).is_empty());
    }

    #[test]
    fn ended_leases_come_out_in_order_of_their_end() {
        let mut l = Leases::new("n");
        let (a, b) = (l.opened(), l.opened());
        l.hold(a, 7, 30, q("x"));
        l.hold(b, 8, 10, q("x"));
        let kept = l.hold(a, 9, 99, q("x")).expect("open");
        let ended: Vec<(u64, u64, u64)> = l
            .take_ended(30)
            .iter()
            .map(|h| (h.channel, h.tag, h.until_ms))
            .collect();
        assert_eq!(ended, vec![(b, 8, 10), (a, 7, 30)]);
        assert_eq!(l.len(), 1);
        assert!(l.take(&kept, any).is_some());
    }
}
