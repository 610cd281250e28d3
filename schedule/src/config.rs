//! [`ScheduleConfig`]: every knob of the schedule service, with its default next to it.

use std::time::Duration;

use crate::error::{Result, ScheduleError};

/// RocketMQ's `messageDelayLevel` default.
pub const DEFAULT_LEVELS: &str = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h";

/// Most delay levels: each level is one queue of `SCHEDULE_TOPIC_XXXX`.
pub const MAX_LEVELS: usize = 64;

/// The schedule service's configuration. Start from [`ScheduleConfig::default`] and adjust.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// Delay of each level, level 1 first. Default RocketMQ's 18 levels ([`DEFAULT_LEVELS`]).
    /// A `DELAY` above the last level is clamped to it, as RocketMQ does.
    pub levels: Vec<Duration>,
    /// Longest accepted delay; a longer one is refused at send time. Default 30 days.
    pub max_delay: Duration,
    /// How far in the past a `TIMER_DELIVER_MS` may lie and still be accepted (delivered at
    /// once); further back is refused at send time. Covers producer clock skew. Default 10 s.
    pub past_tolerance: Duration,
    /// Most timers released per second when many fall due together, so a burst of due timers
    /// does not starve normal traffic. Default 50 000.
    pub release_rate: u32,
    /// Most messages in one release append. Default 256.
    pub release_batch: usize,
    /// Release appends in flight at once. Default 4.
    pub max_inflight_batches: usize,
    /// How far ahead of now timers are held in memory; later ones stay on disk. Default 10 s.
    pub near_window: Duration,
    /// Most index entries one window load brings into memory; a denser window is loaded in
    /// parts. Bounds memory when very many timers fall due close together. Default 1 000 000.
    pub max_window_load: usize,
    /// How often newly indexed timers are written to disk as a sorted run and the progress
    /// state is saved; a restart re-reads at most this much of the timer topics. Default 1 s.
    pub checkpoint_interval: Duration,
    /// Runs on disk before the smallest ones are merged. Default 8.
    pub max_runs: usize,
    /// A timer due further than this after it was stored is re-written (rolled) at that point,
    /// so commit-log retention never deletes a timer that is still pending. Must be well below
    /// the store's retention age. Default 24 h. The value in force when the index was created
    /// is kept in the index state and wins over a later change.
    pub roll_interval: Duration,
    /// Most messages one cancel, reschedule or list by key handles. Default 10 000.
    pub max_key_matches: usize,
    /// Idle poll interval of the timer-topic reader; a send with a delay wakes it at once.
    /// Default 5 ms.
    pub enqueue_poll: Duration,
    /// Longest an API call waits for the index to catch up or a release to finish.
    /// Default 10 s.
    pub op_timeout: Duration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            levels: parse_levels(DEFAULT_LEVELS).unwrap_or_default(),
            max_delay: Duration::from_secs(30 * 86_400),
            past_tolerance: Duration::from_secs(10),
            release_rate: 50_000,
            release_batch: 256,
            max_inflight_batches: 4,
            near_window: Duration::from_secs(10),
            max_window_load: 1_000_000,
            checkpoint_interval: Duration::from_secs(1),
            max_runs: 8,
            roll_interval: Duration::from_secs(24 * 3600),
            max_key_matches: 10_000,
            enqueue_poll: Duration::from_millis(5),
            op_timeout: Duration::from_secs(10),
        }
    }
}

impl ScheduleConfig {
    /// Replaces the levels with a RocketMQ `messageDelayLevel` string (`"1s 5s 10m 2h 1d"`).
    pub fn with_levels(mut self, spec: &str) -> Result<Self> {
        self.levels = parse_levels(spec)?;
        Ok(self)
    }

    /// Checks the values against each other; called at start.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ScheduleError::Config(m));
        if self.levels.is_empty() || self.levels.len() > MAX_LEVELS {
            return bad(format!(
                "levels: 1 to {MAX_LEVELS} needed, got {}",
                self.levels.len()
            ));
        }
        // Retries and HTTP nacks climb the levels as a back-off ladder.
        if self.levels.windows(2).any(|w| w[0] > w[1]) {
            return bad("levels must not decrease (level 1 first)".into());
        }
        if self.max_delay.is_zero() || self.max_delay > Duration::from_secs(10 * 365 * 86_400) {
            return bad("max_delay must be between 1 ms and 10 years".into());
        }
        if let Some(l) = self
            .levels
            .iter()
            .find(|l| l.is_zero() || **l > self.max_delay)
        {
            return bad(format!(
                "level delay {l:?} must be positive and at most max_delay"
            ));
        }
        if self.release_rate == 0 || self.release_batch == 0 || self.release_batch > 4096 {
            return bad("release_rate must be positive, release_batch 1..=4096".into());
        }
        if self.max_inflight_batches == 0 || self.max_inflight_batches > 64 {
            return bad("max_inflight_batches must be 1..=64".into());
        }
        if self.near_window < Duration::from_millis(100) || self.max_window_load < 1000 {
            return bad("near_window must be >= 100 ms and max_window_load >= 1000".into());
        }
        if self.roll_interval < Duration::from_secs(1) || self.max_runs < 2 {
            return bad("roll_interval must be >= 1 s and max_runs >= 2".into());
        }
        if self.checkpoint_interval.is_zero() || self.enqueue_poll.is_zero() {
            return bad("checkpoint_interval and enqueue_poll must be positive".into());
        }
        if self.max_key_matches == 0 || self.op_timeout.is_zero() {
            return bad("max_key_matches and op_timeout must be positive".into());
        }
        Ok(())
    }

    /// Milliseconds of a level (1-based), clamped to the last level.
    pub(crate) fn level_delay_ms(&self, level: usize) -> (usize, i64) {
        let level = level.clamp(1, self.levels.len().max(1));
        let ms = self
            .levels
            .get(level - 1)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        (level, ms)
    }
}

/// Parses a RocketMQ `messageDelayLevel` string: space-separated numbers with a unit
/// `ms`, `s`, `m`, `h` or `d`.
pub fn parse_levels(spec: &str) -> Result<Vec<Duration>> {
    spec.split_whitespace().map(parse_duration).collect()
}

fn parse_duration(token: &str) -> Result<Duration> {
    let split = token
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(token.len());
    let (num, unit) = token.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| ScheduleError::Config(format!("bad delay level {token:?}")))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(ScheduleError::Config(format!(
                "bad unit in delay level {token:?}"
            )))
        }
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| ScheduleError::Config(format!("delay level {token:?} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_levels_are_rocketmq_s_eighteen() {
        let cfg = ScheduleConfig::default();
        assert_eq!(cfg.levels.len(), 18);
        assert_eq!(cfg.levels[0], Duration::from_secs(1));
        assert_eq!(cfg.levels[17], Duration::from_secs(7200));
        assert_eq!(cfg.level_delay_ms(99), (18, 7_200_000));
        cfg.validate().unwrap();
    }

    #[test]
    fn bad_level_strings_are_refused() {
        assert!(parse_levels("1x").is_err());
        assert!(parse_levels("s").is_err());
        assert_eq!(
            parse_levels("250ms 1d").unwrap()[1],
            Duration::from_secs(86_400)
        );
    }
}
