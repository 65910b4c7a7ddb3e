//! One module per command, as GrootFS has them: each takes the parsed arguments and a
//! [`Ctx`], and returns what goes to stdout. The store knows nothing of commands; the commands
//! know nothing of clap.

pub mod capacity;
pub mod clean;
pub mod convert;
pub mod create;
pub mod delete;
pub mod delete_store;
pub mod init_store;
pub mod list;
pub mod remount;
pub mod stats;
pub mod upgrade;

use crate::config::Config;
use crate::logging::Logger;
use crate::metrics::Metrics;
use crate::store::Store;

/// What every command runs with.
pub struct Ctx<'a> {
    pub store: &'a Store,
    pub config: &'a Config,
    pub log: &'a Logger,
    pub metrics: &'a Metrics,
}

/// A command's result: `Some(text)` goes to stdout.
pub type Output = anyhow::Result<Option<String>>;

/// The images `ids` (ids or paths) name, or every image of the store if none.
fn ids_or_all(store: &Store, ids: &[String]) -> anyhow::Result<Vec<String>> {
    Ok(if ids.is_empty() {
        store.image_ids()?
    } else {
        ids.iter()
            .map(|i| store.lookup(i))
            .collect::<Result<_, _>>()?
    })
}

/// The async runtime pulls run on: two workers, as downloads wait on the network and
/// unpacking runs on the blocking pool.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start async runtime")
}

impl Ctx<'_> {
    /// Takes the store lock, emitting how long it took as GrootFS's locking metrics do.
    pub fn lock(&self, exclusive: bool) -> anyhow::Result<crate::store::Lock> {
        let start = std::time::Instant::now();
        let lock = self.store.lock(exclusive)?;
        let name = if exclusive {
            "ExclusiveLockingTime"
        } else {
            "SharedLockingTime"
        };
        self.metrics.duration(name, start);
        Ok(lock)
    }

    /// Sizes of the volumes in use and unused (GrootFS emits them after create, delete and
    /// clean).
    pub fn emit_layer_usage(&self) {
        if !self.metrics.enabled() {
            return;
        }
        if let Ok((used, unused)) = self.store.layer_usage() {
            self.metrics.usage("UnusedLayersSize", unused, "bytes");
            self.metrics.usage("UsedLayersSize", used, "bytes");
        }
    }
}
