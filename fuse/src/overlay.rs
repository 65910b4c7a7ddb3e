//! The overlay's state and its read side: resolving a name through the layers, attributes and
//! inode numbers.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use fuser::{FileAttr, FileType, INodeNo};

use crate::OverlayConfig;
use crate::identity::Identities;
use crate::meta;
use crate::node::{LayerDir, Node, ROOT, Table};
use crate::passthrough::Passthrough;
use crate::sys::{self, Stat};
use crate::whiteout::{self, Style};

/// The upper layer's index when the mount is writable.
pub const UPPER: usize = 0;

pub struct Layer {
    pub root: Arc<OwnedFd>,
    /// High bits mixed into inode numbers when layers sit on different filesystems.
    pub ino_tag: u64,
}

pub struct Overlay {
    pub(crate) layers: Vec<Layer>,
    has_upper: bool,
    pub(crate) work: Option<OwnedFd>,
    pub(crate) style: Style,
    /// Whether the daemon may chown and mknod devices (root in its user namespace).
    pub(crate) privileged: bool,
    /// Whether the daemon may write `trusted.*` xattrs (see [`crate::caps::admin_in_initial_ns`]).
    pub(crate) admin: bool,
    pub(crate) nodes: Table,
    /// Serialises changes to the namespace (and copy-ups, but for copying a file's data), so no
    /// two of them interleave: see [`Changes`].
    mutate: Mutex<()>,
    /// Copy-ups under way without the change lock (see [`crate::copyup`]).
    pub(crate) copy_ups: crate::copyup::CopyUps,
    tmp_seq: AtomicU64,
    origin_key: &'static CStr,
    pub(crate) ttl: Duration,
    /// Tells the kernel when an object changed identity behind a cached entry (set once the
    /// session exists).
    notifier: Arc<OnceLock<fuser::Notifier>>,
    /// Open fds, kept and split inode numbers (see [`crate::identity`]).
    pub(crate) identity: Identities,
    /// Counts the upper dir's allocation and enforces its limit, when the mount has one.
    pub(crate) quota: Option<Arc<crate::Quota>>,
    /// The upper filesystem's block size: the unit space is allocated in.
    pub(crate) block: u64,
    pub(crate) ids: Option<crate::ids::IdMap>,
    /// See [`crate::meta`].
    pub(crate) meta_xattrs: bool,
    /// Which open files the kernel serves itself (see [`crate::passthrough`]).
    pub(crate) io: Passthrough,
    /// Wanted by the configuration (the kernel has the last word, at init).
    pub(crate) want_passthrough: bool,
    fetch: Option<Arc<dyn crate::Fetch>>,
    /// Set when this server took over a connection (see [`crate::recover`]).
    pub(crate) recovery: Option<crate::recover::Recovery>,
}

/// Proof that the caller holds the change lock ([`Overlay::lock_changes`]): what needs the
/// lock takes one.
pub struct Changes<'a> {
    _held: MutexGuard<'a, ()>,
}

/// What a name resolved to.
pub struct Found {
    pub ino: u64,
    pub st: Stat,
    pub dirs: Vec<LayerDir>,
    pub layer: usize,
}

/// How to reach a node's object: a directory fd, or a name beneath one.
pub enum Target {
    Dir(Arc<OwnedFd>),
    Entry(Arc<OwnedFd>, CString),
}

impl Target {
    pub fn stat(&self) -> io::Result<Stat> {
        match self {
            Target::Dir(fd) => sys::fstat(fd.as_raw_fd()),
            Target::Entry(dir, name) => sys::stat_at(dir.as_raw_fd(), name),
        }
    }

    pub fn xattr_path(&self) -> sys::XPath<'_> {
        match self {
            Target::Dir(fd) => sys::xattr_path(fd.as_raw_fd(), None),
            Target::Entry(dir, name) => sys::xattr_path(dir.as_raw_fd(), Some(name)),
        }
    }
}

fn open_root(path: &std::path::Path, what: &str) -> anyhow::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("{what} {}: NUL in path", path.display()))?;
    match sys::open_path(&c, libc::O_PATH | libc::O_DIRECTORY) {
        Ok(fd) => Ok(fd),
        Err(e) => bail!("{what} {}: {e}", path.display()),
    }
}

/// Prefix of the overlay's temporary names in the work dir.
pub const TMP_PREFIX: &str = "#nestfs-";

impl Overlay {
    pub fn new(
        cfg: &OverlayConfig,
        notifier: Arc<OnceLock<fuser::Notifier>>,
    ) -> anyhow::Result<Overlay> {
        let mut roots = Vec::new();
        let has_upper = cfg.upperdir.is_some() && !cfg.read_only;
        if let (Some(upper), false) = (&cfg.upperdir, cfg.read_only) {
            roots.push(open_root(upper, "upperdir")?);
        }
        for l in &cfg.lowerdirs {
            roots.push(open_root(l, "lowerdir")?);
        }
        let work = match (&cfg.workdir, has_upper) {
            (Some(w), true) => {
                let fd = open_root(w, "workdir")?;
                let wdev = sys::fstat(fd.as_raw_fd())?.st_dev;
                let udev = sys::fstat(roots[UPPER].as_raw_fd())?.st_dev;
                if wdev != udev {
                    bail!(
                        "workdir {} is not on the same filesystem as upperdir",
                        w.display()
                    );
                }
                clean_work(fd.as_raw_fd())
                    .with_context(|| format!("clean workdir {}", w.display()))?;
                Some(fd)
            }
            _ => None,
        };
        let mut devs: Vec<u64> = Vec::new();
        let mut layers = Vec::new();
        for fd in roots {
            let dev = sys::fstat(fd.as_raw_fd())?.st_dev;
            let idx = devs.iter().position(|d| *d == dev).unwrap_or_else(|| {
                devs.push(dev);
                devs.len() - 1
            });
            layers.push((fd, idx as u64));
        }
        let multi_dev = devs.len() > 1;
        let layers: Vec<Layer> = layers
            .into_iter()
            .map(|(fd, idx)| Layer {
                root: Arc::new(fd),
                ino_tag: if multi_dev { idx << 56 } else { 0 },
            })
            .collect();
        let privileged = sys::is_root();
        let admin = crate::caps::admin_in_initial_ns();
        // A daemon that is not root writes OCI whiteouts, as it always has: kernels before 5.8
        // refuse it 0/0 devices.
        let upper = match &work {
            Some(w) => whiteout::probe_upper(w.as_raw_fd(), admin, privileged)
                .context("probe what the upper dir's filesystem takes")?,
            None => whiteout::NO_UPPER,
        };
        tracing::debug!(?upper, admin, privileged, "upper dir");
        let ov = Overlay {
            has_upper,
            work,
            style: upper.style,
            privileged,
            admin,
            nodes: Table::default(),
            mutate: Mutex::new(()),
            copy_ups: Default::default(),
            tmp_seq: AtomicU64::new(0),
            origin_key: upper.origin_key,
            ttl: Duration::from_secs(86400),
            notifier,
            identity: Identities::default(),
            quota: cfg.quota.clone().filter(|_| has_upper),
            ids: cfg.ids.clone(),
            meta_xattrs: cfg.meta_xattrs,
            fetch: cfg.fetch.clone(),
            io: Passthrough::new(cfg.quota.clone().filter(|_| has_upper)),
            // Registering a backing file takes CAP_SYS_ADMIN in the initial namespace.
            want_passthrough: !cfg.no_passthrough && admin,
            recovery: None,
            block: layers
                .first()
                .and_then(|l| rustix::fs::fstatvfs(&*l.root).ok())
                .map_or(4096, |s| s.f_bsize.max(512)),
            layers,
        };
        let root_dirs = ov
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| LayerDir {
                layer: i,
                fd: l.root.clone(),
                oci: ov.oci_markers(i),
            })
            .collect();
        ov.nodes.lock().insert(
            ROOT,
            Node {
                parent: ROOT,
                name: CString::default(),
                aliases: Vec::new(),
                lookups: 1,
                dirs: root_dirs,
                layer: 0,
            },
        );
        Ok(ov)
    }

    pub fn lock_changes(&self) -> Changes<'_> {
        Changes {
            _held: self.mutate.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    pub fn is_upper(&self, layer: usize) -> bool {
        self.has_upper && layer == UPPER
    }

    /// Whether a directory made of `dirs` has a lower copy: a merged directory once it is (or
    /// would be) copied up.
    pub fn has_lower(&self, dirs: &[LayerDir]) -> bool {
        dirs.iter().any(|d| !self.is_upper(d.layer))
    }

    /// Whether `.wh.*` names in `layer` are OCI whiteout markers.
    pub fn oci_markers(&self, layer: usize) -> bool {
        !self.is_upper(layer) || self.style == Style::Oci
    }

    pub fn layer_dir(&self, layer: usize, fd: OwnedFd) -> LayerDir {
        LayerDir {
            layer,
            fd: Arc::new(fd),
            oci: self.oci_markers(layer),
        }
    }

    pub fn writable(&self) -> io::Result<()> {
        if self.has_upper {
            Ok(())
        } else {
            Err(sys::err(libc::EROFS))
        }
    }

    pub fn present_ino(&self, layer: usize, st_ino: u64) -> u64 {
        let ino = st_ino | self.layers[layer].ino_tag;
        // Node id 1 is the FUSE root; another object with inode 1 moves to a free high bit.
        if ino == ROOT { ino | 1 << 63 } else { ino }
    }

    /// The node's directory layers, or ENOTDIR / ENOENT.
    pub fn dirs_of(&self, ino: u64) -> io::Result<Vec<LayerDir>> {
        let nodes = self.nodes.lock();
        let node = nodes.get(&ino).ok_or_else(|| sys::err(libc::ENOENT))?;
        if !node.is_dir() {
            return Err(sys::err(libc::ENOTDIR));
        }
        Ok(node.dirs.clone())
    }

    pub fn target(&self, ino: u64) -> io::Result<Target> {
        self.target_in(ino, None)
    }

    /// Where a node's object is: in its own top layer, or (`Some(UPPER)`) in the upper dir.
    fn target_in(&self, ino: u64, layer: Option<usize>) -> io::Result<Target> {
        let nodes = self.nodes.lock();
        let node = nodes.get(&ino).ok_or_else(|| sys::err(libc::ENOENT))?;
        if let Some(d) = node.dirs.first() {
            return Ok(Target::Dir(d.fd.clone()));
        }
        let parent = nodes
            .get(&node.parent)
            .ok_or_else(|| sys::err(libc::ENOENT))?;
        let dir = parent
            .dir_in(layer.unwrap_or(node.layer))
            .ok_or_else(|| sys::err(libc::ENOENT))?;
        Ok(Target::Entry(dir, node.name.clone()))
    }

    /// How long the kernel may cache an entry (and, where a reply carries one TTL only, its
    /// attributes). Everything changes through the daemon, so long, except for names of
    /// multiply-linked files: the kernel shares one inode among them, and only a fresh lookup
    /// tells the daemon which name is being used. Attributes alone stay cached long: that
    /// lookup, sent on every path walk through such a name, refreshes them for the name used.
    pub fn ttl_of(&self, a: &FileAttr) -> Duration {
        if a.kind != FileType::Directory && (a.nlink > 1 || self.identity.is_kept(a.ino.0)) {
            Duration::ZERO
        } else {
            self.ttl
        }
    }

    /// Makes all the data of a layer file present (see [`crate::Fetch`]).
    pub fn fill(&self, file: &OwnedFd) -> io::Result<()> {
        match &self.fetch {
            Some(f) => f.fill(std::os::fd::AsFd::as_fd(file)),
            None => Ok(()),
        }
    }

    /// Readies a layer file for reading; false if its reads must come to the daemon (see
    /// [`crate::Fetch::open`]).
    pub fn fill_for_open(&self, file: &OwnedFd) -> io::Result<bool> {
        match &self.fetch {
            Some(f) => f.open(std::os::fd::AsFd::as_fd(file)),
            None => Ok(true),
        }
    }

    /// Makes `len` bytes at `offset` of the open file `fd` present.
    pub fn fill_range(&self, fd: std::os::fd::RawFd, offset: u64, len: u64) -> io::Result<()> {
        match &self.fetch {
            Some(f) => sys::with_handle(fd, |file| f.read(file, offset, len)),
            None => Ok(()),
        }
    }

    /// Whether layer files may still lack data (see [`crate::Fetch`]).
    pub fn fetches(&self) -> bool {
        self.fetch.as_ref().is_some_and(|f| f.needed())
    }

    pub fn in_upper(&self, ino: u64) -> bool {
        let nodes = self.nodes.lock();
        nodes
            .get(&ino)
            .is_some_and(|n| self.is_upper(n.top_layer()))
    }

    /// Swaps every tracked lower fd of `ino` for one on its new upper copy, in place.
    pub fn redirect_lower_fds(&self, ino: u64, dir: RawFd, name: &CStr) {
        self.identity.each_open_fd(ino, |fd| {
            if let Ok(upper) = sys::open_at(dir, name, libc::O_RDONLY, 0) {
                let _ = sys::dup_onto(upper.as_raw_fd(), *fd);
            }
        });
    }

    /// Where a node's upper copy is (callers have copied it up).
    pub fn upper_target(&self, ino: u64) -> io::Result<Target> {
        self.target_in(ino, Some(UPPER))
    }

    /// Drops the kernel's cached attributes of `ino`.
    pub fn forget_attrs(&self, ino: u64) {
        if let Some(n) = self.notifier.get() {
            let _ = n.inval_inode(INodeNo(ino), -1, 0);
        }
    }

    /// Drops the kernel's cached entry `parent`/`name`, from another thread: the kernel may
    /// hold the directory locked while it waits for the current request.
    pub fn forget_entry_later(&self, parent: u64, name: &CStr) {
        if let Some(n) = self.notifier.get().cloned() {
            let name = std::ffi::OsStr::from_bytes(name.to_bytes()).to_owned();
            std::thread::spawn(move || n.inval_entry(INodeNo(parent), &name));
        }
    }

    /// Walks `name` through the parent's layers, top first, honouring whiteouts and opaque dirs.
    pub fn resolve(&self, parent: &[LayerDir], name: &CStr) -> io::Result<Found> {
        self.resolve_from(parent, name, 0)
    }

    /// [`Self::resolve`] for a name a listing found first in `parent[at]`: the lower layers
    /// above it cannot hold it or a whiteout for it (they never change), so only the upper
    /// layer, which may have changed since, is probed before it.
    pub fn resolve_from(&self, parent: &[LayerDir], name: &CStr, at: usize) -> io::Result<Found> {
        for (i, pd) in parent.iter().enumerate() {
            if i < at && !self.is_upper(pd.layer) {
                continue;
            }
            let fd = pd.fd.as_raw_fd();
            let st = match probe(pd, name)? {
                Probe::Absent => continue,
                Probe::Hidden => break,
                Probe::Here(st) => self.shown(st, pd.layer, || sys::xattr_path(fd, Some(name))),
            };
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                let ino = if self.is_upper(pd.layer) {
                    self.origin(fd, name)
                        .map(|o| self.identity.after_split(o))
                        .unwrap_or_else(|| self.upper_ino(st.st_ino))
                } else {
                    self.present_ino(pd.layer, st.st_ino)
                };
                return Ok(Found {
                    ino,
                    st,
                    dirs: Vec::new(),
                    layer: pd.layer,
                });
            }
            let mut dirs = vec![self.layer_dir(pd.layer, sys::open_dir_path(fd, name)?)];
            let mut ino = self.present_ino(pd.layer, st.st_ino);
            if !whiteout::is_opaque(dirs[0].fd.as_raw_fd(), pd.oci) {
                self.merge_lower_dirs(&parent[i + 1..], name, &mut dirs, &mut ino)?;
            }
            return Ok(Found {
                ino,
                st,
                dirs,
                layer: pd.layer,
            });
        }
        Err(sys::err(libc::ENOENT))
    }

    /// Adds the copies of directory `name` in the layers below, up to a whiteout, a
    /// non-directory or an opaque one. The directory takes the inode number of its topmost
    /// lower copy, as overlayfs does.
    fn merge_lower_dirs(
        &self,
        below: &[LayerDir],
        name: &CStr,
        dirs: &mut Vec<LayerDir>,
        ino: &mut u64,
    ) -> io::Result<()> {
        for pd in below {
            let fd = pd.fd.as_raw_fd();
            let st = match probe(pd, name)? {
                Probe::Absent => continue,
                Probe::Hidden => break,
                Probe::Here(st) => st,
            };
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                break;
            }
            if dirs.len() == 1 && self.is_upper(dirs[0].layer) {
                *ino = self.present_ino(pd.layer, st.st_ino);
            }
            let d = self.layer_dir(pd.layer, sys::open_dir_path(fd, name)?);
            let opaque = whiteout::is_opaque(d.fd.as_raw_fd(), d.oci);
            dirs.push(d);
            if opaque {
                break;
            }
        }
        Ok(())
    }

    /// The inode number shown for an upper non-directory with no origin in a lower layer.
    pub fn upper_ino(&self, st_ino: u64) -> u64 {
        self.identity
            .kept(st_ino)
            .unwrap_or_else(|| self.present_ino(UPPER, st_ino))
    }

    /// The inode number recorded on an upper file when it was copied up.
    fn origin(&self, dir: RawFd, name: &CStr) -> Option<u64> {
        let v = sys::lgetxattr(&sys::xattr_path(dir, Some(name)), self.origin_key).ok()?;
        Some(u64::from_le_bytes(v.try_into().ok()?))
    }

    pub fn set_origin(&self, dir: RawFd, name: &CStr, ino: u64) -> io::Result<()> {
        sys::lsetxattr(
            &sys::xattr_path(dir, Some(name)),
            self.origin_key,
            &ino.to_le_bytes(),
            0,
        )
    }

    /// What `name` in directory node `parent` is, without recording a lookup.
    pub fn find(&self, parent: u64, name: &CStr) -> io::Result<Found> {
        self.resolve(&self.dirs_of(parent)?, name)
    }

    /// Looks `name` up in `parent` and records the lookup.
    pub fn lookup(&self, parent: u64, name: &CStr) -> io::Result<FileAttr> {
        let found = self.find(parent, name)?;
        Ok(self.remember(parent, name, found))
    }

    pub fn remember(&self, parent: u64, name: &CStr, f: Found) -> FileAttr {
        let attr = attr(&f.st, f.ino, f.dirs.len() > 1);
        self.nodes
            .remember(f.ino, parent, name.to_owned(), f.dirs, f.layer);
        attr
    }

    pub fn getattr(&self, ino: u64) -> io::Result<FileAttr> {
        let (target, merged, layer) = {
            let nodes = self.nodes.lock();
            let node = nodes.get(&ino);
            let merged = node.is_some_and(|n| n.dirs.len() > 1);
            let layer = node.map_or(UPPER, |n| n.top_layer());
            drop(nodes);
            (self.target(ino)?, merged, layer)
        };
        match target.stat() {
            Ok(st) => Ok(attr(
                &self.shown(st, layer, || target.xattr_path()),
                ino,
                merged,
            )),
            // An open file whose name is gone (unlinked) still answers through its fd.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let st = self
                    .identity
                    .with_open_fd(ino, |fd| {
                        let st = sys::fstat(fd)?;
                        io::Result::Ok(self.shown(st, UPPER, || sys::xattr_path(fd, None)))
                    })
                    .ok_or(e)??;
                Ok(attr(&st, ino, false))
            }
            Err(e) => Err(e),
        }
    }

    /// A layer object's attributes as the mount shows them: recorded owner, mode and device
    /// (see [`crate::meta`]), then ids through the mapping.
    pub fn shown<'a>(
        &self,
        mut st: Stat,
        layer: usize,
        xp: impl FnOnce() -> sys::XPath<'a>,
    ) -> Stat {
        if self.meta_xattrs {
            match meta::can_carry(st.st_mode)
                .then(|| meta::read(&xp()))
                .flatten()
            {
                Some(m) => m.apply(&mut st),
                None if !self.is_upper(layer) => (st.st_uid, st.st_gid) = (0, 0),
                None => {}
            }
        }
        if let Some(m) = &self.ids
            && (!self.is_upper(layer) || m.map_upper)
        {
            (st.st_uid, st.st_gid) = m.shown(st.st_uid, st.st_gid);
        }
        st
    }

    /// The upper copy of a directory node, copying it up first.
    pub fn upper_dir(&self, ch: &Changes, ino: u64) -> io::Result<Arc<OwnedFd>> {
        self.writable()?;
        self.copy_up(ch, ino)?;
        self.dirs_of(ino)?
            .into_iter()
            .find(|d| d.layer == UPPER)
            .map(|d| d.fd)
            .ok_or_else(|| sys::err(libc::EIO))
    }

    /// A fresh name in the work dir.
    pub fn tmp_name(&self) -> CString {
        let n = self
            .tmp_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        CString::new(format!("{TMP_PREFIX}{n}")).expect("no NUL")
    }

    pub fn work_fd(&self) -> io::Result<RawFd> {
        self.work
            .as_ref()
            .map(|w| w.as_raw_fd())
            .ok_or_else(|| sys::err(libc::EROFS))
    }
}

/// What one layer of a directory holds under a name.
enum Probe {
    Absent,
    /// A whiteout: the name is gone from here down.
    Hidden,
    Here(Stat),
}

fn probe(pd: &LayerDir, name: &CStr) -> io::Result<Probe> {
    if pd.oci && whiteout::is_oci_name(name.to_bytes()) {
        return Ok(Probe::Absent); // an OCI marker is not a name of its own
    }
    let fd = pd.fd.as_raw_fd();
    // The name first: an OCI whiteout hides only lower layers' copies, never its own layer's
    // (image-spec, "Whiteouts"), so a name that is here needs no second look.
    match sys::stat_at(fd, name) {
        Ok(st) if whiteout::is_device_whiteout(&st) => Ok(Probe::Hidden),
        Ok(st) => Ok(Probe::Here(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            if pd.oci && whiteout::has_oci_whiteout(fd, name) {
                Ok(Probe::Hidden)
            } else {
                Ok(Probe::Absent)
            }
        }
        Err(e) => Err(e),
    }
}

/// Removes what an earlier daemon left in the work dir when it died mid-copy-up.
fn clean_work(work: RawFd) -> io::Result<()> {
    for (name, _) in sys::read_dir_names(work)? {
        if name.starts_with(TMP_PREFIX.as_bytes()) {
            let c = CString::new(name).expect("no NUL in a dir entry");
            remove_tree(work, &c)?;
        }
    }
    Ok(())
}

/// Removes `name` beneath `dir`, recursively, never following symlinks.
pub fn remove_tree(dir: RawFd, name: &CStr) -> io::Result<()> {
    let st = sys::stat_at(dir, name)?;
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        let d = sys::open_dir_path(dir, name)?;
        for (child, _) in sys::read_dir_names(d.as_raw_fd())? {
            remove_tree(d.as_raw_fd(), &CString::new(child).expect("no NUL"))?;
        }
        sys::unlink_at(dir, name, true)
    } else {
        sys::unlink_at(dir, name, false)
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new((-sec) as u64, 0) + Duration::from_nanos(nsec as u64)
    }
}

pub fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// FUSE attributes of `st`, shown as inode `ino`. Merged directories report one link, as
/// overlayfs does, since their real count would depend on every layer.
pub fn attr(st: &Stat, ino: u64, merged_dir: bool) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: kind(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: if merged_dir { 1 } else { st.st_nlink as u32 },
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}
