//! Bringing an image's layers into the store as volumes: each missing layer is unpacked once
//! (concurrent pulls of the same layer wait on its lock), into tmp/, synced, then renamed.
//!
//! No deadlock between runs: each layer's future holds at most one volume lock and waits for
//! it holding none, and every wait runs on the blocking pool, so a future holding a lock is
//! always polled on to its release.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures_util::stream::{self, StreamExt};

use super::{Lock, Result, Store, StoreError, VolumeMeta, io_ctx, write_json};
use crate::image::{ImageError, ResolvedImage};
use crate::unpack::{UnpackOptions, UnpackStats};

/// Layers unpacked at once.
const PARALLEL: usize = 4;

/// The volume key of a chain id (`sha256:<hex>` -> `<hex>`).
pub fn volume_key(chain_id: &str) -> String {
    chain_id.rsplit(':').next().unwrap_or(chain_id).to_string()
}

/// A layer's line on a terminal: its digest, bytes read of its blob, and the rate.
fn layer_bar(layer: &crate::image::LayerInfo) -> indicatif::ProgressBar {
    let short = layer.digest.trim_start_matches("sha256:");
    // A tarball's size is not known up front: then bytes and rate alone.
    let (bar, template) = match layer.size {
        Some(n) => (
            indicatif::ProgressBar::new(n),
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}",
        ),
        None => (
            indicatif::ProgressBar::no_length(),
            "{prefix} {bytes} {binary_bytes_per_sec}",
        ),
    };
    let style = indicatif::ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ");
    bar.with_style(style)
        .with_prefix(format!("layer {}", &short[..short.len().min(12)]))
}

/// Decompression bombs: by default no layer may unpack to more than this many times its
/// compressed size (a gzip of zeros expands about 1000 times; real layers a few times)...
pub const DEFAULT_MAX_EXPANSION: u64 = 100;
/// ...or this much, whichever is more, so small layers of many small files always fit.
const EXPANSION_FLOOR: u64 = 256 << 20;

/// What a layer of `compressed` bytes may unpack to under `max_expansion` (0: no bound).
fn expansion_bound(compressed: Option<u64>, max_expansion: u64) -> Option<u64> {
    let size = compressed.filter(|_| max_expansion > 0)?;
    Some(size.saturating_mul(max_expansion).max(EXPANSION_FLOOR))
}

impl Store {
    /// Makes sure every layer of `image` is a volume; returns the keys, bottom layer first.
    /// Each layer is bounded by `quota`, the disk limit the layers count against, or without
    /// one by what the store's filesystem has free, and by `max_expansion` times its compressed
    /// size (see [`DEFAULT_MAX_EXPANSION`]), so a small layer cannot take the store's space.
    pub async fn pull(
        &self,
        image: &ResolvedImage,
        source: &str,
        quota: Option<u64>,
        max_expansion: u64,
        lazy: bool,
        progress: Option<&indicatif::MultiProgress>,
    ) -> Result<Vec<String>> {
        let keys: Vec<String> = image
            .layers
            .iter()
            .map(|l| volume_key(&l.chain_id))
            .collect();
        let (free, inodes) = (self.free_bytes()?, self.free_inodes()?);
        let opts = UnpackOptions {
            max_bytes: quota.unwrap_or(free),
            max_entries: 10_000_000,
            // A rootless store records owners in xattrs (see init-store).
            privileged: !self.meta()?.rootless,
            skip_estargz_entries: false,
        };
        let (opts, placed, failed) = (&opts, &AtomicU64::new(0), &AtomicBool::new(false));
        let done: Vec<Result<()>> = stream::iter(keys.iter().enumerate())
            .map(|(i, key)| async move {
                // After a failure, start no more layers: the pull fails anyway.
                if failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let layer = &image.layers[i];
                let bound =
                    expansion_bound(layer.size, max_expansion).filter(|b| *b < opts.max_bytes);
                let bounded = UnpackOptions {
                    max_bytes: bound.unwrap_or(opts.max_bytes),
                    ..opts.clone()
                };
                let bytes = self
                    .pull_layer(image, i, key, source, &bounded, lazy, progress)
                    .await
                    .map_err(|e| match (e, bound) {
                        (StoreError::Image(ImageError::TooLarge { limit, .. }), Some(b))
                            if limit == b =>
                        {
                            StoreError::Image(ImageError::Expansion {
                                digest: layer.digest.clone(),
                                compressed: layer.size.unwrap_or(0),
                                ratio: max_expansion,
                                limit,
                            })
                        }
                        (e, _) => e,
                    })
                    .inspect_err(|_| failed.store(true, Ordering::Relaxed))?;
                placed.fetch_add(bytes, Ordering::Relaxed);
                Ok(())
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        // Layers that were started all finished, so none is left half-unpacked in tmp/. Those
        // running out of room together needed what each of them had written, all told.
        let mut failure = None;
        let mut unplaced = 0;
        for e in done.into_iter().filter_map(Result::err) {
            if let StoreError::Image(
                ImageError::TooLarge { needed, .. } | ImageError::NoSpace { needed },
            ) = &e
            {
                unplaced += needed;
            }
            failure.get_or_insert(e);
        }
        match failure {
            Some(e) => {
                let needed = placed.load(Ordering::Relaxed) + unplaced;
                Err(self.space_error(e, quota, (free, inodes), needed))
            }
            None => Ok(keys),
        }
    }

    /// Says what an unpack that ran out of room ran into: the image's disk limit, or the
    /// store's filesystem (`free` bytes and inodes when the pull began; `needed`: what the
    /// layers that made it and those that ran out had written, together).
    fn space_error(
        &self,
        e: StoreError,
        quota: Option<u64>,
        (free, inodes): (u64, u64),
        needed: u64,
    ) -> StoreError {
        match (e, quota) {
            (StoreError::Image(ImageError::TooLarge { .. }), Some(limit)) => {
                StoreError::LimitTooSmall { limit }
            }
            (StoreError::Image(ImageError::TooLarge { .. } | ImageError::NoSpace { .. }), _) => {
                StoreError::StoreFull {
                    path: self.root().to_path_buf(),
                    free,
                    inodes,
                    needed,
                }
            }
            (e, _) => e,
        }
    }

    /// Makes layer `index` volume `key`; returns the bytes it unpacked (0 if it was there).
    /// With `lazy`, an eStargz layer from a registry becomes a lazy volume (see
    /// [`crate::lazy`]).
    #[allow(clippy::too_many_arguments)]
    async fn pull_layer(
        &self,
        image: &ResolvedImage,
        index: usize,
        key: &str,
        source: &str,
        opts: &UnpackOptions,
        lazy: bool,
        progress: Option<&indicatif::MultiProgress>,
    ) -> Result<u64> {
        let (k, src) = (key.to_string(), source.to_string());
        let Some((lock, tmp)) = self.off_executor(move |s| s.claim_volume(&k, &src)).await? else {
            return Ok(0);
        };
        let layer = &image.layers[index];
        let (unpacked, lazy) = match crate::lazy::source(image.registry(), layer).filter(|_| lazy) {
            Some(registry) => match crate::lazy::prepare(registry, layer, key, &tmp, opts).await {
                Ok(p) => (Ok(p.stats), Some((p.layer, p.toc))),
                Err(e) => (Err(e), None),
            },
            None => {
                let bar = progress
                    .map_or_else(indicatif::ProgressBar::hidden, |m| m.add(layer_bar(layer)));
                let unpacked = image.unpack_layer(index, &tmp, opts, &bar).await;
                bar.finish_and_clear();
                (unpacked, None)
            }
        };
        let (k, src) = (key.to_string(), source.to_string());
        self.off_executor(move |s| s.place_volume(&k, &src, &tmp, unpacked, lazy, lock))
            .await
    }

    /// Makes lazy volume `key` an ordinary one: its files all there, checked.
    pub fn complete_volume(&self, key: &str) -> Result<()> {
        let _lock = self.volume_lock(key)?;
        let mut meta = self.volume_meta(key);
        meta.lazy = None;
        write_json(&self.volumes().join(format!("{key}.json")), &meta)?;
        let _ = std::fs::remove_file(crate::lazy::toc_path(&self.volumes(), key));
        Ok(())
    }

    /// Runs `f` on the blocking pool. Lock waits and disk flushes must never stall the
    /// executor: its other futures hold volume locks that other runs wait for, and a blocked
    /// executor never polls them to release them (two creates then wait for each other).
    async fn off_executor<T: Send + 'static>(
        &self,
        f: impl FnOnce(Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = Store::new(self.root().to_path_buf());
        tokio::task::spawn_blocking(move || f(store))
            .await
            .expect("store task does not panic")
    }

    /// Takes volume `key`'s lock. If the volume exists (maybe unpacked by another run while we
    /// waited), records `source` as its user and returns `None`; otherwise returns the lock
    /// and an empty directory to unpack into.
    fn claim_volume(&self, key: &str, source: &str) -> Result<Option<(Lock, PathBuf)>> {
        let lock = self.volume_lock(key)?;
        if self.volume_dir(key).exists() {
            self.note_user(key, source, &lock)?;
            return Ok(None);
        }
        let tmp = self.tmp_path(key);
        io_ctx(std::fs::create_dir_all(&tmp), || {
            format!("create {}", tmp.display())
        })?;
        Ok(Some((lock, tmp)))
    }

    /// Moves an unpacked layer from `tmp` into place as volume `key` (synced first, so a
    /// crash never leaves half a volume), or removes `tmp` if the unpack failed. Returns the
    /// volume's bytes.
    fn place_volume(
        &self,
        key: &str,
        source: &str,
        tmp: &Path,
        unpacked: std::result::Result<UnpackStats, ImageError>,
        lazy: Option<(crate::lazy::LazyLayer, Vec<u8>)>,
        _lock: Lock,
    ) -> Result<u64> {
        let stats = match unpacked {
            Ok(s) => s,
            Err(e) => {
                let _ = super::remove_tree(tmp);
                return Err(e.into());
            }
        };
        // A lazy volume's TOC goes first: a volume never lacks it while marked lazy.
        let toc = crate::lazy::toc_path(&self.volumes(), key);
        let placed = syncfs(tmp)
            .and_then(|()| match &lazy {
                Some((_, json)) => std::fs::write(&toc, json),
                None => Ok(()),
            })
            .and_then(|()| std::fs::rename(tmp, self.volume_dir(key)));
        if let Err(e) = placed {
            let _ = super::remove_tree(tmp);
            let _ = std::fs::remove_file(&toc);
            return Err(StoreError::Io {
                what: format!("store layer {key}"),
                cause: e,
            });
        }
        let meta = VolumeMeta {
            bytes: stats.bytes,
            entries: stats.entries,
            images: vec![source.to_string()],
            lazy: lazy.map(|(l, _)| l),
        };
        write_json(&self.volumes().join(format!("{key}.json")), &meta)?;
        Ok(stats.bytes)
    }

    /// Records that `source` uses volume `key` (for `clean --ignore-image`); the caller holds
    /// the volume's lock.
    fn note_user(&self, key: &str, source: &str, _lock: &Lock) -> Result<()> {
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
    Ok(rustix::fs::syncfs(&f)?)
}
