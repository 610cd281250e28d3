//! From a client's reference (END_TRANSACTION's offsets, group and ids) to a transaction, and
//! the decision it asks for.
//!
//! A reference is checked before anything is decided: the half message at `commitLogOffset`
//! must be the one at `tranStateTableOffset`, of the same producer group, with the same
//! transaction id. Offsets are never reused, so a delayed or duplicated request for an old
//! transaction can only ever touch that transaction.
//!
//! Where the transaction is found:
//! - in memory (open, parked, or decided recently);
//! - not yet read by the tailer (the END raced ahead of it): taken as its send stored it
//!   (`fresh`), or read through the half queue (never at the client's commit-log offset: a
//!   bogus one would read as corruption), and added;
//! - decided and forgotten: its op record, found through the store's key index, answers
//!   idempotently or with the conflict. Without one, the answer is "unknown transaction".

use std::sync::Arc;
use std::time::Duration;

use sluice_broker::TRANS_OP_HALF_TOPIC;
use sluice_protocol::message::offset_msg_id;
use sluice_store::{now_ms, Store};

use crate::core::{Core, Outcome};
use crate::error::TxnError;
use crate::metrics::Counters;
use crate::records::{HalfRecord, OpRecord, TxnId};
use crate::state::{plan, CheckAnswer, Decision, Plan, Source, TxnState};
use crate::table::Entry;

/// How long a reference to a half message written but not yet dispatched waits.
const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// How often such a reference looks again. The producer sends END_TRANSACTION the moment its
/// half message is acknowledged, which can be before the dispatcher (woken by the same sync)
/// has indexed it; the wait is then usually well under a millisecond.
const DISPATCH_POLL: Duration = Duration::from_millis(1);
/// Op records looked at for one forgotten transaction.
const MAX_OPS_PER_TXN: usize = 16;

/// A client's reference to a transaction: what END_TRANSACTION (or its HTTP twin) carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnRef {
    /// The producer group (must be the half message's `PGROUP`).
    pub producer_group: String,
    /// `tranStateTableOffset`: the half message's queue offset.
    pub half_offset: u64,
    /// `commitLogOffset`: the half message's commit-log offset.
    pub commit_log_offset: u64,
    /// The transaction id (UNIQ_KEY), when the client sends one.
    pub transaction_id: Option<String>,
    /// `msgId`: the UNIQ_KEY (or the half's offset message id), when sent.
    pub msg_id: Option<String>,
}

/// A producer's resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Commit.
    Commit,
    /// Roll back.
    Rollback,
    /// Still unknown (only meaningful as a check answer).
    Unknown,
}

/// Where a reference led.
enum Located {
    /// In the table; with its half message when it was just read to adopt it.
    InMemory(u64, Option<Box<HalfRecord>>),
    Forgotten(OpRecord),
}

impl Core {
    /// Resolves a reference with a decision from `by` (producer or check answer).
    pub(crate) async fn resolve(
        &self,
        r: &TxnRef,
        resolution: Resolution,
        from_check: bool,
    ) -> Result<Outcome, TxnError> {
        self.resolve_if(r, resolution, from_check, |_| Ok(())).await
    }

    /// As [`Core::resolve`], once `may` allows the transaction's real topic (END_TRANSACTION
    /// under ACL: PUB on it). A decided transaction known only by its op record is answered
    /// without the check: nothing changes.
    pub(crate) async fn resolve_if(
        &self,
        r: &TxnRef,
        resolution: Resolution,
        from_check: bool,
        may: impl Fn(&str) -> Result<(), TxnError>,
    ) -> Result<Outcome, TxnError> {
        let located = self
            .locate(r)
            .await
            .inspect_err(|e| self.count_unknown(e))?;
        let refused = match &located {
            Located::InMemory(id, half) => {
                let topic = match half {
                    Some(h) => Some(h.real_topic.clone()),
                    None => self.table.lock().get(*id).map(|e| e.topic.clone()),
                };
                topic.and_then(|t| may(&t).err())
            }
            Located::Forgotten(_) => None,
        };
        if let Some(e) = refused {
            self.put_back(located);
            return Err(e);
        }
        if from_check {
            self.note_answer(&located, resolution);
        }
        let decision = match resolution {
            Resolution::Commit => Decision::Commit,
            Resolution::Rollback => Decision::Rollback,
            Resolution::Unknown => {
                let noted = self.unknown_noted(&located);
                self.put_back(located);
                return Ok(noted);
            }
        };
        let by = if from_check {
            Source::CheckAnswer
        } else {
            Source::Producer
        };
        match located {
            Located::InMemory(id, half) => {
                match self.decide_with(id, decision, by, half.map(|h| *h)).await {
                    // Decided and forgotten between `locate` and the decision (only decided
                    // entries are forgotten): its op record answers, as for any late repeat.
                    Err(TxnError::Unknown { .. }) => {
                        let op = self
                            .find_op_off_workers(r)
                            .await
                            .inspect_err(|e| self.count_unknown(e))?;
                        self.judge_forgotten(&op, decision)
                    }
                    other => other,
                }
            }
            Located::Forgotten(op) => self.judge_forgotten(&op, decision),
        }
    }

    /// Counts a reference that named no known transaction: nothing there, or a half message
    /// the reference does not describe (a tampered or mistyped id or offset).
    fn count_unknown(&self, e: &TxnError) {
        if matches!(e, TxnError::Unknown { .. } | TxnError::Mismatch(_)) {
            Counters::inc(&self.counters().unknown_refs);
        }
    }

    /// The half message read to adopt a transaction that is not being decided now (taken
    /// from memory or read from the store) is kept for the decision that will come.
    fn put_back(&self, located: Located) {
        // Only `adopt` makes such a half, and it takes originals only (no carried copies).
        if let Located::InMemory(_, Some(half)) = located {
            self.keep_again(*half);
        }
    }

    /// What an UNKNOWN answer is told: the decided state when the transaction is already
    /// decided (not "it stays open"), otherwise that it was noted.
    fn unknown_noted(&self, located: &Located) -> Outcome {
        let state = match located {
            Located::InMemory(id, _) => self
                .table
                .lock()
                .get(*id)
                .map_or(TxnState::Open, |e| e.state),
            Located::Forgotten(op) => op.decision.target(),
        };
        if state.is_final() {
            Outcome::Already(state)
        } else {
            Outcome::Noted(state)
        }
    }

    fn note_answer(&self, located: &Located, resolution: Resolution) {
        let (answer, counter) = match resolution {
            Resolution::Commit => (CheckAnswer::Commit, &self.counters().answers_commit),
            Resolution::Rollback => (CheckAnswer::Rollback, &self.counters().answers_rollback),
            Resolution::Unknown => (CheckAnswer::Unknown, &self.counters().answers_unknown),
        };
        Counters::inc(counter);
        if let Located::InMemory(id, _) = located {
            self.table.lock().note_answer(*id, answer, now_ms());
        }
    }

    /// A decided transaction no longer in memory: its op record decides the answer.
    fn judge_forgotten(&self, op: &OpRecord, decision: Decision) -> Result<Outcome, TxnError> {
        let state = op.decision.target();
        match plan(state, decision) {
            Plan::Already => Ok(Outcome::Already(state)),
            Plan::Refuse => {
                Counters::inc(&self.counters().conflicts);
                Err(TxnError::Conflict {
                    requested: decision,
                    state,
                    decided_by: op.source,
                })
            }
            // A live transaction is never forgotten; an op saying otherwise is stale.
            Plan::Apply | Plan::Wait => Err(TxnError::Unknown {
                half_offset: op.id.half_offset,
                commit_log_offset: op.id.commit_log_offset,
            }),
        }
    }

    async fn locate(&self, r: &TxnRef) -> Result<Located, TxnError> {
        // Validated in place: no copy of the entry (five strings) per reference.
        let half_next = {
            let t = self.table.lock();
            if let Some(e) = t.get(r.half_offset) {
                self.validate(e, r)?;
                return Ok(Located::InMemory(r.half_offset, None));
            }
            t.half_next
        };
        if r.half_offset >= half_next {
            if let Some((id, half)) = self.adopt(r).await? {
                return Ok(Located::InMemory(id, Some(Box::new(half))));
            }
        }
        self.find_op_off_workers(r).await.map(Located::Forgotten)
    }

    /// Reads a half message the tailer has not reached yet and adds it to the table. `None`
    /// when the tailer passed it while it was read and it is gone from the table again: it
    /// was added then, decided and forgotten meanwhile, and its op record answers (adding it
    /// again would have opened a decided transaction a second time).
    async fn adopt(&self, r: &TxnRef) -> Result<Option<(u64, HalfRecord)>, TxnError> {
        let (rec, kept) = match self.fresh_half(r.half_offset, r.commit_log_offset) {
            Some(rec) => (rec, true),
            None => (self.read_half_queue_entry(r).await?, false),
        };
        if rec.origin.is_some() {
            return Err(TxnError::Mismatch(format!(
                "queue offset {} holds a carried-forward copy, not a transaction's original",
                r.half_offset
            )));
        }
        let entry = Entry::open(&rec);
        if let Err(e) = self.validate(&entry, r) {
            // A reference that does not describe it (another group, another id) leaves the
            // kept half for the one that does.
            if kept {
                self.keep_again(rec);
            }
            return Err(e);
        }
        if kept {
            Counters::inc(&self.counters().halves_kept_used);
        }
        let mut t = self.table.lock();
        if t.get(r.half_offset).is_none() {
            if r.half_offset < t.half_next {
                return Ok(None);
            }
            t.insert(entry);
        }
        Ok(Some((r.half_offset, rec)))
    }

    /// Reads the half message at queue offset `r.half_offset` through the half queue, never
    /// at a client-supplied commit-log offset (a bogus one would read as corruption). Waits
    /// briefly while the record at `r.commit_log_offset` is written but not yet dispatched
    /// (an END racing its send's dispatch, or a send with `WAIT=false`).
    async fn read_half_queue_entry(&self, r: &TxnRef) -> Result<HalfRecord, TxnError> {
        let store = self.services.store();
        let deadline = tokio::time::Instant::now() + FLUSH_WAIT;
        loop {
            if let Some(found) = self.half_queue_entry(r.half_offset) {
                return found;
            }
            let s = store.stats();
            let pending = r.commit_log_offset < s.written && s.dispatched <= r.commit_log_offset;
            if !pending || tokio::time::Instant::now() >= deadline {
                tracing::debug!(
                    half_offset = r.half_offset,
                    commit_log_offset = r.commit_log_offset,
                    "no half message for a transaction reference"
                );
                return Err(TxnError::Unknown {
                    half_offset: r.half_offset,
                    commit_log_offset: r.commit_log_offset,
                });
            }
            tokio::time::sleep(DISPATCH_POLL).await;
        }
    }

    /// A decided transaction that is not in memory (forgotten past `resolved_retention`, or
    /// decided before this start), as its op record and its half message describe it: its
    /// decision, who made it and when, without check counts or answers (memory only). `None`
    /// without a final op record, or once retention took its half message.
    pub(crate) fn read_back_decided(&self, r: &TxnRef) -> Result<Option<Entry>, TxnError> {
        let op = match self.find_op(r) {
            Ok(op) => op,
            Err(TxnError::Unknown { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let state = op.decision.target();
        if !state.is_final() {
            return Ok(None); // an undecided transaction is in memory; this op is stale
        }
        let Ok(raw) = self.services.store().read_record(op.id.commit_log_offset) else {
            return Ok(None);
        };
        let Ok(half) = HalfRecord::parse(&raw, self.max_record) else {
            return Ok(None);
        };
        let mut e = Entry::open(&half);
        if e.id != op.id {
            return Ok(None);
        }
        e.state = state;
        e.decided_by = op.source;
        e.resolved_ms = Some(op.stored_ms);
        Ok(Some(e))
    }

    /// The latest op record of a forgotten transaction, through the store's key index.
    /// Blocking (it walks index files and reads records): see [`Core::find_op_off_workers`].
    fn find_op(&self, r: &TxnRef) -> Result<OpRecord, TxnError> {
        op_of(self.services.store(), r, self.max_record)
    }

    /// [`Core::find_op`] on tokio's blocking pool, for the request paths (END_TRANSACTION and
    /// its HTTP twin): late and repeated decisions, and references to nothing, look there.
    async fn find_op_off_workers(&self, r: &TxnRef) -> Result<OpRecord, TxnError> {
        let store = Arc::clone(self.services.store());
        let (r, max_record) = (r.clone(), self.max_record);
        crate::service::off_workers(move || op_of(&store, &r, max_record)).await
    }

    /// Checks that a reference describes this transaction.
    fn validate(&self, e: &Entry, r: &TxnRef) -> Result<(), TxnError> {
        if r.commit_log_offset != e.id.commit_log_offset
            && r.commit_log_offset != e.current.phys_offset
        {
            return Err(TxnError::Mismatch(format!(
                "commitLogOffset {} does not match the half message at queue offset {} (commit-log offset {})",
                r.commit_log_offset, e.id.half_offset, e.id.commit_log_offset
            )));
        }
        if !e.group.is_empty() && e.group != r.producer_group {
            return Err(TxnError::WrongGroup {
                expected: e.group.clone(),
                got: r.producer_group.clone(),
            });
        }
        if let Some(t) = r.transaction_id.as_deref().filter(|t| !t.is_empty()) {
            if !t.eq_ignore_ascii_case(&e.uniq) {
                return Err(TxnError::Mismatch(format!(
                    "transaction id {t} is not {}",
                    e.uniq
                )));
            }
        }
        if let Some(m) = r.msg_id.as_deref().filter(|m| !m.is_empty()) {
            let host = self.services.store().store_host();
            let offset_id = offset_msg_id(host, e.id.commit_log_offset);
            if !m.eq_ignore_ascii_case(&e.uniq) && !m.eq_ignore_ascii_case(&offset_id) {
                return Err(TxnError::Mismatch(format!(
                    "msgId {m} is neither the transaction id {} nor {offset_id}",
                    e.uniq
                )));
            }
        }
        Ok(())
    }

    /// Decision by an operator, by identity; no reference checks.
    pub(crate) async fn force(
        &self,
        half_offset: u64,
        decision: Decision,
    ) -> Result<Outcome, TxnError> {
        let known = self.table.lock().get(half_offset).map(|e| e.state);
        match known {
            Some(_) => self.decide(half_offset, decision, Source::Operator).await,
            None => Err(TxnError::Unknown {
                half_offset,
                commit_log_offset: 0,
            }),
        }
    }
}

/// The latest op record naming `r`'s transaction, through the store's key index.
fn op_of(store: &Store, r: &TxnRef, max_record: usize) -> Result<OpRecord, TxnError> {
    let id = TxnId {
        half_offset: r.half_offset,
        commit_log_offset: r.commit_log_offset,
    };
    let key = r.half_offset.to_string();
    let op = store
        .query_by_key(
            TRANS_OP_HALF_TOPIC,
            &key,
            MAX_OPS_PER_TXN,
            i64::MIN / 2,
            i64::MAX / 2,
        )
        .iter()
        .filter_map(|raw| OpRecord::parse(raw, max_record))
        .filter(|op| op.id == id)
        .max_by_key(|op| op.phys_offset)
        .ok_or(TxnError::Unknown {
            half_offset: r.half_offset,
            commit_log_offset: r.commit_log_offset,
        })?;
    if !op.group.is_empty() && op.group != r.producer_group {
        return Err(TxnError::WrongGroup {
            expected: op.group,
            got: r.producer_group.clone(),
        });
    }
    if let Some(t) = r.transaction_id.as_deref().filter(|t| !t.is_empty()) {
        if !op.uniq.is_empty() && !t.eq_ignore_ascii_case(&op.uniq) {
            return Err(TxnError::Mismatch(format!(
                "transaction id {t} is not {}",
                op.uniq
            )));
        }
    }
    Ok(op)
}
