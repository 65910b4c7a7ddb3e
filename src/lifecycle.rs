//! An image's life: the store's directories and metadata together with the daemon serving them.
//! The store lays images out and never runs anything (as a containerd snapshotter returns
//! mounts); [`crate::daemon`] runs and stops processes and knows nothing of the store. Here is
//! the order between the two: made, served, then counted as existing; stopped, then removed.

use std::path::PathBuf;

use crate::control::Status;
use crate::daemon::{Daemon, DaemonError, State, Stop};
use crate::store::{Claim, DiskUsage, ImageMeta, Lock, Store, StoreError, io_ctx};

/// Every way an image's lifecycle fails: in the store, or with its daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

pub type Result<T> = std::result::Result<T, Error>;

fn daemon(store: &Store, id: &str) -> Daemon {
    Daemon::new(store.root(), id, store.image_dir(id))
}

/// Fails early (before any pull) if `id` is unusable or taken.
pub fn check_new_id(store: &Store, id: &str) -> Result<()> {
    if !clear_half_made(store, id)? {
        return Err(StoreError::IdExists(id.to_string()).into());
    }
    Ok(())
}

/// Removes the image of `id` if a killed `create` left it half-made (its daemon first).
/// Returns whether the id is free.
fn clear_half_made(store: &Store, id: &str) -> Result<bool> {
    match store.claim(id)? {
        Claim::Free => Ok(true),
        Claim::Taken => Ok(false),
        Claim::HalfMade(lock) => {
            daemon(store, id).kill_strays();
            remove_locked(store, id, lock)?;
            Ok(true)
        }
    }
}

/// Makes the image, starts its daemon and marks it served. Returns the rootfs path. On any
/// failure nothing of the image is left.
pub fn create(store: &Store, spec: &ImageMeta) -> Result<PathBuf> {
    check_new_id(store, &spec.id)?;
    let lock = store.make_image(spec)?;
    let served = store
        .overlay_config(&spec.id)
        .map_err(Error::from)
        .and_then(|cfg| Ok(daemon(store, &spec.id).start(&cfg.keeper_mount())?))
        .and_then(|()| Ok(store.mark_served(&spec.id)?));
    if let Err(e) = served {
        let _ = remove_locked(store, &spec.id, lock);
        return Err(e);
    }
    Ok(store.image_dir(&spec.id).join("rootfs"))
}

/// Stops the image's daemon and removes the image. Unknown ids are not an error: false.
pub fn delete(store: &Store, id: &str) -> Result<bool> {
    match store.lock_image(id)? {
        Some(lock) => remove_locked(store, id, lock),
        None => Ok(false),
    }
}

/// Stops the daemon of the image whose lock `lock` is, and removes the image; or, while the
/// daemon still serves someone, retires it.
fn remove_locked(store: &Store, id: &str, lock: Lock) -> Result<bool> {
    if let Stop::StillServing(pid) = daemon(store, id).stop()? {
        store.retire_image(id, pid, lock)?;
        return Ok(true);
    }
    Ok(store.remove_image(id, lock)?)
}

/// Deletes every image (stopping their daemons) and the store itself.
pub fn delete_store(store: &Store) -> Result<()> {
    if !store.root().exists() {
        return Ok(());
    }
    for id in store.all_image_ids()? {
        delete(store, &id)?;
    }
    Ok(io_ctx(crate::store::remove_tree(store.root()), || {
        format!("remove store {}", store.root().display())
    })?)
}

/// Serves an existing image again after its daemon died or the host rebooted, keeping its
/// upper dir. Returns false if it was already served, or deleted meanwhile.
pub fn remount(store: &Store, id: &str) -> Result<bool> {
    let Some(_g) = store.lock_image(id)? else {
        return Ok(false);
    };
    let daemon = daemon(store, id);
    match daemon.state().0 {
        State::Mounted => return Ok(false),
        // A daemon that hangs: its keeper starts another on the same connection, so the
        // containers using the rootfs keep it.
        State::DaemonDead if daemon.has_keeper() => {
            daemon.hand_over()?;
            return Ok(true);
        }
        State::DaemonDead => {
            daemon.stop()?;
        }
        State::NotMounted => {}
    }
    daemon.start(&store.overlay_config(id)?.keeper_mount())?;
    Ok(true)
}

/// Hands a served image to a daemon of the binary installed now (see `commands::upgrade`):
/// the old and new daemon's pids, or None if no daemon serves it.
pub fn upgrade(store: &Store, id: &str) -> Result<Option<(i32, i32)>> {
    let Some(_g) = store.lock_image(id)? else {
        return Ok(None);
    };
    Ok(daemon(store, id).hand_over()?)
}

/// The image's state and, when its daemon answers, the daemon's status.
pub fn state(store: &Store, id: &str) -> (State, Option<Status>) {
    daemon(store, id).state()
}

/// Disk usage from the daemon's live counter, or from a scan of the upper dir when no daemon
/// runs.
pub fn stats(store: &Store, id: &str) -> Result<DiskUsage> {
    let meta = store.image_meta(id)?;
    let exclusive = match state(store, id).1 {
        Some(status) => status.used,
        None => store.measure_upper(id)?,
    };
    Ok(store.usage(&meta, exclusive))
}

/// Removes debris of killed runs: images a killed `create` left unserved (their daemons
/// first), then the store's other debris.
pub fn sweep(store: &Store) {
    for id in store.all_image_ids().unwrap_or_default() {
        let _ = clear_half_made(store, &id);
    }
    store.sweep_debris();
}

/// The `serve-image` process: serves the image until its rootfs is unmounted, then removes it
/// if a `delete` retired it meanwhile.
pub fn serve(store: &Store, id: &str) -> anyhow::Result<()> {
    let meta = store.image_meta(id)?;
    let mut cfg = store.overlay_config(id)?;
    // Started by a keeper (root): the connection it holds.
    let conn = nestfs_fuse::handover::Connection::inherited()?;
    // Lazily pulled layers: filled as they are read, their prefetch files at once, completed
    // in the background.
    if let Some(filler) = crate::lazy::fill::Filler::new(store, &meta.layers)? {
        for key in filler.keys() {
            let (f, s) = (filler.clone(), Store::new(store.root().to_path_buf()));
            std::thread::spawn(move || {
                f.prefetch(&key);
                f.complete(&s, &key);
            });
        }
        cfg.fetch = Some(filler);
    }
    let dir = store.image_dir(id);
    // Followed to wherever a delete moves the image while this daemon still serves it.
    let dir_fd = io_ctx(std::fs::File::open(&dir), || {
        format!("open {}", dir.display())
    })?;
    let served = daemon(store, id).serve(cfg, store.upper_limit(&meta), conn);
    crate::store::remove_if_retired(&dir_fd);
    served
}
