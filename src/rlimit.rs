//! The open-files limit. Go's runtime raises the soft RLIMIT_NOFILE to the hard
//! limit when a program starts, so nats-server can hold as many connections as the
//! hard limit allows while a shell or systemd's default soft limit is 1024. strait
//! does the same.

/// Descriptors strait needs besides its client connections: listeners, the log,
/// the monitoring connections, the io_uring rings and eventfds of each executor.
const RESERVED_FILES: u64 = 64;

/// What the limit is after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub before: u64,
    pub now: u64,
}

/// Raises the soft open-files limit to the hard one (to `fs.nr_open` when the
/// hard limit is unlimited), as Go does at start.
pub fn raise_open_files_limit() -> std::io::Result<OpenFiles> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass, which lives on
    // our stack for the whole call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    let mut target = lim.rlim_max;
    if target == libc::RLIM_INFINITY {
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if target <= before {
        return Ok(OpenFiles {
            before,
            now: before,
        });
    }
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we pass; it touches no other memory.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OpenFiles {
        before,
        now: target,
    })
}

/// Raises the limit and says so in the log: at debug level when it changed, as a
/// warning when what results cannot hold `max_connections` clients.
pub fn apply(max_connections: usize) {
    match raise_open_files_limit() {
        Ok(files) => {
            if files.now != files.before {
                tracing::debug!(
                    "Raised the open files limit from {} to {} (the hard limit)",
                    files.before,
                    files.now
                );
            }
            let needed = max_connections as u64 + RESERVED_FILES;
            if files.now < needed {
                tracing::warn!(
                    "The open files limit of {} is below what max_connections ({}) needs ({}): \
                     clients past that will wait in the accept backlog; raise the hard limit \
                     (ulimit -Hn, LimitNOFILE=) or lower max_connections",
                    files.now,
                    max_connections,
                    needed
                );
            }
        }
        Err(e) => tracing::warn!("Could not raise the open files limit: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limit_reaches_the_hard_one() {
        let files = raise_open_files_limit().unwrap();
        assert!(files.now >= files.before);
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in raise_open_files_limit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, files.now);
        if lim.rlim_max != libc::RLIM_INFINITY {
            assert_eq!(lim.rlim_cur, lim.rlim_max);
        }
    }
}
