//! `docker://` images from registries (Docker Hub or any distribution registry) via oci-client.
//! Every call is bounded: connect and per-read timeouts in the client, an overall deadline for
//! fetching the manifest and config, and blobs cut off past their declared size.

use std::time::Duration;

use futures_util::TryStreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::manifest::{self, Descriptor, ImageConfig};
use super::transport::{self, Cause};
use super::{Described, ImageError, LayerInfo, PullOptions};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence tolerated in the middle of a response.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest manifest + config fetch, redirects and token dances included.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(120);

pub struct Registry {
    client: Client,
    reference: Reference,
    ctx: Ctx,
    transport: Transport,
    /// The credentials it took, if any (`--username`, `--password`).
    credentials: Option<(String, String)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({})", self.ctx.name)
    }
}

/// How to reach an image's registry again from another process (a lazily pulled layer's
/// daemon): the host, the repository, the transport that answered and the credentials it
/// took (written down in the store, which only its owner may read, until the layer is
/// complete).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Remote {
    registry: String,
    repository: String,
    transport: Transport,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credentials: Option<(String, String)>,
}

pub(super) fn timeouts() -> (Duration, Duration, Duration) {
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

/// How a registry is spoken to. GrootFS tries a registry listed as insecure over HTTPS
/// without verifying its certificate first, then over plain HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Transport {
    Https,
    HttpsUnverified,
    Http,
}

fn transports(insecure: bool) -> &'static [Transport] {
    if insecure {
        &[Transport::HttpsUnverified, Transport::Http]
    } else {
        &[Transport::Https]
    }
}

fn client(t: Transport) -> Client {
    let (connect, read, _) = timeouts();
    Client::new(ClientConfig {
        protocol: match t {
            Transport::Http => ClientProtocol::Http,
            _ => ClientProtocol::Https,
        },
        accept_invalid_certificates: t == Transport::HttpsUnverified,
        connect_timeout: Some(connect),
        read_timeout: Some(read),
        ..ClientConfig::default()
    })
}

/// Who is asking, for the messages: the image and the registry host.
struct Ctx {
    name: String,
    registry: String,
    /// Listed by `--insecure-registry` or `create.insecure_registries`.
    insecure: bool,
    with_credentials: bool,
}

/// Sorts an oci-client failure by its variant into the message a user can act on.
fn classify(ctx: &Ctx, e: OciDistributionError) -> ImageError {
    use OciDistributionError as E;
    let name = ctx.name.clone();
    match e {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => refused(ctx, true),
        // Only said of indexes: no entry for this platform, or an index inside one.
        E::ImageManifestNotFoundError(why) => {
            ImageError::NotFound(format!("image {name} not found in the registry: {why}"))
        }
        E::RegistryError { envelope, .. } => {
            let codes: Vec<_> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.contains(&&OciErrorCode::Unauthorized) {
                refused(ctx, true)
            } else if codes.contains(&&OciErrorCode::Denied) {
                refused(ctx, false)
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                not_found(&name)
            } else {
                ImageError::Invalid(format!("{name}: {envelope}"))
            }
        }
        E::ServerError { code, message, .. } => match code {
            401 => refused(ctx, true),
            403 => refused(ctx, false),
            404 => not_found(&name),
            _ => ImageError::Unreachable {
                name,
                reason: format!("HTTP {code}: {}", message.trim()),
            },
        },
        E::RequestError(e) => unreachable(ctx, transport::cause(&e)),
        other => ImageError::Invalid(format!("{name}: {other}")),
    }
}

fn not_found(name: &str) -> ImageError {
    ImageError::NotFound(format!("image {name} not found in the registry"))
}

/// A registry's no: to the credentials given (`unauthenticated`), or to anyone asking
/// without any or with ones that lack the rights.
fn refused(ctx: &Ctx, unauthenticated: bool) -> ImageError {
    if unauthenticated && ctx.with_credentials {
        ImageError::Unauthorized(ctx.name.clone())
    } else {
        ImageError::Denied(ctx.name.clone())
    }
}

fn unreachable(ctx: &Ctx, cause: Cause) -> ImageError {
    match cause {
        Cause::UntrustedCertificate(_) => ImageError::InsecureRegistry {
            registry: ctx.registry.clone(),
            reason: cause.to_string(),
        },
        Cause::PlainHttpServer if !ctx.insecure => ImageError::Unreachable {
            name: ctx.name.clone(),
            reason: format!(
                "{cause} (list it with --insecure-registry or create.insecure_registries to use HTTP)"
            ),
        },
        _ => ImageError::Unreachable {
            name: ctx.name.clone(),
            reason: cause.to_string(),
        },
    }
}

/// Whether the next transport may do better: only when this one could not talk to the
/// registry at all (an answer such as "unauthorized" or "not found" is final).
fn try_next(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(_) => true,
        // A TLS registry answering a plain HTTP request says so with a 400.
        OciDistributionError::ServerError { code: 400, .. } => true,
        _ => false,
    }
}

/// The first transport's failure says why, unless it only found out the registry speaks
/// plain HTTP: then the next one's does.
fn telling(
    first: OciDistributionError,
    later: Option<OciDistributionError>,
) -> OciDistributionError {
    match (&first, later) {
        (OciDistributionError::RequestError(r), Some(later))
            if transport::cause(r) == Cause::PlainHttpServer =>
        {
            later
        }
        _ => first,
    }
}

type Fetched = (oci_client::manifest::OciImageManifest, String, String);

/// Manifest and config over the first transport that reaches the registry, and its client.
async fn fetch(
    r: &Reference,
    auth: &RegistryAuth,
    ctx: &Ctx,
) -> Result<(Client, Transport, Fetched), ImageError> {
    let mut failed = Vec::new();
    for &t in transports(ctx.insecure) {
        let client = client(t);
        match client.pull_manifest_and_config(r, auth).await {
            Ok(f) => return Ok((client, t, f)),
            Err(e) if try_next(&e) => failed.push(e),
            Err(e) => return Err(classify(ctx, e)),
        }
    }
    let mut failed = failed.into_iter();
    let first = failed.next().expect("at least one transport");
    Err(classify(ctx, telling(first, failed.last())))
}

pub async fn resolve(
    registry: &str,
    repository: &str,
    reference: &str,
    opts: &PullOptions,
) -> Result<(Registry, Described), ImageError> {
    let (_, _, deadline) = timeouts();
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
    let ctx = Ctx {
        name: name.clone(),
        registry: registry.to_string(),
        insecure: opts.insecure_registries.iter().any(|r| r == registry),
        with_credentials: opts.username.is_some(),
    };
    let (client, transport, fetched) = tokio::time::timeout(deadline, fetch(&r, &auth, &ctx))
        .await
        .map_err(|_| ImageError::Unreachable {
            name,
            reason: format!("timed out: no answer within {deadline:?}"),
        })??;
    let (m, _digest, raw) = fetched;
    let config: ImageConfig = manifest::parse("image config", raw.as_bytes())?;
    let descs: Vec<Descriptor> = m
        .layers
        .iter()
        .map(|l| Descriptor {
            media_type: l.media_type.clone(),
            digest: l.digest.clone(),
            size: u64::try_from(l.size).ok(),
            annotations: l
                .annotations
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            platform: None,
            urls: l.urls.clone().unwrap_or_default(),
        })
        .collect();
    let layers = super::layers(&descs, &config.rootfs.diff_ids)?;
    let env = config.config.and_then(|c| c.env).unwrap_or_default();
    Ok((
        Registry {
            client,
            reference: r,
            ctx,
            transport,
            credentials: opts
                .username
                .clone()
                .map(|u| (u, opts.password.clone().unwrap_or_default())),
        },
        Described {
            config: raw.into_bytes(),
            env,
            layers,
        },
    ))
}

impl Registry {
    /// Where this registry is, for [`Remote::connect`].
    pub fn remote(&self) -> Remote {
        Remote {
            registry: self.reference.registry().to_string(),
            repository: self.reference.repository().to_string(),
            transport: self.transport,
            credentials: self.credentials.clone(),
        }
    }

    /// `len` bytes of blob `digest` from `offset` (an HTTP range request; a registry that
    /// ignores the range sends the whole blob, of which the range is kept).
    pub async fn range(&self, digest: &str, offset: u64, len: u64) -> Result<Vec<u8>, ImageError> {
        use oci_client::client::BlobResponse;
        let r = self
            .client
            .pull_blob_stream_partial(&self.reference, digest, offset, Some(len))
            .await
            .map_err(|e| classify(&self.ctx, e))?;
        let (stream, skip) = match r {
            BlobResponse::Partial(s) => (s.stream, 0),
            BlobResponse::Full(s) => (s.stream, offset),
        };
        let reader = tokio_util::io::StreamReader::new(stream.map_err(transport::stream_error));
        let mut reader = tokio::io::AsyncReadExt::take(reader, skip + len);
        let mut data = Vec::with_capacity((skip + len).min(64 << 20) as usize);
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut data)
            .await
            .map_err(|e| unreachable(&self.ctx, Cause::Other(e.to_string())))?;
        let data = data.split_off((skip as usize).min(data.len()));
        if data.len() as u64 != len {
            return Err(ImageError::Unreachable {
                name: self.ctx.name.clone(),
                reason: format!(
                    "asked for {len} bytes of {digest} at {offset}, the registry sent {}",
                    data.len()
                ),
            });
        }
        Ok(data)
    }

    /// The layer blob as a byte stream (async).
    pub async fn blob(
        &self,
        layer: &LayerInfo,
    ) -> Result<impl tokio::io::AsyncRead + Send + Unpin + 'static, ImageError> {
        let s = self
            .client
            .pull_blob_stream(&self.reference, layer.digest.as_str())
            .await
            .map_err(|e| classify(&self.ctx, e))?;
        let digest = layer.digest.clone();
        Ok(tokio_util::io::StreamReader::new(s.stream.map_err(
            move |e| match e.get_ref().and_then(|i| i.downcast_ref::<DigestError>()) {
                // oci-client checks the digest at the end of the stream too: say it as ours.
                Some(DigestError::VerificationError { actual, .. }) => std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    ImageError::DigestMismatch {
                        kind: "layerID",
                        what: format!("layer {digest}"),
                        got: actual.clone(),
                    },
                ),
                _ => transport::stream_error(e),
            },
        )))
    }
}

impl Remote {
    /// A client for blobs of this repository, logged in as the pull was.
    pub async fn connect(&self) -> Result<Registry, ImageError> {
        let reference = Reference::with_tag(
            self.registry.clone(),
            self.repository.clone(),
            "lazy".into(),
        );
        let r = Registry {
            client: client(self.transport),
            ctx: Ctx {
                name: format!("{}/{}", self.registry, self.repository),
                registry: self.registry.clone(),
                insecure: self.transport != Transport::Https,
                with_credentials: self.credentials.is_some(),
            },
            reference,
            transport: self.transport,
            credentials: self.credentials.clone(),
        };
        let auth = match &self.credentials {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => RegistryAuth::Anonymous,
        };
        r.client
            .auth(&r.reference, &auth, oci_client::RegistryOperation::Pull)
            .await
            .map_err(|e| classify(&r.ctx, e))?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::errors::{OciEnvelope, OciError};

    fn ctx(with_credentials: bool) -> Ctx {
        Ctx {
            name: "r:5000/a:1".into(),
            registry: "r:5000".into(),
            insecure: false,
            with_credentials,
        }
    }

    fn envelope(code: OciErrorCode) -> OciDistributionError {
        OciDistributionError::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError {
                    code,
                    message: String::new(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: "https://r:5000/v2/a/manifests/1".into(),
        }
    }

    #[test]
    fn registry_answers_are_sorted_by_code_not_text() {
        let c = ctx(false);
        for code in [OciErrorCode::ManifestUnknown, OciErrorCode::NameUnknown] {
            assert!(matches!(
                classify(&c, envelope(code)),
                ImageError::NotFound(_)
            ));
        }
        let e = classify(&c, envelope(OciErrorCode::Denied)).to_string();
        assert_eq!(
            e,
            "r:5000/a:1 does not exist or you do not have permissions to see it."
        );
        assert!(matches!(
            classify(&ctx(true), envelope(OciErrorCode::Unauthorized)),
            ImageError::Unauthorized(_)
        ));
        let server = |code| OciDistributionError::ServerError {
            code,
            url: String::new(),
            message: "teapot\n".into(),
        };
        assert!(matches!(classify(&c, server(404)), ImageError::NotFound(_)));
        assert_eq!(
            classify(&c, server(503)).to_string(),
            "registry unreachable for r:5000/a:1: HTTP 503: teapot"
        );
    }

    #[test]
    fn a_listed_registry_is_tried_over_https_first() {
        assert_eq!(
            transports(true),
            [Transport::HttpsUnverified, Transport::Http]
        );
        assert_eq!(transports(false), [Transport::Https]);
    }
}
