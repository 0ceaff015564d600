//! The on-disk record format (sans-I/O).
//!
//! ```text
//! 0  magic   u8  = 0xA7
//! 1  kind    u8  (1 message, 2 tombstones, 3 compact marker, 4 erased message, 5 meta)
//! 2  cipher  u8  (0 none, 1 XChaCha20-Poly1305, 2 AES-256-GCM)
//! 3  zero    u8
//! 4  len     u32 LE, bytes from magic through crc (padding excluded)
//! 8  body    plaintext, or nonce ‖ AEAD(body, aad = bytes 0..8)
//!    crc     u32 LE, CRC32C of bytes 0..len-4
//!    padding zeros up to a multiple of 8
//! ```
//! Message body: seq u64, ts i64, ttl i64, subject len u16, headers len u32, subject,
//! headers, payload. Tombstones: count u32, then (first u64, last u64) ranges. Compact
//! marker: first live seq u64, last seq u64, last ts i64. Erased: seq u64, ts i64, zeros
//! (never encrypted: nothing of the message is left). All integers little endian.
//! Records are 8-byte aligned so that recovery can resynchronise after damage by
//! probing every 8 bytes for a frame whose CRC holds.

use aes_gcm::Aes256Gcm;
use bytes::Bytes;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::Cipher;

pub const MAGIC: u8 = 0xA7;
pub const HEADER_LEN: usize = 8;
pub const CRC_LEN: usize = 4;
/// Upper bound on one record, so a damaged length cannot make recovery read gigabytes.
pub const MAX_RECORD: usize = 64 << 20;

pub const KIND_MSG: u8 = 1;
pub const KIND_TOMBSTONES: u8 = 2;
pub const KIND_COMPACT: u8 = 3;
pub const KIND_ERASED: u8 = 4;
pub const KIND_META: u8 = 5;

const CIPHER_NONE: u8 = 0;
const CIPHER_CHACHA: u8 = 1;
const CIPHER_AES: u8 = 2;

const MSG_FIXED: usize = 8 + 8 + 8 + 2 + 4;

/// Rounds up to the record alignment.
pub fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

fn cipher_id(c: Option<Cipher>) -> u8 {
    match c {
        None => CIPHER_NONE,
        Some(Cipher::ChaCha) => CIPHER_CHACHA,
        Some(Cipher::Aes) => CIPHER_AES,
    }
}

fn nonce_len(id: u8) -> usize {
    match id {
        CIPHER_CHACHA => 24,
        CIPHER_AES => 12,
        _ => 0,
    }
}

const TAG_LEN: usize = 16;

/// Key material for one stream. The key is derived from the configured key and the
/// stream name, and does not depend on the cipher: records written with another cipher
/// under the same configured key stay readable.
#[derive(Clone)]
pub struct Keys {
    key: [u8; 32],
    /// The cipher new records are written with.
    pub cipher: Cipher,
}

impl Keys {
    pub fn derive(cipher: Cipher, configured: &[u8], stream: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"strait-storage/v1/stream-key");
        h.update((configured.len() as u64).to_le_bytes());
        h.update(configured);
        h.update(stream.as_bytes());
        Keys {
            key: h.finalize().into(),
            cipher,
        }
    }

    // Nonces are random per record: XChaCha's 192-bit nonces never collide in practice;
    // for AES-GCM's 96-bit ones the birthday bound keeps the collision chance below
    // 2^-32 up to 2^32 records per stream key (NIST SP 800-38D's limit).
    fn seal(&self, cipher: Cipher, aad: &[u8], plain: &[u8], out: &mut Vec<u8>) {
        let id = cipher_id(Some(cipher));
        let mut nonce = [0u8; 24];
        let nl = nonce_len(id);
        rand::thread_rng().fill_bytes(&mut nonce[..nl]);
        let payload = Payload { msg: plain, aad };
        // Encryption with a valid 32-byte key and a correctly sized nonce cannot fail
        // (the only error is for messages beyond the cipher's 2^36-byte limit, far above
        // MAX_RECORD); an empty result would fail the AEAD check on read, never be
        // accepted silently.
        let ct = match cipher {
            Cipher::ChaCha => XChaCha20Poly1305::new((&self.key).into())
                .encrypt((&nonce[..24]).into(), payload)
                .unwrap_or_default(),
            Cipher::Aes => Aes256Gcm::new((&self.key).into())
                .encrypt((&nonce[..12]).into(), payload)
                .unwrap_or_default(),
        };
        out.extend_from_slice(&nonce[..nl]);
        out.extend_from_slice(&ct);
    }

    fn open(&self, id: u8, aad: &[u8], data: &[u8]) -> Option<Vec<u8>> {
        let nl = nonce_len(id);
        if data.len() < nl + TAG_LEN {
            return None;
        }
        let (nonce, ct) = data.split_at(nl);
        let payload = Payload { msg: ct, aad };
        match id {
            CIPHER_CHACHA => XChaCha20Poly1305::new((&self.key).into())
                .decrypt(nonce.into(), payload)
                .ok(),
            CIPHER_AES => Aes256Gcm::new((&self.key).into())
                .decrypt(nonce.into(), payload)
                .ok(),
            _ => None,
        }
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Msg(MsgRecord),
    /// Inclusive ranges of deleted sequences.
    Tombstones(Vec<(u64, u64)>),
    /// Every sequence below `first` is gone; the stream's last sequence is at least
    /// `last_seq`.
    Compact {
        first: u64,
        last_seq: u64,
        last_ts: i64,
    },
    /// A securely erased message (its timestamp is kept for the stream's last time).
    Erased {
        seq: u64,
        ts: i64,
    },
    /// Store metadata (key check).
    Meta(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgRecord {
    pub seq: u64,
    pub ts: i64,
    /// 0 none, -1 never, >0 nanoseconds.
    pub ttl: i64,
    pub subject: String,
    pub headers: Bytes,
    pub payload: Bytes,
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A zero byte where a record would start: the end of the written log.
    End,
    /// The buffer ends inside the record (`need` bytes from the frame start).
    Incomplete { need: usize },
    /// Bad magic, length or CRC, or a malformed body.
    Corrupt(&'static str),
    /// The record is encrypted and no key is configured.
    KeyRequired,
    /// The record is intact (CRC holds) but does not decrypt: wrong key.
    WrongKey,
}

/// Encodes `body` as a record of `kind` and appends it (padded) to `out`.
fn frame(kind: u8, keys: Option<&Keys>, body: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    let cipher = keys.map(|k| k.cipher);
    let id = cipher_id(cipher);
    let body_len = match cipher {
        Some(_) => nonce_len(id) + body.len() + TAG_LEN,
        None => body.len(),
    };
    let len = HEADER_LEN + body_len + CRC_LEN;
    out.extend_from_slice(&[MAGIC, kind, id, 0]);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    match (keys, cipher) {
        (Some(k), Some(c)) => {
            let aad: [u8; 8] = out[start..start + 8].try_into().unwrap_or([0; 8]);
            k.seal(c, &aad, body, out);
        }
        _ => out.extend_from_slice(body),
    }
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.resize(start + pad8(len), 0);
}

/// Appends a message record; returns its padded length.
#[allow(clippy::too_many_arguments)]
pub fn encode_msg(
    out: &mut Vec<u8>,
    keys: Option<&Keys>,
    seq: u64,
    ts: i64,
    ttl: i64,
    subject: &str,
    headers: &[u8],
    payload: &[u8],
) -> usize {
    let mut body = Vec::with_capacity(MSG_FIXED + subject.len() + headers.len() + payload.len());
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&ts.to_le_bytes());
    body.extend_from_slice(&ttl.to_le_bytes());
    body.extend_from_slice(&(subject.len() as u16).to_le_bytes());
    body.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    body.extend_from_slice(subject.as_bytes());
    body.extend_from_slice(headers);
    body.extend_from_slice(payload);
    let start = out.len();
    frame(KIND_MSG, keys, &body, out);
    out.len() - start
}

/// Appends a tombstone record for the given inclusive ranges.
pub fn encode_tombstones(out: &mut Vec<u8>, keys: Option<&Keys>, ranges: &[(u64, u64)]) {
    let mut body = Vec::with_capacity(4 + 16 * ranges.len());
    body.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    for (a, b) in ranges {
        body.extend_from_slice(&a.to_le_bytes());
        body.extend_from_slice(&b.to_le_bytes());
    }
    frame(KIND_TOMBSTONES, keys, &body, out);
}

/// Appends a compact marker.
pub fn encode_compact(
    out: &mut Vec<u8>,
    keys: Option<&Keys>,
    first: u64,
    last_seq: u64,
    last_ts: i64,
) {
    let mut body = Vec::with_capacity(24);
    body.extend_from_slice(&first.to_le_bytes());
    body.extend_from_slice(&last_seq.to_le_bytes());
    body.extend_from_slice(&last_ts.to_le_bytes());
    frame(KIND_COMPACT, keys, &body, out);
}

/// Appends a meta record.
pub fn encode_meta(out: &mut Vec<u8>, keys: Option<&Keys>, body: &[u8]) {
    frame(KIND_META, keys, body, out);
}

/// The bytes that replace a record of padded length `padded` when it is erased: same
/// length (so the records after it stay where they are), the sequence, and zeros.
pub fn encode_erased(seq: u64, ts: i64, padded: usize) -> Vec<u8> {
    // Message records are at least 48 bytes padded, so `padded` always fits the
    // erased frame; the length is the padded length so nothing after it moves.
    let len = padded.max(pad8(HEADER_LEN + 16 + CRC_LEN));
    let mut out = Vec::with_capacity(padded);
    out.extend_from_slice(&[MAGIC, KIND_ERASED, CIPHER_NONE, 0]);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&ts.to_le_bytes());
    out.resize(len - CRC_LEN, 0);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.resize(pad8(len), 0);
    out
}

/// Checks the frame at the start of `buf` without decrypting: returns the kind and the
/// padded length.
pub fn check_frame(buf: &[u8]) -> Result<(u8, usize), DecodeError> {
    if buf.is_empty() {
        return Err(DecodeError::Incomplete { need: HEADER_LEN });
    }
    if buf[0] == 0 {
        return Err(DecodeError::End);
    }
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Incomplete { need: HEADER_LEN });
    }
    if buf[0] != MAGIC
        || buf[3] != 0
        || !(KIND_MSG..=KIND_META).contains(&buf[1])
        || buf[2] > CIPHER_AES
    {
        return Err(DecodeError::Corrupt("bad record header"));
    }
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if !(HEADER_LEN + CRC_LEN..=MAX_RECORD).contains(&len) {
        return Err(DecodeError::Corrupt("bad record length"));
    }
    if buf.len() < len {
        return Err(DecodeError::Incomplete { need: pad8(len) });
    }
    let stored = u32::from_le_bytes([buf[len - 4], buf[len - 3], buf[len - 2], buf[len - 1]]);
    if crc32c::crc32c(&buf[..len - CRC_LEN]) != stored {
        return Err(DecodeError::Corrupt("CRC mismatch"));
    }
    Ok((buf[1], pad8(len)))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Decodes the record at the start of `buf`; returns it and its padded length.
pub fn decode(buf: &[u8], keys: Option<&Keys>) -> Result<(Record, usize), DecodeError> {
    let (kind, padded) = check_frame(buf)?;
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    let id = buf[2];
    let raw = &buf[HEADER_LEN..len - CRC_LEN];
    let plain_owned;
    let body: &[u8] = if id == CIPHER_NONE || kind == KIND_ERASED {
        raw
    } else {
        let k = keys.ok_or(DecodeError::KeyRequired)?;
        plain_owned = k
            .open(id, &buf[..HEADER_LEN], raw)
            .ok_or(DecodeError::WrongKey)?;
        &plain_owned
    };
    let bad = DecodeError::Corrupt("malformed record body");
    let rec = match kind {
        KIND_MSG => {
            if body.len() < MSG_FIXED {
                return Err(bad);
            }
            let seq = u64_at(body, 0).ok_or(bad.clone())?;
            let ts = u64_at(body, 8).ok_or(bad.clone())? as i64;
            let ttl = u64_at(body, 16).ok_or(bad.clone())? as i64;
            let slen = u16::from_le_bytes([body[24], body[25]]) as usize;
            let hlen = u32::from_le_bytes([body[26], body[27], body[28], body[29]]) as usize;
            let rest = &body[MSG_FIXED..];
            if rest.len() < slen + hlen {
                return Err(bad);
            }
            let subject = std::str::from_utf8(&rest[..slen]).map_err(|_| bad.clone())?;
            Record::Msg(MsgRecord {
                seq,
                ts,
                ttl,
                subject: subject.to_string(),
                headers: Bytes::copy_from_slice(&rest[slen..slen + hlen]),
                payload: Bytes::copy_from_slice(&rest[slen + hlen..]),
            })
        }
        KIND_TOMBSTONES => {
            let n = body
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or(bad.clone())?;
            if body.len() != 4 + 16 * n {
                return Err(bad);
            }
            let ranges = (0..n)
                .map(|i| {
                    let a = u64_at(body, 4 + 16 * i).unwrap_or(0);
                    let b = u64_at(body, 12 + 16 * i).unwrap_or(0);
                    (a, b)
                })
                .collect();
            Record::Tombstones(ranges)
        }
        KIND_COMPACT => Record::Compact {
            first: u64_at(body, 0).ok_or(bad.clone())?,
            last_seq: u64_at(body, 8).ok_or(bad.clone())?,
            last_ts: u64_at(body, 16).ok_or(bad.clone())? as i64,
        },
        KIND_ERASED => Record::Erased {
            seq: u64_at(body, 0).ok_or(bad.clone())?,
            ts: u64_at(body, 8).ok_or(bad)? as i64,
        },
        KIND_META => Record::Meta(body.to_vec()),
        _ => return Err(bad),
    };
    Ok((rec, padded))
}

/// Segment header, the first 4 KiB page of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub id: u64,
    /// The next sequence when the segment was created: the stream's last sequence is at
    /// least `next_seq - 1` even if every record is gone.
    pub next_seq: u64,
    pub last_ts: i64,
}

pub const SEGMENT_MAGIC: &[u8; 8] = b"STRAITSG";
pub const PAGE: usize = 4096;
const SEG_HDR_LEN: usize = 8 + 4 + 8 + 8 + 8;

impl SegmentHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(PAGE);
        b.extend_from_slice(SEGMENT_MAGIC);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&self.id.to_le_bytes());
        b.extend_from_slice(&self.next_seq.to_le_bytes());
        b.extend_from_slice(&self.last_ts.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.resize(PAGE, 0);
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < SEG_HDR_LEN + 4 || &b[..8] != SEGMENT_MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(b[SEG_HDR_LEN..SEG_HDR_LEN + 4].try_into().ok()?);
        if crc32c::crc32c(&b[..SEG_HDR_LEN]) != crc {
            return None;
        }
        Some(SegmentHeader {
            id: u64_at(b, 12)?,
            next_seq: u64_at(b, 20)?,
            last_ts: u64_at(b, 28)? as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_plain_and_encrypted() {
        for keys in [
            None,
            Some(Keys::derive(Cipher::ChaCha, b"k", "s")),
            Some(Keys::derive(Cipher::Aes, b"k", "s")),
        ] {
            let mut out = Vec::new();
            let n = encode_msg(&mut out, keys.as_ref(), 7, 11, -1, "a.b", b"h", b"payload");
            assert_eq!(n % 8, 0);
            encode_tombstones(&mut out, keys.as_ref(), &[(1, 3), (5, 5)]);
            encode_compact(&mut out, keys.as_ref(), 4, 9, 12);
            let (r, used) = decode(&out, keys.as_ref()).unwrap();
            assert_eq!(used, n);
            match r {
                Record::Msg(m) => {
                    assert_eq!((m.seq, m.ts, m.ttl, m.subject.as_str()), (7, 11, -1, "a.b"));
                    assert_eq!(&m.payload[..], b"payload");
                    assert_eq!(&m.headers[..], b"h");
                }
                other => panic!("{other:?}"),
            }
            let (r, used2) = decode(&out[used..], keys.as_ref()).unwrap();
            assert_eq!(r, Record::Tombstones(vec![(1, 3), (5, 5)]));
            let (r, _) = decode(&out[used + used2..], keys.as_ref()).unwrap();
            assert_eq!(
                r,
                Record::Compact {
                    first: 4,
                    last_seq: 9,
                    last_ts: 12
                }
            );
            let erased = encode_erased(7, 11, n);
            assert_eq!(erased.len(), n);
            assert_eq!(
                decode(&erased, None).unwrap(),
                (Record::Erased { seq: 7, ts: 11 }, n)
            );
            if keys.is_some() {
                assert!(!out.windows(7).any(|w| w == b"payload"));
                let wrong = Keys::derive(Cipher::ChaCha, b"other", "s");
                assert_eq!(decode(&out, Some(&wrong)), Err(DecodeError::WrongKey));
                assert_eq!(decode(&out, None), Err(DecodeError::KeyRequired));
            }
        }
    }

    #[test]
    fn damage_is_detected() {
        let mut out = Vec::new();
        encode_msg(&mut out, None, 1, 1, 0, "a", b"", b"xyz");
        let len = u32::from_le_bytes([out[4], out[5], out[6], out[7]]) as usize;
        for i in 0..len {
            let mut c = out.clone();
            c[i] ^= 0x10;
            assert!(decode(&c, None).is_err(), "flip at {i}");
        }
        assert!(matches!(
            decode(&out[..10], None),
            Err(DecodeError::Incomplete { .. })
        ));
        assert_eq!(decode(&[0u8; 16], None), Err(DecodeError::End));
    }

    #[test]
    fn segment_header() {
        let h = SegmentHeader {
            id: 3,
            next_seq: 10,
            last_ts: 5,
        };
        let b = h.encode();
        assert_eq!(b.len(), PAGE);
        assert_eq!(SegmentHeader::decode(&b), Some(h));
        let mut c = b.clone();
        c[13] ^= 1;
        assert_eq!(SegmentHeader::decode(&c), None);
    }
}
