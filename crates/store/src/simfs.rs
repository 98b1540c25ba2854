//! A file system in memory that can lose power, for testing what the store promises.
//!
//! [`SimFs`] keeps two versions of everything: what a program sees now, and what would be
//! left after a power loss (what was synced). Between the two sit the changes made since
//! the last sync: writes to a file (and size changes, including the space `fallocate`
//! reserves) wait for `sync_data`/`sync_all` of that file; created, renamed and removed
//! names wait for a sync of their directory. Off-the-shelf simulators tend to forget the
//! last two; a store that forgets them loses files.
//!
//! A test arms a crash point ([`SimFs::crash_after`]: the n-th change from now fails, and
//! so does every call after it, as if the machine stopped there), runs a workload, then
//! calls [`SimFs::power_loss`], which decides at random (from a seed) what of the unsynced
//! changes reached the disk: each 512-byte sector of each pending write, each size change,
//! each directory change independently, so writes can be torn and reordered as a disk
//! cache would. After that the file system works again, holding only what survived, and
//! handles opened before fail.
//!
//! Every call that changes something counts as a step ([`SimFs::steps`]), so a scripted
//! run can be repeated with a crash before each of its steps in turn.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fs::{VFile, Vfs};

/// Size of a sector, the unit in which an unsynced write reaches the disk or not.
const SECTOR: u64 = 512;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Node {
    File(u64),
    Dir,
}

enum Pending {
    Write { off: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Default)]
struct Inode {
    now: Vec<u8>,
    synced: Vec<u8>,
    pending: Vec<Pending>,
}

enum DirOp {
    Put(String, Node),
    Remove(String),
    Rename(String, String),
}

#[derive(Default)]
struct Dir {
    now: BTreeMap<String, Node>,
    synced: BTreeMap<String, Node>,
    pending: Vec<DirOp>,
}

fn apply_dir_op(entries: &mut BTreeMap<String, Node>, op: &DirOp) {
    match op {
        DirOp::Put(name, node) => {
            entries.insert(name.clone(), *node);
        }
        DirOp::Remove(name) => {
            entries.remove(name);
        }
        DirOp::Rename(from, to) => {
            if let Some(node) = entries.remove(from) {
                entries.insert(to.clone(), node);
            }
        }
    }
}

fn write_into(data: &mut Vec<u8>, off: u64, bytes: &[u8]) {
    let (off, end) = (off as usize, off as usize + bytes.len());
    if data.len() < end {
        data.resize(end, 0);
    }
    data[off..end].copy_from_slice(bytes);
}

/// xorshift64*: enough randomness to pick what survives, reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn coin(&mut self) -> bool {
        self.next() >> 63 == 1
    }
}

/// A fault a test sets on the files whose names contain a pattern.
#[derive(Clone)]
enum Fault {
    /// Creating or changing them fails, as on a full disk.
    Fail,
    /// Creating or changing them waits until the [`Held`] guard is dropped.
    Hold(Arc<(Mutex<bool>, std::sync::Condvar)>),
}

/// Keeps changes to some files waiting (see [`SimFs::hold`]) until dropped.
pub struct Held(Arc<(Mutex<bool>, std::sync::Condvar)>);

impl Drop for Held {
    fn drop(&mut self) {
        let (released, cv) = &*self.0;
        *released.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }
}

#[derive(Default)]
struct Sim {
    faults: Vec<(String, Fault)>,
    /// The path each file was last given (faults follow renames).
    names: HashMap<u64, String>,
    inodes: HashMap<u64, Inode>,
    dirs: HashMap<PathBuf, Dir>,
    next_inode: u64,
    steps: u64,
    crash_at: Option<u64>,
    down: bool,
    /// Bumped at every power loss; handles from an earlier epoch no longer work.
    epoch: u64,
}

fn lost() -> io::Error {
    io::Error::other("simulated power loss")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

fn split(path: &Path) -> io::Result<(&Path, String)> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name.to_string_lossy().into_owned())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )),
    }
}

/// Applies the faults set on `name`: fails, or waits while held.
fn faults(sim: &Mutex<Sim>, name: &str) -> io::Result<()> {
    let matching: Vec<Fault> = sim
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .faults
        .iter()
        .filter(|(pattern, _)| name.contains(pattern.as_str()))
        .map(|(_, f)| f.clone())
        .collect();
    for f in matching {
        match f {
            Fault::Fail => {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!("{name}: no space left (simulated)"),
                ))
            }
            Fault::Hold(gate) => {
                let (released, cv) = &*gate;
                let mut r = released.lock().unwrap_or_else(|p| p.into_inner());
                while !*r {
                    r = cv.wait(r).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }
    Ok(())
}

impl Sim {
    fn alive(&self, epoch: u64) -> io::Result<()> {
        if self.down || epoch != self.epoch {
            return Err(lost());
        }
        Ok(())
    }

    /// Counts a change, failing it (and powering off) at the armed crash point.
    fn step(&mut self) -> io::Result<()> {
        self.alive(self.epoch)?;
        self.steps += 1;
        if self.crash_at == Some(self.steps) {
            self.down = true;
            return Err(lost());
        }
        Ok(())
    }

    fn dir(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs.get_mut(dir).ok_or_else(|| not_found(dir))
    }

    fn lookup(&self, path: &Path) -> Option<Node> {
        let (dir, name) = split(path).ok()?;
        self.dirs.get(dir)?.now.get(&name).copied()
    }

    fn file(&self, path: &Path) -> io::Result<u64> {
        match self.lookup(path) {
            Some(Node::File(ino)) => Ok(ino),
            _ => Err(not_found(path)),
        }
    }

    fn inode(&mut self, ino: u64, epoch: u64) -> io::Result<&mut Inode> {
        self.alive(epoch)?;
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| io::Error::other("stale inode"))
    }

    fn power_loss(&mut self, seed: u64) {
        let mut rng = Rng::new(seed);
        let mut inos: Vec<u64> = self.inodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let Some(inode) = self.inodes.get_mut(&ino) else {
                continue;
            };
            for p in std::mem::take(&mut inode.pending) {
                match p {
                    Pending::SetLen(len) => {
                        if rng.coin() {
                            inode.synced.resize(len as usize, 0);
                        }
                    }
                    Pending::Write { off, bytes } => {
                        // Sector by sector: a write may be torn anywhere, in any order.
                        let end = off + bytes.len() as u64;
                        let mut at = off;
                        while at < end {
                            let next = ((at / SECTOR + 1) * SECTOR).min(end);
                            if rng.coin() {
                                let part = &bytes[(at - off) as usize..(next - off) as usize];
                                write_into(&mut inode.synced, at, part);
                            }
                            at = next;
                        }
                    }
                }
            }
            inode.now = inode.synced.clone();
        }
        let mut paths: Vec<PathBuf> = self.dirs.keys().cloned().collect();
        paths.sort();
        for path in &paths {
            let Some(dir) = self.dirs.get_mut(path) else {
                continue;
            };
            for op in std::mem::take(&mut dir.pending) {
                if rng.coin() {
                    apply_dir_op(&mut dir.synced, &op);
                }
            }
            dir.now = dir.synced.clone();
        }
        // A directory whose own name did not survive is gone, with all below it; so is a
        // file no surviving directory names.
        let roots: Vec<PathBuf> = paths
            .iter()
            .filter(|p| {
                p.parent()
                    .is_none_or(|parent| !self.dirs.contains_key(parent))
            })
            .cloned()
            .collect();
        let mut reachable: HashMap<PathBuf, ()> = HashMap::new();
        let mut stack = roots;
        let mut live_inodes = Vec::new();
        while let Some(p) = stack.pop() {
            if let Some(dir) = self.dirs.get(&p) {
                for (name, node) in &dir.now {
                    match node {
                        Node::Dir => stack.push(p.join(name)),
                        Node::File(ino) => live_inodes.push(*ino),
                    }
                }
            }
            reachable.insert(p, ());
        }
        self.dirs.retain(|p, _| reachable.contains_key(p));
        let keep: std::collections::HashSet<u64> = live_inodes.into_iter().collect();
        self.inodes.retain(|ino, _| keep.contains(ino));
        self.down = false;
        self.crash_at = None;
        self.epoch += 1;
    }
}

/// The simulated file system; clones share it.
#[derive(Clone)]
pub struct SimFs {
    sim: Arc<Mutex<Sim>>,
}

impl SimFs {
    /// A file system holding only the directory `root` (synced).
    pub fn new(root: &Path) -> Self {
        let mut sim = Sim::default();
        sim.dirs.insert(root.to_owned(), Dir::default());
        SimFs {
            sim: Arc::new(Mutex::new(sim)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sim> {
        self.sim.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes made so far.
    pub fn steps(&self) -> u64 {
        self.lock().steps
    }

    /// Arms a crash: the `n`-th change from now (1 = the next) fails, and so does every
    /// call after it until [`SimFs::power_loss`].
    pub fn crash_after(&self, n: u64) {
        let mut s = self.lock();
        s.crash_at = Some(s.steps + n.max(1));
    }

    /// Whether the armed crash has happened.
    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    /// Loses power: of every change not yet synced, keeps a random part chosen by `seed`,
    /// forgets the rest, and comes back up.
    pub fn power_loss(&self, seed: u64) {
        self.lock().power_loss(seed);
    }

    /// From now on, creating or changing a file whose name contains `pattern` fails with
    /// "no space left".
    pub fn fail(&self, pattern: &str) {
        self.lock().faults.push((pattern.to_owned(), Fault::Fail));
    }

    /// From now on, creating or changing a file whose name contains `pattern` waits until
    /// the returned guard is dropped.
    pub fn hold(&self, pattern: &str) -> Held {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        self.lock()
            .faults
            .push((pattern.to_owned(), Fault::Hold(gate.clone())));
        Held(gate)
    }

    /// Takes back every fault set with [`SimFs::fail`] or [`SimFs::hold`].
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// The bytes of a file as a program would read them now (for tests that damage or
    /// inspect files); `None` if it does not exist.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        let ino = s.file(path).ok()?;
        s.inodes.get(&ino).map(|i| i.now.clone())
    }

    /// Replaces a file's bytes, synced, as damage on the disk would (for tests).
    pub fn damage(&self, path: &Path, bytes: Vec<u8>) -> io::Result<()> {
        let mut s = self.lock();
        let ino = s.file(path)?;
        let epoch = s.epoch;
        let inode = s.inode(ino, epoch)?;
        inode.now = bytes.clone();
        inode.synced = bytes;
        inode.pending.clear();
        Ok(())
    }
}

struct SimFile {
    sim: Arc<Mutex<Sim>>,
    ino: u64,
    epoch: u64,
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, Sim> {
        self.sim.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn change(&self, f: impl FnOnce(&mut Inode)) -> io::Result<()> {
        let name = self
            .lock()
            .names
            .get(&self.ino)
            .cloned()
            .unwrap_or_default();
        faults(&self.sim, &name)?;
        let mut s = self.lock();
        s.alive(self.epoch)?;
        s.step()?;
        f(s.inode(self.ino, self.epoch)?);
        Ok(())
    }
}

impl VFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().inode(self.ino, self.epoch)?.now.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let mut s = self.lock();
        let data = &s.inode(self.ino, self.epoch)?.now;
        let src = usize::try_from(off)
            .ok()
            .and_then(|o| data.get(o..o + buf.len()))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.change(|i| {
            write_into(&mut i.now, off, buf);
            i.pending.push(Pending::Write {
                off,
                bytes: buf.to_vec(),
            });
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.change(|i| {
            i.synced = i.now.clone();
            i.pending.clear();
        })
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.change(|i| {
            i.now.resize(len as usize, 0);
            i.pending.push(Pending::SetLen(len));
        })
    }

    fn allocate(&self, len: u64) {
        let _ = self.change(|i| {
            if (i.now.len() as u64) < len {
                i.now.resize(len as usize, 0);
                i.pending.push(Pending::SetLen(len));
            }
        });
    }
}

impl Vfs for SimFs {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if s.dirs.contains_key(dir) {
            return s.alive(s.epoch);
        }
        s.step()?;
        let (parent, name) = split(dir)?;
        let p = s.dir(parent)?;
        p.now.insert(name.clone(), Node::Dir);
        p.pending.push(DirOp::Put(name, Node::Dir));
        s.dirs.insert(dir.to_owned(), Dir::default());
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let s = self.lock();
        s.dirs.contains_key(path) || s.lookup(path).is_some()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut s = self.lock();
        s.alive(s.epoch)?;
        Ok(s.dir(dir)?.now.keys().cloned().collect())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn VFile>> {
        let s = self.lock();
        s.alive(s.epoch)?;
        let ino = s.file(path)?;
        Ok(Box::new(SimFile {
            sim: self.sim.clone(),
            ino,
            epoch: s.epoch,
        }))
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VFile>> {
        faults(&self.sim, &path.to_string_lossy())?;
        let mut s = self.lock();
        s.step()?;
        let (parent, name) = split(path)?;
        let ino = s.next_inode;
        let dir = s.dir(parent)?;
        if dir.now.contains_key(&name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        dir.now.insert(name.clone(), Node::File(ino));
        dir.pending.push(DirOp::Put(name, Node::File(ino)));
        s.next_inode += 1;
        s.inodes.insert(ino, Inode::default());
        s.names.insert(ino, path.to_string_lossy().into_owned());
        Ok(Box::new(SimFile {
            sim: self.sim.clone(),
            ino,
            epoch: s.epoch,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        faults(&self.sim, &from.to_string_lossy())?;
        faults(&self.sim, &to.to_string_lossy())?;
        let mut s = self.lock();
        s.step()?;
        let ((dir, a), (other, b)) = (split(from)?, split(to)?);
        if dir != other {
            return Err(io::Error::other(
                "renames across directories are not simulated",
            ));
        }
        let d = s.dir(dir)?;
        if !d.now.contains_key(&a) {
            return Err(not_found(from));
        }
        let op = DirOp::Rename(a, b);
        apply_dir_op(&mut d.now, &op);
        d.pending.push(op);
        if let Some(Node::File(ino)) = s.lookup(to) {
            s.names.insert(ino, to.to_string_lossy().into_owned());
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        faults(&self.sim, &path.to_string_lossy())?;
        let mut s = self.lock();
        s.step()?;
        s.file(path)?;
        let (dir, name) = split(path)?;
        let d = s.dir(dir)?;
        d.now.remove(&name);
        d.pending.push(DirOp::Remove(name));
        Ok(())
    }

    fn lock(&self, _path: &Path) -> io::Result<Box<dyn Send + Sync>> {
        // One process: nothing to lock against.
        Ok(Box::new(()))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.step()?;
        let d = s.dir(dir)?;
        d.synced = d.now.clone();
        d.pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs;

    const ROOT: &str = "/sim";

    #[test]
    fn what_was_not_synced_may_be_lost_and_what_was_is_kept() -> io::Result<()> {
        let root = Path::new(ROOT);
        let mut lost_name = false;
        let mut lost_data = false;
        for seed in 0..64 {
            let sfs = SimFs::new(root);
            let a = sfs.create_new(&root.join("a"))?;
            a.write_all_at(b"kept", 0)?;
            a.sync_data()?;
            sfs.sync_dir(root)?;
            a.write_all_at(&[7; 2048], 4)?;
            let b = sfs.create_new(&root.join("b"))?;
            b.write_all_at(b"synced but never named", 0)?;
            b.sync_all()?;
            sfs.power_loss(seed);
            assert!(a.len().is_err(), "a handle outlived the power loss");
            let after = sfs
                .contents(&root.join("a"))
                .expect("a was synced into its directory");
            assert_eq!(&after[..4], b"kept");
            lost_data |= after.len() < 2052 || after[4..].iter().any(|b| *b != 7);
            lost_name |= !sfs.exists(&root.join("b"));
        }
        assert!(lost_data, "unsynced writes always survived");
        assert!(lost_name, "an unsynced directory entry always survived");
        Ok(())
    }

    #[test]
    fn write_file_survives_any_crash_whole_or_not_at_all() -> io::Result<()> {
        let root = Path::new(ROOT);
        let dir = root.join("data");
        let key = dir.join("token.key");
        let mut crashed = 0;
        for n in 1..20 {
            for seed in 0..8 {
                let sfs = SimFs::new(root);
                fs::create_dir_all(&sfs, &dir)?;
                fs::write_file(&sfs, &key, b"old")?;
                sfs.crash_after(n);
                let done = fs::write_file(&sfs, &key, b"new").is_ok();
                crashed += usize::from(!done);
                sfs.power_loss(seed);
                let got = sfs.contents(&key);
                if done {
                    assert_eq!(got.as_deref(), Some(&b"new"[..]), "step {n} seed {seed}");
                } else {
                    assert!(
                        matches!(got.as_deref(), Some(b"old") | Some(b"new")),
                        "step {n} seed {seed}: {got:?}"
                    );
                }
            }
        }
        assert!(crashed > 0);
        Ok(())
    }

    #[test]
    fn a_directory_created_durably_survives() -> io::Result<()> {
        let root = Path::new(ROOT);
        for seed in 0..16 {
            let sfs = SimFs::new(root);
            fs::create_dir_all(&sfs, &root.join("x/y/z"))?;
            sfs.power_loss(seed);
            assert!(sfs.exists(&root.join("x/y/z")), "seed {seed}");
        }
        Ok(())
    }
}
