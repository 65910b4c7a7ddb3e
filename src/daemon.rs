//! Per-image FUSE daemons: a daemon (this same binary, hidden `serve-image` command) runs
//! detached from the command that started it, serves one image's rootfs, answers its control
//! socket, and reports on a pipe (see [`nestfs_fuse::ready`]) once its mount is up. This module
//! runs and stops processes; which mount a daemon serves is the store's to say, and when to
//! start or stop one is [`crate::lifecycle`]'s.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nestfs_fuse::handover::Connection;
use nestfs_fuse::mounts::{is_mounted, unmount};
use nestfs_fuse::ready::{self, Reporter, Verdict};
use nestfs_fuse::{KeeperMount, OverlayConfig, Quota};

use crate::control::{self, Status, Stopped};
use crate::sys;

/// How long `create` waits for a daemon to mount.
const MOUNT_WAIT: Duration = Duration::from_secs(30);
/// How long `delete` waits for a daemon that does not answer to exit before killing it.
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// How long `delete` gives an answering daemon to exit after its unmount; one still running
/// then serves users elsewhere.
const SETTLE_WAIT: Duration = Duration::from_secs(2);
/// The variable naming the fd a started daemon reports its verdict on.
const READY_FD: &str = "NESTFS_READY_FD";

/// Every way starting or stopping a daemon fails.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "/dev/fuse is missing: load the fuse module (modprobe fuse), or in a container pass the \
         device in (e.g. docker run --device /dev/fuse)"
    )]
    NoFuseDevice,
    #[error(
        "/dev/fuse is not readable and writable by uid {0}: make it mode 0666 as Debian's udev \
         rule does (chmod 0666 /dev/fuse), or run nestfs as root"
    )]
    FuseDenied(u32),
    #[error("cannot open /dev/fuse: {0}")]
    FuseUnusable(io::Error),
    #[error(
        "fusermount3 is not installed (package fuse3): unprivileged users mount FUSE \
         filesystems through it"
    )]
    NoFusermount,
    #[error("image daemon exited ({status}) before mounting: {why}")]
    Exited { status: ExitStatus, why: String },
    #[error("image daemon did not mount {} within {MOUNT_WAIT:?}", .0.display())]
    NotMounted(PathBuf),
    #[error(
        "{0} is served without a keeper (started as a non-root user, or by a nestfs without \
         failover): it cannot be handed over; delete and create it again once its container \
         stopped"
    )]
    NoKeeper(String),
    #[error("cannot unmount {}: {cause}", mnt.display())]
    Unmount { mnt: PathBuf, cause: io::Error },
    #[error("{what}: {cause}")]
    Io { what: String, cause: io::Error },
}

type Result<T> = std::result::Result<T, DaemonError>;

fn io_ctx<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|cause| DaemonError::Io {
        what: what(),
        cause,
    })
}

/// Sends the overlay's warnings (it reports through `tracing`) to stderr, which is the
/// image's daemon.log.
fn log_overlay_warnings() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Says what is missing when this process could not serve a FUSE mount at all.
pub fn preflight() -> Result<()> {
    let uid = rustix::process::geteuid().as_raw();
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(DaemonError::NoFuseDevice),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(DaemonError::FuseDenied(uid));
        }
        Err(e) => return Err(DaemonError::FuseUnusable(e)),
    }
    let in_path = |bin: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
    };
    if uid != 0 && !in_path("fusermount3") {
        return Err(DaemonError::NoFusermount);
    }
    Ok(())
}

/// An image's daemon, known by what identifies it: the store (on its command line), the image
/// id, and the image dir it serves (rootfs, pid file and control socket are in there).
pub struct Daemon {
    store: PathBuf,
    id: String,
    dir: PathBuf,
}

impl Daemon {
    pub fn new(store: &Path, id: &str, dir: PathBuf) -> Daemon {
        Daemon {
            store: store.to_path_buf(),
            id: id.to_string(),
            dir,
        }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("daemon.pid")
    }

    /// Starts the daemon and waits until it says its rootfs is mounted. As root, through a
    /// keeper that mounts `mount` and holds its FUSE connection (see docs/failover.md).
    pub fn start(&self, mount: &KeeperMount) -> Result<()> {
        preflight()?;
        let log_path = self.dir.join("daemon.log");
        let mut log = io_ctx(std::fs::File::create(&log_path), || {
            format!("create {}", log_path.display())
        })?;
        let (verdict, report) = io_ctx(std::io::pipe(), || "make the daemon's pipe".into())?;
        let exe = io_ctx(std::env::current_exe(), || "find the nestfs binary".into())?;
        let mut cmd = match keeper_binary() {
            Some(keeper) if rustix::process::geteuid().is_root() => {
                let mut c = Command::new(keeper);
                c.arg("--mount")
                    .arg(self.rootfs())
                    .arg("--source")
                    .arg(&mount.source)
                    .arg("--flags")
                    .arg(mount.flags.to_string())
                    .arg("--data")
                    .arg(&mount.data)
                    .arg("--")
                    .arg(exe);
                c
            }
            keeper => {
                if keeper.is_none() {
                    let _ = writeln!(
                        log,
                        "no nestfs-keeper beside nestfs or in PATH: this rootfs dies with its \
                         daemon"
                    );
                }
                Command::new(exe)
            }
        };
        cmd.arg("--store")
            .arg(&self.store)
            .arg("serve-image")
            .arg(&self.id)
            .env(READY_FD, report.as_raw_fd().to_string())
            .stdin(Stdio::null())
            .stdout(io_ctx(log.try_clone(), || "log".into())?)
            .stderr(log);
        // Its own session: Garden's signals to the plugin's process group must not reach it.
        sys::detach_on_exec(&mut cmd, report.as_raw_fd());
        let mut child = io_ctx(cmd.spawn(), || "start the image daemon".into())?;
        // Ours closed, the daemon's end is the pipe's last: its exit reads as end of file.
        drop(report);
        match ready::wait(verdict, Some(MOUNT_WAIT)) {
            // The daemon outlives us; its exit status is nobody's business once it served.
            Verdict::Ready => Ok(()),
            Verdict::TimedOut => {
                // The keeper, if it is one, and its daemon.
                self.kill_strays();
                let _ = child.wait();
                Err(DaemonError::NotMounted(self.rootfs()))
            }
            Verdict::Failed(why) => Err(DaemonError::Exited {
                status: child.wait().unwrap_or_default(),
                why,
            }),
            Verdict::Died => Err(DaemonError::Exited {
                status: child.wait().unwrap_or_default(),
                why: format!("it said nothing (see {})", log_path.display()),
            }),
        }
    }

    /// The daemon itself (in the `serve-image` process): mounts `cfg` on the rootfs (or serves
    /// `conn`, the connection its keeper mounted), counts the upper dir's usage against `limit`
    /// (0: none), answers the control socket, tells its starter once the mount is up, and
    /// serves until the rootfs is unmounted.
    pub fn serve(
        &self,
        cfg: OverlayConfig,
        limit: u64,
        conn: Option<Connection>,
    ) -> anyhow::Result<()> {
        log_overlay_warnings();
        let report = sys::inherited_pipe(READY_FD).map(Reporter::new);
        let prepared = self.prepare(cfg, limit, conn);
        if let Some(r) = report {
            match &prepared {
                Ok(_) => r.ready(),
                Err(e) => r.failed(e),
            }
        }
        let prepared = prepared?;
        let served = prepared.serve();
        let _ = std::fs::remove_file(self.dir.join(control::SOCKET));
        served
    }

    /// Everything up to a live mount.
    fn prepare(
        &self,
        mut cfg: OverlayConfig,
        limit: u64,
        conn: Option<Connection>,
    ) -> anyhow::Result<nestfs_fuse::Prepared> {
        shun_oom_killer()?;
        // Usage survives restarts: the upper dir is measured once, then counted change by change.
        let upper = self.dir.join("upper");
        let used = nestfs_fuse::allocated_bytes(&upper)
            .with_context(|| format!("measure {}", upper.display()))?;
        let quota = Arc::new(Quota::new(limit, used));
        cfg.quota = Some(quota.clone());
        let mnt = self.rootfs();
        // Pid file and control socket come before the mount: `start` returns as soon as the
        // rootfs is mounted, and from then on `list`, `stats` and `delete` must find the daemon
        // answering.
        let me = Proc::current()?;
        let keeper = match conn {
            Some(_) => Some(Proc::parent()?),
            None => None,
        };
        let line = match keeper {
            Some(k) => format!("{} {} {} {}\n", me.pid, me.start, k.pid, k.start),
            None => format!("{} {}\n", me.pid, me.start),
        };
        std::fs::write(self.pid_file(), line)?;
        let target = mnt.clone();
        let keeper_pid = keeper.map(|k| k.pid as u32);
        control::listen(&self.dir, quota, keeper_pid, move || {
            unmount(&target, false)
        })?;
        let prepared = match conn {
            Some(c) => nestfs_fuse::prepare_on(&cfg, c),
            None => nestfs_fuse::prepare(&cfg, &mnt),
        }
        .inspect_err(|_| {
            let _ = std::fs::remove_file(self.dir.join(control::SOCKET));
        })?;
        nestfs_fuse::shed_startup_pages();
        Ok(prepared)
    }

    /// Whether a keeper holds the daemon's connection (see [`Daemon::start`]).
    pub fn has_keeper(&self) -> bool {
        Proc::keeper(self).is_some()
    }

    /// Ends the daemon, so that its keeper starts the binary installed now on the same FUSE
    /// connection, and waits until the new daemon answers: the old and new pids, or None if no
    /// daemon serves the image. Requests the old one had taken are sent to the new one.
    pub fn hand_over(&self) -> Result<Option<(i32, i32)>> {
        let Some(old) = Proc::recorded(self) else {
            return Ok(None);
        };
        if Proc::keeper(self).is_none() {
            return Err(DaemonError::NoKeeper(self.id.clone()));
        }
        sys::kill(old.pid);
        let start = Instant::now();
        loop {
            match control::request::<Status>(&self.dir, "status") {
                Ok(s) if s.pid as i32 != old.pid => return Ok(Some((old.pid, s.pid as i32))),
                _ if start.elapsed() > MOUNT_WAIT => {
                    return Err(DaemonError::NotMounted(self.rootfs()));
                }
                _ => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    /// The rootfs's state and, when the daemon answers, its status.
    pub fn state(&self) -> (State, Option<Status>) {
        if !is_mounted(&self.rootfs()) {
            return (State::NotMounted, None);
        }
        match control::request::<Status>(&self.dir, "status") {
            Ok(s) => (State::Mounted, Some(s)),
            // A daemon that died while its keeper lives is being replaced right now.
            Err(_) if Proc::recorded(self).is_none() && Proc::keeper(self).is_some() => {
                (State::Mounted, None)
            }
            Err(_) => (State::DaemonDead, None),
        }
    }

    /// Stops the daemon and unmounts the rootfs: gracefully through the control socket; lazily
    /// if the rootfs is busy. A daemon that answered is never killed: if it still serves other
    /// users after a short wait, that is what [`Stop::StillServing`] says. Only one that died
    /// (a dead FUSE mount) or hangs is unmounted and killed. Fine when nothing is mounted (a
    /// reboot).
    pub fn stop(&self) -> Result<Stop> {
        let mnt = self.rootfs();
        let daemon = Proc::recorded(self);
        let keeper = Proc::keeper(self);
        let answered = if is_mounted(&mnt) {
            let graceful = control::request::<Stopped>(&self.dir, "stop");
            if !graceful.as_ref().is_ok_and(|s| s.stopped) {
                // Busy, or no answer: detach now.
                if let Err(cause) = unmount(&mnt, true)
                    && is_mounted(&mnt)
                {
                    return Err(DaemonError::Unmount { mnt, cause });
                }
            }
            graceful.is_ok()
        } else {
            // Not mounted here, yet maybe serving a mount in another namespace.
            control::request::<Status>(&self.dir, "status").is_ok()
        };
        if !answered && let Some(k) = keeper {
            // Before its daemon (or while it replaces one): a keeper would start another.
            sys::kill(k.pid);
        }
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

    /// Kills every process serving this image, whatever the pid file says: the daemon of a
    /// `create` that was killed may not have written it yet. Only for a half-made image, which
    /// no container uses.
    pub fn kill_strays(&self) {
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
            .filter(|p| p.serves(self))
            .collect();
        // Keepers first: a keeper would start a daemon again.
        for p in strays.iter().filter(|p| p.is_keeper()).chain(&strays) {
            sys::kill(p.pid);
        }
        let start = Instant::now();
        while strays.iter().any(Proc::runs) && start.elapsed() < EXIT_WAIT {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// `nestfs-keeper`: installed beside this binary, else in PATH (where a plugin binary was
/// copied away from its installation, as GrootFS's specs do).
fn keeper_binary() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()?
        .with_file_name("nestfs-keeper");
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(beside)
        .chain(std::env::split_paths(&path).map(|d| d.join("nestfs-keeper")))
        .find(|k| k.is_file())
}

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

/// What [`Daemon::stop`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// No daemon runs for the image: it can be removed.
    Gone,
    /// The daemon (this pid) still serves someone: a process inside the detached rootfs, or a
    /// container whose mount namespace holds its own mount of it. It must not be killed, and
    /// its upper dir must stay until it exits (it removes a retired image itself then).
    StillServing(i32),
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
    fn current() -> io::Result<Proc> {
        Proc::of(std::process::id() as i32)
    }

    fn parent() -> io::Result<Proc> {
        Proc::of(rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get()))
    }

    fn of(pid: i32) -> io::Result<Proc> {
        let start = start_time(pid).ok_or_else(|| io::Error::other("read /proc/PID/stat"))?;
        Ok(Proc { pid, start })
    }

    /// The daemon the image's pid file names, if that process still runs and serves this
    /// image of this store.
    fn recorded(daemon: &Daemon) -> Option<Proc> {
        Proc::named(daemon, 0)
    }

    /// The keeper of the daemon the pid file names (see [`Daemon::start`]), likewise.
    fn keeper(daemon: &Daemon) -> Option<Proc> {
        Proc::named(daemon, 2)
    }

    /// The process whose pid and start time are fields `at` and `at + 1` of the pid file.
    fn named(daemon: &Daemon, at: usize) -> Option<Proc> {
        let text = std::fs::read_to_string(daemon.pid_file()).ok()?;
        let mut fields = text.split_whitespace().skip(at).map(str::parse::<u64>);
        let (Some(Ok(pid)), Some(Ok(start))) = (fields.next(), fields.next()) else {
            return None;
        };
        let p = Proc {
            pid: i32::try_from(pid).ok()?,
            start,
        };
        p.serves(daemon).then_some(p)
    }

    /// Whether this process is a keeper (see [`Daemon::start`]).
    fn is_keeper(&self) -> bool {
        // argv[0], not /proc/PID/exe: that reads "... (deleted)" once a new nestfs is installed.
        std::fs::read(format!("/proc/{}/cmdline", self.pid)).is_ok_and(|c| {
            c.split(|b| *b == 0)
                .next()
                .is_some_and(|a| a.ends_with(b"nestfs-keeper"))
        })
    }

    /// Whether this process still runs (and is not a zombie).
    fn runs(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }

    /// Whether this process runs and is `daemon`.
    fn serves(&self, daemon: &Daemon) -> bool {
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
                std::fs::canonicalize(&daemon.store),
            );
            theirs.is_ok_and(|t| ours.is_ok_and(|o| t == o))
        });
        same_store && after(b"serve-image") == Some(daemon.id.as_bytes())
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
