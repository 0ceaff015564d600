//! A wake-up for one task on a shard: raised by whoever has news, awaited by
//! the task. Raising twice before the task runs wakes it once.

use std::cell::Cell;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct Signal {
    raised: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    pub fn raise(&self) {
        self.raised.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Returns once the signal was raised since the last return.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.raised.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}
