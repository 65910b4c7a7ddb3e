//! Safe layer unpacking: a tar stream (plain, gzip or zstd) into an empty directory.
//!
//! Entries whose names hold `..` are skipped and leading `/` are dropped (as tar does). Every
//! entry's directory is opened with `openat2(RESOLVE_BENEATH)` from the layer's root, so the
//! kernel refuses any path, through `..` or a symlink the layer made, that would leave it; the
//! entry is then created in that directory (and a hardlink's source resolved the same way), so
//! a hostile layer cannot write outside. Where the kernel has no openat2 (before 5.6, or a
//! seccomp filter refusing it), the `tar` crate's `unpack_in` does the same checks by
//! canonicalising every entry's parent, about twice as slow. OCI whiteout files (`.wh.NAME`,
//! `.wh..wh..opq`) are kept as the empty files they are: the FUSE overlay reads that format.
//! Decompression bombs are bounded in bytes and entries.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::image::ImageError;

/// Bounds and permissions for unpacking one layer.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Fail with [`ImageError::TooLarge`] once the layer's files add up to more than this.
    pub max_bytes: u64,
    /// Fail with [`ImageError::TooManyEntries`] past this many entries (inode bombs).
    pub max_entries: u64,
    /// chown entries and create device nodes as the tar headers say (root only). Without it,
    /// owners, modes and devices are recorded in xattrs instead (see `nestfs_fuse::meta`).
    pub privileged: bool,
    /// Leave out eStargz's own entries (its TOC and landmark files at the layer's root).
    pub skip_estargz_entries: bool,
}

/// What one unpacked layer consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Bytes allocated on disk (blocks), as `du --block-size=1` would count them.
    pub bytes: u64,
    /// Number of entries created.
    pub entries: u64,
}

/// A reader that undoes gzip or zstd compression, recognised by magic bytes (plain tar
/// otherwise), whatever the media type claims.
pub fn decompressor<'a, R: Read + 'a>(reader: R) -> std::io::Result<Box<dyn Read + 'a>> {
    let mut buf = BufReader::with_capacity(1 << 16, reader);
    let head = buf.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buf))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buf)?)
    } else {
        Box::new(buf)
    })
}

/// The error with its causes: the tar crate says which entry failed, its source says why. A
/// full filesystem is no fault of the image: that is [`ImageError::NoSpace`] (its size is
/// filled in by [`unpack_with`]).
fn invalid(what: &str, e: impl std::error::Error + 'static) -> ImageError {
    if no_space(&e) {
        return ImageError::NoSpace { needed: 0 };
    }
    let mut msg = format!("{what}: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    ImageError::Invalid(msg)
}

/// A tar entry that cannot be read. The tar crate's message quotes the header's bytes (a text
/// file given as a tarball had its first lines printed), so only its gist is kept.
fn bad_entry(read: u64, e: std::io::Error) -> ImageError {
    if read == 0 && e.kind() == std::io::ErrorKind::Other && e.to_string().contains("cksum") {
        return ImageError::Invalid(
            "the layer is not a tar archive (no tar header at its start)".into(),
        );
    }
    let text = e.to_string();
    let gist = text.split(" when getting").next().unwrap_or_default();
    let gist: String = gist.chars().take(120).filter(|c| !c.is_control()).collect();
    ImageError::Invalid(format!("read layer entry {}: {gist}", read + 1))
}

/// Whether `e` or one of its causes is an io error saying the filesystem (or a quota) is full;
/// the tar crate wraps them, keeping their kind.
fn no_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Replaces the stand-in file at `path` of a device or fifo entry by the real node (as root).
fn make_device<R: Read>(path: &Path, entry: &tar::Entry<R>, name: &str) -> Result<(), ImageError> {
    let h = entry.header();
    let fail = |e: std::io::Error| invalid(&format!("create device {name:?}"), e);
    let kind = if h.entry_type().is_character_special() {
        rustix::fs::FileType::CharacterDevice
    } else if h.entry_type().is_fifo() {
        rustix::fs::FileType::Fifo
    } else {
        rustix::fs::FileType::BlockDevice
    };
    let rdev = libc::makedev(
        h.device_major().ok().flatten().unwrap_or(0),
        h.device_minor().ok().flatten().unwrap_or(0),
    );
    std::fs::remove_file(path).map_err(fail)?;
    let mode = h.mode().unwrap_or(0o600) & 0o7777;
    rustix::fs::mknodat(rustix::fs::CWD, path, kind, Mode::from_raw_mode(mode), rdev)
        .map_err(|e| fail(e.into()))?;
    let (uid, gid) = (h.uid().unwrap_or(0) as u32, h.gid().unwrap_or(0) as u32);
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(fail)?;
    // mknod applied the umask; chown may have cleared nothing (devices have no set-id bits).
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(fail)
}

/// Gives a node made here (not by the tar crate, which does it itself) its header's mtime.
fn set_mtime<R: Read>(path: &Path, entry: &tar::Entry<R>, name: &str) -> Result<(), ImageError> {
    let times = layer_times(entry.header().mtime().unwrap_or(0) as i64);
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
        invalid(
            &format!("set the mtime of {name:?}"),
            std::io::Error::from(e),
        )
    })
}

/// Where an entry named `name` goes, relative to the layer's root: without root or `.`
/// components; None (the entry is skipped) if a component is `..`.
fn placed(name: &Path) -> Option<PathBuf> {
    let mut rel = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(part) => rel.push(part),
            Component::ParentDir => return None,
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
        }
    }
    Some(rel)
}

/// The directories of the layer being unpacked, each opened beneath its root.
struct Beneath {
    root: OwnedFd,
    /// Directories opened so far (a few dozen: layers list entries directory by directory).
    open: HashMap<PathBuf, OwnedFd>,
}

/// Directory `rel` beneath `root`; the kernel fails any resolution that would leave `root`.
fn open_beneath(root: &OwnedFd, rel: &Path) -> rustix::io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    rustix::fs::openat2(
        root,
        rel,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )
}

impl Beneath {
    /// None where openat2 is missing (before Linux 5.6) or refused (seccomp).
    fn new(dest: &Path) -> std::io::Result<Option<Self>> {
        let root = rustix::fs::open(
            dest,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        match open_beneath(&root, Path::new("")) {
            Ok(_) => Ok(Some(Self {
                root,
                open: HashMap::new(),
            })),
            Err(Errno::NOSYS | Errno::PERM) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Directory `rel`, made first (as `mkdir -p`, each step beneath the root) if missing.
    fn dir(&mut self, rel: &Path) -> std::io::Result<&OwnedFd> {
        if !self.open.contains_key(rel) {
            if self.open.len() >= 64 {
                self.open.clear(); // bounded: the process's fd limit may be 1024
            }
            let fd = match open_beneath(&self.root, rel) {
                Err(Errno::NOENT) => {
                    self.make(rel)?;
                    open_beneath(&self.root, rel)?
                }
                r => r?,
            };
            self.open.insert(rel.to_path_buf(), fd);
        }
        Ok(&self.open[rel])
    }

    fn make(&self, rel: &Path) -> std::io::Result<()> {
        let mut done = PathBuf::new();
        for part in rel.iter() {
            let parent = open_beneath(&self.root, &done)?;
            match rustix::fs::mkdirat(&parent, part, Mode::from_raw_mode(0o777)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            done.push(part);
        }
        Ok(())
    }

    /// A non-directory entry at `rel` may replace a symlink that directories at or under
    /// `rel` were reached through: open those afresh.
    fn replacing(&mut self, rel: &Path) {
        let rel = rel.as_os_str().as_bytes();
        self.open.retain(|dir, _| {
            let dir = dir.as_os_str().as_bytes();
            !(dir.starts_with(rel) && dir.get(rel.len()).is_none_or(|&c| c == b'/'))
        });
    }

    /// Hard link `dir/name` to the entry's link target, resolved beneath the root too.
    fn hard_link<R: Read>(
        &self,
        entry: &tar::Entry<R>,
        dir: BorrowedFd,
        name: &std::ffi::OsStr,
    ) -> std::io::Result<()> {
        let target = entry
            .link_name()?
            .ok_or_else(|| std::io::Error::other("hard link without a target"))?;
        let (Some(tdir), Some(tname)) = (target.parent(), target.file_name()) else {
            return Err(std::io::Error::other(format!(
                "hard link target {}: not a file name",
                target.display()
            )));
        };
        let tdir = open_beneath(&self.root, tdir)?;
        rustix::fs::linkat(&tdir, tname, dir, name, AtFlags::empty())?;
        Ok(())
    }
}

/// A path to the directory open as `fd`, for the tar crate's path-based calls.
fn fd_path(fd: RawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

/// Records the header's owner, mode and device on the entry unpacked at `path` (unprivileged
/// unpack).
fn record_meta<R: Read>(path: &Path, entry: &tar::Entry<R>, name: &str) -> Result<(), ImageError> {
    let h = entry.header();
    let fail = |e: std::io::Error| invalid(&format!("record owner of {name:?}"), e);
    let kind = h.entry_type();
    let fmt = if kind.is_dir() {
        libc::S_IFDIR
    } else if kind.is_character_special() {
        libc::S_IFCHR
    } else if kind.is_block_special() {
        libc::S_IFBLK
    } else if kind.is_fifo() {
        libc::S_IFIFO
    } else {
        libc::S_IFREG
    };
    let rdev = match (h.device_major(), h.device_minor()) {
        (Ok(Some(ma)), Ok(Some(mi))) if fmt != libc::S_IFREG && fmt != libc::S_IFDIR => {
            libc::makedev(ma, mi)
        }
        _ => 0,
    };
    let want = nestfs_fuse::meta::Meta {
        uid: h.uid().unwrap_or(0) as u32,
        gid: h.gid().unwrap_or(0) as u32,
        mode: fmt | (h.mode().unwrap_or(0o644) & 0o7777),
        rdev,
    };
    nestfs_fuse::meta::record_path(path, &want).map_err(fail)
}

/// Unpacks the tar stream `reader` into `dest` (an existing, empty directory).
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, ImageError> {
    let beneath = Beneath::new(dest).map_err(|e| invalid("open layer directory", e))?;
    let has_beneath = beneath.is_some();
    let done = unpack_with(reader, dest, opts, beneath)?;
    finish(dest, has_beneath, done.entries, &done.dir_times)
}

/// Unpacks tar archives into `dest` (an existing, empty directory) phase by phase, each
/// phase's parts at once on threads of their own: as one archive of them all in order would
/// unpack, provided no entry of a part depends on an entry of another part of its phase (is
/// in a directory, behind a link or at a name it makes). The bounds hold for them all.
pub fn unpack_phases(
    phases: &[Vec<Vec<u8>>],
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, ImageError> {
    let has_beneath = Beneath::new(dest)
        .map_err(|e| invalid("open layer directory", e))?
        .is_some();
    let (mut entries, mut bytes, mut dir_times) = (0, 0, Vec::new());
    for parts in phases {
        let done: Vec<Result<Unpacked, ImageError>> = std::thread::scope(|s| {
            let threads: Vec<_> = parts
                .iter()
                .map(|part| {
                    s.spawn(move || {
                        let beneath =
                            Beneath::new(dest).map_err(|e| invalid("open layer directory", e))?;
                        unpack_with(&part[..], dest, opts, beneath)
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("an unpack thread"))
                .collect()
        });
        for d in done {
            let d = d?;
            entries += d.entries;
            bytes += d.bytes;
            dir_times.extend(d.dir_times);
        }
        if entries > opts.max_entries {
            return Err(ImageError::TooManyEntries {
                limit: opts.max_entries,
            });
        }
        if bytes > opts.max_bytes {
            return Err(ImageError::TooLarge {
                limit: opts.max_bytes,
                needed: bytes,
            });
        }
    }
    finish(dest, has_beneath, entries, &dir_times)
}

/// What unpacking one archive did.
#[derive(Debug)]
struct Unpacked {
    entries: u64,
    /// What the entries' sizes take in whole blocks.
    bytes: u64,
    /// Each directory's mtime, to give it once nothing is made in it any more.
    dir_times: Vec<(PathBuf, u64)>,
}

/// Gives directories their mtimes and measures the layer.
fn finish(
    dest: &Path,
    has_beneath: bool,
    entries: u64,
    dir_times: &[(PathBuf, u64)],
) -> Result<UnpackStats, ImageError> {
    if has_beneath {
        let b = Beneath::new(dest)
            .map_err(|e| invalid("open layer directory", e))?
            .expect("openat2 worked before");
        restore_dir_times(&b, dir_times).map_err(|e| invalid("restore directory times", e))?;
    }
    let bytes = nestfs_fuse::allocated_bytes(dest).map_err(|e| invalid("measure layer", e))?;
    Ok(UnpackStats { bytes, entries })
}

/// The entries of `reader`, beneath `dest` through openat2 when `beneath` is given.
fn unpack_with(
    reader: impl Read,
    dest: &Path,
    opts: &UnpackOptions,
    mut beneath: Option<Beneath>,
) -> Result<Unpacked, ImageError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_preserve_ownerships(opts.privileged);
    archive.set_overwrite(true);
    let (mut entries, mut bytes) = (0u64, 0u64);
    let mut dir_times = Vec::new();
    for entry in archive.entries().map_err(|e| invalid("read layer", e))? {
        let mut entry = entry.map_err(|e| bad_entry(entries, e))?;
        if opts.skip_estargz_entries
            && crate::estargz::is_metadata_entry(&String::from_utf8_lossy(&entry.path_bytes()))
        {
            continue;
        }
        entries += 1;
        if entries > opts.max_entries {
            return Err(ImageError::TooManyEntries {
                limit: opts.max_entries,
            });
        }
        // Count whole blocks per file, as the filesystem will allocate them.
        bytes += entry.header().entry_size().unwrap_or(0).div_ceil(4096) * 4096;
        if bytes > opts.max_bytes {
            return Err(ImageError::TooLarge {
                limit: opts.max_bytes,
                needed: bytes,
            });
        }
        unpack_entry(&mut entry, dest, opts, beneath.as_mut()).map_err(|e| match e {
            ImageError::NoSpace { .. } => ImageError::NoSpace { needed: bytes },
            e => e,
        })?;
        if entry.header().entry_type().is_dir()
            && let (Ok(path), Ok(mtime)) = (entry.path(), entry.header().mtime())
            && let Some(rel) = placed(&path)
        {
            dir_times.push((rel, mtime));
        }
    }
    Ok(Unpacked {
        entries,
        bytes,
        dir_times,
    })
}

/// Gives directories the mtime their headers say, as Docker and GrootFS keep them: entries
/// unpacked into a directory after its header changed it. (Without openat2 the times stay:
/// setting them by path could follow a layer's symlinks out of it.)
fn restore_dir_times(b: &Beneath, dirs: &[(PathBuf, u64)]) -> std::io::Result<()> {
    for (rel, mtime) in dirs {
        let fd = open_beneath(&b.root, rel)?;
        let times = layer_times(*mtime as i64);
        rustix::fs::utimensat(
            rustix::fs::CWD,
            fd_path(fd.as_raw_fd()),
            &times,
            AtFlags::empty(),
        )?;
    }
    Ok(())
}

/// Creates one entry beneath `dest` (through openat2 when `beneath` is given) with its owner,
/// mode and device.
fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<R>,
    dest: &Path,
    opts: &UnpackOptions,
    beneath: Option<&mut Beneath>,
) -> Result<(), ImageError> {
    let kind = entry.header().entry_type();
    let name = entry
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    // Nodes the tar crate cannot make (it makes a fifo a regular file): a stand-in first.
    let device = kind.is_character_special() || kind.is_block_special() || kind.is_fifo();
    let fail = |e: std::io::Error| invalid(&format!("unpack {name:?}"), e);
    let at = match beneath {
        Some(b) => place(b, entry, device, opts.privileged).map_err(fail)?,
        None => unpack_in(dest, entry, &name, device)?,
    };
    let Some(at) = at else { return Ok(()) };
    let plain = kind.is_file()
        || kind.is_gnu_sparse()
        || kind.is_dir()
        || kind == tar::EntryType::Continuous;
    if !opts.privileged && (plain || device) {
        record_meta(&at, entry, &name)?;
    } else if device {
        make_device(&at, entry, &name)?;
    }
    if device {
        set_mtime(&at, entry, &name)?;
    }
    Ok(())
}

/// Creates `entry` beneath the layer's root; returns where (None: skipped, as tar skips names
/// with `..`). A device entry gets an empty stand-in file, replaced or described later.
fn place<R: Read>(
    b: &mut Beneath,
    entry: &mut tar::Entry<R>,
    device: bool,
    privileged: bool,
) -> std::io::Result<Option<PathBuf>> {
    let Some(rel) = placed(&entry.path()?) else {
        return Ok(None);
    };
    let (Some(parent), Some(file)) = (rel.parent(), rel.file_name()) else {
        return Ok(None); // only `/` or `.`: nothing to make
    };
    let kind = entry.header().entry_type();
    if !kind.is_dir() {
        b.replacing(&rel);
    }
    b.dir(parent)?;
    let dir = &b.open[parent];
    let at = fd_path(dir.as_raw_fd()).join(file);
    if kind.is_hard_link() {
        b.hard_link(entry, dir.as_fd(), file)?;
    } else if device {
        match std::fs::symlink_metadata(&at) {
            Ok(m) if !m.is_dir() => std::fs::remove_file(&at)?,
            _ => {}
        }
        std::fs::File::create_new(&at)?;
    } else if dataless(entry) {
        make_dataless(entry, dir.as_fd(), file, privileged)?;
    } else {
        entry.unpack(&at)?;
    }
    Ok(Some(at))
}

/// Gives a regular file of a layer `mtime` as its access and modification time, as the tar
/// crate unpacks one: never 0 (1 instead).
pub fn set_file_times(fd: impl AsFd, mtime: i64) -> std::io::Result<()> {
    Ok(rustix::fs::futimens(fd, &layer_times(mtime.max(1)))?)
}

/// `mtime` (whole seconds) as both access and modification time, as layers carry them.
fn layer_times(mtime: i64) -> rustix::fs::Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Whether the entry is a regular file without data: empty (its size as the tar crate reads
/// it, a PAX size included), or GNU sparse with no data block (all hole).
fn dataless<R: Read>(entry: &tar::Entry<R>) -> bool {
    let kind = entry.header().entry_type();
    if kind.is_file() {
        return entry.size() == 0;
    }
    let Some(gnu) = entry.header().as_gnu().filter(|_| kind.is_gnu_sparse()) else {
        return false;
    };
    !gnu.is_extended()
        && gnu
            .sparse
            .iter()
            .all(|b| b.is_empty() || b.length().is_ok_and(|l| l == 0))
}

/// A regular file without data in the archive (empty, or all hole as a lazy volume's
/// skeleton makes thousands of them), as the tar crate would make it but through its
/// directory's fd, and without the chown and chmod that would change nothing: about half
/// the syscalls that change the inode.
fn make_dataless<R: Read>(
    entry: &mut tar::Entry<R>,
    dir: BorrowedFd,
    name: &std::ffi::OsStr,
    privileged: bool,
) -> std::io::Result<()> {
    let h = entry.header();
    let (len, mode, mtime) = (h.size()?, h.mode()? & 0o7777, h.mtime().ok());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let create = || rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode & 0o777));
    let fd = match create() {
        // As the tar crate overwrites: the old entry goes (a directory stays, and fails).
        Err(Errno::EXIST) => {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
            create()?
        }
        r => r?,
    };
    if len > 0 {
        rustix::fs::ftruncate(&fd, len)?;
    }
    let st = rustix::fs::fstat(&fd)?;
    // Owners are read only when they are to be set, as the tar crate does.
    let owner = |id: u64| {
        u32::try_from(id).map_err(|_| std::io::Error::other(format!("id {id} is too large")))
    };
    let owners = if privileged {
        Some((owner(h.uid()?)?, owner(h.gid()?)?))
    } else {
        None
    };
    let chown = owners.filter(|&ids| (st.st_uid, st.st_gid) != ids);
    if let Some((uid, gid)) = chown {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )?;
    }
    // After chown, which clears set-id bits.
    if chown.is_some() || st.st_mode & 0o7777 != mode {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    }
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                let key = std::ffi::OsStr::from_bytes(key);
                rustix::fs::fsetxattr(
                    &fd,
                    key,
                    ext.value_bytes(),
                    rustix::fs::XattrFlags::empty(),
                )?;
            }
        }
    }
    if let Some(mtime) = mtime {
        set_file_times(&fd, mtime as i64)?;
    }
    Ok(())
}

/// [`place`] where openat2 is missing: the tar crate's checks, device stand-ins made through
/// them too.
fn unpack_in<R: Read>(
    dest: &Path,
    entry: &mut tar::Entry<R>,
    name: &str,
    device: bool,
) -> Result<Option<PathBuf>, ImageError> {
    let fail = |e: std::io::Error| invalid(&format!("unpack {name:?}"), e);
    let placed_in = if device {
        let mut stand_in = tar::Header::new_gnu();
        stand_in.set_entry_type(tar::EntryType::Regular);
        stand_in.set_size(0);
        stand_in.set_mode(0o600);
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut stand_in, name, std::io::empty())
            .map_err(fail)?;
        let data = b.into_inner().map_err(fail)?;
        let mut one = tar::Archive::new(&data[..]);
        let mut placed_in = false;
        for e in one.entries().map_err(fail)? {
            placed_in = e.map_err(fail)?.unpack_in(dest).map_err(fail)?;
        }
        placed_in
    } else {
        entry.unpack_in(dest).map_err(fail)?
    };
    Ok(match (placed_in, placed(Path::new(name))) {
        (true, Some(rel)) if !rel.as_os_str().is_empty() => Some(dest.join(rel)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(tar::EntryType, &str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (kind, name, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(0);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            b.append_data(&mut h, name, std::io::empty()).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Without openat2 the tar crate's checks hold the line: same hostile layer, same refusal.
    #[test]
    fn the_fallback_refuses_writes_and_links_outside() {
        let dir = tempfile::tempdir().unwrap();
        let (dest, outside) = (dir.path().join("dest"), dir.path().join("outside"));
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "kept").unwrap();
        let opts = UnpackOptions {
            max_bytes: 1 << 20,
            max_entries: 100,
            privileged: false,
            skip_estargz_entries: false,
        };
        let out = outside.to_str().unwrap();
        for layer in [
            archive(&[
                (tar::EntryType::Symlink, "l", out),
                (tar::EntryType::Regular, "l/new", ""),
            ]),
            archive(&[(tar::EntryType::Link, "h", "../outside/secret")]),
        ] {
            let r = unpack_with(&layer[..], &dest, &opts, None);
            assert!(r.is_err(), "escaping layer accepted: {r:?}");
        }
        assert!(!outside.join("new").exists());
        assert!(!dest.join("h").exists());
        assert_eq!(
            std::fs::read_to_string(outside.join("secret")).unwrap(),
            "kept"
        );
    }
}
