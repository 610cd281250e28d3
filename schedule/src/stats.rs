//! Counters and the lateness histogram, and the [`ScheduleStats`] snapshot operators read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (ms, inclusive) of the lateness histogram buckets; a last bucket takes the rest.
pub const LATENESS_BOUNDS_MS: [i64; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 60_000];

/// Counters since start.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) parked: AtomicU64,
    pub(crate) indexed: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) rolled: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) rescheduled: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) release_retries: AtomicU64,
    pub(crate) crash_checks: AtomicU64,
    pub(crate) crash_duplicates_avoided: AtomicU64,
    pub(crate) possible_duplicates: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) compactions: AtomicU64,
    pub(crate) lateness: [AtomicU64; LATENESS_BOUNDS_MS.len() + 1],
    pub(crate) max_lateness_ms: AtomicU64,
    /// Sum of every recorded lateness (the histogram's `_sum`).
    pub(crate) lateness_sum_ms: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Records how late one release was (store time minus due time).
    pub(crate) fn record_lateness(&self, late_ms: i64) {
        let late = late_ms.max(0);
        let i = LATENESS_BOUNDS_MS
            .iter()
            .position(|b| late <= *b)
            .unwrap_or(LATENESS_BOUNDS_MS.len());
        self.lateness[i].fetch_add(1, Ordering::Relaxed);
        self.lateness_sum_ms
            .fetch_add(late as u64, Ordering::Relaxed);
        self.max_lateness_ms
            .fetch_max(late as u64, Ordering::Relaxed);
    }
}

/// The schedule service's state for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleStats {
    /// Pending (parked, not released or cancelled) timers per real topic.
    pub pending_by_topic: BTreeMap<String, i64>,
    /// Sum of `pending_by_topic`.
    pub pending: i64,
    /// Fire time (epoch ms) of the next timer in the near window; `None` when no timer is
    /// due within it.
    pub next_due_ms: Option<i64>,
    /// Messages parked by the send path or [`crate::ScheduleService::schedule`] since start.
    pub parked: u64,
    /// Timers indexed since start (including copies and a restart's re-reads).
    pub indexed: u64,
    /// Messages released to their real topic since start.
    pub delivered: u64,
    /// Timers re-written ahead of commit-log retention.
    pub rolled: u64,
    /// Timers cancelled through the API or RECALL_MESSAGE.
    pub cancelled: u64,
    /// Timers rescheduled.
    pub rescheduled: u64,
    /// Timers dropped as undeliverable (record lost to retention or corrupt, no destination).
    pub dropped: u64,
    /// Release appends retried (store busy or failing).
    pub release_retries: u64,
    /// Timers checked after a restart for a release made before a crash.
    pub crash_checks: u64,
    /// Of those, found already released (a duplicate avoided).
    pub crash_duplicates_avoided: u64,
    /// Released again after a crash without the means to check (no UNIQ_KEY): possible
    /// duplicates.
    pub possible_duplicates: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Run merges done.
    pub compactions: u64,
    /// Release lateness histogram: `(upper bound ms, count)`; the last bound is `i64::MAX`.
    pub lateness_histogram: Vec<(i64, u64)>,
    /// Largest lateness seen, ms.
    pub max_lateness_ms: u64,
    /// Sum of every release's lateness, ms (with the histogram's count: the mean).
    pub lateness_sum_ms: u64,
    /// Timers held in memory (the near window).
    pub near_window_entries: usize,
    /// Index entries waiting for the next checkpoint.
    pub memtable_entries: usize,
    /// Runs on disk.
    pub runs: usize,
    /// Entries in the runs on disk.
    pub run_entries: u64,
}

impl ScheduleStats {
    /// The smallest bound under which at least `q` (0..=1) of releases fall, from the
    /// histogram; `None` before any release.
    pub fn lateness_quantile_ms(&self, q: f64) -> Option<i64> {
        let total: u64 = self.lateness_histogram.iter().map(|b| b.1).sum();
        if total == 0 {
            return None;
        }
        let want = (q.clamp(0.0, 1.0) * total as f64).ceil() as u64;
        let mut seen = 0;
        for (bound, n) in &self.lateness_histogram {
            seen += n;
            if seen >= want.max(1) {
                return Some(*bound);
            }
        }
        self.lateness_histogram.last().map(|b| b.0)
    }
}

impl Counters {
    /// Fills the counter part of a stats snapshot.
    pub(crate) fn fill(&self, s: &mut ScheduleStats) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.parked = get(&self.parked);
        s.indexed = get(&self.indexed);
        s.delivered = get(&self.delivered);
        s.rolled = get(&self.rolled);
        s.cancelled = get(&self.cancelled);
        s.rescheduled = get(&self.rescheduled);
        s.dropped = get(&self.dropped);
        s.release_retries = get(&self.release_retries);
        s.crash_checks = get(&self.crash_checks);
        s.crash_duplicates_avoided = get(&self.crash_duplicates_avoided);
        s.possible_duplicates = get(&self.possible_duplicates);
        s.checkpoints = get(&self.checkpoints);
        s.compactions = get(&self.compactions);
        s.max_lateness_ms = get(&self.max_lateness_ms);
        s.lateness_sum_ms = get(&self.lateness_sum_ms);
        s.lateness_histogram = LATENESS_BOUNDS_MS
            .iter()
            .copied()
            .chain([i64::MAX])
            .zip(self.lateness.iter().map(get))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_bucket_bounds() {
        let c = Counters::default();
        for late in [0, 3, 3, 15, 400] {
            c.record_lateness(late);
        }
        let mut s = ScheduleStats::default();
        c.fill(&mut s);
        assert_eq!(s.lateness_quantile_ms(0.5), Some(5));
        assert_eq!(s.lateness_quantile_ms(0.99), Some(500));
        assert_eq!(s.max_lateness_ms, 400);
        assert_eq!(
            s.lateness_sum_ms, 421,
            "the histogram's _sum: the mean is sum / count"
        );
    }
}
