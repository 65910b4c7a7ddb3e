//! The parts of OCI / Docker v2 manifests, indexes and image configs nestfs reads.

use std::collections::HashMap;

use serde::Deserialize;

use super::ImageError;

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: Option<u64>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    pub platform: Option<Platform>,
    /// Where a foreign layer's blob lives (OCI `urls`).
    #[serde(default)]
    pub urls: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

/// An image manifest, or an index / manifest list (then `manifests` is set).
#[derive(Debug, Deserialize)]
pub struct Manifest {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    pub manifests: Option<Vec<Descriptor>>,
}

#[derive(Debug, Deserialize)]
pub struct ImageConfig {
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "Env")]
    pub env: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub fn is_index(media_type: &str) -> bool {
    media_type.contains("image.index") || media_type.contains("manifest.list")
}

pub fn parse<'a, T: Deserialize<'a>>(what: &str, data: &'a [u8]) -> Result<T, ImageError> {
    serde_json::from_slice(data).map_err(|e| ImageError::Invalid(format!("{what}: {e}")))
}

/// The manifest for this machine from an index: linux on the host's architecture, else
/// linux/amd64, else the only entry.
pub fn pick_platform(entries: &[Descriptor]) -> Result<&Descriptor, ImageError> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let on = |a: &str| {
        entries.iter().find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == a)
        })
    };
    on(arch)
        .or_else(|| on("amd64"))
        .or(if entries.len() == 1 {
            entries.first()
        } else {
            None
        })
        .ok_or_else(|| {
            ImageError::NotFound(format!("no manifest for linux/{arch} in the image index"))
        })
}

/// A digest safe to use as a blob file name: `sha256:` and 64 hex digits.
pub fn check_digest(d: &str) -> Result<&str, ImageError> {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) => Ok(h),
        _ => Err(ImageError::Invalid(format!("unsupported digest {d:?}"))),
    }
}
