//! Accounts as configured: their names, limits, exports and imports, resolved to
//! account indexes once at startup. Every shard builds its own per-account indexes
//! from this (see `Shard::new`); nothing here is touched per message.
//!
//! Index 0 is always the global account `$G`; the system account follows (`$SYS`
//! unless `system_account` names a configured one).

use std::time::Duration;

use thiserror::Error;

use crate::subject;

/// The global account's index: clients land here without an account binding.
pub const GLOBAL_ACCOUNT: u32 = 0;
pub const GLOBAL_ACCOUNT_NAME: &str = "$G";
pub const DEFAULT_SYSTEM_ACCOUNT: &str = "$SYS";
/// How long a service import waits for responses before forgetting the request
/// (nats-server's DEFAULT_SERVICE_EXPORT_RESPONSE_THRESHOLD).
pub const DEFAULT_RESPONSE_THRESHOLD: Duration = Duration::from_secs(120);

/// How a service answers a request, which decides how long the route back lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseType {
    /// One response; the route back goes with it.
    #[default]
    Singleton,
    /// Any number of responses until the threshold passes.
    Stream,
    /// One response in several messages; treated as a stream.
    Chunked,
}

impl ResponseType {
    pub fn parse(text: &str) -> Option<ResponseType> {
        match text.to_ascii_lowercase().as_str() {
            "single" | "singleton" => Some(ResponseType::Singleton),
            "stream" => Some(ResponseType::Stream),
            "chunk" | "chunked" => Some(ResponseType::Chunked),
            _ => None,
        }
    }

    /// As /accountz spells it.
    pub fn name(self) -> &'static str {
        match self {
            ResponseType::Singleton => "Singleton",
            ResponseType::Stream => "Stream",
            ResponseType::Chunked => "Chunked",
        }
    }
}

/// Per-account limits; None is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountLimits {
    pub max_connections: Option<usize>,
    /// Per connection, as nats-server applies it.
    pub max_subscriptions: Option<usize>,
    pub max_payload: Option<usize>,
}

/// An account's JetStream limits (nats-server's JetStreamAccountLimits); -1 is
/// no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JetStreamLimits {
    pub max_memory: i64,
    pub max_store: i64,
    pub max_streams: i64,
    pub max_consumers: i64,
    pub max_ack_pending: i64,
    pub memory_max_stream_bytes: i64,
    pub store_max_stream_bytes: i64,
    pub max_bytes_required: bool,
}

impl Default for JetStreamLimits {
    fn default() -> Self {
        JetStreamLimits {
            max_memory: -1,
            max_store: -1,
            max_streams: -1,
            max_consumers: -1,
            max_ack_pending: -1,
            memory_max_stream_bytes: -1,
            store_max_stream_bytes: -1,
            max_bytes_required: false,
        }
    }
}

/// What an account offers to others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub subject: String,
    pub service: bool,
    /// Accounts allowed to import it; None = public.
    pub accounts: Option<Vec<String>>,
    pub response_type: ResponseType,
    pub response_threshold: Duration,
}

/// Messages published in `from` on `subject` also reach this account, on the
/// subject `to` maps them to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamImport {
    pub from: u32,
    pub subject: String,
    pub to: Option<SubjectTransform>,
}

/// Requests published here on `local` go to `to_account` on `subject`; its
/// responses come back to the requester's reply subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceImport {
    pub to_account: u32,
    pub local: String,
    pub subject: String,
    /// From the local subject to the exporter's (identity when equal).
    pub transform: Option<SubjectTransform>,
    pub response_type: ResponseType,
    pub response_threshold: Duration,
    /// `share`: the exporter learns who the requester is (`Nats-Request-Info` in
    /// detail), not only its account.
    pub share: bool,
}

/// One account's resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSpec {
    pub name: String,
    /// Gone from the configuration after a reload; kept so that the indexes of
    /// the others stay put.
    pub removed: bool,
    pub limits: AccountLimits,
    /// `jetstream: enabled` or its limits; `None` is not enabled.
    pub jetstream: Option<JetStreamLimits>,
    pub exports: Vec<Export>,
    pub stream_imports: Vec<StreamImport>,
    pub service_imports: Vec<ServiceImport>,
}

impl AccountSpec {
    fn new(name: &str) -> AccountSpec {
        AccountSpec {
            name: name.to_string(),
            removed: false,
            limits: AccountLimits::default(),
            jetstream: None,
            exports: Vec::new(),
            stream_imports: Vec::new(),
            service_imports: Vec::new(),
        }
    }
}

/// Every account of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    pub list: Vec<AccountSpec>,
    pub system: u32,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            list: vec![
                AccountSpec::new(GLOBAL_ACCOUNT_NAME),
                AccountSpec::new(DEFAULT_SYSTEM_ACCOUNT),
            ],
            system: 1,
        }
    }
}

impl Accounts {
    pub fn index(&self, name: &str) -> Option<u32> {
        self.list
            .iter()
            .position(|a| a.name == name)
            .map(|i| i as u32)
    }

    pub fn name(&self, index: u32) -> &str {
        self.list
            .get(index as usize)
            .map_or(GLOBAL_ACCOUNT_NAME, |a| a.name.as_str())
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// The JetStream limits of an account, `None` where JetStream is off for
    /// it. As in nats-server: never the system account; with no accounts
    /// configured, the global account with no limits; otherwise the accounts
    /// that say `jetstream`.
    pub fn jetstream(&self, index: u32) -> Option<JetStreamLimits> {
        if index == self.system {
            return None;
        }
        let spec = self.list.get(index as usize).filter(|a| !a.removed)?;
        let global_only = self
            .active()
            .all(|(i, a)| i == self.system || a.name == GLOBAL_ACCOUNT_NAME);
        if global_only && spec.name == GLOBAL_ACCOUNT_NAME {
            return Some(spec.jetstream.unwrap_or_default());
        }
        spec.jetstream
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The accounts still configured (not removed by a reload).
    pub fn active(&self) -> impl Iterator<Item = (u32, &AccountSpec)> {
        self.list
            .iter()
            .enumerate()
            .filter(|(_, a)| !a.removed)
            .map(|(i, a)| (i as u32, a))
    }

    /// Reorders a freshly built configuration (a reload) so that every account
    /// `previous` has keeps its index: shards, connections and the mesh refer to
    /// accounts by index. Accounts no longer configured stay as removed
    /// placeholders; new ones go at the end. Returns, for each fresh index, the
    /// stable one (to rewrite what refers to accounts, such as users).
    pub fn stabilize(&mut self, previous: &Accounts) -> Result<Vec<u32>, AccountError> {
        let system = self.name(self.system).to_string();
        let was = previous.name(previous.system);
        if system != was {
            return Err(AccountError::SystemAccountChanged(was.to_string(), system));
        }
        let mut fresh: Vec<Option<AccountSpec>> = self.list.drain(..).map(Some).collect();
        let mut map = vec![0u32; fresh.len()];
        let mut list = Vec::with_capacity(previous.list.len() + fresh.len());
        for old in &previous.list {
            let found = fresh
                .iter()
                .position(|f| f.as_ref().is_some_and(|f| f.name == old.name));
            match found.and_then(|i| fresh[i].take().map(|spec| (i, spec))) {
                Some((i, spec)) => {
                    map[i] = list.len() as u32;
                    list.push(spec);
                }
                None => {
                    let mut gone = AccountSpec::new(&old.name);
                    gone.removed = true;
                    list.push(gone);
                }
            }
        }
        for (i, spec) in fresh.into_iter().enumerate() {
            if let Some(spec) = spec {
                map[i] = list.len() as u32;
                list.push(spec);
            }
        }
        for spec in &mut list {
            for import in &mut spec.stream_imports {
                import.from = map[import.from as usize];
            }
            for import in &mut spec.service_imports {
                import.to_account = map[import.to_account as usize];
            }
        }
        self.list = list;
        self.system = previous.system;
        Ok(map)
    }
}

/// Why the accounts configuration cannot be used; texts as nats-server reports them.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AccountError {
    #[error("{0:?} is a Reserved Account")]
    Reserved(String),
    #[error("Duplicate Account Entry: {0}")]
    Duplicate(String),
    #[error("{0:?} account not defined for {1}")]
    Undefined(String, &'static str),
    #[error("Error adding {kind} {subject:?}: {reason}")]
    Import {
        kind: &'static str,
        subject: String,
        reason: String,
    },
    #[error("system account {0:?} not defined")]
    NoSystemAccount(String),
    #[error("system_account cannot change from {0:?} to {1:?} at reload")]
    SystemAccountChanged(String, String),
}

/// An import as written in the configuration, by account names.
#[derive(Debug, Clone)]
pub struct ImportDecl {
    pub importer: String,
    pub exporter: String,
    pub subject: String,
    pub service: bool,
    /// Stream imports: `prefix`; the local subject is `prefix.subject`.
    pub prefix: Option<String>,
    /// Stream imports: the local subject; service imports: the local subject
    /// requests are published on (defaults to `subject`).
    pub to: Option<String>,
    /// Service imports: share the requester's details with the exporter.
    pub share: bool,
}

/// Collects the configuration's accounts, then resolves and checks it.
#[derive(Debug, Default)]
pub struct AccountsBuilder {
    names: Vec<String>,
    limits: Vec<AccountLimits>,
    jetstream: Vec<Option<JetStreamLimits>>,
    exports: Vec<Vec<Export>>,
    imports: Vec<ImportDecl>,
    system: Option<String>,
}

impl AccountsBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_account(&mut self, name: &str) -> Result<(), AccountError> {
        if name == GLOBAL_ACCOUNT_NAME || name == DEFAULT_SYSTEM_ACCOUNT {
            return Err(AccountError::Reserved(name.to_string()));
        }
        if self.names.iter().any(|n| n == name) {
            return Err(AccountError::Duplicate(name.to_string()));
        }
        self.names.push(name.to_string());
        self.limits.push(AccountLimits::default());
        self.jetstream.push(None);
        self.exports.push(Vec::new());
        Ok(())
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    pub fn set_limits(&mut self, account: &str, limits: AccountLimits) {
        if let Some(i) = self.position(account) {
            self.limits[i] = limits;
        }
    }

    pub fn set_jetstream(&mut self, account: &str, limits: Option<JetStreamLimits>) {
        if let Some(i) = self.position(account) {
            self.jetstream[i] = limits;
        }
    }

    pub fn add_export(&mut self, account: &str, export: Export) {
        if let Some(i) = self.position(account) {
            self.exports[i].push(export);
        }
    }

    pub fn add_import(&mut self, import: ImportDecl) {
        self.imports.push(import);
    }

    pub fn set_system_account(&mut self, name: &str) {
        self.system = Some(name.to_string());
    }

    pub fn build(self) -> Result<Accounts, AccountError> {
        let mut accounts = Accounts::default();
        let system = match &self.system {
            Some(name) if name == DEFAULT_SYSTEM_ACCOUNT => None,
            Some(name) => {
                if self.position(name).is_none() {
                    return Err(AccountError::NoSystemAccount(name.clone()));
                }
                // The named account replaces `$SYS`, keeping index 1.
                accounts.list.truncate(1);
                Some(name.clone())
            }
            None => None,
        };
        if let Some(name) = &system {
            let i = self.position(name).unwrap_or_default();
            let mut spec = AccountSpec::new(name);
            spec.limits = self.limits[i];
            spec.jetstream = self.jetstream[i];
            spec.exports = self.exports[i].clone();
            accounts.list.push(spec);
        }
        for (i, name) in self.names.iter().enumerate() {
            if Some(name) == system.as_ref() {
                continue;
            }
            let mut spec = AccountSpec::new(name);
            spec.limits = self.limits[i];
            spec.jetstream = self.jetstream[i];
            spec.exports = self.exports[i].clone();
            accounts.list.push(spec);
        }
        accounts.system = 1;
        for decl in self.imports {
            let kind = if decl.service {
                "service import"
            } else {
                "stream import"
            };
            let importer = accounts
                .index(&decl.importer)
                .ok_or_else(|| AccountError::Undefined(decl.importer.clone(), kind))?;
            let exporter = accounts
                .index(&decl.exporter)
                .ok_or_else(|| AccountError::Undefined(decl.exporter.clone(), kind))?;
            let fail = |reason: &str| AccountError::Import {
                kind,
                subject: decl.subject.clone(),
                reason: reason.to_string(),
            };
            if !subject::is_valid_subject(decl.subject.as_bytes()) {
                return Err(fail("invalid subject"));
            }
            let export = accounts.list[exporter as usize]
                .exports
                .iter()
                .find(|e| {
                    e.service == decl.service
                        && subject::matches(e.subject.as_bytes(), decl.subject.as_bytes())
                        && e.accounts
                            .as_ref()
                            .is_none_or(|allowed| allowed.contains(&decl.importer))
                })
                .cloned();
            let Some(export) = export else {
                return Err(fail(if decl.service {
                    "service import not authorized"
                } else {
                    "stream import not authorized"
                }));
            };
            if decl.service {
                let local = decl.to.clone().unwrap_or_else(|| decl.subject.clone());
                if !subject::is_valid_subject(local.as_bytes()) {
                    return Err(fail("invalid local subject"));
                }
                let transform = if local == decl.subject {
                    None
                } else {
                    Some(SubjectTransform::new(&local, &decl.subject).map_err(|e| {
                        fail(&format!(
                            "failed to create mapping transform for service import subject from {:?} to {:?}: {e}",
                            local, decl.subject
                        ))
                    })?)
                };
                accounts.list[importer as usize]
                    .service_imports
                    .push(ServiceImport {
                        to_account: exporter,
                        local,
                        subject: decl.subject.clone(),
                        transform,
                        response_type: export.response_type,
                        response_threshold: export.response_threshold,
                        share: decl.share,
                    });
            } else {
                let to = match (&decl.prefix, &decl.to) {
                    (Some(prefix), _) => Some(format!("{}.{}", prefix, decl.subject)),
                    (None, Some(to)) => Some(to.clone()),
                    (None, None) => None,
                };
                let to = match to {
                    Some(to) if to != decl.subject => {
                        Some(SubjectTransform::new(&decl.subject, &to).map_err(|e| {
                            fail(&format!(
                                "failed to create mapping transform for stream import subject from {:?} to {:?}: {e}",
                                decl.subject, to
                            ))
                        })?)
                    }
                    _ => None,
                };
                accounts.list[importer as usize]
                    .stream_imports
                    .push(StreamImport {
                        from: exporter,
                        subject: decl.subject.clone(),
                        to,
                    });
            }
        }
        Ok(accounts)
    }
}

/// Maps subjects matching `source` to `destination`. The destination names the
/// source's wildcards as `$1`, `{{wildcard(1)}}`, or by repeating them in order
/// (`*` takes the next single-token wildcard, `>` the tail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTransform {
    source: Vec<String>,
    destination: Vec<DestToken>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DestToken {
    Literal(String),
    /// The n-th (0-based) wildcard of the source.
    Wildcard(usize),
    /// The tokens the source's `>` matched.
    Tail,
}

impl SubjectTransform {
    /// Builds an import's transform with nats-server's rules for imports: `>` on
    /// both sides or neither, and every `*` of the source used in the destination.
    /// Errors read as nats-server's.
    pub fn new(source: &str, destination: &str) -> Result<SubjectTransform, String> {
        Self::build(source, destination, true)
    }

    /// Builds a stream's transform (`subject_transform`, `republish`) with
    /// nats-server's looser rules: an empty source is `>`, the destination names
    /// wildcards only by position (`$1`, `{{wildcard(1)}}`) and need not use them
    /// all. The other mapping functions are refused plainly.
    pub fn for_stream(source: &str, destination: &str) -> Result<SubjectTransform, String> {
        let source = if source.is_empty() { ">" } else { source };
        if !crate::subject::is_valid_subject(source.as_bytes())
            || !crate::subject::is_valid_subject(destination.as_bytes())
            || destination.split('.').any(|t| t == "*")
        {
            return Err("invalid subject".into());
        }
        if let Some(function) = destination
            .split('.')
            .find(|t| t.starts_with("{{") && !t.starts_with("{{wildcard("))
        {
            return Err(format!(
                "mapping function {function} is not supported by this server yet"
            ));
        }
        Self::build(source, destination, false)
    }

    fn build(source: &str, destination: &str, strict: bool) -> Result<SubjectTransform, String> {
        let source: Vec<String> = source.split('.').map(str::to_string).collect();
        let wildcards = source.iter().filter(|t| *t == "*").count();
        let has_tail = source.last().is_some_and(|t| t == ">");
        if has_tail != destination.split('.').any(|t| t == ">") {
            return Err("invalid subject".into());
        }
        let mut next_wildcard = 0;
        let mut used = 0;
        let mut dest = Vec::new();
        for token in destination.split('.') {
            // `$N` names a wildcard; `$` before anything else is a literal (`$KV`,
            // `$JS`), as nats-server reads it.
            let reference = match token.strip_prefix('$') {
                Some(n) => n.parse::<usize>().ok().map(Ok),
                None => token
                    .strip_prefix("{{wildcard(")
                    .and_then(|t| t.strip_suffix(")}}"))
                    .map(|n| n.trim().parse::<usize>()),
            };
            let t = match (token, reference) {
                (_, Some(Ok(n))) if n >= 1 && n <= wildcards => DestToken::Wildcard(n - 1),
                (_, Some(Ok(n))) => {
                    return Err(format!(
                        "invalid mapping destination: wildcard index out of range in {token}: [{n}]"
                    ))
                }
                (_, Some(Err(_))) => {
                    return Err(format!(
                        "invalid mapping destination: wildcard index out of range in {token}"
                    ))
                }
                ("*", None) => {
                    next_wildcard += 1;
                    if next_wildcard > wildcards {
                        return Err(format!(
                            "invalid mapping destination: wildcard index out of range in $${next_wildcard}: [{next_wildcard}]"
                        ));
                    }
                    DestToken::Wildcard(next_wildcard - 1)
                }
                (">", None) => DestToken::Tail,
                (t, None) => DestToken::Literal(t.to_string()),
            };
            if matches!(t, DestToken::Wildcard(_)) {
                used += 1;
            }
            dest.push(t);
        }
        if strict && used < wildcards {
            return Err(format!(
                "invalid mapping destination: not using all of the token wildcard(s) in {destination}"
            ));
        }
        Ok(SubjectTransform {
            source,
            destination: dest,
        })
    }

    /// The mapped subject, or None when `subject` does not match the source.
    pub fn apply(&self, subject: &[u8]) -> Option<Vec<u8>> {
        let mut wildcards: Vec<&[u8]> = Vec::new();
        let mut tail: &[u8] = b"";
        let mut rest = subject;
        for (i, s) in self.source.iter().enumerate() {
            if s == ">" {
                if rest.is_empty() {
                    return None;
                }
                tail = rest;
                rest = b"";
                break;
            }
            let (token, after) = match memchr::memchr(b'.', rest) {
                Some(p) => (&rest[..p], &rest[p + 1..]),
                None if i + 1 == self.source.len() => (rest, &b""[..]),
                None => return None,
            };
            if s == "*" {
                wildcards.push(token);
            } else if s.as_bytes() != token {
                return None;
            }
            rest = after;
        }
        if !rest.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(subject.len() + 16);
        for (i, t) in self.destination.iter().enumerate() {
            if i > 0 {
                out.push(b'.');
            }
            match t {
                DestToken::Literal(l) => out.extend_from_slice(l.as_bytes()),
                DestToken::Wildcard(n) => out.extend_from_slice(wildcards.get(*n)?),
                DestToken::Tail => out.extend_from_slice(tail),
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(subject: &str, service: bool, accounts: Option<&[&str]>) -> Export {
        Export {
            subject: subject.into(),
            service,
            accounts: accounts.map(|a| a.iter().map(|s| s.to_string()).collect()),
            response_type: ResponseType::Singleton,
            response_threshold: DEFAULT_RESPONSE_THRESHOLD,
        }
    }

    fn import(importer: &str, exporter: &str, subject: &str, service: bool) -> ImportDecl {
        ImportDecl {
            importer: importer.into(),
            exporter: exporter.into(),
            subject: subject.into(),
            service,
            prefix: None,
            to: None,
            share: false,
        }
    }

    #[test]
    fn stream_transforms_are_looser_than_imports() {
        let t = SubjectTransform::for_stream("", "archive.>").unwrap();
        assert_eq!(t.apply(b"orders.new").unwrap(), b"archive.orders.new");
        let t = SubjectTransform::for_stream("orders.*.*", "by-region.$2").unwrap();
        assert_eq!(t.apply(b"orders.1.eu").unwrap(), b"by-region.eu");
        assert_eq!(
            SubjectTransform::for_stream("a.*", "b.*").unwrap_err(),
            "invalid subject"
        );
        assert!(SubjectTransform::for_stream("a.*", "b.{{partition(3,1)}}")
            .unwrap_err()
            .contains("not supported"));
        assert!(SubjectTransform::for_stream("a", "b.$1").is_err());
        let t = SubjectTransform::for_stream("A.>", "$KV.test.>").unwrap();
        assert_eq!(t.apply(b"A.b").unwrap(), b"$KV.test.b");
    }

    #[test]
    fn transforms() {
        let t = SubjectTransform::new("foo.*.>", "bar.$1.>").unwrap();
        assert_eq!(t.apply(b"foo.a.b.c").unwrap(), b"bar.a.b.c");
        assert!(t.apply(b"foo.a").is_none());
        assert!(t.apply(b"baz.a.b").is_none());
        let t = SubjectTransform::new("a.*.*", "b.{{wildcard(2)}}.{{wildcard(1)}}").unwrap();
        assert_eq!(t.apply(b"a.x.y").unwrap(), b"b.y.x");
        let t = SubjectTransform::new("a.*", "b.*").unwrap();
        assert_eq!(t.apply(b"a.x").unwrap(), b"b.x");
        let t = SubjectTransform::new("foo", "imports.foo").unwrap();
        assert_eq!(t.apply(b"foo").unwrap(), b"imports.foo");
        assert!(t.apply(b"foo.bar").is_none());
        assert!(SubjectTransform::new("a.*", "b.$2").is_err());
        assert!(SubjectTransform::new("a", "b.>").is_err());
        assert_eq!(
            SubjectTransform::new("orders.*", "incoming.orders").unwrap_err(),
            "invalid mapping destination: not using all of the token wildcard(s) in incoming.orders"
        );
        assert_eq!(
            SubjectTransform::new("a.>", "b").unwrap_err(),
            "invalid subject"
        );
    }

    #[test]
    fn resolves_and_authorizes_imports() {
        let mut b = AccountsBuilder::new();
        b.add_account("A").unwrap();
        b.add_account("B").unwrap();
        b.add_account("C").unwrap();
        assert_eq!(b.add_account("A"), Err(AccountError::Duplicate("A".into())));
        assert!(matches!(
            b.add_account("$G"),
            Err(AccountError::Reserved(_))
        ));
        b.add_export("B", export("foo.>", false, None));
        b.add_export("B", export("req", true, Some(&["A"])));
        b.add_import(ImportDecl {
            prefix: Some("from_b".into()),
            ..import("A", "B", "foo.x", false)
        });
        b.add_import(ImportDecl {
            to: Some("local.req".into()),
            ..import("A", "B", "req", true)
        });
        let accounts = b.build().unwrap();
        assert_eq!(accounts.name(0), "$G");
        assert_eq!(accounts.name(1), "$SYS");
        let a = &accounts.list[accounts.index("A").unwrap() as usize];
        assert_eq!(a.stream_imports.len(), 1);
        assert_eq!(
            a.stream_imports[0]
                .to
                .as_ref()
                .unwrap()
                .apply(b"foo.x")
                .unwrap(),
            b"from_b.foo.x"
        );
        assert_eq!(a.service_imports[0].local, "local.req");

        // C is not among the accounts the service is exported to.
        let mut b = AccountsBuilder::new();
        b.add_account("B").unwrap();
        b.add_account("C").unwrap();
        b.add_export("B", export("req", true, Some(&["A"])));
        b.add_import(import("C", "B", "req", true));
        assert_eq!(
            b.build().unwrap_err().to_string(),
            "Error adding service import \"req\": service import not authorized"
        );
        // Nothing exported.
        let mut b = AccountsBuilder::new();
        b.add_account("B").unwrap();
        b.add_account("C").unwrap();
        b.add_import(import("C", "B", "foo", false));
        assert!(b.build().is_err());
        let mut b = AccountsBuilder::new();
        b.add_import(import("C", "X", "foo", false));
        assert_eq!(
            b.build().unwrap_err().to_string(),
            "\"C\" account not defined for stream import"
        );
    }

    #[test]
    fn reload_keeps_indexes() {
        let build = |names: &[&str], stream_import: Option<(&str, &str)>| {
            let mut b = AccountsBuilder::new();
            for n in names {
                b.add_account(n).unwrap();
            }
            b.add_export("B", export("foo", false, None));
            if let Some((importer, exporter)) = stream_import {
                b.add_import(import(importer, exporter, "foo", false));
            }
            b.build().unwrap()
        };
        let before = build(&["A", "B", "C"], None);
        let mut after = build(&["B", "D", "A"], Some(("D", "B")));
        let map = after.stabilize(&before).unwrap();
        for name in ["$G", "$SYS", "A", "B"] {
            assert_eq!(after.index(name), before.index(name), "{name}");
        }
        let c = before.index("C").unwrap() as usize;
        assert!(after.list[c].removed);
        let d = after.index("D").unwrap();
        assert_eq!(d as usize, before.len());
        assert_eq!(
            after.list[d as usize].stream_imports[0].from,
            after.index("B").unwrap()
        );
        // Fresh order was $G, $SYS, B, D, A.
        assert_eq!(map, vec![0, 1, 3, d, 2]);
        let mut renamed = build(&["A"], None);
        renamed.list[1].name = "OTHER".into();
        assert!(renamed.stabilize(&before).is_err());
    }

    #[test]
    fn named_system_account() {
        let mut b = AccountsBuilder::new();
        b.add_account("APP").unwrap();
        b.add_account("SYS").unwrap();
        b.set_system_account("SYS");
        let accounts = b.build().unwrap();
        assert_eq!(accounts.name(accounts.system), "SYS");
        assert_eq!(accounts.len(), 3);
        let mut b = AccountsBuilder::new();
        b.set_system_account("NOPE");
        assert!(b.build().is_err());
    }
}
