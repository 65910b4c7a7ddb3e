//! `upgrade [ID]...` (not a GrootFS command): after a new nestfs is installed, hands each served
//! image to a daemon of it, with no unmount and no container restart. The keeper holding the
//! image's FUSE connection starts the installed binary as it would after a crash (see
//! docs/failover.md). Without ids: every served image. Prints `ID: OLD -> NEW` (daemon pids).

use serde_json::json;

use super::{Ctx, Output};
use crate::lifecycle;

pub fn run(ctx: &Ctx, ids: &[String]) -> Output {
    let store = ctx.store;
    store.meta()?;
    let _g = ctx.lock(false)?;
    let ids = super::ids_or_all(store, ids)?;
    let (mut handed, mut failed) = (Vec::new(), Vec::new());
    // One image that cannot be handed over keeps no other from it.
    for id in ids {
        match lifecycle::upgrade(store, &id) {
            Ok(Some((old, new))) => {
                ctx.log
                    .info("upgraded", json!({ "id": id, "from": old, "to": new }));
                handed.push(format!("{id}: {old} -> {new}"));
            }
            Ok(None) => {}
            Err(e) => failed.push(format!("{id}: {e}")),
        }
    }
    if !failed.is_empty() {
        handed.extend(failed.iter().map(|f| format!("not upgraded: {f}")));
        anyhow::bail!("{}", handed.join("\n"));
    }
    Ok((!handed.is_empty()).then(|| handed.join("\n")))
}
