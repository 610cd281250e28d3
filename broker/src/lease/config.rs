//! [`LeaseConfig`]: the bounds of lease-based consumption. Every limit is explicit so one
//! greedy consumer cannot make the broker hold unbounded state for its group.

use std::time::Duration;

/// RocketMQ's default delay ladder (`messageDelayLevel`), used to turn a nack's delay into a
/// delay level; it should match the schedule extension's `levels_ms`.
const ROCKETMQ_LEVELS_MS: [u64; 18] = [
    1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000,
    480_000, 540_000, 600_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
];

/// Limits of lease-based consumption (HTTP receive/ack/nack/visibility).
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseConfig {
    /// Most messages one receive hands out. Default 32.
    pub max_per_receive: usize,
    /// About the most body bytes one receive hands out (at least one message always goes).
    /// Default 8 MiB.
    pub max_receive_bytes: usize,
    /// Shortest lease a caller may ask for. Default 1 s.
    pub min_visibility: Duration,
    /// Longest lease, counted from the receive, also through extensions. Default 12 h (SQS).
    pub max_visibility: Duration,
    /// Lease of a receive that names none. Default 30 s.
    pub default_visibility: Duration,
    /// Longest long poll. Default 30 s (below common proxy idle timeouts).
    pub max_wait: Duration,
    /// Leases a group may hold at once; a receive beyond it returns what still fits (maybe
    /// nothing). Default 10 000.
    pub max_inflight_per_group: usize,
    /// Leases every group together may hold at once: the per-group bound alone multiplies by
    /// `max_groups`. A receive beyond it returns what still fits (maybe nothing). Default
    /// 100 000.
    pub max_inflight_total: usize,
    /// Consumer groups that may hold lease books at once (each keeps cursors, leases and
    /// remembered receipts in memory, and commits offsets); a receive for a new group past it
    /// is refused (HTTP 429), unless idle books (no leases, nothing open, offsets committed)
    /// can be dropped to make room. Default 10 000.
    pub max_groups: usize,
    /// Retry messages of other topics a group's retry cursor keeps aside while it looks for the
    /// topic being received; when full, the cursor stops advancing. Default 10 000.
    pub max_parked_retries: usize,
    /// Entries every group together keeps waiting (retries kept aside and failed hand-backs);
    /// past it, a group holding at least its share (this over the groups with a book) keeps
    /// no more retries aside (its retry cursor waits, as at `max_parked_retries`), while one
    /// below its share still may, up to twice this. A failed hand-back always waits. Default
    /// 100 000.
    pub max_parked_retries_total: usize,
    /// Retry-queue entries one receive looks at. Default 1 024.
    pub max_retry_scan: usize,
    /// Finished receipts remembered per group, so a stale receipt is told apart from a forged
    /// one (`already_acked` / `receipt_expired` instead of `receipt_unknown`). Default 100 000.
    pub remembered_receipts: usize,
    /// Finished receipts every group together remembers; past it, the group finishing a
    /// delivery forgets its own oldest first. Default 1 000 000.
    pub remembered_receipts_total: usize,
    /// How often expired leases are looked for. Default 200 ms.
    pub expiry_tick: Duration,
    /// Most expired leases handed back per tick (the rest wait for the next). Default 256.
    pub max_expired_per_tick: usize,
    /// The delay ladder a nack's delay is mapped onto (smallest level at least the delay).
    /// Default RocketMQ's 1 s … 2 h; keep it equal to the schedule extension's ladder.
    pub nack_levels: Vec<Duration>,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            max_per_receive: 32,
            max_receive_bytes: 8 << 20,
            min_visibility: Duration::from_secs(1),
            max_visibility: Duration::from_secs(12 * 3600),
            default_visibility: Duration::from_secs(30),
            max_wait: Duration::from_secs(30),
            max_inflight_per_group: 10_000,
            max_inflight_total: 100_000,
            max_groups: 10_000,
            max_parked_retries: 10_000,
            max_parked_retries_total: 100_000,
            max_retry_scan: 1_024,
            remembered_receipts: 100_000,
            remembered_receipts_total: 1_000_000,
            expiry_tick: Duration::from_millis(200),
            max_expired_per_tick: 256,
            nack_levels: ROCKETMQ_LEVELS_MS
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
        }
    }
}

impl LeaseConfig {
    /// Checks the limits against each other.
    pub fn validate(&self) -> Result<(), String> {
        let counts = [
            ("max_per_receive", self.max_per_receive),
            ("max_receive_bytes", self.max_receive_bytes),
            ("max_inflight_per_group", self.max_inflight_per_group),
            ("max_inflight_total", self.max_inflight_total),
            ("max_groups", self.max_groups),
            ("max_parked_retries", self.max_parked_retries),
            ("max_parked_retries_total", self.max_parked_retries_total),
            ("remembered_receipts_total", self.remembered_receipts_total),
            ("max_retry_scan", self.max_retry_scan),
            ("max_expired_per_tick", self.max_expired_per_tick),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, v)| *v == 0) {
            return Err(format!("lease.{name} must be positive"));
        }
        if self.min_visibility.is_zero()
            || self.min_visibility > self.default_visibility
            || self.default_visibility > self.max_visibility
        {
            return Err(format!(
                "lease visibility needs 0 < min ({:?}) <= default ({:?}) <= max ({:?})",
                self.min_visibility, self.default_visibility, self.max_visibility
            ));
        }
        if self.expiry_tick.is_zero() || self.expiry_tick > self.min_visibility {
            return Err(format!(
                "lease.expiry_tick ({:?}) must be positive and at most min_visibility",
                self.expiry_tick
            ));
        }
        if self.nack_levels.is_empty() || self.nack_levels.windows(2).any(|w| w[0] > w[1]) {
            return Err("lease.nack_levels must be a non-empty, ascending ladder".into());
        }
        Ok(())
    }

    /// The delay level of a nack: the smallest level whose delay is at least `delay` (level 1
    /// for zero), the last level beyond the ladder; 0 (the group's back-off) without a delay.
    pub fn nack_level(&self, delay: Option<Duration>) -> i32 {
        let Some(delay) = delay else {
            return 0;
        };
        let idx = self
            .nack_levels
            .iter()
            .position(|l| *l >= delay)
            .unwrap_or(self.nack_levels.len().saturating_sub(1));
        i32::try_from(idx + 1).unwrap_or(i32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_inconsistent_visibility_is_refused() {
        let c = LeaseConfig::default();
        assert!(c.validate().is_ok());
        let bad = LeaseConfig {
            default_visibility: Duration::from_secs(13 * 3600),
            ..c.clone()
        };
        assert!(bad.validate().is_err());
        let bad = LeaseConfig {
            max_per_receive: 0,
            ..c
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn a_nack_delay_maps_to_the_smallest_level_at_least_as_long() {
        let c = LeaseConfig::default();
        assert_eq!(c.nack_level(None), 0);
        assert_eq!(c.nack_level(Some(Duration::ZERO)), 1);
        assert_eq!(c.nack_level(Some(Duration::from_secs(1))), 1);
        assert_eq!(c.nack_level(Some(Duration::from_secs(6))), 3);
        assert_eq!(c.nack_level(Some(Duration::from_secs(86_400))), 18);
    }
}
