//! Queues longer than memory: entries kept on disk only, and brought back in order.
//!
//! A queue is spilled ([`crate::QueueStore::spill`]) from a sequence number on: every
//! entry put in it from then on with that number or more, unless the same entry is held
//! in memory already (a rewrite of one brought back), is only marked live, in a bitmap of
//! sequence numbers, with no location; a message put in the same commit goes the same way
//! when none of its entries stays in memory. Sequence numbers and message ids are never
//! reused, so a put of a record marked live is its only put: compaction keeps it without
//! knowing where it was.
//!
//! A page-in reads the log from where the last one stopped (the segment and offset in
//! [`Spilled::resume`]), through each sealed segment's index file, or its frames when it
//! has none, and up to the committed end of the newest. It reads without the state's
//! lock, then applies what it found under the write lock unless compaction replaced a
//! file meanwhile (then it reads again). Entries come back in log order, which is the
//! order their commits were made; a sealed segment is read whole, so a message and its
//! entries (one commit, one frame, never split across segments) are read together.

use std::collections::HashMap;
use std::sync::Arc;

use roaring::RoaringTreemap;

use super::change::Change;
use super::frame::{Placed, MAGIC};
use super::state::{FastMap, Loc, State, NO_FRAME};
use super::{index, read, seg_path, Shared};
use crate::fs::VFile;
use crate::{MessageMeta, Paged, StoreError, StoredEntry};

/// A spilled queue.
#[derive(Debug)]
pub(crate) struct Spilled {
    /// Entries put fresh from this sequence number on stay on disk.
    pub from: u64,
    /// Those live and not brought back.
    pub seqs: RoaringTreemap,
    /// Segment and offset before which none of them is (offset 0: the segment's start).
    pub resume: (u32, u32),
    /// Delivery counts of those rewritten after their first put (met by a replay of the
    /// log: a node only rewrites entries it holds): a page-in may read the first put only.
    pub counts: FastMap<u64, u32>,
    /// The segments at or past `resume` where any of them was put, ascending: a page-in
    /// reads only these (a node spilling many queues would otherwise read every segment's
    /// index for each).
    pub segs: Vec<SegPuts>,
}

/// Where in one segment some of a spilled queue's entries were put.
#[derive(Debug)]
pub(crate) struct SegPuts {
    pub seg: u32,
    /// While the segment has no index yet (the newest, the one sealed last): every entry
    /// this node put there, with its message's put, so that a page-in reads those records
    /// rather than the whole segment. `None` once the segment is indexed (its directory
    /// serves) or older than the one sealed last (32 bytes an entry are kept for two
    /// segments at most), or when some put is not known (met at replay, its message put
    /// elsewhere, a segment compaction rewrote): then a page-in reads the index, or the
    /// segment whole.
    pub puts: Option<Vec<(Loc, Loc)>>,
}

impl Spilled {
    pub fn new(from: u64, resume: (u32, u32)) -> Self {
        Spilled {
            from,
            seqs: RoaringTreemap::new(),
            resume,
            counts: Default::default(),
            segs: Vec::new(),
        }
    }

    /// One of its entries was put in segment `seg`: at `known` (the entry's put and its
    /// message's) if that is known.
    pub fn put_in(&mut self, seg: u32, known: Option<(Loc, Loc)>) {
        let at = match self.segs.last() {
            Some(last) if last.seg == seg => self.segs.len() - 1,
            Some(last) if last.seg > seg => match self.segs.binary_search_by_key(&seg, |p| p.seg) {
                Ok(at) => at,
                Err(at) => {
                    self.segs.insert(at, SegPuts { seg, puts: None });
                    return;
                }
            },
            _ => {
                let puts = known.map(|k| vec![k]);
                self.segs.push(SegPuts { seg, puts });
                return;
            }
        };
        let here = &mut self.segs[at];
        match (&mut here.puts, known) {
            (Some(puts), Some(k)) => puts.push(k),
            (puts, None) => *puts = None,
            (None, Some(_)) => {}
        }
    }

    /// Segment `seg` has an index now: its directory serves page-ins.
    pub fn indexed(&mut self, seg: u32) {
        if let Ok(at) = self.segs.binary_search_by_key(&seg, |p| p.seg) {
            self.segs[at].puts = None;
        }
    }

    /// Its puts in segments before `seg` are no longer kept (see [`SegPuts`]).
    pub fn forget_puts_before(&mut self, seg: u32) {
        for p in self.segs.iter_mut().take_while(|p| p.seg < seg) {
            p.puts = None;
        }
    }

    /// Compaction rewrote segments `first..=last` into `first`.
    pub fn replaced(&mut self, first: u32, last: u32) {
        if (first..=last).contains(&self.resume.0) {
            self.resume = (first, 0);
        }
        let before = self.segs.len();
        self.segs.retain(|p| !(first..=last).contains(&p.seg));
        if self.segs.len() != before {
            self.put_in(first, None);
        }
    }

    /// The puts a page-in may read instead of segment `seg`, if all are known.
    fn puts_in(&self, seg: u32) -> Option<&[(Loc, Loc)]> {
        let at = self.segs.binary_search_by_key(&seg, |p| p.seg).ok()?;
        self.segs[at].puts.as_deref()
    }

    /// Whether any of its entries was put in segment `seg`.
    fn has_puts_in(&self, seg: u32) -> bool {
        self.segs.binary_search_by_key(&seg, |p| p.seg).is_ok()
    }
}

/// How many times a page-in reads; compaction replacing what it read makes it read
/// again, and the last time it holds compaction off.
const ATTEMPTS: usize = 4;

pub(crate) fn spill(shared: &Shared, queue: &str, from: u64) -> Result<(), StoreError> {
    let mut st = shared.state_mut()?;
    if st.spilled.contains_key(queue) {
        return Ok(());
    }
    // Whatever is committed from now on lies past the end of the newest segment now.
    let newest = st.newest;
    let end = st.segs.get(&newest).map_or(0, |s| s.len as u32);
    st.spilled
        .insert(Arc::from(queue), Spilled::new(from, (newest, end)));
    Ok(())
}

pub(crate) fn unspill(shared: &Shared, queue: &str) -> Result<bool, StoreError> {
    let mut st = shared.state_mut()?;
    match st.spilled.get(queue) {
        Some(s) if !s.seqs.is_empty() => Ok(false),
        Some(_) => {
            st.spilled.remove(queue);
            Ok(true)
        }
        None => Ok(true),
    }
}

/// A segment to read: its number, file, the end of what counts in it, whether it has a
/// valid index, whether it is the newest.
struct Part {
    seg: u32,
    file: Arc<dyn VFile>,
    len: u64,
    indexed: bool,
    newest: bool,
    /// The queue's puts in it, if it has no index and they are all known.
    puts: Option<Vec<(Loc, Loc)>>,
}

/// What a read found: the queue's entries put fresh (in log order), and every message
/// put, with their places.
#[derive(Default)]
struct Found {
    entries: Vec<(u64, StoredEntry, Loc)>,
    messages: HashMap<u64, (MessageMeta, Loc)>,
}

pub(crate) fn page_in(shared: &Shared, queue: &str, want: usize) -> Result<Vec<Paged>, StoreError> {
    // A read that stops at `want` entries may have met older puts of entries brought
    // back already (compaction keeps every put of an entry on disk only, and a replay
    // meets rewrites of them): then it reads on.
    loop {
        let (paged, more) = page_once(shared, queue, want, false)?;
        if !paged.is_empty() || !more {
            return Ok(paged);
        }
    }
}

/// One read from where the last page-in stopped; and whether it stopped before the end
/// of the log. Sealed segments with an index are read through its directory of the
/// queue's puts, unless `whole`: then every record of them is read, which finds the
/// messages of entries put in an earlier segment than their message (an entry moved into
/// a queue spilled at replay); a read through the directories that misses one of those
/// reads again whole.
fn page_once(
    shared: &Shared,
    queue: &str,
    want: usize,
    whole: bool,
) -> Result<(Vec<Paged>, bool), StoreError> {
    for attempt in 1..=ATTEMPTS {
        let _hold = match attempt {
            ATTEMPTS => Some(shared.compacting()?),
            _ => None,
        };
        let (generation, from, resume, parts) = {
            let st = shared.state()?;
            let Some(s) = st.spilled.get(queue) else {
                return Ok((Vec::new(), false));
            };
            if s.seqs.is_empty() {
                return Ok((Vec::new(), false));
            }
            let parts: Vec<Part> = st
                .segs
                .range(s.resume.0..)
                .filter(|(seg, _)| whole || s.has_puts_in(**seg))
                .filter_map(|(seg, info)| {
                    Some(Part {
                        seg: *seg,
                        file: st.files.get(seg)?.clone(),
                        len: info.len,
                        indexed: info.indexed,
                        newest: *seg == st.newest,
                        puts: match whole || info.indexed {
                            true => None,
                            // Those not read yet (in log order: offsets grow).
                            false => s.puts_in(*seg).map(|puts| {
                                let read = match *seg == s.resume.0 {
                                    true => puts.partition_point(|(e, _)| e.off < s.resume.1),
                                    false => 0,
                                };
                                puts[read..].to_vec()
                            }),
                        },
                    })
                })
                .collect();
            (st.generation, s.from, s.resume, parts)
        };
        let mut found = Found::default();
        let mut end = resume;
        let mut more = false;
        let count = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            let start = match part.seg == resume.0 {
                true => u64::from(resume.1).max(MAGIC.len() as u64),
                false => MAGIC.len() as u64,
            };
            read_part(shared, &part, start, queue, from, whole, &mut found)?;
            end = match part.newest {
                true => (part.seg, part.len as u32),
                false => (part.seg + 1, 0),
            };
            if found.entries.len() >= want {
                more = i + 1 < count;
                break;
            }
        }
        if !whole {
            let st = shared.state()?;
            let missing = found.entries.iter().any(|(_, e, _)| {
                st.spilled_msgs.contains(e.msg_id) && !found.messages.contains_key(&e.msg_id)
            });
            if missing {
                drop(st);
                return page_once(shared, queue, want, true);
            }
        }
        if let Some(paged) = apply(shared, queue, generation, end, found)? {
            return Ok((paged, more));
        }
    }
    Err(StoreError::Engine(format!(
        "bringing back entries of {queue}: the log kept changing under the read"
    )))
}

/// Reads `part` from offset `start` on: through its index's directory of `queue`'s puts,
/// or, if `whole` or there is no index, every record.
fn read_part(
    shared: &Shared,
    part: &Part,
    start: u64,
    queue: &str,
    from: u64,
    whole: bool,
    found: &mut Found,
) -> Result<(), StoreError> {
    let mut take = |p: &Placed<'_>| {
        if u64::from(p.off) < start {
            return;
        }
        let loc = Loc {
            seg: part.seg,
            off: p.off,
            bytes: p.bytes,
            frame: p.frame,
        };
        match p.change {
            Change::PutEntry {
                queue: q,
                seq,
                entry,
            } if q == queue && seq >= from => found.entries.push((seq, entry, loc)),
            Change::PutMessage { id, msg } => {
                // The first found is where it lives: a segment compaction has just
                // copied from (to an earlier one) is read after its copy, until deleted.
                found.messages.entry(id).or_insert((msg, loc));
            }
            _ => {}
        }
    };
    let path = seg_path(&shared.dir, part.seg);
    if let Some(puts) = &part.puts {
        for &(entry, message) in puts.iter().filter(|(e, _)| u64::from(e.off) >= start) {
            for loc in [message, entry] {
                let op = read::op_at(&shared.frames, &part.file, loc, &path)?;
                let change = Change::from(&op);
                take(&Placed {
                    change,
                    raw: &[],
                    off: loc.off,
                    bytes: loc.bytes,
                    frame: loc.frame,
                });
            }
        }
        return Ok(());
    }
    let (fs, dir, seg, file) = (&*shared.fs, &shared.dir, part.seg, &*part.file);
    let indexed = part.indexed
        && match whole {
            true => index::read(fs, dir, seg, file, |p| take(&p)).is_some(),
            false => index::read_queue(fs, dir, seg, file, queue, |p| take(&p)).is_some(),
        };
    if indexed {
        return Ok(());
    }
    read::records(&*part.file, start, part.len, &path, |frame| {
        frame.iter().for_each(&mut take);
        Ok(())
    })
}

/// Brings back what `found` holds of the queue's spilled entries, unless the log changed
/// since it was read (`None`: read again).
fn apply(
    shared: &Shared,
    queue: &str,
    generation: u64,
    end: (u32, u32),
    found: Found,
) -> Result<Option<Vec<Paged>>, StoreError> {
    let mut st = shared.state_mut()?;
    if st.generation != generation {
        return Ok(None);
    }
    let State {
        spilled,
        spilled_msgs,
        messages,
        expiry,
        entries,
        held: held_count,
        disk_refs,
        ..
    } = &mut *st;
    let Some(name) = spilled.get_key_value(queue).map(|(k, _)| k.clone()) else {
        return Ok(Some(Vec::new()));
    };
    let mut back = Vec::new();
    if let Some(s) = spilled.get_mut(queue) {
        // The last put read of an entry is its latest.
        for (seq, mut entry, loc) in found.entries.into_iter().rev() {
            if s.seqs.remove(seq) {
                if let Some(count) = s.counts.remove(&seq) {
                    entry.delivery_count = count;
                }
                back.push((seq, entry, loc));
            }
        }
        back.reverse();
        s.resume = end;
        s.segs.retain(|p| p.seg >= end.0);
    }
    let (mut paged, mut missing) = (Vec::with_capacity(back.len()), 0u64);
    for (seq, entry, loc) in back {
        let id = entry.msg_id;
        let others = disk_refs.take(id);
        let meta = if spilled_msgs.contains(id) {
            match found.messages.get(&id) {
                Some((meta, mloc)) => {
                    spilled_msgs.remove(id);
                    messages.insert(id, *mloc);
                    if let Some(t) = meta.expires_at_ms {
                        expiry.insert(id, t);
                    }
                    *meta
                }
                None => {
                    missing += 1;
                    continue;
                }
            }
        } else if messages.contains_key(&id) {
            MessageMeta {
                expires_at_ms: expiry.get(&id).copied(),
            }
        } else {
            missing += 1;
            continue;
        };
        let held = entries
            .entry(name.clone())
            .or_default()
            .insert(seq, (entry, loc));
        if held.is_none() {
            *held_count += 1;
        }
        paged.push(Paged {
            seq,
            entry,
            meta,
            others,
        });
    }
    if missing > 0 {
        // Left out: a restart finds them without their messages and removes them.
        tracing::error!(
            queue,
            missing,
            "entries brought back from the log lack their messages"
        );
    }
    Ok(Some(paged))
}

/// A node-wide bound on the entries held in memory ([`super::LogOptions::spill_node`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSpill {
    /// Entries in memory, across all queues, past which queues spill.
    pub entries: usize,
    /// Entries a queue keeps in memory even then (its head, for prompt delivery).
    pub head: usize,
    /// Entries in memory, across all queues, past which queues keep no head: every entry
    /// not in memory yet stays on disk only.
    pub bare: usize,
}

/// When a replay spills a queue.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Bounds {
    /// Past this many entries in memory in the queue.
    pub queue: Option<usize>,
    /// Past the node-wide bound.
    pub node: Option<NodeSpill>,
}

/// Spilling while the log is replayed at start ([`super::LogOptions::spill_entries`],
/// [`super::LogOptions::spill_node`]): a queue past its bound, or holding a head's worth
/// once the node holds more than its bound, is spilled from its next entry on, as a running
/// node would have, and each frame's messages whose entries all went to disk only go too.
/// Segments of the first format (frames not checked alone, so not read back one by one)
/// spill nothing.
pub(crate) struct Replay {
    bounds: Bounds,
    /// The frame being replayed: its segment and offset.
    frame: (u32, u32),
    messages: Vec<u64>,
    entries: Vec<(u64, bool)>,
    /// Messages the frame puts, kept out of the state until its end (in segments read
    /// from their index files, where no entry looks its message up): most go to disk
    /// only, and a message put into the ordered map only to be taken out again cost a
    /// tenth of a replay.
    pending: Vec<(u64, MessageMeta, Loc)>,
    /// Messages the frame deletes while some are pending (a group commit may put and
    /// delete one): those are not landed.
    deleted: std::collections::HashSet<u64, foldhash::fast::RandomState>,
}

impl Replay {
    pub fn new(bounds: Bounds) -> Self {
        Replay {
            bounds,
            frame: (0, NO_FRAME),
            messages: Vec::new(),
            entries: Vec::new(),
            pending: Vec::new(),
            deleted: Default::default(),
        }
    }

    /// Applies one replayed change, written at `loc`.
    pub fn apply(&mut self, st: &mut State, change: &Change<'_>, loc: Loc) {
        if (self.bounds.queue.is_none() && self.bounds.node.is_none()) || loc.frame == NO_FRAME {
            st.apply(change, loc);
            return;
        }
        if (loc.seg, loc.frame) != self.frame {
            self.end_frame(st);
            self.frame = (loc.seg, loc.frame);
        }
        if let Change::PutEntry { queue, seq, .. } = *change {
            st.spill_bare(queue, seq, self.bounds);
        }
        match *change {
            Change::PutMessage { id, msg } if !st.spilled.is_empty() && !st.keep_puts => {
                st.count_put(loc);
                self.pending.push((id, msg, loc));
                return;
            }
            Change::DeleteMessage { id } if !self.pending.is_empty() => {
                self.deleted.insert(id);
            }
            _ => {}
        }
        let on_disk = st.apply_put(change, loc);
        match *change {
            Change::PutMessage { id, .. } if !st.spilled.is_empty() => self.messages.push(id),
            Change::PutEntry { queue, seq, entry } => {
                if !self.messages.is_empty() || !self.pending.is_empty() {
                    self.entries.push((entry.msg_id, on_disk));
                }
                if !on_disk {
                    st.spill_if_long(queue, seq, self.bounds);
                }
            }
            _ => {}
        }
    }

    /// The frame being replayed is over (or its segment).
    pub fn end_frame(&mut self, st: &mut State) {
        if !self.pending.is_empty() {
            // Per message: whether every entry of it the frame put went to disk only.
            let mut all = FastMap::with_capacity_and_hasher(self.pending.len(), Default::default());
            for &(id, on_disk) in &self.entries {
                *all.entry(id).or_insert(true) &= on_disk;
            }
            for (id, msg, loc) in self.pending.drain(..) {
                if self.deleted.contains(&id) {
                    // Put and deleted in this frame: its bytes are dead.
                    st.release(Some(loc));
                } else {
                    st.land_message(id, msg, loc, all.get(&id) == Some(&true));
                }
            }
            self.deleted.clear();
        }
        st.spill_put(&self.messages, &self.entries);
        self.messages.clear();
        self.entries.clear();
    }
}
