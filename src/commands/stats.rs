//! `stats ID|PATH`: an image's disk usage, as JSON.

use serde_json::json;

use super::{Ctx, Output};

pub fn run(ctx: &Ctx, id: &str) -> Output {
    let start = std::time::Instant::now();
    ctx.log.debug("finding", json!({ "id": id }));
    let found = ctx.store.lookup(id)?;
    let usage = crate::lifecycle::stats(ctx.store, &found)?;
    ctx.metrics.duration("ImageStatsTime", start);
    Ok(Some(json!({ "disk_usage": usage }).to_string()))
}
