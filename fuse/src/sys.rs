//! Thin wrappers over the `*at` syscalls the overlay uses. Every name passed here is a single
//! path component resolved relative to a directory fd, and no call follows a symlink in its last
//! component, so nothing a layer contains can lead the daemon outside that layer.

use std::borrow::Cow;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU8, Ordering};

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
    cvt(unsafe { libc::fchmodat(fd.as_raw_fd(), c"".as_ptr(), mode, libc::AT_EMPTY_PATH) })
        .or_else(|_| {
            // Kernels before 6.6 lack AT_EMPTY_PATH for fchmodat; the proc path works everywhere.
            let p = proc_path(fd.as_raw_fd(), None);
            cvt(unsafe { libc::chmod(p.as_ptr(), mode) })
        })
        .map(drop)
}

/// chmod of the object an [`XPath`] names (regular files and directories only: it follows
/// symlinks).
pub fn chmod_path(xp: &XPath, mode: u32) -> io::Result<()> {
    cvt(unsafe { libc::fchmodat(xp.dir, xp.name.as_ptr(), mode, 0) }).map(drop)
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
            |p| unsafe { libc::lgetxattr(p.as_ptr(), key.as_ptr(), ptr.cast(), len) },
        )
    })
}

pub fn llistxattr(xp: &XPath) -> io::Result<Vec<u8>> {
    read_sized(|buf| {
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        xattr_call(
            xp,
            |xp| unsafe {
                let name = xp.name.as_ptr();
                let nofollow = libc::AT_SYMLINK_NOFOLLOW;
                libc::syscall(SYS_LISTXATTRAT, xp.dir, name, nofollow, ptr, len)
            },
            |p| unsafe { libc::llistxattr(p.as_ptr(), ptr.cast(), len) },
        )
    })
}

pub fn lsetxattr(xp: &XPath, key: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    let (v, len) = (value.as_ptr(), value.len());
    xattr_call(
        xp,
        |xp| xattrat_value(SYS_SETXATTRAT, xp, key, v, len, flags),
        |p| unsafe { libc::lsetxattr(p.as_ptr(), key.as_ptr(), v.cast(), len, flags) as isize },
    )
    .map(drop)
}

pub fn lremovexattr(xp: &XPath, key: &CStr) -> io::Result<()> {
    xattr_call(
        xp,
        |xp| unsafe {
            libc::syscall(
                SYS_REMOVEXATTRAT,
                xp.dir,
                xp.name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                key.as_ptr(),
            )
        },
        |p| unsafe { libc::lremovexattr(p.as_ptr(), key.as_ptr()) as isize },
    )
    .map(drop)
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

/// Whether this process has CAP_SYS_ADMIN in the initial user namespace, which `trusted.*`
/// xattrs and FUSE passthrough need. Root in a user namespace (rootless podman's mount
/// program, `unshare -Ur`) has its capabilities only there: its uid map is not the identity.
pub fn admin_in_initial_ns() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    caps & (1 << CAP_SYS_ADMIN) != 0 && is_identity_map(&map)
}

/// Whether a uid map is the initial namespace's: every id maps to itself.
fn is_identity_map(map: &str) -> bool {
    map.split_whitespace().eq(["0", "0", "4294967295"])
}

pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

pub fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_initial_namespace_maps_every_id_to_itself() {
        assert!(is_identity_map("         0          0 4294967295\n"));
        assert!(!is_identity_map("         0          0          1\n"));
        assert!(!is_identity_map("0 1000 1\n1 100000 65536\n"));
        assert!(!is_identity_map(""));
    }

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
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::uname(&mut uts) }, 0);
        let release = unsafe { CStr::from_ptr(uts.release.as_ptr()) }.to_string_lossy();
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
