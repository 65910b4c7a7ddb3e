//! `init-store`: makes the store (idempotent; a second run with other mappings is refused).

use serde_json::json;

use super::{Ctx, Output};
use crate::store::{IdMapping, StoreMeta};

pub fn run(
    ctx: &Ctx,
    uid_mappings: Vec<IdMapping>,
    gid_mappings: Vec<IdMapping>,
    store_size_bytes: Option<u64>,
) -> Output {
    let euid = rustix::process::geteuid().as_raw();
    // Without root, or as root in a user namespace that cannot map an image's owners
    // (`unshare -Ur`), layers record owners in xattrs instead of chown.
    let rootless = euid != 0 || !crate::host::maps_image_ids();
    // Run as yourself, the container's root is you unless mappings say otherwise.
    let me = |id: u32| {
        vec![IdMapping {
            container: 0,
            host: id,
            size: 1,
        }]
    };
    let (uid_mappings, gid_mappings) =
        if rootless && uid_mappings.is_empty() && gid_mappings.is_empty() {
            (me(euid), me(rustix::process::getegid().as_raw()))
        } else {
            (uid_mappings, gid_mappings)
        };
    let meta = StoreMeta {
        uid_mappings,
        gid_mappings,
        store_size_bytes: store_size_bytes.or(ctx.config.store_size()).unwrap_or(0),
        rootless,
    };
    if ctx.store.meta().is_ok() {
        ctx.log.debug(
            "store-already-initialized",
            json!({ "store": ctx.store.root() }),
        );
    }
    ctx.store.init(&meta)?;
    ctx.log
        .info("initialised", json!({ "store": ctx.store.root() }));
    Ok(None)
}
