//! OCI image layouts on disk (`oci:///path`). Like GrootFS, the layout is trusted for its
//! manifest and config; layer blobs are verified unless validation is skipped.

use std::path::{Path, PathBuf};

use super::manifest::{self, Descriptor, ImageConfig, Manifest, REF_NAME};
use super::reference::Select;
use super::{Described, ImageError};

pub fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let hex = manifest::check_digest(digest)?;
    Ok(layout.join("blobs/sha256").join(hex))
}

fn read_blob(layout: &Path, d: &Descriptor) -> Result<Vec<u8>, ImageError> {
    let p = blob_path(layout, &d.digest)?;
    std::fs::read(&p).map_err(|e| ImageError::Io {
        what: format!("read blob {}", p.display()),
        cause: e,
    })
}

/// Config, env and layers of the selected image.
pub fn resolve(layout: &Path, select: &Select) -> Result<Described, ImageError> {
    let index_path = layout.join("index.json");
    let data = std::fs::read(&index_path).map_err(|e| ImageError::Io {
        what: format!("read {}", index_path.display()),
        cause: e,
    })?;
    let index: Manifest = manifest::parse("index.json", &data)?;
    let entries = index.manifests.unwrap_or_default();
    let chosen = match select {
        Select::Only => match entries.len() {
            1 => &entries[0],
            0 => {
                return Err(ImageError::NotFound(format!(
                    "{} lists no image",
                    index_path.display()
                )));
            }
            n => {
                return Err(ImageError::NotFound(format!(
                    "{} lists {n} images: pick one with :TAG or :@INDEX",
                    layout.display()
                )));
            }
        },
        Select::Tag(tag) => entries
            .iter()
            .find(|d| d.annotations.get(REF_NAME) == Some(tag))
            .ok_or_else(|| {
                ImageError::NotFound(format!("tag {tag:?} not in {}", index_path.display()))
            })?,
        Select::Index(i) => entries.get(*i).ok_or_else(|| {
            ImageError::NotFound(format!("no manifest @{i} in {}", index_path.display()))
        })?,
    };
    let mut desc = chosen.clone();
    let mut m: Manifest = manifest::parse("manifest", &read_blob(layout, &desc)?)?;
    // A nested index (multi-platform layout): pick this machine's manifest.
    if manifest::is_index(&desc.media_type)
        || manifest::is_index(&m.media_type)
        || m.manifests.is_some()
    {
        desc = manifest::pick_platform(m.manifests.as_deref().unwrap_or_default())?.clone();
        m = manifest::parse("manifest", &read_blob(layout, &desc)?)?;
    }
    let config_desc = m
        .config
        .ok_or_else(|| ImageError::Invalid("manifest has no config".into()))?;
    let raw = read_blob(layout, &config_desc)?;
    let config: ImageConfig = manifest::parse("image config", &raw)?;
    let env = config.config.and_then(|c| c.env).unwrap_or_default();
    let layers = super::layers(&m.layers, &config.rootfs.diff_ids)?;
    Ok(Described {
        config: raw,
        env,
        layers,
    })
}
