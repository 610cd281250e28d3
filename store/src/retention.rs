//! Retention: whole commit-log segments go when they are older than `retention_age` (by their
//! last write) or while the log is larger than `retention_bytes`; consume-queue and index files
//! that only point below the new minimum go with them. The active segment, and any segment
//! holding records whose consume-queue and index entries are not yet synced (a checkpoint's
//! `synced_to`), are never deleted; nor, for the size budget, a segment
//! younger than `retention_bytes_min_age` (see [`StoreConfig::retention_bytes_min_age`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::commitlog::CommitLog;
use crate::config::StoreConfig;
use crate::consume_queue::ConsumeQueues;
use crate::dispatch::Dispatcher;
use crate::error::Result;
use crate::index::Index;
use crate::shared::Shared;

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Commit-log segments deleted.
    pub segments: usize,
    /// Consume-queue files deleted.
    pub queue_files: usize,
    /// Index files deleted.
    pub index_files: usize,
}

pub(crate) struct Retention {
    /// Held for a whole pass, shared by the cleaner thread and `Store::run_retention`: two
    /// passes at once both found the oldest segment due, and the second then deleted the one
    /// after it, which nothing had checked. It holds whether queue and index files behind the
    /// log's start may be left to delete: set by a pass that deleted a segment or failed to
    /// clean up after one, and at open (a crash may have stopped a pass midway). Only then
    /// does a pass walk every queue.
    pub(crate) pass: Arc<parking_lot::Mutex<bool>>,
    pub(crate) log: Arc<CommitLog>,
    pub(crate) cqs: Arc<ConsumeQueues>,
    pub(crate) index: Arc<Index>,
    pub(crate) shared: Arc<Shared>,
    /// Its `synced_to` gates deletion (see `oldest_is_due`).
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) cfg: StoreConfig,
    /// When the last "budget held" warning was logged (one a minute at most).
    pub(crate) held_warned: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Retention {
    /// One pass, as the cleaner thread runs it every `clean_interval`.
    pub(crate) fn run_once(&self) -> Result<RetentionReport> {
        let mut cleanup_pending = self.pass.lock();
        let mut report = RetentionReport::default();
        while self.oldest_is_due() {
            match self.log.delete_oldest() {
                Ok(Some(seg)) => {
                    report.segments += 1;
                    tracing::info!(segment = %seg.file.path().display(), "retention deleted segment");
                }
                Ok(None) => break,
                Err(e) => {
                    // A segment may have gone before the error (a failed folder sync), or in
                    // an earlier round of this pass: the queue and index clean-up is owed.
                    *cleanup_pending = true;
                    return Err(e);
                }
            }
        }
        if report.segments == 0 && !*cleanup_pending {
            return Ok(report);
        }
        // One queue's failure does not stop the others; the next pass tries again.
        let log_min = self.log.min_offset();
        let mut first_error = None;
        for (_, _, q) in self.cqs.all() {
            q.advance_min(log_min);
            match q.delete_files_below_min() {
                Ok(n) => report.queue_files += n,
                Err(e) => {
                    tracing::warn!(error = %e, "deleting consume-queue files behind retention failed; tried again at the next pass");
                    first_error.get_or_insert(e);
                }
            }
        }
        match self.index.delete_below(log_min) {
            Ok(n) => report.index_files = n,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        *cleanup_pending = first_error.is_some();
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    fn oldest_is_due(&self) -> bool {
        let segs = self.log.segments();
        let (Some(oldest), true) = (segs.first(), segs.len() > 1) else {
            return false;
        };
        // Not past what a consume-queue and index sync covered: entries only written through
        // the map could be lost with power, and their records must then be there for the next
        // open to dispatch again (a queue whose newest entries pointed into a deleted segment
        // came back shorter, and its offsets were handed out a second time).
        if oldest.end() > self.dispatcher.synced_to.load(Ordering::Acquire) {
            return false;
        }
        let age = std::fs::metadata(oldest.file.path())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        let expired = age.is_some_and(|age| age >= self.cfg.retention_age);
        let over_budget = self
            .cfg
            .retention_bytes
            .is_some_and(|b| self.log.disk_bytes() > b);
        let old_enough = age.is_some_and(|age| age >= self.cfg.retention_bytes_min_age);
        if over_budget && !old_enough && !expired {
            self.note_budget_held(oldest.file.path());
        }
        expired || (over_budget && old_enough)
    }
}

impl Retention {
    fn note_budget_held(&self, oldest: &std::path::Path) {
        let mut last = self.held_warned.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            return;
        }
        *last = Some(std::time::Instant::now());
        tracing::warn!(
            segment = %oldest.display(),
            bytes = self.log.disk_bytes(),
            budget = ?self.cfg.retention_bytes,
            min_age = ?self.cfg.retention_bytes_min_age,
            "commit log over retention_bytes, but its oldest segment is younger than the size \
             budget's minimum age: kept (it may hold open transactions or timers)"
        );
    }
}

/// The cleaner thread: a retention pass every `interval` until `closing`.
pub(crate) fn run(retention: Retention, interval: Duration) {
    let shared = Arc::clone(&retention.shared);
    let mut waited = Duration::ZERO;
    let step = Duration::from_millis(50);
    while !shared.closing.load(std::sync::atomic::Ordering::Acquire) {
        std::thread::sleep(step);
        waited += step;
        if waited < interval {
            continue;
        }
        waited = Duration::ZERO;
        if let Err(e) = retention.run_once() {
            tracing::error!(error = %e, "retention pass failed");
        }
    }
}
