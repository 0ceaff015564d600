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

use glommio::channels::shared_channel::{self, ConnectedSender};
use glommio::sync::Semaphore;

use crate::router::{Batch, PeerMsg};

/// Batches in flight per lane before the sender waits.
pub const LANE_CAPACITY: usize = 256;

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

    pub fn push(&self, msg: PeerMsg) {
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
