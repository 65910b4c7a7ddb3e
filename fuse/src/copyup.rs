//! Copy-up: the first change to an object from a lower layer copies it (data, owner, mode,
//! xattrs, times) into the upper dir, parents first. The copy is built in the work dir and
//! renamed into place, so the upper dir never holds a half-copied file.
//!
//! A file's data can take long to copy, so [`Overlay::copied_up`] copies it without the change
//! lock, as overlayfs does (ovl_copy_up_start/end): copy-ups of one node wait for each other,
//! other changes and opens go on. Only the rename into place takes the lock.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex};

use crate::meta::{self, Meta};
use crate::overlay::{Changes, Overlay, UPPER, remove_tree};
use crate::quota::{Busy, blocks_of, charged_at};
use crate::sys::{self, Stat};
use crate::xattr_names;

/// Nodes that [`Overlay::copied_up`] is copying, to copy each once.
#[derive(Default)]
pub struct CopyUps {
    nodes: Mutex<HashSet<u64>>,
    ended: Condvar,
}

impl CopyUps {
    /// Waits until no copy-up of `ino` is under way, then starts one (until the guard drops).
    fn begin(&self, ino: u64) -> CopyingUp<'_> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        while !nodes.insert(ino) {
            nodes = self.ended.wait(nodes).unwrap_or_else(|e| e.into_inner());
        }
        CopyingUp { all: self, ino }
    }
}

struct CopyingUp<'a> {
    all: &'a CopyUps,
    ino: u64,
}

impl Drop for CopyingUp<'_> {
    fn drop(&mut self) {
        let mut nodes = self.all.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.remove(&self.ino);
        self.all.ended.notify_all();
    }
}

/// Where a node's object is copied up from.
struct Source {
    parent: u64,
    name: CString,
    layer: usize,
    is_dir: bool,
    /// The parent's directory in `layer`.
    dir: Arc<OwnedFd>,
}

/// A copy built in the work dir. Dropped before it is placed, it is removed and its space
/// reservation returned.
struct Staged<'a> {
    ov: &'a Overlay,
    tmp: CString,
    /// The copy-up counts as a running change from its reservation to its settling.
    busy: Option<Busy<'a>>,
    reserved: u64,
    placed: bool,
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if self.placed {
            return;
        }
        if let Ok(work) = self.ov.work_fd() {
            let _ = remove_tree(work, &self.tmp);
        }
        if let Some(busy) = &self.busy {
            busy.settle(self.reserved, 0);
        }
    }
}

impl Overlay {
    /// Copies node `ino` (and its parents) up unless it is already in the upper dir, all under
    /// the change lock.
    pub fn copy_up(&self, ch: &Changes, ino: u64) -> io::Result<()> {
        let Some(src) = self.source(ch, ino)? else {
            return Ok(());
        };
        let (staged, st) = self.stage(&src, ino)?;
        self.place(ch, ino, &src, staged, &st)
    }

    /// Copies node `ino` up as [`Self::copy_up`] does, but a non-directory without the change
    /// lock until its copy is built; returns the lock, held with the node copied up. ESTALE if
    /// its name went meanwhile: the kernel looks the name up again.
    pub fn copied_up(&self, ino: u64) -> io::Result<Changes<'_>> {
        let _one = self.copy_ups.begin(ino);
        let ch = self.lock_changes();
        let src = match self.source(&ch, ino)? {
            Some(src) if !src.is_dir => src,
            // Copied up already, or a directory: its copy is cheap.
            _ => return self.copy_up(&ch, ino).map(|()| ch),
        };
        if !self.still_names(&src, ino) {
            return Err(sys::err(libc::ESTALE));
        }
        drop(ch);
        let (staged, st) = self.stage(&src, ino)?;
        let ch = self.lock_changes();
        // Meanwhile a change under the lock may have copied the node up (an exchange of names)
        // or taken its name (an unlink, a rename of a hard link's name).
        if self.in_upper(ino) {
            return Ok(ch);
        }
        if !self.still_names(&src, ino) {
            return Err(sys::err(libc::ESTALE));
        }
        self.place(&ch, ino, &src, staged, &st)?;
        Ok(ch)
    }

    /// Where node `ino` is copied up from, its parents copied up; None if it needs no copy.
    fn source(&self, ch: &Changes, ino: u64) -> io::Result<Option<Source>> {
        self.writable()?;
        let (parent, name, layer, is_dir) = {
            let nodes = self.nodes.lock();
            let n = nodes.get(&ino).ok_or_else(|| sys::err(libc::ENOENT))?;
            (n.parent, n.name.clone(), n.top_layer(), n.is_dir())
        };
        if self.is_upper(layer) || ino == crate::node::ROOT {
            return Ok(None);
        }
        self.upper_dir(ch, parent)?;
        let dir = self
            .dirs_of(parent)?
            .into_iter()
            .find(|d| d.layer == layer)
            .map(|d| d.fd)
            .ok_or_else(|| sys::err(libc::ENOENT))?;
        Ok(Some(Source {
            parent,
            name,
            layer,
            is_dir,
            dir,
        }))
    }

    /// Whether the name `src` was taken from still shows node `ino` from the same layer.
    fn still_names(&self, src: &Source, ino: u64) -> bool {
        self.dirs_of(src.parent)
            .and_then(|dirs| self.resolve(&dirs, &src.name))
            .is_ok_and(|f| f.ino == ino && f.layer == src.layer)
    }

    /// Builds a copy of `src` in the work dir. It costs what the lower object takes (a 1-byte
    /// write to a big file costs the whole file): that is reserved first.
    fn stage(&self, src: &Source, ino: u64) -> io::Result<(Staged<'_>, Stat)> {
        let dir = src.dir.as_raw_fd();
        let busy = self.quota.as_ref().map(|q| q.busy());
        let reserved = match &busy {
            Some(q) => {
                let need = match sys::stat_at(dir, &src.name)? {
                    _ if src.is_dir => self.block, // the copy is an empty directory
                    st => st.st_blocks as u64 * 512,
                };
                q.reserve(need)?;
                need
            }
            None => 0,
        };
        let staged = Staged {
            ov: self,
            tmp: self.tmp_name(),
            busy,
            reserved,
            placed: false,
        };
        let st = self.build_copy(dir, &src.name, self.work_fd()?, &staged.tmp, ino, src.layer)?;
        Ok((staged, st))
    }

    /// Renames a copy of node `ino` (its lower object is `st`) into place, charges what it and
    /// the parent's new entry took, and points the node and its open files at it.
    fn place(
        &self,
        ch: &Changes,
        ino: u64,
        src: &Source,
        mut staged: Staged,
        st: &Stat,
    ) -> io::Result<()> {
        let pupper = self.upper_dir(ch, src.parent)?;
        let (pfd, name) = (pupper.as_raw_fd(), src.name.as_c_str());
        let pst = sys::fstat(pfd)?;
        sys::rename_at(
            self.work_fd()?,
            &staged.tmp,
            pfd,
            name,
            libc::RENAME_NOREPLACE,
        )?;
        staged.placed = true;
        if let Some(busy) = &staged.busy {
            let took = charged_at(pfd, name) + blocks_of(pfd) - pst.st_blocks * 512;
            busy.settle(staged.reserved, took);
        }
        // Moving a directory rewrites its `..`, which touches its times: set them last.
        sys::utimens_at(pfd, name, &times_of(st))?;
        // Adding the entry changed the parent's times; overlayfs hides that, and so do we.
        let _ = sys::futimens(pfd, &times_of(&pst));
        let mut nodes = self.nodes.lock();
        if let Some(n) = nodes.get_mut(&ino) {
            if src.is_dir {
                let d = self.layer_dir(UPPER, sys::open_dir_path(pfd, name)?);
                n.dirs.insert(0, d);
            } else if splits_hardlink(st) {
                // Copying up one name of a lower hardlink makes a new file (as overlayfs does
                // without an index): the node stays with the other names; the kernel must look
                // this name up again to meet the copy.
                drop(nodes);
                self.forget_entry_later(src.parent, name);
                return Ok(());
            } else {
                n.layer = UPPER;
                drop(nodes);
                if st.st_nlink > 1 {
                    let ust = sys::stat_at(pfd, name)?;
                    self.identity.keep(ust.st_ino, ino);
                }
                self.redirect_lower_fds(ino, pfd, name);
                return Ok(());
            }
        }
        drop(nodes);
        if src.is_dir {
            // A directory that gained an upper copy is merged now: nlink and ino as overlayfs.
            self.forget_attrs(ino);
        }
        Ok(())
    }

    /// Builds `tmp` in the work dir as a copy of `name` beneath `src_dir`.
    fn build_copy(
        &self,
        src_dir: RawFd,
        name: &CStr,
        work: RawFd,
        tmp: &CStr,
        ino: u64,
        layer: usize,
    ) -> io::Result<Stat> {
        let st = sys::stat_at(src_dir, name)?;
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let fmt = st.st_mode & libc::S_IFMT;
        match fmt {
            libc::S_IFDIR => sys::mkdir_at(work, tmp, 0o700)?,
            libc::S_IFREG => {
                let src = sys::open_at(src_dir, name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
                self.fill(&src)?;
                let dst = sys::open_at(
                    work,
                    tmp,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                    0o600,
                )?;
                copy_data(src.as_raw_fd(), dst.as_raw_fd(), st.st_size as u64)?;
            }
            libc::S_IFLNK => {
                let target = sys::readlink_at(src_dir, name)?;
                let target = std::ffi::CString::new(target).map_err(|_| sys::err(libc::EINVAL))?;
                sys::symlink_at(&target, work, tmp)?;
            }
            _ => sys::mknod_at(work, tmp, st.st_mode, st.st_rdev)?,
        }
        copy_xattrs(
            &sys::xattr_path(src_dir, Some(name)),
            &sys::xattr_path(work, Some(tmp)),
            self.admin,
        )?;
        let (uid, gid) = self
            .ids
            .as_ref()
            .map_or((st.st_uid, st.st_gid), |m| m.copied(st.st_uid, st.st_gid));
        if let Err(e) = sys::chown_at(work, tmp, uid, gid)
            && self.privileged
        {
            return Err(e);
        }
        if self.records_meta() && meta::can_carry(st.st_mode) {
            // The copy is owned by the daemon: record what the lower object shows as.
            let shown = self.shown(st, layer, || sys::xattr_path(src_dir, Some(name)));
            let real = sys::stat_at(work, tmp)?;
            meta::record(&sys::xattr_path(work, Some(tmp)), &real, &Meta::of(&shown))?;
        } else if fmt != libc::S_IFLNK {
            sys::chmod_at(work, tmp, st.st_mode & 0o7777)?;
        }
        // An origin shared by several upper copies would give them one inode after a remount.
        if !is_dir && st.st_nlink == 1 {
            self.set_origin(work, tmp, ino)?;
        }
        Ok(st)
    }
}

/// Whether copying this lower file up turns it into a new file apart from its other names.
/// Special files keep one identity: a process blocked on a fifo must still meet its writer.
fn splits_hardlink(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink > 1
}

pub fn times_of(st: &Stat) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ]
}

/// Copies user-visible xattrs; overlay-private ones stay behind, and so do those a daemon
/// without CAP_SYS_ADMIN in the initial namespace (`admin`) may not write.
fn copy_xattrs(src: &sys::XPath, dst: &sys::XPath, admin: bool) -> io::Result<()> {
    let list = match sys::llistxattr(src) {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    for key in list.split(|b| *b == 0).filter(|k| !k.is_empty()) {
        if xattr_names::is_private_xattr(key) {
            continue;
        }
        let k = std::ffi::CString::new(key).expect("split on NUL");
        let v = match sys::lgetxattr(src, &k) {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        match sys::lsetxattr(dst, &k, &v, 0) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && !admin => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies `len` bytes: a clone where the filesystem shares extents, otherwise in 1 MiB chunks
/// that skip holes found at a chunk boundary, which is what overlayfs does (so holes come out
/// the same as with the kernel).
fn copy_data(src: RawFd, dst: RawFd, len: u64) -> io::Result<()> {
    const CHUNK: i64 = 1 << 20;
    if len == 0 || sys::clone_file(src, dst).is_ok() {
        return Ok(());
    }
    let (len, mut pos) = (len as i64, 0i64);
    while pos < len {
        let data = match sys::lseek(src, pos, libc::SEEK_DATA) {
            Ok(data) => data,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break, // only a hole remains
            Err(e) => return Err(e),
        };
        if data > pos {
            pos = data;
            continue;
        }
        let n = CHUNK.min(len - pos);
        copy_range(src, dst, pos, n)?;
        pos += n;
    }
    sys::ftruncate(dst, len as u64)
}

fn copy_range(src: RawFd, dst: RawFd, start: i64, len: i64) -> io::Result<()> {
    let (mut inoff, mut outoff, mut left) = (start, start, len as usize);
    while left > 0 {
        let n = match sys::copy_file_range(src, &mut inoff, dst, &mut outoff, left.min(1 << 30)) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)
                ) =>
            {
                return copy_by_hand(src, dst, inoff, left);
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            break; // the source shrank under us
        }
        left -= n;
    }
    Ok(())
}

fn copy_by_hand(src: RawFd, dst: RawFd, mut off: i64, mut left: usize) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = sys::pread(src, &mut buf[..left.min(1 << 20)], off as u64)?;
        if n == 0 {
            break;
        }
        let mut done = 0;
        while done < n {
            done += sys::pwrite(dst, &buf[done..n], off as u64 + done as u64)?;
        }
        off += n as i64;
        left -= n;
    }
    Ok(())
}
