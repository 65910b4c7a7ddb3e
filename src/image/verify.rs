//! The one-pass layer pipeline: blob bytes -> digest -> decompression -> diff_id -> unpack.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use super::{ImageError, LayerInfo};
use crate::unpack;

/// Hashes (and counts) everything read through it.
pub struct Hashing<R> {
    inner: R,
    hash: Sha256,
    pub count: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }

    /// The reader beneath.
    pub fn inner_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Reads the rest, then returns `sha256:<hex>`.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((sha256_digest(self.hash.finalize()), self.count))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    sha256_digest(Sha256::digest(data))
}

/// `sha256:<hex>` of a finished SHA-256 hash.
pub fn sha256_digest(hash: impl AsRef<[u8]>) -> String {
    format!("sha256:{}", hex::encode(hash))
}

/// How far past its declared size a blob is read to tell a corrupt blob from a wrong size
/// (at least as far again as the declared size).
const MIN_OVERRUN: u64 = 64 << 20;

/// What a layer is checked against while it streams in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    /// The blob's digest and size, as its descriptor gives them.
    pub blob: bool,
    /// The uncompressed tar's digest, as the config's diff_ids give it.
    pub diff_id: bool,
}

impl Checks {
    pub const ALL: Checks = Checks {
        blob: true,
        diff_id: true,
    };
    pub const NONE: Checks = Checks {
        blob: false,
        diff_id: false,
    };
}

/// Streams a layer blob once through verification and decompression into `consume` (which
/// unpacks it, say); what `consume` leaves unread is read for the diff_id.
pub fn read_layer<T>(
    blob: impl Read,
    layer: &LayerInfo,
    checks: Checks,
    consume: impl FnOnce(&mut dyn Read) -> Result<T, ImageError>,
) -> Result<T, ImageError> {
    let io = |e: io::Error| match e.get_ref().is_some_and(|i| i.is::<ImageError>()) {
        // A source that found out itself what is wrong with the blob (see Registry::blob).
        true => *e
            .into_inner()
            .and_then(|i| i.downcast::<ImageError>().ok())
            .expect("checked above"),
        false => ImageError::Io {
            what: format!("read layer {}", layer.digest),
            cause: e,
        },
    };
    // A blob that runs past its declared size (a registry dripping bytes forever) is cut off
    // one byte later, which the size check below reports.
    let cap = match (checks.blob, layer.size) {
        (true, Some(size)) => size + 1,
        _ => u64::MAX,
    };
    let mut blob = Hashing::new(blob.take(cap));
    let unpacked = (|| {
        let mut tar = Hashing::new(unpack::decompressor(&mut blob).map_err(io)?);
        let stats = consume(&mut tar)?;
        Ok::<_, ImageError>((stats, tar.finish().map_err(io)?.0))
    })();
    // A blob longer than its manifest says was cut off, which broke the stream: say why. A
    // corrupt blob is a digest mismatch, a true one with a wrong size a size mismatch (as
    // GrootFS tells them apart): read on, within a bound, to know which. A stream that did
    // not decompress or untar may be a corrupt blob too: its digest tells.
    let broken = matches!(
        unpacked,
        Err(ImageError::Invalid(_) | ImageError::Io { .. })
    );
    if let (Err(_), true) = (&unpacked, checks.blob)
        && let Some(want) = layer.size
        && (blob.count > want || broken)
    {
        let overrun = blob.count > want;
        blob.inner_mut().set_limit(want.max(MIN_OVERRUN));
        let (digest, got) = blob.finish().map_err(io)?;
        if digest != layer.digest {
            return Err(ImageError::DigestMismatch {
                kind: "layerID",
                what: format!("layer {}", layer.digest),
                got: digest,
            });
        }
        if overrun {
            return Err(ImageError::SizeMismatch {
                what: format!("layer {} runs past it", layer.digest),
                want,
                got,
            });
        }
        return unpacked.map(|(t, _)| t);
    }
    let (stats, diff) = unpacked?;
    let (digest, size) = blob.finish().map_err(io)?;
    if checks.blob {
        if digest != layer.digest {
            return Err(ImageError::DigestMismatch {
                kind: "layerID",
                what: format!("layer {}", layer.digest),
                got: digest,
            });
        }
        if let Some(want) = layer.size
            && want != size
        {
            return Err(ImageError::SizeMismatch {
                what: format!("layer {}", layer.digest),
                want,
                got: size,
            });
        }
    }
    if checks.diff_id && diff != layer.diff_id {
        return Err(ImageError::DigestMismatch {
            kind: "diffID",
            what: format!("uncompressed layer {}", layer.diff_id),
            got: diff,
        });
    }
    Ok(stats)
}

/// Chain ids (the store's volume keys), bottom first, from diff_ids bottom first.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_hex(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], sha256_hex(b"sha256:a sha256:b"));
    }
}
