//! Logging in nats-server's line format:
//! `[pid] 2026/11/26 15:23:34.583476 [INF] message`.
//!
//! Levels map as nats-server's do: ERROR → ERR, WARN → WRN, INFO → INF,
//! DEBUG → DBG (`-D`), TRACE → TRC (`-V`). `-V` without `-D` shows traces but
//! not debug lines, so the filter is a set, not a threshold.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub debug: bool,
    pub trace: bool,
    pub timestamps: bool,
    pub file: Option<String>,
    /// Rotate the log file when it grows past this many bytes (0: never).
    pub size_limit: u64,
    /// Backups kept after rotation, counting the live file (0: keep all).
    pub max_files: usize,
    /// Log to the local syslog (`-s`, `syslog: true`).
    pub syslog: bool,
    /// Log to a remote syslog (`-r udp://host:514`, `remote_syslog`).
    pub remote_syslog: Option<String>,
}

struct NatsFormat {
    /// None for syslog, which adds its own pid and time.
    pid: Option<u32>,
    timestamps: bool,
    offset: UtcOffset,
}

const TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year]/[month]/[day] [hour]:[minute]:[second].[subsecond digits:6]");

fn level_tag(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "[ERR]",
        Level::WARN => "[WRN]",
        Level::INFO => "[INF]",
        Level::DEBUG => "[DBG]",
        Level::TRACE => "[TRC]",
    }
}

impl<S, N> FormatEvent<S, N> for NatsFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if let Some(pid) = self.pid {
            write!(writer, "[{pid}] ")?;
        }
        if self.timestamps {
            let now = OffsetDateTime::now_utc().to_offset(self.offset);
            if let Ok(ts) = now.format(TIMESTAMP) {
                write!(writer, "{ts} ")?;
            }
        }
        write!(writer, "{} ", level_tag(event.metadata().level()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// A log file opened for appending, shared by all threads; reopened on SIGUSR1
/// so that logrotate can move it away.
struct LogFile {
    path: std::path::PathBuf,
    file: Mutex<OpenLog>,
    size_limit: u64,
    max_files: usize,
}

struct OpenLog {
    file: std::fs::File,
    written: u64,
}

impl LogFile {
    /// nats-server's rotation: the full file is renamed to
    /// `<name>.<YYYY.MM.DD.HH.MM.SS.nnnnnnnnn>`, a new one is started, and the
    /// oldest backups beyond `logfile_max_num` are removed.
    fn rotate(&self, log: &mut OpenLog) -> io::Result<()> {
        let now = OffsetDateTime::now_utc();
        let stamp = format!(
            "{:04}.{:02}.{:02}.{:02}.{:02}.{:02}.{:09}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.nanosecond()
        );
        let backup = std::path::PathBuf::from(format!("{}.{stamp}", self.path.display()));
        std::fs::rename(&self.path, &backup)?;
        log.file = open_log_file(&self.path).map_err(io::Error::other)?;
        log.written = 0;
        let note = format!(
            "[{}] Rotated log, backup saved as {}\n",
            std::process::id(),
            backup.display()
        );
        log.file.write_all(note.as_bytes())?;
        log.written += note.len() as u64;
        if self.max_files > 0 {
            self.prune_backups();
        }
        Ok(())
    }

    fn prune_backups(&self) {
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return;
        };
        let dir = if dir.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            dir
        };
        let prefix = format!("{}.", name.to_string_lossy());
        let mut backups: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    n.to_string_lossy()
                        .strip_prefix(&prefix)
                        .is_some_and(is_rotation_stamp)
                })
            })
            .collect();
        // Timestamps sort chronologically as text.
        backups.sort();
        let keep = self.max_files.saturating_sub(1);
        let excess = backups.len().saturating_sub(keep);
        for old in backups.into_iter().take(excess) {
            let _ = std::fs::remove_file(old);
        }
    }
}

/// True for the suffix [`LogFile::rotate`] writes (`YYYY.MM.DD.HH.MM.SS.nnnnnnnnn`):
/// pruning must leave alone what others put beside the log (logrotate's `.gz`
/// archives, an operator's copies).
fn is_rotation_stamp(suffix: &str) -> bool {
    let widths = [4, 2, 2, 2, 2, 2, 9];
    let parts: Vec<&str> = suffix.split('.').collect();
    parts.len() == widths.len()
        && parts
            .iter()
            .zip(widths)
            .all(|(p, w)| p.len() == w && p.bytes().all(|b| b.is_ascii_digit()))
}

static LOG_FILE: std::sync::OnceLock<&'static LogFile> = std::sync::OnceLock::new();

/// Reopens the log file (after rotation). No-op when logging to stderr.
pub fn reopen() -> anyhow::Result<bool> {
    let Some(log) = LOG_FILE.get() else {
        return Ok(false);
    };
    let file = open_log_file(&log.path)?;
    let written = file.metadata().map(|m| m.len()).unwrap_or(0);
    if let Ok(mut current) = log.file.lock() {
        *current = OpenLog { file, written };
    }
    Ok(true)
}

impl Write for &LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Ok(mut log) = self.file.lock() else {
            return Ok(buf.len());
        };
        if self.size_limit > 0
            && log.written + buf.len() as u64 > self.size_limit
            && log.written > 0
        {
            // A failed rotation keeps logging to the current file.
            let _ = self.rotate(&mut log);
        }
        let n = log.file.write(buf)?;
        log.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

static DEBUG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static TRACE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Changes the debug and trace switches at runtime (configuration reload).
pub fn set_levels(debug: bool, trace: bool) {
    use std::sync::atomic::Ordering;
    let changed = DEBUG.swap(debug, Ordering::Relaxed)
        != debug | (TRACE.swap(trace, Ordering::Relaxed) != trace);
    if changed {
        // tracing caches per call site whether it is enabled; ask again.
        tracing::callsite::rebuild_interest_cache();
    }
}

/// Installs the global subscriber. Must run before any thread is spawned: the
/// local UTC offset can only be read safely while the process is single-threaded.
pub fn init(opts: &LogOptions) -> anyhow::Result<()> {
    let offset = UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC);
    let to_syslog = opts.syslog || opts.remote_syslog.is_some();
    let format = NatsFormat {
        pid: (!to_syslog).then(std::process::id),
        timestamps: opts.timestamps && !to_syslog,
        offset,
    };
    set_levels(opts.debug, opts.trace);
    let filter = filter_fn(move |meta| {
        use std::sync::atomic::Ordering;
        match *meta.level() {
            Level::TRACE => TRACE.load(Ordering::Relaxed) && meta.target().starts_with("strait"),
            Level::DEBUG => DEBUG.load(Ordering::Relaxed) && meta.target().starts_with("strait"),
            _ => true,
        }
    });
    // nats-server writes fields as plain text; tracing's default italic field
    // names would leave escape codes in log files and journald.
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .event_format(format);
    let registry = tracing_subscriber::registry();
    if to_syslog {
        let sink = Syslog::connect(opts.remote_syslog.as_deref())?;
        let sink: &'static Syslog = Box::leak(Box::new(sink));
        registry
            .with(layer.with_writer(sink).with_filter(filter))
            .try_init()?;
        let _ = tracing_log::LogTracer::init();
        return Ok(());
    }
    match &opts.file {
        Some(path) => {
            let file = open_log_file(Path::new(path))?;
            let written = file.metadata().map(|m| m.len()).unwrap_or(0);
            let file: &'static LogFile = Box::leak(Box::new(LogFile {
                path: Path::new(path).to_path_buf(),
                file: Mutex::new(OpenLog { file, written }),
                size_limit: opts.size_limit,
                max_files: opts.max_files,
            }));
            let _ = LOG_FILE.set(file);
            registry
                .with(layer.with_writer(move || file).with_filter(filter))
                .try_init()?;
        }
        None => {
            registry
                .with(layer.with_writer(io::stderr).with_filter(filter))
                .try_init()?;
        }
    }
    // glommio reports through the `log` crate (io_uring memory warnings among them).
    let _ = tracing_log::LogTracer::init();
    Ok(())
}

/// A syslog destination: the local daemon (`/dev/log`) or a remote one over UDP.
enum SyslogTarget {
    Local(std::os::unix::net::UnixDatagram),
    Remote(std::net::UdpSocket),
}

struct Syslog {
    target: SyslogTarget,
    pid: u32,
}

impl Syslog {
    fn connect(remote: Option<&str>) -> anyhow::Result<Syslog> {
        use anyhow::Context;
        let target = match remote {
            Some(url) => {
                let addr = url
                    .strip_prefix("udp://")
                    .or_else(|| url.strip_prefix("udp4://"))
                    .unwrap_or(url);
                let addr = if addr.contains(':') {
                    addr.to_string()
                } else {
                    format!("{addr}:514")
                };
                let socket = std::net::UdpSocket::bind("0.0.0.0:0")
                    .context("could not open a UDP socket for remote syslog")?;
                socket
                    .connect(&addr)
                    .with_context(|| format!("could not reach remote syslog {addr}"))?;
                SyslogTarget::Remote(socket)
            }
            None => {
                let socket = std::os::unix::net::UnixDatagram::unbound()
                    .context("could not open a socket for syslog")?;
                socket
                    .connect("/dev/log")
                    .context("could not connect to the local syslog (/dev/log)")?;
                SyslogTarget::Local(socket)
            }
        };
        Ok(Syslog {
            target,
            pid: std::process::id(),
        })
    }
}

/// One event's writer: knows the priority from the event's level.
struct SyslogLine<'a> {
    sink: &'a Syslog,
    priority: u8,
    buf: Vec<u8>,
}

impl Write for SyslogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine<'_> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        // RFC 3164 framing, facility daemon (3).
        let line = format!(
            "<{}>strait[{}]: {}",
            3 * 8 + self.priority,
            self.sink.pid,
            text
        );
        let _ = match &self.sink.target {
            SyslogTarget::Local(s) => s.send(line.as_bytes()),
            SyslogTarget::Remote(s) => s.send(line.as_bytes()),
        };
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for &'static Syslog {
    type Writer = SyslogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SyslogLine {
            sink: self,
            priority: 6,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        let priority = match *meta.level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        SyslogLine {
            sink: self,
            priority,
            buf: Vec::new(),
        }
    }
}

fn open_log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("could not open log file {}", path.display()))
}
