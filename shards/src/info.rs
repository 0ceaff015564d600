//! The INFO the server sends and the CONNECT a client sends, with nats-server's
//! field names, order and defaults.

use serde::{Deserialize, Serialize};

use crate::options::{ServerOptions, API_LEVEL, NATS_VERSION, STRAIT_VERSION};

fn is_false(b: &bool) -> bool {
    !*b
}

/// INFO, in the field order nats-server emits; empty and false fields are omitted.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub server_id: String,
    pub server_name: String,
    pub version: String,
    pub proto: u32,
    pub go: String,
    pub host: String,
    pub port: u16,
    pub headers: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub auth_required: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub tls_required: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub tls_verify: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub tls_available: bool,
    pub max_payload: usize,
    #[serde(skip_serializing_if = "is_false")]
    pub jetstream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub ldm: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub connect_info: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_account: Option<String>,
    pub api_lvl: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub xkey: String,
}

impl ServerInfo {
    /// The server-wide part of INFO; per-connection fields are filled in later.
    pub fn from_options(opts: &ServerOptions, port: u16) -> Self {
        ServerInfo {
            server_id: opts.server_id.clone(),
            server_name: if opts.server_name.is_empty() {
                opts.server_id.clone()
            } else {
                opts.server_name.clone()
            },
            version: NATS_VERSION.into(),
            proto: 1,
            go: format!("strait-{STRAIT_VERSION}"),
            host: opts.host.clone(),
            port,
            headers: true,
            auth_required: opts.auth.advertised(),
            tls_required: opts.tls_required(),
            tls_verify: opts.tls.as_ref().is_some_and(|t| t.verify()),
            tls_available: opts.tls.is_some() && !opts.tls_required(),
            max_payload: opts.max_payload,
            jetstream: false,
            client_id: None,
            client_ip: None,
            nonce: None,
            ldm: false,
            connect_info: false,
            remote_account: None,
            api_lvl: API_LEVEL,
            xkey: opts.xkey.clone(),
        }
    }

    /// `INFO {...} \r\n` — note the space nats-server puts before CRLF.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = b"INFO ".to_vec();
        // Serializing a struct of strings and numbers cannot fail.
        serde_json::to_writer(&mut line, self).unwrap_or_default();
        line.extend_from_slice(b" \r\n");
        line
    }
}

fn yes() -> bool {
    true
}

/// Clients send `null` for fields they leave unset.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// CONNECT options. Absent fields take nats-server's defaults: verbose, pedantic
/// and echo are on, everything else off.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct ConnectInfo {
    #[serde(default = "yes")]
    pub verbose: bool,
    #[serde(default = "yes")]
    pub pedantic: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tls_required: bool,
    #[serde(default)]
    pub auth_token: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub pass: Option<String>,
    #[serde(default)]
    pub nkey: Option<String>,
    #[serde(default)]
    pub sig: Option<String>,
    #[serde(default)]
    pub jwt: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub lang: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub version: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub protocol: i64,
    #[serde(default = "yes")]
    pub echo: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub headers: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub no_responders: bool,
    /// An account asked for by name, which nats-server refuses.
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub new_account: bool,
}

impl ConnectInfo {
    /// What a client that never sent CONNECT gets (allowed when no auth is configured).
    pub fn implicit() -> Self {
        serde_json::from_str("{}").unwrap_or_default()
    }

    /// This CONNECT's JSON decoded over `self`, as Go's `json.Unmarshal` decodes
    /// into nats-server's existing options: fields the JSON leaves out or sets to
    /// `null` keep their value (so a second CONNECT changes only what it names),
    /// keys match field names case-insensitively, unknown keys are ignored, and
    /// `null` as a whole changes nothing.
    pub fn decode_over(&self, json: &[u8]) -> Result<ConnectInfo, serde_json::Error> {
        use serde::de::Error as _;
        let given: serde_json::Value = serde_json::from_slice(json)?;
        let fields = match given {
            serde_json::Value::Null => return Ok(self.clone()),
            serde_json::Value::Object(fields) => fields,
            other => {
                return Err(serde_json::Error::custom(format!(
                    "json: cannot unmarshal {} into Go value of type server.ClientOpts",
                    json_kind(&other)
                )))
            }
        };
        let serde_json::Value::Object(mut merged) = serde_json::to_value(self)? else {
            return Err(serde_json::Error::custom(
                "CONNECT options are not an object",
            ));
        };
        for (key, value) in fields {
            if value.is_null() {
                continue;
            }
            let field = if merged.contains_key(&key) {
                Some(key)
            } else {
                merged
                    .keys()
                    .find(|known| known.eq_ignore_ascii_case(&key))
                    .cloned()
            };
            if let Some(field) = field {
                merged.insert(field, value);
            }
        }
        serde_json::from_value(serde_json::Value::Object(merged))
    }
}

/// Go's name for a JSON value's kind, as its decoding errors say it.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_defaults() {
        let c = ConnectInfo::implicit();
        assert!(c.verbose && c.pedantic && c.echo);
        assert!(!c.headers && !c.no_responders);
        let c: ConnectInfo =
            serde_json::from_str(r#"{"verbose":false,"pedantic":false,"protocol":1,"headers":true,"name":"n","lang":null,"extra":[1]}"#)
                .unwrap();
        assert!(!c.verbose && !c.pedantic && c.echo && c.headers);
        assert_eq!(c.protocol, 1);
        assert!(serde_json::from_str::<ConnectInfo>("{bad json}").is_err());
    }

    #[test]
    fn connect_decodes_over_what_was_there_as_go_does() {
        let first = ConnectInfo::implicit()
            .decode_over(br#"{"verbose":false,"name":"a","headers":true}"#)
            .unwrap();
        assert!(!first.verbose && first.pedantic && first.headers);
        // A second CONNECT changes only what it names; null changes nothing.
        let second = first
            .decode_over(br#"{"PEDANTIC":false,"Name":null,"user":"u","unknown":[1]}"#)
            .unwrap();
        assert!(!second.verbose && !second.pedantic && second.headers);
        assert_eq!(second.name, "a");
        assert_eq!(second.user.as_deref(), Some("u"));
        let same = second.decode_over(b"null").unwrap();
        assert_eq!(same.user.as_deref(), Some("u"));
        assert!(second.decode_over(br#""string""#).is_err());
        assert!(second.decode_over(br#"{"verbose":"yes"}"#).is_err());
        assert!(second.decode_over(br#"{} trailing"#).is_err());
        let asked = second.decode_over(br#"{"account":"X"}"#).unwrap();
        assert_eq!(asked.account.as_deref(), Some("X"));
    }

    #[test]
    fn info_line_shape() {
        let opts = ServerOptions {
            server_id: "NABC".into(),
            host: "127.0.0.1".into(),
            xkey: "XABC".into(),
            ..Default::default()
        };
        let mut info = ServerInfo::from_options(&opts, 4222);
        info.client_id = Some(7);
        info.client_ip = Some("127.0.0.1".into());
        let line = String::from_utf8(info.to_line()).unwrap();
        assert!(line.starts_with(
            r#"INFO {"server_id":"NABC","server_name":"NABC","version":"2.14.0","proto":1,"go":"#
        ));
        assert!(line.ends_with(&(r#""headers":true,"max_payload":1048576,"client_id":7,"client_ip":"127.0.0.1","api_lvl":4,"xkey":"XABC"} "#.to_owned() + "\r\n")));
    }
}
