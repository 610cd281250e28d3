//! Cancel, reschedule and list: finding a message's timer records through the store's key
//! index, finding their state in the timer index, and changing it durably.
//!
//! A logical message is its UNIQ_KEY: rolls and reschedules write new timer records for the
//! same message, so one message may have several records. Several of them may be pending at
//! once: a producer that resends a delayed message after a lost acknowledgement keeps its
//! UNIQ_KEY (RocketMQ clients do), and each copy is a timer of its own. So a cancel or
//! reschedule acts on every pending record of the message (waiting out releases in flight
//! first, and following a finished roll to the record it wrote), and answers once per message
//! with what is true of all copies: `AlreadyDelivered` if any copy reached its real topic (the
//! pending ones are then cancelled, even by a reschedule, so it does not arrive again), else
//! `Cancelled`/`Rescheduled` if it changed any, else `AlreadyCancelled`.
//!
//! Cancel protocol: under the index lock, Pending → Cancelling (the deliverer leaves it
//! alone; a far timer is put in a set the window load honours); a cancel marker is appended
//! to the control queue and awaited (durable); then Cancelling → Cancelled. A failed append
//! puts it back to Pending. A reschedule appends, instead of a marker, a copy of the timer
//! with its new due time that names the old entry: one append both cancels and re-creates.
//! Cancels and reschedules are serialised, so a timer never gets two markers.

use std::collections::{BTreeMap, HashSet};
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

/// The answer to a cancel or reschedule. Counts are of messages (UNIQ_KEYs), not of timer
/// records: a message sent twice with one id is one match with one outcome, however many of
/// its copies were changed (the service's `cancelled`/`rescheduled` counters count records).
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

/// Was one of these timer records (`offsets`, of message `uniq`) released to its real topic?
/// Matching the offsets, not just the id, keeps a copy released for another record of the
/// same id (a resend that this selector did not match) from answering for these. (A release
/// just made may not be in the key index yet: wait for the store to dispatch first.)
fn delivered(core: &Core, uniq: &str, topic: &str, offsets: &[u64]) -> bool {
    core.store.wait_dispatched(core.cfg.op_timeout);
    core.store
        .query_by_uniq_key(topic, uniq, 256)
        .iter()
        .filter_map(|b| RecordView::parse(b, usize::MAX).ok())
        .any(|v| {
            let p = Properties::decode(v.properties);
            p.get(keys::UNIQ_KEY) == Some(uniq)
                && p.get(PROP_TIMER_OFFSET)
                    .and_then(|o| o.parse::<u64>().ok())
                    .is_some_and(|o| offsets.contains(&o))
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

/// One timer record of a message, as [`decide`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecView {
    kind: Kind,
    state: RecState,
    phys: u64,
    /// The record it was rolled from.
    prev: Option<u64>,
    /// Written by this call (a rescheduled copy), or rolled from such a record: the result of
    /// the action, not something to act on again.
    ours: bool,
}

/// What a message needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Next {
    /// A release of one of its records is in flight: wait for it, then look again.
    Wait,
    /// These rolls finished, but the records they wrote are not among those found: find the
    /// message's records again (once per roll) before calling anything final.
    Refind(Vec<u64>),
    /// Act on these pending records. `cancel`: a copy was released, so the rest are only
    /// cancelled, even by a reschedule (moving them would deliver the message again).
    Act { idx: Vec<usize>, cancel: bool },
    /// Nothing is pending or in flight: final. `delivered`: a copy reached its real topic.
    Settled { delivered: bool },
}

/// A roll that finished (or left memory) without its successor among `views`.
fn orphan_roll(v: &RecView, views: &[RecView]) -> bool {
    v.kind == Kind::Roll
        && matches!(v.state, RecState::Released | RecState::Gone)
        && !views.iter().any(|w| w.prev == Some(v.phys))
}

/// The step a message needs, from its records' states (pure, so the races are testable).
/// Releases in flight are waited out before anything is acted on, so a copy being released
/// meanwhile turns the answer into "delivered" instead of a false "cancelled". A finished
/// roll is not a release: its successor is the record to look at. `refound` holds rolls a
/// look-up was already repeated for (one whose successor is still missing was cancelled or
/// dropped); `gone_delivered` says a record no longer in memory was found released.
fn decide(views: &[RecView], refound: &HashSet<u64>, gone_delivered: bool) -> Next {
    let theirs = || views.iter().enumerate().filter(|(_, v)| !v.ours);
    if theirs().any(|(_, v)| v.state == RecState::Busy) {
        return Next::Wait;
    }
    let orphans: Vec<u64> = theirs()
        .filter(|(_, v)| orphan_roll(v, views) && !refound.contains(&v.phys))
        .map(|(_, v)| v.phys)
        .collect();
    if !orphans.is_empty() {
        return Next::Refind(orphans);
    }
    let delivered = gone_delivered
        || theirs().any(|(_, v)| v.kind != Kind::Roll && v.state == RecState::Released);
    let idx: Vec<usize> = views
        .iter()
        .enumerate()
        .filter(|(_, v)| v.state == RecState::Pending && (!v.ours || delivered))
        .map(|(i, _)| i)
        .collect();
    if idx.is_empty() {
        Next::Settled { delivered }
    } else {
        Next::Act {
            idx,
            cancel: delivered,
        }
    }
}

/// What one call has learnt and done for one message, across its rounds.
#[derive(Debug, Default)]
struct GroupProgress {
    /// Records this call wrote (rescheduled copies).
    written: HashSet<u64>,
    /// Records this call found released before a crash. The index may still hold such a
    /// record as pending beyond the window (the deliverer's own check settles it later).
    released_before_crash: HashSet<u64>,
    /// Rolls a look-up was repeated for.
    refound: HashSet<u64>,
    /// Records no longer in memory already looked up in the real topic.
    checked_gone: HashSet<u64>,
    /// One of those was released.
    gone_delivered: bool,
    /// What this call did to a record, if anything.
    done: Option<Outcome>,
}

impl GroupProgress {
    /// The answer once settled: one per message, true for every copy. Delivered when any copy
    /// reached consumers (the others were cancelled by this call or before); otherwise what
    /// this call did, or "cancelled before" when it found nothing to do.
    fn answer(&self, delivered: bool) -> Outcome {
        if delivered {
            Outcome::AlreadyDelivered
        } else {
            self.done.unwrap_or(Outcome::AlreadyCancelled)
        }
    }
}

/// The records' states and the far-lookup generations that go with them.
async fn views_of(
    core: &Arc<Core>,
    recs: &[Found],
    p: &GroupProgress,
) -> Result<(Vec<RecView>, Vec<Option<u64>>)> {
    let mut views = Vec::with_capacity(recs.len());
    let mut generations = Vec::with_capacity(recs.len());
    for f in recs {
        let key = f.key;
        let (mut state, generation) = blocking(core, move |c| state_of(c, key)).await??;
        if p.released_before_crash.contains(&f.rec.phys) {
            state = RecState::Released;
        }
        let mine = |phys: u64| p.written.contains(&phys);
        views.push(RecView {
            kind: f.kind,
            state,
            phys: f.rec.phys,
            prev: f.rec.prev,
            ours: mine(f.rec.phys) || f.rec.prev.is_some_and(mine),
        });
        generations.push(generation);
    }
    Ok((views, generations))
}

/// Looks up, once each, whether records that left memory (released or cancelled) were
/// released; only a fire (not a roll, not this call's copies) can have been.
async fn check_gone(
    core: &Arc<Core>,
    uniq: &str,
    recs: &[Found],
    views: &[RecView],
    p: &mut GroupProgress,
) -> Result<()> {
    let offsets: Vec<u64> = views
        .iter()
        .filter(|v| v.state == RecState::Gone && v.kind != Kind::Roll && !v.ours)
        .map(|v| v.phys)
        .filter(|phys| !p.checked_gone.contains(phys))
        .collect();
    let Some(first) = recs.first() else {
        return Ok(());
    };
    if offsets.is_empty() || p.gone_delivered {
        return Ok(());
    }
    p.checked_gone.extend(offsets.iter().copied());
    let (u, topic) = (uniq.to_owned(), first.rec.real_topic.clone());
    p.gone_delivered = blocking(core, move |c| delivered(c, &u, &topic, &offsets)).await?;
    Ok(())
}

/// One message: acts on every pending record it has — a message sent twice (a client's
/// retry keeps its UNIQ_KEY) has one timer per copy, each released on its own — after
/// waiting out releases in flight and following rolls to their new records, then answers
/// once for the message.
async fn apply_group(
    core: &Arc<Core>,
    sel: &Selector,
    uniq: &str,
    mut recs: Vec<Found>,
    action: Action,
) -> Result<Outcome> {
    let deadline = Instant::now() + core.cfg.op_timeout;
    let mut p = GroupProgress::default();
    loop {
        if Instant::now() >= deadline {
            return Err(ScheduleError::Timeout("the message's state kept changing"));
        }
        let (views, generations) = views_of(core, &recs, &p).await?;
        check_gone(core, uniq, &recs, &views, &mut p).await?;
        match decide(&views, &p.refound, p.gone_delivered) {
            Next::Settled { delivered } => return Ok(p.answer(delivered)),
            Next::Wait => tokio::time::sleep(Duration::from_millis(2)).await,
            Next::Refind(rolls) => {
                p.refound.extend(rolls);
                recs = refind(core, sel, uniq).await?.unwrap_or(recs);
            }
            Next::Act { idx, cancel } => {
                let action = if cancel { Action::Cancel } else { action };
                let mut copies = Vec::new();
                for i in idx {
                    match act(core, &recs[i], generations[i], action).await? {
                        Acted::Changed { outcome, copy } => {
                            p.done = Some(outcome);
                            if let Some(copy) = copy {
                                p.written.insert(copy.rec.phys);
                                copies.push(*copy);
                            }
                        }
                        Acted::ReleasedBeforeCrash => {
                            p.released_before_crash.insert(recs[i].rec.phys);
                        }
                        Acted::Unchanged => {}
                    }
                }
                recs.extend(copies);
            }
        }
    }
}

/// The message's records again (after a roll wrote a new one).
async fn refind(core: &Arc<Core>, sel: &Selector, uniq: &str) -> Result<Option<Vec<Found>>> {
    let (mut groups, _) = find_async(core, sel).await?;
    Ok(groups.remove(uniq))
}

/// What [`act`] did to one record.
#[derive(Debug)]
enum Acted {
    /// Cancelled or moved.
    Changed {
        outcome: Outcome,
        /// The new timer record a reschedule wrote (boxed: a record is large).
        copy: Option<Box<Found>>,
    },
    /// It had been released (or rolled) before a crash: settled as such, nothing written.
    ReleasedBeforeCrash,
    /// Its state changed meanwhile: look again.
    Unchanged,
}

/// Cancels or reschedules one pending record.
async fn act(
    core: &Arc<Core>,
    f: &Found,
    generation: Option<u64>,
    action: Action,
) -> Result<Acted> {
    let (begun, check) = {
        let mut g = core.index.inner.lock();
        (g.begin_cancel(f.key, generation), g.may_be_released(f.key))
    };
    match begun {
        BeginCancel::Started => {}
        BeginCancel::Retry | BeginCancel::Not(_) | BeginCancel::Gone => {
            return Ok(Acted::Unchanged)
        }
    }
    if check && released_before_crash(core, f).await? {
        return Ok(Acted::ReleasedBeforeCrash);
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
    let appended = written?.first().copied();
    if let Some(a) = appended {
        // Answer once the marker is indexed too, so counts and lists already show it.
        let _ = wait_offset(core, &queue, u64::try_from(a.queue_offset).unwrap_or(0)).await;
    }
    let counter = match outcome {
        Outcome::Rescheduled { .. } => &core.counters.rescheduled,
        _ => &core.counters.cancelled,
    };
    Counters::add(counter, 1);
    tracing::info!(uniq_key = ?f.rec.uniq_key, topic = %f.rec.real_topic, phys = f.rec.phys, fire_ms = f.key.fire_ms, kind = ?f.kind, outcome = ?outcome, "scheduled message changed");
    let copy = match (outcome, appended) {
        (Outcome::Rescheduled { .. }, Some(a)) => written_copy(core, a.phys_offset).await?,
        _ => None,
    };
    Ok(Acted::Changed { outcome, copy })
}

/// The timer record a reschedule just wrote, so later rounds know it as this call's own.
async fn written_copy(core: &Arc<Core>, phys: u64) -> Result<Option<Box<Found>>> {
    blocking(core, move |c| {
        c.store
            .read_record(phys)
            .ok()
            .and_then(|bytes| found(c, bytes))
            .map(Box::new)
    })
    .await
}

/// For a timer that may have been released before a crash (see
/// [`crate::index::Inner::may_be_released`]), with its cancel begun: looks for its copy as the
/// deliverer would. Found: the timer is settled as released (a fire answers "delivered", a
/// roll's new timer is the one to act on) and `true`. Not found: `false`, go on.
async fn released_before_crash(core: &Arc<Core>, f: &Found) -> Result<bool> {
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
        return Ok(false);
    }
    core.index
        .inner
        .lock()
        .finish_cancel_released(f.key, &f.rec.real_topic);
    core.deliver_wake.notify_one();
    tracing::info!(uniq_key = ?f.rec.uniq_key, topic = %f.rec.real_topic, phys = f.rec.phys, fire_ms = f.key.fire_ms, "cancel found a release made before the crash");
    Ok(true)
}

/// Lists the messages a selector matches, one entry per message.
pub(crate) async fn list(
    core: &Arc<Core>,
    sel: &Selector,
) -> Result<(Vec<ScheduledMessage>, bool)> {
    let (groups, truncated) = find_async(core, sel).await?;
    let mut out = Vec::with_capacity(groups.len());
    for (uniq, recs) in groups {
        let mut states = Vec::with_capacity(recs.len());
        for f in &recs {
            let key = f.key;
            states.push(blocking(core, move |c| state_of(c, key)).await??.0);
        }
        let Some(f) = listed_record(&recs, &states) else {
            continue;
        };
        let state = match list_state(&recs, &states) {
            ListState::Known(state) => state,
            ListState::Lookup { offsets, otherwise } => {
                let (u, t) = (uniq.clone(), f.rec.real_topic.clone());
                if blocking(core, move |c| delivered(c, &u, &t, &offsets)).await? {
                    MessageState::Delivered
                } else {
                    otherwise
                }
            }
        };
        out.push(describe(f, uniq, state));
    }
    Ok((out, truncated))
}

/// The record a listing describes (due time, keys): a pending one, else the newest.
fn listed_record<'a>(recs: &'a [Found], states: &[RecState]) -> Option<&'a Found> {
    let live = |s: &RecState| matches!(s, RecState::Pending | RecState::Busy);
    let pending = recs.iter().zip(states).filter(|(_, s)| live(s));
    pending
        .map(|(f, _)| f)
        .next()
        .or_else(|| recs.iter().max_by_key(|f| f.rec.phys))
}

/// A listed message's state, or the look-up that decides it.
#[derive(Debug, PartialEq, Eq)]
enum ListState {
    Known(MessageState),
    /// Delivered if one of `offsets` was released to the real topic, else `otherwise`.
    Lookup {
        offsets: Vec<u64>,
        otherwise: MessageState,
    },
}

/// A message's state from its records' states, as a cancel would answer it: delivered when
/// any copy was released (a roll is not a release), else pending while a record waits, else
/// cancelled. Records in flight or gone from memory need the real topic looked up.
fn list_state(recs: &[Found], states: &[RecState]) -> ListState {
    let fires = || {
        recs.iter()
            .zip(states)
            .filter(|(f, _)| f.kind != Kind::Roll)
    };
    if fires().any(|(_, s)| *s == RecState::Released) {
        return ListState::Known(MessageState::Delivered);
    }
    let waiting = states
        .iter()
        .any(|s| matches!(s, RecState::Pending | RecState::Busy))
        || recs.iter().zip(states).any(|(f, s)| {
            f.kind == Kind::Roll
                && *s == RecState::Released
                && !recs.iter().any(|r| r.rec.prev == Some(f.rec.phys))
        });
    let otherwise = if waiting {
        MessageState::Pending
    } else {
        MessageState::Cancelled
    };
    let offsets: Vec<u64> = fires()
        .filter(|(_, s)| matches!(s, RecState::Busy | RecState::Gone))
        .map(|(f, _)| f.rec.phys)
        .collect();
    if offsets.is_empty() {
        ListState::Known(otherwise)
    } else {
        ListState::Lookup { offsets, otherwise }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: Kind, state: RecState, phys: u64) -> RecView {
        RecView {
            kind,
            state,
            phys,
            prev: None,
            ours: false,
        }
    }

    fn fire(state: RecState, phys: u64) -> RecView {
        rec(Kind::Fire, state, phys)
    }

    fn decide_fresh(views: &[RecView]) -> Next {
        decide(views, &HashSet::new(), false)
    }

    #[test]
    fn every_pending_copy_of_a_message_is_acted_on() {
        let views = [fire(RecState::Pending, 10), fire(RecState::Pending, 20)];
        assert_eq!(
            decide_fresh(&views),
            Next::Act {
                idx: vec![0, 1],
                cancel: false
            }
        );
    }

    #[test]
    fn a_copy_in_flight_is_waited_for_before_the_others_are_acted_on() {
        let views = [fire(RecState::Busy, 10), fire(RecState::Pending, 20)];
        assert_eq!(decide_fresh(&views), Next::Wait);
    }

    #[test]
    fn once_a_copy_was_released_the_others_are_only_cancelled_and_the_answer_is_delivered() {
        let views = [fire(RecState::Released, 10), fire(RecState::Pending, 20)];
        assert_eq!(
            decide_fresh(&views),
            Next::Act {
                idx: vec![1],
                cancel: true
            }
        );
        let views = [fire(RecState::Gone, 10), fire(RecState::Pending, 20)];
        assert_eq!(
            decide(&views, &HashSet::new(), true),
            Next::Act {
                idx: vec![1],
                cancel: true
            },
            "a copy gone from memory and found in the real topic counts as released"
        );
        let views = [fire(RecState::Released, 10), fire(RecState::Cancelled, 20)];
        assert_eq!(decide_fresh(&views), Next::Settled { delivered: true });
    }

    #[test]
    fn the_copies_a_reschedule_wrote_are_not_moved_again_nor_waited_for() {
        let moved = RecView {
            ours: true,
            ..fire(RecState::Pending, 30)
        };
        let views = [fire(RecState::Cancelled, 10), moved];
        assert_eq!(decide_fresh(&views), Next::Settled { delivered: false });
        let in_flight = RecView {
            state: RecState::Busy,
            ..moved
        };
        let views = [fire(RecState::Cancelled, 10), in_flight];
        assert_eq!(decide_fresh(&views), Next::Settled { delivered: false });
    }

    #[test]
    fn a_moved_copy_is_cancelled_when_another_copy_turns_out_released() {
        let moved = RecView {
            ours: true,
            ..fire(RecState::Pending, 30)
        };
        let views = [fire(RecState::Released, 10), moved];
        assert_eq!(
            decide_fresh(&views),
            Next::Act {
                idx: vec![1],
                cancel: true
            }
        );
    }

    /// Defect: a cancel racing a roll saw the old record finish (Released, or Gone once the
    /// watermark passed it) before the rolled copy was found, and answered "delivered" (or
    /// "cancelled before") while the copy was still pending.
    #[test]
    fn a_finished_roll_is_never_final_until_its_new_record_is_looked_for() {
        for state in [RecState::Released, RecState::Gone] {
            let views = [rec(Kind::Roll, state, 10)];
            assert_eq!(decide_fresh(&views), Next::Refind(vec![10]), "{state:?}");
            let refound: HashSet<u64> = [10].into();
            assert_eq!(
                decide(&views, &refound, false),
                Next::Settled { delivered: false },
                "looked for after it finished and still alone: it was cancelled or dropped"
            );
        }
    }

    #[test]
    fn a_finished_roll_with_its_new_record_found_acts_on_the_new_record() {
        let rolled = RecView {
            prev: Some(10),
            ..fire(RecState::Pending, 20)
        };
        let views = [rec(Kind::Roll, RecState::Released, 10), rolled];
        assert_eq!(
            decide_fresh(&views),
            Next::Act {
                idx: vec![1],
                cancel: false
            },
            "a roll is not a release"
        );
    }
}
