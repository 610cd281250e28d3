//! The running service and its one decision path. Every way a transaction can be decided
//! (END_TRANSACTION, a check answer, an operator, the final action, a pulled check answered over
//! HTTP) ends in [`Core::decide`]:
//!
//! 1. under the table lock, [`crate::state::plan`] judges the decision against the state; if it
//!    applies, the state becomes `Resolving` (nobody else may change it now);
//! 2. the records are built and appended as ONE store request, awaited until durable:
//!    commit = [real message, op record]; park = [copy in `TRANS_CHECK_MAX_TIME_TOPIC`, op];
//!    rollback, discard, re-arm = [op];
//! 3. the state becomes final (or reverts if the append failed) and waiters are woken.
//!
//! A request meeting `Resolving` waits (bounded) for the outcome and is judged again, so a
//! concurrent commit and rollback never both take effect, and a repeated decision is answered
//! from the state, never applied twice.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_broker::{BrokerServices, HookOutcome, PutContext, Stored, TRANS_OP_HALF_TOPIC};
use sluice_protocol::message::record::MAX_PROPERTIES_LEN;
use sluice_store::{now_ms, MessageInput};
use tokio::sync::Notify;

use crate::error::TxnError;
use crate::extension::Shared;
use crate::fresh::Fresh;
use crate::metrics::Counters;
use crate::records::{op_record, HalfRecord};
use crate::state::{Decision, Source, TxnState};
use crate::table::{Begin, Entry, Table};

/// Decisions not stored: one warning per 10 s and kind, with the count of those held back.
static UNSTORED_LOG: sluice_broker::log_every::LogEvery =
    sluice_broker::log_every::LogEvery::new(Duration::from_secs(10));

/// How long a request waits for a concurrent decision on the same transaction.
const RESOLVE_WAIT: Duration = Duration::from_secs(10);

/// What a decision request achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The decision was applied now; the transaction is in this state.
    Applied(TxnState),
    /// Nothing to do: the transaction already was in this state (an idempotent repeat).
    Already(TxnState),
    /// An UNKNOWN answer was noted; the transaction stays undecided, in this state (open,
    /// parked, or being resolved by another request).
    Noted(TxnState),
}

/// The running transaction service (exists between the extension's start and stop).
pub(crate) struct Core {
    pub(crate) services: BrokerServices,
    pub(crate) shared: Arc<Shared>,
    pub(crate) table: Mutex<Table>,
    /// Woken whenever a decision completes or reverts.
    pub(crate) resolved: Notify,
    /// Where the checkpoint lives.
    pub(crate) state_dir: PathBuf,
    /// The store's record limit, for parsing.
    pub(crate) max_record: usize,
    /// Round-robin position per producer group (check-backs spread over members).
    pub(crate) round_robin: Mutex<HashMap<String, usize>>,
    /// Serialises checkpoint writes so an older snapshot never replaces a newer one.
    pub(crate) checkpoint_lock: tokio::sync::Mutex<()>,
    /// When the checkpoint was last written.
    pub(crate) last_checkpoint: Mutex<std::time::Instant>,
    /// When the carry-forward scan last found nothing more to do (see `carry_forward`).
    pub(crate) last_carry_scan: Mutex<Option<std::time::Instant>>,
    /// Transactions whose carry-forward failed, and when: passed over for a while, so that
    /// a few that fail every time (an unreadable half) cannot hold the head of every scan
    /// while the ones after them age out of retention.
    pub(crate) carry_failed: Mutex<std::collections::HashMap<u64, std::time::Instant>>,
    /// How many checks each tick may start (`max_checks_per_sec`).
    pub(crate) pacer: Mutex<crate::pace::Pacer>,
    /// Held while the half queue is tailed: the checker and the operator views both tail, and
    /// two tailers interleaving could move `half_next` back over transactions decided and
    /// forgotten meanwhile, which would then be read again as open.
    pub(crate) tailing: Mutex<()>,
    /// At a restart: undecided transactions the checkpoint listed whose half could not be read
    /// where it said (retention took the original after a carry-forward the checkpoint did not
    /// see yet), by half offset. The rebuild's tail adopts them from a newer copy if it finds
    /// one; what is left is counted lost.
    pub(crate) lost_listed: Mutex<HashMap<u64, crate::checkpoint::LiveEntry>>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl Core {
    pub(crate) fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// End of the op queue (next offset to be written there).
    pub(crate) fn op_max(&self) -> u64 {
        self.services.store().max_offset(TRANS_OP_HALF_TOPIC, 0)
    }

    /// Reads and parses the half message (or copy) stored at `phys`.
    pub(crate) fn read_half(&self, phys: u64) -> Result<HalfRecord, TxnError> {
        self.parse_half(phys, self.services.store().read_record(phys))
    }

    /// [`Core::read_half`] at an offset that may point anywhere (a damaged checkpoint's): a
    /// record that does not verify there is not reported as store damage.
    pub(crate) fn read_half_untrusted(&self, phys: u64) -> Result<HalfRecord, TxnError> {
        self.parse_half(phys, self.services.store().read_record_untrusted(phys))
    }

    /// The record (an original or a carried-forward copy) at half queue offset `at`, parsed,
    /// if the queue holds one there.
    pub(crate) fn half_queue_entry(&self, at: u64) -> Option<Result<HalfRecord, TxnError>> {
        let got = self.services.store().get_messages(
            sluice_broker::TRANS_HALF_TOPIC,
            0,
            at,
            1,
            self.max_record,
            None,
        );
        let m = got.messages.first().filter(|m| m.queue_offset == at)?;
        Some(HalfRecord::parse(&m.bytes, self.max_record).map_err(TxnError::Record))
    }

    fn parse_half(
        &self,
        phys: u64,
        raw: Result<bytes::Bytes, sluice_store::StoreError>,
    ) -> Result<HalfRecord, TxnError> {
        let raw = raw.map_err(|e| TxnError::Record(format!("commit-log offset {phys}: {e}")))?;
        HalfRecord::parse(&raw, self.max_record)
            .map_err(|e| TxnError::Record(format!("commit-log offset {phys}: {e}")))
    }

    /// The half message stored at half queue offset `half_offset` and commit-log offset
    /// `phys`, when its send kept it (see `fresh`): no read, no parse of a stored record.
    pub(crate) fn fresh_half(&self, half_offset: u64, phys: u64) -> Option<HalfRecord> {
        let fresh = self.shared.fresh.lock().take(half_offset, phys)?;
        let half = HalfRecord::from_parts(fresh.header, fresh.body, fresh.props)
            .inspect_err(|e| tracing::debug!(half_offset, error = %e, "kept half message unusable; reading it"))
            .ok()?;
        Some(half)
    }

    /// Puts back a half message [`Core::fresh_half`] took for a reference that turned out not
    /// to describe it, or for a transaction not decided now. The body is copied: one read
    /// from the store is a slice of a mapped segment, which would keep the segment mapped.
    pub(crate) fn keep_again(&self, half: HalfRecord) {
        let fresh = Fresh {
            header: half.header,
            body: bytes::Bytes::copy_from_slice(&half.body),
            props_len: half.props.encoded_len(),
            props: half.props,
        };
        self.shared
            .fresh
            .lock()
            .keep(fresh, self.shared.cfg.fresh_half_bytes);
    }

    /// The one decision path; see the module docs.
    pub(crate) async fn decide(
        &self,
        id: u64,
        decision: Decision,
        by: Source,
    ) -> Result<Outcome, TxnError> {
        self.decide_with(id, decision, by, None).await
    }

    /// [`Core::decide`] with the half message already read (END_TRANSACTION adopting a
    /// transaction the tailer has not reached), so a commit does not read and parse it again.
    pub(crate) async fn decide_with(
        &self,
        id: u64,
        decision: Decision,
        by: Source,
        mut half: Option<HalfRecord>,
    ) -> Result<Outcome, TxnError> {
        let deadline = tokio::time::Instant::now() + RESOLVE_WAIT;
        loop {
            let notified = self.resolved.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let op_floor = self.op_max();
            let begin = self.table.lock().begin(id, decision, op_floor);
            match begin {
                Begin::Proceed(entry) => {
                    return self.apply(*entry, decision, by, half.take()).await
                }
                Begin::Done(state) => return Ok(Outcome::Already(state)),
                Begin::Refused(err) => {
                    Counters::inc(&self.counters().conflicts);
                    tracing::warn!(half_offset = id, decision = %decision, by = %by, error = %err, "transaction decision refused");
                    return Err(err);
                }
                Begin::Missing => {
                    return Err(TxnError::Unknown {
                        half_offset: id,
                        commit_log_offset: 0,
                    })
                }
                Begin::Wait => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(TxnError::Busy(format!(
                            "another decision on transaction {id} is still being stored"
                        )));
                    }
                }
            }
        }
    }

    /// Makes an applied decision durable, then final (or reverts it).
    async fn apply(
        &self,
        e: Entry,
        decision: Decision,
        by: Source,
        half: Option<HalfRecord>,
    ) -> Result<Outcome, TxnError> {
        let id = e.id.half_offset;
        let mut committed = None;
        let result = match self.records_for(&e, decision, by, half) {
            Ok(records) => {
                if decision == Decision::Commit && !self.shared.commit_hooks.read().is_empty() {
                    // Cheap: the body is shared, only topic and properties are copied.
                    committed = records.first().cloned();
                }
                self.services.put(records).await.map_err(TxnError::from)
            }
            Err(err) => Err(err),
        };
        match result {
            Ok(appended) => {
                if let (Some(msg), Some(at)) = (&committed, appended.first()) {
                    self.after_commit_put(msg, *at);
                }
                let op_offset = appended
                    .last()
                    .map_or(0, |a| u64::try_from(a.queue_offset).unwrap_or(0));
                self.table
                    .lock()
                    .complete(id, decision, by, op_offset, now_ms());
                self.resolved.notify_waiters();
                self.count_applied(decision);
                // Producers' own decisions are the hot path: debug. The rest is rarer and
                // worth seeing (check answers, operators, final actions, recovery).
                if by == Source::Producer {
                    tracing::debug!(
                        producer_group = %e.group, transaction_id = %e.uniq, half_offset = id,
                        commit_log_offset = e.id.commit_log_offset, decision = %decision,
                        "transaction decided"
                    );
                } else {
                    tracing::info!(
                        producer_group = %e.group, transaction_id = %e.uniq, half_offset = id,
                        commit_log_offset = e.id.commit_log_offset, decision = %decision, by = %by,
                        "transaction decided"
                    );
                }
                Ok(Outcome::Applied(decision.target()))
            }
            Err(err) => {
                self.table.lock().revert(id);
                self.resolved.notify_waiters();
                if let Some(held_back) = UNSTORED_LOG.allow(err.kind()) {
                    tracing::warn!(
                        producer_group = %e.group, transaction_id = %e.uniq, half_offset = id,
                        decision = %decision, error = %err, held_back, "transaction decision not stored; state restored"
                    );
                }
                Err(err)
            }
        }
    }

    fn count_applied(&self, decision: Decision) {
        let c = self.counters();
        Counters::inc(match decision {
            Decision::Commit => &c.committed,
            Decision::Rollback => &c.rolled_back,
            Decision::Discard => &c.discarded,
            Decision::Park => &c.parked,
            Decision::Rearm => &c.rearmed,
        });
    }

    /// The records one decision appends, in order.
    fn records_for(
        &self,
        e: &Entry,
        decision: Decision,
        by: Source,
        half: Option<HalfRecord>,
    ) -> Result<Vec<MessageInput>, TxnError> {
        let host = self.services.store().store_host();
        let op = op_record(e.id, decision, by, &e.group, &e.uniq, host);
        // A record read earlier is used only if it is the one the entry points at now.
        let the_half = move || match half {
            Some(h) if h.phys_offset == e.current.phys_offset => Ok(h),
            _ => match self.fresh_half(e.id.half_offset, e.current.phys_offset) {
                Some(h) => {
                    Counters::inc(&self.counters().halves_kept_used);
                    Ok(h)
                }
                None => self.read_half(e.current.phys_offset),
            },
        };
        match decision {
            Decision::Commit => {
                let half = the_half()?;
                Ok(vec![self.commit_input(half, e)?, op])
            }
            Decision::Park => {
                let half = the_half()?;
                Ok(vec![half.park_copy(e.checks), op])
            }
            Decision::Rollback | Decision::Discard | Decision::Rearm => {
                // Its half message is not needed: a kept copy would only wait to be evicted.
                self.shared
                    .fresh
                    .lock()
                    .take(e.id.half_offset, e.current.phys_offset);
                Ok(vec![op])
            }
        }
    }

    /// Shows the stored committed message to the commit hooks, as a send shows its messages
    /// to the put hooks (`PutHook::after_put`): the schedule counts a delayed commit as
    /// parked only once it is stored.
    fn after_commit_put(&self, msg: &MessageInput, at: sluice_store::Appended) {
        let mut stored = Stored::new(msg, at, None);
        for hook in self.shared.commit_hooks.read().iter() {
            hook.after_put(&mut stored);
        }
    }

    /// The committed message, after the commit hooks: **the seam a schedule extension uses**.
    /// A hook sees the message in its real topic and queue with sysFlag COMMIT and every stored
    /// property (`DELAY`, `TIMER_*` included) and may move it, as a put hook moves a produced
    /// message. Without hooks it is stored in its real topic at once.
    pub(crate) fn commit_input(
        &self,
        half: HalfRecord,
        e: &Entry,
    ) -> Result<MessageInput, TxnError> {
        let remote = half.header.born_host;
        let mut msg = half.into_commit_message(e.id);
        let ctx = PutContext {
            producer_group: &e.group,
            remote,
            batch: false,
            max_reconsume_times: None,
        };
        for hook in self.shared.commit_hooks.read().iter() {
            if let HookOutcome::Reject { code, remark } = hook.before_put(&ctx, &mut msg) {
                return Err(TxnError::Refused { code, remark });
            }
        }
        let len = msg.properties.encoded_len();
        if len > MAX_PROPERTIES_LEN {
            return Err(TxnError::Record(format!(
                "committed message properties are {len} bytes, more than {MAX_PROPERTIES_LEN}"
            )));
        }
        msg.input.properties = msg.properties.encode();
        Ok(msg.input)
    }
}
