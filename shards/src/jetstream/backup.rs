//! Stream snapshots and restores (`$JS.API.STREAM.SNAPSHOT|RESTORE.<stream>`),
//! without I/O: the requests, the archive's framing, and the flow control of
//! the chunk transfer as natscli and the Go client's jsm drive it.
//!
//! The archive is strait's own: a Snappy-framed stream (which the clients'
//! S2 readers decode, as they do to show progress) of `STRAITJS` ‖ version
//! u32 ‖ manifest length u32 ‖ the manifest as JSON ‖ the store's snapshot
//! (`strait_storage::snapshot`). The manifest carries what the store does
//! not: when the stream was made, and its durable consumers with their
//! delivery and ack state.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use super::config::StreamConfig;
use super::consumer::ConsumerState;
use super::consumer_config::ConsumerConfig;

const MAGIC: &[u8; 8] = b"STRAITJS";
const VERSION: u32 = 1;
/// A manifest larger than this is not one this server wrote.
const MAX_MANIFEST: u32 = 256 << 20;

/// nats-server's defaults and bounds for the transfer.
pub const DEFAULT_CHUNK_SIZE: usize = 128 * 1024;
pub const DEFAULT_WINDOW_SIZE: usize = 8 * 1024 * 1024;
/// Without an ack for this long the receiver is taken to be gone.
pub const ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a snapshot waits for its receiver to subscribe.
pub const INTEREST_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// A restore that receives nothing for this long is given up.
pub const RESTORE_STALL: std::time::Duration = std::time::Duration::from_secs(5);

/// `$JS.API.STREAM.SNAPSHOT.<stream>`'s body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SnapshotRequest {
    pub deliver_subject: String,
    pub no_consumers: bool,
    pub chunk_size: usize,
    pub window_size: usize,
    /// Check the messages first (`jsck`).
    #[serde(rename = "jsck")]
    pub check_msgs: bool,
}

impl SnapshotRequest {
    /// The chunk size and how many chunks may be unacknowledged at once,
    /// clamped as nats-server clamps them (1 KiB..1 MiB chunks, a window of
    /// 1 KiB..32 MiB holding at least one chunk).
    pub fn window(&self) -> (usize, usize) {
        let chunk = if self.chunk_size == 0 {
            DEFAULT_CHUNK_SIZE
        } else {
            self.chunk_size
        }
        .clamp(1024, 1024 * 1024);
        let window = if self.window_size == 0 {
            DEFAULT_WINDOW_SIZE
        } else {
            self.window_size
        }
        .clamp(1024, 32 * 1024 * 1024)
        .max(chunk);
        (chunk, window / chunk)
    }
}

/// `$JS.API.STREAM.RESTORE.<stream>`'s body: the configuration to restore
/// under (natscli's `backup.json`) and, for information, the state it had.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RestoreRequest {
    pub config: StreamConfig,
    /// What the stream held when it was backed up; the archive says it again.
    pub state: Option<serde_json::Value>,
}

/// One durable consumer as the archive keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchivedConsumer {
    pub config: ConsumerConfig,
    pub created: i64,
    pub state: ConsumerState,
}

/// What the archive holds besides the store's files.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// When the stream was made, ns since the epoch.
    pub created: i64,
    #[serde(default)]
    pub consumers: Vec<ArchivedConsumer>,
}

/// Why an archive could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a strait stream snapshot")]
    NotAnArchive,
    #[error("snapshot version {0} is not supported")]
    Version(u32),
    #[error("snapshot manifest: {0}")]
    Manifest(String),
    #[error("snapshot: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes the archive's head (magic, version, manifest); the store's
/// snapshot follows on the same writer.
pub fn write_head<W: Write>(out: &mut W, manifest: &Manifest) -> std::io::Result<()> {
    let body = serde_json::to_vec(manifest).map_err(std::io::Error::other)?;
    out.write_all(MAGIC)?;
    out.write_all(&VERSION.to_le_bytes())?;
    out.write_all(&(body.len() as u32).to_le_bytes())?;
    out.write_all(&body)
}

/// Reads the archive's head, leaving `input` at the store's snapshot.
pub fn read_head<R: Read>(input: &mut R) -> Result<Manifest, ArchiveError> {
    let mut head = [0u8; 16];
    input.read_exact(&mut head).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ArchiveError::NotAnArchive,
        _ => ArchiveError::Io(e),
    })?;
    if &head[..8] != MAGIC {
        return Err(ArchiveError::NotAnArchive);
    }
    let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if version != VERSION {
        return Err(ArchiveError::Version(version));
    }
    let len = u32::from_le_bytes([head[12], head[13], head[14], head[15]]);
    if len > MAX_MANIFEST {
        return Err(ArchiveError::Manifest("too large".into()));
    }
    let mut body = vec![0u8; len as usize];
    input.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| ArchiveError::Manifest(e.to_string()))
}

/// The archive as it travels: Snappy framing, which S2 readers decode.
pub fn compressing<W: Write>(out: W) -> snap::write::FrameEncoder<W> {
    snap::write::FrameEncoder::new(out)
}

pub fn decompressing<R: Read>(input: R) -> snap::read::FrameDecoder<R> {
    snap::read::FrameDecoder::new(input)
}

/// The sending side's window: each chunk takes a slot, each ack gives one
/// back; a receiver that acks nothing for [`ACK_TIMEOUT`] is gone.
#[derive(Debug)]
pub struct Window {
    free: usize,
    max: usize,
    /// Chunks sent so far; the next one's index is this plus one.
    sent: u64,
}

impl Window {
    pub fn new(max_inflight: usize) -> Window {
        let max = max_inflight.max(1);
        Window {
            free: max,
            max,
            sent: 0,
        }
    }

    /// Takes a slot for the next chunk and gives its index (from 1), or
    /// `None` when the window is full.
    pub fn take(&mut self) -> Option<u64> {
        if self.free == 0 {
            return None;
        }
        self.free -= 1;
        self.sent += 1;
        Some(self.sent)
    }

    pub fn acked(&mut self) {
        self.free = (self.free + 1).min(self.max);
    }

    pub fn in_flight(&self) -> usize {
        self.max - self.free
    }
}

/// The subject a chunk's ack goes to: nats-server's
/// `$JS.SNAPSHOT.ACK.<stream>.<id>.<chunk length>.<index>`.
pub fn ack_subject(prefix: &str, len: usize, index: u64) -> String {
    format!("{prefix}.{len}.{index}")
}

pub fn ack_prefix(stream: &str, id: &str) -> String {
    format!("$JS.SNAPSHOT.ACK.{stream}.{id}")
}

pub fn restore_subject(stream: &str, id: &str) -> String {
    format!("$JS.SNAPSHOT.RESTORE.{stream}.{id}")
}

/// The message that ends a transfer: `204` when everything was sent, or
/// why it stopped.
pub fn end_of_transfer(error: Option<&TransferEnd>) -> Vec<u8> {
    match error {
        None => b"NATS/1.0 204\r\n\r\n".to_vec(),
        Some(e) => format!("NATS/1.0 {} {}\r\n\r\n", e.status(), e).into_bytes(),
    }
}

/// Why a snapshot transfer stopped before its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferEnd {
    #[error("No Interest")]
    NoInterest,
    #[error("No Flow Response")]
    NoFlowResponse,
    #[error("{0}")]
    Failed(String),
}

impl TransferEnd {
    pub fn status(&self) -> u16 {
        match self {
            TransferEnd::NoInterest | TransferEnd::NoFlowResponse => 408,
            TransferEnd::Failed(_) => 500,
        }
    }
}

/// A size as nats-server logs one: `512 B`, `1.50 MB`.
pub fn friendly_bytes(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < 6 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}B", &"KMGTPE"[unit - 1..unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_in_nats_server_logs() {
        assert_eq!(friendly_bytes(512), "512 B");
        assert_eq!(friendly_bytes(1536 * 1024), "1.50 MB");
    }

    #[test]
    fn the_window_is_clamped_as_nats_server_clamps_it() {
        let r = |chunk_size, window_size| SnapshotRequest {
            chunk_size,
            window_size,
            ..SnapshotRequest::default()
        };
        assert_eq!(r(0, 0).window(), (128 * 1024, 64));
        assert_eq!(r(10, 10).window(), (1024, 1));
        assert_eq!(r(4 << 20, 0).window(), (1 << 20, 8));
        assert_eq!(r(64 * 1024, 1 << 30).window(), (64 * 1024, 512));
        assert_eq!(r(512 * 1024, 2048).window(), (512 * 1024, 1));
    }

    #[test]
    fn slots_come_back_with_acks_and_indexes_count_from_one() {
        let mut w = Window::new(2);
        assert_eq!(w.take(), Some(1));
        assert_eq!(w.take(), Some(2));
        assert_eq!(w.take(), None);
        assert_eq!(w.in_flight(), 2);
        w.acked();
        assert_eq!(w.take(), Some(3));
        w.acked();
        w.acked();
        w.acked();
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn the_head_round_trips_through_the_compression() {
        let manifest = Manifest {
            created: 42,
            consumers: Vec::new(),
        };
        let mut out = compressing(Vec::new());
        write_head(&mut out, &manifest).unwrap();
        out.write_all(b"store bytes").unwrap();
        let bytes = out.into_inner().unwrap();
        let mut input = decompressing(&bytes[..]);
        assert_eq!(read_head(&mut input).unwrap(), manifest);
        let mut rest = Vec::new();
        input.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"store bytes");
    }

    #[test]
    fn what_is_not_an_archive_is_refused() {
        let mut out = compressing(Vec::new());
        out.write_all(b"a tar file, perhaps, from nats-server")
            .unwrap();
        let bytes = out.into_inner().unwrap();
        assert!(matches!(
            read_head(&mut decompressing(&bytes[..])),
            Err(ArchiveError::NotAnArchive)
        ));
        assert!(read_head(&mut &b"STRAITJS\x09\0\0\0\0\0\0\0"[..]).is_err());
    }

    #[test]
    fn transfers_end_with_nats_server_statuses() {
        assert_eq!(end_of_transfer(None), b"NATS/1.0 204\r\n\r\n");
        assert_eq!(
            end_of_transfer(Some(&TransferEnd::NoFlowResponse)),
            b"NATS/1.0 408 No Flow Response\r\n\r\n"
        );
    }
}
