//! Reads an eStargz blob by byte ranges: the footer, then the TOC (checked against the
//! digest the manifest gives), then any file's chunks, each checked against its digest
//! before a byte of it is handed out.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use super::{FOOTER_SIZE, TOC_NAME, Toc};
use crate::image::sha256_hex;

/// A TOC bigger than this (uncompressed) is refused: a layer of millions of files has a TOC
/// of a few hundred MiB at most.
const MAX_TOC: u64 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not an eStargz blob: {0}")]
    NotEstargz(String),
    #[error("eStargz TOC digest mismatch: the manifest says {want}, the TOC has {got}")]
    TocDigest { want: String, got: String },
    #[error("invalid eStargz TOC: {0}")]
    InvalidToc(String),
    #[error("chunk of {name:?} at {offset}: digest {got}, the TOC says {want}")]
    ChunkDigest {
        name: String,
        offset: u64,
        want: String,
        got: String,
    },
    #[error("read eStargz blob: {0}")]
    Io(#[from] io::Error),
}

/// Byte ranges of a blob (a file here; a registry's range requests for lazy pulls).
pub trait Ranges {
    fn size(&self) -> io::Result<u64>;
    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>>;
}

impl Ranges for File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

/// A blob's TOC, checked, with where each payload's member ends.
#[derive(Debug)]
pub struct Index {
    pub toc: Toc,
    pub toc_offset: u64,
    /// Member starts, sorted: a member ends where the next one starts.
    starts: Vec<u64>,
}

/// One payload (a whole small file, or a chunk of a big one) as the TOC places it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub name: String,
    /// Where in the file it goes.
    pub file_offset: u64,
    pub len: u64,
    offset: u64,
    inner_offset: u64,
    digest: String,
}

/// Finds the TOC through the footer and checks it against `want_digest` (the layer's
/// `containerd.io/snapshot/stargz/toc.digest` annotation).
pub fn open(blob: &impl Ranges, want_digest: &str) -> Result<Index, Error> {
    let footer_at = footer_at(blob.size()?)?;
    let footer = blob.read_range(footer_at, FOOTER_SIZE as u64)?;
    let (toc_offset, len) = toc_member(footer_at, &footer)?;
    let member = blob.read_range(toc_offset, len)?;
    Index::parse(&toc_json(&member)?, toc_offset, want_digest)
}

/// Where the footer of a blob of `size` bytes starts.
pub fn footer_at(size: u64) -> Result<u64, Error> {
    size.checked_sub(FOOTER_SIZE as u64)
        .ok_or_else(|| Error::NotEstargz(format!("{size} bytes is too short")))
}

/// Where the TOC's gzip member starts and how long it is, from the footer at `footer_at`.
pub fn toc_member(footer_at: u64, footer: &[u8]) -> Result<(u64, u64), Error> {
    let toc_offset = super::parse_footer(footer).map_err(Error::NotEstargz)?;
    if toc_offset >= footer_at {
        return Err(Error::NotEstargz(format!(
            "footer places the TOC at {toc_offset}, past the blob's end"
        )));
    }
    Ok((toc_offset, footer_at - toc_offset))
}

/// The TOC entry's payload from its gzip member (a tar holding just `stargz.index.json`).
pub fn toc_json(member: &[u8]) -> Result<Vec<u8>, Error> {
    let gz = flate2::read::GzDecoder::new(member);
    let mut archive = tar::Archive::new(gz);
    let mut entry = archive
        .entries()?
        .next()
        .ok_or_else(|| Error::NotEstargz("the TOC member holds no tar entry".into()))??;
    if super::clean_name(&String::from_utf8_lossy(&entry.path_bytes())) != TOC_NAME {
        return Err(Error::NotEstargz(format!(
            "the footer points at {:?}, not {TOC_NAME}",
            String::from_utf8_lossy(&entry.path_bytes())
        )));
    }
    if entry.size() > MAX_TOC {
        return Err(Error::InvalidToc(format!(
            "{} bytes, more than the {MAX_TOC} allowed",
            entry.size()
        )));
    }
    let mut json = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut json)?;
    Ok(json)
}

impl Index {
    /// Checks TOC JSON (whose member starts at `toc_offset`) against `want_digest`.
    pub fn parse(json: &[u8], toc_offset: u64, want_digest: &str) -> Result<Index, Error> {
        let got = sha256_hex(json);
        if got != want_digest {
            return Err(Error::TocDigest {
                want: want_digest.to_string(),
                got,
            });
        }
        let toc: Toc =
            serde_json::from_slice(json).map_err(|e| Error::InvalidToc(e.to_string()))?;
        if toc.version != 1 {
            return Err(Error::InvalidToc(format!("version {}", toc.version)));
        }
        if let Some(e) = toc.entries.iter().find(|e| e.offset > toc_offset) {
            return Err(Error::InvalidToc(format!(
                "{:?} is placed at {} past the TOC at {toc_offset}",
                e.name, e.offset
            )));
        }
        let mut starts: Vec<u64> = toc.entries.iter().map(|e| e.offset).collect();
        starts.push(toc_offset);
        starts.sort_unstable();
        starts.dedup();
        Ok(Index {
            toc,
            toc_offset,
            starts,
        })
    }

    /// Every payload the TOC places, in TOC order.
    pub fn chunks(&self) -> Result<Vec<Chunk>, Error> {
        let mut out = Vec::new();
        let mut file_size = 0;
        for e in &self.toc.entries {
            match e.kind.as_str() {
                "reg" if e.size > 0 => file_size = e.size,
                "chunk" => {}
                _ => continue,
            }
            let len = match e.chunk_size {
                0 => file_size.checked_sub(e.chunk_offset).ok_or_else(|| {
                    Error::InvalidToc(format!("{:?}: chunk past the file's end", e.name))
                })?,
                n => n,
            };
            out.push(Chunk {
                name: e.name.clone(),
                file_offset: e.chunk_offset,
                len,
                offset: e.offset,
                inner_offset: e.inner_offset,
                digest: e.chunk_digest.clone(),
            });
        }
        Ok(out)
    }

    /// The bytes of the member a chunk is in: from its start to the next member's.
    pub fn member_range(&self, c: &Chunk) -> (u64, u64) {
        let i = self.starts.partition_point(|&s| s <= c.offset);
        let end = self.starts.get(i).copied().unwrap_or(self.toc_offset);
        (c.offset, end - c.offset)
    }

    /// A chunk's bytes, from its member's compressed bytes, checked against its digest.
    pub fn decode(&self, c: &Chunk, member: &[u8]) -> Result<Vec<u8>, Error> {
        let mut gz = flate2::read::GzDecoder::new(member);
        io::copy(&mut (&mut gz).take(c.inner_offset), &mut io::sink())?;
        let mut data = Vec::with_capacity(c.len as usize);
        gz.take(c.len).read_to_end(&mut data)?;
        let got = sha256_hex(&data);
        if data.len() as u64 != c.len || got != c.digest {
            return Err(Error::ChunkDigest {
                name: c.name.clone(),
                offset: c.file_offset,
                want: c.digest.clone(),
                got,
            });
        }
        Ok(data)
    }

    /// Fetches and checks one chunk.
    pub fn read(&self, blob: &impl Ranges, c: &Chunk) -> Result<Vec<u8>, Error> {
        let (offset, len) = self.member_range(c);
        self.decode(c, &blob.read_range(offset, len)?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::writer::{self, Options};
    use super::*;
    use std::io::{Seek, Write};

    /// A tar with a small file, a big one, an empty one, a dir and a symlink.
    fn tar() -> File {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_577_836_800);
            h.set_uid(0);
            h.set_gid(0);
            b.append_data(&mut h, name, data).unwrap();
        };
        add("small", b"hello");
        add("big", &(0..10_000u32).map(|i| i as u8).collect::<Vec<_>>());
        add("empty", b"");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_link(&mut h, "link", "small").unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&b.into_inner().unwrap()).unwrap();
        f.rewind().unwrap();
        f
    }

    fn converted(prefetch: &[String]) -> (File, writer::Written) {
        let mut out = tempfile::tempfile().unwrap();
        let opts = Options {
            chunk_size: 4096,
            ..Options::default()
        };
        let w = writer::write(&tar(), prefetch, &opts, &mut out).unwrap();
        (out, w)
    }

    #[test]
    fn every_chunk_reads_back_from_its_own_member() {
        let (blob, w) = converted(&[]);
        assert_eq!(blob.metadata().unwrap().len(), w.size);
        let index = open(&blob, &w.toc_digest).unwrap();
        let chunks = index.chunks().unwrap();
        let big: Vec<u8> = chunks
            .iter()
            .filter(|c| c.name == "big")
            .flat_map(|c| index.read(&blob, c).unwrap())
            .collect();
        assert_eq!(big, (0..10_000u32).map(|i| i as u8).collect::<Vec<_>>());
        assert_eq!(chunks.iter().filter(|c| c.name == "big").count(), 3);
        let small = chunks.iter().find(|c| c.name == "small").unwrap();
        assert_eq!(index.read(&blob, small).unwrap(), b"hello");
        // The no-prefetch landmark leads; the TOC names every entry.
        let names: Vec<_> = index.toc.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                ".no.prefetch.landmark",
                "small",
                "big",
                "big",
                "big",
                "empty",
                "link"
            ]
        );
    }

    #[test]
    fn a_wrong_toc_digest_or_a_corrupt_chunk_is_refused() {
        let (blob, w) = converted(&[]);
        let wrong = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(open(&blob, &wrong), Err(Error::TocDigest { .. })));
        let index = open(&blob, &w.toc_digest).unwrap();
        let small = index
            .chunks()
            .unwrap()
            .into_iter()
            .find(|c| c.name == "small")
            .unwrap();
        // The same member, but holding other bytes of the same length.
        let mut other = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        other.write_all(b"HELLO").unwrap();
        let err = index.decode(&small, &other.finish().unwrap()).unwrap_err();
        assert!(matches!(err, Error::ChunkDigest { .. }), "{err}");
    }

    #[test]
    fn prefetched_names_come_first_then_the_landmark() {
        let (blob, w) = converted(&["/link".into(), "nothing".into()]);
        assert_eq!(w.missing, ["nothing"]);
        let index = open(&blob, &w.toc_digest).unwrap();
        let names: Vec<_> = index.toc.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "link",
                ".prefetch.landmark",
                "small",
                "big",
                "big",
                "big",
                "empty"
            ]
        );
    }

    #[test]
    fn a_plain_gzip_tar_is_not_estargz() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&[0u8; 4096]).unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&gz.finish().unwrap()).unwrap();
        let err = open(&f, "sha256:x").unwrap_err();
        assert!(matches!(err, Error::NotEstargz(_)), "{err}");
    }
}
