//! Disk image locks, as Cloud Hypervisor takes them: a read-write disk is
//! locked exclusively, a `readonly=on` disk shared, so two VMs never write
//! one image (or one writes while another reads it).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::{Error, Result};

/// Locks `file` (the image at `path`) for a disk that is `readonly` or not;
/// the lock lasts as long as the file stays open.
pub fn lock_disk(file: &File, path: &Path, readonly: bool) -> Result<()> {
    let op = if readonly {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock(2) on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    let msg = if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        format!(
            "{} is in use by another VM or program (it holds a lock on it); {}",
            path.display(),
            if readonly {
                "a read-only disk can be shared only with other readonly=on users"
            } else {
                "give each VM its own image, or readonly=on to all of them"
            }
        )
    } else {
        format!("cannot lock {}: {e}", path.display())
    };
    Err(Error::config("--disk", msg))
}

/// The lock a VM holds on one disk image, through its own handle on the
/// image's open file (a `flock` belongs to the open file, so this handle
/// can give it up and take it again while the device keeps the file).
#[derive(Debug)]
pub struct DiskLock {
    file: File,
    path: std::path::PathBuf,
    readonly: bool,
}

impl DiskLock {
    /// Locks `file` (the image at `path`) as [`lock_disk`] does, unless
    /// `later`, and keeps a handle to release and take the lock.
    pub fn new(file: &File, path: &Path, readonly: bool, later: bool) -> Result<Self> {
        if !later {
            lock_disk(file, path, readonly)?;
        }
        let file = file
            .try_clone()
            .map_err(Error::io(format!("{}: dup", path.display())))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            readonly,
        })
    }

    /// Gives the lock up (a migration's destination takes it next).
    pub fn release(&self) {
        // SAFETY: flock on an fd this value owns; no memory is involved.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }

    /// Takes the lock (again, after [`DiskLock::release`]).
    pub fn lock(&self) -> Result<()> {
        lock_disk(&self.file, &self.path, self.readonly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("caravel-lock-{name}-{}", std::process::id()));
        std::fs::write(&p, [0u8; 512]).unwrap();
        p
    }

    fn open(p: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap()
    }

    #[test]
    fn a_released_lock_can_be_taken_by_another_and_retaken_after() {
        let p = image("release");
        let (a, b) = (open(&p), open(&p));
        let lock = DiskLock::new(&a, &p, false, false).unwrap();
        assert!(lock_disk(&b, &p, false).is_err());
        lock.release();
        lock_disk(&b, &p, false).unwrap();
        assert!(lock.lock().is_err(), "b holds it now");
        drop(b);
        lock.lock().unwrap();
        // Deferred: nothing is locked until asked.
        let c = open(&p);
        let later = DiskLock::new(&c, &p, false, true).unwrap();
        assert!(later.lock().is_err(), "`lock` still holds it");
        lock.release();
        later.lock().unwrap();
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn writers_exclude_everyone_and_readers_share() {
        let p = image("x");
        let (a, b) = (open(&p), open(&p));
        lock_disk(&a, &p, false).unwrap();
        let err = lock_disk(&b, &p, false).unwrap_err().to_string();
        assert!(
            err.starts_with("--disk:") && err.contains("in use"),
            "{err}"
        );
        assert!(
            lock_disk(&b, &p, true).is_err(),
            "no reader beside a writer"
        );
        drop(a);
        lock_disk(&b, &p, true).unwrap();
        let c = open(&p);
        lock_disk(&c, &p, true).unwrap();
        assert!(
            lock_disk(&open(&p), &p, false).is_err(),
            "no writer beside readers"
        );
        std::fs::remove_file(&p).unwrap();
    }
}
