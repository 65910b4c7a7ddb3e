//! eStargz layers (containerd/stargz-snapshotter's `docs/estargz.md`): a gzip tar in which
//! every regular file's payload (or each chunk of a big one) starts a gzip member of its own,
//! followed by a table of contents (`stargz.index.json`, the last tar entry, in its own
//! member) and a 51-byte footer that locates it. Every other runtime sees an ordinary gzip
//! tar; nestfs can read one file's bytes without the rest of the blob.
//!
//! [`writer`] makes such a layer from any tar (`nestfs convert`), [`reader`] finds and checks
//! the TOC and reads verified chunks from a blob's byte ranges.

pub mod reader;
pub mod writer;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The TOC's name in the tar stream.
pub const TOC_NAME: &str = "stargz.index.json";
/// Marks the end of the files to fetch first.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// Says no file is to be fetched first.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// A landmark's content: one byte.
pub const LANDMARK_CONTENT: u8 = 0x0f;
/// Layer descriptor annotation: the digest of the TOC JSON.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Layer descriptor annotation: the blob's uncompressed size.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";
/// The footer's size in bytes.
pub const FOOTER_SIZE: usize = 51;

/// Whether a tar entry's name is eStargz's own (the TOC or a landmark) rather than the
/// image's: such entries are left out of a rootfs.
pub fn is_metadata_entry(name: &str) -> bool {
    matches!(
        clean_name(name),
        TOC_NAME | PREFETCH_LANDMARK | NO_PREFETCH_LANDMARK
    )
}

/// A tar entry name without leading `./` or `/` and trailing `/`: how names are compared.
pub fn clean_name(name: &str) -> &str {
    let mut n = name;
    loop {
        if let Some(rest) = n.strip_prefix("./") {
            n = rest;
        } else if let Some(rest) = n.strip_prefix('/') {
            n = rest;
        } else {
            break;
        }
    }
    n.trim_end_matches('/')
}

/// `stargz.index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toc {
    pub version: u32,
    pub entries: Vec<TocEntry>,
}

/// One tar entry, or one chunk of a regular file's payload. Field names and meanings are the
/// format's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TocEntry {
    pub name: String,
    /// dir, reg, symlink, hardlink, char, block, fifo or chunk.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub modtime: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    #[serde(default)]
    pub mode: i64,
    #[serde(default)]
    pub uid: u64,
    #[serde(default)]
    pub gid: u64,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub dev_major: i64,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub dev_minor: i64,
    /// Values base64-encoded, as Go marshals `[]byte`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    /// `sha256:<hex>` of a regular file's whole payload.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Where in the blob the gzip member holding this payload or chunk starts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunk_offset: u64,
    /// 0 for the last (or only) chunk of a file: it runs to the file's end.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunk_size: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chunk_digest: String,
    /// Where in the member's uncompressed bytes this payload starts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inner_offset: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

/// The 51-byte footer: an empty gzip member whose extra field says where the TOC's member
/// starts.
pub fn footer(toc_offset: u64) -> [u8; FOOTER_SIZE] {
    let mut f = [0u8; FOOTER_SIZE];
    // ID1 ID2, deflate, FEXTRA, mtime 0, XFL 0, OS unknown.
    f[..10].copy_from_slice(&[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff]);
    f[10..12].copy_from_slice(&26u16.to_le_bytes());
    f[12..14].copy_from_slice(b"SG");
    f[14..16].copy_from_slice(&22u16.to_le_bytes());
    f[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    // A final stored block of length 0, then CRC32 and ISIZE of nothing.
    f[38..43].copy_from_slice(&[1, 0, 0, 0xff, 0xff]);
    f
}

/// The TOC's offset from a footer, or why these bytes are not an eStargz footer.
pub fn parse_footer(f: &[u8]) -> Result<u64, String> {
    if f.len() != FOOTER_SIZE {
        return Err(format!("footer is {} bytes, not {FOOTER_SIZE}", f.len()));
    }
    if f[..4] != [0x1f, 0x8b, 8, 4] || f[10..16] != [26, 0, b'S', b'G', 22, 0] {
        return Err("no eStargz footer (gzip extra field SG) at the end of the blob".into());
    }
    let field = std::str::from_utf8(&f[16..38]).map_err(|_| "footer is not text")?;
    let hex = field
        .strip_suffix("STARGZ")
        .ok_or("footer does not end in STARGZ")?;
    u64::from_str_radix(hex, 16).map_err(|_| format!("footer offset {hex:?} is not hex"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_footer_is_an_empty_gzip_member_that_locates_the_toc() {
        let f = footer(0x1234_5678);
        assert_eq!(parse_footer(&f), Ok(0x1234_5678));
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&f[..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
        let mut bad = f;
        bad[13] = b'X';
        assert!(parse_footer(&bad).is_err());
        assert!(parse_footer(&f[1..]).is_err());
    }

    #[test]
    fn names_compare_without_leading_dot_slash() {
        assert_eq!(clean_name("./a/b/"), "a/b");
        assert_eq!(clean_name("/./a"), "a");
        assert!(is_metadata_entry("./stargz.index.json"));
        assert!(is_metadata_entry(".prefetch.landmark"));
        assert!(!is_metadata_entry("etc/.prefetch.landmark"));
    }
}
