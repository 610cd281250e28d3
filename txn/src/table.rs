//! The in-memory state of every transaction the broker knows, keyed by identity (the original
//! half message's queue offset). All changes happen under one mutex, briefly: no I/O, no await.
//!
//! Invariants:
//! - every half message below `half_next` is either in the table or decided and forgotten;
//! - only decided entries below `half_next` are forgotten (so a restart that rescans from
//!   `half_next` meets every entry it must and nothing it must not);
//! - `live` counts entries in a live state (open, resolving, parked).

use crate::journal::Counted;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::checkpoint::{CheckpointData, LiveEntry};
use crate::config::{FinalAction, GroupPolicy, TxnConfig};
use crate::error::TxnError;
use crate::records::{HalfRecord, TxnId};
use crate::state::{plan, CheckAnswer, Decision, Plan, Source, TxnState};

/// Where a transaction's half-message bytes are now (the original, or a carry-forward copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) half_offset: u64,
    pub(crate) phys_offset: u64,
    pub(crate) store_ms: i64,
}

/// One transaction.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) id: TxnId,
    pub(crate) current: Location,
    pub(crate) group: String,
    pub(crate) uniq: String,
    pub(crate) topic: String,
    pub(crate) queue_id: i32,
    pub(crate) keys: String,
    pub(crate) tags: String,
    pub(crate) born_ms: i64,
    /// When the original half message was stored (its age counts from here).
    pub(crate) stored_ms: i64,
    /// When checks (re)started: the store time, or the last re-arm.
    pub(crate) armed_ms: i64,
    /// Absolute time of the first check when the message set an immunity time.
    pub(crate) first_check_ms: Option<i64>,
    pub(crate) state: TxnState,
    /// Checks delivered since armed.
    pub(crate) checks: u32,
    pub(crate) last_check_ms: Option<i64>,
    pub(crate) last_answer: Option<(CheckAnswer, i64)>,
    /// The producer answered a check with commit (and the broker could not store it, or the
    /// transaction would not be open): kept through later answers and restarts, so the
    /// final action parks it instead of rolling it back.
    pub(crate) commit_answered: bool,
    pub(crate) decided_by: Option<Source>,
    pub(crate) resolved_ms: Option<i64>,
    /// Op-queue max offset seen when the decision in flight began (its op lands at or above).
    pub(crate) op_floor: u64,
    /// Op-queue offset of the decision, once durable.
    pub(crate) op_offset: Option<u64>,
}

impl Entry {
    /// A new open transaction from its original half message.
    pub(crate) fn open(rec: &HalfRecord) -> Self {
        let stored_ms = rec.origin_store_ms();
        Self {
            id: rec.id(),
            current: Location {
                half_offset: rec.queue_offset,
                phys_offset: rec.phys_offset,
                store_ms: rec.header.store_timestamp,
            },
            group: rec.group.clone(),
            uniq: rec.uniq.clone(),
            topic: rec.real_topic.clone(),
            queue_id: rec.real_qid,
            keys: rec.keys_label(),
            tags: rec.tags_label(),
            born_ms: rec.header.born_timestamp,
            stored_ms,
            armed_ms: stored_ms,
            first_check_ms: rec.immunity_ms().map(|i| stored_ms.saturating_add(i)),
            state: TxnState::Open,
            checks: 0,
            last_check_ms: None,
            last_answer: None,
            commit_answered: false,
            decided_by: None,
            resolved_ms: None,
            op_floor: 0,
            op_offset: None,
        }
    }

    /// A transaction known only from a carry-forward copy (its original is gone): the copy
    /// carries its check count and whether it was parked.
    pub(crate) fn from_copy(rec: &HalfRecord) -> Self {
        let mut e = Self::open(rec);
        e.checks = rec.copied_checks();
        if rec.copied_parked() {
            e.state = TxnState::Parked;
        }
        e
    }

    /// When the next check is due under `p`.
    fn next_check_ms(&self, p: &GroupPolicy) -> i64 {
        match self.last_check_ms {
            Some(t) => t.saturating_add(ms(p.check_interval)),
            None => self
                .first_check_ms
                .unwrap_or_else(|| self.armed_ms.saturating_add(ms(p.check_after))),
        }
    }
}

/// How often `Table::due` counts the due transactions past its limit.
const WAITING_RECOUNT_MS: i64 = 5_000;

pub(crate) fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What the table says about a decision request.
#[derive(Debug)]
pub(crate) enum Begin {
    /// The entry is now `Resolving`; make it durable. Carries a copy of the entry.
    Proceed(Box<Entry>),
    /// Already in the asked state.
    Done(TxnState),
    /// Refused.
    Refused(TxnError),
    /// Another decision is in flight.
    Wait,
    /// Not in memory.
    Missing,
}

/// Work the checker found due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Due {
    /// Apply the final action.
    Final(u64, Decision),
    /// Send a check.
    Check(u64),
}

/// The table.
#[derive(Debug)]
pub(crate) struct Table {
    /// Due transactions the last counting `due` call left for later (over its limit): checks
    /// that `max_checks_per_sec` is holding back. At most `WAITING_RECOUNT_MS` old.
    pub(crate) due_waiting: usize,
    /// When `due_waiting` was last counted (epoch ms).
    waiting_counted_ms: i64,
    /// Boxed: a B-tree filled in ascending order leaves its nodes about half full, which with
    /// ~300-byte entries inline doubled the memory per transaction (kept until forgotten,
    /// `resolved_max` of them by default). Boxed, a node slot is a pointer.
    entries: BTreeMap<u64, Box<Entry>>,
    /// Next half-queue offset the tailer reads.
    pub(crate) half_next: u64,
    resolved_order: VecDeque<u64>,
    live: Arc<AtomicUsize>,
    /// Something changed since the last checkpoint.
    pub(crate) dirty: bool,
    pull: HashMap<String, VecDeque<u64>>,
    queued: HashSet<u64>,
    /// Transactions whose carry-forward copy is being stored. A decision waits for the copy
    /// to land, so its op record always comes after it: a copy stored after the op would,
    /// once retention took the op's segment, be adopted as open at a restart without a
    /// checkpoint, and checked (and perhaps committed) a second time.
    carrying: HashSet<u64>,
    /// Half messages stored by sends but not yet in the table, and the half-queue offset
    /// from which they are counted (see [`Unindexed`]).
    unindexed: Option<Unindexed>,
}

/// Half messages a send stored that the table has not taken in yet (the tailer reads the
/// half queue once per tick; an END_TRANSACTION may adopt one first). `max_open` counts them
/// with the live transactions: counting the table alone let a burst of sends open five
/// times the limit before the tailer caught up.
#[derive(Debug, Clone)]
pub(crate) struct Unindexed {
    /// Counted by the put hook once stored, taken off when the entry enters the table.
    pub(crate) count: Arc<AtomicUsize>,
    /// Only halves at or above this half-queue offset count (`u64::MAX` until the state is
    /// rebuilt: halves stored before are found by the rebuild).
    pub(crate) from: Arc<std::sync::atomic::AtomicU64>,
    /// One past the highest half-queue offset a send stored: every counted half lies between
    /// the tailer's `half_next` and this, which bounds the count (a half the tailer skips,
    /// unreadable or deleted by retention, never enters the table and would stay counted).
    stored_next: Arc<std::sync::atomic::AtomicU64>,
}

impl Unindexed {
    pub(crate) fn new() -> Self {
        Self {
            count: Arc::new(AtomicUsize::new(0)),
            from: Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)),
            stored_next: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    /// A half message stored at `queue_offset` by a send.
    pub(crate) fn stored(&self, queue_offset: u64) {
        if queue_offset >= self.from.load(Ordering::Acquire) {
            self.stored_next
                .fetch_max(queue_offset.saturating_add(1), Ordering::AcqRel);
            self.count.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The tailer has read everything below `half_next`: no more than the offsets from there
    /// to the last stored half can be waiting.
    fn clamp(&self, half_next: u64) {
        let _ = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                let room = self
                    .stored_next
                    .load(Ordering::Acquire)
                    .saturating_sub(half_next);
                Some(n.min(usize::try_from(room).unwrap_or(usize::MAX)))
            });
    }

    /// The entry of the half at `queue_offset` entered the table.
    fn indexed(&self, queue_offset: u64) {
        if queue_offset >= self.from.load(Ordering::Acquire) {
            let _ = self
                .count
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n.saturating_sub(1))
                });
        }
    }

    /// From now on, halves at or above `from` count (the rebuild read everything below).
    pub(crate) fn start_at(&self, from: u64) {
        self.count.store(0, Ordering::Release);
        self.from.store(from, Ordering::Release);
    }

    pub(crate) fn get(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

impl Table {
    pub(crate) fn new(live: Arc<AtomicUsize>) -> Self {
        live.store(0, Ordering::Relaxed);
        Self {
            due_waiting: 0,
            waiting_counted_ms: i64::MIN,
            entries: BTreeMap::new(),
            half_next: 0,
            resolved_order: VecDeque::new(),
            live,
            dirty: false,
            pull: HashMap::new(),
            queued: HashSet::new(),
            carrying: HashSet::new(),
            unindexed: None,
        }
    }

    /// Marks an undecided transaction as being carried forward (decisions wait until
    /// [`Table::end_carry`]); false, and nothing marked, when it is decided or being decided.
    pub(crate) fn begin_carry(&mut self, id: u64) -> bool {
        let undecided = self
            .entries
            .get(&id)
            .is_some_and(|e| matches!(e.state, TxnState::Open | TxnState::Parked));
        undecided && self.carrying.insert(id)
    }

    /// The carry-forward copy landed (or failed): decisions may proceed.
    pub(crate) fn end_carry(&mut self, id: u64) {
        self.carrying.remove(&id);
    }

    pub(crate) fn get(&self, id: u64) -> Option<&Entry> {
        self.entries.get(&id).map(|e| &**e)
    }

    /// The first offset in `[from, end)` with no entry (`end` when every one has one).
    pub(crate) fn first_unknown(&self, from: u64, end: u64) -> u64 {
        let mut next = from;
        for &id in self.entries.range(from..end).map(|(id, _)| id) {
            if id != next {
                break;
            }
            next += 1;
        }
        next
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values().map(|e| &**e)
    }

    /// Entries whose half offset is above `after` (all with `None`), in offset order: a page
    /// after a cursor starts there instead of walking the table from its start.
    pub(crate) fn entries_after(&self, after: Option<u64>) -> impl Iterator<Item = &Entry> {
        let from = match after {
            Some(a) => std::ops::Bound::Excluded(a),
            None => std::ops::Bound::Unbounded,
        };
        self.entries
            .range((from, std::ops::Bound::Unbounded))
            .map(|(_, e)| &**e)
    }

    /// The tailer moved `half_next`: bounds the halves counted as waiting (see [`Unindexed`]).
    pub(crate) fn clamp_unindexed(&self) {
        if let Some(u) = &self.unindexed {
            u.clamp(self.half_next);
        }
    }

    /// Counts the halves stored but not yet taken in (see [`Unindexed`]).
    pub(crate) fn track_unindexed(&mut self, unindexed: Unindexed) {
        self.unindexed = Some(unindexed);
    }

    /// Adds an entry unless its identity is known; true when added.
    pub(crate) fn insert(&mut self, e: Entry) -> bool {
        if self.entries.contains_key(&e.id.half_offset) {
            return false;
        }
        if let Some(u) = &self.unindexed {
            u.indexed(e.id.half_offset);
        }
        if e.state.is_live() {
            self.live.fetch_add(1, Ordering::Relaxed);
        } else {
            self.resolved_order.push_back(e.id.half_offset);
        }
        self.entries.insert(e.id.half_offset, Box::new(e));
        self.dirty = true;
        true
    }

    /// A carry-forward copy was stored: the bytes now live there.
    /// Only a copy naming the transaction's whole identity (both offsets) moves it: a record
    /// naming the queue offset alone is not this transaction's copy.
    pub(crate) fn relocate(&mut self, id: TxnId, to: Location) {
        if let Some(e) = self.entries.get_mut(&id.half_offset) {
            if e.id != id {
                tracing::warn!(
                    half_offset = id.half_offset,
                    commit_log_offset = id.commit_log_offset,
                    expected = e.id.commit_log_offset,
                    "a carry-forward copy names another transaction's half message; ignored"
                );
                return;
            }
            if to.half_offset > e.current.half_offset {
                e.current = to;
                self.dirty = true;
            }
        }
    }

    fn set_state(&mut self, id: u64, state: TxnState) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        match (e.state.is_live(), state.is_live()) {
            (true, false) => {
                self.live.fetch_sub(1, Ordering::Relaxed);
                self.resolved_order.push_back(id);
            }
            (false, true) => {
                self.live.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        e.state = state;
        self.dirty = true;
    }

    /// Starts a decision: the transition table decides whether it may proceed.
    pub(crate) fn begin(&mut self, id: u64, decision: Decision, op_floor: u64) -> Begin {
        let carrying = self.carrying.contains(&id);
        let Some(e) = self.entries.get_mut(&id) else {
            return Begin::Missing;
        };
        match plan(e.state, decision) {
            Plan::Apply if carrying => Begin::Wait,
            Plan::Apply => {
                let from_parked = e.state == TxnState::Parked;
                e.op_floor = op_floor;
                let snapshot = e.clone();
                self.set_state(
                    id,
                    TxnState::Resolving {
                        decision,
                        from_parked,
                    },
                );
                Begin::Proceed(snapshot)
            }
            Plan::Already => Begin::Done(e.state),
            Plan::Wait => Begin::Wait,
            Plan::Refuse => Begin::Refused(TxnError::Conflict {
                requested: decision,
                state: e.state,
                decided_by: e.decided_by,
            }),
        }
    }

    /// The decision is durable.
    pub(crate) fn complete(
        &mut self,
        id: u64,
        decision: Decision,
        by: Source,
        op_offset: u64,
        now: i64,
    ) {
        self.set_state(id, decision.target());
        self.queued.remove(&id);
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        e.op_offset = Some(op_offset);
        if decision == Decision::Rearm {
            e.checks = 0;
            e.last_check_ms = None;
            e.first_check_ms = None;
            e.armed_ms = now;
            e.decided_by = None;
        } else {
            e.decided_by = Some(by);
            if decision.target().is_final() {
                e.resolved_ms = Some(now);
            }
        }
    }

    /// The decision's append failed: back to where it came from.
    pub(crate) fn revert(&mut self, id: u64) {
        if let Some(TxnState::Resolving { from_parked, .. }) =
            self.entries.get(&id).map(|e| e.state)
        {
            let back = if from_parked {
                TxnState::Parked
            } else {
                TxnState::Open
            };
            self.set_state(id, back);
        }
    }

    /// Applies a replayed op record (restart): the decision is already durable.
    pub(crate) fn replay(
        &mut self,
        id: u64,
        decision: Decision,
        by: Option<Source>,
        op_offset: u64,
        now: i64,
    ) {
        let Some((state, applied)) = self.entries.get(&id).map(|e| (e.state, e.op_offset)) else {
            return;
        };
        // Already in the state the checkpoint saved: replayed again, a park and a re-arm
        // before it reset its check count and arming, and checks past `check_max` went out.
        if applied.is_some_and(|o| op_offset <= o) {
            return;
        }
        if plan(state, decision) == Plan::Apply {
            self.complete(id, decision, by.unwrap_or(Source::Recovery), op_offset, now);
        }
    }

    /// Records a producer's answer to a check, while the transaction is undecided: an answer
    /// to a decided one changes nothing (a contrary one is refused), and shown as its "last
    /// answer" it read as though the producer had asked for what did not happen.
    pub(crate) fn note_answer(&mut self, id: u64, answer: CheckAnswer, now: i64) {
        // Resolving: a decision is being stored; an answer then is too late to matter.
        let undecided = |s: TxnState| matches!(s, TxnState::Open | TxnState::Parked);
        if let Some(e) = self.entries.get_mut(&id).filter(|e| undecided(e.state)) {
            e.last_answer = Some((answer, now));
            if answer == CheckAnswer::Commit && !e.commit_answered {
                e.commit_answered = true;
                self.dirty = true;
            }
        }
    }

    /// Open transactions whose check or final action is due, oldest first, at most `limit`
    /// (the rest are found again at the next tick, and counted in `due_waiting`).
    ///
    /// This walks every transaction under the table lock once per tick (100 000 and more), so
    /// the walk allocates nothing and hashes nothing on the common path: one policy per group,
    /// borrowed names, and the pull queue consulted only when something is queued. A
    /// transaction whose check waits to be pulled is due only for its final action by age.
    ///
    /// Transactions of the groups in `skip` (refused this tick) are passed over.
    pub(crate) fn due(
        &mut self,
        now: i64,
        cfg: &TxnConfig,
        limit: usize,
        skip: &HashSet<String>,
    ) -> Vec<Due> {
        let mut policies: HashMap<&str, GroupPolicy> = HashMap::new();
        let mut last: Option<(&str, GroupPolicy)> = None;
        let mut out = Vec::new();
        let mut waiting = 0;
        // Counting past the limit walks every entry (with 100 000 due, a few ms by estimate,
        // the entries being spread over tens of MB), so it is done only every
        // WAITING_RECOUNT_MS, and when a backlog starts (nothing was waiting at the last
        // count).
        let counting = self.due_waiting == 0
            || now.saturating_sub(self.waiting_counted_ms) >= WAITING_RECOUNT_MS;
        let mut stopped = false;
        for e in self.entries.values() {
            if e.state != TxnState::Open || (!skip.is_empty() && skip.contains(&e.group)) {
                continue;
            }
            let queued = !self.queued.is_empty() && self.queued.contains(&e.id.half_offset);
            let p = match &last {
                Some((group, p)) if *group == e.group => p,
                _ => {
                    let p = policies
                        .entry(e.group.as_str())
                        .or_insert_with(|| cfg.policy(&e.group))
                        .clone();
                    &last.insert((e.group.as_str(), p)).1
                }
            };
            // From the arming: a re-armed (parked) transaction gets its checks again first.
            let too_old = now.saturating_sub(e.armed_ms) >= ms(p.max_age);
            // A check waiting to be pulled is not sent again, but the age limit still ends
            // the transaction: a group whose producers never poll kept it open for good.
            if !too_old && (queued || now < e.next_check_ms(p)) {
                continue;
            }
            if out.len() >= limit {
                if !counting {
                    stopped = true;
                    break;
                }
                // Counted, not taken: the walk goes on only to measure what waits.
                waiting += 1;
                continue;
            }
            let id = e.id.half_offset;
            if e.checks >= p.check_max || too_old {
                let d = match p.final_action {
                    // The producer answered commit and storing it failed (the transaction
                    // would not be open otherwise): that is never turned into a rollback.
                    // Kept, it waits for an operator's forced commit or a rearm.
                    _ if e.commit_answered => Decision::Park,
                    FinalAction::Rollback => Decision::Discard,
                    FinalAction::Keep => Decision::Park,
                };
                out.push(Due::Final(id, d));
            } else {
                out.push(Due::Check(id));
            }
        }
        if !stopped {
            self.due_waiting = waiting;
            self.waiting_counted_ms = now;
        }
        out
    }

    /// A check was (about to be) delivered: count it against `check_max`. False when the
    /// transaction is no longer open (then nothing may be sent).
    /// Returns the count as the check journal records it.
    pub(crate) fn count_check(&mut self, id: u64, now: i64) -> Option<Counted> {
        let e = self
            .entries
            .get_mut(&id)
            .filter(|e| e.state == TxnState::Open)?;
        e.checks += 1;
        e.last_check_ms = Some(now);
        self.dirty = true;
        Some(Counted {
            half_offset: id,
            armed_ms: e.armed_ms,
            checks: e.checks,
            at_ms: now,
        })
    }

    /// Restart: raises an undecided transaction's check count to a journalled one (never
    /// lowers it). The caller decides which records belong to the entry's arming.
    pub(crate) fn apply_counted(&mut self, r: &Counted) -> bool {
        let Some(e) = self
            .entries
            .get_mut(&r.half_offset)
            .filter(|e| e.state.is_live())
        else {
            return false;
        };
        e.checks = e.checks.max(r.checks);
        e.last_check_ms = Some(e.last_check_ms.map_or(r.at_ms, |t| t.max(r.at_ms)));
        self.dirty = true;
        true
    }

    /// The counted check could not be delivered after all.
    pub(crate) fn uncount_check(&mut self, id: u64) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.checks = e.checks.saturating_sub(1);
            self.dirty = true;
        }
    }

    /// A counted check that was never offered (its route refused an earlier one this tick):
    /// the count and the check time go back to what they were, so it is due again at once.
    pub(crate) fn unclaim_check(&mut self, id: u64, last_check_ms: Option<i64>) {
        self.uncount_check(id);
        if let Some(e) = self.entries.get_mut(&id) {
            e.last_check_ms = last_check_ms;
        }
    }

    /// Nobody could be asked: try again one interval later, without using the budget.
    pub(crate) fn postpone_check(&mut self, id: u64, now: i64) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.last_check_ms = Some(now);
        }
    }

    /// Puts a taken check back at the head of its group's pull queue (it was not handed out).
    pub(crate) fn requeue_pull(&mut self, group: &str, id: u64) {
        if self.queued.insert(id) {
            self.pull
                .entry(group.to_owned())
                .or_default()
                .push_front(id);
        }
    }

    /// Queues a check for a pull-mode group (at most `cap` per group, once per transaction).
    pub(crate) fn queue_pull(&mut self, group: &str, id: u64, cap: usize) -> bool {
        let q = self.pull.entry(group.to_owned()).or_default();
        if q.len() >= cap {
            // Drop ids decided while queued before judging the queue full.
            q.retain(|i| self.queued.contains(i));
        }
        if q.len() >= cap || self.queued.contains(&id) {
            return false;
        }
        q.push_back(id);
        self.queued.insert(id);
        true
    }

    /// Takes up to `max` queued checks of `group` whose transactions are still open, counting
    /// each as delivered.
    pub(crate) fn take_pull(&mut self, group: &str, max: usize, now: i64) -> Vec<(Entry, Counted)> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(id) = self.pull.get_mut(group).and_then(VecDeque::pop_front) else {
                break;
            };
            // Not queued any more (decided or parked while it waited; `complete` leaves the
            // id here): a stale entry, or a second one for a transaction re-armed and queued
            // again, which handed out two checks at once.
            if !self.queued.remove(&id) {
                continue;
            }
            if let Some(c) = self.count_check(id, now) {
                if let Some(e) = self.entries.get(&id) {
                    out.push(((**e).clone(), c));
                }
            }
        }
        out
    }

    /// Undecided transactions (what a checkpoint lists).
    pub(crate) fn live_count(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Checks waiting to be pulled, all groups.
    pub(crate) fn pending_pulls(&self) -> usize {
        self.queued.len()
    }

    /// Forgets decided entries older than `retention`, and the oldest beyond `max`; never one
    /// at or above `half_next` (a restart would rescan it).
    pub(crate) fn forget(&mut self, now: i64, retention_ms: i64, max: usize) -> usize {
        let mut n = 0;
        while let Some(&id) = self.resolved_order.front() {
            let Some(e) = self.entries.get(&id) else {
                self.resolved_order.pop_front();
                continue;
            };
            let old = e
                .resolved_ms
                .is_none_or(|t| now.saturating_sub(t) >= retention_ms);
            let over = self.resolved_order.len() > max;
            if !(old || over) || id >= self.half_next || e.state.is_live() {
                break;
            }
            self.resolved_order.pop_front();
            self.entries.remove(&id);
            n += 1;
        }
        n
    }

    /// What a checkpoint must hold: see `checkpoint` for why `op_next` is computed this way.
    pub(crate) fn snapshot(&self, op_max: u64) -> CheckpointData {
        let mut op_next = op_max;
        let mut live = Vec::new();
        for e in self.entries.values() {
            match e.state {
                TxnState::Resolving { .. } => op_next = op_next.min(e.op_floor),
                s if s.is_final() && e.id.half_offset >= self.half_next => {
                    op_next = op_next.min(e.op_offset.unwrap_or(0));
                }
                _ => {}
            }
            if e.state.is_live() {
                live.push(LiveEntry::from_entry(e));
            }
        }
        CheckpointData {
            version: crate::checkpoint::VERSION,
            half_next: self.half_next,
            op_next,
            live,
        }
    }

    /// Entries held (live and decided): what [`Table::gauges`] walks.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Gauges for [`crate::TxnMetrics`] (walks every entry).
    pub(crate) fn gauges(&self) -> TableGauges {
        let (mut open, mut parked, mut resolving, mut done) = (0, 0, 0, 0);
        let mut oldest: Option<i64> = None;
        // Parked transactions wait for an operator, not for their producer: counted in
        // `parked`, not in the age of the oldest open one (which then only grew).
        let mut older = |ms: i64| oldest = Some(oldest.map_or(ms, |o: i64| o.min(ms)));
        for e in self.entries.values() {
            match e.state {
                TxnState::Open => {
                    open += 1;
                    older(e.stored_ms);
                }
                TxnState::Resolving { .. } => {
                    resolving += 1;
                    older(e.stored_ms);
                }
                TxnState::Parked => parked += 1,
                _ => done += 1,
            }
        }
        TableGauges {
            open,
            parked,
            resolving,
            done,
            oldest_ms: oldest,
            pending_pulls: self.pending_pulls() as u64,
            due_waiting: self.due_waiting as u64,
        }
    }
}

/// The transaction table's gauges, walked under its lock.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TableGauges {
    pub(crate) open: u64,
    pub(crate) parked: u64,
    pub(crate) resolving: u64,
    pub(crate) done: u64,
    /// Store time of the oldest open or resolving transaction.
    pub(crate) oldest_ms: Option<i64>,
    pub(crate) pending_pulls: u64,
    pub(crate) due_waiting: u64,
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
