//! The background loop: every tick it
//! 1. reads new half messages from `RMQ_SYS_TRANS_HALF_TOPIC`/0 into the table (the tailer);
//! 2. forgets decided transactions past the retention window;
//! 3. applies the final action to open transactions whose checks are exhausted;
//! 4. sends due checks, never for a transaction that is not open (see [`Core::run_checks`]),
//!    in small rounds, and no more to a group once its route refused one this tick;
//! 5. carries old undecided half messages forward (bounded);
//! 6. writes the checkpoint when something changed (check counts reach the disk before their
//!    checks leave through the check journal, `journal`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sluice_broker::TRANS_HALF_TOPIC;
use sluice_store::{now_ms, GetStatus};
use tokio::sync::watch;

use crate::core::Core;
use crate::journal::{self, Counted};
use crate::metrics::Counters;
use crate::records::HalfRecord;
use crate::sink::{check_command, send_round_robin, PendingCheck, Route, PROP_CHECK_URL};
use crate::state::{Decision, Source, TxnState};
use crate::table::{ms, Due, Entry, Location};

/// Producer groups whose round-robin position is remembered (see `next_round_robin`).
const ROUND_ROBIN_GROUPS: usize = 10_000;
/// Half messages read per store call.
const TAIL_BATCH: usize = 512;
/// Time one tick may spend tailing the half queue (the rest waits for the next tick). Offsets
/// already in the table cost a lookup, not a read, so this is rarely reached.
const TAIL_BUDGET: Duration = Duration::from_millis(200);
/// Offsets stepped over per table lock in `step_over_known`.
const STEP_OVER: u64 = 4096;
/// Bytes per store call.
const TAIL_BYTES: usize = 8 << 20;
/// Undecided transactions per `checkpoint_interval` of periodic checkpoint spacing.
const CHECKPOINT_ENTRIES_PER_INTERVAL: usize = 20_000;
/// Due transactions (checks and final actions) taken per tick; the rest stay due.
const MAX_DUE_PER_TICK: usize = 8_192;
/// Final actions applied at once (each a durable append; concurrent ones share syncs).
const FINAL_CONCURRENCY: usize = 64;
/// Walks of the due transactions per tick (each after a group's route refused).
const MAX_DUE_WALKS: usize = 4;
/// Checks planned (half message read), counted and offered per round of a tick.
const CHECK_ROUND: usize = 64;

/// Runs until `stop` turns true (or its sender is dropped), then writes a last checkpoint.
pub(crate) async fn run(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let tick = core.shared.cfg.tick();
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        core.tick().await;
    }
    if let Err(e) = core.write_checkpoint().await {
        tracing::warn!(error = %e, "final transaction checkpoint not written; the next start rescans more");
    }
}

/// A check ready to leave: the entry as it was, what to send, and its number.
struct Planned {
    entry: Entry,
    half: HalfRecord,
    route: Route,
}

impl Core {
    /// One round of the loop.
    pub(crate) async fn tick(&self) {
        self.tail_half_queue(usize::MAX, TAIL_BUDGET, false, None);
        let cfg = &self.shared.cfg;
        self.table
            .lock()
            .forget(now_ms(), ms(cfg.resolved_retention), cfg.resolved_max);
        let allowance = self
            .pacer
            .lock()
            .allowance(
                cfg.max_checks_per_sec,
                cfg.tick(),
                std::time::Instant::now(),
            )
            .min(MAX_DUE_PER_TICK);
        let taken = self.run_due(allowance).await;
        self.pacer.lock().spend(taken);
        self.carry_forward().await;
        self.checkpoint_if_due().await;
    }

    /// Takes up to `allowance` due transactions, oldest first, and applies their final actions
    /// or offers their checks; returns how many were started (what the pace is charged).
    ///
    /// A group whose route refuses a check gets no more this tick, and the due walk is
    /// repeated without it: otherwise a jammed group holding the oldest due transactions took
    /// the whole allowance every tick, and no other group was checked while it stayed jammed.
    async fn run_due(&self, allowance: usize) -> usize {
        let cfg = &self.shared.cfg;
        let mut refused: HashSet<String> = HashSet::new();
        let mut taken = 0;
        for _ in 0..MAX_DUE_WALKS {
            let limit = allowance.saturating_sub(taken);
            if limit == 0 {
                break;
            }
            let due = self.table.lock().due(now_ms(), cfg, limit, &refused);
            if due.is_empty() {
                break;
            }
            let refused_before = refused.len();
            let mut checks = Vec::new();
            let mut finals = Vec::new();
            for d in due {
                match d {
                    Due::Final(id, decision) => finals.push((id, decision)),
                    Due::Check(id) => checks.push(id),
                }
            }
            taken += finals.len();
            self.apply_final_actions(finals).await;
            taken += self.run_checks(checks, &mut refused).await;
            if refused.len() == refused_before {
                break; // everything due was taken: nothing was left for another walk
            }
        }
        taken
    }

    /// Applies final actions, `FINAL_CONCURRENCY` at a time. Each waits for its durable
    /// append; one after another, thousands reaching `check_max` together (after a producer
    /// outage) held the tick for seconds, with no tailing, checks or checkpoint meanwhile.
    async fn apply_final_actions(&self, finals: Vec<(u64, Decision)>) {
        use futures::StreamExt;
        futures::stream::iter(finals)
            .for_each_concurrent(FINAL_CONCURRENCY, |(id, decision)| async move {
                // Refused when a decision won the race: then nothing is to be done.
                let _ = self.decide(id, decision, Source::FinalAction).await;
            })
            .await;
    }

    /// Reads half messages from `half_next` on into the table, until it has caught up with the
    /// half queue, `calls` store reads were made or `budget` has passed. `adopt_copies`: a
    /// carry-forward copy whose transaction is unknown starts one (only when rebuilding without
    /// a checkpoint: then the original may be gone); otherwise such a copy belongs to a
    /// forgotten, decided transaction and is ignored.
    ///
    /// Most half messages are already in the table when the tailer reaches them (their
    /// END_TRANSACTION adopted them), and those are stepped over without being read, so the
    /// tailer keeps up with any send rate the broker sustains. It must: `forget` never drops an
    /// entry at or above `half_next`, and a half message beyond it is not checked.
    pub(crate) fn tail_half_queue(
        &self,
        calls: usize,
        budget: Duration,
        adopt_copies: bool,
        settled: Option<&crate::recovery::Settled>,
    ) -> usize {
        let _one = self.tailing.lock();
        let started = std::time::Instant::now();
        let store = self.services.store();
        let mut added = 0;
        for _ in 0..calls {
            let end = store.max_offset(TRANS_HALF_TOPIC, 0);
            let from = self.step_over_known(end);
            if from >= end {
                // Caught up: a half counted after the tailer took it in is let go here.
                self.table.lock().clamp_unindexed();
                break;
            }
            let r = store.get_messages(TRANS_HALF_TOPIC, 0, from, TAIL_BATCH, TAIL_BYTES, None);
            match r.status {
                GetStatus::Found => {
                    for m in &r.messages {
                        // The original of a transaction already known (an END_TRANSACTION that
                        // overtook the tailer adopted it): nothing to parse. A carry-forward
                        // copy sits at a queue offset of its own, never a transaction's id.
                        if self.table.lock().get(m.queue_offset).is_some() {
                            continue;
                        }
                        added += usize::from(self.register(&m.bytes, adopt_copies, settled));
                    }
                }
                GetStatus::OffsetTooSmall | GetStatus::NoMatchedMessage => {
                    tracing::warn!(
                        from,
                        next = r.next_offset,
                        "half messages skipped (deleted by retention, or damaged)"
                    );
                }
                GetStatus::OffsetOverflowBadly => {
                    tracing::warn!(
                        from,
                        max = r.max_offset,
                        "half queue is shorter than the checkpoint says; continuing at its end"
                    );
                }
                _ => break,
            }
            {
                let mut t = self.table.lock();
                // Only forward: what lies below was read (or skipped) already.
                t.half_next = t.half_next.max(r.next_offset);
                t.clamp_unindexed();
            }
            // Past entries retention deleted (or damage) the tail goes on: at a restart without
            // a checkpoint it starts at 0, and stopping there left every retained half unread
            // by the rebuild, so the first tick took decided ones for open (the op queue is not
            // replayed then) and dropped carry-forward copies.
            let skipped = matches!(
                r.status,
                GetStatus::OffsetTooSmall | GetStatus::NoMatchedMessage
            ) && r.next_offset > from;
            if (r.status != GetStatus::Found && !skipped) || started.elapsed() >= budget {
                break;
            }
        }
        added
    }

    /// Moves `half_next` over the transactions already in the table (adopted by their
    /// END_TRANSACTION before the tailer reached them), below `end`; returns where it stops.
    /// The lock is taken per step of at most `STEP_OVER` offsets, so END_TRANSACTION is not
    /// held up behind a long run.
    fn step_over_known(&self, end: u64) -> u64 {
        loop {
            let mut t = self.table.lock();
            let from = t.half_next;
            let next = t.first_unknown(from, end.min(from.saturating_add(STEP_OVER)));
            t.half_next = next;
            if next == from || next >= end {
                return next;
            }
        }
    }

    /// Adds a half message read by the tailer to the table (or, a carry-forward copy, moves
    /// its transaction there). At a restart, one whose transaction the op queue shows decided
    /// (`settled`) is left out: its op record answers for it. True when a transaction was added.
    fn register(
        &self,
        raw: &bytes::Bytes,
        adopt_copies: bool,
        settled: Option<&crate::recovery::Settled>,
    ) -> bool {
        let rec = match HalfRecord::parse(raw, self.max_record) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "record in the half queue skipped");
                return false;
            }
        };
        let id = rec.origin.unwrap_or_else(|| rec.id());
        if settled.is_some_and(|s| s.contains(id.half_offset)) {
            // Decided by an op after the checkpoint: not lost, whatever became of its half.
            self.lost_listed.lock().remove(&id.half_offset);
            return false;
        }
        let mut t = self.table.lock();
        if let Some(id) = rec.origin {
            let listed = {
                let mut lost = self.lost_listed.lock();
                let same = lost
                    .get(&id.half_offset)
                    .is_some_and(|le| le.p == id.commit_log_offset);
                same.then(|| lost.remove(&id.half_offset)).flatten()
            };
            if let Some(le) = listed {
                // Listed by the checkpoint, its original gone: this copy is the transaction,
                // with the progress the checkpoint saved.
                let mut e = Entry::from_copy(&rec);
                le.restore(&mut e, rec.header.store_timestamp);
                e.current = Location {
                    half_offset: rec.queue_offset,
                    phys_offset: rec.phys_offset,
                    store_ms: rec.header.store_timestamp,
                };
                return t.insert(e);
            }
            if t.get(id.half_offset).is_some() || !adopt_copies {
                t.relocate(
                    id,
                    Location {
                        half_offset: rec.queue_offset,
                        phys_offset: rec.phys_offset,
                        store_ms: rec.header.store_timestamp,
                    },
                );
                return false;
            }
            return t.insert(Entry::from_copy(&rec));
        }
        t.insert(Entry::open(&rec))
    }

    /// Sends due checks. Order matters for "at most `check_max` checks, never one for a decided
    /// transaction": (1) count each check under the lock, only if the transaction is open;
    /// (2) append the counts to the check journal and sync it, so a crash can lose a sent
    /// check's count only by over-counting; (3) send each under the lock after checking the
    /// state again: a decision takes that lock to begin, so none can slip in between the check
    /// and the send.
    pub(crate) async fn run_checks(&self, ids: Vec<u64>, refused: &mut HashSet<String>) -> usize {
        // A group whose route refused a check (full producer write queues, a full sink) gets
        // no more this tick: its other due transactions stay due and uncounted (from the next
        // round on, unread) for the next tick; only the refused one waits an interval.
        // Offering all of them at once read every due half message only to have most
        // refused, in one burst per `check_interval` (100 000 reads on one worker thread with
        // that many due), and postponed the refused ones a whole interval.
        let mut offered = 0;
        for round in ids.chunks(CHECK_ROUND) {
            let (n, groups) = self.run_check_round(round, refused).await;
            offered += n;
            refused.extend(groups);
        }
        offered
    }

    /// Plans, counts, journals and offers one round of checks; returns how many were offered
    /// (queued for pulling, sent, or refused by their route) and the groups whose route
    /// refused one. A full pull queue counts as a refusal: the check waits an interval instead
    /// of being read and offered again at every tick.
    async fn run_check_round(
        &self,
        ids: &[u64],
        refused: &HashSet<String>,
    ) -> (usize, Vec<String>) {
        let planned = self.plan_checks(ids, refused);
        let now = now_ms();
        let mut counted = Vec::new();
        let mut records = Vec::new();
        let mut offered = 0;
        let mut refused_now: Vec<String> = Vec::new();
        {
            let mut t = self.table.lock();
            for p in planned {
                let id = p.entry.id.half_offset;
                if matches!(p.route, Route::Sink(..)) && refused_now.contains(&p.entry.group) {
                    continue; // never offered: still due at the next tick
                }
                let queued = match &p.route {
                    Route::Pull => {
                        Some(t.queue_pull(&p.entry.group, id, self.shared.cfg.pending_checks_max))
                    }
                    Route::Sink(sink, url) => Some(self.offer_to_sink(&t, &p, sink, url)),
                    _ => None,
                };
                if let Some(queued) = queued {
                    // Counted when handed out or called, not now: a check waiting in a queue
                    // (behind slow webhooks, or for a poll) must not use the budget, or the
                    // final action came without the producer ever being asked.
                    offered += 1;
                    t.postpone_check(id, now);
                    if !queued && !refused_now.contains(&p.entry.group) {
                        refused_now.push(p.entry.group.clone());
                    }
                } else if let Some(c) = t.count_check(id, now) {
                    counted.push((p, c.checks));
                    records.push(c);
                }
            }
        }
        if counted.is_empty() {
            return (offered, refused_now);
        }
        if let Err(e) = self.journal_checks(records).await {
            // Sent without their record, these checks could be sent again after a crash, past
            // check_max: they stay due, uncounted, and go out once the journal takes them.
            tracing::warn!(error = %e, checks = counted.len(), "check counts not journalled; the checks wait");
            let mut t = self.table.lock();
            for (p, _) in &counted {
                t.unclaim_check(p.entry.id.half_offset, p.entry.last_check_ms);
            }
            return (offered, refused_now);
        }
        for (p, n) in counted {
            if refused_now.contains(&p.entry.group) {
                // Never offered: as if not counted, still due at the next tick.
                self.table
                    .lock()
                    .unclaim_check(p.entry.id.half_offset, p.entry.last_check_ms);
                continue;
            }
            offered += 1;
            let group = p.entry.group.clone();
            if !self.deliver(p, n) {
                refused_now.push(group);
            }
        }
        (offered, refused_now)
    }

    /// Appends counted checks to the journal on a blocking thread. Under the checkpoint lock, so
    /// a checkpoint never empties the journal between a count and its record.
    pub(crate) async fn journal_checks(
        &self,
        records: Vec<Counted>,
    ) -> Result<(), crate::TxnError> {
        if records.is_empty() {
            return Ok(());
        }
        let _one_at_a_time = self.checkpoint_lock.lock().await;
        let dir = self.state_dir.clone();
        tokio::task::spawn_blocking(move || journal::append(&dir, &records))
            .await
            .unwrap_or_else(|e| Err(crate::TxnError::Checkpoint(e.to_string())))
    }

    /// Picks a route and reads the half message of each due transaction.
    /// Transactions of a group in `skip` are left as they are.
    fn plan_checks(&self, ids: &[u64], skip: &HashSet<String>) -> Vec<Planned> {
        let entries: Vec<Entry> = {
            let t = self.table.lock();
            ids.iter()
                .filter_map(|id| t.get(*id))
                .filter(|e| skip.is_empty() || !skip.contains(&e.group))
                .cloned()
                .collect()
        };
        let now = now_ms();
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let id = entry.id.half_offset;
            // Read first: the half message may name its own check URL, which decides the route.
            let half = match self.read_half(entry.current.phys_offset) {
                Ok(half) => half,
                Err(e) => {
                    self.table.lock().postpone_check(id, now);
                    tracing::warn!(producer_group = %entry.group, half_offset = id, error = %e, "half message unreadable; check postponed");
                    continue;
                }
            };
            let route = self.route(&entry.group, &entry.topic, half.props.get(PROP_CHECK_URL));
            if matches!(route, Route::Nowhere) {
                Counters::inc(&self.counters().checks_undelivered);
                self.table.lock().postpone_check(id, now);
                tracing::debug!(producer_group = %entry.group, transaction_id = %entry.uniq, half_offset = id, "check due but no producer of the group is connected");
                continue;
            }
            out.push(Planned { entry, half, route });
        }
        out
    }

    /// Where checks of `group` go now (see `sink`); `message_url` is the half message's own
    /// [`PROP_CHECK_URL`], which wins over the group's routing when a URL sink is installed.
    /// Over TCP, only to the group's connections that may take checks of `topic` (with ACL
    /// on: registered by an account that may publish there).
    pub(crate) fn route(&self, group: &str, topic: &str, message_url: Option<&str>) -> Route {
        if let Some(url) = message_url {
            match self.shared.url_sink.read().as_ref() {
                Some(s) if s.accepts(url) => {
                    return Route::Sink(Arc::clone(s), Some(url.to_owned()))
                }
                Some(_) => tracing::debug!(
                    producer_group = group,
                    "half message names a check URL whose host is not allowed; using the group's route"
                ),
                None => tracing::debug!(
                    producer_group = group,
                    "half message names a check URL but no URL sink is installed; using the group's route"
                ),
            }
        }
        if let Some(s) = self.shared.group_sinks.read().get(group) {
            return Route::Sink(Arc::clone(s), None);
        }
        let policy = self.shared.cfg.policy(group);
        if let Some(url) = policy.check_url {
            match self.shared.url_sink.read().as_ref() {
                Some(s) => return Route::Sink(Arc::clone(s), Some(url)),
                None => tracing::debug!(
                    producer_group = group,
                    "check_url set but no URL sink installed; using TCP"
                ),
            }
        } else if policy.pull_checks {
            return Route::Pull;
        }
        let conns = self.services.producer_connections_for(group, topic);
        if conns.is_empty() {
            Route::Nowhere
        } else {
            Route::Tcp(conns)
        }
    }

    /// Sends one counted check, under the table lock, if the transaction is still open. False
    /// when its route refused it (then it is uncounted and tried one `check_interval` later).
    fn deliver(&self, p: Planned, n: u32) -> bool {
        let id = p.entry.id.half_offset;
        let store_host = self.services.store().store_host();
        let cmd = match &p.route {
            Route::Tcp(_) => Some(check_command(
                &p.entry,
                &p.half,
                n,
                store_host,
                self.services.broker_name(),
            )),
            _ => None,
        };
        let start = self.next_round_robin(&p.entry.group);
        let mut t = self.table.lock();
        if t.get(id).map(|e| e.state) != Some(TxnState::Open) {
            return true;
        }
        let sent_to = match (&p.route, cmd) {
            (Route::Tcp(conns), Some(cmd)) => {
                send_round_robin(conns, start, &cmd).map(|a| a.to_string())
            }
            _ => None,
        };
        match sent_to {
            Some(to) => {
                Counters::inc(&self.counters().checks_sent);
                tracing::debug!(producer_group = %p.entry.group, transaction_id = %p.entry.uniq, half_offset = id, check = n, to = %to, "transaction check sent");
                true
            }
            None => {
                t.uncount_check(id);
                t.postpone_check(id, now_ms());
                Counters::inc(&self.counters().checks_undelivered);
                tracing::debug!(producer_group = %p.entry.group, transaction_id = %p.entry.uniq, half_offset = id, "no producer connection took the check; retrying next interval");
                false
            }
        }
    }

    /// Hands a sink the check of a due transaction, uncounted (under the table lock, as a
    /// sink only queues): it carries the count it will have, and is counted only when the
    /// sink's consumer claims it ([`crate::TxnService::claim_check`]) to call or hand it out.
    /// False when the sink refused it.
    fn offer_to_sink(
        &self,
        t: &crate::table::Table,
        p: &Planned,
        sink: &Arc<dyn crate::sink::CheckSink>,
        url: &Option<String>,
    ) -> bool {
        let id = p.entry.id.half_offset;
        let Some(next) = t
            .get(id)
            .filter(|e| e.state == TxnState::Open)
            .map(|e| e.checks + 1)
        else {
            return true; // decided meanwhile: nothing to ask
        };
        let check = PendingCheck::new(&p.entry, &p.half, next, url.clone());
        match sink.deliver(check) {
            Ok(()) => {
                tracing::debug!(producer_group = %p.entry.group, transaction_id = %p.entry.uniq, half_offset = id, check = next, sink = sink.name(), "transaction check queued");
                true
            }
            Err(e) => {
                Counters::inc(&self.counters().checks_undelivered);
                tracing::debug!(sink = sink.name(), error = %e, "check sink refused a check");
                false
            }
        }
    }

    /// Where the group's next check starts among its producers. One counter per producer
    /// group ever checked; past `ROUND_ROBIN_GROUPS` they all start over (which only moves
    /// where the spreading resumes), so invented group names cannot grow the map for good.
    fn next_round_robin(&self, group: &str) -> usize {
        let mut rr = self.round_robin.lock();
        if rr.len() >= ROUND_ROBIN_GROUPS && !rr.contains_key(group) {
            rr.clear();
        }
        let slot = rr.entry(group.to_owned()).or_insert(0);
        let v = *slot;
        *slot = slot.wrapping_add(1);
        v
    }

    /// Writes the checkpoint when something changed and the interval passed. The interval
    /// grows with the number of undecided transactions (one more interval per 20 000), because
    /// each checkpoint lists them all; a restart then rescans a little more of the half queue.
    async fn checkpoint_if_due(&self) {
        let due = {
            let last = *self.last_checkpoint.lock();
            let t = self.table.lock();
            let factor = u32::try_from(t.live_count() / CHECKPOINT_ENTRIES_PER_INTERVAL)
                .unwrap_or(u32::MAX)
                .saturating_add(1);
            t.dirty && last.elapsed() >= self.shared.cfg.checkpoint_interval.saturating_mul(factor)
        };
        if due {
            if let Err(e) = self.write_checkpoint().await {
                tracing::warn!(error = %e, "transaction checkpoint not written; retrying");
            }
        }
    }

    /// Snapshots the table and writes the checkpoint on a blocking thread.
    pub(crate) async fn write_checkpoint(&self) -> Result<(), crate::TxnError> {
        let _one_at_a_time = self.checkpoint_lock.lock().await;
        let op_max = self.op_max();
        let data = {
            let mut t = self.table.lock();
            t.dirty = false;
            t.snapshot(op_max)
        };
        let dir = self.state_dir.clone();
        // Every journalled count is in this snapshot (counted before journalled, and journalled
        // under this lock), so once the checkpoint is durable the journal is redundant.
        let result = tokio::task::spawn_blocking(move || {
            crate::checkpoint::store(&dir, &data)?;
            if let Err(e) = journal::clear(&dir) {
                tracing::warn!(error = %e, "check journal not emptied; a restart replays counts the checkpoint holds");
            }
            Ok(())
        })
        .await
            .unwrap_or_else(|e| Err(crate::TxnError::Checkpoint(e.to_string())));
        *self.last_checkpoint.lock() = std::time::Instant::now();
        if result.is_err() {
            self.table.lock().dirty = true;
        }
        result
    }
}
