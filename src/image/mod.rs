//! Image references and sources: registries (`docker://`), OCI layouts (`oci://`) and rootfs
//! tarballs. The store calls [`ImageRef::parse`], then [`resolve`], then
//! [`ResolvedImage::unpack_layer`] for every layer it does not have yet, each into an empty
//! directory of its own tmp area. A layer is streamed once through digest check, decompression,
//! diff_id check and unpacking.

mod layout;
mod manifest;
mod reference;
mod registry;
mod verify;

use std::path::{Path, PathBuf};

pub use reference::{Select, Source};
pub use verify::chain_ids;

use crate::unpack::{UnpackOptions, UnpackStats};

/// Errors with the one-line, user-facing message Garden shows its users.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("unauthorized: the registry refused the credentials for {0}")]
    Unauthorized(String),
    #[error("registry unreachable for {name}: {reason}")]
    Unreachable { name: String, reason: String },
    #[error("invalid image: {0}")]
    Invalid(String),
    #[error("{what}: digest mismatch (got {got})")]
    DigestMismatch { what: String, got: String },
    #[error("{what}: size mismatch (manifest says {want} bytes, got {got})")]
    SizeMismatch { what: String, want: u64, got: u64 },
    /// `needed`: what the layer had unpacked when it went over.
    #[error("layer exceeds the allowed size of {limit} bytes")]
    TooLarge { limit: u64, needed: u64 },
    /// The filesystem unpacked into is full (ENOSPC, or a quota); `needed`: what the layer had
    /// unpacked when it ran out.
    #[error("no space left on device unpacking a layer of at least {needed} bytes")]
    NoSpace { needed: u64 },
    #[error("layer has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Credentials and registry settings from `create`'s flags and the config file.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    pub username: Option<String>,
    pub password: Option<String>,
    /// `host[:port]` registries to reach over plain http.
    pub insecure_registries: Vec<String>,
    /// Do not verify layer digests / diff_ids (GrootFS's `--skip-layer-validation`).
    pub skip_layer_validation: bool,
}

/// A parsed IMAGE argument: `docker://...`, `oci:///...` or a rootfs tarball path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The string as the user gave it (recorded in image metadata, matched by `clean --ignore-image`).
    pub original: String,
    pub source: Source,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, ImageError> {
        Ok(ImageRef {
            original: s.to_string(),
            source: reference::parse(s)?,
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

enum Origin {
    Layout(PathBuf),
    Tarball(PathBuf),
    Registry(registry::Registry),
}

/// An image whose manifest and config have been fetched; layers not yet.
pub struct ResolvedImage {
    /// Environment from the image config (`KEY=value`), for the runtime spec.
    pub env: Vec<String>,
    /// Bottom layer first.
    pub layers: Vec<LayerInfo>,
    origin: Origin,
    verify: bool,
}

/// Pairs manifest layers with the config's diff_ids and computes chain ids.
fn layers(
    descs: &[manifest::Descriptor],
    diff_ids: &[String],
) -> Result<Vec<LayerInfo>, ImageError> {
    if descs.len() != diff_ids.len() {
        return Err(ImageError::Invalid(format!(
            "manifest has {} layers but the config {} diff_ids",
            descs.len(),
            diff_ids.len()
        )));
    }
    let chains = chain_ids(diff_ids);
    Ok(descs
        .iter()
        .zip(diff_ids)
        .zip(chains)
        .map(|((d, diff), chain)| LayerInfo {
            chain_id: chain,
            diff_id: diff.clone(),
            digest: d.digest.clone(),
            size: d.size,
            media_type: d.media_type.clone(),
        })
        .collect())
}

/// Fetches manifest and config for `image` (network I/O for registries, bounded by timeouts).
pub async fn resolve(image: &ImageRef, opts: &PullOptions) -> Result<ResolvedImage, ImageError> {
    let verify = !opts.skip_layer_validation;
    match &image.source {
        Source::Layout { path, select } => {
            let (path, select) = (path.clone(), select.clone());
            let p = path.clone();
            let (env, layers) = tokio::task::spawn_blocking(move || layout::resolve(&p, &select))
                .await
                .expect("resolve task")?;
            Ok(ResolvedImage {
                env,
                layers,
                origin: Origin::Layout(path),
                verify,
            })
        }
        Source::Tarball(path) => {
            let p = path.clone();
            let digest = tokio::task::spawn_blocking(move || -> Result<String, ImageError> {
                let f = std::fs::File::open(&p).map_err(|e| ImageError::Io {
                    what: format!("open {}", p.display()),
                    source: e,
                })?;
                let (d, _) = verify::Hashing::new(f)
                    .finish()
                    .map_err(|e| ImageError::Io {
                        what: format!("read {}", p.display()),
                        source: e,
                    })?;
                Ok(d)
            })
            .await
            .expect("hash task")?;
            // The file's content hash keys the volume: a changed file is a new layer.
            let layer = LayerInfo {
                chain_id: digest.clone(),
                diff_id: digest.clone(),
                digest,
                size: None,
                media_type: "application/x-tar".into(),
            };
            Ok(ResolvedImage {
                env: Vec::new(),
                layers: vec![layer],
                origin: Origin::Tarball(path.clone()),
                verify,
            })
        }
        Source::Registry {
            registry,
            repository,
            reference,
        } => {
            let (r, env, layers) = registry::resolve(registry, repository, reference, opts).await?;
            Ok(ResolvedImage {
                env,
                layers,
                origin: Origin::Registry(r),
                verify,
            })
        }
    }
}

impl ResolvedImage {
    /// Streams layer `index` once through download, digest check, decompression and unpack into
    /// `dest` (an existing empty directory), then checks the diff_id. On error `dest` may hold
    /// a partial layer: the caller removes it.
    pub async fn unpack_layer(
        &self,
        index: usize,
        dest: &Path,
        opts: &UnpackOptions,
    ) -> Result<UnpackStats, ImageError> {
        let layer = self.layers[index].clone();
        let (dest, opts, verify) = (dest.to_path_buf(), opts.clone(), self.verify);
        match &self.origin {
            Origin::Layout(dir) => {
                let blob = layout::blob_path(dir, &layer.digest)?;
                tokio::task::spawn_blocking(move || {
                    let f = std::fs::File::open(&blob).map_err(|e| ImageError::Io {
                        what: format!("open {}", blob.display()),
                        source: e,
                    })?;
                    verify::unpack_layer(f, &layer, &dest, &opts, verify, verify)
                })
                .await
                .expect("unpack task")
            }
            Origin::Tarball(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let f = std::fs::File::open(&path).map_err(|e| ImageError::Io {
                        what: format!("open {}", path.display()),
                        source: e,
                    })?;
                    // The volume key is the file's hash: nothing to verify against.
                    verify::unpack_layer(f, &layer, &dest, &opts, false, false)
                })
                .await
                .expect("unpack task")
            }
            Origin::Registry(r) => {
                let stream = r.blob(&layer).await?;
                let bridge = tokio_util::io::SyncIoBridge::new(stream);
                tokio::task::spawn_blocking(move || {
                    // Digests are always checked for what crosses the network.
                    verify::unpack_layer(bridge, &layer, &dest, &opts, true, verify)
                })
                .await
                .expect("unpack task")
            }
        }
    }
}
