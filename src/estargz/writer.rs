//! Makes an eStargz blob from a plain tar. Entries keep their header bytes (a PAX `path`
//! record is added only where a GNU long name stood), so every runtime unpacks the blob to
//! the tree the tar had; names in the prefetch list (with their parent directories and
//! hard-link targets) come first, ended by the prefetch landmark.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};

use anyhow::{Context, bail};
use base64::Engine;
use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use super::{LANDMARK_CONTENT, TOC_NAME, Toc, TocEntry, clean_name};
use crate::image::{sha256_digest, sha256_hex};

/// Chunk size stargz-snapshotter's tools use.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;

#[derive(Debug, Clone)]
pub struct Options {
    /// Regular files bigger than this are split into chunks of this size.
    pub chunk_size: u64,
    pub level: Compression,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            chunk_size: DEFAULT_CHUNK_SIZE,
            level: Compression::default(),
        }
    }
}

/// What the blob's descriptor and the image config need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `sha256:<hex>` of the blob.
    pub digest: String,
    pub size: u64,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    pub uncompressed_size: u64,
    /// `sha256:<hex>` of the TOC JSON.
    pub toc_digest: String,
    /// Prefetch names no entry of this tar has.
    pub missing: Vec<String>,
}

/// One entry of the source tar: where its headers start, what it is.
struct Indexed {
    start: u64,
    name: String,
    /// A link's target (symlink or hard link).
    link: Option<String>,
    hard_link: bool,
}

/// Writes `tar` (a plain tar file) as an eStargz blob to `out`.
pub fn write(
    tar: &File,
    prefetch: &[String],
    opts: &Options,
    out: impl Write,
) -> anyhow::Result<Written> {
    anyhow::ensure!(opts.chunk_size > 0, "chunk size must be above 0");
    let entries = index(tar)?;
    let (order, missing) = order(&entries, prefetch);
    let landmark = if order.prioritized > 0 {
        super::PREFETCH_LANDMARK
    } else {
        super::NO_PREFETCH_LANDMARK
    };
    let mut w = Blob::new(out, opts);
    for (n, &i) in order.indices.iter().enumerate() {
        if n == order.prioritized {
            w.landmark(landmark)?;
        }
        let mut reader = BufReader::new(tar);
        reader.seek(SeekFrom::Start(entries[i].start))?;
        let mut archive = tar::Archive::new(reader);
        let mut entry = archive
            .entries()?
            .next()
            .context("tar ended before an entry it listed")??;
        w.entry(&mut entry, &entries[i])
            .with_context(|| format!("entry {:?}", entries[i].name))?;
    }
    if order.prioritized == order.indices.len() {
        w.landmark(landmark)?;
    }
    let mut written = w.finish()?;
    written.missing = missing;
    Ok(written)
}

/// Every entry's start, name and link target, in tar order; eStargz's own entries of a tar
/// converted before are left out.
fn index(mut tar: &File) -> anyhow::Result<Vec<Indexed>> {
    tar.rewind()?;
    let mut archive = tar::Archive::new(BufReader::new(tar));
    let mut out = Vec::new();
    let mut start = 0;
    for entry in archive.entries_with_seek().context("read tar")? {
        let entry = entry.context("read tar entry")?;
        let name = utf8(&entry.path_bytes(), "name")?;
        let link = match entry.link_name_bytes() {
            Some(l) => Some(utf8(&l, "link target")?),
            None => None,
        };
        let next = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
        let hard_link = entry.header().entry_type().is_hard_link();
        if !super::is_metadata_entry(&name) {
            out.push(Indexed {
                start,
                name,
                link,
                hard_link,
            });
        }
        start = next;
    }
    Ok(out)
}

/// Names are TOC strings: JSON has no way to say other bytes.
fn utf8(b: &[u8], what: &str) -> anyhow::Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| {
        anyhow::anyhow!(
            "{what} {:?} is not UTF-8: eStargz cannot name it",
            String::from_utf8_lossy(b)
        )
    })
}

struct Order {
    indices: Vec<usize>,
    /// How many of `indices` are prioritized (they come first).
    prioritized: usize,
}

/// Prefetch names first (each after its parent directories and, for a hard link, its
/// target, all in tar order among themselves), then the rest in tar order.
fn order(entries: &[Indexed], prefetch: &[String]) -> (Order, Vec<String>) {
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        by_name.entry(clean_name(&e.name)).or_default().push(i);
    }
    let mut picked = HashSet::new();
    let mut missing = Vec::new();
    for name in prefetch {
        let name = clean_name(name);
        if !by_name.contains_key(name) {
            missing.push(name.to_string());
            continue;
        }
        pick(name, entries, &by_name, &mut picked);
    }
    let mut first: Vec<usize> = picked.iter().copied().collect();
    first.sort_unstable();
    let prioritized = first.len();
    let rest = (0..entries.len()).filter(|i| !picked.contains(i));
    let indices = first.into_iter().chain(rest).collect();
    (
        Order {
            indices,
            prioritized,
        },
        missing,
    )
}

fn pick(
    name: &str,
    entries: &[Indexed],
    by_name: &HashMap<&str, Vec<usize>>,
    picked: &mut HashSet<usize>,
) {
    if let Some((parent, _)) = name.rsplit_once('/') {
        pick(parent, entries, by_name, picked);
    }
    for &i in by_name.get(name).map(Vec::as_slice).unwrap_or_default() {
        // A symlink's target need not be in the tar; a hard link's must come before it.
        if picked.insert(i)
            && entries[i].hard_link
            && let Some(target) = &entries[i].link
        {
            let target = clean_name(target);
            if target != name {
                pick(target, entries, by_name, picked);
            }
        }
    }
}

/// Counts and hashes what goes into the blob.
struct Counted<W> {
    inner: W,
    hash: Sha256,
    n: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The blob being written: gzip members opened and closed where the format wants them.
struct Blob<W: Write> {
    /// Exactly one of `raw` and `gz` is set: the blob, or the open member writing to it.
    raw: Option<Counted<W>>,
    gz: Option<GzEncoder<Counted<W>>>,
    /// The uncompressed stream: the diff_id.
    diff: Sha256,
    uncompressed: u64,
    toc: Vec<TocEntry>,
    opts: Options,
}

impl<W: Write> Blob<W> {
    fn new(out: W, opts: &Options) -> Self {
        Blob {
            raw: Some(Counted {
                inner: out,
                hash: Sha256::new(),
                n: 0,
            }),
            gz: None,
            diff: Sha256::new(),
            uncompressed: 0,
            toc: Vec::new(),
            opts: opts.clone(),
        }
    }

    /// Writes tar bytes into the open member (opening one if none is).
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        if self.gz.is_none() {
            let raw = self.raw.take().expect("blob writer");
            self.gz = Some(GzEncoder::new(raw, self.opts.level));
        }
        self.gz.as_mut().expect("open member").write_all(data)?;
        self.diff.update(data);
        self.uncompressed += data.len() as u64;
        Ok(())
    }

    /// Ends the open member; returns where the next one starts.
    fn close(&mut self) -> io::Result<u64> {
        if let Some(gz) = self.gz.take() {
            self.raw = Some(gz.finish()?);
        }
        Ok(self.raw.as_ref().expect("blob writer").n)
    }

    fn entry<R: Read>(&mut self, e: &mut tar::Entry<R>, at: &Indexed) -> anyhow::Result<()> {
        let header = e.header().clone();
        let mut pax: Vec<(String, Vec<u8>)> = match e.pax_extensions()? {
            Some(exts) => exts
                .map(|x| x.map(|x| (x.key().unwrap_or("").to_string(), x.value_bytes().to_vec())))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        // A name or target the header cannot hold (GNU long names) goes to a PAX record.
        pax.retain(|(k, _)| k != "path" && k != "linkpath");
        if *header.path_bytes() != *at.name.as_bytes() {
            pax.push(("path".into(), at.name.clone().into_bytes()));
        }
        if let Some(link) = &at.link
            && header.link_name_bytes().as_deref() != Some(link.as_bytes())
        {
            pax.push(("linkpath".into(), link.clone().into_bytes()));
        }
        let mut toc = toc_entry(&header, at, &pax)?;
        if !pax.is_empty() {
            let mut b = tar::Builder::new(Vec::new());
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
            self.put(&std::mem::take(b.get_mut()))?;
        }
        self.put(header.as_bytes())?;
        if toc.kind != "reg" {
            self.toc.push(toc);
            return Ok(());
        }
        let size = e.size();
        toc.size = size;
        let mut whole = Sha256::new();
        let first = self.toc.len();
        let mut done = 0;
        let mut chunk = vec![0u8; size.min(self.opts.chunk_size) as usize];
        while done < size {
            let n = (size - done).min(self.opts.chunk_size);
            let buf = &mut chunk[..n as usize];
            e.read_exact(buf)
                .with_context(|| format!("read {n} bytes at {done}"))?;
            let offset = self.close()?;
            self.put(buf)?;
            whole.update(&*buf);
            let mut c = if done == 0 {
                std::mem::take(&mut toc)
            } else {
                TocEntry {
                    name: at.name.clone(),
                    kind: "chunk".into(),
                    ..TocEntry::default()
                }
            };
            c.offset = offset;
            c.chunk_offset = done;
            c.chunk_size = if done + n < size { n } else { 0 };
            c.chunk_digest = sha256_hex(buf);
            self.toc.push(c);
            done += n;
        }
        if size == 0 {
            self.toc.push(toc);
        }
        self.toc[first].digest = sha256_digest(whole.finalize());
        self.pad(size)
    }

    /// Zeros to the end of a payload's last 512-byte block.
    fn pad(&mut self, size: u64) -> anyhow::Result<()> {
        let pad = (512 - size % 512) % 512;
        self.put(&vec![0u8; pad as usize])?;
        Ok(())
    }

    /// A landmark file: one byte, in a member of its own.
    fn landmark(&mut self, name: &str) -> anyhow::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name)?;
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(1);
        h.set_cksum();
        self.put(h.as_bytes())?;
        let offset = self.close()?;
        self.put(&[LANDMARK_CONTENT])?;
        let d = sha256_hex(&[LANDMARK_CONTENT]);
        self.toc.push(TocEntry {
            name: name.into(),
            kind: "reg".into(),
            size: 1,
            mode: 0o644,
            offset,
            digest: d.clone(),
            chunk_digest: d,
            ..TocEntry::default()
        });
        self.pad(1)
    }

    /// The TOC (last entry, own member, with the end-of-archive blocks) and the footer.
    fn finish(mut self) -> anyhow::Result<Written> {
        let toc = Toc {
            version: 1,
            entries: std::mem::take(&mut self.toc),
        };
        let json = serde_json::to_vec_pretty(&toc)?;
        let toc_offset = self.close()?;
        let mut h = tar::Header::new_ustar();
        h.set_path(TOC_NAME)?;
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(json.len() as u64);
        h.set_cksum();
        self.put(h.as_bytes())?;
        self.put(&json)?;
        self.pad(json.len() as u64)?;
        self.put(&[0u8; 1024])?;
        self.close()?;
        let mut raw = self.raw.take().expect("blob writer");
        raw.write_all(&super::footer(toc_offset))?;
        raw.flush()?;
        Ok(Written {
            digest: sha256_digest(raw.hash.finalize()),
            size: raw.n,
            diff_id: sha256_digest(self.diff.finalize()),
            uncompressed_size: self.uncompressed,
            toc_digest: sha256_hex(&json),
            missing: Vec::new(),
        })
    }
}

/// The TOC's description of an entry (offsets and digests of payloads are filled in later).
fn toc_entry(h: &tar::Header, at: &Indexed, pax: &[(String, Vec<u8>)]) -> anyhow::Result<TocEntry> {
    use tar::EntryType as T;
    let kind = match h.entry_type() {
        T::Regular | T::Continuous => "reg",
        T::Directory => "dir",
        T::Symlink => "symlink",
        T::Link => "hardlink",
        T::Char => "char",
        T::Block => "block",
        T::Fifo => "fifo",
        other => bail!("tar entry type {other:?} has no eStargz equivalent"),
    };
    let record = |key: &str| {
        pax.iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    let number = |key: &str, header: io::Result<u64>| -> anyhow::Result<u64> {
        match record(key) {
            // PAX times may have a fraction: the TOC has seconds.
            Some(v) => v
                .split('.')
                .next()
                .unwrap_or_default()
                .parse()
                .with_context(|| format!("PAX {key} {v:?}")),
            None => Ok(header?),
        }
    };
    let mtime = number("mtime", h.mtime())?;
    let modtime = match chrono::DateTime::from_timestamp(mtime as i64, 0) {
        Some(t) if mtime != 0 => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        _ => String::new(),
    };
    // Only devices' numbers are read: other entries often leave the fields blank.
    let (dev_major, dev_minor) = match kind {
        "char" | "block" => (
            h.device_major()?.unwrap_or(0),
            h.device_minor()?.unwrap_or(0),
        ),
        _ => (0, 0),
    };
    let xattrs = pax
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("SCHILY.xattr.")?;
            Some((
                name.to_string(),
                base64::engine::general_purpose::STANDARD.encode(v),
            ))
        })
        .collect();
    Ok(TocEntry {
        name: at.name.clone(),
        kind: kind.into(),
        modtime,
        link_name: at.link.clone().unwrap_or_default(),
        mode: i64::from(h.mode()?),
        uid: number("uid", h.uid())?,
        gid: number("gid", h.gid())?,
        dev_major: i64::from(dev_major),
        dev_minor: i64::from(dev_minor),
        xattrs,
        ..TocEntry::default()
    })
}
