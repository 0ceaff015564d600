//! Store errors. The limit texts are nats-server's own (its store errors and the
//! JetStream API error table), because clients and the CLI show them verbatim.

use std::io;

/// Errors from a stream store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `DiscardNew` and `max_msgs` reached.
    #[error("maximum messages exceeded")]
    MaxMsgs,
    /// `DiscardNew` and `max_bytes` reached.
    #[error("maximum bytes exceeded")]
    MaxBytes,
    /// `DiscardNew` + `discard_new_per_subject` and the subject is at `max_msgs_per_subject`.
    #[error("maximum messages per subject exceeded")]
    MaxMsgsPerSubject,
    /// Headers + payload larger than `max_msg_size` (JSStreamMessageExceedsMaximumErr).
    #[error("message size exceeds maximum allowed")]
    MsgTooLarge,
    /// A per-message TTL was given but the stream does not allow them (JSMessageTTLDisabledErr).
    #[error("per-message TTL is disabled")]
    TtlDisabled,
    /// The sequence is deleted, never existed or nothing matched (JSNoMessageFoundErr).
    #[error("no message found")]
    NotFound,
    /// Nothing at or after the requested sequence matches (nats-server's ErrStoreEOF).
    #[error("stream store EOF")]
    Eof,
    /// The subject is not a valid literal subject for a message.
    #[error("invalid subject")]
    InvalidSubject,
    /// The store was closed (or failed and fenced itself off).
    #[error("store is closed")]
    Closed,
    /// The store holds encrypted data and the configured key does not decrypt it.
    #[error("stream '{stream}': encryption key does not match the stored data (wrong key)")]
    WrongKey { stream: String },
    /// The store holds encrypted data and no key was configured.
    #[error("stream '{stream}': stored data is encrypted but no encryption key is configured")]
    KeyRequired { stream: String },
    /// The configured key is unusable (e.g. empty).
    #[error("invalid encryption key: {0}")]
    InvalidKey(String),
    /// A record or metadata file failed validation in a way that cannot be skipped.
    #[error("stream '{stream}': corrupt store: {detail}")]
    Corrupt { stream: String, detail: String },
    /// A snapshot stream could not be parsed or written.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// An I/O error, naming the stream and what was being done.
    #[error("stream '{stream}': {op}: {source}")]
    Io {
        stream: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    pub(crate) fn io(stream: &str, op: &'static str, source: impl Into<io::Error>) -> Self {
        StoreError::Io {
            stream: stream.to_string(),
            op,
            source: source.into(),
        }
    }

    /// The JetStream API `(code, err_code)` pair nats-server answers a publish or a
    /// message lookup with when the store returns this error. Limit errors are
    /// wrapped in JSStreamStoreFailedF (10077) whose description is this error's text.
    pub fn js_error_code(&self) -> (u16, u16) {
        match self {
            StoreError::MsgTooLarge => (400, 10054),
            StoreError::TtlDisabled => (400, 10166),
            StoreError::NotFound | StoreError::Eof => (404, 10037),
            StoreError::MaxMsgs
            | StoreError::MaxBytes
            | StoreError::MaxMsgsPerSubject
            | StoreError::InvalidSubject
            | StoreError::Closed => (503, 10077),
            _ => (500, 10077),
        }
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
