//! Restart: the table is rebuilt from the durable half and op queues, never from memory.
//!
//! 1. Load the checkpoint (`checkpoint`); without one, start from the queues' beginnings.
//! 2. Re-read every transaction the checkpoint lists as undecided, at its current location,
//!    with its saved check count (a half message that can no longer be read is counted in
//!    `lost_at_restart` and logged).
//! 3. Read the half queue from `half_next` to its end: each new half message is open, except
//!    those a pass over the op queue (from `op_next`) found decided for good, which stay out
//!    of memory (one bit each while the pass lasts). Then raise check counts to what the
//!    check journal (`journal`) recorded for the same arming.
//! 4. Replay the op queue from `op_next` to its end, in order: each op record applies its
//!    decision (commit, rollback, discard, park, re-arm) to the transaction it names. Then
//!    apply the journalled counts of checks sent after such a re-arm.
//! 5. After an unclean stop only: a commit whose two records were torn apart (the real message
//!    stored, the op record not) would leave the transaction open and let a check commit it a
//!    second time. For each undecided transaction the store's unique-key index is asked for a
//!    COMMIT record pointing at its half message; if one exists, the transaction is completed as
//!    committed by writing the missing op record (in the background; it waits as `Resolving`).
//!
//! The rebuild costs the checkpoint's live entries, one checkpoint interval of half messages,
//! and the op records since the checkpoint: bounded, whatever the history.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_broker::{SCHEDULE_TOPIC, TIMER_TOPIC, TRANS_HALF_TOPIC, TRANS_OP_HALF_TOPIC};
use sluice_protocol::message::record::sysflag;
use sluice_protocol::RecordView;
use sluice_store::{now_ms, GetStatus};

use crate::checkpoint;
use crate::core::Core;
use crate::journal::{self, Counted};
use crate::metrics::Counters;
use crate::records::{op_record, HalfRecord, OpRecord, TxnId};
use crate::state::{Decision, Source, TxnState};
use crate::table::{Begin, Entry, Location};

/// Op records read per store call.
const OP_BATCH: usize = 1024;
/// Matching records asked of the index per transaction (torn-commit repair).
const COMMIT_LOOKUP_MAX: usize = 32;

/// What the rebuild found, for the start-up log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RebuildReport {
    pub(crate) from_checkpoint: bool,
    pub(crate) listed: usize,
    pub(crate) lost: usize,
    pub(crate) new_halves: usize,
    pub(crate) ops_replayed: usize,
    /// Check-journal records applied.
    pub(crate) journalled: usize,
    pub(crate) torn_commits: usize,
}

impl Core {
    /// Steps 1 to 4, synchronously (the broker does not serve yet); returns the ids that step 5
    /// must complete, already `Resolving`.
    pub(crate) fn rebuild(&self) -> (RebuildReport, Vec<Entry>) {
        let cp = checkpoint::load(&self.state_dir);
        let mut report = RebuildReport {
            from_checkpoint: cp.is_some(),
            ..RebuildReport::default()
        };
        let mut cp = cp.unwrap_or_default();
        self.clamp_to_queues(&mut cp);
        // Commits being stored at the last checkpoint, by the identity found.
        let mut pending = std::collections::HashSet::new();
        for le in &cp.live {
            match self.half_of(le) {
                Ok(rec) => {
                    let mut e = Entry::open(&rec);
                    le.restore(&mut e, rec.header.store_timestamp);
                    // Where it was found, whatever the entry said.
                    e.current = Location {
                        half_offset: rec.queue_offset,
                        phys_offset: rec.phys_offset,
                        store_ms: rec.header.store_timestamp,
                    };
                    if le.commit_pending {
                        pending.insert(e.id.half_offset);
                    }
                    report.listed += usize::from(self.table.lock().insert(e));
                }
                Err(reason) => {
                    if le.commit_pending {
                        pending.insert(le.q);
                    }
                    tracing::warn!(half_offset = le.q, commit_log_offset = le.p, reason = %reason, "undecided transaction's half unreadable where the checkpoint says; looking for a newer copy");
                    self.lost_listed.lock().insert(le.q, le.clone());
                }
            }
        }
        self.table.lock().half_next = cp.half_next;
        let settled = self.settled_since(cp.op_next);
        report.new_halves = self.tail_half_queue(
            usize::MAX,
            std::time::Duration::MAX,
            !report.from_checkpoint,
            Some(&settled),
        );
        drop(settled);
        for le in std::mem::take(&mut *self.lost_listed.lock()).into_values() {
            report.lost += 1;
            Counters::inc(&self.counters().lost_at_restart);
            tracing::error!(half_offset = le.q, commit_log_offset = le.p, "undecided transaction lost at restart: neither its half message nor a copy of it is readable");
        }
        let counted = journal::load(&self.state_dir);
        let (armed_before, same) = self.apply_journal_same_arming(&counted);
        report.ops_replayed = self.replay_ops(cp.op_next);
        report.journalled = same + self.apply_journal_later_arming(&counted, &armed_before);
        self.table.lock().dirty = true;
        // After a clean stop only the commits still being stored at the last checkpoint can
        // be torn (their op append failed, or the stop came first); after a crash, any.
        let clean = self.services.store().recovery_report().clean;
        let torn = self.find_torn_commits(|q| !clean || pending.contains(&q));
        report.torn_commits = torn.len();
        (report, torn)
    }

    /// The half message (or current copy) of a checkpoint's live entry. An entry names the
    /// transaction (`q`, `p`) and where its record now is (`cq`, `cp`): a record read at `cp`
    /// is taken when two of the other three agree with it, so one damaged offset (a flipped
    /// digit) does not lose an undecided transaction whose record is intact; otherwise the
    /// record at half queue offset `cq`, then `q`, when it names (`q`, `p`).
    fn half_of(&self, le: &checkpoint::LiveEntry) -> Result<HalfRecord, String> {
        let at_cp = self.read_half_untrusted(le.cp);
        if let Ok(rec) = &at_cp {
            let id = rec.id();
            let agree = [
                id.half_offset == le.q,
                id.commit_log_offset == le.p,
                rec.queue_offset == le.cq,
            ];
            match agree.iter().filter(|a| **a).count() {
                3 => return at_cp.map_err(|e| e.to_string()),
                2 => {
                    tracing::warn!(
                        entry_q = le.q, entry_p = le.p, entry_cq = le.cq, entry_cp = le.cp,
                        found_q = id.half_offset, found_p = id.commit_log_offset,
                        found_cq = rec.queue_offset,
                        "transaction checkpoint entry damaged (the offset that differs from what was found); the half message at its location names it"
                    );
                    return at_cp.map_err(|e| e.to_string());
                }
                _ => {}
            }
        }
        let reason = match &at_cp {
            Ok(r) => format!("another record ({:?})", r.id()),
            Err(e) => e.to_string(),
        };
        let wanted = TxnId {
            half_offset: le.q,
            commit_log_offset: le.p,
        };
        [le.cq, le.q]
            .into_iter()
            .find_map(|at| self.half_queue_entry(at).and_then(Result::ok).filter(|r| r.id() == wanted))
            .inspect(|_| tracing::warn!(half_offset = le.q, commit_log_offset = le.p, reason = %reason, "transaction checkpoint's location of the half message unusable; taken from the half queue"))
            .ok_or(reason)
    }

    /// Step 3b: journalled check counts of the arming each transaction has now (before the op
    /// replay, which may re-arm it). Returns every journalled transaction's arming then, and
    /// how many records were applied.
    fn apply_journal_same_arming(&self, counted: &[Counted]) -> (HashMap<u64, i64>, usize) {
        let mut t = self.table.lock();
        let armed: HashMap<u64, i64> = counted
            .iter()
            .filter_map(|r| t.get(r.half_offset).map(|e| (r.half_offset, e.armed_ms)))
            .collect();
        let applied = counted
            .iter()
            .filter(|r| armed.get(&r.half_offset) == Some(&r.armed_ms))
            .filter(|r| t.apply_counted(r))
            .count();
        (armed, applied)
    }

    /// Step 4b: checks journalled after a re-arm that the op replay has just applied again
    /// (the replayed re-arm starts the count at zero; these checks were sent after it).
    /// Returns how many records were applied.
    fn apply_journal_later_arming(&self, counted: &[Counted], before: &HashMap<u64, i64>) -> usize {
        let mut t = self.table.lock();
        counted
            .iter()
            .filter(|r| before.get(&r.half_offset).is_some_and(|a| r.armed_ms > *a))
            .filter(|r| t.apply_counted(r))
            .count()
    }

    /// Step 3a: the half messages whose latest op record from `from` on is a final decision.
    /// The tail of step 3 leaves them out of the table. Without a checkpoint it reads the whole
    /// retained half queue: before, every half message there became an entry first (~300
    /// bytes each) and the op replay decided them afterwards, so days of transactional traffic
    /// had to fit in memory at once. One bit per half offset instead.
    /// A checkpoint can be ahead of the queues it read (a machine crash under async flush, a
    /// store restored from a backup, a damaged tail recovery cut): new halves and ops then land
    /// below the offsets it saved. Left there, the tailer would never read those halves (their
    /// END answered "unknown transaction", no check ever sent), and every later checkpoint
    /// would save the stale offsets again. So reading starts at most at each queue's end.
    fn clamp_to_queues(&self, cp: &mut checkpoint::CheckpointData) {
        let store = self.services.store();
        let half_end = store.max_offset(TRANS_HALF_TOPIC, 0);
        let op_end = self.op_max();
        if cp.half_next > half_end || cp.op_next > op_end {
            tracing::warn!(
                saved_half_next = cp.half_next,
                half_end,
                saved_op_next = cp.op_next,
                op_end,
                "the transaction checkpoint is ahead of its queues (records were lost or the store was restored); reading from the queues' ends"
            );
            cp.half_next = cp.half_next.min(half_end);
            cp.op_next = cp.op_next.min(op_end);
            // An entry's last op at or past the op queue's end is gone: kept, it would make
            // the replay skip the entry's next ops stored at the offsets lost.
            for le in &mut cp.live {
                if le.op.is_some_and(|op| op >= op_end) {
                    le.op = None;
                }
            }
        }
    }

    fn settled_since(&self, from: u64) -> Settled {
        let store = self.services.store();
        let base = store.min_offset(TRANS_HALF_TOPIC, 0);
        let end = store.max_offset(TRANS_HALF_TOPIC, 0);
        let mut settled = Settled::new(base, end);
        self.each_op(from, |op, _| {
            let done = matches!(
                op.decision.target(),
                TxnState::Committed | TxnState::RolledBack | TxnState::Discarded
            );
            settled.set(op.id.half_offset, done);
        });
        settled
    }

    /// Applies every op record from `from` on; returns how many were ours.
    fn replay_ops(&self, from: u64) -> usize {
        let now = now_ms();
        let mut n = 0;
        self.each_op(from, |op, queue_offset| {
            let mut t = self.table.lock();
            if t.get(op.id.half_offset).is_some_and(|e| e.id == op.id) {
                t.replay(op.id.half_offset, op.decision, op.source, queue_offset, now);
            }
            n += 1;
        });
        n
    }

    /// Calls `f` with every op record from `from` on, in order, and its queue offset.
    fn each_op(&self, from: u64, mut f: impl FnMut(&OpRecord, u64)) {
        let store = self.services.store();
        let mut next = from.max(store.min_offset(TRANS_OP_HALF_TOPIC, 0));
        loop {
            let r = store.get_messages(TRANS_OP_HALF_TOPIC, 0, next, OP_BATCH, 8 << 20, None);
            if r.status == GetStatus::Found {
                for m in &r.messages {
                    if let Some(op) = OpRecord::parse(&m.bytes, self.max_record) {
                        f(&op, m.queue_offset);
                    }
                }
            } else if !matches!(
                r.status,
                GetStatus::NoMatchedMessage | GetStatus::OffsetTooSmall
            ) {
                return;
            }
            if r.next_offset <= next {
                return;
            }
            next = r.next_offset;
        }
    }

    /// Undecided transactions with a COMMIT record already stored; each is made `Resolving`.
    fn find_torn_commits(&self, suspect: impl Fn(u64) -> bool) -> Vec<Entry> {
        let undecided: Vec<Entry> = self
            .table
            .lock()
            .entries()
            .filter(|e| matches!(e.state, TxnState::Open | TxnState::Parked))
            .filter(|e| suspect(e.id.half_offset))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for e in undecided {
            if !self.commit_stored(&e) {
                continue;
            }
            tracing::warn!(producer_group = %e.group, transaction_id = %e.uniq, half_offset = e.id.half_offset, "committed message found without its op record (torn at the crash); completing the commit");
            let op_floor = self.op_max();
            if let Begin::Proceed(entry) =
                self.table
                    .lock()
                    .begin(e.id.half_offset, Decision::Commit, op_floor)
            {
                out.push(*entry);
            }
        }
        out
    }

    /// Whether the store holds this transaction's committed message, wherever the commit hooks
    /// put it: its topic, or parked in a schedule topic. Every place is searched, not only where
    /// the hooks would put it now: for an absolute deliver time they answer by the clock, so a
    /// commit parked before the crash looks "due at once" after a long enough stop, and a search
    /// of its topic alone missed it (the transaction was checked and committed again).
    fn commit_stored(&self, e: &Entry) -> bool {
        let half = self.read_half(e.current.phys_offset).ok();
        let maybe_delayed = half.as_ref().is_none_or(|h| delayed(&h.props));
        let hooked = half
            .and_then(|h| self.commit_input(h, e).ok())
            .map(|m| m.topic);
        let mut topics = vec![e.topic.as_str()];
        // The schedule topics only for a half that asks for a delay (or one unreadable now):
        // after a crash every undecided transaction is searched.
        if maybe_delayed {
            topics.extend([SCHEDULE_TOPIC, TIMER_TOPIC]);
        }
        if let Some(t) = hooked.as_deref().filter(|t| !topics.contains(t)) {
            topics.push(t);
        }
        let want = i64::try_from(e.id.commit_log_offset).unwrap_or(-1);
        let store = self.services.store();
        topics.iter().any(|topic| {
            let (records, capped) =
                store.query_by_uniq_key_where(topic, &e.uniq, COMMIT_LOOKUP_MAX, &|_| true);
            let found = records
                .iter()
                .filter_map(|raw| {
                    RecordView::parse(raw, self.max_record)
                        .ok()
                        .map(|v| v.header)
                })
                .any(|h| {
                    sysflag::transaction_type(h.sys_flag) == sysflag::TRANSACTION_COMMIT
                        && h.prepared_transaction_offset == want
                });
            if !found && capped {
                // Taken as not stored: the commit is made again (a possible duplicate)
                // rather than the message lost.
                tracing::warn!(topic, transaction_id = %e.uniq, "the look-up of a torn commit was cut short; committing again, which may deliver the message twice");
            }
            found
        })
    }

    /// Step 5: writes the missing op records of torn commits.
    pub(crate) async fn complete_torn_commits(self: Arc<Self>, torn: Vec<Entry>) {
        let host = self.services.store().store_host();
        for e in torn {
            let id = e.id.half_offset;
            let op = op_record(
                e.id,
                Decision::Commit,
                Source::Recovery,
                &e.group,
                &e.uniq,
                host,
            );
            match self.put_with_retries(op).await {
                Ok(a) => {
                    let op_offset = a
                        .first()
                        .map_or(0, |a| u64::try_from(a.queue_offset).unwrap_or(0));
                    self.table.lock().complete(
                        id,
                        Decision::Commit,
                        Source::Recovery,
                        op_offset,
                        now_ms(),
                    );
                }
                Err(err) => {
                    tracing::error!(half_offset = id, error = %err, "op record of a torn commit not stored; the transaction stays resolving, and the next start completes it");
                    continue;
                }
            }
            self.resolved.notify_waiters();
        }
    }

    /// Appends a torn commit's op record, trying again every second for a while (a full
    /// disk, a busy store): until it is stored the transaction stays `Resolving`, and a
    /// checkpoint marks it `commit_pending` so that the next start, clean or not, completes it.
    async fn put_with_retries(
        &self,
        op: sluice_store::MessageInput,
    ) -> Result<Vec<sluice_store::Appended>, sluice_store::StoreError> {
        const TRIES: u32 = 30;
        let mut tried = 1;
        loop {
            match self.services.put(vec![op.clone()]).await {
                Err(e) if tried < TRIES && !matches!(e, sluice_store::StoreError::Closed) => {
                    tracing::warn!(error = %e, tried, "op record of a torn commit not stored yet; trying again");
                    tried += 1;
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                done => return done,
            }
        }
    }
}

/// Whether a half message asks for a delay (its commit may have been parked).
fn delayed(props: &sluice_protocol::Properties) -> bool {
    use sluice_protocol::message::keys;
    [
        keys::DELAY,
        keys::TIMER_DELAY_SEC,
        keys::TIMER_DELAY_MS,
        keys::TIMER_DELIVER_MS,
    ]
    .iter()
    .any(|k| props.get(k).is_some())
}

/// One bit per half-queue offset in `[base, end)`: set when the transaction's latest op record
/// is a final decision (see `Core::settled_since`).
pub(crate) struct Settled {
    base: u64,
    end: u64,
    bits: Vec<u64>,
}

impl Settled {
    fn new(base: u64, end: u64) -> Self {
        let len = end.saturating_sub(base);
        Self {
            base,
            end,
            bits: vec![0; usize::try_from(len.div_ceil(64)).unwrap_or(0)],
        }
    }

    /// Marks `half_offset` settled or not; offsets outside the queue are ignored.
    fn set(&mut self, half_offset: u64, settled: bool) {
        if !(self.base..self.end).contains(&half_offset) {
            return;
        }
        let i = half_offset - self.base;
        let (word, bit) = ((i / 64) as usize, i % 64);
        if settled {
            self.bits[word] |= 1 << bit;
        } else {
            self.bits[word] &= !(1 << bit);
        }
    }

    /// Whether the transaction at `half_offset` is decided for good.
    pub(crate) fn contains(&self, half_offset: u64) -> bool {
        if !(self.base..self.end).contains(&half_offset) {
            return false;
        }
        let i = half_offset - self.base;
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
}
