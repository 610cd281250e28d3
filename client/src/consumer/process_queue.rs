//! One owned queue as its worker and the offset store see it: the offsets pulled but not yet
//! handled, and the commit point they imply.
//!
//! The commit point is the lowest in-flight offset, or, with nothing in flight, the next
//! offset to pull. Offsets below it were all handled (or filtered out), so committing it can
//! redeliver but never skip a message.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_protocol::remoting::body::MessageQueue;
use tokio::sync::{watch, Notify};

/// Local lock lifetime of an orderly queue (RocketMQ: 30 s client side, 60 s broker side),
/// renewed every 20 s.
pub(crate) const LOCK_TTL: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct State {
    inflight: BTreeSet<i64>,
    /// Next offset to pull.
    high_water: i64,
    locked_until: Option<Instant>,
}

/// An owned queue.
#[derive(Debug)]
pub(crate) struct ProcessQueue {
    pub(crate) mq: MessageQueue,
    state: Mutex<State>,
    dropped: watch::Sender<bool>,
    /// Woken whenever a message is done (flow control and draining wait on it).
    progress: Notify,
    /// Held while an orderly message is handled, so releasing the queue waits for it.
    pub(crate) consuming: tokio::sync::Mutex<()>,
}

impl ProcessQueue {
    /// A queue whose next offset to pull is `start`.
    pub(crate) fn new(mq: MessageQueue, start: i64) -> Self {
        Self {
            mq,
            state: Mutex::new(State {
                inflight: BTreeSet::new(),
                high_water: start,
                locked_until: None,
            }),
            dropped: watch::channel(false).0,
            progress: Notify::new(),
            consuming: tokio::sync::Mutex::new(()),
        }
    }

    /// Records pulled messages and the next offset to pull.
    pub(crate) fn add(&self, offsets: impl IntoIterator<Item = i64>, next: i64) {
        let mut s = self.state.lock();
        s.inflight.extend(offsets);
        s.high_water = s.high_water.max(next);
    }

    /// Records a pull that found nothing: the next offset to pull.
    pub(crate) fn advance(&self, next: i64) {
        self.state.lock().high_water = next;
    }

    /// Marks `offset` handled; returns the new commit point.
    pub(crate) fn done(&self, offset: i64) -> i64 {
        let point = {
            let mut s = self.state.lock();
            s.inflight.remove(&offset);
            commit_point(&s)
        };
        self.progress.notify_waiters();
        point
    }

    /// Forgets in-flight offsets from `offset` on (an orderly worker that lost its lock pulls
    /// them again) and rewinds the next pull to it.
    pub(crate) fn rewind(&self, offset: i64) {
        let mut s = self.state.lock();
        s.inflight.retain(|o| *o < offset);
        s.high_water = offset;
    }

    /// Forgets every in-flight offset and makes `offset` the next to pull (an orderly
    /// worker that just took the lock starts from the group's committed offset).
    pub(crate) fn restart_at(&self, offset: i64) {
        let mut s = self.state.lock();
        s.inflight.clear();
        s.high_water = offset;
    }

    /// The offset to commit now.
    pub(crate) fn commit_point(&self) -> i64 {
        commit_point(&self.state.lock())
    }

    /// Messages pulled and not yet handled.
    pub(crate) fn inflight(&self) -> usize {
        self.state.lock().inflight.len()
    }

    /// Waits until a message is done or `max` passes.
    pub(crate) async fn wait_progress(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.progress.notified()).await;
    }

    /// Stops the worker; the queue belongs to someone else now (or we are stopping).
    pub(crate) fn drop_queue(&self) {
        self.dropped.send_replace(true);
        self.progress.notify_waiters();
    }

    /// True once dropped.
    pub(crate) fn is_dropped(&self) -> bool {
        *self.dropped.borrow()
    }

    /// Resolves once dropped.
    pub(crate) async fn dropped(&self) {
        let mut rx = self.dropped.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Orderly: the broker lock is held (renewed within [`LOCK_TTL`]).
    pub(crate) fn is_locked(&self) -> bool {
        self.state
            .lock()
            .locked_until
            .is_some_and(|t| t > Instant::now())
    }

    /// Orderly: records the broker's answer to a lock request.
    pub(crate) fn set_locked(&self, locked: bool) {
        self.state.lock().locked_until = locked.then(|| Instant::now() + LOCK_TTL);
    }
}

fn commit_point(s: &State) -> i64 {
    s.inflight.first().copied().unwrap_or(s.high_water)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_point_never_passes_an_unhandled_message() {
        let pq = ProcessQueue::new(MessageQueue::default(), 10);
        assert_eq!(pq.commit_point(), 10);
        pq.add([10, 11, 12], 13);
        assert_eq!(pq.done(11), 10, "10 is still in flight");
        assert_eq!(pq.done(10), 12);
        assert_eq!(pq.done(12), 13);
        pq.advance(20); // the broker skipped filtered messages
        assert_eq!(pq.commit_point(), 20);
        pq.add([20, 21], 22);
        pq.rewind(21);
        assert_eq!((pq.inflight(), pq.commit_point()), (1, 20));
        assert_eq!(pq.done(20), 21);
        pq.add([21], 22);
        pq.restart_at(30);
        assert_eq!((pq.inflight(), pq.commit_point()), (0, 30));
    }

    #[test]
    fn locks_expire_and_drops_are_seen() {
        let pq = ProcessQueue::new(MessageQueue::default(), 0);
        assert!(!pq.is_locked());
        pq.set_locked(true);
        assert!(pq.is_locked());
        pq.set_locked(false);
        assert!(!pq.is_locked());
        assert!(!pq.is_dropped());
        pq.drop_queue();
        assert!(pq.is_dropped());
    }
}
