//! The ordinary user the rootless and podman tests (of both crates) run as. Tests run in
//! parallel threads and processes: two concurrent `useradd`s would both make the user (one's
//! home owned by the other's uid, two /etc/subuid ranges), so one lock file serialises them.

use std::process::Command;

pub const USER: &str = "nestfs-test";

/// The test user's uid and gid, creating the user if needed.
pub fn test_user() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, USER]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    let lookup = || Some((id("-u")?, id("-g")?));
    let lock = std::fs::File::create("/tmp/nestfs-test-user.lock").ok()?;
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).is_err() {
        return None;
    }
    if let Some(ids) = lookup() {
        return Some(ids);
    }
    let _ = Command::new("useradd")
        .args(["--create-home", "--shell", "/bin/sh", USER])
        .status();
    lookup()
}
