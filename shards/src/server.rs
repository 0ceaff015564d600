//! Starting and stopping the shards: the glommio-specific shell around the
//! sans-I/O cores. One executor per shard, pinned to a core, each accepting on its
//! own SO_REUSEPORT listener.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use thiserror::Error;

use crate::client::tasks::run_client;
use crate::client::{Client, CloseReason};
use crate::control::{Command, CommandReceiver, Commander};
use crate::global::Global;
use crate::info::ServerInfo;
use crate::mesh::{Lane, MeshEnds};
use crate::options::ServerOptions;
use crate::router::Batch;
use crate::shard::{Shard, GLOBAL_ACCOUNT};

#[derive(Debug, Error)]
pub enum StartError {
    #[error("invalid listen address {0}: {1}")]
    Address(String, std::io::Error),
    /// The address and Go's text of the failure (`listen tcp ...: bind: ...`).
    #[error("Error listening on port: {0}, \"{1}\"")]
    Bind(String, String),
    #[error("could not start shard {0}: {1}")]
    Executor(usize, String),
}

impl StartError {
    fn bind(addr: SocketAddr, e: &std::io::Error) -> StartError {
        StartError::Bind(addr.to_string(), crate::listen::go_listen_error(addr, e))
    }
}

/// A running set of shards.
pub struct ServerHandle {
    pub port: u16,
    /// Commands to the shards.
    pub commander: Commander,
    pub global: Arc<Global>,
    joins: Vec<ExecutorJoinHandle<()>>,
}

impl ServerHandle {
    /// Lets every shard accept client connections.
    pub fn open_for_clients(&self) {
        self.commander.broadcast(|| Command::OpenForClients);
    }

    /// Asks every shard to close its listener and connections and stop.
    pub fn shutdown(&self) {
        self.commander.broadcast(|| Command::Shutdown);
    }

    /// Waits until every shard has stopped.
    pub fn join(self) {
        for j in self.joins {
            let _ = j.join();
        }
    }
}

/// Memory each executor registers with io_uring. glommio takes it from
/// RLIMIT_MEMLOCK (8 MiB by default), so keep it small enough for every shard.
const IO_MEMORY: usize = 512 * 1024;

fn resolve(host: &str, port: u16) -> Result<SocketAddr, StartError> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| StartError::Address(format!("{host}:{port}"), e))?
        .next()
        .ok_or_else(|| {
            StartError::Address(
                format!("{host}:{port}"),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            )
        })
}

/// Starts all shards; returns once every one of them accepts connections.
pub fn start(opts: ServerOptions) -> Result<ServerHandle, StartError> {
    let handle = start_closed(opts)?;
    handle.open_for_clients();
    Ok(handle)
}

/// Starts all shards with their listeners bound but not accepting yet: commands
/// (internal clients, subscriptions, JetStream) work, and clients that connect
/// wait in the listen backlog until [`ServerHandle::open_for_clients`]. nats-server
/// likewise brings JetStream up before it accepts, so a client's first request
/// finds the API there.
pub fn start_closed(opts: ServerOptions) -> Result<ServerHandle, StartError> {
    let addr = resolve(&opts.host, opts.port)?;
    // glommio listeners always set SO_REUSEPORT, so a second broker on the same port
    // would silently share its traffic. An exclusive bind first fails as it should.
    let port = crate::listen::claim_port(addr).map_err(|e| StartError::bind(addr, &e))?;
    let addr = SocketAddr::new(addr.ip(), port);
    let nshards = opts.shards.max(1);
    let opts = Arc::new(ServerOptions {
        shards: nshards,
        ..opts
    });
    let global = Arc::new(Global::new(opts.accounts.len()));
    let mut mesh = MeshEnds::new(nshards);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut joins = Vec::with_capacity(nshards);
    let (commander, command_receivers) = crate::control::channels(nshards);
    for (id, commands) in command_receivers.into_iter().enumerate() {
        let (senders, receivers) = mesh.take(id);
        let opts = opts.clone();
        let global = global.clone();
        let ready = ready_tx.clone();
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed(id % cpus))
            .name(&format!("shard-{id}"))
            .io_memory(IO_MEMORY);
        if let Some(spin) = opts.spin_before_park {
            builder = builder.spin_before_park(spin);
        }
        let handle = builder
            .spawn(move || {
                run_shard(
                    id,
                    opts,
                    addr,
                    global,
                    (senders, receivers),
                    commands,
                    ready,
                )
            })
            .map_err(|e| StartError::Executor(id, e.to_string()))?;
        joins.push(handle);
    }
    drop(ready_tx);
    for _ in 0..nshards {
        let failure = match ready_rx.recv() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some("a shard stopped while starting".to_string()),
        };
        if let Some(e) = failure {
            commander.broadcast(|| Command::Shutdown);
            for j in joins {
                let _ = j.join();
            }
            return Err(StartError::Bind(addr.to_string(), e));
        }
    }
    Ok(ServerHandle {
        port,
        commander,
        global,
        joins,
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_shard(
    id: usize,
    opts: Arc<ServerOptions>,
    addr: SocketAddr,
    global: Arc<Global>,
    (senders, receivers): crate::mesh::ShardLanes,
    commands: CommandReceiver,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let listener = match crate::listen::shared_listener(addr) {
        // SAFETY: the descriptor comes from a listening socket we own and hand over
        // whole (into_raw_fd), so glommio's listener is its only owner.
        Ok(l) => unsafe { glommio::net::TcpListener::from_raw_fd(l.into_raw_fd()) },
        Err(e) => {
            let _ = ready.send(Err(crate::listen::go_listen_error(addr, &e)));
            return;
        }
    };
    // A sender's connect waits for its receiver's, so receivers connect concurrently.
    let receivers: Vec<_> = receivers
        .into_iter()
        .map(|rx| rx.map(|rx| glommio::spawn_local(rx.connect())))
        .collect();
    let mut lanes = Vec::with_capacity(senders.len());
    for tx in senders {
        lanes.push(match tx {
            Some(tx) => Some(Lane::connect(tx).await),
            None => None,
        });
    }
    let info = ServerInfo::from_options(&opts, addr.port());
    let shard = Rc::new(Shard::new(id, opts.clone(), info, global.clone(), lanes));
    for (from, rx) in receivers.into_iter().enumerate() {
        if let Some(rx) = rx {
            let rx = rx.await;
            glommio::spawn_local(mesh_receiver(shard.clone(), from, rx)).detach();
        }
    }
    glommio::spawn_local(crate::control::serve(shard.clone(), commands)).detach();
    let shard_for_accept = shard.clone();
    let gate = shard.close_for_clients();
    let _ = ready.send(Ok(()));
    let acceptor = glommio::spawn_local(async move {
        // Err once the gate's sender is dropped: the server is open.
        let _ = gate.recv_async().await;
        accept_loop(shard_for_accept, listener).await
    });
    housekeeping(&shard, acceptor).await;

    shard.close_all(CloseReason::ServerShutdown);
    shard.try_flush_lanes();
    let deadline = Instant::now() + Duration::from_secs(2);
    while shard.live_connections() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// The periodic tick: bounds the cost of a lost wake-up to one period, flushes
/// lanes left pending, measures loop lag, pings clients and enforces deadlines.
async fn housekeeping(shard: &Rc<Shard>, acceptor: glommio::Task<()>) {
    let tick = shard.opts().tick;
    let sweep_every = Duration::from_millis(100);
    let mut last_sweep = Instant::now();
    let mut last = Instant::now();
    // Dropping the acceptor task cancels it and closes this shard's listener.
    let mut acceptor = Some(acceptor);
    let mut lame_duck: Option<LameDuck> = None;
    while !shard.is_stopping() {
        if lame_duck.is_none() && shard.in_lame_duck() {
            drop(acceptor.take());
            shard.announce_lame_duck();
            lame_duck = Some(LameDuck {
                started: Instant::now(),
                clients_at_start: None,
                closed: 0,
            });
        }
        if let Some(ldm) = &mut lame_duck {
            ldm.close_due(shard, Instant::now());
        }
        glommio::timer::sleep(tick).await;
        let now = Instant::now();
        let lag = now.duration_since(last).saturating_sub(tick);
        last = now;
        let lag_us = lag.as_micros() as u64;
        if lag_us > shard.stats.max_loop_lag_us.get() {
            shard.stats.max_loop_lag_us.set(lag_us);
        }
        if lag > Duration::from_millis(100) {
            tracing::warn!("shard {} loop lag of {:?}", shard.id, lag);
        }
        shard.try_flush_lanes();
        if now.duration_since(last_sweep) >= sweep_every {
            last_sweep = now;
            shard.sweep_clients(now);
            shard.try_flush_lanes();
        }
    }
}

/// A shard's progress through lame duck mode.
struct LameDuck {
    started: Instant,
    /// This shard's and the whole server's connections when the grace period
    /// ended; the pace is set from them.
    clients_at_start: Option<(usize, usize)>,
    closed: usize,
}

/// nats-server never waits more than this between two closes in lame duck mode,
/// so a lightly used server empties in seconds whatever the duration.
const LAME_DUCK_MAX_CLOSE_INTERVAL: Duration = Duration::from_secs(1);

impl LameDuck {
    /// After the grace period, closes clients at a steady pace: the server's
    /// closes are spread over `lame_duck_duration`, at most a second apart.
    fn close_due(&mut self, shard: &Shard, now: Instant) {
        let grace = shard.opts().lame_duck_grace_period;
        let duration = shard.opts().lame_duck_duration.max(grace);
        let since = now.duration_since(self.started);
        if since < grace {
            return;
        }
        let (total, server_total) = *self.clients_at_start.get_or_insert_with(|| {
            (
                shard.client_count(),
                shard.global.connections.load(Ordering::Relaxed),
            )
        });
        let window = lame_duck_window(duration - grace, server_total).as_secs_f64();
        let elapsed = (since - grace).as_secs_f64();
        let due = if window <= 0.0 || elapsed >= window {
            total
        } else {
            ((elapsed / window) * total as f64).ceil() as usize
        };
        if due > self.closed {
            shard.close_some(due - self.closed, CloseReason::ServerShutdown);
            self.closed = due;
        }
    }
}

/// The time over which every shard spreads its closes: each shard closes its
/// share at the same rate, so the server as a whole closes one client every
/// `window / server_clients`, which nats-server caps at a second.
fn lame_duck_window(window: Duration, server_clients: usize) -> Duration {
    let capped = LAME_DUCK_MAX_CLOSE_INTERVAL.saturating_mul(server_clients.max(1) as u32);
    window.min(capped)
}

async fn mesh_receiver(
    shard: Rc<Shard>,
    from: usize,
    rx: glommio::channels::shared_channel::ConnectedReceiver<Batch>,
) {
    while let Some(batch) = rx.recv().await {
        shard.handle_batch(from, batch);
        // Waiting for slow subscribers stops draining the lane, which pushes back
        // on the publishing shard.
        shard.wait_for_stalled().await;
        // Never wait here: two shards waiting on each other's full lanes from their
        // receivers would deadlock. What cannot go now goes on the next tick.
        shard.try_flush_lanes();
    }
}

/// nats-server's back-off after a failed accept (EMFILE, ENFILE, ENOBUFS...):
/// 10 ms, doubled each time up to a second, back to 10 ms after a success.
const ACCEPT_MIN_SLEEP: Duration = Duration::from_millis(10);
const ACCEPT_MAX_SLEEP: Duration = Duration::from_secs(1);

async fn accept_loop(shard: Rc<Shard>, listener: glommio::net::TcpListener) {
    let local = listener.local_addr().ok();
    let mut delay = ACCEPT_MIN_SLEEP;
    loop {
        let stream = match listener.accept().await {
            Ok(s) => {
                delay = ACCEPT_MIN_SLEEP;
                s
            }
            Err(e) => {
                let e = std::io::Error::from(e);
                // Every shard backs off; the log line is written by whichever shard
                // is due, so the server logs about once per back-off period.
                if shard.global.accept_error_log_due(delay) {
                    let text = match local {
                        Some(addr) => crate::listen::go_accept_error(addr, &e),
                        None => e.to_string(),
                    };
                    tracing::error!(
                        "Temporary Client Accept Error({}), sleeping {}ms",
                        text,
                        delay.as_millis()
                    );
                }
                glommio::timer::sleep(delay).await;
                delay = (delay * 2).min(ACCEPT_MAX_SLEEP);
                continue;
            }
        };
        let Ok(addr) = stream.peer_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let cid = shard.next_cid();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let client = Rc::new(Client::new(
            cid,
            addr,
            fd,
            GLOBAL_ACCOUNT,
            Instant::now() + shard.opts().ping_interval,
            (shard.opts().max_payload, shard.opts().max_subscriptions),
        ));
        let mut info = shard.info();
        {
            let opts = shard.opts();
            if opts.auth.required() {
                let nonce = if opts.auth.needs_nonce() {
                    crate::auth::new_nonce()
                } else {
                    String::new()
                };
                if !nonce.is_empty() {
                    info.nonce = Some(nonce.clone());
                }
                client.require_auth(nonce, Instant::now() + opts.auth.timeout);
            }
        }
        client.queue_bytes(&client.info_line(&info));
        let count = shard.global.connections.fetch_add(1, Ordering::Relaxed) + 1;
        shard
            .global
            .total_connections
            .fetch_add(1, Ordering::Relaxed);
        if count > shard.opts().max_connections {
            shard.global.connections.fetch_sub(1, Ordering::Relaxed);
            tracing::error!(
                "{} - maximum connections exceeded",
                client.log_prefix_short()
            );
            client.queue_err("maximum connections exceeded");
            client.begin_close(CloseReason::MaxConnectionsExceeded);
        } else {
            tracing::debug!(
                "{} - Client connection created (shard {})",
                client.log_prefix_short(),
                shard.id
            );
            shard.register_client(client.clone());
        }
        glommio::spawn_local(run_client(shard.clone(), client, stream)).detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lame_duck_closes_at_most_a_second_apart() {
        let thirty = Duration::from_secs(30);
        assert_eq!(lame_duck_window(thirty, 2), Duration::from_secs(2));
        assert_eq!(lame_duck_window(thirty, 0), Duration::from_secs(1));
        // Many clients: spread over the whole duration.
        assert_eq!(lame_duck_window(thirty, 10_000), thirty);
        assert_eq!(lame_duck_window(Duration::ZERO, 5), Duration::ZERO);
    }
}
