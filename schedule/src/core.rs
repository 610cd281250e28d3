//! The running service: opening the index from disk, the state every task shares, and the
//! order in which the tasks start and stop.
//!
//! Opening (see `docs/SCHEDULING.md`, "Recovery"): read `state.json`, open the runs it names
//! (deleting runs it does not name: a checkpoint that crashed before naming them), and start
//! the window at the saved watermark. A missing state file is a fresh index; an unreadable
//! state file or run is rebuilt by re-reading the timer queues from their first offset, with
//! every due timer checked for an earlier release before it is released again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use sluice_broker::{BrokerServices, SCHEDULE_TOPIC};
use sluice_protocol::remoting::body::{perm, TopicConfig};
use sluice_store::{now_ms, Store};

use crate::config::ScheduleConfig;
use crate::entry::Key;
use crate::error::{Result, ScheduleError};
use crate::index::TimerIndex;
use crate::props::TIMER_TOPIC;
use crate::run::{self, Run};
use crate::state::State;
use crate::stats::Counters;

/// Wakes the timer-queue reader early (a send with a delay just went by).
#[derive(Debug, Default)]
pub(crate) struct Wake {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    pub(crate) fn wake(&self) {
        *self.flag.lock() = true;
        self.cv.notify_one();
    }

    /// Waits up to `timeout` for a wake; true when woken.
    pub(crate) fn wait(&self, timeout: std::time::Duration) -> bool {
        let mut flag = self.flag.lock();
        if !*flag {
            self.cv.wait_for(&mut flag, timeout);
        }
        std::mem::take(&mut *flag)
    }
}

/// Stop flags, set in this order by the extension's stop.
#[derive(Debug, Default)]
pub(crate) struct StopFlags {
    pub(crate) deliver: AtomicBool,
    pub(crate) enqueue: AtomicBool,
    pub(crate) checkpoint: AtomicBool,
    /// Test hook: stop as a crash would (no last checkpoint).
    pub(crate) crash: AtomicBool,
}

impl StopFlags {
    pub(crate) fn get(flag: &AtomicBool) -> bool {
        flag.load(Ordering::Acquire)
    }
}

/// Everything the tasks and the API share while the extension runs.
pub(crate) struct Core {
    pub(crate) cfg: ScheduleConfig,
    pub(crate) services: BrokerServices,
    pub(crate) store: Arc<Store>,
    pub(crate) index: TimerIndex,
    pub(crate) counters: Arc<Counters>,
    pub(crate) wake: Arc<Wake>,
    /// Wakes the deliverer: a timer entered the window, or a release finished.
    pub(crate) deliver_wake: tokio::sync::Notify,
    pub(crate) stop: StopFlags,
    /// `schedule/` under the data folder: `state.json`, `runs/`.
    pub(crate) dir: PathBuf,
    /// The roll interval in force (ms), from the state file.
    pub(crate) roll_ms: i64,
    /// The last state written; compaction rewrites it with a new run list.
    pub(crate) last_state: Mutex<State>,
    /// Serialises cancels and reschedules, so no timer gets two markers.
    pub(crate) op_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Opens the index under the store's data folder (blocking file I/O).
    pub(crate) fn open(
        cfg: ScheduleConfig,
        services: BrokerServices,
        counters: Arc<Counters>,
        wake: Arc<Wake>,
    ) -> Result<Self> {
        cfg.validate()?;
        let store = Arc::clone(services.store());
        let dir = store.config().data_dir.join("schedule");
        let runs_dir = dir.join("runs");
        std::fs::create_dir_all(&runs_dir)
            .map_err(|e| ScheduleError::io("create", &runs_dir, e))?;
        sluice_store::sweep_temp_files(&dir)?;
        sluice_store::sweep_temp_files(&runs_dir)?;
        let roll_ms = millis(cfg.roll_interval);
        let (state, runs) = load_or_rebuild(&dir, roll_ms)?;
        if state.roll_interval_ms != roll_ms {
            tracing::warn!(saved = state.roll_interval_ms, configured = roll_ms, "roll_interval differs from the one the index was built with; keeping the saved one");
        }
        let done: HashSet<Key> = state
            .done_above_w
            .iter()
            .map(|(f, p)| Key::new(*f, *p))
            .collect();
        let verify_until = state.verify_until(start_clock(store.recovery_report()));
        let was_clean = state.clean;
        let state = mark_running(&dir.join("state.json"), state);
        let index = TimerIndex::new(
            runs,
            state.w(),
            state.enqueue.clone(),
            state.pending.clone(),
            done,
            state
                .dropped
                .iter()
                .map(|(f, p)| Key::new(*f, *p))
                .collect(),
            verify_until,
        );
        index.restore_late(&state.late_timers());
        tracing::info!(dir = %dir.display(), runs = state.runs.len(), w_fire_ms = state.w_fire_ms, clean = was_clean, verify_until, "timer index opened");
        ensure_topics(&services, cfg.levels.len());
        Ok(Self {
            roll_ms: state.roll_interval_ms,
            cfg,
            services,
            store,
            index,
            counters,
            wake,
            deliver_wake: tokio::sync::Notify::new(),
            stop: StopFlags::default(),
            dir,
            last_state: Mutex::new(state),
            op_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn runs_dir(&self) -> PathBuf {
        self.dir.join("runs")
    }

    pub(crate) fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The timer queues to read: every level queue (configured or present in the store),
    /// the timer queue and the control queue.
    pub(crate) fn timer_queues(&self) -> Vec<(String, i32)> {
        let mut levels = self.cfg.levels.len() as i32;
        for (topic, q) in self.store.queues() {
            if topic == SCHEDULE_TOPIC {
                levels = levels.max(q + 1);
            }
        }
        let mut out: Vec<(String, i32)> = (0..levels)
            .map(|q| (SCHEDULE_TOPIC.to_owned(), q))
            .collect();
        out.push((TIMER_TOPIC.to_owned(), crate::props::TIMER_QUEUE));
        out.push((TIMER_TOPIC.to_owned(), crate::props::CONTROL_QUEUE));
        out
    }
}

pub(crate) fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The saved state and its runs; a fresh index when there is none; a rebuild when either
/// is unreadable, or a run has a damaged entry (every entry is checked here).
fn load_or_rebuild(dir: &Path, roll_ms: i64) -> Result<(State, Vec<Arc<Run>>)> {
    let runs_dir = dir.join("runs");
    let loaded = State::load(&dir.join("state.json")).and_then(|s| {
        let Some(state) = s else {
            return Ok((State::fresh(roll_ms), Vec::new()));
        };
        let runs = state
            .runs
            .iter()
            .map(|id| {
                let run = Run::open(&runs_dir, *id)?;
                run.verify()?;
                Ok(Arc::new(run))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((state, runs))
    });
    let (state, runs) = match loaded {
        Ok(ok) => ok,
        Err(e) => {
            tracing::error!(error = %e, dir = %dir.display(), "timer index unreadable: rebuilding it from the timer queues");
            (State::fresh(roll_ms), Vec::new())
        }
    };
    for id in run::list_runs(&runs_dir)? {
        if !state.runs.contains(&id) {
            let path = run::run_path(&runs_dir, id);
            std::fs::remove_file(&path).map_err(|e| ScheduleError::io("delete", &path, e))?;
        }
    }
    let mut state = state;
    state.next_run_id = state
        .next_run_id
        .max(state.runs.iter().max().map_or(0, |m| m + 1));
    Ok((state, runs))
}

/// The clock a start judges "due before the restart" by. After a crash, timers due by the
/// previous run's clock may have been released unrecorded, and that clock was at least the
/// newest store time recovery found: a clock stepped back across the restart (a VM restored,
/// NTP correcting a fast clock) must not shrink the set of timers checked before release.
fn start_clock(recovery: &sluice_store::RecoveryReport) -> i64 {
    now_ms().max(recovery.clock_high_water_ms)
}

/// Creates the schedule topics' configs (so tools and routes see them) when missing.
fn ensure_topics(services: &BrokerServices, levels: usize) {
    let want = [(SCHEDULE_TOPIC, levels as i32), (TIMER_TOPIC, 2)];
    for (name, queues) in want {
        let have = services.topic(name).map_or(0, |t| t.read_queue_nums);
        if have < queues {
            let mut cfg = services
                .topic(name)
                .unwrap_or_else(|| TopicConfig::new(name, queues, perm::READ | perm::WRITE));
            cfg.read_queue_nums = queues;
            cfg.write_queue_nums = queues;
            // The broker's own topics are never refused for the topic limit.
            if let Err(e) = services.put_topic(cfg) {
                tracing::error!(topic = name, error = %e, "schedule topic not created");
            }
        }
    }
}

/// Rewrites a clean stop's state as not clean before anything is released: a crash in this run
/// must make the next start check its releases. Left as it was until the first checkpoint
/// (a second later, or never while saves fail), a crash soon after a clean start, or a crash
/// loop, re-delivered every timer released meanwhile. When the rewrite fails the state stays
/// as loaded (clean), and the deliverer waits until a checkpoint has saved it as running (see
/// `deliver::wait_ready`).
fn mark_running(path: &Path, state: State) -> State {
    if !state.clean {
        return state;
    }
    let running = State {
        clean: false,
        written_at_ms: now_ms(),
        ..state.clone()
    };
    match running.save(path) {
        Ok(()) => running,
        Err(e) => {
            tracing::warn!(error = %e, "cannot mark the schedule state as running; no timer is released until a checkpoint saves it");
            state
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_behind_the_last_runs_store_times_judges_by_those() {
        let ahead = now_ms() + 3_600_000;
        let report = sluice_store::RecoveryReport {
            clock_high_water_ms: ahead,
            ..Default::default()
        };
        assert_eq!(
            start_clock(&report),
            ahead,
            "the clock stepped back an hour"
        );
        let before = now_ms();
        let behind = sluice_store::RecoveryReport::default();
        assert!(start_clock(&behind) >= before, "otherwise the clock");
    }
}
