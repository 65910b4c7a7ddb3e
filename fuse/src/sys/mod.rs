//! Thin wrappers over the `*at` syscalls the overlay uses. Every name passed here is a single
//! path component resolved relative to a directory fd, and no call follows a symlink in its last
//! component, so nothing a layer contains can lead the daemon outside that layer.
//!
//! This module and [`process`] are the crate's only home of `unsafe`: each block is one libc
//! call whose pointers come from live Rust values for the duration of the call.
#![allow(unsafe_code)]

pub mod process;

use std::borrow::Cow;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU8, Ordering};

pub type Stat = libc::stat;

/// Runs `f` with the open file `fd` (a file handle the kernel holds open for the request
/// being served) as a borrowed fd.
pub fn with_handle<T>(fd: RawFd, f: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> T) -> T {
    // SAFETY: the kernel does not release a file handle while a request on it is in flight,
    // and the borrow does not outlive `f`.
    f(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
}

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
    let mut st = empty_stat();
    // SAFETY: `name` is NUL-terminated and `st` a live, writable stat for the kernel to fill.
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

pub fn fstat(fd: RawFd) -> io::Result<Stat> {
    let mut st = empty_stat();
    // SAFETY: `st` is a live, writable stat for the kernel to fill.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// lstat(2) of a path: a final symlink is not followed.
pub fn lstat(path: &CStr) -> io::Result<Stat> {
    let mut st = empty_stat();
    // SAFETY: `path` is NUL-terminated and `st` a live, writable stat for the kernel to fill.
    cvt(unsafe { libc::lstat(path.as_ptr(), &mut st) })?;
    Ok(st)
}

/// A stat of all zeroes (what a negative lookup replies with).
pub fn empty_stat() -> Stat {
    // SAFETY: `libc::stat` is plain integers, for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// statvfs of the filesystem holding `fd`.
pub fn fstatvfs(fd: RawFd) -> io::Result<libc::statvfs> {
    // SAFETY: `libc::statvfs` is plain integers, for which all-zero bytes are a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a live, writable statvfs for the kernel to fill.
    cvt(unsafe { libc::fstatvfs(fd, &mut st) })?;
    Ok(st)
}

/// The magic number of the filesystem holding `fd` (statfs's `f_type`).
pub fn fs_type(fd: RawFd) -> io::Result<i64> {
    // SAFETY: `libc::statfs` is plain integers, for which all-zero bytes are a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a live, writable statfs for the kernel to fill.
    cvt(unsafe { libc::fstatfs(fd, &mut st) })?;
    Ok(st.f_type as i64)
}

/// The id of the mount holding `fd`, and whether it is unique for the boot (Linux 6.8+) rather
/// than one a later mount may be given again; None where the kernel gives none (before 5.8).
pub fn mount_id(fd: RawFd) -> io::Result<Option<(u64, bool)>> {
    // SAFETY: `libc::statx` is plain integers, for which all-zero bytes are a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let mask = libc::STATX_MNT_ID | libc::STATX_MNT_ID_UNIQUE;
    // SAFETY: the empty name is NUL-terminated and `st` a live, writable statx to fill.
    cvt(unsafe { libc::statx(fd, c"".as_ptr(), libc::AT_EMPTY_PATH, mask, &mut st) })?;
    let unique = st.stx_mask & libc::STATX_MNT_ID_UNIQUE != 0;
    Ok((unique || st.stx_mask & libc::STATX_MNT_ID != 0).then_some((st.stx_mnt_id, unique)))
}

/// Opens `name` beneath `dir` without following a symlink in it.
pub fn open_at(
    dir: RawFd,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the call reads nothing else of ours.
    let fd = cvt(unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: openat just returned this fd, so nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a path (relative to the working directory, symlinks followed), close-on-exec.
pub fn open_path(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated; the call reads nothing else of ours.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: open just returned this fd, so nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Closes an fd held as a number (a FUSE file handle). Each handle is closed exactly once, on
/// its release, after which the kernel sends no request naming it.
pub fn close(fd: RawFd) {
    // SAFETY: the caller owned `fd` and gives it up; dropping the OwnedFd closes it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
}

/// Makes `dst` (an fd this process owns) refer to what `src` refers to.
pub fn dup_onto(src: RawFd, dst: RawFd) -> io::Result<()> {
    // SAFETY: dup3 takes fd numbers only; `dst` is replaced atomically, so every holder of it
    // keeps a valid fd.
    cvt(unsafe { libc::dup3(src, dst, libc::O_CLOEXEC) }).map(drop)
}

/// fsync, or fdatasync with `datasync`.
pub fn fsync(fd: RawFd, datasync: bool) -> io::Result<()> {
    // SAFETY: both calls take an fd number only.
    cvt(unsafe {
        if datasync {
            libc::fdatasync(fd)
        } else {
            libc::fsync(fd)
        }
    })
    .map(drop)
}

pub fn lseek(fd: RawFd, off: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: lseek takes numbers only.
    let r = unsafe { libc::lseek(fd, off, whence) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// copy_file_range(2), advancing both offsets by what was copied.
pub fn copy_file_range(
    src: RawFd,
    src_off: &mut i64,
    dst: RawFd,
    dst_off: &mut i64,
    len: usize,
) -> io::Result<usize> {
    // SAFETY: the offsets are live, writable i64s for the kernel to advance.
    cvt_size(unsafe { libc::copy_file_range(src, src_off, dst, dst_off, len, 0) })
}

/// Makes `dst` share `src`'s extents (FICLONE), where the filesystem can.
pub fn clone_file(src: RawFd, dst: RawFd) -> io::Result<()> {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE's argument is an fd number, not a pointer.
    cvt(unsafe { libc::ioctl(dst, FICLONE, src) }).map(drop)
}

/// Changes the owner of what `fd` (even an `O_PATH` one) refers to.
pub fn chown_fd(fd: RawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: the empty name is a NUL-terminated static string.
    cvt(unsafe { libc::fchownat(fd, c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) }).map(drop)
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
    // SAFETY: `name` is NUL-terminated; the call reads nothing else of ours.
    cvt(unsafe { libc::mkdirat(dir, name.as_ptr(), mode) }).map(drop)
}

pub fn mknod_at(dir: RawFd, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; the call reads nothing else of ours.
    cvt(unsafe { libc::mknodat(dir, name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlink_at(target: &CStr, dir: RawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: `target` and `name` are NUL-terminated; the call reads nothing else of ours.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) }).map(drop)
}

pub fn link_at(odir: RawFd, oname: &CStr, ndir: RawFd, nname: &CStr) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; the call reads nothing else of ours.
    cvt(unsafe { libc::linkat(odir, oname.as_ptr(), ndir, nname.as_ptr(), 0) }).map(drop)
}

pub fn unlink_at(dir: RawFd, name: &CStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `name` is NUL-terminated; the call reads nothing else of ours.
    cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(drop)
}

pub fn rename_at(
    odir: RawFd,
    oname: &CStr,
    ndir: RawFd,
    nname: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; the call reads nothing else of ours.
    cvt(unsafe { libc::renameat2(odir, oname.as_ptr(), ndir, nname.as_ptr(), flags) }).map(drop)
}

pub fn readlink_at(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `name` is NUL-terminated and the kernel writes at most `buf.len()` bytes to `buf`.
    let n = cvt_size(unsafe {
        libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    })?;
    buf.truncate(n);
    Ok(buf)
}

pub fn chown_at(dir: RawFd, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; the call reads nothing else of ours.
    cvt(unsafe { libc::fchownat(dir, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
        .map(drop)
}

/// chmod of a non-symlink beneath `dir` (symlinks have no mode of their own).
pub fn chmod_at(dir: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // fchmodat2 (Linux 6.6) changes the entry itself, never a symlink's target, in one call.
    // SAFETY: fchmodat2(dirfd, path, mode, flags): `name` is NUL-terminated, the rest numbers.
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
    // ENOSYS before 6.6, EPERM from a seccomp profile that predates the call: the fallback
    // below gives the real answer (a genuine EPERM again).
    let e = io::Error::last_os_error();
    if !matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::EINVAL | libc::EPERM)
    ) {
        return Err(e);
    }
    let fd = open_at(dir, name, libc::O_PATH, 0)?;
    // SAFETY: the empty name is a NUL-terminated static string.
    cvt(unsafe { libc::fchmodat(fd.as_raw_fd(), c"".as_ptr(), mode, libc::AT_EMPTY_PATH) })
        .or_else(|_| {
            // Kernels before 6.6 lack AT_EMPTY_PATH for fchmodat; the proc path works everywhere.
            let p = proc_path(fd.as_raw_fd(), None);
            // SAFETY: `p` is NUL-terminated; the call reads nothing else of ours.
            cvt(unsafe { libc::chmod(p.as_ptr(), mode) })
        })
        .map(drop)
}

/// chmod of the object an [`XPath`] names (regular files and directories only: it follows
/// symlinks).
pub fn chmod_path(xp: &XPath, mode: u32) -> io::Result<()> {
    // SAFETY: the name is NUL-terminated; the call reads nothing else of ours.
    cvt(unsafe { libc::fchmodat(xp.dir, xp.name.as_ptr(), mode, 0) }).map(drop)
}

pub fn utimens_at(dir: RawFd, name: &CStr, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and `times` points at two timespecs, as utimensat reads.
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
    // SAFETY: `p` is NUL-terminated and `times` points at two timespecs, as utimensat reads.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

/// Where xattr calls go: NAME beneath the directory fd DIR (`.` for DIR itself), or a plain path
/// (DIR is `AT_FDCWD`); a final symlink is never followed.
pub struct XPath<'a> {
    dir: RawFd,
    name: Cow<'a, CStr>,
}

impl XPath<'_> {
    /// A plain path.
    pub fn nofollow(path: CString) -> XPath<'static> {
        XPath {
            dir: libc::AT_FDCWD,
            name: Cow::Owned(path),
        }
    }

    /// The same object as a path for the l*xattr calls of kernels before 6.13:
    /// `/proc/self/fd/DIR/NAME` (the magic link to DIR followed, NAME not).
    fn path(&self) -> CString {
        if self.dir == libc::AT_FDCWD {
            self.name.clone().into_owned()
        } else {
            proc_path(self.dir, Some(&self.name))
        }
    }
}

/// NAME beneath DIR, or DIR itself; borrows the name (xattr calls sit on hot paths).
pub fn xattr_path(dir: RawFd, name: Option<&CStr>) -> XPath<'_> {
    XPath {
        dir,
        name: Cow::Borrowed(name.unwrap_or(c".")),
    }
}

// The *xattrat calls (Linux 6.13) reach a name beneath a directory fd without a walk through
// /proc; their numbers are the same on every architecture.
const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Whether the *xattrat calls work here: 0 not yet probed, 1 yes, 2 no.
static XATTRAT: AtomicU8 = AtomicU8::new(0);

/// Probes once: kernels before 6.13 answer ENOSYS, and a seccomp filter that predates the calls
/// (a container runtime's default profile) usually EPERM, which reading a user xattr of `/`
/// never answers otherwise.
fn xattrat_works() -> bool {
    match XATTRAT.load(Ordering::Relaxed) {
        1 => return true,
        2 => return false,
        _ => {}
    }
    let root = XPath::nofollow(c"/".into());
    let r = cvt_size(xattrat_value(
        SYS_GETXATTRAT,
        &root,
        c"user.nestfs.probe",
        std::ptr::null(),
        0,
        0,
    ) as libc::ssize_t);
    let works = !matches!(
        r.map_err(|e| e.raw_os_error()),
        Err(Some(libc::ENOSYS | libc::EPERM))
    );
    XATTRAT.store(if works { 1 } else { 2 }, Ordering::Relaxed);
    works
}

/// Runs an *xattrat call, or `fallback` with the object's path where they do not work.
fn xattr_call(
    xp: &XPath,
    at: impl Fn(&XPath) -> libc::c_long,
    fallback: impl Fn(&CStr) -> libc::ssize_t,
) -> io::Result<usize> {
    if xattrat_works() {
        return cvt_size(at(xp) as libc::ssize_t);
    }
    cvt_size(fallback(&xp.path()))
}

/// getxattrat or setxattrat: both pass the value through a `struct xattr_args`.
fn xattrat_value(
    nr: libc::c_long,
    xp: &XPath,
    key: &CStr,
    value: *const u8,
    len: usize,
    flags: i32,
) -> libc::c_long {
    let args = XattrArgs {
        value: value as u64,
        size: len as u32,
        flags: flags as u32,
    };
    // SAFETY: *xattrat(dirfd, path, at_flags, key, args, size): the path and key are
    // NUL-terminated and `args` outlives the call; its `value` points at `len` bytes the caller
    // lent us (readable for set, writable for get).
    unsafe {
        libc::syscall(
            nr,
            xp.dir,
            xp.name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            key.as_ptr(),
            &args as *const XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    }
}

/// Reads a value of unknown size with `read` (which answers the size for an empty buffer):
/// most (origins, recorded owners, capabilities, short lists) fit a small buffer, one call.
fn read_sized(read: impl Fn(&mut [u8]) -> io::Result<usize>) -> io::Result<Vec<u8>> {
    let mut small = [0u8; 256];
    match read(&mut small) {
        Ok(m) => return Ok(small[..m].to_vec()),
        Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {}
        Err(e) => return Err(e),
    }
    loop {
        let mut buf = vec![0u8; read(&mut [])?];
        match read(&mut buf) {
            Ok(m) => {
                buf.truncate(m);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue, // it grew meanwhile
            Err(e) => return Err(e),
        }
    }
}

pub fn lgetxattr(xp: &XPath, key: &CStr) -> io::Result<Vec<u8>> {
    read_sized(|buf| {
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        xattr_call(
            xp,
            |xp| xattrat_value(SYS_GETXATTRAT, xp, key, ptr, len, 0),
            // SAFETY: `p` and `key` are NUL-terminated; `ptr` is `len` writable bytes of `buf`.
            |p| unsafe { libc::lgetxattr(p.as_ptr(), key.as_ptr(), ptr.cast(), len) },
        )
    })
}

pub fn llistxattr(xp: &XPath) -> io::Result<Vec<u8>> {
    read_sized(|buf| {
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        xattr_call(
            xp,
            // SAFETY: listxattrat(dirfd, path, at_flags, list, size): the path is NUL-terminated
            // and `ptr` is `len` writable bytes of `buf`.
            |xp| unsafe {
                let name = xp.name.as_ptr();
                let nofollow = libc::AT_SYMLINK_NOFOLLOW;
                libc::syscall(SYS_LISTXATTRAT, xp.dir, name, nofollow, ptr, len)
            },
            // SAFETY: `p` is NUL-terminated; `ptr` is `len` writable bytes of `buf`.
            |p| unsafe { libc::llistxattr(p.as_ptr(), ptr.cast(), len) },
        )
    })
}

pub fn lsetxattr(xp: &XPath, key: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    let (v, len) = (value.as_ptr(), value.len());
    xattr_call(
        xp,
        |xp| xattrat_value(SYS_SETXATTRAT, xp, key, v, len, flags),
        // SAFETY: `p` and `key` are NUL-terminated; `v` is `len` readable bytes of `value`.
        |p| unsafe { libc::lsetxattr(p.as_ptr(), key.as_ptr(), v.cast(), len, flags) as isize },
    )
    .map(drop)
}

pub fn lremovexattr(xp: &XPath, key: &CStr) -> io::Result<()> {
    xattr_call(
        xp,
        // SAFETY: removexattrat(dirfd, path, at_flags, key): both strings are NUL-terminated.
        |xp| unsafe {
            libc::syscall(
                SYS_REMOVEXATTRAT,
                xp.dir,
                xp.name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                key.as_ptr(),
            )
        },
        // SAFETY: `p` and `key` are NUL-terminated.
        |p| unsafe { libc::lremovexattr(p.as_ptr(), key.as_ptr()) as isize },
    )
    .map(drop)
}

/// Names in a directory (without `.` and `..`), read through a fresh fd so that concurrent
/// readers never share an offset.
pub fn read_dir_names(dir: RawFd) -> io::Result<Vec<(Vec<u8>, u8)>> {
    let fd = reopen_dir(dir)?;
    // SAFETY: fdopendir takes an fd number; on success it owns the fd (forgotten below).
    let dirp = unsafe { libc::fdopendir(fd.as_raw_fd()) };
    if dirp.is_null() {
        return Err(io::Error::last_os_error());
    }
    // fdopendir owns the fd now; closedir closes it.
    std::mem::forget(fd);
    let mut out = Vec::new();
    loop {
        // SAFETY: errno is this thread's own; readdir sets it only on failure, so clearing it
        // first tells the end of the directory from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `dirp` is the open, non-null stream made above, used by this thread only.
        let ent = unsafe { libc::readdir64(dirp) };
        if ent.is_null() {
            let err = io::Error::last_os_error();
            // SAFETY: `dirp` is open and not used after this.
            unsafe { libc::closedir(dirp) };
            return match err.raw_os_error() {
                Some(0) | None => Ok(out),
                _ => Err(err),
            };
        }
        // SAFETY: `ent` is non-null and valid until the next readdir on `dirp`; d_name is
        // NUL-terminated. Both are copied out before that.
        let (name, kind) = unsafe { (CStr::from_ptr((*ent).d_name.as_ptr()), (*ent).d_type) };
        let name = name.to_bytes();
        if name != b"." && name != b".." {
            out.push((name.to_vec(), kind));
        }
    }
}

pub fn pread(fd: RawFd, buf: &mut [u8], off: u64) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes to `buf`.
    cvt_size(unsafe { libc::pread64(fd, buf.as_mut_ptr().cast(), buf.len(), off as i64) })
}

pub fn pwrite(fd: RawFd, buf: &[u8], off: u64) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
    cvt_size(unsafe { libc::pwrite64(fd, buf.as_ptr().cast(), buf.len(), off as i64) })
}

pub fn ftruncate(fd: RawFd, len: u64) -> io::Result<()> {
    // SAFETY: ftruncate takes numbers only.
    cvt(unsafe { libc::ftruncate(fd, len as i64) }).map(drop)
}

pub fn fallocate(fd: RawFd, mode: i32, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate takes numbers only.
    cvt(unsafe { libc::fallocate(fd, mode, off as i64, len as i64) }).map(drop)
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

pub fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Backing file `id` of this connection, for an open's reply; closed when dropped.
pub fn wrap_backing_open(reply: &fuser::ReplyOpen, id: u32) -> fuser::BackingId {
    // SAFETY: `id` is registered on the connection this reply goes to, and the one `BackingId`
    // made here is its only owner in this process.
    unsafe { reply.wrap_backing(id) }
}

/// [`wrap_backing_open`] for a create's reply.
pub fn wrap_backing_create(reply: &fuser::ReplyCreate, id: u32) -> fuser::BackingId {
    // SAFETY: as in `wrap_backing_open`.
    unsafe { reply.wrap_backing(id) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets, reads, lists and removes xattrs of a file, of a directory through its own fd, and
    /// of a symlink's name (never its target), first with the *xattrat calls, then through
    /// /proc as on kernels before 6.13.
    #[test]
    fn xattrs_through_a_dir_fd_with_and_without_xattrat() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", tmp.path().join("l")).unwrap();
        let dir = open_dir_path(libc::AT_FDCWD, &cname(tmp.path().as_os_str()).unwrap()).unwrap();
        let d = dir.as_raw_fd();
        XATTRAT.store(0, Ordering::Relaxed);
        let probed = xattrat_works();
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let release = release.trim();
        let v: Vec<u32> = release
            .split(['.', '-'])
            .take(2)
            .filter_map(|x| x.parse().ok())
            .collect();
        if v >= vec![6, 13] {
            assert!(probed, "*xattrat calls refused on Linux {release}");
        }
        for with_xattrat in [probed, false] {
            XATTRAT.store(if with_xattrat { 1 } else { 2 }, Ordering::Relaxed);
            let (file, itself) = (xattr_path(d, Some(c"f")), xattr_path(d, None));
            if let Err(e) = lsetxattr(&file, c"user.k", b"v", 0) {
                // tmpfs before 6.6 has no user xattrs: nothing to check there.
                assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}");
                break;
            }
            lsetxattr(&itself, c"user.d", &[7u8; 300], 0).unwrap();
            assert_eq!(lgetxattr(&file, c"user.k").unwrap(), b"v");
            assert_eq!(lgetxattr(&itself, c"user.d").unwrap(), [7u8; 300]);
            assert_eq!(llistxattr(&file).unwrap(), b"user.k\0");
            let link = lgetxattr(&xattr_path(d, Some(c"l")), c"user.k");
            assert_eq!(link.unwrap_err().raw_os_error(), Some(libc::ENODATA));
            lremovexattr(&file, c"user.k").unwrap();
            lremovexattr(&itself, c"user.d").unwrap();
            let gone = lgetxattr(&file, c"user.k").unwrap_err();
            assert_eq!(gone.raw_os_error(), Some(libc::ENODATA));
        }
        XATTRAT.store(0, Ordering::Relaxed);
    }
}
