//! Image references and sources: registries (`docker://`), OCI layouts (`oci://`) and rootfs
//! tarballs. The store calls [`ImageRef::parse`], then [`resolve`], then
//! [`ResolvedImage::unpack_layer`] for every layer it does not have yet, each into an empty
//! directory of its own tmp area. A layer is streamed once through digest check, decompression,
//! diff_id check and unpacking. A foreign layer (one with `urls`) missing from its layout or
//! registry is fetched from its URLs and checked the same way.

mod foreign;
mod layout;
mod manifest;
mod reference;
mod registry;
mod transport;
mod trusted_leaf;
mod verify;

use std::path::{Path, PathBuf};

pub use reference::{Select, Source};
pub use registry::{Registry, Remote};
pub use verify::{chain_ids, sha256_digest, sha256_hex};

use crate::unpack::{UnpackOptions, UnpackStats};

/// Errors with the one-line, user-facing message Garden shows its users.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error(
        "unauthorized: invalid username/password: the registry refused the credentials for {0}"
    )]
    Unauthorized(String),
    /// An anonymous pull refused: GrootFS's words, as a registry hides what is private.
    #[error("{0} does not exist or you do not have permissions to see it.")]
    Denied(String),
    /// An untrusted certificate from a registry not listed as insecure: GrootFS's words, then
    /// where else the registry can be listed, then the cause.
    #[error(
        "This registry is insecure. To pull images from this registry, please use the --insecure-registry option (or create.insecure_registries in the config file). {registry}: {reason}"
    )]
    InsecureRegistry { registry: String, reason: String },
    #[error("registry unreachable for {name}: {reason}")]
    Unreachable { name: String, reason: String },
    #[error("invalid image: {0}")]
    Invalid(String),
    #[error("foreign layer {digest} could not be fetched: {reason}")]
    Foreign { digest: String, reason: String },
    #[error("remote layer client certificates in {}: {reason}", path.display())]
    Certificates { path: PathBuf, reason: String },
    #[error("invalid base image: {0}")]
    BaseImage(String),
    /// `kind`: GrootFS's name for the digest, `layerID` (the blob) or `diffID` (its tar).
    #[error("{kind} digest mismatch: {what} has digest {got}")]
    DigestMismatch {
        kind: &'static str,
        what: String,
        got: String,
    },
    #[error(
        "layer size is different from the value in the manifest; expected: {want}, actual \
         {got} ({what})"
    )]
    SizeMismatch { what: String, want: u64, got: u64 },
    /// `needed`: what the layer had unpacked when it went over.
    #[error("layer exceeds the allowed size of {limit} bytes")]
    TooLarge { limit: u64, needed: u64 },
    #[error(
        "layer {digest} unpacks to more than {limit} bytes, over {ratio} times its compressed \
         size of {compressed}: refused as a decompression bomb (create.max_layer_expansion in \
         the config file raises the bound; 0 lifts it)"
    )]
    Expansion {
        digest: String,
        compressed: u64,
        ratio: u64,
        limit: u64,
    },
    /// The filesystem unpacked into is full (ENOSPC, or a quota); `needed`: what the layer had
    /// unpacked when it ran out.
    #[error("no space left on device unpacking a layer of at least {needed} bytes")]
    NoSpace { needed: u64 },
    #[error("layer has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    /// The cause is in the message (as Go words it), not a source: anyhow's chain would
    /// print it a second time.
    #[error("{what}: {}", os_error_text(cause))]
    Io { what: String, cause: std::io::Error },
}

/// An OS error as Go prints it ("no such file or directory"), as GrootFS's messages have it.
pub fn os_error_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    let mut c = text.chars();
    c.next()
        .map(|f| f.to_lowercase().chain(c).collect())
        .unwrap_or_default()
}

/// Credentials and registry settings from `create`'s flags and the config file.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    pub username: Option<String>,
    pub password: Option<String>,
    /// `host[:port]` registries whose certificates are not verified, or reached over plain
    /// HTTP when they do not speak HTTPS.
    pub insecure_registries: Vec<String>,
    /// Do not verify layer digests / diff_ids (GrootFS's `--skip-layer-validation`).
    pub skip_layer_validation: bool,
    /// TLS material for fetching foreign layers (`create.remote_layer_client_certificates_path`).
    pub remote_layer_certs: Option<PathBuf>,
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
    /// Where a foreign layer's blob may be fetched when its source lacks it.
    pub urls: Vec<String>,
    /// An eStargz layer's TOC digest (its descriptor's annotation).
    pub toc_digest: Option<String>,
}

/// What a source's manifest and config say of an image.
struct Described {
    /// The config as stored.
    config: Vec<u8>,
    env: Vec<String>,
    /// Bottom first, chain ids filled in.
    layers: Vec<LayerInfo>,
}

enum Origin {
    Layout(PathBuf),
    Tarball(PathBuf),
    Registry(Box<registry::Registry>),
}

/// An image whose manifest and config have been fetched; layers not yet.
pub struct ResolvedImage {
    /// Environment from the image config (`KEY=value`), for the runtime spec.
    pub env: Vec<String>,
    /// The image config as its source has it (a tarball has none).
    pub config: Option<Vec<u8>>,
    /// Bottom layer first.
    pub layers: Vec<LayerInfo>,
    origin: Origin,
    verify: bool,
    remote_layer_certs: Option<PathBuf>,
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
            urls: d.urls.clone(),
            toc_digest: d
                .annotations
                .get(crate::estargz::TOC_DIGEST_ANNOTATION)
                .cloned(),
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
            let d = tokio::task::spawn_blocking(move || layout::resolve(&p, &select))
                .await
                .expect("resolve task")?;
            Ok(ResolvedImage {
                env: d.env,
                config: Some(d.config),
                layers: d.layers,
                origin: Origin::Layout(path),
                verify,
                remote_layer_certs: opts.remote_layer_certs.clone(),
            })
        }
        Source::Tarball(path) => {
            let p = path.clone();
            let digest = tokio::task::spawn_blocking(move || -> Result<String, ImageError> {
                let f = std::fs::File::open(&p).map_err(|e| ImageError::Io {
                    what: format!("open {}", p.display()),
                    cause: e,
                })?;
                let (d, _) = verify::Hashing::new(f)
                    .finish()
                    .map_err(|e| ImageError::Io {
                        what: format!("read {}", p.display()),
                        cause: e,
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
                urls: Vec::new(),
                toc_digest: None,
            };
            Ok(ResolvedImage {
                env: Vec::new(),
                config: None,
                layers: vec![layer],
                origin: Origin::Tarball(path.clone()),
                verify,
                remote_layer_certs: opts.remote_layer_certs.clone(),
            })
        }
        Source::Registry {
            registry,
            repository,
            reference,
        } => {
            let (r, d) = registry::resolve(registry, repository, reference, opts).await?;
            Ok(ResolvedImage {
                env: d.env,
                config: Some(d.config),
                layers: d.layers,
                origin: Origin::Registry(Box::new(r)),
                verify,
                remote_layer_certs: opts.remote_layer_certs.clone(),
            })
        }
    }
}

/// What reads a layer's uncompressed tar, on a blocking thread.
pub trait Consume<T>:
    FnOnce(&mut dyn std::io::Read) -> Result<T, ImageError> + Send + 'static
{
}
impl<T, F: FnOnce(&mut dyn std::io::Read) -> Result<T, ImageError> + Send + 'static> Consume<T>
    for F
{
}

impl ResolvedImage {
    /// Streams layer `index` once through download, digest check, decompression and unpack into
    /// `dest` (an existing empty directory), then checks the diff_id. On error `dest` may hold
    /// a partial layer: the caller removes it. An eStargz layer's own entries (its TOC and
    /// landmark) are left out, so the volume is the image's files only.
    pub async fn unpack_layer(
        &self,
        index: usize,
        dest: &Path,
        opts: &UnpackOptions,
        progress: &indicatif::ProgressBar,
    ) -> Result<UnpackStats, ImageError> {
        let (dest, mut opts) = (dest.to_path_buf(), opts.clone());
        opts.skip_estargz_entries = self.layers[index].toc_digest.is_some();
        self.read_layer(index, progress, move |tar| {
            crate::unpack::unpack(tar, &dest, &opts)
        })
        .await
    }

    /// Streams layer `index` once through download, digest check and decompression into
    /// `consume`, then checks the diff_id (unless validation is skipped).
    pub async fn read_layer<T: Send + 'static>(
        &self,
        index: usize,
        progress: &indicatif::ProgressBar,
        consume: impl Consume<T>,
    ) -> Result<T, ImageError> {
        let layer = self.layers[index].clone();
        let progress = progress.clone();
        let verify = self.verify;
        match &self.origin {
            Origin::Layout(dir) => {
                let blob = layout::blob_path(dir, &layer.digest)?;
                if !layer.urls.is_empty() && !blob.exists() {
                    return self.read_foreign(layer, progress, consume).await;
                }
                tokio::task::spawn_blocking(move || {
                    let f = std::fs::File::open(&blob).map_err(|e| ImageError::Io {
                        what: format!("open {}", blob.display()),
                        cause: e,
                    })?;
                    let f = progress.wrap_read(f);
                    let checks = if verify {
                        verify::Checks::ALL
                    } else {
                        verify::Checks::NONE
                    };
                    verify::read_layer(f, &layer, checks, consume)
                })
                .await
                .expect("unpack task")
            }
            Origin::Tarball(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let f = std::fs::File::open(&path).map_err(|e| ImageError::Io {
                        what: format!("open {}", path.display()),
                        cause: e,
                    })?;
                    // The volume key is the file's hash: nothing to verify against.
                    let f = progress.wrap_read(f);
                    verify::read_layer(f, &layer, verify::Checks::NONE, consume)
                })
                .await
                .expect("unpack task")
            }
            Origin::Registry(r) => match r.blob(&layer).await {
                Err(ImageError::NotFound(_)) if !layer.urls.is_empty() => {
                    self.read_foreign(layer, progress, consume).await
                }
                stream => read_download(stream?, layer, verify, progress, consume).await,
            },
        }
    }

    /// The registry the image came from, if it came from one.
    pub fn registry(&self) -> Option<&Registry> {
        match &self.origin {
            Origin::Registry(r) => Some(r),
            _ => None,
        }
    }

    /// A foreign layer from its URLs.
    async fn read_foreign<T: Send + 'static>(
        &self,
        layer: LayerInfo,
        progress: indicatif::ProgressBar,
        consume: impl Consume<T>,
    ) -> Result<T, ImageError> {
        let stream = foreign::fetch(&layer, self.remote_layer_certs.as_deref()).await?;
        read_download(stream, layer, self.verify, progress, consume).await
    }
}

/// [`ResolvedImage::read_layer`] for a layer of `registry` known only by its descriptor (a
/// lazily pulled layer being completed).
pub async fn read_registry_layer<T: Send + 'static>(
    registry: &Registry,
    layer: &LayerInfo,
    consume: impl Consume<T>,
) -> Result<T, ImageError> {
    let stream = registry.blob(layer).await?;
    let hidden = indicatif::ProgressBar::hidden();
    read_download(stream, layer.clone(), true, hidden, consume).await
}

/// Reads a blob coming off the network. Its digest and size are always checked, whatever
/// `--skip-layer-validation` says: only the diff_id check (`verify_tar`) may be skipped.
async fn read_download<T: Send + 'static>(
    stream: impl tokio::io::AsyncRead + Send + Unpin + 'static,
    layer: LayerInfo,
    verify_tar: bool,
    progress: indicatif::ProgressBar,
    consume: impl Consume<T>,
) -> Result<T, ImageError> {
    let bridge = progress.wrap_read(tokio_util::io::SyncIoBridge::new(stream));
    tokio::task::spawn_blocking(move || {
        let checks = verify::Checks {
            blob: true,
            diff_id: verify_tar,
        };
        verify::read_layer(bridge, &layer, checks, consume)
    })
    .await
    .expect("unpack task")
}
