//! Image references and sources (interface; the implementation lands with the image work).
//!
//! The store calls [`ImageRef::parse`], then [`resolve`], then [`ResolvedImage::unpack_layer`]
//! for every layer it does not have yet, each into an empty directory of its own tmp area.

use std::path::Path;

use crate::unpack::{UnpackOptions, UnpackStats};

/// Errors with the one-line, user-facing message Garden shows its users.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The IMAGE argument is not a reference nestfs understands.
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    /// Anything not yet implemented.
    #[error("{0} is not supported yet")]
    Unsupported(String),
    /// The unpacked image would exceed the allowed size.
    #[error("layer exceeds the allowed size of {limit} bytes")]
    TooLarge { limit: u64 },
}

/// Credentials and registry settings from `create`'s flags and the config file.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    pub username: Option<String>,
    pub password: Option<String>,
    /// `host[:port]` registries to reach over plain http (or https without verification).
    pub insecure_registries: Vec<String>,
    /// Do not verify layer digests / diff_ids (GrootFS's `--skip-layer-validation`).
    pub skip_layer_validation: bool,
}

/// A parsed IMAGE argument: `docker://...`, `oci:///...` or a rootfs tarball path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The string as the user gave it (recorded in image metadata, matched by `clean --ignore-image`).
    pub original: String,
}

impl ImageRef {
    /// Parses an IMAGE argument.
    pub fn parse(s: &str) -> Result<ImageRef, ImageError> {
        Err(ImageError::BadReference {
            reference: s.to_string(),
            reason: "image sources are not implemented yet".into(),
        })
    }
}

/// One layer of a resolved image, bottom layer first in [`ResolvedImage::layers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// `sha256:<hex>` chain id: the store's volume key, shared by every image with this stack.
    pub chain_id: String,
    /// `sha256:<hex>` digest of the uncompressed tar (from the image config).
    pub diff_id: String,
    /// `sha256:<hex>` digest of the blob as stored/transferred.
    pub digest: String,
    /// Blob size from the manifest, if known.
    pub size: Option<u64>,
    pub media_type: String,
}

/// An image whose manifest and config have been fetched; layers not yet.
#[derive(Debug)]
pub struct ResolvedImage {
    /// Environment from the image config (`KEY=value`), for the runtime spec.
    pub env: Vec<String>,
    /// Bottom layer first.
    pub layers: Vec<LayerInfo>,
}

/// Fetches manifest and config for `image` (network I/O for registries, bounded by timeouts).
pub async fn resolve(image: &ImageRef, _opts: &PullOptions) -> Result<ResolvedImage, ImageError> {
    Err(ImageError::Unsupported(image.original.clone()))
}

impl ResolvedImage {
    /// Streams layer `index` once through download, digest check, decompression and unpack into
    /// `dest` (an existing empty directory), then checks the diff_id.
    pub async fn unpack_layer(
        &self,
        index: usize,
        _dest: &Path,
        _opts: &UnpackOptions,
    ) -> Result<UnpackStats, ImageError> {
        Err(ImageError::Unsupported(format!("layer {index}")))
    }
}
