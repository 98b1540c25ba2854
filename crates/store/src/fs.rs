//! The file operations the store makes, behind a trait.
//!
//! [`Vfs`] is every call the log engine (and the node's key files) make on the file
//! system: so few that a test can put [`crate::simfs::SimFs`] underneath, a file system
//! that forgets, at a simulated power loss, whatever was not synced. [`RealFs`] is the
//! real one, used everywhere else.
//!
//! What "synced" means here is what Linux promises, and no more:
//! - a file's data and size are durable once `sync_data` (or `sync_all`) returns;
//! - a directory entry (a created, renamed or removed name) is durable once the directory
//!   itself is synced, not before, whatever happened to the file's contents.
//!
//! [`write_file`] and [`create_dir_all`] are the durable versions of the std calls of the
//! same names, written once over the trait.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// An open file: positioned reads and writes, syncs, size changes.
pub trait VFile: Send + Sync {
    /// Current size in bytes.
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Fills `buf` from offset `off`; an error if the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    /// Writes all of `buf` at offset `off`.
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()>;
    /// Writes all of `buf` at `off`, past the page cache where the file system allows it
    /// (`O_DIRECT`: the device reads the bytes from `buf`, and the kernel copies nothing).
    /// Only worth it for whole [`BLOCK`]s from a buffer aligned to [`BLOCK`] at an offset
    /// that is a multiple of it; anything else is written as [`VFile::write_all_at`] does.
    /// Durable only once synced, like any write.
    fn write_blocks_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.write_all_at(buf, off)
    }
    /// No more block writes are coming (the segment is sealed): lets go of what was kept
    /// for them (a real file's second descriptor), so that a sealed segment holds one.
    fn end_block_writes(&self) {}
    /// Makes the file's data (and size) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and metadata durable.
    fn sync_all(&self) -> io::Result<()>;
    /// Cuts or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves space up to `len` bytes (zeros) so that writing there later changes no
    /// metadata. Best effort: a file system without `fallocate` just grows on write.
    fn allocate(&self, len: u64);

    /// The whole file.
    fn read_all(&self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.len()?).map_err(io::Error::other)?;
        let mut buf = vec![0; len];
        self.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }
}

/// A file system: names in directories, and files to open.
pub trait Vfs: Send + Sync + 'static {
    /// Creates `dir` if it is missing; not durable by itself (see [`create_dir_all`]).
    fn create_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` names something.
    fn exists(&self, path: &Path) -> bool;
    /// The names in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn VFile>>;
    /// Creates a file that must not exist yet, readable and writable by its owner only.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VFile>>;
    /// Renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created if missing), held until the returned
    /// guard is dropped; fails at once if another process holds it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Send + Sync>>;
}

/// The unit of [`VFile::write_blocks_at`]: a page, which covers the logical block size
/// of every device Linux writes to directly.
pub const BLOCK: usize = 4096;

/// Whether `buf` and `off` are as [`VFile::write_blocks_at`] needs them.
fn is_block_aligned(buf: &[u8], off: u64) -> bool {
    (buf.as_ptr() as usize).is_multiple_of(BLOCK)
        && buf.len().is_multiple_of(BLOCK)
        && off.is_multiple_of(BLOCK as u64)
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

struct RealFile {
    file: std::fs::File,
    /// The same file opened again with `O_DIRECT` for block writes.
    direct: Mutex<Direct>,
}

enum Direct {
    /// Not asked for yet, or let go ([`VFile::end_block_writes`]).
    Closed,
    Open(std::fs::File),
    /// The file system refused it (tmpfs before Linux 6.6, some FUSE file systems), or a
    /// direct write as invalid: block writes go through the page cache.
    Refused,
}

impl RealFile {
    fn new(file: std::fs::File) -> Self {
        RealFile {
            file,
            direct: Mutex::new(Direct::Closed),
        }
    }
}

impl VFile for RealFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, off)
    }
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.file, buf, off)
    }
    fn write_blocks_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        if !is_block_aligned(buf, off) {
            return self.write_all_at(buf, off);
        }
        let mut direct = self.direct.lock().unwrap_or_else(|p| p.into_inner());
        if let Direct::Closed = *direct {
            // A new open file description (not a dup, which would share the flag).
            *direct = match OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                .open(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
            {
                Ok(f) => Direct::Open(f),
                Err(_) => Direct::Refused,
            };
        }
        let Direct::Open(f) = &*direct else {
            return self.write_all_at(buf, off);
        };
        match FileExt::write_all_at(f, buf, off) {
            // Alignment the device does not take: nothing was written.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                tracing::info!(error = %e, "direct writes refused; writing through the page cache");
                *direct = Direct::Refused;
                self.write_all_at(buf, off)
            }
            other => other,
        }
    }
    fn end_block_writes(&self) {
        let mut direct = self.direct.lock().unwrap_or_else(|p| p.into_inner());
        if let Direct::Open(_) = *direct {
            *direct = Direct::Closed;
        }
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn allocate(&self, len: u64) {
        let _ = rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), 0, len);
    }
}

impl Vfs for RealFs {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
            other => other,
        }
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn VFile>> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(RealFile::new(f)))
    }
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(Box::new(RealFile::new(f)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Send + Sync>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{} is locked by another process ({e})", path.display()),
                )
            },
        )?;
        Ok(Box::new(f))
    }
}

/// The directory a path is in (`.` for a bare name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Bytes free for an unprivileged process on the file system holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Creates `dir` and any missing parents, durably: each directory created is synced into
/// its parent before this returns, so a power loss cannot take back a directory that a
/// caller went on to fill.
pub fn create_dir_all(fs: &dyn Vfs, dir: &Path) -> io::Result<()> {
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut at = Some(dir);
    while let Some(p) = at.filter(|p| !p.as_os_str().is_empty() && !fs.exists(p)) {
        missing.push(p.to_owned());
        at = p.parent();
    }
    for p in missing.iter().rev() {
        fs.create_dir(p)?;
        fs.sync_dir(parent(p))?;
    }
    Ok(())
}

/// Replaces the file at `path` with `contents`, atomically and durably, readable by its
/// owner only: written to a temporary name, synced, renamed over `path`, and the directory
/// synced. A power loss leaves the old file or the new one, never a mix or nothing.
pub fn write_file(fs: &dyn Vfs, path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    if fs.exists(&tmp) {
        fs.remove_file(&tmp)?;
    }
    let f = fs.create_new(&tmp)?;
    f.write_all_at(contents, 0)?;
    f.sync_all()?;
    drop(f);
    fs.rename(&tmp, path)?;
    fs.sync_dir(parent(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_writes_read_back_aligned_or_not() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let f = RealFs.create_new(&dir.path().join("f"))?;
        let mut buf = vec![0u8; 3 * BLOCK];
        let pad = buf.as_ptr().align_offset(BLOCK);
        let blocks = &mut buf[pad..pad + 2 * BLOCK];
        blocks
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        f.write_blocks_at(blocks, BLOCK as u64)?;
        f.sync_data()?;
        // Not aligned: through the page cache, over part of what went direct.
        f.write_blocks_at(b"abc", BLOCK as u64 + 1)?;
        f.end_block_writes();
        f.write_blocks_at(&blocks[..BLOCK], 3 * BLOCK as u64)?;
        let mut back = vec![0; 4 * BLOCK];
        f.read_exact_at(&mut back, 0)?;
        assert!(back[..BLOCK].iter().all(|&b| b == 0));
        assert_eq!(back[BLOCK], 0);
        assert_eq!(&back[BLOCK + 1..BLOCK + 4], b"abc");
        assert_eq!(&back[BLOCK + 4..3 * BLOCK], &blocks[4..]);
        assert_eq!(&back[3 * BLOCK..], &blocks[..BLOCK]);
        Ok(())
    }

    #[test]
    fn write_file_replaces_and_keeps_the_file_private() -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a/b/key");
        create_dir_all(&RealFs, parent(&path))?;
        write_file(&RealFs, &path, b"one")?;
        write_file(&RealFs, &path, b"two")?;
        assert_eq!(std::fs::read(&path)?, b"two");
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(RealFs.list(parent(&path))?, vec!["key".to_string()]);
        Ok(())
    }
}
