//! TLS for client connections, as nats-server does it: INFO in plaintext, then
//! the handshake (or the handshake first, then INFO inside TLS), bounded by
//! `tls.timeout`; client certificates checked against `ca_file` under `verify`,
//! and mapped to configured users under `verify_and_map`.
//!
//! The settings are built once per configuration load (so a reload re-reads the
//! certificates) and shared by every shard; each connection takes the snapshot in
//! force when it was accepted.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::crypto::ring as provider;
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use crate::client::Client;

/// nats-server's default `tls.timeout`.
pub const DEFAULT_TLS_TIMEOUT: Duration = Duration::from_secs(2);
/// nats-server's fallback delay for `handshake_first: auto`.
pub const DEFAULT_HANDSHAKE_FIRST_FALLBACK: Duration = Duration::from_millis(50);

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

/// A cipher suite name as Go spells it, and what rustls has for it.
enum GoCipher {
    /// TLS 1.3 suites: always on in Go, whatever `cipher_suites` says.
    Tls13,
    Tls12(SupportedCipherSuite),
    /// Go has it among its secure suites; rustls does not implement it.
    Unavailable,
    /// Go lists it as insecure; rustls does not implement it either.
    Insecure,
}

fn go_cipher(name: &str) -> Option<GoCipher> {
    use provider::cipher_suite as cs;
    Some(match name {
        "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256" => {
            GoCipher::Tls13
        }
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => {
            GoCipher::Tls12(cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
        }
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => {
            GoCipher::Tls12(cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => {
            GoCipher::Tls12(cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)
        }
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => {
            GoCipher::Tls12(cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384)
        }
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            GoCipher::Tls12(cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)
        }
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            GoCipher::Tls12(cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256)
        }
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA" => GoCipher::Unavailable,
        "TLS_RSA_WITH_RC4_128_SHA"
        | "TLS_RSA_WITH_3DES_EDE_CBC_SHA"
        | "TLS_RSA_WITH_AES_128_CBC_SHA"
        | "TLS_RSA_WITH_AES_256_CBC_SHA"
        | "TLS_RSA_WITH_AES_128_CBC_SHA256"
        | "TLS_RSA_WITH_AES_128_GCM_SHA256"
        | "TLS_RSA_WITH_AES_256_GCM_SHA384"
        | "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA"
        | "TLS_ECDHE_RSA_WITH_RC4_128_SHA"
        | "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"
        | "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256" => GoCipher::Insecure,
        _ => return None,
    })
}

/// Checks one `cipher_suites` entry; insecure names are returned for the caller to
/// refuse unless `allow_insecure_cipher_suites` is set.
pub fn check_cipher(name: &str) -> Result<CipherCheck, TlsError> {
    match go_cipher(name) {
        None => Err(TlsError::UnknownCipher(name.to_string())),
        Some(GoCipher::Insecure) => Ok(CipherCheck::Insecure),
        Some(_) => Ok(CipherCheck::Known),
    }
}

/// What [`check_cipher`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherCheck {
    Known,
    Insecure,
}

/// Checks one `curve_preferences` entry.
pub fn check_curve(name: &str) -> Result<(), TlsError> {
    go_curve(name).map(|_| ())
}

fn go_curve(name: &str) -> Result<&'static dyn SupportedKxGroup, TlsError> {
    use provider::kx_group as kx;
    match name {
        "X25519" => Ok(kx::X25519),
        "CurveP256" => Ok(kx::SECP256R1),
        "CurveP384" => Ok(kx::SECP384R1),
        "CurveP521" | "X25519MLKEM768" | "SecP256r1MLKEM768" | "SecP384r1MLKEM1024" => {
            Err(TlsError::CurveUnavailable(name.to_string()))
        }
        _ => Err(TlsError::UnknownCurve(name.to_string())),
    }
}

fn crypto_provider(spec: &TlsSpec) -> Result<CryptoProvider, TlsError> {
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

/// The IANA name Go's `tls.CipherSuiteName` prints.
fn cipher_name(suite: SupportedCipherSuite) -> String {
    let s = format!("{:?}", suite.suite());
    match s.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => s,
    }
}

// ---------------------------------------------------------------------------------
// The connection

/// A client connection's byte stream: plain TCP, or TLS over it.
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<futures_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => match Pin::new(&mut **s).poll_read(cx, buf) {
                // A peer that closes TCP without close_notify has closed; Go's
                // crypto/tls reports io.EOF there too.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Poll::Ready(Ok(0))
                }
                other => other,
            },
        }
    }

    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    /// TLS keeps records that could not be written yet; plain TCP keeps nothing.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Conn::Plain(_) => Poll::Ready(Ok(())),
            Conn::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// Queues a TLS close_notify alert (written by the next flush).
    pub(crate) fn send_close_notify(&mut self) {
        if let Conn::Tls(s) = self {
            s.get_mut().1.send_close_notify();
        }
    }
}

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

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn peer_cert_info(der: &[u8]) -> PeerCertInfo {
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

/// The subject's RDNs in certificate order: (oid, value) per attribute.
fn subject_rdns(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Vec<Vec<(String, Option<String>)>> {
    cert.subject()
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    (
                        atv.attr_type().to_id_string(),
                        atv.as_str().ok().map(str::to_string),
                    )
                })
                .collect()
        })
        .collect()
}

enum Race<T> {
    Done(T),
    TimedOut,
    Closed,
}

/// Runs `fut` until it finishes, `deadline` passes or the connection is closed.
async fn race<T>(client: &Client, deadline: Instant, fut: impl Future<Output = T>) -> Race<T> {
    let work = async { Race::Done(fut.await) };
    let timer = async {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        Race::TimedOut
    };
    let closed = async {
        client.closing().await;
        Race::Closed
    };
    futures_lite::future::or(work, futures_lite::future::or(closed, timer)).await
}

/// How long a closing connection may take to write its last bytes.
pub(crate) const LAST_WORDS: Duration = Duration::from_millis(100);

/// The first byte of every TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Takes a new connection through nats-server's TLS sequence. Returns the stream to
/// run the protocol on, or `None` when the connection failed (logged, and closed
/// with "TLS Handshake Failure" by the caller).
pub(crate) async fn establish(
    client: &Client,
    mut stream: TcpStream,
    tls: &TlsSettings,
    allow_non_tls: bool,
    auth_timeout: Duration,
) -> Option<Conn> {
    use futures_lite::AsyncWriteExt;
    // Refused before the handshake (maximum connections): the error goes in plaintext.
    if client.is_closing() {
        return Some(Conn::Plain(stream));
    }
    let prefix = client.log_prefix_short();
    let mut handshake_first = tls.spec.handshake_first;
    if handshake_first {
        if let Some(delay) = tls.spec.handshake_first_fallback {
            let mut byte = [0u8; 1];
            let peeked = race(client, Instant::now() + delay, stream.peek(&mut byte)).await;
            match peeked {
                Race::Closed => return None,
                Race::Done(Ok(n)) if n > 0 => {}
                // Nothing yet: a client that waits for INFO.
                _ => handshake_first = false,
            }
        }
    }
    if !handshake_first {
        let info = client.take_output();
        if stream.write_all(&info).await.is_err() {
            return None;
        }
    }
    let deadline = Instant::now() + tls.spec.timeout;
    let mut byte = [0u8; 1];
    let first = match race(client, deadline, stream.peek(&mut byte)).await {
        Race::Closed => return None,
        Race::TimedOut => {
            tracing::debug!("{prefix} - TLS handshake timeout");
            if !handshake_first {
                // Best effort, as nats-server's: the connection closes either way.
                let err = b"-ERR 'Secure Connection - TLS Required'\r\n";
                let _ = race(client, Instant::now() + LAST_WORDS, stream.write_all(err)).await;
            }
            return None;
        }
        Race::Done(Ok(n)) if n > 0 => byte[0],
        Race::Done(Ok(_)) => {
            tracing::debug!("{prefix} - TLS handshake error: EOF");
            return None;
        }
        Race::Done(Err(e)) => {
            tracing::debug!("{prefix} - TLS handshake error: {e}");
            return None;
        }
    };
    if first != TLS_HANDSHAKE_RECORD {
        if !handshake_first && allow_non_tls {
            // allow_non_tls: this client speaks plaintext.
            return Some(Conn::Plain(stream));
        }
        // What Go's crypto/tls says of a client that does not speak TLS; nats-server
        // logs it at debug level, as a probe.
        tracing::debug!(
            "{prefix} - TLS handshake error: tls: first record does not look like a TLS handshake"
        );
        return None;
    }
    tracing::debug!("{prefix} - Starting TLS client connection handshake");
    let acceptor = futures_rustls::TlsAcceptor::from(tls.config.clone());
    let accepted = match race(client, deadline, acceptor.accept(stream)).await {
        Race::Closed => return None,
        Race::TimedOut => {
            tracing::debug!("{prefix} - TLS handshake timeout");
            return None;
        }
        Race::Done(Err(e)) => {
            let detail = e
                .get_ref()
                .map_or_else(|| e.to_string(), |inner| inner.to_string());
            tracing::error!("{prefix} - TLS handshake error: {detail}");
            return None;
        }
        Race::Done(Ok(s)) => s,
    };
    let session = accepted.get_ref().1;
    let presented = session.peer_certificates().unwrap_or_default();
    let leaf = presented.first().map(|c| c.to_vec());
    let peer_certs = Arc::new(presented.iter().map(|c| peer_cert_info(c)).collect());
    if !tls.spec.pinned_certs.is_empty() && !leaf.as_deref().is_some_and(|der| pinned(tls, der)) {
        tracing::error!("{prefix} - TLS handshake error: certificate not pinned");
        return None;
    }
    let version = match session.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
        _ => "1.2",
    };
    let cipher = session
        .negotiated_cipher_suite()
        .map(cipher_name)
        .unwrap_or_default();
    tracing::debug!("{prefix} - TLS handshake complete");
    tracing::debug!("{prefix} - TLS version {version}, cipher suite {cipher}");
    let peer = match (&leaf, tls.spec.map) {
        (Some(der), true) => PeerCert::parse(der).map(Arc::new),
        _ => None,
    };
    client.set_tls_state(TlsState {
        version,
        cipher,
        handshake_first,
        peer,
        peer_certs,
    });
    // nats-server starts the authentication timer after the handshake.
    client.restart_auth_deadline(Instant::now() + auth_timeout);
    Some(Conn::Tls(Box::new(accepted)))
}

fn pinned(tls: &TlsSettings, der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    tls.spec
        .pinned_certs
        .contains(&sha256_hex(cert.public_key().raw))
}

// ---------------------------------------------------------------------------------
// Mapping a client certificate to a user (verify_and_map)

/// What of a client certificate can name a user, in nats-server's order of trying:
/// email SANs, DNS SANs, URI SANs, the subject as a distinguished name, then the
/// subject's string forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    pub emails: Vec<String>,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    /// The subject as go-ldap reads it from the raw certificate (last RDN first);
    /// `None` when it has attributes go-ldap does not know.
    pub dn: Option<Dn>,
    /// Go's `Subject.ToRDNSequence().String()`.
    pub subject: String,
    /// The subject followed by its DC components, when it has any.
    pub subject_with_dcs: Option<String>,
}

/// How a certificate matched a user, for the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertMatch {
    Email,
    DnsName,
    Uri,
    DistinguishedName,
    RdnSequence,
    Subject,
}

impl CertMatch {
    /// nats-server's debug wording.
    pub fn describe(self) -> &'static str {
        match self {
            CertMatch::Email => "Using email found in cert for auth",
            CertMatch::DnsName => "Using SAN found in cert for auth",
            CertMatch::Uri => "Using URI found in cert for auth",
            CertMatch::DistinguishedName => "Using DistinguishedNameMatch for auth",
            CertMatch::RdnSequence => "Using RDNSequence for auth",
            CertMatch::Subject => "Using certificate subject for auth",
        }
    }
}

const OID_CN: &str = "2.5.4.3";
const OID_SERIAL: &str = "2.5.4.5";
const OID_C: &str = "2.5.4.6";
const OID_L: &str = "2.5.4.7";
const OID_ST: &str = "2.5.4.8";
const OID_STREET: &str = "2.5.4.9";
const OID_O: &str = "2.5.4.10";
const OID_OU: &str = "2.5.4.11";
const OID_POSTAL: &str = "2.5.4.17";
const OID_DC: &str = "0.9.2342.19200300.100.1.25";

/// go-ldap's attribute names (Go's pkix names plus DC).
fn ldap_type_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        OID_CN => "CN",
        OID_SERIAL => "SERIALNUMBER",
        OID_C => "C",
        OID_L => "L",
        OID_ST => "ST",
        OID_STREET => "STREET",
        OID_O => "O",
        OID_OU => "OU",
        OID_POSTAL => "POSTALCODE",
        OID_DC => "DC",
        _ => return None,
    })
}

impl PeerCert {
    /// Parses a DER certificate; `None` if it cannot be parsed.
    pub fn parse(der: &[u8]) -> Option<PeerCert> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let (mut emails, mut dns_names, mut uris) = (Vec::new(), Vec::new(), Vec::new());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::RFC822Name(e) => emails.push(e.to_string()),
                    GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                    GeneralName::URI(u) => uris.push(u.to_string()),
                    _ => {}
                }
            }
        }
        let rdns = subject_rdns(&cert);
        let dn = dn_from_rdns(&rdns);
        let subject = go_subject_string(&rdns);
        let dcs: Vec<String> = rdns
            .iter()
            .flatten()
            .filter(|(oid, _)| oid == OID_DC)
            .filter_map(|(_, v)| v.as_ref().map(|v| format!("DC={v}")))
            .collect();
        let subject_with_dcs = (!dcs.is_empty()).then(|| format!("{subject},{}", dcs.join(",")));
        Some(PeerCert {
            emails,
            dns_names,
            uris,
            dn,
            subject,
            subject_with_dcs,
        })
    }

    /// Finds the configured user this certificate names. `users` lists every user
    /// name; `exists` looks one up.
    pub fn find_user<'a>(
        &self,
        users: impl Iterator<Item = &'a str>,
        exists: impl Fn(&str) -> bool,
    ) -> Option<(String, CertMatch)> {
        let literal = [
            (&self.emails, CertMatch::Email),
            (&self.dns_names, CertMatch::DnsName),
            (&self.uris, CertMatch::Uri),
        ];
        for (names, how) in literal {
            if let Some(n) = names.iter().find(|n| exists(n)) {
                return Some((n.clone(), how));
            }
        }
        if let Some(cert_dn) = &self.dn {
            let parsed: Vec<(&str, Dn)> = users
                .filter_map(|u| Dn::parse(u).ok().map(|dn| (u, dn)))
                .collect();
            if let Some((u, _)) = parsed.iter().find(|(_, dn)| dn.equal(cert_dn)) {
                return Some((u.to_string(), CertMatch::DistinguishedName));
            }
            if let Some((u, _)) = parsed.iter().find(|(_, dn)| dn.rdns_match(cert_dn)) {
                return Some((u.to_string(), CertMatch::DistinguishedName));
            }
        }
        if let Some(s) = &self.subject_with_dcs {
            if exists(s) {
                return Some((s.clone(), CertMatch::RdnSequence));
            }
        }
        if exists(&self.subject) {
            return Some((self.subject.clone(), CertMatch::Subject));
        }
        None
    }
}

/// go-ldap's `FromRawCertSubject`: RDNs last first, attributes last first; fails on
/// types it has no name for.
fn dn_from_rdns(rdns: &[Vec<(String, Option<String>)>]) -> Option<Dn> {
    let mut out = Vec::with_capacity(rdns.len());
    for rdn in rdns.iter().rev() {
        if rdn.is_empty() {
            continue;
        }
        let mut attrs = Vec::with_capacity(rdn.len());
        for (oid, value) in rdn.iter().rev() {
            let name = ldap_type_name(oid)?;
            attrs.push((name.to_string(), value.clone()?));
        }
        out.push(attrs);
    }
    Some(Dn { rdns: out })
}

/// Go's `pkix.Name.ToRDNSequence().String()`: the known attributes regrouped in
/// Go's fixed order (several values of one type share an RDN), printed last first.
fn go_subject_string(rdns: &[Vec<(String, Option<String>)>]) -> String {
    let values = |oid: &str| -> Vec<String> {
        rdns.iter()
            .flatten()
            .filter(|(o, _)| o == oid)
            .filter_map(|(_, v)| v.clone())
            .collect()
    };
    let mut seq: Vec<(&str, Vec<String>)> = Vec::new();
    for (oid, name) in [
        (OID_C, "C"),
        (OID_ST, "ST"),
        (OID_L, "L"),
        (OID_STREET, "STREET"),
        (OID_POSTAL, "POSTALCODE"),
        (OID_O, "O"),
        (OID_OU, "OU"),
    ] {
        let v = values(oid);
        if !v.is_empty() {
            seq.push((name, v));
        }
    }
    // Go keeps only the last CommonName and SerialNumber.
    for (oid, name) in [(OID_CN, "CN"), (OID_SERIAL, "SERIALNUMBER")] {
        if let Some(last) = values(oid).pop() {
            if !last.is_empty() {
                seq.push((name, vec![last]));
            }
        }
    }
    seq.iter()
        .rev()
        .map(|(name, vals)| {
            vals.iter()
                .map(|v| format!("{name}={}", escape_rdn_value(v)))
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn escape_rdn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.len().saturating_sub(1);
    for (k, c) in v.char_indices() {
        let escape = match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => true,
            ' ' => k == 0 || k == last,
            '#' => k == 0,
            _ => false,
        };
        if escape {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A distinguished name as go-ldap models it: RDNs of (type, value) attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dn {
    rdns: Vec<Vec<(String, String)>>,
}

impl Dn {
    /// go-ldap's `ParseDN` (RFC 4514, without BER-encoded values).
    pub fn parse(s: &str) -> Result<Dn, String> {
        let bytes = s.as_bytes();
        let mut rdns = Vec::new();
        let mut rdn: Vec<(String, String)> = Vec::new();
        let mut buffer: Vec<u8> = Vec::new();
        let mut attr_type = String::new();
        let mut escaping = false;
        let mut trailing_spaces = 0usize;
        let take = |buffer: &mut Vec<u8>, trailing: &mut usize| -> String {
            let keep = buffer.len().saturating_sub(*trailing);
            let s = String::from_utf8_lossy(&buffer[..keep]).into_owned();
            buffer.clear();
            *trailing = 0;
            s
        };
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if escaping {
                trailing_spaces = 0;
                escaping = false;
                match c {
                    b' ' | b'"' | b'#' | b'+' | b',' | b';' | b'<' | b'=' | b'>' | b'\\' => {
                        buffer.push(c)
                    }
                    _ => {
                        let hex = bytes
                            .get(i..i + 2)
                            .ok_or("got corrupted escaped character")?;
                        let hex = std::str::from_utf8(hex)
                            .ok()
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                            .ok_or("failed to decode escaped character")?;
                        buffer.push(hex);
                        i += 1;
                    }
                }
            } else if c == b'\\' {
                trailing_spaces = 0;
                escaping = true;
            } else if c == b'=' {
                attr_type = take(&mut buffer, &mut trailing_spaces);
                if bytes.get(i + 1) == Some(&b'#') {
                    return Err("unsupported BER encoding".into());
                }
            } else if c == b',' || c == b'+' {
                if attr_type.is_empty() {
                    return Err("incomplete type, value pair".into());
                }
                let value = take(&mut buffer, &mut trailing_spaces);
                rdn.push((std::mem::take(&mut attr_type), value));
                if c == b',' {
                    rdns.push(std::mem::take(&mut rdn));
                }
            } else if c == b' ' && buffer.is_empty() {
                // Unescaped leading spaces are ignored.
            } else {
                if c == b' ' {
                    trailing_spaces += 1;
                } else {
                    trailing_spaces = 0;
                }
                buffer.push(c);
            }
            i += 1;
        }
        if !buffer.is_empty() {
            if attr_type.is_empty() {
                return Err("DN ended with incomplete type, value pair".into());
            }
            let value = take(&mut buffer, &mut trailing_spaces);
            rdn.push((attr_type, value));
            rdns.push(rdn);
        }
        Ok(Dn { rdns })
    }

    /// RFC 4517 distinguishedNameMatch: same RDNs in the same order.
    pub fn equal(&self, other: &Dn) -> bool {
        self.rdns.len() == other.rdns.len()
            && self
                .rdns
                .iter()
                .zip(&other.rdns)
                .all(|(a, b)| rdn_equal(a, b))
    }

    /// The same RDNs in any order.
    pub fn rdns_match(&self, other: &Dn) -> bool {
        if self.rdns.len() != other.rdns.len() {
            return false;
        }
        let mut used = vec![false; other.rdns.len()];
        self.rdns.iter().all(|mine| {
            let found = other
                .rdns
                .iter()
                .enumerate()
                .find(|(j, theirs)| !used[*j] && rdn_equal(mine, theirs));
            match found {
                Some((j, _)) => {
                    used[j] = true;
                    true
                }
                None => false,
            }
        })
    }
}

fn rdn_equal(a: &[(String, String)], b: &[(String, String)]) -> bool {
    let has = |set: &[(String, String)], (t, v): &(String, String)| {
        set.iter()
            .any(|(t2, v2)| t2.eq_ignore_ascii_case(t) && v2 == v)
    };
    a.len() == b.len() && a.iter().all(|x| has(b, x)) && b.iter().all(|x| has(a, x))
}

/// CONNECT's authentication, through the client certificate when the connection is
/// under `verify_and_map` and the client did not present an NKEY.
pub(crate) fn authenticate(
    opts: &crate::options::ServerOptions,
    client: &Client,
    info: &crate::info::ConnectInfo,
    nonce: &[u8],
) -> Result<crate::auth::Authenticated, crate::auth::AuthFailure> {
    let mapping = opts.tls.as_ref().is_some_and(|t| t.spec.map) && info.nkey.is_none();
    if !mapping || opts.auth.users.is_empty() {
        return opts.auth.authenticate(info, nonce);
    }
    let prefix = client.log_prefix_short();
    let Some(peer) = client.tls_state().and_then(|s| s.peer) else {
        tracing::debug!("{prefix} - User required in cert, no peer certificates found");
        return Err(crate::auth::AuthFailure {
            detail: "authentication error".into(),
        });
    };
    let result = opts.auth.authenticate_certificate(&peer);
    match &result {
        Ok((identity, how)) => {
            if let crate::auth::Identity::User(name) = identity {
                tracing::debug!("{prefix} - {} [{name:?}]", how.describe());
            }
            if let Some(user) = info.user.as_deref().filter(|u| !u.is_empty()) {
                tracing::warn!(
                    "{prefix} - User {user:?} found in connect proto, but user required from cert"
                );
            }
        }
        Err(_) => tracing::debug!("{prefix} - User in cert [{:?}], not found", peer.subject),
    }
    result.map(|(identity, _)| opts.auth.standing_or_global(identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rdns(pairs: &[&[(&str, &str)]]) -> Vec<Vec<(String, Option<String>)>> {
        pairs
            .iter()
            .map(|rdn| {
                rdn.iter()
                    .map(|(o, v)| (o.to_string(), Some(v.to_string())))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn subject_strings_as_go_prints_them() {
        let r = rdns(&[
            &[(OID_C, "US")],
            &[(OID_O, "Synadia")],
            &[(OID_OU, "nats.io")],
            &[(OID_OU, "eng")],
            &[(OID_CN, "alice, the first")],
        ]);
        assert_eq!(
            go_subject_string(&r),
            "CN=alice\\, the first,OU=nats.io+OU=eng,O=Synadia,C=US"
        );
        let dn = dn_from_rdns(&r).unwrap();
        assert!(
            dn.equal(&Dn::parse("CN=alice\\, the first,OU=eng,OU=nats.io,O=Synadia,C=US").unwrap())
        );
        // Unknown attribute types (emailAddress) defeat the DN form, as in go-ldap.
        let with_email = rdns(&[&[("1.2.840.113549.1.9.1", "a@b.c")], &[(OID_CN, "x")]]);
        assert!(dn_from_rdns(&with_email).is_none());
        assert_eq!(go_subject_string(&with_email), "CN=x");
    }

    #[test]
    fn dn_parsing_and_matching() {
        let a = Dn::parse("CN=bob,O=Acme,C=US").unwrap();
        let b = Dn::parse("cn=bob, o=Acme , c=US").unwrap();
        assert!(a.equal(&b));
        let reordered = Dn::parse("C=US,O=Acme,CN=bob").unwrap();
        assert!(!a.equal(&reordered) && a.rdns_match(&reordered));
        assert!(Dn::parse("alice@example.com").is_err());
        assert!(Dn::parse("CN=#0403").is_err());
        let escaped = Dn::parse("CN=a\\2cb").unwrap();
        assert!(escaped.equal(&Dn::parse("CN=a\\,b").unwrap()));
    }

    #[test]
    fn certificate_to_user() {
        let cert = PeerCert {
            emails: vec!["alice@example.com".into()],
            dns_names: vec!["alice.example.com".into()],
            uris: vec![],
            dn: dn_from_rdns(&rdns(&[&[(OID_O, "Acme")], &[(OID_CN, "alice")]])),
            subject: "CN=alice,O=Acme".into(),
            subject_with_dcs: None,
        };
        let users = ["CN=alice, O=Acme", "bob"];
        let exists = |n: &str| users.contains(&n);
        assert_eq!(
            cert.find_user(users.iter().copied(), exists),
            Some(("CN=alice, O=Acme".into(), CertMatch::DistinguishedName))
        );
        let users = ["alice.example.com", "alice@example.com"];
        let exists = |n: &str| users.contains(&n);
        assert_eq!(
            cert.find_user(users.iter().copied(), exists),
            Some(("alice@example.com".into(), CertMatch::Email))
        );
        let users = ["nobody"];
        assert_eq!(
            cert.find_user(users.iter().copied(), |n| users.contains(&n)),
            None
        );
    }

    #[test]
    fn go_names() {
        assert!(check_cipher("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256").is_ok());
        assert_eq!(
            check_cipher("TLS_RSA_WITH_RC4_128_SHA").unwrap(),
            CipherCheck::Insecure
        );
        assert_eq!(
            check_cipher("BOGUS").unwrap_err().to_string(),
            "unrecognized cipher BOGUS"
        );
        assert!(check_curve("CurveP256").is_ok());
        assert!(matches!(
            check_curve("CurveP521"),
            Err(TlsError::CurveUnavailable(_))
        ));
        assert_eq!(
            TlsVersion::parse("1.0").unwrap_err().to_string(),
            "unsupported TLS version: TLS 1.0"
        );
        let spec = TlsSpec {
            cipher_suites: Some(vec!["TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA".into()]),
            ..TlsSpec::default()
        };
        assert!(matches!(
            crypto_provider(&spec),
            Err(TlsError::CipherUnavailable(_))
        ));
    }
}
