//! `clean`: removes the layer volumes no image uses, once they take more than a threshold.

use serde_json::json;

use super::{Ctx, Output};
use crate::logging::Logger;

pub fn run(ctx: &Ctx, threshold: Option<u64>, mut ignore: Vec<String>, progress: bool) -> Output {
    // As GrootFS: without a store there is nothing to clean, and that is not a failure.
    if let Err(e) = ctx.store.meta() {
        ctx.log.info("no-store", json!({ "error": e.to_string() }));
        return Ok(None);
    }
    ignore.extend(ctx.config.clean.ignore_images.iter().cloned());
    let threshold = threshold.or(ctx.config.clean_threshold());
    match clean_store(ctx, ctx.log, threshold, &ignore, progress)? {
        None => Ok(Some("threshold not reached: skipping clean".into())),
        Some(_) => Ok(None),
    }
}

/// Sweeps debris and removes unused volumes under the exclusive store lock; None when the
/// volumes are under `threshold`. Also `create --with-clean`'s cleaning, logged to `log`
/// (which `--clean-log-file` may point elsewhere).
pub fn clean_store(
    ctx: &Ctx,
    log: &Logger,
    threshold: Option<u64>,
    ignore: &[String],
    progress: bool,
) -> anyhow::Result<Option<Vec<String>>> {
    let start = std::time::Instant::now();
    let log = log.session("groot-cleaning");
    log.info("starting", json!({ "threshold": threshold }));
    let _g = ctx.lock(true)?;
    crate::lifecycle::sweep(ctx.store);
    // Removing a big image's layers takes a while: say so on a terminal.
    let bar = if progress {
        let b = indicatif::ProgressBar::new_spinner().with_message("removing unused layers");
        b.enable_steady_tick(std::time::Duration::from_millis(100));
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let removed = ctx.store.clean(threshold, ignore, &bar);
    bar.finish_and_clear();
    let removed = removed?;
    log.info("ending", json!({ "volumes": removed }));
    ctx.metrics.duration("ImageCleanTime", start);
    ctx.emit_layer_usage();
    Ok(removed)
}
