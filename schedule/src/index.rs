//! The timer index in memory: the near window, the memtable, the open runs and the counters,
//! under one lock. Every operation here is in memory and short; file reads for window loads
//! and far lookups happen outside the lock against a snapshot of the run list, and are
//! installed only if that list did not change meanwhile (`generation`).
//!
//! - `near`: every indexed timer with key < `window_end`, with its release state. Timers
//!   leave it only once the watermark passes them, so a crash snapshot can name releases done
//!   above the watermark.
//! - `memtable`: entries indexed since the last checkpoint (timers and tombstones), sorted;
//!   a checkpoint writes it as a run. `flushing` is the one being written, still visible.
//! - `runs`: everything indexed before the last checkpoint.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::entry::{DiskEntry, Key, Kind};
use crate::run::Run;

/// Most dropped timers remembered once they left the window (each 16 bytes in memory and a
/// pair in the state file). Drops are failures that are logged; past this many the oldest
/// reads as gone again.
pub(crate) const MAX_DROPPED_KEPT: usize = 100_000;

/// Release state of a timer in the near window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// Waiting for its time.
    Pending,
    /// Taken by the deliverer; its release append is in flight.
    InFlight,
    /// A cancel is writing its marker; the deliverer leaves it alone.
    Cancelling,
    /// Cancelled.
    Cancelled,
    /// Released.
    Done,
    /// Dropped as undeliverable (its record unreadable or unparsable, no valid real queue,
    /// or refused by the store): it never reaches its topic, and cancels and listings say so
    /// instead of "delivered" or, once it left memory, "cancelled".
    Dropped,
}

/// A timer in the near window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    /// `None` for a tombstone whose timer has not been seen (yet).
    pub(crate) kind: Option<Kind>,
    pub(crate) size: u32,
    pub(crate) state: SlotState,
    /// Released possibly before a crash: check for an earlier release first.
    pub(crate) verify: bool,
}

/// What the memtable knows of a key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MemEntry {
    pub(crate) target: Option<(Kind, u32)>,
    pub(crate) tombstone: bool,
}

/// A timer taken for release.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Due {
    pub(crate) key: Key,
    pub(crate) kind: Kind,
    pub(crate) size: u32,
    pub(crate) verify: bool,
}

/// How a release ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// Stored in its real topic (or rolled).
    Done,
    /// Given up as undeliverable.
    Dropped,
    /// Try again later.
    Retry,
}

/// Where a key stands, for cancel and list.
#[derive(Debug, Clone)]
pub(crate) enum Where {
    /// In the near window.
    Near(SlotState),
    /// Below the window and gone from it: released or cancelled.
    Gone,
    /// Beyond the window: look in the memtable result and the runs.
    Far {
        mem: MemEntry,
        runs: Vec<Arc<Run>>,
        generation: u64,
    },
}

/// The outcome of starting a cancel under the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BeginCancel {
    /// Marked; write the marker, then call `finish_cancel`.
    Started,
    /// Its state now.
    Not(SlotState),
    /// Released or cancelled earlier.
    Gone,
    /// The runs changed under a far lookup: look again.
    Retry,
}

/// A window load to do outside the lock.
#[derive(Debug, Clone)]
pub(crate) struct LoadPlan {
    pub(crate) from: Key,
    pub(crate) to: Key,
    pub(crate) runs: Vec<Arc<Run>>,
    pub(crate) generation: u64,
}

/// A checkpoint's consistent view.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) memtable: Arc<BTreeMap<Key, MemEntry>>,
    pub(crate) enqueue: BTreeMap<String, u64>,
    pub(crate) w: Key,
    pub(crate) done_above_w: Vec<Key>,
    /// Timers dropped as undeliverable, newest `MAX_DROPPED_KEPT` (see `Inner::dropped_known`).
    pub(crate) dropped: Vec<Key>,
    /// Unfinished timers below `w` (see [`Inner::floor`]).
    pub(crate) late: Vec<(Key, Kind, u32)>,
    pub(crate) pending: BTreeMap<String, i64>,
    pub(crate) runs: Vec<Arc<Run>>,
    /// The check horizon still needed (see [`Inner::verify_until`]).
    pub(crate) verify_until: i64,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) near: BTreeMap<Key, Slot>,
    pub(crate) window_end: Key,
    /// No Pending slot lies below this key.
    scan_from: Key,
    memtable: BTreeMap<Key, MemEntry>,
    flushing: Option<Arc<BTreeMap<Key, MemEntry>>>,
    pub(crate) runs: Vec<Arc<Run>>,
    generation: u64,
    cancelling: HashSet<Key>,
    pub(crate) enqueue: BTreeMap<String, u64>,
    pub(crate) pending: BTreeMap<String, i64>,
    /// Timers firing at or before this may have been released before a crash unrecorded: the
    /// start time after an unclean stop, or the horizon saved by a clean stop that came before
    /// they were all checked (`State::verify_until`). `i64::MIN` when none.
    restart_ms: i64,
    /// Releases done above the saved watermark, from the state file.
    done_known: HashSet<Key>,
    /// Timers dropped as undeliverable, also once they left the window (saved, newest
    /// `MAX_DROPPED_KEPT`): below the watermark a key reads as "gone", which a cancel would
    /// take for released or cancelled.
    dropped_known: BTreeSet<Key>,
    /// The first catch-up over the timer queues is complete.
    pub(crate) ready: bool,
    /// Above every timer that has left `near` (and, at open, the saved watermark). The saved
    /// watermark never goes below it: a lower one would load those finished timers again from
    /// the runs at the next start, as pending, and a released one would be released twice. A
    /// timer indexed late (already due when read, or rescheduled to now) with a key below it
    /// is saved on its own in the state's `late` list instead. Only evictions move it, so a
    /// watermark taken at the window's end while the window was empty does not make every
    /// timer indexed next "late".
    floor: Key,
}

/// The index: see the module docs.
#[derive(Debug)]
pub(crate) struct TimerIndex {
    pub(crate) inner: Mutex<Inner>,
}

impl TimerIndex {
    /// An index over `runs`, with the window starting at the saved watermark `w`.
    pub(crate) fn new(
        runs: Vec<Arc<Run>>,
        w: Key,
        enqueue: BTreeMap<String, u64>,
        pending: BTreeMap<String, i64>,
        done_known: HashSet<Key>,
        dropped_known: BTreeSet<Key>,
        restart_ms: i64,
    ) -> Self {
        let mut pending = pending;
        // Older checkpoints kept topics at zero (see `Inner::lose_pending`).
        pending.retain(|_, n| *n > 0);
        Self {
            inner: Mutex::new(Inner {
                near: BTreeMap::new(),
                window_end: w,
                scan_from: w,
                memtable: BTreeMap::new(),
                flushing: None,
                runs,
                generation: 0,
                cancelling: HashSet::new(),
                enqueue,
                pending,
                restart_ms,
                done_known,
                dropped_known,
                ready: false,
                floor: w,
            }),
        }
    }

    /// Puts back the unfinished timers a checkpoint saved below its watermark (`State::late`).
    pub(crate) fn restore_late(&self, late: &[(Key, Kind, u32)]) {
        let mut g = self.inner.lock();
        for &(key, kind, size) in late {
            let slot = g.new_slot(key, Some(kind), size);
            if slot.state == SlotState::Pending {
                g.note_pending(key);
            }
            g.near.insert(key, slot);
        }
    }
}

impl Inner {
    fn new_slot(&self, key: Key, kind: Option<Kind>, size: u32) -> Slot {
        let state = if self.dropped_known.contains(&key) {
            SlotState::Dropped
        } else if self.done_known.contains(&key) {
            SlotState::Done
        } else if self.cancelling.contains(&key) {
            SlotState::Cancelling
        } else {
            SlotState::Pending
        };
        Slot {
            kind,
            size,
            state,
            verify: state == SlotState::Pending && key.fire_ms <= self.restart_ms,
        }
    }

    fn note_pending(&mut self, key: Key) {
        if key < self.scan_from {
            self.scan_from = key;
        }
    }

    /// Indexes a timer read from a timer queue. True when it landed in the near window.
    pub(crate) fn insert_timer(&mut self, key: Key, kind: Kind, size: u32, topic: &str) -> bool {
        self.memtable.entry(key).or_default().target = Some((kind, size));
        *self.pending.entry(topic.to_owned()).or_default() += 1;
        if key >= self.window_end {
            return false;
        }
        let slot = self.new_slot(key, Some(kind), size);
        match self.near.entry(key) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(slot);
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                if o.get().kind.is_none() {
                    o.get_mut().kind = Some(kind);
                    o.get_mut().size = size;
                }
            }
        }
        if slot.state == SlotState::Pending {
            self.note_pending(key);
        }
        true
    }

    /// One timer of `topic` is no longer pending. A topic at zero leaves the map: it is saved
    /// with every checkpoint and shown to operators, and topics come and go.
    fn lose_pending(&mut self, topic: &str) {
        if let Some(count) = self.pending.get_mut(topic) {
            *count -= 1;
            if *count <= 0 {
                self.pending.remove(topic);
            }
        }
    }

    /// Indexes a cancel marker (or the cancel implied by a rescheduled copy).
    pub(crate) fn apply_tombstone(&mut self, key: Key, topic: &str) {
        self.memtable.entry(key).or_default().tombstone = true;
        self.lose_pending(topic);
        if key >= self.window_end {
            return;
        }
        let slot = self.near.entry(key).or_insert(Slot {
            kind: None,
            size: 0,
            state: SlotState::Cancelled,
            verify: false,
        });
        // A cancel whose marker is indexed before the cancel ends (its op task has not run
        // `finish_cancel` yet) is done too: left Cancelling, a checkpoint in between saved a
        // late timer as still to release, while the marker's tombstone went to a run below
        // the watermark that no start reads again, and the timer was released after a
        // restart although its cancel was answered `cancelled`.
        if matches!(slot.state, SlotState::Pending | SlotState::Cancelling) {
            slot.state = SlotState::Cancelled;
        }
    }

    /// Takes up to `max` timers due at `now`, in key order, marking them in flight.
    pub(crate) fn take_due(&mut self, now: i64, max: usize) -> Vec<Due> {
        let mut out = Vec::new();
        let mut stop = self.window_end;
        for (key, slot) in self.near.range_mut(self.scan_from..) {
            if key.fire_ms > now || out.len() >= max {
                stop = *key;
                break;
            }
            if slot.state == SlotState::Pending {
                slot.state = SlotState::InFlight;
                out.push(Due {
                    key: *key,
                    kind: slot.kind.unwrap_or(Kind::Fire),
                    size: slot.size,
                    verify: slot.verify,
                });
            }
        }
        self.scan_from = stop;
        out
    }

    /// Fire time of the first pending timer in the window.
    pub(crate) fn next_due(&self) -> Option<i64> {
        self.near
            .range(self.scan_from..)
            .find(|(_, s)| s.state == SlotState::Pending)
            .map(|(k, _)| k.fire_ms)
    }

    /// Records how a release ended; `topic` loses one pending timer when done.
    pub(crate) fn complete(&mut self, key: Key, how: Released, topic: Option<&str>) {
        let Some(slot) = self.near.get_mut(&key) else {
            return;
        };
        match how {
            Released::Done | Released::Dropped => {
                slot.state = if how == Released::Done {
                    SlotState::Done
                } else {
                    SlotState::Dropped
                };
                if let Some(topic) = topic {
                    self.lose_pending(topic);
                }
            }
            Released::Retry => {
                slot.state = SlotState::Pending;
                self.note_pending(key);
            }
        }
    }

    /// A release of `key` failed in a way that leaves unknown whether its copy reached the
    /// disk (a failed sync or write, after which the store is fenced): the timer is checked in
    /// its real topic before any later release or cancel, and the check horizon saved by
    /// checkpoints (also clean stops) covers it, so a restart cannot release it a second
    /// time unchecked.
    pub(crate) fn suspect(&mut self, key: Key) {
        if let Some(slot) = self.near.get_mut(&key) {
            slot.verify = true;
        }
        self.restart_ms = self.restart_ms.max(key.fire_ms);
    }

    /// Drops finished timers from the front of the window and returns the watermark: the
    /// first unfinished key (or the window end).
    pub(crate) fn advance_w(&mut self) -> Key {
        while let Some(entry) = self.near.first_entry() {
            let state = entry.get().state;
            let finished = matches!(
                state,
                SlotState::Done | SlotState::Cancelled | SlotState::Dropped
            );
            if !finished || !self.ready {
                return *entry.key();
            }
            self.floor = self.floor.max(entry.key().next());
            let (key, _) = entry.remove_entry();
            if state == SlotState::Dropped {
                self.keep_dropped(key);
            }
        }
        self.window_end
    }

    /// A window load when the window reaches less than half `near_ms` ahead of `now`.
    pub(crate) fn load_plan(&self, now: i64, near_ms: i64) -> Option<LoadPlan> {
        if self.window_end.fire_ms > now.saturating_add(near_ms / 2) {
            return None;
        }
        Some(LoadPlan {
            from: self.window_end,
            to: Key::at(now.saturating_add(near_ms)),
            runs: self.runs.clone(),
            generation: self.generation,
        })
    }

    /// Installs a window load (`entries` read from `plan.runs`, complete below `cap`),
    /// keeping at most `limit` keys. False when the runs changed meanwhile: plan again.
    pub(crate) fn install(
        &mut self,
        plan: &LoadPlan,
        entries: Vec<DiskEntry>,
        limit: usize,
        cap: Option<Key>,
    ) -> bool {
        if plan.generation != self.generation || plan.from != self.window_end {
            return false;
        }
        let to = cap.map_or(plan.to, |c| c.min(plan.to)).max(plan.from);
        let mut merged: BTreeMap<Key, MemEntry> = BTreeMap::new();
        for e in entries {
            let m = merged.entry(e.key).or_default();
            match e.kind {
                Kind::Tombstone => m.tombstone = true,
                k => m.target = Some((k, e.size)),
            }
        }
        let tables = self
            .flushing
            .iter()
            .map(|f| f.as_ref())
            .chain([&self.memtable]);
        for table in tables {
            for (k, v) in table.range(plan.from..to) {
                let m = merged.entry(*k).or_default();
                m.tombstone |= v.tombstone;
                m.target = m.target.or(v.target);
            }
        }
        let new_end = match merged.range(..to).nth(limit.max(1)) {
            Some((k, _)) => *k,
            None => to,
        };
        for (key, m) in merged.range(..new_end) {
            self.install_one(*key, m);
        }
        self.window_end = new_end;
        true
    }

    fn install_one(&mut self, key: Key, m: &MemEntry) {
        if self.near.contains_key(&key) {
            return;
        }
        let kind = m.target.map(|t| t.0);
        let size = m.target.map_or(0, |t| t.1);
        let mut slot = self.new_slot(key, kind, size);
        if m.tombstone {
            slot.state = SlotState::Cancelled;
            slot.verify = false;
        } else if kind.is_none() {
            return;
        }
        if slot.state == SlotState::Pending {
            self.note_pending(key);
        }
        self.near.insert(key, slot);
    }

    /// Remembers a dropped timer that leaves the window, forgetting the oldest past the bound.
    fn keep_dropped(&mut self, key: Key) {
        self.dropped_known.insert(key);
        while self.dropped_known.len() > MAX_DROPPED_KEPT {
            self.dropped_known.pop_first();
        }
    }

    /// Where a key stands (see [`Where`]).
    pub(crate) fn locate(&self, key: Key) -> Where {
        if let Some(slot) = self.near.get(&key) {
            return Where::Near(slot.state);
        }
        if self.dropped_known.contains(&key) {
            return Where::Near(SlotState::Dropped);
        }
        if key < self.window_end {
            return Where::Gone;
        }
        // Released above the watermark before the last stop (saved by the checkpoint): after
        // a start it has no slot until the window is loaded again, and the runs still hold it
        // as pending.
        if self.done_known.contains(&key) {
            return Where::Near(SlotState::Done);
        }
        let mut mem = MemEntry::default();
        for table in self
            .flushing
            .iter()
            .map(|f| f.as_ref())
            .chain([&self.memtable])
        {
            if let Some(v) = table.get(&key) {
                mem.tombstone |= v.tombstone;
                mem.target = mem.target.or(v.target);
            }
        }
        if self.cancelling.contains(&key) {
            mem.tombstone = true;
        }
        Where::Far {
            mem,
            runs: self.runs.clone(),
            generation: self.generation,
        }
    }

    /// Marks a pending key as being cancelled, so nothing releases it meanwhile.
    pub(crate) fn begin_cancel(&mut self, key: Key, far_generation: Option<u64>) -> BeginCancel {
        if let Some(slot) = self.near.get_mut(&key) {
            return match slot.state {
                SlotState::Pending => {
                    slot.state = SlotState::Cancelling;
                    BeginCancel::Started
                }
                other => BeginCancel::Not(other),
            };
        }
        if self.dropped_known.contains(&key) {
            return BeginCancel::Not(SlotState::Dropped);
        }
        if key < self.window_end {
            return BeginCancel::Gone;
        }
        if self.done_known.contains(&key) {
            return BeginCancel::Not(SlotState::Done);
        }
        if far_generation != Some(self.generation) {
            return BeginCancel::Retry;
        }
        if !self.cancelling.insert(key) {
            return BeginCancel::Not(SlotState::Cancelling);
        }
        BeginCancel::Started
    }

    /// Whether the timer may have been released before a crash without this index knowing:
    /// pending and due by the check horizon (`restart_ms`; the deliverer checks such a timer
    /// in the real topic before releasing it; a cancel must too).
    pub(crate) fn may_be_released(&self, key: Key) -> bool {
        match self.near.get(&key) {
            Some(slot) => slot.verify,
            None => key.fire_ms <= self.restart_ms && !self.done_known.contains(&key),
        }
    }

    /// Ends a cancel begun with [`Inner::begin_cancel`] for a timer found released before a
    /// crash: no marker is written, and the timer counts as released (as the deliverer's own
    /// check would have left it).
    pub(crate) fn finish_cancel_released(&mut self, key: Key, topic: &str) {
        self.cancelling.remove(&key);
        let begun = self
            .near
            .get(&key)
            .is_some_and(|s| s.state == SlotState::Cancelling);
        if begun {
            self.complete(key, Released::Done, Some(topic));
        }
    }

    /// Ends a cancel begun with [`Inner::begin_cancel`]: `written` says whether the marker is
    /// durable. The pending count drops when the marker is indexed, not here.
    pub(crate) fn finish_cancel(&mut self, key: Key, written: bool) {
        let was_far = self.cancelling.remove(&key);
        if written && was_far {
            self.memtable.entry(key).or_default().tombstone = true;
        }
        if let Some(slot) = self.near.get_mut(&key) {
            if slot.state == SlotState::Cancelling {
                slot.state = if written {
                    SlotState::Cancelled
                } else {
                    SlotState::Pending
                };
            }
        }
        if !written
            && self
                .near
                .get(&key)
                .is_some_and(|s| s.state == SlotState::Pending)
        {
            self.note_pending(key);
        }
    }

    /// The checkpoint view: moves the memtable to `flushing` (still visible) and returns it
    /// with the progress that goes with it.
    pub(crate) fn snapshot(&mut self) -> Snapshot {
        let memtable = Arc::new(std::mem::take(&mut self.memtable));
        debug_assert!(self.flushing.is_none(), "one checkpoint at a time");
        self.flushing = Some(Arc::clone(&memtable));
        let first_unfinished = self.advance_w();
        let w = first_unfinished.max(self.floor);
        // Releases the state file listed that the window has not loaded again stay listed:
        // dropped, a stop before the first window load would forget them, and the next start
        // would load those timers from the runs as pending and release them a second time.
        let mut done_above_w: Vec<Key> = self
            .near
            .range(w..)
            .filter(|(_, s)| s.state == SlotState::Done)
            .map(|(k, _)| *k)
            .chain(
                self.done_known
                    .iter()
                    .filter(|k| **k >= w && !self.near.contains_key(k))
                    .copied(),
            )
            .collect();
        done_above_w.sort_unstable();
        let late = self
            .near
            .range(..w)
            .filter(|(_, s)| {
                !matches!(
                    s.state,
                    SlotState::Done | SlotState::Cancelled | SlotState::Dropped
                )
            })
            .filter_map(|(k, s)| s.kind.map(|kind| (*k, kind, s.size)))
            .collect();
        let mut dropped: Vec<Key> = self
            .near
            .iter()
            .filter(|(_, s)| s.state == SlotState::Dropped)
            .map(|(k, _)| *k)
            .chain(self.dropped_known.iter().copied())
            .collect();
        dropped.sort_unstable();
        dropped.dedup();
        let excess = dropped.len().saturating_sub(MAX_DROPPED_KEPT);
        dropped.drain(..excess);
        Snapshot {
            memtable,
            enqueue: self.enqueue.clone(),
            w,
            done_above_w,
            dropped,
            late,
            pending: self.pending.clone(),
            runs: self.runs.clone(),
            // A late timer may have been released before a crash: the horizon stays until
            // it is finished too.
            verify_until: self.verify_until(first_unfinished),
        }
    }

    /// The check horizon a checkpoint saves, given watermark `w`: the start time after an
    /// unclean start, kept (across clean stops too) until every timer due by then is indexed
    /// and finished — `ready`, and `w` past it. Until then some may still be unchecked.
    fn verify_until(&self, w: Key) -> i64 {
        if self.ready && w.fire_ms > self.restart_ms {
            i64::MIN
        } else {
            self.restart_ms
        }
    }

    /// Installs a checkpoint's outcome: its new run (if any) replaces `flushing`, `dropped`
    /// runs leave the list.
    pub(crate) fn finish_snapshot(&mut self, new_run: Option<Arc<Run>>, dropped: &[u64]) {
        self.flushing = None;
        self.runs.retain(|r| !dropped.contains(&r.id));
        self.runs.extend(new_run);
        self.generation += 1;
    }

    /// A checkpoint that failed: its memtable goes back, to be written next time.
    pub(crate) fn abort_snapshot(&mut self) {
        if let Some(f) = self.flushing.take() {
            for (k, v) in f.iter() {
                let m = self.memtable.entry(*k).or_default();
                m.tombstone |= v.tombstone;
                m.target = m.target.or(v.target);
            }
        }
    }

    /// Replaces merged runs with their merge.
    pub(crate) fn replace_runs(&mut self, old: &[u64], new_run: Option<Arc<Run>>) {
        self.runs.retain(|r| !old.contains(&r.id));
        self.runs.extend(new_run);
        self.generation += 1;
    }

    /// Timers held in the near window (all states).
    pub(crate) fn near_len(&self) -> usize {
        self.near.len()
    }

    /// The near window holds `limit` timers or more: it is not loaded further until some
    /// are released, so its refresh time is no reason to wake the deliverer.
    pub(crate) fn window_full(&self, limit: usize) -> bool {
        self.near.len() >= limit
    }

    /// Entries waiting for the next checkpoint.
    pub(crate) fn memtable_len(&self) -> usize {
        self.memtable.len()
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
