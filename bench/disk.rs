//! Where a server keeps its data: the directory, and the file system and device it is on.
//!
//! The file system decides what an fsync costs, and so most of a durable figure: systems
//! compared side by side must keep their data on the same one. Each durable run reports
//! its system's [`Placement`] (in its JSON as `data`), learnt from the server where it can
//! be: the directory the bench gave Trunkline, the `store_dir` NATS reports on `/varz`,
//! the directory of the message store file RabbitMQ holds open. `bench/compare.sh` then
//! checks that every system's device is the same.
//!
//! The device is `st_dev` as `major:minor`; the file system type and the mount's source
//! come from `/proc/self/mountinfo`, from the mount of that device holding the path.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};

/// A data directory and what it is stored on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The directory, canonical.
    pub path: PathBuf,
    /// How the path was learnt (`started by the bench`, `/varz store_dir`, …).
    pub how: String,
    /// `st_dev` of the path, as `major:minor`.
    pub device: String,
    /// File system type (`ext4`, `tmpfs`, …), `?` if no mount was found.
    pub fs_type: String,
    /// The mount's source (`/dev/vda`), `?` if no mount was found.
    pub source: String,
    /// Where that file system is mounted.
    pub mount_point: String,
}

impl Placement {
    /// The placement of `path`, which must exist; `how` says where the path came from.
    pub fn of(path: &Path, how: &str) -> Result<Placement> {
        let path = path
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", path.display()))?;
        let meta =
            std::fs::metadata(&path).with_context(|| format!("cannot stat {}", path.display()))?;
        let device = device_name(meta.dev());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .context("cannot read /proc/self/mountinfo")?;
        let mount = mount_of(&mounts, &path, &device);
        let (fs_type, source, mount_point) = match mount {
            Some(m) => (m.fs_type, m.source, m.point),
            None => ("?".into(), "?".into(), "?".into()),
        };
        Ok(Placement {
            path,
            how: how.to_owned(),
            device,
            fs_type,
            source,
            mount_point,
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "path": self.path.display().to_string(),
            "how": self.how,
            "device": self.device,
            "fs_type": self.fs_type,
            "source": self.source,
            "mount_point": self.mount_point,
        })
    }

    /// One line for a run's report.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, device {} {}; {})",
            self.path.display(),
            self.fs_type,
            self.device,
            self.source,
            self.how
        )
    }
}

/// A `dev_t` as `major:minor`, as `/proc/self/mountinfo` writes it.
pub fn device_name(dev: u64) -> String {
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    device: String,
    point: String,
    fs_type: String,
    source: String,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            // id parent major:minor root point options [optional…] - type source super
            let (head, tail) = line.split_once(" - ")?;
            let head: Vec<&str> = head.split(' ').collect();
            let mut tail = tail.split(' ');
            Some(Mount {
                device: (*head.get(2)?).to_owned(),
                point: unescape(head.get(4)?),
                fs_type: tail.next()?.to_owned(),
                source: tail.next()?.to_owned(),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |a, d| a * 8 + u32::from(d - b'0'));
            if let Ok(c) = u8::try_from(v) {
                out.push(c);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount `path` is on: of the mounts of `device` whose mount point holds `path`, the
/// deepest (the later one of equal depth, as a later mount hides an earlier one); if no
/// mount has that device (btrfs subvolumes report their own), the deepest mount point
/// holding `path`.
fn mount_of(mountinfo: &str, path: &Path, device: &str) -> Option<Mount> {
    let mut mounts = parse_mountinfo(mountinfo);
    let deepest = |of_device: bool| {
        mounts
            .iter()
            .enumerate()
            .filter(|(_, m)| path.starts_with(&m.point) && (!of_device || m.device == device))
            .max_by_key(|(_, m)| m.point.len())
            .map(|(i, _)| i)
    };
    let i = deepest(true).or_else(|| deepest(false))?;
    Some(mounts.swap_remove(i))
}

/// The directory of RabbitMQ's persistent message store for the default vhost, from the
/// files its server process `pid` holds open (`…/msg_stores/vhosts/<hash>/`, where both the
/// message store and the queue indexes that embed small messages live).
pub fn rabbitmq_store(pid: u32) -> Result<PathBuf> {
    let fds = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&fds).with_context(|| format!("cannot list {fds}"))?;
    for e in entries.flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let text = target.to_string_lossy();
        if let Some(at) = text.find("/msg_store_persistent/") {
            return Ok(PathBuf::from(&text[..at]));
        }
    }
    Err(anyhow!(
        "RabbitMQ (pid {pid}) holds no msg_store_persistent file open: where it stores \
         messages is unknown"
    ))
}

/// How many files process `pid` holds open under `dir`: a server that keeps its data
/// there has some open during a run.
pub fn open_files_under(pid: u32, dir: &Path) -> Option<usize> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        entries
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|t| t.starts_with(dir))
            .count(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683784k
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683784k
31 27 254:16 / /srv/my\\040data rw,relatime shared:5 - xfs /dev/vdb rw
";

    #[test]
    fn devices_read_as_major_minor() {
        // 254:0 and 0:27 as glibc encodes them; a large minor spills into the high bits.
        assert_eq!(device_name(65024), "254:0");
        assert_eq!(device_name(27), "0:27");
        assert_eq!(device_name((0x10000 << 12) | (259 << 8) | 3), "259:65539");
        assert_eq!(device_name(libc::makedev(8, 17)), "8:17");
    }

    #[test]
    fn a_path_is_on_the_deepest_mount_of_its_device() {
        let on = |p: &str, dev: &str| {
            mount_of(MOUNTINFO, Path::new(p), dev).map(|m| (m.fs_type, m.point))
        };
        assert_eq!(on("/work/x", "254:0"), Some(("ext4".into(), "/".into())));
        // /dev/shm mounted twice: the device says which.
        assert_eq!(
            on("/dev/shm/a", "0:27"),
            Some(("tmpfs".into(), "/dev/shm".into()))
        );
        // An escaped space in the mount point; optional fields before the separator.
        let m = mount_of(MOUNTINFO, Path::new("/srv/my data/q"), "254:16").map(|m| m.source);
        assert_eq!(m.as_deref(), Some("/dev/vdb"));
        // A device no mount names: the deepest mount point holding the path.
        assert_eq!(
            on("/srv/my data/q", "0:99"),
            Some(("xfs".into(), "/srv/my data".into()))
        );
    }

    #[test]
    fn a_real_directory_has_a_placement() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let p = Placement::of(dir.path(), "test")?;
        assert_eq!(p.path, dir.path().canonicalize()?);
        assert!(p.device.contains(':'));
        assert_ne!(p.fs_type, "?", "{p:?}");
        Ok(())
    }
}
