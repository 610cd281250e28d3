//! Checkpoints and compaction, on their own thread.
//!
//! A checkpoint takes the index's snapshot under its lock (memtable, queue progress,
//! watermark, releases above it, pending counts), writes the memtable as a new run (fsync),
//! then replaces `state.json` atomically, and only then drops runs wholly below the
//! watermark. A crash at any point leaves the previous state in force: an unnamed run is
//! deleted at the next open, and the timer queues are re-read from the saved progress.
//!
//! Compaction merges the smallest runs when there are more than `max_runs`, dropping entries
//! below the saved watermark and timers cancelled within the merged runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_store::{crash_point, now_ms};

use crate::core::{Core, StopFlags};
use crate::entry::{DiskEntry, Key, Kind};
use crate::error::Result;
use crate::index::{MemEntry, Snapshot};
use crate::run::{self, Run};
use crate::state::State;
use crate::stats::Counters;

/// Failed checkpoints and merges, tried again every interval: one line per 10 s each.
static CHECKPOINT_LOG: sluice_broker::log_every::LogEvery =
    sluice_broker::log_every::LogEvery::new(Duration::from_secs(10));

/// The checkpoint thread's loop; a last checkpoint runs once stop is set.
pub(crate) fn run(core: Arc<Core>) {
    loop {
        let deadline = Instant::now() + core.cfg.checkpoint_interval;
        while Instant::now() < deadline && !StopFlags::get(&core.stop.checkpoint) {
            std::thread::sleep(Duration::from_millis(10).min(core.cfg.checkpoint_interval));
        }
        let stopping = StopFlags::get(&core.stop.checkpoint);
        if stopping && StopFlags::get(&core.stop.crash) {
            return;
        }
        if let Err(e) = checkpoint(&core, stopping) {
            if let Some(held_back) = CHECKPOINT_LOG.allow("checkpoint") {
                tracing::error!(error = %e, held_back, "schedule checkpoint failed; will retry");
            }
        }
        if stopping {
            return;
        }
        if let Err(e) = compact(&core) {
            if let Some(held_back) = CHECKPOINT_LOG.allow("merge") {
                tracing::error!(error = %e, held_back, "schedule run merge failed; will retry");
            }
        }
    }
}

/// Entries of a memtable in run order.
fn entries(mem: &BTreeMap<Key, MemEntry>) -> impl Iterator<Item = DiskEntry> + '_ {
    mem.iter().flat_map(|(k, m)| {
        let target = m.target.map(|(kind, size)| DiskEntry {
            key: *k,
            kind,
            size,
        });
        let tomb = m.tombstone.then_some(DiskEntry {
            key: *k,
            kind: Kind::Tombstone,
            size: 0,
        });
        target.into_iter().chain(tomb)
    })
}

/// Writes one checkpoint (nothing when nothing changed); `clean` marks the last one of a
/// clean stop.
pub(crate) fn checkpoint(core: &Core, clean: bool) -> Result<()> {
    let snap = core.index.inner.lock().snapshot();
    let last = core.last_state.lock().clone();
    if last.clean == clean && unchanged(&snap, &last) {
        core.index.inner.lock().abort_snapshot();
        return Ok(());
    }
    match write(core, &snap, &last, clean) {
        Ok((state, new_run, dropped)) => {
            crash_point::reach(crash_point::TIMER_STATE_SAVED);
            *core.last_state.lock() = state;
            core.index.inner.lock().finish_snapshot(new_run, &dropped);
            for id in dropped {
                let path = run::run_path(&core.runs_dir(), id);
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not delete a finished run");
                }
            }
            Counters::add(&core.counters.checkpoints, 1);
            Ok(())
        }
        Err(e) => {
            core.index.inner.lock().abort_snapshot();
            Err(e)
        }
    }
}

fn unchanged(snap: &Snapshot, last: &State) -> bool {
    snap.memtable.is_empty()
        && snap.w == last.w()
        && snap.enqueue == last.enqueue
        && snap.pending == last.pending
        && snap.done_above_w.len() == last.done_above_w.len()
        && snap.dropped.len() == last.dropped.len()
        && snap
            .dropped
            .iter()
            .zip(&last.dropped)
            .all(|(k, (f, p))| (k.fire_ms, k.phys) == (*f, *p))
        && snap.late.len() == last.late.len()
        && snap.verify_until == last.verify_until_ms
        && snap.runs.iter().all(|r| r.max >= snap.w)
}

type Written = (State, Option<Arc<Run>>, Vec<u64>);

fn write(core: &Core, snap: &Snapshot, last: &State, clean: bool) -> Result<Written> {
    let id = last.next_run_id;
    let new_run = run::write_run(&core.runs_dir(), id, entries(&snap.memtable))?.map(Arc::new);
    if new_run.is_some() {
        crash_point::reach(crash_point::TIMER_RUN_WRITTEN);
    }
    let dropped: Vec<u64> = snap
        .runs
        .iter()
        .filter(|r| r.max < snap.w)
        .map(|r| r.id)
        .collect();
    let mut runs: Vec<u64> = snap
        .runs
        .iter()
        .map(|r| r.id)
        .filter(|id| !dropped.contains(id))
        .collect();
    runs.extend(new_run.as_ref().map(|r| r.id));
    let state = State {
        next_run_id: id + 1,
        runs,
        enqueue: snap.enqueue.clone(),
        w_fire_ms: snap.w.fire_ms,
        w_phys: snap.w.phys,
        done_above_w: snap
            .done_above_w
            .iter()
            .map(|k| (k.fire_ms, k.phys))
            .collect(),
        dropped: snap.dropped.iter().map(|k| (k.fire_ms, k.phys)).collect(),
        late: snap
            .late
            .iter()
            .map(|(k, kind, size)| (k.fire_ms, k.phys, *kind as u8, *size))
            .collect(),
        pending: snap.pending.clone(),
        written_at_ms: now_ms(),
        clean,
        verify_until_ms: snap.verify_until,
        ..last.clone()
    };
    // On an error the run is kept and its id never used again: the save may have failed
    // after its rename (the folder's fsync), and then `state.json` names it, so no later
    // write may replace it. A restart removes every run `state.json` does not name.
    if let Err(e) = state.save(&core.state_path()) {
        retire_run_id(core, id);
        return Err(e);
    }
    tracing::debug!(
        run = id,
        entries = new_run.as_ref().map_or(0, |r| r.count),
        w_fire_ms = snap.w.fire_ms,
        "schedule checkpoint written"
    );
    Ok((state, new_run, dropped))
}

/// Makes sure run `id` is never written again in this run of the broker.
fn retire_run_id(core: &Core, id: u64) {
    let mut last = core.last_state.lock();
    last.next_run_id = last.next_run_id.max(id + 1);
}

/// Merges the smaller half of the runs when there are more than `max_runs`.
pub(crate) fn compact(core: &Core) -> Result<()> {
    let mut runs = core.index.inner.lock().runs.clone();
    if runs.len() <= core.cfg.max_runs {
        return Ok(());
    }
    runs.sort_by_key(|r| r.count);
    let chosen: Vec<Arc<Run>> = runs.iter().take(runs.len() / 2 + 1).cloned().collect();
    let last = core.last_state.lock().clone();
    let id = last.next_run_id;
    let merged = run::merge(&core.runs_dir(), id, &chosen, last.w())?.map(Arc::new);
    if merged.is_some() {
        crash_point::reach(crash_point::TIMER_RUN_WRITTEN);
    }
    let old: Vec<u64> = chosen.iter().map(|r| r.id).collect();
    let mut state = last;
    state.runs.retain(|r| !old.contains(r));
    state.runs.extend(merged.as_ref().map(|r| r.id));
    state.next_run_id = id + 1;
    // Kept on an error, its id retired, as in `write`.
    if let Err(e) = state.save(&core.state_path()) {
        retire_run_id(core, id);
        return Err(e);
    }
    tracing::info!(
        merged = old.len(),
        into = id,
        entries = merged.as_ref().map_or(0, |r| r.count),
        "schedule runs merged"
    );
    crash_point::reach(crash_point::TIMER_STATE_SAVED);
    *core.last_state.lock() = state;
    core.index.inner.lock().replace_runs(&old, merged);
    for id in old {
        let _ = std::fs::remove_file(run::run_path(&core.runs_dir(), id));
    }
    Counters::add(&core.counters.compactions, 1);
    Ok(())
}
