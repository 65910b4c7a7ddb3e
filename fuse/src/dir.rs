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
