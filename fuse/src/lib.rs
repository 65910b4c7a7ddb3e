//! nestfs-fuse: an overlay filesystem served over FUSE with kernel overlayfs semantics.
//!
//! It merges read-only lower directories (top first) with an optional upper and work directory,
//! reads whiteouts and opaque directories in both the overlayfs and the OCI format, and resolves
//! every name beneath its layer's directory fd without following symlinks, so hostile layer
//! content cannot lead the daemon elsewhere. [`mount`] serves in the background;
//! [`Prepared::serve`] in the foreground until the mount goes away.
//!
//! Differences from kernel overlayfs: the root directory's inode number is 1 (FUSE's root id);
//! O_TMPFILE is not supported (fuser has no tmpfile request); directories that have lower copies
//! cannot be renamed (EXDEV), as with overlayfs's `redirect_dir=off`.

mod attrs;
pub mod caps;
mod copyup;
mod dir;
mod handles;
pub mod handover;
mod identity;
pub mod ids;
mod memory;
pub mod meta;
pub mod mounts;
mod namespace;
mod node;
mod ops;
pub mod options;
mod overlay;
mod passthrough;
mod quota;
pub mod ready;
mod recover;
mod setid;
mod sys;
mod whiteout;
mod xattr_names;

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use fuser::{Config, MountOption, SessionACL};

pub use memory::shed_startup_pages;
pub use quota::{Quota, allocated_bytes};
pub use sys::process;

/// Workers a mount gets unless told otherwise (`max_threads=`): one per CPU up to this many. On
/// 2 CPUs, 4 or 8 workers served concurrent cold tree walks no faster than 2, while each worker
/// is a task of its own and keeps the pages of the largest request it served (1 MiB writes
/// without passthrough), so a daemon per container on a 64-CPU host would hold 66 tasks.
pub const DEFAULT_MAX_THREADS: usize = 8;

/// What to mount.
#[derive(Clone, Debug, Default)]
pub struct OverlayConfig {
    /// Read-only layers, top first.
    pub lowerdirs: Vec<PathBuf>,
    /// Where changes go; without it the mount is read-only.
    pub upperdir: Option<PathBuf>,
    /// Scratch space on the upper dir's filesystem for atomic copy-up.
    pub workdir: Option<PathBuf>,
    /// Mount read-only even with an upper dir.
    pub read_only: bool,
    /// Source shown in /proc/mounts (`fsname=`).
    pub fsname: String,
    /// Worker threads (0: one per CPU, from 2 up to [`DEFAULT_MAX_THREADS`]).
    pub threads: usize,
    /// Count the upper dir's allocation (and enforce its limit) here.
    pub quota: Option<Arc<Quota>>,
    /// Show the layers' ids as host ids (see [`ids`]).
    pub ids: Option<ids::IdMap>,
    /// Owners, modes and devices live in xattrs (layers unpacked without privileges; see
    /// [`meta`]).
    pub meta_xattrs: bool,
    /// Keep the kernel from reading layer files itself (FUSE passthrough), which it otherwise
    /// does where it can.
    pub no_passthrough: bool,
    /// Brings in the data of layer files that are not all local yet (lazily pulled layers).
    pub fetch: Option<Arc<dyn Fetch>>,
}

/// Fills in layer files whose data is fetched on demand. The overlay calls it before a layer
/// file's data is read; each call returns at once for a file that is complete, blocks while
/// data comes, and fails (EIO, say) if it cannot come.
pub trait Fetch: Send + Sync + std::fmt::Debug {
    /// Before a layer file is opened for reading: may fill it; says whether it is complete
    /// (if not, its reads come to the daemon, which calls [`Fetch::read`] first).
    fn open(&self, file: std::os::fd::BorrowedFd) -> std::io::Result<bool>;
    /// Before `len` bytes at `offset` of the open file are read.
    fn read(&self, file: std::os::fd::BorrowedFd, offset: u64, len: u64) -> std::io::Result<()>;
    /// All of the file (before a copy-up).
    fn fill(&self, file: std::os::fd::BorrowedFd) -> std::io::Result<()>;
    /// Whether any layer file may still lack data; once not, the overlay stops asking.
    fn needed(&self) -> bool;
}

impl OverlayConfig {
    fn mount_config(&self) -> Config {
        let privileged = sys::is_root();
        let mut opts = vec![
            MountOption::FSName(if self.fsname.is_empty() {
                "nestfs-overlay".into()
            } else {
                self.fsname.clone()
            }),
            MountOption::Subtype("nestfs-overlay".into()),
            MountOption::DefaultPermissions,
        ];
        if self.upperdir.is_none() || self.read_only {
            opts.push(MountOption::RO);
        }
        if privileged {
            // Root filesystems of containers hold device nodes and setuid binaries.
            opts.extend([MountOption::Dev, MountOption::Suid]);
            // fuser's own mount(2) passes the subtype on only to fusermount3: say it to the
            // kernel, so the mount is `fuse.nestfs-overlay` (as fuse-overlayfs's is
            // `fuse.fuse-overlayfs`) and `findmnt -t` finds it.
            opts.push(MountOption::CUSTOM("subtype=nestfs-overlay".into()));
        }
        let threads = if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, DEFAULT_MAX_THREADS)
        };
        let mut cfg = Config::default();
        cfg.mount_options = opts;
        cfg.acl = if privileged {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        cfg.n_threads = Some(threads);
        cfg.clone_fd = true;
        cfg
    }

    /// How a keeper mounts this (as root, see [`handover`]): what fuser's own mount(2) passes,
    /// but the fd, root mode and ids, which the keeper adds.
    pub fn keeper_mount(&self) -> KeeperMount {
        let ro = self.upperdir.is_none() || self.read_only;
        KeeperMount {
            source: if self.fsname.is_empty() {
                "nestfs-overlay".into()
            } else {
                self.fsname.clone()
            },
            flags: if ro { libc::MS_RDONLY } else { 0 },
            data: "default_permissions,allow_other,subtype=nestfs-overlay".into(),
        }
    }
}

/// The mount(2) a keeper makes: source, flags and data before `fd=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeeperMount {
    pub source: String,
    pub flags: u64,
    pub data: String,
}

/// A live mount served on background threads; unmounted when dropped.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
}

impl Mounted {
    pub fn unmount(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.session.take() {
            s.umount_and_join().context("unmount")?;
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}

/// The overlay a session serves, and where it learns the session's notifier.
fn overlay(cfg: &OverlayConfig) -> anyhow::Result<(overlay::Overlay, Notifier)> {
    options::validate(cfg)?;
    // Modes are set exactly as asked; the daemon's own umask must not interfere.
    sys::process::clear_umask();
    memory::map_big_buffers();
    let notifier = Arc::new(OnceLock::new());
    let ov = overlay::Overlay::new(cfg, notifier.clone())?;
    if let (Some(q), Some(upper)) = (&cfg.quota, &cfg.upperdir) {
        quota::reconcile_while_changing(Arc::downgrade(q), upper.clone());
    }
    Ok((ov, notifier))
}

type Notifier = Arc<OnceLock<fuser::Notifier>>;

fn session(cfg: &OverlayConfig, mountpoint: &Path) -> anyhow::Result<fuser::Session<ops::Fs>> {
    let (ov, notifier) = overlay(cfg)?;
    let s = fuser::Session::new(ops::Fs::new(ov, 0), mountpoint, &cfg.mount_config())
        .with_context(|| format!("mount {}", mountpoint.display()))?;
    let _ = notifier.set(s.notifier());
    Ok(s)
}

/// Serves `cfg` on a connection a keeper mounted and holds (see [`handover`]), taking over
/// from the server before if `conn` is not the first.
pub fn prepare_on(cfg: &OverlayConfig, conn: handover::Connection) -> anyhow::Result<Prepared> {
    let (mut ov, notifier) = overlay(cfg)?;
    let (ledger, kept) =
        handover::Ledger::open(conn.ledger).context("read the connection's ledger")?;
    ov.io.adopt(ledger, kept);
    if conn.epoch > 0 {
        ov.recovery = Some(recover::Recovery::default());
    }
    let mut mc = cfg.mount_config();
    // Every worker reads the keeper's fd: requests a killed server had taken are sent again
    // then (FUSE_NOTIFY_RESEND), where a cloned fd would end them with ECONNABORTED.
    mc.clone_fd = false;
    let acl = mc.acl;
    // The handshake runs on the keeper's socket, which replays the mount's FUSE_INIT.
    handover::set_up(&conn.init)?;
    let s = fuser::Session::from_fd(ops::Fs::new(ov, conn.epoch), conn.init, acl, mc)
        .context("FUSE handshake with the keeper")?;
    // From here on the session's fd number is the connection itself.
    sys::process::dup_onto(conn.fuse.as_fd(), s.as_fd().as_raw_fd())
        .context("take over the FUSE connection")?;
    let _ = notifier.set(s.notifier());
    Ok(Prepared(s))
}

/// Mounts and serves in the background.
pub fn mount(cfg: &OverlayConfig, mountpoint: &Path) -> anyhow::Result<Mounted> {
    let s = session(cfg, mountpoint)?
        .spawn()
        .context("start FUSE session")?;
    Ok(Mounted { session: Some(s) })
}

/// A mount made but not yet served: lets a caller report success once the mount exists and
/// before it blocks serving it.
pub struct Prepared(fuser::Session<ops::Fs>);

pub fn prepare(cfg: &OverlayConfig, mountpoint: &Path) -> anyhow::Result<Prepared> {
    Ok(Prepared(session(cfg, mountpoint)?))
}

impl Prepared {
    /// Serves until the mount is unmounted.
    pub fn serve(self) -> anyhow::Result<()> {
        self.0.run().context("serve FUSE requests")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_follow_the_cpus_within_bounds_unless_told() {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let default = OverlayConfig::default().mount_config().n_threads.unwrap();
        assert_eq!(default, cpus.clamp(2, DEFAULT_MAX_THREADS));
        let asked = OverlayConfig {
            threads: 64,
            ..Default::default()
        };
        assert_eq!(asked.mount_config().n_threads, Some(64));
    }
}
