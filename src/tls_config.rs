//! The `tls {}` block and the `--tls*` flags, read as nats-server reads them
//! (`parseTLS`, `GenTLSConfig`, `overrideTLS`), built into the data plane's
//! [`TlsSettings`]. Certificates are read here, so a reload reads them again.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strait_shards::tls::{self, CipherCheck, TlsSettings, TlsSpec, TlsVersion};
use strait_shards::ServerOptions;

use crate::config::ConfigError;
use strait_conf::{Entry, Kind, Map};

fn invalid(entry: &Entry, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        pos: entry.value.pos.clone(),
        key: entry.key.clone(),
        message: message.into(),
    }
}

fn boolean(e: &Entry) -> Result<bool, ConfigError> {
    e.value.as_bool().ok_or_else(|| {
        invalid(
            e,
            format!(
                "error parsing tls config, expected '{}' to be a boolean",
                e.key
            ),
        )
    })
}

fn file(e: &Entry) -> Result<PathBuf, ConfigError> {
    e.value.as_str().map(PathBuf::from).ok_or_else(|| {
        invalid(
            e,
            format!(
                "error parsing tls config, expected '{}' to be filename",
                e.key
            ),
        )
    })
}

/// Each string of a non-empty array, with its position.
fn names(e: &Entry) -> Result<Vec<(&str, &strait_conf::Value)>, ConfigError> {
    let list = e.value.as_array().ok_or_else(|| {
        invalid(
            e,
            format!(
                "error parsing tls config, expected '{}' to be a list",
                e.key
            ),
        )
    })?;
    if list.is_empty() {
        return Err(invalid(
            e,
            format!("error parsing tls config, '{}' cannot be empty", e.key),
        ));
    }
    list.iter()
        .map(|v| {
            v.as_str().map(|s| (s, v)).ok_or_else(|| {
                invalid(
                    e,
                    format!("error parsing tls config, '{}' expects strings", e.key),
                )
            })
        })
        .collect()
}

/// An error about one value inside an entry (a cipher name in a list).
fn at(value: &strait_conf::Value, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        pos: value.pos.clone(),
        key: key.to_string(),
        message: message.into(),
    }
}

/// Keys of nats-server's `tls {}` that strait does not implement.
const UNSUPPORTED: &[&str] = &[
    "cert_store",
    "cert_match_by",
    "cert_match",
    "cert_match_skip_invalid",
    "ca_certs_match",
    "ocsp_peer",
    "certs",
    "certificates",
    "connection_rate_limit",
];

/// Parses `tls {}` into a spec (no file is read yet).
pub fn parse_spec(entry: &Entry) -> Result<TlsSpec, ConfigError> {
    let map = entry
        .value
        .as_map()
        .ok_or_else(|| invalid(entry, "expected a map"))?;
    let mut spec = TlsSpec::default();
    for e in map.iter() {
        let key = e.key.to_ascii_lowercase();
        match key.as_str() {
            "cert_file" => spec.cert_file = Some(file(e)?),
            "key_file" => spec.key_file = Some(file(e)?),
            "ca_file" => spec.ca_file = Some(file(e)?),
            "insecure" => spec.insecure = boolean(e)?,
            "verify" => spec.verify = boolean(e)?,
            "verify_and_map" => {
                let v = boolean(e)?;
                if v {
                    spec.verify = true;
                }
                spec.map = v;
            }
            "verify_cert_and_check_known_urls" => {
                if boolean(e)? {
                    return Err(invalid(
                        e,
                        "verify_cert_and_check_known_urls not supported in this context",
                    ));
                }
            }
            "allow_insecure_cipher_suites" => spec.allow_insecure_cipher_suites = boolean(e)?,
            "cipher_suites" => {
                let mut list = Vec::new();
                for (name, value) in names(e)? {
                    tls::check_cipher(name).map_err(|err| at(value, &e.key, err.to_string()))?;
                    list.push(name.to_string());
                }
                spec.cipher_suites = Some(list);
            }
            "curve_preferences" => {
                let mut list = Vec::new();
                for (name, value) in names(e)? {
                    tls::check_curve(name).map_err(|err| at(value, &e.key, err.to_string()))?;
                    list.push(name.to_string());
                }
                spec.curve_preferences = Some(list);
            }
            "timeout" => {
                spec.timeout = match &e.value.kind {
                    Kind::Int(i) if *i >= 0 => Duration::from_secs(*i as u64),
                    Kind::Float(f) if *f >= 0.0 && f.is_finite() => Duration::from_secs_f64(*f),
                    Kind::String(s) => strait_conf::parse_duration(s).map_err(|err| {
                        invalid(e, format!("error parsing tls config, 'timeout' {err}"))
                    })?,
                    _ => return Err(invalid(e, "error parsing tls config, 'timeout' wrong type")),
                }
            }
            "handshake_first" | "first" | "immediate" => match &e.value.kind {
                Kind::Bool(b) => spec.handshake_first = *b,
                Kind::String(s) => match s.to_ascii_lowercase().as_str() {
                    "true" | "on" => spec.handshake_first = true,
                    "false" | "off" => spec.handshake_first = false,
                    "auto" | "auto_fallback" => {
                        spec.handshake_first = true;
                        spec.handshake_first_fallback = Some(tls::DEFAULT_HANDSHAKE_FIRST_FALLBACK);
                    }
                    _ => match strait_conf::parse_duration(s) {
                        Ok(d) => {
                            spec.handshake_first = true;
                            spec.handshake_first_fallback = Some(d);
                        }
                        Err(_) => {
                            return Err(invalid(
                                e,
                                format!("field {:?}'s value {s:?} is invalid", e.key),
                            ))
                        }
                    },
                },
                _ => {
                    return Err(invalid(
                        e,
                        format!(
                            "field {:?} should be a boolean or a string, got {}",
                            e.key,
                            e.value.type_name()
                        ),
                    ))
                }
            },
            "min_version" => {
                let v = e.value.as_str().ok_or_else(|| {
                    invalid(
                        e,
                        format!(
                            "error parsing tls config: 'min_version' wrong type: {}",
                            e.value.type_name()
                        ),
                    )
                })?;
                spec.min_version = Some(
                    TlsVersion::parse(v)
                        .map_err(|err| invalid(e, format!("error parsing tls config: {err}")))?,
                );
            }
            "pinned_certs" => {
                let list = e.value.as_array().ok_or_else(|| {
                    invalid(e, "error parsing tls config, expected 'pinned_certs' to be a list of hex-encoded sha256 of DER encoded SubjectPublicKeyInfo")
                })?;
                let mut set = HashSet::new();
                for v in list {
                    let entry = v.as_str().unwrap_or_default().to_ascii_lowercase();
                    if entry.len() != 64 || !entry.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(at(v, &e.key, format!("error parsing tls config, 'pinned_certs' key {entry} does not look like hex-encoded sha256 of DER encoded SubjectPublicKeyInfo")));
                    }
                    set.insert(entry);
                }
                spec.pinned_certs = set;
            }
            k if UNSUPPORTED.contains(&k) => {
                return Err(ConfigError::Unsupported {
                    pos: e.key_pos.clone(),
                    key: e.key.clone(),
                })
            }
            _ => {
                return Err(invalid(
                    e,
                    format!("error parsing tls config, unknown field {:?}", e.key),
                ))
            }
        }
    }
    // nats-server refuses insecure suites unless explicitly allowed.
    if let Some(list) = &spec.cipher_suites {
        let insecure: Vec<&str> = list
            .iter()
            .filter(|n| matches!(tls::check_cipher(n), Ok(CipherCheck::Insecure)))
            .map(String::as_str)
            .collect();
        if !insecure.is_empty() && !spec.allow_insecure_cipher_suites {
            return Err(invalid(entry, format!("insecure cipher suites configured without 'allow_insecure_cipher_suites' option set: {}", insecure.join(", "))));
        }
    }
    Ok(spec)
}

/// `tls {}`: parses the block and reads the files it names.
pub fn apply(entry: &Entry, opts: &mut ServerOptions) -> Result<(), ConfigError> {
    let spec = parse_spec(entry)?;
    let settings = TlsSettings::build(spec).map_err(|e| invalid(entry, e.to_string()))?;
    opts.tls = Some(Arc::new(settings));
    Ok(())
}

/// `allow_non_tls: true`.
pub fn apply_allow_non_tls(entry: &Entry, opts: &mut ServerOptions) -> Result<(), ConfigError> {
    opts.allow_non_tls = entry.value.as_bool().ok_or_else(|| {
        invalid(
            entry,
            format!("expected a boolean, got {}", entry.value.type_name()),
        )
    })?;
    Ok(())
}

/// Whether the file sets `authorization { timeout }` (with TLS, nats-server's default
/// authentication timeout is the TLS timeout plus one second).
pub fn auth_timeout_configured(map: &Map) -> bool {
    map.get_ignore_case("authorization")
        .and_then(|e| e.value.as_map())
        .is_some_and(|m| m.get_ignore_case("timeout").is_some())
}

/// The TLS flags, as nats-server's `overrideTLS`: any `--tls*` flag replaces the
/// file's certificate settings; `--tls=false` turns TLS off.
#[derive(Debug, Clone, Default)]
pub struct TlsFlags {
    pub tls: Option<bool>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub verify: Option<bool>,
    pub ca_cert: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsFlagError {
    #[error("TLS Server certificate must be present and valid")]
    NoCert,
    #[error("TLS Server private key must be present and valid")]
    NoKey,
    #[error(transparent)]
    Build(#[from] tls::TlsError),
}

impl TlsFlags {
    fn any(&self) -> bool {
        self.tls.is_some()
            || self.cert.is_some()
            || self.key.is_some()
            || self.verify.is_some()
            || self.ca_cert.is_some()
    }

    /// Applies the flags over what the file configured.
    pub fn apply(&self, opts: &mut ServerOptions) -> Result<(), TlsFlagError> {
        if self.tls == Some(false) {
            opts.tls = None;
            return Ok(());
        }
        if !self.any() {
            return Ok(());
        }
        let cert = self.cert.clone().ok_or(TlsFlagError::NoCert)?;
        let key = self.key.clone().ok_or(TlsFlagError::NoKey)?;
        // Timeout, mapping and handshake-first stay as the file set them.
        let base = opts
            .tls
            .as_ref()
            .map(|t| t.spec.clone())
            .unwrap_or_default();
        let spec = TlsSpec {
            cert_file: Some(cert.into()),
            key_file: Some(key.into()),
            ca_file: self.ca_cert.clone().map(PathBuf::from),
            verify: self.verify.unwrap_or(false),
            cipher_suites: None,
            curve_preferences: None,
            min_version: None,
            ..base
        };
        opts.tls = Some(Arc::new(TlsSettings::build(spec)?));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_conf as conf;

    fn spec(text: &str) -> Result<TlsSpec, ConfigError> {
        let map = conf::parse_str(text, "test.conf", &conf::MemHost::new()).unwrap();
        parse_spec(map.get_ignore_case("tls").unwrap())
    }

    #[test]
    fn block_options() {
        let s = spec(
            "tls {\n  cert_file: \"c.pem\"\n  key_file: \"k.pem\"\n  ca_file: \"ca.pem\"\n  verify_and_map: true\n  timeout: 0.5\n  handshake_first: \"300ms\"\n  cipher_suites: [\"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\"]\n  curve_preferences: [\"X25519\", \"CurveP256\"]\n  min_version: \"1.3\"\n}\n",
        )
        .unwrap();
        assert!(s.verify && s.map);
        assert_eq!(s.timeout, Duration::from_millis(500));
        assert!(s.handshake_first);
        assert_eq!(s.handshake_first_fallback, Some(Duration::from_millis(300)));
        assert_eq!(s.min_version, Some(TlsVersion::Tls13));
        let s = spec("tls { timeout: \"3s\", handshake_first: true }").unwrap();
        assert_eq!(s.timeout, Duration::from_secs(3));
        assert!(s.handshake_first && s.handshake_first_fallback.is_none());
        let s = spec("tls { handshake_first: auto }").unwrap();
        assert_eq!(
            s.handshake_first_fallback,
            Some(tls::DEFAULT_HANDSHAKE_FIRST_FALLBACK)
        );
    }

    #[test]
    fn block_errors_carry_positions() {
        let err = spec("tls {\n  cipher_suites: [\n    \"TLS_BOGUS\"\n  ]\n}\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.conf:3:5: cipher_suites: unrecognized cipher TLS_BOGUS"
        );
        let err = spec("tls {\n  curve_preferences: [\"CurveP521\"]\n}\n").unwrap_err();
        assert!(
            err.to_string().starts_with("test.conf:2:")
                && err.to_string().contains("CurveP521 is not available"),
            "{err}"
        );
        let err = spec("tls {\n  cipher_suites: [\"TLS_RSA_WITH_RC4_128_SHA\"]\n}\n").unwrap_err();
        assert!(err
            .to_string()
            .contains("insecure cipher suites configured without 'allow_insecure_cipher_suites' option set: TLS_RSA_WITH_RC4_128_SHA"));
        let err = spec("tls {\n  verify: \"yes\"\n}\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.conf:2:11: verify: error parsing tls config, expected 'verify' to be a boolean"
        );
        let err = spec("tls {\n  bogus: 1\n}\n").unwrap_err();
        assert!(err.to_string().contains("unknown field \"bogus\""), "{err}");
        let err = spec("tls {\n  min_version: \"1.1\"\n}\n").unwrap_err();
        assert!(err
            .to_string()
            .ends_with("error parsing tls config: unsupported TLS version: TLS 1.1"));
        let err = spec("tls {\n  cert_store: \"WindowsCurrentUser\"\n}\n").unwrap_err();
        assert!(err.to_string().contains("not supported by strait yet"));
        let err = spec("tls {\n  handshake_first: \"maybe\"\n}\n").unwrap_err();
        assert!(err.to_string().contains("is invalid"), "{err}");
    }

    #[test]
    fn missing_files() {
        let map = conf::parse_str(
            "tls {\n  cert_file: \"/nonexistent/c.pem\"\n  key_file: \"/nonexistent/k.pem\"\n}\n",
            "test.conf",
            &conf::MemHost::new(),
        )
        .unwrap();
        let mut opts = ServerOptions::default();
        let err = apply(map.get_ignore_case("tls").unwrap(), &mut opts).unwrap_err();
        assert!(
            err.to_string().starts_with("test.conf:1:5: tls: error parsing X509 certificate/key pair: open /nonexistent/c.pem:"),
            "{err}"
        );
        let map = conf::parse_str(
            "tls {\n  key_file: \"k.pem\"\n}\n",
            "test.conf",
            &conf::MemHost::new(),
        )
        .unwrap();
        let err = apply(map.get_ignore_case("tls").unwrap(), &mut opts).unwrap_err();
        assert!(err
            .to_string()
            .ends_with("missing 'cert_file' in TLS configuration"));
        let flags = TlsFlags {
            verify: Some(true),
            ..Default::default()
        };
        assert_eq!(
            flags.apply(&mut opts).unwrap_err().to_string(),
            "TLS Server certificate must be present and valid"
        );
    }
}
