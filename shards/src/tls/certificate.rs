//! A client certificate: its fingerprints, its names, its subject as Go prints it,
//! and how it maps to a configured user under `verify_and_map`.

/// Lower-case hex SHA-256, as certificate fingerprints are written.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The subject's RDNs in certificate order: (oid, value) per attribute.
pub(super) fn subject_rdns(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Vec<Vec<(String, Option<String>)>> {
    cert.subject()
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    (
                        atv.attr_type().to_id_string(),
                        atv.as_str().ok().map(str::to_string),
                    )
                })
                .collect()
        })
        .collect()
}

/// What of a client certificate can name a user, in nats-server's order of trying:
/// email SANs, DNS SANs, URI SANs, the subject as a distinguished name, then the
/// subject's string forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    pub emails: Vec<String>,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    /// The subject as go-ldap reads it from the raw certificate (last RDN first);
    /// `None` when it has attributes go-ldap does not know.
    pub dn: Option<Dn>,
    /// Go's `Subject.ToRDNSequence().String()`.
    pub subject: String,
    /// The subject followed by its DC components, when it has any.
    pub subject_with_dcs: Option<String>,
}

/// How a certificate matched a user, for the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertMatch {
    Email,
    DnsName,
    Uri,
    DistinguishedName,
    RdnSequence,
    Subject,
}

impl CertMatch {
    /// nats-server's debug wording.
    pub fn describe(self) -> &'static str {
        match self {
            CertMatch::Email => "Using email found in cert for auth",
            CertMatch::DnsName => "Using SAN found in cert for auth",
            CertMatch::Uri => "Using URI found in cert for auth",
            CertMatch::DistinguishedName => "Using DistinguishedNameMatch for auth",
            CertMatch::RdnSequence => "Using RDNSequence for auth",
            CertMatch::Subject => "Using certificate subject for auth",
        }
    }
}

const OID_CN: &str = "2.5.4.3";
const OID_SERIAL: &str = "2.5.4.5";
const OID_C: &str = "2.5.4.6";
const OID_L: &str = "2.5.4.7";
const OID_ST: &str = "2.5.4.8";
const OID_STREET: &str = "2.5.4.9";
const OID_O: &str = "2.5.4.10";
const OID_OU: &str = "2.5.4.11";
const OID_POSTAL: &str = "2.5.4.17";
const OID_DC: &str = "0.9.2342.19200300.100.1.25";

/// go-ldap's attribute names (Go's pkix names plus DC).
fn ldap_type_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        OID_CN => "CN",
        OID_SERIAL => "SERIALNUMBER",
        OID_C => "C",
        OID_L => "L",
        OID_ST => "ST",
        OID_STREET => "STREET",
        OID_O => "O",
        OID_OU => "OU",
        OID_POSTAL => "POSTALCODE",
        OID_DC => "DC",
        _ => return None,
    })
}

impl PeerCert {
    /// Parses a DER certificate; `None` if it cannot be parsed.
    pub fn parse(der: &[u8]) -> Option<PeerCert> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let (mut emails, mut dns_names, mut uris) = (Vec::new(), Vec::new(), Vec::new());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::RFC822Name(e) => emails.push(e.to_string()),
                    GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                    GeneralName::URI(u) => uris.push(u.to_string()),
                    _ => {}
                }
            }
        }
        let rdns = subject_rdns(&cert);
        let dn = dn_from_rdns(&rdns);
        let subject = go_subject_string(&rdns);
        let dcs: Vec<String> = rdns
            .iter()
            .flatten()
            .filter(|(oid, _)| oid == OID_DC)
            .filter_map(|(_, v)| v.as_ref().map(|v| format!("DC={v}")))
            .collect();
        let subject_with_dcs = (!dcs.is_empty()).then(|| format!("{subject},{}", dcs.join(",")));
        Some(PeerCert {
            emails,
            dns_names,
            uris,
            dn,
            subject,
            subject_with_dcs,
        })
    }

    /// Finds the configured user this certificate names. `users` lists every user
    /// name; `exists` looks one up.
    pub fn find_user<'a>(
        &self,
        users: impl Iterator<Item = &'a str>,
        exists: impl Fn(&str) -> bool,
    ) -> Option<(String, CertMatch)> {
        let literal = [
            (&self.emails, CertMatch::Email),
            (&self.dns_names, CertMatch::DnsName),
            (&self.uris, CertMatch::Uri),
        ];
        for (names, how) in literal {
            if let Some(n) = names.iter().find(|n| exists(n)) {
                return Some((n.clone(), how));
            }
        }
        if let Some(cert_dn) = &self.dn {
            let parsed: Vec<(&str, Dn)> = users
                .filter_map(|u| Dn::parse(u).ok().map(|dn| (u, dn)))
                .collect();
            if let Some((u, _)) = parsed.iter().find(|(_, dn)| dn.equal(cert_dn)) {
                return Some((u.to_string(), CertMatch::DistinguishedName));
            }
            if let Some((u, _)) = parsed.iter().find(|(_, dn)| dn.rdns_match(cert_dn)) {
                return Some((u.to_string(), CertMatch::DistinguishedName));
            }
        }
        if let Some(s) = &self.subject_with_dcs {
            if exists(s) {
                return Some((s.clone(), CertMatch::RdnSequence));
            }
        }
        if exists(&self.subject) {
            return Some((self.subject.clone(), CertMatch::Subject));
        }
        None
    }
}

/// go-ldap's `FromRawCertSubject`: RDNs last first, attributes last first; fails on
/// types it has no name for.
fn dn_from_rdns(rdns: &[Vec<(String, Option<String>)>]) -> Option<Dn> {
    let mut out = Vec::with_capacity(rdns.len());
    for rdn in rdns.iter().rev() {
        if rdn.is_empty() {
            continue;
        }
        let mut attrs = Vec::with_capacity(rdn.len());
        for (oid, value) in rdn.iter().rev() {
            let name = ldap_type_name(oid)?;
            attrs.push((name.to_string(), value.clone()?));
        }
        out.push(attrs);
    }
    Some(Dn { rdns: out })
}

/// Go's `pkix.Name.ToRDNSequence().String()`: the known attributes regrouped in
/// Go's fixed order (several values of one type share an RDN), printed last first.
pub(super) fn go_subject_string(rdns: &[Vec<(String, Option<String>)>]) -> String {
    let values = |oid: &str| -> Vec<String> {
        rdns.iter()
            .flatten()
            .filter(|(o, _)| o == oid)
            .filter_map(|(_, v)| v.clone())
            .collect()
    };
    let mut seq: Vec<(&str, Vec<String>)> = Vec::new();
    for (oid, name) in [
        (OID_C, "C"),
        (OID_ST, "ST"),
        (OID_L, "L"),
        (OID_STREET, "STREET"),
        (OID_POSTAL, "POSTALCODE"),
        (OID_O, "O"),
        (OID_OU, "OU"),
    ] {
        let v = values(oid);
        if !v.is_empty() {
            seq.push((name, v));
        }
    }
    // Go keeps only the last CommonName and SerialNumber.
    for (oid, name) in [(OID_CN, "CN"), (OID_SERIAL, "SERIALNUMBER")] {
        if let Some(last) = values(oid).pop() {
            if !last.is_empty() {
                seq.push((name, vec![last]));
            }
        }
    }
    seq.iter()
        .rev()
        .map(|(name, vals)| {
            vals.iter()
                .map(|v| format!("{name}={}", escape_rdn_value(v)))
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn escape_rdn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.len().saturating_sub(1);
    for (k, c) in v.char_indices() {
        let escape = match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => true,
            ' ' => k == 0 || k == last,
            '#' => k == 0,
            _ => false,
        };
        if escape {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A distinguished name as go-ldap models it: RDNs of (type, value) attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dn {
    rdns: Vec<Vec<(String, String)>>,
}

impl Dn {
    /// go-ldap's `ParseDN` (RFC 4514, without BER-encoded values).
    pub fn parse(s: &str) -> Result<Dn, String> {
        let bytes = s.as_bytes();
        let mut rdns = Vec::new();
        let mut rdn: Vec<(String, String)> = Vec::new();
        let mut buffer: Vec<u8> = Vec::new();
        let mut attr_type = String::new();
        let mut escaping = false;
        let mut trailing_spaces = 0usize;
        let take = |buffer: &mut Vec<u8>, trailing: &mut usize| -> String {
            let keep = buffer.len().saturating_sub(*trailing);
            let s = String::from_utf8_lossy(&buffer[..keep]).into_owned();
            buffer.clear();
            *trailing = 0;
            s
        };
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if escaping {
                trailing_spaces = 0;
                escaping = false;
                match c {
                    b' ' | b'"' | b'#' | b'+' | b',' | b';' | b'<' | b'=' | b'>' | b'\\' => {
                        buffer.push(c)
                    }
                    _ => {
                        let hex = bytes
                            .get(i..i + 2)
                            .ok_or("got corrupted escaped character")?;
                        let hex = std::str::from_utf8(hex)
                            .ok()
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                            .ok_or("failed to decode escaped character")?;
                        buffer.push(hex);
                        i += 1;
                    }
                }
            } else if c == b'\\' {
                trailing_spaces = 0;
                escaping = true;
            } else if c == b'=' {
                attr_type = take(&mut buffer, &mut trailing_spaces);
                if bytes.get(i + 1) == Some(&b'#') {
                    return Err("unsupported BER encoding".into());
                }
            } else if c == b',' || c == b'+' {
                if attr_type.is_empty() {
                    return Err("incomplete type, value pair".into());
                }
                let value = take(&mut buffer, &mut trailing_spaces);
                rdn.push((std::mem::take(&mut attr_type), value));
                if c == b',' {
                    rdns.push(std::mem::take(&mut rdn));
                }
            } else if c == b' ' && buffer.is_empty() {
                // Unescaped leading spaces are ignored.
            } else {
                if c == b' ' {
                    trailing_spaces += 1;
                } else {
                    trailing_spaces = 0;
                }
                buffer.push(c);
            }
            i += 1;
        }
        if !buffer.is_empty() {
            if attr_type.is_empty() {
                return Err("DN ended with incomplete type, value pair".into());
            }
            let value = take(&mut buffer, &mut trailing_spaces);
            rdn.push((attr_type, value));
            rdns.push(rdn);
        }
        Ok(Dn { rdns })
    }

    /// RFC 4517 distinguishedNameMatch: same RDNs in the same order.
    pub fn equal(&self, other: &Dn) -> bool {
        self.rdns.len() == other.rdns.len()
            && self
                .rdns
                .iter()
                .zip(&other.rdns)
                .all(|(a, b)| rdn_equal(a, b))
    }

    /// The same RDNs in any order.
    pub fn rdns_match(&self, other: &Dn) -> bool {
        if self.rdns.len() != other.rdns.len() {
            return false;
        }
        let mut used = vec![false; other.rdns.len()];
        self.rdns.iter().all(|mine| {
            let found = other
                .rdns
                .iter()
                .enumerate()
                .find(|(j, theirs)| !used[*j] && rdn_equal(mine, theirs));
            match found {
                Some((j, _)) => {
                    used[j] = true;
                    true
                }
                None => false,
            }
        })
    }
}

fn rdn_equal(a: &[(String, String)], b: &[(String, String)]) -> bool {
    let has = |set: &[(String, String)], (t, v): &(String, String)| {
        set.iter()
            .any(|(t2, v2)| t2.eq_ignore_ascii_case(t) && v2 == v)
    };
    a.len() == b.len() && a.iter().all(|x| has(b, x)) && b.iter().all(|x| has(a, x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rdns(pairs: &[&[(&str, &str)]]) -> Vec<Vec<(String, Option<String>)>> {
        pairs
            .iter()
            .map(|rdn| {
                rdn.iter()
                    .map(|(o, v)| (o.to_string(), Some(v.to_string())))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn subject_strings_as_go_prints_them() {
        let r = rdns(&[
            &[(OID_C, "US")],
            &[(OID_O, "Synadia")],
            &[(OID_OU, "nats.io")],
            &[(OID_OU, "eng")],
            &[(OID_CN, "alice, the first")],
        ]);
        assert_eq!(
            go_subject_string(&r),
            "CN=alice\\, the first,OU=nats.io+OU=eng,O=Synadia,C=US"
        );
        let dn = dn_from_rdns(&r).unwrap();
        assert!(
            dn.equal(&Dn::parse("CN=alice\\, the first,OU=eng,OU=nats.io,O=Synadia,C=US").unwrap())
        );
        // Unknown attribute types (emailAddress) defeat the DN form, as in go-ldap.
        let with_email = rdns(&[&[("1.2.840.113549.1.9.1", "a@b.c")], &[(OID_CN, "x")]]);
        assert!(dn_from_rdns(&with_email).is_none());
        assert_eq!(go_subject_string(&with_email), "CN=x");
    }

    #[test]
    fn dn_parsing_and_matching() {
        let a = Dn::parse("CN=bob,O=Acme,C=US").unwrap();
        let b = Dn::parse("cn=bob, o=Acme , c=US").unwrap();
        assert!(a.equal(&b));
        let reordered = Dn::parse("C=US,O=Acme,CN=bob").unwrap();
        assert!(!a.equal(&reordered) && a.rdns_match(&reordered));
        assert!(Dn::parse("alice@example.com").is_err());
        assert!(Dn::parse("CN=#0403").is_err());
        let escaped = Dn::parse("CN=a\\2cb").unwrap();
        assert!(escaped.equal(&Dn::parse("CN=a\\,b").unwrap()));
    }

    #[test]
    fn certificate_to_user() {
        let cert = PeerCert {
            emails: vec!["alice@example.com".into()],
            dns_names: vec!["alice.example.com".into()],
            uris: vec![],
            dn: dn_from_rdns(&rdns(&[&[(OID_O, "Acme")], &[(OID_CN, "alice")]])),
            subject: "CN=alice,O=Acme".into(),
            subject_with_dcs: None,
        };
        let users = ["CN=alice, O=Acme", "bob"];
        let exists = |n: &str| users.contains(&n);
        assert_eq!(
            cert.find_user(users.iter().copied(), exists),
            Some(("CN=alice, O=Acme".into(), CertMatch::DistinguishedName))
        );
        let users = ["alice.example.com", "alice@example.com"];
        let exists = |n: &str| users.contains(&n);
        assert_eq!(
            cert.find_user(users.iter().copied(), exists),
            Some(("alice@example.com".into(), CertMatch::Email))
        );
        let users = ["nobody"];
        assert_eq!(
            cert.find_user(users.iter().copied(), |n| users.contains(&n)),
            None
        );
    }
}
