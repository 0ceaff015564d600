//! Command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::scenario::{JsAck, Kind, Limit, Scenario};
use crate::server::ServerSpec;

#[derive(Debug, Parser)]
#[command(
    name = "strait-bench",
    version,
    about = "Load generator and side-by-side benchmark for NATS servers (strait, nats-server, any NATS URL)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Publishers only, no subscribers (the server reads and discards)
    Pub(PubArgs),
    /// Publishers to subscribers on one subject: 1:1, fan-out, or a queue group (--queue)
    Pubsub(PubSubArgs),
    /// Request/reply with one request in flight; reports latency percentiles
    Reqrep(ReqRepArgs),
    /// JetStream publish into a fresh file stream, 1 ack awaited (sync) or a window of them
    JsPub(JsPubArgs),
    /// Reading one stream through consumers on two servers (pull, push, ordered, a 1 %
    /// filter) and the CPU of idle consumers, ratios A/B
    JsConsume(JsConsumeArgs),
    /// A key-value bucket on two servers: puts, and gets by key through direct get
    /// (one in flight, and pipelined), ratios A/B
    JsKv(JsKvArgs),
    /// Counter increments (`Nats-Incr`) on one subject and on many, on two
    /// servers, ratios A/B
    JsCounter(JsCounterArgs),
    /// Atomic batches against one publish at a time, on two servers, ratios A/B
    JsBatch(JsBatchArgs),
    /// Snapshot and restore of one big stream on two servers, as natscli's stream
    /// backup and restore drive them, ratios A/B
    JsBackup(JsBackupArgs),
    /// A mirror of one big stream catching up on two servers, ratios A/B
    JsMirror(JsMirrorArgs),
    /// Restart time of two servers holding one big stream: after SIGKILL, then after a
    /// clean stop, ratios A/B
    JsRestart(JsRestartArgs),
    /// Memory of two servers holding many small streams, ratios A/B
    JsStreams(JsStreamsArgs),
    /// Start two servers and run named scenarios on both, interleaved; print ratios A/B
    Compare(CompareArgs),
    /// Connection storms on two servers: connects/s and RSS with N idle clients
    /// (plain, TLS, NKEY), ratios A/B
    Conns(ConnsArgs),
    /// Subscription scale: time to register N subscriptions, RSS, publish rates
    Subs(SubsArgs),
    /// List the named scenarios and their goals
    Scenarios,
}

#[derive(Debug, Args)]
pub struct Common {
    /// Server URL: nats://[user:pass@|token@]host[:port]
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub url: String,
    /// Payload size: bytes, or with a suffix k/KiB, m/MiB (powers of 1024)
    #[arg(long, default_value = "16", value_parser = parse_size)]
    pub size: usize,
    /// How long to publish: 5s, 500ms, 1m, or plain seconds
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop after this many messages per publisher (requests for reqrep) instead of --duration
    #[arg(long, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub count: Option<u64>,
    /// Flow-control window: messages publishers may run ahead of subscribers
    #[arg(long, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub window: Option<u64>,
    /// Pid of the server, to report its CPU per message and peak RSS
    #[arg(long, conflicts_with = "pidfile")]
    pub server_pid: Option<u32>,
    /// Pid file of the server (nats-server -P), instead of --server-pid
    #[arg(long)]
    pub pidfile: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Write results as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write results as CSV to this file (compare also writes <stem>-summary.csv)
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

fn count_parser() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(1..=1024)
}

#[derive(Debug, Args)]
pub struct PubArgs {
    #[command(flatten)]
    pub common: Common,
    /// Number of publishing connections
    #[arg(long, default_value_t = 1, value_parser = count_parser())]
    pub publishers: usize,
}

#[derive(Debug, Args)]
pub struct PubSubArgs {
    #[command(flatten)]
    pub common: Common,
    /// Number of publishing connections
    #[arg(long, default_value_t = 1, value_parser = count_parser())]
    pub publishers: usize,
    /// Number of subscribing connections (each gets every message unless --queue)
    #[arg(long, default_value_t = 1, value_parser = count_parser())]
    pub subs: usize,
    /// Subscribers form one queue group: each message goes to one of them
    #[arg(long)]
    pub queue: bool,
}

#[derive(Debug, Args)]
pub struct ReqRepArgs {
    #[command(flatten)]
    pub common: Common,
    /// Responders (a queue group when more than one)
    #[arg(long, default_value_t = 1, value_parser = count_parser())]
    pub responders: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckMode {
    Sync,
    Async,
}

#[derive(Debug, Args)]
pub struct JsPubArgs {
    #[command(flatten)]
    pub common: Common,
    /// Number of publishing connections, each with its own window
    #[arg(long, default_value_t = 1, value_parser = count_parser())]
    pub publishers: usize,
    #[arg(long, value_enum, default_value = "sync")]
    pub ack: AckMode,
    /// Publishes outstanding with --ack async
    #[arg(long, default_value_t = 256)]
    pub ack_window: u32,
}

#[derive(Debug, Args)]
pub struct JsKvArgs {
    /// NAME=COMMAND, exactly twice (A, then the reference B), each with JetStream on
    #[arg(long = "server", required = true, num_args = 1)]
    pub servers: Vec<ServerSpec>,
    /// Keys put, then read back
    #[arg(long, default_value_t = 100_000, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub keys: u64,
    /// Value size
    #[arg(long, default_value = "128", value_parser = parse_size)]
    pub size: usize,
    /// Requests in flight for puts and pipelined gets
    #[arg(long, default_value_t = 256, value_parser = RangedU64ValueParser::<usize>::new().range(1..=65536))]
    pub window: usize,
    /// Write the runs as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct JsBatchArgs {
    /// NAME=COMMAND, exactly twice (A, then the reference B), each with JetStream on
    #[arg(long = "server", required = true, num_args = 1)]
    pub servers: Vec<ServerSpec>,
    /// Messages, published one at a time and then in batches
    #[arg(long, default_value_t = 10_000, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub messages: u64,
    /// Messages per atomic batch (nats-server allows 1 000)
    #[arg(long, default_value_t = 100, value_parser = RangedU64ValueParser::<u64>::new().range(1..=1000))]
    pub batch: u64,
    /// Message size
    #[arg(long, default_value = "128", value_parser = parse_size)]
    pub size: usize,
    /// Write the runs as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct JsCounterArgs {
    /// NAME=COMMAND, exactly twice (A, then the reference B), each with JetStream on
    #[arg(long = "server", required = true, num_args = 1)]
    pub servers: Vec<ServerSpec>,
    /// Increments per run
    #[arg(long, default_value_t = 100_000, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub increments: u64,
    /// Subject counts, one run each, the increments spread over them
    #[arg(long, value_delimiter = ',', default_value = "1,10000")]
    pub subjects: Vec<u64>,
    /// Increments in flight
    #[arg(long, default_value_t = 256, value_parser = RangedU64ValueParser::<usize>::new().range(1..=65536))]
    pub window: usize,
    /// Write the runs as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct JsBackupArgs {
    /// NAME=COMMAND, exactly twice (A, then the reference B), each with JetStream on
    #[arg(long = "server", required = true, num_args = 1)]
    pub servers: Vec<ServerSpec>,
    /// Messages stored before the snapshot (the default with 1 KiB payloads: 1 GiB)
    #[arg(long, default_value_t = 1 << 20, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub messages: u64,
    /// Payload size of each message
    #[arg(long, default_value = "1k", value_parser = parse_size)]
    pub size: usize,
    /// Write the runs as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct JsMirrorArgs {
    /// NAME=COMMAND, exactly twice (A, then the reference B), each with JetStream on
    #[arg(long = "server", required = true, num_args = 1)]
    pub servers: Vec<ServerSpec>,
    /// Messages in the origin before the mirror is made
    #[arg(long, default_value_t = 1_000_000, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub messages: u64,
    /// Payload size of each message
    #[arg(long, default_value = "128", value_parser = parse_size)]
    pub size: usize,
    /// Write the runs as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct JsConsumeArgs {
    /// NAME=COMMAND, exactly twice (A, then the reference B), each with JetStream on
    #[arg(long = "server", required = true, num_args = 1)]
    pub servers: Vec<ServerSpec>,
    /// Messages in the stream, read in full by every consumer
    #[arg(long, default_value_t = 1_000_000, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub messages: u64,
    /// Subjects the messages are spread over
    #[arg(long, default_value_t = 100_000, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub subjects: u64,
    /// Payload size
    #[arg(long, default_value = "128", value_parser = parse_size)]
    pub size: usize,
    /// Storage of the stream read: file or memory (the idle consumers' stream is
    /// always a file stream)
    #[arg(long, default_value = "file", value_parser = ["file", "memory"])]
    pub storage: String,
    /// Leave out the push case without flow control (a memory stream outruns the
    /// reader, which the server then drops as a slow consumer)
    #[arg(long)]
    pub skip_push: bool,
    /// Durable consumers created for the idle measurement
    #[arg(long, default_value_t = 10_000)]
    pub idle_consumers: usize,
    /// How long idle CPU is measured (without, then with those consumers)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub idle_for: Duration,
    /// Wait before each idle measurement
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Write the runs as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SubsArgs {
    /// NAME=COMMAND, at least once; ratios divide by the last one (the reference)
    #[arg(long = "server", required = true, num_args = 1)]
    pub servers: Vec<ServerSpec>,
    /// Comma-separated subscription counts
    #[arg(long, value_delimiter = ',', default_value = "100000,500000")]
    pub counts: Vec<usize>,
    /// Comma-separated: literal, star, tail
    #[arg(long, value_delimiter = ',', default_value = "literal,star,tail")]
    pub kinds: Vec<crate::subs::Kind>,
    /// Comma-separated numbers of connections the subscriptions are spread over
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    pub connections: Vec<usize>,
    /// How long each publish rate is measured
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub publish_for: Duration,
    /// Wait before reading RSS
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub settle: Duration,
    /// Write the runs as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ConnsArgs {
    /// NAME=COMMAND, exactly twice: A (under test) then B (reference)
    #[arg(long = "server", required = true, num_args = 1)]
    pub servers: Vec<ServerSpec>,
    /// Clients per run
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Threads opening them
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Comma-separated: plain, tls, nkey
    #[arg(long, value_delimiter = ',', default_value = "plain,tls,nkey")]
    pub modes: Vec<crate::conns::Mode>,
    /// Wait before reading RSS (idle, and with the clients connected)
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub settle: Duration,
    /// Write the runs as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct JsRestartArgs {
    /// NAME=COMMAND, exactly twice (A, then the reference B), each with JetStream on
    /// and a relative store directory, e.g. `strait=target/release/strait -js -sd js`
    #[arg(long = "server", required = true, num_args = 1)]
    pub servers: Vec<ServerSpec>,
    /// Messages in the stream
    #[arg(long, default_value_t = 10_000_000, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub messages: u64,
    /// Payload size
    #[arg(long, default_value = "128", value_parser = parse_size)]
    pub size: usize,
    /// Connections filling the stream
    #[arg(long, default_value_t = 4, value_parser = count_parser())]
    pub publishers: usize,
    /// PubAcks in flight per filling connection
    #[arg(long, default_value_t = 1024, value_parser = RangedU64ValueParser::<usize>::new().range(1..=65536))]
    pub window: usize,
    /// Write the runs as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct JsStreamsArgs {
    /// NAME=COMMAND, exactly twice (A, then the reference B), each with JetStream on
    #[arg(long = "server", required = true, num_args = 1)]
    pub servers: Vec<ServerSpec>,
    /// Streams to create
    #[arg(long, default_value_t = 1000, value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub streams: usize,
    /// Messages published into each stream
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    /// Payload size
    #[arg(long, default_value = "128", value_parser = parse_size)]
    pub size: usize,
    /// Wait before reading RSS (idle, and with the streams full)
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Write the runs as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// NAME=COMMAND, exactly twice: A (under test) then B (reference). The command is
    /// split on whitespace; -a 127.0.0.1 -p PORT -P PIDFILE are appended.
    #[arg(long = "server", required = true, num_args = 1)]
    pub servers: Vec<ServerSpec>,
    /// Repetitions of every (scenario, server) run
    #[arg(long, default_value_t = 3, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub reps: usize,
    /// Length of each run
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Messages per publisher (requests for reqrep) per run, instead of --duration
    #[arg(long, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub count: Option<u64>,
    /// `all` (the goal set) or a comma-separated list of named scenarios (see `scenarios`)
    #[arg(long, default_value = "all")]
    pub scenarios: String,
    /// Wait this long after a server accepts connections before reading its idle RSS
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub settle: Duration,
    #[command(flatten)]
    pub out: OutputArgs,
    /// Write an SVG chart of the ratios A/B to this file
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

impl Common {
    pub fn limit(&self) -> Limit {
        match self.count {
            Some(c) => Limit::Count(c),
            None => Limit::Duration(self.duration),
        }
    }

    pub fn scenario(
        &self,
        name: &str,
        kind: Kind,
        publishers: usize,
        subs: usize,
        queue: bool,
    ) -> Scenario {
        Scenario {
            name: name.to_string(),
            kind,
            size: self.size,
            publishers,
            subs,
            queue,
            limit: self.limit(),
            window: self.window,
        }
    }
}

impl Cmd {
    /// The scenario a single-run subcommand describes; None for the others.
    pub fn scenario(&self) -> Option<(&Common, Scenario)> {
        Some(match self {
            Cmd::Pub(a) => (
                &a.common,
                a.common.scenario("pub", Kind::Pub, a.publishers, 0, false),
            ),
            Cmd::Pubsub(a) => {
                let name = if a.queue { "queue" } else { "pubsub" };
                (
                    &a.common,
                    a.common
                        .scenario(name, Kind::PubSub, a.publishers, a.subs, a.queue),
                )
            }
            Cmd::Reqrep(a) => (
                &a.common,
                a.common
                    .scenario("reqrep", Kind::ReqRep, 1, a.responders, a.responders > 1),
            ),
            Cmd::JsPub(a) => {
                let ack = match a.ack {
                    AckMode::Sync => JsAck::Sync,
                    AckMode::Async => JsAck::Async {
                        window: a.ack_window,
                    },
                };
                (
                    &a.common,
                    a.common
                        .scenario("js-pub", Kind::JsPub { ack }, a.publishers, 0, false),
                )
            }
            Cmd::Compare(_)
            | Cmd::Conns(_)
            | Cmd::Subs(_)
            | Cmd::JsRestart(_)
            | Cmd::JsStreams(_)
            | Cmd::JsConsume(_)
            | Cmd::JsKv(_)
            | Cmd::JsCounter(_)
            | Cmd::JsBatch(_)
            | Cmd::JsBackup(_)
            | Cmd::JsMirror(_)
            | Cmd::Scenarios => return None,
        })
    }
}

/// `5s`, `500ms`, `250us`, `2m`, `1.5s`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (try 5s, 500ms, 1m)"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        u => return Err(format!("unknown duration unit {u:?} in {s:?}")),
    };
    if !(secs > 0.0 && secs <= 7.0 * 24.0 * 3600.0) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `16`, `128B`, `1k`, `1KiB`, `1KB`, `1m`, `1MiB` (k and m are powers of 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: usize = num
        .parse()
        .map_err(|_| format!("bad size {s:?} (try 16, 1k, 1KiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        u => return Err(format!("unknown size unit {u:?} in {s:?}")),
    };
    let bytes = v
        .checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))?;
    if bytes > 64 * 1024 * 1024 {
        return Err(format!("size {s:?} is above 64 MiB"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("strait-bench").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16"), Ok(16));
        assert_eq!(parse_size("128B"), Ok(128));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("2MiB"), Ok(2 * 1024 * 1024));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("1g").is_err());
        assert!(parse_size("65MiB").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn example_pub() {
        let cli = parse(&[
            "pub",
            "--url",
            "nats://127.0.0.1:4222",
            "--size",
            "16",
            "--duration",
            "5s",
            "--publishers",
            "2",
        ])
        .expect("parse");
        let (common, sc) = cli.cmd.scenario().expect("scenario");
        assert_eq!(common.url, "nats://127.0.0.1:4222");
        assert_eq!(
            (sc.kind, sc.size, sc.publishers, sc.subs),
            (Kind::Pub, 16, 2, 0)
        );
        assert_eq!(sc.limit, Limit::Duration(Duration::from_secs(5)));
    }

    #[test]
    fn example_pubsub_fanout_and_queue() {
        let cli = parse(&[
            "pubsub",
            "--url",
            "nats://127.0.0.1:1",
            "--size",
            "16",
            "--subs",
            "4",
        ])
        .expect("parse");
        let (_, sc) = cli.cmd.scenario().expect("scenario");
        assert_eq!((sc.kind, sc.subs, sc.queue), (Kind::PubSub, 4, false));
        let cli = parse(&["pubsub", "--subs", "4", "--queue", "--count", "1000"]).expect("parse");
        let (_, sc) = cli.cmd.scenario().expect("scenario");
        assert!(sc.queue);
        assert_eq!(sc.limit, Limit::Count(1000));
        assert!(parse(&["pubsub", "--subs", "0"]).is_err());
    }

    #[test]
    fn example_reqrep() {
        let cli = parse(&[
            "reqrep",
            "--url",
            "nats://127.0.0.1:1",
            "--size",
            "16",
            "--duration",
            "5s",
        ])
        .expect("parse");
        let (_, sc) = cli.cmd.scenario().expect("scenario");
        assert_eq!((sc.kind, sc.subs), (Kind::ReqRep, 1));
    }

    #[test]
    fn example_compare() {
        let cli = parse(&[
            "compare",
            "--server",
            "strait=target/release/strait",
            "--server",
            "nats=/path/nats-server",
            "--reps",
            "3",
            "--duration",
            "3s",
            "--scenarios",
            "all",
        ])
        .expect("parse");
        let Cmd::Compare(c) = cli.cmd else {
            panic!("not compare")
        };
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.servers[0].name, "strait");
        assert_eq!(c.servers[1].command, ["/path/nats-server"]);
        assert_eq!((c.reps, c.duration), (3, Duration::from_secs(3)));
        assert!(parse(&["compare", "--server", "bad"]).is_err());
        assert!(parse(&["compare"]).is_err());
        assert!(parse(&["compare", "--server", "a=x", "--reps", "0"]).is_err());
    }

    #[test]
    fn pid_options_conflict() {
        assert!(parse(&["pub", "--server-pid", "1", "--pidfile", "/x"]).is_err());
    }

    #[test]
    fn jetstream_parses() {
        let cli = parse(&["js-pub", "--ack", "async", "--ack-window", "64"]).expect("parse");
        let (_, sc) = cli.cmd.scenario().expect("scenario");
        assert_eq!(
            sc.kind,
            Kind::JsPub {
                ack: JsAck::Async { window: 64 }
            }
        );
    }
}
