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
}

struct NatsFormat {
    pid: u32,
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
        write!(writer, "[{}] ", self.pid)?;
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
    file: Mutex<std::fs::File>,
}

static LOG_FILE: std::sync::OnceLock<&'static LogFile> = std::sync::OnceLock::new();

/// Reopens the log file (after rotation). No-op when logging to stderr.
pub fn reopen() -> anyhow::Result<bool> {
    let Some(log) = LOG_FILE.get() else {
        return Ok(false);
    };
    let file = open_log_file(&log.path)?;
    if let Ok(mut current) = log.file.lock() {
        *current = file;
    }
    Ok(true)
}

impl Write for &LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.lock() {
            Ok(mut f) => f.write(buf),
            Err(_) => Ok(buf.len()),
        }
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
    let format = NatsFormat {
        pid: std::process::id(),
        timestamps: opts.timestamps,
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
    let layer = tracing_subscriber::fmt::layer().event_format(format);
    let registry = tracing_subscriber::registry();
    match &opts.file {
        Some(path) => {
            let file = open_log_file(Path::new(path))?;
            let file: &'static LogFile = Box::leak(Box::new(LogFile {
                path: Path::new(path).to_path_buf(),
                file: Mutex::new(file),
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

fn open_log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("could not open log file {}", path.display()))
}
