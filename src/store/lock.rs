//! Advisory file locks (flock) that serialise store changes between concurrent `nestfs` runs.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::FlockOperation;
use rustix::io::Errno;

/// Held until dropped.
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Waits for a shared (`exclusive == false`) or exclusive lock on `path` (created if missing).
    pub fn acquire(path: &Path, exclusive: bool) -> io::Result<Lock> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        Lock::on(file, exclusive)
    }

    /// Waits for an exclusive lock on a directory; the lock follows it across renames. Fails
    /// with `NotFound` if, by the time the lock is ours, `path` no longer names the directory
    /// we waited on (a delete that held it renamed it away).
    pub fn dir(path: &Path) -> io::Result<Lock> {
        Lock::lock_dir(path, true).map(|l| l.expect("a waiting lock is taken"))
    }

    /// [`Lock::dir`] without waiting: `None` if someone else holds it.
    pub fn try_dir(path: &Path) -> io::Result<Option<Lock>> {
        Lock::lock_dir(path, false)
    }

    fn lock_dir(path: &Path, wait: bool) -> io::Result<Option<Lock>> {
        let file = File::open(path)?;
        let op = if wait {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::NonBlockingLockExclusive
        };
        if !flock(&file, op)? {
            return Ok(None);
        }
        let held = file.metadata()?;
        let now = std::fs::metadata(path)?;
        if (now.dev(), now.ino()) != (held.dev(), held.ino()) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(Some(Lock { _file: file }))
    }

    fn on(file: File, exclusive: bool) -> io::Result<Lock> {
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        flock(&file, op)?;
        Ok(Lock { _file: file })
    }
}

/// flock(2), retried when interrupted; false if a non-blocking lock was asked and someone
/// holds it.
fn flock(file: &File, op: FlockOperation) -> io::Result<bool> {
    loop {
        match rustix::fs::flock(file, op) {
            Ok(()) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(Errno::WOULDBLOCK) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}
