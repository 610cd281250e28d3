//! Offsets that one thread advances and others wait on: written, flushed, dispatched.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A monotonically advancing offset with a way to wait for it.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    value: AtomicU64,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Progress {
    pub(crate) fn new(v: u64) -> Self {
        Self {
            value: AtomicU64::new(v),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    pub(crate) fn get(&self) -> u64 {
        self.value.load(Ordering::Acquire)
    }

    /// Sets the value (it only moves forward, except at recovery) and wakes waiters.
    pub(crate) fn set(&self, v: u64) {
        let _g = self.lock.lock();
        self.value.store(v, Ordering::Release);
        self.cv.notify_all();
    }

    /// Wakes waiters without changing the value (used at shutdown).
    pub(crate) fn poke(&self) {
        let _g = self.lock.lock();
        self.cv.notify_all();
    }

    /// Waits until the value passes `v` or `timeout` elapses; returns the value then.
    pub(crate) fn wait_beyond(&self, v: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock.lock();
        loop {
            let cur = self.get();
            if cur > v {
                return cur;
            }
            if self.cv.wait_until(&mut g, deadline).timed_out() {
                return self.get();
            }
        }
    }
}
