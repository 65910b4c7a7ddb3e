//! The crate's only `unsafe`: what std and rustix offer no safe form of.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Starts `cmd`'s process in a session of its own, so signals to our process group (Garden's
/// to the plugin) do not reach it.
pub fn new_session_on_exec(cmd: &mut Command) {
    // SAFETY: the hook runs in the forked child before exec and calls only setsid, which is
    // async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
}

/// SIGKILLs process `pid` (never a group: a pid below 1 is ignored), whether or not it is
/// still there.
pub fn kill(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}
