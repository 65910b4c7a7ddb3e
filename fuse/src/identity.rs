//! What the overlay knows about inode identity beyond its node table: which fds each node has
//! open, which upper inodes keep a lower identity, and which nodes were split from their name.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
pub(crate) struct Identities {
    /// Open file fds, by node. A copy-up points them (all read-only on the lower file then) at
    /// the upper copy, so a file opened before it reads what later writes made (as overlayfs
    /// does); an open file whose name is gone still answers getattr through them.
    open_fds: Mutex<HashMap<u64, Vec<RawFd>>>,
    /// Upper inode -> shown inode, for copies that keep their lower identity for this mount
    /// only (special files that had several names; see `copy_up`).
    kept: Mutex<HashMap<u64, u64>>,
    /// Origin inode -> inode shown for upper copies made while the kernel read the lower file
    /// through passthrough (see `Overlay::split`).
    splits: Mutex<HashMap<u64, u64>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Identities {
    /// Records an fd opened or about to be closed; true when `ino` has no open fd left.
    pub fn track_fd(&self, ino: u64, fd: RawFd, open: bool) -> bool {
        let mut m = locked(&self.open_fds);
        if open {
            m.entry(ino).or_default().push(fd);
        } else if let Some(v) = m.get_mut(&ino) {
            v.retain(|f| *f != fd);
            if v.is_empty() {
                m.remove(&ino);
            }
        }
        !m.contains_key(&ino)
    }

    pub fn is_open(&self, ino: u64) -> bool {
        locked(&self.open_fds).contains_key(&ino)
    }

    /// Runs `f` on every open fd of `ino`, with no fd opened or closed meanwhile.
    pub fn each_open_fd(&self, ino: u64, f: impl FnMut(&RawFd)) {
        locked(&self.open_fds)
            .get(&ino)
            .into_iter()
            .flatten()
            .for_each(f);
    }

    /// `f` of one open fd of `ino`, which stays open meanwhile; None if `ino` has none.
    pub fn with_open_fd<T>(&self, ino: u64, f: impl FnOnce(RawFd) -> T) -> Option<T> {
        let fds = locked(&self.open_fds);
        fds.get(&ino).and_then(|v| v.first()).map(|fd| f(*fd))
    }

    /// The upper inode `upper` shows as `shown` from now on.
    pub fn keep(&self, upper: u64, shown: u64) {
        locked(&self.kept).insert(upper, shown);
    }

    /// The inode number an upper inode keeps, if it keeps one.
    pub fn kept(&self, upper: u64) -> Option<u64> {
        locked(&self.kept).get(&upper).copied()
    }

    /// Whether some upper inode shows as `shown`: then several names share it.
    pub fn is_kept(&self, shown: u64) -> bool {
        let kept = locked(&self.kept);
        !kept.is_empty() && kept.values().any(|v| *v == shown)
    }

    /// Node `origin`'s name now shows the upper copy `shown`.
    pub fn split(&self, origin: u64, shown: u64) {
        locked(&self.splits).insert(origin, shown);
    }

    /// Whether `ino` was split: its name now belongs to another node.
    pub fn is_split(&self, ino: u64) -> bool {
        locked(&self.splits).contains_key(&ino)
    }

    /// The inode number shown for the upper copy whose origin is `ino`.
    pub fn after_split(&self, ino: u64) -> u64 {
        locked(&self.splits).get(&ino).copied().unwrap_or(ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_closed_once_its_last_fd_is() {
        let ids = Identities::default();
        assert!(!ids.track_fd(7, 10, true));
        assert!(!ids.track_fd(7, 11, true));
        assert!(!ids.track_fd(7, 10, false), "fd 11 is still open");
        assert!(ids.is_open(7));
        let mut seen = Vec::new();
        ids.each_open_fd(7, |fd| seen.push(*fd));
        assert_eq!(seen, [11]);
        assert!(ids.track_fd(7, 11, false));
        assert!(!ids.is_open(7));
        assert!(
            ids.track_fd(8, 3, false),
            "closing an untracked fd leaves nothing open"
        );
    }

    #[test]
    fn kept_and_split_inodes_answer_for_their_own_only() {
        let ids = Identities::default();
        ids.keep(100, 5);
        assert_eq!(ids.kept(100), Some(5));
        assert_eq!(ids.kept(5), None);
        assert!(ids.is_kept(5) && !ids.is_kept(100));
        ids.split(9, 200);
        assert!(ids.is_split(9) && !ids.is_split(200));
        assert_eq!(ids.after_split(9), 200);
        assert_eq!(ids.after_split(10), 10);
    }
}
