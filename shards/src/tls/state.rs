//! What a TLS connection negotiated.

use std::sync::Arc;

use super::certificate::{go_subject_string, sha256_hex, subject_rdns, PeerCert};

/// What a TLS connection negotiated, for logs, monitoring and certificate mapping.
#[derive(Debug, Clone)]
pub struct TlsState {
    pub version: &'static str,
    pub cipher: String,
    /// Whether the handshake came before INFO.
    pub handshake_first: bool,
    /// The client's certificate, parsed for `verify_and_map`.
    pub peer: Option<Arc<PeerCert>>,
    /// The certificates the client presented, as /connz shows them.
    pub peer_certs: Arc<Vec<PeerCertInfo>>,
}

/// One presented certificate in /connz's `tls_peer_certs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertInfo {
    pub subject: String,
    /// Hex SHA-256 of the SubjectPublicKeyInfo.
    pub spki_sha256: String,
    /// Hex SHA-256 of the whole certificate.
    pub cert_sha256: String,
}

pub(super) fn peer_cert_info(der: &[u8]) -> PeerCertInfo {
    let (subject, spki) = match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => (
            go_subject_string(&subject_rdns(&cert)),
            sha256_hex(cert.public_key().raw),
        ),
        Err(_) => (String::new(), String::new()),
    };
    PeerCertInfo {
        subject,
        spki_sha256: spki,
        cert_sha256: sha256_hex(der),
    }
}
