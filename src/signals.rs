//! Signals, as nats-server uses them: SIGINT/SIGTERM stop gracefully, SIGUSR1
//! reopens the log file, SIGHUP reloads the configuration, SIGUSR2 enters lame
//! duck mode. `--signal <cmd>[=<pid|pidfile>]` sends them to a running server.

use std::path::Path;

use anyhow::{bail, Context};

/// The signal nats-server sends for each `--signal` command.
pub fn signal_for(command: &str) -> anyhow::Result<i32> {
    Ok(match command {
        "stop" => libc::SIGKILL,
        "quit" => libc::SIGINT,
        "term" => libc::SIGTERM,
        "reopen" => libc::SIGUSR1,
        "reload" => libc::SIGHUP,
        "ldm" => libc::SIGUSR2,
        other => bail!("unknown signal {other:?}"),
    })
}

/// Resolves the target of `--signal`: a pid, a pid file, or (when absent) the
/// one running strait process.
fn resolve_pids(target: Option<&str>) -> anyhow::Result<Vec<i32>> {
    match target {
        Some(t) if t.chars().all(|c| c.is_ascii_digit()) => Ok(vec![t
            .parse()
            .with_context(|| format!("invalid pid {t}"))?]),
        Some(pattern) if pattern.contains(['*', '?', '[']) => {
            let mut pids = Vec::new();
            for path in glob::glob(pattern).with_context(|| format!("invalid pattern {pattern}"))? {
                let path = path.with_context(|| format!("could not read {pattern}"))?;
                pids.push(read_pid_file(&path)?);
            }
            if pids.is_empty() {
                bail!("no pid file matches {pattern}");
            }
            Ok(pids)
        }
        Some(path) => Ok(vec![read_pid_file(Path::new(path))?]),
        None => {
            let me = std::process::id() as i32;
            let mut pids = Vec::new();
            for entry in std::fs::read_dir("/proc").context("could not list processes")? {
                let Ok(entry) = entry else { continue };
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if pid == me {
                    continue;
                }
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                if comm.trim() == "strait" {
                    pids.push(pid);
                }
            }
            match pids.len() {
                0 => bail!("no strait process running"),
                1 => Ok(pids),
                _ => bail!(
                    "multiple strait processes running: {:?}; give a pid or pid file",
                    pids
                ),
            }
        }
    }
}

/// Refuses any pid but that of a running strait process (as nats-server refuses
/// pids that are not nats-server's).
fn check_target(pid: i32) -> anyhow::Result<()> {
    if pid <= 1 {
        bail!("invalid pid {pid}: not a strait process");
    }
    if !is_strait(pid) {
        bail!("pid {pid} is not a running strait process");
    }
    Ok(())
}

/// True when `pid` runs the strait binary: its command name, or its executable
/// being the one this process runs (a renamed copy of strait).
fn is_strait(pid: i32) -> bool {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let comm = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
    if comm.trim() == "strait" {
        return true;
    }
    match (
        std::fs::read_link(proc_dir.join("exe")),
        std::env::current_exe(),
    ) {
        (Ok(theirs), Ok(ours)) => theirs == ours,
        _ => false,
    }
}

fn read_pid_file(path: &Path) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read pid file {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("invalid pid in {}: {:?}", path.display(), text.trim()))
}

/// Handles `--signal <command>[=<pid|pidfile|glob of pid files>]`.
pub fn send(spec: &str) -> anyhow::Result<()> {
    let (command, target) = match spec.split_once('=') {
        Some((c, t)) => (c, Some(t)),
        None => (spec, None),
    };
    let signal = signal_for(command)?;
    let pids = resolve_pids(target)?;
    // Check every target before signalling any: 0 and -1 would reach a process
    // group or every process we may signal, and a stale pid file may name a
    // process that is not strait any more.
    for &pid in &pids {
        check_target(pid)?;
    }
    for pid in pids {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            bail!(
                "could not send {command} to pid {pid}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_map_like_nats_server() {
        assert_eq!(signal_for("stop").unwrap(), libc::SIGKILL);
        assert_eq!(signal_for("quit").unwrap(), libc::SIGINT);
        assert_eq!(signal_for("term").unwrap(), libc::SIGTERM);
        assert_eq!(signal_for("reopen").unwrap(), libc::SIGUSR1);
        assert_eq!(signal_for("reload").unwrap(), libc::SIGHUP);
        assert_eq!(signal_for("ldm").unwrap(), libc::SIGUSR2);
        assert!(signal_for("bogus").is_err());
        assert_eq!(resolve_pids(Some("42")).unwrap(), vec![42]);
        assert!(resolve_pids(Some("/nonexistent/pidfile")).is_err());
        let dir = std::env::temp_dir().join(format!("strait-pids-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.pid"), "101").unwrap();
        std::fs::write(dir.join("b.pid"), "102\n").unwrap();
        let mut pids = resolve_pids(Some(&format!("{}/*.pid", dir.display()))).unwrap();
        pids.sort();
        assert_eq!(pids, vec![101, 102]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_strait_processes_are_signalled() {
        for pid in [0, 1, -1, -42] {
            assert!(check_target(pid).is_err(), "{pid}");
        }
        // A process running something else is refused.
        let mut other = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .expect("spawn sleep");
        let refused = check_target(other.id() as i32);
        let _ = other.kill();
        let _ = other.wait();
        assert!(refused.is_err());
        let dir = std::env::temp_dir().join(format!("strait-badpids-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x.pid"), "-1").unwrap();
        let err = send(&format!("reload={}/x.pid", dir.display())).unwrap_err();
        assert!(err.to_string().contains("invalid pid"), "{err}");
        assert!(send("reload=0").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
