//! Which set-user-id and set-group-id bits a change clears.
//!
//! With `FUSE_HANDLE_KILLPRIV_V2` the kernel leaves this to the daemon, and in exchange spares
//! an attribute refresh before every chown and a `security.capability` lookup before every
//! write after the first. The daemon then applies the kernel's own rules
//! (`setattr_should_drop_suidgid`): a chown of anything but a directory clears set-user-id,
//! and set-group-id where it marks a group-executable file; a write, truncate or fallocate of a
//! regular file does the same unless the caller holds `CAP_FSETID`. A set-group-id bit without
//! group execute goes only if the caller is not in the file's group and lacks `CAP_FSETID`.
//!
//! The kernel's requests do not carry all of its hints (fuser drops the setattr and open kill
//! flags), so the daemon asks `/proc` about the caller, and only when a file has such a bit.

use std::cell::OnceCell;
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

use fuser::{FileAttr, FileType};

/// What the caller does to the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new owner or group (or `chown(-1, -1)`).
    Chown,
    /// Data written, truncated or allocated.
    Modify,
}

/// The process behind a request, read from `/proc` on first need.
pub struct Requester {
    pid: u32,
    /// The filesystem gid the kernel sent with the request.
    fsgid: u32,
    status: OnceCell<Option<Status>>,
}

struct Status {
    fsetid: bool,
    groups: Vec<u32>,
}

const CAP_FSETID: u32 = 4;

impl Requester {
    pub fn new(pid: u32, fsgid: u32) -> Requester {
        Requester {
            pid,
            fsgid,
            status: OnceCell::new(),
        }
    }

    fn status(&self) -> Option<&Status> {
        self.status.get_or_init(|| read_status(self.pid)).as_ref()
    }

    /// Whether it may keep set-id bits through its changes: `CAP_FSETID` in the initial user
    /// namespace, as the kernel asks (a container's root does not count). A process the daemon
    /// cannot see counts as unprivileged: clearing is the safe side.
    fn may_keep_setid(&self) -> bool {
        self.status().is_some_and(|s| s.fsetid) && in_initial_user_ns(self.pid)
    }

    fn in_group(&self, gid: u32) -> bool {
        self.fsgid == gid || self.status().is_some_and(|s| s.groups.contains(&gid))
    }
}

fn read_status(pid: u32) -> Option<Status> {
    if pid == 0 {
        return None; // the caller lives in a pid namespace the daemon cannot see
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let caps = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
    let groups = field("Groups:")?
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    Some(Status {
        fsetid: caps & (1 << CAP_FSETID) != 0,
        groups,
    })
}

/// Whether `pid` lives in the initial user namespace: the daemon's own, if that is the initial
/// one (its uid map is the identity of all ids).
fn in_initial_user_ns(pid: u32) -> bool {
    static INITIAL: OnceLock<Option<u64>> = OnceLock::new();
    let ns = |p: &str| {
        std::fs::metadata(format!("/proc/{p}/ns/user"))
            .ok()
            .map(|m| m.ino())
    };
    let initial = *INITIAL.get_or_init(|| crate::caps::in_initial_user_ns().then(|| ns("self"))?);
    initial.is_some() && ns(&pid.to_string()) == initial
}

/// The permission bits `file` keeps after `change` by `who`, if the change clears any.
pub fn kept_after(file: &FileAttr, change: Change, who: &Requester) -> Option<u32> {
    let perm = u32::from(file.perm);
    let (suid, sgid) = (perm & libc::S_ISUID, perm & libc::S_ISGID);
    if suid == 0 && sgid == 0 {
        return None;
    }
    let sgid_goes = sgid != 0
        && (perm & libc::S_IXGRP != 0 || (!who.in_group(file.gid) && !who.may_keep_setid()));
    let bits = suid | if sgid_goes { sgid } else { 0 };
    let clears = match change {
        Change::Chown => file.kind != FileType::Directory,
        Change::Modify => file.kind == FileType::RegularFile && !who.may_keep_setid(),
    };
    (clears && bits != 0).then_some(perm & !bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn file(kind: FileType, perm: u16, gid: u32) -> FileAttr {
        FileAttr {
            ino: fuser::INodeNo(2),
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// A requester whose /proc entry says `fsetid` and `groups` (no process is read).
    fn who(fsgid: u32, fsetid: bool, groups: &[u32]) -> Requester {
        let r = Requester::new(std::process::id(), fsgid);
        let _ = r.status.set(Some(Status {
            fsetid,
            groups: groups.to_vec(),
        }));
        r
    }

    #[test]
    fn chown_clears_suid_and_group_exec_sgid_for_anyone() {
        let root = who(0, true, &[]);
        let f = file(FileType::RegularFile, 0o6755, 0);
        assert_eq!(kept_after(&f, Change::Chown, &root), Some(0o755));
        let dir = file(FileType::Directory, 0o6755, 0);
        assert_eq!(kept_after(&dir, Change::Chown, &root), None);
    }

    #[test]
    fn modify_clears_only_for_unprivileged_callers_of_regular_files() {
        let f = file(FileType::RegularFile, 0o6777, 7);
        assert_eq!(kept_after(&f, Change::Modify, &who(0, true, &[])), None);
        assert_eq!(
            kept_after(&f, Change::Modify, &who(1000, false, &[])),
            Some(0o777)
        );
        let fifo = file(FileType::NamedPipe, 0o6777, 7);
        assert_eq!(
            kept_after(&fifo, Change::Modify, &who(1000, false, &[])),
            None
        );
    }

    #[test]
    fn sgid_without_group_exec_stays_for_group_members() {
        let f = file(FileType::RegularFile, 0o2767, 7);
        assert_eq!(kept_after(&f, Change::Modify, &who(7, false, &[])), None);
        assert_eq!(kept_after(&f, Change::Modify, &who(1, false, &[7])), None);
        assert_eq!(
            kept_after(&f, Change::Modify, &who(1, false, &[3])),
            Some(0o767)
        );
        assert_eq!(kept_after(&f, Change::Chown, &who(0, true, &[])), None);
    }

    #[test]
    fn this_process_is_read_from_proc() {
        // CI runs the tests as root of the initial user namespace, which holds CAP_FSETID.
        let me = Requester::new(std::process::id(), 0);
        let st = me.status().expect("own /proc status");
        if crate::sys::is_root() && in_initial_user_ns(std::process::id()) {
            assert!(st.fsetid && me.may_keep_setid());
        }
        assert!(!Requester::new(0, 0).may_keep_setid(), "an unseen caller");
    }
}
