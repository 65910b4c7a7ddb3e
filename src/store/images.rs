//! Images in the store: create, delete, stats, list, clean.

use std::path::PathBuf;

use std::os::unix::fs::MetadataExt;

use serde::Serialize;

use super::{
    CREATING, ImageMeta, Lock, Result, Store, StoreError, check_id, io_ctx, remove_tree, write_json,
};
use crate::daemon;

/// `stats` output.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct DiskUsage {
    pub total_bytes_used: u64,
    pub exclusive_bytes_used: u64,
    pub quota_size_bytes: u64,
    pub committed_space_bytes: u64,
}

impl Store {
    /// Fails early (before any pull) if `id` is unusable or taken.
    pub fn check_new_id(&self, id: &str) -> Result<()> {
        check_id(id)?;
        if !self.id_free(id)? {
            return Err(StoreError::IdExists(id.to_string()));
        }
        Ok(())
    }

    /// Whether no image has this id, after removing one a killed `create` left half-made
    /// (its daemon never served it, or the create died before it knew).
    pub(super) fn id_free(&self, id: &str) -> Result<bool> {
        let dir = self.image_dir(id);
        if !dir.exists() {
            return Ok(true);
        }
        if !dir.join(CREATING).exists() {
            return Ok(false);
        }
        let lock = match Lock::try_dir(&dir) {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(false), // its create is still running
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
            Err(source) => {
                return Err(StoreError::Io {
                    what: format!("lock image {id}"),
                    cause: source,
                });
            }
        };
        if !dir.join(CREATING).exists() {
            return Ok(false); // its create finished just before we looked
        }
        daemon::kill_strays(self, id);
        self.remove_locked(id, lock)?;
        Ok(true)
    }

    /// Makes images/ID (upper, work, rootfs, metadata) atomically, then starts its daemon.
    /// Returns the rootfs path. On any failure nothing of the image is left.
    pub fn create_image(&self, spec: &ImageMeta) -> Result<PathBuf> {
        self.check_new_id(&spec.id)?;
        let size = spec
            .layers
            .iter()
            .map(|k| self.volume_meta(k).bytes)
            .sum::<u64>();
        if spec.disk_limit > 0 && !spec.exclude_image_from_quota && size >= spec.disk_limit {
            return Err(StoreError::LimitTooSmall {
                limit: spec.disk_limit,
            });
        }
        let building = self
            .images()
            .join(format!(".new-{}-{}", std::process::id(), spec.id));
        let made = (|| -> Result<Lock> {
            for d in ["upper", "work", "rootfs"] {
                io_ctx(std::fs::create_dir_all(building.join(d)), || {
                    format!("create image dir {d}")
                })?;
            }
            // The rootfs's own root is the upper dir's: owned as the image's root dir shows.
            if let (Some(ids), Some(top)) = (self.meta()?.id_map(), spec.layers.last()) {
                let root = self.volume_dir(top);
                let (uid, gid) = if self.meta()?.rootless {
                    io_ctx(nestfs_fuse::meta::owner_at(&root), || {
                        format!("read the owner of volume {top}")
                    })?
                } else {
                    let st = io_ctx(std::fs::metadata(&root), || format!("stat volume {top}"))?;
                    (st.uid(), st.gid())
                };
                let (uid, gid) = ids.shown(uid, gid);
                io_ctx(
                    std::os::unix::fs::chown(building.join("upper"), Some(uid), Some(gid)),
                    || "chown the upper dir".into(),
                )?;
            }
            write_json(&building.join("image.json"), spec)?;
            io_ctx(std::fs::File::create(building.join(CREATING)), || {
                "mark the image as being created".into()
            })?;
            // Held across the rename until the daemon served: a delete of this id waits for
            // it, and nobody takes the image for debris of a killed create meanwhile.
            let lock = io_ctx(Lock::dir(&building), || "lock the new image".into())?;
            // rename(2) refuses to replace a non-empty dir: two creates of one id cannot both win.
            std::fs::rename(&building, self.image_dir(&spec.id)).map_err(|e| {
                match e.raw_os_error() {
                    Some(libc::EEXIST | libc::ENOTEMPTY) => StoreError::IdExists(spec.id.clone()),
                    _ => StoreError::Io {
                        what: format!("create image {}", spec.id),
                        cause: e,
                    },
                }
            })?;
            Ok(lock)
        })();
        let lock = made.inspect_err(|_| {
            let _ = remove_tree(&building);
        })?;
        if let Err(e) = daemon::start(self, &spec.id).and_then(|()| self.mark_served(&spec.id)) {
            let _ = self.remove_locked(&spec.id, lock);
            return Err(e);
        }
        Ok(self.image_dir(&spec.id).join("rootfs"))
    }

    /// Makes a new image count as existing, durably: Garden goes on using it once `create`
    /// returns.
    fn mark_served(&self, id: &str) -> Result<()> {
        let dir = self.image_dir(id);
        io_ctx(
            std::fs::remove_file(dir.join(CREATING))
                .and_then(|()| std::fs::File::open(&dir)?.sync_all()),
            || format!("mark image {id} as served"),
        )
    }

    /// Stops the image's daemon and removes the image. Unknown ids are not an error.
    pub fn delete_image(&self, id: &str) -> Result<bool> {
        match self.lock_image(id)? {
            Some(lock) => self.remove_locked(id, lock),
            None => Ok(false),
        }
    }

    /// The image's own lock, waited for; None if the image is gone (or went while we waited,
    /// deleted by another command).
    pub fn lock_image(&self, id: &str) -> Result<Option<Lock>> {
        match Lock::dir(&self.image_dir(id)) {
            Ok(l) => Ok(Some(l)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => io_ctx(Err(e), || format!("lock image {id}")),
        }
    }

    /// Stops the image's daemon and removes the image, whose lock `_lock` is.
    fn remove_locked(&self, id: &str, _lock: Lock) -> Result<bool> {
        let dir = self.image_dir(id);
        if let daemon::Stop::StillServing(pid) = daemon::stop(self, id)? {
            // Someone still uses the rootfs: keep its upper dir for them, out of the way of a
            // new image of this id. The daemon removes it once they are gone.
            let retired = self.images().join(format!("{}{pid}-{id}", daemon::RETIRED));
            io_ctx(std::fs::rename(&dir, &retired), || {
                format!("retire image {id}")
            })?;
            return Ok(true);
        }
        // Rename first: a delete killed halfway leaves debris `sweep` removes, not half an image.
        let trash = self
            .images()
            .join(format!(".del-{}-{id}", std::process::id()));
        match std::fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(StoreError::Io {
                    what: format!("delete image {id}"),
                    cause: e,
                });
            }
        }
        io_ctx(remove_tree(&trash), || format!("remove image {id}"))?;
        Ok(true)
    }

    /// Disk usage from the daemon's live counter, or from a scan of the upper dir when no
    /// daemon runs.
    pub fn stats(&self, id: &str) -> Result<DiskUsage> {
        let meta = self.image_meta(id)?;
        let exclusive = match daemon::state(self, id).1 {
            Some(status) => status.used,
            None => {
                let upper = self.image_dir(id).join("upper");
                io_ctx(nestfs_fuse::allocated_bytes(&upper), || {
                    format!("measure {}", upper.display())
                })?
            }
        };
        let image = self.layers_bytes(&meta);
        // As GrootFS: the quota is what the container may write (an inclusive limit less the
        // image), and the committed space the image plus that.
        let quota = match (meta.disk_limit, meta.exclude_image_from_quota) {
            (0, _) => 0,
            (limit, true) => limit,
            (limit, false) => limit.saturating_sub(image),
        };
        Ok(DiskUsage {
            total_bytes_used: image + exclusive,
            exclusive_bytes_used: exclusive,
            quota_size_bytes: quota,
            committed_space_bytes: image + quota,
        })
    }

    /// Bytes all volumes take.
    pub fn volumes_bytes(&self) -> u64 {
        self.volume_keys()
            .iter()
            .map(|k| self.volume_meta(k).bytes)
            .sum()
    }

    fn volume_keys(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.volumes()) else {
            return Vec::new();
        };
        let mut keys: Vec<String> = rd
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        keys.sort();
        keys
    }

    /// The volumes images use. Half-made images too: `sweep` may have failed to remove one,
    /// and a `create` of its id (which sweeps before taking the store lock) may be removing it.
    fn used_volumes(&self) -> Result<std::collections::HashSet<String>> {
        let mut used = std::collections::HashSet::new();
        for id in self.all_image_ids()? {
            if let Some(meta) = self.image_meta_if_present(&id)? {
                used.extend(meta.layers);
            }
        }
        Ok(used)
    }

    /// Bytes of the volumes images use, and of those none uses (GrootFS's `UsedLayersSize`
    /// and `UnusedLayersSize` metrics).
    pub fn layer_usage(&self) -> Result<(u64, u64)> {
        let used = self.used_volumes()?;
        let (mut inuse, mut unused) = (0, 0);
        for key in self.volume_keys() {
            let bytes = self.volume_meta(&key).bytes;
            if used.contains(&key) {
                inuse += bytes;
            } else {
                unused += bytes;
            }
        }
        Ok((inuse, unused))
    }

    /// The space committed to images' quotas (GrootFS's `CommittedQuotaInBytes`).
    pub fn committed_quota(&self) -> u64 {
        self.image_ids()
            .unwrap_or_default()
            .iter()
            .filter_map(|id| self.image_meta_if_present(id).ok().flatten())
            .map(|m| match (m.disk_limit, m.exclude_image_from_quota) {
                (0, _) => 0,
                (limit, true) => limit,
                (limit, false) => limit.saturating_sub(self.layers_bytes(&m)),
            })
            .sum()
    }

    /// Removes the volumes no image uses (except those pulled by an ignored image), if the
    /// volumes take more than `threshold` bytes. Returns the removed keys, or None when under
    /// the threshold. `progress` names each volume as it goes. Callers hold the store lock
    /// exclusively, so no pull or create runs meanwhile.
    pub fn clean(
        &self,
        threshold: Option<u64>,
        ignore: &[String],
        progress: &indicatif::ProgressBar,
    ) -> Result<Option<Vec<String>>> {
        if threshold.is_some_and(|t| self.volumes_bytes() <= t) {
            return Ok(None);
        }
        let used = self.used_volumes()?;
        let mut removed = Vec::new();
        for key in self.volume_keys() {
            if used.contains(&key)
                || self
                    .volume_meta(&key)
                    .images
                    .iter()
                    .any(|i| ignore.contains(i))
            {
                continue;
            }
            progress.set_message(format!("removing unused layer {key}"));
            let trash = self.tmp_path(&format!("clean-{key}"));
            io_ctx(std::fs::rename(self.volume_dir(&key), &trash), || {
                format!("remove volume {key}")
            })?;
            let _ = std::fs::remove_file(self.volumes().join(format!("{key}.json")));
            io_ctx(remove_tree(&trash), || format!("remove volume {key}"))?;
            removed.push(key);
        }
        Ok(Some(removed))
    }

    /// Deletes every image (stopping their daemons) and the store itself.
    pub fn delete_store(&self) -> Result<()> {
        if !self.root().exists() {
            return Ok(());
        }
        for id in self.all_image_ids()? {
            self.delete_image(&id)?;
        }
        io_ctx(remove_tree(self.root()), || {
            format!("remove store {}", self.root().display())
        })
    }
}
