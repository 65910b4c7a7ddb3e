//! `nestfs-overlay`: the overlay filesystem with fuse-overlayfs's command line, so it can stand
//! in for fuse-overlayfs (podman's `mount_program`, `mount -t fuse.nestfs-overlay`, test suites).
//!
//! Without `-f` it forks before mounting; the parent exits 0 once the mount is live, or
//! non-zero with the child's error. SIGTERM/SIGINT/SIGHUP unmount and exit cleanly.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use nestfs_fuse::process::{self, Forked, StopSignals};
use nestfs_fuse::ready::{self, Reporter, Verdict};
use nestfs_fuse::{OverlayConfig, options};

#[derive(Parser)]
#[command(
    version,
    about = "Overlay filesystem over FUSE (fuse-overlayfs compatible)",
    after_help = MOUNT_OPTIONS
)]
struct Args {
    /// Stay in the foreground.
    #[arg(short = 'f')]
    foreground: bool,
    /// Debug logs on stderr (implies -f).
    #[arg(short = 'd')]
    debug: bool,
    /// Mount options: lowerdir=A:B,upperdir=U,workdir=W,... (repeatable).
    #[arg(short = 'o', action = clap::ArgAction::Append)]
    opts: Vec<String>,
    // The doc comment is the --help text, where [SOURCE] is usage syntax, not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// [SOURCE] MOUNTPOINT (mount(8) passes a source first).
    #[arg(num_args = 1..=2, required = true)]
    paths: Vec<PathBuf>,
}

const MOUNT_OPTIONS: &str = "\
Mount options (-o, comma-separated, as fuse-overlayfs takes them):
  lowerdir=A:B:...     the read-only layers, top first (required); OCI (.wh.NAME) and overlayfs
                       (0/0 device, *.overlay.opaque) whiteouts both work
  upperdir=U           the writable layer (with workdir; without both the mount is read-only)
  workdir=W            scratch dir for copy-up, on the same filesystem as upperdir
  uidmapping=IN:OUT:LEN[:IN:OUT:LEN...]
                       show layer uids IN.. as OUT.. (unmapped ones as 65534); ids written
                       through the mount are stored back as IN ids
  gidmapping=IN:OUT:LEN[:...]
                       the same for gids
  nopassthrough        serve file data from the daemon instead of FUSE passthrough
  passthrough          let the kernel read layer files itself where it can (the default)
  max_threads=N        worker threads (default: one per CPU, 2 to 8)
  ro                   read-only, also with an upper dir
  fsname=NAME          the source /proc/mounts shows
  Other fuse-overlayfs and mount(8) options (noacl, squash_to_root, nodev, ...) are accepted
  and ignored; unknown ones are named on stderr.

Unmount with: fusermount3 -u MOUNTPOINT (or umount MOUNTPOINT as root).";

/// Fails with what to do when /dev/fuse cannot be opened (the mount would only say ENOENT).
fn check_dev_fuse() -> anyhow::Result<()> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "cannot open /dev/fuse: it does not exist. Load the fuse module (modprobe fuse), \
             or in a container pass the device in (--device /dev/fuse)"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "cannot open /dev/fuse: permission denied. Make it usable (chmod 0666 /dev/fuse, \
             as Debian's udev rule does), or run as root"
        ),
        Err(e) => Err(e).context("cannot open /dev/fuse"),
    }
}

fn config(args: &Args) -> anyhow::Result<(OverlayConfig, PathBuf)> {
    let mut cfg = OverlayConfig::default();
    for list in &args.opts {
        for w in options::apply(&mut cfg, list)? {
            eprintln!("nestfs-overlay: {w}");
        }
    }
    options::validate(&cfg)?;
    let mnt = args
        .paths
        .last()
        .expect("clap requires a mountpoint")
        .clone();
    for l in &cfg.lowerdirs {
        must_be_dir(l, "lowerdir")?;
    }
    if let Some(u) = &cfg.upperdir {
        must_be_dir(u, "upperdir")?;
    }
    if let Some(w) = &cfg.workdir {
        must_be_dir(w, "workdir")?;
    }
    must_be_dir(&mnt, "mountpoint")?;
    check_dev_fuse()?;
    Ok((cfg, mnt))
}

fn must_be_dir(p: &Path, what: &str) -> anyhow::Result<()> {
    let md = std::fs::metadata(p).with_context(|| format!("{what} {}", p.display()))?;
    if !md.is_dir() {
        bail!("{what} {}: not a directory", p.display());
    }
    Ok(())
}

/// Unmounts when one of the stop `signals` (blocked in every thread since before the mount)
/// arrives, so the serving loop ends and the process exits 0 with nothing left mounted; one
/// that arrived while mounting is pending and acts now. The same thread sheds the startup pages
/// once the daemon has been up for a moment: reading /proc/self/smaps costs ~0.3 ms, which a
/// short-lived mount should not pay before its first request. Started once the mount is up,
/// so mounting waits for no thread.
fn unmount_on_signal(signals: StopSignals, mnt: PathBuf) {
    std::thread::spawn(move || {
        if !signals.wait_for(Duration::from_millis(200)) {
            nestfs_fuse::shed_startup_pages();
            signals.wait();
        }
        let _ = nestfs_fuse::mounts::unmount(&mnt, true);
    });
}

/// Forks: the parent waits for the child's verdict on the mount and exits with it.
/// Returns (in the child) where to report it. One fork, as libfuse's `fuse_daemonize`: the
/// child leads a new session (no controlling terminal, and it opens none) and belongs to init
/// once the parent exited; a second fork would only add its cost to every mount.
fn daemonize() -> anyhow::Result<Reporter> {
    let (r, w) = std::io::pipe().context("pipe")?;
    match process::fork().context("fork")? {
        Forked::Child => {
            drop(r);
            let _ = rustix::process::setsid();
            Ok(Reporter::new(w))
        }
        Forked::Parent { .. } => {
            drop(w);
            let why = match ready::wait(r, None) {
                Verdict::Ready => std::process::exit(0),
                Verdict::Failed(why) => why,
                Verdict::Died | Verdict::TimedOut => "the daemon died before mounting".into(),
            };
            eprintln!("nestfs-overlay: {why}");
            std::process::exit(1);
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let foreground = args.foreground || args.debug;
    if args.debug {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(std::io::stderr)
            .init();
    }
    let (cfg, mnt) = match config(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("nestfs-overlay: {e:#}");
            return ExitCode::from(1);
        }
    };
    let mut report = if foreground {
        None
    } else {
        match daemonize() {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("nestfs-overlay: {e:#}");
                return ExitCode::from(1);
            }
        }
    };
    let signals = StopSignals::block();
    let prepared = match nestfs_fuse::prepare(&cfg, &mnt) {
        Ok(p) => p,
        Err(e) => {
            match report.take() {
                Some(r) => r.failed(&e),
                None => eprintln!("nestfs-overlay: {e:#}"),
            }
            return ExitCode::from(1);
        }
    };
    if let Some(r) = report.take() {
        r.ready();
        process::detach_stdio();
    }
    unmount_on_signal(signals, mnt);
    match prepared.serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nestfs-overlay: {e:#}");
            ExitCode::from(1)
        }
    }
}
