//! Copy-up: the first change to an object from a lower layer copies it (data, owner, mode,
//! xattrs, times) into the upper dir, parents first. The copy is built in the work dir and
//! renamed into place, so the upper dir never holds a half-copied file.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use crate::meta::{self, Meta};
use crate::overlay::{Changes, Overlay, UPPER, remove_tree};
use crate::quota::{blocks_of, charged_at};
use crate::sys::{self, Stat};
use crate::xattr_names;

impl Overlay {
    /// Copies node `ino` (and its parents) up unless it is already in the upper dir.
    pub fn copy_up(&self, ch: &Changes, ino: u64) -> io::Result<()> {
        self.writable()?;
        let (parent, name, top, is_dir) = {
            let nodes = self.nodes.lock();
            let n = nodes.get(&ino).ok_or_else(|| sys::err(libc::ENOENT))?;
            (n.parent, n.name.clone(), n.top_layer(), n.is_dir())
        };
        if self.is_upper(top) {
            return Ok(());
        }
        if ino == crate::node::ROOT {
            return Ok(());
        }
        let pupper = self.upper_dir(ch, parent)?;
        let src_dir = self
            .dirs_of(parent)?
            .into_iter()
            .find(|d| d.layer == top)
            .map(|d| d.fd)
            .ok_or_else(|| sys::err(libc::ENOENT))?;
        let pst = sys::fstat(pupper.as_raw_fd())?;
        let work = self.work_fd()?;
        let tmp = self.tmp_name();
        // The copy costs what the lower object takes (a 1-byte write to a big file costs the
        // whole file): reserve that first, then charge what the copy and the parent's new
        // entry really took.
        let reserved = match &self.quota {
            Some(q) => {
                let need = match sys::stat_at(src_dir.as_raw_fd(), &name)? {
                    _ if is_dir => self.block, // the copy is an empty directory
                    st => st.st_blocks as u64 * 512,
                };
                q.reserve(need)?;
                need
            }
            None => 0,
        };
        let built = self.build_copy(src_dir.as_raw_fd(), &name, work, &tmp, ino, top);
        let placed = built.and_then(|st| {
            sys::rename_at(
                work,
                &tmp,
                pupper.as_raw_fd(),
                &name,
                libc::RENAME_NOREPLACE,
            )?;
            // Moving a directory rewrites its `..`, which touches its times: set them last.
            sys::utimens_at(pupper.as_raw_fd(), &name, &times_of(&st))?;
            Ok(st)
        });
        if let Some(q) = &self.quota {
            let took = match &placed {
                Ok(_) => {
                    charged_at(pupper.as_raw_fd(), &name) + blocks_of(pupper.as_raw_fd())
                        - pst.st_blocks * 512
                }
                Err(_) => 0,
            };
            q.settle(reserved, took);
        }
        let st = match placed {
            Ok(st) => st,
            Err(e) => {
                let _ = remove_tree(work, &tmp);
                return Err(e);
            }
        };
        // Adding the entry changed the parent's times; overlayfs hides that, and so do we.
        let _ = sys::futimens(pupper.as_raw_fd(), &times_of(&pst));
        let mut nodes = self.nodes.lock();
        if let Some(n) = nodes.get_mut(&ino) {
            if is_dir {
                let d = self.layer_dir(UPPER, sys::open_dir_path(pupper.as_raw_fd(), &name)?);
                n.dirs.insert(0, d);
            } else if splits_hardlink(&st) {
                // Copying up one name of a lower hardlink makes a new file (as overlayfs does
                // without an index): the node stays with the other names; the kernel must look
                // this name up again to meet the copy.
                drop(nodes);
                self.forget_entry_later(parent, &name);
                return Ok(());
            } else {
                n.layer = UPPER;
                drop(nodes);
                if st.st_nlink > 1 {
                    let ust = sys::stat_at(pupper.as_raw_fd(), &name)?;
                    let mut kept = self.kept_ino.lock().unwrap_or_else(|e| e.into_inner());
                    kept.insert(ust.st_ino, ino);
                }
                self.redirect_lower_fds(ino, pupper.as_raw_fd(), &name);
                return Ok(());
            }
        }
        drop(nodes);
        if is_dir {
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
