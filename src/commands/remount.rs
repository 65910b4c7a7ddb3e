//! `remount [ID]...` (not a GrootFS command): serves images again whose daemon died or whose
//! mount is gone (after a reboot), keeping what their containers wrote. Without ids: every
//! image that needs it; one deleted meanwhile is skipped.

use serde_json::json;

use super::{Ctx, Output};
use crate::lifecycle;

pub fn run(ctx: &Ctx, ids: &[String]) -> Output {
    let store = ctx.store;
    store.meta()?;
    let _g = ctx.lock(false)?;
    let ids = super::ids_or_all(store, ids)?;
    let mut served = Vec::new();
    for id in ids {
        if lifecycle::remount(store, &id)? {
            ctx.log.info("remounted", json!({ "id": id }));
            served.push(store.image_dir(&id).join("rootfs").display().to_string());
        }
    }
    Ok((!served.is_empty()).then(|| served.join("\n")))
}
