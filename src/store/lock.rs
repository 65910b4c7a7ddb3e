//! Advisory file locks (flock) that serialise store changes between concurrent `nestfs` runs.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Held until dropped.
pub struct Lock {
    file: File,
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
        let lock = Lock::on(File::open(path)?, true)?;
        let held = lock.file.metadata()?;
        match std::fs::metadata(path) {
            Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => Ok(lock),
            Ok(_) => Err(io::ErrorKind::NotFound.into()),
            Err(e) => Err(e),
        }
    }

    fn on(file: File, exclusive: bool) -> io::Result<Lock> {
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        loop {
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(Lock { file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}
