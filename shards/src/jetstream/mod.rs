//! JetStream: streams on `strait-storage`, served with nats-server 2.14's API.
//!
//! The cores are plain state machines without I/O — the stream configuration
//! and its checks ([`config`]), a stream's publish path ([`stream`]), the meta
//! state of which streams exist where ([`meta`]) — so that a Raft log can
//! drive them later as this server's own log does now. The shells are thin:
//! [`host`] runs streams on their shard, [`service`] answers `$JS.API` on the
//! control executor.

pub mod ack;
pub mod backup;
pub mod batch;
pub mod config;
pub mod consumer;
pub mod consumer_config;
pub mod counter;
pub mod direct;
pub mod errors;
pub mod host;
pub mod meta;
pub mod service;
pub mod sourcing;
pub mod stream;
pub mod usage;

/// How Go marshals a zero `time.Time`, which nats-server writes for times not set.
pub const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";
