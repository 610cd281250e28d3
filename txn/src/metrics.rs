//! Counters since start, and the snapshot operators and the metrics endpoint read.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters, bumped where things happen.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) halves_stored: AtomicU64,
    pub(crate) checks_sent: AtomicU64,
    pub(crate) checks_undelivered: AtomicU64,
    pub(crate) answers_commit: AtomicU64,
    pub(crate) answers_rollback: AtomicU64,
    pub(crate) answers_unknown: AtomicU64,
    pub(crate) committed: AtomicU64,
    pub(crate) rolled_back: AtomicU64,
    pub(crate) discarded: AtomicU64,
    pub(crate) parked: AtomicU64,
    pub(crate) rearmed: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) unknown_refs: AtomicU64,
    pub(crate) carried_forward: AtomicU64,
    pub(crate) lost_at_restart: AtomicU64,
    pub(crate) halves_kept_used: AtomicU64,
}

impl Counters {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// What the transaction service looks like now: gauges from the state table, counters since
/// start. The HTTP facade exports these as metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnMetrics {
    /// Undecided transactions: being checked, or stored and not yet read by the checker.
    pub open: u64,
    /// Transactions parked by the final action `keep`.
    pub parked: u64,
    /// Decisions being made durable right now.
    pub resolving: u64,
    /// Decided transactions still in memory.
    pub resolved_in_memory: u64,
    /// Age of the oldest open (or parked) transaction, in ms; 0 when none.
    pub oldest_open_age_ms: u64,
    /// Checks queued in pull-mode groups, not yet pulled.
    pub pending_pull_checks: u64,
    /// Transactions whose check (or final action) was due but held back by
    /// `max_checks_per_sec`, counted at most 5 s ago; above 0 for long, checks run later than
    /// `check_interval` says.
    pub checks_due_waiting: u64,
    /// Half messages stored (send path) since start.
    pub halves_stored: u64,
    /// Checks handed to a producer connection, URL sink or puller.
    pub checks_sent: u64,
    /// Checks due with nobody to ask (no live producer of the group); not counted against
    /// `check_max`.
    pub checks_undelivered: u64,
    /// Check answers: commit.
    pub answers_commit: u64,
    /// Check answers: rollback.
    pub answers_rollback: u64,
    /// Check answers: unknown.
    pub answers_unknown: u64,
    /// Transactions committed.
    pub committed: u64,
    /// Transactions rolled back on request.
    pub rolled_back: u64,
    /// Transactions rolled back by the final action.
    pub discarded: u64,
    /// Transactions parked by the final action.
    pub parked_total: u64,
    /// Parked transactions re-armed by an operator.
    pub rearmed: u64,
    /// Decisions refused because the transaction went the other way.
    pub conflicts: u64,
    /// Requests naming no known transaction.
    pub unknown_refs: u64,
    /// Half messages carried forward to the queue's tail.
    pub carried_forward: u64,
    /// Undecided transactions whose half message was unreadable at restart.
    pub lost_at_restart: u64,
    /// Store reads of half messages avoided: taken from memory, as their sends stored them
    /// (`fresh_half_bytes`), to adopt or decide a transaction.
    pub halves_kept_used: u64,
}

impl Counters {
    /// Copies the counters into `m` (gauges are filled by the table).
    pub(crate) fn fill(&self, m: &mut TxnMetrics) {
        m.halves_stored = Self::get(&self.halves_stored);
        m.checks_sent = Self::get(&self.checks_sent);
        m.checks_undelivered = Self::get(&self.checks_undelivered);
        m.answers_commit = Self::get(&self.answers_commit);
        m.answers_rollback = Self::get(&self.answers_rollback);
        m.answers_unknown = Self::get(&self.answers_unknown);
        m.committed = Self::get(&self.committed);
        m.rolled_back = Self::get(&self.rolled_back);
        m.discarded = Self::get(&self.discarded);
        m.parked_total = Self::get(&self.parked);
        m.rearmed = Self::get(&self.rearmed);
        m.conflicts = Self::get(&self.conflicts);
        m.unknown_refs = Self::get(&self.unknown_refs);
        m.carried_forward = Self::get(&self.carried_forward);
        m.lost_at_restart = Self::get(&self.lost_at_restart);
        m.halves_kept_used = Self::get(&self.halves_kept_used);
    }
}
