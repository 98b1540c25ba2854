//! The log's live state in memory: every live record and where it sits in the log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use roaring::RoaringTreemap;

use super::change::Change;
use super::spill::Spilled;
use crate::fs::VFile;
use crate::{MessageMeta, Op, RecordTable, Snapshot, SpilledQueue, StoredEntry};

/// A hash map with a fast, randomly seeded hasher: the maps of the live state are looked
/// up several times per record replayed, where SipHash showed.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Where a live record sits: its segment, its offset there, the bytes it takes, and
/// where the frame holding it starts (so that a read can check the frame's CRC);
/// [`NO_FRAME`] in a segment of the first format, whose frames are not checked alone.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Loc {
    pub seg: u32,
    pub off: u32,
    pub bytes: u32,
    pub frame: u32,
}

pub(crate) const NO_FRAME: u32 = u32::MAX;

#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct SegInfo {
    /// Bytes in the file that count (its frames and header; not preallocated zeros).
    pub len: u64,
    /// Bytes of records still live.
    pub live: u64,
    /// Records in the file, live or not.
    pub records: u64,
    /// Bytes that a rewrite must keep although they are not live: deletes, which cancel
    /// puts in older segments (known once the segment has been rewritten).
    pub pinned: u64,
    /// Whether it has a valid index file (sealed segments get one in the background).
    pub indexed: bool,
}

/// Which record a put writes, owned: what compaction keeps of each record it copies, to
/// move it once the copy is in place.
#[derive(Debug)]
pub(crate) enum Key {
    Message(u64),
    Entry(Arc<str>, u64),
    Record(RecordTable, Box<str>),
}

impl Key {
    /// A put of the same record (only the fields that name it matter).
    fn as_change(&self) -> Change<'_> {
        match self {
            Key::Message(id) => Change::PutMessage {
                id: *id,
                msg: MessageMeta::default(),
            },
            Key::Entry(queue, seq) => Change::PutEntry {
                queue,
                seq: *seq,
                entry: StoredEntry {
                    msg_id: 0,
                    delivery_count: 0,
                },
            },
            Key::Record(table, key) => Change::PutRecord {
                table: *table,
                key,
                value: &[],
            },
        }
    }
}

/// The live state, and where each record lives in the log.
#[derive(Default)]
pub(crate) struct State {
    /// Ordered maps: ids and sequence numbers grow, so replaying appends at their ends.
    /// Messages by where they are: their bodies stay in the log.
    pub messages: BTreeMap<u64, Loc>,
    /// The expiry of the messages that have one.
    pub expiry: FastMap<u64, u64>,
    /// Entries by queue, then sequence number.
    pub entries: FastMap<Arc<str>, BTreeMap<u64, (StoredEntry, Loc)>>,
    /// Entries in `entries`, across all queues.
    pub held: usize,
    pub records: HashMap<RecordTable, HashMap<String, (Vec<u8>, Loc)>>,
    pub segs: BTreeMap<u32, SegInfo>,
    /// An open handle on every segment, swapped with the locations when compaction
    /// replaces a file, so that a location and the file it points into go together.
    pub files: HashMap<u32, Arc<dyn VFile>>,
    /// The segment being written.
    pub newest: u32,
    /// Queues whose new entries stay on disk only (see [`super::spill`]).
    pub spilled: FastMap<Arc<str>, Spilled>,
    /// Live messages kept on disk only, with entries of spilled queues.
    pub spilled_msgs: RoaringTreemap,
    /// How many entries on disk only refer to each message (kept in memory or not).
    pub disk_refs: DiskRefs,
    /// Counts the files compaction replaced or deleted: a page-in that read the log
    /// without the lock applies what it read only if this has not changed meanwhile.
    pub generation: u64,
    /// Puts applied now are of the newest segment, written by this node or replayed from
    /// it whole: a spilled queue keeps where its are (see [`super::spill::SegPuts`]).
    pub keep_puts: bool,
}

/// Per message, how many of its entries are on disk only: a bit for the many that have one
/// (a backlog of one queue), a count for those with more (a fan-out). A node that brings
/// one entry back needs it: the others still refer to the message.
#[derive(Default)]
pub(crate) struct DiskRefs {
    one: RoaringTreemap,
    more: FastMap<u64, u32>,
}

impl DiskRefs {
    /// One more entry of message `id` is on disk only.
    pub fn add(&mut self, id: u64) {
        // One bitmap operation for the common case (a first entry, no fan-out on disk):
        // this runs for each entry replayed into a spilled queue.
        if !self.one.insert(id) {
            self.one.remove(id);
            self.more.insert(id, 2);
        } else if !self.more.is_empty() {
            if let Some(n) = self.more.get_mut(&id) {
                self.one.remove(id);
                *n += 1;
            }
        }
    }

    /// One entry of message `id` is back in memory: how many stay on disk only.
    pub fn take(&mut self, id: u64) -> u32 {
        match self.more.get_mut(&id) {
            Some(n) => {
                *n -= 1;
                let left = *n;
                if left == 1 {
                    self.more.remove(&id);
                    self.one.insert(id);
                }
                left
            }
            None => {
                self.one.remove(id);
                0
            }
        }
    }

    /// Entries of message `id` on disk only.
    pub fn get(&self, id: u64) -> u32 {
        match self.more.get(&id) {
            Some(n) => *n,
            None => u32::from(self.one.contains(id)),
        }
    }

    pub fn remove(&mut self, id: u64) {
        // On every deleted message (the commit thread): no hashing while no fan-out is
        // on disk.
        if !self.one.remove(id) && !self.more.is_empty() {
            self.more.remove(&id);
        }
    }
}

impl State {
    pub fn release(&mut self, old: Option<Loc>) {
        if let Some(old) = old {
            if let Some(s) = self.segs.get_mut(&old.seg) {
                s.live = s.live.saturating_sub(u64::from(old.bytes));
            }
        }
    }

    fn add_live(&mut self, loc: Loc) {
        self.segs.entry(loc.seg).or_default().live += u64::from(loc.bytes);
    }

    /// Counts a put at `loc` in its segment, as [`State::apply`] does, without applying it
    /// (a replay that lands it later with [`State::land_message`]).
    pub fn count_put(&mut self, loc: Loc) {
        self.segs.entry(loc.seg).or_default().records += 1;
        self.add_live(loc);
    }

    /// Lands the put of message `id` at `loc` (counted already by [`State::count_put`]):
    /// on disk only if `on_disk` (every entry of it put with it went there), else into
    /// memory, as [`State::apply`] and then [`State::spill_put`] would.
    pub fn land_message(&mut self, id: u64, msg: MessageMeta, loc: Loc, on_disk: bool) {
        if on_disk {
            let old = self.messages.remove(&id);
            self.release(old);
            self.expiry.remove(&id);
            self.spilled_msgs.insert(id);
        } else {
            let old = self.hold_message(id, msg, loc);
            self.release(old);
        }
    }

    /// Message `id` is at `loc`, held in memory: where it was before, if it was.
    fn hold_message(&mut self, id: u64, msg: MessageMeta, loc: Loc) -> Option<Loc> {
        if let Some(t) = msg.expires_at_ms {
            self.expiry.insert(id, t);
        }
        self.messages.insert(id, loc)
    }

    /// Applies one change written at `loc` (its segment already has the bytes counted in
    /// `len`).
    pub fn apply(&mut self, change: &Change<'_>, loc: Loc) {
        self.apply_put(change, loc);
    }

    /// [`State::apply`], saying whether the change put an entry on disk only (into a
    /// spilled queue).
    pub fn apply_put(&mut self, change: &Change<'_>, loc: Loc) -> bool {
        self.segs.entry(loc.seg).or_default().records += 1;
        let mut on_disk = false;
        let old = match *change {
            Change::PutMessage { id, msg } => {
                self.add_live(loc);
                self.hold_message(id, msg, loc)
            }
            Change::DeleteMessage { id } => {
                self.expiry.remove(&id);
                self.spilled_msgs.remove(id);
                self.disk_refs.remove(id);
                self.messages.remove(&id)
            }
            Change::PutEntry { queue, seq, entry } => {
                self.add_live(loc);
                let held = self.entries.get_mut(queue).and_then(|q| q.get_mut(&seq));
                if let Some(held) = held {
                    Some(std::mem::replace(held, (entry, loc)).1)
                } else if let Some(s) = self.spilled.get_mut(queue).filter(|s| seq >= s.from) {
                    if s.seqs.insert(seq) {
                        // Its message is put in the same commit, just before it.
                        let known = match self.keep_puts && loc.frame != NO_FRAME {
                            true => self.messages.get(&entry.msg_id),
                            false => None,
                        };
                        let known = known.filter(|m| m.seg == loc.seg).map(|m| (loc, *m));
                        s.put_in(loc.seg, known);
                        self.disk_refs.add(entry.msg_id);
                        on_disk = true;
                    } else {
                        // A rewrite, met when the log is replayed (a node only rewrites
                        // entries it holds): its delivery count is the one that counts.
                        s.counts.insert(seq, entry.delivery_count);
                    }
                    None
                } else {
                    let q = match self.entries.get_mut(queue) {
                        Some(q) => q,
                        None => self.entries.entry(Arc::from(queue)).or_default(),
                    };
                    let old = q.insert(seq, (entry, loc)).map(|(_, l)| l);
                    if old.is_none() {
                        self.held += 1;
                    }
                    old
                }
            }
            Change::DeleteEntry { queue, seq } => {
                if let Some(s) = self.spilled.get_mut(queue) {
                    // Only entries brought back are deleted; were one not, it goes (its
                    // bytes are counted live until compaction finds it dead, and its
                    // message's count of entries on disk stays one too high until the
                    // next start: the message is kept rather than lost).
                    s.seqs.remove(seq);
                    s.counts.remove(&seq);
                }
                let q = self.entries.get_mut(queue);
                let old = q.and_then(|q| q.remove(&seq).map(|(_, l)| l));
                if old.is_some() {
                    self.held -= 1;
                }
                if self.entries.get(queue).is_some_and(|q| q.is_empty()) {
                    self.entries.remove(queue);
                }
                old
            }
            Change::PutRecord { table, key, value } => {
                self.add_live(loc);
                let t = self.records.entry(table).or_default();
                match t.get_mut(key) {
                    Some(v) => Some(std::mem::replace(v, (value.to_vec(), loc)).1),
                    None => t
                        .insert(key.to_owned(), (value.to_vec(), loc))
                        .map(|(_, l)| l),
                }
            }
            Change::DeleteRecord { table, key } => self
                .records
                .get_mut(&table)
                .and_then(|t| t.remove(key))
                .map(|(_, l)| l),
        };
        self.release(old);
        on_disk
    }

    /// Where the record a put writes lives now, if it is live.
    fn loc_mut(&mut self, change: &Change<'_>) -> Option<&mut Loc> {
        match *change {
            Change::PutMessage { id, .. } => self.messages.get_mut(&id),
            Change::PutEntry { queue, seq, .. } => self
                .entries
                .get_mut(queue)
                .and_then(|q| q.get_mut(&seq))
                .map(|(_, l)| l),
            Change::PutRecord { table, key, .. } => self
                .records
                .get_mut(&table)
                .and_then(|t| t.get_mut(key))
                .map(|(_, l)| l),
            Change::DeleteMessage { .. }
            | Change::DeleteEntry { .. }
            | Change::DeleteRecord { .. } => None,
        }
    }

    /// Where the record a put writes lives now, if it is live.
    fn loc(&self, change: &Change<'_>) -> Option<Loc> {
        match *change {
            Change::PutMessage { id, .. } => self.messages.get(&id).copied(),
            Change::PutEntry { queue, seq, .. } => self
                .entries
                .get(queue)
                .and_then(|q| q.get(&seq))
                .map(|(_, l)| *l),
            Change::PutRecord { table, key, .. } => self
                .records
                .get(&table)
                .and_then(|t| t.get(key))
                .map(|(_, l)| *l),
            Change::DeleteMessage { .. }
            | Change::DeleteEntry { .. }
            | Change::DeleteRecord { .. } => None,
        }
    }

    /// After a commit's changes are applied: each message the commit put whose every
    /// entry in it went to disk only ([`super::spill`]) leaves memory too.
    pub fn spill_messages(&mut self, ops: &[Op]) {
        if self.spilled.is_empty() {
            return;
        }
        let messages: Vec<u64> = ops
            .iter()
            .filter_map(|op| match op {
                Op::PutMessage { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        if messages.is_empty() {
            return;
        }
        let entries: Vec<(u64, bool)> = ops
            .iter()
            .filter_map(|op| match op {
                Op::PutEntry { queue, seq, entry } => {
                    Some((entry.msg_id, self.spilled_entry(queue, *seq)))
                }
                _ => None,
            })
            .collect();
        self.spill_put(&messages, &entries);
    }

    /// Of `messages` put in one commit, with the entries put in it (the message each
    /// refers to, and whether it is on disk only): those whose every entry there is on
    /// disk only leave memory too.
    pub fn spill_put(&mut self, messages: &[u64], entries: &[(u64, bool)]) {
        if self.spilled.is_empty() || messages.is_empty() {
            return;
        }
        // Per message put here: whether every entry of it so far is on disk only.
        let mut put: FastMap<u64, Option<bool>> = messages.iter().map(|id| (*id, None)).collect();
        for &(msg_id, spilled) in entries {
            if let Some(all) = put.get_mut(&msg_id) {
                *all = Some(all.unwrap_or(true) && spilled);
            }
        }
        for (id, all) in put {
            if all == Some(true) && self.messages.remove(&id).is_some() {
                self.expiry.remove(&id);
                self.spilled_msgs.insert(id);
            }
        }
    }

    /// While the log is replayed: spills `queue` from the entry after `seq` (just put) if
    /// it holds more entries in memory than `bounds` allow now: more than its own bound,
    /// or a head's worth once the node holds more than the node-wide bound. Its page-ins
    /// read the log from the start, where the messages of its entries may be.
    pub fn spill_if_long(&mut self, queue: &str, seq: u64, bounds: super::spill::Bounds) {
        let Some((name, q)) = self.entries.get_key_value(queue) else {
            return;
        };
        let long = bounds.queue.is_some_and(|limit| q.len() > limit);
        let pressed = bounds
            .node
            .is_some_and(|n| self.held > n.entries && q.len() >= n.head.max(1));
        if !(long || pressed) || self.spilled.contains_key(queue) {
            return;
        }
        let name = name.clone();
        self.spilled.insert(name, Spilled::new(seq + 1, (0, 0)));
    }

    /// While the log is replayed, before an entry of `queue` numbered `seq` is put: once
    /// the node holds more entries than `bounds` let a queue keep a head, the queue is
    /// spilled from this entry on, unless this one is held already (a rewrite).
    pub fn spill_bare(&mut self, queue: &str, seq: u64, bounds: super::spill::Bounds) {
        let bare = bounds.node.is_some_and(|n| self.held > n.bare);
        if !bare || self.spilled.contains_key(queue) {
            return;
        }
        let name = match self.entries.get_key_value(queue) {
            Some((_, q)) if q.contains_key(&seq) => return,
            Some((name, _)) => name.clone(),
            None => Arc::from(queue),
        };
        self.spilled.insert(name, Spilled::new(seq, (0, 0)));
    }

    /// Once the log is replayed with queues spilled: a message that no entry in memory
    /// refers to may be one of a spilled entry's (put in another commit, or split from it
    /// by compaction), so it is kept on disk only rather than taken for an orphan. (One
    /// that is an orphan stays there.)
    pub fn spill_unreferenced(&mut self) {
        if self.spilled.is_empty() {
            return;
        }
        let referenced: std::collections::HashSet<u64> = self
            .entries
            .values()
            .flat_map(|q| q.values().map(|(e, _)| e.msg_id))
            .collect();
        let loose: Vec<u64> = self
            .messages
            .keys()
            .filter(|id| !referenced.contains(id))
            .copied()
            .collect();
        for id in loose {
            self.messages.remove(&id);
            self.expiry.remove(&id);
            self.spilled_msgs.insert(id);
        }
    }

    /// Whether entry `seq` of `queue` is live on disk only.
    pub fn spilled_entry(&self, queue: &str, seq: u64) -> bool {
        self.spilled
            .get(queue)
            .is_some_and(|s| s.seqs.contains(seq))
    }

    /// Whether the put at `at` is the live version of its record. A record kept on disk
    /// only was put once (sequence numbers and message ids are never reused), so any put
    /// of it is.
    pub fn is_live(&self, change: &Change<'_>, at: Loc) -> bool {
        self.loc(change) == Some(at)
            || match *change {
                Change::PutMessage { id, .. } => self.spilled_msgs.contains(id),
                Change::PutEntry { queue, seq, .. } => self.spilled_entry(queue, seq),
                _ => false,
            }
    }

    /// The key of the record a put writes (`None` for a delete), sharing the queue name
    /// the state holds.
    pub fn key(&self, change: &Change<'_>) -> Option<Key> {
        Some(match *change {
            Change::PutMessage { id, .. } => Key::Message(id),
            Change::PutEntry { queue, seq, .. } => {
                let name = self
                    .entries
                    .get_key_value(queue)
                    .map(|(k, _)| k.clone())
                    .or_else(|| self.spilled.get_key_value(queue).map(|(k, _)| k.clone()))
                    .unwrap_or_else(|| Arc::from(queue));
                Key::Entry(name, seq)
            }
            Change::PutRecord { table, key, .. } => Key::Record(table, key.into()),
            Change::DeleteMessage { .. }
            | Change::DeleteEntry { .. }
            | Change::DeleteRecord { .. } => return None,
        })
    }

    /// Moves record `key` from `from` to `to` if `from` is still where it lives; true if
    /// so, or if it is live on disk only (then a page-in of its queue reads from `to`'s
    /// segment on).
    pub fn relocate(&mut self, key: &Key, from: Loc, to: Loc) -> bool {
        match self.loc_mut(&key.as_change()) {
            Some(l) if *l == from => {
                *l = to;
                true
            }
            Some(_) => false,
            None => match key {
                Key::Message(id) => self.spilled_msgs.contains(*id),
                Key::Entry(queue, seq) => match self.spilled.get_mut(queue) {
                    Some(s) if s.seqs.contains(*seq) => {
                        s.resume = s.resume.min((to.seg, 0));
                        true
                    }
                    _ => false,
                },
                Key::Record(..) => false,
            },
        }
    }

    /// Compaction replaced segments `first..=last` with one file numbered `first` (or
    /// deleted them): offsets into them mean nothing now.
    pub fn replaced(&mut self, first: u32, last: u32) {
        self.generation += 1;
        for s in self.spilled.values_mut() {
            s.replaced(first, last);
        }
    }

    pub fn live_bytes(&self) -> u64 {
        self.segs.values().map(|s| s.live).sum()
    }

    pub fn total_bytes(&self) -> u64 {
        self.segs.values().map(|s| s.len).sum()
    }

    /// Everything, as [`crate::QueueStore::load`] returns it (messages without bodies).
    pub fn snapshot(&self) -> Snapshot {
        let mut queues: Vec<_> = self.entries.iter().collect();
        queues.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut entries = Vec::with_capacity(queues.iter().map(|(_, q)| q.len()).sum());
        for (queue, q) in queues {
            entries.extend(q.iter().map(|(seq, (e, _))| (queue.clone(), *seq, *e)));
        }
        let mut records: HashMap<RecordTable, Vec<(String, Vec<u8>)>> = HashMap::new();
        for (table, rows) in &self.records {
            let mut rows: Vec<_> = rows
                .iter()
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect();
            if !rows.is_empty() {
                rows.sort_unstable();
                records.insert(*table, rows);
            }
        }
        let messages = self
            .messages
            .keys()
            .map(|id| {
                let meta = MessageMeta {
                    expires_at_ms: self.expiry.get(id).copied(),
                };
                (*id, meta)
            })
            .collect();
        let on_disk = self
            .messages
            .keys()
            .map(|id| (*id, self.disk_refs.get(*id)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let mut spilled: Vec<SpilledQueue> = self
            .spilled
            .iter()
            .filter(|(_, s)| !s.seqs.is_empty())
            .map(|(queue, s)| SpilledQueue {
                queue: queue.clone(),
                from: s.from,
                count: s.seqs.len(),
                last: s.seqs.max().unwrap_or(s.from),
            })
            .collect();
        spilled.sort_unstable_by(|a, b| a.queue.cmp(&b.queue));
        Snapshot {
            messages,
            on_disk,
            entries,
            records,
            spilled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DiskRefs;
    use proptest::prelude::*;

    proptest! {
        /// `DiskRefs` counts as a map of counts would, whatever the order of adds, takes
        /// and removes over a few ids (so that fan-outs and single entries mix).
        #[test]
        fn disk_refs_count_as_a_map_of_counts(ops in prop::collection::vec((0u8..3, 0u64..6), 0..200)) {
            let mut refs = DiskRefs::default();
            let mut model = std::collections::HashMap::<u64, u32>::new();
            for (op, id) in ops {
                match op {
                    0 => {
                        refs.add(id);
                        *model.entry(id).or_default() += 1;
                    }
                    1 => {
                        let n = model.get(&id).copied().unwrap_or(0);
                        if n > 0 {
                            prop_assert_eq!(refs.take(id), n - 1);
                            model.insert(id, n - 1);
                        }
                    }
                    _ => {
                        refs.remove(id);
                        model.remove(&id);
                    }
                }
                for id in 0..6 {
                    prop_assert_eq!(refs.get(id), model.get(&id).copied().unwrap_or(0));
                }
            }
        }
    }
}
