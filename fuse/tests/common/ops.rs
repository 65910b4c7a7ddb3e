//! File operations by path relative to a mount root, each returning a printable outcome, and a
//! `Log` that records them so two mounts can be compared call by call.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::layers::cpath;
use super::snapshot::time_class;

pub type Res = io::Result<String>;

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn checkl(rc: isize) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

fn ok() -> Res {
    Ok(String::new())
}

/// An open file descriptor, closed on drop.
pub struct Fd(pub libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        unsafe { libc::close(self.0) };
    }
}

pub fn open(root: &Path, p: &str, flags: libc::c_int, mode: u32) -> io::Result<Fd> {
    let c = cpath(&root.join(p));
    check(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) }).map(Fd)
}

pub fn create(root: &Path, p: &str, flags: libc::c_int, mode: u32) -> Res {
    open(root, p, flags | libc::O_CREAT, mode).and_then(|_| ok())
}

pub fn write_at(root: &Path, p: &str, off: i64, data: &[u8]) -> Res {
    let fd = open(root, p, libc::O_WRONLY, 0)?;
    let n = checkl(unsafe { libc::pwrite(fd.0, data.as_ptr().cast(), data.len(), off) })?;
    Ok(n.to_string())
}

pub fn append(root: &Path, p: &str, data: &[u8]) -> Res {
    let fd = open(root, p, libc::O_WRONLY | libc::O_APPEND, 0)?;
    let n = checkl(unsafe { libc::write(fd.0, data.as_ptr().cast(), data.len()) })?;
    Ok(n.to_string())
}

pub fn truncate(root: &Path, p: &str, len: i64) -> Res {
    let c = cpath(&root.join(p));
    check(unsafe { libc::truncate(c.as_ptr(), len) }).and_then(|_| ok())
}

/// Reads a whole file; the outcome is its length and a short hash.
pub fn read(root: &Path, p: &str) -> Res {
    let data = std::fs::read(root.join(p))?;
    Ok(format!("{} bytes {}", data.len(), short_hash(&data)))
}

pub fn short_hash(data: &[u8]) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(data);
    h[..6].iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unlink(root: &Path, p: &str) -> Res {
    let c = cpath(&root.join(p));
    check(unsafe { libc::unlink(c.as_ptr()) }).and_then(|_| ok())
}

pub fn rmdir(root: &Path, p: &str) -> Res {
    let c = cpath(&root.join(p));
    check(unsafe { libc::rmdir(c.as_ptr()) }).and_then(|_| ok())
}

pub fn mkdir(root: &Path, p: &str, mode: u32) -> Res {
    let c = cpath(&root.join(p));
    check(unsafe { libc::mkdir(c.as_ptr(), mode) }).and_then(|_| ok())
}

pub fn rename(root: &Path, a: &str, b: &str, flags: u32) -> Res {
    let (ca, cb) = (cpath(&root.join(a)), cpath(&root.join(b)));
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            flags,
        )
    };
    check(rc).and_then(|_| ok())
}

pub fn link(root: &Path, a: &str, b: &str) -> Res {
    let (ca, cb) = (cpath(&root.join(a)), cpath(&root.join(b)));
    check(unsafe { libc::link(ca.as_ptr(), cb.as_ptr()) }).and_then(|_| ok())
}

pub fn symlink(root: &Path, target: &str, p: &str) -> Res {
    let (ct, cp) = (CString::new(target).unwrap(), cpath(&root.join(p)));
    check(unsafe { libc::symlink(ct.as_ptr(), cp.as_ptr()) }).and_then(|_| ok())
}

pub fn readlink(root: &Path, p: &str) -> Res {
    Ok(std::fs::read_link(root.join(p))?.display().to_string())
}

pub fn mknod(root: &Path, p: &str, mode: u32, dev: u64) -> Res {
    let c = cpath(&root.join(p));
    check(unsafe { libc::mknod(c.as_ptr(), mode, dev) }).and_then(|_| ok())
}

pub fn chmod(root: &Path, p: &str, mode: u32) -> Res {
    let c = cpath(&root.join(p));
    check(unsafe { libc::chmod(c.as_ptr(), mode) }).and_then(|_| ok())
}

pub fn lchown(root: &Path, p: &str, uid: u32, gid: u32) -> Res {
    let c = cpath(&root.join(p));
    check(unsafe { libc::lchown(c.as_ptr(), uid, gid) }).and_then(|_| ok())
}

/// Sets atime and mtime to `secs` without following a final symlink.
pub fn utimes(root: &Path, p: &str, secs: i64) -> Res {
    let c = cpath(&root.join(p));
    let ts = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let t = [ts, ts];
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    check(rc).and_then(|_| ok())
}

pub fn setxattr(root: &Path, p: &str, name: &str, val: &[u8], flags: libc::c_int) -> Res {
    let (c, n) = (cpath(&root.join(p)), CString::new(name).unwrap());
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            val.as_ptr().cast(),
            val.len(),
            flags,
        )
    };
    check(rc).and_then(|_| ok())
}

pub fn getxattr(root: &Path, p: &str, name: &str) -> Res {
    let (c, n) = (cpath(&root.join(p)), CString::new(name).unwrap());
    let mut buf = vec![0u8; 4096];
    let rc = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), 4096) };
    let len = checkl(rc)?;
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

pub fn listxattr(root: &Path, p: &str) -> Res {
    let c = cpath(&root.join(p));
    let mut buf = vec![0u8; 4096];
    let len = checkl(unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), 4096) })?;
    let mut names: Vec<String> = buf[..len]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    names.sort();
    Ok(names.join(","))
}

pub fn removexattr(root: &Path, p: &str, name: &str) -> Res {
    let (c, n) = (cpath(&root.join(p)), CString::new(name).unwrap());
    check(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) }).and_then(|_| ok())
}

/// lstat, showing the fields both implementations must agree on.
pub fn stat(root: &Path, p: &str) -> Res {
    let md = std::fs::symlink_metadata(root.join(p))?;
    let size = if md.is_dir() {
        "-".to_string()
    } else {
        md.size().to_string()
    };
    Ok(format!(
        "mode={:o} uid={} gid={} size={size} nlink={} mtime={} rdev={:x}",
        md.mode(),
        md.uid(),
        md.gid(),
        md.nlink(),
        time_class(md.mtime()),
        md.rdev()
    ))
}

pub fn ino(root: &Path, p: &str) -> u64 {
    std::fs::symlink_metadata(root.join(p))
        .unwrap_or_else(|e| panic!("lstat {p}: {e}"))
        .ino()
}

pub fn readdir(root: &Path, p: &str) -> Res {
    let mut names: Vec<String> = std::fs::read_dir(root.join(p))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<_>>()?;
    names.sort();
    Ok(names.join(","))
}

/// The outcomes of a sequence of calls, one line each.
#[derive(Default)]
pub struct Log {
    pub lines: Vec<String>,
}

impl Log {
    /// Records `what` with its outcome; returns whether it succeeded.
    pub fn rec(&mut self, what: impl std::fmt::Display, r: Res) -> bool {
        let line = match &r {
            Ok(v) if v.is_empty() => format!("{what} => ok"),
            Ok(v) => format!("{what} => ok {v}"),
            Err(e) => format!("{what} => {}", errno_name(e)),
        };
        self.lines.push(line);
        r.is_ok()
    }

    /// Records a fact that is not a call outcome (e.g. a comparison made inside the script).
    pub fn note(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }
}

pub fn errno_name(e: &io::Error) -> String {
    let Some(n) = e.raw_os_error() else {
        return e.to_string();
    };
    let name = match n {
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EXDEV => "EXDEV",
        libc::EINVAL => "EINVAL",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ENODATA => "ENODATA",
        libc::ENOTSUP => "ENOTSUP",
        libc::EROFS => "EROFS",
        libc::EBUSY => "EBUSY",
        libc::ELOOP => "ELOOP",
        libc::EMLINK => "EMLINK",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::ERANGE => "ERANGE",
        libc::EIO => "EIO",
        libc::ENOSYS => "ENOSYS",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTCONN => "ENOTCONN (daemon gone)",
        libc::ECONNABORTED => "ECONNABORTED (daemon aborted)",
        libc::EDQUOT => "EDQUOT",
        libc::ENOSPC => "ENOSPC",
        _ => return format!("errno {n}"),
    };
    name.to_string()
}
