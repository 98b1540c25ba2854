//! The default engine: an append-only log of commits, cut into segment files.
//!
//! Each commit is one frame appended to the newest segment and synced (`fdatasync`) before
//! `commit` returns. The store keeps the live state in memory (message bodies are shared
//! with the broker through their `Arc`, not copied), so reading everything back is a
//! replay at start and a copy of maps afterwards.
//!
//! On disk (see `docs/storage-format.md`), in `<dir>/`:
//! - segment files `<number, 20 digits>.seg`, numbered from 1 upwards; each starts with
//!   the 8-byte magic `TLLOG001` and then holds frames;
//! - a frame is `len: u32 LE`, `crc: u32 LE` (CRC-32 of the payload), then `len` bytes of
//!   payload: [`Op`]s encoded one after another with postcard;
//! - the newest segment is preallocated (`fallocate`) to the segment size and written in
//!   place, so a commit's `fdatasync` has no file size to update; zeros follow the last
//!   frame (a zero length ends the log). A segment is cut to its frames when it is sealed.
//!
//! A torn frame at the end of the newest segment (a crash mid-write) is cut off when the
//! store opens: it was never acknowledged. A bad frame anywhere else, or anything but
//! zeros after the end of an older segment, is corruption and the store refuses to open.
//!
//! Space comes back without rewriting the whole log: the oldest segment is deleted once
//! nothing in it is live; when the log holds more than twice the live data (plus two
//! segments of slack), the oldest segment's live records are appended anew to the newest
//! segment and the oldest is deleted. Segments are only ever deleted oldest first, so a
//! delete recorded in a later segment never outlives the put it cancels.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Op, QueueStore, RecordTable, Snapshot, StoreError, StoredEntry, StoredMessage};

const MAGIC: &[u8; 8] = b"TLLOG001";
const FRAME_HEADER: usize = 8;
/// Frames larger than this are refused on write and treated as corruption on read.
const MAX_FRAME: usize = 1 << 30;
/// Default size at which the newest segment is closed and another started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

fn io(context: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("{context} {}: {e}", path.display()))
}

fn corrupt(cause: String) -> StoreError {
    StoreError::Corrupt {
        table: "log",
        cause,
    }
}

/// Where a live record sits: its segment and the bytes it takes there.
#[derive(Clone, Copy)]
struct Loc {
    seg: u64,
    bytes: u64,
}

#[derive(Default, Clone, Copy)]
struct SegInfo {
    /// Bytes in the file.
    len: u64,
    /// Bytes of records still live.
    live: u64,
}

/// The live state, and where each record lives in the log.
#[derive(Default)]
struct State {
    /// Ordered maps: ids and sequence numbers grow, so replaying appends at their ends.
    messages: BTreeMap<u64, (Arc<StoredMessage>, Loc)>,
    /// Entries by queue, then sequence number.
    entries: HashMap<Arc<str>, BTreeMap<u64, (StoredEntry, Loc)>>,
    records: HashMap<(RecordTable, String), (Vec<u8>, Loc)>,
    segs: BTreeMap<u64, SegInfo>,
}

impl State {
    fn release(&mut self, old: Option<Loc>) {
        if let Some(old) = old {
            if let Some(s) = self.segs.get_mut(&old.seg) {
                s.live = s.live.saturating_sub(old.bytes);
            }
        }
    }

    /// Applies one op written at `loc` (its segment already has the bytes counted in `len`).
    fn apply(&mut self, op: Op, loc: Loc) {
        let old = match op {
            Op::PutMessage { id, msg } => {
                self.add_live(loc);
                self.messages.insert(id, (msg, loc)).map(|(_, l)| l)
            }
            Op::DeleteMessage { id } => self.messages.remove(&id).map(|(_, l)| l),
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

    fn add_live(&mut self, loc: Loc) {
        self.segs.entry(loc.seg).or_default().live += loc.bytes;
    }

    fn live_bytes(&self) -> u64 {
        self.segs.values().map(|s| s.live).sum()
    }

    fn total_bytes(&self) -> u64 {
        self.segs.values().map(|s| s.len).sum()
    }

    /// Puts that recreate every live record of segment `seg`.
    fn live_in(&self, seg: u64) -> Vec<Op> {
        let mut ops = Vec::new();
        for (key, (value, loc)) in &self.records {
            if loc.seg == seg {
                ops.push(Op::PutRecord {
                    table: key.0,
                    key: key.1.clone(),
                    value: value.clone(),
                });
            }
        }
        for (id, (msg, loc)) in &self.messages {
            if loc.seg == seg {
                ops.push(Op::PutMessage {
                    id: *id,
                    msg: msg.clone(),
                });
            }
        }
        for (queue, q) in &self.entries {
            for (seq, (entry, loc)) in q {
                if loc.seg == seg {
                    ops.push(Op::PutEntry {
                        queue: queue.clone(),
                        seq: *seq,
                        entry: *entry,
                    });
                }
            }
        }
        ops
    }
}

struct Writer {
    dir: PathBuf,
    file: File,
    seg: u64,
    buf: Vec<u8>,
    state: State,
    failed: Option<String>,
    segment_bytes: u64,
}

/// A [`QueueStore`] on an append-only, segmented log.
pub struct LogStore {
    inner: Mutex<Writer>,
}

fn seg_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("{seg:020}.seg"))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing directory", dir, e))
}

/// Decodes the frames of one segment, applying their ops. Returns the length of the
/// valid prefix, and whether everything after it is zeros (the unused, preallocated end of
/// a segment) rather than a torn or damaged frame.
fn replay(seg: u64, bytes: &[u8], state: &mut State) -> Result<(u64, bool), StoreError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Ok((0, bytes.iter().all(|b| *b == 0)));
    }
    let mut pos = MAGIC.len();
    while pos < bytes.len() {
        let rest_is_zero = || bytes[pos..].iter().all(|b| *b == 0);
        let Some(header) = bytes.get(pos..pos + FRAME_HEADER) else {
            return Ok((pos as u64, rest_is_zero()));
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 {
            // No frame is empty: this is where writing stopped.
            return Ok((pos as u64, rest_is_zero()));
        }
        let start = pos + FRAME_HEADER;
        let payload = match bytes.get(start..start + len) {
            Some(p) if len <= MAX_FRAME && crc32fast::hash(p) == crc => p,
            _ => return Ok((pos as u64, false)),
        };
        let mut rest = payload;
        while !rest.is_empty() {
            let (op, tail): (Op, &[u8]) = postcard::take_from_bytes(rest)
                .map_err(|e| corrupt(format!("segment {seg} offset {pos}: {e}")))?;
            let bytes = (rest.len() - tail.len()) as u64;
            state.apply(op, Loc { seg, bytes });
            rest = tail;
        }
        pos = start + len;
    }
    Ok((pos as u64, true))
}

/// Reserves `size` bytes for a segment up front, so that appending does not change the
/// file's size and `fdatasync` has no metadata to write. Best effort: a file system without
/// `fallocate` just grows the file as it is written.
fn preallocate(f: &File, size: u64) {
    let _ = rustix::fs::fallocate(f, rustix::fs::FallocateFlags::empty(), 0, size);
}

impl LogStore {
    /// Opens (or creates) the log in directory `dir`, cutting off a torn last frame.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, DEFAULT_SEGMENT_BYTES)
    }

    /// [`LogStore::open`] with segments closed at about `segment_bytes`.
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        let mut segs = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io("listing", dir, e))? {
            let entry = entry.map_err(|e| io("listing", dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                segs.push(n);
            }
        }
        segs.sort_unstable();
        let mut state = State::default();
        let mut bytes = Vec::new();
        let last = segs.last().copied();
        for &seg in &segs {
            let path = seg_path(dir, seg);
            bytes.clear();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| io("reading", &path, e))?;
            state.segs.entry(seg).or_default();
            let (valid, clean) = replay(seg, &bytes, &mut state)?;
            if !clean && Some(seg) != last {
                return Err(corrupt(format!(
                    "segment {} is damaged at offset {valid}, and it is not the newest",
                    path.display()
                )));
            }
            state.segs.entry(seg).or_default().len = valid.max(MAGIC.len() as u64);
            if !clean {
                // A crash mid-append: what follows the last whole frame was never answered.
                // Cut it off and zero the rest, so that no stale byte follows a new frame.
                tracing::warn!(segment = %path.display(), offset = valid, "cutting off a torn frame");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io("opening", &path, e))?;
                if valid < MAGIC.len() as u64 {
                    f.write_all_at(MAGIC, 0)
                        .map_err(|e| io("writing", &path, e))?;
                }
                f.set_len(valid.max(MAGIC.len() as u64))
                    .map_err(|e| io("truncating", &path, e))?;
                preallocate(&f, segment_bytes);
                f.sync_all().map_err(|e| io("syncing", &path, e))?;
            }
        }
        let (seg, file) = match last {
            Some(seg) => {
                let path = seg_path(dir, seg);
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io("opening", &path, e))?;
                (seg, file)
            }
            None => (1, create_segment(dir, 1, segment_bytes)?),
        };
        state.segs.entry(seg).or_insert(SegInfo {
            len: MAGIC.len() as u64,
            live: 0,
        });
        Ok(LogStore {
            inner: Mutex::new(Writer {
                dir: dir.to_owned(),
                file,
                seg,
                buf: Vec::with_capacity(64 << 10),
                state,
                failed: None,
                segment_bytes: segment_bytes.max(4096),
            }),
        })
    }

    fn writer(&self) -> Result<MutexGuard<'_, Writer>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Failed("log store lock poisoned".into()))
    }

    /// Segment numbers on disk, oldest first (for tests and diagnostics).
    pub fn segments(&self) -> Result<Vec<u64>, StoreError> {
        Ok(self.writer()?.state.segs.keys().copied().collect())
    }

    /// Bytes in the log, and bytes of it still live.
    pub fn usage(&self) -> Result<(u64, u64), StoreError> {
        let w = self.writer()?;
        Ok((w.state.total_bytes(), w.state.live_bytes()))
    }
}

fn create_segment(dir: &Path, seg: u64, size: u64) -> Result<File, StoreError> {
    let path = seg_path(dir, seg);
    let f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .map_err(|e| io("creating", &path, e))?;
    preallocate(&f, size);
    f.write_all_at(MAGIC, 0)
        .map_err(|e| io("writing", &path, e))?;
    f.sync_all().map_err(|e| io("syncing", &path, e))?;
    sync_dir(dir)?;
    Ok(f)
}

impl Writer {
    /// Encodes `ops` as one frame into `buf`; returns each op's encoded size.
    fn encode(&mut self, ops: &[Op]) -> Result<Vec<u64>, StoreError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(&[0; FRAME_HEADER]);
        let mut sizes = Vec::with_capacity(ops.len());
        for op in ops {
            let before = buf.len();
            buf = postcard::to_extend(op, buf)
                .map_err(|e| StoreError::Engine(format!("encoding a log record: {e}")))?;
            sizes.push((buf.len() - before) as u64);
        }
        let len = buf.len() - FRAME_HEADER;
        if len > MAX_FRAME {
            self.buf = buf;
            return Err(StoreError::Engine(format!(
                "a commit of {len} bytes is larger than the log's frame limit"
            )));
        }
        let crc = crc32fast::hash(&buf[FRAME_HEADER..]);
        buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        self.buf = buf;
        Ok(sizes)
    }

    /// Appends `ops` as one synced frame and applies them to the live state.
    fn append(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        if let Some(cause) = &self.failed {
            return Err(StoreError::Failed(cause.clone()));
        }
        let sizes = self.encode(ops)?;
        let at = self.state.segs.get(&self.seg).map_or(0, |s| s.len);
        let written = self
            .file
            .write_all_at(&self.buf, at)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // The tail of the file is unknown now: refuse every later write. A restart
            // cuts the torn frame off.
            let cause = format!("writing segment {}: {e}", self.seg);
            self.failed = Some(cause.clone());
            return Err(StoreError::Failed(cause));
        }
        let seg = self.seg;
        self.state.segs.entry(seg).or_default().len += self.buf.len() as u64;
        for (op, bytes) in ops.iter().zip(sizes) {
            self.state.apply(op.clone(), Loc { seg, bytes });
        }
        if self.buf.capacity() > 4 << 20 {
            self.buf = Vec::with_capacity(64 << 10);
        }
        Ok(())
    }

    /// Starts a new segment when the newest is full, deletes dead segments and compacts.
    fn maintain(&mut self) -> Result<(), StoreError> {
        let len = self.state.segs.get(&self.seg).map_or(0, |s| s.len);
        if len < self.segment_bytes {
            return Ok(());
        }
        // Give back what was preallocated past the last frame, then start the next one.
        let sealed = self
            .file
            .set_len(len)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| io("sealing", &seg_path(&self.dir, self.seg), e));
        let next = self.seg + 1;
        self.file = sealed
            .and_then(|()| create_segment(&self.dir, next, self.segment_bytes))
            .inspect_err(|e| {
                self.failed = Some(e.to_string());
            })?;
        self.seg = next;
        self.state.segs.insert(
            next,
            SegInfo {
                len: MAGIC.len() as u64,
                live: 0,
            },
        );
        let slack = 2 * self.segment_bytes;
        while let Some((&oldest, &info)) = self.state.segs.iter().next() {
            if oldest == self.seg {
                break;
            }
            if info.live > 0 {
                if self.state.total_bytes() <= 2 * self.state.live_bytes() + slack {
                    break;
                }
                // Move what is still live in the oldest segment to the newest.
                let copies = self.state.live_in(oldest);
                self.append(&copies)?;
            }
            self.state.segs.remove(&oldest);
            let path = seg_path(&self.dir, oldest);
            std::fs::remove_file(&path).map_err(|e| io("deleting", &path, e))?;
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

impl QueueStore for LogStore {
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut w = self.writer()?;
        w.append(ops)?;
        w.maintain()
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let w = self.writer()?;
        let st = &w.state;
        let mut queues: Vec<_> = st.entries.iter().collect();
        queues.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut entries = Vec::with_capacity(queues.iter().map(|(_, q)| q.len()).sum());
        for (queue, q) in queues {
            entries.extend(q.iter().map(|(seq, (e, _))| (queue.clone(), *seq, *e)));
        }
        let mut records: HashMap<RecordTable, Vec<(String, Vec<u8>)>> = HashMap::new();
        for ((table, key), (value, _)) in &st.records {
            records
                .entry(*table)
                .or_default()
                .push((key.clone(), value.clone()));
        }
        for rows in records.values_mut() {
            rows.sort_unstable();
        }
        Ok(Snapshot {
            messages: st
                .messages
                .iter()
                .map(|(id, (m, _))| (*id, m.clone()))
                .collect(),
            entries,
            records,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::MemoryStore;

    fn msg(body: &[u8]) -> Arc<StoredMessage> {
        Arc::new(StoredMessage {
            topic: "a.b".into(),
            body: bytes::Bytes::copy_from_slice(body),
            sender: "s".into(),
            timestamp_ms: 5,
            expires_at_ms: Some(9),
            content_type: None,
            headers: vec![("type".into(), "t".into())],
        })
    }

    fn put(id: u64, body: &[u8]) -> Op {
        Op::PutMessage { id, msg: msg(body) }
    }

    fn entry(queue: &str, seq: u64, msg_id: u64) -> Op {
        Op::PutEntry {
            queue: Arc::from(queue),
            seq,
            entry: StoredEntry {
                msg_id,
                delivery_count: 0,
            },
        }
    }

    type Flat = (
        Vec<(u64, StoredMessage)>,
        Vec<(Arc<str>, u64, StoredEntry)>,
        Vec<(RecordTable, String, Vec<u8>)>,
    );

    /// The snapshot as comparable, ordered values.
    fn flat(s: Snapshot) -> Flat {
        let m: Vec<_> = s
            .messages
            .into_iter()
            .map(|(k, v)| (k, (*v).clone()))
            .collect();
        let mut r: Vec<_> = s
            .records
            .into_iter()
            .flat_map(|(t, rows)| rows.into_iter().map(move |(k, v)| (t, k, v)))
            .collect();
        r.sort();
        (m, s.entries, r)
    }

    #[test]
    fn a_torn_last_frame_is_cut_off_and_the_log_goes_on() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| io("tempdir", Path::new("."), e))?;
        {
            let s = LogStore::open(dir.path())?;
            s.commit(&[put(1, b"1")])?;
            s.commit(&[put(2, b"2")])?;
        }
        let (len, _) = LogStore::open(dir.path())?.usage()?;
        let path = seg_path(dir.path(), 1);
        let full = std::fs::read(&path).map_err(|e| io("read", &path, e))?;
        assert!(full[len as usize..].iter().all(|b| *b == 0));
        // Every cut inside the second frame, and any damage to it, loses exactly the second
        // commit (a crash mid-append): truncated files, and stray bytes in the zeros.
        let mut damaged = Vec::new();
        for cut in [len - 1, len - 5, len - 20] {
            damaged.push(full[..cut as usize].to_vec());
            let mut stray = full.clone();
            stray[cut as usize..len as usize].fill(0);
            stray[len as usize + 100] = 1;
            damaged.push(stray);
        }
        for (i, bytes) in damaged.iter().enumerate() {
            std::fs::write(&path, bytes).map_err(|e| io("write", &path, e))?;
            let s = LogStore::open(dir.path())?;
            let ids: Vec<u64> = s.load()?.messages.iter().map(|(id, _)| *id).collect();
            assert_eq!(ids, vec![1], "case {i}");
            drop(s);
            let after = std::fs::read(&path).map_err(|e| io("read", &path, e))?;
            assert!(
                after[len as usize - 20..].iter().all(|b| *b == 0),
                "case {i}: the torn bytes were not zeroed"
            );
        }
        let s = LogStore::open(dir.path())?;
        s.commit(&[put(3, b"3")])?;
        drop(s);
        let ids: Vec<u64> = LogStore::open(dir.path())?
            .load()?
            .messages
            .iter()
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(ids, vec![1, 3]);
        Ok(())
    }

    #[test]
    fn damage_before_the_newest_segment_is_refused() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| io("tempdir", Path::new("."), e))?;
        {
            let s = LogStore::open_with(dir.path(), 4096)?;
            for id in 0..20 {
                s.commit(&[put(id, &[b'x'; 1000])])?;
            }
            assert!(s.segments()?.len() > 1);
        }
        let first = seg_path(dir.path(), 1);
        let mut bytes = std::fs::read(&first).map_err(|e| io("read", &first, e))?;
        bytes[20] ^= 0xff;
        std::fs::write(&first, bytes).map_err(|e| io("write", &first, e))?;
        match LogStore::open_with(dir.path(), 4096) {
            Err(StoreError::Corrupt { cause, .. }) => {
                assert!(cause.contains("not the newest"), "{cause}")
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a damaged older segment was accepted"),
        }
        Ok(())
    }

    #[test]
    fn space_comes_back_and_long_lived_records_move_forward() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| io("tempdir", Path::new("."), e))?;
        let seg = 8 << 10;
        let s = LogStore::open_with(dir.path(), seg)?;
        s.commit(&[Op::PutRecord {
            table: RecordTable::Clients,
            key: "forever".into(),
            value: vec![7; 100],
        }])?;
        // A queue that is consumed as fast as it is filled: 600 × 1 KiB through it.
        for id in 1..=600u64 {
            s.commit(&[put(id, &[b'x'; 1024]), entry("q", id, id)])?;
            if id > 10 {
                s.commit(&[
                    Op::DeleteEntry {
                        queue: Arc::from("q"),
                        seq: id - 10,
                    },
                    Op::DeleteMessage { id: id - 10 },
                ])?;
            }
        }
        let (total, live) = s.usage()?;
        assert!(live < 12 * 1100 + 200, "live {live}");
        assert!(
            total <= 2 * live + 3 * seg + 4096,
            "the log kept {total} bytes for {live} live"
        );
        let on_disk: u64 = std::fs::read_dir(dir.path())
            .map_err(|e| io("list", dir.path(), e))?
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        // Sealed segments are cut to their frames; only the newest keeps its reserve.
        assert!(
            on_disk <= total + seg,
            "{on_disk} bytes on disk for {total} in the log"
        );
        assert!(
            !s.segments()?.contains(&1),
            "the first segment outlived compaction"
        );
        drop(s);
        let snap = LogStore::open_with(dir.path(), seg)?.load()?;
        assert_eq!(snap.messages.len(), 10);
        assert_eq!(snap.entries.len(), 10);
        assert_eq!(snap.records(RecordTable::Clients).len(), 1);
        Ok(())
    }

    #[derive(Debug, Clone)]
    enum Step {
        Commit(Vec<Op>),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..20u64, 0..3000usize).prop_map(|(id, n)| put(id, &vec![b'b'; n])),
            (0..20u64).prop_map(|id| Op::DeleteMessage { id }),
            (0..3usize, 0..20u64, 0..20u64).prop_map(|(q, s, m)| entry(["a", "b", "c"][q], s, m)),
            (0..3usize, 0..20u64).prop_map(|(q, seq)| Op::DeleteEntry {
                queue: Arc::from(["a", "b", "c"][q]),
                seq
            }),
            (0..5u8, prop::collection::vec(any::<u8>(), 0..50)).prop_map(|(k, value)| {
                Op::PutRecord {
                    table: RecordTable::Dedup,
                    key: format!("k{k}"),
                    value,
                }
            }),
            (0..5u8).prop_map(|k| Op::DeleteRecord {
                table: RecordTable::Dedup,
                key: format!("k{k}")
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
        /// Whatever the commits, reopens and compactions, the log holds what an in-memory
        /// model holds.
        #[test]
        fn matches_the_model(steps in prop::collection::vec(
            prop_oneof![
                8 => prop::collection::vec(op(), 1..6).prop_map(Step::Commit),
                1 => Just(Step::Reopen),
            ],
            1..80,
        )) {
            let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let model = MemoryStore::default();
            let open = || LogStore::open_with(dir.path(), 4096).map_err(|e| TestCaseError::fail(e.to_string()));
            let mut log = open()?;
            for step in steps {
                match step {
                    Step::Commit(ops) => {
                        model.commit(&ops).map_err(|e| TestCaseError::fail(e.to_string()))?;
                        log.commit(&ops).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    }
                    Step::Reopen => {
                        drop(log);
                        log = open()?;
                    }
                }
                let a = flat(log.load().map_err(|e| TestCaseError::fail(e.to_string()))?);
                let b = flat(model.load().map_err(|e| TestCaseError::fail(e.to_string()))?);
                prop_assert_eq!(a, b);
            }
            drop(log);
            let a = flat(open()?.load().map_err(|e| TestCaseError::fail(e.to_string()))?);
            let b = flat(model.load().map_err(|e| TestCaseError::fail(e.to_string()))?);
            prop_assert_eq!(a, b);
        }
    }
}
