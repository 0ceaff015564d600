//! The rules of one client connection that need no socket, clock or shard: when
//! it must be pinged, declared stale or timed out before authenticating (time is
//! passed in, as `poll_timeout`/`handle_timeout`), and whether what it publishes
//! or subscribes to is allowed, with nats-server's error texts. The connection
//! shell (`client::tasks`, `shard`) applies what these decide.

use std::fmt;
use std::time::{Duration, Instant};

use crate::permissions::Permissions;
use crate::proto::{self, ConnectInfo};
use crate::subject;

/// Why a connection was closed, spelled as nats-server reports it in /connz.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    ServerShutdown,
    AuthenticationTimeout,
    AuthenticationViolation,
    SlowConsumerPendingBytes,
    SlowConsumerWriteDeadline,
    StaleConnection,
    ProtocolViolation,
    ParseError,
    MaxPayloadExceeded,
    MaxControlLineExceeded,
    MaxConnectionsExceeded,
    MaxAccountConnectionsExceeded,
    ReadError,
    WriteError,
    TlsHandshakeError,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloseReason::ClientClosed => "Client Closed",
            CloseReason::ServerShutdown => "Server Shutdown",
            CloseReason::AuthenticationTimeout => "Authentication Timeout",
            CloseReason::AuthenticationViolation => "Authentication Failure",
            CloseReason::SlowConsumerPendingBytes => "Slow Consumer (Pending Bytes)",
            CloseReason::SlowConsumerWriteDeadline => "Slow Consumer (Write Deadline)",
            CloseReason::StaleConnection => "Stale Connection",
            CloseReason::ProtocolViolation => "Protocol Violation",
            CloseReason::ParseError => "Parse Error",
            CloseReason::MaxPayloadExceeded => "Maximum Message Payload Exceeded",
            CloseReason::MaxControlLineExceeded => "Maximum Control Line Exceeded",
            CloseReason::MaxConnectionsExceeded => "Maximum Connections Exceeded",
            CloseReason::MaxAccountConnectionsExceeded => "Maximum Account Connections Exceeded",
            CloseReason::ReadError => "Read Error",
            CloseReason::WriteError => "Write Error",
            CloseReason::TlsHandshakeError => "TLS Handshake Failure",
        })
    }
}

impl CloseReason {
    /// Slow consumers lose what is pending; everyone else gets it flushed.
    pub fn discards_output(self) -> bool {
        matches!(
            self,
            CloseReason::SlowConsumerPendingBytes
                | CloseReason::SlowConsumerWriteDeadline
                | CloseReason::WriteError
        )
    }
}

/// Why CONNECT's options were refused (after its credentials were accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectViolation {
    /// An account asked for by name: nats-server only binds accounts by user.
    AccountRequested,
    InvalidProtocol,
    NoRespondersWithoutHeaders,
}

impl ConnectViolation {
    /// The `-ERR` text nats-server sends.
    pub fn client_text(self) -> &'static str {
        match self {
            ConnectViolation::AccountRequested => "Authorization Violation",
            ConnectViolation::InvalidProtocol => "invalid client protocol",
            ConnectViolation::NoRespondersWithoutHeaders => {
                "no responders requires headers support"
            }
        }
    }

    pub fn close_reason(self) -> CloseReason {
        match self {
            ConnectViolation::AccountRequested => CloseReason::AuthenticationViolation,
            _ => CloseReason::ProtocolViolation,
        }
    }
}

/// nats-server's checks of CONNECT's options, in its order.
pub fn check_connect(info: &ConnectInfo) -> Result<(), ConnectViolation> {
    if info.account.as_deref().is_some_and(|a| !a.is_empty()) || info.new_account {
        return Err(ConnectViolation::AccountRequested);
    }
    if info.protocol < 0 || info.protocol > 1 {
        return Err(ConnectViolation::InvalidProtocol);
    }
    if info.no_responders && !info.headers {
        return Err(ConnectViolation::NoRespondersWithoutHeaders);
    }
    Ok(())
}

/// Whether the PONG to this PING also carries an INFO with `connect_info`:
/// nats-server sends it once, to the first PING after CONNECT of a protocol 1
/// client.
pub fn pong_carries_connect_info(connected: bool, first_pong_sent: bool, protocol: i64) -> bool {
    connected && !first_pong_sent && protocol >= 1
}

/// The deadlines of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// While authentication is required and no CONNECT passed yet.
    auth_deadline: Option<Instant>,
    next_ping: Instant,
    pings_out: u32,
}

/// What a deadline that passed asks of the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// `-ERR 'Authentication Timeout'`, then close.
    AuthTimeout,
    /// `-ERR 'Stale Connection'`, then close: too many PINGs unanswered.
    Stale,
    /// Send a PING.
    Ping,
}

impl Liveness {
    pub fn new(first_ping: Instant) -> Self {
        Liveness {
            auth_deadline: None,
            next_ping: first_ping,
            pings_out: 0,
        }
    }

    /// CONNECT with valid credentials is required before `deadline`.
    pub fn require_auth(&mut self, deadline: Instant) {
        self.auth_deadline = Some(deadline);
    }

    /// Moves a pending authentication deadline (nats-server starts it after the
    /// TLS handshake).
    pub fn restart_auth(&mut self, deadline: Instant) {
        if self.auth_deadline.is_some() {
            self.auth_deadline = Some(deadline);
        }
    }

    pub fn authenticated(&mut self) {
        self.auth_deadline = None;
    }

    pub fn awaiting_auth(&self) -> bool {
        self.auth_deadline.is_some()
    }

    /// The client answered (PONG) or showed it is alive (PING).
    pub fn heard_from(&mut self) {
        self.pings_out = 0;
    }

    pub fn pings_outstanding(&self) -> u32 {
        self.pings_out
    }

    /// When `handle_timeout` has something to do next.
    pub fn poll_timeout(&self) -> Instant {
        match self.auth_deadline {
            Some(d) => d.min(self.next_ping),
            None => self.next_ping,
        }
    }

    /// What is due at `now`; a PING counts as sent.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        ping_interval: Duration,
        ping_max: u32,
    ) -> Option<Due> {
        if self.auth_deadline.is_some_and(|d| now >= d) {
            return Some(Due::AuthTimeout);
        }
        if now < self.next_ping {
            return None;
        }
        if self.pings_out >= ping_max {
            return Some(Due::Stale);
        }
        self.pings_out += 1;
        self.next_ping = now + ping_interval;
        Some(Due::Ping)
    }
}

/// Why a PUB was refused (the message is dropped; the connection stays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishViolation {
    /// Not allowed to publish to the subject.
    Subject(String),
    /// A reply subject only the server may hand out.
    Reply(String),
}

impl PublishViolation {
    /// The `-ERR` text nats-server sends.
    pub fn client_text(&self) -> String {
        match self {
            PublishViolation::Subject(s) => format!("Permissions Violation for Publish to {s}"),
            PublishViolation::Reply(r) => {
                format!("Permissions Violation for Publish with Reply of {r}")
            }
        }
    }

    /// What nats-server logs.
    pub fn log_text(&self) -> String {
        match self {
            PublishViolation::Subject(s) => format!("Publish Violation - Subject {s}"),
            PublishViolation::Reply(r) => format!("Publish Violation - Reply {r}"),
        }
    }
}

/// nats-server's checks of a PUB, in its order: gateway-routed subjects,
/// permissions (`responds` says whether it answers a request it may answer),
/// Raft subjects outside the system account, reserved replies.
#[inline]
pub fn check_publish(
    subject: &[u8],
    reply: &[u8],
    permissions: Option<&Permissions>,
    responds: impl FnOnce(&Permissions) -> bool,
    in_system_account: impl FnOnce() -> bool,
) -> Result<(), PublishViolation> {
    let denied = is_gateway_routed(subject)
        || permissions.is_some_and(|perms| {
            perms.restricts_publish() && !perms.can_publish(subject) && !responds(perms)
        })
        || (subject.starts_with(b"$NRG.") && !in_system_account());
    if denied {
        return Err(PublishViolation::Subject(proto::go_quote(subject)));
    }
    if !reply.is_empty() && is_reserved_reply(reply) {
        return Err(PublishViolation::Reply(proto::go_quote(reply)));
    }
    Ok(())
}

/// What happens to a SUB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeVerdict {
    Accept,
    /// A sid the connection already uses: nats-server ignores the SUB.
    Ignore,
    /// Refused by permissions (or the reserved `_sys_` queue).
    Denied {
        subject: String,
        queue: Option<String>,
    },
    MaxSubscriptions(usize),
    InvalidSubject,
}

impl SubscribeVerdict {
    /// The `-ERR` text, for a refused SUB.
    pub fn client_text(&self) -> Option<String> {
        match self {
            SubscribeVerdict::Accept | SubscribeVerdict::Ignore => None,
            SubscribeVerdict::Denied {
                subject,
                queue: Some(queue),
            } => Some(format!(
                "Permissions Violation for Subscription to {subject} using queue {queue}"
            )),
            SubscribeVerdict::Denied {
                subject,
                queue: None,
            } => Some(format!(
                "Permissions Violation for Subscription to {subject}"
            )),
            SubscribeVerdict::MaxSubscriptions(_) => Some("maximum subscriptions exceeded".into()),
            SubscribeVerdict::InvalidSubject => Some("Invalid Subject".into()),
        }
    }
}

/// nats-server's checks of a SUB, in its order: permissions (and the reserved
/// `_sys_` queue), the subscription limit (0: none), a repeated sid, then the
/// subject.
pub fn check_subscribe(
    subject: &[u8],
    queue: Option<&[u8]>,
    permissions: Option<&Permissions>,
    (subscriptions, max_subscriptions): (usize, usize),
    sid_in_use: bool,
) -> SubscribeVerdict {
    let allowed = queue != Some(SYSTEM_QUEUE)
        && permissions.is_none_or(|perms| perms.can_subscribe(subject, queue));
    if !allowed {
        return SubscribeVerdict::Denied {
            subject: proto::go_quote(subject),
            queue: queue.map(proto::go_quote),
        };
    }
    if max_subscriptions > 0 && subscriptions >= max_subscriptions {
        return SubscribeVerdict::MaxSubscriptions(max_subscriptions);
    }
    if sid_in_use {
        return SubscribeVerdict::Ignore;
    }
    if !subject::is_valid_subscription_subject(subject) {
        return SubscribeVerdict::InvalidSubject;
    }
    SubscribeVerdict::Accept
}

/// The queue group nats-server reserves for itself.
const SYSTEM_QUEUE: &[u8] = b"_sys_";

/// The prefix of replies routed through gateways (`_GR_.<cluster>.<server>.`).
const GATEWAY_REPLY_PREFIX: &[u8] = b"_GR_.";

/// Replies only the server may hand out: service-import routes back (`_R_.`),
/// JetStream acks and gateway-routed replies.
fn is_reserved_reply(reply: &[u8]) -> bool {
    reply.starts_with(b"_R_.") || reply.starts_with(b"$JS.ACK.") || is_gateway_routed(reply)
}

/// A subject in the gateways' reply space, which clients may not publish to.
fn is_gateway_routed(subject: &[u8]) -> bool {
    subject.len() > GATEWAY_REPLY_PREFIX.len() && subject.starts_with(GATEWAY_REPLY_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn connect_rules_in_nats_servers_order() {
        let decode = |json: &str| {
            ConnectInfo::implicit()
                .decode_over(json.as_bytes())
                .unwrap()
        };
        assert_eq!(
            check_connect(&decode(r#"{"protocol":1,"headers":true}"#)),
            Ok(())
        );
        let asked = check_connect(&decode(r#"{"account":"A","protocol":7}"#)).unwrap_err();
        assert_eq!(asked, ConnectViolation::AccountRequested);
        assert_eq!(asked.close_reason(), CloseReason::AuthenticationViolation);
        assert_eq!(check_connect(&decode(r#"{"account":""}"#)), Ok(()));
        let v = check_connect(&decode(r#"{"protocol":2}"#)).unwrap_err();
        assert_eq!(v.client_text(), "invalid client protocol");
        assert_eq!(v.close_reason(), CloseReason::ProtocolViolation);
        assert_eq!(
            check_connect(&decode(r#"{"no_responders":true}"#)),
            Err(ConnectViolation::NoRespondersWithoutHeaders)
        );
        assert!(pong_carries_connect_info(true, false, 1));
        assert!(!pong_carries_connect_info(true, true, 1));
        assert!(!pong_carries_connect_info(true, false, 0));
        assert!(!pong_carries_connect_info(false, false, 1));
    }

    #[test]
    fn pings_until_stale() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0 + 2 * SEC);
        assert_eq!(l.poll_timeout(), t0 + 2 * SEC);
        assert_eq!(l.handle_timeout(t0 + SEC, 2 * SEC, 2), None);
        assert_eq!(l.handle_timeout(t0 + 2 * SEC, 2 * SEC, 2), Some(Due::Ping));
        assert_eq!(l.poll_timeout(), t0 + 4 * SEC);
        assert_eq!(l.handle_timeout(t0 + 4 * SEC, 2 * SEC, 2), Some(Due::Ping));
        assert_eq!(l.pings_outstanding(), 2);
        assert_eq!(l.handle_timeout(t0 + 6 * SEC, 2 * SEC, 2), Some(Due::Stale));
        // An answer resets the count.
        l.heard_from();
        assert_eq!(l.handle_timeout(t0 + 6 * SEC, 2 * SEC, 2), Some(Due::Ping));
    }

    #[test]
    fn authentication_deadline() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0 + 120 * SEC);
        l.restart_auth(t0 + SEC);
        assert!(
            !l.awaiting_auth(),
            "nothing to restart before it is required"
        );
        l.require_auth(t0 + 2 * SEC);
        assert_eq!(l.poll_timeout(), t0 + 2 * SEC);
        l.restart_auth(t0 + 3 * SEC);
        assert_eq!(l.handle_timeout(t0 + 2 * SEC, 120 * SEC, 2), None);
        assert_eq!(
            l.handle_timeout(t0 + 3 * SEC, 120 * SEC, 2),
            Some(Due::AuthTimeout)
        );
        l.authenticated();
        assert_eq!(l.handle_timeout(t0 + 3 * SEC, 120 * SEC, 2), None);
        assert_eq!(l.poll_timeout(), t0 + 120 * SEC);
    }

    fn perms(publish_allow: &[&str], subscribe_deny: &[&str]) -> Permissions {
        use crate::permissions::SubjectPermission;
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let allow = list(publish_allow);
        Permissions {
            publish: SubjectPermission::new(
                (!allow.is_empty()).then_some(allow.as_slice()),
                &[],
                false,
            )
            .unwrap(),
            subscribe: SubjectPermission::new(None, &list(subscribe_deny), true).unwrap(),
            responses: None,
        }
    }

    #[test]
    fn publish_rules_in_nats_servers_order() {
        let none = |_: &Permissions| false;
        assert_eq!(check_publish(b"a", b"", None, none, || false), Ok(()));
        let violation = check_publish(b"_GR_.x.y", b"", None, none, || false).unwrap_err();
        assert_eq!(
            violation.client_text(),
            "Permissions Violation for Publish to \"_GR_.x.y\""
        );
        assert!(check_publish(b"$NRG.x", b"", None, none, || false).is_err());
        assert_eq!(check_publish(b"$NRG.x", b"", None, none, || true), Ok(()));
        let p = perms(&["ok.>"], &[]);
        assert_eq!(
            check_publish(b"ok.1", b"", Some(&p), none, || false),
            Ok(())
        );
        assert!(check_publish(b"no", b"", Some(&p), none, || false).is_err());
        // A reply it may answer is allowed whatever the publish list says.
        assert_eq!(
            check_publish(b"no", b"", Some(&p), |_| true, || false),
            Ok(())
        );
        let reply = check_publish(b"ok.1", b"_R_.abc", Some(&p), none, || false).unwrap_err();
        assert_eq!(
            reply.client_text(),
            "Permissions Violation for Publish with Reply of \"_R_.abc\""
        );
        assert_eq!(reply.log_text(), "Publish Violation - Reply \"_R_.abc\"");
        assert!(check_publish(b"ok.1", b"$JS.ACK.x", Some(&p), none, || false).is_err());
    }

    #[test]
    fn subscribe_rules_in_nats_servers_order() {
        assert_eq!(
            check_subscribe(b"a.>", None, None, (0, 0), false),
            SubscribeVerdict::Accept
        );
        let denied = check_subscribe(b"a", Some(b"_sys_"), None, (0, 0), false);
        assert_eq!(
            denied.client_text().unwrap(),
            "Permissions Violation for Subscription to \"a\" using queue \"_sys_\""
        );
        let p = perms(&[], &["secret.>"]);
        let denied = check_subscribe(b"secret.x", None, Some(&p), (0, 0), false);
        assert_eq!(
            denied.client_text().unwrap(),
            "Permissions Violation for Subscription to \"secret.x\""
        );
        // The limit comes before a repeated sid, which comes before the subject.
        assert_eq!(
            check_subscribe(b"a..b", None, None, (3, 3), true),
            SubscribeVerdict::MaxSubscriptions(3)
        );
        assert_eq!(
            check_subscribe(b"a..b", None, None, (1, 3), true),
            SubscribeVerdict::Ignore
        );
        assert_eq!(
            check_subscribe(b"a..b", None, None, (1, 3), false),
            SubscribeVerdict::InvalidSubject
        );
    }
}
