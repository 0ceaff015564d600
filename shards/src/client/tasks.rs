//! The two tasks of a client connection: a reader that parses what the client
//! sends and feeds it through the connection's state machine (routing the
//! publishes it accepts through the shard), and a writer that flushes the
//! coalesced outbound buffer.

use std::cell::RefCell;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::{Client, CloseReason, QueueOut};
use crate::accounts::AccountLimits;
use crate::auth::{AuthFailure, Authenticated};
use crate::connection::{AccountFull, ConnectionEnv, Outbound, Publish, Step};
use crate::proto::{self, ClientOp, ConnectInfo, Parsed, Parser, ProtoError};
use crate::router::{SubscriberId, Subscription};
use crate::shard::Shard;
use crate::tls::Conn;

/// Bytes asked of the socket per read, and the allocation they come from.
const READ_SIZE: usize = 64 * 1024;
/// The smallest read offered.
const READ_MIN: usize = 4 * 1024;
const READ_ALLOC: usize = 256 * 1024;

/// Runs a connection until it closes. The writer runs as its own task.
pub(crate) async fn run_client(
    shard: Rc<Shard>,
    client: Rc<Client>,
    stream: glommio::net::TcpStream,
) {
    shard.connection_started();
    let (tls, allow_non_tls, auth_timeout) = {
        let opts = shard.opts();
        (opts.tls.clone(), opts.allow_non_tls, opts.auth.timeout)
    };
    let stream = match tls {
        None => Conn::Plain(stream),
        Some(tls) => {
            match crate::tls::establish(&*client, stream, &tls, allow_non_tls, auth_timeout).await {
                Some(conn) => conn,
                None => {
                    shard.close_client(&client, CloseReason::TlsHandshakeError);
                    shard.connection_ended();
                    return;
                }
            }
        }
    };
    let stream = Rc::new(RefCell::new(stream));
    let writer = glommio::spawn_local(write_loop(client.clone(), stream.clone())).detach();
    let reason = read_loop(&shard, &client, &stream).await;
    shard.close_client(&client, reason);
    shard.flush_lanes().await;
    writer.await;
    shard.connection_ended();
}

async fn read_some(stream: &RefCell<Conn>, buf: &mut [u8]) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| stream.borrow_mut().poll_read(cx, buf)).await
}

async fn write_some(stream: &RefCell<Conn>, buf: &[u8]) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| stream.borrow_mut().poll_write(cx, buf)).await
}

async fn flush(stream: &RefCell<Conn>) -> std::io::Result<()> {
    std::future::poll_fn(|cx| stream.borrow_mut().poll_flush(cx)).await
}

async fn read_loop(shard: &Rc<Shard>, client: &Rc<Client>, stream: &RefCell<Conn>) -> CloseReason {
    let max_control_line = shard.opts().max_control_line;
    let mut parser = Parser::new();
    let mut buf = BytesMut::with_capacity(READ_ALLOC);
    let mut need = 0usize;
    // The room offered to a read is zeroed first, so it follows what reads return:
    // a request/reply client does not pay for zeroing 64 KiB per message.
    let mut read_hint = READ_MIN;
    // What arrived in one read is handled as of when it was read: one clock read
    // per read, not per operation.
    let mut read_at;
    loop {
        // Read until a whole frame may be there.
        loop {
            let want = READ_SIZE.max(need.saturating_sub(buf.len()));
            if buf.capacity() - buf.len() < want.min(READ_SIZE) || need > buf.capacity() {
                buf.reserve(want.max(READ_ALLOC / 2));
            }
            let filled = buf.len();
            let wanted = read_hint.max(need.saturating_sub(filled));
            let room = (buf.capacity() - filled).min(wanted);
            buf.resize(filled + room, 0);
            let n = match read_some(stream, &mut buf[filled..]).await {
                Ok(0) => return CloseReason::ClientClosed,
                Ok(n) => n,
                Err(_) if client.is_closing() => return CloseReason::ClientClosed,
                Err(_) => return CloseReason::ReadError,
            };
            buf.truncate(filled + n);
            read_hint = if n == room {
                (read_hint * 4).min(READ_SIZE)
            } else {
                (n * 2).clamp(READ_MIN, READ_SIZE)
            };
            read_at = Instant::now();
            client.last_activity.set(read_at);
            if client.is_closing() {
                return CloseReason::ClientClosed;
            }
            if buf.len() >= need {
                break;
            }
        }
        let frame = buf.split().freeze();
        let mut pos = 0;
        need = 0;
        let context = |client: &Client| client.connection().parse_context(max_control_line);
        let mut cx = context(client);
        while pos < frame.len() {
            let parsed = match parser.parse(&frame[pos..], &cx) {
                Ok(p) => p,
                Err(ProtoError::Authorization) if shard.opts().auth.no_auth_user.is_some() => {
                    // nats-server lets such a client in as the no_auth_user.
                    let mut env = ClientEnv { shard, client };
                    let authenticated = client
                        .connection()
                        .authenticate(&ConnectInfo::implicit(), &mut env);
                    if let Err(reason) = authenticated {
                        return reason;
                    }
                    cx = context(client);
                    continue;
                }
                Err(e) => return protocol_error(client, e),
            };
            let (op, n) = match parsed {
                Parsed::Op(op, n) => (op, n),
                Parsed::Incomplete { need: more } => {
                    need = more;
                    break;
                }
                Parsed::Skipped(n) => {
                    pos += n;
                    continue;
                }
                Parsed::PubHead { subject, .. } => {
                    client
                        .connection()
                        .check_publish_head(subject, &mut QueueOut(client));
                    continue;
                }
            };
            let (trace, max_traced) = {
                let opts = shard.opts();
                (opts.trace, opts.max_traced_msg_len)
            };
            if trace {
                trace_op(client, &frame[pos..pos + n], max_traced);
            }
            pos += n;
            let connect = matches!(op, ClientOp::Connect(_));
            let step = {
                let mut env = ClientEnv { shard, client };
                client.connection().handle_op(op, read_at, &mut env)
            };
            if connect {
                cx = context(client);
            }
            match step {
                Step::Continue => {}
                Step::Publish(publish) => route(shard, client, publish, &frame),
                Step::Pong {
                    barrier,
                    connect_info,
                } => {
                    if barrier {
                        shard.barrier().await;
                    }
                    client.queue_bytes(proto::PONG);
                    if connect_info {
                        let mut info = shard.info();
                        info.connect_info = true;
                        info.remote_account = Some(shard.account_name(client.account()));
                        client.queue_bytes(&client.info_line(&info));
                    }
                }
                Step::Close(reason) => return reason,
            }
            if client.is_closing() {
                return CloseReason::ClientClosed;
            }
        }
        if pos < frame.len() {
            // Keep the partial frame; it is copied once, then completed in place.
            buf.reserve(need.max(frame.len() - pos));
            buf.extend_from_slice(&frame[pos..]);
        }
        shard.flush_lanes().await;
        shard.wait_for_stalled().await;
    }
}

fn trace_op(client: &Client, frame: &[u8], max_len: usize) {
    let line_end = memchr::memchr(b'\n', frame).unwrap_or(frame.len());
    let line = String::from_utf8_lossy(&frame[..line_end]);
    let line = line.trim_end_matches('\r');
    tracing::trace!("{} - <<- [{}]", client.log_prefix(), line);
    if line_end + 1 < frame.len() {
        let payload = &frame[line_end + 1..frame.len().saturating_sub(2)];
        let shown = if max_len > 0 && payload.len() > max_len {
            &payload[..max_len]
        } else {
            payload
        };
        let ellipsis = if shown.len() < payload.len() {
            "..."
        } else {
            ""
        };
        tracing::trace!(
            "{} - <<- MSG_PAYLOAD: [{:?}{}]",
            client.log_prefix(),
            String::from_utf8_lossy(shown),
            ellipsis
        );
    }
}

fn protocol_error(client: &Client, e: ProtoError) -> CloseReason {
    if let Some(text) = e.client_text() {
        client.queue_err(text);
    }
    match e {
        ProtoError::Authorization => {
            tracing::error!("{} - authentication error", client.log_prefix_short());
            CloseReason::AuthenticationViolation
        }
        ProtoError::MaxPayload { .. } => {
            tracing::error!("{} - {}", client.log_prefix(), e);
            CloseReason::MaxPayloadExceeded
        }
        ProtoError::MaxControlLine => {
            tracing::error!("{} - Client parser ERROR: {}", client.log_prefix(), e);
            CloseReason::MaxControlLineExceeded
        }
        _ => {
            tracing::error!("{} - Client parser ERROR: {}", client.log_prefix(), e);
            CloseReason::ProtocolViolation
        }
    }
}

/// Routes a publish the connection accepted, once it is no longer borrowed: the
/// publisher's own subscriptions may receive it (and so may a no-responders
/// status, which the router sends).
fn route(shard: &Shard, client: &Client, publish: Publish<'_>, frame: &Bytes) {
    let routed = shard.publish(
        client,
        client.account(),
        publish.subject,
        publish.reply,
        (publish.header_len, publish.zeros),
        publish.message,
        frame,
        publish.no_responders,
    );
    if routed.remote {
        client.connection().note_mesh_traffic();
    }
}

/// The shard and the server's options, as a connection's state machine sees them.
struct ClientEnv<'a> {
    shard: &'a Shard,
    client: &'a Client,
}

impl Outbound for ClientEnv<'_> {
    fn send(&mut self, bytes: &[u8]) {
        self.client.queue_bytes(bytes);
    }

    fn send_err(&mut self, text: &str) {
        self.client.queue_err(text);
    }
}

impl ConnectionEnv for ClientEnv<'_> {
    fn authenticate(
        &mut self,
        info: &ConnectInfo,
        nonce: &[u8],
        log_prefix: &str,
    ) -> Result<Option<Authenticated>, AuthFailure> {
        let opts = self.shard.opts();
        if !opts.auth.required() {
            return Ok(None);
        }
        let map_certificates = opts.tls.as_ref().is_some_and(|t| t.spec.map);
        let tls = self.client.tls_state();
        opts.auth
            .authenticate_connect(map_certificates, log_prefix, tls.as_ref(), info, nonce)
            .map(Some)
    }

    fn bind_account(&mut self, account: u32) -> Result<AccountLimits, AccountFull> {
        self.shard
            .bind_account(self.client, account)
            .map_err(|()| AccountFull)?;
        let opts = self.shard.opts();
        Ok(opts
            .accounts
            .list
            .get(account as usize)
            .map(|spec| spec.limits)
            .unwrap_or_default())
    }

    fn account_name(&self, account: u32) -> String {
        self.shard.opts().accounts.name(account).to_string()
    }

    fn in_system_account(&self) -> bool {
        self.client.account() == self.shard.opts().accounts.system
    }

    fn owner(&self) -> SubscriberId {
        self.client.subscriber_id()
    }

    fn subscribe(&mut self, sub: Rc<Subscription>) -> bool {
        self.shard.add_subscription(self.client.account(), sub)
    }

    fn unsubscribe(&mut self, sub: &Rc<Subscription>) -> bool {
        self.shard.remove_subscription(self.client.account(), sub)
    }

    fn publish_refused(&mut self, bytes: usize) {
        self.shard.note_received(self.client.account(), bytes);
    }
}

async fn write_loop(client: Rc<Client>, stream: Rc<RefCell<Conn>>) {
    let tls = stream.borrow().is_tls();
    let mut spare = BytesMut::with_capacity(4096);
    loop {
        std::future::poll_fn(|cx| {
            if !client.out.borrow().is_empty() || client.is_closing() {
                Poll::Ready(())
            } else {
                client.writer.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        std::mem::swap(&mut spare, &mut *client.out.borrow_mut());
        if spare.is_empty() {
            break; // closing, nothing left to flush
        }
        client.in_flight.set(spare.len());
        client.write_started.set(Some(Instant::now()));
        let mut written = 0;
        let mut failed = false;
        while written < spare.len() {
            match write_some(&stream, &spare[written..]).await {
                Ok(0) | Err(_) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    written += n;
                    client.in_flight.set(spare.len() - written);
                    client.last_progress.set(Instant::now());
                    client.notify_drained();
                }
            }
        }
        // TLS may hold the last records back until flushed.
        if tls && !failed && flush(&stream).await.is_err() {
            failed = true;
        }
        client.write_started.set(None);
        client.in_flight.set(0);
        client.notify_drained();
        spare.clear();
        // Do not keep a huge buffer around after a burst.
        if spare.capacity() > 4 * 1024 * 1024 {
            spare = BytesMut::with_capacity(4096);
        }
        if failed {
            client.begin_close(CloseReason::WriteError);
            break;
        }
    }
    client.notify_drained();
    if tls {
        // Go's tls.Conn.Close sends close_notify; a peer that does not read loses it.
        stream.borrow_mut().send_close_notify();
        let give_up = async {
            glommio::timer::sleep(crate::tls::LAST_WORDS).await;
            Ok(())
        };
        let _ = futures_lite::future::or(flush(&stream), give_up).await;
    }
    client.shutdown_socket();
}
