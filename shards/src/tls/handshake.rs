//! nats-server's TLS sequence for a new client connection: INFO in plaintext then
//! the handshake (or the handshake first), bounded by `tls.timeout`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::net::TcpStream;

use super::certificate::{sha256_hex, PeerCert};
use super::go_names::cipher_name;
use super::settings::TlsSettings;
use super::state::{peer_cert_info, TlsState};
use super::stream::Conn;

/// What the handshake needs of the connection it runs for.
pub(crate) trait HandshakePeer {
    fn is_closing(&self) -> bool;
    /// Resolves when the connection starts closing.
    fn closing(&self) -> impl Future<Output = ()>;
    fn log_prefix_short(&self) -> String;
    /// What is queued for the client (its INFO), to write before the handshake.
    fn take_output(&self) -> BytesMut;
    /// The handshake completed: what it negotiated, and the new authentication
    /// deadline (nats-server starts it after the handshake).
    fn handshake_done(&self, state: TlsState, auth_deadline: Instant);
}

enum Race<T> {
    Done(T),
    TimedOut,
    Closed,
}

/// Runs `fut` until it finishes, `deadline` passes or the connection is closed.
async fn race<T>(
    client: &impl HandshakePeer,
    deadline: Instant,
    fut: impl Future<Output = T>,
) -> Race<T> {
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
    client: &impl HandshakePeer,
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
    let state = TlsState {
        version,
        cipher,
        handshake_first,
        peer,
        peer_certs,
    };
    client.handshake_done(state, Instant::now() + auth_timeout);
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
