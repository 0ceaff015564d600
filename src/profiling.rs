//! The profiling endpoint (`prof_port`, `--profile`): the URLs of Go's
//! `net/http/pprof` that nats-server serves, with profiles in the pprof protobuf
//! format, gzip-compressed as Go serves them, so `go tool pprof`, `pprof`,
//! Pyroscope and speedscope open them unchanged.
//!
//! - `profile?seconds=N`: CPU samples of every thread (shards, the control
//!   executor), labelled with the thread's name, taken by signal-driven sampling
//!   (pprof-rs) at `prof_cpu_rate` Hz (Go's 100 by default).
//! - `heap` and `allocs`: the allocations jemalloc sampled (every 512 KiB on
//!   average) that are still live. jemalloc's sampling is switched on only when the
//!   endpoint is configured.
//! - `cmdline`; the Go-runtime profiles (`goroutine`, `block`, `mutex`,
//!   `threadcreate`, `trace`, `symbol`) answer 404 with the reason.
//!
//! Like nats-server's, the endpoint has no authentication and listens on the
//! client listener's host.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prost::Message;

use crate::profile_proto as pb;

/// Go's default CPU sampling rate.
pub const DEFAULT_CPU_RATE_HZ: u32 = 100;
/// Go's default `seconds` for a CPU profile.
const DEFAULT_SECONDS: u64 = 30;

/// Where and how to serve profiles.
#[derive(Debug, Clone)]
pub struct ProfilingSetup {
    pub host: String,
    /// 0: a free port.
    pub port: u16,
    pub cpu_rate_hz: u32,
}

/// Starts the endpoint on the control executor; returns its port.
pub fn start(setup: ProfilingSetup) -> anyhow::Result<u16> {
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(setup.host.as_str(), setup.port))
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            anyhow::anyhow!("invalid profiling address {}:{}", setup.host, setup.port)
        })?;
    let (listener, port) = crate::monitor::exclusive_listener(addr)
        .map_err(|e| anyhow::anyhow!("error starting profiler: {e}"))?;
    activate_heap_sampling();
    tracing::info!("profiling port: {port}");
    let rate = setup.cpu_rate_hz.max(1);
    glommio::spawn_local(crate::monitor::serve_http(
        listener,
        "profiling",
        move |req| handle(req, rate),
    ))
    .detach();
    Ok(port)
}

#[cfg(feature = "jemalloc")]
fn activate_heap_sampling() {
    let Some(ctl) = jemalloc_pprof::PROF_CTL.as_ref() else {
        tracing::warn!("heap profiles unavailable: jemalloc was built without profiling");
        return;
    };
    match ctl.try_lock() {
        Ok(mut ctl) => {
            if let Err(e) = ctl.activate() {
                tracing::warn!("could not start heap sampling: {e}");
            }
        }
        Err(_) => tracing::warn!("could not start heap sampling: profiler busy"),
    }
}

#[cfg(not(feature = "jemalloc"))]
fn activate_heap_sampling() {}

const INDEX: &str = "<html>
<head><title>/debug/pprof/</title></head>
<body>
/debug/pprof/<br>
<br>
Types of profiles available:
<table>
<thead><td>Count</td><td>Profile</td></thead>
<tr><td></td><td><a href='allocs?debug=1'>allocs</a></td></tr>
<tr><td></td><td><a href='cmdline'>cmdline</a></td></tr>
<tr><td></td><td><a href='heap?debug=1'>heap</a></td></tr>
<tr><td></td><td><a href='profile'>profile</a></td></tr>
</table>
<a href=\"goroutine?debug=2\">full goroutine stack dump</a>: not available in strait (see goroutine)
<br>
<p>
Profile Descriptions:
<ul>
<li><div class=profile-name>allocs: </div> Allocations sampled by jemalloc (every 512 KiB on average) that are still live</li>
<li><div class=profile-name>cmdline: </div> The command line invocation of the current program</li>
<li><div class=profile-name>heap: </div> The same live sampled allocations</li>
<li><div class=profile-name>profile: </div> CPU profile of every thread. You can specify the duration in the seconds GET parameter. After you get the profile file, use the go tool pprof command to investigate the profile.</li>
</ul>
</p>
</body>
</html>
";

fn respond(status: StatusCode, content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = content_type.parse() {
        h.insert(hyper::header::CONTENT_TYPE, v);
    }
    h.insert(
        "X-Content-Type-Options",
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    r
}

/// Go's pprof error answer: plain text, the `X-Go-Pprof` header.
fn error(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut r = respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from(text + "\n"),
    );
    r.headers_mut()
        .insert("X-Go-Pprof", hyper::header::HeaderValue::from_static("1"));
    r
}

fn profile_file(name: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = respond(
        StatusCode::OK,
        "application/octet-stream",
        Bytes::from(body),
    );
    if let Ok(v) = format!("attachment; filename=\"{name}\"").parse() {
        r.headers_mut()
            .insert(hyper::header::CONTENT_DISPOSITION, v);
    }
    r
}

async fn handle(req: Request<hyper::body::Incoming>, rate: u32) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let Some(name) = path.strip_prefix("/debug/pprof/") else {
        return error(StatusCode::NOT_FOUND, "404 page not found".into());
    };
    match name {
        "" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(INDEX.as_bytes()),
        ),
        "profile" => {
            let seconds = query_value(&query, "seconds")
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|&s| s > 0)
                .unwrap_or(DEFAULT_SECONDS);
            cpu_profile(Duration::from_secs(seconds), rate).await
        }
        "heap" | "allocs" => heap_profile(name),
        "cmdline" => {
            let args: Vec<String> = std::env::args().collect();
            respond(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                Bytes::from(args.join("\x00")),
            )
        }
        "goroutine" | "threadcreate" | "block" | "mutex" | "trace" | "symbol" => error(
            StatusCode::NOT_FOUND,
            format!(
                "Unknown profile: {name} (strait has no Go runtime: its shards are threads \
                 running glommio executors; take a CPU profile, which names each thread)"
            ),
        ),
        _ => error(StatusCode::NOT_FOUND, "Unknown profile".into()),
    }
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

async fn cpu_profile(window: Duration, rate: u32) -> Response<Full<Bytes>> {
    // Only one at a time, as in Go (the sampler is process-wide).
    let guard = match pprof::ProfilerGuardBuilder::default()
        .frequency(rate as i32)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
    {
        Ok(g) => g,
        Err(pprof::Error::Running) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Could not enable CPU profiling: cpu profiling already in use".into(),
            )
        }
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Could not enable CPU profiling: {e}"),
            )
        }
    };
    glommio::timer::sleep(window).await;
    let report = match guard.report().build() {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Could not build the CPU profile: {e}"),
            )
        }
    };
    drop(guard);
    match gzip(&cpu_report_to_pprof(&report, rate).encode_to_vec()) {
        Ok(body) => profile_file("profile", body),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(feature = "jemalloc")]
fn heap_profile(name: &str) -> Response<Full<Bytes>> {
    let Some(ctl) = jemalloc_pprof::PROF_CTL.as_ref() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "heap profiling is not available (jemalloc without profiling)".into(),
        );
    };
    let Ok(mut ctl) = ctl.try_lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "a heap profile is being taken; try again".into(),
        );
    };
    match ctl.dump_pprof() {
        // Already gzip-compressed protobuf.
        Ok(body) => profile_file(name, body),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Could not dump the heap profile: {e}"),
        ),
    }
}

#[cfg(not(feature = "jemalloc"))]
fn heap_profile(_name: &str) -> Response<Full<Bytes>> {
    error(
        StatusCode::NOT_IMPLEMENTED,
        "heap profiles need strait built with its jemalloc feature (the default)".into(),
    )
}

fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// Interns strings for the profile's string table (index 0 is "").
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Strings::default();
        s.get("");
        s
    }

    fn get(&mut self, value: &str) -> i64 {
        if let Some(&i) = self.index.get(value) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(value.to_string());
        self.index.insert(value.to_string(), i);
        i
    }
}

/// A pprof-rs report as a pprof profile: one location per frame (with its inlined
/// functions as lines), `samples/count` and `cpu/nanoseconds` values, and each
/// sample's thread as a `thread` label, as Go's CPU profiles are laid out.
fn cpu_report_to_pprof(report: &pprof::Report, rate: u32) -> pb::Profile {
    let period = 1_000_000_000 / i64::from(rate);
    let mut strings = Strings::new();
    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    let mut function_list = Vec::new();
    let mut locations: HashMap<Vec<(u64, i64)>, u64> = HashMap::new();
    let mut location_list = Vec::new();
    let mut samples = Vec::new();
    let thread_key = strings.get("thread");
    for (frames, &count) in &report.data {
        let mut location_id = Vec::with_capacity(frames.frames.len());
        for frame in &frames.frames {
            let lines: Vec<(u64, i64)> = frame
                .iter()
                .map(|symbol| {
                    let name = symbol.name();
                    let file = symbol.filename().into_owned();
                    let next = function_list.len() as u64 + 1;
                    let id = *functions
                        .entry((name.clone(), file.clone()))
                        .or_insert_with(|| {
                            function_list.push(pb::Function {
                                id: next,
                                name: strings.get(&name),
                                system_name: strings.get(&symbol.sys_name()),
                                filename: strings.get(&file),
                            });
                            next
                        });
                    (id, i64::from(symbol.lineno()))
                })
                .collect();
            let next = location_list.len() as u64 + 1;
            let id = *locations.entry(lines.clone()).or_insert_with(|| {
                location_list.push(pb::Location {
                    id: next,
                    address: 0,
                    line: lines
                        .iter()
                        .map(|&(function_id, line)| pb::Line { function_id, line })
                        .collect(),
                });
                next
            });
            location_id.push(id);
        }
        let count = count as i64;
        samples.push(pb::Sample {
            location_id,
            value: vec![count, count * period],
            label: vec![pb::Label {
                key: thread_key,
                str: strings.get(&frames.thread_name_or_id()),
                num: 0,
            }],
        });
    }
    let value_type = |strings: &mut Strings, t: &str, u: &str| pb::ValueType {
        r#type: strings.get(t),
        unit: strings.get(u),
    };
    let sample_type = vec![
        value_type(&mut strings, "samples", "count"),
        value_type(&mut strings, "cpu", "nanoseconds"),
    ];
    let period_type = Some(value_type(&mut strings, "cpu", "nanoseconds"));
    let start = report.timing.start_time;
    pb::Profile {
        sample_type,
        sample: samples,
        location: location_list,
        function: function_list,
        string_table: strings.table,
        time_nanos: start
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i64,
        duration_nanos: report.timing.duration.as_nanos() as i64,
        period_type,
        period,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_intern_from_the_empty_one() {
        let mut s = Strings::new();
        assert_eq!(s.get("a"), 1);
        assert_eq!(s.get(""), 0);
        assert_eq!(s.get("a"), 1);
        assert_eq!(s.table, vec!["".to_string(), "a".to_string()]);
    }

    #[test]
    fn query_values() {
        assert_eq!(query_value("seconds=5&x=1", "seconds"), Some("5"));
        assert_eq!(query_value("x=1", "seconds"), None);
    }
}
