//! A lazy volume's skeleton: the TOC's entries as a tar with empty files, unpacked by the
//! same hardened unpacker as any layer (owners, modes, devices, links, whiteouts, xattrs,
//! rootless metadata), then each regular file made sparse at its size and marked.

use std::collections::HashSet;
use std::io;
use std::path::Path;

use base64::Engine;

use super::{HAVE, MARK, mark_value, mtime};
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
    let opts = UnpackOptions {
        skip_estargz_entries: true,
        ..opts.clone()
    };
    // Files count at their full size from the start: the store holds their data soon.
    let data: u64 = index
        .toc
        .entries
        .iter()
        .filter(|e| e.kind == "reg" && !is_metadata_entry(&e.name))
        .map(|e| e.size.div_ceil(4096) * 4096)
        .sum();
    // Bound as a full pull is (the disk limit, the store's free space, the expansion
    // bound), by what the files will take once fetched: before making any, then with what
    // the rest takes.
    let too_large = |needed: u64| ImageError::TooLarge {
        limit: opts.max_bytes,
        needed,
    };
    if data > opts.max_bytes {
        return Err(too_large(data));
    }
    // Each run keeps up to 64 directories open: 8 stay well under the usual 1024 fds.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let phases = phases(&index.toc.entries, threads)
        .into_iter()
        .map(|phase| phase.into_iter().map(|part| tar_of(part, key)).collect())
        .collect::<Result<Vec<_>, _>>()?;
    let stats = unpack::unpack_phases(&phases, dest, &opts)?;
    let bytes = stats.bytes + data;
    if bytes > opts.max_bytes {
        return Err(too_large(bytes));
    }
    Ok(UnpackStats {
        bytes,
        entries: stats.entries,
    })
}

/// The TOC's entries (with their indexes) to unpack phase by phase, each phase's parts at
/// once: directories, then up to `threads` runs of the other entries, then hard links (whose
/// targets are made by then). That is only the TOC's order where nothing depends on an entry
/// of another run: where every name is given once and every entry's parent is a directory
/// entry. Otherwise all goes in order, in one part.
fn phases(entries: &[TocEntry], threads: usize) -> Vec<Vec<Vec<(usize, &TocEntry)>>> {
    // Names through `..` are left out, as the unpacker leaves them out of any layer.
    let listed: Vec<(usize, &TocEntry)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            let name = clean_name(&e.name);
            e.kind != "chunk" && !name.is_empty() && !name.split('/').any(|c| c == "..")
        })
        .collect();
    let dirs: HashSet<&str> = listed
        .iter()
        .filter(|(_, e)| e.kind == "dir")
        .map(|(_, e)| clean_name(&e.name))
        .collect();
    let mut names = HashSet::new();
    let independent = listed.iter().all(|(_, e)| {
        let name = clean_name(&e.name);
        let parent = name.rsplit_once('/').map_or("", |(p, _)| p);
        names.insert(name) && (parent.is_empty() || dirs.contains(parent))
    });
    if !independent {
        return vec![vec![listed]];
    }
    let (dirs, rest): (Vec<_>, Vec<_>) = listed.into_iter().partition(|(_, e)| e.kind == "dir");
    let (links, files): (Vec<_>, Vec<_>) =
        rest.into_iter().partition(|(_, e)| e.kind == "hardlink");
    let runs = files
        .chunks(files.len().div_ceil(threads.max(1)).max(1))
        .map(<[_]>::to_vec)
        .collect();
    [vec![dirs], runs, vec![links]]
        .into_iter()
        .map(|phase: Vec<Vec<_>>| {
            phase
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|phase| !phase.is_empty())
        .collect()
}

/// The TOC's entries as a tar whose regular files are all hole (GNU sparse entries without
/// data, which the unpacker makes at their size without writing a byte) and marked with
/// their entry's index (chunks are data, not entries).
fn tar_of(entries: Vec<(usize, &TocEntry)>, key: &str) -> Result<Vec<u8>, ImageError> {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    for (i, e) in entries {
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
            other => return Err(bad(format!("unknown type {other:?}"))),
        };
        let name = clean_name(&e.name);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        let mut xattrs = Vec::new();
        if kind == T::Regular && e.size > 0 {
            h.set_entry_type(T::GNUSparse);
            let gnu = h.as_gnu_mut().expect("a GNU header");
            gnu.set_real_size(e.size);
            // One block of no data at the end: all hole before it.
            gnu.sparse[0].set_offset(e.size);
            gnu.sparse[0].set_length(0);
            xattrs.push((
                format!("SCHILY.xattr.{}", MARK.to_string_lossy()),
                mark_value(key, i).into_bytes(),
            ));
        }
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
        // A layer cannot mark its own files: only the skeleton's marks are nestfs's.
        let ours = |k: &str| [MARK, HAVE].iter().any(|m| k.as_bytes() == m.to_bytes());
        for (k, v) in e.xattrs.iter().filter(|(k, _)| !ours(k)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A TOC whose one file claims `size` bytes.
    fn index(size: u64) -> Index {
        let json = serde_json::json!({"version": 1, "entries": [
            {"name": "big", "type": "reg", "size": size, "mode": 420, "offset": 10,
             "chunkDigest": "sha256:00"},
        ]})
        .to_string();
        let digest = crate::image::sha256_hex(json.as_bytes());
        Index::parse(json.as_bytes(), 100, &digest).unwrap()
    }

    fn opts(max_bytes: u64) -> UnpackOptions {
        UnpackOptions {
            max_bytes,
            max_entries: 100,
            privileged: false,
            skip_estargz_entries: false,
        }
    }

    /// The names in each part of each phase.
    fn names(entries: &[(&str, &str)], threads: usize) -> Vec<Vec<Vec<String>>> {
        let toc: Vec<TocEntry> = entries
            .iter()
            .map(|(name, kind)| TocEntry {
                name: name.to_string(),
                kind: kind.to_string(),
                ..Default::default()
            })
            .collect();
        phases(&toc, threads)
            .into_iter()
            .map(|phase| {
                phase
                    .into_iter()
                    .map(|part| part.iter().map(|(_, e)| e.name.clone()).collect())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn independent_entries_are_unpacked_in_parallel_runs_after_their_directories() {
        let got = names(
            &[
                ("./", "dir"),
                ("a/", "dir"),
                ("a/1", "reg"),
                ("a/1", "chunk"),
                ("a/2", "symlink"),
                ("b/", "dir"),
                ("b/h", "hardlink"),
                ("b/3", "fifo"),
            ],
            2,
        );
        assert_eq!(
            got,
            [
                vec![vec!["a/", "b/"]],
                vec![vec!["a/1", "a/2"], vec!["b/3"]],
                vec![vec!["b/h"]],
            ]
        );
    }

    #[test]
    fn entries_that_depend_on_each_other_keep_the_tocs_order() {
        // A name given twice: the last one wins, as in a full pull.
        let twice = [("a", "reg"), ("b", "reg"), ("a", "symlink")];
        assert_eq!(names(&twice, 2), [vec![vec!["a", "b", "a"]]]);
        // An entry under a name that is not a directory entry (here a symlink).
        let through = [("l", "symlink"), ("m", "reg"), ("l/x", "reg")];
        assert_eq!(names(&through, 2), [vec![vec!["l", "m", "l/x"]]]);
    }

    #[test]
    fn a_toc_claiming_more_than_the_bound_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = build(&index(1 << 40), "k", dir.path(), &opts(1 << 20)).unwrap_err();
        assert!(
            matches!(err, ImageError::TooLarge { limit, needed } if limit == 1 << 20 && needed >= 1 << 40),
            "{err}"
        );
        let ok = build(&index(1 << 20), "k", dir.path(), &opts(2 << 20)).unwrap();
        assert!(ok.bytes >= 1 << 20);
        let made = std::fs::metadata(dir.path().join("big")).unwrap();
        assert_eq!(made.len(), 1 << 20);
        assert_eq!(std::os::unix::fs::MetadataExt::blocks(&made), 0, "all hole");
    }
}
