//! Ownership, modes and device numbers kept in an xattr, for stores made without privileges.
//!
//! An unprivileged user can neither chown nor mknod, so layers unpacked by one (and changes its
//! daemon cannot make for real) record the intended `uid:gid:mode:rdev` in `user.nestfs.stat`;
//! the daemon shows that instead of the file's real attributes. In such a layer a file without
//! the xattr belongs to the image's root (the unpacking user owns everything on disk). On disk,
//! files stay readable and writable (directories searchable) by their owner, the daemon.
//! Symlinks cannot carry user xattrs; they show as the image's root's.

use std::ffi::CStr;
use std::io;

use crate::sys::{self, Stat, XPath};

pub const KEY: &CStr = c"user.nestfs.stat";

/// What a file is meant to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub uid: u32,
    pub gid: u32,
    /// File type and permission bits.
    pub mode: u32,
    pub rdev: u64,
}

impl Meta {
    pub fn of(st: &Stat) -> Meta {
        Meta {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode,
            rdev: st.st_rdev,
        }
    }

    pub fn encode(&self) -> String {
        format!("{}:{}:{:o}:{}", self.uid, self.gid, self.mode, self.rdev)
    }

    pub fn decode(v: &[u8]) -> Option<Meta> {
        let s = std::str::from_utf8(v).ok()?;
        let mut f = s.split(':');
        let m = Meta {
            uid: f.next()?.parse().ok()?,
            gid: f.next()?.parse().ok()?,
            mode: u32::from_str_radix(f.next()?, 8).ok()?,
            rdev: f.next()?.parse().ok()?,
        };
        f.next().is_none().then_some(m)
    }

    /// Applies to a stat result.
    pub fn apply(&self, st: &mut Stat) {
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        st.st_mode = self.mode;
        st.st_rdev = self.rdev;
    }
}

/// Whether this kind of object can carry the xattr.
pub fn can_carry(mode: u32) -> bool {
    matches!(mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
}

pub fn read(xp: &XPath) -> Option<Meta> {
    Meta::decode(&sys::lgetxattr(xp, KEY).ok()?)
}

/// Records `want` for the object at `xp` whose real attributes are `real`, or drops the record
/// when the real attributes already say it all; keeps the real mode usable by the daemon.
pub fn record(xp: &XPath, real: &Stat, want: &Meta) -> io::Result<()> {
    let usable = usable_mode(want.mode);
    if real.st_mode & 0o7777 != usable {
        sys::chmod_path(xp, usable)?;
    }
    let same = want.uid == real.st_uid
        && want.gid == real.st_gid
        && want.mode & libc::S_IFMT == real.st_mode & libc::S_IFMT
        && want.mode & 0o7777 == usable
        && want.rdev == 0;
    if same {
        match sys::lremovexattr(xp, KEY) {
            Err(e) if e.raw_os_error() != Some(libc::ENODATA) => Err(e),
            _ => Ok(()),
        }
    } else {
        sys::lsetxattr(xp, KEY, want.encode().as_bytes(), 0)
    }
}

/// [`record`] for a path (not following a final symlink), e.g. while unpacking a layer.
pub fn record_path(path: &std::path::Path, want: &Meta) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let real = sys::lstat(&c)?;
    let xp = XPath::nofollow(c);
    if !can_carry(real.st_mode) {
        return Ok(());
    }
    record(&xp, &real, want)
}

/// The owner [`record_path`] left for `path` (the image's root if none was recorded).
pub fn owner_at(path: &std::path::Path) -> io::Result<(u32, u32)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    Ok(read(&XPath::nofollow(c)).map_or((0, 0), |m| (m.uid, m.gid)))
}

/// The on-disk permission bits for a wanted mode: the owner (the daemon) can always read and
/// write, and search directories.
pub fn usable_mode(mode: u32) -> u32 {
    let owner = if mode & libc::S_IFMT == libc::S_IFDIR {
        0o700
    } else {
        0o600
    };
    (mode & 0o7777) | owner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = Meta {
            uid: 0,
            gid: 42,
            mode: libc::S_IFCHR | 0o620,
            rdev: libc::makedev(4, 1),
        };
        assert_eq!(Meta::decode(m.encode().as_bytes()), Some(m));
        assert_eq!(Meta::decode(b"1:2:3"), None);
        assert_eq!(Meta::decode(b"1:2:9:0"), None);
        assert_eq!(usable_mode(libc::S_IFDIR | 0o555), 0o755);
        assert_eq!(usable_mode(libc::S_IFREG | 0o4000), 0o4600);
    }
}
