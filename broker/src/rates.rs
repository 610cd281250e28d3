//! Message rates and daily totals for `mqadmin clusterList` / `brokerStatus`
//! (GET_BROKER_RUNTIME_INFO): the stored and pulled counters sampled once a second, kept for
//! ten minutes, and their values at the start of today and yesterday (UTC).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Samples kept: ten minutes at one a second, plus the one the oldest window starts from.
const KEPT: usize = 601;

/// One second's reading of the counters.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    put: u64,
    get: u64,
}

/// Totals at the start of a UTC day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DayTotals {
    pub(crate) put_yesterday_morning: u64,
    pub(crate) put_today_morning: u64,
    pub(crate) get_yesterday_morning: u64,
    pub(crate) get_today_morning: u64,
}

#[derive(Debug, Default)]
struct State {
    samples: VecDeque<Sample>,
    day: Option<i64>,
    totals: DayTotals,
}

/// The sampler; [`Rates::sample`] is called once a second by a broker background task.
#[derive(Debug, Default)]
pub(crate) struct Rates {
    state: Mutex<State>,
}

impl Rates {
    /// Records the counters; `day` is the UTC day number (`now_ms / 86 400 000`). On a new
    /// day, today's morning totals become yesterday's and the current ones today's.
    pub(crate) fn sample(&self, now: Instant, day: i64, put: u64, get: u64) {
        let mut s = self.state.lock();
        match s.day {
            // The same day, or the clock stepped back over midnight: nothing rolls.
            Some(d) if day <= d => {}
            Some(_) => {
                let t = s.totals;
                s.totals = DayTotals {
                    put_yesterday_morning: t.put_today_morning,
                    put_today_morning: put,
                    get_yesterday_morning: t.get_today_morning,
                    get_today_morning: get,
                };
                s.day = Some(day);
            }
            // The first sample: the broker started today, with these counters (since start).
            None => s.day = Some(day),
        }
        if s.samples.len() == KEPT {
            s.samples.pop_front();
        }
        s.samples.push_back(Sample { at: now, put, get });
    }

    /// Messages per second stored and pulled over the last `window` (as far back as samples
    /// go; 0 with fewer than two).
    pub(crate) fn tps(&self, window: Duration) -> (f64, f64) {
        let s = self.state.lock();
        let Some(last) = s.samples.back() else {
            return (0.0, 0.0);
        };
        let first = s
            .samples
            .iter()
            .find(|x| last.at.duration_since(x.at) <= window)
            .unwrap_or(last);
        let secs = last.at.duration_since(first.at).as_secs_f64();
        if secs <= 0.0 {
            return (0.0, 0.0);
        }
        (
            last.put.saturating_sub(first.put) as f64 / secs,
            last.get.saturating_sub(first.get) as f64 / secs,
        )
    }

    /// The totals at the start of today and yesterday.
    pub(crate) fn day_totals(&self) -> DayTotals {
        self.state.lock().totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_cover_their_window_and_days_roll_over() {
        let r = Rates::default();
        let t0 = Instant::now();
        for i in 0..=20u64 {
            r.sample(t0 + Duration::from_secs(i), 5, i * 10, i * 4);
        }
        let (put, get) = r.tps(Duration::from_secs(10));
        assert!(
            (put - 10.0).abs() < 1e-9 && (get - 4.0).abs() < 1e-9,
            "{put} {get}"
        );
        assert_eq!(
            r.day_totals(),
            DayTotals::default(),
            "no day has started yet"
        );
        r.sample(t0 + Duration::from_secs(21), 6, 300, 100);
        r.sample(t0 + Duration::from_secs(22), 7, 500, 200);
        assert_eq!(
            r.day_totals(),
            DayTotals {
                put_yesterday_morning: 300,
                put_today_morning: 500,
                get_yesterday_morning: 100,
                get_today_morning: 200,
            }
        );
        // A clock stepped back over midnight rolls nothing.
        r.sample(t0 + Duration::from_secs(23), 6, 600, 250);
        assert_eq!(r.day_totals().put_today_morning, 500);
        assert_eq!(Rates::default().tps(Duration::from_secs(10)), (0.0, 0.0));
    }
}
