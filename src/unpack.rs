//! Safe layer unpacking: a tar stream (plain, gzip or zstd) into an empty directory.
//!
//! The `tar` crate's `unpack_in` refuses names with `..` or absolute roots, and checks that the
//! parent of every entry (and the target of every hardlink) resolves inside the destination, so
//! symlink tricks in a hostile layer cannot write outside it. OCI whiteout files (`.wh.NAME`,
//! `.wh..wh..opq`) are kept as the empty files they are: the FUSE overlay reads that format.
//! Decompression bombs are bounded in bytes and entries.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::image::ImageError;

/// Bounds and permissions for unpacking one layer.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Fail with [`ImageError::TooLarge`] once the layer's files add up to more than this.
    pub max_bytes: u64,
    /// Fail with [`ImageError::TooManyEntries`] past this many entries (inode bombs).
    pub max_entries: u64,
    /// chown entries and create device nodes as the tar headers say (root only). Without it,
    /// owners, modes and devices are recorded in xattrs instead (see `nestfs_fuse::meta`).
    pub privileged: bool,
}

/// What one unpacked layer consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Bytes allocated on disk (blocks), as `du --block-size=1` would count them.
    pub bytes: u64,
    /// Number of entries created.
    pub entries: u64,
}

/// A reader that undoes gzip or zstd compression, recognised by magic bytes (plain tar
/// otherwise), whatever the media type claims.
pub fn decompressor<'a, R: Read + 'a>(reader: R) -> std::io::Result<Box<dyn Read + 'a>> {
    let mut buf = BufReader::with_capacity(1 << 16, reader);
    let head = buf.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buf))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buf)?)
    } else {
        Box::new(buf)
    })
}

/// The error with its causes: the tar crate says which entry failed, its source says why.
fn invalid(what: &str, e: impl std::error::Error) -> ImageError {
    let mut msg = format!("{what}: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    ImageError::Invalid(msg)
}

/// Replaces the stand-in file of a device entry by the device node (as root).
fn make_device<R: Read>(dest: &Path, entry: &tar::Entry<R>, name: &str) -> Result<(), ImageError> {
    let h = entry.header();
    let fail = |e: std::io::Error| invalid(&format!("create device {name:?}"), e);
    let path = dest.join(relative(name));
    let fmt = if h.entry_type().is_character_special() {
        libc::S_IFCHR
    } else {
        libc::S_IFBLK
    };
    let rdev = libc::makedev(
        h.device_major().ok().flatten().unwrap_or(0),
        h.device_minor().ok().flatten().unwrap_or(0),
    );
    std::fs::remove_file(&path).map_err(fail)?;
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| fail(e.into()))?;
    let mode = h.mode().unwrap_or(0o600) & 0o7777;
    if unsafe { libc::mknod(c.as_ptr(), fmt | mode, rdev) } != 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    let (uid, gid) = (h.uid().unwrap_or(0) as u32, h.gid().unwrap_or(0) as u32);
    std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(fail)?;
    // mknod applied the umask; chown may have cleared nothing (devices have no set-id bits).
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(fail)
}

/// An entry's name as unpack_in placed it: relative, without `.` components.
fn relative(name: &str) -> std::path::PathBuf {
    Path::new(name)
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect()
}

/// Records the header's owner, mode and device on the unpacked entry (unprivileged unpack).
fn record_meta<R: Read>(dest: &Path, entry: &tar::Entry<R>, name: &str) -> Result<(), ImageError> {
    let h = entry.header();
    let fail = |e: std::io::Error| invalid(&format!("record owner of {name:?}"), e);
    let kind = h.entry_type();
    let fmt = if kind.is_dir() {
        libc::S_IFDIR
    } else if kind.is_character_special() {
        libc::S_IFCHR
    } else if kind.is_block_special() {
        libc::S_IFBLK
    } else {
        libc::S_IFREG
    };
    let rdev = match (h.device_major(), h.device_minor()) {
        (Ok(Some(ma)), Ok(Some(mi))) if fmt != libc::S_IFREG && fmt != libc::S_IFDIR => {
            libc::makedev(ma, mi)
        }
        _ => 0,
    };
    let want = nestfs_fuse::meta::Meta {
        uid: h.uid().unwrap_or(0) as u32,
        gid: h.gid().unwrap_or(0) as u32,
        mode: fmt | (h.mode().unwrap_or(0o644) & 0o7777),
        rdev,
    };
    nestfs_fuse::meta::record_path(&dest.join(relative(name)), &want).map_err(fail)
}

/// Unpacks the tar stream `reader` into `dest` (an existing, empty directory).
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, ImageError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_preserve_ownerships(opts.privileged);
    archive.set_overwrite(true);
    let (mut entries, mut bytes) = (0u64, 0u64);
    for entry in archive.entries().map_err(|e| invalid("read layer", e))? {
        let mut entry = entry.map_err(|e| invalid("read layer entry", e))?;
        entries += 1;
        if entries > opts.max_entries {
            return Err(ImageError::TooManyEntries {
                limit: opts.max_entries,
            });
        }
        // Count whole blocks per file, as the filesystem will allocate them.
        bytes += entry.header().entry_size().unwrap_or(0).div_ceil(4096) * 4096;
        if bytes > opts.max_bytes {
            return Err(ImageError::TooLarge {
                limit: opts.max_bytes,
            });
        }
        let kind = entry.header().entry_type();
        let name = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let device = kind.is_character_special() || kind.is_block_special();
        if device {
            // Safe path (unpack_in's checks) of an empty stand-in file that records the device.
            let mut stand_in = tar::Header::new_gnu();
            stand_in.set_entry_type(tar::EntryType::Regular);
            stand_in.set_size(0);
            stand_in.set_mode(0o600);
            let mut b = tar::Builder::new(Vec::new());
            b.append_data(&mut stand_in, &name, std::io::empty())
                .map_err(|e| invalid(&format!("unpack {name:?}"), e))?;
            let data = b
                .into_inner()
                .map_err(|e| invalid(&format!("unpack {name:?}"), e))?;
            let mut one = tar::Archive::new(&data[..]);
            for e in one.entries().map_err(|e| invalid("stand-in", e))? {
                let mut e = e.map_err(|e| invalid("stand-in", e))?;
                e.unpack_in(dest)
                    .map_err(|e| invalid(&format!("unpack {name:?}"), e))?;
            }
        } else {
            entry
                .unpack_in(dest)
                .map_err(|e| invalid(&format!("unpack {name:?}"), e))?;
        }
        let plain = kind.is_file() || kind.is_dir() || kind == tar::EntryType::Continuous;
        if !opts.privileged && (plain || device) {
            record_meta(dest, &entry, &name)?;
        } else if device {
            make_device(dest, &entry, &name)?;
        }
    }
    let bytes = nestfs_fuse::allocated_bytes(dest).map_err(|e| invalid("measure layer", e))?;
    Ok(UnpackStats { bytes, entries })
}
