//! Per-user publish and subscribe permissions, with nats-server's semantics:
//! an allow list (absent = everything), a deny list that overrules it, queue-group
//! qualifiers on subscribe entries (`"foo v1"`), and `allow_responses`, which lets a
//! user publish to the reply subjects of the requests it received.
//!
//! Permission lists are short, so entries are matched by a linear scan of
//! pre-split patterns; nothing here allocates per message.

use std::time::Duration;

use crate::subject;

/// One entry of a permission list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    subject: String,
    /// `subject queue` entries of subscribe lists: the queue pattern.
    queue: Option<String>,
}

impl Pattern {
    fn new(text: &str, allow_queue: bool) -> Result<Pattern, String> {
        let mut parts = text.split_whitespace();
        let subject = parts.next().unwrap_or("");
        let queue = parts.next();
        if parts.next().is_some() || (queue.is_some() && !allow_queue) {
            return Err(format!("subject {text:?} is not a valid subject"));
        }
        if !subject::is_valid_subject(subject.as_bytes()) {
            return Err(format!("subject {subject:?} is not a valid subject"));
        }
        Ok(Pattern {
            subject: subject.to_string(),
            queue: queue.map(str::to_string),
        })
    }

    /// Whether `subject` (whose own wildcards count as literal tokens, as
    /// nats-server's index matches them) falls under this pattern.
    fn matches(&self, subject: &[u8]) -> bool {
        subject::matches(self.subject.as_bytes(), subject)
    }
}

/// Whether every subject `sub` can match is also matched by `pattern` (both may
/// hold wildcards): nats-server's `subjectIsSubsetMatch`.
pub(crate) fn is_subset(sub: &str, pattern: &str) -> bool {
    let sub: Vec<&str> = sub.split('.').collect();
    let pat: Vec<&str> = pattern.split('.').collect();
    for (i, p) in pat.iter().enumerate() {
        if *p == ">" {
            return i < sub.len();
        }
        match sub.get(i) {
            Some(s) if *p == "*" => {
                if *s == ">" {
                    return false;
                }
            }
            Some(s) if s == p => {}
            _ => return false,
        }
    }
    sub.len() == pat.len()
}

/// Whether two subjects with wildcards can match a common subject.
fn collide(a: &[u8], b: &[u8]) -> bool {
    let mut a = a.split(|&c| c == b'.');
    let mut b = b.split(|&c| c == b'.');
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) => {
                if x == b">" || y == b">" {
                    return true;
                }
                if x != b"*" && y != b"*" && x != y {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// One direction's lists: `allow` (None = everything) and `deny`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectPermission {
    allow: Option<Vec<Pattern>>,
    deny: Vec<Pattern>,
}

impl SubjectPermission {
    /// Builds the lists; queue qualifiers are accepted only for subscribe lists.
    pub fn new(
        allow: Option<&[String]>,
        deny: &[String],
        subscribe: bool,
    ) -> Result<SubjectPermission, String> {
        let build = |list: &[String]| -> Result<Vec<Pattern>, String> {
            list.iter().map(|s| Pattern::new(s, subscribe)).collect()
        };
        Ok(SubjectPermission {
            allow: allow.map(build).transpose()?,
            deny: build(deny)?,
        })
    }

    fn restricts(&self) -> bool {
        self.allow.is_some() || !self.deny.is_empty()
    }
}

/// `allow_responses`: how many replies to one request, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponsePermission {
    /// 0 or negative in the file means unlimited; kept as None.
    pub max_msgs: Option<u32>,
    pub expires: Option<Duration>,
}

impl Default for ResponsePermission {
    fn default() -> Self {
        ResponsePermission {
            max_msgs: Some(1),
            expires: Some(Duration::from_secs(120)),
        }
    }
}

/// A user's permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: SubjectPermission,
    pub subscribe: SubjectPermission,
    pub responses: Option<ResponsePermission>,
}

impl Permissions {
    /// Sets `allow_responses`. As in nats-server, a user with response permission
    /// and no publish allow list may publish nothing but responses.
    pub fn with_responses(mut self, responses: ResponsePermission) -> Self {
        self.responses = Some(responses);
        if self.publish.allow.is_none() {
            self.publish.allow = Some(Vec::new());
        }
        self
    }

    /// Whether publish permissions restrict anything (the check can be skipped).
    pub fn restricts_publish(&self) -> bool {
        self.publish.restricts()
    }

    /// The static publish check (dynamic reply permissions are the connection's).
    pub fn can_publish(&self, subject: &[u8]) -> bool {
        let p = &self.publish;
        let allowed = match &p.allow {
            Some(list) => list.iter().any(|e| e.queue.is_none() && e.matches(subject)),
            None => true,
        };
        allowed && !p.deny.iter().any(|e| e.matches(subject))
    }

    /// nats-server's subscribe check: plain entries decide plain subscriptions;
    /// queue-qualified entries that match the subject decide queue subscriptions.
    pub fn can_subscribe(&self, subject: &[u8], queue: Option<&[u8]>) -> bool {
        let s = &self.subscribe;
        let queue = queue.and_then(|q| std::str::from_utf8(q).ok());
        let mut allowed = true;
        if let Some(allow) = &s.allow {
            allowed = allow
                .iter()
                .any(|e| e.queue.is_none() && e.matches(subject));
            if let Some(q) = queue {
                let mut queued = allow
                    .iter()
                    .filter(|e| e.matches(subject))
                    .filter_map(|e| e.queue.as_deref())
                    .peekable();
                if queued.peek().is_some() {
                    allowed = queued.any(|qp| queue_matches(q, qp));
                }
            }
        }
        if allowed {
            allowed = !s
                .deny
                .iter()
                .any(|e| e.queue.is_none() && e.matches(subject));
            if allowed {
                if let Some(q) = queue {
                    allowed = !s
                        .deny
                        .iter()
                        .filter(|e| e.matches(subject))
                        .filter_map(|e| e.queue.as_deref())
                        .any(|qp| queue_matches(q, qp));
                }
            }
        }
        allowed
    }

    /// Whether deliveries to a subscription on `subject` must be checked against
    /// the deny list: a wildcard or queue subscription that overlaps a denied subject
    /// (nats-server's delivery-time deny filter).
    pub fn needs_delivery_filter(&self, subject: &[u8], queued: bool) -> bool {
        (subject::has_wildcard(subject) || queued)
            && self
                .subscribe
                .deny
                .iter()
                .any(|e| e.queue.is_none() && collide(e.subject.as_bytes(), subject))
    }

    /// The delivery-time check for filtered subscriptions.
    pub fn delivery_denied(&self, subject: &[u8]) -> bool {
        self.subscribe
            .deny
            .iter()
            .any(|e| e.queue.is_none() && e.matches(subject))
    }
}

fn queue_matches(queue: &str, pattern: &str) -> bool {
    queue == pattern
        || ((pattern.contains('*') || pattern.contains('>')) && is_subset(queue, pattern))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn perms(
        pub_allow: Option<&[&str]>,
        pub_deny: &[&str],
        sub_allow: Option<&[&str]>,
        sub_deny: &[&str],
    ) -> Permissions {
        Permissions {
            publish: SubjectPermission::new(pub_allow.map(list).as_deref(), &list(pub_deny), false)
                .unwrap(),
            subscribe: SubjectPermission::new(
                sub_allow.map(list).as_deref(),
                &list(sub_deny),
                true,
            )
            .unwrap(),
            responses: None,
        }
    }

    #[test]
    fn publish_allow_and_deny() {
        let p = perms(Some(&["foo.*", "bar.>"]), &["bar.secret"], None, &[]);
        assert!(p.can_publish(b"foo.x"));
        assert!(!p.can_publish(b"foo.x.y"));
        assert!(p.can_publish(b"bar.a.b"));
        assert!(!p.can_publish(b"bar.secret"));
        assert!(!p.can_publish(b"baz"));
        let deny_only = perms(None, &["secret.>"], None, &[]);
        assert!(deny_only.can_publish(b"public"));
        assert!(!deny_only.can_publish(b"secret.x"));
        assert!(!perms(None, &[], None, &[]).restricts_publish());
    }

    #[test]
    fn subscribe_with_queues() {
        // allow = ["foo", "foo v1"]: plain subs to foo, queue subs only in v1.
        let p = perms(None, &[], Some(&["foo", "foo v1"]), &[]);
        assert!(p.can_subscribe(b"foo", None));
        assert!(p.can_subscribe(b"foo", Some(b"v1")));
        assert!(!p.can_subscribe(b"foo", Some(b"v2")));
        // allow = ["foo v1"]: no plain subscription.
        let q = perms(None, &[], Some(&["foo v1"]), &[]);
        assert!(!q.can_subscribe(b"foo", None));
        assert!(q.can_subscribe(b"foo", Some(b"v1")));
        // allow = ["foo"]: any queue.
        let any = perms(None, &[], Some(&["foo"]), &[]);
        assert!(any.can_subscribe(b"foo", Some(b"whatever")));
        // Queue patterns with wildcards.
        let wild = perms(None, &[], Some(&["foo v.*"]), &[]);
        assert!(wild.can_subscribe(b"foo", Some(b"v.1")));
        assert!(!wild.can_subscribe(b"foo", Some(b"w.1")));
        // Deny with a queue qualifier denies that queue only.
        let d = perms(None, &[], None, &["secret.>", "jobs bad"]);
        assert!(!d.can_subscribe(b"secret.x", None));
        assert!(!d.can_subscribe(b"secret.>", None));
        assert!(!d.can_subscribe(b"secret.q", Some(b"workers")));
        assert!(d.can_subscribe(b"jobs", None));
        assert!(d.can_subscribe(b"jobs", Some(b"good")));
        assert!(!d.can_subscribe(b"jobs", Some(b"bad")));
        // Wildcard subscriptions fall under wider allow entries.
        let w = perms(None, &[], Some(&["foo.>"]), &[]);
        assert!(w.can_subscribe(b"foo.*", None));
        assert!(w.can_subscribe(b"foo.>", None));
        assert!(!w.can_subscribe(b">", None));
    }

    #[test]
    fn delivery_filter() {
        let p = perms(None, &[], None, &["foo.secret"]);
        assert!(p.can_subscribe(b"foo.*", None));
        assert!(p.needs_delivery_filter(b"foo.*", false));
        assert!(p.needs_delivery_filter(b">", false));
        assert!(!p.needs_delivery_filter(b"bar.*", false));
        assert!(!p.needs_delivery_filter(b"foo.public", false));
        assert!(p.delivery_denied(b"foo.secret"));
        assert!(!p.delivery_denied(b"foo.public"));
    }

    #[test]
    fn responses_close_the_blanket_allow() {
        let p = perms(None, &[], None, &[]).with_responses(ResponsePermission::default());
        assert!(p.restricts_publish());
        assert!(!p.can_publish(b"anything"));
    }

    #[test]
    fn invalid_entries_are_refused() {
        assert!(SubjectPermission::new(Some(&list(&["foo..bar"])), &[], false).is_err());
        assert!(SubjectPermission::new(Some(&list(&["foo q"])), &[], false).is_err());
        assert!(SubjectPermission::new(Some(&list(&["foo q"])), &[], true).is_ok());
    }
}
