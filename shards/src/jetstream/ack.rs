//! The reply subjects deliveries carry, which acks come back on. Two layouts,
//! as nats-server 2.14 has them:
//!
//! - v1 (the default): `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`
//! - v2 (`feature_flags { js_ack_fc_v2 }`):
//!   `$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`,
//!   with `_` for no domain; more tokens may follow and are ignored.

use std::fmt::Write;

use sha2::{Digest, Sha256};

const PREFIX: &str = "$JS.ACK.";
const V1_TOKENS: usize = 9;
const V2_TOKENS: usize = 11;
const HASH_LEN: usize = 8;
const HASH_DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// nats-server's short hash of a name (accounts in ack subjects, servers in
/// `$SYS` subjects): the first eight bytes of its SHA-256, each as one of 62 digits.
pub fn name_hash(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    digest[..HASH_LEN]
        .iter()
        .map(|b| HASH_DIGITS[(*b % 62) as usize] as char)
        .collect()
}

/// What a delivery's reply subject says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckReply<'a> {
    pub stream: &'a str,
    pub consumer: &'a str,
    pub deliveries: u64,
    pub stream_seq: u64,
    pub consumer_seq: u64,
    /// The message's timestamp (ns).
    pub ts: i64,
    /// Messages left for the consumer after this one.
    pub pending: u64,
}

/// The fixed part of a consumer's ack subjects, built once per consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckPrefix(String);

impl AckPrefix {
    /// v1 layout.
    pub fn v1(stream: &str, consumer: &str) -> AckPrefix {
        AckPrefix(format!("{PREFIX}{stream}.{consumer}."))
    }

    /// v2 layout, with the JetStream domain (if any) and the account's name.
    pub fn v2(domain: Option<&str>, account: &str, stream: &str, consumer: &str) -> AckPrefix {
        let domain = domain.filter(|d| !d.is_empty()).unwrap_or("_");
        AckPrefix(format!(
            "{PREFIX}{domain}.{}.{stream}.{consumer}.",
            name_hash(account)
        ))
    }

    /// Writes the reply subject of one delivery into `out` (cleared first), so
    /// a consumer reuses one buffer for all of them.
    pub fn write(
        &self,
        out: &mut String,
        deliveries: u64,
        sseq: u64,
        cseq: u64,
        ts: i64,
        pending: u64,
    ) {
        out.clear();
        out.push_str(&self.0);
        let _ = write!(out, "{deliveries}.{sseq}.{cseq}.{ts}.{pending}");
    }

    /// The subject the stream subscribes to for this consumer's acks.
    pub fn subscription(&self) -> String {
        format!("{}*.*.*.*.*", self.0)
    }
}

fn number(token: &str) -> Option<u64> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

impl<'a> AckReply<'a> {
    /// Reads either layout; `None` for anything else (nats-server ignores such acks).
    pub fn parse(subject: &'a str) -> Option<AckReply<'a>> {
        let rest = subject.strip_prefix(PREFIX)?;
        let tokens: Vec<&str> = rest.split('.').collect();
        let count = tokens.len() + 2;
        let offset = match count {
            V1_TOKENS => 0,
            n if n >= V2_TOKENS => 2,
            _ => return None,
        };
        let t = &tokens[offset..];
        Some(AckReply {
            stream: t[0],
            consumer: t[1],
            deliveries: number(t[2])?,
            stream_seq: number(t[3])?,
            consumer_seq: number(t[4])?,
            ts: number(t[5])? as i64,
            pending: number(t[6])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reply subject of the captured `MSG.NEXT` exchange.
    #[test]
    fn the_captured_v1_subject_round_trips() {
        let captured = "$JS.ACK.ORDERS.NEW.1.2.2.1795706615996970735.4";
        let reply = AckReply::parse(captured).expect("v1");
        assert_eq!(
            reply,
            AckReply {
                stream: "ORDERS",
                consumer: "NEW",
                deliveries: 1,
                stream_seq: 2,
                consumer_seq: 2,
                ts: 1_795_706_615_996_970_735,
                pending: 4,
            }
        );
        let mut out = String::new();
        AckPrefix::v1("ORDERS", "NEW").write(&mut out, 1, 2, 2, 1_795_706_615_996_970_735, 4);
        assert_eq!(out, captured);
    }

    #[test]
    fn v2_carries_domain_and_account_hash() {
        let prefix = AckPrefix::v2(None, "$G", "S", "C");
        let mut out = String::new();
        prefix.write(&mut out, 3, 10, 12, 99, 0);
        let hash = name_hash("$G");
        assert_eq!(out, format!("$JS.ACK._.{hash}.S.C.3.10.12.99.0"));
        let reply = AckReply::parse(&out).expect("v2");
        assert_eq!(
            (reply.stream, reply.consumer, reply.stream_seq),
            ("S", "C", 10)
        );
        let extended = format!("{out}.token");
        assert!(
            AckReply::parse(&extended).is_some(),
            "later tokens are allowed"
        );
        assert!(AckReply::parse("$JS.ACK.S.C.1.2.3").is_none());
        assert!(AckReply::parse("$JS.ACK.S.C.1.x.3.4.5").is_none());
    }

    /// The captured v2 subject of a server with domain `hub` and no accounts
    /// configured: `szMpdrwD` is nats-server's hash of `$G`.
    #[test]
    fn the_captured_v2_subject_is_rebuilt() {
        assert_eq!(name_hash("$G"), "szMpdrwD");
        let mut out = String::new();
        AckPrefix::v2(Some("hub"), "$G", "S", "P").write(
            &mut out,
            1,
            1,
            1,
            1_795_706_104_408_877_874,
            1,
        );
        assert_eq!(out, "$JS.ACK.hub.szMpdrwD.S.P.1.1.1.1795706104408877874.1");
    }
}
