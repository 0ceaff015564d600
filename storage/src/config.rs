//! Typed options for a stream store. The control plane maps the stream config
//! (and the `jetstream { cipher, key }` block) onto these.

use std::time::Duration;

/// What to do when a limit is reached (nats-server's `discard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Discard {
    /// Remove the oldest messages to make room.
    #[default]
    Old,
    /// Refuse the new message.
    New,
}

/// Stream limits. `None` / 0-like values mean unlimited, as in nats-server (-1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_msgs: Option<u64>,
    pub max_bytes: Option<u64>,
    pub max_age: Option<Duration>,
    pub max_msgs_per_subject: Option<u64>,
    /// Largest headers + payload accepted.
    pub max_msg_size: Option<u64>,
    pub discard: Discard,
    /// With `Discard::New`, also refuse a message whose subject is at
    /// `max_msgs_per_subject` (nats-server's `discard_new_per_subject`).
    pub discard_new_per_subject: bool,
    /// Accept per-message TTLs (nats-server's `allow_msg_ttl`).
    pub allow_msg_ttl: bool,
    /// Expiry leaves the last message of each subject in place, for the stream to
    /// replace with a subject delete marker (nats-server's
    /// `subject_delete_marker_ttl`): see `Store::expired_last_of_subjects`.
    pub subject_delete_markers: bool,
}

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// An append completes only once its record is on stable storage (fdatasync);
    /// concurrent appends share one fdatasync (group commit). The default.
    #[default]
    Always,
    /// An append completes once its record is buffered; data is written and synced at
    /// least every interval (and on `sync`/`close`). Acknowledged data written in the last
    /// interval can be lost on a crash: opt in explicitly.
    Interval(Duration),
}

/// Cipher for encryption at rest (nats-server's `cipher: chachapoly|aes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// XChaCha20-Poly1305 (24-byte random nonce per record).
    ChaCha,
    /// AES-256-GCM (96-bit random nonce per record).
    Aes,
}

/// Encryption at rest: a cipher and the configured key (any length; a per-stream key
/// is derived from it).
#[derive(Clone, PartialEq, Eq)]
pub struct Encryption {
    pub cipher: Cipher,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Encryption")
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

/// Options of a file store.
#[derive(Debug, Clone)]
pub struct FileStoreConfig {
    /// Stream name, used in errors and logs (and to derive the encryption key).
    pub name: String,
    /// The stream's directory; created if missing.
    pub dir: std::path::PathBuf,
    pub limits: Limits,
    pub sync: SyncPolicy,
    /// Size of a log segment (pre-allocated). Rounded up to 64 KiB.
    pub segment_size: u64,
    pub encryption: Option<Encryption>,
}

impl FileStoreConfig {
    /// Defaults: durable group commit, 64 MiB segments, no limits, no encryption.
    pub fn new(name: impl Into<String>, dir: impl Into<std::path::PathBuf>) -> Self {
        FileStoreConfig {
            name: name.into(),
            dir: dir.into(),
            limits: Limits::default(),
            sync: SyncPolicy::Always,
            segment_size: 64 << 20,
            encryption: None,
        }
    }
}
