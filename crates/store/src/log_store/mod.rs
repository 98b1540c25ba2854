//! The default engine: an append-only log of commits, cut into segment files.
//!
//! Each commit is one frame appended to the newest segment and synced (`fdatasync`) before
//! `commit` returns. The store keeps the live state in memory (message bodies are shared
//! with the broker through their `Arc`, not copied), so reading everything back is a
//! replay at start and a copy of maps afterwards.
//!
//! On disk (see `docs/storage-format.md` and [`frame`]), in `<dir>/`: segment files
//! `<number, 20 digits>.seg`, numbered from 1 upwards, each a magic and then frames. The
//! newest segment is preallocated (`fallocate`) to the segment size and written in place,
//! so a commit's `fdatasync` has no file size to update; zeros follow the last frame. A
//! new segment is made under a temporary name, its header synced, and only then renamed
//! into place (and the directory synced), so a segment's name never exists without its
//! header.
//!
//! Opening replays the segments in order. A torn last frame of the newest segment (a crash
//! mid-write, never acknowledged) is cut off. Anything else that is not a whole frame is
//! damage: the store refuses to open, and says how to see it ([`check`]) and how to cut
//! the log at the damage ([`Recover::Truncate`], which reports what it dropped).
//!
//! Space comes back in the background ([`compact`]), never on the commit path.

mod change;
mod compact;
mod frame;
mod index;
mod read;
mod spill;
mod state;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

pub use frame::Tail;
use frame::{Version, MAGIC};
pub use spill::NodeSpill;
use state::{Loc, SegInfo, State};

use crate::fs::{self, RealFs, VFile, Vfs, BLOCK};
use crate::{Op, Paged, QueueStore, Snapshot, StoreError, StoredMessage};

/// Default size at which the newest segment is closed and another started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// The file locked while a store has the log open: one process at a time.
const LOCK_FILE: &str = "LOCK";
/// Suffix of a segment being made; renamed to `.seg` once its header is durable.
const NEW_SUFFIX: &str = ".seg.new";
/// Suffix of a segment being rewritten by compaction; renamed over the segment when done.
const COMPACT_SUFFIX: &str = ".seg.compact";

fn io(context: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("{context} {}: {e}", path.display()))
}

fn corrupt(cause: String) -> StoreError {
    StoreError::Corrupt {
        table: "log",
        cause,
    }
}

fn seg_path(dir: &Path, seg: u32) -> PathBuf {
    dir.join(format!("{seg:020}.seg"))
}

/// What to do when the log is damaged (not merely torn at its end).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Recover {
    /// Refuse to open, saying where the damage is.
    #[default]
    Refuse,
    /// Keep everything before the first damage and drop the rest: the rest of that
    /// segment and every later segment. [`LogStore::recovered`] says what went.
    Truncate,
}

/// How to open a log.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// Size at which the newest segment is closed and another started.
    pub segment_bytes: u64,
    /// Records (ops) at which the newest segment is closed however few its bytes, and
    /// the most a merge takes: what compaction holds per record it moves is then bounded
    /// whatever the records' size (tiny entries of a fan-out).
    pub segment_records: u64,
    pub recover: Recover,
    /// Whether a background thread reclaims space (tests may run [`LogStore::compact`]
    /// themselves instead).
    pub background_compaction: bool,
    /// The disk the log may take (the node refuses publishes past it): past three
    /// quarters of it, compaction takes whatever it can get back rather than waiting for
    /// the log to hold twice its live data.
    pub disk_budget: Option<u64>,
    /// Queues found with more entries than this as the log is replayed at start keep the
    /// rest on disk only, as a running node spills them ([`QueueStore::spill`]); `None`:
    /// everything is held in memory.
    pub spill_entries: Option<usize>,
    /// Past this many entries in memory across all queues as the log is replayed, a queue
    /// holding at least a head's worth spills from its next entry on, as a running node
    /// does under memory pressure; `None`: no node-wide bound.
    pub spill_node: Option<NodeSpill>,
    /// Frames of at least this many bytes are written past the page cache where the file
    /// system allows (`O_DIRECT`), which spares the kernel a copy of every large body;
    /// `None`: never.
    pub direct_write_min: Option<usize>,
}

/// The default [`LogOptions::segment_records`]: about 16 MiB of what compaction holds to
/// move records (64 bytes each).
pub const DEFAULT_SEGMENT_RECORDS: u64 = 1 << 18;

/// The default [`LogOptions::direct_write_min`]: a frame of one 64 KiB message and up.
pub const DIRECT_WRITE_MIN: usize = 64 << 10;

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            segment_records: DEFAULT_SEGMENT_RECORDS,
            recover: Recover::Refuse,
            background_compaction: true,
            disk_budget: None,
            spill_entries: None,
            spill_node: None,
            direct_write_min: Some(DIRECT_WRITE_MIN),
        }
    }
}

/// One segment, as a check of the log found it.
#[derive(Debug, Clone)]
pub struct SegmentReport {
    pub segment: u32,
    /// Bytes of whole frames (with the header).
    pub bytes: u64,
    pub frames: u64,
    pub tail: Tail,
}

/// What [`check`] found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Segments read, oldest first, up to and including the first damaged one.
    pub segments: Vec<SegmentReport>,
    /// Segments after the first damage, not read (a truncating recovery drops them).
    pub unread: Vec<u32>,
    /// Live records in what was read.
    pub messages: usize,
    pub entries: usize,
    pub records: usize,
}

impl CheckReport {
    /// The first damage, if any: segment, offset, what is wrong.
    pub fn damage(&self) -> Option<(u32, u64, &str)> {
        self.segments.iter().find_map(|s| match &s.tail {
            Tail::Damaged(why) => Some((s.segment, s.bytes, why.as_str())),
            _ => None,
        })
    }
}

/// What a truncating recovery dropped.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub segment: u32,
    pub offset: u64,
    pub why: String,
    /// Bytes cut from the damaged segment, plus every byte of the segments after it.
    pub dropped_bytes: u64,
    pub dropped_segments: Vec<u32>,
}

/// The log's segments, and leftovers of interrupted work, in a directory.
fn list(fs: &dyn Vfs, dir: &Path) -> Result<(Vec<u32>, Vec<String>), StoreError> {
    let mut segs = Vec::new();
    let mut leftovers = Vec::new();
    let mut indexes = Vec::new();
    for name in fs.list(dir).map_err(|e| io("listing", dir, e))? {
        if let Some(n) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u32>().ok())
        {
            segs.push(n);
        } else if name.ends_with(NEW_SUFFIX)
            || name.ends_with(COMPACT_SUFFIX)
            || name.ends_with(index::IDX_NEW_SUFFIX)
        {
            leftovers.push(name);
        } else if let Some(n) = name
            .strip_suffix(".idx")
            .and_then(|n| n.parse::<u32>().ok())
        {
            indexes.push((n, name));
        }
    }
    segs.sort_unstable();
    // Indexes of segments gone (a crash between a segment's deletion and its index's).
    leftovers.extend(
        indexes
            .into_iter()
            .filter(|(n, _)| segs.binary_search(n).is_err())
            .map(|(_, name)| name),
    );
    Ok((segs, leftovers))
}

/// A replay of the log: the state it holds, segment by segment, up to the first damage.
struct Survey {
    state: State,
    report: CheckReport,
    /// Versions of the segments read.
    versions: Vec<Option<Version>>,
}

/// Replays the segments `segs` of the log in `dir`: sealed ones from their index files
/// where `indexed` and they have a valid one, the rest (and the newest) whole.
/// With `spill` set, queues past its bounds are spilled as they are replayed
/// ([`spill::Replay`]).
fn survey(
    fs: &dyn Vfs,
    dir: &Path,
    segs: &[u32],
    indexed: bool,
    spill: spill::Bounds,
) -> Result<Survey, StoreError> {
    let mut files = Vec::with_capacity(segs.len());
    for &seg in segs {
        let path = seg_path(dir, seg);
        let file: Arc<dyn VFile> = Arc::from(fs.open(&path).map_err(|e| io("opening", &path, e))?);
        files.push(file);
    }
    let sealed = match indexed {
        true => segs.len().saturating_sub(1),
        false => 0,
    };
    if sealed == 0 {
        return replay_segments(dir, segs, &files, |_| None, spill);
    }
    // Another thread reads and checks the index files, one ahead of the one applied.
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let files = &files;
        scope.spawn(move || {
            for (&seg, file) in segs[..sealed].iter().zip(files) {
                if tx.send(index::check(fs, dir, seg, &**file)).is_err() {
                    return;
                }
            }
        });
        let checked = |i| match i < sealed {
            true => rx.recv().ok().flatten(),
            false => None,
        };
        replay_segments(dir, segs, files, checked, spill)
    })
}

/// [`survey`]'s replay, with `checked(i)` the checked index file of the `i`th segment if
/// it is to be read from one.
fn replay_segments(
    dir: &Path,
    segs: &[u32],
    files: &[Arc<dyn VFile>],
    mut checked: impl FnMut(usize) -> Option<index::Checked>,
    spill: spill::Bounds,
) -> Result<Survey, StoreError> {
    let mut state = State::default();
    let mut replay = spill::Replay::new(spill);
    let mut report = CheckReport::default();
    let mut versions = Vec::new();
    for (i, (&seg, file)) in segs.iter().zip(files).enumerate() {
        state.files.insert(seg, file.clone());
        let newest = i + 1 == segs.len();
        state.segs.entry(seg).or_default();
        // The newest segment is read whole, each put with its frame: spilled queues keep
        // where theirs are, as the running node does (see `spill::SegPuts`).
        state.keep_puts = newest;
        let mut apply = |p: frame::Placed<'_>| {
            let loc = Loc {
                seg,
                off: p.off,
                bytes: p.bytes,
                frame: p.frame,
            };
            replay.apply(&mut state, &p.change, loc);
        };
        if let Some(index) = checked(i) {
            let summary = index.hand(&mut apply);
            replay.end_frame(&mut state);
            let info = state.segs.entry(seg).or_default();
            info.len = summary.len;
            info.indexed = true;
            versions.push(Some(Version::V2));
            report.segments.push(SegmentReport {
                segment: seg,
                bytes: summary.len,
                frames: summary.frames,
                tail: Tail::Clean,
            });
            continue;
        }
        let bytes = file
            .read_all()
            .map_err(|e| io("reading", &seg_path(dir, seg), e))?;
        let mut scanned = frame::scan(&bytes, newest, apply);
        replay.end_frame(&mut state);
        if scanned.version.is_none() && !newest && scanned.tail == Tail::Clean {
            scanned.tail = Tail::Damaged("a sealed segment without a header".into());
        }
        state.segs.entry(seg).or_default().len = scanned.valid.max(MAGIC.len() as u64);
        versions.push(scanned.version);
        let damaged = matches!(scanned.tail, Tail::Damaged(_));
        report.segments.push(SegmentReport {
            segment: seg,
            bytes: scanned.valid,
            frames: scanned.frames,
            tail: scanned.tail,
        });
        if damaged {
            report.unread = segs[i + 1..].to_vec();
            break;
        }
    }
    state.spill_unreferenced();
    report.messages = state.messages.len();
    report.entries = state.entries.values().map(|q| q.len()).sum();
    report.records = state.records.values().map(|t| t.len()).sum();
    Ok(Survey {
        state,
        report,
        versions,
    })
}

/// Reads the log in `dir` without changing anything, and says what it holds and where it
/// is damaged (`trunkline store check`).
pub fn check(fs: &dyn Vfs, dir: &Path) -> Result<CheckReport, StoreError> {
    let (segs, _) = list(fs, dir)?;
    Ok(survey(fs, dir, &segs, false, spill::Bounds::default())?.report)
}

/// Makes segment `seg` durably: under a temporary name, header written and synced, then
/// renamed into place and the directory synced. Its name never exists without its header.
fn create_segment(
    fs: &dyn Vfs,
    dir: &Path,
    seg: u32,
    size: u64,
) -> Result<Box<dyn VFile>, StoreError> {
    let path = seg_path(dir, seg);
    let tmp = dir.join(format!("{seg:020}{NEW_SUFFIX}"));
    if fs.exists(&tmp) {
        fs.remove_file(&tmp).map_err(|e| io("removing", &tmp, e))?;
    }
    let f = fs.create_new(&tmp).map_err(|e| io("creating", &tmp, e))?;
    f.allocate(size);
    f.write_all_at(MAGIC, 0)
        .and_then(|()| f.sync_all())
        .map_err(|e| io("writing", &tmp, e))?;
    fs.rename(&tmp, &path)
        .and_then(|()| fs.sync_dir(dir))
        .map_err(|e| io("naming", &path, e))?;
    Ok(f)
}

/// What only the appending side touches.
struct Writer {
    file: Arc<dyn VFile>,
    seg: u32,
    /// Where the next frame goes in `seg`.
    len: u64,
    /// Records in `seg`.
    records: u64,
    /// The bytes of `seg` from the start of the block holding `len` up to `len`, which a
    /// direct write of the next frame writes again.
    tail: Vec<u8>,
    buf: Vec<u8>,
    direct_min: Option<usize>,
    failed: Option<String>,
    /// Whether the last attempt to start a new segment failed (logged once).
    rotate_failing: bool,
}

impl Writer {
    /// Writes go on at `len` of `seg`, in `file`, whose bytes up to there are `tail`'s.
    fn start(&mut self, seg: u32, file: Arc<dyn VFile>, len: u64, tail: Vec<u8>) {
        self.seg = seg;
        self.file = file;
        self.len = len;
        self.records = 0;
        self.tail = tail;
    }

    /// Keeps [`Writer::tail`] up to date once the frame at `buf[at..at + len]` is written.
    fn keep_tail(&mut self, at: usize, len: usize) {
        let keep = (self.len % BLOCK as u64) as usize;
        let frame = &self.buf[at..at + len];
        if keep <= len {
            self.tail.clear();
            self.tail.extend_from_slice(&frame[len - keep..]);
        } else {
            // The frame ends in the block it started in.
            self.tail.extend_from_slice(frame);
        }
    }
}

/// The bytes of `file` from the start of the block holding `len` up to `len`.
fn tail_of(file: &dyn VFile, len: u64, path: &Path) -> Result<Vec<u8>, StoreError> {
    let keep = len % BLOCK as u64;
    let mut tail = vec![0; keep as usize];
    file.read_exact_at(&mut tail, len - keep)
        .map_err(|e| io("reading", path, e))?;
    Ok(tail)
}

/// The log: the appending side under a mutex (held through the write and its sync), the
/// live state under a read-write lock (written only to apply a synced frame, so readers
/// never wait for a sync). Lock order: writer, then state.
struct Shared {
    fs: Arc<dyn Vfs>,
    dir: PathBuf,
    segment_bytes: u64,
    segment_records: u64,
    disk_budget: Option<u64>,
    /// Bytes the segments take on disk (the newest counted at its preallocated size).
    disk: Arc<AtomicU64>,
    writer: Mutex<Writer>,
    state: RwLock<State>,
    /// The frames read last (see [`read`]).
    frames: read::Frames,
    /// Wakes the compaction thread.
    wake: Condvar,
    stop: AtomicBool,
    /// One compaction at a time.
    compacting: Mutex<()>,
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Failed("log store lock poisoned".into())
}

impl Shared {
    fn writer(&self) -> Result<MutexGuard<'_, Writer>, StoreError> {
        self.writer.lock().map_err(poisoned)
    }

    fn state(&self) -> Result<RwLockReadGuard<'_, State>, StoreError> {
        self.state.read().map_err(poisoned)
    }

    /// Held by each step of compaction (and by a page-in that must not meet one).
    fn compacting(&self) -> Result<MutexGuard<'_, ()>, StoreError> {
        self.compacting.lock().map_err(poisoned)
    }

    fn state_mut(&self) -> Result<RwLockWriteGuard<'_, State>, StoreError> {
        self.state.write().map_err(poisoned)
    }

    /// Recounts the bytes the segments take on disk.
    fn count_disk(&self, st: &State) {
        let bytes: u64 = st
            .segs
            .iter()
            .map(|(s, i)| {
                if *s == st.newest {
                    i.len.max(self.segment_bytes)
                } else {
                    i.len
                }
            })
            .sum();
        self.disk.store(bytes, Ordering::Relaxed);
    }
}

/// A [`QueueStore`] on an append-only, segmented log.
pub struct LogStore {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    recovered: Option<Recovered>,
    /// Held while open (dropped after the compaction thread has stopped).
    _lock: Box<dyn Send + Sync>,
}

impl LogStore {
    /// Opens (or creates) the log in directory `dir`, cutting off a torn last frame.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, DEFAULT_SEGMENT_BYTES)
    }

    /// [`LogStore::open`] with segments closed at about `segment_bytes`.
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<Self, StoreError> {
        let options = LogOptions {
            segment_bytes,
            ..LogOptions::default()
        };
        Self::open_on(Arc::new(RealFs), dir, options)
    }

    /// Opens the log in `dir` on file system `fs`.
    pub fn open_on(fs: Arc<dyn Vfs>, dir: &Path, options: LogOptions) -> Result<Self, StoreError> {
        let segment_bytes = options.segment_bytes.max(4096);
        fs::create_dir_all(&*fs, dir).map_err(|e| io("creating", dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = fs.lock(&lock_path).map_err(|e| {
            StoreError::Engine(format!(
                "the log in {} is open in another process (a node already running on this \
                 data directory?): {e}",
                dir.display()
            ))
        })?;
        let (mut segs, leftovers) = list(&*fs, dir)?;
        for name in &leftovers {
            let path = dir.join(name);
            fs.remove_file(&path)
                .map_err(|e| io("removing", &path, e))?;
        }
        let Survey {
            mut state,
            report,
            versions,
        } = survey(
            &*fs,
            dir,
            &segs,
            true,
            spill::Bounds {
                queue: options.spill_entries,
                node: options.spill_node,
            },
        )?;
        let mut recovered = None;
        if let Some((seg, offset, why)) = report.damage() {
            if options.recover == Recover::Refuse {
                return Err(corrupt(format!(
                    "segment {} is damaged at offset {offset}: {why}. Nothing was changed; \
                     `trunkline store check` shows the damage, and `trunkline store recover` \
                     keeps what comes before it and drops the rest",
                    seg_path(dir, seg).display()
                )));
            }
            recovered = Some(truncate(&*fs, dir, seg, offset, why, &report)?);
            // What is left is a prefix of what was read.
            segs = list(&*fs, dir)?.0;
            state.segs.retain(|s, _| segs.contains(s));
        }
        // The newest segment: cut a torn frame off, drop it if it never got a header,
        // seal it if an earlier version wrote it; otherwise writing goes on in it.
        let mut writable = None;
        if let Some(&newest) = segs.last() {
            let scanned = report.segments.last().filter(|s| s.segment == newest);
            let version = versions.get(segs.len() - 1).copied().flatten();
            let valid = scanned.map_or(0, |s| s.bytes);
            let path = seg_path(dir, newest);
            let f = fs.open(&path).map_err(|e| io("opening", &path, e))?;
            match version {
                None => {
                    // All zeros: made by a version that named a segment before its header
                    // was durable. It holds nothing.
                    drop(f);
                    fs.remove_file(&path)
                        .and_then(|()| fs.sync_dir(dir))
                        .map_err(|e| io("removing", &path, e))?;
                    state.segs.remove(&newest);
                    segs.pop();
                }
                Some(v) => {
                    let torn = scanned.is_some_and(|s| s.tail == Tail::Torn);
                    if torn {
                        tracing::warn!(segment = %path.display(), offset = valid,
                            "cutting off a torn last frame (a crash while it was written; it was never acknowledged)");
                    }
                    if v == Version::V2 {
                        if torn || recovered.is_some() {
                            // Zero what follows, so no stale byte follows the next frame.
                            f.set_len(valid)
                                .and_then(|()| {
                                    f.allocate(segment_bytes);
                                    f.sync_all()
                                })
                                .map_err(|e| io("cutting", &path, e))?;
                        }
                        writable = Some((
                            newest,
                            Arc::<dyn VFile>::from(f),
                            valid.max(MAGIC.len() as u64),
                        ));
                    } else {
                        f.set_len(valid)
                            .and_then(|()| f.sync_all())
                            .map_err(|e| io("sealing", &path, e))?;
                    }
                }
            }
        }
        let (seg, file, len) = match writable {
            Some(w) => w,
            None => {
                let next = segs.last().map_or(1, |s| s + 1);
                let f: Arc<dyn VFile> = Arc::from(create_segment(&*fs, dir, next, segment_bytes)?);
                state.segs.insert(
                    next,
                    SegInfo {
                        len: MAGIC.len() as u64,
                        ..SegInfo::default()
                    },
                );
                (next, f, MAGIC.len() as u64)
            }
        };
        let tail = tail_of(&*file, len, &seg_path(dir, seg))?;
        let records = state.segs.get(&seg).map_or(0, |i| i.records);
        state.files.retain(|s, _| segs.contains(s));
        state.files.insert(seg, file.clone());
        state.newest = seg;
        state.keep_puts = true;
        let shared = Arc::new(Shared {
            fs,
            dir: dir.to_owned(),
            segment_bytes,
            segment_records: options.segment_records.max(1),
            disk_budget: options.disk_budget,
            disk: Arc::new(AtomicU64::new(0)),
            writer: Mutex::new(Writer {
                file,
                seg,
                len,
                records,
                tail,
                buf: Vec::with_capacity(64 << 10),
                direct_min: options.direct_write_min,
                failed: None,
                rotate_failing: false,
            }),
            state: RwLock::new(state),
            frames: read::Frames::default(),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            compacting: Mutex::new(()),
        });
        shared.count_disk(&*shared.state()?);
        let thread = if options.background_compaction {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("trunkline-compact".into())
                .spawn(move || compact::run(&shared))
                .ok()
        } else {
            None
        };
        Ok(LogStore {
            shared,
            thread,
            recovered,
            _lock: lock,
        })
    }

    /// What a truncating recovery dropped when the store opened, if it did.
    pub fn recovered(&self) -> Option<&Recovered> {
        self.recovered.as_ref()
    }

    /// Segment numbers on disk, oldest first (for tests and diagnostics).
    pub fn segments(&self) -> Result<Vec<u32>, StoreError> {
        Ok(self.shared.state()?.segs.keys().copied().collect())
    }

    /// Bytes in the log, and bytes of it still live.
    pub fn usage(&self) -> Result<(u64, u64), StoreError> {
        let st = self.shared.state()?;
        Ok((st.total_bytes(), st.live_bytes()))
    }

    /// Message `id` read back from its place in the log (a positioned read), or `None` if
    /// there is no such message.
    pub fn read_message(&self, id: u64) -> Result<Option<Arc<StoredMessage>>, StoreError> {
        // The read happens under the state's read lock: compaction swaps a file and the
        // locations into it under the write lock, so they always agree here.
        let st = self.shared.state()?;
        match st.messages.get(&id) {
            Some(loc) => {
                read::message(&self.shared.dir, &st, &self.shared.frames, id, *loc).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Reclaims space now, on this thread, until there is nothing worth reclaiming;
    /// returns the segments rewritten or deleted.
    pub fn compact(&self) -> Result<usize, StoreError> {
        compact::until_done(&self.shared)
    }

    /// Writes the index file of every sealed segment that lacks one, now, on this thread
    /// (the background thread does it too); returns how many it wrote.
    pub fn write_indexes(&self) -> Result<usize, StoreError> {
        compact::index_sealed(&self.shared, false)
    }
}

/// Cuts the log at the first damage: the damaged segment keeps what precedes it, later
/// segments go.
fn truncate(
    fs: &dyn Vfs,
    dir: &Path,
    seg: u32,
    offset: u64,
    why: &str,
    report: &CheckReport,
) -> Result<Recovered, StoreError> {
    let path = seg_path(dir, seg);
    let f = fs.open(&path).map_err(|e| io("opening", &path, e))?;
    let before = f.len().map_err(|e| io("reading", &path, e))?;
    let mut dropped_bytes = before.saturating_sub(offset);
    if offset < MAGIC.len() as u64 {
        // Nothing of it is readable: it goes too.
        drop(f);
        fs.remove_file(&path)
            .map_err(|e| io("removing", &path, e))?;
    } else {
        f.set_len(offset)
            .and_then(|()| f.sync_all())
            .map_err(|e| io("cutting", &path, e))?;
    }
    for &later in &report.unread {
        let p = seg_path(dir, later);
        dropped_bytes += fs.open(&p).and_then(|f| f.len()).unwrap_or(0);
        fs.remove_file(&p).map_err(|e| io("removing", &p, e))?;
    }
    fs.sync_dir(dir).map_err(|e| io("syncing", dir, e))?;
    let recovered = Recovered {
        segment: seg,
        offset,
        why: why.to_owned(),
        dropped_bytes,
        dropped_segments: report.unread.clone(),
    };
    tracing::warn!(segment = %path.display(), offset, dropped_bytes,
        dropped_segments = ?recovered.dropped_segments, cause = why,
        "recovery: the log was cut at its first damage");
    Ok(recovered)
}

/// Appends `ops` as one synced frame and applies them to the live state.
///
/// A frame of at least [`LogOptions::direct_write_min`] bytes is written past the page
/// cache ([`VFile::write_blocks_at`]): as whole blocks from the one holding its start,
/// whose bytes already written ([`Writer::tail`]) are written again as they are, and
/// zeros after its end (where the file holds zeros already).
fn append(shared: &Shared, w: &mut Writer, ops: &[Op]) -> Result<(), StoreError> {
    if let Some(cause) = &w.failed {
        return Err(StoreError::Failed(cause.clone()));
    }
    let at = w.len;
    let hint = frame::size_hint(ops);
    let direct = w.direct_min.is_some_and(|min| hint >= min);
    w.buf.clear();
    let start = if direct {
        // Room for the alignment, the tail, the frame and the zeros after it.
        w.buf.reserve(2 * BLOCK + w.tail.len() + hint);
        let pad = w.buf.as_ptr().align_offset(BLOCK);
        w.buf.resize(pad, 0);
        w.buf.extend_from_slice(&w.tail);
        pad
    } else {
        w.buf.reserve(hint);
        0
    };
    let frame_at = w.buf.len();
    let placed = frame::encode(ops, &mut w.buf)?;
    let frame_len = w.buf.len() - frame_at;
    if at + frame_len as u64 > u64::from(u32::MAX) {
        return Err(StoreError::Engine(
            "the newest segment would pass 4 GiB; lower [store] segment_mib".into(),
        ));
    }
    let written = if direct {
        let blocks = (w.buf.len() - start).next_multiple_of(BLOCK);
        w.buf.resize(start + blocks, 0);
        w.file
            .write_blocks_at(&w.buf[start..], at - w.tail.len() as u64)
    } else {
        w.file.write_all_at(&w.buf[frame_at..], at)
    };
    if let Err(e) = written.and_then(|()| w.file.sync_data()) {
        // The tail of the file is unknown now: refuse every later write. A restart cuts
        // the torn frame off.
        let cause = format!("writing segment {}: {e}", w.seg);
        w.failed = Some(cause.clone());
        return Err(StoreError::Failed(cause));
    }
    w.len += frame_len as u64;
    w.keep_tail(frame_at, frame_len);
    let seg = w.seg;
    let mut st = shared.state_mut()?;
    st.segs.entry(seg).or_default().len = w.len;
    w.records += ops.len() as u64;
    for (op, (off, bytes)) in ops.iter().zip(placed) {
        let loc = Loc {
            seg,
            off: at as u32 + off,
            bytes,
            frame: at as u32,
        };
        st.apply(&op.into(), loc);
    }
    st.spill_messages(ops);
    drop(st);
    if w.buf.capacity() > 16 << 20 {
        w.buf = Vec::with_capacity(64 << 10);
    }
    Ok(())
}

/// Starts a new segment once the newest is full. A failure to make the new one is not a
/// failed commit (the commit is durable already): writing goes on in the full segment
/// and the next commit tries again. A failure to sync the full one is fatal.
fn rotate_if_full(shared: &Shared, w: &mut Writer) -> Result<(), StoreError> {
    let full = w.len >= shared.segment_bytes || w.records >= shared.segment_records;
    if !full || w.failed.is_some() {
        return Ok(());
    }
    let path = seg_path(&shared.dir, w.seg);
    w.file.end_block_writes();
    // Give back what was preallocated past the last frame.
    if let Err(e) = w.file.set_len(w.len).and_then(|()| w.file.sync_all()) {
        w.failed = Some(format!("sealing {}: {e}", path.display()));
        return Ok(());
    }
    let next = w.seg + 1;
    match create_segment(&*shared.fs, &shared.dir, next, shared.segment_bytes) {
        Ok(file) => {
            let file: Arc<dyn VFile> = Arc::from(file);
            w.start(next, file.clone(), MAGIC.len() as u64, MAGIC.to_vec());
            w.rotate_failing = false;
            let mut st = shared.state_mut()?;
            st.segs.insert(
                next,
                SegInfo {
                    len: MAGIC.len() as u64,
                    ..SegInfo::default()
                },
            );
            st.files.insert(next, file);
            st.newest = next;
            // What spilled queues keep of their puts covers the newest two segments at
            // most (the background thread indexes the rest): memory stays bounded however
            // far indexing lags.
            for s in st.spilled.values_mut() {
                s.forget_puts_before(next.saturating_sub(1));
            }
        }
        Err(e) => {
            if !w.rotate_failing {
                tracing::warn!(cause = %e, "cannot start a new log segment; writing on in the full one");
            }
            w.rotate_failing = true;
        }
    }
    Ok(())
}

impl QueueStore for LogStore {
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let shared = &*self.shared;
        let mut w = shared.writer()?;
        append(shared, &mut w, ops)?;
        rotate_if_full(shared, &mut w)?;
        drop(w);
        let st = shared.state()?;
        shared.count_disk(&st);
        if compact::worth_it(shared, &st) {
            shared.wake.notify_one();
        }
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(self.shared.state()?.snapshot())
    }

    fn read_message(&self, id: u64) -> Result<Option<Arc<StoredMessage>>, StoreError> {
        LogStore::read_message(self, id)
    }

    fn disk_gauge(&self) -> Option<Arc<AtomicU64>> {
        Some(self.shared.disk.clone())
    }

    fn spill(&self, queue: &str, from_seq: u64) -> bool {
        spill::spill(&self.shared, queue, from_seq).is_ok()
    }

    fn page_in(&self, queue: &str, want: usize) -> Result<Vec<Paged>, StoreError> {
        spill::page_in(&self.shared, queue, want)
    }

    fn unspill(&self, queue: &str) -> bool {
        spill::unspill(&self.shared, queue).unwrap_or(false)
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long the compaction thread sleeps when nothing wakes it.
const IDLE: Duration = Duration::from_secs(1);
#[cfg(test)]
mod tests;
