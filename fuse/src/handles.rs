//! File handles. A handle is one of the daemon's own fds, tagged with the epoch of the server
//! that opened it (0 unless a keeper holds the connection, see `handover`). After a takeover
//! the kernel still holds the handles earlier servers gave out, whose fds died with them: each
//! is reopened on first use and kept until its release.

use std::collections::HashMap;
use std::io;
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use fuser::FileHandle;

#[derive(Default)]
pub struct Handles {
    epoch: u32,
    /// Handles of earlier servers -> the fd reopened for each.
    adopted: Mutex<HashMap<u64, RawFd>>,
}

/// What a handle stands for.
pub enum Handle {
    /// An fd this server opened.
    Own(RawFd),
    /// A handle of an earlier server, reopened here.
    Adopted(RawFd),
}

impl Handle {
    pub fn fd(&self) -> RawFd {
        match self {
            Handle::Own(fd) | Handle::Adopted(fd) => *fd,
        }
    }
}

impl Handles {
    pub fn new(epoch: u32) -> Handles {
        Handles {
            epoch,
            adopted: Mutex::default(),
        }
    }

    /// The handle for a newly opened fd; it is closed on release.
    pub fn issue(&self, fd: OwnedFd) -> FileHandle {
        FileHandle(u64::from(self.epoch) << 32 | fd.into_raw_fd() as u32 as u64)
    }

    fn own(&self, fh: FileHandle) -> Option<RawFd> {
        ((fh.0 >> 32) as u32 == self.epoch).then_some(fh.0 as u32 as RawFd)
    }

    /// The fd behind `fh`: an earlier server's handle is reopened with `reopen` (once).
    pub fn fd(
        &self,
        fh: FileHandle,
        reopen: impl FnOnce() -> io::Result<OwnedFd>,
    ) -> io::Result<RawFd> {
        if let Some(fd) = self.own(fh) {
            return Ok(fd);
        }
        let mut adopted = self.adopted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = adopted.get(&fh.0) {
            return Ok(*fd);
        }
        let fd = reopen()?.into_raw_fd();
        adopted.insert(fh.0, fd);
        Ok(fd)
    }

    /// `fh` is released: the fd to close, if it has one.
    pub fn release(&self, fh: FileHandle) -> Option<Handle> {
        match self.own(fh) {
            Some(fd) => Some(Handle::Own(fd)),
            None => self
                .adopted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&fh.0)
                .map(Handle::Adopted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> OwnedFd {
        tempfile::tempfile().unwrap().into()
    }

    /// A later server reopens an earlier one's handle once, and only its own fds are taken as
    /// they are, whatever their number.
    #[test]
    fn handles_of_earlier_servers_are_reopened_once() {
        let (first, second) = (Handles::new(0), Handles::new(1));
        let fh = first.issue(file());
        let mut reopened = 0;
        let fd = second
            .fd(fh, || {
                reopened += 1;
                Ok(file())
            })
            .unwrap();
        assert_ne!(
            fd as u64, fh.0,
            "an earlier server's fd number is not this one's"
        );
        assert_eq!(second.fd(fh, || panic!("reopened twice")).unwrap(), fd);
        assert_eq!(reopened, 1);
        assert!(matches!(second.release(fh), Some(Handle::Adopted(f)) if f == fd));
        assert!(second.release(fh).is_none(), "released once");
        let own = second.issue(file());
        let raw = second
            .fd(own, || panic!("an own handle is not reopened"))
            .unwrap();
        assert!(matches!(second.release(own), Some(Handle::Own(f)) if f == raw));
        crate::sys::close(raw);
        crate::sys::close(fd);
        crate::sys::close(first.fd(fh, || unreachable!()).unwrap());
    }
}
