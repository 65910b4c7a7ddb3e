//! Disk usage of the upper dir, counted by the daemon as it changes it, and an optional limit.
//!
//! Usage is allocated bytes (blocks, as a filesystem quota counts them; each hardlinked inode
//! once). Every change that can allocate is measured before and after (`st_blocks`), and
//! anything that may grow first reserves its worst case, so concurrent writers cannot overshoot
//! the limit together. Past the limit calls fail with EDQUOT, as XFS project quotas do.
//!
//! The filesystem also allocates on its own, after the change that caused it (ext4's extent-tree
//! blocks at writeback): [`Quota::reconcile`] compares the counter with the upper dir itself
//! while no change runs; a background pass does so while the upper dir keeps changing, and the
//! control socket before a `stats` that follows a change.

use std::collections::HashSet;
use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::overlay::Changes;
use crate::sys;

/// Serialises measured changes to one file (writes, truncates): two writers measuring the
/// same inode's blocks around their writes would count the growth twice.
const STRIPES: usize = 64;

/// How long after its last change an upper dir is still reconciled in the background: the
/// kernel writes dirty data back within 30 s (`dirty_expire_centisecs`) plus a flusher period.
const SETTLING: Duration = Duration::from_secs(60);
/// The background pass's period at least; more for big upper dirs (see `reconcile_while_changing`).
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Quota {
    /// Bytes the upper dir may hold; 0 means no limit (usage is still counted).
    limit: u64,
    used: AtomicU64,
    stripes: [Mutex<()>; STRIPES],
    /// Changes between their first measurement and their settling (see [`Busy`]).
    busy: AtomicU64,
    /// Settled changes so far: a reconcile that saw this move is void.
    settled: AtomicU64,
    /// `settled` at the last reconcile, and when it was last seen to move.
    reconciled: Mutex<(u64, Instant)>,
    /// Opens for writing of upper files in passthrough: without a limit the kernel writes them
    /// itself, unseen by the daemon, so only a walk of the upper dir counts what they gained.
    unseen: AtomicU64,
    /// Whether such an open was made since the last reconcile.
    unseen_since: AtomicBool,
    /// What the latest walk of the upper dir found (see [`Quota::reported`]).
    walked: AtomicU64,
}

/// A change of the upper dir in progress, from its first measurement to its settling. Only
/// through one can usage be reserved or settled, so a reconcile knows when none runs.
pub(crate) struct Busy<'a>(&'a Quota);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Quota {
    /// `used` is what the upper dir already holds (see [`allocated_bytes`]).
    pub fn new(limit: u64, used: u64) -> Quota {
        Quota {
            limit,
            used: AtomicU64::new(used),
            stripes: std::array::from_fn(|_| Mutex::new(())),
            busy: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            reconciled: Mutex::new((0, Instant::now())),
            unseen: AtomicU64::new(0),
            unseen_since: AtomicBool::new(false),
            walked: AtomicU64::new(used),
        }
    }

    /// Marks a change of the upper dir as running until the guard drops.
    pub(crate) fn busy(&self) -> Busy<'_> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self)
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// The usage `stats` reports, after [`Self::reconcile_if_changed`]: the counter, unless
    /// the kernel wrote upper files unseen since the counter last took a walk's figure (a
    /// change running meanwhile voids that); then the latest walk, which has those writes.
    pub fn reported(&self) -> u64 {
        if self.unseen_since.load(Ordering::SeqCst) || self.unseen.load(Ordering::SeqCst) > 0 {
            self.walked.load(Ordering::SeqCst)
        } else {
            self.used()
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether the daemon must see every write (to refuse those past the limit); without a
    /// limit, the kernel may write upper files itself (see `unseen_writes`).
    pub fn sees_every_write(&self) -> bool {
        self.limit > 0
    }

    /// An upper file was opened for writing in passthrough (`open`), or such an open released.
    pub(crate) fn unseen_writes(&self, open: bool) {
        if open {
            self.unseen.fetch_add(1, Ordering::SeqCst);
            self.unseen_since.store(true, Ordering::SeqCst);
        } else {
            self.unseen.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub(crate) fn file_lock(&self, ino: u64) -> MutexGuard<'_, ()> {
        self.stripes[(ino as usize) % STRIPES]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the counter to what the upper dir `upper` really holds (`du` of it, plus files
    /// this process holds open that have no name left), unless a change ran meanwhile. Returns
    /// the correction made, or None when a change got in the way.
    pub fn reconcile(&self, upper: &Path) -> io::Result<Option<i64>> {
        let mut last = self.reconciled.lock().unwrap_or_else(|e| e.into_inner());
        // Upper files open for writing in passthrough keep any reconcile from being the last
        // one needed (the mark is taken first: an open that lands meanwhile sets it again);
        // one that fails leaves the mark it found.
        let was_unseen = self.unseen_since.swap(false, Ordering::SeqCst);
        let unseen = self.unseen.load(Ordering::SeqCst) > 0;
        if unseen {
            self.unseen_since.store(true, Ordering::SeqCst);
        }
        let settled = self.settled.load(Ordering::SeqCst);
        let done = self.set_to_truth(upper, settled, unseen, unseen || was_unseen);
        let counted = matches!(done, Ok(Some(_)));
        if was_unseen && !counted {
            self.unseen_since.store(true, Ordering::SeqCst);
        }
        // Unseen writes are changes too: the filesystem may allocate for them at writeback.
        if counted && (last.0 != settled || was_unseen) {
            *last = (settled, Instant::now());
        }
        done
    }

    /// [`Self::reconcile`]'s walk and swap, `settled` changes having been settled before it.
    /// `report`: walk even while a change runs, for [`Self::reported`].
    fn set_to_truth(
        &self,
        upper: &Path,
        settled: u64,
        unseen: bool,
        report: bool,
    ) -> io::Result<Option<i64>> {
        let used = self.used();
        let busy = self.busy.load(Ordering::SeqCst) > 0;
        if busy && !report {
            return Ok(None);
        }
        let Some(truth) = self.measure_truth(upper, used, unseen)? else {
            return Ok(None);
        };
        if busy
            || self.busy.load(Ordering::SeqCst) > 0
            || self.settled.load(Ordering::SeqCst) != settled
        {
            return Ok(None);
        }
        // A change that starts from here on measured the tree just walked: its settling adds
        // to `truth` what it changes. One that already reserved or settled fails the swap.
        if self
            .used
            .compare_exchange(used, truth, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Ok(None);
        }
        Ok(Some(truth as i64 - used as i64))
    }

    /// What the upper dir holds, or None while it is still moving. Writeback moves a file's
    /// blocks from reserved to allocated, and a stat in between reads a passing value: only a
    /// second walk that agrees counts, unless the kernel writes files unseen right now (then
    /// the latest walk is as true as any).
    fn measure_truth(&self, upper: &Path, used: u64, unseen: bool) -> io::Result<Option<u64>> {
        let measure = || {
            let found = allocated_bytes(upper)? + open_nameless_bytes(upper);
            self.walked.store(found, Ordering::SeqCst);
            io::Result::Ok(found)
        };
        let truth = measure()?;
        if truth == used {
            return Ok(Some(truth));
        }
        let again = measure()?;
        Ok((again == truth || unseen).then_some(again))
    }

    /// Whether the upper dir changed since the last reconcile, or recently enough that the
    /// filesystem may still be allocating for it.
    fn unsettled(&self, within: Duration) -> bool {
        let (settled, at) = *self.reconciled.lock().unwrap_or_else(|e| e.into_inner());
        settled != self.settled.load(Ordering::SeqCst)
            || at.elapsed() < within
            || self.unseen.load(Ordering::SeqCst) > 0
            || self.unseen_since.load(Ordering::SeqCst)
    }

    /// [`Self::reconcile`], if a change was counted since the last one (what `stats` asks
    /// for: free while nothing changes; writeback after it is the background pass's).
    pub fn reconcile_if_changed(&self, upper: &Path) -> io::Result<Option<i64>> {
        if !self.unsettled(Duration::ZERO) {
            return Ok(Some(0));
        }
        self.reconcile(upper)
    }

    /// [`Self::reconcile`], while the filesystem may still be allocating for recent changes.
    fn reconcile_if_unsettled(&self, upper: &Path) -> io::Result<Option<i64>> {
        if !self.unsettled(SETTLING) {
            return Ok(Some(0));
        }
        self.reconcile(upper)
    }
}

/// Reconciles `quota` with `upper` in the background while it is unsettled, until the quota is
/// dropped. A pass walks the whole upper dir: the period grows with the walk's time, so the
/// walks take at most 2% of a CPU.
pub(crate) fn reconcile_while_changing(quota: Weak<Quota>, upper: std::path::PathBuf) {
    let shown = upper.display().to_string();
    let spawned = std::thread::Builder::new()
        .name("reconcile".into())
        .spawn(move || {
            let mut period = RECONCILE_EVERY;
            loop {
                std::thread::sleep(period);
                let Some(q) = quota.upgrade() else { return };
                let start = Instant::now();
                if let Err(e) = q.reconcile_if_unsettled(&upper) {
                    tracing::warn!("reconcile the usage of {}: {e}", upper.display());
                }
                period = RECONCILE_EVERY.max(start.elapsed() * 50);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no background reconcile of {shown}: {e}");
    }
}

/// Allocated bytes of the files under `upper` that this process holds open and that have no
/// name left (a quota still charges them; `du` cannot see them).
fn open_nameless_bytes(upper: &Path) -> u64 {
    let (Ok(upper), Ok(fds)) = (
        std::fs::canonicalize(upper),
        std::fs::read_dir("/proc/self/fd"),
    ) else {
        return 0;
    };
    let mut seen = HashSet::new();
    fds.flatten()
        .filter(|fd| {
            // The kernel names an unlinked file by its last path, marked as deleted.
            std::fs::read_link(fd.path()).is_ok_and(|p| {
                p.starts_with(&upper) && p.as_os_str().as_encoded_bytes().ends_with(b" (deleted)")
            })
        })
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .filter(|md| md.is_file() && md.nlink() == 0 && seen.insert(md.ino()))
        .map(|md| md.blocks() * 512)
        .sum()
}

impl Busy<'_> {
    /// Reserves up to `want` bytes of headroom and returns how many it got (all of `want`
    /// without a limit).
    pub(crate) fn reserve_up_to(&self, want: u64) -> u64 {
        let mut got = 0;
        let _ = self
            .0
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                got = if self.0.limit == 0 {
                    want
                } else {
                    want.min(self.0.limit.saturating_sub(used))
                };
                Some(used + got)
            });
        got
    }

    /// Reserves `bytes` or fails with EDQUOT.
    pub(crate) fn reserve(&self, bytes: u64) -> io::Result<()> {
        if self.0.limit > 0 && self.0.used() + bytes > self.0.limit {
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
            .0
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                Some((used as i64 - reserved as i64 + actual).max(0) as u64)
            });
        self.0.settled.fetch_add(1, Ordering::SeqCst);
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
        ch: &Changes,
        measure: impl Fn() -> i64,
        op: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        self.charged_keeping(ch, measure, 0, op)
    }

    /// [`Self::charged`], leaving `kept` bytes charged if `op` succeeds: what removing a name
    /// freed of a file still open (see [`Self::kept_while_open`]).
    pub(crate) fn charged_keeping<T>(
        &self,
        _: &Changes,
        measure: impl Fn() -> i64,
        kept: i64,
        op: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let Some(q) = &self.quota else {
            return op();
        };
        let busy = q.busy();
        let before = measure();
        let r = op();
        let kept = if r.is_ok() { kept } else { 0 };
        busy.settle(0, measure() - before + kept);
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
        let busy = q.busy();
        busy.reserve(reserve)?;
        let before = blocks_of(fd);
        let r = op();
        busy.settle(reserve, blocks_of(fd) - before);
        r
    }

    /// What removing `name` (node `ino`) must not uncharge yet: a file still open keeps its
    /// blocks until its last close (see `closed`), as with a filesystem quota.
    pub(crate) fn kept_while_open(&self, dir: RawFd, name: &CStr, ino: u64) -> i64 {
        if self.quota.is_some() && self.identity.is_open(ino) {
            charged_at(dir, name)
        } else {
            0
        }
    }

    /// Closes the last fd of a node: if its file has no name left, its space is free.
    pub(crate) fn close_last(&self, fd: RawFd) {
        let busy = self.quota.as_ref().map(|q| q.busy());
        if let Some(busy) = &busy
            && let Ok(st) = sys::fstat(fd)
            && st.st_nlink == 0
        {
            busy.settle(0, -(st.st_blocks * 512));
        }
        sys::close(fd);
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
        let busy = q.busy();
        let st = sys::fstat(fd)?;
        let need = self.growth(&st, off, off + len as u64);
        let got = busy.reserve_up_to(need);
        let len = if got >= need {
            len
        } else {
            let bs = self.block;
            let fits = (off / bs * bs + got) / bs * bs;
            (fits.saturating_sub(off) as usize).min(len)
        };
        if len == 0 {
            busy.settle(got, 0);
            return Err(sys::err(libc::EDQUOT));
        }
        let r = write(len);
        busy.settle(got, blocks_of(fd) - st.st_blocks * 512);
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
        let quota = Quota::new(10_000, 4_000);
        let q = quota.busy();
        q.reserve(6_000).unwrap();
        assert_eq!(quota.used(), 10_000);
        assert!(edquot(q.reserve(1)));
        assert_eq!(quota.used(), 10_000, "a refused reservation takes nothing");
        // What a change did replaces what it reserved: it allocated 2000 of the 6000.
        q.settle(6_000, 2_000);
        assert_eq!(quota.used(), 6_000);
    }

    #[test]
    fn partial_reservations_get_what_is_left() {
        let quota = Quota::new(10_000, 9_000);
        let q = quota.busy();
        assert_eq!(q.reserve_up_to(4_096), 1_000);
        assert_eq!(quota.used(), 10_000);
        assert_eq!(q.reserve_up_to(4_096), 0);
        q.settle(1_000, 0);
        assert_eq!(quota.used(), 9_000);
    }

    #[test]
    fn frees_never_take_usage_below_zero() {
        let q = Quota::new(0, 4_096);
        q.busy().settle(0, -8_192);
        assert_eq!(q.used(), 0);
    }

    #[test]
    fn without_a_limit_everything_is_granted_and_counted() {
        let quota = Quota::new(0, 0);
        let q = quota.busy();
        assert_eq!(q.reserve_up_to(1 << 40), 1 << 40);
        q.reserve(1 << 40).unwrap();
        assert_eq!(quota.used(), 2 << 40);
        assert_eq!(quota.limit(), 0);
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
                        .filter(|_| q.busy().reserve(4_096).is_ok())
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

    fn upper_with(files: &[(&str, usize)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, len) in files {
            std::fs::write(dir.path().join(name), vec![b'x'; *len]).unwrap();
        }
        dir
    }

    #[test]
    fn a_reconcile_sets_the_counter_to_what_the_upper_dir_holds() {
        let dir = upper_with(&[("a", 10_000), ("b", 1)]);
        let truth = allocated_bytes(dir.path()).unwrap();
        let q = Quota::new(0, truth - 4_096);
        assert_eq!(q.reconcile(dir.path()).unwrap(), Some(4_096));
        assert_eq!(q.used(), truth);
        assert_eq!(q.reconcile(dir.path()).unwrap(), Some(0));
    }

    /// Files the kernel writes unseen keep `stats` walking while one is open and until a walk
    /// after the last closed; a walk that fails to set the counter keeps that need.
    #[test]
    fn unseen_writes_keep_the_usage_unsettled_until_a_walk_after_them() {
        let dir = upper_with(&[("a", 10_000)]);
        let truth = allocated_bytes(dir.path()).unwrap();
        let q = Quota::new(0, truth);
        assert!(!q.unsettled(Duration::ZERO));
        q.unseen_writes(true);
        std::fs::write(dir.path().join("b"), vec![1u8; 8_192]).unwrap();
        assert!(q.unsettled(Duration::ZERO));
        assert_eq!(q.reconcile_if_changed(dir.path()).unwrap(), Some(8_192));
        assert!(q.unsettled(Duration::ZERO), "the file is still open");
        q.unseen_writes(false);
        assert!(
            q.unsettled(Duration::ZERO),
            "its last writes are not walked yet"
        );
        std::fs::write(dir.path().join("c"), vec![1u8; 4_096]).unwrap();
        {
            // A change running voids the walk for the counter, not for `stats`.
            let _change = q.busy();
            assert_eq!(q.reconcile_if_changed(dir.path()).unwrap(), None);
            assert_eq!(q.used(), truth + 8_192);
            assert_eq!(q.reported(), allocated_bytes(dir.path()).unwrap());
        }
        assert!(
            q.unsettled(Duration::ZERO),
            "a walk that counted nothing settles nothing"
        );
        assert_eq!(q.reconcile_if_changed(dir.path()).unwrap(), Some(4_096));
        assert_eq!(q.reported(), q.used());
        assert!(!q.unsettled(Duration::ZERO));
        assert_eq!(q.used(), allocated_bytes(dir.path()).unwrap());
    }

    #[test]
    fn a_reconcile_counts_open_files_without_a_name() {
        let dir = upper_with(&[("gone", 100_000)]);
        let named = allocated_bytes(dir.path()).unwrap();
        let f = std::fs::File::open(dir.path().join("gone")).unwrap();
        std::fs::remove_file(dir.path().join("gone")).unwrap();
        let q = Quota::new(0, 0);
        q.reconcile(dir.path()).unwrap();
        assert_eq!(q.used(), named, "the open file still takes its blocks");
        drop(f);
        q.reconcile(dir.path()).unwrap();
        assert_eq!(q.used(), allocated_bytes(dir.path()).unwrap());
    }

    #[test]
    fn a_reconcile_leaves_the_counter_alone_while_a_change_runs() {
        let dir = upper_with(&[("a", 10_000)]);
        let q = Quota::new(0, 0);
        let busy = q.busy();
        busy.reserve(4_096).unwrap();
        assert_eq!(q.reconcile(dir.path()).unwrap(), None);
        assert_eq!(q.used(), 4_096, "the reservation stands");
        busy.settle(4_096, 0);
        drop(busy);
        assert!(q.reconcile(dir.path()).unwrap().is_some());
        assert_eq!(q.used(), allocated_bytes(dir.path()).unwrap());
    }

    #[test]
    fn stats_walks_only_after_a_change() {
        let dir = upper_with(&[("a", 10_000)]);
        let q = Quota::new(0, 0);
        assert_eq!(q.reconcile_if_changed(dir.path()).unwrap(), Some(0));
        assert_eq!(q.used(), 0, "nothing changed: no walk");
        q.busy().settle(0, 1);
        assert!(q.reconcile_if_changed(dir.path()).unwrap().is_some());
        assert_eq!(q.used(), allocated_bytes(dir.path()).unwrap());
    }

    #[test]
    fn an_unchanged_settled_upper_dir_is_not_walked_again() {
        let dir = upper_with(&[("a", 10_000)]);
        let q = Quota::new(0, 0);
        *q.reconciled.lock().unwrap() = (0, Instant::now() - SETTLING);
        assert_eq!(q.reconcile_if_unsettled(dir.path()).unwrap(), Some(0));
        assert_eq!(
            q.used(),
            0,
            "nothing changed since the last reconcile: no walk"
        );
        q.busy().settle(0, 1);
        assert!(q.reconcile_if_unsettled(dir.path()).unwrap().is_some());
        assert_eq!(q.used(), allocated_bytes(dir.path()).unwrap());
    }
}
