//! Disk usage as a quota would count it: allocated blocks, each hardlinked inode once.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Allocated bytes under `root` (like `du --block-size=1 -s`), not following symlinks.
pub fn allocated_bytes(root: &Path) -> io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    walk(root, &mut seen, &mut total)?;
    Ok(total)
}

fn walk(p: &Path, seen: &mut HashSet<(u64, u64)>, total: &mut u64) -> io::Result<()> {
    let md = match std::fs::symlink_metadata(p) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if md.nlink() <= 1 || md.is_dir() || seen.insert((md.dev(), md.ino())) {
        *total += md.blocks() * 512;
    }
    if md.is_dir() {
        for entry in std::fs::read_dir(p)? {
            walk(&entry?.path(), seen, total)?;
        }
    }
    Ok(())
}
