//! Per-image FUSE daemons: `create` starts one (this same binary, hidden `serve-image` command)
//! detached from the caller, and returns once `images/ID/rootfs` answers; `delete` stops it
//! through its control socket; `remount` serves an image again after its daemon died.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use anyhow::Context;
use nestfs_fuse::mounts::{is_mounted, unmount};
use nestfs_fuse::{OverlayConfig, Quota};

use crate::control::{self, Status, Stopped};
use crate::store::{Result, Store, StoreError, io_ctx};
use crate::sys;

/// How long `create` waits for a daemon to mount.
const MOUNT_WAIT: Duration = Duration::from_secs(30);
/// How long `delete` waits for a daemon that does not answer to exit before killing it.
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// How long `delete` gives an answering daemon to exit after its unmount; one still running
/// then serves users elsewhere.
const SETTLE_WAIT: Duration = Duration::from_secs(2);

fn rootfs(store: &Store, id: &str) -> PathBuf {
    store.image_dir(id).join("rootfs")
}

fn pid_file(store: &Store, id: &str) -> PathBuf {
    store.image_dir(id).join("daemon.pid")
}

/// Sends the overlay's warnings (it reports through `tracing`) to stderr, which is the
/// image's daemon.log.
fn log_overlay_warnings() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The mount an image's daemon serves: its volumes top first, its upper and work dirs.
pub fn overlay_config(store: &Store, id: &str) -> Result<OverlayConfig> {
    let meta = store.image_meta(id)?;
    let dir = store.image_dir(id);
    // Layers keep the image's ids; the mount shows them through the store's mappings, and
    // the upper dir gets host ids.
    let ids = store.meta()?.id_map();
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
        ids,
        meta_xattrs: store.meta()?.rootless,
        ..OverlayConfig::default()
    };
    if cfg.lowerdirs.is_empty() {
        // An image without layers (e.g. an empty tarball) still needs a lower dir.
        cfg.lowerdirs.push(dir.join("empty"));
    }
    Ok(cfg)
}

/// Says what is missing when this process could not serve a FUSE mount at all.
pub fn preflight() -> Result<()> {
    let uid = rustix::process::geteuid().as_raw();
    let missing = |m: String| Err(StoreError::Daemon(m));
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return missing(
                "/dev/fuse is missing: load the fuse module (modprobe fuse), or in a container \
                 pass the device in (e.g. docker run --device /dev/fuse)"
                    .into(),
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return missing(format!(
                "/dev/fuse is not readable and writable by uid {uid}: make it mode 0666 as \
                 Debian's udev rule does (chmod 0666 /dev/fuse), or run nestfs as root"
            ));
        }
        Err(e) => return missing(format!("cannot open /dev/fuse: {e}")),
    }
    let in_path = |bin: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
    };
    if uid != 0 && !in_path("fusermount3") {
        return missing(
            "fusermount3 is not installed (package fuse3): unprivileged users mount FUSE \
             filesystems through it"
                .into(),
        );
    }
    Ok(())
}

/// Starts the image's daemon and waits until its rootfs is mounted.
pub fn start(store: &Store, id: &str) -> Result<()> {
    preflight()?;
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
            cause: e,
        })?)
        .stderr(log);
    // Its own session: Garden's signals to the plugin's process group must not reach it.
    sys::new_session_on_exec(&mut cmd);
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

/// The daemon itself: mounts the image's rootfs, counts its disk usage against its limit, answers
/// its control socket and serves until the rootfs is unmounted.
pub fn serve(store: &Store, id: &str) -> anyhow::Result<()> {
    log_overlay_warnings();
    shun_oom_killer()?;
    let mut cfg = overlay_config(store, id)?;
    if let Some(l) = cfg.lowerdirs.first()
        && cfg.lowerdirs.len() == 1
    {
        std::fs::create_dir_all(l)?;
    }
    let dir = store.image_dir(id);
    let meta = store.image_meta(id)?;
    // Usage survives restarts: the upper dir is measured once, then counted change by change.
    let upper = dir.join("upper");
    let used = nestfs_fuse::allocated_bytes(&upper)
        .with_context(|| format!("measure {}", upper.display()))?;
    let quota = Arc::new(Quota::new(store.upper_limit(&meta), used));
    cfg.quota = Some(quota.clone());
    let mnt = rootfs(store, id);
    // Followed to wherever a delete moves the image while this daemon still serves it.
    let dir_fd = std::fs::File::open(&dir).with_context(|| format!("open {}", dir.display()))?;
    // Pid file and control socket come before the mount: `start` returns as soon as the rootfs
    // is mounted, and from then on `list`, `stats` and `delete` must find the daemon answering.
    let me = Proc::current()?;
    std::fs::write(pid_file(store, id), format!("{} {}\n", me.pid, me.start))?;
    let target = mnt.clone();
    control::listen(&dir, quota, move || unmount(&target, false))?;
    let prepared = nestfs_fuse::prepare(&cfg, &mnt).inspect_err(|_| {
        let _ = std::fs::remove_file(dir.join(control::SOCKET));
    })?;
    nestfs_fuse::shed_startup_pages();
    let served = prepared.serve();
    let _ = std::fs::remove_file(dir.join(control::SOCKET));
    // A delete while someone still used the rootfs retired the image rather than removing
    // it: its last user is gone now, and so is the image.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&dir_fd);
    if let Ok(now) = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        && now
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(RETIRED))
    {
        drop(dir_fd);
        let _ = crate::store::remove_tree(&now);
    }
    served
}

/// The name prefix of an image `delete` retired while its daemon still served it
/// (`.retired-<daemon pid>-<id>`, which `sweep` removes once that pid is gone).
pub const RETIRED: &str = ".retired-";

/// How much the OOM killer should spare image daemons: a killed daemon leaves its container's
/// rootfs answering ENOTCONN, so the kernel should pick almost anything else first.
const OOM_SCORE_ADJ: i32 = -999;

/// Makes the OOM killer prefer other processes to this daemon. Only root may lower the score:
/// an unprivileged daemon keeps the one it inherited.
fn shun_oom_killer() -> anyhow::Result<()> {
    match std::fs::write("/proc/self/oom_score_adj", OOM_SCORE_ADJ.to_string()) {
        Err(e) if e.kind() != std::io::ErrorKind::PermissionDenied => {
            Err(e).context("lower /proc/self/oom_score_adj")
        }
        _ => Ok(()),
    }
}

/// What an image's rootfs is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Served by a live daemon.
    Mounted,
    /// Still mounted, but its daemon is gone or does not answer: the rootfs fails with
    /// "transport endpoint is not connected" until `delete` or `remount`.
    DaemonDead,
    /// No mount at all (e.g. after a reboot).
    NotMounted,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Mounted => "mounted",
            State::DaemonDead => "daemon-dead",
            State::NotMounted => "not-mounted",
        })
    }
}

/// The image's state and, when its daemon answers, the daemon's status.
pub fn state(store: &Store, id: &str) -> (State, Option<Status>) {
    if !is_mounted(&rootfs(store, id)) {
        return (State::NotMounted, None);
    }
    match control::request::<Status>(&store.image_dir(id), "status") {
        Ok(s) => (State::Mounted, Some(s)),
        Err(_) => (State::DaemonDead, None),
    }
}

/// Serves an existing image again after its daemon died or the host rebooted, keeping its
/// upper dir. Returns false if it was already served, or deleted meanwhile.
pub fn remount(store: &Store, id: &str) -> Result<bool> {
    let Some(_g) = store.lock_image(id)? else {
        return Ok(false);
    };
    match state(store, id).0 {
        State::Mounted => return Ok(false),
        State::DaemonDead => {
            stop(store, id)?;
        }
        State::NotMounted => {}
    }
    start(store, id)?;
    Ok(true)
}

/// What [`stop`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// No daemon runs for the image: it can be removed.
    Gone,
    /// The daemon (this pid) still serves someone: a process inside the detached rootfs, or a
    /// container whose mount namespace holds its own mount of it. It must not be killed, and
    /// its upper dir must stay until it exits (it removes a retired image itself then).
    StillServing(i32),
}

/// Stops the image's daemon and unmounts its rootfs: gracefully through the control socket;
/// lazily if the rootfs is busy. A daemon that answered is never killed: if it still serves
/// other users after a short wait, that is what [`Stop::StillServing`] says. Only one that
/// died (a dead FUSE mount) or hangs is unmounted and killed. Fine when nothing is mounted (a
/// reboot).
pub fn stop(store: &Store, id: &str) -> Result<Stop> {
    let mnt = rootfs(store, id);
    let daemon = Proc::recorded(store, id);
    let answered = if is_mounted(&mnt) {
        let graceful = control::request::<Stopped>(&store.image_dir(id), "stop");
        if !graceful.as_ref().is_ok_and(|s| s.stopped) {
            // Busy, or no answer: detach now.
            if let Err(e) = unmount(&mnt, true)
                && is_mounted(&mnt)
            {
                return Err(StoreError::Daemon(format!(
                    "cannot unmount {}: {e}",
                    mnt.display()
                )));
            }
        }
        graceful.is_ok()
    } else {
        // Not mounted here, yet maybe serving a mount in another namespace.
        control::request::<Status>(&store.image_dir(id), "status").is_ok()
    };
    let Some(daemon) = daemon else {
        return Ok(Stop::Gone);
    };
    // Once nobody uses its mount, a daemon exits by itself within moments.
    let wait = if answered { SETTLE_WAIT } else { EXIT_WAIT };
    let start = Instant::now();
    while daemon.runs() && start.elapsed() < wait {
        std::thread::sleep(Duration::from_millis(2));
    }
    if !daemon.runs() {
        return Ok(Stop::Gone);
    }
    if answered {
        return Ok(Stop::StillServing(daemon.pid));
    }
    sys::kill(daemon.pid);
    Ok(Stop::Gone)
}

/// Kills every process serving `id` of `store`, whatever its pid file says: the daemon of a
/// `create` that was killed may not have written it yet. Only for a half-made image, which no
/// container uses.
pub fn kill_strays(store: &Store, id: &str) {
    let strays: Vec<Proc> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            Some(Proc {
                pid,
                start: start_time(pid)?,
            })
        })
        .filter(|p| p.serves(store, id))
        .collect();
    for p in &strays {
        sys::kill(p.pid);
    }
    let start = Instant::now();
    while strays.iter().any(Proc::runs) && start.elapsed() < EXIT_WAIT {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// An image's daemon process. A pid alone may since belong to anything, even another
/// image's daemon (pids are reused, e.g. after a reboot): the start time pins the process.
#[derive(Debug, Clone, Copy)]
struct Proc {
    pid: i32,
    /// Clock ticks after boot (field 22 of /proc/PID/stat).
    start: u64,
}

impl Proc {
    fn current() -> std::io::Result<Proc> {
        let pid = std::process::id() as i32;
        let start = start_time(pid).ok_or_else(|| std::io::Error::other("read /proc/self/stat"))?;
        Ok(Proc { pid, start })
    }

    /// The daemon the image's pid file names, if that process still runs and serves this
    /// image of this store.
    fn recorded(store: &Store, id: &str) -> Option<Proc> {
        let text = std::fs::read_to_string(pid_file(store, id)).ok()?;
        let mut fields = text.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(pid)), Some(Ok(start))) = (fields.next(), fields.next()) else {
            return None;
        };
        let p = Proc {
            pid: i32::try_from(pid).ok()?,
            start,
        };
        p.serves(store, id).then_some(p)
    }

    /// Whether this process still runs (and is not a zombie).
    fn runs(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }

    /// Whether this process runs and is the daemon of `id` in `store`.
    fn serves(&self, store: &Store, id: &str) -> bool {
        if !self.runs() {
            return false;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", self.pid)) else {
            return false;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let after = |flag: &[u8]| args.windows(2).find(|w| w[0] == flag).map(|w| w[1]);
        // The same store, however either run spelled its path.
        let same_store = after(b"--store").is_some_and(|root| {
            let root = Path::new(std::ffi::OsStr::from_bytes(root));
            let (theirs, ours) = (
                std::fs::canonicalize(root),
                std::fs::canonicalize(store.root()),
            );
            theirs.is_ok_and(|t| ours.is_ok_and(|o| t == o))
        });
        same_store && after(b"serve-image") == Some(id.as_bytes())
    }
}

/// When process `pid` started, if it runs and is not a zombie.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields follow the command name, which may hold spaces and parentheses: state is field 3,
    // the start time field 22.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}
