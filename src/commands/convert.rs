//! `convert`: writes an eStargz copy of an image (any source `create` takes) as a new OCI
//! layout, so images can be lazily pulled without containerd's tools. Each layer is
//! verified as it is read, rewritten, then read back through the TOC (every chunk against
//! its digest) before the layout is moved into place: a failed or killed convert leaves
//! nothing at the destination.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rustix::fs::FlockOperation;
use serde_json::{Value, json};

use super::{Ctx, Output};
use crate::estargz::{self, reader, writer};
use crate::image::{self, ImageRef, PullOptions};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub struct Request {
    pub image: String,
    /// The new OCI layout's directory (must not exist, or be empty).
    pub dest: PathBuf,
    /// Its `org.opencontainers.image.ref.name`.
    pub tag: Option<String>,
    pub opts: PullOptions,
    pub chunk_size: u64,
    /// Paths to put first, in the prefetch area (one per line in the file given).
    pub prefetch: Vec<String>,
}

pub fn run(ctx: &Ctx, req: Request) -> Output {
    let image_ref = ImageRef::parse(&req.image)?;
    let dest = std::path::absolute(&req.dest)
        .with_context(|| format!("destination {}", req.dest.display()))?;
    match std::fs::read_dir(&dest) {
        Ok(d) => {
            if d.into_iter().next().is_some() {
                bail!("destination {} exists and is not empty", dest.display())
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("destination {}", dest.display())),
    }
    let parent = dest
        .parent()
        .context("destination has no parent directory")?;
    let name = dest.file_name().context("destination has no name")?;
    let prefix = format!(".{}.converting-", name.to_string_lossy());
    sweep(parent, &prefix);
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(parent)
        .with_context(|| format!("make a directory in {}", parent.display()))?;
    // Held until this process ends: how a later convert tells a killed one's debris.
    let _busy = lock(tmp.path(), FlockOperation::LockExclusive)
        .with_context(|| format!("lock {}", tmp.path().display()))?;
    let rt = super::runtime()?;
    ctx.log.info("resolving", json!({ "image": req.image }));
    let resolved = rt.block_on(image::resolve(&image_ref, &req.opts))?;
    let blobs = tmp.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let opts = writer::Options {
        chunk_size: req.chunk_size,
        ..writer::Options::default()
    };
    let mut layers = Vec::new();
    let mut missing: Option<Vec<String>> = None;
    for i in 0..resolved.layers.len() {
        ctx.log.info(
            "converting-layer",
            json!({ "digest": resolved.layers[i].digest }),
        );
        let tar = tempfile::tempfile_in(tmp.path())?;
        let spool = tar.try_clone()?;
        let hidden = indicatif::ProgressBar::hidden();
        rt.block_on(resolved.read_layer(i, &hidden, move |r| {
            let mut w = BufWriter::new(spool);
            std::io::copy(r, &mut w)
                .and_then(|_| w.flush())
                .map_err(|e| image::ImageError::Io {
                    what: "spool layer".into(),
                    cause: e,
                })
        }))?;
        let w = convert_layer(&tar, &blobs, &req.prefetch, &opts)
            .with_context(|| format!("convert layer {}", resolved.layers[i].digest))?;
        // A name is missing when no layer has it.
        missing = Some(match missing {
            None => w.missing.clone(),
            Some(m) => m.into_iter().filter(|n| w.missing.contains(n)).collect(),
        });
        layers.push(w);
    }
    let config = config(resolved.config.as_deref(), &layers)?;
    let config_desc = put_blob(&blobs, CONFIG, &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config_desc,
        "layers": layers.iter().map(|l| json!({
            "mediaType": LAYER,
            "digest": l.digest,
            "size": l.size,
            "annotations": {
                estargz::TOC_DIGEST_ANNOTATION: l.toc_digest,
                estargz::UNCOMPRESSED_SIZE_ANNOTATION: l.uncompressed_size.to_string(),
            },
        })).collect::<Vec<_>>(),
    });
    let mut manifest_desc = put_blob(&blobs, MANIFEST, &serde_json::to_vec(&manifest)?)?;
    if let Some(tag) = &req.tag {
        manifest_desc["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_desc],
    });
    std::fs::write(tmp.path().join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(
        tmp.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    place(tmp, &dest)?;
    let reference = match &req.tag {
        Some(t) => format!("oci://{}:{t}", dest.display()),
        None => format!("oci://{}", dest.display()),
    };
    let out = json!({
        "image": reference,
        "layers": layers.iter().map(|l| json!({
            "digest": l.digest,
            "size": l.size,
            "diff_id": l.diff_id,
            "toc_digest": l.toc_digest,
        })).collect::<Vec<_>>(),
        "missing_prefetch": missing.unwrap_or_default(),
    });
    Ok(Some(serde_json::to_string_pretty(&out)?))
}

/// Writes one layer's blob from its spooled tar, reads it back through its TOC, and files
/// it under its digest.
fn convert_layer(
    tar: &File,
    blobs: &Path,
    prefetch: &[String],
    opts: &writer::Options,
) -> anyhow::Result<writer::Written> {
    let mut out = tempfile::NamedTempFile::new_in(blobs)?;
    let written = {
        let mut w = BufWriter::new(out.as_file_mut());
        let written = writer::write(tar, prefetch, opts, &mut w)?;
        w.flush()?;
        written
    };
    let blob = out.as_file_mut();
    blob.rewind()?;
    let index = reader::open(&*blob, &written.toc_digest).context("read back")?;
    for chunk in index.chunks()? {
        index.read(&*blob, &chunk).context("read back")?;
    }
    let hex = written.digest.trim_start_matches("sha256:");
    let blob = out.persist(blobs.join(hex))?;
    blob.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    Ok(written)
}

/// The source's config with the new layers' diff_ids (a tarball's gets a minimal one).
fn config(source: Option<&[u8]>, layers: &[writer::Written]) -> anyhow::Result<Vec<u8>> {
    let mut config: Value = match source {
        Some(raw) => serde_json::from_slice(raw).context("image config")?,
        None => json!({
            "architecture": match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            },
            "os": "linux",
        }),
    };
    config["rootfs"] = json!({
        "type": "layers",
        "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
    });
    Ok(serde_json::to_vec(&config)?)
}

/// Stores `data` under its digest; returns its descriptor.
fn put_blob(blobs: &Path, media_type: &str, data: &[u8]) -> anyhow::Result<Value> {
    let digest = image::sha256_hex(data);
    std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), data)?;
    Ok(json!({ "mediaType": media_type, "digest": digest, "size": data.len() }))
}

/// Removes what converts to the same destination that were killed left in `parent` (their
/// work directories, `<prefix>*`, unlocked and untouched for a minute: a convert starting
/// now has not locked its own yet).
fn sweep(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let stale = e.file_name().to_string_lossy().starts_with(prefix)
            && e.metadata().is_ok_and(|m| {
                m.is_dir()
                    && m.modified()
                        .is_ok_and(|t| t.elapsed().unwrap_or_default() > STALE)
            });
        if stale && let Ok(_held) = lock(&e.path(), FlockOperation::NonBlockingLockExclusive) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// How long a killed convert's work directory stays before another convert removes it.
const STALE: std::time::Duration = std::time::Duration::from_secs(60);

/// Directory `dir`, locked with `how`.
fn lock(dir: &Path, how: FlockOperation) -> std::io::Result<File> {
    let f = File::open(dir)?;
    rustix::fs::flock(&f, how)?;
    Ok(f)
}

/// Moves the finished layout to `dest` (replacing an empty directory there).
fn place(tmp: tempfile::TempDir, dest: &Path) -> anyhow::Result<()> {
    if dest.is_dir() {
        std::fs::remove_dir(dest).with_context(|| format!("replace {}", dest.display()))?;
    }
    std::fs::rename(tmp.path(), dest)
        .with_context(|| format!("move the layout to {}", dest.display()))?;
    let _ = tmp.keep();
    std::fs::set_permissions(dest, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(())
}
