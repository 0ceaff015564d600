//! The INFO the server sends and the CONNECT a client sends, with nats-server's
//! field names, order and defaults.

use serde::Serialize;

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
            server_name: opts.name().to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
