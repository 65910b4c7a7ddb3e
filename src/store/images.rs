//! Images in the store: made, served, retired, removed; their usage; volumes and `clean`.

use std::os::unix::fs::MetadataExt;

use serde::Serialize;

use nestfs_fuse::OverlayConfig;

use super::{
    CREATING, ImageMeta, Lock, Result, Store, StoreError, check_id, io_ctx, remove_tree, write_json,
};

/// `stats` output.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct DiskUsage {
    pub total_bytes_used: u64,
    pub exclusive_bytes_used: u64,
    pub quota_size_bytes: u64,
    pub committed_space_bytes: u64,
}

/// What `create` finds where a new image would go.
pub enum Claim {
    /// Nothing: the id is free.
    Free,
    /// An image, or one being made right now.
    Taken,
    /// An image a killed `create` left half-made, locked: remove it (its daemon first) and
    /// the id is free.
    HalfMade(Lock),
}

/// The name prefix of an image `delete` retired while its daemon still served it
/// (`.retired-<daemon pid>-<id>`, which `sweep` removes once that pid is gone).
const RETIRED: &str = ".retired-";

impl Store {
    /// Who has `id`, after checking it is a usable id.
    pub fn claim(&self, id: &str) -> Result<Claim> {
        check_id(id)?;
        let dir = self.image_dir(id);
        if !dir.exists() {
            return Ok(Claim::Free);
        }
        if !dir.join(CREATING).exists() {
            return Ok(Claim::Taken);
        }
        let lock = match Lock::try_dir(&dir) {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(Claim::Taken), // its create is still running
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Claim::Free),
            Err(source) => {
                return Err(StoreError::Io {
                    what: format!("lock image {id}"),
                    cause: source,
                });
            }
        };
        if !dir.join(CREATING).exists() {
            return Ok(Claim::Taken); // its create finished just before we looked
        }
        Ok(Claim::HalfMade(lock))
    }

    /// Makes images/ID (upper, work, rootfs, metadata) atomically, marked as being created, and
    /// returns its lock, held until the image is served (see [`Self::mark_served`]) or removed.
    /// On failure nothing of the image is left.
    pub fn make_image(&self, spec: &ImageMeta) -> Result<Lock> {
        let size = self.layers_bytes(spec);
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
        made.inspect_err(|_| {
            let _ = remove_tree(&building);
        })
    }

    /// Makes a new image count as existing, durably: Garden goes on using it once `create`
    /// returns.
    pub fn mark_served(&self, id: &str) -> Result<()> {
        let dir = self.image_dir(id);
        io_ctx(
            std::fs::remove_file(dir.join(CREATING))
                .and_then(|()| std::fs::File::open(&dir)?.sync_all()),
            || format!("mark image {id} as served"),
        )
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

    /// Removes the image, whose lock `_lock` is and whose daemon is gone. False if it was
    /// not there.
    pub fn remove_image(&self, id: &str, _lock: Lock) -> Result<bool> {
        // Rename first: a delete killed halfway leaves debris `sweep` removes, not half an image.
        let trash = self
            .images()
            .join(format!(".del-{}-{id}", std::process::id()));
        match std::fs::rename(self.image_dir(id), &trash) {
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

    /// Moves the image, whose lock `_lock` is, out of the way of a new image of its id while
    /// its daemon (`pid`) still serves someone: that daemon removes it once they are gone (see
    /// [`remove_if_retired`]), or `sweep` once it exited.
    pub fn retire_image(&self, id: &str, pid: i32, _lock: Lock) -> Result<()> {
        let retired = self.images().join(format!("{RETIRED}{pid}-{id}"));
        io_ctx(std::fs::rename(self.image_dir(id), &retired), || {
            format!("retire image {id}")
        })
    }

    /// The image's upper dir's allocation, measured (when no daemon counts it).
    pub fn measure_upper(&self, id: &str) -> Result<u64> {
        let upper = self.image_dir(id).join("upper");
        io_ctx(nestfs_fuse::allocated_bytes(&upper), || {
            format!("measure {}", upper.display())
        })
    }

    /// Disk usage as `stats` reports it, given what the upper dir holds (`exclusive`).
    pub fn usage(&self, meta: &ImageMeta, exclusive: u64) -> DiskUsage {
        let image = self.layers_bytes(meta);
        // As GrootFS: the quota is what the container may write (an inclusive limit less the
        // image), and the committed space the image plus that.
        let quota = match (meta.disk_limit, meta.exclude_image_from_quota) {
            (0, _) => 0,
            (limit, true) => limit,
            (limit, false) => limit.saturating_sub(image),
        };
        DiskUsage {
            total_bytes_used: image + exclusive,
            exclusive_bytes_used: exclusive,
            quota_size_bytes: quota,
            committed_space_bytes: image + quota,
        }
    }

    /// The mount an image's daemon serves: its volumes top first, its upper and work dirs.
    pub fn overlay_config(&self, id: &str) -> Result<OverlayConfig> {
        let meta = self.image_meta(id)?;
        let dir = self.image_dir(id);
        // Layers keep the image's ids; the mount shows them through the store's mappings, and
        // the upper dir gets host ids.
        let store = self.meta()?;
        let mut cfg = OverlayConfig {
            lowerdirs: meta
                .layers
                .iter()
                .rev()
                .map(|k| self.volume_dir(k))
                .collect(),
            upperdir: Some(dir.join("upper")),
            workdir: Some(dir.join("work")),
            fsname: format!("nestfs:{id}"),
            ids: store.id_map(),
            meta_xattrs: store.rootless,
            ..OverlayConfig::default()
        };
        if cfg.lowerdirs.is_empty() {
            // An image without layers (e.g. an empty tarball) still needs a lower dir.
            let empty = dir.join("empty");
            io_ctx(std::fs::create_dir_all(&empty), || {
                format!("create {}", empty.display())
            })?;
            cfg.lowerdirs.push(empty);
        }
        Ok(cfg)
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
            let _ = std::fs::remove_file(crate::lazy::toc_path(&self.volumes(), &key));
            io_ctx(remove_tree(&trash), || format!("remove volume {key}"))?;
            removed.push(key);
        }
        Ok(Some(removed))
    }
}

/// Removes the image dir `dir` (open, so followed wherever it was moved) if it was retired
/// meanwhile: its daemon calls this once its last user is gone.
pub fn remove_if_retired(dir: &std::fs::File) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(dir);
    if let Ok(now) = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        && now
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(RETIRED))
    {
        let _ = remove_tree(&now);
    }
}
