//! A lazy volume's skeleton: the TOC's entries as a tar with empty files, unpacked by the
//! same hardened unpacker as any layer (owners, modes, devices, links, whiteouts, xattrs,
//! rootless metadata), then each regular file made sparse at its size and marked.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use base64::Engine;
use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::{MARK, mtime};
use crate::estargz::reader::Index;
use crate::estargz::{TocEntry, clean_name, is_metadata_entry};
use crate::image::ImageError;
use crate::unpack::{self, UnpackOptions, UnpackStats};

pub fn build(
    index: &Index,
    key: &str,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, ImageError> {
    let tar = tar_of(&index.toc.entries)?;
    let opts = UnpackOptions {
        skip_estargz_entries: true,
        ..opts.clone()
    };
    let stats = unpack::unpack(&tar[..], dest, &opts)?;
    let fail = |name: &str, e: io::Error| ImageError::Io {
        what: format!("make lazy file {name:?}"),
        cause: e,
    };
    let root = rustix::fs::open(
        dest,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(".", e.into()))?;
    // Files count at their full size from the start: the store holds their data soon.
    let mut bytes = stats.bytes;
    for e in &index.toc.entries {
        let name = clean_name(&e.name);
        if e.kind != "reg" || e.size == 0 || is_metadata_entry(name) || !placeable(name) {
            continue;
        }
        sparse(&root, name, e, key).map_err(|err| fail(name, err))?;
        bytes += e.size.div_ceil(4096) * 4096;
    }
    Ok(UnpackStats {
        bytes,
        entries: stats.entries,
    })
}

/// Whether the unpacker made `name` (it skips `..` and the root).
fn placeable(name: &str) -> bool {
    !name.is_empty() && !name.split('/').any(|c| c == "..")
}

/// Gives the empty file `name` its size, its mark and back its mtime.
fn sparse(root: &OwnedFd, name: &str, e: &TocEntry, key: &str) -> io::Result<()> {
    let fd = rustix::fs::openat2(
        root,
        name,
        OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?;
    rustix::fs::ftruncate(&fd, e.size)?;
    rustix::fs::fsetxattr(
        &fd,
        MARK,
        format!("{key}/{name}").as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )?;
    super::set_times(&fd, mtime(e))
}

/// The TOC's entries as a tar of empty files (chunks are data, not entries).
fn tar_of(entries: &[TocEntry]) -> Result<Vec<u8>, ImageError> {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let bad =
            |why: String| ImageError::Invalid(format!("eStargz TOC entry {:?}: {why}", e.name));
        let kind = match e.kind.as_str() {
            "dir" => T::Directory,
            "reg" => T::Regular,
            "symlink" => T::Symlink,
            "hardlink" => T::Link,
            "char" => T::Char,
            "block" => T::Block,
            "fifo" => T::Fifo,
            "chunk" => continue,
            other => return Err(bad(format!("unknown type {other:?}"))),
        };
        let name = clean_name(&e.name);
        if name.is_empty() {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(u32::try_from(e.mode).map_err(|_| bad(format!("mode {}", e.mode)))?);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(u64::try_from(mtime(e)).unwrap_or(0));
        h.set_size(0);
        if matches!(kind, T::Char | T::Block) {
            let num = |n: i64| u32::try_from(n).map_err(|_| bad(format!("device number {n}")));
            h.set_device_major(num(e.dev_major)?)
                .map_err(|x| bad(x.to_string()))?;
            h.set_device_minor(num(e.dev_minor)?)
                .map_err(|x| bad(x.to_string()))?;
        }
        let mut xattrs = Vec::new();
        // A layer cannot mark its own files: only the skeleton's marks are nestfs's.
        for (k, v) in e
            .xattrs
            .iter()
            .filter(|(k, _)| k.as_bytes() != MARK.to_bytes())
        {
            let value = base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|x| bad(format!("xattr {k}: {x}")))?;
            xattrs.push((format!("SCHILY.xattr.{k}"), value));
        }
        if !xattrs.is_empty() {
            b.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(|x| bad(x.to_string()))?;
        }
        let added = match kind {
            T::Symlink | T::Link => b.append_link(&mut h, name, &e.link_name),
            _ => b.append_data(&mut h, name, io::empty()),
        };
        added.map_err(|x| bad(x.to_string()))?;
    }
    b.into_inner()
        .map_err(|e| ImageError::Invalid(format!("eStargz TOC: {e}")))
}
