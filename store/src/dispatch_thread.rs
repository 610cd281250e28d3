//! The dispatcher's thread: follows the commit log's flushed (or written) end, dispatches
//! what lies behind it, retries a failing dispatch without flooding the log, and writes a
//! checkpoint every `checkpoint_interval`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{FlushMode, StoreConfig};
use crate::dispatch::Dispatcher;
use crate::error::StoreError;
use crate::shared::Shared;

/// Every this many checkpoints (a minute at the default interval), the pages readers faulted
/// into older queue files are released too.
const QUEUE_SWEEP_EVERY: u64 = 60;

/// A dispatcher that keeps failing (a full disk under the queues, no descriptors or maps
/// left): it retries with a growing pause, says so in [`Shared`] once it failed
/// [`FAILING_AFTER`] times in a row (readiness shows it), and
/// logs the first failure, then one line per [`FAILING_LOG_EVERY`] with the count, not one
/// per retry.
#[derive(Debug, Default)]
struct Failing {
    count: u64,
    log: Throttle,
    pause: Duration,
}

/// Pauses between dispatch retries: from the first to the longest, doubling.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// One log line per [`FAILING_LOG_EVERY`], with the count of those held back (the store's
/// threads do not reach the broker's `LogEvery`).
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    fn allow(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < FAILING_LOG_EVERY) {
            self.held += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.held))
    }
}

/// Failures in a row (0.7 s of retries) before readiness says so: one passing error (a
/// descriptor short for a moment) does not make probes flap.
const FAILING_AFTER: u64 = 3;
/// At most one log line per this while dispatch keeps failing.
const FAILING_LOG_EVERY: Duration = Duration::from_secs(30);

impl Failing {
    /// Records a failure; returns the pause before the next try.
    fn failed(&mut self, shared: &Shared, e: &StoreError, offset: u64) -> Duration {
        self.count += 1;
        if self.count >= FAILING_AFTER {
            shared.set_dispatch_failing(Some(e.to_string()));
        }
        if self.log.allow().is_some() {
            tracing::error!(error = %e, offset, failures = self.count, "dispatch failed; consumers see no new messages until it succeeds; retrying");
        }
        self.pause = (self.pause * 2).clamp(RETRY_FIRST, RETRY_MAX);
        self.pause
    }

    /// Records a success; logs the end of a failing spell.
    fn recovered(&mut self, shared: &Shared) {
        if self.count > 0 {
            tracing::info!(failures = self.count, "dispatch recovered");
            shared.set_dispatch_failing(None);
            *self = Self::default();
        }
    }
}

/// The dispatcher thread's loop. It stops once `closing` is set and everything flushed has been
/// dispatched (or a dispatch fails while closing), after a final checkpoint.
pub(crate) fn run(dispatcher: Arc<Dispatcher>, shared: Arc<Shared>, cfg: StoreConfig) {
    let checkpoint_path = cfg.data_dir.join("checkpoint");
    let follow_flushed = matches!(cfg.flush, FlushMode::Sync);
    let mut last_checkpoint = Instant::now();
    let mut checkpoints = 0u64;
    let mut failing = Failing::default();
    // A checkpoint that keeps failing (no descriptors, a full disk) is tried every
    // `checkpoint_interval`: one line per FAILING_LOG_EVERY, not one a second.
    let mut checkpoint_log = Throttle::default();
    loop {
        let closing = shared.closing.load(std::sync::atomic::Ordering::Acquire);
        let source = if follow_flushed {
            &shared.flushed
        } else {
            &shared.written
        };
        let target = source.get();
        let done = shared.dispatched.get();
        if done < target {
            match dispatcher.dispatch_range(done, target) {
                Ok(reached) => {
                    // Cleared before the progress wakes anyone waiting for it.
                    failing.recovered(&shared);
                    shared.dispatched.set(reached);
                }
                // Closing: stop without the final dispatch rather than retry forever (a full
                // disk under the queues, no descriptors or maps left would hang shutdown). The
                // commit log holds the records, and the checkpoint written below still says
                // `dispatched`, so the next open dispatches them again.
                Err(e) if closing => {
                    tracing::error!(
                        error = %e, offset = done, target,
                        "dispatch failed while closing; the next open dispatches the rest"
                    );
                    break;
                }
                Err(e) => std::thread::sleep(failing.failed(&shared, &e, done)),
            }
        } else if closing {
            break;
        } else {
            source.wait_beyond(target, Duration::from_millis(20));
        }
        if last_checkpoint.elapsed() >= cfg.checkpoint_interval {
            if let Err(e) = dispatcher.checkpoint(&shared, &checkpoint_path) {
                if let Some(held_back) = checkpoint_log.allow() {
                    tracing::error!(error = %e, held_back, "checkpoint failed; retried every checkpoint_interval");
                }
            }
            dispatcher.release_behind(shared.dispatched.get());
            checkpoints += 1;
            if checkpoints.is_multiple_of(QUEUE_SWEEP_EVERY) {
                dispatcher.release_queue_pages();
            }
            last_checkpoint = Instant::now();
        }
    }
    if let Err(e) = dispatcher.checkpoint(&shared, &checkpoint_path) {
        tracing::error!(error = %e, "final checkpoint failed");
    }
}
