//! TLS settings: what the configuration asks for, and the rustls configuration
//! built from it once per configuration load.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::ring as provider;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::error::TlsError;
use super::go_names::{go_cipher, go_curve, GoCipher};

/// nats-server's default `tls.timeout`.
pub const DEFAULT_TLS_TIMEOUT: Duration = Duration::from_secs(2);
/// nats-server's fallback delay for `handshake_first: auto`.
pub const DEFAULT_HANDSHAKE_FIRST_FALLBACK: Duration = Duration::from_millis(50);

/// TLS versions `min_version` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// `"1.2"` and `"1.3"`; older versions are refused as nats-server refuses them.
    pub fn parse(s: &str) -> Result<TlsVersion, TlsError> {
        match s {
            "1.2" => Ok(TlsVersion::Tls12),
            "1.3" => Ok(TlsVersion::Tls13),
            "1.0" | "1.1" => Err(TlsError::UnsupportedVersion(s.to_string())),
            _ => Err(TlsError::UnknownVersion(s.to_string())),
        }
    }
}

/// The `tls {}` block (or the `--tls*` flags), as written.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSpec {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// Require and verify client certificates.
    pub verify: bool,
    /// Map a verified client certificate to a configured user (`verify_and_map`).
    pub map: bool,
    /// Accepted for nats-server compatibility; it governs only outbound connections.
    pub insecure: bool,
    pub timeout: Duration,
    pub handshake_first: bool,
    /// With `handshake_first`: how long to wait for the client's handshake before
    /// sending INFO in plaintext instead (`handshake_first: auto` or a duration).
    pub handshake_first_fallback: Option<Duration>,
    /// Go names of TLS 1.2 suites; `None` keeps the defaults.
    pub cipher_suites: Option<Vec<String>>,
    pub allow_insecure_cipher_suites: bool,
    /// Go names of key exchange groups; `None` keeps the defaults.
    pub curve_preferences: Option<Vec<String>>,
    pub min_version: Option<TlsVersion>,
    /// Lower-case hex SHA-256 of allowed client certificates' SubjectPublicKeyInfo.
    pub pinned_certs: HashSet<String>,
}

impl Default for TlsSpec {
    fn default() -> Self {
        TlsSpec {
            cert_file: None,
            key_file: None,
            ca_file: None,
            verify: false,
            map: false,
            insecure: false,
            timeout: DEFAULT_TLS_TIMEOUT,
            handshake_first: false,
            handshake_first_fallback: None,
            cipher_suites: None,
            allow_insecure_cipher_suites: false,
            curve_preferences: None,
            min_version: None,
            pinned_certs: HashSet::new(),
        }
    }
}

/// Built TLS settings: the rustls configuration plus what the connection flow needs.
#[derive(Debug)]
pub struct TlsSettings {
    pub spec: TlsSpec,
    pub config: Arc<ServerConfig>,
    /// DER of everything read from files, to tell whether a reload changed them.
    loaded: Vec<Vec<u8>>,
}

impl TlsSettings {
    pub fn verify(&self) -> bool {
        self.spec.verify
    }

    pub fn timeout(&self) -> Duration {
        self.spec.timeout
    }

    /// Handshake first without a fallback: clients that wait for INFO cannot connect.
    pub fn handshake_first_only(&self) -> bool {
        self.spec.handshake_first && self.spec.handshake_first_fallback.is_none()
    }

    /// Same settings and the same certificates (a reload that changed nothing).
    pub fn same_as(&self, other: &TlsSettings) -> bool {
        self.spec == other.spec && self.loaded == other.loaded
    }

    /// Reads the certificate, key and CA files and builds the rustls configuration.
    pub fn build(spec: TlsSpec) -> Result<TlsSettings, TlsError> {
        let (cert_file, key_file) = match (&spec.cert_file, &spec.key_file) {
            (Some(c), Some(k)) => (c, k),
            (Some(_), None) => return Err(TlsError::MissingKey),
            (None, _) => return Err(TlsError::MissingCert),
        };
        let mut loaded = Vec::new();
        let cert_pem = read(cert_file).map_err(|e| TlsError::KeyPair(e.to_string()))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::KeyPair(format!("failed to parse certificate PEM data: {e}")))?;
        if chain.is_empty() {
            return Err(TlsError::KeyPair(
                "tls: failed to find any PEM data in certificate input".into(),
            ));
        }
        let key_pem = read(key_file).map_err(|e| TlsError::KeyPair(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
            TlsError::KeyPair("tls: failed to find any PEM data in key input".into())
        })?;
        loaded.extend(chain.iter().map(|c| c.to_vec()));
        loaded.push(key_pem);

        let provider = Arc::new(crypto_provider(&spec)?);
        let versions: &[&rustls::SupportedProtocolVersion] = match spec.min_version {
            Some(TlsVersion::Tls13) => &[&rustls::version::TLS13],
            _ => &[&rustls::version::TLS12, &rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        // nats-server reads ca_file even when it does not verify clients.
        let mut roots = RootCertStore::empty();
        if let Some(path) = &spec.ca_file {
            let pem = read(path)?;
            let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|_| TlsError::CaFile)?;
            let (added, _) = roots.add_parsable_certificates(cas.iter().cloned());
            if added == 0 {
                return Err(TlsError::CaFile);
            }
            loaded.extend(cas.iter().map(|c| c.to_vec()));
        }
        let builder = if spec.verify {
            if spec.ca_file.is_none() {
                // Go verifies against the system roots when no CA file is given.
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
                if roots.is_empty() {
                    return Err(TlsError::NoRoots);
                }
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::KeyPair(e.to_string()))?;
        Ok(TlsSettings {
            spec,
            config: Arc::new(config),
            loaded,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub(super) fn crypto_provider(spec: &TlsSpec) -> Result<CryptoProvider, TlsError> {
    let mut p = provider::default_provider();
    if let Some(names) = &spec.cipher_suites {
        let mut insecure = Vec::new();
        let mut tls12 = Vec::new();
        for name in names {
            match go_cipher(name) {
                None => return Err(TlsError::UnknownCipher(name.clone())),
                Some(GoCipher::Tls13) => {}
                Some(GoCipher::Tls12(s)) => tls12.push(s),
                Some(GoCipher::Unavailable) => {
                    return Err(TlsError::CipherUnavailable(name.clone()))
                }
                Some(GoCipher::Insecure) => insecure.push(name.clone()),
            }
        }
        if !insecure.is_empty() {
            if !spec.allow_insecure_cipher_suites {
                return Err(TlsError::InsecureCiphers(insecure.join(", ")));
            }
            return Err(TlsError::CipherUnavailable(insecure.join(", ")));
        }
        // TLS 1.3 suites stay as they are: Go does not let them be configured.
        let mut suites: Vec<SupportedCipherSuite> = p
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
            .copied()
            .collect();
        suites.extend(tls12);
        p.cipher_suites = suites;
    }
    if let Some(names) = &spec.curve_preferences {
        let mut groups = Vec::with_capacity(names.len());
        for name in names {
            groups.push(go_curve(name)?);
        }
        p.kx_groups = groups;
    }
    Ok(p)
}
