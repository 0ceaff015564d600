//! TLS for client connections, as nats-server does it: INFO in plaintext, then
//! the handshake (or the handshake first, then INFO inside TLS), bounded by
//! `tls.timeout`; client certificates checked against `ca_file` under `verify`,
//! and mapped to configured users under `verify_and_map`.
//!
//! The settings are built once per configuration load (so a reload re-reads the
//! certificates) and shared by every shard; each connection takes the snapshot in
//! force when it was accepted.

mod certificate;
mod error;
mod go_names;
mod handshake;
mod settings;
mod state;
mod stream;

pub use certificate::{CertMatch, Dn, PeerCert};
pub use error::TlsError;
pub use go_names::{check_cipher, check_curve, CipherCheck};
pub(crate) use handshake::{establish, HandshakePeer, LAST_WORDS};
pub use settings::{
    TlsSettings, TlsSpec, TlsVersion, DEFAULT_HANDSHAKE_FIRST_FALLBACK, DEFAULT_TLS_TIMEOUT,
};
pub use state::{PeerCertInfo, TlsState};
pub(crate) use stream::Conn;
