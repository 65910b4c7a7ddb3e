//! Thin wrappers over the `*at` syscalls the overlay uses. Every name passed here is a single
//! path component resolved relative to a directory fd, and no call follows a symlink in its last
//! component, so nothing a layer contains can lead the daemon outside that layer.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

pub type Stat = libc::stat;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// A name as a C string; names with a NUL byte cannot exist on Linux.
pub fn cname(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `/proc/self/fd/DIR/NAME`: the path form the xattr calls need. The dir fd is resolved by the
/// kernel (a magic link to an fd we hold) and NAME is one component, looked up without following.
fn proc_path(dir: RawFd, name: Option<&CStr>) -> CString {
    let mut p = format!("/proc/self/fd/{dir}").into_bytes();
    if let Some(n) = name {
        p.push(b'/');
        p.extend_from_slice(n.to_bytes());
    }
    CString::new(p).expect("no NUL in a proc path")
}

pub fn stat_at(dir: RawFd, name: &CStr) -> io::Result<Stat> {
    let mut st: Stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

pub fn fstat(fd: RawFd) -> io::Result<Stat> {
    let mut st: Stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// Opens `name` beneath `dir` without following a symlink in it.
pub fn open_at(
    dir: RawFd,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let fd = cvt(unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `O_PATH` handle on the directory `name` beneath `dir`.
pub fn open_dir_path(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    open_at(dir, name, libc::O_PATH | libc::O_DIRECTORY, 0)
}

/// A readable handle on a directory held as `O_PATH`.
pub fn reopen_dir(dir: RawFd) -> io::Result<OwnedFd> {
    open_at(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

pub fn mkdir_at(dir: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    cvt(unsafe { libc::mkdirat(dir, name.as_ptr(), mode) }).map(drop)
}

pub fn mknod_at(dir: RawFd, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    cvt(unsafe { libc::mknodat(dir, name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlink_at(target: &CStr, dir: RawFd, name: &CStr) -> io::Result<()> {
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) }).map(drop)
}

pub fn link_at(odir: RawFd, oname: &CStr, ndir: RawFd, nname: &CStr) -> io::Result<()> {
    cvt(unsafe { libc::linkat(odir, oname.as_ptr(), ndir, nname.as_ptr(), 0) }).map(drop)
}

pub fn unlink_at(dir: RawFd, name: &CStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(drop)
}

pub fn rename_at(
    odir: RawFd,
    oname: &CStr,
    ndir: RawFd,
    nname: &CStr,
    flags: u32,
) -> io::Result<()> {
    cvt(unsafe { libc::renameat2(odir, oname.as_ptr(), ndir, nname.as_ptr(), flags) }).map(drop)
}

pub fn readlink_at(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    let n = cvt_size(unsafe {
        libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    })?;
    buf.truncate(n);
    Ok(buf)
}

pub fn chown_at(dir: RawFd, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    cvt(unsafe { libc::fchownat(dir, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
        .map(drop)
}

/// chmod of a non-symlink beneath `dir` (symlinks have no mode of their own).
pub fn chmod_at(dir: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // fchmodat2 (Linux 6.6) changes the entry itself, never a symlink's target, in one call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            dir,
            name.as_ptr(),
            mode,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
        return Err(e);
    }
    let fd = open_at(dir, name, libc::O_PATH, 0)?;
    cvt(unsafe { libc::fchmodat(fd.as_raw_fd(), c"".as_ptr(), mode, libc::AT_EMPTY_PATH) })
        .or_else(|_| {
            // Kernels before 6.6 lack AT_EMPTY_PATH for fchmodat; the proc path works everywhere.
            let p = proc_path(fd.as_raw_fd(), None);
            cvt(unsafe { libc::chmod(p.as_ptr(), mode) })
        })
        .map(drop)
}

/// chmod through an xattr path (regular files and directories only: it follows symlinks).
pub fn chmod_path(xp: &XPath, mode: u32) -> io::Result<()> {
    cvt(unsafe { libc::chmod(xp.path.as_ptr(), mode) }).map(drop)
}

pub fn utimens_at(dir: RawFd, name: &CStr, times: &[libc::timespec; 2]) -> io::Result<()> {
    cvt(unsafe {
        libc::utimensat(
            dir,
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Sets the times of the object an fd (even an `O_PATH` one) refers to.
pub fn futimens(fd: RawFd, times: &[libc::timespec; 2]) -> io::Result<()> {
    let p = proc_path(fd, None);
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

/// Where xattr calls go: `/proc/self/fd/DIR` (the dir itself: the magic link must be
/// followed) or `/proc/self/fd/DIR/NAME` (a name beneath it: never followed).
pub struct XPath {
    pub path: CString,
    follow: bool,
}

impl XPath {
    /// A plain path, not following a final symlink.
    pub fn nofollow(path: CString) -> XPath {
        XPath {
            path,
            follow: false,
        }
    }
}

pub fn xattr_path(dir: RawFd, name: Option<&CStr>) -> XPath {
    XPath {
        path: proc_path(dir, name),
        follow: name.is_none(),
    }
}

pub fn lgetxattr(xp: &XPath, key: &CStr) -> io::Result<Vec<u8>> {
    let get = if xp.follow {
        libc::getxattr
    } else {
        libc::lgetxattr
    };
    let path = &xp.path;
    // Most values (origins, recorded owners, capabilities) are small: one call reads them.
    let mut small = [0u8; 256];
    let (k, buf) = (key.as_ptr(), small.as_mut_ptr().cast());
    match cvt_size(unsafe { get(path.as_ptr(), k, buf, small.len()) }) {
        Ok(m) => return Ok(small[..m].to_vec()),
        Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {}
        Err(e) => return Err(e),
    }
    loop {
        let n = cvt_size(unsafe { get(path.as_ptr(), key.as_ptr(), std::ptr::null_mut(), 0) })?;
        let mut buf = vec![0u8; n];
        match cvt_size(unsafe { get(path.as_ptr(), key.as_ptr(), buf.as_mut_ptr().cast(), n) }) {
            Ok(m) => {
                buf.truncate(m);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

pub fn llistxattr(xp: &XPath) -> io::Result<Vec<u8>> {
    let list = if xp.follow {
        libc::listxattr
    } else {
        libc::llistxattr
    };
    let path = &xp.path;
    loop {
        let n = cvt_size(unsafe { list(path.as_ptr(), std::ptr::null_mut(), 0) })?;
        let mut buf = vec![0u8; n];
        match cvt_size(unsafe { list(path.as_ptr(), buf.as_mut_ptr().cast(), n) }) {
            Ok(m) => {
                buf.truncate(m);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

pub fn lsetxattr(xp: &XPath, key: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    let set = if xp.follow {
        libc::setxattr
    } else {
        libc::lsetxattr
    };
    let (p, v) = (xp.path.as_ptr(), value.as_ptr().cast());
    cvt(unsafe { set(p, key.as_ptr(), v, value.len(), flags) }).map(drop)
}

pub fn lremovexattr(xp: &XPath, key: &CStr) -> io::Result<()> {
    let remove = if xp.follow {
        libc::removexattr
    } else {
        libc::lremovexattr
    };
    cvt(unsafe { remove(xp.path.as_ptr(), key.as_ptr()) }).map(drop)
}

/// Names in a directory (without `.` and `..`), read through a fresh fd so that concurrent
/// readers never share an offset.
pub fn read_dir_names(dir: RawFd) -> io::Result<Vec<(Vec<u8>, u8)>> {
    let fd = reopen_dir(dir)?;
    let dirp = unsafe { libc::fdopendir(fd.as_raw_fd()) };
    if dirp.is_null() {
        return Err(io::Error::last_os_error());
    }
    // fdopendir owns the fd now; closedir closes it.
    std::mem::forget(fd);
    let mut out = Vec::new();
    loop {
        unsafe { *libc::__errno_location() = 0 };
        let ent = unsafe { libc::readdir64(dirp) };
        if ent.is_null() {
            let err = io::Error::last_os_error();
            unsafe { libc::closedir(dirp) };
            return match err.raw_os_error() {
                Some(0) | None => Ok(out),
                _ => Err(err),
            };
        }
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            out.push((name.to_vec(), unsafe { (*ent).d_type }));
        }
    }
}

pub fn pread(fd: RawFd, buf: &mut [u8], off: u64) -> io::Result<usize> {
    cvt_size(unsafe { libc::pread64(fd, buf.as_mut_ptr().cast(), buf.len(), off as i64) })
}

pub fn pwrite(fd: RawFd, buf: &[u8], off: u64) -> io::Result<usize> {
    cvt_size(unsafe { libc::pwrite64(fd, buf.as_ptr().cast(), buf.len(), off as i64) })
}

pub fn ftruncate(fd: RawFd, len: u64) -> io::Result<()> {
    if unsafe { libc::ftruncate(fd, len as i64) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn fallocate(fd: RawFd, mode: i32, off: u64, len: u64) -> io::Result<()> {
    if unsafe { libc::fallocate(fd, mode, off as i64, len as i64) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

pub fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}
