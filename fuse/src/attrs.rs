//! Changes to attributes: setattr (mode, owner, size, times), and extended attributes. Each
//! copies the object up first; owners and modes are recorded in an xattr where the daemon
//! keeps them that way (see [`crate::meta`]).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::AsRawFd;

use fuser::{FileAttr, TimeOrNow};

use crate::meta::{self, Meta};
use crate::overlay::{Overlay, Target};
use crate::sys;
use crate::xattr_names;

/// What a setattr changes; `None` leaves it. `fh` is an open file to truncate through.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<u64>,
}

impl Target {
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        match self {
            // `.` beneath the directory's own fd is the directory.
            Target::Dir(fd) => sys::chmod_at(fd.as_raw_fd(), c".", mode),
            Target::Entry(d, n) => sys::chmod_at(d.as_raw_fd(), n, mode),
        }
    }

    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        match self {
            Target::Dir(fd) => sys::chown_fd(fd.as_raw_fd(), uid, gid),
            Target::Entry(d, n) => sys::chown_at(d.as_raw_fd(), n, uid, gid),
        }
    }

    pub fn utimens(&self, times: &[libc::timespec; 2]) -> io::Result<()> {
        match self {
            Target::Dir(fd) => sys::utimens_at(fd.as_raw_fd(), c".", times),
            Target::Entry(d, n) => sys::utimens_at(d.as_raw_fd(), n, times),
        }
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let (sec, nsec) = match t.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => {
                    let d = e.duration();
                    let (s, n) = (d.as_secs() as i64, d.subsec_nanos() as i64);
                    if n == 0 {
                        (-s, 0)
                    } else {
                        (-s - 1, 1_000_000_000 - n)
                    }
                }
            };
            libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            }
        }
    }
}

impl Overlay {
    pub fn setattr(&self, ino: u64, a: &SetAttr) -> io::Result<FileAttr> {
        let SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh,
        } = *a;
        drop(self.copied_up(ino)?);
        let t = self.upper_target(ino)?;
        if (mode, uid, gid, size, atime, mtime) == (None, None, None, None, None, None) {
            // chown(-1, -1), or set-id bits that turned out to stay: the kernel's chown still
            // sets the change time, and so does this one.
            t.chown(u32::MAX, u32::MAX)?;
        }
        self.set_owner_mode(&t, uid, gid, mode)?;
        if let Some(len) = size {
            let opened;
            let fd = match (fh, &t) {
                (Some(fd), _) => fd as i32,
                (None, Target::Entry(d, n)) => {
                    opened = sys::open_at(d.as_raw_fd(), n, libc::O_WRONLY | libc::O_NONBLOCK, 0)?;
                    opened.as_raw_fd()
                }
                (None, Target::Dir(_)) => return Err(sys::err(libc::EISDIR)),
            };
            // Growing a file this way makes a hole: it allocates nothing.
            self.measured(ino, fd, 0, || sys::ftruncate(fd, len))?;
        }
        if atime.is_some() || mtime.is_some() {
            t.utimens(&[timespec(atime), timespec(mtime)])?;
        }
        self.getattr(ino)
    }

    /// Sets the mode of `ino`, which a write open has already copied up.
    pub fn chmod_upper(&self, ino: u64, mode: u32) -> io::Result<()> {
        self.set_owner_mode(&self.upper_target(ino)?, None, None, Some(mode))
    }

    /// Changes owner and mode of an upper file: made, or recorded where the daemon keeps them
    /// in an xattr.
    fn set_owner_mode(
        &self,
        t: &Target,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> io::Result<()> {
        // Whether owner and mode live in an xattr: only for daemons that record them.
        let recorded = if self.records_meta() {
            let real = t.stat()?;
            meta::can_carry(real.st_mode).then_some(real)
        } else {
            None
        };
        if let Some(real) = recorded.as_ref()
            && (uid.is_some() || gid.is_some() || mode.is_some())
        {
            // Owner and mode changes are recorded, not made (an unprivileged daemon cannot chown,
            // and must keep access to the file).
            let xp = t.xattr_path();
            let mut want = meta::read(&xp).unwrap_or_else(|| Meta::of(real));
            let (u, g) = self.stored_ids(uid.unwrap_or(want.uid), gid.unwrap_or(want.gid))?;
            (want.uid, want.gid) = (u, g);
            if let Some(m) = mode {
                want.mode = (want.mode & libc::S_IFMT) | (m & 0o7777);
            }
            meta::record(&xp, real, &want)?;
        } else if uid.is_some() || gid.is_some() {
            let (uid, gid) = self.stored_ids(uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX))?;
            t.chown(uid, gid)?;
        }
        if let Some(m) = mode
            && recorded.is_none()
        {
            t.chmod(m & 0o7777)?;
        }
        Ok(())
    }

    pub fn getxattr(&self, ino: u64, key: &CStr) -> io::Result<Vec<u8>> {
        let real = CString::new(xattr_names::real_xattr(key.to_bytes())).expect("from a CStr");
        sys::lgetxattr(&self.target(ino)?.xattr_path(), &real)
    }

    pub fn listxattr(&self, ino: u64) -> io::Result<Vec<u8>> {
        let all = sys::llistxattr(&self.target(ino)?.xattr_path())?;
        let mut out = Vec::with_capacity(all.len());
        for k in all.split(|b| *b == 0).filter(|k| !k.is_empty()) {
            if let Some(shown) = xattr_names::user_xattr(k) {
                out.extend_from_slice(&shown);
                out.push(0);
            }
        }
        Ok(out)
    }

    pub fn setxattr(&self, ino: u64, key: &CStr, value: Option<(&[u8], i32)>) -> io::Result<()> {
        let key = CString::new(xattr_names::real_xattr(key.to_bytes())).expect("from a CStr");
        self.writable()?;
        // As overlayfs: removing an attribute the lower file lacks fails without a copy-up
        // (which would also split a lower hard link).
        if value.is_none() && !self.in_upper(ino) {
            sys::lgetxattr(&self.target(ino)?.xattr_path(), &key)?;
        }
        let ch = self.copied_up(ino)?;
        if value.is_some() {
            self.need(0)?;
        }
        let t = self.upper_target(ino)?;
        let path = t.xattr_path();
        // A value that does not fit in the inode takes a block of its own.
        // (The same inode before and after, so its growth counts once however many names.)
        let measure = || t.stat().map_or(0, |st| st.st_blocks * 512);
        let _g = self.quota.as_ref().map(|q| q.file_lock(ino));
        self.charged(&ch, measure, || match value {
            Some((v, flags)) => sys::lsetxattr(&path, &key, v, flags),
            None => sys::lremovexattr(&path, &key),
        })
    }
}
