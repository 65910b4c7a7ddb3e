//! The on-disk store: plain directories on whatever filesystem holds it.
//!
//! ```text
//! STORE/store.json            init-store settings (id mappings, size)
//! STORE/locks/                flock files: `store` (shared by create/delete, exclusive for
//!                             clean/delete-store) and one per volume being unpacked
//! STORE/volumes/<chain>/      one unpacked layer, shared by every image that uses it
//! STORE/volumes/<chain>.json  its size and the images that pulled it
//! STORE/tmp/                  layers being unpacked; debris of killed runs is removed
//! STORE/images/<id>/          image.json, upper/, work/, rootfs/ (the mount), daemon.log,
//!                             daemon.pid, control.sock; `creating` until its daemon first
//!                             served it (more in docs/architecture.md)
//! ```
//!
//! A volume or an image becomes visible only once complete (built under tmp/ or a dot name,
//! then renamed; an image also served once), so a crash at any point leaves a usable store.

mod images;
mod lock;
mod pull;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use images::{Claim, DiskUsage, remove_if_retired};
pub use lock::Lock;
pub use pull::DEFAULT_MAX_EXPANSION;

use crate::image::ImageError;

/// Every way a store operation fails, each with the one line a Garden user sees.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // GrootFS's words first (operators' alerts match them), then what nestfs knows.
    #[error(
        "Store path is not initialized. Please run init-store. ({} has no store.json)",
        .0.display()
    )]
    NotInitialised(PathBuf),
    #[error("no store found at {}", .0.display())]
    NoStore(PathBuf),
    /// GrootFS's exact words (its spec matches them whole); an ordinary user may still make
    /// a rootless store in a directory of their own.
    #[error("store {} can only be initialized by Root user", .0.display())]
    NotOwner(PathBuf),
    #[error("store {0} was initialised with different id mappings")]
    MappingsDiffer(PathBuf),
    #[error("image for id `{0}` already exists")]
    IdExists(String),
    #[error("id `{0}` contains invalid characters: `/` (an id is a non-empty file name)")]
    BadId(String),
    #[error("Image `{0}` not found.")]
    NotFound(String),
    #[error("path `{0}` is outside store path")]
    OutsideStore(String),
    #[error("invalid id mapping {0:?}: expected CONTAINER:HOST:SIZE")]
    BadMapping(String),
    #[error("layers exceed disk quota {size}/{limit} bytes (compressed, as the manifest says)")]
    LayersExceedQuota { size: u64, limit: u64 },
    #[error(
        "uncompressed layer size exceeds quota: the image unpacks to more than the disk limit of \
         {limit} bytes"
    )]
    LimitTooSmall { limit: u64 },
    #[error(
        "the store's filesystem is full (ENOSPC): {free} bytes and {inodes} inodes were free in \
         {}, the image needs at least {needed} bytes",
        path.display()
    )]
    StoreFull {
        path: PathBuf,
        free: u64,
        /// Files the filesystem could still make: a store can run out of these first.
        inodes: u64,
        needed: u64,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The cause is in the message (as Go words it), not a source: anyhow's chain would
    /// print it a second time.
    #[error("{what}: {}", crate::image::os_error_text(cause))]
    Io { what: String, cause: io::Error },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Wraps an io error with what was being done.
pub fn io_ctx<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|source| StoreError::Io {
        what: what(),
        cause: source,
    })
}

/// One `--uid-mapping`/`--gid-mapping`: container id, host id, count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

impl std::str::FromStr for IdMapping {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<IdMapping> {
        let bad = || StoreError::BadMapping(s.to_string());
        let parts: Vec<&str> = s.split(':').collect();
        let [c, h, n] = parts[..] else {
            return Err(bad());
        };
        let num = |x: &str| x.parse::<u32>().map_err(|_| bad());
        let m = IdMapping {
            container: num(c)?,
            host: num(h)?,
            size: num(n)?,
        };
        if m.size == 0 {
            return Err(bad());
        }
        Ok(m)
    }
}

/// What `init-store` records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMeta {
    pub uid_mappings: Vec<IdMapping>,
    pub gid_mappings: Vec<IdMapping>,
    pub store_size_bytes: u64,
    /// Made by an unprivileged user: layers record owners, modes and devices in xattrs.
    #[serde(default)]
    pub rootless: bool,
}

impl StoreMeta {
    /// The mapping image daemons show layer ids through, if the store has one.
    pub fn id_map(&self) -> Option<nestfs_fuse::ids::IdMap> {
        let ranges = |m: &[IdMapping]| {
            m.iter()
                .map(|m| nestfs_fuse::ids::IdRange {
                    inside: m.container,
                    outside: m.host,
                    len: m.size,
                })
                .collect()
        };
        (!self.uid_mappings.is_empty() || !self.gid_mappings.is_empty()).then(|| {
            nestfs_fuse::ids::IdMap {
                uids: ranges(&self.uid_mappings),
                gids: ranges(&self.gid_mappings),
                map_upper: false,
            }
        })
    }
}

/// What `create` records about an image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageMeta {
    pub id: String,
    /// The IMAGE argument as given.
    pub image: String,
    /// Volume keys (chain id hex), bottom layer first.
    pub layers: Vec<String>,
    pub env: Vec<String>,
    /// 0: no limit.
    pub disk_limit: u64,
    pub exclude_image_from_quota: bool,
}

/// What a volume records about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VolumeMeta {
    pub bytes: u64,
    pub entries: u64,
    /// IMAGE arguments that pulled it (for `clean --ignore-image`).
    pub images: Vec<String>,
    /// Set while the volume is a lazily pulled layer not complete yet (see [`crate::lazy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lazy: Option<crate::lazy::LazyLayer>,
}

pub struct Store {
    root: PathBuf,
}

/// A file in images/ID from its build until its daemon first served it: while it is there
/// the image does not count as existing, and once no `create` holds the image's lock it is
/// debris of a killed one.
const CREATING: &str = "creating";

/// Writes `value` as JSON to `path` atomically (temp file, fsync, rename).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let data = serde_json::to_vec_pretty(value).expect("plain data serialises");
    io_ctx(
        (|| {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })(),
        || format!("write {}", path.display()),
    )
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let data = io_ctx(std::fs::read(path), || format!("read {}", path.display()))?;
    serde_json::from_slice(&data).map_err(|e| StoreError::Io {
        what: format!("parse {}", path.display()),
        cause: io::Error::new(io::ErrorKind::InvalidData, e),
    })
}

/// statvfs(2) of the filesystem holding `p`.
pub fn statvfs(p: &Path) -> Result<rustix::fs::StatVfs> {
    io_ctx(rustix::fs::statvfs(p).map_err(io::Error::from), || {
        format!("statfs {}", p.display())
    })
}

/// The default store: system-wide for root, per user otherwise.
pub fn default_root() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/nestfs");
    }
    // An empty XDG_DATA_HOME counts as unset (XDG base directory spec).
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("nestfs")
}

impl Store {
    /// A store at `root`; a relative path is taken from the current directory (mount points
    /// and the daemons' arguments must be absolute).
    pub fn new(root: impl Into<PathBuf>) -> Store {
        let root = root.into();
        Store {
            root: std::path::absolute(&root).unwrap_or(root),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes the store's filesystem has in use, by anyone (GrootFS's `UsedBackingStoreInBytes`).
    pub fn used_backing_bytes(&self) -> Result<u64> {
        let st = statvfs(&self.root)?;
        Ok((st.f_blocks - st.f_bfree) * st.f_frsize)
    }

    /// Bytes the store's filesystem has free for unprivileged use.
    pub fn free_bytes(&self) -> Result<u64> {
        let st = statvfs(&self.root)?;
        Ok(st.f_bavail * st.f_frsize)
    }

    /// Files the store's filesystem can still make for unprivileged use.
    pub fn free_inodes(&self) -> Result<u64> {
        Ok(statvfs(&self.root)?.f_favail)
    }

    fn meta_path(&self) -> PathBuf {
        self.root.join("store.json")
    }

    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }

    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }

    pub fn image_dir(&self, id: &str) -> PathBuf {
        self.images().join(id)
    }

    pub fn volume_dir(&self, key: &str) -> PathBuf {
        self.volumes().join(key)
    }

    /// Creates the layout and records `meta`; running it again with the same mappings is fine.
    pub fn init(&self, meta: &StoreMeta) -> Result<()> {
        io_ctx(std::fs::create_dir_all(&self.root), || {
            format!("create {}", self.root.display())
        })?;
        // Before anything is made in it: a root that cannot be made private is refused whole.
        self.protect_root(meta)?;
        for d in [self.volumes(), self.images(), self.tmp(), self.locks()] {
            io_ctx(std::fs::create_dir_all(&d), || {
                format!("create {}", d.display())
            })?;
        }
        let _g = self.lock(true)?;
        if self.meta_path().exists() {
            let old: StoreMeta = read_json(&self.meta_path())?;
            if old.uid_mappings != meta.uid_mappings || old.gid_mappings != meta.gid_mappings {
                return Err(StoreError::MappingsDiffer(self.root.clone()));
            }
            return Ok(());
        }
        write_json(&self.meta_path(), meta)
    }

    /// As GrootFS sets it: the store root is 0700, owned by the container's root when the
    /// store maps ids (so only it and the host's root see rootfs and upper dirs); a rootless
    /// store stays its user's.
    fn protect_root(&self, meta: &StoreMeta) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let what = || format!("protect {}", self.root.display());
        match std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700)) {
            // A user's init on someone else's directory: refused in GrootFS's words.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && meta.rootless => {
                return Err(StoreError::NotOwner(self.root.clone()));
            }
            r => io_ctx(r, what)?,
        }
        let host_root = |m: &[IdMapping]| m.iter().find(|m| m.container == 0).map(|m| m.host);
        if !meta.rootless
            && let Some(uid) = host_root(&meta.uid_mappings)
        {
            let gid = host_root(&meta.gid_mappings);
            io_ctx(std::os::unix::fs::chown(&self.root, Some(uid), gid), what)?;
        }
        Ok(())
    }

    /// The store's settings; fails if `init-store` never ran.
    pub fn meta(&self) -> Result<StoreMeta> {
        if !self.meta_path().exists() {
            if !self.root.exists() {
                return Err(StoreError::NoStore(self.root.clone()));
            }
            return Err(StoreError::NotInitialised(self.root.clone()));
        }
        read_json(&self.meta_path())
    }

    /// The store-wide lock: shared for create/delete, exclusive for clean and delete-store.
    pub fn lock(&self, exclusive: bool) -> Result<Lock> {
        let p = self.locks().join("store");
        io_ctx(Lock::acquire(&p, exclusive), || {
            format!("lock {}", p.display())
        })
    }

    /// The image id an `ID` or a path (image dir or its rootfs) names, whether or not it exists.
    pub fn id_of(&self, id_or_path: &str) -> Option<String> {
        let p = Path::new(id_or_path);
        let id = if p.is_absolute() {
            let rel = p.strip_prefix(self.images()).ok()?;
            rel.components().next()?.as_os_str().to_str()?.to_string()
        } else {
            id_or_path.to_string()
        };
        check_id(&id).is_ok().then_some(id)
    }

    /// The image id an `ID` or a path names, if that image exists and is complete.
    pub fn find_image(&self, id_or_path: &str) -> Option<String> {
        self.id_of(id_or_path).filter(|id| self.is_complete(id))
    }

    /// [`Self::find_image`], failing as GrootFS's id finder does: a path outside the store, or
    /// an image that is not there.
    pub fn lookup(&self, id_or_path: &str) -> Result<String> {
        let p = Path::new(id_or_path);
        if p.is_absolute() && !p.starts_with(self.images()) {
            return Err(StoreError::OutsideStore(id_or_path.to_string()));
        }
        self.find_image(id_or_path).ok_or_else(|| {
            let name = p
                .strip_prefix(self.images())
                .ok()
                .and_then(|r| r.iter().next());
            StoreError::NotFound(name.map_or(id_or_path.into(), |n| n.to_string_lossy().into()))
        })
    }

    /// Whether images/ID is an image its daemon served at least once: one that `create`
    /// finished, not one it is making or died making.
    fn is_complete(&self, id: &str) -> bool {
        let dir = self.image_dir(id);
        dir.join("image.json").exists() && !dir.join(CREATING).exists()
    }

    pub fn image_meta(&self, id: &str) -> Result<ImageMeta> {
        read_json(&self.image_dir(id).join("image.json"))
    }

    /// The image's metadata, or `None` if it is gone (deleted, maybe while we looked).
    pub fn image_meta_if_present(&self, id: &str) -> Result<Option<ImageMeta>> {
        match self.image_meta(id) {
            Err(StoreError::Io { cause: source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            r => r.map(Some),
        }
    }

    pub fn volume_meta(&self, key: &str) -> VolumeMeta {
        read_json(&self.volumes().join(format!("{key}.json"))).unwrap_or_default()
    }

    /// Ids of the complete images, sorted.
    pub fn image_ids(&self) -> Result<Vec<String>> {
        let mut ids = self.all_image_ids()?;
        ids.retain(|id| self.is_complete(id));
        Ok(ids)
    }

    /// Ids of all images, sorted, including those being made or left half-made by a killed
    /// `create`.
    pub fn all_image_ids(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let dir = self.images();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => {
                return Err(StoreError::Io {
                    what: format!("list {}", dir.display()),
                    cause: e,
                });
            }
        };
        for e in rd.flatten() {
            if let Some(name) = e.file_name().to_str()
                && !name.starts_with('.')
                && e.path().join("image.json").exists()
            {
                ids.push(name.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// What the image's upper dir may hold: its disk limit, less its layers unless they are
    /// excluded from the quota (0: no limit).
    pub fn upper_limit(&self, meta: &ImageMeta) -> u64 {
        match (meta.disk_limit, meta.exclude_image_from_quota) {
            (0, _) => 0,
            (limit, true) => limit,
            // `create` refuses an image as big as its limit, so this leaves at least a byte.
            (limit, false) => limit.saturating_sub(self.layers_bytes(meta)).max(1),
        }
    }

    /// Bytes the image's layers take.
    pub fn layers_bytes(&self, meta: &ImageMeta) -> u64 {
        meta.layers.iter().map(|k| self.volume_meta(k).bytes).sum()
    }

    /// Removes debris of runs that were killed: tmp entries, and half-built, half-deleted or
    /// retired images (dot names) whose owner process is gone.
    pub fn sweep_debris(&self) {
        for dir in [self.tmp(), self.images()] {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let debris = dir == self.tmp() || name.starts_with('.');
                if debris && owner_gone(&name) {
                    let _ = remove_tree(&e.path());
                }
            }
        }
    }

    /// A fresh private name for building something that appears later by rename.
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tmp()
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    pub fn volume_lock(&self, key: &str) -> Result<Lock> {
        let p = self.locks().join(format!("volume-{key}"));
        io_ctx(Lock::acquire(&p, true), || format!("lock {}", p.display()))
    }
}

/// Debris names carry the pid of the process that made them (`<what>-<pid>-<n>`, `.<what>-<pid>-…`).
fn owner_gone(name: &str) -> bool {
    let pid = name
        .split('-')
        .find_map(|p| p.parse::<i32>().ok().filter(|p| *p > 0));
    match pid {
        Some(pid) => process_gone(pid),
        None => true,
    }
}

/// Whether no process has the id `pid` (signal 0 answers ESRCH).
fn process_gone(pid: i32) -> bool {
    rustix::process::Pid::from_raw(pid)
        .is_some_and(|p| rustix::process::test_kill_process(p) == Err(rustix::io::Errno::SRCH))
}

/// Removes a tree that may contain read-only directories (as images often do).
pub fn remove_tree(p: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(p);
            std::fs::remove_dir_all(p)
        }
    }
}

fn make_writable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return;
    };
    if md.is_dir() {
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

/// Checks an image id: it becomes a directory name.
pub fn check_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.contains('/')
        || id == "."
        || id == ".."
        || id.starts_with('.')
        || id.len() > 200
        || id.contains('\0')
    {
        return Err(StoreError::BadId(id.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_parse() {
        let m: IdMapping = "0:4294967294:1".parse().unwrap();
        assert_eq!(
            m,
            IdMapping {
                container: 0,
                host: 4294967294,
                size: 1
            }
        );
        for bad in ["", "1:2", "1:2:3:4", "a:1:1", "0:0:0", "-1:0:1"] {
            assert!(bad.parse::<IdMapping>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn ids() {
        check_id("my-container_1").unwrap();
        for bad in ["", ".", "..", "a/b", ".hidden"] {
            assert!(check_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
