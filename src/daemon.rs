//! Per-image FUSE daemons: `create` starts one (this same binary, hidden `serve-image` command)
//! detached from the caller, and returns once `images/ID/rootfs` answers; `delete` unmounts it,
//! which ends the daemon.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nestfs_fuse::OverlayConfig;

use crate::store::{Result, Store, StoreError, io_ctx};

/// How long `create` waits for a daemon to mount.
const MOUNT_WAIT: Duration = Duration::from_secs(30);
/// How long `delete` waits for a daemon to exit after its unmount.
const EXIT_WAIT: Duration = Duration::from_secs(10);

fn unescape(s: &str) -> String {
    // /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `p` is a mount point.
pub fn is_mounted(p: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| unescape(m) == want))
}

fn rootfs(store: &Store, id: &str) -> PathBuf {
    store.image_dir(id).join("rootfs")
}

fn pid_file(store: &Store, id: &str) -> PathBuf {
    store.image_dir(id).join("daemon.pid")
}

/// The mount an image's daemon serves: its volumes top first, its upper and work dirs.
pub fn overlay_config(store: &Store, id: &str) -> Result<OverlayConfig> {
    let meta = store.image_meta(id)?;
    let dir = store.image_dir(id);
    let mut cfg = OverlayConfig {
        lowerdirs: meta
            .layers
            .iter()
            .rev()
            .map(|k| store.volume_dir(k))
            .collect(),
        upperdir: Some(dir.join("upper")),
        workdir: Some(dir.join("work")),
        fsname: format!("nestfs:{id}"),
        ..OverlayConfig::default()
    };
    if cfg.lowerdirs.is_empty() {
        // An image without layers (e.g. an empty tarball) still needs a lower dir.
        cfg.lowerdirs.push(dir.join("empty"));
    }
    Ok(cfg)
}

/// Starts the image's daemon and waits until its rootfs is mounted.
pub fn start(store: &Store, id: &str) -> Result<()> {
    let dir = store.image_dir(id);
    let log_path = dir.join("daemon.log");
    let log = io_ctx(std::fs::File::create(&log_path), || {
        format!("create {}", log_path.display())
    })?;
    let exe = io_ctx(std::env::current_exe(), || "find the nestfs binary".into())?;
    let mut cmd = Command::new(exe);
    cmd.arg("--store")
        .arg(store.root())
        .arg("serve-image")
        .arg(id)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| StoreError::Io {
            what: "log".into(),
            source: e,
        })?)
        .stderr(log);
    // Its own session: Garden's signals to the plugin's process group must not reach it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = io_ctx(cmd.spawn(), || "start the image daemon".into())?;
    let mnt = rootfs(store, id);
    let start = Instant::now();
    loop {
        if is_mounted(&mnt) {
            // The daemon outlives us; its exit status is nobody's business once it served.
            std::mem::forget(child);
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(StoreError::Daemon(format!(
                "image daemon exited ({status}) before mounting: {}",
                last_line(&log_path)
            )));
        }
        if start.elapsed() > MOUNT_WAIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(StoreError::Daemon(format!(
                "image daemon did not mount {} within {MOUNT_WAIT:?}: {}",
                mnt.display(),
                last_line(&log_path)
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn last_line(p: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(p) {
        let _ = f.read_to_string(&mut s);
    }
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_string()
}

/// The daemon itself: mounts the image's rootfs and serves it until it is unmounted.
pub fn serve(store: &Store, id: &str) -> anyhow::Result<()> {
    let cfg = overlay_config(store, id)?;
    if let Some(l) = cfg.lowerdirs.first()
        && cfg.lowerdirs.len() == 1
    {
        std::fs::create_dir_all(l)?;
    }
    let mnt = rootfs(store, id);
    let prepared = nestfs_fuse::prepare(&cfg, &mnt)?;
    std::fs::write(pid_file(store, id), std::process::id().to_string())?;
    prepared.serve()
}

/// Unmounts the image's rootfs (lazily if busy) and waits for its daemon to exit; fine when the
/// daemon died (a dead FUSE mount) or never ran since a reboot (no mount).
pub fn stop(store: &Store, id: &str) -> Result<()> {
    let mnt = rootfs(store, id);
    if is_mounted(&mnt) {
        let c =
            std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).expect("no NUL in a path");
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&mnt)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok && is_mounted(&mnt) {
                return Err(StoreError::Daemon(format!(
                    "cannot unmount {}",
                    mnt.display()
                )));
            }
        }
    }
    if let Some(pid) = std::fs::read_to_string(pid_file(store, id))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        let start = Instant::now();
        while alive(pid) && start.elapsed() < EXIT_WAIT {
            std::thread::sleep(Duration::from_millis(5));
        }
        if alive(pid) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    Ok(())
}

/// Whether `pid` is a running nestfs daemon (not a recycled pid of something else).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.contains("serve-image")
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    })
}
