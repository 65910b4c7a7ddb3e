//! `delete ID|PATH`: stops an image's daemon and removes the image. Garden calls it for every
//! destroy (on both its plugins) and after a failed create, so an image that is not there is
//! not an error: GrootFS says so on stdout and exits 0.

use serde_json::json;

use super::{Ctx, Output};
use crate::lifecycle;
use crate::store::StoreError;

pub fn run(ctx: &Ctx, id_or_path: &str) -> Output {
    let start = std::time::Instant::now();
    let store = ctx.store;
    if let Err(e) = store.meta() {
        ctx.log.info(
            "no-store",
            json!({ "id": id_or_path, "error": e.to_string() }),
        );
        return Ok(None);
    }
    // Not only complete images: also one a killed create left half-made, as Garden deletes
    // what it failed to create.
    let id = match store.lookup(id_or_path) {
        Ok(id) => id,
        Err(e @ (StoreError::NotFound(_) | StoreError::OutsideStore(_))) => {
            match store
                .id_of(id_or_path)
                .filter(|i| store.image_dir(i).exists())
            {
                Some(half_made) => half_made,
                None => {
                    ctx.log
                        .info("id-not-found-skipping", json!({ "id": id_or_path }));
                    return Ok(Some(format!("{e} Skipping delete.")));
                }
            }
        }
        Err(e) => return Err(e.into()),
    };
    let _g = ctx.lock(false)?;
    if lifecycle::delete(store, &id)? {
        ctx.log.info("deleted", json!({ "id": id }));
        ctx.metrics.duration("ImageDeletionTime", start);
        ctx.emit_layer_usage();
    } else {
        ctx.log.info("id-not-found-skipping", json!({ "id": id }));
    }
    Ok(None)
}
