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
}
