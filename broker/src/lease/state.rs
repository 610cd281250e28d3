//! The in-memory lease book of each group: a cursor per queue, the leases by generation with
//! their deadlines, and the receipts recently finished. Plain data under one mutex per group;
//! nothing here awaits, so the lock is never held across a suspension point.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::receipt::{Minter, Receipt};
use super::LeaseError;
use crate::offsets::OffsetManager;

/// A queue: its topic (the topic itself, or `%RETRY%<group>`) and id.
pub(crate) type QueueKey = (String, i32);

/// Lease state of one broker run: shared by every clone of the service.
#[derive(Debug)]
pub(crate) struct LeaseState {
    pub(crate) minter: Minter,
    next_generation: AtomicU64,
    groups: Mutex<HashMap<String, Arc<Mutex<Group>>>>,
    /// When a consumer of each group was last seen (a receive admitted, receipts settled):
    /// entries only for groups with a book (dropped with it).
    admitted: Mutex<HashMap<String, std::time::Instant>>,
    /// Told when an entry becomes deliverable again without a store dispatch (a failed
    /// hand-back), so long polls look again.
    pub(crate) changed: Notify,
    /// Set once the expiry task runs.
    pub(crate) expiry_started: AtomicBool,
    /// Where the next expiry pass starts among the groups (it moves every pass).
    expiry_rotation: AtomicU64,
    /// When the last sweep for idle books found none (see [`SWEEP_INTERVAL`]).
    last_sweep: Mutex<Option<std::time::Instant>>,
    /// What every book holds together, against the broker-wide bounds.
    pub(crate) totals: Arc<Totals>,
}

/// Broker-wide counts of what the lease books hold, kept by the books themselves (every
/// change goes through a [`Group`] method, and a dropped book gives its share back), so the
/// `*_total` bounds of [`super::LeaseConfig`] hold across groups: the per-group bounds alone
/// multiply by `max_groups`.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    /// Live leases, plus room reserved by receives still collecting.
    leases: AtomicUsize,
    /// Finished receipts remembered.
    remembered: AtomicUsize,
    /// Open entries waiting: retries kept aside, failed hand-backs.
    waiting: AtomicUsize,
}

impl Totals {
    /// Reserves room for up to `want` leases under `max` in all; returns how many it got. A
    /// receive reserves before it collects and releases the reservation after, so concurrent
    /// receives of different groups cannot pass the bound together.
    pub(crate) fn reserve_leases(&self, want: usize, max: usize) -> usize {
        let mut got = 0;
        let _ = self
            .leases
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                got = want.min(max.saturating_sub(held));
                Some(held + got)
            });
        got
    }

    /// Gives back a reservation.
    pub(crate) fn release_leases(&self, n: usize) {
        sub(&self.leases, n);
    }

    /// Entries waiting in every book.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Live leases (and reservations) in every book.
    pub(crate) fn leases(&self) -> usize {
        self.leases.load(Ordering::Acquire)
    }

    /// Finished receipts remembered by every book.
    pub(crate) fn remembered(&self) -> usize {
        self.remembered.load(Ordering::Acquire)
    }
}

/// Room for leases reserved against the broker-wide bound, given back when dropped (also
/// when a receive unwinds), so a reservation never outlives its receive.
pub(crate) struct Reservation<'a> {
    totals: &'a Totals,
    pub(crate) count: usize,
}

impl<'a> Reservation<'a> {
    /// Reserves up to `want` of `max` in all (see [`Totals::reserve_leases`]).
    pub(crate) fn new(totals: &'a Totals, want: usize, max: usize) -> Self {
        let count = totals.reserve_leases(want, max);
        Self { totals, count }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.totals.release_leases(self.count);
    }
}

/// Subtracts without wrapping (a count is never below zero, whatever the order of updates).
fn sub(counter: &AtomicUsize, n: usize) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        Some(v.saturating_sub(n))
    });
}

/// A book nobody else holds (every user takes its `Arc` from the map, under its lock) that
/// holds nothing a new book would not rebuild ([`Group::is_idle`]).
fn book_idle(book: &Arc<Mutex<Group>>) -> bool {
    Arc::strong_count(book) == 1 && book.try_lock().is_some_and(|g| g.is_idle())
}

/// Least time after a sweep for idle books that found none before the next one. A sweep walks
/// every book under the map's lock; without this, each receive of a new group at a bound of
/// busy books would pay for one. A sweep that dropped books sets no pause: groups that come
/// and go quickly were refused for up to this long while idle books were there.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

impl LeaseState {
    pub(crate) fn new() -> Self {
        Self {
            minter: Minter::new(),
            next_generation: AtomicU64::new(1),
            groups: Mutex::new(HashMap::new()),
            admitted: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            expiry_started: AtomicBool::new(false),
            expiry_rotation: AtomicU64::new(0),
            last_sweep: Mutex::new(None),
            totals: Arc::new(Totals::default()),
        }
    }

    /// Whether `group` counts as having an HTTP member: its book is in use (a receive or
    /// hand-back holds it, or it holds leases, open entries or offsets to commit), or it
    /// was seen (a receive, an ack, nack or extend) within `seen_within`. A book is only dropped when the books fill
    /// up, so its mere presence said "member" for the broker's life after one receive.
    pub(crate) fn has_member(&self, group: &str, seen_within: std::time::Duration) -> bool {
        let groups = self.groups.lock();
        let Some(book) = groups.get(group) else {
            return false;
        };
        let recent = self
            .admitted
            .lock()
            .get(group)
            .is_some_and(|at| at.elapsed() < seen_within);
        recent || Arc::strong_count(book) > 1 || book.try_lock().is_none_or(|g| !g.is_idle())
    }

    /// The groups with a lease book (at most `max_groups`): those [`LeaseState::has_member`]
    /// may say are members.
    pub(crate) fn book_groups(&self) -> Vec<String> {
        self.groups.lock().keys().cloned().collect()
    }

    /// Notes that a consumer of `group` was seen now: a receive admitted, or receipts settled.
    pub(crate) fn note_seen(&self, group: &str) {
        self.admitted
            .lock()
            .insert(group.to_owned(), std::time::Instant::now());
    }

    /// The book of `group`, created on first use (a hand-back finishing: its open entry keeps
    /// the book from being swept, so this finds the one the hand-back began in).
    pub(crate) fn group(&self, group: &str) -> Arc<Mutex<Group>> {
        let mut groups = self.groups.lock();
        Arc::clone(
            groups
                .entry(group.to_owned())
                .or_insert_with(|| Arc::new(Mutex::new(self.new_book(group)))),
        )
    }

    /// Whether `group` may receive: it has a book, or one is made for it now while there are
    /// fewer than `max_groups` (checked and made under one lock, so concurrent receives of new
    /// groups cannot pass the bound together). At the bound, idle books are dropped first
    /// (after a sweep that found none, not again for [`SWEEP_INTERVAL`]), so a broker that saw many short-lived
    /// groups over its life keeps admitting new ones.
    ///
    /// The receive holds the book it is given until it answers, long poll included: a book in
    /// use is never swept, and the receive never makes a second one past the bound.
    ///
    /// `on_dropped` is told the groups whose books a sweep dropped, once, while no book of
    /// theirs can be made again (the service releases their empty offset reservations there).
    pub(crate) fn admit(
        &self,
        group: &str,
        max_groups: usize,
        on_dropped: impl FnOnce(&HashSet<String>),
    ) -> Option<Arc<Mutex<Group>>> {
        let mut groups = self.groups.lock();
        if let Some(book) = groups.get(group) {
            self.note_seen(group);
            return Some(Arc::clone(book));
        }
        if groups.len() >= max_groups && !self.sweep_idle(&mut groups, max_groups, on_dropped) {
            return None;
        }
        let book = Arc::new(Mutex::new(self.new_book(group)));
        groups.insert(group.to_owned(), Arc::clone(&book));
        self.note_seen(group);
        Some(book)
    }

    /// Drops every book that holds nothing a new book would not rebuild; true when there is
    /// room for one more afterwards.
    ///
    /// A book may go when nobody else holds it (every user takes its `Arc` from the map,
    /// under this lock, so none can appear during the sweep) and [`Group::is_idle`]: no
    /// leases, no open entries, every cursor committed where it stands. A new book for the
    /// same group then starts each cursor at that committed offset, exactly where the old
    /// one was, so no entry is leased twice or skipped. What is lost is the memory of
    /// finished receipts: acking one of the old book's receipts answers `UnknownReceipt`
    /// instead of `AlreadyAcked`.
    fn sweep_idle(
        &self,
        groups: &mut HashMap<String, Arc<Mutex<Group>>>,
        max_groups: usize,
        on_dropped: impl FnOnce(&HashSet<String>),
    ) -> bool {
        let now = std::time::Instant::now();
        let mut fruitless = self.last_sweep.lock();
        if fruitless.is_some_and(|t| now.duration_since(t) < SWEEP_INTERVAL) {
            return false;
        }
        let mut gone = HashSet::new();
        groups.retain(|name, book| {
            let idle = book_idle(book);
            if idle {
                gone.insert(name.clone());
            }
            !idle
        });
        let dropped = gone.len();
        if dropped > 0 {
            // Under the map's lock: no new book of these groups can appear meanwhile.
            on_dropped(&gone);
        }
        *fruitless = (dropped == 0).then_some(now);
        drop(fruitless);
        self.admitted.lock().retain(|g, _| groups.contains_key(g));
        if dropped > 0 {
            tracing::info!(
                dropped,
                kept = groups.len(),
                "idle lease books dropped to admit a new group"
            );
        }
        groups.len() < max_groups
    }

    /// Runs `f` with no book of `group` in memory, under the books' lock (no receive can make
    /// one meanwhile): an idle book (see [`Self::sweep_idle`]) is dropped first. `None`, and
    /// `f` not run, while the book is in use. For deleting the group's offsets: a book left
    /// in memory kept reading from its old cursors, and its next ack wrote the deleted
    /// offsets back.
    pub(crate) fn without_book<T>(&self, group: &str, f: impl FnOnce() -> T) -> Option<T> {
        let mut groups = self.groups.lock();
        if let Some(book) = groups.get(group) {
            let idle = book_idle(book);
            if !idle {
                return None;
            }
            groups.remove(group);
            self.admitted.lock().remove(group);
        }
        Some(f())
    }

    /// The book of `group` if it has one.
    pub(crate) fn existing(&self, group: &str) -> Option<Arc<Mutex<Group>>> {
        self.groups.lock().get(group).cloned()
    }

    /// Every book, weakly held, starting from a different group at each call (the expiry task
    /// walks them). Weak: the task upgrades each only while it looks into it, so a pass that
    /// waits on hand-backs does not keep every book from being swept (a sweep counts strong
    /// holders only), and the map is locked once per pass.
    pub(crate) fn books_rotated(&self) -> Vec<Weak<Mutex<Group>>> {
        let mut books: Vec<_> = self.groups.lock().values().map(Arc::downgrade).collect();
        if !books.is_empty() {
            let start = self.expiry_rotation.fetch_add(1, Ordering::Relaxed) as usize;
            let n = books.len();
            books.rotate_left(start % n);
        }
        books
    }

    fn new_book(&self, group: &str) -> Group {
        Group::new(group, Arc::clone(&self.totals))
    }

    /// Retries kept aside a group is sure of, whatever the others hold: the broker-wide
    /// bound shared by the books that exist, at least one. Past the broker-wide bound only
    /// groups holding at least their share stop keeping retries aside (until twice the bound,
    /// where all do), so groups that filled it (one that stopped receiving a topic keeps that
    /// topic's retries aside for good) cannot stall every other group's retry queue.
    pub(crate) fn parked_share(&self, total: usize) -> usize {
        (total / self.groups.lock().len().max(1)).max(1)
    }

    /// Drops what every book holds of `topic` (a deleted topic): see [`Group::forget_topic`].
    /// Returns how many leases went.
    pub(crate) fn forget_topic(&self, topic: &str) -> usize {
        let books: Vec<_> = self.groups.lock().values().cloned().collect();
        books.iter().map(|b| b.lock().forget_topic(topic)).sum()
    }

    /// A generation never used before in this run.
    pub(crate) fn next_generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }
}

/// One live lease.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub(crate) token: u64,
    pub(crate) key: QueueKey,
    pub(crate) offset: u64,
    pub(crate) deadline: Instant,
    /// No extension may move the deadline past this (receive + `max_visibility`).
    pub(crate) limit: Instant,
}

/// How many finished receipts a book may remember: its own bound, and every book's together.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Remember {
    pub(crate) per_group: usize,
    pub(crate) total: usize,
}

impl Remember {
    pub(crate) fn from(cfg: &super::LeaseConfig) -> Self {
        Self {
            per_group: cfg.remembered_receipts,
            total: cfg.remembered_receipts_total,
        }
    }
}

/// How a finished delivery ended, for telling stale receipts apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Acked,
    Nacked,
    Expired,
}

/// What a queue entry between the committed offset and the read position is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenState {
    /// Leased under this generation.
    Leased(u64),
    /// Being copied to the retry topic or the DLQ.
    HandingBack,
    /// Deliverable again (a failed hand-back), or, in the retry queue, a retry of a topic not
    /// being received right now, kept aside.
    Waiting,
}

/// An entry read but not finished.
#[derive(Debug, Clone)]
pub(crate) struct Open {
    pub(crate) phys: u64,
    /// The original topic (differs from the queue's topic in the retry queue).
    pub(crate) origin: String,
    pub(crate) state: OpenState,
    /// A `Waiting` entry is not delivered before this (a failed hand-back, held for a lease
    /// period instead of coming back at once).
    pub(crate) not_before: Option<Instant>,
}

/// A group's position in one queue. Everything below `next` that is not in `open` is
/// finished, so the committed offset is the first open entry, or `next`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cursor {
    pub(crate) next: u64,
    pub(crate) open: BTreeMap<u64, Open>,
    committed: Option<u64>,
    /// Where the cursor began. A group that never moved from it has nothing to commit (a
    /// restart starts it there again): committed on first use, every receive by a new group
    /// name left offsets behind for good, whatever it consumed.
    start: u64,
}

impl Cursor {
    /// Nothing open and the committed offset at the read position: dropped, the cursor is
    /// made again from the committed offset with nothing lost.
    pub(crate) fn settled(&self) -> bool {
        self.open.is_empty() && self.committed.unwrap_or(self.start) == self.next
    }

    /// The lowest unfinished offset.
    pub(crate) fn low_water(&self) -> u64 {
        self.open.keys().next().copied().unwrap_or(self.next)
    }

    /// Entries kept aside or waiting.
    pub(crate) fn waiting(&self) -> usize {
        self.open
            .values()
            .filter(|o| o.state == OpenState::Waiting)
            .count()
    }
}

/// Cursors a book keeps before settled ones are dropped (they are made again from the
/// committed offset when next needed).
pub(crate) const SETTLED_CURSORS_KEPT: usize = 256;

/// A group's lease book.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) cursors: HashMap<QueueKey, Cursor>,
    pub(crate) leases: HashMap<u64, Lease>,
    deadlines: BTreeSet<(Instant, u64)>,
    finished: HashMap<u64, (u64, Outcome)>,
    finished_order: VecDeque<u64>,
    /// Rotates the first queue looked at, so no queue starves.
    pub(crate) rotation: usize,
    /// The broker-wide counts this book adds to.
    totals: Arc<Totals>,
}

impl Drop for Group {
    /// A book dropped (swept while idle, or at shutdown) gives back what it counted.
    fn drop(&mut self) {
        let waiting = self.cursors.values().map(Cursor::waiting).sum();
        sub(&self.totals.leases, self.leases.len());
        sub(&self.totals.remembered, self.finished_order.len());
        sub(&self.totals.waiting, waiting);
    }
}

impl Group {
    fn new(name: &str, totals: Arc<Totals>) -> Self {
        Self {
            name: name.to_owned(),
            cursors: HashMap::new(),
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            rotation: 0,
            totals,
        }
    }

    /// Puts `open` at `offset` in `key`'s cursor (replacing what was there), keeping the
    /// count of waiting entries.
    pub(crate) fn put_open(&mut self, key: &QueueKey, offset: u64, open: Open) {
        let Some(c) = self.cursors.get_mut(key) else {
            return;
        };
        let now_waiting = open.state == OpenState::Waiting;
        let was_waiting = c
            .open
            .insert(offset, open)
            .is_some_and(|o| o.state == OpenState::Waiting);
        self.count_waiting(was_waiting, now_waiting);
    }

    fn count_waiting(&self, was: bool, now: bool) {
        match (was, now) {
            (false, true) => {
                self.totals.waiting.fetch_add(1, Ordering::AcqRel);
            }
            (true, false) => sub(&self.totals.waiting, 1),
            _ => {}
        }
    }

    /// Whether a fresh book would be the same: no leases, and every cursor without open
    /// entries and committed at its read position (or never moved from its start).
    pub(crate) fn is_idle(&self) -> bool {
        self.leases.is_empty()
            && self
                .cursors
                .values()
                .all(|c| c.open.is_empty() && c.committed.unwrap_or(c.start) == c.next)
    }

    /// The cursor of a queue, starting at the committed offset, or the queue's minimum for a
    /// group that never committed, clamped into what the queue still holds.
    pub(crate) fn cursor(&mut self, key: &QueueKey, start: impl FnOnce() -> u64) -> &mut Cursor {
        self.cursors.entry(key.clone()).or_insert_with(|| {
            let next = start();
            Cursor {
                next,
                open: BTreeMap::new(),
                committed: None,
                start: next,
            }
        })
    }

    /// Records a new lease of `offset` in `key`'s cursor.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn grant(
        &mut self,
        key: &QueueKey,
        offset: u64,
        phys: u64,
        origin: &str,
        generation: u64,
        token: u64,
        now: Instant,
        visibility: Duration,
        max_visibility: Duration,
    ) {
        let state = OpenState::Leased(generation);
        self.put_open(
            key,
            offset,
            Open {
                phys,
                origin: origin.to_owned(),
                state,
                not_before: None,
            },
        );
        let deadline = now + visibility;
        self.deadlines.insert((deadline, generation));
        self.totals.leases.fetch_add(1, Ordering::AcqRel);
        self.leases.insert(
            generation,
            Lease {
                token,
                key: key.clone(),
                offset,
                deadline,
                limit: now + max_visibility,
            },
        );
    }

    /// The live lease a receipt names, or why there is none. A lease past its deadline is
    /// expired even before the expiry task handed it back.
    pub(crate) fn check(&self, r: &Receipt, now: Instant) -> Result<&Lease, LeaseError> {
        if let Some(l) = self.leases.get(&r.generation) {
            if l.token != r.token
                || l.key.0 != r.topic
                || l.key.1 != r.queue_id
                || l.offset != r.offset
            {
                return Err(LeaseError::UnknownReceipt);
            }
            if l.deadline <= now {
                return Err(LeaseError::ReceiptExpired);
            }
            return Ok(l);
        }
        match self.finished.get(&r.generation) {
            Some((token, outcome)) if *token == r.token => Err(match outcome {
                Outcome::Acked => LeaseError::AlreadyAcked,
                Outcome::Nacked => LeaseError::AlreadyNacked,
                Outcome::Expired => LeaseError::ReceiptExpired,
            }),
            _ => Err(LeaseError::UnknownReceipt),
        }
    }

    /// Ends a lease: forgets it (remembering its receipt as finished) and returns it. The
    /// queue entry stays open for the caller to finish or hand back.
    ///
    /// At most `remember.per_group` receipts are remembered per book, and while every book
    /// together holds more than `remember.total`, this one forgets its own oldest first (a
    /// stale receipt it forgot answers `UnknownReceipt` instead of `AlreadyAcked`).
    pub(crate) fn end(
        &mut self,
        generation: u64,
        outcome: Outcome,
        remember: Remember,
    ) -> Option<Lease> {
        let lease = self.leases.remove(&generation)?;
        sub(&self.totals.leases, 1);
        self.deadlines.remove(&(lease.deadline, generation));
        self.finished.insert(generation, (lease.token, outcome));
        self.finished_order.push_back(generation);
        self.totals.remembered.fetch_add(1, Ordering::AcqRel);
        while self.finished_order.len() > remember.per_group
            || (self.totals.remembered() > remember.total && !self.finished_order.is_empty())
        {
            if let Some(old) = self.finished_order.pop_front() {
                self.finished.remove(&old);
                sub(&self.totals.remembered, 1);
            }
        }
        Some(lease)
    }

    /// Moves a lease's deadline.
    pub(crate) fn extend(&mut self, generation: u64, deadline: Instant) {
        if let Some(l) = self.leases.get_mut(&generation) {
            self.deadlines.remove(&(l.deadline, generation));
            l.deadline = deadline;
            self.deadlines.insert((deadline, generation));
        }
    }

    /// Up to `max` generations whose deadline passed, oldest first.
    pub(crate) fn expired(&self, now: Instant, max: usize) -> Vec<u64> {
        self.deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .take(max)
            .map(|(_, g)| *g)
            .collect()
    }

    /// Sets the state of an open entry.
    pub(crate) fn set_state(&mut self, key: &QueueKey, offset: u64, state: OpenState) {
        let Some(o) = self
            .cursors
            .get_mut(key)
            .and_then(|c| c.open.get_mut(&offset))
        else {
            return;
        };
        let was_waiting = o.state == OpenState::Waiting;
        o.state = state;
        self.count_waiting(was_waiting, state == OpenState::Waiting);
    }

    /// Makes an entry whose hand-back failed deliverable again at `at`, not at once.
    pub(crate) fn hold_until(&mut self, key: &QueueKey, offset: u64, at: Instant) {
        self.set_state(key, offset, OpenState::Waiting);
        if let Some(o) = self
            .cursors
            .get_mut(key)
            .and_then(|c| c.open.get_mut(&offset))
        {
            o.not_before = Some(at);
        }
    }

    /// The commit-log offset and original topic of an open entry.
    pub(crate) fn open_entry(&self, key: &QueueKey, offset: u64) -> Option<&Open> {
        self.cursors.get(key).and_then(|c| c.open.get(&offset))
    }

    /// Finishes an entry: its queue position may now be passed.
    pub(crate) fn finish(&mut self, key: &QueueKey, offset: u64) {
        let removed = self
            .cursors
            .get_mut(key)
            .and_then(|c| c.open.remove(&offset));
        if removed.is_some_and(|o| o.state == OpenState::Waiting) {
            sub(&self.totals.waiting, 1);
        }
    }

    /// Drops the cursors of `topic` (a deleted topic) with their open entries, and the
    /// leases on them: nothing of them is handed back as a retry when it expires or is
    /// nacked, and no old position is committed over the topic created again (an old lease
    /// held the group's offset below the new messages, which came back after a restart
    /// although acknowledged). Their receipts are unknown from then on. Retries of the topic
    /// already in the group's retry queue are kept. Returns how many leases went.
    pub(crate) fn forget_topic(&mut self, topic: &str) -> usize {
        let doomed: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.key.0 == topic)
            .map(|(g, _)| *g)
            .collect();
        for g in &doomed {
            if let Some(l) = self.leases.remove(g) {
                self.deadlines.remove(&(l.deadline, *g));
            }
        }
        sub(&self.totals.leases, doomed.len());
        let waiting: usize = self
            .cursors
            .iter()
            .filter(|(k, _)| k.0 == topic)
            .map(|(_, c)| c.waiting())
            .sum();
        self.cursors.retain(|k, _| k.0 != topic);
        sub(&self.totals.waiting, waiting);
        doomed.len()
    }

    /// Commits the lowest unfinished offset of a queue when it moved (from the last commit, or
    /// from where the cursor began).
    /// Past [`SETTLED_CURSORS_KEPT`] cursors, drops the settled ones (see
    /// [`Cursor::settled`]) other than `keep`: a cursor was kept for every queue a group ever
    /// received from, deleted topics included, so a long-lived group receiving short-lived
    /// (per-tenant) topics grew without end.
    pub(crate) fn forget_settled_cursors(&mut self, keep: &[QueueKey]) {
        if self.cursors.len() <= SETTLED_CURSORS_KEPT {
            return;
        }
        self.cursors
            .retain(|key, c| !c.settled() || keep.contains(key));
    }

    pub(crate) fn commit(&mut self, offsets: &OffsetManager, key: &QueueKey) {
        let Some(c) = self.cursors.get_mut(key) else {
            return;
        };
        let low = c.low_water();
        let moved = c.committed.unwrap_or(c.start) != low;
        // Refused past `max_consumer_offsets` (logged there): tried again at the next commit.
        if moved
            && offsets
                .commit(
                    &self.name,
                    &key.0,
                    key.1,
                    i64::try_from(low).unwrap_or(i64::MAX),
                )
                .is_ok()
        {
            c.committed = Some(low);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(g: &Group, generation: u64, token: u64) -> Receipt {
        let l = g.leases.get(&generation);
        Receipt {
            run: 1,
            generation,
            token,
            group: g.name.clone(),
            topic: l.map_or_else(|| "T".into(), |l| l.key.0.clone()),
            queue_id: l.map_or(0, |l| l.key.1),
            offset: l.map_or(0, |l| l.offset),
        }
    }

    /// Room to remember `n` receipts per book, and plenty in all.
    fn keep(n: usize) -> Remember {
        Remember {
            per_group: n,
            total: usize::MAX,
        }
    }

    /// A cursor was kept for every queue a group ever received from: past the bound, the
    /// settled ones go (nothing open, committed at the read position); one with an open
    /// entry, one whose commit is pending and the ones the receive uses stay.
    #[test]
    fn settled_cursors_past_the_bound_are_forgotten_and_busy_ones_kept() {
        let mut g = Group::new("g", Arc::new(Totals::default()));
        let key = |t: usize| -> QueueKey { (format!("T{t}"), 0) };
        for t in 0..SETTLED_CURSORS_KEPT + 10 {
            g.cursor(&key(t), || 0);
        }
        let now = Instant::now();
        let vis = Duration::from_secs(10);
        g.grant(&key(1), 0, 100, "T1", 1, 11, now, vis, vis * 10);
        g.cursor(&key(2), || 0).next = 5; // read past, not yet committed
        g.forget_settled_cursors(&[key(3)]);
        let mut left: Vec<String> = g.cursors.keys().map(|k| k.0.clone()).collect();
        left.sort();
        assert_eq!(left, ["T1", "T2", "T3"]);
        // Below the bound nothing is dropped.
        g.cursor(&key(9), || 0);
        g.forget_settled_cursors(&[]);
        assert_eq!(g.cursors.len(), 4);
    }

    fn book_with_two_leases(now: Instant) -> Group {
        book_in("g", Arc::new(Totals::default()), now)
    }

    fn book_in(name: &str, totals: Arc<Totals>, now: Instant) -> Group {
        let mut g = Group::new(name, totals);
        let key: QueueKey = ("T".into(), 0);
        g.cursor(&key, || 5);
        let vis = Duration::from_secs(10);
        g.grant(&key, 5, 100, "T", 1, 11, now, vis, vis * 10);
        g.grant(&key, 6, 200, "T", 2, 22, now, vis, vis * 10);
        g
    }

    #[test]
    fn the_low_water_mark_stays_at_the_first_unfinished_entry() {
        let now = Instant::now();
        let mut g = book_with_two_leases(now);
        let key: QueueKey = ("T".into(), 0);
        g.cursors.get_mut(&key).unwrap().next = 7;
        assert_eq!(g.cursors[&key].low_water(), 5);
        g.end(2, Outcome::Acked, keep(10));
        g.finish(&key, 6);
        assert_eq!(g.cursors[&key].low_water(), 5);
        g.end(1, Outcome::Acked, keep(10));
        g.finish(&key, 5);
        assert_eq!(g.cursors[&key].low_water(), 7);
    }

    #[test]
    fn a_finished_receipt_is_told_apart_from_a_forged_one() {
        let now = Instant::now();
        let mut g = book_with_two_leases(now);
        let live = receipt(&g, 1, 11);
        assert!(g.check(&live, now).is_ok());
        assert_eq!(
            g.check(&receipt(&g, 1, 12), now).err(),
            Some(LeaseError::UnknownReceipt)
        );
        g.end(1, Outcome::Acked, keep(10));
        assert_eq!(g.check(&live, now).err(), Some(LeaseError::AlreadyAcked));
        let expired = receipt(&g, 2, 22);
        g.end(2, Outcome::Expired, keep(10));
        assert_eq!(
            g.check(&expired, now).err(),
            Some(LeaseError::ReceiptExpired)
        );
    }

    #[test]
    fn a_lease_past_its_deadline_is_expired_before_the_task_runs() {
        let now = Instant::now();
        let g = book_with_two_leases(now);
        let later = now + Duration::from_secs(11);
        assert_eq!(
            g.check(&receipt(&g, 1, 11), later).err(),
            Some(LeaseError::ReceiptExpired)
        );
        assert_eq!(g.expired(later, 1), vec![1]);
        assert_eq!(g.expired(later, 10), vec![1, 2]);
    }

    #[test]
    fn remembered_receipts_are_bounded() {
        let now = Instant::now();
        let mut g = book_with_two_leases(now);
        let first = receipt(&g, 1, 11);
        g.end(1, Outcome::Acked, keep(1));
        g.end(2, Outcome::Acked, keep(1));
        assert_eq!(g.check(&first, now).err(), Some(LeaseError::UnknownReceipt));
    }

    #[test]
    fn the_broker_wide_counts_follow_every_book_and_a_dropped_book_gives_its_share_back() {
        let now = Instant::now();
        let totals = Arc::new(Totals::default());
        let key: QueueKey = ("T".into(), 0);
        let mut a = book_in("a", Arc::clone(&totals), now);
        let b = book_in("b", Arc::clone(&totals), now);
        assert_eq!(totals.leases(), 4);
        a.end(1, Outcome::Nacked, keep(10));
        a.set_state(&key, 5, OpenState::Waiting);
        assert_eq!(
            (totals.leases(), totals.remembered(), totals.waiting()),
            (3, 1, 1)
        );
        // Leased again from waiting: no longer waiting.
        let vis = Duration::from_secs(10);
        a.grant(&key, 5, 100, "T", 3, 33, now, vis, vis * 10);
        assert_eq!((totals.leases(), totals.waiting()), (4, 0));
        a.set_state(&key, 6, OpenState::Waiting);
        a.finish(&key, 6);
        assert_eq!(totals.waiting(), 0);
        a.set_state(&key, 5, OpenState::Waiting);
        drop(a);
        drop(b);
        assert_eq!(
            (totals.leases(), totals.remembered(), totals.waiting()),
            (0, 0, 0)
        );
    }

    #[test]
    fn past_the_broker_wide_bound_a_book_forgets_its_own_oldest_receipts() {
        let now = Instant::now();
        let totals = Arc::new(Totals::default());
        let mut a = book_in("a", Arc::clone(&totals), now);
        let mut b = book_in("b", Arc::clone(&totals), now);
        let bound = Remember {
            per_group: 10,
            total: 2,
        };
        let a1 = receipt(&a, 1, 11);
        a.end(1, Outcome::Acked, bound);
        a.end(2, Outcome::Acked, bound);
        assert_eq!(totals.remembered(), 2);
        assert_eq!(a.check(&a1, now).err(), Some(LeaseError::AlreadyAcked));
        // b finishing one passes the bound: b forgets its own, a keeps what it has.
        b.end(1, Outcome::Acked, bound);
        assert_eq!(totals.remembered(), 2);
        assert_eq!(a.check(&a1, now).err(), Some(LeaseError::AlreadyAcked));
        assert_eq!(b.finished_order.len(), 0);
    }

    #[test]
    fn a_reservation_never_passes_the_broker_wide_lease_bound() {
        let totals = Totals::default();
        assert_eq!(totals.reserve_leases(8, 10), 8);
        assert_eq!(totals.reserve_leases(8, 10), 2);
        assert_eq!(totals.reserve_leases(8, 10), 0);
        totals.release_leases(8);
        assert_eq!(totals.reserve_leases(8, 10), 8);
        totals.release_leases(100);
        assert_eq!(totals.leases(), 0, "a count never wraps below zero");
    }
}
