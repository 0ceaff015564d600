//! The one command protocol between the control executor and the shards:
//! typed commands over a channel per shard, with replies gathered from every
//! shard concurrently under a timeout (monitoring snapshots today; `$SYS` and
//! `$JS.API` gathers next). Reloads, lame duck mode, shutdown and the internal
//! clients' requests are commands too. Statistics stay in each shard's cells, with
//! no locks or shared atomics on the message path; they are copied out only when
//! someone asks.
//!
//! The channels are flume's: any thread can send (the signal thread, the control
//! executor, a test), and a shard awaits them like any other input.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::internal::{InternalMsg, InternalReceiver};
use crate::options::ServerOptions;
use crate::router::{Routed, SubscriberId};
use crate::shard::Shard;
pub use crate::snapshot::{
    AccountSnapshot, ConnSnapshot, ShardSnapshot, SubSnapshot, SublistSnapshot,
};

/// What the control executor (or any thread) can tell a shard.
pub enum Command {
    /// Counters, connections (open and recently closed) and, with `subs`, each
    /// connection's subscriptions.
    Snapshot {
        subs: bool,
        reply: flume::Sender<ShardSnapshot>,
    },
    /// Apply a reloaded configuration (answered once applied).
    Reload {
        options: Arc<ServerOptions>,
        done: Option<flume::Sender<usize>>,
    },
    /// Start accepting clients (once what must be up before them, JetStream, is).
    OpenForClients,
    /// Stop accepting, tell the clients, close them gradually.
    LameDuck,
    /// Close the listener and every connection, and stop.
    Shutdown,
    /// Create an internal client in `account`.
    AddInternal {
        account: u32,
        reply: flume::Sender<(SubscriberId, InternalReceiver)>,
    },
    RemoveInternal {
        client: SubscriberId,
    },
    /// Subscribe an internal client; the reply is its sid (`None`: bad subject).
    Subscribe {
        client: SubscriberId,
        subject: Bytes,
        queue: Option<Bytes>,
        reply: flume::Sender<Option<Bytes>>,
    },
    Unsubscribe {
        client: SubscriberId,
        sid: Bytes,
    },
    /// Host or serve a JetStream stream.
    JetStream(crate::jetstream::host::StreamCommand),
    /// Publish as an internal client (or as nobody in particular).
    Publish {
        from: Option<SubscriberId>,
        account: u32,
        subject: Bytes,
        reply: Bytes,
        header_len: usize,
        message: Bytes,
        routed: Option<flume::Sender<Routed>>,
    },
}

/// Sends commands to the shards. Cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Commander {
    shards: Vec<flume::Sender<Command>>,
}

/// A shard's end of its command channel.
pub(crate) type CommandReceiver = flume::Receiver<Command>;

/// The channels of `shards` shards: the commander and each shard's receiver.
pub(crate) fn channels(shards: usize) -> (Commander, Vec<CommandReceiver>) {
    let (senders, receivers) = (0..shards).map(|_| flume::unbounded()).unzip();
    (Commander { shards: senders }, receivers)
}

impl Commander {
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Sends a command to one shard; false if it has stopped.
    pub fn send(&self, shard: usize, command: Command) -> bool {
        self.shards
            .get(shard)
            .is_some_and(|tx| tx.send(command).is_ok())
    }

    /// Sends the command `make` builds to every shard.
    pub fn broadcast(&self, make: impl Fn() -> Command) {
        for tx in &self.shards {
            let _ = tx.send(make());
        }
    }

    /// Sends the request `make` builds to every running shard; the receivers of
    /// their replies, in shard order.
    fn ask_all<T>(&self, make: impl Fn(flume::Sender<T>) -> Command) -> Vec<flume::Receiver<T>> {
        self.shards
            .iter()
            .filter_map(|tx| {
                let (reply, rx) = flume::bounded(1);
                tx.send(make(reply)).ok().map(|_| rx)
            })
            .collect()
    }

    /// Asks every shard at once and collects the replies that come within
    /// `timeout` (`sleep` is the caller's runtime's timer), in shard order.
    pub async fn gather<T, S>(
        &self,
        make: impl Fn(flume::Sender<T>) -> Command,
        timeout: Duration,
        sleep: impl FnOnce(Duration) -> S,
    ) -> Vec<T>
    where
        S: Future<Output = ()>,
    {
        let pending = self.ask_all(make);
        let collect = async {
            let mut out = Vec::with_capacity(pending.len());
            for rx in &pending {
                if let Ok(v) = rx.recv_async().await {
                    out.push(v);
                }
            }
            Some(out)
        };
        let expire = async {
            sleep(timeout).await;
            None
        };
        match futures_lite::future::or(collect, expire).await {
            Some(out) => out,
            // Late: what did come in, in shard order.
            None => pending.iter().filter_map(|rx| rx.try_recv().ok()).collect(),
        }
    }

    /// `gather` for a thread without a runtime.
    pub fn gather_blocking<T>(
        &self,
        make: impl Fn(flume::Sender<T>) -> Command,
        timeout: Duration,
    ) -> Vec<T> {
        let deadline = std::time::Instant::now() + timeout;
        self.ask_all(make)
            .iter()
            .filter_map(|rx| rx.recv_deadline(deadline).ok())
            .collect()
    }

    /// Creates an internal client in `account` on `shard`.
    pub async fn internal_client(&self, shard: usize, account: u32) -> Option<InternalHandle> {
        let (reply, rx) = flume::bounded(1);
        if !self.send(shard, Command::AddInternal { account, reply }) {
            return None;
        }
        let (id, receiver) = rx.recv_async().await.ok()?;
        Some(InternalHandle {
            commander: self.clone(),
            shard,
            account,
            id,
            receiver,
        })
    }
}

/// An internal client, driven from any thread: it subscribes and publishes through
/// its shard's commands and receives on its queue.
pub struct InternalHandle {
    commander: Commander,
    pub shard: usize,
    pub account: u32,
    id: SubscriberId,
    receiver: InternalReceiver,
}

impl InternalHandle {
    /// Subscribes; resolves to the sid its messages carry once the shard has
    /// registered it and told the other shards (`None`: invalid subject).
    pub async fn subscribe(&self, subject: &str, queue: Option<&str>) -> Option<Bytes> {
        let (reply, rx) = flume::bounded(1);
        let command = Command::Subscribe {
            client: self.id,
            subject: Bytes::copy_from_slice(subject.as_bytes()),
            queue: queue.map(|q| Bytes::copy_from_slice(q.as_bytes())),
            reply,
        };
        if !self.commander.send(self.shard, command) {
            return None;
        }
        rx.recv_async().await.ok().flatten()
    }

    pub fn unsubscribe(&self, sid: Bytes) {
        self.commander.send(
            self.shard,
            Command::Unsubscribe {
                client: self.id,
                sid,
            },
        );
    }

    /// Publishes in the client's account; `headers` is a whole `NATS/1.0` block.
    /// Resolves to where the message went.
    pub async fn publish(
        &self,
        subject: &str,
        reply: &str,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> Routed {
        let header_len = headers.map_or(0, <[u8]>::len);
        let mut message = Vec::with_capacity(header_len + payload.len());
        message.extend_from_slice(headers.unwrap_or_default());
        message.extend_from_slice(payload);
        let (routed, rx) = flume::bounded(1);
        let command = Command::Publish {
            from: Some(self.id),
            account: self.account,
            subject: Bytes::copy_from_slice(subject.as_bytes()),
            reply: Bytes::copy_from_slice(reply.as_bytes()),
            header_len,
            message: Bytes::from(message),
            routed: Some(routed),
        };
        if !self.commander.send(self.shard, command) {
            return Routed::default();
        }
        rx.recv_async().await.unwrap_or_default()
    }

    /// The next message for this client.
    pub async fn next(&self) -> Option<InternalMsg> {
        self.receiver.recv().await
    }

    pub fn receiver(&self) -> &InternalReceiver {
        &self.receiver
    }
}

impl Drop for InternalHandle {
    fn drop(&mut self) {
        self.commander
            .send(self.shard, Command::RemoveInternal { client: self.id });
    }
}

pub(crate) fn snapshot(shard: &Shard, subs: bool) -> ShardSnapshot {
    let connections = shard
        .clients()
        .iter()
        .map(|client| {
            let account = shard.account_name(client.account());
            client.record((shard.id, account), None, subs)
        })
        .collect();
    let closed = shard.closed.borrow().iter().cloned().collect();
    let router = shard.router();
    let mut sublist = SublistSnapshot::default();
    let mut accounts = Vec::with_capacity(router.accounts().len());
    for acc in router.accounts() {
        let one = SublistSnapshot {
            subscriptions: acc.local_subscriptions(),
            stats: acc.sublist.stats(),
        };
        sublist.add(&one);
        accounts.push(AccountSnapshot {
            name: acc.name.clone(),
            connections: acc.connections,
            sublist: one,
            sent_msgs: acc.stats.sent_msgs,
            sent_bytes: acc.stats.sent_bytes,
            received_msgs: acc.stats.received_msgs,
            received_bytes: acc.stats.received_bytes,
        });
    }
    let traffic = router.stats;
    let stats = &shard.stats;
    ShardSnapshot {
        shard: shard.id,
        in_msgs: traffic.in_msgs,
        in_bytes: traffic.in_bytes,
        out_msgs: traffic.out_msgs,
        out_bytes: traffic.out_bytes,
        wasted_hops: traffic.wasted_hops,
        hops_saved: traffic.hops_saved,
        slow_consumers: stats.slow_consumers.get(),
        stale_connections: stats.stale_connections.get(),
        max_loop_lag_us: stats.max_loop_lag_us.get(),
        sublist,
        accounts,
        connections,
        closed,
    }
}

/// Serves a shard's commands until the channel closes or it is told to stop.
pub(crate) async fn serve(shard: Rc<Shard>, commands: CommandReceiver) {
    while let Ok(command) = commands.recv_async().await {
        match command {
            Command::Snapshot { subs, reply } => {
                let _ = reply.send(snapshot(&shard, subs));
            }
            Command::Reload { options, done } => {
                shard.apply_options(options);
                shard.flush_lanes().await;
                if let Some(done) = done {
                    let _ = done.send(shard.id);
                }
            }
            Command::OpenForClients => shard.open_for_clients(),
            Command::LameDuck => shard.enter_lame_duck(),
            Command::Shutdown => {
                shard.stop();
                break;
            }
            Command::AddInternal { account, reply } => {
                let _ = reply.send(shard.add_internal(account));
            }
            Command::RemoveInternal { client } => shard.remove_internal(client),
            Command::Subscribe {
                client,
                subject,
                queue,
                reply,
            } => {
                let sid = shard.internal_subscribe(client, &subject, queue.as_deref());
                // Answered once the other shards have the interest, as a PONG is.
                shard.barrier().await;
                let _ = reply.send(sid);
            }
            Command::Unsubscribe { client, sid } => shard.internal_unsubscribe(client, &sid),
            Command::JetStream(command) => {
                // A store may take a while to open or answer: the shard's other
                // commands do not wait for it.
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    crate::jetstream::host::handle(&shard, command).await;
                    shard.flush_lanes().await;
                })
                .detach();
            }
            Command::Publish {
                from,
                account,
                subject,
                reply,
                header_len,
                message,
                routed,
            } => {
                let r =
                    shard.internal_publish(from, account, &subject, &reply, header_len, &message);
                shard.flush_lanes().await;
                if let Some(tx) = routed {
                    let _ = tx.send(r);
                }
            }
        }
        shard.flush_lanes().await;
        shard.wait_for_stalled().await;
    }
}
