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
    /// chown entries to the ids in the tar headers (only when running as root).
    pub preserve_owner: bool,
    /// Create device nodes (only when running as root); otherwise skip them.
    pub allow_devices: bool,
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

fn invalid(what: &str, e: impl std::fmt::Display) -> ImageError {
    ImageError::Invalid(format!("{what}: {e}"))
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
    archive.set_preserve_ownerships(opts.preserve_owner);
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
        if (kind.is_character_special() || kind.is_block_special()) && !opts.allow_devices {
            continue;
        }
        let name = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        match entry.unpack_in(dest) {
            Ok(_) => {}
            Err(e) => return Err(invalid(&format!("unpack {name:?}"), e)),
        }
    }
    let bytes = nestfs_fuse::allocated_bytes(dest).map_err(|e| invalid("measure layer", e))?;
    Ok(UnpackStats { bytes, entries })
}
