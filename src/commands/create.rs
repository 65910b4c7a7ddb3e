//! `create IMAGE ID`: pulls what the store lacks, makes the image and starts its daemon, then
//! prints the runtime spec GrootFS prints (root path and env).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use super::{Ctx, Output};
use crate::image::{self, ImageRef, PullOptions};
use crate::store::{ImageMeta, StoreError};
use crate::{daemon, host, lifecycle};

pub struct Request {
    pub image: String,
    pub id: String,
    pub opts: PullOptions,
    pub disk_limit: u64,
    pub exclude: bool,
    /// `Some(threshold)` to clean before creating.
    pub clean: Option<Option<u64>>,
    /// Where the cleaning's logs go (`--clean-log-file`), if not with the others.
    pub clean_log: Option<PathBuf>,
    /// Show progress on stderr (a terminal, and no log level asked for).
    pub progress: bool,
    /// Pull eStargz layers lazily (see [`crate::lazy`]).
    pub lazy: bool,
}

pub fn run(ctx: &Ctx, req: Request) -> Output {
    let start = Instant::now();
    let store = ctx.store;
    // GrootFS words a missing store as an uninitialised one here.
    store.meta().map_err(|e| match e {
        StoreError::NoStore(p) => StoreError::NotInitialised(p),
        e => e,
    })?;
    lifecycle::check_new_id(store, &req.id)?;
    // Say what is missing before pulling anything.
    daemon::preflight()?;
    host::check_mountable(&store.tmp_path("mount-probe")).map_err(anyhow::Error::msg)?;
    if !store.meta()?.rootless && !host::maps_image_ids() {
        anyhow::bail!(
            "the image's owners cannot be set: {}",
            host::narrow_namespace_advice()
        );
    }
    if let Some(threshold) = req.clean {
        let clean_log = match &req.clean_log {
            Some(p) => ctx
                .log
                .to_file(p)
                .with_context(|| format!("open clean log file {}", p.display()))?,
            None => ctx.log.clone(),
        };
        let ignore = &ctx.config.clean.ignore_images;
        super::clean::clean_store(ctx, &clean_log, threshold, ignore, req.progress)?;
    }
    let _g = ctx.lock(false)?;
    let image_ref = ImageRef::parse(&req.image)?;
    let rt = super::runtime()?;
    ctx.log.info("resolving", json!({ "image": req.image }));
    let resolved = rt.block_on(image::resolve(&image_ref, &req.opts))?;
    let quota = (req.disk_limit > 0 && !req.exclude).then_some(req.disk_limit);
    // As GrootFS: refuse before pulling when the compressed layers alone exceed the quota.
    if let Some(limit) = quota {
        let size: u64 = resolved.layers.iter().filter_map(|l| l.size).sum();
        if size > limit {
            return Err(StoreError::LayersExceedQuota { size, limit }.into());
        }
    }
    ctx.log
        .info("pulling", json!({ "layers": resolved.layers.len() }));
    // On a terminal: a line per layer being pulled, in bytes and bytes/s.
    let bars = req.progress.then(indicatif::MultiProgress::new);
    let unpack = Instant::now();
    let expansion = ctx
        .config
        .create
        .max_layer_expansion
        .unwrap_or(crate::store::DEFAULT_MAX_EXPANSION);
    let pulled = rt.block_on(store.pull(
        &resolved,
        &req.image,
        quota,
        expansion,
        req.lazy,
        bars.as_ref(),
    ));
    drop(bars);
    let layers = pulled?;
    // Download and unpack are one streamed pass: its time is GrootFS's UnpackTime.
    ctx.metrics.duration("UnpackTime", unpack);
    let spec = ImageMeta {
        id: req.id.clone(),
        image: req.image.clone(),
        layers,
        env: resolved.env.clone(),
        disk_limit: req.disk_limit,
        exclude_image_from_quota: req.exclude,
    };
    let rootfs = lifecycle::create(store, &spec)?;
    ctx.log
        .info("created", json!({ "id": req.id, "rootfs": rootfs }));
    ctx.metrics.duration("ImageCreationTime", start);
    emit_store_metrics(ctx, req.clean.is_some());
    Ok(Some(
        json!({
            "root": { "path": rootfs },
            // No `mounts` key: Go callers test `Mounts != nil`, and a FUSE rootfs has none.
            "process": { "env": resolved.env },
        })
        .to_string(),
    ))
}

/// What GrootFS emits after each create.
fn emit_store_metrics(ctx: &Ctx, cleaned: bool) {
    if !ctx.metrics.enabled() {
        return;
    }
    if !cleaned {
        ctx.emit_layer_usage();
    }
    let m = ctx.metrics;
    m.usage(
        "DownloadedLayersSizeInBytes",
        ctx.store.volumes_bytes(),
        "bytes",
    );
    m.usage(
        "CommittedQuotaInBytes",
        ctx.store.committed_quota(),
        "bytes",
    );
    if let Ok(used) = ctx.store.used_backing_bytes() {
        m.usage("UsedBackingStoreInBytes", used, "bytes");
    }
}
