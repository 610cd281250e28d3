//! State shared by the store's threads.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::progress::Progress;

/// Offsets and flags every store thread reads.
#[derive(Debug)]
pub(crate) struct Shared {
    /// End of the bytes handed to the OS (`pwrite` returned).
    pub(crate) written: Progress,
    /// End of the bytes made durable by a completed sync.
    pub(crate) flushed: Progress,
    /// End of the records whose consume-queue and index entries are written.
    pub(crate) dispatched: Progress,
    fenced: AtomicBool,
    fence_reason: Mutex<Option<String>>,
    /// Set when shutdown begins.
    pub(crate) closing: AtomicBool,
    /// Set when a consume-queue or index sync failed: after a failed sync the kernel may have
    /// dropped the pages it could not write, so what those files hold past the last good
    /// sync is not trusted any more. Checkpoints hold `dispatched` there (`Dispatcher::
    /// synced_to`), and a stop, even a clean one, leaves the abort marker: the next open
    /// re-dispatches from there and does not trust the index's own summary.
    pub(crate) queues_unsynced: AtomicBool,
    /// Time of each commit-log sync (group commit: one per batch of waiters).
    pub(crate) sync_latency: crate::latency::LatencyHistogram,
    /// The dispatcher's last error while it keeps failing (cleared by its next success):
    /// appends are still acknowledged then, but consumers see none of them.
    dispatch_failing: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn new(end: u64) -> Self {
        Self {
            written: Progress::new(end),
            flushed: Progress::new(end),
            dispatched: Progress::new(end),
            fenced: AtomicBool::new(false),
            fence_reason: Mutex::new(None),
            closing: AtomicBool::new(false),
            queues_unsynced: AtomicBool::new(false),
            sync_latency: crate::latency::LatencyHistogram::default(),
            dispatch_failing: Mutex::new(None),
        }
    }

    /// Refuses every further append: after a failed write or sync the page cache no longer
    /// says what is on disk, so only recovery at the next open may decide.
    pub(crate) fn fence(&self, reason: String) {
        tracing::error!(reason = %reason, "store fenced: no more appends until restart");
        let mut r = self.fence_reason.lock();
        if r.is_none() {
            *r = Some(reason);
        }
        self.fenced.store(true, Ordering::SeqCst);
        self.flushed.poke();
    }

    pub(crate) fn fenced(&self) -> Option<String> {
        if self.fenced.load(Ordering::SeqCst) {
            self.fence_reason.lock().clone()
        } else {
            None
        }
    }

    /// Records the dispatcher's failure (`Some`) or its recovery (`None`).
    pub(crate) fn set_dispatch_failing(&self, why: Option<String>) {
        *self.dispatch_failing.lock() = why;
    }

    pub(crate) fn dispatch_failing(&self) -> Option<String> {
        self.dispatch_failing.lock().clone()
    }
}
