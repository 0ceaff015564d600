//! The command line as tools read it.

use std::process::Command;

/// What the nats.c test harness (and install scripts) take as the server version:
/// the first ` v` in `-v`'s output, followed by `major.minor.patch`.
fn version_as_tools_parse_it(line: &str) -> Option<(u32, u32, u32)> {
    let at = line.find(" v")?;
    let rest = &line[at + 2..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(rest.len());
    let mut parts = rest[..end].split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

#[test]
fn version_line_reads_as_the_compatible_nats_server_version() {
    let reference = include_str!("fixtures/reference/nats-server_version.txt").trim();
    for flag in ["-v", "--version"] {
        let out = Command::new(env!("CARGO_BIN_EXE_strait"))
            .arg(flag)
            .output()
            .expect("run strait");
        assert!(out.status.success());
        let line = String::from_utf8_lossy(&out.stdout);
        let line = line.trim();
        assert_eq!(version_as_tools_parse_it(line), Some((2, 14, 0)), "{line}");
        assert_eq!(version_as_tools_parse_it(reference), Some((2, 14, 0)));
        // nats-server's own line comes first, unchanged.
        assert!(line.starts_with(reference), "{line}");
        assert!(
            line.contains(&format!("strait v{}", env!("CARGO_PKG_VERSION"))),
            "{line}"
        );
    }
}
