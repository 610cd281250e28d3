//! `[schedule]`: delayed messages (delay levels and arbitrary-time timers).

use std::time::Duration;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use sluice_schedule::ScheduleConfig;

/// `[schedule]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    /// Hold delayed messages until their time. Default true; false stores `DELAY`/`TIMER_*`
    /// messages as plain, immediately visible ones (RocketMQ without a timer service).
    pub enabled: bool,
    /// Delay of each level in milliseconds, level 1 first. Default RocketMQ's 18 levels
    /// (1 s 5 s 10 s 30 s 1 m 2 m ... 2 h).
    pub levels_ms: Option<Vec<u64>>,
    /// Longest accepted delay in seconds; longer is refused at send time. Default 30 days.
    pub max_delay_secs: u64,
    /// How far in the past a deliver-at time may be and still be accepted. Default 10 000.
    pub past_tolerance_ms: u64,
    /// Most timers released per second when many fall due together. Default 50 000.
    pub release_rate: u32,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        let d = ScheduleConfig::default();
        Self {
            enabled: true,
            levels_ms: None,
            max_delay_secs: d.max_delay.as_secs(),
            past_tolerance_ms: d.past_tolerance.as_millis() as u64,
            release_rate: d.release_rate,
        }
    }
}

impl ScheduleSection {
    /// The schedule extension's configuration, validated.
    pub fn to_config(&self) -> Result<ScheduleConfig> {
        let mut cfg = ScheduleConfig::default();
        let max_ms = self.max_delay_secs.saturating_mul(1000);
        for (i, ms) in self.levels_ms.iter().flatten().enumerate() {
            if *ms == 0 || *ms > max_ms {
                bail!(
                    "schedule.levels_ms[{i}] is {ms}: each level must be within 1 and \
                     schedule.max_delay_secs ({max_ms} ms)"
                );
            }
        }
        if let Some(levels) = &self.levels_ms {
            cfg.levels = levels.iter().copied().map(Duration::from_millis).collect();
        }
        cfg.max_delay = Duration::from_secs(self.max_delay_secs);
        cfg.past_tolerance = Duration::from_millis(self.past_tolerance_ms);
        cfg.release_rate = self.release_rate;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("schedule: {e}"))?;
        Ok(cfg)
    }
}
