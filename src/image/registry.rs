//! `docker://` images from registries (Docker Hub or any distribution registry) via oci-client.
//! Every call is bounded: connect and per-read timeouts in the client, an overall deadline for
//! fetching the manifest and config, and blobs cut off past their declared size.

use std::time::Duration;

use futures_util::TryStreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::manifest::{self, Descriptor, ImageConfig};
use super::{ImageError, LayerInfo, PullOptions};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence tolerated in the middle of a response.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest manifest + config fetch, redirects and token dances included.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(120);

pub struct Registry {
    client: Client,
    reference: Reference,
    pub name: String,
}

fn timeouts() -> (Duration, Duration, Duration) {
    // Tests shorten these to prove a stalling registry fails in bounded time.
    let env = |k: &str, d: Duration| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(d)
    };
    (
        env("NESTFS_CONNECT_TIMEOUT_MS", CONNECT_TIMEOUT),
        env("NESTFS_READ_TIMEOUT_MS", READ_TIMEOUT),
        env("NESTFS_RESOLVE_DEADLINE_MS", RESOLVE_DEADLINE),
    )
}

/// Sorts an oci-client failure into the message a user can act on.
fn classify(name: &str, e: impl std::fmt::Display) -> ImageError {
    let msg = e.to_string();
    let lower = msg.to_ascii_lowercase();
    if lower.contains("401")
        || lower.contains("not authorized")
        || lower.contains("unauthorized")
        || lower.contains("authentication")
        || lower.contains("denied")
    {
        ImageError::Unauthorized(name.to_string())
    } else if lower.contains("404") || lower.contains("not found") || lower.contains("unknown") {
        ImageError::NotFound(format!("image {name} not found in the registry"))
    } else if lower.contains("connect")
        || lower.contains("dns")
        || lower.contains("timed out")
        || lower.contains("timeout")
        || lower.contains("error sending request")
    {
        ImageError::Unreachable {
            name: name.to_string(),
            reason: msg,
        }
    } else {
        ImageError::Invalid(format!("{name}: {msg}"))
    }
}

pub async fn resolve(
    registry: &str,
    repository: &str,
    reference: &str,
    opts: &PullOptions,
) -> Result<(Registry, Vec<String>, Vec<LayerInfo>), ImageError> {
    let (connect, read, deadline) = timeouts();
    let config = ClientConfig {
        protocol: ClientProtocol::HttpsExcept(opts.insecure_registries.clone()),
        connect_timeout: Some(connect),
        read_timeout: Some(read),
        ..ClientConfig::default()
    };
    let client = Client::new(config);
    let r = if reference.starts_with("sha256:") {
        Reference::with_digest(registry.into(), repository.into(), reference.into())
    } else {
        Reference::with_tag(registry.into(), repository.into(), reference.into())
    };
    let name = format!(
        "{registry}/{repository}{}{reference}",
        if reference.starts_with("sha256:") {
            "@"
        } else {
            ":"
        }
    );
    let auth = match (&opts.username, &opts.password) {
        (Some(u), p) => RegistryAuth::Basic(u.clone(), p.clone().unwrap_or_default()),
        _ => RegistryAuth::Anonymous,
    };
    let fetched = tokio::time::timeout(deadline, client.pull_manifest_and_config(&r, &auth))
        .await
        .map_err(|_| ImageError::Unreachable {
            name: name.clone(),
            reason: format!("no answer within {deadline:?}"),
        })?
        .map_err(|e| classify(&name, e))?;
    let (m, _digest, config) = fetched;
    let config: ImageConfig = manifest::parse("image config", config.as_bytes())?;
    let descs: Vec<Descriptor> = m
        .layers
        .iter()
        .map(|l| Descriptor {
            media_type: l.media_type.clone(),
            digest: l.digest.clone(),
            size: u64::try_from(l.size).ok(),
            annotations: Default::default(),
            platform: None,
        })
        .collect();
    let layers = super::layers(&descs, &config.rootfs.diff_ids)?;
    let env = config.config.and_then(|c| c.env).unwrap_or_default();
    Ok((
        Registry {
            client,
            reference: r,
            name,
        },
        env,
        layers,
    ))
}

impl Registry {
    /// The layer blob as a byte stream (async).
    pub async fn blob(
        &self,
        layer: &LayerInfo,
    ) -> Result<impl tokio::io::AsyncRead + Send + Unpin + 'static, ImageError> {
        let s = self
            .client
            .pull_blob_stream(&self.reference, layer.digest.as_str())
            .await
            .map_err(|e| classify(&self.name, e))?;
        Ok(tokio_util::io::StreamReader::new(
            s.stream.map_err(std::io::Error::other),
        ))
    }
}
