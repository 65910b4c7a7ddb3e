//! Why an HTTP request failed, read from reqwest's error and its source chain (not from its
//! Display text, whose "error sending request" hides the cause).

use std::error::Error as StdError;

/// The cause of a failed request, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The server's certificate is not trusted (self-signed, unknown CA, wrong name, expired).
    UntrustedCertificate(String),
    /// The server answered a TLS handshake in plain HTTP.
    PlainHttpServer,
    /// The TLS handshake failed for another reason (e.g. a client certificate was required).
    Tls(String),
    Refused,
    TimedOut,
    /// Any other failure to connect or exchange (DNS, reset, ...).
    Other(String),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::UntrustedCertificate(why) => write!(f, "untrusted TLS certificate ({why})"),
            Cause::PlainHttpServer => f.write_str("the server speaks plain HTTP, not HTTPS"),
            Cause::Tls(why) => write!(f, "TLS handshake failed ({why})"),
            Cause::Refused => f.write_str("connection refused"),
            Cause::TimedOut => f.write_str("timed out"),
            Cause::Other(why) => f.write_str(why),
        }
    }
}

/// Every error in the chain. `io::Error::source()` skips the error it wraps, so that one is
/// visited explicitly: rustls' errors travel inside io errors.
fn chain<'a>(e: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        out.push(e);
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    out
}

/// Every error of the chain, outermost first, as one line.
pub fn chain_text(e: &(dyn StdError + 'static)) -> String {
    chain(e)
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

fn tls_cause(e: &rustls::Error) -> Cause {
    match e {
        rustls::Error::InvalidCertificate(c) => Cause::UntrustedCertificate(certificate_problem(c)),
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            Cause::PlainHttpServer
        }
        other => Cause::Tls(other.to_string()),
    }
}

fn certificate_problem(c: &rustls::CertificateError) -> String {
    match c {
        rustls::CertificateError::UnknownIssuer => "signed by an unknown authority".into(),
        // webpki's reason, e.g. CaUsedAsEndEntity for openssl's default self-signed certificate.
        rustls::CertificateError::Other(o) => o.to_string(),
        other => other.to_string(),
    }
}

pub fn cause(e: &reqwest::Error) -> Cause {
    if e.is_timeout() {
        return Cause::TimedOut;
    }
    let chain = chain(e);
    for e in &chain {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return tls_cause(tls);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return Cause::Refused,
                std::io::ErrorKind::TimedOut => return Cause::TimedOut,
                _ => {}
            }
        }
    }
    // The innermost error says most (e.g. "failed to lookup address information: ...").
    let last = chain.last().map(|e| e.to_string()).unwrap_or_default();
    Cause::Other(super::os_error_text(&std::io::Error::other(last)))
}

/// An error met while streaming a body, retold so that its text names the cause ("timed
/// out", not reqwest's "error decoding response body"); other io errors pass unchanged.
pub fn stream_error(e: std::io::Error) -> std::io::Error {
    let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<reqwest::Error>()) else {
        return e;
    };
    let c = cause(r);
    let kind = match c {
        Cause::TimedOut => std::io::ErrorKind::TimedOut,
        _ => e.kind(),
    };
    std::io::Error::new(kind, c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_problems_read_as_words() {
        let other = rustls::OtherError(std::sync::Arc::new(std::io::Error::other(
            "CaUsedAsEndEntity",
        )));
        for (e, want) in [
            (
                rustls::CertificateError::UnknownIssuer,
                "signed by an unknown authority",
            ),
            (rustls::CertificateError::Other(other), "CaUsedAsEndEntity"),
            (rustls::CertificateError::Expired, "Expired"),
        ] {
            assert_eq!(certificate_problem(&e), want);
        }
    }
}
