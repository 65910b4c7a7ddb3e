//! nestfs-keeper: holds one image's FUSE connection while the servers of it come and go, so a
//! container's rootfs survives its daemon (see `nestfs_fuse::handover`, docs/failover.md).
//!
//! `nestfs-keeper --mount DIR --source NAME --flags N --data OPTS -- SERVER [ARGS...]`
//!
//! It mounts DIR itself on a `/dev/fuse` fd it keeps, takes the kernel's one FUSE_INIT, and
//! starts SERVER with the connection (fd, a socket the INIT is replayed on, the ledger memfd,
//! an epoch). The first server's INIT answer goes to the kernel; later ones only take over.
//! When a server dies, requests it had taken are sent again (FUSE_NOTIFY_RESEND) and the next
//! starts. A server that exits 0 saw the mount go away: the keeper exits too.
//!
//! It reads nothing but its arguments, the kernel's INIT and the servers' INIT answers: it is
//! the one process a container's rootfs cannot lose, so it does as little as it can.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nestfs_fuse::handover;
use rustix::fs::{Mode, OFlags};
use rustix::io::FdFlags;
use rustix::mount::{MountFlags, UnmountFlags};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// FUSE_INIT's opcode, in the request header.
const FUSE_INIT: u32 = 26;
/// The notification that has the kernel queue again what the dead server had taken
/// (Linux 6.9).
const FUSE_NOTIFY_RESEND: i32 = 7;
/// Servers that fail within this of starting, this many times in a row, are not restarted:
/// something in the image or the store keeps them from serving. A SIGKILL is no failure of
/// theirs (the OOM killer, an operator, `nestfs upgrade`); those only slow restarts down.
const QUICK_DEATH: Duration = Duration::from_secs(2);
const QUICK_DEATHS: u32 = 5;
/// What a set-up server is told when the mount is there (else it is told why not).
const GO: &[u8] = handover::GO;
/// The variable a starter names its readiness pipe in: only the first server reports.
const READY_FD: &str = "NESTFS_READY_FD";

struct Args {
    mount: OsString,
    source: String,
    flags: u64,
    data: String,
    server: Vec<OsString>,
}

fn args() -> anyhow::Result<Args> {
    let mut it = std::env::args_os().skip(1);
    let (mut mount, mut source, mut flags, mut data) = (None, None, None, None);
    while let Some(a) = it.next() {
        let mut value = || it.next().context("missing value");
        match a.to_str() {
            Some("--mount") => mount = Some(value()?),
            Some("--source") => source = Some(value()?.to_string_lossy().into_owned()),
            Some("--flags") => flags = Some(value()?.to_string_lossy().parse()?),
            Some("--data") => data = Some(value()?.to_string_lossy().into_owned()),
            Some("--") => break,
            _ => bail!("unknown argument {a:?}"),
        }
    }
    let server: Vec<OsString> = it.collect();
    match (mount, source, flags, data, server.is_empty()) {
        (Some(mount), Some(source), Some(flags), Some(data), false) => Ok(Args {
            mount,
            source,
            flags,
            data,
            server,
        }),
        _ => bail!(
            "usage: nestfs-keeper --mount DIR --source NAME --flags N --data OPTS -- SERVER ..."
        ),
    }
}

fn main() -> ExitCode {
    match keep() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nestfs-keeper: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn keep() -> anyhow::Result<ExitCode> {
    let a = args()?;
    // The keeper's death would take the rootfs with it: the OOM killer must never pick it.
    // Only root may ask; anyone else keeps what it inherited.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    // Without close-on-exec: every server inherits this very fd.
    let fuse = rustix::fs::open("/dev/fuse", OFlags::RDWR, Mode::empty()).context("/dev/fuse")?;
    let ledger = rustix::fs::memfd_create("nestfs-ledger", rustix::fs::MemfdFlags::empty())
        .context("memfd for the ledger")?;
    let mut mounted = false;
    let served = serve(&a, &fuse, &ledger, &mut mounted);
    if mounted && !matches!(served, Ok(ExitCode::SUCCESS)) {
        // Nobody serves it any more: no container may hang on it.
        let _ = rustix::mount::unmount(a.mount.as_os_str(), UnmountFlags::DETACH);
    }
    served
}

/// Mounts `a.mount` on the connection `fuse`; returns the kernel's FUSE_INIT.
fn mount(a: &Args, fuse: &OwnedFd) -> anyhow::Result<Vec<u8>> {
    let data = std::ffi::CString::new(format!(
        "{},fd={},rootmode=40000,user_id={},group_id={}",
        a.data,
        fuse.as_raw_fd(),
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw()
    ))?;
    rustix::mount::mount(
        a.source.as_str(),
        a.mount.as_os_str(),
        "fuse",
        MountFlags::from_bits_retain(a.flags as _),
        data.as_c_str(),
    )
    .with_context(|| format!("mount {}", a.mount.to_string_lossy()))?;
    let mut buf = vec![0u8; 1 << 17];
    let n = rustix::io::read(fuse, &mut buf).context("read FUSE_INIT")?;
    buf.truncate(n);
    if n < 8 || u32::from_ne_bytes(buf[4..8].try_into()?) != FUSE_INIT {
        bail!("the kernel's first request is not FUSE_INIT");
    }
    Ok(buf)
}

/// Starts servers until one exits because the mount went away. The mount is made once the
/// first server is set to serve it (its control socket answers from the moment the rootfs is
/// mounted, as without a keeper).
fn serve(
    a: &Args,
    fuse: &OwnedFd,
    ledger: &OwnedFd,
    mounted: &mut bool,
) -> anyhow::Result<ExitCode> {
    let mut init = Vec::new();
    let mut first: Option<Vec<u8>> = None;
    // Servers in a row that died before they served (any cause), and that failed early (not
    // SIGKILLed).
    let (mut epoch, mut deaths, mut failures) = (0u32, 0u32, 0u32);
    loop {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::empty(),
            None,
        )
        .context("socket pair for FUSE_INIT")?;
        rustix::io::fcntl_setfd(&ours, FdFlags::CLOEXEC)?;
        let conn = format!(
            "{}:{}:{}:{epoch}",
            fuse.as_raw_fd(),
            theirs.as_raw_fd(),
            ledger.as_raw_fd()
        );
        let mut cmd = Command::new(&a.server[0]);
        cmd.args(&a.server[1..]).env(handover::ENV, conn);
        if epoch > 0 {
            cmd.env_remove(READY_FD);
        }
        let started = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if epoch == 0 => return Err(e).context("start the server"),
            // Mid-install, say: the rootfs waits, and the next try may find the binary.
            Err(e) => {
                eprintln!("nestfs-keeper: cannot start {:?}: {e}", a.server[0]);
                deaths += 1;
                std::thread::sleep(pause(deaths));
                continue;
            }
        };
        drop(theirs);
        if epoch == 0 {
            // The first server has its copy now and reports on it, also what fails here.
            close_ready_pipe();
        }
        // The server says when it is set up; one that dies first says nothing.
        let set = rustix::io::read(&ours, &mut [0u8; 1]).is_ok_and(|n| n == 1);
        if set && !*mounted {
            match mount(a, fuse) {
                Ok(i) => (init, *mounted) = (i, true),
                Err(e) => {
                    // The server says it to the starter, and cleans up.
                    let _ = rustix::io::write(&ours, format!("{e:#}").as_bytes());
                    let _ = child.wait();
                    return Err(e);
                }
            }
        }
        let answer = set.then(|| handshake(&ours, &init)).flatten();
        drop(ours);
        match (&answer, &first) {
            (Some(r), None) => {
                rustix::io::write(fuse, r).context("answer FUSE_INIT")?;
                first = answer.clone();
            }
            (Some(r), Some(f)) if r != f => {
                eprintln!("nestfs-keeper: server {epoch} answered FUSE_INIT differently")
            }
            (None, None) => {
                // It said why on the starter's pipe.
                let status = child.wait()?;
                bail!("the first server exited ({status}) before it served");
            }
            _ => {}
        }
        let status = child.wait().context("wait for the server")?;
        if status.success() {
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "nestfs-keeper: server {} (pid {}) exited ({status}); another takes over",
            epoch,
            child.id()
        );
        resend(fuse);
        deaths = if answer.is_none() { deaths + 1 } else { 0 };
        failures = if started.elapsed() < QUICK_DEATH && status.signal() != Some(libc::SIGKILL) {
            failures + 1
        } else {
            0
        };
        if failures >= QUICK_DEATHS {
            bail!("{failures} servers in a row failed within {QUICK_DEATH:?}: giving up");
        }
        std::thread::sleep(pause(deaths.max(failures)));
        epoch = epoch.wrapping_add(1);
    }
}

/// How long to wait before starting a server after `deaths` deaths in a row before serving (or
/// early failures): none for the first (a takeover is at once), then doubling up to a second,
/// so that a server killed at every start (by the OOM killer, say) costs little.
fn pause(deaths: u32) -> Duration {
    match deaths {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(10 << (n - 2).min(7)).min(Duration::from_secs(1)),
    }
}

/// Replays FUSE_INIT to a new server; its answer, if it lived to give one.
fn handshake(sock: &OwnedFd, init: &[u8]) -> Option<Vec<u8>> {
    rustix::io::write(sock, GO).ok()?;
    rustix::io::write(sock, init).ok()?;
    let mut buf = vec![0u8; 1 << 16];
    match rustix::io::read(sock, &mut buf) {
        Ok(n) if n > 0 => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// Has the kernel queue again the requests the dead server had read but not answered: the
/// next server answers them. Kernels before 6.9 refuse it; those requests then wait until the
/// mount goes away.
fn resend(fuse: &OwnedFd) {
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&16u32.to_ne_bytes());
    header[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    if let Err(e) = rustix::io::write(fuse.as_fd(), &header) {
        eprintln!(
            "nestfs-keeper: FUSE_NOTIFY_RESEND refused ({e}; Linux 6.9 has it): requests the \
             dead server held wait until the mount goes away"
        );
    }
}

/// Closes the keeper's copy of the starter's readiness pipe (see `nestfs_fuse::ready`): the
/// starter reads until every copy is closed.
fn close_ready_pipe() {
    let fd = std::env::var(READY_FD).ok().and_then(|v| v.parse().ok());
    if let Some(fd) = fd {
        drop(nestfs_fuse::process::inherited_fd(fd));
    }
}
