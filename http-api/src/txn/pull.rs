//! Check-back by polling (Alibaba style): for producers that cannot take an inbound request.
//!
//! A producer group is in pull mode in one of two ways:
//! - **configured**: `[txn.groups.<g>] pull_checks = true`. The txn crate queues its checks and
//!   counts each when it is handed out (`TxnService::pull_checks`), so a producer that never
//!   polls never burns the budget.
//! - **by polling**: any other group (no `check_url`) becomes pull mode when it polls: the
//!   facade registers a group sink (`TxnService::set_check_sink`) that takes the group's checks
//!   into a bounded queue here, but only while the group is *live*: a poll is waiting, or the
//!   last one ended less than [`LIVE_GRACE`] ago (a producer polling in a loop is between two
//!   polls). Otherwise the sink refuses, and the check is tried again one interval later (as
//!   for a TCP group with no producer connected). A queued check is counted against
//!   `check_max` only when a poll hands it out (`TxnService::claim_check`), so a producer that
//!   stops polling burns none of the budget. A group idle for
//!   `poll_idle` is unregistered (its TCP producers, if any, get the checks again) and its
//!   unanswered queued checks are dropped (each check is repeated on schedule anyway). Checks
//!   of transactions decided while queued are never handed out.
//!
//! Polling a group with a `check_url` is refused (409): its checks go to the URL.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_txn::{CheckSink, PendingCheck, TxnService};
use tokio::sync::{watch, Notify};

use super::budget::{ByteBudget, Held};
use super::CheckConfig;

/// How often a poll of a configured pull-mode group looks at the txn crate's queue (it has no
/// wake-up signal); polls of polling-registered groups are woken at once.
const CONFIGURED_RECHECK: Duration = Duration::from_millis(100);
/// Safety net for polling-registered groups (a missed wake-up costs at most this).
const REGISTERED_RECHECK: Duration = Duration::from_secs(1);

/// Groups in pull mode by polling, and their queued checks.
pub(super) struct PullGroups {
    cfg: CheckConfig,
    /// Shared with the webhook queue (`check_queue_bytes`).
    budget: Arc<ByteBudget>,
    groups: Mutex<HashMap<String, Group>>,
    /// Set by `TxnHttp::stop`; a poll sees it and answers at once.
    stop: watch::Receiver<bool>,
}

struct Group {
    /// Each check with its share of the byte budget, given back when it is handed out.
    queue: VecDeque<(PendingCheck, Held)>,
    /// Polls in progress.
    polling: usize,
    /// When the last poll ended (or began, while one runs).
    last_poll: Instant,
    wake: Arc<Notify>,
}

/// How long after a poll ends its group still takes checks into its queue (see the module
/// docs): long enough for a producer to handle a batch and poll again.
const LIVE_GRACE: Duration = Duration::from_secs(2);

impl Group {
    /// A poll waits, or one ended within `within` ([`LIVE_GRACE`] to take checks, `poll_idle`
    /// to stay registered).
    fn live(&self, within: Duration) -> bool {
        self.polling > 0 || self.last_poll.elapsed() < within
    }
}

/// The group sink: hands checks to [`PullGroups::offer`].
struct PullSink {
    group: String,
    groups: Weak<PullGroups>,
}

impl CheckSink for PullSink {
    fn name(&self) -> &'static str {
        "http-poll"
    }

    fn deliver(&self, check: PendingCheck) -> Result<(), String> {
        match self.groups.upgrade() {
            Some(g) => g.offer(&self.group, check),
            None => Err("the HTTP facade stopped".into()),
        }
    }
}

/// Ends one poll when dropped (also when the client goes away mid-poll).
pub(super) struct PollGuard {
    groups: Arc<PullGroups>,
    group: String,
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        if let Some(g) = self.groups.groups.lock().get_mut(&self.group) {
            g.polling = g.polling.saturating_sub(1);
            g.last_poll = Instant::now();
        }
    }
}

/// Where a poll takes its checks from.
pub(super) enum Source {
    /// The txn crate's queue (configured pull mode).
    Configured,
    /// Our queue (pull mode by polling); the guard ends the poll when dropped.
    Registered {
        /// Held for the poll's duration.
        _guard: PollGuard,
        /// Woken when a check is queued.
        wake: Arc<Notify>,
    },
}

impl PullGroups {
    pub(super) fn new(
        cfg: CheckConfig,
        budget: Arc<ByteBudget>,
        stop: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            budget,
            groups: Mutex::new(HashMap::new()),
            stop,
        })
    }

    /// Starts a poll of a group that is not configured for pull mode: registers the group sink
    /// on its first poll. `None` when `max_pull_groups` groups are registered already.
    pub(super) fn begin(self: &Arc<Self>, txn: &TxnService, group: &str) -> Option<Source> {
        let mut groups = self.groups.lock();
        if !groups.contains_key(group) {
            if groups.len() >= self.cfg.max_pull_groups {
                return None;
            }
            // Under our lock, so a concurrent sweep cannot unregister it in between; the txn
            // crate never calls us while holding its sink lock, so the order is safe.
            let sink = PullSink {
                group: group.to_owned(),
                groups: Arc::downgrade(self),
            };
            txn.set_check_sink(group, Some(Arc::new(sink)));
            groups.insert(
                group.to_owned(),
                Group {
                    queue: VecDeque::new(),
                    polling: 0,
                    last_poll: Instant::now(),
                    wake: Arc::new(Notify::new()),
                },
            );
            tracing::info!(
                producer_group = group,
                "producer group polls for transaction checks: pull mode"
            );
        }
        let g = groups.get_mut(group)?;
        g.polling += 1;
        g.last_poll = Instant::now();
        let wake = Arc::clone(&g.wake);
        Some(Source::Registered {
            _guard: PollGuard {
                groups: Arc::clone(self),
                group: group.to_owned(),
            },
            wake,
        })
    }

    /// Called by the sink under the txn table lock: queue only.
    fn offer(&self, group: &str, check: PendingCheck) -> Result<(), String> {
        let mut groups = self.groups.lock();
        let g = groups.get_mut(group).ok_or("the group no longer polls")?;
        if !g.live(LIVE_GRACE.min(self.cfg.poll_idle)) {
            return Err("no producer of the group is polling".into());
        }
        let queued = g
            .queue
            .iter()
            .position(|(c, _)| c.half_offset == check.half_offset);
        if queued.is_none() && g.queue.len() >= self.cfg.pending_per_group {
            return Err("the group's queue of polled checks is full".into());
        }
        // A newer check of the same transaction replaces the older one in place, its share
        // resized in one step; when the budget refuses the newer one, the older one stays.
        match queued {
            Some(i) => {
                let (queued_check, held) = &mut g.queue[i];
                held.resize_for(&check)?;
                *queued_check = check;
            }
            None => {
                let held = self.budget.hold(&check)?;
                g.queue.push_back((check, held));
            }
        }
        g.wake.notify_waiters();
        Ok(())
    }

    /// Takes up to `max` queued checks of a polling-registered group.
    fn take(&self, group: &str, max: usize) -> Vec<PendingCheck> {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group) else {
            return Vec::new();
        };
        let n = max.min(g.queue.len());
        g.queue.drain(..n).map(|(c, _)| c).collect()
    }

    /// Unregisters groups idle for `poll_idle`; returns how many.
    pub(super) fn sweep(&self, txn: &TxnService) -> usize {
        let mut groups = self.groups.lock();
        let idle: Vec<String> = groups
            .iter()
            .filter(|(_, g)| !g.live(self.cfg.poll_idle))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &idle {
            txn.set_check_sink(name, None);
            if let Some(g) = groups.remove(name) {
                tracing::info!(producer_group = %name, dropped_checks = g.queue.len(), "producer group stopped polling; its pull registration ends");
            }
        }
        idle.len()
    }

    /// Unregisters every group and wakes every poll (shutdown).
    pub(super) fn clear(&self, txn: &TxnService) {
        let mut groups = self.groups.lock();
        for (name, g) in groups.drain() {
            txn.set_check_sink(&name, None);
            g.wake.notify_waiters();
        }
    }

    /// Long-polls: returns as soon as checks are there, at `wait`'s end, or at shutdown.
    /// Bounded: at most `wait / recheck` rounds.
    pub(super) async fn poll(
        &self,
        txn: &TxnService,
        group: &str,
        source: &Source,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<PendingCheck>, sluice_txn::TxnError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut stop = self.stop.clone();
        loop {
            let (wake, recheck) = match source {
                Source::Configured => (None, CONFIGURED_RECHECK),
                Source::Registered { wake, .. } => (Some(Arc::clone(wake)), REGISTERED_RECHECK),
            };
            let notified = wake.as_ref().map(|w| w.notified());
            tokio::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            let got = match source {
                Source::Configured => txn.pull_checks(group, max).await?,
                Source::Registered { .. } => claim_all(txn, self.take(group, max)).await?,
            };
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline || *stop.borrow() {
                return Ok(got);
            }
            let nap = recheck.min(deadline - now);
            tokio::select! {
                () = tokio::time::sleep(nap) => {}
                () = async { if let Some(n) = notified.as_mut().as_pin_mut() { n.await } else { std::future::pending().await } } => {}
                () = super::stopped(&mut stop) => {}
            }
        }
    }
}

/// Counts queued checks against their budgets as they are handed out (one journal sync for
/// the batch, see `TxnService::claim_checks`), dropping those no longer wanted: decided, or
/// another check of the same transaction counted since. When the journal cannot be written
/// the poll ends with the error, and the checks are offered again.
async fn claim_all(
    txn: &TxnService,
    checks: Vec<PendingCheck>,
) -> Result<Vec<PendingCheck>, sluice_txn::TxnError> {
    if checks.is_empty() {
        return Ok(checks);
    }
    txn.claim_checks(checks).await
}

#[cfg(test)]
mod tests {
    use super::super::budget::test_check;
    use super::*;

    /// Groups sharing a budget of `bytes`, with "a" and "b" polling.
    fn polling_groups(bytes: usize) -> (Arc<PullGroups>, Arc<ByteBudget>) {
        let budget = ByteBudget::new(bytes);
        let (_stop, stopped) = watch::channel(false);
        let groups = PullGroups::new(CheckConfig::default(), Arc::clone(&budget), stopped);
        for name in ["a", "b"] {
            let g = Group {
                queue: VecDeque::new(),
                polling: 1,
                last_poll: Instant::now(),
                wake: Arc::new(Notify::new()),
            };
            groups.groups.lock().insert(name.into(), g);
        }
        (groups, budget)
    }

    #[test]
    fn polled_checks_of_all_groups_share_one_byte_budget() {
        let (groups, budget) = polling_groups(100_000);
        groups.offer("a", test_check(1, 40_000)).unwrap();
        groups.offer("b", test_check(2, 40_000)).unwrap();
        let why = groups.offer("b", test_check(3, 40_000)).unwrap_err();
        assert!(why.contains("check_queue_bytes"), "{why}");
        // A newer check the budget refuses leaves its older self queued.
        assert!(groups.offer("a", test_check(1, 90_000)).is_err());
        let kept = groups.groups.lock()["a"].queue.len();
        assert_eq!(kept, 1, "the older check stays queued");
        // One that fits takes its older self's place.
        groups.offer("a", test_check(1, 50_000)).unwrap();
        assert_eq!(groups.take("a", 10).len(), 1);
        groups.offer("b", test_check(3, 40_000)).unwrap();
        assert_eq!(groups.take("b", 10).len(), 2);
        assert_eq!(budget.used(), 0, "handed-out checks give their bytes back");
    }
}
