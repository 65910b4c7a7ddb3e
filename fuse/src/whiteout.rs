//! Whiteouts and opaque directories in both formats: overlayfs (a 0/0 character device, the
//! `*.overlay.opaque` xattr) and OCI (`.wh.NAME` files, a `.wh..wh..opq` file).

use std::ffi::{CStr, CString};
use std::io::{self, Read, Write};
use std::os::fd::RawFd;

use crate::sys::{self, Stat};

pub const OCI_PREFIX: &[u8] = b".wh.";
pub const OCI_OPAQUE: &CStr = c".wh..wh..opq";
const OPAQUE_XATTRS: [&CStr; 2] = [c"trusted.overlay.opaque", c"user.overlay.opaque"];
const ORIGIN_XATTRS: [&CStr; 2] = [c"trusted.nestfs.origin", c"user.nestfs.origin"];

/// Whether a stat result is an overlayfs-format whiteout.
pub fn is_device_whiteout(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// Whether a name is reserved for OCI whiteouts (never shown, never creatable).
pub fn is_oci_name(name: &[u8]) -> bool {
    name.starts_with(OCI_PREFIX)
}

pub fn oci_name(name: &CStr) -> CString {
    let mut v = OCI_PREFIX.to_vec();
    v.extend_from_slice(name.to_bytes());
    CString::new(v).expect("no NUL in a name")
}

/// Whether `dir` has an OCI whiteout for `name`.
pub fn has_oci_whiteout(dir: RawFd, name: &CStr) -> bool {
    sys::stat_at(dir, &oci_name(name)).is_ok()
}

/// Whether the directory held by `dir` hides the layers below it.
pub fn is_opaque(dir: RawFd, oci: bool) -> bool {
    if oci && sys::stat_at(dir, OCI_OPAQUE).is_ok() {
        return true;
    }
    let path = sys::xattr_path(dir, None);
    OPAQUE_XATTRS
        .iter()
        .any(|k| sys::lgetxattr(&path, k).is_ok_and(|v| v == b"y"))
}

/// How whiteouts and opaque markers are written into the upper dir. Both forms are read back
/// on remount; which one is written depends on what the upper dir's filesystem takes (see
/// [`probe_upper`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// 0/0 character devices and the `opaque` xattr on opaque directories; renames leave their
    /// whiteout themselves where the filesystem takes RENAME_WHITEOUT from this daemon (it
    /// needs CAP_MKNOD in the initial user namespace).
    Overlay {
        opaque: &'static CStr,
        rename_whiteout: bool,
    },
    /// `.wh.NAME` files and `.wh..wh..opq` markers: any filesystem and any user can make them.
    Oci,
}

impl Style {
    /// The entry that stands for a whiteout of `name`.
    pub fn entry(self, name: &CStr) -> std::borrow::Cow<'_, CStr> {
        match self {
            Style::Overlay { .. } => name.into(),
            Style::Oci => oci_name(name).into(),
        }
    }

    /// Makes a whiteout object at exactly `entry` (see [`Self::entry`]).
    pub fn make(self, dir: RawFd, entry: &CStr) -> io::Result<()> {
        match self {
            Style::Overlay { .. } => sys::mknod_at(dir, entry, libc::S_IFCHR, 0),
            Style::Oci => sys::open_at(dir, entry, libc::O_CREAT | libc::O_WRONLY, 0o600).map(drop),
        }
    }

    pub fn mark_opaque(self, dir: RawFd, name: &CStr) -> io::Result<()> {
        match self {
            Style::Overlay { opaque, .. } => {
                let path = sys::xattr_path(dir, Some(name));
                sys::lsetxattr(&path, opaque, b"y", 0)
            }
            Style::Oci => {
                let d = sys::open_dir_path(dir, name)?;
                sys::open_at(d_raw(&d), OCI_OPAQUE, libc::O_CREAT | libc::O_WRONLY, 0o600).map(drop)
            }
        }
    }
}

/// What the upper dir's filesystem takes, as [`probe_upper`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upper {
    pub style: Style,
    /// Where a copied-up file records the inode number it had below.
    pub origin_key: &'static CStr,
}

/// For a mount without an upper dir, which writes neither whiteouts nor origins.
pub const NO_UPPER: Upper = Upper {
    style: Style::Oci,
    origin_key: ORIGIN_XATTRS[1],
};

/// The work dir's scratch directory for [`probe_upper`] (cleaned at mount, like all `#nestfs-`
/// names, should a daemon die while probing).
const PROBE_DIR: &CStr = c"#nestfs-probe";

/// Finds out, by trying in the work dir, which whiteouts and xattrs the upper dir's filesystem
/// takes from this daemon. `trusted.*` needs CAP_SYS_ADMIN in the initial user namespace
/// (`admin`); `devices` is false where the overlayfs form is not wanted at all. A filesystem
/// may refuse the overlayfs form even from root: kernel overlayfs refuses 0/0 devices and
/// RENAME_WHITEOUT, and a nestfs mount 0/0 devices.
///
/// What it finds is kept in the work dir ([`PROBE_CACHE`]) for later mounts of the same
/// filesystem: the probe's metadata changes are most of a mount's own time (0.3-0.5 ms on
/// ext4, against 0.05 ms for the rest of the overlay's setup).
pub fn probe_upper(work: RawFd, admin: bool, devices: bool) -> io::Result<Upper> {
    // Without a key (no mount ids before Linux 5.8, statx refused by a seccomp filter) the
    // probe runs every time, as it always did.
    let key = probe_key(work, admin, devices);
    let possible = |u: &Upper| possible(u, admin, devices);
    if let Some(found) = key.as_ref().and_then(|k| cached_probe(work, k, possible)) {
        return Ok(found);
    }
    sys::mkdir_at(work, PROBE_DIR, 0o700)?;
    let found =
        sys::open_dir_path(work, PROBE_DIR).and_then(|d| probe_in(d_raw(&d), admin, devices));
    crate::overlay::remove_tree(work, PROBE_DIR)?;
    let found = found?;
    if let Some(key) = key
        && let Err(e) = keep_probe(work, &key, found)
    {
        tracing::debug!("keep the probe's result in the work dir: {e}");
    }
    Ok(found)
}

/// Whether a probe by a daemon with these privileges can find `u` (a record saying otherwise
/// is not believed).
fn possible(u: &Upper, admin: bool, devices: bool) -> bool {
    let trusted = |k: &CStr| k.to_bytes().starts_with(b"trusted.");
    let style_ok = match u.style {
        Style::Oci => true,
        Style::Overlay { opaque, .. } => devices && (admin || !trusted(opaque)),
    };
    style_ok && (admin || !trusted(u.origin_key))
}

/// The work dir's record of what [`probe_upper`] found (a name the mount-time cleaning of
/// `#nestfs-` names leaves alone).
pub const PROBE_CACHE: &CStr = c"nestfs-probe";

/// What a probe's result depends on: the very mount of the upper filesystem in this boot (a
/// unique mount id where the kernel has them, 6.8+; so a remount, another filesystem or a
/// reboot, perhaps into another kernel, probes again), whether it is read-only (the probe's
/// mkdir is what refused a read-only upper dir at mount), and what the daemon may do.
fn probe_key(work: RawFd, admin: bool, devices: bool) -> Option<String> {
    let (mnt, unique) = sys::mount_id(work).ok()??;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let read_only = sys::fstatvfs(work).ok()?.f_flag & libc::ST_RDONLY != 0;
    Some(format!(
        "v1 boot={} mnt={mnt}{} dev={} fs={:x} ro={read_only} admin={admin} devices={devices}",
        boot.trim(),
        if unique { "" } else { "?" },
        sys::fstat(work).ok()?.st_dev,
        sys::fs_type(work).ok()?,
    ))
}

/// Every result a probe can give, each with the line that records it.
fn outcomes() -> impl Iterator<Item = (Upper, String)> {
    let overlay = OPAQUE_XATTRS.into_iter().flat_map(|opaque| {
        [false, true].map(|rename_whiteout| Style::Overlay {
            opaque,
            rename_whiteout,
        })
    });
    std::iter::once(Style::Oci)
        .chain(overlay)
        .flat_map(|style| {
            ORIGIN_XATTRS.map(|origin_key| {
                let style_text = match style {
                    Style::Oci => "oci".to_string(),
                    Style::Overlay {
                        opaque,
                        rename_whiteout,
                    } => format!(
                        "overlay opaque={} rename_whiteout={rename_whiteout}",
                        opaque.to_string_lossy()
                    ),
                };
                let line = format!("{style_text} origin={}", origin_key.to_string_lossy());
                (Upper { style, origin_key }, line)
            })
        })
}

/// The recorded result, if it was recorded under `key` (in a regular file: a fifo there must
/// not hang the mount) and is `possible`.
fn cached_probe(work: RawFd, key: &str, possible: impl Fn(&Upper) -> bool) -> Option<Upper> {
    let fd = sys::open_at(work, PROBE_CACHE, libc::O_RDONLY | libc::O_NONBLOCK, 0).ok()?;
    if sys::fstat(d_raw(&fd)).ok()?.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(4096)
        .read_to_string(&mut text)
        .ok()?;
    let (found_key, line) = text.strip_suffix('\n')?.split_once('\n')?;
    if found_key != key {
        return None;
    }
    outcomes()
        .find(|(u, l)| l == line && possible(u))
        .map(|(u, _)| u)
}

/// Records `found` under `key`, replacing any older record at once (a rename).
fn keep_probe(work: RawFd, key: &str, found: Upper) -> io::Result<()> {
    let line = outcomes()
        .find(|(u, _)| *u == found)
        .map(|(_, l)| l)
        .expect("every probe result has a line");
    let tmp = CString::new(format!(
        "{}probe-{}",
        crate::overlay::TMP_PREFIX,
        std::process::id()
    ))
    .expect("no NUL");
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
    let mut f = std::fs::File::from(sys::open_at(work, &tmp, flags, 0o600)?);
    let written = f
        .write_all(format!("{key}\n{line}\n").as_bytes())
        .and_then(|()| sys::rename_at(work, &tmp, work, PROBE_CACHE, 0));
    if written.is_err() {
        let _ = sys::unlink_at(work, &tmp, false);
    }
    written
}

fn probe_in(dir: RawFd, admin: bool, devices: bool) -> io::Result<Upper> {
    // Trusted names first where they can work: kernel overlayfs reads only those.
    let usable = |keys: [&'static CStr; 2], path: &sys::XPath| {
        keys.into_iter()
            .skip(usize::from(!admin))
            .find(|k| sys::lsetxattr(path, k, b"y", 0).is_ok())
    };
    sys::open_at(dir, c"f", libc::O_CREAT | libc::O_WRONLY, 0o600)?;
    let origin_key =
        usable(ORIGIN_XATTRS, &sys::xattr_path(dir, Some(c"f"))).unwrap_or(ORIGIN_XATTRS[1]);
    let whiteout_at = |name: &CStr| sys::stat_at(dir, name).is_ok_and(|st| is_device_whiteout(&st));
    let style = match usable(OPAQUE_XATTRS, &sys::xattr_path(dir, None)) {
        Some(opaque)
            if devices
                && sys::mknod_at(dir, c"wh", libc::S_IFCHR, 0).is_ok()
                && whiteout_at(c"wh") =>
        {
            let rename_whiteout = sys::rename_at(dir, c"f", dir, c"g", libc::RENAME_WHITEOUT)
                .is_ok()
                && whiteout_at(c"f");
            Style::Overlay {
                opaque,
                rename_whiteout,
            }
        }
        _ => Style::Oci,
    };
    Ok(Upper { style, origin_key })
}

fn d_raw(fd: &std::os::fd::OwnedFd) -> RawFd {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

/// Removes whatever whiteout of either format stands for `name` in an upper dir.
pub fn remove_whiteout(dir: RawFd, name: &CStr, oci: bool) -> io::Result<bool> {
    if let Ok(st) = sys::stat_at(dir, name)
        && is_device_whiteout(&st)
    {
        sys::unlink_at(dir, name, false)?;
        return Ok(true);
    }
    if !oci {
        return Ok(false);
    }
    match sys::unlink_at(dir, &oci_name(name), false) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe runs once per filesystem: later mounts read its record, which counts only
    /// under the key it was made with and only if it names a result such a probe can give.
    #[test]
    fn a_probe_is_kept_for_its_filesystem_and_privileges() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let work =
            sys::open_path(&sys::cname(dir.path().as_os_str()).unwrap(), libc::O_PATH).unwrap();
        let w = work.as_raw_fd();
        let record = dir.path().join("nestfs-probe");
        let found = probe_upper(w, true, true).unwrap();
        let key = probe_key(w, true, true).unwrap();
        let kept = std::fs::read_to_string(&record).unwrap();
        assert_eq!(kept.lines().next(), Some(key.as_str()), "{kept}");
        // A record under the same key is believed: the probe does not run again.
        let (other, line) = outcomes().find(|(u, _)| *u != found).unwrap();
        std::fs::write(&record, format!("{key}\n{line}\n")).unwrap();
        assert_eq!(probe_upper(w, true, true).unwrap(), other);
        // Other privileges probe again; an unprivileged daemon writes OCI whiteouts.
        let plain = probe_upper(w, false, false).unwrap();
        assert_eq!(plain.style, Style::Oci);
        let plain_key = probe_key(w, false, false).unwrap();
        assert!(
            std::fs::read_to_string(&record)
                .unwrap()
                .starts_with(&plain_key)
        );
        // A record naming what these privileges cannot get, or nothing, is not believed.
        let (_, privileged) = outcomes()
            .find(|(u, _)| !possible(u, false, false))
            .unwrap();
        for line in [privileged.as_str(), "overlay opaque=evil"] {
            std::fs::write(&record, format!("{plain_key}\n{line}\n")).unwrap();
            assert_eq!(probe_upper(w, false, false).unwrap(), plain, "{line}");
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["nestfs-probe"], "the probe leaves only its record");
        // A fifo in its place is passed over, not waited on.
        std::fs::remove_file(&record).unwrap();
        sys::mknod_at(w, PROBE_CACHE, libc::S_IFIFO | 0o600, 0).unwrap();
        assert!(cached_probe(w, &plain_key, |_| true).is_none());
    }

    #[test]
    fn oci_names() {
        assert!(is_oci_name(b".wh.foo"));
        assert!(is_oci_name(b".wh..wh..opq"));
        assert!(!is_oci_name(b"wh.foo"));
        assert_eq!(oci_name(c"etc").as_bytes(), b".wh.etc");
    }
}
