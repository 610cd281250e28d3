//! The pace of checks: `max_checks_per_sec` turned into a number per tick.
//!
//! Each tick earns the time since the previous one at the configured rate. Fractions carry
//! over, so a rate that is not a whole number per tick is still honoured (20 a second in ticks
//! of 75 ms is 1.5 a tick: 1, 2, 1, 2, ...). At most one tick's worth plus one is saved up, so
//! a quiet spell does not turn into a burst.

use std::time::{Duration, Instant};

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    credit: f64,
    last: Option<Instant>,
}

impl Pacer {
    /// Checks (and final actions) this tick may start; `usize::MAX` when `rate` is 0 (no
    /// limit). Call [`Pacer::spend`] with what was taken.
    pub(crate) fn allowance(&mut self, rate: u32, tick: Duration, now: Instant) -> usize {
        let earned = self
            .last
            .map_or(tick, |last| now.saturating_duration_since(last));
        self.last = Some(now);
        if rate == 0 {
            return usize::MAX;
        }
        let rate = f64::from(rate);
        let most = rate * tick.as_secs_f64() + 1.0;
        self.credit = (self.credit + rate * earned.as_secs_f64()).min(most);
        self.credit.floor() as usize
    }

    /// `used` of this tick's allowance were started.
    pub(crate) fn spend(&mut self, used: usize) {
        self.credit = (self.credit - used as f64).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ticks of `tick` for `span`, each taking all it may; returns how many were started.
    fn started(rate: u32, tick: Duration, span: Duration) -> usize {
        let mut p = Pacer::default();
        let start = Instant::now();
        let mut total = 0;
        let mut at = Duration::ZERO;
        while at < span {
            let n = p.allowance(rate, tick, start + at);
            p.spend(n);
            total += n;
            at += tick;
        }
        total
    }

    #[test]
    fn a_rate_that_is_not_whole_per_tick_is_kept_over_a_second() {
        let n = started(20, Duration::from_millis(75), Duration::from_secs(3));
        assert!((59..=61).contains(&n), "{n} started in 3 s at 20 a second");
        let n = started(1, Duration::from_millis(250), Duration::from_secs(4));
        assert!((3..=5).contains(&n), "{n} started in 4 s at 1 a second");
    }

    #[test]
    fn a_quiet_spell_is_not_saved_up_into_a_burst() {
        let mut p = Pacer::default();
        let tick = Duration::from_millis(100);
        let t0 = Instant::now();
        p.allowance(100, tick, t0);
        let after_a_minute = p.allowance(100, tick, t0 + Duration::from_secs(60));
        assert_eq!(after_a_minute, 11, "one tick's worth plus one");
    }

    #[test]
    fn unused_allowance_is_not_lost_within_a_tick_and_zero_means_no_limit() {
        let mut p = Pacer::default();
        let tick = Duration::from_millis(100);
        let t0 = Instant::now();
        assert_eq!(p.allowance(30, tick, t0), 3);
        p.spend(1);
        assert_eq!(
            p.allowance(30, tick, t0 + tick),
            4,
            "2 left, 3 earned, 4 at most"
        );
        assert_eq!(p.allowance(0, tick, t0 + tick * 2), usize::MAX);
    }
}
