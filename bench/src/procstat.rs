//! CPU time and memory of processes, read from /proc (Linux only).

use std::time::Duration;

use anyhow::{anyhow, Context, Result};

/// A point-in-time reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// User plus system CPU time over the process's whole life, all threads.
    pub cpu: Duration,
    /// Resident set now (VmRSS), KiB.
    pub rss_kb: u64,
    /// Peak resident set since the process started (VmHWM), KiB.
    pub hwm_kb: u64,
}

pub fn sample(pid: u32) -> Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let ticks = parse_stat_ticks(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))?;
    let (rss_kb, hwm_kb) = parse_status_mem(&status);
    Ok(ProcSample {
        cpu: ticks_to_duration(ticks),
        rss_kb: rss_kb.unwrap_or(0),
        hwm_kb: hwm_kb.unwrap_or(0),
    })
}

/// utime + stime in clock ticks. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted from the last ')'.
pub fn parse_stat_ticks(stat: &str) -> Result<u64> {
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| anyhow!("no ')' in stat line"))?;
    // After the name: field 3 (state) is index 0, so utime (14) is 11 and stime (15) 12.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .ok_or_else(|| anyhow!("stat line too short"))?
            .parse::<u64>()
            .context("bad number in stat line")
    };
    Ok(get(11)? + get(12)?)
}

/// (VmRSS, VmHWM) in KiB.
pub fn parse_status_mem(status: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf only reads a configuration value; it has no preconditions and
    // touches no memory of ours.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn ticks_to_duration(ticks: u64) -> Duration {
    let hz = clock_ticks_per_sec();
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz)
}

/// CPU time (user + system) this process has used so far, all threads, to the
/// microsecond; children (the servers we start) are not included.
pub fn self_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct; getrusage
    // writes only into the struct we pass, which lives for the whole call.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: see above; RUSAGE_SELF is always a valid `who`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Cache flushes the disk holding `pid`'s working directory has completed since boot
/// (field 16 of its `/sys/dev/block/MAJ:MIN/stat`, Linux 5.5 and later): what fsync
/// and fdatasync cost a disk, whichever process issued them. None where the kernel
/// does not count them (older kernels, filesystems without a block device).
pub fn disk_flushes(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(format!("/proc/{pid}/cwd")).ok()?.dev();
    // The Linux encoding of dev_t (glibc's gnu_dev_major/minor).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    parse_flushes(&stat)
}

/// Flush requests completed, from a block device's `stat` line.
pub fn parse_flushes(stat: &str) -> Option<u64> {
    stat.split_whitespace().nth(15)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_name() {
        let line = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 100 1000000 300 18446744073709551615";
        assert_eq!(parse_stat_ticks(line).expect("parse"), 325);
        assert!(parse_stat_ticks("1 (x) S 1").is_err());
    }

    #[test]
    fn status_memory() {
        let s = "Name:\tnats-server\nVmPeak:\t 1000 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_mem(s), (Some(10240), Some(20480)));
        assert_eq!(parse_status_mem("Name: x\n"), (None, None));
    }

    #[test]
    fn flushes_are_the_sixteenth_field() {
        let line = " 1456584 41665 170022274 1786270 708606 254250 162381400 606695 0 271664 2434060 140523 42 129061032 27448 261577 13646\n";
        assert_eq!(parse_flushes(line), Some(261577));
        assert_eq!(parse_flushes("1 2 3 4 5 6 7 8 9 10 11"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let s = sample(std::process::id()).expect("self sample");
        assert!(s.rss_kb > 0 && s.hwm_kb >= s.rss_kb);
        let _ = self_cpu();
    }
}
