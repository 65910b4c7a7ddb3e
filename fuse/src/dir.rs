//! Merged directory listings.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::AsRawFd;

use crate::node::LayerDir;
use crate::sys;
use crate::whiteout;

/// A visible name in a merged directory.
pub struct Entry {
    pub name: CString,
    pub dtype: u8,
    /// Index (in the listed dirs) of the topmost layer that holds the name.
    pub at: usize,
}

/// The visible names of a directory made of `dirs` (top first): upper names hide lower ones,
/// whiteouts of either format hide the name below them and are never listed themselves.
pub fn list(dirs: &[LayerDir]) -> io::Result<Vec<Entry>> {
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut out = Vec::new();
    for (at, d) in dirs.iter().enumerate() {
        let fd = d.fd.as_raw_fd();
        let mut hidden = Vec::new();
        for (name, dtype) in sys::read_dir_names(fd)? {
            if d.oci && whiteout::is_oci_name(&name) {
                if let Some(target) = name.strip_prefix(whiteout::OCI_PREFIX) {
                    hidden.push(target.to_vec());
                }
                continue;
            }
            if seen.contains(&name) {
                continue;
            }
            let c = CString::new(name.clone()).expect("no NUL in a dir entry");
            if matches!(dtype, libc::DT_CHR | libc::DT_UNKNOWN)
                && sys::stat_at(fd, &c).is_ok_and(|st| whiteout::is_device_whiteout(&st))
            {
                hidden.push(name);
                continue;
            }
            seen.insert(name);
            out.push(Entry { name: c, dtype, at });
        }
        seen.extend(hidden);
    }
    Ok(out)
}

/// Whether a merged directory shows no entries.
pub fn is_empty(dirs: &[LayerDir]) -> io::Result<bool> {
    Ok(list(dirs)?.is_empty())
}

/// Removes the whiteouts left in an upper directory that is about to be removed or replaced.
/// Fails with ENOTEMPTY if it holds anything else.
pub fn clear_whiteouts(dir: &LayerDir) -> io::Result<()> {
    let fd = dir.fd.as_raw_fd();
    for (name, _) in sys::read_dir_names(fd)? {
        let c = CString::new(name.clone()).expect("no NUL in a dir entry");
        let is_wh = (dir.oci && whiteout::is_oci_name(&name))
            || sys::stat_at(fd, &c).is_ok_and(|st| whiteout::is_device_whiteout(&st));
        if !is_wh {
            return Err(sys::err(libc::ENOTEMPTY));
        }
        sys::unlink_at(fd, &c, false)?;
    }
    Ok(())
}

pub fn dtype_kind(dtype: u8) -> fuser::FileType {
    use fuser::FileType::*;
    match dtype {
        libc::DT_DIR => Directory,
        libc::DT_LNK => Symlink,
        libc::DT_FIFO => NamedPipe,
        libc::DT_SOCK => Socket,
        libc::DT_CHR => CharDevice,
        libc::DT_BLK => BlockDevice,
        _ => RegularFile,
    }
}

/// Whether `name` is visible in a lower layer of a directory, so that removing or renaming
/// it from the upper dir must leave a whiteout.
pub fn in_lower(dirs: &[LayerDir], upper: Option<usize>, name: &CStr) -> bool {
    for d in dirs.iter().filter(|d| Some(d.layer) != upper) {
        let fd = d.fd.as_raw_fd();
        match sys::stat_at(fd, name) {
            Ok(st) => return !whiteout::is_device_whiteout(&st),
            Err(_) if d.oci && whiteout::has_oci_whiteout(fd, name) => return false,
            Err(_) => continue,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn layer(dir: &std::path::Path, layer: usize, oci: bool) -> LayerDir {
        LayerDir {
            layer,
            fd: Arc::new(std::fs::File::open(dir).unwrap().into()),
            oci,
        }
    }

    fn names(dirs: &[LayerDir]) -> Vec<(String, usize)> {
        let mut v: Vec<_> = list(dirs)
            .unwrap()
            .into_iter()
            .map(|e| (e.name.to_string_lossy().into_owned(), e.at))
            .collect();
        v.sort();
        v
    }

    /// Upper names hide lower ones; OCI whiteouts hide the name below and are never listed;
    /// a name whited out above stays hidden even if a lower layer has it again.
    #[test]
    fn merged_listing_applies_whiteouts_and_precedence() {
        let tmp = tempfile::tempdir().unwrap();
        let (top, mid, base) = (
            tmp.path().join("top"),
            tmp.path().join("mid"),
            tmp.path().join("base"),
        );
        for (d, files) in [
            (&top, &["shared", ".wh.gone", "new"][..]),
            (&mid, &["shared", "mid-only", ".wh.deep"]),
            (&base, &["shared", "gone", "deep", "base-only"]),
        ] {
            std::fs::create_dir(d).unwrap();
            for f in files {
                std::fs::write(d.join(f), "x").unwrap();
            }
        }
        let dirs = [
            layer(&top, 0, true),
            layer(&mid, 1, true),
            layer(&base, 2, true),
        ];
        assert_eq!(
            names(&dirs),
            [
                ("base-only".into(), 2),
                ("mid-only".into(), 1),
                ("new".into(), 0),
                ("shared".into(), 0)
            ]
        );
        assert!(!is_empty(&dirs).unwrap());
    }

    /// In a layer whose whiteouts are not OCI files (an upper dir of devices), `.wh.` names
    /// are ordinary names.
    #[test]
    fn wh_names_are_plain_where_whiteouts_are_not_oci() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(".wh.kept"), "x").unwrap();
        let dirs = [layer(tmp.path(), 0, false)];
        assert_eq!(names(&dirs), [(".wh.kept".into(), 0)]);
    }

    /// A directory of whiteouts only is empty, and clearing them leaves it removable; anything
    /// else makes clearing fail with ENOTEMPTY.
    #[test]
    fn whiteouts_only_is_empty_and_clears() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(".wh.a"), "").unwrap();
        let d = layer(tmp.path(), 0, true);
        assert!(is_empty(std::slice::from_ref(&d)).unwrap());
        clear_whiteouts(&d).unwrap();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        std::fs::write(tmp.path().join("real"), "").unwrap();
        let e = clear_whiteouts(&d).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    }

    /// A name is in a lower layer unless a whiteout above hides it first.
    #[test]
    fn in_lower_stops_at_whiteouts() {
        let tmp = tempfile::tempdir().unwrap();
        let (up, mid, low) = (
            tmp.path().join("u"),
            tmp.path().join("m"),
            tmp.path().join("l"),
        );
        for d in [&up, &mid, &low] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(low.join("f"), "").unwrap();
        std::fs::write(low.join("g"), "").unwrap();
        std::fs::write(mid.join(".wh.g"), "").unwrap();
        let dirs = [
            layer(&up, 0, true),
            layer(&mid, 1, true),
            layer(&low, 2, true),
        ];
        assert!(in_lower(&dirs, Some(0), c"f"));
        assert!(!in_lower(&dirs, Some(0), c"g"));
        assert!(!in_lower(&dirs, Some(0), c"none"));
    }
}
