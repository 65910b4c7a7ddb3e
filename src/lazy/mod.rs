//! Lazy pulling of eStargz layers from registries. `create` fetches a layer's footer and TOC
//! only (two range requests), checks the TOC against the manifest's digest, and makes the
//! volume a skeleton: every entry as a full pull would make it, but regular files sparse, at
//! their size, marked with [`MARK`]. The image's daemon fills a marked file before any of its
//! data is read ([`fill::Filler`], the overlay's [`nestfs_fuse::Fetch`]): one range request
//! for the file's gzip members, each chunk checked against the TOC. In the background the
//! daemon streams the whole blob once (digest and diff_id checked as in a full pull), fills
//! what is still missing and makes the volume an ordinary one.

pub mod fill;
mod skeleton;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::estargz::{self, reader};
use crate::image::{ImageError, LayerInfo, Registry, Remote};
use crate::unpack::{UnpackOptions, UnpackStats};

/// Marks a file of a lazy volume whose data is not all there yet: `<tag>:<index>`, the
/// volume key's first 16 characters and the file's entry in the TOC. Short enough for
/// the inode to hold it: on ext4 a value over about 30 bytes costs every file a block of its
/// own, which made the skeleton several times slower to create.
pub const MARK: &std::ffi::CStr = c"user.nestfs.lazy";
const TAG_LEN: usize = 16;
/// Which chunks of a marked file are there (bit i: its i-th chunk), for files fetched chunk
/// by chunk as they are read.
const HAVE: &std::ffi::CStr = c"user.nestfs.lazy.have";

/// What a lazily pulled volume records until it is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LazyLayer {
    pub remote: Remote,
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
    pub toc_digest: String,
    /// Where the TOC's gzip member starts (the end of the last payload member).
    pub toc_offset: u64,
}

impl LazyLayer {
    /// The descriptor a full read of the blob checks against.
    pub fn layer_info(&self) -> LayerInfo {
        LayerInfo {
            chain_id: String::new(),
            diff_id: self.diff_id.clone(),
            digest: self.digest.clone(),
            size: Some(self.size),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            urls: Vec::new(),
            toc_digest: Some(self.toc_digest.clone()),
        }
    }
}

/// The mark of entry `index` of volume `key`'s TOC.
fn mark_value(key: &str, index: usize) -> String {
    format!("{}:{index}", &key[..key.len().min(TAG_LEN)])
}

/// A mark's volume tag and TOC entry index.
fn parse_mark(value: &[u8]) -> Option<(&str, usize)> {
    let (tag, index) = std::str::from_utf8(value).ok()?.split_once(':')?;
    Some((tag, index.parse().ok()?))
}

/// A TOC entry's mtime in seconds (0 when it has none).
fn mtime(e: &estargz::TocEntry) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&e.modtime).map_or(0, |t| t.timestamp())
}

/// The TOC of volume `key` while it is lazy, beside its metadata.
pub fn toc_path(volumes: &Path, key: &str) -> PathBuf {
    volumes.join(format!("{key}.toc.json"))
}

/// The registry to fetch `layer` from lazily, if it can be: an eStargz layer of known size
/// from a registry.
pub fn source<'a>(registry: Option<&'a Registry>, layer: &LayerInfo) -> Option<&'a Registry> {
    registry.filter(|_| layer.toc_digest.is_some() && layer.size.is_some())
}

/// A lazily pulled layer, made in `dest`: what it takes, its record, its TOC.
pub struct Prepared {
    pub stats: UnpackStats,
    pub layer: LazyLayer,
    pub toc: Vec<u8>,
}

/// Fetches `layer`'s footer and TOC from `registry`, checks the TOC, and makes the volume's
/// skeleton in `dest` (an empty directory), named `key` in its files' marks.
pub async fn prepare(
    registry: &Registry,
    layer: &LayerInfo,
    key: &str,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<Prepared, ImageError> {
    let bad =
        |e: reader::Error| ImageError::Invalid(format!("eStargz layer {}: {e}", layer.digest));
    let remote = registry.remote();
    let (Some(size), Some(want)) = (layer.size, layer.toc_digest.clone()) else {
        return Err(ImageError::Invalid(format!(
            "layer {} cannot be pulled lazily",
            layer.digest
        )));
    };
    let footer_at = reader::footer_at(size).map_err(bad)?;
    let footer = registry
        .range(&layer.digest, footer_at, estargz::FOOTER_SIZE as u64)
        .await?;
    let (toc_offset, len) = reader::toc_member(footer_at, &footer).map_err(bad)?;
    let member = registry.range(&layer.digest, toc_offset, len).await?;
    let toc = reader::toc_json(&member).map_err(bad)?;
    let index = reader::Index::parse(&toc, toc_offset, &want).map_err(bad)?;
    let (key, dest, opts) = (key.to_string(), dest.to_path_buf(), opts.clone());
    let stats = tokio::task::spawn_blocking(move || skeleton::build(&index, &key, &dest, &opts))
        .await
        .expect("skeleton task")?;
    Ok(Prepared {
        stats,
        layer: LazyLayer {
            remote,
            digest: layer.digest.clone(),
            size,
            diff_id: layer.diff_id.clone(),
            toc_digest: want,
            toc_offset,
        },
        toc,
    })
}
