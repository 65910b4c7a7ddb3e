//! The daemon's side of lazy layers: [`Filler`] fills a marked file on demand (the overlay
//! calls it, as its [`nestfs_fuse::Fetch`], before the file's data is read) and completes
//! whole volumes in the background.
//!
//! A file is filled under an exclusive flock on it, so daemons of images sharing the volume
//! fill it once; its data is synced before its mark goes, so a crash leaves it marked (and
//! filled again), never unmarked and empty.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::fs::{FlockOperation, Mode, OFlags, ResolveFlags};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::{HAVE, LazyLayer, MARK, toc_path};
use crate::estargz::reader::{Chunk, Index};
use crate::estargz::{clean_name, is_metadata_entry};
use crate::image::{ImageError, Registry};
use crate::store::Store;

/// How long a read waits for a layer's registry by default (`NESTFS_LAZY_TIMEOUT_MS`).
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// How long after the mount the background completion starts by default
/// (`NESTFS_LAZY_COMPLETE_DELAY_MS`): a container's first reads get the bandwidth first.
const DEFAULT_DELAY: Duration = Duration::from_secs(5);

fn env_ms(key: &str, default: Duration) -> Duration {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(default, Duration::from_millis)
}

/// One lazy volume as its daemon knows it.
#[derive(Debug)]
struct Volume {
    layer: LazyLayer,
    index: Index,
    /// Each file's chunks, in file order.
    chunks: HashMap<String, Vec<Chunk>>,
    /// Each file's mtime, which filling it must not change (a fill cut short by a crash
    /// already has).
    mtimes: HashMap<String, i64>,
    /// The volume's directory.
    root: OwnedFd,
    registry: OnceCell<Registry>,
    /// Complete: none of its files lacks data any more.
    done: AtomicBool,
}

/// Fetches the data of an image's lazy volumes.
#[derive(Debug)]
pub struct Filler {
    rt: tokio::runtime::Runtime,
    volumes: HashMap<String, Volume>,
    wait: Duration,
    delay: Duration,
}

impl Filler {
    /// A filler for those of `keys` that are lazy volumes of `store`; `None` if none is.
    pub fn new(store: &Store, keys: &[String]) -> anyhow::Result<Option<Arc<Filler>>> {
        let mut volumes = HashMap::new();
        for key in keys {
            let Some(layer) = store.volume_meta(key).lazy else {
                continue;
            };
            let path = toc_path(&store.volumes(), key);
            let json = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
            let index = Index::parse(&json, layer.toc_offset, &layer.toc_digest)?;
            let mut chunks: HashMap<String, Vec<Chunk>> = HashMap::new();
            for c in index.chunks()? {
                let name = clean_name(&c.name).to_string();
                let file = chunks.entry(name).or_default();
                // A name given twice: its last entry is the file.
                if c.file_offset == 0 {
                    file.clear();
                }
                file.push(c);
            }
            let mtimes = index
                .toc
                .entries
                .iter()
                .filter(|e| e.kind == "reg")
                .map(|e| (clean_name(&e.name).to_string(), super::mtime(e)))
                .collect();
            let root = rustix::fs::open(
                store.volume_dir(key),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            volumes.insert(
                key.clone(),
                Volume {
                    layer,
                    index,
                    chunks,
                    mtimes,
                    root,
                    registry: OnceCell::new(),
                    done: AtomicBool::new(false),
                },
            );
        }
        if volumes.is_empty() {
            return Ok(None);
        }
        let wait = env_ms("NESTFS_LAZY_TIMEOUT_MS", DEFAULT_WAIT);
        let delay = env_ms("NESTFS_LAZY_COMPLETE_DELAY_MS", DEFAULT_DELAY);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        Ok(Some(Arc::new(Filler {
            rt,
            volumes,
            wait,
            delay,
        })))
    }

    /// The keys of the volumes to complete.
    pub fn keys(&self) -> Vec<String> {
        self.volumes.keys().cloned().collect()
    }

    async fn registry<'a>(&self, v: &'a Volume) -> Result<&'a Registry, ImageError> {
        v.registry
            .get_or_try_init(|| v.layer.remote.connect())
            .await
    }

    /// The file's chunks, fetched with one range request and each checked.
    fn fetch(&self, v: &Volume, chunks: &[Chunk]) -> Result<Vec<Vec<u8>>, String> {
        let (Some(first), Some(last)) = (chunks.first(), chunks.last()) else {
            return Ok(Vec::new());
        };
        let start = v.index.member_range(first).0;
        let (last_at, last_len) = v.index.member_range(last);
        let end = last_at + last_len;
        let fetched = self.rt.block_on(async {
            tokio::time::timeout(self.wait, async {
                let r = self.registry(v).await?;
                r.range(&v.layer.digest, start, end - start).await
            })
            .await
        });
        let data = match fetched {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {:?}", self.wait)),
        };
        chunks
            .iter()
            .map(|c| {
                let (at, len) = v.index.member_range(c);
                let from = (at - start) as usize;
                v.index
                    .decode(c, &data[from..from + len as usize])
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    /// Fills the file open at `file` if it is marked (see [`nestfs_fuse::Fetch`]).
    fn fill_file(&self, file: BorrowedFd) -> io::Result<()> {
        let Some((v, name)) = self.marked(file)? else {
            return Ok(());
        };
        let w = reopen(file, OFlags::WRONLY)?;
        rustix::fs::flock(&w, FlockOperation::LockExclusive)?;
        if !is_marked(w.as_fd())? {
            return Ok(()); // another daemon filled it while we waited
        }
        let chunks = v.chunks.get(name).map(Vec::as_slice).unwrap_or_default();
        let data = self.fetch(v, chunks).map_err(|why| {
            tracing::error!(layer = %v.layer.digest, file = %name, "lazy fetch failed: {why}");
            io::Error::from_raw_os_error(libc::EIO)
        })?;
        for (c, d) in chunks.iter().zip(&data) {
            w.write_all_at(d, c.file_offset)?;
        }
        finish(&w, v.mtimes.get(name).copied().unwrap_or(0))
    }

    /// The volume and name of the file open at `file` if it is marked. The mark names a TOC
    /// entry; that entry's file in a volume of this image must be this very inode (a layer
    /// fully pulled may carry a mark of its own making, never to be filled by another's data).
    fn marked<'a>(&'a self, file: BorrowedFd) -> io::Result<Option<(&'a Volume, &'a str)>> {
        let mut buf = [0u8; 4096];
        let n = match rustix::fs::fgetxattr(file, MARK, &mut buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let st = rustix::fs::fstat(file)?;
        // The entry's file in volume `v`, if it is this inode.
        let this = |v: &'a Volume, index: usize| -> Option<(&'a Volume, &'a str)> {
            let e = v.index.toc.entries.get(index).filter(|e| e.kind == "reg")?;
            let name = clean_name(&e.name);
            let at = open_beneath(&v.root, name, OFlags::PATH).ok()?;
            let s = rustix::fs::fstat(&at).ok()?;
            ((s.st_dev, s.st_ino) == (st.st_dev, st.st_ino)).then_some((v, name))
        };
        if let Some((tag, index)) = super::parse_mark(&buf[..n]) {
            return Ok(self
                .volumes
                .iter()
                .filter(|(k, _)| k.starts_with(tag))
                .find_map(|(_, v)| this(v, index)));
        }
        // Written by builds before 0b63b47: `<volume key>/<name>`, the name's last entry.
        let old = std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|m| m.split_once('/'));
        Ok(old.and_then(|(key, name)| {
            let v = self.volumes.get(key)?;
            let entries = &v.index.toc.entries;
            let index = entries
                .iter()
                .rposition(|e| e.kind == "reg" && clean_name(&e.name) == name)?;
            this(v, index)
        }))
    }

    /// Fills at once the files volume `key` names before its prefetch landmark (those its
    /// image was made to read first), with one range request for all of them.
    pub fn prefetch(&self, key: &str) {
        let Some(v) = self.volumes.get(key) else {
            return;
        };
        let entries = &v.index.toc.entries;
        let Some(end) = entries
            .iter()
            .position(|e| clean_name(&e.name) == crate::estargz::PREFETCH_LANDMARK)
        else {
            return;
        };
        // Locked first, so opens of these files wait for this fetch instead of doing their own.
        let mut files = Vec::new();
        for e in entries[..end]
            .iter()
            .filter(|e| e.kind == "reg" && e.size > 0)
        {
            let name = clean_name(&e.name);
            // A name given twice is one file: a second flock of it would wait for the first.
            if files.iter().any(|(n, _)| *n == name) {
                continue;
            }
            if let Ok(w) = open_beneath(&v.root, name, OFlags::WRONLY)
                && rustix::fs::flock(&w, FlockOperation::LockExclusive).is_ok()
                && is_marked(w.as_fd()).unwrap_or(false)
            {
                files.push((name, w));
            }
        }
        let chunks: Vec<Chunk> = files
            .iter()
            .flat_map(|(n, _)| v.chunks.get(*n).cloned().unwrap_or_default())
            .collect();
        let prefetched = self.fetch(v, &chunks).and_then(|data| {
            let mut data = data.iter();
            for (name, w) in &files {
                for c in &v.chunks[*name] {
                    let d = data.next().expect("a chunk's data");
                    w.write_all_at(d, c.file_offset)
                        .map_err(|e| e.to_string())?;
                }
                finish(w, v.mtimes.get(*name).copied().unwrap_or(0)).map_err(|e| e.to_string())?;
            }
            Ok(())
        });
        match prefetched {
            Ok(()) => tracing::info!(layer = %v.layer.digest, "prefetched {} files", files.len()),
            Err(e) => tracing::warn!(layer = %v.layer.digest, "prefetch failed: {e}"),
        }
    }

    /// Fills every file of volume `key` still marked from one read of its whole blob (its
    /// digest and diff_id checked), then makes it an ordinary volume. One daemon at a time
    /// does this for a volume; others wait and find it done. Retries while the registry fails.
    pub fn complete(&self, store: &Store, key: &str) {
        let Some(v) = self.volumes.get(key) else {
            return;
        };
        std::thread::sleep(self.delay);
        let toc = toc_path(&store.volumes(), key);
        let Ok(lock) = std::fs::File::open(&toc) else {
            v.done.store(true, Ordering::Relaxed); // completed meanwhile
            return;
        };
        if rustix::fs::flock(&lock, FlockOperation::LockExclusive).is_err() {
            return;
        }
        if !toc.exists() {
            v.done.store(true, Ordering::Relaxed); // by another daemon, while this one waited
            return;
        }
        let mut pause = Duration::from_secs(1);
        loop {
            match self.complete_once(v) {
                Ok(()) => break,
                // A blob that is not what the manifest says will not become so: its files
                // stay fetched one by one, each checked against the TOC.
                Err(
                    e @ (ImageError::DigestMismatch { .. }
                    | ImageError::SizeMismatch { .. }
                    | ImageError::Invalid(_)),
                ) => {
                    tracing::error!(layer = %v.layer.digest, "the lazy layer cannot be completed: {e}");
                    return;
                }
                Err(e) => {
                    tracing::warn!(layer = %v.layer.digest, "completing the lazy layer failed, retrying in {pause:?}: {e}");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(60));
                }
            }
        }
        if let Err(e) = store.complete_volume(key) {
            tracing::warn!(layer = %v.layer.digest, "recording the completed layer: {e}");
        }
        v.done.store(true, Ordering::Relaxed);
        tracing::info!(layer = %v.layer.digest, "lazy layer complete");
    }

    fn complete_once(&self, v: &Volume) -> Result<(), ImageError> {
        let root = v.root.try_clone().map_err(|e| ImageError::Io {
            what: "open lazy volume".into(),
            cause: e,
        })?;
        // The digest each name's data must have (the last entry of a name is the file).
        let digests: HashMap<String, String> = v
            .index
            .toc
            .entries
            .iter()
            .filter(|e| e.kind == "reg")
            .map(|e| (clean_name(&e.name).to_string(), e.digest.clone()))
            .collect();
        self.rt.block_on(async {
            let r = self.registry(v).await?;
            crate::image::read_registry_layer(r, &v.layer.layer_info(), move |tar| {
                fill_from_tar(tar, &root, &digests)
            })
            .await
        })
    }
}

impl nestfs_fuse::Fetch for Filler {
    /// A file of one chunk is filled now; a bigger one as its reads come (see
    /// [`nestfs_fuse::Fetch::read`]).
    fn open(&self, file: BorrowedFd) -> io::Result<bool> {
        let Some((v, name)) = self.marked(file)? else {
            return Ok(true);
        };
        let chunks = v.chunks.get(name).map_or(0, Vec::len);
        if chunks > 1 {
            return Ok(false);
        }
        self.fill_file(file)?;
        Ok(true)
    }

    /// Fetches the chunks of the file that `len` bytes at `offset` fall in and it lacks,
    /// with one range request; the file is complete once it has them all.
    fn read(&self, file: BorrowedFd, offset: u64, len: u64) -> io::Result<()> {
        let Some((v, name)) = self.marked(file)? else {
            return Ok(());
        };
        let chunks = v.chunks.get(name).map(Vec::as_slice).unwrap_or_default();
        let wanted: Vec<usize> = (0..chunks.len())
            .filter(|&i| {
                let c = &chunks[i];
                c.file_offset < offset + len && offset < c.file_offset + c.len
            })
            .collect();
        let lacking = |have: &[u8]| -> Vec<usize> {
            wanted
                .iter()
                .copied()
                .filter(|&i| have.get(i / 8).is_none_or(|b| b & (1 << (i % 8)) == 0))
                .collect()
        };
        if lacking(&have(file)?).is_empty() {
            return Ok(());
        }
        let w = reopen(file, OFlags::WRONLY)?;
        rustix::fs::flock(&w, FlockOperation::LockExclusive)?;
        if !is_marked(w.as_fd())? {
            return Ok(());
        }
        let mut got = have(w.as_fd())?;
        let missing = lacking(&got);
        let picked: Vec<Chunk> = missing.iter().map(|&i| chunks[i].clone()).collect();
        let data = self.fetch(v, &picked).map_err(|why| {
            tracing::error!(layer = %v.layer.digest, file = %name, "lazy fetch failed: {why}");
            io::Error::from_raw_os_error(libc::EIO)
        })?;
        for (c, d) in picked.iter().zip(&data) {
            w.write_all_at(d, c.file_offset)?;
        }
        got.resize(chunks.len().div_ceil(8), 0);
        for i in missing {
            got[i / 8] |= 1 << (i % 8);
        }
        let mtime = v.mtimes.get(name).copied().unwrap_or(0);
        if (0..chunks.len()).all(|i| got[i / 8] & (1 << (i % 8)) != 0) {
            return finish(&w, mtime);
        }
        // The data is on disk before the map says so, and the file keeps its layer's mtime.
        rustix::fs::fdatasync(&w)?;
        crate::unpack::set_file_times(&w, mtime)?;
        rustix::fs::fsetxattr(&w, HAVE, &got, rustix::fs::XattrFlags::empty())?;
        Ok(())
    }

    fn fill(&self, file: BorrowedFd) -> io::Result<()> {
        self.fill_file(file)
    }

    fn needed(&self) -> bool {
        self.volumes
            .values()
            .any(|v| !v.done.load(Ordering::Relaxed))
    }
}

/// The chunks of a marked file fetched so far (see [`HAVE`]).
fn have(file: BorrowedFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 8192];
    match rustix::fs::fgetxattr(file, HAVE, &mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Ok(buf)
        }
        Err(rustix::io::Errno::NODATA) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Writes each marked file's data from the layer's tar stream, if it has the TOC's digest.
fn fill_from_tar(
    tar: &mut dyn Read,
    root: &OwnedFd,
    digests: &HashMap<String, String>,
) -> Result<(), ImageError> {
    let io = |what: &str, e: io::Error| ImageError::Io {
        what: what.to_string(),
        cause: e,
    };
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(|e| io("read lazy layer", e))? {
        let mut entry = entry.map_err(|e| io("read lazy layer", e))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = clean_name(&name);
        if !entry.header().entry_type().is_file() || entry.size() == 0 || is_metadata_entry(name) {
            continue;
        }
        let Ok(w) = open_beneath(root, name, OFlags::WRONLY) else {
            continue;
        };
        let fail = |e: io::Error| io(&format!("fill {name:?}"), e);
        if !is_marked(w.as_fd()).map_err(fail)? {
            continue;
        }
        rustix::fs::flock(&w, FlockOperation::LockExclusive).map_err(|e| fail(e.into()))?;
        if !is_marked(w.as_fd()).map_err(fail)? {
            continue;
        }
        let mtime = entry.header().mtime().unwrap_or(0) as i64;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0;
        loop {
            let n = entry.read(&mut buf).map_err(fail)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            w.write_all_at(&buf[..n], at).map_err(fail)?;
            at += n as u64;
        }
        // An earlier entry of a name given twice: its data is not the file's.
        let got = crate::image::sha256_digest(hash.finalize());
        if digests.get(name) == Some(&got) {
            finish(&w, mtime).map_err(fail)?;
        }
    }
    Ok(())
}

/// Whether the file still lacks data (asked before every open and read of a layer file until
/// its volume is complete, so nothing is allocated).
fn is_marked(file: BorrowedFd) -> io::Result<bool> {
    match rustix::fs::fgetxattr(file, MARK, &mut [0u8; 0]) {
        Ok(_) => Ok(true),
        Err(rustix::io::Errno::NODATA) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A layer file by its name in the volume, never through a symlink or out of it.
fn open_beneath(root: &OwnedFd, name: &str, flags: OFlags) -> io::Result<File> {
    Ok(File::from(rustix::fs::openat2(
        root,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?))
}

/// The open file again, for writing.
fn reopen(file: BorrowedFd, flags: OFlags) -> io::Result<File> {
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
    Ok(File::from(rustix::fs::open(
        path,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
    )?))
}

/// Syncs a filled file, gives it back its layer's mtime and drops its mark.
fn finish(w: &File, mtime: i64) -> io::Result<()> {
    rustix::fs::fdatasync(w)?;
    crate::unpack::set_file_times(w, mtime)?;
    rustix::fs::fremovexattr(w, MARK)?;
    match rustix::fs::fremovexattr(w, HAVE) {
        Ok(()) | Err(rustix::io::Errno::NODATA) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
