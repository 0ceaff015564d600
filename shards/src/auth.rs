//! Client authentication, as nats-server checks CONNECT: a single user/password or
//! token, a list of users (plain or bcrypt passwords), and NKEY users who sign the
//! nonce sent in INFO. Sans-I/O: the connection hands in its CONNECT and nonce.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::accounts::GLOBAL_ACCOUNT;
use crate::permissions::Permissions;
use crate::proto::ConnectInfo;
use crate::tls::TlsState;

/// One configured user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// Plain text, or a bcrypt hash (`$2a$...`).
    pub password: String,
    /// The account the user is bound to (an index into `ServerOptions::accounts`).
    pub account: u32,
    pub permissions: Option<Arc<Permissions>>,
    /// `allowed_connection_types` (upper case); None allows every type.
    pub connection_types: Option<Vec<String>>,
}

impl User {
    pub fn new(name: &str, password: &str) -> User {
        User {
            name: name.to_string(),
            password: password.to_string(),
            account: GLOBAL_ACCOUNT,
            permissions: None,
            connection_types: None,
        }
    }
}

/// The connection types nats-server knows for `allowed_connection_types`.
pub const CONNECTION_TYPES: &[&str] = &[
    "STANDARD",
    "WEBSOCKET",
    "LEAFNODE",
    "LEAFNODE_WS",
    "MQTT",
    "MQTT_WS",
    "IN_PROCESS",
];

/// What a plain client connection is; strait's only listener serves these.
const STANDARD: &str = "STANDARD";

fn type_allowed(types: Option<&Vec<String>>) -> bool {
    types.is_none_or(|t| t.is_empty() || t.iter().any(|t| t == STANDARD))
}

/// One configured NKEY user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NkeyUser {
    /// The public key, starting with `U`.
    pub key: String,
    pub account: u32,
    pub permissions: Option<Arc<Permissions>>,
    pub connection_types: Option<Vec<String>>,
}

/// Authentication settings (`authorization {}`, `accounts {}` users and
/// `--user/--pass/--auth`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    pub users: HashMap<String, User>,
    pub token: Option<String>,
    /// `authorization { permissions }`: what a token client may do.
    pub token_permissions: Option<Arc<Permissions>>,
    pub nkeys: Vec<NkeyUser>,
    /// A CONNECT without credentials is this user (`no_auth_user`).
    pub no_auth_user: Option<String>,
    /// `no_auth_user` was made up so that configuring only the system account's
    /// users keeps anonymous clients in `$G`, as nats-server does; INFO then still
    /// says `auth_required`.
    pub no_auth_user_hidden: bool,
    pub timeout: Duration,
}

/// Who a connection authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    User(String),
    Token,
    Nkey(String),
}

impl Identity {
    /// nats-server's `getAuthUserLabel`, shown in client log lines.
    pub fn label(&self) -> String {
        match self {
            Identity::User(name) => format!("user:{name}"),
            Identity::Token => "token".to_string(),
            Identity::Nkey(key) => format!("nkey:{key}"),
        }
    }

    /// nats-server's `getRawAuthUser`: /connz's `authorized_user`.
    pub fn raw(&self) -> String {
        match self {
            Identity::User(name) => name.clone(),
            Identity::Token => "[REDACTED]".to_string(),
            Identity::Nkey(key) => key.clone(),
        }
    }

    /// nats-server's `getAuthUser`, for violation logs.
    pub fn describe(&self) -> String {
        match self {
            Identity::User(name) => format!("User {name:?}"),
            Identity::Token => "Token \"[REDACTED]\"".to_string(),
            Identity::Nkey(key) => format!("Nkey {key:?}"),
        }
    }
}

/// A connection's standing after CONNECT: who, in which account, allowed what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub identity: Identity,
    pub account: u32,
    pub permissions: Option<Arc<Permissions>>,
}

/// Why CONNECT was refused; the log line's detail, as nats-server writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    pub detail: String,
}

impl AuthConfig {
    /// True when clients must authenticate.
    pub fn required(&self) -> bool {
        !self.users.is_empty() || self.token.is_some() || !self.nkeys.is_empty()
    }

    /// INFO's `auth_required`: false when `no_auth_user` lets clients in without
    /// credentials (CONNECT is still required first).
    pub fn advertised(&self) -> bool {
        self.required() && (self.no_auth_user.is_none() || self.no_auth_user_hidden)
    }

    /// True when INFO must carry a nonce (NKEY users exist).
    pub fn needs_nonce(&self) -> bool {
        !self.nkeys.is_empty()
    }

    /// Checks CONNECT's credentials.
    pub fn authenticate(
        &self,
        c: &ConnectInfo,
        nonce: &[u8],
    ) -> Result<Authenticated, AuthFailure> {
        self.identify(c, nonce)
            .map(|identity| self.standing_or_global(identity))
    }

    /// `standing`, or the global account without permissions for an identity the
    /// configuration does not list (a token).
    pub fn standing_or_global(&self, identity: Identity) -> Authenticated {
        self.standing(&identity).unwrap_or(Authenticated {
            identity,
            account: GLOBAL_ACCOUNT,
            permissions: None,
        })
    }

    /// The account and permissions configured for `who`; None when the
    /// configuration no longer has it.
    pub fn standing(&self, who: &Identity) -> Option<Authenticated> {
        let (account, permissions) = match who {
            Identity::User(name) => {
                let u = self.users.get(name)?;
                (u.account, u.permissions.clone())
            }
            Identity::Token => {
                self.token.as_ref()?;
                (GLOBAL_ACCOUNT, self.token_permissions.clone())
            }
            Identity::Nkey(key) => {
                let u = self.nkeys.iter().find(|u| u.key == *key)?;
                (u.account, u.permissions.clone())
            }
        };
        Some(Authenticated {
            identity: who.clone(),
            account,
            permissions,
        })
    }

    fn identify(&self, c: &ConnectInfo, nonce: &[u8]) -> Result<Identity, AuthFailure> {
        if let Some(nkey) = &c.nkey {
            if !self.nkeys.iter().any(|u| u.key == *nkey) {
                return Err(AuthFailure {
                    detail: format!("authentication error - NKey \"{nkey}\""),
                });
            }
            let sig = c.sig.as_deref().unwrap_or("");
            let allowed = self
                .nkeys
                .iter()
                .find(|u| u.key == *nkey)
                .is_some_and(|u| type_allowed(u.connection_types.as_ref()));
            return if allowed && verify_nkey(nkey, nonce, sig) {
                Ok(Identity::Nkey(nkey.clone()))
            } else {
                Err(AuthFailure {
                    detail: format!("authentication error - NKey \"{nkey}\""),
                })
            };
        }
        if let Some(token) = &c.auth_token {
            return match &self.token {
                Some(t) if password_matches(t, token) => Ok(Identity::Token),
                _ => Err(AuthFailure {
                    detail: "authentication error".into(),
                }),
            };
        }
        if let Some(name) = &c.user {
            return match self.users.get(name) {
                Some(u)
                    if password_matches(&u.password, c.pass.as_deref().unwrap_or(""))
                        && type_allowed(u.connection_types.as_ref()) =>
                {
                    Ok(Identity::User(name.clone()))
                }
                _ => Err(AuthFailure {
                    detail: format!("authentication error - User \"{name}\""),
                }),
            };
        }
        match &self.no_auth_user {
            Some(name) if self.users.contains_key(name) => Ok(Identity::User(name.clone())),
            Some(key) if self.nkeys.iter().any(|n| n.key == *key) => {
                Ok(Identity::Nkey(key.clone()))
            }
            _ => Err(AuthFailure {
                detail: "authentication error".into(),
            }),
        }
    }

    /// CONNECT's authentication, through the client certificate when the
    /// connection is under `verify_and_map` (`map_certificates`) and the client
    /// did not present an NKEY. `prefix` starts the log lines.
    pub fn authenticate_connect(
        &self,
        map_certificates: bool,
        prefix: &str,
        tls: Option<&TlsState>,
        info: &ConnectInfo,
        nonce: &[u8],
    ) -> Result<Authenticated, AuthFailure> {
        let mapping = map_certificates && info.nkey.is_none();
        if !mapping || self.users.is_empty() {
            return self.authenticate(info, nonce);
        }
        let Some(peer) = tls.and_then(|s| s.peer.clone()) else {
            tracing::debug!("{prefix} - User required in cert, no peer certificates found");
            return Err(AuthFailure {
                detail: "authentication error".into(),
            });
        };
        let result = self.authenticate_certificate(&peer);
        match &result {
            Ok((identity, how)) => {
                if let Identity::User(name) = identity {
                    tracing::debug!("{prefix} - {} [{name:?}]", how.describe());
                }
                if let Some(user) = info.user.as_deref().filter(|u| !u.is_empty()) {
                    tracing::warn!(
                    "{prefix} - User {user:?} found in connect proto, but user required from cert"
                );
                }
            }
            Err(_) => tracing::debug!("{prefix} - User in cert [{:?}], not found", peer.subject),
        }
        result.map(|(identity, _)| self.standing_or_global(identity))
    }

    /// `verify_and_map`: the configured user a verified client certificate names
    /// (no password needed).
    pub fn authenticate_certificate(
        &self,
        cert: &crate::tls::PeerCert,
    ) -> Result<(Identity, crate::tls::CertMatch), AuthFailure> {
        let users = self.users.keys().map(String::as_str);
        match cert.find_user(users, |name| self.users.contains_key(name)) {
            Some((name, how)) => Ok((Identity::User(name), how)),
            None => Err(AuthFailure {
                detail: "authentication error".into(),
            }),
        }
    }

    /// Whether a connection that authenticated as `who` may stay after a reload:
    /// its credentials are unchanged (its permissions may have changed).
    pub fn still_allows(&self, who: &Identity, old: &AuthConfig) -> bool {
        match who {
            Identity::User(name) => match (self.users.get(name), old.users.get(name)) {
                (Some(new), Some(old)) => new.password == old.password,
                _ => false,
            },
            Identity::Token => self.token.is_some() && self.token == old.token,
            Identity::Nkey(key) => self.nkeys.iter().any(|u| u.key == *key),
        }
    }
}

fn password_matches(configured: &str, given: &str) -> bool {
    if configured.starts_with("$2a$")
        || configured.starts_with("$2b$")
        || configured.starts_with("$2y$")
    {
        bcrypt::verify(given, configured).unwrap_or(false)
    } else {
        // Constant time is not needed against a local comparison's timing on loopback,
        // but costs nothing.
        configured.len() == given.len()
            && configured
                .bytes()
                .zip(given.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Verifies an NKEY signature of the nonce. Clients send it in base64url (most) or
/// in standard padded base64 (nats.py); nats-server tries the first, then the second.
fn verify_nkey(public_key: &str, nonce: &[u8], sig: &str) -> bool {
    let url = data_encoding::BASE64URL_NOPAD.decode(sig.trim_end_matches('=').as_bytes());
    let Ok(sig) = url.or_else(|_| data_encoding::BASE64.decode(sig.as_bytes())) else {
        return false;
    };
    match nkeys::KeyPair::from_public_key(public_key) {
        Ok(kp) => kp.verify(nonce, &sig).is_ok(),
        Err(_) => false,
    }
}

/// A fresh nonce for INFO: 11 random bytes, base64url without padding, as nats-server.
pub fn new_nonce() -> String {
    use rand::RngCore;
    let mut raw = [0u8; 11];
    rand::thread_rng().fill_bytes(&mut raw);
    data_encoding::BASE64URL_NOPAD.encode(&raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(json: &str) -> ConnectInfo {
        serde_json::from_str(json).unwrap()
    }

    fn config() -> AuthConfig {
        let mut users = HashMap::new();
        users.insert("derek".into(), User::new("derek", "s3cr3t"));
        users.insert(
            "hashed".into(),
            User::new("hashed", &bcrypt::hash("pw", 4).unwrap()),
        );
        AuthConfig {
            users,
            timeout: Duration::from_secs(2),
            ..Default::default()
        }
    }

    #[test]
    fn users_and_passwords() {
        let c = config();
        assert!(c.required());
        assert_eq!(
            c.authenticate(&connect(r#"{"user":"derek","pass":"s3cr3t"}"#), b"")
                .map(|a| a.identity),
            Ok(Identity::User("derek".into()))
        );
        assert_eq!(
            c.authenticate(&connect(r#"{"user":"derek","pass":"nope"}"#), b"")
                .unwrap_err()
                .detail,
            "authentication error - User \"derek\""
        );
        assert!(c
            .authenticate(&connect(r#"{"user":"hashed","pass":"pw"}"#), b"")
            .is_ok());
        assert!(c.authenticate(&connect("{}"), b"").is_err());
        let mut websocket_only = config();
        if let Some(u) = websocket_only.users.get_mut("derek") {
            u.connection_types = Some(vec!["WEBSOCKET".into()]);
        }
        assert!(websocket_only
            .authenticate(&connect(r#"{"user":"derek","pass":"s3cr3t"}"#), b"")
            .is_err());
        let mut with_default = config();
        with_default.no_auth_user = Some("derek".into());
        assert_eq!(
            with_default
                .authenticate(&connect("{}"), b"")
                .map(|a| a.identity),
            Ok(Identity::User("derek".into()))
        );
    }

    #[test]
    fn tokens_and_nkeys() {
        let token = AuthConfig {
            token: Some("s3cr3t".into()),
            ..Default::default()
        };
        assert!(token
            .authenticate(&connect(r#"{"auth_token":"s3cr3t"}"#), b"")
            .is_ok());
        assert!(token
            .authenticate(&connect(r#"{"auth_token":"bad"}"#), b"")
            .is_err());
        let user = nkeys::KeyPair::new_user();
        let nkey_cfg = AuthConfig {
            nkeys: vec![NkeyUser {
                key: user.public_key(),
                account: 3,
                permissions: None,
                connection_types: None,
            }],
            ..Default::default()
        };
        assert!(nkey_cfg.needs_nonce());
        let nonce = new_nonce();
        let sig = data_encoding::BASE64URL_NOPAD.encode(&user.sign(nonce.as_bytes()).unwrap());
        let good = format!(r#"{{"nkey":"{}","sig":"{}"}}"#, user.public_key(), sig);
        assert_eq!(
            nkey_cfg
                .authenticate(&connect(&good), nonce.as_bytes())
                .map(|a| a.account),
            Ok(3)
        );
        assert!(nkey_cfg
            .authenticate(&connect(&good), b"another nonce")
            .is_err());
        // nats.py signs in standard base64 with padding; the signature's 64 bytes
        // encode with '+' or '/' for most nonces, so try until one does.
        let (nonce, standard) = (0..64)
            .map(|_| {
                let nonce = new_nonce();
                let sig = user.sign(nonce.as_bytes()).unwrap();
                (nonce, data_encoding::BASE64.encode(&sig))
            })
            .find(|(_, s)| s.contains(['+', '/']))
            .expect("a signature with '+' or '/'");
        let python = format!(r#"{{"nkey":"{}","sig":"{}"}}"#, user.public_key(), standard);
        assert_eq!(
            nkey_cfg
                .authenticate(&connect(&python), nonce.as_bytes())
                .map(|a| a.account),
            Ok(3)
        );
        let garbled = format!(r#"{{"nkey":"{}","sig":"%%%"}}"#, user.public_key());
        assert!(nkey_cfg
            .authenticate(&connect(&garbled), nonce.as_bytes())
            .is_err());
    }
}
