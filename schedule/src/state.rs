//! `schedule/state.json`: the one progress file, replaced atomically at every checkpoint.
//!
//! It is a consistent snapshot taken under the index lock: the runs that hold every timer
//! read from the timer queues below `enqueue`, the watermark `w` below which every indexed
//! timer is delivered or cancelled, the releases already done above `w`, and the pending
//! count per topic at that instant, and the crash-check horizon an unclean start left open.
//! A restart loads runs from `w` on and re-reads the timer queues from `enqueue`: it never
//! re-reads every message.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::entry::{Key, Kind};
use crate::error::{Result, ScheduleError};

/// Format version written and accepted.
const VERSION: u32 = 1;

/// The saved progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct State {
    pub(crate) version: u32,
    /// Id the next run file gets.
    pub(crate) next_run_id: u64,
    /// Runs in force, oldest first.
    pub(crate) runs: Vec<u64>,
    /// Next offset to index, per `"topic/queue"`.
    pub(crate) enqueue: BTreeMap<String, u64>,
    /// Every indexed timer below this key is delivered or cancelled.
    pub(crate) w_fire_ms: i64,
    /// See `w_fire_ms`.
    pub(crate) w_phys: u64,
    /// Keys at or above `w` already released, as `(fire_ms, offset)`.
    pub(crate) done_above_w: Vec<(i64, u64)>,
    /// Timers dropped as undeliverable, as `(fire_ms, offset)`, newest 100 000: cancels and
    /// listings answer "dropped" for them, below the watermark too.
    #[serde(default)]
    pub(crate) dropped: Vec<(i64, u64)>,
    /// Unfinished timers below `w`, as `(fire_ms, offset, kind, size)`: indexed late, with
    /// keys below a watermark already saved, which never moves back (finished timers below it
    /// are no longer known one by one).
    #[serde(default)]
    pub(crate) late: Vec<(i64, u64, u8, u32)>,
    /// Pending timers per real topic.
    pub(crate) pending: BTreeMap<String, i64>,
    /// The roll interval the index was built with (ms); it decides fire times, so it never
    /// changes under an existing index.
    pub(crate) roll_interval_ms: i64,
    /// When this snapshot was taken, epoch ms.
    pub(crate) written_at_ms: i64,
    /// Written by a clean stop (after the last release finished): every release done is in
    /// `w` and `done_above_w`, so the next start checks nothing for releases of its own run.
    #[serde(default)]
    pub(crate) clean: bool,
    /// Timers due at or before this (an unclean start's time) may have been released before
    /// that crash and are not all checked yet: they stay checked before release or cancel,
    /// across clean stops, until the watermark passes it. `i64::MIN` when none (and in files
    /// written before this field existed).
    #[serde(default = "no_check")]
    pub(crate) verify_until_ms: i64,
}

fn no_check() -> i64 {
    i64::MIN
}

impl State {
    /// A fresh state for an empty index.
    pub(crate) fn fresh(roll_interval_ms: i64) -> Self {
        Self {
            version: VERSION,
            w_fire_ms: i64::MIN,
            verify_until_ms: i64::MIN,
            roll_interval_ms,
            ..Self::default()
        }
    }

    pub(crate) fn w(&self) -> Key {
        Key::new(self.w_fire_ms, self.w_phys)
    }

    /// [`State::late`] decoded; an entry of an unknown kind is skipped, logged.
    pub(crate) fn late_timers(&self) -> Vec<(Key, Kind, u32)> {
        self.late
            .iter()
            .filter_map(|&(f, p, kind, size)| {
                let k = Kind::from_u8(kind);
                if k.is_none() {
                    tracing::warn!(
                        fire_ms = f,
                        phys = p,
                        kind,
                        "late timer of unknown kind skipped"
                    );
                }
                k.map(|k| (Key::new(f, p), k, size))
            })
            .collect()
    }

    /// The check horizon for a start at `now`: after an unclean stop, every timer due before
    /// now may have been released unrecorded; after a clean one, only those an earlier crash
    /// left unchecked (a clean stop does not check them, so it must not forget them).
    pub(crate) fn verify_until(&self, now: i64) -> i64 {
        if self.clean {
            self.verify_until_ms
        } else {
            now.max(self.verify_until_ms)
        }
    }

    /// Reads the state file; `Ok(None)` when there is none.
    pub(crate) fn load(path: &Path) -> Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ScheduleError::io("read", path, e)),
        };
        let state: State = serde_json::from_slice(&bytes)
            .map_err(|e| ScheduleError::corrupt(path, e.to_string()))?;
        if state.version != VERSION || state.roll_interval_ms <= 0 {
            return Err(ScheduleError::corrupt(
                path,
                "unsupported version or roll interval",
            ));
        }
        Ok(Some(state))
    }

    /// Replaces the state file atomically (temp file, fsync, rename, fsync folder).
    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self)
            .map_err(|e| ScheduleError::corrupt(path, format!("encode: {e}")))?;
        sluice_store::write_atomic(path, &bytes).map_err(ScheduleError::from)
    }
}

/// The state-file key of a queue.
pub(crate) fn queue_name(topic: &str, queue_id: i32) -> String {
    format!("{topic}/{queue_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_garbage_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(State::load(&path).unwrap(), None);
        let mut s = State::fresh(1000);
        s.enqueue.insert(queue_name("T", 1), 5);
        s.done_above_w.push((1, 2));
        s.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), Some(s));
        std::fs::write(&path, b"{nope").unwrap();
        assert!(matches!(
            State::load(&path),
            Err(ScheduleError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_state_file_from_before_the_check_horizon_still_loads_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut old = serde_json::to_value(State::fresh(1000)).unwrap();
        old.as_object_mut().unwrap().remove("verify_until_ms");
        std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
        let loaded = State::load(&path).unwrap().unwrap();
        assert_eq!(loaded.verify_until_ms, i64::MIN);
    }

    #[test]
    fn a_clean_stop_keeps_the_check_horizon_an_earlier_crash_left() {
        let mut s = State {
            clean: true,
            ..State::fresh(1000)
        };
        assert_eq!(s.verify_until(5000), i64::MIN, "clean, nothing unchecked");
        s.verify_until_ms = 3000;
        assert_eq!(
            s.verify_until(5000),
            3000,
            "clean, an earlier crash unchecked"
        );
        s.clean = false;
        assert_eq!(s.verify_until(5000), 5000, "unclean: everything due by now");
    }
}
