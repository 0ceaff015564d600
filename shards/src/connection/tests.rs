//! The connection state machine driven by hand, without a runtime: what it sends,
//! what it asks the environment for and what it hands back, with time passed in.

use std::sync::Arc;

use super::*;
use crate::permissions::{ResponsePermission, SubjectPermission};

const SEC: Duration = Duration::from_secs(1);
const PING_EVERY: (Duration, u32) = (Duration::from_secs(120), 2);

/// A server around one connection: users `a`/`b` in accounts 1/2 when
/// authentication is on, and a router that only records.
#[derive(Default)]
struct Env {
    out: Vec<u8>,
    auth_required: bool,
    permissions: Option<Arc<Permissions>>,
    account_full: bool,
    limits: AccountLimits,
    account: u32,
    system_account: u32,
    subscribed: Vec<Rc<Subscription>>,
    unsubscribed: Vec<Bytes>,
    refused_bytes: usize,
    nonces_seen: Vec<Vec<u8>>,
}

impl Env {
    fn secured() -> Self {
        Env {
            auth_required: true,
            system_account: 9,
            ..Env::default()
        }
    }

    /// What was sent since the last call.
    fn take_out(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.out)).unwrap()
    }
}

impl Outbound for Env {
    fn send(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn send_err(&mut self, text: &str) {
        self.out
            .extend_from_slice(format!("-ERR '{text}'\r\n").as_bytes());
    }
}

impl ConnectionEnv for Env {
    fn authenticate(
        &mut self,
        info: &ConnectInfo,
        nonce: &[u8],
        _log_prefix: &str,
    ) -> Result<Option<Authenticated>, AuthFailure> {
        self.nonces_seen.push(nonce.to_vec());
        if !self.auth_required {
            return Ok(None);
        }
        let account = match (info.user.as_deref(), info.pass.as_deref()) {
            (Some("a"), Some("pw")) => 1,
            (Some("b"), Some("pw")) => 2,
            _ => {
                return Err(AuthFailure {
                    detail: "bad credentials".into(),
                })
            }
        };
        Ok(Some(Authenticated {
            identity: Identity::User(info.user.clone().unwrap_or_default()),
            account,
            permissions: self.permissions.clone(),
        }))
    }

    fn bind_account(&mut self, account: u32) -> Result<AccountLimits, AccountFull> {
        if self.account_full {
            return Err(AccountFull);
        }
        self.account = account;
        Ok(self.limits)
    }

    fn account_name(&self, account: u32) -> String {
        format!("ACC{account}")
    }

    fn in_system_account(&self) -> bool {
        self.account == self.system_account
    }

    fn owner(&self) -> SubscriberId {
        SubscriberId(7)
    }

    fn subscribe(&mut self, sub: Rc<Subscription>) -> bool {
        self.subscribed.push(sub);
        true
    }

    fn unsubscribe(&mut self, sub: &Rc<Subscription>) -> bool {
        self.unsubscribed.push(sub.sid.clone());
        true
    }

    fn publish_refused(&mut self, bytes: usize) {
        self.refused_bytes += bytes;
    }
}

fn connection(t0: Instant) -> Connection {
    Connection::new(
        "127.0.0.1:4000".parse().unwrap(),
        5,
        t0 + PING_EVERY.0,
        (1024, 0),
    )
}

/// A connection that required authentication and sent `json` as its CONNECT.
fn logged_in(t0: Instant, env: &mut Env, json: &str) -> Connection {
    let mut c = connection(t0);
    c.require_auth(String::new(), t0 + SEC);
    c.handle_op(connect(json), t0, env);
    c
}

fn pub_op<'a>(subject: &'a str, reply: &'a str, payload: &'a str) -> ClientOp<'a> {
    ClientOp::Pub {
        subject: subject.as_bytes(),
        reply: reply.as_bytes(),
        header_len: 0,
        message: payload.as_bytes(),
        hpub: false,
        head_checked: false,
        zeros: SizeZeros::default(),
    }
}

fn sub_op<'a>(subject: &'a str, queue: Option<&'a str>, sid: &'a str) -> ClientOp<'a> {
    ClientOp::Sub {
        subject: subject.as_bytes(),
        queue: queue.map(str::as_bytes),
        sid: sid.as_bytes(),
    }
}

/// CONNECT as sent; nats-server's default, when a client omits it, is verbose.
fn connect<'a>(json: &'a str) -> ClientOp<'a> {
    ClientOp::Connect(json.as_bytes())
}

fn published(step: Step<'_>) -> Publish<'_> {
    match step {
        Step::Publish(p) => p,
        other => panic!("expected a publish, got {other:?}"),
    }
}

#[test]
fn authentication_deadline_and_credentials() {
    let t0 = Instant::now();
    let mut env = Env::secured();
    let mut c = connection(t0);
    c.require_auth("NONCE".into(), t0 + 2 * SEC);
    assert!(c.parse_context(4096).awaiting_auth);
    assert_eq!(c.poll_timeout(), t0 + 2 * SEC);
    // The TLS handshake moves the deadline.
    c.restart_auth_deadline(t0 + 3 * SEC);
    assert_eq!(c.handle_timeout(t0 + 2 * SEC, PING_EVERY, &mut env), None);
    assert_eq!(
        c.handle_timeout(t0 + 3 * SEC, PING_EVERY, &mut env),
        Some(Due::AuthTimeout)
    );
    assert_eq!(env.take_out(), "-ERR 'Authentication Timeout'\r\n");

    // Wrong credentials: refused and closed, still awaiting authentication.
    let mut c = connection(t0);
    c.require_auth("NONCE".into(), t0 + 2 * SEC);
    let step = c.handle_op(connect(r#"{"user":"a","pass":"no"}"#), t0, &mut env);
    assert_eq!(step, Step::Close(CloseReason::AuthenticationViolation));
    assert_eq!(env.take_out(), "-ERR 'Authorization Violation'\r\n");
    assert!(c.awaiting_auth());
    assert_eq!(env.nonces_seen.last().unwrap(), b"NONCE");

    // Right ones: bound to the user's account, the deadline gone, the label kept.
    let step = c.handle_op(
        connect(
            r#"{"user":"a","pass":"pw","verbose":true,"name":"app","lang":"rust","version":"1"}"#,
        ),
        t0,
        &mut env,
    );
    assert_eq!(step, Step::Continue);
    assert_eq!(env.take_out(), "+OK\r\n");
    assert_eq!(env.account, 1);
    assert!(!c.awaiting_auth());
    assert_eq!(c.poll_timeout(), t0 + PING_EVERY.0);
    assert_eq!(c.identity(), Some(&Identity::User("a".into())));
    assert_eq!(
        c.log_prefix(),
        "127.0.0.1:4000 - cid:5 - \"v1:rust:app\" - \"ACC1/user:a\""
    );
}

#[test]
fn a_full_account_refuses_the_connection() {
    let t0 = Instant::now();
    let mut env = Env::secured();
    env.account_full = true;
    let mut c = connection(t0);
    c.require_auth(String::new(), t0 + SEC);
    let step = c.handle_op(connect(r#"{"user":"b","pass":"pw"}"#), t0, &mut env);
    assert_eq!(
        step,
        Step::Close(CloseReason::MaxAccountConnectionsExceeded)
    );
    assert_eq!(
        env.take_out(),
        "-ERR 'maximum account active connections exceeded'\r\n"
    );
}

#[test]
fn connect_options_are_checked_after_credentials() {
    let t0 = Instant::now();
    let mut env = Env::default();
    let mut c = connection(t0);
    let step = c.handle_op(connect(r#"{"no_responders":true}"#), t0, &mut env);
    assert_eq!(step, Step::Close(CloseReason::ProtocolViolation));
    assert_eq!(
        env.take_out(),
        "-ERR 'no responders requires headers support'\r\n"
    );
    let mut c = connection(t0);
    let step = c.handle_op(connect("{bad json"), t0, &mut env);
    assert_eq!(step, Step::Close(CloseReason::ProtocolViolation));
}

#[test]
fn account_limits_lower_the_connections() {
    let t0 = Instant::now();
    let mut env = Env::secured();
    env.limits = AccountLimits {
        max_connections: None,
        max_subscriptions: Some(2),
        max_payload: Some(100),
    };
    let mut c = logged_in(t0, &mut env, r#"{"user":"a","pass":"pw","verbose":false}"#);
    assert_eq!(c.parse_context(4096).limits.max_payload, 100);
    for sid in ["1", "2", "3"] {
        assert_eq!(
            c.handle_op(sub_op("x", None, sid), t0, &mut env),
            Step::Continue
        );
    }
    assert_eq!(env.subscribed.len(), 2);
    assert_eq!(c.subscription_count(), 2);
    assert_eq!(env.take_out(), "-ERR 'maximum subscriptions exceeded'\r\n");
    // A smaller server limit stays.
    let mut c = Connection::new("127.0.0.1:1".parse().unwrap(), 6, t0, (50, 1));
    c.require_auth(String::new(), t0 + SEC);
    c.handle_op(connect(r#"{"user":"a","pass":"pw"}"#), t0, &mut env);
    assert_eq!(c.parse_context(4096).limits.max_payload, 50);
}

#[test]
fn pings_until_stale_and_answers_reset_them() {
    let t0 = Instant::now();
    let mut env = Env::default();
    let mut c = connection(t0);
    let every = PING_EVERY.0;
    assert_eq!(c.poll_timeout(), t0 + every);
    assert_eq!(
        c.handle_timeout(t0 + every, PING_EVERY, &mut env),
        Some(Due::Ping)
    );
    assert_eq!(
        c.handle_timeout(t0 + 2 * every, PING_EVERY, &mut env),
        Some(Due::Ping)
    );
    assert_eq!(env.take_out(), "PING\r\nPING\r\n");
    // A PONG from the client: the count starts over.
    c.handle_op(ClientOp::Pong, t0, &mut env);
    assert_eq!(
        c.handle_timeout(t0 + 3 * every, PING_EVERY, &mut env),
        Some(Due::Ping)
    );
    assert_eq!(
        c.handle_timeout(t0 + 4 * every, PING_EVERY, &mut env),
        Some(Due::Ping)
    );
    assert_eq!(
        c.handle_timeout(t0 + 5 * every, PING_EVERY, &mut env),
        Some(Due::Stale)
    );
    assert!(env.take_out().ends_with("-ERR 'Stale Connection'\r\n"));
}

#[test]
fn pong_waits_for_peers_and_carries_connect_info_once() {
    let t0 = Instant::now();
    let mut env = Env::default();
    let mut c = connection(t0);
    // Before CONNECT: a plain PONG.
    assert_eq!(
        c.handle_op(ClientOp::Ping, t0, &mut env),
        Step::Pong {
            barrier: false,
            connect_info: false
        }
    );
    c.handle_op(connect(r#"{"protocol":1}"#), t0, &mut env);
    c.handle_op(sub_op("a", None, "1"), t0, &mut env);
    assert_eq!(
        c.handle_op(ClientOp::Ping, t0, &mut env),
        Step::Pong {
            barrier: true,
            connect_info: true
        }
    );
    assert_eq!(
        c.handle_op(ClientOp::Ping, t0, &mut env),
        Step::Pong {
            barrier: false,
            connect_info: false
        }
    );
    // A routed publish owes the next PONG a barrier.
    c.note_mesh_traffic();
    assert_eq!(
        c.handle_op(ClientOp::Ping, t0, &mut env),
        Step::Pong {
            barrier: true,
            connect_info: false
        }
    );
}

#[test]
fn publish_permissions_and_reserved_subjects() {
    let t0 = Instant::now();
    let mut env = Env::secured();
    env.permissions = Some(Arc::new(Permissions {
        publish: SubjectPermission::new(Some(&["ok.>".to_string()]), &[], false).unwrap(),
        subscribe: SubjectPermission::new(None, &[], true).unwrap(),
        responses: None,
    }));
    let mut c = logged_in(
        t0,
        &mut env,
        r#"{"user":"a","pass":"pw","verbose":false,"headers":true,"no_responders":true}"#,
    );
    let p = published(c.handle_op(pub_op("ok.1", "inbox.1", "hello"), t0, &mut env));
    assert_eq!(
        (p.subject, p.reply, p.message),
        (&b"ok.1"[..], &b"inbox.1"[..], &b"hello"[..])
    );
    assert!(p.no_responders);
    assert!(!published(c.handle_op(pub_op("ok.1", "", "x"), t0, &mut env)).no_responders);

    assert_eq!(
        c.handle_op(pub_op("no", "", "12345"), t0, &mut env),
        Step::Continue
    );
    assert_eq!(
        env.take_out(),
        "-ERR 'Permissions Violation for Publish to \"no\"'\r\n"
    );
    assert_eq!(env.refused_bytes, 5);
    assert_eq!(
        c.handle_op(pub_op("ok.2", "_R_.x", ""), t0, &mut env),
        Step::Continue
    );
    assert_eq!(
        env.take_out(),
        "-ERR 'Permissions Violation for Publish with Reply of \"_R_.x\"'\r\n"
    );
    // Raft subjects belong to the system account.
    assert_eq!(
        c.handle_op(pub_op("$NRG.x", "", ""), t0, &mut env),
        Step::Continue
    );
    assert!(env.take_out().starts_with("-ERR"));
    // Every PUB counts as received, refused or not.
    assert_eq!(c.received(), (5, 11));
}

#[test]
fn responses_may_go_to_requests_received_until_used_or_expired() {
    let t0 = Instant::now();
    let mut env = Env::secured();
    env.permissions = Some(Arc::new(
        Permissions {
            publish: SubjectPermission::new(None, &[], false).unwrap(),
            subscribe: SubjectPermission::new(None, &[], true).unwrap(),
            responses: None,
        }
        .with_responses(ResponsePermission {
            max_msgs: Some(1),
            expires: Some(10 * SEC),
        }),
    ));
    let mut c = logged_in(t0, &mut env, r#"{"user":"a","pass":"pw"}"#);
    assert_eq!(
        c.handle_op(pub_op("reply.1", "", ""), t0, &mut env),
        Step::Continue
    );
    env.take_out();
    c.note_request(b"reply.1", t0);
    c.note_request(b"reply.2", t0);
    published(c.handle_op(pub_op("reply.1", "", ""), t0 + SEC, &mut env));
    // One response each.
    assert_eq!(
        c.handle_op(pub_op("reply.1", "", ""), t0 + SEC, &mut env),
        Step::Continue
    );
    // And only within the time allowed.
    assert_eq!(
        c.handle_op(pub_op("reply.2", "", ""), t0 + 11 * SEC, &mut env),
        Step::Continue
    );
    assert_eq!(
        env.take_out()
            .matches("Permissions Violation for Publish")
            .count(),
        2
    );
}

#[test]
fn subscribe_permissions_sids_and_unsubscribe() {
    let t0 = Instant::now();
    let mut env = Env::secured();
    env.permissions = Some(Arc::new(Permissions {
        publish: SubjectPermission::new(None, &[], false).unwrap(),
        subscribe: SubjectPermission::new(None, &["secret.>".to_string()], true).unwrap(),
        responses: None,
    }));
    let mut c = logged_in(t0, &mut env, r#"{"user":"a","pass":"pw","verbose":true}"#);
    env.take_out();
    c.handle_op(sub_op("secret.x", None, "1"), t0, &mut env);
    assert_eq!(
        env.take_out(),
        "-ERR 'Permissions Violation for Subscription to \"secret.x\"'\r\n"
    );
    c.handle_op(sub_op("a", Some("_sys_"), "1"), t0, &mut env);
    assert!(env.take_out().contains("using queue \"_sys_\""));
    c.handle_op(sub_op("a..b", None, "1"), t0, &mut env);
    assert_eq!(env.take_out(), "-ERR 'Invalid Subject'\r\n");
    assert!(env.subscribed.is_empty());

    // A wildcard over the deny list is filtered per delivery.
    c.handle_op(sub_op(">", Some("q"), "1"), t0, &mut env);
    assert_eq!(env.take_out(), "+OK\r\n");
    let sub = env.subscribed[0].clone();
    assert_eq!(
        (sub.owner, &sub.sid[..], sub.queue.as_deref()),
        (SubscriberId(7), &b"1"[..], Some(&b"q"[..]))
    );
    assert!(sub.delivery_filter);
    assert!(c.delivery_denied(b"secret.y"));
    // The same sid again is ignored, with +OK.
    c.handle_op(sub_op("other", None, "1"), t0, &mut env);
    assert_eq!(env.take_out(), "+OK\r\n");
    assert_eq!(env.subscribed.len(), 1);

    // UNSUB with a max still to reach keeps it; one already reached removes it.
    c.handle_op(
        ClientOp::Unsub {
            sid: b"1",
            max: Some(3),
        },
        t0,
        &mut env,
    );
    assert_eq!(sub.max.get(), 3);
    assert!(env.unsubscribed.is_empty());
    sub.delivered.set(3);
    c.handle_op(
        ClientOp::Unsub {
            sid: b"1",
            max: Some(3),
        },
        t0,
        &mut env,
    );
    assert_eq!(env.unsubscribed, vec![Bytes::from_static(b"1")]);
    assert_eq!(c.subscription_count(), 0);
    // An unknown sid is no error.
    c.handle_op(
        ClientOp::Unsub {
            sid: b"9",
            max: None,
        },
        t0,
        &mut env,
    );
    assert_eq!(env.take_out(), "+OK\r\n+OK\r\n+OK\r\n");
}

#[test]
fn a_second_connect_starts_over() {
    let t0 = Instant::now();
    let mut env = Env::default();
    let mut c = connection(t0);
    c.handle_op(connect("{}"), t0, &mut env);
    c.handle_op(sub_op("a", None, "1"), t0, &mut env);
    c.handle_op(sub_op("b", None, "2"), t0, &mut env);
    c.handle_op(connect(r#"{"echo":false,"headers":true}"#), t0, &mut env);
    env.unsubscribed.sort();
    assert_eq!(
        env.unsubscribed,
        vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")]
    );
    assert_eq!(c.subscription_count(), 0);
    assert!(!c.echo());
    assert!(c.headers() && c.parse_context(4096).headers);
}

#[test]
fn pedantic_publish_subjects_and_client_errors() {
    let t0 = Instant::now();
    let mut env = Env::default();
    let mut c = connection(t0);
    c.handle_op(
        connect(r#"{"pedantic":true,"verbose":false}"#),
        t0,
        &mut env,
    );
    // Reported, and still delivered, as nats-server does.
    published(c.handle_op(pub_op("a.*", "", ""), t0, &mut env));
    assert_eq!(env.take_out(), "-ERR 'Invalid Publish Subject'\r\n");
    assert_eq!(
        c.handle_op(ClientOp::Info(b"[1]"), t0, &mut env),
        Step::Close(CloseReason::ProtocolViolation)
    );
    assert_eq!(
        c.handle_op(ClientOp::Info(b"{}"), t0, &mut env),
        Step::Continue
    );
    assert_eq!(
        c.handle_op(ClientOp::Err(b"'x'"), t0, &mut env),
        Step::Close(CloseReason::ParseError)
    );
}
