//! The mount table and unmounting, shared by the overlay binary, nestfs and their tests.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::io::Errno;
use rustix::mount::UnmountFlags;

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub point: PathBuf,
    /// Its filesystem type (`fuse.nestfs-overlay`, `overlay`, ...).
    pub fs_type: String,
}

/// This mount namespace's mounts, oldest first; none if the table cannot be read.
pub fn list() -> Vec<Mount> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().filter_map(parse_line).collect()
}

/// Whether `p` is a mount point.
pub fn is_mounted(p: &Path) -> bool {
    list().iter().any(|m| m.point == p)
}

/// `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER-OPTIONS`
fn parse_line(line: &str) -> Option<Mount> {
    let point = line.split(' ').nth(4)?;
    let fs_type = line.split(" - ").nth(1)?.split(' ').next()?;
    Some(Mount {
        point: PathBuf::from(OsString::from_vec(unescape(point))),
        fs_type: unescape_lossy(fs_type),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn unescape_lossy(s: &str) -> String {
    String::from_utf8_lossy(&unescape(s)).into_owned()
}

/// Unmounts `mnt`, lazily (detached now, gone once its last user lets go) or not (EBUSY while
/// in use). Root unmounts directly; anyone else (EPERM) through fusermount3.
pub fn unmount(mnt: &Path, lazy: bool) -> io::Result<()> {
    let flags = if lazy {
        UnmountFlags::DETACH
    } else {
        UnmountFlags::empty()
    };
    match rustix::mount::unmount(mnt, flags) {
        Ok(()) => return Ok(()),
        Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg(mnt).stdin(Stdio::null()).output()?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr);
    if msg.contains("busy") {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    Err(io::Error::other(format!("fusermount3 -u: {}", msg.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_with_escapes_and_optional_fields() {
        let l = r"36 35 0:52 / /tmp/a\040b\134c rw,nosuid shared:1 master:2 - fuse.nestfs-overlay nestfs:x rw";
        let m = parse_line(l).unwrap();
        assert_eq!(m.point, Path::new("/tmp/a b\\c"));
        assert_eq!(m.fs_type, "fuse.nestfs-overlay");
        assert_eq!(parse_line("36 35 0:52 / /x rw").map(|m| m.point), None);
    }
}
