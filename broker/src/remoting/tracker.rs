//! Counts live tasks so shutdown can wait, for a bounded time, until they are done.
//!
//! Every connection, request and parked pull holds a [`TaskGuard`]. Shutdown first tells them
//! to stop, then waits for the count to reach zero: that is what "finish in-flight requests"
//! means, and it also guarantees that nothing still holds the store when it is closed.

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// Shared counter of live tasks.
#[derive(Debug, Default)]
pub(crate) struct TaskTracker {
    live: AtomicUsize,
    idle: Notify,
}

/// Decrements the tracker when dropped.
#[derive(Debug)]
pub(crate) struct TaskGuard {
    tracker: Arc<TaskTracker>,
}

impl TaskTracker {
    /// Registers one more live task.
    pub(crate) fn guard(self: &Arc<Self>) -> TaskGuard {
        self.live.fetch_add(1, Ordering::AcqRel);
        TaskGuard {
            tracker: Arc::clone(self),
        }
    }

    /// Tasks alive now.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Waits until no task is alive; false if `timeout` passed first.
    pub(crate) async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut notified = pin!(self.idle.notified());
            notified.as_mut().enable();
            if self.live() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.live() == 0;
            }
        }
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.tracker.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.idle.notify_waiters();
        }
    }
}
