//! Configuration: broker-wide limits and a check-back policy per producer group.
//!
//! Every producer group gets [`TxnConfig::defaults`] unless [`TxnConfig::groups`] overrides some
//! of its fields. The server fills this from its `[txn]` section; tests use short intervals.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// What happens to a transaction still open after `check_max` answered-UNKNOWN (or unanswered)
/// checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FinalAction {
    /// Roll it back (the default): the message is never delivered, and a later commit is
    /// refused with TRANSACTION_SHOULD_ROLLBACK.
    #[default]
    Rollback,
    /// RocketMQ's behaviour: stop checking and copy the half message to
    /// `TRANS_CHECK_MAX_TIME_TOPIC`. The transaction stays undecided ("parked"): the producer or
    /// an operator may still commit or roll it back, and an operator may re-arm the checks.
    Keep,
}

impl FinalAction {
    /// Parses `"rollback"` or `"keep"`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rollback" => Some(Self::Rollback),
            "keep" => Some(Self::Keep),
            _ => None,
        }
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rollback => "rollback",
            Self::Keep => "keep",
        }
    }
}

/// The check-back policy of one producer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPolicy {
    /// Age (since the half message was stored) of the first check, unless the message carries
    /// `CHECK_IMMUNITY_TIME_IN_SECONDS`. Default 6 s (RocketMQ's `transactionTimeOut`).
    pub check_after: Duration,
    /// Time between two checks of one transaction. Default 30 s.
    pub check_interval: Duration,
    /// Most checks delivered per transaction before the final action. Default 15.
    pub check_max: u32,
    /// Applied one `check_interval` after the last check. Default rollback.
    pub final_action: FinalAction,
    /// A transaction still open this long after its half message was stored (or after an
    /// operator re-armed it) gets the final action whatever its check count: one whose checks can never be delivered (no producer
    /// of its group ever connects) or that set a huge `CHECK_IMMUNITY_TIME_IN_SECONDS` would
    /// otherwise stay open for ever, holding one of `max_open` (RocketMQ skips halves older
    /// than its 72 h file reservation). Default 72 h.
    pub max_age: Duration,
    /// A check-back URL (DTM style). The txn crate holds no HTTP code: checks of such a group
    /// go to the URL sink the HTTP facade installs ([`crate::TxnService::set_url_sink`]).
    pub check_url: Option<String>,
    /// Pull mode (Alibaba style): checks wait in a per-group queue that
    /// [`crate::TxnService::pull_checks`] hands out, instead of going to a TCP connection.
    pub pull_checks: bool,
}

impl Default for GroupPolicy {
    fn default() -> Self {
        Self {
            check_after: Duration::from_secs(6),
            check_interval: Duration::from_secs(30),
            check_max: 15,
            final_action: FinalAction::Rollback,
            max_age: Duration::from_secs(72 * 3600),
            check_url: None,
            pull_checks: false,
        }
    }
}

/// Fields a group overrides; `None` keeps the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupOverride {
    /// See [`GroupPolicy::check_after`].
    pub check_after: Option<Duration>,
    /// See [`GroupPolicy::check_interval`].
    pub check_interval: Option<Duration>,
    /// See [`GroupPolicy::check_max`].
    pub check_max: Option<u32>,
    /// See [`GroupPolicy::final_action`].
    pub final_action: Option<FinalAction>,
    /// See [`GroupPolicy::max_age`].
    pub max_age: Option<Duration>,
    /// See [`GroupPolicy::check_url`].
    pub check_url: Option<String>,
    /// See [`GroupPolicy::pull_checks`].
    pub pull_checks: Option<bool>,
}

/// Everything the transaction extension can be told.
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// The policy of groups without an override.
    pub defaults: GroupPolicy,
    /// Per-group overrides, by producer group name.
    pub groups: HashMap<String, GroupOverride>,
    /// Most undecided transactions held at once; a half message beyond it is refused with
    /// SYSTEM_BUSY (memory is bounded). Default 500 000.
    pub max_open: usize,
    /// How long a decided transaction stays in memory for quick idempotent answers and the
    /// operator view. Later answers come from its op record (looked up in the store). Default 5 min.
    pub resolved_retention: Duration,
    /// Most decided transactions kept in memory; the oldest are forgotten first. Default 100 000.
    pub resolved_max: usize,
    /// How often the state checkpoint is written when something changed (spaced further
    /// apart as undecided transactions grow; check counts reach the disk in between through
    /// the check journal). Default 1 s.
    pub checkpoint_interval: Duration,
    /// Undecided half messages older than this are copied to the tail of the half queue, so
    /// retention can free old segments without losing them. Default: half the store's retention.
    pub carry_forward_after: Option<Duration>,
    /// Most checks queued per pull-mode group. Default 10 000.
    pub pending_checks_max: usize,
    /// Most checks (and final actions) started per second, over all groups; 0 means no limit.
    /// Every check costs a half-message read, a request to the producer and its answer, so
    /// without a limit a backlog of due transactions (100 000 after an outage of their
    /// producers) is checked as fast as the producers answer, taking CPU from the plain
    /// traffic. Due transactions beyond it wait, oldest first. Default 5 000.
    pub max_checks_per_sec: u32,
    /// Folder of the checkpoint. Default `<store data dir>/txn`.
    pub state_dir: Option<PathBuf>,
    /// Bytes of freshly stored half messages kept in memory for their END_TRANSACTION, which
    /// then need not read them back from the store (see `fresh`); the oldest go first, and 0
    /// keeps none. Default 16 MiB.
    pub fresh_half_bytes: usize,
}

impl Default for TxnConfig {
    fn default() -> Self {
        Self {
            defaults: GroupPolicy::default(),
            groups: HashMap::new(),
            max_open: 500_000,
            resolved_retention: Duration::from_secs(300),
            resolved_max: 100_000,
            checkpoint_interval: Duration::from_secs(1),
            carry_forward_after: None,
            pending_checks_max: 10_000,
            max_checks_per_sec: 5_000,
            state_dir: None,
            fresh_half_bytes: 16 << 20,
        }
    }
}

/// Shortest interval the checker honours; below it the loop would spin.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

impl TxnConfig {
    /// The effective policy of `group`.
    pub fn policy(&self, group: &str) -> GroupPolicy {
        let mut p = self.defaults.clone();
        if let Some(o) = self.groups.get(group) {
            if let Some(v) = o.check_after {
                p.check_after = v;
            }
            if let Some(v) = o.check_interval {
                p.check_interval = v;
            }
            if let Some(v) = o.check_max {
                p.check_max = v;
            }
            if let Some(v) = o.final_action {
                p.final_action = v;
            }
            if let Some(v) = o.max_age {
                p.max_age = v;
            }
            if o.check_url.is_some() {
                p.check_url.clone_from(&o.check_url);
            }
            if let Some(v) = o.pull_checks {
                p.pull_checks = v;
            }
        }
        p
    }

    /// Checks the values against each other; called by `TxnExtension::new`'s caller and at start.
    pub fn validate(&self) -> Result<(), String> {
        let mut policies = vec![("defaults".to_owned(), self.defaults.clone())];
        policies.extend(self.groups.keys().map(|g| (g.clone(), self.policy(g))));
        for (name, p) in policies {
            if p.check_interval < MIN_INTERVAL {
                return Err(format!(
                    "txn {name}: check_interval must be at least {MIN_INTERVAL:?}"
                ));
            }
            if p.check_max == 0 {
                return Err(format!("txn {name}: check_max must be at least 1"));
            }
            if p.max_age < p.check_after {
                return Err(format!("txn {name}: max_age must be at least check_after"));
            }
            if p.check_url.is_some() && p.pull_checks {
                return Err(format!(
                    "txn {name}: check_url and pull_checks are exclusive"
                ));
            }
        }
        if self.max_open == 0 || self.pending_checks_max == 0 {
            return Err("txn: max_open and pending_checks_max must be positive".into());
        }
        if self.checkpoint_interval < MIN_INTERVAL {
            return Err(format!(
                "txn: checkpoint_interval must be at least {MIN_INTERVAL:?}"
            ));
        }
        Ok(())
    }

    /// How often the checker wakes: a quarter of the shortest configured interval, between
    /// 10 ms and 1 s, so a check is never late by more than that.
    pub(crate) fn tick(&self) -> Duration {
        let mut shortest = self.defaults.check_after.min(self.defaults.check_interval);
        for g in self.groups.keys() {
            let p = self.policy(g);
            shortest = shortest.min(p.check_after).min(p.check_interval);
        }
        (shortest / 4).clamp(MIN_INTERVAL, Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_only_the_fields_they_set() {
        let mut cfg = TxnConfig::default();
        cfg.groups.insert(
            "g".into(),
            GroupOverride {
                check_max: Some(3),
                final_action: Some(FinalAction::Keep),
                ..Default::default()
            },
        );
        let p = cfg.policy("g");
        assert_eq!((p.check_max, p.final_action), (3, FinalAction::Keep));
        assert_eq!(p.check_interval, Duration::from_secs(30));
        assert_eq!(cfg.policy("other"), GroupPolicy::default());
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.tick(), Duration::from_secs(1));
    }

    #[test]
    fn nonsense_is_refused() {
        let mut cfg = TxnConfig::default();
        cfg.defaults.check_max = 0;
        assert!(cfg.validate().unwrap_err().contains("check_max"));
        let mut cfg = TxnConfig::default();
        cfg.groups.insert(
            "g".into(),
            GroupOverride {
                check_url: Some("http://x".into()),
                pull_checks: Some(true),
                ..Default::default()
            },
        );
        assert!(cfg.validate().unwrap_err().contains("exclusive"));
        assert_eq!(FinalAction::parse(" Keep "), Some(FinalAction::Keep));
        assert_eq!(FinalAction::parse("drop"), None);
    }
}
