//! Bringing an image's layers into the store as volumes: each missing layer is unpacked once
//! (concurrent pulls of the same layer wait on its lock), into tmp/, synced, then renamed.

use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::{Result, Store, StoreError, VolumeMeta, io_ctx, write_json};
use crate::image::{ImageError, ResolvedImage};
use crate::unpack::UnpackOptions;

/// Layers unpacked at once.
const PARALLEL: usize = 4;

/// The volume key of a chain id (`sha256:<hex>` -> `<hex>`).
pub fn volume_key(chain_id: &str) -> String {
    chain_id.rsplit(':').next().unwrap_or(chain_id).to_string()
}

impl Store {
    /// Makes sure every layer of `image` is a volume; returns the keys, bottom layer first.
    /// `budget` bounds the bytes unpacked in total (the inclusive disk limit, or the bomb bound).
    pub async fn pull(
        &self,
        image: &ResolvedImage,
        source: &str,
        budget: u64,
        progress: Option<&indicatif::ProgressBar>,
    ) -> Result<Vec<String>> {
        let keys: Vec<String> = image
            .layers
            .iter()
            .map(|l| volume_key(&l.chain_id))
            .collect();
        let opts = UnpackOptions {
            max_bytes: budget,
            max_entries: 10_000_000,
            // A rootless store records owners in xattrs (see init-store).
            privileged: !self.meta()?.rootless,
        };
        let opts = &opts;
        stream::iter(keys.iter().enumerate())
            .map(|(i, key)| async move {
                self.pull_layer(image, i, key, source, opts).await?;
                if let Some(p) = progress {
                    p.inc(1);
                }
                Ok::<(), StoreError>(())
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(keys)
    }

    async fn pull_layer(
        &self,
        image: &ResolvedImage,
        index: usize,
        key: &str,
        source: &str,
        opts: &UnpackOptions,
    ) -> Result<()> {
        let dest = self.volume_dir(key);
        if dest.exists() {
            return self.note_user(key, source);
        }
        let lock = {
            let (root, key) = (self.root().to_path_buf(), key.to_string());
            tokio::task::spawn_blocking(move || Store::new(root).volume_lock(&key))
                .await
                .expect("lock task")?
        };
        if dest.exists() {
            // Another run unpacked it while we waited.
            drop(lock);
            return self.note_user(key, source);
        }
        let tmp = self.tmp_path(key);
        io_ctx(std::fs::create_dir_all(&tmp), || {
            format!("create {}", tmp.display())
        })?;
        let stats = match image.unpack_layer(index, &tmp, opts).await {
            Ok(s) => s,
            Err(e) => {
                let _ = super::remove_tree(&tmp);
                return Err(e.into());
            }
        };
        let placed = syncfs(&tmp).and_then(|()| std::fs::rename(&tmp, &dest));
        if let Err(e) = placed {
            let _ = super::remove_tree(&tmp);
            return Err(StoreError::Io {
                what: format!("store layer {key}"),
                source: e,
            });
        }
        let meta = VolumeMeta {
            bytes: stats.bytes,
            entries: stats.entries,
            images: vec![source.to_string()],
        };
        write_json(&self.volumes().join(format!("{key}.json")), &meta)?;
        drop(lock);
        Ok(())
    }

    /// Records that `source` uses volume `key` (for `clean --ignore-image`).
    fn note_user(&self, key: &str, source: &str) -> Result<()> {
        let _lock = self.volume_lock(key)?;
        let mut meta = self.volume_meta(key);
        if !meta.images.iter().any(|s| s == source) {
            meta.images.push(source.to_string());
            write_json(&self.volumes().join(format!("{key}.json")), &meta)?;
        }
        Ok(())
    }
}

/// Flushes the filesystem holding `p`, so a renamed volume is complete after a crash.
fn syncfs(p: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(p)?;
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// An unpack that ran out of budget under a disk limit means the limit is too small.
pub fn limit_error(e: StoreError, limit: u64) -> StoreError {
    match e {
        StoreError::Image(ImageError::TooLarge { .. }) if limit > 0 => {
            StoreError::LimitTooSmall { limit }
        }
        e => e,
    }
}
