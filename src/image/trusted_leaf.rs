//! A server certificate the user trusts as a CA is also accepted as the server's own, as Go's
//! TLS (GrootFS's) accepts it: `openssl req -x509` makes self-signed certificates with
//! `CA:TRUE`, and a directory of trusted certificates often holds exactly the server's.
//! webpki refuses any CA certificate as an end entity (`CaUsedAsEndEntity`); this verifier
//! accepts one only when it is byte for byte a certificate it was given to trust, its validity
//! period holds (webpki checks that before the CA flag) and it names the server. Its extended
//! key usage is not checked: trusting that very certificate is the user's decision.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

#[derive(Debug)]
pub struct TrustedLeaf {
    inner: Arc<dyn ServerCertVerifier>,
    trusted: Vec<CertificateDer<'static>>,
}

impl TrustedLeaf {
    /// Verifies as `inner` does, accepting besides it a server certificate in `trusted`.
    pub fn new(inner: Arc<dyn ServerCertVerifier>, trusted: Vec<CertificateDer<'static>>) -> Self {
        TrustedLeaf { inner, trusted }
    }
}

fn ca_used_as_end_entity(e: &rustls::Error) -> bool {
    matches!(e, rustls::Error::InvalidCertificate(CertificateError::Other(o))
        if o.0.downcast_ref::<webpki::Error>() == Some(&webpki::Error::CaUsedAsEndEntity))
}

impl ServerCertVerifier for TrustedLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(e) if ca_used_as_end_entity(&e) && self.trusted.iter().any(|t| t == end_entity) => {
                let cert = ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&cert, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_webpkis_ca_as_end_entity_refusal_is_reconsidered() {
        let ca = rustls::OtherError(Arc::new(webpki::Error::CaUsedAsEndEntity));
        let other = rustls::OtherError(Arc::new(webpki::Error::EndEntityUsedAsCa));
        assert!(ca_used_as_end_entity(&rustls::Error::InvalidCertificate(
            CertificateError::Other(ca)
        )));
        for e in [
            CertificateError::Other(other),
            CertificateError::UnknownIssuer,
            CertificateError::Expired,
        ] {
            assert!(!ca_used_as_end_entity(&rustls::Error::InvalidCertificate(
                e
            )));
        }
    }

    /// Made once with `openssl req -x509 -days 36500 -newkey ec -pkeyopt
    /// ec_paramgen_curve:prime256v1 -nodes -subj /CN=registry -addext
    /// subjectAltName=DNS:localhost` (so `CA:TRUE`), valid from 2026-12-06 to 2126-11-12.
    const SELF_SIGNED: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBkzCCATmgAwIBAgIUYfx3QOl+8hkmiMtgHee5NRdij1UwCgYIKoZIzj0EAwIw\n\
EzERMA8GA1UEAwwIcmVnaXN0cnkwIBcNMjYxMjA2MTQzNjExWhgPMjEyNjExMTIx\n\
NDM2MTFaMBMxETAPBgNVBAMMCHJlZ2lzdHJ5MFkwEwYHKoZIzj0CAQYIKoZIzj0D\n\
AQcDQgAEdTcVDD4thNe5jHWt5xPNru2Me4uxcVB4qmWlOzysmo+eINm+JXrnsTNp\n\
pnjfmCsrvROaOzvlW4Lphp5sTSAmpaNpMGcwHQYDVR0OBBYEFBuJG4g6d4gheab5\n\
d3qv3LyICAKPMB8GA1UdIwQYMBaAFBuJG4g6d4gheab5d3qv3LyICAKPMA8GA1Ud\n\
EwEB/wQFMAMBAf8wFAYDVR0RBA0wC4IJbG9jYWxob3N0MAoGCCqGSM49BAMCA0gA\n\
MEUCIQCyjmXnX+xkNYVuFzU9+900tbXIWUFktC7Tvn3VR+8UrAIgWSeAB9PgMo/u\n\
JfgKYgzCpoQr5ute/Eb5WaC+mbp4LzU=\n\
-----END CERTIFICATE-----\n\
";

    /// Against rustls' own webpki verifier (so a rustls on another webpki than this crate's
    /// would fail here): accepted for its name while valid; not for another name, not once
    /// expired, not unless trusted.
    #[test]
    fn a_trusted_self_signed_certificate_passes_only_for_its_name_and_time() {
        use rustls::pki_types::pem::PemObject;
        let cert = CertificateDer::from_pem_slice(SELF_SIGNED.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let webpki: Arc<dyn ServerCertVerifier> =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let name = |n: &str| ServerName::try_from(n.to_string()).unwrap();
        let at = |secs| UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
        let (y2030, y2200) = (at(1_900_000_000), at(7_258_118_400));
        let check = |v: &dyn ServerCertVerifier, host: &str, now| {
            v.verify_server_cert(&cert, &[], &name(host), &[], now)
        };
        let refused = check(&*webpki, "localhost", y2030).unwrap_err();
        assert!(ca_used_as_end_entity(&refused), "{refused}");
        let leaf = TrustedLeaf::new(webpki.clone(), vec![cert.clone()]);
        assert!(check(&leaf, "localhost", y2030).is_ok());
        assert!(check(&leaf, "other.example", y2030).is_err());
        assert!(check(&leaf, "localhost", y2200).is_err());
        let not_trusted = TrustedLeaf::new(webpki, Vec::new());
        assert!(check(&not_trusted, "localhost", y2030).is_err());
    }
}
