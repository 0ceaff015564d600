//! Listening sockets that behave like nats-server's (Go's) on restart.
//!
//! Two things differ from what glommio's `TcpListener::bind` does:
//!
//! - **SO_REUSEADDR**: without it a restart fails for about a minute while the
//!   connections the previous process closed sit in TIME_WAIT. Go sets it on every
//!   listener, so nats-server restarts at once; so must strait.
//! - **Exclusive ownership**: every shard listens on the same port with
//!   SO_REUSEPORT, which would also let a second broker share the port silently.
//!   [`claim_port`] first binds without SO_REUSEPORT, so a live owner is refused
//!   promptly with Go's error text. A listener left by a process that was killed a
//!   moment ago (its io_uring instance is torn down asynchronously by the kernel, so
//!   its sockets linger in LISTEN with no process holding them) is waited out
//!   instead of refused, so a restart right after a crash succeeds.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// How long a listener with no living owner may take to go away before the port
/// is reported as in use.
const ORPHAN_WAIT: Duration = Duration::from_secs(10);

/// Go's form of a failed listen: `listen tcp 127.0.0.1:4222: bind: address already
/// in use`, as nats-server logs it.
pub fn go_listen_error(addr: SocketAddr, e: &io::Error) -> String {
    format!("listen tcp {addr}: bind: {}", go_errno_text(e))
}

/// Go's form of a failed accept: `accept tcp 127.0.0.1:4222: accept4: too many
/// open files`.
pub fn go_accept_error(addr: SocketAddr, e: &io::Error) -> String {
    format!("accept tcp {addr}: accept4: {}", go_errno_text(e))
}

/// The error's text as Go's `syscall.Errno` prints it (lower case, no errno).
fn go_errno_text(e: &io::Error) -> String {
    let text = match e.raw_os_error() {
        Some(code) => {
            let full = io::Error::from_raw_os_error(code).to_string();
            full.split(" (os error").next().unwrap_or(&full).to_string()
        }
        None => e.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Binds `addr` exclusively and releases it again, returning the port (the chosen
/// one when `addr` has port 0). Waits out listeners that no living process holds.
pub fn claim_port(addr: SocketAddr) -> io::Result<u16> {
    let deadline = Instant::now() + ORPHAN_WAIT;
    loop {
        match exclusive_bind(addr) {
            Ok(port) => return Ok(port),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if Instant::now() >= deadline || !only_orphans_listen_on(addr.port()) {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

fn exclusive_bind(addr: SocketAddr) -> io::Result<u16> {
    let socket = new_socket(addr)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1)?;
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("listener has no IP address"))?;
    Ok(local.port())
}

/// A listener that shares `addr` with the other shards' (SO_REUSEPORT) and
/// rebinds at once after a restart (SO_REUSEADDR), with the kernel's maximum
/// backlog as Go uses it.
pub fn shared_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = new_socket(addr)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(listen_backlog())?;
    Ok(socket.into())
}

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))
}

/// `net.core.somaxconn`, which Go passes to listen(2); connection bursts (thousands
/// of clients reconnecting after a restart) wait there rather than being refused.
fn listen_backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n: &i32| n > 0)
        .unwrap_or(4096)
}

/// True when sockets listen on `port` but no process holds any of them: they
/// belong to a process that has just died and will close shortly. False when a
/// living process (another server) owns one, or when nothing can be read.
fn only_orphans_listen_on(port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        // Gone between the bind and the look: try the bind again.
        return true;
    }
    !any_process_holds(&inodes)
}

/// Inodes of the sockets in LISTEN on `port`, from `/proc/net/tcp` and `tcp6`.
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        inodes.extend(parse_listening(&text, port));
    }
    inodes
}

/// The LISTEN (state 0A) rows of a `/proc/net/tcp` table for `port`.
fn parse_listening(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            let local_port = u16::from_str_radix(local_port, 16).ok()?;
            (local_port == port && *fields.get(3)? == "0A")
                .then(|| fields.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

fn any_process_holds(inodes: &[u64]) -> bool {
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return true;
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let target = target.to_string_lossy();
                if wanted.iter().any(|w| *w == target) {
                    return true;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_rows_by_port_and_state() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:107E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:107E 0100007F:C350 06 00000000:00000000 03:00000F3A 00000000     0        0 0 3 0000000000000000\n\
   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(parse_listening(table, 4222), vec![1234]);
        assert_eq!(parse_listening(table, 8080), vec![99]);
        assert!(parse_listening(table, 1).is_empty());
    }

    #[test]
    fn go_error_text() {
        let addr: SocketAddr = "127.0.0.1:4222".parse().unwrap();
        let e = io::Error::from_raw_os_error(libc::EADDRINUSE);
        assert_eq!(
            go_listen_error(addr, &e),
            "listen tcp 127.0.0.1:4222: bind: address already in use"
        );
    }

    #[test]
    fn a_live_listener_is_refused_at_once() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let start = Instant::now();
        let err = claim_port(addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn time_wait_does_not_block_a_rebind() {
        let listener = shared_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // A connection closed by the server side first leaves TIME_WAIT on it.
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (served, _) = listener.accept().unwrap();
        drop(served);
        drop(listener);
        drop(client);
        assert_eq!(claim_port(addr).unwrap(), addr.port());
        let again = shared_listener(addr).unwrap();
        assert_eq!(again.local_addr().unwrap(), addr);
    }
}
