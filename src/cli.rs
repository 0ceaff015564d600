//! The command line, spelled as nats-server spells it.
//!
//! nats-server parses flags with Go's `flag` package: `-port` and `--port` are the
//! same flag, several flags have multi-letter short forms (`-sd`, `-js`, `-DV`), and
//! values may follow `=`. clap does not speak that dialect, so arguments are first
//! rewritten into clap's (`normalize`), then parsed.

use clap::Parser;

pub const HELP: &str = "\
Usage: strait [options]

Server Options:
    -a, --addr, --net <host>         Bind to host address (default: 0.0.0.0)
    -p, --port <port>                Use port for clients (default: 4222, -1 for random)
    -n, --name
        --server_name <server_name>  Server name (default: auto)
    -P, --pid <file>                 File to store PID
    -m, --http_port <port>           Use port for http monitoring
    -ms,--https_port <port>          Use port for https monitoring (not supported yet)
    -c, --config <file>              Configuration file
    -t                               Test configuration and exit
    -sl,--signal <signal>[=<pid>]    Send signal to strait process (ldm, stop, quit, term, reopen, reload)
        --client_advertise <string>  Client URL to advertise to other servers
        --ports_file_dir <dir>       Creates a ports file in the specified directory (<executable_name>_<pid>.ports)

Logging Options:
    -l, --log <file>                 File to redirect log output
    -T, --logtime                    Timestamp log entries (default: true)
    -s, --syslog                     Log to syslog
    -r, --remote_syslog <addr>       Syslog server addr (udp://localhost:514)
    -D, --debug                      Enable debugging output
    -V, --trace                      Trace the raw protocol
    -VV                              Verbose trace (traces system account as well)
    -DV                              Debug and trace
    -DVV                             Debug and verbose trace (traces system account as well)
        --log_size_limit <limit>     Logfile size limit (default: no limit; e.g. 10MB)
        --max_traced_msg_len <len>   Maximum printable length for traced messages (default: unlimited)

JetStream Options:
    -js, --jetstream                 Enable JetStream functionality (streams; consumers not yet)
    -sd, --store_dir <dir>           Set the storage directory

Authorization Options:
        --user <user>                User required for connections
        --pass <password>            Password required for connections
        --auth <token>               Authorization token required for connections

TLS Options:
        --tls                        Enable TLS, do not verify clients (default: false)
        --tlscert <file>             Server certificate file
        --tlskey <file>              Private key for server certificate
        --tlsverify                  Enable TLS, verify client certificates
        --tlscacert <file>           Client certificate CA for verification
        --help_tls                   TLS help

Cluster Options:
        --routes, --cluster, --cluster_name, --no_advertise,
        --cluster_advertise, --connect_retries, --cluster_listen  (not supported yet)

Profiling Options:
        --profile <port>             Profiling HTTP port

strait Options:
        --shards <n>                 Number of shards, one per core (default: number of cores)
        --spin_before_park <dur>     Busy-poll this long before an idle shard sleeps (e.g. 50us)

Common Options:
    -h, --help                       Show this message
    -v, --version                    Show version
";

/// Parsed command line. Options of features not built yet are accepted so the
/// server can answer them with a clear error instead of clap's.
#[derive(Debug, Clone, Parser, Default)]
#[command(
    name = "strait",
    disable_help_flag = true,
    disable_version_flag = true,
    allow_negative_numbers = true
)]
pub struct Cli {
    #[arg(short = 'a', long = "addr", visible_alias = "net", alias = "host")]
    pub addr: Option<String>,
    #[arg(short = 'p', long = "port", allow_hyphen_values = true)]
    pub port: Option<i32>,
    #[arg(short = 'n', long = "name", alias = "server_name")]
    pub name: Option<String>,
    #[arg(short = 'P', long = "pid")]
    pub pid: Option<String>,
    #[arg(short = 'm', long = "http_port", allow_hyphen_values = true)]
    pub http_port: Option<i32>,
    #[arg(long = "https_port", allow_hyphen_values = true)]
    pub https_port: Option<i32>,
    #[arg(short = 'c', long = "config")]
    pub config: Option<String>,
    #[arg(short = 't')]
    pub test_config: bool,
    #[arg(long = "signal")]
    pub signal: Option<String>,
    #[arg(long = "client_advertise")]
    pub client_advertise: Option<String>,
    #[arg(long = "ports_file_dir")]
    pub ports_file_dir: Option<String>,

    #[arg(short = 'l', long = "log")]
    pub log: Option<String>,
    #[arg(short = 'T', long = "logtime", num_args = 0..=1, default_missing_value = "true")]
    pub logtime: Option<bool>,
    #[arg(short = 's', long = "syslog")]
    pub syslog: bool,
    #[arg(short = 'r', long = "remote_syslog")]
    pub remote_syslog: Option<String>,
    #[arg(short = 'D', long = "debug")]
    pub debug: bool,
    #[arg(short = 'V', long = "trace")]
    pub trace: bool,
    #[arg(long = "VV")]
    pub verbose_trace: bool,
    #[arg(long = "log_size_limit")]
    pub log_size_limit: Option<String>,
    #[arg(long = "max_traced_msg_len")]
    pub max_traced_msg_len: Option<usize>,

    #[arg(long = "jetstream")]
    pub jetstream: bool,
    #[arg(long = "store_dir")]
    pub store_dir: Option<String>,

    #[arg(long = "user")]
    pub user: Option<String>,
    #[arg(long = "pass")]
    pub pass: Option<String>,
    #[arg(long = "auth")]
    pub auth: Option<String>,

    #[arg(long = "tls", num_args = 0..=1, default_missing_value = "true")]
    pub tls: Option<bool>,
    #[arg(long = "tlscert")]
    pub tlscert: Option<String>,
    #[arg(long = "tlskey")]
    pub tlskey: Option<String>,
    #[arg(long = "tlsverify", num_args = 0..=1, default_missing_value = "true")]
    pub tlsverify: Option<bool>,
    #[arg(long = "tlscacert")]
    pub tlscacert: Option<String>,

    #[arg(long = "routes")]
    pub routes: Option<String>,
    #[arg(long = "cluster")]
    pub cluster: Option<String>,
    #[arg(long = "cluster_name")]
    pub cluster_name: Option<String>,
    #[arg(long = "no_advertise")]
    pub no_advertise: Option<String>,
    #[arg(long = "cluster_advertise")]
    pub cluster_advertise: Option<String>,
    #[arg(long = "connect_retries")]
    pub connect_retries: Option<String>,
    #[arg(long = "cluster_listen")]
    pub cluster_listen: Option<String>,
    #[arg(long = "profile", allow_hyphen_values = true)]
    pub profile: Option<i32>,

    #[arg(long = "shards")]
    pub shards: Option<usize>,
    #[arg(long = "spin_before_park")]
    pub spin_before_park: Option<String>,

    #[arg(short = 'h', long = "help")]
    pub help: bool,
    #[arg(long = "help_tls")]
    pub help_tls: bool,
    #[arg(short = 'v', long = "version")]
    pub version: bool,
}

pub const TLS_HELP: &str = "\
TLS configuration is specified in the tls section of a configuration file:

e.g.

    tls {
        cert_file:      \"./certs/server-cert.pem\"
        key_file:       \"./certs/server-key.pem\"
        ca_file:        \"./certs/ca.pem\"
        verify:         true
        verify_and_map: true

        cipher_suites: [
            \"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\",
            \"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\"
        ]
        curve_preferences: [
            \"CurveP256\",
            \"CurveP384\"
        ]
    }

Other keys: timeout (seconds or duration), handshake_first (true, auto or a
fallback duration), min_version (\"1.2\", \"1.3\"), pinned_certs, insecure.
Top level: allow_non_tls: true also accepts plaintext clients.

Available cipher suites include:
    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
    TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
    TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
(TLS 1.3 suites are always enabled.)

Available curve preferences include:
    X25519
    CurveP256
    CurveP384
";

/// Go-style flags that have no single-letter form, and combined letter flags.
fn rewrite_single_dash(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "sd" => &["--store_dir"],
        "js" => &["--jetstream"],
        "ms" => &["--https_port"],
        "sl" => &["--signal"],
        "DV" | "VD" => &["-D", "-V"],
        "DVV" => &["-D", "--VV"],
        "VV" => &["--VV"],
        _ => return None,
    })
}

/// Rewrites Go `flag` syntax into clap syntax.
pub fn normalize(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut args = args.into_iter();
    if let Some(program) = args.next() {
        out.push(program);
    }
    for arg in args {
        let Some(body) = arg.strip_prefix('-') else {
            out.push(arg);
            continue;
        };
        if body.is_empty() || body.starts_with('-') || body.parse::<i64>().is_ok() {
            out.push(arg);
            continue;
        }
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        if let Some(expansion) = rewrite_single_dash(name) {
            out.extend(expansion.iter().map(|s| s.to_string()));
            if let Some(v) = value {
                if let Some(last) = out.last_mut() {
                    *last = format!("{last}={v}");
                }
            }
        } else if name.len() > 1 {
            // `-port 4222` is `--port 4222` in Go.
            out.push(format!("--{body}"));
        } else {
            match value {
                Some(v) => {
                    out.push(format!("-{name}"));
                    out.push(v.to_string());
                }
                None => out.push(arg),
            }
        }
    }
    out
}

impl Cli {
    pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(normalize(args))
    }

    /// The first option given whose feature strait does not have yet.
    pub fn unsupported(&self) -> Option<&'static str> {
        let checks: &[(bool, &'static str)] = &[
            (
                self.https_port.is_some(),
                "https_port (monitoring over TLS)",
            ),
            (self.routes.is_some(), "routes (clustering)"),
            (self.cluster.is_some(), "cluster (clustering)"),
            (self.cluster_name.is_some(), "cluster_name (clustering)"),
            (
                self.cluster_advertise.is_some(),
                "cluster_advertise (clustering)",
            ),
            (self.cluster_listen.is_some(), "cluster_listen (clustering)"),
            (
                self.connect_retries.is_some(),
                "connect_retries (clustering)",
            ),
        ];
        checks.iter().find(|(set, _)| *set).map(|(_, name)| *name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut v = vec!["strait".to_string()];
        v.extend(args.iter().map(|s| s.to_string()));
        Cli::parse_args(v).unwrap()
    }

    #[test]
    fn go_flag_dialect() {
        let c = parse(&["-p", "-1", "-a", "127.0.0.1", "-sd", "/tmp/x", "-DV"]);
        assert_eq!(c.port, Some(-1));
        assert_eq!(c.addr.as_deref(), Some("127.0.0.1"));
        assert_eq!(c.store_dir.as_deref(), Some("/tmp/x"));
        assert!(c.debug && c.trace);
        let c = parse(&["-port=4333", "--server_name", "n1", "-js", "-T=false"]);
        assert_eq!(c.port, Some(4333));
        assert_eq!(c.name.as_deref(), Some("n1"));
        assert!(c.jetstream);
        assert_eq!(c.logtime, Some(false));
        let c = parse(&["--store_dir", "d", "-p", "-1", "-l", "log", "-P", "pid"]);
        assert_eq!(c.log.as_deref(), Some("log"));
        assert_eq!(c.pid.as_deref(), Some("pid"));
        let c = parse(&["--net", "0.0.0.0", "-n", "x", "--shards", "3", "-T"]);
        assert_eq!(c.shards, Some(3));
        assert_eq!(c.logtime, Some(true));
        let c = parse(&["-m", "8222"]);
        assert_eq!(c.http_port, Some(8222));
        assert_eq!(c.unsupported(), None);
        let c = parse(&["--tlsverify", "--tlscert", "c.pem", "-tls=false"]);
        assert_eq!(c.tlsverify, Some(true));
        assert_eq!(c.tls, Some(false));
        assert_eq!(c.unsupported(), None);
        let c = parse(&["-ms", "8443"]);
        assert_eq!(c.unsupported(), Some("https_port (monitoring over TLS)"));
        assert!(Cli::parse_args(["strait".into(), "--bogus".into()]).is_err());
    }
}
