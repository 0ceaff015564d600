//! CONNECT's options, decoded as nats-server decodes them.

use serde::{Deserialize, Serialize};

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
}
