//! Why TLS settings could not be built.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why TLS settings could not be built. The texts follow nats-server's.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("unrecognized cipher {0}")]
    UnknownCipher(String),
    #[error("cipher suite {0} is not available in strait: rustls implements no CBC, RC4, 3DES or static-RSA suites")]
    CipherUnavailable(String),
    #[error(
        "insecure cipher suites configured without 'allow_insecure_cipher_suites' option set: {0}"
    )]
    InsecureCiphers(String),
    #[error("unrecognized curve preference {0}")]
    UnknownCurve(String),
    #[error("curve preference {0} is not available in strait (rustls with ring offers X25519, CurveP256 and CurveP384)")]
    CurveUnavailable(String),
    #[error("unknown version: {0}")]
    UnknownVersion(String),
    #[error("unsupported TLS version: TLS {0}")]
    UnsupportedVersion(String),
    #[error("missing 'key_file' in TLS configuration")]
    MissingKey,
    #[error("missing 'cert_file' in TLS configuration")]
    MissingCert,
    #[error("error parsing X509 certificate/key pair: {0}")]
    KeyPair(String),
    #[error("open {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("failed to parse root ca certificate")]
    CaFile,
    #[error(
        "no CA certificates to verify clients with: set 'ca_file' (the system store is empty)"
    )]
    NoRoots,
    #[error("error parsing tls config: {0}")]
    Rustls(String),
}
