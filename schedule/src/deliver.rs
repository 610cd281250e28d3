//! The deliverer: keeps the near window loaded, takes due timers in key order at the
//! configured rate, and releases them: reads the timer record, rebuilds the message for its
//! real topic and queue, appends it past the put hooks, then marks the timer done.
//!
//! A timer is taken only when its fire time is at or before the wall clock, so nothing is
//! released early. Its state moves Pending → InFlight → Done under the index lock, the same
//! lock a cancel uses to move Pending → Cancelling, so a race between the two ends one way.
//! A crash between the append and the next checkpoint leaves the timer pending on disk; at the
//! next start it is flagged, and released only if no earlier release of it is found.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_protocol::message::keys;
use sluice_protocol::{Properties, RecordView};
use sluice_store::{now_ms, MessageInput, StoreError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::core::{millis, Core, StopFlags};
use crate::entry::{DiskEntry, Key, Kind};
use crate::index::{Due, LoadPlan, Released};
use crate::props::{PROP_PREV, PROP_TIMER_OFFSET, TIMER_TOPIC};
use crate::records::{self, TimerRecord};
use crate::stats::Counters;

/// Longest idle sleep; the loop re-checks the window at least this often.
const MAX_IDLE: Duration = Duration::from_millis(100);
/// Pause before retrying a refused release append.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between retries of a failing release (a fenced store fails them all until
/// it is reopened); short enough not to hold a clean stop back for long.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Release pacing: `rate` per second, bursts up to `burst`.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: usize) -> Self {
        let burst = (burst as f64).max(f64::from(rate) / 20.0);
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Whole tokens available now.
    fn available(&mut self) -> usize {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        self.tokens.floor() as usize
    }

    fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

/// The deliverer's loop; returns once stop is set and its releases have finished.
pub(crate) async fn run(core: Arc<Core>) {
    if !wait_ready(&core).await {
        return;
    }
    let permits = Arc::new(Semaphore::new(core.cfg.max_inflight_batches));
    let mut bucket = TokenBucket::new(core.cfg.release_rate, core.cfg.release_batch);
    let mut tasks = JoinSet::new();
    while !StopFlags::get(&core.stop.deliver) {
        while tasks.try_join_next().is_some() {}
        maintain_window(&core).await;
        let allowance = bucket.available().min(core.cfg.release_batch);
        if allowance == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            idle(&core, Duration::from_millis(5)).await;
            continue;
        };
        let due = {
            let mut g = core.index.inner.lock();
            g.advance_w();
            g.take_due(now_ms(), allowance)
        };
        if due.is_empty() {
            drop(permit);
            idle(&core, until_next(&core)).await;
            continue;
        }
        bucket.spend(due.len());
        tasks.spawn(release(Arc::clone(&core), due, permit));
    }
    while tasks.join_next().await.is_some() {}
}

/// Waits until the index has caught up with the timer queues and `state.json` says this run
/// is running (not a clean stop's file: a crash then makes the next start check this run's
/// releases; see `core::mark_running`).
async fn wait_ready(core: &Core) -> bool {
    loop {
        if StopFlags::get(&core.stop.deliver) {
            return false;
        }
        if core.index.inner.lock().ready && !core.last_state.lock().clean {
            return true;
        }
        idle(core, Duration::from_millis(20)).await;
    }
}

/// Sleeps up to `max`, waking early when a timer enters the window.
async fn idle(core: &Core, max: Duration) {
    let _ = tokio::time::timeout(max, core.deliver_wake.notified()).await;
}

/// How long until the next timer falls due or the window needs loading.
fn until_next(core: &Core) -> Duration {
    let now = now_ms();
    let near = millis(core.cfg.near_window);
    let g = core.index.inner.lock();
    // With a million timers due together, loaded seconds early, a full window's refresh
    // time is already past, and waking for it spun the loop until they fell due.
    let refresh = if g.window_full(core.cfg.max_window_load) {
        i64::MAX
    } else {
        g.window_end.fire_ms.saturating_sub(near / 2)
    };
    let next = g.next_due().unwrap_or(i64::MAX).min(refresh);
    drop(g);
    let wait = next.saturating_sub(now).clamp(0, millis(MAX_IDLE));
    Duration::from_millis(wait as u64)
}

/// Loads the window forward while it reaches less than half the near window ahead.
async fn maintain_window(core: &Arc<Core>) {
    let near = millis(core.cfg.near_window);
    let limit = core.cfg.max_window_load;
    for _ in 0..8 {
        let plan = {
            let g = core.index.inner.lock();
            if g.window_full(limit) {
                return;
            }
            match g.load_plan(now_ms(), near) {
                Some(p) => p,
                None => return,
            }
        };
        let read_plan = plan.clone();
        let read = tokio::task::spawn_blocking(move || read_window(&read_plan, limit)).await;
        let (entries, cap) = match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                // A damaged run stays damaged: the next start checks every run and rebuilds
                // the index from the timer queues.
                tracing::error!(error = %e, "reading the timer window failed; retrying (if a run is damaged, a restart rebuilds the index)");
                tokio::time::sleep(RETRY_PAUSE).await;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "window load task failed");
                return;
            }
        };
        let installed = core.index.inner.lock().install(&plan, entries, limit, cap);
        if installed {
            core.deliver_wake.notify_one();
        }
    }
}

/// Reads a window's entries from the runs; `cap` is the first key not read completely.
fn read_window(
    plan: &LoadPlan,
    limit: usize,
) -> crate::error::Result<(Vec<DiskEntry>, Option<Key>)> {
    let per_run = (limit / plan.runs.len().max(1)).max(1000);
    let mut out = Vec::new();
    let mut cap: Option<Key> = None;
    for run in &plan.runs {
        let before = out.len();
        run.read_range(plan.from, plan.to, per_run, &mut out)?;
        if out.len() - before == per_run {
            let last = out[out.len() - 1].key;
            cap = Some(cap.map_or(last, |c| c.min(last)));
        }
    }
    Ok((out, cap))
}

/// What to do with one taken timer.
enum Action {
    /// Append this message (released, or a rolled copy).
    Put(MessageInput),
    /// Released before a crash already: only mark it done.
    AlreadyDone,
    /// Cannot be released: drop it (logged and counted).
    Drop,
}

/// One taken timer, ready for the append.
struct Prepared {
    due: Due,
    topic: String,
    due_ms: i64,
    action: Action,
}

/// Releases one batch; holds `permit` (bounding appends in flight) until done.
async fn release(core: Arc<Core>, due: Vec<Due>, permit: OwnedSemaphorePermit) {
    let prep_core = Arc::clone(&core);
    let keys: Vec<Key> = due.iter().map(|d| d.key).collect();
    let prepared = match tokio::task::spawn_blocking(move || prepare(&prep_core, due)).await {
        Ok(p) => p,
        Err(e) => {
            // Back to the window, not left in flight for good (the watermark could not pass
            // them, and once the window filled no timer would be released again).
            tracing::error!(error = %e, timers = keys.len(), "release preparation failed; the timers are tried again");
            let mut g = core.index.inner.lock();
            for key in keys {
                g.complete(key, Released::Retry, None);
            }
            drop(g);
            drop(permit);
            core.deliver_wake.notify_one();
            return;
        }
    };
    let (to_put, settled): (Vec<Prepared>, Vec<Prepared>) = prepared
        .into_iter()
        .partition(|p| matches!(p.action, Action::Put(_)));
    finish(&core, &settled, None);
    for chunk in chunks(&core, to_put) {
        put_chunk(&core, chunk).await;
    }
    drop(permit);
    core.deliver_wake.notify_one();
}

/// Splits puts into appends small enough for one write and one segment.
fn chunks(core: &Core, items: Vec<Prepared>) -> Vec<Vec<Prepared>> {
    let cfg = core.store.config();
    let max_bytes = (cfg.segment_size / 4)
        .min(cfg.max_write_batch_bytes as u64 / 2)
        .max(1) as usize;
    let mut out: Vec<Vec<Prepared>> = Vec::new();
    let mut bytes = 0usize;
    for p in items {
        let size = p.due.size as usize + 256;
        if out.is_empty() || bytes + size > max_bytes {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(last) = out.last_mut() {
            last.push(p);
        }
    }
    out
}

/// Appends one chunk, retrying while the store pushes back; on a refused message, falls back
/// to one append per message so only the bad one is dropped.
async fn put_chunk(core: &Core, chunk: Vec<Prepared>) {
    let inputs: Vec<MessageInput> = chunk
        .iter()
        .filter_map(|p| match &p.action {
            Action::Put(m) => Some(m.clone()),
            _ => None,
        })
        .collect();
    let mut pause = RETRY_PAUSE;
    let mut suspected = false;
    let mut first = true;
    loop {
        match core.services.put(inputs.clone()).await {
            Ok(appended) => {
                let times: Vec<i64> = appended.iter().map(|a| a.store_timestamp).collect();
                finish(core, &chunk, Some(&times));
                return;
            }
            Err(StoreError::InvalidMessage(_)) | Err(StoreError::Record(_)) if chunk.len() > 1 => {
                for one in chunk {
                    Box::pin(put_chunk(core, vec![one])).await;
                }
                return;
            }
            Err(e @ (StoreError::InvalidMessage(_) | StoreError::Record(_))) => {
                tracing::error!(error = %e, phys = chunk[0].due.key.phys, "release refused by the store; timer dropped");
                let dropped: Vec<Prepared> = chunk
                    .into_iter()
                    .map(|p| Prepared {
                        action: Action::Drop,
                        ..p
                    })
                    .collect();
                finish(core, &dropped, None);
                return;
            }
            Err(e) => {
                Counters::add(&core.counters.release_retries, 1);
                if !suspected && may_have_written(&e) {
                    suspected = true;
                    suspect(core, &chunk);
                }
                if StopFlags::get(&core.stop.deliver) || matches!(e, StoreError::Closed) {
                    retry_later(core, &chunk);
                    return;
                }
                // Each chunk's first failure, at most one line per 10 s for all of them: a
                // full disk refuses every chunk every retry (1 500 lines in 35 s before).
                let held_back = first.then(|| RETRY_LOG.allow("append")).flatten();
                if let Some(held_back) = held_back {
                    tracing::warn!(error = %e, count = chunk.len(), held_back, "release append failed; retrying");
                } else {
                    tracing::debug!(error = %e, count = chunk.len(), "release append failed again; retrying");
                }
                first = false;
                tokio::time::sleep(pause).await;
                // A fenced store refuses every append until it is reopened: back off instead
                // of retrying ten times a second until then.
                if may_have_written(&e) {
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
            }
        }
    }
}

/// Failed release appends: one warning per 10 s across every chunk.
static RETRY_LOG: sluice_broker::log_every::LogEvery =
    sluice_broker::log_every::LogEvery::new(Duration::from_secs(10));

/// Whether a failed append may still have put its records on the disk: a failed sync or
/// write (the store is fenced after either). Refusals before any write (busy, disk full,
/// closed, invalid) leave nothing behind.
fn may_have_written(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::SyncFailed(_) | StoreError::Fenced(_) | StoreError::Io { .. }
    )
}

/// Marks a chunk's timers as possibly released (see `Inner::suspect`).
fn suspect(core: &Core, items: &[Prepared]) {
    let mut g = core.index.inner.lock();
    for p in items {
        g.suspect(p.due.key);
    }
    tracing::warn!(
        count = items.len(),
        "release outcome unknown (failed sync or write): these timers are checked in their real topic before any later release"
    );
}

/// Gives timers back to the window (shutdown during a retry).
fn retry_later(core: &Core, items: &[Prepared]) {
    let mut g = core.index.inner.lock();
    for p in items {
        g.complete(p.due.key, Released::Retry, None);
    }
}

/// Marks prepared timers done and counts them; `times` are the store times of the puts.
fn finish(core: &Core, items: &[Prepared], times: Option<&[i64]>) {
    let mut put_i = 0;
    let mut g = core.index.inner.lock();
    for p in items {
        let how = match p.action {
            Action::Drop => Released::Dropped,
            _ => Released::Done,
        };
        g.complete(p.due.key, how, Some(&p.topic));
        let c = &core.counters;
        match (&p.action, p.due.kind) {
            (Action::Put(_), Kind::Roll) => Counters::add(&c.rolled, 1),
            (Action::Put(_), _) => {
                Counters::add(&c.delivered, 1);
                if let Some(t) = times.and_then(|t| t.get(put_i)) {
                    c.record_lateness(t - p.due_ms);
                }
            }
            (Action::AlreadyDone, _) => Counters::add(&c.crash_duplicates_avoided, 1),
            (Action::Drop, _) => Counters::add(&c.dropped, 1),
        }
        if matches!(p.action, Action::Put(_)) {
            put_i += 1;
        }
    }
}

/// Reads and rebuilds a batch (blocking: record reads and index look-ups).
fn prepare(core: &Core, due: Vec<Due>) -> Vec<Prepared> {
    due.into_iter().map(|d| prepare_one(core, d)).collect()
}

fn prepare_one(core: &Core, due: Due) -> Prepared {
    let phys = due.key.phys;
    let dropped = |topic: String, why: &str| {
        tracing::error!(
            phys,
            fire_ms = due.key.fire_ms,
            reason = why,
            "timer dropped: cannot be released"
        );
        Prepared {
            due,
            topic,
            due_ms: due.key.fire_ms,
            action: Action::Drop,
        }
    };
    let bytes = match core.store.read_record(phys) {
        Ok(b) => b,
        Err(e) => return dropped(String::new(), &format!("timer record unreadable: {e}")),
    };
    let Some(rec) = TimerRecord::parse(&bytes, &core.cfg) else {
        return dropped(String::new(), "timer record unparsable");
    };
    if due.verify && released_before(core, &rec, due.kind) {
        return Prepared {
            due,
            topic: rec.real_topic,
            due_ms: rec.due_ms,
            action: Action::AlreadyDone,
        };
    }
    let built = match due.kind {
        Kind::Roll => records::copy_timer(&bytes, rec.due_ms, Some(phys), None),
        _ => records::released(&bytes, rec.due_ms),
    };
    match built {
        Ok(m) => Prepared {
            due,
            topic: rec.real_topic,
            due_ms: rec.due_ms,
            action: Action::Put(m),
        },
        Err(e) => dropped(rec.real_topic, &e.0),
    }
}

/// After a crash: was this timer released (or rolled) already? Looks for the copy by its
/// UNIQ_KEY in the index and matches the timer's offset.
pub(crate) fn released_before(core: &Core, rec: &TimerRecord, kind: Kind) -> bool {
    Counters::add(&core.counters.crash_checks, 1);
    let Some(uniq) = rec.uniq_key.as_deref() else {
        Counters::add(&core.counters.possible_duplicates, 1);
        return false;
    };
    let (topic, marker) = match kind {
        Kind::Roll => (TIMER_TOPIC, PROP_PREV),
        _ => (rec.real_topic.as_str(), PROP_TIMER_OFFSET),
    };
    let want = rec.phys.to_string();
    any_copy(core, topic, uniq, |p| p.get(marker) == Some(want.as_str()))
}

/// Whether a record of `topic` whose UNIQ_KEY is `uniq` (found through the key index) has
/// properties for which `marks` holds: how a release or roll of a timer record is recognised.
pub(crate) fn any_copy(
    core: &Core,
    topic: &str,
    uniq: &str,
    marks: impl Fn(&Properties) -> bool,
) -> bool {
    core.store
        .query_by_uniq_key(topic, uniq, 256)
        .iter()
        .filter_map(|b| RecordView::parse(b, usize::MAX).ok())
        .any(|v| {
            let p = Properties::decode(v.properties);
            p.get(keys::UNIQ_KEY) == Some(uniq) && marks(&p)
        })
}
