//! `capacity`: the store's capacity, as JSON.

use serde_json::json;

use super::{Ctx, Output};

pub fn run(ctx: &Ctx) -> Output {
    // GrootFS answers from its config alone; without one, the store says.
    let cap = match ctx.config.store_size() {
        Some(n) => n,
        None => match ctx.store.meta()?.store_size_bytes {
            0 => {
                let st = crate::store::statvfs(ctx.store.root())?;
                st.f_blocks * st.f_frsize
            }
            n => n,
        },
    };
    Ok(Some(json!({ "capacity": cap }).to_string()))
}
