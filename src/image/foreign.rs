//! OCI foreign layers: a layer descriptor's `urls`, fetched when neither the layout nor the
//! registry has the blob. As GrootFS does, the TLS material comes from the directory named by
//! `create.remote_layer_client_certificates_path`: `*.crt` CA certificates trusted besides the
//! system's, and `NAME.cert` + `NAME.key` client certificate pairs. What is fetched is checked
//! against the descriptor's digest and size by the caller, like any blob off the network.

use std::path::Path;
use std::sync::Arc;

use futures_util::TryStreamExt;
use reqwest::{Client, Response, Url};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::transport::{self, Cause};
use super::trusted_leaf::TrustedLeaf;
use super::{ImageError, LayerInfo};

/// The trust and identity read from a certificates directory.
#[derive(Default)]
struct TlsMaterial {
    roots: Vec<CertificateDer<'static>>,
    /// Client certificate chains and keys by file name; the first is presented.
    identities: Vec<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

fn certs_error(dir: &Path, reason: impl std::fmt::Display) -> ImageError {
    ImageError::Certificates {
        path: dir.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, ImageError> {
    std::fs::read(dir.join(name)).map_err(|e| certs_error(dir, format!("read {name}: {e}")))
}

/// Reads `dir` as GrootFS does: a missing directory holds nothing; a `.cert` without its
/// `.key` (or the reverse) is an error rather than a certificate silently not presented.
fn tls_material(dir: &Path) -> Result<TlsMaterial, ImageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TlsMaterial::default()),
        Err(e) => return Err(certs_error(dir, e)),
    };
    let mut names: Vec<String> = entries
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| certs_error(dir, e))?;
    names.sort();
    let has = |n: &str| names.iter().any(|m| m == n);
    let mut m = TlsMaterial::default();
    for name in &names {
        if name.ends_with(".crt") {
            m.roots.extend(certificates(dir, name)?);
        } else if let Some(base) = name.strip_suffix(".cert") {
            let key = format!("{base}.key");
            if !has(&key) {
                return Err(certs_error(
                    dir,
                    format!(
                        "missing key {key} for client certificate {name} (CA certificates end in .crt)"
                    ),
                ));
            }
            let chain = certificates(dir, name)?;
            if chain.is_empty() {
                return Err(certs_error(dir, format!("{name}: no certificate in it")));
            }
            let secret = PrivateKeyDer::from_pem_slice(&read(dir, &key)?)
                .map_err(|e| certs_error(dir, format!("{key}: {e}")))?;
            m.identities.push((chain, secret));
        } else if let Some(base) = name.strip_suffix(".key")
            && !has(&format!("{base}.cert"))
        {
            return Err(certs_error(
                dir,
                format!("missing client certificate {base}.cert for key {name}"),
            ));
        }
    }
    Ok(m)
}

/// The certificates of a PEM file (a `.crt` with none adds nothing, as for GrootFS).
fn certificates(dir: &Path, name: &str) -> Result<Vec<CertificateDer<'static>>, ImageError> {
    CertificateDer::pem_slice_iter(&read(dir, name)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| certs_error(dir, format!("{name}: {e}")))
}

/// TLS that trusts the system's CAs and the directory's, also as server certificates
/// themselves (see [`TrustedLeaf`]), and presents the directory's first client pair.
fn tls_config(dir: &Path, m: TlsMaterial) -> Result<rustls::ClientConfig, ImageError> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let system =
        rustls_platform_verifier::Verifier::new_with_extra_roots(m.roots.clone(), provider.clone())
            .map_err(|e| certs_error(dir, e))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| certs_error(dir, e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustedLeaf::new(Arc::new(system), m.roots)));
    let mut cfg = match m.identities.into_iter().next() {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| certs_error(dir, format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

fn client(certs: Option<&Path>) -> Result<Client, ImageError> {
    let (connect, read, _) = super::registry::timeouts();
    let mut b = Client::builder()
        .connect_timeout(connect)
        .read_timeout(read);
    if let Some(dir) = certs {
        b = b.tls_backend_preconfigured(tls_config(dir, tls_material(dir)?)?);
    }
    // Only TLS material makes building fail; reqwest's own text is just "builder error".
    b.build().map_err(|e| {
        let why = transport::chain_text(&e);
        match certs {
            Some(dir) => certs_error(dir, why),
            None => ImageError::Invalid(format!("HTTP client for foreign layers: {why}")),
        }
    })
}

/// Why a request failed, pointing at the certificates directory when TLS is the cause.
fn explain(e: &reqwest::Error) -> String {
    match transport::cause(e) {
        c @ (Cause::Tls(_) | Cause::UntrustedCertificate(_)) => format!(
            "{c} (CA and client certificates are read from create.remote_layer_client_certificates_path)"
        ),
        c => c.to_string(),
    }
}

/// One URL: only http(s), whatever else a descriptor says (no `file://` reads).
async fn get(client: &Client, url: &str) -> Result<Response, String> {
    let url = Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("only http and https URLs are fetched".into());
    }
    let r = client.get(url).send().await.map_err(|e| explain(&e))?;
    if !r.status().is_success() {
        return Err(format!("HTTP {}", r.status()));
    }
    Ok(r)
}

/// The blob from the first of the layer's URLs that serves it, as a byte stream.
pub async fn fetch(
    layer: &LayerInfo,
    certs: Option<&Path>,
) -> Result<impl tokio::io::AsyncRead + Send + Unpin + 'static, ImageError> {
    let client = client(certs)?;
    let mut failed = Vec::new();
    for url in &layer.urls {
        match get(&client, url).await {
            Ok(r) => {
                let body = r
                    .bytes_stream()
                    .map_err(|e| transport::stream_error(std::io::Error::other(e)));
                return Ok(tokio_util::io::StreamReader::new(body));
            }
            Err(why) => failed.push(format!("{url}: {why}")),
        }
    }
    Err(ImageError::Foreign {
        digest: layer.digest.clone(),
        reason: failed.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpaired_certificates_and_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(tls_material(&dir.path().join("missing")).is_ok());
        std::fs::write(dir.path().join("client.cert"), "x").unwrap();
        let e = tls_material(dir.path()).err().unwrap().to_string();
        assert!(e.contains("missing key client.key"), "{e}");
        std::fs::remove_file(dir.path().join("client.cert")).unwrap();
        std::fs::write(dir.path().join("client.key"), "x").unwrap();
        let e = tls_material(dir.path()).err().unwrap().to_string();
        assert!(e.contains("missing client certificate client.cert"), "{e}");
    }

    /// A `.crt` without certificates adds nothing, as GrootFS reads it; a client pair must hold
    /// a certificate and a key, and a broken file is named.
    #[test]
    fn empty_and_broken_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        let error = || tls_material(dir.path()).err().unwrap().to_string();
        write("empty.crt", "");
        assert!(tls_material(dir.path()).unwrap().roots.is_empty());
        write("client.cert", "");
        write("client.key", "");
        assert!(
            error().contains("client.cert: no certificate in it"),
            "{}",
            error()
        );
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        write("client.cert", cert);
        assert!(error().contains("client.key"), "{}", error());
        write(
            "client.key",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let m = tls_material(dir.path()).unwrap();
        assert_eq!(m.identities.len(), 1);
        // PEM-shaped but no key: refused when the TLS client is made, before any request.
        let e = tls_config(dir.path(), m).err().unwrap().to_string();
        assert!(e.contains("client certificate"), "{e}");
        write(
            "broken.crt",
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        );
        assert!(error().contains("broken.crt"), "{}", error());
    }
}
