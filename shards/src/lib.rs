//! strait's data plane: one shard per core.
//!
//! The sans-I/O cores — `proto` (parser and encoder), `subject`, `sublist` — hold
//! no sockets, clocks or executors. `shard`, `client`, `mesh` and `server` wire them
//! to glommio.

pub mod accounts;
pub mod auth;
pub mod client;
pub mod connection;
pub mod control;
pub mod global;
pub mod health;
pub mod info;
pub mod internal;
pub mod jetstream;
pub mod listen;
pub mod mesh;
pub mod options;
pub mod permissions;
pub mod proto;
pub mod router;
pub mod server;
pub mod shard;
pub mod signal;
pub mod snapshot;
pub use strait_storage::subject;
pub mod sublist;
pub mod tls;

pub use options::ServerOptions;
pub use server::{start, start_closed, ServerHandle, StartError};

use std::time::Duration;

/// Formats a duration as Go's `time.Duration.String()` does (`1s`, `2m0s`,
/// `1.5s`, `250ms`), since nats-server prints durations that way in logs and JSON.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", trim_fraction(nanos as f64 / 1e3));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", trim_fraction(nanos as f64 / 1e6));
    }
    let total_secs = d.as_secs();
    let h = total_secs / 3600;
    let m = (total_secs % 3600) / 60;
    let s = (nanos % 60_000_000_000) as f64 / 1e9;
    let secs = format!("{}s", trim_fraction(s));
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

fn trim_fraction(v: f64) -> String {
    let s = format!("{v:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// RFC 3339 with nanoseconds in UTC, as Go's `time.Time` marshals to JSON.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    dt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A unique id in the form of nats-server's NUIDs (22 base62 characters), for
/// the `id` of advisories and events.
pub fn nuid() -> String {
    use rand::Rng;
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    (0..22)
        .map(|_| DIGITS[rng.gen_range(0..DIGITS.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::format_duration;
    use std::time::Duration;

    #[test]
    fn go_durations() {
        assert_eq!(format_duration(Duration::from_secs(1)), "1s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m0s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(3725)), "1h2m5s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
