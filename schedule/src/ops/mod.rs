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
//! This file holds the public types, the entry points ([`apply`], [`list`]) and finding a
//! message's records and their states; `group` decides and acts for one message (and holds
//! the cancel protocol).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_broker::{DLQ_PREFIX, RETRY_PREFIX, SCHEDULE_TOPIC};
use sluice_protocol::message::keys;
use sluice_protocol::message::properties::find_property;
use sluice_protocol::{Properties, RecordView};
use sluice_store::now_ms;

use crate::core::{millis, Core};
use crate::entry::{Key, Kind};
use crate::error::{Result, ScheduleError};
use crate::index::{SlotState, Where};
use crate::props::{PROP_TIMER_OFFSET, TIMER_TOPIC};
use crate::records::TimerRecord;
use crate::state::queue_name;

mod group;

use group::apply_group;

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
    /// Given up as undeliverable (its record unreadable, its real queue invalid, refused by
    /// the store; logged as an error): it never reaches its topic.
    Dropped,
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
    /// It had been dropped as undeliverable: it never reached its topic, and nothing was
    /// left to cancel or reschedule.
    AlreadyDropped,
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
    /// Dropped as undeliverable before.
    pub already_dropped: usize,
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
            Outcome::AlreadyDropped => self.already_dropped += 1,
        }
        self.outcomes.push((uniq, o));
    }

    /// Messages this call cancelled or rescheduled (not those found already settled).
    pub fn changed(&self) -> usize {
        self.cancelled + self.rescheduled
    }

    /// True when nothing matched.
    pub fn not_found(&self) -> bool {
        self.matched == 0
    }
}

/// The action of [`apply`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Action {
    Cancel,
    Reschedule(i64),
}

/// Cancels or reschedules every message a selector matches.
pub(crate) async fn apply(core: &Arc<Core>, sel: &Selector, action: Action) -> Result<OpReport> {
    // Operations run one at a time (each reads the index and appends its markers); a caller
    // waits at most `op_timeout` for its turn instead of queueing for good behind a long one.
    let _serial = tokio::time::timeout(core.cfg.op_timeout, core.op_lock.lock())
        .await
        .map_err(|_| ScheduleError::Timeout("another cancel or reschedule is still running"))?;
    let (groups, truncated) = find_async(core, sel).await?;
    let mut report = OpReport {
        matched: groups.len(),
        truncated,
        ..OpReport::default()
    };
    for (uniq, recs) in groups {
        // One message after the other, each durable on its own: a failure past the first
        // says how many were done, since an error alone reads as "nothing changed".
        let outcome = match apply_group(core, sel, &uniq, recs, action).await {
            Ok(o) => o,
            Err(f) => return Err(f.into_error(report.changed(), report.matched)),
        };
        report.add(uniq, outcome);
    }
    Ok(report)
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
    } else if dropped_not_cancelled(recs.iter().map(|f| f.kind).zip(states.iter().copied())) {
        MessageState::Dropped
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

/// Whether a message whose records stand as given was dropped as undeliverable and not
/// cancelled: a copy dropped, none cancelled (a fire gone from memory and not found
/// delivered was cancelled). Cancels and listings answer by this one rule.
fn dropped_not_cancelled(records: impl Iterator<Item = (Kind, RecState)> + Clone) -> bool {
    let cancelled = |(kind, s): (Kind, RecState)| {
        s == RecState::Cancelled || (s == RecState::Gone && kind != Kind::Roll)
    };
    records.clone().any(|(_, s)| s == RecState::Dropped) && !records.into_iter().any(cancelled)
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
/// further in the past than the tolerance (a due time in the past releases at once). Refused
/// as a delay is (`InvalidDelay`), not as a malformed argument.
pub(crate) fn check_new_due(core: &Core, when: When) -> Result<i64> {
    let now = now_ms();
    let due = when.due_ms(now);
    if due.saturating_sub(now) > millis(core.cfg.max_delay) {
        return Err(ScheduleError::InvalidDelay(format!(
            "due time {due} is beyond the maximum delay of {} ms",
            millis(core.cfg.max_delay)
        )));
    }
    if now.saturating_sub(due) > millis(core.cfg.past_tolerance) {
        return Err(ScheduleError::InvalidDelay(format!(
            "due time {due} is {} ms in the past",
            now.saturating_sub(due)
        )));
    }
    Ok(due.max(now))
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
    /// Dropped as undeliverable.
    Dropped,
    /// Released or cancelled, no longer in memory.
    Gone,
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

/// Finds the timer records a selector names, grouped by message (blocking).
fn find(core: &Core, sel: &Selector) -> Result<(BTreeMap<String, Vec<Found>>, bool)> {
    if !core.store.wait_dispatched(core.cfg.op_timeout) {
        return Err(ScheduleError::Timeout("the store did not finish indexing"));
    }
    let max = core.cfg.max_key_matches;
    let want_topic = match sel {
        Selector::Id { topic, .. } => topic.as_deref(),
        Selector::Key { topic, .. } => Some(topic.as_str()),
    };
    // The real topic is matched inside the store's look-up, before its cap: records of other
    // topics sharing the key (retry copies keep KEYS) took the cap first, and a pending timer
    // behind them was answered "not found".
    // With no topic named, a consumer group's retry timers (a send-back keeps the message's
    // UNIQ_KEY) are not the message's own: grouped with it, a cancel by id cancelled the
    // group's retry and answered "cancelled" for a message already delivered.
    let of_topic = |props: &[u8]| {
        let real = find_property(props, keys::REAL_TOPIC);
        match want_topic {
            Some(t) => real == Some(t.as_bytes()),
            None => !real.is_some_and(|r| {
                r.starts_with(RETRY_PREFIX.as_bytes()) || r.starts_with(DLQ_PREFIX.as_bytes())
            }),
        }
    };
    let mut raw: Vec<Bytes> = Vec::new();
    let mut truncated = false;
    for topic in [SCHEDULE_TOPIC, TIMER_TOPIC] {
        // `capped`: the index look-up stopped at its cap on candidates (records of other
        // topics sharing the key take room there too), so fewer matches than `max` is no
        // proof that there are no more: the answer says truncated, never a plain "not found".
        let (got, capped) = match sel {
            Selector::Id { uniq_key, .. } => core
                .store
                .query_by_uniq_key_where(topic, uniq_key, max, &of_topic),
            Selector::Key { key, .. } => {
                core.store
                    .query_by_key_where(topic, key, max, (0, i64::MAX / 2), &of_topic)
            }
        };
        truncated |= got.len() >= max || capped;
        raw.extend(got);
    }
    let mut groups: BTreeMap<String, Vec<Found>> = BTreeMap::new();
    for bytes in raw {
        let Some(f) = found(core, bytes) else {
            continue;
        };
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
        Where::Near(SlotState::Dropped) => (RecState::Dropped, None),
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
    crate::deliver::any_copy(core, topic, uniq, |p| {
        p.get(PROP_TIMER_OFFSET)
            .and_then(|o| o.parse::<u64>().ok())
            .is_some_and(|o| offsets.contains(&o))
    })
}
