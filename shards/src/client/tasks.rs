//! The two tasks of a client connection: a reader that parses and processes what
//! the client sends (routing its messages through its shard), and a writer that
//! flushes the coalesced outbound buffer.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::{Client, CloseReason};
use crate::connection::{
    check_connect, check_publish, check_subscribe, pong_carries_connect_info, ConnectViolation,
    SubscribeVerdict,
};
use crate::proto::{
    self, ClientOp, ConnectInfo, ParseContext, ParseLimits, Parsed, Parser, ProtoError,
};
use crate::router::Subscription;
use crate::shard::Shard;
use crate::subject;
use crate::tls::Conn;

/// What processing one operation asks of the read loop.
enum Next {
    Continue,
    /// PING: answer after the interest barrier if one is owed.
    Pong,
    Close(CloseReason),
}

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
            client.last_activity.set(Instant::now());
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
        // CONNECT may lower the payload limit to its account's and turn headers
        // on; authentication ends the CONNECT-only phase.
        let context = |client: &Client| ParseContext {
            limits: ParseLimits {
                max_control_line,
                max_payload: client.max_payload.get(),
            },
            awaiting_auth: client.awaiting_auth(),
            headers: client.headers(),
        };
        let mut cx = context(client);
        while pos < frame.len() {
            let parsed = match parser.parse(&frame[pos..], &cx) {
                Ok(p) => p,
                Err(ProtoError::Authorization) if shard.opts().auth.no_auth_user.is_some() => {
                    // nats-server lets such a client in as the no_auth_user.
                    if let Next::Close(reason) =
                        authenticate(shard, client, &ConnectInfo::implicit())
                    {
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
                    check_publish_subject(client, subject);
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
            let next = process_op(shard, client, op, &frame);
            if connect {
                cx = context(client);
            }
            match next {
                Next::Continue => {}
                Next::Pong => {
                    if client.mesh_dirty.replace(false) {
                        shard.barrier().await;
                    }
                    client.heard_from();
                    client.queue_bytes(proto::PONG);
                    // nats-server: the first PING after CONNECT, from a client of
                    // protocol 1, also gets the INFO with connect_info.
                    // The first PONG counts only once CONNECT was seen.
                    let connected = client.connect_seen.get();
                    let pong_sent = connected && client.first_pong_sent.replace(true);
                    let connect_info = pong_carries_connect_info(
                        connected,
                        pong_sent,
                        client.connect.borrow().protocol,
                    );
                    if connect_info {
                        let mut info = shard.info();
                        info.connect_info = true;
                        info.remote_account = Some(shard.account_name(client.account()));
                        client.queue_bytes(&client.info_line(&info));
                    }
                }
                Next::Close(reason) => return reason,
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

/// In pedantic mode a PUB's subject must be a valid literal one. nats-server
/// reports it and still delivers the message.
fn check_publish_subject(client: &Client, subject: &[u8]) {
    if client.connect.borrow().pedantic && !subject::is_valid_literal_subject(subject) {
        client.queue_err("Invalid Publish Subject");
    }
}

/// Authenticates `info`'s credentials when the server requires any and binds the
/// client to the account they belong to; nats-server runs this on every CONNECT.
fn authenticate(shard: &Rc<Shard>, client: &Rc<Client>, info: &ConnectInfo) -> Next {
    let opts = shard.opts();
    if opts.auth.required() {
        let nonce = client.nonce.borrow().clone();
        let map_certificates = opts.tls.as_ref().is_some_and(|t| t.spec.map);
        let tls = client.tls_state();
        let prefix = client.log_prefix_short();
        let authenticated = opts.auth.authenticate_connect(
            map_certificates,
            &prefix,
            tls.as_ref(),
            info,
            nonce.as_bytes(),
        );
        match authenticated {
            Ok(standing) => {
                if shard.bind_account(client, standing.account).is_err() {
                    tracing::error!(
                        "{} - maximum account active connections exceeded",
                        client.log_prefix()
                    );
                    client.queue_err("maximum account active connections exceeded");
                    return Next::Close(CloseReason::MaxAccountConnectionsExceeded);
                }
                apply_account_limits(shard, client);
                *client.auth_label.borrow_mut() = Some(format!(
                    "{}/{}",
                    opts.accounts.name(standing.account),
                    standing.identity.label()
                ));
                client.set_permissions(standing.permissions);
                *client.identity.borrow_mut() = Some(standing.identity);
            }
            Err(failure) => {
                tracing::error!("{} - {}", client.log_prefix_short(), failure.detail);
                client.queue_err("Authorization Violation");
                return Next::Close(CloseReason::AuthenticationViolation);
            }
        }
    }
    client.authenticated();
    Next::Continue
}

fn process_op(shard: &Rc<Shard>, client: &Rc<Client>, op: ClientOp<'_>, frame: &Bytes) -> Next {
    let verbose = || client.connect.borrow().verbose;
    match op {
        ClientOp::Ping => Next::Pong,
        ClientOp::Pong => {
            client.heard_from();
            Next::Continue
        }
        ClientOp::Ok => Next::Continue,
        ClientOp::Info(json) => {
            // nats-server decodes it into its INFO type: null or an object.
            match serde_json::from_slice::<serde_json::Value>(json) {
                Ok(serde_json::Value::Null | serde_json::Value::Object(_)) => Next::Continue,
                Ok(_) => {
                    tracing::error!(
                        "{} - Client parser ERROR: INFO is not an object",
                        client.log_prefix()
                    );
                    Next::Close(CloseReason::ProtocolViolation)
                }
                Err(e) => {
                    tracing::error!("{} - Client parser ERROR: {}", client.log_prefix(), e);
                    Next::Close(CloseReason::ProtocolViolation)
                }
            }
        }
        ClientOp::Err(text) => {
            tracing::error!(
                "{} - Client Error {}",
                client.log_prefix(),
                String::from_utf8_lossy(text)
            );
            Next::Close(CloseReason::ParseError)
        }
        ClientOp::Connect(json) => {
            let decoded = client.connect.borrow().decode_over(json);
            let info = match decoded {
                Ok(i) => i,
                Err(e) => {
                    tracing::error!("{} - Client parser ERROR: {}", client.log_prefix(), e);
                    return Next::Close(CloseReason::ProtocolViolation);
                }
            };
            // A later CONNECT starts over: nats-server drops the subscriptions
            // registered so far (they could belong to another account).
            let first_connect = !client.connect_seen.replace(true);
            if !first_connect {
                for sub in client.take_subs() {
                    if shard.remove_subscription(client.account(), &sub) {
                        client.mesh_dirty.set(true);
                    }
                }
            }
            *client.connect.borrow_mut() = info.clone();
            if let Next::Close(reason) = authenticate(shard, client, &info) {
                return Next::Close(reason);
            }
            if let Err(violation) = check_connect(&info) {
                if violation == ConnectViolation::AccountRequested {
                    tracing::error!("{} - authentication error", client.log_prefix_short());
                }
                client.queue_err(violation.client_text());
                return Next::Close(violation.close_reason());
            }
            client.echo.set(info.echo);
            client.headers.set(info.headers);
            if info.verbose {
                client.queue_bytes(proto::OK);
            }
            Next::Continue
        }
        ClientOp::Pub {
            subject,
            reply,
            header_len,
            message,
            head_checked,
            zeros,
            ..
        } => {
            let (pedantic, no_responders, verbose) = {
                let c = client.connect.borrow();
                (c.pedantic, c.no_responders, c.verbose)
            };
            if pedantic && !head_checked && !subject::is_valid_literal_subject(subject) {
                client.queue_err("Invalid Publish Subject");
            }
            client
                .counters
                .in_msgs
                .set(client.counters.in_msgs.get() + 1);
            client
                .counters
                .in_bytes
                .set(client.counters.in_bytes.get() + message.len() as u64);
            let account = client.account();
            let in_system_account = || account == shard.opts().accounts.system;
            let checked = check_publish(
                subject,
                reply,
                client.permissions.borrow().as_deref(),
                |perms| client.response_allowed(perms, subject),
                in_system_account,
            );
            if let Err(violation) = checked {
                shard.note_received(account, message.len());
                client.queue_err(&violation.client_text());
                tracing::error!("{} - {}", client.log_prefix(), violation.log_text());
                return Next::Continue;
            }
            if verbose {
                client.queue_bytes(proto::OK);
            }
            let routed = shard.publish(
                client,
                account,
                subject,
                reply,
                (header_len, zeros),
                message,
                frame,
            );
            if routed.remote {
                client.mesh_dirty.set(true);
            }
            if !routed.any() && !reply.is_empty() && no_responders {
                shard.no_responders(client, subject, reply);
            }
            Next::Continue
        }
        ClientOp::Sub {
            subject: subj,
            queue,
            sid,
        } => {
            let permissions = client.permissions();
            let verdict = check_subscribe(
                subj,
                queue,
                permissions.as_deref(),
                (client.subs.borrow().len(), client.max_subscriptions.get()),
                client.subs.borrow().contains_key(sid),
            );
            if let Some(text) = verdict.client_text() {
                client.queue_err(&text);
            }
            match &verdict {
                SubscribeVerdict::Accept => {}
                SubscribeVerdict::Ignore => {
                    if verbose() {
                        client.queue_bytes(proto::OK);
                    }
                    return Next::Continue;
                }
                SubscribeVerdict::Denied { subject, queue } => {
                    let sid = String::from_utf8_lossy(sid);
                    match queue {
                        Some(queue) => tracing::error!(
                            "{} - Subscription Violation - Subject {}, Queue: {}, SID {}",
                            client.log_prefix(),
                            subject,
                            queue,
                            sid
                        ),
                        None => tracing::error!(
                            "{} - Subscription Violation - Subject {}, SID {}",
                            client.log_prefix(),
                            subject,
                            sid
                        ),
                    }
                    return Next::Continue;
                }
                SubscribeVerdict::MaxSubscriptions(max) => {
                    tracing::error!(
                        "{} - Maximum Subscriptions Exceeded (max {})",
                        client.log_prefix(),
                        max
                    );
                    return Next::Continue;
                }
                SubscribeVerdict::InvalidSubject => return Next::Continue,
            }
            {
                // Copied so the subscription does not pin the whole read buffer.
                let sub = Rc::new(Subscription {
                    owner: client.subscriber_id(),
                    sid: Bytes::copy_from_slice(sid),
                    subject: Bytes::copy_from_slice(subj),
                    queue: queue.map(Bytes::copy_from_slice),
                    max: Cell::new(0),
                    delivered: Cell::new(0),
                    delivery_filter: permissions
                        .as_ref()
                        .is_some_and(|p| p.needs_delivery_filter(subj, queue.is_some())),
                    detached: Cell::new(false),
                });
                client
                    .subs
                    .borrow_mut()
                    .insert(sub.sid.clone(), sub.clone());
                if shard.add_subscription(client.account(), sub) {
                    client.mesh_dirty.set(true);
                }
            }
            if verbose() {
                client.queue_bytes(proto::OK);
            }
            Next::Continue
        }
        ClientOp::Unsub { sid, max } => {
            let sub = client.subs.borrow().get(sid).cloned();
            if let Some(sub) = sub {
                match max {
                    Some(max) if max > 0 && sub.delivered.get() < max => sub.max.set(max),
                    _ => {
                        client.forget_sub(sid);
                        if shard.remove_subscription(client.account(), &sub) {
                            client.mesh_dirty.set(true);
                        }
                    }
                }
            }
            if verbose() {
                client.queue_bytes(proto::OK);
            }
            Next::Continue
        }
    }
}

/// Lowers the connection's payload and subscription limits to its account's.
fn apply_account_limits(shard: &Shard, client: &Client) {
    let opts = shard.opts();
    let Some(spec) = opts.accounts.list.get(client.account() as usize) else {
        return;
    };
    if let Some(max) = spec.limits.max_payload {
        client.max_payload.set(client.max_payload.get().min(max));
    }
    if let Some(max) = spec.limits.max_subscriptions {
        let current = client.max_subscriptions.get();
        client
            .max_subscriptions
            .set(if current == 0 { max } else { current.min(max) });
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
