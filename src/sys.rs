//! The crate's only `unsafe`: what std and rustix offer no safe form of.
#![allow(unsafe_code)]

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

/// Starts `cmd`'s process in a session of its own, so signals to our process group (Garden's
/// to the plugin) do not reach it, and lets it inherit `keep` (close-on-exec everywhere else,
/// so no other child of ours holds it).
pub fn detach_on_exec(cmd: &mut Command, keep: RawFd) {
    // SAFETY: the hook runs in the forked child before exec and makes only the setsid and
    // fcntl system calls, which are async-signal-safe and touch no memory of ours.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if libc::fcntl(keep, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The pipe our starter passed us, its fd number in the environment variable `var`; taken
/// once (later calls get None), and only if that fd is a pipe.
pub fn inherited_pipe(var: &str) -> Option<std::io::PipeWriter> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let fd: RawFd = std::env::var(var).ok()?.parse().ok().filter(|fd| *fd > 2)?;
    let st = rustix::fs::fstat(
        // SAFETY: only borrowed for this call, which fails cleanly on a closed fd.
        unsafe { BorrowedFd::borrow_raw(fd) },
    )
    .ok()?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Fifo
        || TAKEN.swap(true, Ordering::SeqCst)
    {
        return None;
    }
    // SAFETY: the starter made this fd for us alone and nothing else in this process owns it;
    // TAKEN makes sure it is owned once.
    Some(unsafe { OwnedFd::from_raw_fd(fd) }.into())
}

/// SIGKILLs process `pid` (never a group: a pid below 1 is ignored), whether or not it is
/// still there.
pub fn kill(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}
