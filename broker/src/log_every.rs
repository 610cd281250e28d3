//! Logging that a sustained failure cannot flood: one line per period at most, with the count
//! of those held back. Used where a warning could otherwise be written once per request (a
//! full disk refusing every send, a fenced store, a busy append queue).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Lets one log line through per `period`; counts the lines held back meanwhile.
#[derive(Debug)]
pub struct LogEvery {
    period: Duration,
    /// When a line last went through, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogEvery {
    /// At most one line per `period`.
    pub const fn new(period: Duration) -> Self {
        Self {
            period,
            state: parking_lot::const_mutex((None, 0)),
        }
    }

    /// `Some(held back since the last line)` when a line may be written now; `None` when
    /// this one is held back (and counted).
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock();
        if s.0
            .is_some_and(|at| now.saturating_duration_since(at) < self.period)
        {
            s.1 += 1;
            return None;
        }
        let held = std::mem::take(&mut s.1);
        s.0 = Some(now);
        Some(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_and_the_next_says_how_many_were_held_back() {
        let every = LogEvery::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(every.allow_at(t0), Some(0));
        for s in 1..=3 {
            assert_eq!(every.allow_at(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(every.allow_at(t0 + Duration::from_secs(10)), Some(3));
        assert_eq!(every.allow_at(t0 + Duration::from_secs(11)), None);
    }
}
