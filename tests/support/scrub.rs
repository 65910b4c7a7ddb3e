//! Removing a private podman's dir after a test, whatever the test left running in it: every
//! process whose arguments or environment name the dir (podman's pause process, conmon, mount
//! programs) is killed, mounts beneath it are detached, then the dir goes. Shared by the podman
//! tests of both crates.

use std::path::Path;

pub fn scrub(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    for pid in processes_mentioning(&needle) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    for m in nestfs_fuse::mounts::list() {
        if m.point.to_string_lossy().starts_with(&needle) {
            let _ = rustix::mount::unmount(&m.point, rustix::mount::UnmountFlags::DETACH);
        }
    }
    // Killed processes may still hold files for a moment.
    for _ in 0..20 {
        if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Processes whose arguments or environment contain `needle`, other than this one.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let mentions = ["cmdline", "environ"].iter().any(|f| {
            std::fs::read(e.path().join(f))
                .is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
        });
        if mentions && pid != me {
            pids.push(pid);
        }
    }
    pids
}
