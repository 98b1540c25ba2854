//! One durable queue's in-memory state.
//!
//! The store holds every entry; this holds the same entries indexed for delivery: `ready`
//! ordered by sequence number (so a redelivered message goes back to its place), `leased`
//! by sequence number with an index of lease deadlines. Every change appends the store
//! [`Op`]s that make it durable to a caller's list; the caller commits them before it
//! answers anyone. Time is an argument (milliseconds since the epoch).
//!
//! Taking a message out (a delivery, an ack, a drop) is immediate: nobody can take it
//! again. Putting one in is not: a message published here, requeued (a nack, a lease that
//! ran out) or moved here (dead-lettering) first holds a reserved place, counted against
//! the queue's length, and lands there (`Queue::land`), where consumers can take it, only
//! once the commit holding the change is durable (on the commit thread, in commit order).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use trunkline_store::{MessageMeta, Op, QueueStore, StoredEntry, StoredMessage};

use crate::footprint::{self, Account};

/// What happens when a full queue gets another message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// Refuse the publish (nothing is enqueued anywhere).
    #[default]
    RejectPublish,
    /// Drop the oldest ready message to make room.
    DropOldest,
}

/// Limits of one queue, all resolved (no defaults left open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub max_length: u64,
    pub overflow: Overflow,
    /// Deliveries after which an unsettled message goes to the dead-letter queue.
    pub max_deliveries: u32,
}

/// A message held in memory, shared by every queue entry that refers to it. Its body is
/// held only while it is hot ([`BodyCache`]); the store keeps it, and a delivery reads it
/// back when it has been let go.
#[derive(Debug)]
pub struct Msg {
    pub id: u64,
    /// The body and metadata, while held.
    body: Mutex<Option<Arc<StoredMessage>>>,
    expires_at_ms: Option<u64>,
    /// Queue entries referring to it; the body is deleted when the last goes.
    refs: AtomicU32,
    /// The node's count of queued memory: each entry gives back its share as it goes, and
    /// the last one the message's.
    account: Option<Arc<Account>>,
    /// The cache counting its body while it is held there.
    cache: Mutex<Option<Arc<BodyCache>>>,
}

impl Msg {
    #[cfg(test)]
    pub(crate) fn new(id: u64, data: Arc<StoredMessage>, refs: u32) -> Arc<Self> {
        Self::counted(id, data, refs, None)
    }

    /// A message held by `refs` entries, whose memory `account` counts: the caller has
    /// already counted those entries and, if `refs > 0`, the message itself.
    pub(crate) fn counted(
        id: u64,
        data: Arc<StoredMessage>,
        refs: u32,
        account: Option<Arc<Account>>,
    ) -> Arc<Self> {
        Arc::new(Msg {
            id,
            expires_at_ms: data.expires_at_ms,
            body: Mutex::new(Some(data)),
            account,
            refs: AtomicU32::new(refs),
            cache: Mutex::new(None),
        })
    }

    /// A stored message, its body left in the store, with no entries yet (each adds its
    /// reference as it is restored).
    pub(crate) fn restored(id: u64, meta: MessageMeta, account: Option<Arc<Account>>) -> Arc<Self> {
        Arc::new(Msg {
            id,
            expires_at_ms: meta.expires_at_ms,
            body: Mutex::new(None),
            account,
            refs: AtomicU32::new(0),
            cache: Mutex::new(None),
        })
    }

    /// The body and metadata, if held in memory.
    pub fn held(&self) -> Option<Arc<StoredMessage>> {
        lock(&self.body).clone()
    }

    /// Holds `data` (read back from the store) again.
    pub(crate) fn hold(&self, data: Arc<StoredMessage>) {
        let mut b = lock(&self.body);
        if b.is_none() {
            *b = Some(data);
        }
    }

    /// [`footprint::stored_body_bytes`] of the body, if held.
    pub fn held_bytes(&self) -> Option<u64> {
        lock(&self.body)
            .as_deref()
            .map(footprint::stored_body_bytes)
    }

    /// One more entry refers to it (restored at start); counts that entry's memory.
    pub(crate) fn add_ref(&self) {
        self.refs.fetch_add(1, Ordering::AcqRel);
        if let Some(a) = &self.account {
            a.add(footprint::ENTRY_BYTES);
        }
    }

    /// `n` more entries refer to it that are kept in the store only (not counted in
    /// memory).
    pub(crate) fn add_stored_refs(&self, n: u32) {
        self.refs.fetch_add(n, Ordering::AcqRel);
    }

    /// Drops one reference; deletes the body in the same commit if it was the last. The
    /// entry's memory, and with the last the message's, is no longer counted.
    pub(crate) fn release(&self, ops: &mut Vec<Op>) {
        let last = self.refs.fetch_sub(1, Ordering::AcqRel) == 1;
        if last {
            ops.push(Op::DeleteMessage { id: self.id });
        }
        if let Some(a) = &self.account {
            let message = if last { footprint::MESSAGE_BYTES } else { 0 };
            a.sub(footprint::ENTRY_BYTES + message);
        }
    }

    fn expired(&self, now: u64) -> bool {
        self.expires_at_ms.is_some_and(|t| t <= now)
    }

    /// Queue entries referring to it.
    pub(crate) fn refs(&self) -> u32 {
        self.refs.load(Ordering::Acquire)
    }

    pub(crate) fn account(&self) -> Option<&Arc<Account>> {
        self.account.as_ref()
    }
}

impl Drop for Msg {
    fn drop(&mut self) {
        let cache = self.cache.get_mut().ok().and_then(Option::take);
        let held = self.body.get_mut().ok().and_then(|b| b.as_deref());
        if let (Some(cache), Some(data)) = (cache, held) {
            let bytes = footprint::stored_body_bytes(data);
            cache.used.fetch_sub(bytes, Ordering::AcqRel);
            cache.held.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The bodies held in memory for messages whose bodies are durable in the store: at most
/// `budget` bytes (as [`footprint::stored_body_bytes`] counts them), and no more than the
/// index (`index`) leaves under its cap; past that, the oldest held are let go (a delivery
/// reads them back from the store).
#[derive(Debug)]
pub struct BodyCache {
    budget: u64,
    index: Option<Arc<Account>>,
    used: AtomicU64,
    /// Messages whose bodies it counts.
    held: AtomicU64,
    /// Oldest first; holds stale entries (messages gone or let go) until pruned.
    order: Mutex<VecDeque<Weak<Msg>>>,
}

impl BodyCache {
    pub(crate) fn new(budget: u64, index: Option<Arc<Account>>) -> Arc<Self> {
        Arc::new(BodyCache {
            budget,
            index,
            used: AtomicU64::new(0),
            held: AtomicU64::new(0),
            order: Mutex::new(VecDeque::new()),
        })
    }

    /// The most it may hold now: its budget, or what the index leaves under the cap.
    pub fn limit(&self) -> u64 {
        match &self.index {
            Some(a) => self.budget.min(a.max().saturating_sub(a.used())),
            None => self.budget,
        }
    }

    /// Bytes of bodies held.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Entries in its order of age (for tests: stays within twice the bodies held).
    pub fn tracked(&self) -> usize {
        lock(&self.order).len()
    }

    /// Counts `msg`'s body, whose store copy is durable, and lets the oldest held go while
    /// over budget.
    pub(crate) fn admit(self: &Arc<Self>, msg: &Arc<Msg>) {
        let bytes = {
            let mut c = lock(&msg.cache);
            let Some(bytes) = msg.held_bytes().filter(|_| c.is_none()) else {
                return;
            };
            *c = Some(self.clone());
            bytes
        };
        self.used.fetch_add(bytes, Ordering::AcqRel);
        self.held.fetch_add(1, Ordering::AcqRel);
        let mut order = lock(&self.order);
        order.push_back(Arc::downgrade(msg));
        let limit = self.limit();
        while self.used.load(Ordering::Acquire) > limit {
            let Some(oldest) = order.pop_front() else {
                break;
            };
            if let Some(m) = oldest.upgrade() {
                let mut c = lock(&m.cache);
                if c.take().is_some() {
                    if let Some(data) = lock(&m.body).take() {
                        let bytes = footprint::stored_body_bytes(&data);
                        self.used.fetch_sub(bytes, Ordering::AcqRel);
                        self.held.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            }
        }
        // Messages consumed while under budget leave stale entries behind: dropped once
        // they are half the queue, so it stays within twice the messages held.
        let held = self.held.load(Ordering::Acquire) as usize;
        if order.len() > 2 * held + 1024 {
            order.retain(|w| w.upgrade().is_some_and(|m| lock(&m.cache).is_some()));
        }
    }
}

/// An entry: a message in a queue, with how often it has been delivered.
#[derive(Debug, Clone)]
pub struct Slot {
    pub msg: Arc<Msg>,
    pub delivery_count: u32,
}

#[derive(Debug)]
struct Lease {
    slot: Slot,
    deadline: u64,
}

/// What a change took out of a queue to put somewhere else once it is durable.
#[derive(Debug, Default)]
pub(crate) struct Moved {
    /// Back to their place here (a nack with requeue, a lease that ran out), each holding
    /// a reserved place until it lands.
    pub back: Vec<(u64, Slot)>,
    /// For the dead-letter queue (exhausted, or nacked without requeue); their entries here
    /// are already deleted.
    pub dead: Vec<Slot>,
}

/// A message handed out by [`Queue::take`].
#[derive(Debug, Clone)]
pub struct Taken {
    pub seq: u64,
    pub slot: Slot,
}

/// Counts of what a queue operation did, for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Effects {
    pub expired: u64,
    pub dropped: u64,
}

/// Allocates ids that grow across restarts: never below `now_ms * 1024`, so a restarted
/// node does not hand out an id (or sequence number) it used before even if every message
/// carrying it is gone. Up to 1024 per millisecond stay in step with the clock, and 2^53
/// (safe in JavaScript) is not reached before the year 2248.
pub fn next_id(prev: u64, now_ms: u64) -> u64 {
    (prev + 1).max(now_ms.saturating_mul(1024))
}

/// Where a queue keeps what does not fit in memory: past `hot_max` ready entries, or past
/// a smaller head ([`footprint::head`]: none at all once the node is short of memory) as the
/// node's queued memory (`memory`) nears its cap, new ones stay in `store` only
/// ([`QueueStore::spill`]) until consumers need them.
#[derive(Clone)]
pub(crate) struct Spill {
    pub store: Weak<dyn QueueStore>,
    pub hot_max: usize,
    pub memory: Arc<Account>,
}

impl Spill {
    /// Whether a queue holding `ready` entries in memory keeps its next ones in the store.
    fn due(&self, ready: usize) -> bool {
        ready >= footprint::head(self.memory.used(), self.memory.max(), self.hot_max)
    }
}

impl std::fmt::Debug for Spill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spill")
            .field("hot_max", &self.hot_max)
            .finish_non_exhaustive()
    }
}

/// The part of a spilled queue kept in the store only.
#[derive(Debug)]
struct Cold {
    /// Places reserved fresh (publishes, moves) from this sequence number on land in the
    /// store only.
    from: u64,
    /// Entries in the store only: those landed there, less those brought back (below
    /// zero while some brought back have not landed yet).
    stored: i64,
    /// Fresh places reserved since, not landed yet.
    pending: u64,
}

/// Where [`Queue::land`] put a message.
#[derive(Debug)]
pub(crate) enum Landed {
    /// Ready in memory.
    Ready,
    /// In the store only: the slot is the caller's to let go.
    Stored(Slot),
    /// Nowhere: the queue was purged, its entry is removed.
    Removed,
}

#[derive(Debug)]
pub struct Queue {
    pub name: Arc<str>,
    pub limits: Limits,
    /// Where messages go after `max_deliveries`; none for a dead-letter queue itself.
    pub dead_letter: Option<Arc<str>>,
    ready: BTreeMap<u64, Slot>,
    leased: HashMap<u64, Lease>,
    deadlines: BTreeSet<(u64, u64)>,
    /// Places reserved by changes still committing: publishes, requeues and moves here.
    pending: u64,
    last_seq: u64,
    /// Deleted with its client: a message landing now is removed instead.
    purged: bool,
    spill: Option<Spill>,
    cold: Option<Cold>,
}

impl Queue {
    pub fn new(name: Arc<str>, limits: Limits, dead_letter: Option<Arc<str>>) -> Self {
        Queue {
            name,
            limits,
            dead_letter,
            ready: BTreeMap::new(),
            leased: HashMap::new(),
            deadlines: BTreeSet::new(),
            pending: 0,
            last_seq: 0,
            purged: false,
            spill: None,
            cold: None,
        }
    }

    /// Keeps what passes its memory (see [`Spill`]) in `spill.store` only.
    pub(crate) fn set_spill(&mut self, spill: Spill) {
        self.spill = Some(spill);
    }

    /// Ready (in memory or in the store only) plus leased messages.
    pub fn depth(&self) -> u64 {
        let held = (self.ready.len() + self.leased.len()) as i64;
        (held + self.cold.as_ref().map_or(0, |c| c.stored)).max(0) as u64
    }

    /// Entries kept in the store only.
    pub fn stored_len(&self) -> u64 {
        self.cold.as_ref().map_or(0, |c| c.stored.max(0) as u64)
    }

    /// Ready messages, in memory or in the store only.
    pub fn ready_len(&self) -> u64 {
        self.ready.len() as u64 + self.stored_len()
    }

    pub fn leased_len(&self) -> u64 {
        self.leased.len() as u64
    }

    /// Makes every sequence number handed out from now on greater than `floor`.
    pub(crate) fn lift_seq(&mut self, floor: u64) {
        self.last_seq = self.last_seq.max(floor);
    }

    /// Puts back an entry read from the store at start.
    pub(crate) fn restore(&mut self, seq: u64, slot: Slot) {
        self.last_seq = self.last_seq.max(seq);
        self.ready.insert(seq, slot);
    }

    /// At start: the store kept `count` entries of this queue on disk only, put fresh
    /// from sequence number `from` on, the greatest `last`.
    pub(crate) fn restore_cold(&mut self, from: u64, count: u64, last: u64) {
        self.last_seq = self.last_seq.max(last);
        self.cold = Some(Cold {
            from,
            stored: i64::try_from(count).unwrap_or(i64::MAX),
            pending: 0,
        });
    }

    fn alloc_seq(&mut self, now: u64) -> u64 {
        self.last_seq = next_id(self.last_seq, now);
        self.last_seq
    }

    /// A fresh place: in the store only if the queue is spilled, or is spilled now that
    /// its ready entries in memory reach the most it may hold (fewer while the node is
    /// pressed for memory).
    fn alloc_fresh(&mut self, now: u64) -> u64 {
        if self.cold.is_none() {
            if let Some(spill) = &self.spill {
                if spill.due(self.ready.len()) {
                    let from = self.last_seq + 1;
                    if spill
                        .store
                        .upgrade()
                        .is_some_and(|s| s.spill(&self.name, from))
                    {
                        self.cold = Some(Cold {
                            from,
                            stored: 0,
                            pending: 0,
                        });
                    }
                }
            }
        }
        if let Some(c) = &mut self.cold {
            c.pending += 1;
        }
        self.alloc_seq(now)
    }

    /// Whether fresh place `seq` is in the store only.
    fn is_cold(&self, seq: u64) -> bool {
        self.cold.as_ref().is_some_and(|c| seq >= c.from)
    }

    /// Whether entries kept in the store only should be brought back for a take of
    /// `want` (or to make room).
    pub(crate) fn wants_page(&self, want: usize) -> bool {
        self.cold.as_ref().is_some_and(|c| c.stored > 0) && self.ready.len() < want
    }

    /// Puts back an entry brought back from the store.
    pub(crate) fn bring_back(&mut self, seq: u64, slot: Slot) {
        if let Some(c) = &mut self.cold {
            c.stored -= 1;
        }
        self.ready.insert(seq, slot);
    }

    /// Stops spilling once nothing is left in the store only, nor on its way there.
    pub(crate) fn settle_cold(&mut self) {
        let done = self
            .cold
            .as_ref()
            .is_some_and(|c| c.stored == 0 && c.pending == 0);
        if done {
            let store = self.spill.as_ref().and_then(|s| s.store.upgrade());
            if store.is_some_and(|s| s.unspill(&self.name)) {
                self.cold = None;
            }
        }
    }

    /// Whether the queue, reservations included, is past its length.
    pub(crate) fn over_length(&self) -> bool {
        self.depth() + self.pending > self.limits.max_length
    }

    /// Reserves a place for a message being published. `Err(())` if the queue is full and
    /// its policy rejects, or, with drop-oldest, if too few ready messages are left to
    /// drop (leased ones are never dropped). Drops nothing itself: once every queue of the
    /// publish has accepted it, [`Queue::make_room`] drops what must go, so that a publish
    /// refused by another queue leaves this one as it was.
    pub(crate) fn reserve(&mut self, now: u64) -> Result<u64, ()> {
        let after = self.depth() + self.pending + 1;
        let room = match self.limits.overflow {
            Overflow::RejectPublish => self.limits.max_length,
            Overflow::DropOldest => self.limits.max_length + self.ready_len(),
        };
        if after > room {
            return Err(());
        }
        self.pending += 1;
        Ok(self.alloc_fresh(now))
    }

    /// Drops the oldest ready messages while the queue, reservations included, is over its
    /// length (only drop-oldest queues can be).
    pub(crate) fn make_room(&mut self, ops: &mut Vec<Op>, fx: &mut Effects) {
        while self.over_length() {
            let Some((seq, slot)) = self.ready.pop_first() else {
                break;
            };
            self.remove_durably(seq, &slot, ops);
            fx.dropped += 1;
        }
    }

    /// Gives back place `seq`, reserved fresh (a publish, a move) or to put a message
    /// `back`, whose change was refused or failed.
    pub(crate) fn unreserve(&mut self, seq: u64, back: bool) {
        self.pending = self.pending.saturating_sub(1);
        if !back && self.is_cold(seq) {
            if let Some(c) = &mut self.cold {
                c.pending = c.pending.saturating_sub(1);
            }
        }
    }

    /// Makes a message whose place was reserved (fresh, or to put it `back`) deliverable
    /// there, once the change that put it there is durable: ready in memory, or, for a
    /// fresh place of a spilled queue, in the store only. A queue purged meanwhile takes
    /// nothing: the entry is removed durably instead.
    pub(crate) fn land(&mut self, seq: u64, slot: Slot, back: bool, ops: &mut Vec<Op>) -> Landed {
        self.pending = self.pending.saturating_sub(1);
        let cold = match &mut self.cold {
            Some(c) if !back && seq >= c.from => {
                c.pending = c.pending.saturating_sub(1);
                c.stored += i64::from(!self.purged);
                true
            }
            _ => false,
        };
        if self.purged {
            self.remove_durably(seq, &slot, ops);
            Landed::Removed
        } else if cold {
            Landed::Stored(slot)
        } else {
            self.ready.insert(seq, slot);
            Landed::Ready
        }
    }

    /// Reserves new places for messages moved here (dead-lettering), to [`Queue::land`]
    /// once the move is durable, and writes their entries. Never refused: a full queue
    /// drops its oldest ready message for each, or else the oldest of `slots` before it (a
    /// place reserved by another change still committing cannot be taken back).
    pub(crate) fn reserve_moved(
        &mut self,
        slots: Vec<Slot>,
        now: u64,
        ops: &mut Vec<Op>,
        fx: &mut Effects,
    ) -> Vec<(u64, Slot)> {
        let mut placed: VecDeque<(u64, Slot)> = VecDeque::with_capacity(slots.len());
        for slot in slots {
            if self.depth() + self.pending >= self.limits.max_length {
                if let Some((seq, old)) = self.ready.pop_first() {
                    self.remove_durably(seq, &old, ops);
                    fx.dropped += 1;
                } else if let Some((seq, old)) = placed.pop_front() {
                    self.unreserve(seq, false);
                    old.msg.release(ops);
                    fx.dropped += 1;
                }
            }
            self.pending += 1;
            let seq = self.alloc_fresh(now);
            placed.push_back((
                seq,
                Slot {
                    msg: slot.msg,
                    delivery_count: 0,
                },
            ));
        }
        for (seq, slot) in &placed {
            ops.push(Op::PutEntry {
                queue: self.name.clone(),
                seq: *seq,
                entry: StoredEntry {
                    msg_id: slot.msg.id,
                    delivery_count: 0,
                },
            });
        }
        placed.into()
    }

    fn remove_durably(&self, seq: u64, slot: &Slot, ops: &mut Vec<Op>) {
        ops.push(Op::DeleteEntry {
            queue: self.name.clone(),
            seq,
        });
        slot.msg.release(ops);
    }

    /// Ends leases that ran out by `now`: each message goes back to its place (into
    /// `moved.back`), or, once it has been delivered `max_deliveries` times, to the
    /// dead-letter queue (into `moved.dead`).
    pub(crate) fn reclaim(&mut self, now: u64, ops: &mut Vec<Op>, moved: &mut Moved) {
        while let Some(&(deadline, seq)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(lease) = self.leased.remove(&seq) {
                self.requeue_or_dead(seq, lease.slot, true, ops, moved);
            }
        }
    }

    /// At start, after every entry is restored: those already delivered `max_deliveries`
    /// times were leased when the node stopped, and that lease is over. As in
    /// [`Queue::reclaim`], they go into `moved.dead`.
    pub(crate) fn reclaim_restored(&mut self, ops: &mut Vec<Op>, moved: &mut Moved) {
        let all: Vec<u64> = self.ready.keys().copied().collect();
        self.reclaim_exhausted(&all, ops, moved);
    }

    /// Of ready entries `seqs` (restored at start, or brought back from the store), those
    /// delivered `max_deliveries` times go into `moved.dead`, as in
    /// [`Queue::reclaim_restored`].
    pub(crate) fn reclaim_exhausted(&mut self, seqs: &[u64], ops: &mut Vec<Op>, moved: &mut Moved) {
        let max = self.limits.max_deliveries;
        for seq in seqs {
            if self.ready.get(seq).is_some_and(|s| s.delivery_count >= max) {
                if let Some(slot) = self.ready.remove(seq) {
                    self.requeue_or_dead(*seq, slot, true, ops, moved);
                }
            }
        }
    }

    fn requeue_or_dead(
        &mut self,
        seq: u64,
        slot: Slot,
        requeue: bool,
        ops: &mut Vec<Op>,
        moved: &mut Moved,
    ) {
        let exhausted = slot.delivery_count >= self.limits.max_deliveries;
        if requeue && !exhausted {
            // Its entry is already stored as it will be; it keeps its place meanwhile.
            self.pending += 1;
            moved.back.push((seq, slot));
        } else if self.dead_letter.is_some() {
            ops.push(Op::DeleteEntry {
                queue: self.name.clone(),
                seq,
            });
            moved.dead.push(slot);
        } else {
            self.remove_durably(seq, &slot, ops);
        }
    }

    /// Hands out up to `max` ready messages, oldest first. With a lease (`Some(ms)`) they
    /// stay here, leased until `now + ms`; without one they are removed (auto-ack). Expired
    /// messages met on the way are dropped.
    pub(crate) fn take(
        &mut self,
        now: u64,
        max: usize,
        lease_ms: Option<u64>,
        ops: &mut Vec<Op>,
        fx: &mut Effects,
    ) -> Vec<Taken> {
        let mut out = Vec::with_capacity(max.min(self.ready.len()));
        while out.len() < max {
            let Some((seq, mut slot)) = self.ready.pop_first() else {
                break;
            };
            if slot.msg.expired(now) {
                self.remove_durably(seq, &slot, ops);
                fx.expired += 1;
                continue;
            }
            slot.delivery_count = slot.delivery_count.saturating_add(1);
            match lease_ms {
                Some(ms) => {
                    ops.push(Op::PutEntry {
                        queue: self.name.clone(),
                        seq,
                        entry: StoredEntry {
                            msg_id: slot.msg.id,
                            delivery_count: slot.delivery_count,
                        },
                    });
                    let deadline = now.saturating_add(ms);
                    self.deadlines.insert((deadline, seq));
                    self.leased.insert(
                        seq,
                        Lease {
                            slot: slot.clone(),
                            deadline,
                        },
                    );
                }
                None => self.remove_durably(seq, &slot, ops),
            }
            out.push(Taken { seq, slot });
        }
        out
    }

    /// Settles the lease of delivery `count` of entry `seq`. Acked: removed. Nacked:
    /// requeued (or dead-lettered when exhausted or `requeue` is false), into `moved`.
    /// `false` if no such lease is open (already settled, or expired and handed out again).
    pub(crate) fn settle(
        &mut self,
        seq: u64,
        count: u32,
        ack: bool,
        requeue: bool,
        ops: &mut Vec<Op>,
        moved: &mut Moved,
    ) -> bool {
        match self.leased.get(&seq) {
            Some(l) if l.slot.delivery_count == count => {}
            _ => return false,
        }
        let Some(lease) = self.leased.remove(&seq) else {
            return false;
        };
        self.deadlines.remove(&(lease.deadline, seq));
        if ack {
            self.remove_durably(seq, &lease.slot, ops);
        } else {
            self.requeue_or_dead(seq, lease.slot, requeue, ops, moved);
        }
        true
    }

    /// Drops ready messages whose TTL has passed.
    pub(crate) fn expire(&mut self, now: u64, ops: &mut Vec<Op>, fx: &mut Effects) {
        let expired: Vec<u64> = self
            .ready
            .iter()
            .filter(|(_, s)| s.msg.expired(now))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            if let Some(slot) = self.ready.remove(&seq) {
                self.remove_durably(seq, &slot, ops);
                fx.expired += 1;
            }
        }
    }

    /// Removes everything (the queue is being deleted), and whatever lands here later.
    pub(crate) fn purge(&mut self, ops: &mut Vec<Op>) {
        self.purged = true;
        let ready = std::mem::take(&mut self.ready);
        for (seq, slot) in ready {
            self.remove_durably(seq, &slot, ops);
        }
        let leased = std::mem::take(&mut self.leased);
        for (seq, lease) in leased {
            self.remove_durably(seq, &lease.slot, ops);
        }
        self.deadlines.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_cache_lets_the_oldest_go_and_forgets_messages_gone() {
        let one = msg(0, None).held_bytes().expect("held");
        let cache = BodyCache::new(10 * one, None);
        let kept: Vec<Arc<Msg>> = (0..20).map(|i| msg(i, None)).collect();
        for m in &kept {
            cache.admit(m);
        }
        assert_eq!(cache.used(), 10 * one);
        assert!(
            kept[..10].iter().all(|m| m.held().is_none()),
            "the oldest go first"
        );
        assert!(kept[10..].iter().all(|m| m.held().is_some()));
        drop(kept);
        assert_eq!(
            cache.used(),
            0,
            "bodies of dropped messages are not counted"
        );
        // Messages that come and go under budget leave nothing behind for long.
        let cache = BodyCache::new(u64::MAX, None);
        for i in 0..10_000 {
            cache.admit(&msg(i, None));
        }
        assert!(cache.tracked() <= 1025, "{} entries kept", cache.tracked());
        assert_eq!(cache.used(), 0);
    }

    fn msg(id: u64, expires: Option<u64>) -> Arc<Msg> {
        Msg::new(
            id,
            Arc::new(StoredMessage {
                topic: "t".into(),
                body: b"1".to_vec().into(),
                sender: "s".into(),
                timestamp_ms: 0,
                expires_at_ms: expires,
                content_type: None,
                headers: Vec::new(),
            }),
            1,
        )
    }

    fn queue(max_length: u64, overflow: Overflow) -> Queue {
        Queue::new(
            Arc::from("q"),
            Limits {
                max_length,
                overflow,
                max_deliveries: 2,
            },
            Some(Arc::from("dead")),
        )
    }

    fn slot(msg: Arc<Msg>) -> Slot {
        Slot {
            msg,
            delivery_count: 0,
        }
    }

    fn put(q: &mut Queue, id: u64, now: u64) -> Result<u64, ()> {
        let mut ops = Vec::new();
        let seq = q.reserve(now)?;
        q.make_room(&mut ops, &mut Effects::default());
        q.land(seq, slot(msg(id, None)), false, &mut ops);
        Ok(seq)
    }

    /// Ids of every message ready at `now`, taken without a lease.
    fn take_ids(q: &mut Queue, now: u64) -> Vec<u64> {
        let (mut ops, mut fx) = (Vec::new(), Effects::default());
        q.take(now, usize::MAX, None, &mut ops, &mut fx)
            .iter()
            .map(|t| t.slot.msg.id)
            .collect()
    }

    /// Lands what `moved` put back, as the commit thread does once the change is durable.
    fn land_back(q: &mut Queue, moved: &mut Moved) {
        for (seq, slot) in std::mem::take(&mut moved.back) {
            q.land(seq, slot, true, &mut Vec::new());
        }
    }

    #[test]
    fn lease_expires_then_dead_letters_after_max_deliveries() {
        let mut q = queue(10, Overflow::RejectPublish);
        let seq = put(&mut q, 1, 0).map_err(|_| "full").unwrap_or(0);
        let (mut ops, mut moved, mut fx) = (Vec::new(), Moved::default(), Effects::default());
        let t = q.take(0, 10, Some(100), &mut ops, &mut fx);
        assert_eq!((t.len(), t[0].slot.delivery_count), (1, 1));
        assert!(q.take(50, 10, Some(100), &mut ops, &mut fx).is_empty());
        q.reclaim(100, &mut ops, &mut moved);
        // Back at its place only once the change is durable; until then it holds it.
        assert_eq!((moved.back.len(), q.depth(), q.pending), (1, 0, 1));
        assert!(q.take(100, 10, Some(100), &mut ops, &mut fx).is_empty());
        land_back(&mut q, &mut moved);
        let t = q.take(100, 10, Some(100), &mut ops, &mut fx);
        assert_eq!((t[0].seq, t[0].slot.delivery_count), (seq, 2));
        // A receipt of the first delivery no longer settles anything.
        assert!(!q.settle(seq, 1, true, true, &mut ops, &mut moved));
        q.reclaim(200, &mut ops, &mut moved);
        assert_eq!((moved.dead.len(), q.depth(), q.pending), (1, 0, 0));
    }

    #[test]
    fn a_requeue_in_flight_keeps_its_place_in_the_length() {
        let mut q = queue(1, Overflow::RejectPublish);
        let seq = put(&mut q, 1, 0).unwrap_or(0);
        let (mut ops, mut moved, mut fx) = (Vec::new(), Moved::default(), Effects::default());
        q.take(0, 1, Some(100), &mut ops, &mut fx);
        assert!(q.settle(seq, 1, false, true, &mut ops, &mut moved));
        assert!(
            put(&mut q, 2, 1).is_err(),
            "the requeued message's place is taken"
        );
        land_back(&mut q, &mut moved);
        let t = q.take(1, 10, None, &mut ops, &mut fx);
        assert_eq!((t.len(), t[0].seq, t[0].slot.delivery_count), (1, seq, 2));
    }

    #[test]
    fn moves_into_a_full_queue_drop_the_oldest() {
        let mut q = queue(2, Overflow::DropOldest);
        put(&mut q, 1, 0).unwrap_or(0);
        let (mut ops, mut fx) = (Vec::new(), Effects::default());
        let placed = q.reserve_moved(vec![slot(msg(2, None))], 1, &mut ops, &mut fx);
        assert_eq!((placed.len(), fx.dropped, q.depth() + q.pending), (1, 0, 2));
        // Three more at once: the ready one goes first, then, since the move still
        // committing elsewhere (2) cannot be taken back, the oldest of these.
        let more = vec![slot(msg(3, None)), slot(msg(4, None)), slot(msg(5, None))];
        let placed2 = q.reserve_moved(more, 2, &mut ops, &mut fx);
        let ids: Vec<u64> = placed2.iter().map(|(_, s)| s.msg.id).collect();
        assert_eq!((ids, fx.dropped), (vec![5], 3));
        for id in [1, 3, 4] {
            assert!(ops
                .iter()
                .any(|o| matches!(o, Op::DeleteMessage { id: i } if *i == id)));
        }
        for (seq, s) in placed.into_iter().chain(placed2) {
            q.land(seq, s, false, &mut ops);
        }
        assert_eq!(take_ids(&mut q, 3), vec![2, 5]);
    }

    #[test]
    fn a_purged_queue_removes_what_lands_later() {
        let mut q = queue(10, Overflow::RejectPublish);
        let (mut ops, mut fx) = (Vec::new(), Effects::default());
        let placed = q.reserve_moved(vec![slot(msg(7, None))], 0, &mut ops, &mut fx);
        q.purge(&mut ops);
        ops.clear();
        for (seq, s) in placed {
            assert!(matches!(q.land(seq, s, false, &mut ops), Landed::Removed));
        }
        assert!(ops.iter().any(|o| matches!(o, Op::DeleteEntry { .. })));
        assert!(ops.iter().any(|o| matches!(o, Op::DeleteMessage { id: 7 })));
        assert_eq!((q.depth(), q.pending), (0, 0));
    }

    #[test]
    fn ack_removes_and_releases_body() {
        let mut q = queue(10, Overflow::RejectPublish);
        let seq = put(&mut q, 9, 0).unwrap_or(0);
        let (mut ops, mut moved, mut fx) = (Vec::new(), Moved::default(), Effects::default());
        q.take(0, 1, Some(100), &mut ops, &mut fx);
        ops.clear();
        assert!(q.settle(seq, 1, true, true, &mut ops, &mut moved));
        assert!(ops.iter().any(|o| matches!(o, Op::DeleteMessage { id: 9 })));
        assert_eq!(q.depth(), 0);
    }

    #[test]
    fn overflow_policies() {
        let mut q = queue(2, Overflow::RejectPublish);
        assert!(put(&mut q, 1, 0).is_ok() && put(&mut q, 2, 0).is_ok());
        assert!(put(&mut q, 3, 0).is_err());
        let mut q = queue(2, Overflow::DropOldest);
        for id in 1..=3 {
            assert!(put(&mut q, id, 0).is_ok());
        }
        assert_eq!(take_ids(&mut q, 0), vec![2, 3]);
    }

    #[test]
    fn ttl_expired_messages_are_not_delivered() {
        let mut q = queue(10, Overflow::RejectPublish);
        let (mut ops, mut fx) = (Vec::new(), Effects::default());
        let seq = q.reserve(0).unwrap_or(0);
        q.land(seq, slot(msg(1, Some(50))), false, &mut ops);
        assert!(q.take(60, 10, None, &mut ops, &mut fx).is_empty());
        assert_eq!(fx.expired, 1);
    }

    #[test]
    fn ids_grow_across_restarts() {
        assert_eq!(next_id(5, 0), 6);
        assert_eq!(next_id(5, 1), 1024);
        assert!(next_id(next_id(0, 1000), 1000) > next_id(0, 1000));
    }
}
