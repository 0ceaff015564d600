//! The configuration of who may connect and what they may do: `authorization {}`,
//! `accounts {}` with their users, exports, imports and limits, `system_account`,
//! and permissions. Read in one pass after the rest of the file, because users name
//! accounts that may be defined further down.

use std::sync::Arc;
use std::time::Duration;

use strait_shards::accounts::{
    AccountError, AccountLimits, AccountsBuilder, Export, ImportDecl, JetStreamLimits,
    ResponseType, DEFAULT_RESPONSE_THRESHOLD, GLOBAL_ACCOUNT_NAME,
};
use strait_shards::auth::{NkeyUser, User};
use strait_shards::permissions::{Permissions, ResponsePermission, SubjectPermission};
use strait_shards::ServerOptions;

use crate::config::{duration, invalid, string, unknown, unsupported, ConfigError};
use strait_conf::{Entry, Kind, Map, Value};

/// The entries this module reads, gathered from the top level.
#[derive(Default)]
pub struct AuthEntries<'a> {
    pub authorization: Option<&'a Entry>,
    pub accounts: Option<&'a Entry>,
    pub system_account: Option<&'a Entry>,
}

/// A user as written, before account names are resolved.
struct UserDecl {
    name: Option<String>,
    nkey: Option<String>,
    password: String,
    account: String,
    permissions: Option<Permissions>,
    connection_types: Option<Vec<String>>,
    /// Where it was written, for errors.
    entry: Entry,
}

pub fn apply(entries: &AuthEntries<'_>, opts: &mut ServerOptions) -> Result<(), ConfigError> {
    let mut users = Vec::new();
    let mut builder = AccountsBuilder::new();
    let mut single: Option<UserDecl> = None;
    if let Some(entry) = entries.authorization {
        single = authorization(entry, opts, &mut users)?;
    }
    if let Some(entry) = entries.accounts {
        accounts(entry, &mut builder, &mut users)?;
        if !users.iter().all(|u| u.account == GLOBAL_ACCOUNT_NAME) {
            if single.is_some() {
                return Err(invalid(
                    entry,
                    "Can not have a single user/pass and accounts",
                ));
            }
            if opts.auth.token.is_some() {
                return Err(invalid(entry, "Can not have a token and accounts"));
            }
        }
    }
    if let Some(entry) = entries.system_account {
        builder.set_system_account(&string(entry)?);
    }
    let at = entries
        .accounts
        .or(entries.system_account)
        .or(entries.authorization);
    let built = builder.build().map_err(|e| account_error(at, e))?;
    users.extend(single);
    for u in users {
        let account = built.index(&u.account).ok_or_else(|| {
            invalid(
                &u.entry,
                format!("{:?} account not defined for user", u.account),
            )
        })?;
        let permissions = u.permissions.map(Arc::new);
        match (u.name, u.nkey) {
            (_, Some(key)) => {
                if opts.auth.nkeys.iter().any(|n| n.key == key) {
                    return Err(invalid(
                        &u.entry,
                        format!("Duplicate nkey {key:?} detected"),
                    ));
                }
                opts.auth.nkeys.push(NkeyUser {
                    key,
                    account,
                    permissions,
                    connection_types: u.connection_types,
                });
            }
            (Some(name), None) => {
                if opts.auth.users.contains_key(&name) {
                    return Err(invalid(
                        &u.entry,
                        format!("Duplicate user {name:?} detected"),
                    ));
                }
                let mut user = User::new(&name, &u.password);
                user.account = account;
                user.permissions = permissions;
                user.connection_types = u.connection_types;
                opts.auth.users.insert(name, user);
            }
            (None, None) => return Err(invalid(&u.entry, "a user needs user or nkey")),
        }
    }
    if opts.auth.users.values().any(|u| !is_bcrypt(&u.password)) {
        tracing::warn!("Plaintext passwords detected, use nkeys or bcrypt");
    }
    // Users only in the system account: anonymous clients still land in `$G`
    // through a made-up user, as nats-server arranges it.
    if built.len() == 2
        && entries.authorization.is_none()
        && opts.auth.no_auth_user.is_none()
        && (!opts.auth.users.is_empty() || !opts.auth.nkeys.is_empty())
    {
        let name = format!("nats-{}", &strait_shards::auth::new_nonce()[..8]);
        let password = name[5..].to_string();
        opts.auth
            .users
            .insert(name.clone(), User::new(&name, &password));
        opts.auth.no_auth_user = Some(name);
        opts.auth.no_auth_user_hidden = true;
    }
    if let Some(name) = &opts.auth.no_auth_user {
        if opts.auth.users.is_empty() && opts.auth.nkeys.is_empty() {
            return Err(ConfigError::NoAuthUser(format!(
                "no_auth_user: {name:?} present, but users/nkeys are not defined"
            )));
        }
        if !opts.auth.users.contains_key(name) && !opts.auth.nkeys.iter().any(|n| n.key == *name) {
            return Err(ConfigError::NoAuthUser(format!(
                "no_auth_user: {name:?} not present as user or nkey in authorization block or account configuration"
            )));
        }
    }
    opts.accounts = Arc::new(built);
    Ok(())
}

fn is_bcrypt(password: &str) -> bool {
    password.starts_with("$2a$") || password.starts_with("$2b$") || password.starts_with("$2y$")
}

fn account_error(at: Option<&Entry>, e: AccountError) -> ConfigError {
    match at {
        Some(entry) => invalid(entry, e.to_string()),
        None => ConfigError::Accounts(e),
    }
}

fn map_of(entry: &Entry) -> Result<&Map, ConfigError> {
    entry
        .value
        .as_map()
        .ok_or_else(|| invalid(entry, "expected a map"))
}

/// An array entry's element as an entry of its own, so errors point at it.
fn element(parent: &Entry, value: &Value) -> Entry {
    Entry {
        key: parent.key.clone(),
        key_pos: value.pos.clone(),
        value: value.clone(),
        used_as_variable: false,
    }
}

/// `authorization { user, password, token, timeout, users, permissions }`.
/// Returns the single user, if one is configured.
fn authorization(
    entry: &Entry,
    opts: &mut ServerOptions,
    users: &mut Vec<UserDecl>,
) -> Result<Option<UserDecl>, ConfigError> {
    let map = map_of(entry)?;
    let (mut name, mut password, mut permissions) = (None, None, None);
    let mut default_permissions = None;
    for e in map.iter() {
        match e.key.to_ascii_lowercase().as_str() {
            "user" | "username" => name = Some(string(e)?),
            "password" | "pass" => password = Some(string(e)?),
            "token" => opts.auth.token = Some(string(e)?),
            "timeout" => {
                opts.auth.timeout = match &e.value.kind {
                    Kind::Float(f) if *f >= 0.0 => Duration::from_secs_f64(*f),
                    Kind::Int(i) if *i >= 0 => Duration::from_secs(*i as u64),
                    _ => duration(e)?,
                }
            }
            "users" => {
                users.extend(user_list(e, GLOBAL_ACCOUNT_NAME)?);
            }
            "permissions" | "permission" => permissions = Some(permissions_of(e)?),
            "default_permissions" => default_permissions = Some(permissions_of(e)?),
            "auth_callout" | "callout" => return Err(unsupported(e)),
            _ if e.used_as_variable => {}
            _ => return Err(unknown(e)),
        }
    }
    if let Some(defaults) = default_permissions {
        for u in users.iter_mut() {
            if u.permissions.is_none() {
                u.permissions = Some(defaults.clone());
            }
        }
    }
    if permissions.is_some() && name.is_none() {
        // Token clients get the block's permissions.
        opts.auth.token_permissions = permissions.clone().map(Arc::new);
    }
    Ok(name.map(|name| UserDecl {
        name: Some(name),
        nkey: None,
        password: password.unwrap_or_default(),
        account: GLOBAL_ACCOUNT_NAME.to_string(),
        permissions,
        connection_types: None,
        entry: entry.clone(),
    }))
}

/// `users: [ {user, password | nkey, permissions, account} ]`.
fn user_list(entry: &Entry, account: &str) -> Result<Vec<UserDecl>, ConfigError> {
    let list = entry
        .value
        .as_array()
        .ok_or_else(|| invalid(entry, "expected an array of users"))?;
    let mut out = Vec::new();
    for value in list {
        let at = element(entry, value);
        let map = value
            .as_map()
            .ok_or_else(|| invalid(&at, "expected a user map"))?;
        let mut user = UserDecl {
            name: None,
            nkey: None,
            password: String::new(),
            account: account.to_string(),
            permissions: None,
            connection_types: None,
            entry: at.clone(),
        };
        for f in map.iter() {
            match f.key.to_ascii_lowercase().as_str() {
                "user" | "username" => user.name = Some(string(f)?),
                "password" | "pass" => user.password = string(f)?,
                "nkey" => {
                    let key = string(f)?;
                    if !key.starts_with('U') || nkeys::KeyPair::from_public_key(&key).is_err() {
                        return Err(invalid(
                            f,
                            format!("Not a valid public nkey for a user: {key:?}"),
                        ));
                    }
                    user.nkey = Some(key);
                }
                "permissions" | "permission" | "authorization" => {
                    user.permissions = Some(permissions_of(f)?)
                }
                "account" => user.account = string(f)?,
                "allowed_connection_types" | "connection_types" | "clients" => {
                    user.connection_types = Some(connection_types(f)?)
                }
                _ if f.used_as_variable => {}
                _ => return Err(unknown(f)),
            }
        }
        if user.name.is_none() && user.nkey.is_none() {
            return Err(invalid(&at, "a user needs user or nkey"));
        }
        out.push(user);
    }
    Ok(out)
}

/// `allowed_connection_types: ["STANDARD", "WEBSOCKET", ...]`, upper-cased.
fn connection_types(entry: &Entry) -> Result<Vec<String>, ConfigError> {
    let names = match &entry.value.kind {
        Kind::String(s) => vec![s.clone()],
        Kind::Array(items) => items
            .iter()
            .map(|v| string(&element(entry, v)))
            .collect::<Result<_, _>>()?,
        _ => return Err(invalid(entry, "expected a list of connection types")),
    };
    names
        .into_iter()
        .map(|name| {
            let upper = name.to_ascii_uppercase();
            if strait_shards::auth::CONNECTION_TYPES.contains(&upper.as_str()) {
                Ok(upper)
            } else {
                Err(invalid(entry, format!("unknown connection type {name:?}")))
            }
        })
        .collect()
}

/// `permissions { publish, subscribe, allow_responses }`.
fn permissions_of(entry: &Entry) -> Result<Permissions, ConfigError> {
    let map = map_of(entry)?;
    let mut perms = Permissions::default();
    let mut responses = None;
    for e in map.iter() {
        match e.key.to_ascii_lowercase().as_str() {
            "pub" | "publish" | "import" => perms.publish = subject_permission(e, false)?,
            "sub" | "subscribe" | "export" => perms.subscribe = subject_permission(e, true)?,
            "publish_allow_responses" | "allow_responses" => {
                responses = match &e.value.kind {
                    Kind::Bool(true) => Some(ResponsePermission::default()),
                    Kind::Bool(false) => None,
                    Kind::Map(m) => Some(response_permission(e, m)?),
                    _ => {
                        return Err(invalid(
                            e,
                            "error parsing response permissions, expected a boolean or a map",
                        ))
                    }
                }
            }
            _ if e.used_as_variable => {}
            _ => {
                return Err(invalid(
                    e,
                    format!("Unknown field {:?} parsing permissions", e.key),
                ))
            }
        }
    }
    Ok(match responses {
        Some(r) => perms.with_responses(r),
        None => perms,
    })
}

fn response_permission(entry: &Entry, map: &Map) -> Result<ResponsePermission, ConfigError> {
    let mut rp = ResponsePermission::default();
    for e in map.iter() {
        match e.key.to_ascii_lowercase().as_str() {
            "max" | "max_msgs" | "max_messages" | "max_responses" => {
                let n = e
                    .value
                    .as_i64()
                    .ok_or_else(|| invalid(e, "expected an integer"))?;
                // 0 keeps the default; negative means unlimited.
                if n < 0 {
                    rp.max_msgs = None;
                } else if n > 0 {
                    rp.max_msgs = Some(u32::try_from(n).unwrap_or(u32::MAX));
                }
            }
            "expires" | "expiration" | "ttl" => {
                let Some(text) = e.value.as_str() else {
                    return Err(invalid(e, "error parsing expires, not a duration string"));
                };
                if text.starts_with('-') {
                    rp.expires = None;
                } else {
                    let ttl = e
                        .value
                        .as_duration()
                        .map_err(|err| invalid(e, format!("error parsing expires: {err}")))?;
                    if !ttl.is_zero() {
                        rp.expires = Some(ttl);
                    }
                }
            }
            _ => {
                return Err(invalid(
                    entry,
                    format!("Unknown field {:?} parsing permissions", e.key),
                ))
            }
        }
    }
    Ok(rp)
}

/// `publish: "foo"`, `publish: ["a", "b"]` or `publish: { allow: ..., deny: ... }`.
fn subject_permission(entry: &Entry, subscribe: bool) -> Result<SubjectPermission, ConfigError> {
    let (allow, deny) = match &entry.value.kind {
        Kind::Map(map) => {
            let (mut allow, mut deny) = (None, Vec::new());
            for e in map.iter() {
                match e.key.to_ascii_lowercase().as_str() {
                    "allow" => allow = Some(subjects(e)?),
                    "deny" => deny = subjects(e)?,
                    _ => {
                        return Err(invalid(
                            e,
                            format!("Unknown field name {:?} parsing subject permissions, only 'allow' or 'deny' are permitted", e.key),
                        ))
                    }
                }
            }
            (allow, deny)
        }
        _ => (Some(subjects(entry)?), Vec::new()),
    };
    SubjectPermission::new(allow.as_deref(), &deny, subscribe).map_err(|e| invalid(entry, e))
}

fn subjects(entry: &Entry) -> Result<Vec<String>, ConfigError> {
    match &entry.value.kind {
        Kind::String(s) => Ok(vec![s.clone()]),
        Kind::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    invalid(
                        entry,
                        "Subject in permissions array cannot be cast to string",
                    )
                })
            })
            .collect(),
        _ => Err(invalid(
            entry,
            format!(
                "Expected subject permissions to be a subject, or array of subjects, got {}",
                entry.value.type_name()
            ),
        )),
    }
}

/// `accounts { NAME { users, exports, imports, limits, default_permissions } }` or
/// `accounts: [A, B]`.
fn accounts(
    entry: &Entry,
    builder: &mut AccountsBuilder,
    users: &mut Vec<UserDecl>,
) -> Result<(), ConfigError> {
    if let Some(names) = entry.value.as_array() {
        for v in names {
            let at = element(entry, v);
            builder
                .add_account(&string(&at)?)
                .map_err(|e| invalid(&at, e.to_string()))?;
        }
        return Ok(());
    }
    let map = map_of(entry)?;
    for account in map.iter() {
        if account.used_as_variable {
            continue;
        }
        let name = account.key.as_str();
        builder
            .add_account(name)
            .map_err(|e| invalid(account, e.to_string()))?;
        let body = account
            .value
            .as_map()
            .ok_or_else(|| invalid(account, "Expected map entries for accounts"))?;
        let mut account_users = Vec::new();
        let mut defaults = None;
        for e in body.iter() {
            match e.key.to_ascii_lowercase().as_str() {
                "users" => account_users = user_list(e, name)?,
                "exports" => exports(e, name, builder)?,
                "imports" => imports(e, name, builder)?,
                "limits" => builder.set_limits(name, limits(e)?),
                "jetstream" => builder.set_jetstream(name, jetstream_limits(e)?),
                "default_permissions" => defaults = Some(permissions_of(e)?),
                "nkey" | "mappings" | "maps" | "msg_trace" | "trace_dest" => {
                    return Err(unsupported(e))
                }
                _ if e.used_as_variable => {}
                _ => return Err(unknown(e)),
            }
        }
        if let Some(defaults) = defaults {
            for u in account_users.iter_mut() {
                if u.permissions.is_none() {
                    u.permissions = Some(defaults.clone());
                }
            }
        }
        users.extend(account_users);
    }
    Ok(())
}

/// An account's `jetstream`: `enabled`/`true`, `disabled`/`false`, or its limits.
fn jetstream_limits(entry: &Entry) -> Result<Option<JetStreamLimits>, ConfigError> {
    if let Some(on) = entry.value.as_bool() {
        return Ok(on.then(JetStreamLimits::default));
    }
    if let Some(text) = entry.value.as_str() {
        return match text.to_ascii_lowercase().as_str() {
            "enabled" | "enable" => Ok(Some(JetStreamLimits::default())),
            "disabled" | "disable" => Ok(None),
            _ => Err(invalid(
                entry,
                format!("Expected 'enabled' or 'disabled' for string value, got '{text}'"),
            )),
        };
    }
    let mut limits = JetStreamLimits::default();
    for e in map_of(entry)?.iter() {
        let key = e.key.to_ascii_lowercase();
        let size = || {
            e.value
                .as_i64()
                .ok_or_else(|| invalid(e, format!("Expected a parseable size for {:?}", e.key)))
        };
        match key.as_str() {
            "max_memory" | "max_mem" | "mem" | "memory" => limits.max_memory = size()?,
            "max_store" | "max_file" | "max_disk" | "store" | "disk" => limits.max_store = size()?,
            "max_streams" | "streams" => limits.max_streams = size()?,
            "max_consumers" | "consumers" => limits.max_consumers = size()?,
            "max_ack_pending" => limits.max_ack_pending = size()?,
            "mem_max_stream_bytes" | "memory_max_stream_bytes" => {
                limits.memory_max_stream_bytes = size()?
            }
            "disk_max_stream_bytes" | "store_max_stream_bytes" => {
                limits.store_max_stream_bytes = size()?
            }
            "max_bytes_required" | "max_stream_bytes" | "max_bytes" => {
                limits.max_bytes_required = e.value.as_bool().ok_or_else(|| {
                    invalid(e, format!("Expected a parseable bool for {:?}", e.key))
                })?
            }
            _ if e.used_as_variable => {}
            _ => return Err(unknown(e)),
        }
    }
    Ok(Some(limits))
}

fn limits(entry: &Entry) -> Result<AccountLimits, ConfigError> {
    let mut limits = AccountLimits::default();
    for e in map_of(entry)?.iter() {
        let n = e
            .value
            .as_i64()
            .ok_or_else(|| invalid(e, "expected an integer"))?;
        // -1 (or any negative) is "no limit", as in nats-server.
        let n = usize::try_from(n).ok();
        match e.key.to_ascii_lowercase().as_str() {
            "max_connections" | "max_conn" => limits.max_connections = n,
            "max_subscriptions" | "max_subs" => limits.max_subscriptions = n,
            "max_payload" | "max_pay" => limits.max_payload = n,
            "max_leafnodes" | "max_leafs" => {}
            _ => {
                return Err(invalid(
                    e,
                    format!("Unknown field {:?} parsing account limits", e.key),
                ))
            }
        }
    }
    Ok(limits)
}

/// The maps of an `exports`/`imports` array, each with an entry that points at it
/// for errors; nats-server's texts when the shape is wrong.
fn entries_of<'a>(
    entry: &'a Entry,
    list_name: &str,
    item_name: &str,
) -> Result<Vec<(Entry, &'a Map)>, ConfigError> {
    let list = entry.value.as_array().ok_or_else(|| {
        invalid(
            entry,
            format!(
                "{list_name} should be an array, got {}",
                entry.value.type_name()
            ),
        )
    })?;
    list.iter()
        .map(|v| {
            let at = element(entry, v);
            let map = v.as_map().ok_or_else(|| {
                invalid(
                    &at,
                    format!(
                        "{item_name} Items should be a map with type entry, got {}",
                        v.type_name()
                    ),
                )
            })?;
            Ok((at, map))
        })
        .collect()
}

fn exports(entry: &Entry, account: &str, builder: &mut AccountsBuilder) -> Result<(), ConfigError> {
    for (at, map) in entries_of(entry, "Exports", "Export")? {
        let mut export = Export {
            subject: String::new(),
            service: false,
            accounts: None,
            response_type: ResponseType::Singleton,
            response_threshold: DEFAULT_RESPONSE_THRESHOLD,
        };
        let (mut stream, mut service, mut response) = (false, false, false);
        for e in map.iter() {
            match e.key.to_ascii_lowercase().as_str() {
                "stream" => {
                    if service {
                        return Err(invalid(e, "Detected stream but already saw a service"));
                    }
                    stream = true;
                    export.subject = string(e)?;
                }
                "service" => {
                    if stream {
                        return Err(invalid(e, "Detected service but already saw a stream"));
                    }
                    service = true;
                    export.subject = string(e)?;
                }
                "accounts" => {
                    let names = e
                        .value
                        .as_array()
                        .ok_or_else(|| invalid(e, "expected an array of account names"))?;
                    export.accounts = Some(
                        names
                            .iter()
                            .map(|n| string(&element(e, n)))
                            .collect::<Result<_, _>>()?,
                    );
                }
                "response" | "response_type" => {
                    response = true;
                    let text = string(e)?;
                    export.response_type = ResponseType::parse(&text)
                        .ok_or_else(|| invalid(e, format!("Unknown response type: {text:?}")))?;
                }
                "threshold" | "response_threshold" | "response_max_time" | "response_time" => {
                    response = true;
                    export.response_threshold = duration(e)?;
                }
                "latency" | "allow_trace" | "account_token_position" => return Err(unsupported(e)),
                _ => return Err(unknown(e)),
            }
        }
        if response && stream {
            return Err(invalid(&at, "Detected response directive on non-service"));
        }
        if !stream && !service {
            return Err(invalid(&at, "Export needs a stream or a service"));
        }
        if !strait_shards::subject::is_valid_subject(export.subject.as_bytes()) {
            return Err(invalid(
                &at,
                format!("Error adding export {:?}: invalid subject", export.subject),
            ));
        }
        export.service = service;
        builder.add_export(account, export);
    }
    Ok(())
}

fn imports(entry: &Entry, account: &str, builder: &mut AccountsBuilder) -> Result<(), ConfigError> {
    for (at, map) in entries_of(entry, "Imports", "Import")? {
        let mut decl = ImportDecl {
            importer: account.to_string(),
            exporter: String::new(),
            subject: String::new(),
            service: false,
            prefix: None,
            to: None,
            share: false,
        };
        let (mut stream, mut service) = (false, false);
        for e in map.iter() {
            match e.key.to_ascii_lowercase().as_str() {
                kind @ ("stream" | "service") => {
                    if stream || service {
                        return Err(invalid(e, "Detected stream and service in one import"));
                    }
                    let source = e.value.as_map().ok_or_else(|| {
                        invalid(
                            e,
                            format!(
                                "{} entry should be an account map, got {}",
                                if kind == "stream" {
                                    "Stream"
                                } else {
                                    "Service"
                                },
                                e.value.type_name()
                            ),
                        )
                    })?;
                    for f in source.iter() {
                        match f.key.to_ascii_lowercase().as_str() {
                            "account" => decl.exporter = string(f)?,
                            "subject" => decl.subject = string(f)?,
                            _ => return Err(unknown(f)),
                        }
                    }
                    if decl.exporter.is_empty() || decl.subject.is_empty() {
                        return Err(invalid(e, "Expect an account name and a subject"));
                    }
                    stream = kind == "stream";
                    service = kind == "service";
                }
                "prefix" => decl.prefix = Some(string(e)?),
                "to" => decl.to = Some(string(e)?),
                "share" => {
                    decl.share = e
                        .value
                        .as_bool()
                        .ok_or_else(|| invalid(e, "expected a boolean"))?
                }
                "allow_trace" => return Err(unsupported(e)),
                _ => return Err(unknown(e)),
            }
        }
        if !stream && !service {
            return Err(invalid(&at, "Import needs a stream or a service"));
        }
        if decl.share && !service {
            return Err(invalid(&at, "Detected share on a non-service import"));
        }
        if service && decl.prefix.is_some() {
            return Err(invalid(&at, "Detected prefix on a service import"));
        }
        decl.service = service;
        builder.add_import(decl);
    }
    Ok(())
}
