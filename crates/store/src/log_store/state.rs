//! The log's live state in memory: every live record and where it sits in the log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::fs::VFile;
use crate::{Op, RecordTable, Snapshot, StoredEntry, StoredMessage};

/// Where a live record sits: its segment, its offset there, and the bytes it takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Loc {
    pub seg: u32,
    pub off: u32,
    pub bytes: u32,
}

#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct SegInfo {
    /// Bytes in the file that count (its frames and header; not preallocated zeros).
    pub len: u64,
    /// Bytes of records still live.
    pub live: u64,
    /// Bytes that a rewrite must keep although they are not live: deletes, which cancel
    /// puts in older segments (known once the segment has been rewritten).
    pub pinned: u64,
}

/// The live state, and where each record lives in the log.
#[derive(Default)]
pub(crate) struct State {
    /// Ordered maps: ids and sequence numbers grow, so replaying appends at their ends.
    /// Messages by where they are: their bodies stay in the log.
    pub messages: BTreeMap<u64, Loc>,
    /// While replaying: the bodies read, handed to the first load (so that recovery does
    /// not read them twice). `None` once the log is open.
    pub replayed: Option<BTreeMap<u64, Arc<StoredMessage>>>,
    /// Entries by queue, then sequence number.
    pub entries: HashMap<Arc<str>, BTreeMap<u64, (StoredEntry, Loc)>>,
    pub records: HashMap<(RecordTable, String), (Vec<u8>, Loc)>,
    pub segs: BTreeMap<u32, SegInfo>,
    /// An open handle on every segment, swapped with the locations when compaction
    /// replaces a file, so that a location and the file it points into go together.
    pub files: HashMap<u32, Arc<dyn VFile>>,
    /// The segment being written.
    pub newest: u32,
}

impl State {
    fn release(&mut self, old: Option<Loc>) {
        if let Some(old) = old {
            if let Some(s) = self.segs.get_mut(&old.seg) {
                s.live = s.live.saturating_sub(u64::from(old.bytes));
            }
        }
    }

    fn add_live(&mut self, loc: Loc) {
        self.segs.entry(loc.seg).or_default().live += u64::from(loc.bytes);
    }

    /// Applies one op written at `loc` (its segment already has the bytes counted in `len`).
    pub fn apply(&mut self, op: Op, loc: Loc) {
        let old = match op {
            Op::PutMessage { id, msg } => {
                self.add_live(loc);
                if let Some(bodies) = &mut self.replayed {
                    bodies.insert(id, msg);
                }
                self.messages.insert(id, loc)
            }
            Op::DeleteMessage { id } => {
                if let Some(bodies) = &mut self.replayed {
                    bodies.remove(&id);
                }
                self.messages.remove(&id)
            }
            Op::PutEntry { queue, seq, entry } => {
                self.add_live(loc);
                let q = match self.entries.get_mut(&*queue) {
                    Some(q) => q,
                    None => self.entries.entry(queue).or_default(),
                };
                q.insert(seq, (entry, loc)).map(|(_, l)| l)
            }
            Op::DeleteEntry { queue, seq } => {
                let q = self.entries.get_mut(&*queue);
                let old = q.and_then(|q| q.remove(&seq).map(|(_, l)| l));
                if self.entries.get(&*queue).is_some_and(|q| q.is_empty()) {
                    self.entries.remove(&*queue);
                }
                old
            }
            Op::PutRecord { table, key, value } => {
                self.add_live(loc);
                self.records
                    .insert((table, key), (value, loc))
                    .map(|(_, l)| l)
            }
            Op::DeleteRecord { table, key } => self.records.remove(&(table, key)).map(|(_, l)| l),
        };
        self.release(old);
    }

    /// Where the record a put op writes lives now, if it is live.
    fn loc_mut(&mut self, op: &Op) -> Option<&mut Loc> {
        match op {
            Op::PutMessage { id, .. } => self.messages.get_mut(id),
            Op::PutEntry { queue, seq, .. } => self
                .entries
                .get_mut(&**queue)
                .and_then(|q| q.get_mut(seq))
                .map(|(_, l)| l),
            Op::PutRecord { table, key, .. } => {
                self.records.get_mut(&(*table, key.clone())).map(|(_, l)| l)
            }
            Op::DeleteMessage { .. } | Op::DeleteEntry { .. } | Op::DeleteRecord { .. } => None,
        }
    }

    /// Where the record a put op writes lives now, if it is live.
    fn loc(&self, op: &Op) -> Option<Loc> {
        match op {
            Op::PutMessage { id, .. } => self.messages.get(id).copied(),
            Op::PutEntry { queue, seq, .. } => self
                .entries
                .get(&**queue)
                .and_then(|q| q.get(seq))
                .map(|(_, l)| *l),
            Op::PutRecord { table, key, .. } => {
                self.records.get(&(*table, key.clone())).map(|(_, l)| *l)
            }
            Op::DeleteMessage { .. } | Op::DeleteEntry { .. } | Op::DeleteRecord { .. } => None,
        }
    }

    /// Whether the put at `at` is the live version of its record.
    pub fn is_live(&self, op: &Op, at: Loc) -> bool {
        self.loc(op) == Some(at)
    }

    /// Moves a record from `from` to `to` if `from` is still where it lives; true if so.
    pub fn relocate(&mut self, op: &Op, from: Loc, to: Loc) -> bool {
        match self.loc_mut(op) {
            Some(l) if *l == from => {
                *l = to;
                true
            }
            _ => false,
        }
    }

    pub fn live_bytes(&self) -> u64 {
        self.segs.values().map(|s| s.live).sum()
    }

    pub fn total_bytes(&self) -> u64 {
        self.segs.values().map(|s| s.len).sum()
    }

    /// Everything but the messages, as [`crate::QueueStore::load`] returns it.
    pub fn snapshot_without_messages(&self) -> Snapshot {
        let mut queues: Vec<_> = self.entries.iter().collect();
        queues.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut entries = Vec::with_capacity(queues.iter().map(|(_, q)| q.len()).sum());
        for (queue, q) in queues {
            entries.extend(q.iter().map(|(seq, (e, _))| (queue.clone(), *seq, *e)));
        }
        let mut records: HashMap<RecordTable, Vec<(String, Vec<u8>)>> = HashMap::new();
        for ((table, key), (value, _)) in &self.records {
            records
                .entry(*table)
                .or_default()
                .push((key.clone(), value.clone()));
        }
        for rows in records.values_mut() {
            rows.sort_unstable();
        }
        Snapshot {
            messages: Vec::new(),
            entries,
            records,
        }
    }
}
