//! `delete-store`: removes every image and the store. A path that does not exist is fine; a
//! directory that is not a store is left alone and refused.

use serde_json::json;

use super::{Ctx, Output};

pub fn run(ctx: &Ctx) -> Output {
    let store = ctx.store;
    let root = store.root();
    if !root.exists() {
        ctx.log.info("store-not-found", json!({ "store": root }));
        return Ok(None);
    }
    // A store whose store.json is gone (a delete-store killed half-way) still has images and
    // volumes to remove: those say it is one.
    let looks_like_a_store = ["store.json", "images", "volumes"]
        .iter()
        .any(|p| root.join(p).exists());
    if !looks_like_a_store {
        anyhow::bail!(
            "{} does not look like a store (no store.json, images or volumes): not deleting it",
            root.display()
        );
    }
    let _g = root
        .join("locks")
        .exists()
        .then(|| ctx.lock(true))
        .transpose()?;
    crate::lifecycle::delete_store(store)?;
    ctx.log.info("deleted", json!({ "store": root }));
    Ok(None)
}
