//! `[retry]`: consumer retries before the dead-letter queue, per consumer group under
//! `[retry.groups.<group>]`.

use std::time::Duration;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// `[retry]`: consumer retries (per consumer group under `[retry.groups.<group>]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySection {
    /// Retries before the dead-letter queue. Default 16 (RocketMQ `retryMaxTimes`).
    pub max_reconsume_times: i32,
    /// A client's `maxReconsumeTimes` wins over `max_reconsume_times`. Default true.
    pub client_max_wins: bool,
    /// `"levels"` (default: delay level `first_level + reconsumeTimes`, the `[schedule]`
    /// ladder), `"ladder"` (`ladder_ms`) or `"exponential"` (`initial_ms`, `multiplier`,
    /// `max_ms`).
    pub backoff: String,
    /// First retry level. Default 3.
    pub first_level: i32,
    /// Highest level (the schedule ladder's length). Default 18.
    pub max_level: i32,
    /// Waits of the ladder back-off, first retry first.
    pub ladder_ms: Vec<u64>,
    /// First wait of the exponential back-off. Default 1 000.
    pub initial_ms: u64,
    /// Growth of the exponential back-off. Default 2.
    pub multiplier: f64,
    /// Cap of the exponential back-off. Default 7 200 000 (2 h).
    pub max_ms: u64,
    /// Per-group overrides.
    pub groups: std::collections::BTreeMap<String, RetryGroupSection>,
}

/// `[retry.groups.<group>]`: fields left out keep the `[retry]` value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryGroupSection {
    /// See `[retry]`.
    pub max_reconsume_times: Option<i32>,
    /// See `[retry]`.
    pub client_max_wins: Option<bool>,
    /// See `[retry]`.
    pub backoff: Option<String>,
    /// See `[retry]`.
    pub first_level: Option<i32>,
    /// See `[retry]`.
    pub max_level: Option<i32>,
    /// See `[retry]`.
    pub ladder_ms: Option<Vec<u64>>,
    /// See `[retry]`.
    pub initial_ms: Option<u64>,
    /// See `[retry]`.
    pub multiplier: Option<f64>,
    /// See `[retry]`.
    pub max_ms: Option<u64>,
}

impl Default for RetrySection {
    fn default() -> Self {
        Self {
            max_reconsume_times: 16,
            client_max_wins: true,
            backoff: "levels".into(),
            first_level: 3,
            max_level: 18,
            ladder_ms: Vec::new(),
            initial_ms: 1_000,
            multiplier: 2.0,
            max_ms: 7_200_000,
            groups: std::collections::BTreeMap::new(),
        }
    }
}

impl RetrySection {
    /// The broker's retry configuration.
    pub fn to_config(&self) -> Result<sluice_broker::RetryConfig> {
        let mut cfg = sluice_broker::RetryConfig {
            defaults: self.policy(&RetryGroupSection::default(), "retry")?,
            ..Default::default()
        };
        for (group, g) in &self.groups {
            let policy = self.policy(g, &format!("retry.groups.{group}"))?;
            cfg.groups.insert(group.clone(), policy);
        }
        Ok(cfg)
    }

    fn policy(&self, g: &RetryGroupSection, name: &str) -> Result<sluice_broker::GroupRetryPolicy> {
        use sluice_broker::Backoff;
        let kind = g.backoff.as_deref().unwrap_or(&self.backoff);
        check_fields_of(g, kind, name)?;
        let backoff = match kind {
            "levels" => Backoff::Levels {
                first_level: g.first_level.unwrap_or(self.first_level),
                max_level: g.max_level.unwrap_or(self.max_level),
            },
            "ladder" => Backoff::Ladder(
                g.ladder_ms
                    .as_ref()
                    .unwrap_or(&self.ladder_ms)
                    .iter()
                    .copied()
                    .map(Duration::from_millis)
                    .collect(),
            ),
            "exponential" => Backoff::Exponential {
                initial: Duration::from_millis(g.initial_ms.unwrap_or(self.initial_ms)),
                multiplier: g.multiplier.unwrap_or(self.multiplier),
                max: Duration::from_millis(g.max_ms.unwrap_or(self.max_ms)),
            },
            other => bail!(
                "{name}: backoff must be \"levels\", \"ladder\" or \"exponential\", not {other:?}"
            ),
        };
        Ok(sluice_broker::GroupRetryPolicy {
            max_reconsume_times: g.max_reconsume_times.unwrap_or(self.max_reconsume_times),
            client_max_wins: g.client_max_wins.unwrap_or(self.client_max_wins),
            backoff,
        })
    }
}

/// Refuses a group's back-off field that its back-off kind does not read: `ladder_ms` set for
/// a group whose kind is still `"levels"` was accepted and ignored, and the group retried at
/// 10 s, 30 s, ... instead of its ladder. (`[retry]`'s own fields of other kinds are the
/// defaults of groups that choose those kinds, so they are not checked.)
fn check_fields_of(g: &RetryGroupSection, kind: &str, name: &str) -> Result<()> {
    let set = [
        ("first_level", "levels", g.first_level.is_some()),
        ("max_level", "levels", g.max_level.is_some()),
        ("ladder_ms", "ladder", g.ladder_ms.is_some()),
        ("initial_ms", "exponential", g.initial_ms.is_some()),
        ("multiplier", "exponential", g.multiplier.is_some()),
        ("max_ms", "exponential", g.max_ms.is_some()),
    ];
    for (field, of, is_set) in set {
        if is_set && of != kind {
            bail!(
                "{name}: {field} is for backoff = \"{of}\", but this group's backoff is \"{kind}\" \
                 (set backoff = \"{of}\" in it, or leave {field} out)"
            );
        }
    }
    Ok(())
}
