//! What peers of the data plane say to each other: today the shards of one
//! process, over the mesh lanes; later route and leaf connections. Plain data, no
//! I/O: the router produces and consumes it, the shell moves it.

use bytes::Bytes;

/// A peer of a router: another shard of this process today (its index), a route
/// or leaf connection later. Interest learned from a peer is keyed by it, and a
/// message carries the peer it came in from so it is never sent back there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u16);

impl PeerId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// What peers tell each other.
#[derive(Debug)]
pub enum PeerMsg {
    /// Deliver a published message to the receiving peer's local subscribers:
    /// every matching plain subscription when `plain`, and one member of each
    /// queue group named in `queues` (already chosen for this peer). `origin` is
    /// the peer the message entered the server from (the publisher's shard, or a
    /// route or leaf connection later): nothing goes back there.
    Deliver {
        account: u32,
        envelope: Envelope,
        plain: bool,
        queues: QueueNames,
        origin: PeerId,
        /// Answer with `ProbeAnswer` (did anything here receive it?): the sender
        /// must tell a requester that nobody responds, and only a folded pattern
        /// sent the message here.
        probe: Option<u64>,
    },
    /// The sending peer now has `count` local subscriptions on (subject, queue)
    /// in `account`; 0 removes its interest. Absolute, so applying it is idempotent.
    /// Plain interest is a summary (`router::summary`): `folded` marks a pattern
    /// that covers the peer's subscriptions without being one of them, so a
    /// message it matches may find nobody there.
    Interest {
        account: u32,
        subject: Bytes,
        queue: Option<Bytes>,
        count: u32,
        folded: bool,
    },
    /// Whether the probed message reached any subscriber or route here.
    ProbeAnswer {
        id: u64,
        matched: bool,
    },
    /// No plain subscription of the sender wants `subject` in `account`, which a
    /// folded pattern of its sent there: the receiver may keep it to itself
    /// until the sender's interest grows (`Grew`, or an `Interest` with a count).
    Miss {
        account: u32,
        subject: Bytes,
    },
    /// The sender's plain interest in `account` grew under patterns it already
    /// announced: the misses it told are forgotten.
    Grew {
        account: u32,
    },
    /// Answer with `BarrierAck` once everything sent before this is applied.
    Barrier {
        id: u64,
    },
    BarrierAck {
        id: u64,
    },
}

pub type Batch = Vec<PeerMsg>;

/// A queue group's name, copied inline: sharing the index's `Bytes` would put a
/// reference count both shards write on every message.
pub type QueueName = smallvec::SmallVec<[u8; 32]>;

/// The queue groups a receiving shard must serve for one message: nearly always
/// one, kept inline so routing a queue message across shards allocates nothing.
pub type QueueNames = smallvec::SmallVec<[QueueName; 1]>;

/// A message crossing shards: subject, reply and message (headers included) as
/// ranges of one shared buffer, usually a slice of the publisher's read buffer.
/// One reference count per message and receiving shard, not one per part.
#[derive(Debug, Clone)]
pub struct Envelope {
    buf: Bytes,
    subject_len: u32,
    /// The subject shown to receivers when it is not the routed one; (0, 0): none.
    deliver_as: (u32, u32),
    reply: (u32, u32),
    message: (u32, u32),
    pub header_len: u32,
    pub zeros: crate::proto::SizeZeros,
}

/// Where `part` lies in `owner`, if it does.
fn offset_in(owner: &[u8], part: &[u8]) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(owner.as_ptr() as usize)?;
    (start + part.len() <= owner.len()).then_some(start)
}

impl Envelope {
    /// Packs a message whose parts borrow from `owner`. Parts `owner` does not hold
    /// (a subject an import mapped) are copied together into a new buffer. An
    /// empty `deliver_as` shows the message as `subject`.
    pub fn pack(
        owner: &Bytes,
        subject: &[u8],
        deliver_as: &[u8],
        reply: &[u8],
        header_len: usize,
        message: &[u8],
        zeros: crate::proto::SizeZeros,
    ) -> Envelope {
        let at = |part: &[u8]| {
            if part.is_empty() {
                offset_in(owner, subject)
            } else {
                offset_in(owner, part)
            }
        };
        if let (Some(s), Some(d), Some(r), Some(m)) =
            (at(subject), at(deliver_as), at(reply), at(message))
        {
            let end = (s + subject.len())
                .max(d + deliver_as.len())
                .max(r + reply.len())
                .max(m + message.len());
            let start = s.min(d).min(r).min(m);
            if s == start {
                let deliver_as = if deliver_as.is_empty() {
                    (0, 0)
                } else {
                    ((d - start) as u32, deliver_as.len() as u32)
                };
                return Envelope {
                    buf: owner.slice(start..end),
                    subject_len: subject.len() as u32,
                    deliver_as,
                    reply: ((r - start) as u32, reply.len() as u32),
                    message: ((m - start) as u32, message.len() as u32),
                    header_len: header_len as u32,
                    zeros,
                };
            }
        }
        let mut buf =
            Vec::with_capacity(subject.len() + deliver_as.len() + reply.len() + message.len());
        buf.extend_from_slice(subject);
        buf.extend_from_slice(deliver_as);
        buf.extend_from_slice(reply);
        buf.extend_from_slice(message);
        let s = subject.len() as u32;
        let d = deliver_as.len() as u32;
        let r = reply.len() as u32;
        Envelope {
            buf: Bytes::from(buf),
            subject_len: s,
            deliver_as: if d == 0 { (0, 0) } else { (s, d) },
            reply: (s + d, r),
            message: (s + d + r, message.len() as u32),
            header_len: header_len as u32,
            zeros,
        }
    }

    /// The shared buffer the parts are in.
    pub fn owner(&self) -> &Bytes {
        &self.buf
    }

    pub fn subject(&self) -> &[u8] {
        &self.buf[..self.subject_len as usize]
    }

    /// The subject shown to receivers; empty: [`Self::subject`].
    pub fn deliver_as(&self) -> &[u8] {
        let (at, len) = self.deliver_as;
        &self.buf[at as usize..(at + len) as usize]
    }

    pub fn reply(&self) -> &[u8] {
        let (at, len) = self.reply;
        &self.buf[at as usize..(at + len) as usize]
    }

    /// The message, headers included.
    pub fn message(&self) -> &[u8] {
        let (at, len) = self.message;
        &self.buf[at as usize..(at + len) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_shares_the_frame_or_copies() {
        let frame = Bytes::from_static(b"PUB foo.bar _INBOX.1 5\r\nhello\r\n");
        let envelope = Envelope::pack(
            &frame,
            &frame[4..11],
            b"",
            &frame[12..20],
            0,
            &frame[24..29],
            Default::default(),
        );
        assert_eq!(envelope.subject(), b"foo.bar");
        assert_eq!(envelope.reply(), b"_INBOX.1");
        assert_eq!(envelope.message(), b"hello");
        assert_eq!(envelope.owner().as_ptr(), frame[4..].as_ptr());
        let none = Envelope::pack(&frame, &frame[4..11], b"", b"", 0, b"", Default::default());
        assert_eq!(none.subject(), b"foo.bar");
        assert!(none.reply().is_empty() && none.message().is_empty());
        let mapped = Envelope::pack(
            &frame,
            b"imported.foo",
            b"",
            &frame[12..20],
            0,
            &frame[24..29],
            Default::default(),
        );
        assert_eq!(mapped.subject(), b"imported.foo");
        assert_eq!(mapped.reply(), b"_INBOX.1");
        assert_eq!(mapped.message(), b"hello");
        assert!(mapped.deliver_as().is_empty());
        // A consumer's delivery: routed by the inbox, shown as the stored subject.
        let frame = Bytes::from_static(b"_INBOX.7orders.new$JS.ACK.x{}");
        let delivery = Envelope::pack(
            &frame,
            &frame[..8],
            &frame[8..18],
            &frame[18..27],
            0,
            &frame[27..],
            Default::default(),
        );
        assert_eq!(delivery.subject(), b"_INBOX.7");
        assert_eq!(delivery.deliver_as(), b"orders.new");
        assert_eq!(delivery.reply(), b"$JS.ACK.x");
        assert_eq!(delivery.message(), b"{}");
        assert_eq!(delivery.owner().as_ptr(), frame.as_ptr());
    }
}
