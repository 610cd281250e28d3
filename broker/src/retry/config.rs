//! Per-group retry policy: how many times a message is consumed again before it is dead-lettered,
//! and how long each retry waits.
//!
//! RocketMQ hard-codes the back-off as delay level `3 + reconsumeTimes` (10 s, 30 s, 1 m … 2 h
//! with the default ladder) and keeps the maximum per group (`retryMaxTimes`, 16). Sluice keeps
//! that as the default and adds an explicit ladder and a capped exponential back-off, both
//! expressed as `TIMER_DELAY_MS` so the schedule extension parks the copy like any timer.

use std::collections::BTreeMap;
use std::time::Duration;

/// RocketMQ's `retryMaxTimes` default.
pub const DEFAULT_MAX_RECONSUME_TIMES: i32 = 16;
/// RocketMQ's first retry level (`3 + reconsumeTimes`).
pub const DEFAULT_FIRST_LEVEL: i32 = 3;
/// Number of RocketMQ's default delay levels; higher levels clamp to it.
pub const DEFAULT_MAX_LEVEL: i32 = 18;

/// How long a retry waits, by how many times the message was already consumed again.
#[derive(Debug, Clone, PartialEq)]
pub enum Backoff {
    /// RocketMQ: delay level `first_level + reconsumeTimes`, clamped to `max_level`; the
    /// schedule extension's level ladder gives the time.
    Levels {
        /// Level of the first retry. Default 3 (10 s).
        first_level: i32,
        /// Highest level (the ladder's length). Default 18.
        max_level: i32,
    },
    /// Retry `n` (0-based) waits `ladder[min(n, len - 1)]`.
    Ladder(Vec<Duration>),
    /// Retry `n` waits `initial * multiplier^n`, at most `max`.
    Exponential {
        /// Wait of the first retry.
        initial: Duration,
        /// Growth per retry (at least 1).
        multiplier: f64,
        /// Cap.
        max: Duration,
    },
}

impl Default for Backoff {
    fn default() -> Self {
        Self::Levels {
            first_level: DEFAULT_FIRST_LEVEL,
            max_level: DEFAULT_MAX_LEVEL,
        }
    }
}

/// How a retry copy is delayed: a level (`DELAY`) or milliseconds (`TIMER_DELAY_MS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDelay {
    /// `DELAY=<level>`.
    Level(i32),
    /// `TIMER_DELAY_MS=<ms>`.
    Millis(u64),
}

impl Backoff {
    /// The delay of the retry after `reconsume_times` earlier retries.
    pub fn delay_for(&self, reconsume_times: i32) -> RetryDelay {
        let n = reconsume_times.max(0);
        match self {
            Self::Levels {
                first_level,
                max_level,
            } => RetryDelay::Level(first_level.saturating_add(n).clamp(1, (*max_level).max(1))),
            Self::Ladder(steps) => {
                let i = usize::try_from(n)
                    .unwrap_or(0)
                    .min(steps.len().saturating_sub(1));
                RetryDelay::Millis(steps.get(i).map_or(0, |d| millis(*d)))
            }
            Self::Exponential {
                initial,
                multiplier,
                max,
            } => {
                let f = multiplier.max(1.0).powi(n.min(1024));
                let ms = (millis(*initial) as f64 * f).min(millis(*max) as f64);
                RetryDelay::Millis(ms as u64)
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            Self::Levels {
                first_level,
                max_level,
            } if *first_level < 1 || *max_level < *first_level => Err(format!(
                "levels back-off needs 1 <= first_level ({first_level}) <= max_level ({max_level})"
            )),
            Self::Ladder(steps) if steps.is_empty() => {
                Err("a ladder back-off needs at least one step".into())
            }
            Self::Exponential {
                initial,
                multiplier,
                max,
            } if initial.is_zero() || *multiplier < 1.0 || max < initial => Err(format!(
                "exponential back-off needs initial > 0, multiplier >= 1 and max >= initial \
                 (got {initial:?}, {multiplier}, {max:?})"
            )),
            _ => Ok(()),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One consumer group's retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRetryPolicy {
    /// Retries before the dead-letter queue (`retryMaxTimes`). Default 16.
    pub max_reconsume_times: i32,
    /// When true (default, as RocketMQ ≥ 3.4.9), a client's `maxReconsumeTimes` header wins
    /// over [`GroupRetryPolicy::max_reconsume_times`]; a message's `MAX_RECONSUME_TIMES`
    /// property wins over both.
    pub client_max_wins: bool,
    /// Wait before each retry.
    pub backoff: Backoff,
}

impl Default for GroupRetryPolicy {
    fn default() -> Self {
        Self {
            max_reconsume_times: DEFAULT_MAX_RECONSUME_TIMES,
            client_max_wins: true,
            backoff: Backoff::default(),
        }
    }
}

impl GroupRetryPolicy {
    /// The maximum that applies to one message: its `MAX_RECONSUME_TIMES` property, then the
    /// client's header (when allowed), then the group's.
    pub fn effective_max(&self, message_max: Option<i32>, header_max: Option<i32>) -> i32 {
        if let Some(m) = message_max.filter(|m| *m >= 0) {
            return m;
        }
        match header_max.filter(|m| *m >= 0) {
            Some(h) if self.client_max_wins => h,
            _ => self.max_reconsume_times,
        }
    }
}

/// Retry policies: defaults and per-group overrides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetryConfig {
    /// Policy of groups without an override.
    pub defaults: GroupRetryPolicy,
    /// Policies by consumer group.
    pub groups: BTreeMap<String, GroupRetryPolicy>,
}

impl RetryConfig {
    /// The policy of `group`.
    pub fn policy(&self, group: &str) -> &GroupRetryPolicy {
        self.groups.get(group).unwrap_or(&self.defaults)
    }

    /// Refuses a back-off longer than `max_delay`, the longest delay the schedule accepts: a
    /// retry copy asking for more is refused at its send-back, so the message could neither
    /// be retried nor reach the dead-letter queue. (Levels come from the schedule's own
    /// ladder and are not checked here.)
    pub fn check_max_delay(&self, max_delay: Duration) -> Result<(), String> {
        for (name, p) in std::iter::once(("defaults", &self.defaults))
            .chain(self.groups.iter().map(|(g, p)| (g.as_str(), p)))
        {
            let longest = match &p.backoff {
                Backoff::Levels { .. } => continue,
                Backoff::Ladder(steps) => steps.iter().max().copied().unwrap_or_default(),
                Backoff::Exponential { max, .. } => *max,
            };
            if longest > max_delay {
                return Err(format!(
                    "retry {name}: a back-off of {longest:?} is longer than the schedule's max_delay ({max_delay:?}); retries that long would be refused"
                ));
            }
        }
        Ok(())
    }

    /// Checks every policy.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in std::iter::once(("defaults", &self.defaults))
            .chain(self.groups.iter().map(|(g, p)| (g.as_str(), p)))
        {
            if p.max_reconsume_times < 0 {
                return Err(format!(
                    "retry {name}: max_reconsume_times must not be negative"
                ));
            }
            p.backoff
                .validate()
                .map_err(|e| format!("retry {name}: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_back_off_longer_than_the_schedules_maximum_is_refused() {
        let hour = Duration::from_secs(3600);
        let mut cfg = RetryConfig::default();
        assert!(cfg.check_max_delay(hour).is_ok(), "levels are not checked");
        cfg.defaults.backoff = Backoff::Exponential {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: 2 * hour,
        };
        assert!(cfg.check_max_delay(hour).is_err());
        assert!(cfg.check_max_delay(2 * hour).is_ok());
        cfg.defaults = GroupRetryPolicy::default();
        cfg.groups.insert(
            "g".into(),
            GroupRetryPolicy {
                backoff: Backoff::Ladder(vec![Duration::from_secs(1), 3 * hour]),
                ..GroupRetryPolicy::default()
            },
        );
        let err = cfg.check_max_delay(hour).unwrap_err();
        assert!(err.contains("retry g"), "{err}");
    }

    #[test]
    fn levels_follow_rocketmq_and_clamp() {
        let b = Backoff::default();
        assert_eq!(b.delay_for(0), RetryDelay::Level(3));
        assert_eq!(b.delay_for(15), RetryDelay::Level(18));
        assert_eq!(b.delay_for(40), RetryDelay::Level(18));
    }

    #[test]
    fn ladder_and_exponential_cap() {
        let l = Backoff::Ladder(vec![Duration::from_millis(10), Duration::from_millis(20)]);
        assert_eq!(l.delay_for(0), RetryDelay::Millis(10));
        assert_eq!(l.delay_for(9), RetryDelay::Millis(20));
        let e = Backoff::Exponential {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_millis(1000),
        };
        assert_eq!(e.delay_for(0), RetryDelay::Millis(100));
        assert_eq!(e.delay_for(2), RetryDelay::Millis(400));
        assert_eq!(e.delay_for(30), RetryDelay::Millis(1000));
    }

    #[test]
    fn message_max_beats_header_beats_group() {
        let mut p = GroupRetryPolicy::default();
        assert_eq!(p.effective_max(None, None), 16);
        assert_eq!(p.effective_max(None, Some(3)), 3);
        assert_eq!(p.effective_max(Some(1), Some(3)), 1);
        p.client_max_wins = false;
        p.max_reconsume_times = 5;
        assert_eq!(p.effective_max(None, Some(3)), 5);
        assert_eq!(p.effective_max(None, Some(-1)), 5);
    }
}
