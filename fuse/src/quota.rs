//! Disk usage of the upper dir, counted by the daemon as it changes it, and an optional limit.
//!
//! Usage is allocated bytes (blocks, as a filesystem quota counts them; each hardlinked inode
//! once). Every change that can allocate is measured before and after (`st_blocks`), and
//! anything that may grow first reserves its worst case, so concurrent writers cannot overshoot
//! the limit together. Past the limit calls fail with EDQUOT, as XFS project quotas do.

use std::collections::HashSet;
use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::overlay::Changes;
use crate::sys;

/// Serialises measured changes to one file (writes, truncates): two writers measuring the
/// same inode's blocks around their writes would count the growth twice.
const STRIPES: usize = 64;

#[derive(Debug)]
pub struct Quota {
    /// Bytes the upper dir may hold; 0 means no limit (usage is still counted).
    limit: u64,
    used: AtomicU64,
    stripes: [Mutex<()>; STRIPES],
}

impl Quota {
    /// `used` is what the upper dir already holds (see [`allocated_bytes`]).
    pub fn new(limit: u64, used: u64) -> Quota {
        Quota {
            limit,
            used: AtomicU64::new(used),
            stripes: std::array::from_fn(|_| Mutex::new(())),
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Reserves up to `want` bytes of headroom and returns how many it got (all of `want`
    /// without a limit).
    pub(crate) fn reserve_up_to(&self, want: u64) -> u64 {
        let mut got = 0;
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                got = if self.limit == 0 {
                    want
                } else {
                    want.min(self.limit.saturating_sub(used))
                };
                Some(used + got)
            });
        got
    }

    /// Reserves `bytes` or fails with EDQUOT.
    pub(crate) fn reserve(&self, bytes: u64) -> io::Result<()> {
        if self.limit > 0 && self.used() + bytes > self.limit {
            return Err(sys::err(libc::EDQUOT));
        }
        let got = self.reserve_up_to(bytes);
        if got < bytes {
            self.settle(got, 0);
            return Err(sys::err(libc::EDQUOT));
        }
        Ok(())
    }

    /// Replaces a reservation by what the change really allocated (negative: freed).
    pub(crate) fn settle(&self, reserved: u64, actual: i64) {
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                Some((used as i64 - reserved as i64 + actual).max(0) as u64)
            });
    }

    pub(crate) fn file_lock(&self, ino: u64) -> MutexGuard<'_, ()> {
        self.stripes[(ino as usize) % STRIPES]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// Bytes allocated to an object, as a quota charges them: directories always, files once for
/// all their names (so a name of a multiply-linked file costs nothing), absent names nothing.
pub(crate) fn charged_bytes(st: &sys::Stat) -> i64 {
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR || st.st_nlink <= 1 {
        st.st_blocks * 512
    } else {
        0
    }
}

/// [`charged_bytes`] of `name` beneath `dir` (0 if there is no such name).
pub(crate) fn charged_at(dir: RawFd, name: &CStr) -> i64 {
    sys::stat_at(dir, name).map_or(0, |st| charged_bytes(&st))
}

/// Allocated bytes of an open file or directory.
pub(crate) fn blocks_of(fd: RawFd) -> i64 {
    sys::fstat(fd).map_or(0, |st| st.st_blocks * 512)
}

/// Allocated bytes under `root` (like `du --block-size=1 -s`), not following symlinks.
pub fn allocated_bytes(root: &Path) -> io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    walk(root, &mut seen, &mut total)?;
    Ok(total)
}

fn walk(p: &Path, seen: &mut HashSet<(u64, u64)>, total: &mut u64) -> io::Result<()> {
    let md = match std::fs::symlink_metadata(p) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if md.nlink() <= 1 || md.is_dir() || seen.insert((md.dev(), md.ino())) {
        *total += md.blocks() * 512;
    }
    if md.is_dir() {
        for entry in std::fs::read_dir(p)? {
            walk(&entry?.path(), seen, total)?;
        }
    }
    Ok(())
}

impl crate::overlay::Overlay {
    /// EDQUOT unless `bytes` more fit under the limit.
    pub(crate) fn need(&self, bytes: u64) -> io::Result<()> {
        match &self.quota {
            Some(q) if q.limit > 0 && q.used() + bytes > q.limit => Err(sys::err(libc::EDQUOT)),
            _ => Ok(()),
        }
    }

    /// Runs a namespace change and charges what `measure`, taken before and after, says it
    /// allocated or freed.
    pub(crate) fn charged<T>(
        &self,
        _: &Changes,
        measure: impl Fn() -> i64,
        op: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let Some(q) = &self.quota else {
            return op();
        };
        let before = measure();
        let r = op();
        q.settle(0, measure() - before);
        r
    }

    /// Runs a change to the open upper file `fd` of node `ino` that may allocate up to
    /// `reserve` bytes (EDQUOT if they do not fit) and charges what it really did.
    pub(crate) fn measured<T>(
        &self,
        ino: u64,
        fd: RawFd,
        reserve: u64,
        op: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let Some(q) = &self.quota else {
            return op();
        };
        let _g = q.file_lock(ino);
        q.reserve(reserve)?;
        let before = blocks_of(fd);
        let r = op();
        q.settle(reserve, blocks_of(fd) - before);
        r
    }

    pub(crate) fn charge(&self, bytes: i64) {
        if let Some(q) = &self.quota {
            q.settle(0, bytes);
        }
    }

    /// What removing `name` (node `ino`) must not uncharge yet: a file still open keeps its
    /// blocks until its last close (see `closed`), as with a filesystem quota.
    pub(crate) fn kept_while_open(&self, dir: RawFd, name: &CStr, ino: u64) -> i64 {
        if self.quota.is_some() && self.is_open(ino) {
            charged_at(dir, name)
        } else {
            0
        }
    }

    /// The last fd of a node is being closed: if its file has no name left, its space is free.
    pub(crate) fn closed(&self, fd: RawFd) {
        if let Some(q) = &self.quota
            && let Ok(st) = sys::fstat(fd)
            && st.st_nlink == 0
        {
            q.settle(0, -(st.st_blocks * 512));
        }
    }

    /// The bytes a change of `off..end` may newly allocate in the file `st` describes.
    pub(crate) fn growth(&self, st: &sys::Stat, off: u64, end: u64) -> u64 {
        let bs = self.block;
        let size = st.st_size as u64;
        let fully_allocated = (st.st_blocks as u64) * 512 >= size.div_ceil(bs) * bs;
        if end <= size && fully_allocated {
            return 0;
        }
        end.div_ceil(bs) * bs - off / bs * bs
    }

    /// Writes `len` bytes at `off` through `write` (which gets the length to write), shortened
    /// to what fits under the limit: like a filesystem at its quota, a write that partly fits
    /// is short and the next one fails with EDQUOT.
    pub(crate) fn write_charged(
        &self,
        ino: u64,
        fd: RawFd,
        off: u64,
        len: usize,
        write: impl FnOnce(usize) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let Some(q) = self.quota.as_ref().filter(|_| len > 0) else {
            return write(len);
        };
        let _g = q.file_lock(ino);
        let st = sys::fstat(fd)?;
        let need = self.growth(&st, off, off + len as u64);
        let got = q.reserve_up_to(need);
        let len = if got >= need {
            len
        } else {
            let bs = self.block;
            let fits = (off / bs * bs + got) / bs * bs;
            (fits.saturating_sub(off) as usize).min(len)
        };
        if len == 0 {
            q.settle(got, 0);
            return Err(sys::err(libc::EDQUOT));
        }
        let r = write(len);
        q.settle(got, blocks_of(fd) - st.st_blocks * 512);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edquot(r: io::Result<()>) -> bool {
        r.is_err_and(|e| e.raw_os_error() == Some(libc::EDQUOT))
    }

    #[test]
    fn reservations_past_the_limit_fail_and_take_nothing() {
        let q = Quota::new(10_000, 4_000);
        q.reserve(6_000).unwrap();
        assert_eq!(q.used(), 10_000);
        assert!(edquot(q.reserve(1)));
        assert_eq!(q.used(), 10_000, "a refused reservation takes nothing");
        // What a change did replaces what it reserved: it allocated 2000 of the 6000.
        q.settle(6_000, 2_000);
        assert_eq!(q.used(), 6_000);
    }

    #[test]
    fn partial_reservations_get_what_is_left() {
        let q = Quota::new(10_000, 9_000);
        assert_eq!(q.reserve_up_to(4_096), 1_000);
        assert_eq!(q.used(), 10_000);
        assert_eq!(q.reserve_up_to(4_096), 0);
        q.settle(1_000, 0);
        assert_eq!(q.used(), 9_000);
    }

    #[test]
    fn frees_never_take_usage_below_zero() {
        let q = Quota::new(0, 4_096);
        q.settle(0, -8_192);
        assert_eq!(q.used(), 0);
    }

    #[test]
    fn without_a_limit_everything_is_granted_and_counted() {
        let q = Quota::new(0, 0);
        assert_eq!(q.reserve_up_to(1 << 40), 1 << 40);
        q.reserve(1 << 40).unwrap();
        assert_eq!(q.used(), 2 << 40);
        assert_eq!(q.limit(), 0);
    }

    /// Writers racing for the last blocks together get exactly the room there was.
    #[test]
    fn concurrent_reservations_never_overshoot() {
        let q = std::sync::Arc::new(Quota::new(1 << 20, 0));
        let granted: u64 = (0..8)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    (0..200)
                        .filter(|_| q.reserve(4_096).is_ok())
                        .map(|_| 4_096)
                        .sum::<u64>()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(granted, 1 << 20);
        assert_eq!(q.used(), 1 << 20);
    }
}
