//! Logging that a sustained failure cannot flood: one line per period and kind at most, with
//! the count of those held back. Used where a warning could otherwise be written once per
//! request (a full disk refusing every send, a fenced store, a busy append queue).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Lets one log line per kind through per `period`; counts the lines held back meanwhile.
///
/// Kinds are the call site's own few names (an error's variant, say): a routine refusal
/// repeating does not hide the first of another kind.
#[derive(Debug)]
pub struct LogEvery {
    period: Duration,
    /// Per kind: when a line last went through, and how many were held back since.
    kinds: Mutex<Vec<(&'static str, Instant, u64)>>,
}

impl LogEvery {
    /// At most one line per kind per `period`.
    pub const fn new(period: Duration) -> Self {
        Self {
            period,
            kinds: parking_lot::const_mutex(Vec::new()),
        }
    }

    /// `Some(held back since the last line of this kind)` when a line may be written now;
    /// `None` when this one is held back (and counted).
    pub fn allow(&self, kind: &'static str) -> Option<u64> {
        self.allow_at(kind, Instant::now())
    }

    fn allow_at(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock();
        let Some(k) = kinds.iter_mut().find(|k| k.0 == kind) else {
            kinds.push((kind, now, 0));
            return Some(0);
        };
        if now.saturating_duration_since(k.1) < self.period {
            k.2 += 1;
            return None;
        }
        k.1 = now;
        Some(std::mem::take(&mut k.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_and_kind_and_the_next_says_how_many_were_held_back() {
        let every = LogEvery::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(every.allow_at("full", t0), Some(0));
        for s in 1..=3 {
            assert_eq!(every.allow_at("full", t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(
            every.allow_at("io", t0 + Duration::from_secs(4)),
            Some(0),
            "another kind is not held back by the first"
        );
        assert_eq!(
            every.allow_at("full", t0 + Duration::from_secs(10)),
            Some(3)
        );
        assert_eq!(every.allow_at("full", t0 + Duration::from_secs(11)), None);
    }
}
