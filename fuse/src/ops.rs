//! The FUSE request handlers: each turns a request into an [`Overlay`] call and its reply.
//! File handles are the daemon's own fds, one per open (see `handles`). Directories have no handles: the
//! kernel opens them without asking (see `opendir`), and a read's offset indexes a snapshot of
//! the merged listing taken when a read starts at offset 0.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::attrs::SetAttr;
use crate::dir::{self, Entry};
use crate::handles::{Handle, Handles};
use crate::namespace::{Caller, NewKind};
use crate::overlay::{Overlay, Target};
use crate::passthrough::Open;
use crate::setid::{self, Change, Requester};
use crate::sys;

pub struct Fs {
    ov: Overlay,
    /// Listings being read, by directory node: taken by a read at offset 0, dropped by the
    /// read past the end (or when the node is forgotten). The kernel caches whole listings,
    /// so a directory is listed again only after it changed.
    listings: Mutex<HashMap<u64, Arc<Vec<Entry>>>>,
    /// The kernel left clearing set-id bits on chown, write and truncate to the daemon.
    clears_setid: bool,
    /// The kernel opens directories without an OPENDIR (and closes them without a
    /// RELEASEDIR) once opendir answered ENOSYS.
    no_opendir: bool,
    handles: Handles,
}

impl Fs {
    /// Serves `ov`; `epoch` tells this server's handles from earlier ones' (see `handover`).
    pub fn new(ov: Overlay, epoch: u32) -> Fs {
        Fs {
            ov,
            listings: Mutex::default(),
            clears_setid: false,
            no_opendir: false,
            handles: Handles::new(epoch),
        }
    }

    /// After a takeover: the nodes a request names, found again where the table lacks them
    /// (see `recover`).
    fn known(&self, inos: &[INodeNo]) {
        for i in inos {
            self.ov.known(i.0);
        }
    }

    /// After a takeover: the object `parent`/`name` names, which a request changes by name,
    /// found again where the table lacks its node (see `recover`).
    fn known_child(&self, parent: INodeNo, name: &std::ffi::CStr) {
        self.ov.known_child(parent.0, name);
    }

    /// The fd behind file handle `fh` of node `ino`.
    fn fd(&self, ino: u64, fh: FileHandle) -> io::Result<RawFd> {
        self.handles.fd(fh, || {
            let fd = self.reopen(ino)?;
            let _ = self.ov.identity.track_fd(ino, fd.as_raw_fd(), true);
            Ok(fd)
        })
    }

    /// Opens node `ino` again for a handle an earlier server gave out (its fd died with that
    /// server): for reading and writing in the upper dir (only there can it have been open for
    /// writing), else for reading. Data goes at the offsets requests carry, so an O_APPEND
    /// open lost is no matter.
    fn reopen(&self, ino: u64) -> io::Result<OwnedFd> {
        let Target::Entry(d, n) = self.ov.target(ino)? else {
            return Err(sys::err(libc::EISDIR));
        };
        let mode = if self.ov.in_upper(ino) {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        sys::open_at(d.as_raw_fd(), &n, mode | libc::O_NONBLOCK, 0)
    }

    /// Answers with an entry: its attributes cached long, the name as `ttl_of` says.
    fn entry(&self, reply: ReplyEntry, attr: &fuser::FileAttr) {
        reply.entry_with_ttls(&self.ov.ttl, &self.ov.ttl_of(attr), attr, gen0());
    }

    /// mkdir, mknod and symlink: make the object, answer with its entry.
    fn made(
        &self,
        reply: ReplyEntry,
        parent: u64,
        name: &std::ffi::CStr,
        kind: NewKind,
        req: &Request,
    ) {
        match self.ov.make(parent, name, kind, caller(req)) {
            Ok(attr) => self.entry(reply, &attr),
            Err(e) => match self.made_before(req, &e, parent, name) {
                Some(attr) => self.entry(reply, &attr),
                None => reply.error(errno(e)),
            },
        }
    }

    /// A request sent again after a takeover (see `handover`) may have been carried out by
    /// the daemon that died before it could answer: making a name then fails with EEXIST, and
    /// removing one with ENOENT, where the first try succeeded. Such a failure of a resent
    /// request is taken as that success.
    fn done_before(req: &Request, e: &io::Error, errno: i32) -> bool {
        req.unique().0 & FUSE_UNIQUE_RESEND != 0 && e.raw_os_error() == Some(errno)
    }

    /// The entry a resent request that makes `parent`/`name` made before (see `done_before`).
    fn made_before(
        &self,
        req: &Request,
        e: &io::Error,
        parent: u64,
        name: &std::ffi::CStr,
    ) -> Option<fuser::FileAttr> {
        Self::done_before(req, e, libc::EEXIST)
            .then(|| self.ov.lookup(parent, name).ok())
            .flatten()
    }

    /// [`Overlay::fill_for_open`] for the layer file node `ino` names.
    fn fill_for_open(&self, ino: u64) -> io::Result<bool> {
        match self.ov.target(ino)? {
            Target::Entry(d, n) => {
                let fd = sys::open_at(d.as_raw_fd(), &n, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
                self.ov.fill_for_open(&fd)
            }
            _ => Ok(true),
        }
    }

    /// Whether a first open of `ino` may use passthrough (`Some(lower)`): reads of a lower
    /// file with one name (a split of a shared inode would split all its names), and any open
    /// of an upper file unless the daemon must see every write (see `upper_passthrough`).
    fn passthrough_for(&self, ino: u64, flags: i32, fd: &OwnedFd) -> Option<bool> {
        if !self.ov.io.enabled() {
            return None;
        }
        if self.ov.in_upper(ino) {
            return self.upper_passthrough();
        }
        let single = sys::fstat(fd.as_raw_fd()).is_ok_and(|st| st.st_nlink <= 1);
        (!wants_write(flags) && single).then_some(true)
    }

    /// Passthrough for an upper file (`Some(false)`), unless a limit needs the daemon to see
    /// each write; usage without a limit is counted by walking the upper dir instead.
    fn upper_passthrough(&self) -> Option<bool> {
        let limited = self.ov.quota.as_ref().is_some_and(|q| q.sees_every_write());
        (!limited).then_some(false)
    }

    /// The mode bits `ino` keeps after `change` by the caller of `req`, where the daemon must
    /// clear set-id bits and the change clears some.
    fn setid_kept(&self, ino: u64, change: Change, req: &Request) -> Result<Option<u32>, E> {
        if !self.clears_setid {
            return Ok(None);
        }
        let attr = self.ov.getattr(ino)?;
        let who = Requester::new(req.pid(), req.gid());
        Ok(setid::kept_after(&attr, change, &who))
    }

    /// The inode a `.` or `..` entry of directory `ino` stands for.
    fn dot(&self, ino: u64, name: &std::ffi::CStr) -> Option<u64> {
        match name.to_bytes() {
            b"." => Some(ino),
            b".." => Some(self.ov.nodes.lock().get(&ino).map_or(ino, |n| n.parent)),
            _ => None,
        }
    }

    fn listings(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Vec<Entry>>>> {
        self.listings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The listing of directory `ino`, with `.` and `..`, for a read at `offset`: a fresh one
    /// at offset 0, else the one that read took (a fresh one if it is gone), so that a reader
    /// sees every name that stayed exactly once even while it removes names as it reads.
    fn listing(&self, ino: u64, offset: u64) -> io::Result<Arc<Vec<Entry>>> {
        if offset > 0
            && let Some(list) = self.listings().get(&ino)
        {
            return Ok(list.clone());
        }
        // Listed without the lock: other directories' reads go on meanwhile.
        let mut entries = vec![
            Entry {
                name: c".".into(),
                dtype: libc::DT_DIR,
                at: 0,
            },
            Entry {
                name: c"..".into(),
                dtype: libc::DT_DIR,
                at: 0,
            },
        ];
        entries.extend(dir::list(&self.ov.dirs_of(ino)?)?);
        let list = Arc::new(entries);
        if (offset as usize) < list.len() {
            self.listings().insert(ino, list.clone());
        }
        Ok(list)
    }

    /// A read at `offset` past the last entry ends its reader's pass over the listing.
    fn listed(&self, ino: u64, offset: u64, list: &[Entry]) {
        if offset as usize >= list.len() {
            self.listings().remove(&ino);
        }
    }
}

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(sys::errno(&e))
}

fn cname(name: &OsStr) -> Result<std::ffi::CString, Errno> {
    sys::cname(name).map_err(errno)
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// Bit 63 of a request's unique id: the kernel sends it again (FUSE_NOTIFY_RESEND).
const FUSE_UNIQUE_RESEND: u64 = 1 << 63;

fn gen0() -> Generation {
    Generation(0)
}

/// Flags the daemon must not pass on when it opens the real file.
fn open_flags(flags: i32) -> i32 {
    flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_TRUNC)
}

fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// Whether the open file can be written through (its access mode, as the release's flags,
/// the file's own, still say; O_TRUNC is gone from them by then).
fn writable(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
}

macro_rules! tryr {
    ($reply:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return $reply.error(e.into()),
        }
    };
}

struct E(Errno);
impl From<io::Error> for E {
    fn from(e: io::Error) -> E {
        E(errno(e))
    }
}
impl From<Errno> for E {
    fn from(e: Errno) -> E {
        E(e)
    }
}
impl From<E> for Errno {
    fn from(e: E) -> Errno {
        e.0
    }
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let want = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_EXPORT_SUPPORT;
        let _ = config.add_capabilities(want & config.capabilities());
        // The daemon clears set-id bits itself (see `setid`): no refresh before each chown,
        // and a file's later writes skip the kernel's security.capability lookup.
        self.clears_setid = config
            .capabilities()
            .contains(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
            && config
                .add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
                .is_ok();
        if self.ov.want_passthrough
            && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
        {
            let roots: Vec<_> = self.ov.layers.iter().map(|l| l.root.clone()).collect();
            if config
                .set_max_stack_depth(crate::passthrough::stack_depth(&roots))
                .is_ok()
            {
                self.ov.io.enable();
            }
        }
        self.no_opendir = config
            .capabilities()
            .contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.known(&[parent]);
        let name = tryr!(reply, cname(name));
        match self.ov.lookup(parent.0, &name) {
            Ok(attr) => self.entry(reply, &attr),
            // A negative entry (node 0) the kernel may cache: names only appear through this
            // mount, and the kernel drops the negative entry when one does.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let none = sys::empty_stat();
                reply.entry(&self.ov.ttl, &crate::overlay::attr(&none, 0, false), gen0());
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if self.ov.nodes.forget(ino.0, nlookup) {
            self.listings().remove(&ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.known(&[ino]);
        let attr = tryr!(reply, self.ov.getattr(ino.0).map_err(E::from));
        reply.attr(&self.ov.ttl, &attr);
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.known(&[ino]);
        let fh = match fh.filter(|f| f.0 > 0) {
            Some(f) => Some(tryr!(reply, self.fd(ino.0, f).map_err(E::from)) as u64),
            None => None,
        };
        // Truncating a file whose open files read its lower copy: see `open`.
        if size.is_some() && fh.is_none() && self.ov.io.backs_lower(ino.0) {
            let ch = tryr!(reply, self.ov.copied_up(ino.0).map_err(E::from));
            tryr!(reply, self.ov.split(&ch, ino.0).map_err(E::from));
            return reply.error(Errno::ESTALE);
        }
        // A setattr that changes nothing is the kernel asking to clear set-id bits after an
        // unprivileged write or fallocate (or a chown(-1, -1)).
        let change = if uid.is_some() || gid.is_some() {
            Some(Change::Chown)
        } else if size.is_some() || (mode, atime, mtime) == (None, None, None) {
            Some(Change::Modify)
        } else {
            None
        };
        let mode = match change {
            Some(c) if mode.is_none() => tryr!(reply, self.setid_kept(ino.0, c, req)),
            _ => mode,
        };
        let attr = tryr!(
            reply,
            self.ov
                .setattr(
                    ino.0,
                    &SetAttr {
                        mode,
                        uid,
                        gid,
                        size,
                        atime,
                        mtime,
                        fh,
                    },
                )
                .map_err(E::from)
        );
        reply.attr(&self.ov.ttl, &attr);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.known(&[ino]);
        let t = tryr!(reply, self.ov.target(ino.0).map_err(E::from));
        let Target::Entry(d, n) = t else {
            return reply.error(Errno::EINVAL);
        };
        let link = tryr!(reply, sys::readlink_at(d.as_raw_fd(), &n).map_err(E::from));
        reply.data(&link);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.known(&[parent]);
        let name = tryr!(reply, cname(name));
        let kind = NewKind::Node {
            mode: mode & !(umask & 0o777),
            rdev: rdev as u64,
        };
        self.made(reply, parent.0, &name, kind, req);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.known(&[parent]);
        let name = tryr!(reply, cname(name));
        let kind = NewKind::Dir(mode & !(umask & 0o777));
        self.made(reply, parent.0, &name, kind, req);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.known(&[parent]);
        let name = tryr!(reply, cname(name));
        self.known_child(parent, &name);
        match self.ov.unlink(parent.0, &name, false) {
            Err(e) if !Self::done_before(req, &e, libc::ENOENT) => reply.error(errno(e)),
            _ => reply.ok(),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.known(&[parent]);
        let name = tryr!(reply, cname(name));
        self.known_child(parent, &name);
        match self.ov.unlink(parent.0, &name, true) {
            Err(e) if !Self::done_before(req, &e, libc::ENOENT) => reply.error(errno(e)),
            _ => reply.ok(),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.known(&[parent]);
        let name = tryr!(reply, cname(link_name));
        let target = tryr!(reply, cname(target.as_os_str()));
        let kind = NewKind::Symlink(&target);
        self.made(reply, parent.0, &name, kind, req);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.known(&[parent, newparent]);
        let name = tryr!(reply, cname(name));
        let newname = tryr!(reply, cname(newname));
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        self.known_child(parent, &name);
        self.known_child(newparent, &newname);
        match self
            .ov
            .rename(parent.0, &name, newparent.0, &newname, flags.bits())
        {
            // Done before if the source is gone and the target is there.
            Err(e)
                if !(Self::done_before(req, &e, libc::ENOENT)
                    && self.ov.find(newparent.0, &newname).is_ok()) =>
            {
                reply.error(errno(e))
            }
            _ => reply.ok(),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.known(&[ino, newparent]);
        let newname = tryr!(reply, cname(newname));
        match self.ov.link(ino.0, newparent.0, &newname) {
            Ok(attr) => self.entry(reply, &attr),
            Err(e) => {
                let linked = Self::done_before(req, &e, libc::EEXIST)
                    && self
                        .ov
                        .find(newparent.0, &newname)
                        .is_ok_and(|f| f.ino == ino.0);
                match linked.then(|| self.ov.lookup(newparent.0, &newname)) {
                    Some(Ok(attr)) => self.entry(reply, &attr),
                    _ => reply.error(errno(e)),
                }
            }
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.known(&[ino]);
        let (ino, flags) = (ino.0, flags.0);
        // A layer file's data is brought in first, without the change lock: fetching it may
        // take a while (a write open copies up, which fills the file itself).
        let complete = if self.ov.fetches() && !wants_write(flags) && !self.ov.in_upper(ino) {
            tryr!(reply, self.fill_for_open(ino).map_err(E::from))
        } else {
            true
        };
        // Both paths hold the change lock: a write open copies up (the data before it takes the
        // lock, see `copied_up`); a read-only open of a lower file must be tracked before any
        // copy-up can slip in (see `redirect_lower_fds`).
        let ch = if wants_write(flags) {
            Some(tryr!(reply, self.ov.copied_up(ino).map_err(E::from)))
        } else {
            (!self.ov.in_upper(ino)).then(|| self.ov.lock_changes())
        };
        // The name of a split node belongs to another now; the kernel looks it up again and
        // retries the open when told its entry is stale.
        if self.ov.identity.is_split(ino) {
            return reply.error(Errno::ESTALE);
        }
        let t = match &ch {
            Some(ch) if wants_write(flags) => {
                if self.ov.io.backs_lower(ino) {
                    tryr!(reply, self.ov.split(ch, ino).map_err(E::from));
                    return reply.error(Errno::ESTALE);
                }
                self.ov.upper_target(ino)
            }
            _ => self.ov.target(ino),
        };
        let Target::Entry(d, n) = tryr!(reply, t.map_err(E::from)) else {
            return reply.error(Errno::EISDIR);
        };
        let fd = tryr!(
            reply,
            sys::open_at(d.as_raw_fd(), &n, open_flags(flags), 0).map_err(E::from)
        );
        if flags & libc::O_TRUNC != 0 {
            // O_RDONLY|O_TRUNC truncates too (the kernel checked write permission), but not
            // through a read-only fd.
            let truncate = || match flags & libc::O_ACCMODE {
                libc::O_RDONLY => {
                    sys::open_at(d.as_raw_fd(), &n, libc::O_WRONLY | libc::O_NONBLOCK, 0)
                        .and_then(|w| sys::ftruncate(w.as_raw_fd(), 0))
                }
                _ => sys::ftruncate(fd.as_raw_fd(), 0),
            };
            tryr!(
                reply,
                self.ov
                    .measured(ino, fd.as_raw_fd(), 0, truncate)
                    .map_err(E::from)
            );
            if let Some(kept) = tryr!(reply, self.setid_kept(ino, Change::Modify, req)) {
                tryr!(reply, self.ov.chmod_upper(ino, kept).map_err(E::from));
            }
        }
        // A file still being fetched is read through the daemon, which fetches what is read.
        let fresh = self.passthrough_for(ino, flags, &fd).filter(|_| complete);
        let register = |kept: Option<u32>| {
            let id = match kept {
                Some(id) => id,
                None => reply.open_backing(&fd)?.into_raw(),
            };
            Ok((id, sys::wrap_backing_open(&reply, id)))
        };
        let open = self.ov.io.open(ino, fresh, writable(flags), register);
        let open = tryr!(reply, open.map_err(E::from));
        let _ = self.ov.identity.track_fd(ino, fd.as_raw_fd(), true);
        match open {
            Open::Passthrough(b) => {
                reply.opened_passthrough(self.handles.issue(fd), FopenFlags::FOPEN_NOFLUSH, &b.id)
            }
            Open::Cached => reply.opened(
                self.handles.issue(fd),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
            ),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.known(&[ino]);
        let fd = tryr!(reply, self.fd(ino.0, fh).map_err(E::from));
        if self.ov.fetches() {
            tryr!(
                reply,
                self.ov.fill_range(fd, offset, size.into()).map_err(E::from)
            );
        }
        let mut buf = vec![0u8; size as usize];
        let n = tryr!(reply, sys::pread(fd, &mut buf, offset).map_err(E::from));
        reply.data(&buf[..n]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.known(&[ino]);
        let fd = tryr!(reply, self.fd(ino.0, fh).map_err(E::from));
        let n = tryr!(
            reply,
            self.ov
                .write_charged(ino.0, fd, offset, data.len(), |len| {
                    sys::pwrite(fd, &data[..len], offset)
                })
                .map_err(E::from)
        );
        reply.written(n as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let Some(h) = self.handles.release(fh) else {
            // An earlier server's handle, never used here: nothing of it is open.
            return reply.ok();
        };
        // An earlier server's open counted in its own passthrough state, not this one's.
        if matches!(h, Handle::Own(_)) {
            self.ov.io.release(ino.0, writable(flags.0));
        }
        if self.ov.identity.track_fd(ino.0, h.fd(), false) {
            self.ov.close_last(h.fd());
        } else {
            sys::close(h.fd());
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.known(&[ino]);
        let fd = tryr!(reply, self.fd(ino.0, fh).map_err(E::from));
        // Writeback allocates what delayed allocation left out (extent-tree blocks): counted
        // here, so `stats` keeps equal to `du` for data that was synced.
        let synced = self.ov.measured(ino.0, fd, 0, || sys::fsync(fd, datasync));
        tryr!(reply, synced.map_err(E::from));
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No handle is needed (see `listing`), so the kernel need not ask: ENOSYS makes it
        // open every directory of the mount itself, with cached listings (FOPEN_CACHE_DIR |
        // FOPEN_KEEP_CACHE), as answered below where the kernel predates that. Cached
        // listings are safe: only this mount changes the layers, and the kernel drops a
        // directory's listing when a change goes through it.
        if self.no_opendir {
            return reply.error(Errno::ENOSYS);
        }
        reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.known(&[ino]);
        let list = tryr!(reply, self.listing(ino.0, offset).map_err(E::from));
        self.listed(ino.0, offset, &list);
        let dirs = tryr!(reply, self.ov.dirs_of(ino.0).map_err(E::from));
        for (i, e) in list.iter().enumerate().skip(offset as usize) {
            // d_ino as a lookup would report it; 1 only if the entry vanished meanwhile.
            let child = match self.dot(ino.0, &e.name) {
                Some(d) => d,
                None => self
                    .ov
                    .resolve_from(&dirs, &e.name, e.at)
                    .map(|f| f.ino)
                    .unwrap_or(1),
            };
            if reply.add(
                INodeNo(child),
                i as u64 + 1,
                dir::dtype_kind(e.dtype),
                OsStr::from_bytes(e.name.to_bytes()),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.known(&[ino]);
        let list = tryr!(reply, self.listing(ino.0, offset).map_err(E::from));
        self.listed(ino.0, offset, &list);
        let dirs = tryr!(reply, self.ov.dirs_of(ino.0).map_err(E::from));
        for (i, e) in list.iter().enumerate().skip(offset as usize) {
            if let Some(d) = self.dot(ino.0, &e.name) {
                // The kernel takes nothing from dot entries but their place in the listing.
                let Ok(attr) = self.ov.getattr(d) else {
                    continue;
                };
                let name = OsStr::from_bytes(e.name.to_bytes());
                if reply.add(
                    INodeNo(d),
                    i as u64 + 1,
                    name,
                    &self.ov.ttl_of(&attr),
                    &attr,
                    gen0(),
                ) {
                    break;
                }
                continue;
            }
            let Ok(found) = self.ov.resolve_from(&dirs, &e.name, e.at) else {
                continue; // removed since the listing was taken
            };
            let attr = crate::overlay::attr(&found.st, found.ino, found.dirs.len() > 1);
            let name = OsStr::from_bytes(e.name.to_bytes());
            if reply.add(
                INodeNo(found.ino),
                i as u64 + 1,
                name,
                &self.ov.ttl_of(&attr),
                &attr,
                gen0(),
            ) {
                break;
            }
            // The kernel counts every entry it was given as a lookup.
            self.ov.remember(ino.0, &e.name, found);
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.known(&[ino]);
        let t = tryr!(reply, self.ov.target(ino.0).map_err(E::from));
        if let Target::Dir(fd) = t {
            let d = tryr!(reply, sys::reopen_dir(fd.as_raw_fd()).map_err(E::from));
            tryr!(reply, sys::fsync(d.as_raw_fd(), datasync).map_err(E::from));
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let root = &self.ov.layers[0].root;
        let st = match sys::fstatvfs(root.as_raw_fd()) {
            Ok(st) => st,
            Err(e) => return reply.error(errno(e)),
        };
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.known(&[ino]);
        let name = tryr!(reply, cname(name));
        tryr!(
            reply,
            self.ov
                .setxattr(ino.0, &name, Some((value, flags)))
                .map_err(E::from)
        );
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.known(&[ino]);
        let name = tryr!(reply, cname(name));
        let v = tryr!(reply, self.ov.getxattr(ino.0, &name).map_err(E::from));
        xattr_reply(reply, &v, size);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.known(&[ino]);
        let v = tryr!(reply, self.ov.listxattr(ino.0).map_err(E::from));
        xattr_reply(reply, &v, size);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.known(&[ino]);
        let name = tryr!(reply, cname(name));
        tryr!(reply, self.ov.setxattr(ino.0, &name, None).map_err(E::from));
        reply.ok();
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel has checked already.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.known(&[parent]);
        let name = tryr!(reply, cname(name));
        let mode = mode & !(umask & 0o777);
        let made = match self.ov.create(parent.0, &name, mode, flags, caller(req)) {
            // Made before: opened now, as the first try would have.
            Err(e) => match self.made_before(req, &e, parent.0, &name) {
                Some(attr) => self.reopen(attr.ino.0).map(|fd| (attr, fd)),
                None => Err(e),
            },
            made => made,
        };
        let (attr, fd) = tryr!(reply, made.map_err(E::from));
        // A new file is in the upper dir: see `passthrough_for`.
        let fresh = self
            .ov
            .io
            .enabled()
            .then(|| self.upper_passthrough())
            .flatten();
        let ttl = self.ov.ttl_of(&attr);
        let register = |kept: Option<u32>| {
            let id = match kept {
                Some(id) => id,
                None => reply.open_backing(&fd)?.into_raw(),
            };
            Ok((id, sys::wrap_backing_create(&reply, id)))
        };
        let open = self
            .ov
            .io
            .open(attr.ino.0, fresh, writable(flags), register);
        let open = tryr!(reply, open.map_err(E::from));
        let _ = self.ov.identity.track_fd(attr.ino.0, fd.as_raw_fd(), true);
        match open {
            Open::Passthrough(b) => reply.created_passthrough(
                &ttl,
                &attr,
                gen0(),
                self.handles.issue(fd),
                FopenFlags::FOPEN_NOFLUSH,
                &b.id,
            ),
            Open::Cached => reply.created(
                &ttl,
                &attr,
                gen0(),
                self.handles.issue(fd),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
            ),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.known(&[ino]);
        let fd = tryr!(reply, self.fd(ino.0, fh).map_err(E::from));
        // Punching or collapsing frees space; anything else may allocate the whole range.
        let frees = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_COLLAPSE_RANGE) != 0;
        let reserve = match (frees, sys::fstat(fd)) {
            (false, Ok(st)) => self.ov.growth(&st, offset, offset.saturating_add(length)),
            _ => 0,
        };
        tryr!(
            reply,
            self.ov
                .measured(ino.0, fd, reserve, || sys::fallocate(
                    fd, mode, offset, length
                ))
                .map_err(E::from)
        );
        reply.ok();
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.known(&[ino]);
        let fd = tryr!(reply, self.fd(ino.0, fh).map_err(E::from));
        let off = tryr!(reply, sys::lseek(fd, offset, whence).map_err(E::from));
        reply.offset(off);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.known(&[ino_in, ino_out]);
        let fd_in = tryr!(reply, self.fd(ino_in.0, fh_in).map_err(E::from));
        let out = tryr!(reply, self.fd(ino_out.0, fh_out).map_err(E::from));
        let len = len.min(u32::MAX as u64) as usize;
        let n = tryr!(
            reply,
            self.ov
                .write_charged(ino_out.0, out, offset_out, len, |len| {
                    let (mut i, mut o) = (offset_in as i64, offset_out as i64);
                    sys::copy_file_range(fd_in, &mut i, out, &mut o, len)
                })
                .map_err(E::from)
        );
        reply.written(n as u32);
    }
}

fn xattr_reply(reply: ReplyXattr, v: &[u8], size: u32) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if v.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(v);
    }
}
