//! `list`: one image path per line, as GrootFS prints them (scripts feed them to `delete`);
//! `--json` adds each image's state, live usage and limit.

use serde_json::json;

use super::{Ctx, Output};
use crate::lifecycle;

pub fn run(ctx: &Ctx, as_json: bool) -> Output {
    let store = ctx.store;
    store.meta()?;
    let mut rows = Vec::new();
    for id in store.image_ids()? {
        // An image deleted while we list (before or while we ask its daemon) is not listed.
        let Some(meta) = store.image_meta_if_present(&id)? else {
            continue;
        };
        let (state, status) = lifecycle::state(store, &id);
        if store.find_image(&id).is_none() {
            continue;
        }
        rows.push(json!({
            "id": id,
            "path": store.image_dir(&id),
            "state": state.to_string(),
            "exclusive_bytes_used": status.as_ref().map(|s| s.used),
            "daemon_pid": status.as_ref().map(|s| s.pid),
            "keeper_pid": status.as_ref().and_then(|s| s.keeper),
            "quota_size_bytes": meta.disk_limit,
            "exclude_image_from_quota": meta.exclude_image_from_quota,
        }));
    }
    if as_json {
        return Ok(Some(serde_json::Value::Array(rows).to_string()));
    }
    if rows.is_empty() {
        return Ok(Some("Store empty".into()));
    }
    let paths: Vec<&str> = rows.iter().filter_map(|r| r["path"].as_str()).collect();
    Ok(Some(paths.join("\n")))
}
