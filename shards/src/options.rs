//! Typed options the data plane runs with. Built by the control plane (CLI and
//! configuration file) and handed to every shard as an immutable snapshot.

use std::sync::Arc;
use std::time::Duration;

use crate::accounts::Accounts;
use crate::auth::AuthConfig;
use crate::tls::TlsSettings;

/// The nats-server version whose behaviour strait matches; clients switch features by it.
pub const NATS_VERSION: &str = "2.14.0";
/// JetStream API level advertised in INFO (nats-server 2.14 sends it even without JetStream).
pub const API_LEVEL: u32 = 4;
/// strait's own version.
pub const STRAIT_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Listen address for clients.
    pub host: String,
    /// Client port; 0 picks a free one.
    pub port: u16,
    /// Public NKEY-style server id (56 characters, starts with `N`).
    pub server_id: String,
    /// Server name; nats-server uses the id when none is configured.
    pub server_name: String,
    /// Curve public key advertised as `xkey`.
    pub xkey: String,
    /// Number of shards (executors pinned to cores).
    pub shards: usize,
    pub max_payload: usize,
    pub max_control_line: usize,
    pub max_connections: usize,
    /// 0 means unlimited.
    pub max_subscriptions: usize,
    pub max_pending: usize,
    pub write_deadline: Duration,
    pub ping_interval: Duration,
    pub ping_max: u32,
    /// Trace protocol operations (`-V`).
    pub trace: bool,
    /// Longest payload shown in traces; 0 = unlimited.
    pub max_traced_msg_len: usize,
    /// Busy-poll this long before an idle shard parks (lower wake-up latency, more CPU).
    pub spin_before_park: Option<Duration>,
    /// Period of each shard's housekeeping tick; also bounds a lost wake-up.
    pub tick: Duration,
    /// Closed connections remembered for monitoring.
    pub max_closed_clients: usize,
    /// Lame duck mode: total time over which clients are closed.
    pub lame_duck_duration: Duration,
    /// Lame duck mode: wait this long before closing the first client.
    pub lame_duck_grace_period: Duration,
    /// `feature_flags { js_ack_fc_v2: true }`: deliveries carry the v2 ack and
    /// flow control subjects (with the domain and the account's hash).
    pub js_ack_fc_v2: bool,
    /// Client authentication; empty means none is required.
    pub auth: AuthConfig,
    /// Accounts, their limits, exports and imports. Fixed for the life of the
    /// process (a reload that changes them is refused).
    pub accounts: Arc<Accounts>,
    /// TLS for client connections (`tls {}`, `--tls*`); `None` is plaintext only.
    pub tls: Option<Arc<TlsSettings>>,
    /// With TLS configured, still accept plaintext clients (`allow_non_tls`).
    pub allow_non_tls: bool,
    /// JetStream, when enabled (`-js`, `jetstream {}`).
    pub jetstream: Option<JetStreamOptions>,
}

/// JetStream's server-wide settings.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// Where streams and the meta log live (`store_dir`, `-sd`).
    pub store_dir: std::path::PathBuf,
    /// `max_memory_store`, `max_file_store`; -1 is unlimited (nats-server then
    /// reports a share of the machine's; strait reports -1 and enforces none yet).
    pub max_memory: i64,
    pub max_store: i64,
    pub domain: Option<String>,
    /// When a PubAck may be sent: after the fdatasync of a group commit
    /// (default), or, with `sync_interval: <duration>`, once buffered.
    pub sync: strait_storage::SyncPolicy,
    pub encryption: Option<strait_storage::Encryption>,
    /// `limits { duplicate_window }`, nanoseconds; 0 is none.
    pub max_duplicate_window: i64,
    /// `limits { max_ack_pending, max_request_batch }`, the ceilings every
    /// consumer's configuration is held to; 0 is none.
    pub max_ack_pending: i64,
    pub max_request_batch: i64,
    /// `limits { batch { ... } }`: atomic batch publishing.
    pub batch: crate::jetstream::batch::BatchLimits,
    /// `strict` (default on): API requests with fields they do not have are
    /// refused.
    pub strict: bool,
}

impl JetStreamOptions {
    /// The defaults with `store_dir`.
    pub fn new(store_dir: impl Into<std::path::PathBuf>) -> Self {
        JetStreamOptions {
            store_dir: store_dir.into(),
            max_memory: -1,
            max_store: -1,
            domain: None,
            sync: strait_storage::SyncPolicy::Always,
            encryption: None,
            max_duplicate_window: 0,
            max_ack_pending: 0,
            max_request_batch: 0,
            batch: Default::default(),
            strict: true,
        }
    }
}

impl ServerOptions {
    /// The server's name: as configured, else its id (as nats-server names it).
    pub fn name(&self) -> &str {
        if self.server_name.is_empty() {
            &self.server_id
        } else {
            &self.server_name
        }
    }

    /// INFO's `tls_required`: TLS is configured and plaintext is not allowed (a
    /// handshake-first-only server always requires it).
    pub fn tls_required(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| !self.allow_non_tls || t.handshake_first_only())
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            host: "0.0.0.0".into(),
            port: 4222,
            server_id: String::new(),
            server_name: String::new(),
            xkey: String::new(),
            shards: 1,
            max_payload: 1024 * 1024,
            max_control_line: 4096,
            max_connections: 64 * 1024,
            max_subscriptions: 0,
            max_pending: 64 * 1024 * 1024,
            write_deadline: Duration::from_secs(10),
            ping_interval: Duration::from_secs(120),
            ping_max: 2,
            trace: false,
            max_traced_msg_len: 0,
            spin_before_park: None,
            tick: Duration::from_millis(5),
            max_closed_clients: 10_000,
            lame_duck_duration: Duration::from_secs(120),
            lame_duck_grace_period: Duration::from_secs(10),
            js_ack_fc_v2: false,
            auth: AuthConfig {
                timeout: Duration::from_secs(2),
                ..AuthConfig::default()
            },
            accounts: Arc::new(Accounts::default()),
            tls: None,
            allow_non_tls: false,
            jetstream: None,
        }
    }
}
