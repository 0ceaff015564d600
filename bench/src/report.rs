//! Terminal tables, JSON and CSV.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::compare::{Better, CompareReport, CompareRun, Row};
use crate::run::{fmt_count, RunResult};

/// Vertical table of one run.
pub fn single_table(server: &str, r: &RunResult) -> String {
    let mut t = String::new();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(t, "  {k:<22} {v}");
    };
    line("scenario", format!("{} ({})", r.scenario, r.description));
    line("server", server.to_string());
    line("elapsed", format!("{:.3} s", r.elapsed_s));
    line(
        "messages",
        format!(
            "{} published, {} delivered, {} lost",
            r.published, r.delivered, r.lost
        ),
    );
    line("msgs/s", fmt_count(r.msgs_per_s));
    line("MB/s (payload)", format!("{:.2}", r.mb_per_s));
    if let Some(l) = &r.latency {
        line(
            "latency us",
            format!(
                "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (mean {:.1}, n={})",
                l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us, l.count
            ),
        );
    }
    match &r.server {
        Some(s) => {
            line(
                "server cpu",
                format!(
                    "{:.2} s = {:.2} cores, {:.0} ns/msg (pid {})",
                    s.cpu_s, s.cores, s.cpu_ns_per_msg, s.pid
                ),
            );
            line(
                "server memory",
                format!(
                    "RSS {:.1} MiB, peak (VmHWM, since start) {:.1} MiB",
                    s.rss_kb as f64 / 1024.0,
                    s.peak_rss_kb as f64 / 1024.0
                ),
            );
        }
        None => line(
            "server cpu/memory",
            "unknown (pass --server-pid or --pidfile)".to_string(),
        ),
    }
    line(
        "harness cpu",
        format!(
            "{:.2} s = {:.2} cores{}",
            r.harness_cpu_s,
            r.harness_cores,
            r.server
                .filter(|s| s.cpu_s > 0.0)
                .map(|s| format!(
                    " ({:.0}% of the server's)",
                    100.0 * r.harness_cpu_s / s.cpu_s
                ))
                .unwrap_or_default()
        ),
    );
    t
}

fn fmt_metric(metric: &str, v: f64) -> String {
    if metric == "msgs/s" || metric == "req/s" {
        fmt_count(v)
    } else if metric.ends_with("ns/msg") {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn fmt_summary(metric: &str, s: Option<crate::stats::Summary>) -> String {
    match s {
        Some(s) if s.n > 1 => format!(
            "{} [{}-{}]",
            fmt_metric(metric, s.median),
            fmt_metric(metric, s.min),
            fmt_metric(metric, s.max)
        ),
        Some(s) => fmt_metric(metric, s.median),
        None => "n/a".to_string(),
    }
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map(|v| format!("{v:.prec$}"))
        .unwrap_or_else(|| "n/a".to_string())
}

pub fn compare_table(rep: &CompareReport) -> String {
    let (a, b) = (&rep.servers[0], &rep.servers[1]);
    let mut t = String::new();
    let limit = match (rep.duration_s, rep.count) {
        (_, Some(c)) => format!("{c} msgs per publisher"),
        (Some(d), _) => format!("{d:.3} s"),
        _ => String::new(),
    };
    let _ = writeln!(t, "A = {} ({})", a.name, a.command.join(" "));
    let _ = writeln!(t, "B = {} ({})", b.name, b.command.join(" "));
    let _ = writeln!(t, "{} reps x {limit} per run; {}", rep.reps, rep.method);
    if let (Some(b), Some(a)) = (rep.loadavg_before, rep.loadavg_after) {
        let _ = writeln!(
            t,
            "machine load average (1 min): {:.2} before, {:.2} after, on {} CPUs",
            b[0],
            a[0],
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    }
    let _ = writeln!(
        t,
        "values: median [min-max] over reps; ratio = A/B of medians [per-rep range]"
    );
    let _ = writeln!(
        t,
        "higher ratio is better for msgs/s and req/s; LOWER is better for latency (us), ns/msg and MiB\n"
    );
    let heads = [
        "scenario",
        "metric",
        &format!("A: {}", a.name),
        &format!("B: {}", b.name),
        "A/B",
        "range",
        "better",
        "goal",
        "met",
    ]
    .map(str::to_string);
    let mut cells: Vec<[String; 9]> = vec![heads];
    for r in &rep.rows {
        cells.push(row_cells(r));
    }
    let widths: Vec<usize> = (0..9)
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (n, c) in cells.iter().enumerate() {
        let mut line = String::new();
        for (i, cell) in c.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
        }
        let _ = writeln!(t, "{}", line.trim_end());
        if n == 0 {
            let _ = writeln!(t, "{}", "-".repeat(widths.iter().sum::<usize>() + 2 * 8));
        }
    }
    if rep.rows.iter().any(|r| r.noisy) {
        let _ = writeln!(
            t,
            "! = per-rep ratios differ by more than {:.0}%: noise; rerun with more --reps or on a quieter machine",
            (crate::compare::NOISY_SPREAD - 1.0) * 100.0
        );
    }
    let _ = writeln!(
        t,
        "\nCPU (median cores busy during the run; the harness should be well below the server)"
    );
    let _ = writeln!(
        t,
        "  {:<14} {:>12} {:>12} {:>12} {:>12}",
        "scenario",
        format!("{} srv", a.name),
        "harness",
        format!("{} srv", b.name),
        "harness"
    );
    for c in &rep.cpu {
        let _ = writeln!(
            t,
            "  {:<14} {:>12} {:>12} {:>12} {:>12}",
            c.scenario,
            fmt_opt(c.a_server_cores, 2),
            fmt_opt(c.a_harness_cores, 2),
            fmt_opt(c.b_server_cores, 2),
            fmt_opt(c.b_harness_cores, 2)
        );
    }
    let failed: Vec<&CompareRun> = rep.runs.iter().filter(|r| r.error.is_some()).collect();
    if !failed.is_empty() {
        let _ = writeln!(t, "\nFAILED RUNS ({}):", failed.len());
        for f in failed {
            let _ = writeln!(
                t,
                "  rep {} {} on {}: {}",
                f.rep + 1,
                f.scenario,
                f.server,
                f.error.as_deref().unwrap_or("")
            );
        }
    }
    let lost: u64 = rep
        .runs
        .iter()
        .filter_map(|r| r.result.as_ref())
        .map(|r| r.lost)
        .sum();
    if lost > 0 {
        let _ = writeln!(
            t,
            "\nWARNING: {lost} messages were never delivered (see JSON)"
        );
    }
    t
}

fn row_cells(r: &Row) -> [String; 9] {
    [
        r.scenario.clone(),
        r.metric.clone(),
        fmt_summary(&r.metric, r.a),
        fmt_summary(&r.metric, r.b),
        fmt_opt(r.ratio, 2),
        match (r.ratio_min, r.ratio_max) {
            (Some(lo), Some(hi)) => {
                format!("[{lo:.2}-{hi:.2}]{}", if r.noisy { "!" } else { "" })
            }
            _ => String::new(),
        },
        match r.better {
            Better::Higher => "higher".to_string(),
            Better::Lower => "lower".to_string(),
        },
        r.goal.map(|g| g.label()).unwrap_or_default(),
        match r.met {
            Some(true) => "yes".to_string(),
            Some(false) => "NO".to_string(),
            None if r.goal.is_some() => "n/a".to_string(),
            None => String::new(),
        },
    ]
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(value).context("encoding JSON")?;
    std::fs::write(path, s + "\n").with_context(|| format!("writing {}", path.display()))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

pub const RUN_CSV_HEADER: &str = "rep,server,scenario,size,elapsed_s,published,delivered,lost,msgs,msgs_per_s,mb_per_s,harness_cpu_s,harness_cores,server_cpu_s,server_cores,server_cpu_ns_per_msg,server_rss_kb,server_peak_rss_kb,idle_rss_kb,p50_us,p90_us,p99_us,p999_us,max_us,error";

/// One CSV line per run; `result` None is a failed run with `error`.
pub fn run_csv_line(
    rep: usize,
    server: &str,
    scenario: &str,
    idle_rss_kb: Option<u64>,
    result: Option<&RunResult>,
    error: Option<&str>,
) -> String {
    let mut f: Vec<String> = vec![rep.to_string(), csv_field(server), csv_field(scenario)];
    match result {
        Some(r) => {
            let s = r.server;
            let l = r.latency;
            f.extend([
                r.size.to_string(),
                format!("{:.6}", r.elapsed_s),
                r.published.to_string(),
                r.delivered.to_string(),
                r.lost.to_string(),
                r.msgs.to_string(),
                format!("{:.1}", r.msgs_per_s),
                format!("{:.3}", r.mb_per_s),
                format!("{:.4}", r.harness_cpu_s),
                format!("{:.4}", r.harness_cores),
                opt(s.map(|s| format!("{:.4}", s.cpu_s))),
                opt(s.map(|s| format!("{:.4}", s.cores))),
                opt(s.map(|s| format!("{:.1}", s.cpu_ns_per_msg))),
                opt(s.map(|s| s.rss_kb)),
                opt(s.map(|s| s.peak_rss_kb)),
                opt(idle_rss_kb),
                opt(l.map(|l| format!("{:.2}", l.p50_us))),
                opt(l.map(|l| format!("{:.2}", l.p90_us))),
                opt(l.map(|l| format!("{:.2}", l.p99_us))),
                opt(l.map(|l| format!("{:.2}", l.p999_us))),
                opt(l.map(|l| format!("{:.2}", l.max_us))),
            ]);
        }
        None => {
            f.extend(std::iter::repeat_n(String::new(), 15));
            f.push(opt(idle_rss_kb));
            f.extend(std::iter::repeat_n(String::new(), 5));
        }
    }
    f.push(csv_field(error.unwrap_or("")));
    f.join(",")
}

pub fn write_single_csv(path: &Path, server: &str, r: &RunResult) -> Result<()> {
    let body = format!(
        "{RUN_CSV_HEADER}\n{}\n",
        run_csv_line(0, server, &r.scenario, None, Some(r), None)
    );
    std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))
}

/// `runs.csv` -> `runs-summary.csv` beside it.
pub fn summary_path(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bench".into());
    path.with_file_name(format!("{stem}-summary.csv"))
}

/// Writes per-run rows to `path` and the summary rows beside it; returns the latter.
pub fn write_compare_csv(path: &Path, rep: &CompareReport) -> Result<PathBuf> {
    let mut body = String::from(RUN_CSV_HEADER);
    body.push('\n');
    for r in &rep.runs {
        body.push_str(&run_csv_line(
            r.rep,
            &r.server,
            &r.scenario,
            r.idle_rss_kb,
            r.result.as_ref(),
            r.error.as_deref(),
        ));
        body.push('\n');
    }
    std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))?;
    let mut s = String::from(
        "scenario,metric,better,a_median,a_min,a_max,b_median,b_min,b_max,ratio,ratio_min,ratio_max,noisy,goal,met\n",
    );
    for r in &rep.rows {
        let f: Vec<String> = vec![
            csv_field(&r.scenario),
            csv_field(&r.metric),
            match r.better {
                Better::Higher => "higher".into(),
                Better::Lower => "lower".into(),
            },
            opt(r.a.map(|s| s.median)),
            opt(r.a.map(|s| s.min)),
            opt(r.a.map(|s| s.max)),
            opt(r.b.map(|s| s.median)),
            opt(r.b.map(|s| s.min)),
            opt(r.b.map(|s| s.max)),
            opt(r.ratio.map(|v| format!("{v:.4}"))),
            opt(r.ratio_min.map(|v| format!("{v:.4}"))),
            opt(r.ratio_max.map(|v| format!("{v:.4}"))),
            r.noisy.to_string(),
            r.goal.map(|g| g.label()).unwrap_or_default(),
            opt(r.met),
        ];
        s.push_str(&f.join(","));
        s.push('\n');
    }
    let sp = summary_path(path);
    std::fs::write(&sp, s).with_context(|| format!("writing {}", sp.display()))?;
    Ok(sp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
    }

    #[test]
    fn csv_lines_have_header_width() {
        let cols = RUN_CSV_HEADER.split(',').count();
        let failed = run_csv_line(1, "a", "s", Some(5), None, Some("it broke"));
        assert_eq!(failed.split(',').count(), cols);
        assert!(failed.ends_with("it broke"));
    }

    #[test]
    fn summary_file_name() {
        assert_eq!(
            summary_path(Path::new("/tmp/out.csv")),
            PathBuf::from("/tmp/out-summary.csv")
        );
    }
}
