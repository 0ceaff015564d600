use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use serde::Serialize;

use strait_bench::cli::{Cli, Cmd, Common, CompareArgs};
use strait_bench::compare::{self, CompareOptions};
use strait_bench::conn::Endpoint;
use strait_bench::run::{self, Progress, RunResult, Target};
use strait_bench::scenario::{self, Limit, Scenario, ALL_COUNT, M_IDLE_RSS, M_P50, M_RATE, NAMED};
use strait_bench::{plot, report};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strait-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match &cli.cmd {
        Cmd::Compare(args) => run_compare(args),
        Cmd::Conns(args) => {
            if args.servers.len() != 2 {
                anyhow::bail!("conns needs exactly two --server");
            }
            let opts = strait_bench::conns::ConnsOptions {
                servers: args.servers.clone(),
                count: args.count,
                threads: args.threads.max(1),
                reps: args.reps.max(1),
                modes: args.modes.clone(),
                settle: args.settle,
            };
            let runs = strait_bench::conns::run(&opts)?;
            println!("{}", strait_bench::conns::table(&opts, &runs));
            if let Some(p) = &args.json {
                report::write_json(p, &runs)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Subs(args) => {
            let opts = strait_bench::subs::SubsOptions {
                servers: args.servers.clone(),
                counts: args.counts.clone(),
                kinds: args.kinds.clone(),
                connections: args.connections.iter().map(|&c| c.max(1)).collect(),
                publish_for: args.publish_for,
                settle: args.settle,
            };
            let runs = strait_bench::subs::run(&opts)?;
            println!("{}", strait_bench::subs::table(&opts, &runs));
            if let Some(p) = &args.json {
                report::write_json(p, &runs)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::JsRestart(args) => {
            let opts = strait_bench::js::RestartOptions {
                servers: args.servers.clone(),
                messages: args.messages,
                size: args.size,
                publishers: args.publishers,
                window: args.window,
            };
            let runs = strait_bench::js::run_restart(&opts)?;
            println!("{}", strait_bench::js::restart_table(&runs));
            if let Some(p) = &args.json {
                report::write_json(p, &runs)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::JsStreams(args) => {
            let opts = strait_bench::js::StreamsOptions {
                servers: args.servers.clone(),
                streams: args.streams,
                messages: args.messages,
                size: args.size,
                settle: args.settle,
            };
            let runs = strait_bench::js::run_streams(&opts)?;
            println!("{}", strait_bench::js::streams_table(&runs));
            if let Some(p) = &args.json {
                report::write_json(p, &runs)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::JsBackup(args) => {
            let opts = strait_bench::backup::BackupOptions {
                servers: args.servers.clone(),
                messages: args.messages,
                size: args.size,
            };
            let runs = strait_bench::backup::run(&opts)?;
            println!("{}", strait_bench::backup::table(&runs));
            if let Some(p) = &args.json {
                report::write_json(p, &runs)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::JsMirror(args) => {
            let opts = strait_bench::mirror::MirrorOptions {
                servers: args.servers.clone(),
                messages: args.messages,
                size: args.size,
            };
            let runs = strait_bench::mirror::run(&opts)?;
            println!("{}", strait_bench::mirror::table(&runs));
            if let Some(p) = &args.json {
                report::write_json(p, &runs)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::JsKv(args) => {
            let opts = strait_bench::kv::KvOptions {
                servers: args.servers.clone(),
                keys: args.keys,
                size: args.size,
                window: args.window,
            };
            let runs = strait_bench::kv::run(&opts)?;
            println!("{}", strait_bench::kv::table(&runs));
            if let Some(p) = &args.json {
                report::write_json(p, &runs)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::JsBatch(args) => {
            let opts = strait_bench::batch::BatchOptions {
                servers: args.servers.clone(),
                messages: args.messages,
                batch: args.batch,
                size: args.size,
            };
            let runs = strait_bench::batch::run(&opts)?;
            println!("{}", strait_bench::batch::table(&runs));
            if let Some(p) = &args.json {
                report::write_json(p, &runs)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::JsCounter(args) => {
            if args.subjects.contains(&0) {
                anyhow::bail!("--subjects: every count must be at least 1");
            }
            let opts = strait_bench::counter::CounterOptions {
                servers: args.servers.clone(),
                increments: args.increments,
                subjects: args.subjects.clone(),
                window: args.window,
            };
            let runs = strait_bench::counter::run(&opts)?;
            println!("{}", strait_bench::counter::table(&runs));
            if let Some(p) = &args.json {
                report::write_json(p, &runs)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::JsConsume(args) => {
            let opts = strait_bench::consume::ConsumeOptions {
                servers: args.servers.clone(),
                messages: args.messages,
                subjects: args.subjects,
                size: args.size,
                storage: args.storage.clone(),
                skip_push: args.skip_push,
                idle_consumers: args.idle_consumers,
                idle_for: args.idle_for,
                settle: args.settle,
            };
            let runs = strait_bench::consume::run(&opts)?;
            println!("{}", strait_bench::consume::table(&runs));
            if let Some(p) = &args.json {
                report::write_json(p, &runs)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Scenarios => {
            list_scenarios();
            Ok(ExitCode::SUCCESS)
        }
        cmd => {
            let (common, sc) = cmd
                .scenario()
                .context("internal: subcommand without a scenario")?;
            run_single(common, &sc)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn server_pid(common: &Common) -> Result<Option<u32>> {
    if let Some(p) = common.server_pid {
        return Ok(Some(p));
    }
    match &common.pidfile {
        Some(path) => {
            let s = std::fs::read_to_string(path)
                .with_context(|| format!("reading pid file {}", path.display()))?;
            let pid = s
                .trim()
                .parse()
                .with_context(|| format!("pid file {} holds {s:?}", path.display()))?;
            Ok(Some(pid))
        }
        None => Ok(None),
    }
}

#[derive(Serialize)]
struct SingleJson<'a> {
    url: &'a str,
    result: &'a RunResult,
}

fn run_single(common: &Common, sc: &Scenario) -> Result<()> {
    let target = Target {
        endpoint: Endpoint::parse(&common.url)?,
        pid: server_pid(common)?,
    };
    let progress = Progress::new(format!("[{}]", sc.name));
    let r = run::run(&target, sc, &progress)?;
    print!("{}", report::single_table(&common.url, &r));
    if let Some(p) = &common.out.json {
        report::write_json(
            p,
            &SingleJson {
                url: &common.url,
                result: &r,
            },
        )?;
    }
    if let Some(p) = &common.out.csv {
        report::write_single_csv(p, &common.url, &r)?;
    }
    Ok(())
}

fn run_compare(args: &CompareArgs) -> Result<ExitCode> {
    let limit = match args.count {
        Some(c) => Limit::Count(c),
        None => Limit::Duration(args.duration),
    };
    let opts = CompareOptions {
        servers: args.servers.clone(),
        reps: args.reps,
        limit,
        scenarios: scenario::select(&args.scenarios, limit)?,
        settle: args.settle,
    };
    let rep = compare::compare(&opts)?;
    println!("{}", report::compare_table(&rep));
    if let Some(p) = &args.out.json {
        report::write_json(p, &rep)?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &args.out.csv {
        let sp = report::write_compare_csv(p, &rep)?;
        eprintln!("wrote {} and {}", p.display(), sp.display());
    }
    if let Some(p) = &args.plot {
        plot::write_svg(Path::new(p), &rep)?;
        eprintln!("wrote {}", p.display());
    }
    let failed = rep.runs.iter().filter(|r| r.error.is_some()).count();
    Ok(if failed > 0 {
        eprintln!("strait-bench: {failed} run(s) failed (listed above)");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn list_scenarios() {
    println!("named scenarios (`all` = the first {ALL_COUNT}, the goal set):");
    let limit = Limit::Duration(std::time::Duration::from_secs(3));
    for (i, n) in NAMED.iter().enumerate() {
        let sc = n.build(limit);
        let goals: Vec<String> = [M_RATE, M_P50, scenario::M_P99]
            .iter()
            .filter_map(|m| scenario::goal_for(&sc.name, m).map(|g| format!("{m} {}", g.label())))
            .collect();
        let line = format!(
            "  {}{:<14} {:<56} {}",
            if i < ALL_COUNT { "*" } else { " " },
            sc.name,
            sc.describe(),
            goals.join(", ")
        );
        println!("{}", line.trim_end());
    }
    if let Some(g) = scenario::goal_for("server", M_IDLE_RSS) {
        println!("  (every compare)  idle RSS after start: {}", g.label());
    }
}
