//! Mount guards for the reference (kernel overlayfs) and the filesystem under test, and a `Side`:
//! one set of lower/upper/work/mount dirs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::layers::{Format, Layer};

/// Kernel overlay options that make the reference "kernel overlayfs without redirect_dir":
/// the module defaults on the dev machine, spelled out so CI kernels agree.
pub const KERNEL_OPTS: &str = "redirect_dir=off,index=off,metacopy=off,xino=off";

/// How long a daemon may take to show up in mountinfo before the test gives up on it.
const MOUNT_WAIT: Duration = Duration::from_secs(30);

/// The binary under test: `NESTFS_OVERLAY_BIN` or the workspace's `nestfs-overlay`.
pub fn overlay_bin() -> PathBuf {
    match std::env::var_os("NESTFS_OVERLAY_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_nestfs-overlay")),
    }
}

pub use nestfs_fuse::mounts::is_mounted;

fn detach(mnt: &Path) {
    let c = super::layers::cpath(mnt);
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

fn lowerdir_opt(lowers: &[PathBuf]) -> String {
    let l: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    l.join(":")
}

fn overlay_opts(lowers: &[PathBuf], rw: Option<(&Path, &Path)>) -> String {
    let mut o = format!("lowerdir={}", lowerdir_opt(lowers));
    if let Some((upper, work)) = rw {
        o.push_str(&format!(
            ",upperdir={},workdir={}",
            upper.display(),
            work.display()
        ));
    }
    o
}

/// Anything mounted that a test can walk.
pub trait Mounted {
    fn root(&self) -> &Path;

    /// Makes every pending and future request on the mount fail, for a server that stopped
    /// answering. Only a userspace server can hang; the kernel's mount has nothing to do.
    fn abort(&self) {}
}

/// A kernel overlayfs mount, unmounted on drop (lazily if busy).
pub struct KernelOverlay {
    mnt: PathBuf,
}

impl KernelOverlay {
    pub fn mount(lowers: &[PathBuf], rw: Option<(&Path, &Path)>, mnt: &Path) -> Self {
        let opts = format!("{},{KERNEL_OPTS}", overlay_opts(lowers, rw));
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(mnt)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t overlay -o {opts} {}: {}",
            mnt.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        KernelOverlay {
            mnt: mnt.to_path_buf(),
        }
    }
}

impl Mounted for KernelOverlay {
    fn root(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        detach(&self.mnt);
    }
}

/// The FUSE daemon under test, run in the foreground; unmounted and reaped on drop.
pub struct NestfsOverlay {
    mnt: PathBuf,
    child: Child,
}

impl NestfsOverlay {
    pub fn mount(lowers: &[PathBuf], rw: Option<(&Path, &Path)>, mnt: &Path, extra: &str) -> Self {
        let bin = overlay_bin();
        let mut opts = overlay_opts(lowers, rw);
        if !extra.is_empty() {
            opts = format!("{opts},{extra}");
        }
        let mut child = Command::new(&bin)
            .arg("-f")
            .arg("-o")
            .arg(opts)
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let start = Instant::now();
        while !is_mounted(mnt) {
            if let Some(status) = child.try_wait().expect("poll daemon") {
                panic!(
                    "{} exited with {status} before mounting {}",
                    bin.display(),
                    mnt.display()
                );
            }
            if start.elapsed() > MOUNT_WAIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not mount {} within {MOUNT_WAIT:?}",
                    bin.display(),
                    mnt.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        NestfsOverlay {
            mnt: mnt.to_path_buf(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the daemon process is still running (a crash is a finding of its own).
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("poll daemon").is_none()
    }
}

impl Mounted for NestfsOverlay {
    fn root(&self) -> &Path {
        &self.mnt
    }

    /// Kills the daemon: closing its /dev/fuse fd aborts the connection (fusectl's `abort` file
    /// would do too, but fusectl is not mounted everywhere). Drop still reaps and unmounts.
    fn abort(&self) {
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
    }
}

impl Drop for NestfsOverlay {
    fn drop(&mut self) {
        let ok = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok || is_mounted(&self.mnt) {
            detach(&self.mnt);
        }
        // After the unmount a well-behaved daemon exits on its own; give it a moment, then kill.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which implementation serves a `Side`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Kernel,
    Nestfs,
}

/// One overlay's directories: lowers (top first), upper, work and the mount point.
pub struct Side {
    pub which: Impl,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
    /// More `-o` options for the tested binary.
    pub options: &'static str,
}

impl Side {
    /// Writes `layers` (top first) under `base` in `format` and prepares empty upper/work dirs.
    pub fn build(base: &Path, which: Impl, layers: &[Layer], format: Format) -> Side {
        let mk = |p: PathBuf| {
            std::fs::create_dir_all(&p).expect("mkdir side dir");
            p
        };
        let lowers: Vec<PathBuf> = layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let d = mk(base.join(format!("lower{i}")));
                l.write(&d, format);
                d
            })
            .collect();
        Side {
            which,
            lowers,
            upper: mk(base.join("upper")),
            work: mk(base.join("work")),
            mnt: mk(base.join("mnt")),
            options: "",
        }
    }

    /// Mounts read-write (or read-only with `rw == false`).
    pub fn mount_with(&self, rw: bool) -> Box<dyn Mounted> {
        let dirs = rw.then_some((self.upper.as_path(), self.work.as_path()));
        match self.which {
            Impl::Kernel => Box::new(KernelOverlay::mount(&self.lowers, dirs, &self.mnt)),
            Impl::Nestfs => Box::new(NestfsOverlay::mount(
                &self.lowers,
                dirs,
                &self.mnt,
                self.options,
            )),
        }
    }

    pub fn mount(&self) -> Box<dyn Mounted> {
        self.mount_with(true)
    }
}
