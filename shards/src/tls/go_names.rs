//! Cipher suites and curves by the names Go gives them (nats-server's
//! `cipher_suites` and `curve_preferences`), mapped onto rustls.

use rustls::crypto::ring as provider;
use rustls::crypto::SupportedKxGroup;
use rustls::SupportedCipherSuite;

use super::error::TlsError;

/// A cipher suite name as Go spells it, and what rustls has for it.
pub(super) enum GoCipher {
    /// TLS 1.3 suites: always on in Go, whatever `cipher_suites` says.
    Tls13,
    Tls12(SupportedCipherSuite),
    /// Go has it among its secure suites; rustls does not implement it.
    Unavailable,
    /// Go lists it as insecure; rustls does not implement it either.
    Insecure,
}

pub(super) fn go_cipher(name: &str) -> Option<GoCipher> {
    use provider::cipher_suite as cs;
    Some(match name {
        "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256" => {
            GoCipher::Tls13
        }
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => {
            GoCipher::Tls12(cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
        }
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => {
            GoCipher::Tls12(cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => {
            GoCipher::Tls12(cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)
        }
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => {
            GoCipher::Tls12(cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384)
        }
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            GoCipher::Tls12(cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)
        }
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            GoCipher::Tls12(cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256)
        }
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA" => GoCipher::Unavailable,
        "TLS_RSA_WITH_RC4_128_SHA"
        | "TLS_RSA_WITH_3DES_EDE_CBC_SHA"
        | "TLS_RSA_WITH_AES_128_CBC_SHA"
        | "TLS_RSA_WITH_AES_256_CBC_SHA"
        | "TLS_RSA_WITH_AES_128_CBC_SHA256"
        | "TLS_RSA_WITH_AES_128_GCM_SHA256"
        | "TLS_RSA_WITH_AES_256_GCM_SHA384"
        | "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA"
        | "TLS_ECDHE_RSA_WITH_RC4_128_SHA"
        | "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"
        | "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256" => GoCipher::Insecure,
        _ => return None,
    })
}

/// Checks one `cipher_suites` entry; insecure names are returned for the caller to
/// refuse unless `allow_insecure_cipher_suites` is set.
pub fn check_cipher(name: &str) -> Result<CipherCheck, TlsError> {
    match go_cipher(name) {
        None => Err(TlsError::UnknownCipher(name.to_string())),
        Some(GoCipher::Insecure) => Ok(CipherCheck::Insecure),
        Some(_) => Ok(CipherCheck::Known),
    }
}

/// What [`check_cipher`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherCheck {
    Known,
    Insecure,
}

/// Checks one `curve_preferences` entry.
pub fn check_curve(name: &str) -> Result<(), TlsError> {
    go_curve(name).map(|_| ())
}

pub(super) fn go_curve(name: &str) -> Result<&'static dyn SupportedKxGroup, TlsError> {
    use provider::kx_group as kx;
    match name {
        "X25519" => Ok(kx::X25519),
        "CurveP256" => Ok(kx::SECP256R1),
        "CurveP384" => Ok(kx::SECP384R1),
        "CurveP521" | "X25519MLKEM768" | "SecP256r1MLKEM768" | "SecP384r1MLKEM1024" => {
            Err(TlsError::CurveUnavailable(name.to_string()))
        }
        _ => Err(TlsError::UnknownCurve(name.to_string())),
    }
}

/// The IANA name Go's `tls.CipherSuiteName` prints.
pub(super) fn cipher_name(suite: SupportedCipherSuite) -> String {
    let s = format!("{:?}", suite.suite());
    match s.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::settings::{crypto_provider, TlsSpec, TlsVersion};

    #[test]
    fn go_names() {
        assert!(check_cipher("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256").is_ok());
        assert_eq!(
            check_cipher("TLS_RSA_WITH_RC4_128_SHA").unwrap(),
            CipherCheck::Insecure
        );
        assert_eq!(
            check_cipher("BOGUS").unwrap_err().to_string(),
            "unrecognized cipher BOGUS"
        );
        assert!(check_curve("CurveP256").is_ok());
        assert!(matches!(
            check_curve("CurveP521"),
            Err(TlsError::CurveUnavailable(_))
        ));
        assert_eq!(
            TlsVersion::parse("1.0").unwrap_err().to_string(),
            "unsupported TLS version: TLS 1.0"
        );
        let spec = TlsSpec {
            cipher_suites: Some(vec!["TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA".into()]),
            ..TlsSpec::default()
        };
        assert!(matches!(
            crypto_provider(&spec),
            Err(TlsError::CipherUnavailable(_))
        ));
    }
}
