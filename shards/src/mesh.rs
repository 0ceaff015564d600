//! The cross-shard mesh: one bounded SPSC lane per ordered pair of shards, carrying
//! batches of messages. A shard appends to a lane's open batch while it processes
//! input and sends the batch when that input is done, so the receiving shard is woken
//! once per batch, not once per message. A full lane makes the sender wait, which
//! stops its socket reads and pushes back on the publisher through TCP.
//!
//! Lanes are FIFO and batches leave in the order they were closed, which gives the
//! two ordering guarantees the broker relies on: per-publisher message order, and the
//! interest barrier (an ack for a barrier means the interest changes sent before it
//! were applied).

use std::cell::RefCell;

use bytes::Bytes;
use glommio::channels::shared_channel::{self, ConnectedSender};
use glommio::sync::Semaphore;

/// Batches in flight per lane before the sender waits.
pub const LANE_CAPACITY: usize = 256;

/// What shards tell each other.
#[derive(Debug)]
pub enum MeshMsg {
    /// Deliver a published message to the receiving shard's local subscribers:
    /// every matching plain subscription when `plain`, and one member of each
    /// queue group named in `queues` (already chosen for this shard).
    Deliver {
        account: u32,
        envelope: Envelope,
        plain: bool,
        queues: QueueNames,
    },
    /// The sending shard now has `count` local subscriptions on (subject, queue)
    /// in `account`; 0 removes its interest. Absolute, so applying it is idempotent.
    Interest {
        account: u32,
        subject: Bytes,
        queue: Option<Bytes>,
        count: u32,
    },
    /// Answer with `BarrierAck` once everything sent before this is applied.
    Barrier {
        id: u64,
    },
    BarrierAck {
        id: u64,
    },
}

pub type Batch = Vec<MeshMsg>;

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
    /// (a subject an import mapped) are copied together into a new buffer.
    pub fn pack(
        owner: &Bytes,
        subject: &[u8],
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
        if let (Some(s), Some(r), Some(m)) = (at(subject), at(reply), at(message)) {
            let end = (s + subject.len())
                .max(r + reply.len())
                .max(m + message.len());
            let start = s.min(r).min(m);
            if s == start {
                return Envelope {
                    buf: owner.slice(start..end),
                    subject_len: subject.len() as u32,
                    reply: ((r - start) as u32, reply.len() as u32),
                    message: ((m - start) as u32, message.len() as u32),
                    header_len: header_len as u32,
                    zeros,
                };
            }
        }
        let mut buf = Vec::with_capacity(subject.len() + reply.len() + message.len());
        buf.extend_from_slice(subject);
        buf.extend_from_slice(reply);
        buf.extend_from_slice(message);
        Envelope {
            buf: Bytes::from(buf),
            subject_len: subject.len() as u32,
            reply: (subject.len() as u32, reply.len() as u32),
            message: ((subject.len() + reply.len()) as u32, message.len() as u32),
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

/// One shard's unconnected lane ends: senders to each peer, receivers from each.
pub type ShardLanes = (
    Vec<Option<shared_channel::SharedSender<Batch>>>,
    Vec<Option<shared_channel::SharedReceiver<Batch>>>,
);

/// The unconnected ends of every lane, created before the shards start.
pub struct MeshEnds {
    /// `senders[from][to]`
    pub senders: Vec<Vec<Option<shared_channel::SharedSender<Batch>>>>,
    /// `receivers[to][from]`
    pub receivers: Vec<Vec<Option<shared_channel::SharedReceiver<Batch>>>>,
}

impl MeshEnds {
    pub fn new(shards: usize) -> Self {
        let mut senders: Vec<Vec<Option<_>>> = (0..shards)
            .map(|_| (0..shards).map(|_| None).collect())
            .collect();
        let mut receivers: Vec<Vec<Option<_>>> = (0..shards)
            .map(|_| (0..shards).map(|_| None).collect())
            .collect();
        for from in 0..shards {
            for to in 0..shards {
                if from != to {
                    let (tx, rx) = shared_channel::new_bounded(LANE_CAPACITY);
                    senders[from][to] = Some(tx);
                    receivers[to][from] = Some(rx);
                }
            }
        }
        MeshEnds { senders, receivers }
    }

    /// Takes shard `id`'s ends: its senders to each peer and receivers from each peer.
    pub fn take(&mut self, id: usize) -> ShardLanes {
        (
            std::mem::take(&mut self.senders[id]),
            std::mem::take(&mut self.receivers[id]),
        )
    }
}

/// The sending side of one lane, owned by one shard.
pub struct Lane {
    open: RefCell<Batch>,
    tx: ConnectedSender<Batch>,
    /// Serialises senders so batches enter the channel in the order they were closed.
    order: Semaphore,
}

impl Lane {
    pub async fn connect(tx: shared_channel::SharedSender<Batch>) -> Self {
        Lane {
            open: RefCell::new(Vec::new()),
            tx: tx.connect().await,
            order: Semaphore::new(1),
        }
    }

    pub fn push(&self, msg: MeshMsg) {
        self.open.borrow_mut().push(msg);
    }

    pub fn has_pending(&self) -> bool {
        !self.open.borrow().is_empty()
    }

    /// Sends the open batch, waiting while the lane is full.
    pub async fn flush(&self) {
        if !self.has_pending() {
            return;
        }
        let Ok(_permit) = self.order.acquire_permit(1).await else {
            return;
        };
        let batch = std::mem::take(&mut *self.open.borrow_mut());
        if batch.is_empty() {
            return;
        }
        // The receiver only goes away when its shard stops; then nothing is lost that
        // anyone still waits for.
        let _ = self.tx.send(batch).await;
    }

    /// Sends the open batch if the lane has room, without waiting. Skips while an
    /// awaiting flush holds the lane, so batches never overtake each other.
    pub fn try_flush(&self) {
        if !self.has_pending() {
            return;
        }
        let Ok(_permit) = self.order.try_acquire_permit(1) else {
            return;
        };
        let batch = std::mem::take(&mut *self.open.borrow_mut());
        if let Err(batch) = self.tx.try_send(batch) {
            let batch = match batch {
                glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(b)) => b,
                _ => return,
            };
            let mut open = self.open.borrow_mut();
            let newer = std::mem::replace(&mut *open, batch);
            open.extend(newer);
        }
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
            &frame[12..20],
            0,
            &frame[24..29],
            Default::default(),
        );
        assert_eq!(envelope.subject(), b"foo.bar");
        assert_eq!(envelope.reply(), b"_INBOX.1");
        assert_eq!(envelope.message(), b"hello");
        assert_eq!(envelope.owner().as_ptr(), frame[4..].as_ptr());
        let none = Envelope::pack(&frame, &frame[4..11], b"", 0, b"", Default::default());
        assert_eq!(none.subject(), b"foo.bar");
        assert!(none.reply().is_empty() && none.message().is_empty());
        let mapped = Envelope::pack(
            &frame,
            b"imported.foo",
            &frame[12..20],
            0,
            &frame[24..29],
            Default::default(),
        );
        assert_eq!(mapped.subject(), b"imported.foo");
        assert_eq!(mapped.reply(), b"_INBOX.1");
        assert_eq!(mapped.message(), b"hello");
    }
}
