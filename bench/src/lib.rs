//! strait-bench: a load generator and side-by-side benchmark harness for NATS servers.
//!
//! It speaks the NATS client protocol itself over plain TCP and treats the server as a
//! black box, so it measures strait and nats-server alike. See README.md.

pub mod backup;
pub mod batch;
pub mod cli;
pub mod compare;
pub mod conn;
pub mod conns;
pub mod consume;
pub mod counter;
pub mod js;
pub mod kv;
pub mod mirror;
pub mod plot;
pub mod procstat;
pub mod report;
pub mod run;
pub mod scan;
pub mod scenario;
pub mod server;
pub mod stats;
pub mod subs;
