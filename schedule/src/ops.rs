//! Cancel, reschedule and list: finding a message's timer records through the store's key
//! index, finding their state in the timer index, and changing it durably.
//!
//! A logical message is its UNIQ_KEY: rolls and reschedules write new timer records for the
//! same message, so one message may have several records, at most one of them pending.
//!
//! Cancel protocol: under the index lock, Pending → Cancelling (the deliverer leaves it
//! alone; a far timer is put in a set the window load honours); a cancel marker is appended
//! to the control queue and awaited (durable); then Cancelling → Cancelled. A failed append
//! puts it back to Pending. A reschedule appends, instead of a marker, a copy of the timer
//! with its new due time that names the old entry: one append both cancels and re-creates.
//! Cancels and reschedules are serialised, so a timer never gets two markers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_broker::SCHEDULE_TOPIC;
use sluice_protocol::message::keys;
use sluice_protocol::{Properties, RecordView};
use sluice_store::now_ms;

use crate::core::{millis, Core};
use crate::deliver;
use crate::entry::{Key, Kind};
use crate::error::{Result, ScheduleError};
use crate::index::{BeginCancel, SlotState, Where};
use crate::props::{PROP_TIMER_OFFSET, TIMER_TOPIC};
use crate::records::{self, TimerRecord};
use crate::state::queue_name;
use crate::stats::Counters;

/// Which scheduled messages an operation applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// One message by its id (UNIQ_KEY, the client's msgId), optionally only in `topic`.
    Id {
        /// The real topic, if known.
        topic: Option<String>,
        /// The UNIQ_KEY.
        uniq_key: String,
    },
    /// Every message of `topic` with `key` among its KEYS.
    Key {
        /// The real topic.
        topic: String,
        /// One business key.
        key: String,
    },
}

/// A new due time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// At this epoch millisecond.
    At(i64),
    /// This long from now.
    After(Duration),
}

impl When {
    /// The epoch ms this means now.
    pub fn due_ms(self, now: i64) -> i64 {
        match self {
            When::At(ms) => ms,
            When::After(d) => now.saturating_add(millis(d)),
        }
    }
}

/// Where a scheduled message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    /// Waiting for its time.
    Pending,
    /// Cancelled.
    Cancelled,
    /// Released to its real topic.
    Delivered,
}

/// What an operation did to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was pending and is now cancelled.
    Cancelled,
    /// It was pending and now waits for the new due time.
    Rescheduled {
        /// The new due time, epoch ms.
        due_ms: i64,
    },
    /// It had been cancelled before.
    AlreadyCancelled,
    /// It had been released before (or its release was under way).
    AlreadyDelivered,
}

/// One scheduled message, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledMessage {
    /// Its id (UNIQ_KEY).
    pub uniq_key: String,
    /// Its real topic.
    pub topic: String,
    /// Its real queue.
    pub queue_id: i32,
    /// Its due time (of the newest timer record), epoch ms.
    pub due_ms: i64,
    /// When it was parked (the newest timer record), epoch ms.
    pub parked_ms: i64,
    /// Its KEYS.
    pub keys: Vec<String>,
    /// Its TAGS.
    pub tags: Option<String>,
    /// Its state.
    pub state: MessageState,
}

/// The answer to a cancel or reschedule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpReport {
    /// Messages the selector matched (0 = not found).
    pub matched: usize,
    /// Cancelled by this call.
    pub cancelled: usize,
    /// Rescheduled by this call.
    pub rescheduled: usize,
    /// Cancelled before.
    pub already_cancelled: usize,
    /// Released before.
    pub already_delivered: usize,
    /// True when more than `max_key_matches` records matched; only that many were handled.
    pub truncated: bool,
    /// Per message: its UNIQ_KEY and what happened.
    pub outcomes: Vec<(String, Outcome)>,
}

impl OpReport {
    fn add(&mut self, uniq: String, o: Outcome) {
        match o {
            Outcome::Cancelled => self.cancelled += 1,
            Outcome::Rescheduled { .. } => self.rescheduled += 1,
            Outcome::AlreadyCancelled => self.already_cancelled += 1,
            Outcome::AlreadyDelivered => self.already_delivered += 1,
        }
        self.outcomes.push((uniq, o));
    }

    /// True when nothing matched.
    pub fn not_found(&self) -> bool {
        self.matched == 0
    }
}

/// A timer record found for a selector, with its place in the index.
#[derive(Debug, Clone)]
struct Found {
    rec: TimerRecord,
    bytes: Bytes,
    queue: String,
    queue_offset: u64,
    key: Key,
    kind: Kind,
}

/// Where one record's timer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecState {
    Pending,
    Busy,
    Cancelled,
    /// Released (still in the near window).
    Released,
    /// Released or cancelled, no longer in memory.
    Gone,
}

/// The action of [`apply`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Action {
    Cancel,
    Reschedule(i64),
}

/// Runs blocking work (store reads, run look-ups) off the async threads.
async fn blocking<T: Send + 'static>(
    core: &Arc<Core>,
    f: impl FnOnce(&Core) -> T + Send + 'static,
) -> Result<T> {
    let c = Arc::clone(core);
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .map_err(|_| ScheduleError::Timeout("a blocking look-up task failed"))
}

/// Finds the timer records a selector names, grouped by message (blocking).
fn find(core: &Core, sel: &Selector) -> Result<(BTreeMap<String, Vec<Found>>, bool)> {
    if !core.store.wait_dispatched(core.cfg.op_timeout) {
        return Err(ScheduleError::Timeout("the store did not finish indexing"));
    }
    let max = core.cfg.max_key_matches;
    let mut raw: Vec<Bytes> = Vec::new();
    for topic in [SCHEDULE_TOPIC, TIMER_TOPIC] {
        raw.extend(match sel {
            Selector::Id { uniq_key, .. } => core.store.query_by_uniq_key(topic, uniq_key, max),
            Selector::Key { key, .. } => core.store.query_by_key(topic, key, max, 0, i64::MAX / 2),
        });
    }
    let truncated = raw.len() >= max;
    let want_topic = match sel {
        Selector::Id { topic, .. } => topic.as_deref(),
        Selector::Key { topic, .. } => Some(topic.as_str()),
    };
    let mut groups: BTreeMap<String, Vec<Found>> = BTreeMap::new();
    for bytes in raw.into_iter().take(max) {
        let Some(f) = found(core, bytes) else {
            continue;
        };
        if want_topic.is_some_and(|t| t != f.rec.real_topic) {
            continue;
        }
        let group = f
            .rec
            .uniq_key
            .clone()
            .unwrap_or_else(|| format!("@{}", f.rec.phys));
        groups.entry(group).or_default().push(f);
    }
    Ok((groups, truncated))
}

fn found(core: &Core, bytes: Bytes) -> Option<Found> {
    let view = RecordView::parse(&bytes, usize::MAX).ok()?;
    let queue = queue_name(view.topic, view.header.queue_id);
    let queue_offset = u64::try_from(view.header.queue_offset).ok()?;
    let rec = TimerRecord::parse(&bytes, &core.cfg)?;
    let (key, kind) = rec.key(core.roll_ms);
    Some(Found {
        rec,
        bytes,
        queue,
        queue_offset,
        key,
        kind,
    })
}

/// Waits (bounded) until the index has read past a record.
async fn wait_indexed(core: &Core, f: &Found) -> Result<()> {
    wait_offset(core, &f.queue, f.queue_offset).await
}

/// Waits (bounded) until the index has read `queue` past `offset`.
async fn wait_offset(core: &Core, queue: &str, offset: u64) -> Result<()> {
    let deadline = Instant::now() + core.cfg.op_timeout;
    loop {
        {
            let g = core.index.inner.lock();
            if g.ready && g.enqueue.get(queue).is_some_and(|n| *n > offset) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(ScheduleError::Timeout("the timer index did not catch up"));
        }
        core.wake.wake();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A record's state (may read runs: blocking, but short).
fn state_of(core: &Core, key: Key) -> Result<(RecState, Option<u64>)> {
    let located = core.index.inner.lock().locate(key);
    Ok(match located {
        Where::Near(SlotState::Pending) => (RecState::Pending, None),
        Where::Near(SlotState::InFlight | SlotState::Cancelling) => (RecState::Busy, None),
        Where::Near(SlotState::Cancelled) => (RecState::Cancelled, None),
        Where::Near(SlotState::Done) => (RecState::Released, None),
        Where::Gone => (RecState::Gone, None),
        Where::Far {
            mem,
            runs,
            generation,
        } => {
            let (mut target, mut tomb) = (mem.target, mem.tombstone);
            for r in &runs {
                let (t, d) = r.lookup(key)?;
                target = target.or(t);
                tomb |= d;
            }
            let state = match (target, tomb) {
                (_, true) => RecState::Cancelled,
                (Some(_), false) => RecState::Pending,
                (None, false) => RecState::Gone,
            };
            (state, Some(generation))
        }
    })
}

/// Was this message released to its real topic? (A release just made may not be in the
/// key index yet: wait for the store to dispatch first.)
fn delivered(core: &Core, uniq: &str, topic: &str) -> bool {
    core.store.wait_dispatched(core.cfg.op_timeout);
    core.store
        .query_by_uniq_key(topic, uniq, 64)
        .iter()
        .filter_map(|b| RecordView::parse(b, usize::MAX).ok())
        .any(|v| {
            let p = Properties::decode(v.properties);
            p.get(PROP_TIMER_OFFSET).is_some() && p.get(keys::UNIQ_KEY) == Some(uniq)
        })
}

/// Cancels or reschedules every message a selector matches.
pub(crate) async fn apply(core: &Arc<Core>, sel: &Selector, action: Action) -> Result<OpReport> {
    let _serial = core.op_lock.lock().await;
    let (groups, truncated) = find_async(core, sel).await?;
    let mut report = OpReport {
        matched: groups.len(),
        truncated,
        ..OpReport::default()
    };
    for (uniq, recs) in groups {
        let outcome = apply_group(core, sel, &uniq, recs, action).await?;
        report.add(uniq, outcome);
    }
    Ok(report)
}

async fn find_async(
    core: &Arc<Core>,
    sel: &Selector,
) -> Result<(BTreeMap<String, Vec<Found>>, bool)> {
    let (groups, truncated) = {
        let sel = sel.clone();
        blocking(core, move |c| find(c, &sel)).await??
    };
    for f in groups.values().flatten() {
        wait_indexed(core, f).await?;
    }
    Ok((groups, truncated))
}

/// One message: waits out releases in flight (a roll re-creates the timer), then acts on its
/// pending record, or reports why there is none.
async fn apply_group(
    core: &Arc<Core>,
    sel: &Selector,
    uniq: &str,
    mut recs: Vec<Found>,
    action: Action,
) -> Result<Outcome> {
    let deadline = Instant::now() + core.cfg.op_timeout;
    loop {
        if Instant::now() >= deadline {
            return Err(ScheduleError::Timeout("the message's state kept changing"));
        }
        let mut states = Vec::with_capacity(recs.len());
        for f in &recs {
            let key = f.key;
            states.push(blocking(core, move |c| state_of(c, key)).await??);
        }
        if let Some(i) = states.iter().position(|s| s.0 == RecState::Pending) {
            match act(core, &recs[i], states[i].1, action).await? {
                Some(o) => return Ok(o),
                None => continue,
            }
        }
        if states.iter().any(|s| s.0 == RecState::Busy) {
            if Instant::now() >= deadline {
                return Err(ScheduleError::Timeout(
                    "a release of this message did not finish",
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            recs = refind(core, sel, uniq).await?.unwrap_or(recs);
            continue;
        }
        if states.iter().any(|s| s.0 == RecState::Released) {
            return Ok(Outcome::AlreadyDelivered);
        }
        // Every record cancelled: the message was cancelled. A cancelled record next to one
        // that is gone is a reschedule (the old timer is cancelled, the new one was released
        // or cancelled and compacted away): only the real topic can tell which.
        if states.iter().all(|s| s.0 == RecState::Cancelled) {
            return Ok(Outcome::AlreadyCancelled);
        }
        let topic = recs
            .first()
            .map(|f| f.rec.real_topic.clone())
            .unwrap_or_default();
        let u = uniq.to_owned();
        let was_delivered = blocking(core, move |c| delivered(c, &u, &topic)).await?;
        return Ok(if was_delivered {
            Outcome::AlreadyDelivered
        } else {
            Outcome::AlreadyCancelled
        });
    }
}

/// The message's records again (after a roll wrote a new one).
async fn refind(core: &Arc<Core>, sel: &Selector, uniq: &str) -> Result<Option<Vec<Found>>> {
    let (mut groups, _) = find_async(core, sel).await?;
    Ok(groups.remove(uniq))
}

/// Cancels or reschedules one pending record; `None` when its state changed meanwhile.
async fn act(
    core: &Arc<Core>,
    f: &Found,
    generation: Option<u64>,
    action: Action,
) -> Result<Option<Outcome>> {
    let (begun, check) = {
        let mut g = core.index.inner.lock();
        (g.begin_cancel(f.key, generation), g.may_be_released(f.key))
    };
    match begun {
        BeginCancel::Started => {}
        BeginCancel::Retry | BeginCancel::Not(_) | BeginCancel::Gone => return Ok(None),
    }
    if check {
        if let Some(settled) = released_before_crash(core, f).await? {
            return Ok(settled);
        }
    }
    let (input, outcome) = match action {
        Action::Cancel => (
            records::cancel_marker(f.key, &f.rec.real_topic),
            Outcome::Cancelled,
        ),
        Action::Reschedule(due_ms) => {
            let copy = records::copy_timer(&f.bytes, due_ms, None, Some(f.key))
                .map_err(|e| ScheduleError::InvalidArgument(e.0));
            match copy {
                Ok(m) => (m, Outcome::Rescheduled { due_ms }),
                Err(e) => {
                    core.index.inner.lock().finish_cancel(f.key, false);
                    return Err(e);
                }
            }
        }
    };
    let queue = queue_name(&input.topic, input.queue_id);
    let written = core.services.put(vec![input]).await;
    core.index
        .inner
        .lock()
        .finish_cancel(f.key, written.is_ok());
    core.deliver_wake.notify_one();
    core.wake.wake();
    let appended = written?;
    if let Some(a) = appended.first() {
        // Answer once the marker is indexed too, so counts and lists already show it.
        let _ = wait_offset(core, &queue, u64::try_from(a.queue_offset).unwrap_or(0)).await;
    }
    let counter = match outcome {
        Outcome::Rescheduled { .. } => &core.counters.rescheduled,
        _ => &core.counters.cancelled,
    };
    Counters::add(counter, 1);
    tracing::info!(uniq_key = ?f.rec.uniq_key, topic = %f.rec.real_topic, phys = f.rec.phys, fire_ms = f.key.fire_ms, kind = ?f.kind, outcome = ?outcome, "scheduled message changed");
    Ok(Some(outcome))
}

/// For a timer that may have been released before a crash (see
/// [`crate::index::Inner::may_be_released`]), with its cancel begun: looks for its copy as the
/// deliverer would. Found: the timer is settled as released, and the answer is "delivered"
/// (for a roll, `Some(None)`: its new timer is the one to act on). Not found: `None`, go on.
async fn released_before_crash(core: &Arc<Core>, f: &Found) -> Result<Option<Option<Outcome>>> {
    let (rec, kind) = (f.rec.clone(), f.kind);
    let found = blocking(core, move |c| deliver::released_before(c, &rec, kind)).await;
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            core.index.inner.lock().finish_cancel(f.key, false);
            return Err(e);
        }
    };
    if !found {
        return Ok(None);
    }
    core.index
        .inner
        .lock()
        .finish_cancel_released(f.key, &f.rec.real_topic);
    core.deliver_wake.notify_one();
    tracing::info!(uniq_key = ?f.rec.uniq_key, topic = %f.rec.real_topic, phys = f.rec.phys, fire_ms = f.key.fire_ms, "cancel found a release made before the crash");
    Ok(Some(match kind {
        Kind::Roll => None,
        _ => Some(Outcome::AlreadyDelivered),
    }))
}

/// Lists the messages a selector matches, one entry per message.
pub(crate) async fn list(
    core: &Arc<Core>,
    sel: &Selector,
) -> Result<(Vec<ScheduledMessage>, bool)> {
    let (groups, truncated) = find_async(core, sel).await?;
    let mut out = Vec::with_capacity(groups.len());
    for (uniq, recs) in groups {
        let mut best: Option<(RecState, &Found)> = None;
        for f in &recs {
            let key = f.key;
            let (s, _) = blocking(core, move |c| state_of(c, key)).await??;
            let newer = best.is_none_or(|(_, b)| f.rec.phys > b.rec.phys);
            if matches!(s, RecState::Pending | RecState::Busy)
                || (newer && !matches!(best, Some((RecState::Pending | RecState::Busy, _))))
            {
                best = Some((s, f));
            }
        }
        let Some((s, f)) = best else { continue };
        let state = match s {
            RecState::Pending => MessageState::Pending,
            RecState::Cancelled => MessageState::Cancelled,
            RecState::Released => MessageState::Delivered,
            RecState::Busy | RecState::Gone => {
                let (u, t) = (uniq.clone(), f.rec.real_topic.clone());
                if blocking(core, move |c| delivered(c, &u, &t)).await? {
                    MessageState::Delivered
                } else if s == RecState::Busy {
                    MessageState::Pending
                } else {
                    MessageState::Cancelled
                }
            }
        };
        out.push(describe(f, uniq, state));
    }
    Ok((out, truncated))
}

fn describe(f: &Found, uniq: String, state: MessageState) -> ScheduledMessage {
    let props = RecordView::parse(&f.bytes, usize::MAX)
        .map(|v| Properties::decode(v.properties))
        .unwrap_or_default();
    ScheduledMessage {
        uniq_key: uniq,
        topic: f.rec.real_topic.clone(),
        queue_id: props
            .get(keys::REAL_QID)
            .and_then(|q| q.parse().ok())
            .unwrap_or(0),
        due_ms: f.rec.due_ms,
        parked_ms: f.rec.store_ms,
        keys: props.user_keys().map(str::to_owned).collect(),
        tags: props.get(keys::TAGS).map(str::to_owned),
        state,
    }
}

/// Checks a reschedule time against the limits: never beyond the maximum delay, and not
/// further in the past than the tolerance (a due time in the past releases at once).
pub(crate) fn check_new_due(core: &Core, when: When) -> Result<i64> {
    let now = now_ms();
    let due = when.due_ms(now);
    if due.saturating_sub(now) > millis(core.cfg.max_delay) {
        return Err(ScheduleError::InvalidArgument(format!(
            "due time {due} is beyond the maximum delay of {} ms",
            millis(core.cfg.max_delay)
        )));
    }
    if now.saturating_sub(due) > millis(core.cfg.past_tolerance) {
        return Err(ScheduleError::InvalidArgument(format!(
            "due time {due} is {} ms in the past",
            now - due
        )));
    }
    Ok(due.max(now))
}
