//! [`TxnService`]: the in-process API the HTTP facade and metrics use. Cheap to clone; usable
//! before start (sinks can be installed) and after stop (calls answer `NotStarted`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_store::now_ms;

use crate::config::GroupPolicy;
use crate::core::{Core, Outcome};
use crate::error::TxnError;
use crate::extension::Shared;
use crate::metrics::TxnMetrics;
use crate::resolve::{Resolution, TxnRef};
use crate::sink::{CheckSink, PendingCheck};
use crate::state::{CheckAnswer, Decision, Source, TxnState};
use crate::table::TableGauges;
use crate::table::{ms, Entry};

/// Which transactions a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateFilter {
    /// Undecided: open, resolving, parked (the default).
    #[default]
    Live,
    /// Open (being checked) only.
    Open,
    /// Parked by the final action `keep` only.
    Parked,
    /// Decided and still in memory.
    Decided,
    /// Everything in memory.
    All,
}

impl StateFilter {
    fn admits(self, s: TxnState) -> bool {
        match self {
            Self::Live => s.is_live(),
            Self::Open => s == TxnState::Open,
            Self::Parked => s == TxnState::Parked,
            Self::Decided => s.is_final(),
            Self::All => true,
        }
    }
}

/// A listing request. Results are ordered by half offset; page with `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only this producer group.
    pub producer_group: Option<String>,
    /// Only transactions with this business key (one of `KEYS`) or this transaction id.
    pub key: Option<String>,
    /// Only transactions at least this old (since the half message was stored).
    pub min_age: Option<Duration>,
    /// Which states.
    pub states: StateFilter,
    /// Only half offsets above this one (paging).
    pub after: Option<u64>,
    /// Most results. Default 100.
    pub limit: usize,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            producer_group: None,
            key: None,
            min_age: None,
            states: StateFilter::Live,
            after: None,
            limit: 100,
        }
    }
}

/// One transaction as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnView {
    /// Identity: the half message's queue offset (what force/re-arm take).
    pub half_offset: u64,
    /// Identity: the half message's commit-log offset.
    pub commit_log_offset: u64,
    /// Where the half message's bytes are now (differs after a carry-forward).
    pub current_half_offset: u64,
    /// Transaction id (UNIQ_KEY).
    pub transaction_id: String,
    /// Producer group.
    pub producer_group: String,
    /// Real topic.
    pub topic: String,
    /// Real queue.
    pub queue_id: i32,
    /// `KEYS` (bounded).
    pub keys: String,
    /// `TAGS` (bounded).
    pub tags: String,
    /// Producer timestamp, epoch ms.
    pub born_ms: i64,
    /// When the half message was stored, epoch ms.
    pub stored_ms: i64,
    /// Age now, ms.
    pub age_ms: u64,
    /// State.
    pub state: TxnState,
    /// Checks delivered since (re)armed.
    pub check_count: u32,
    /// Last check, epoch ms.
    pub last_check_ms: Option<i64>,
    /// The producer's last answer to a check, and when.
    pub last_answer: Option<(CheckAnswer, i64)>,
    /// Who decided (or parked) it.
    pub decided_by: Option<Source>,
    /// When it was decided, epoch ms.
    pub resolved_ms: Option<i64>,
}

impl TxnView {
    fn of(e: &Entry, now: i64) -> Self {
        Self {
            half_offset: e.id.half_offset,
            commit_log_offset: e.id.commit_log_offset,
            current_half_offset: e.current.half_offset,
            transaction_id: e.uniq.clone(),
            producer_group: e.group.clone(),
            topic: e.topic.clone(),
            queue_id: e.queue_id,
            keys: e.keys.clone(),
            tags: e.tags.clone(),
            born_ms: e.born_ms,
            stored_ms: e.stored_ms,
            age_ms: u64::try_from(now.saturating_sub(e.stored_ms)).unwrap_or(0),
            state: e.state,
            check_count: e.checks,
            last_check_ms: e.last_check_ms,
            last_answer: e.last_answer,
            decided_by: e.decided_by,
            resolved_ms: e.resolved_ms,
        }
    }
}

fn matches(e: &Entry, q: &ListQuery, now: i64) -> bool {
    // `q.after` is applied by the range the caller walks (`Table::entries_after`).
    q.states.admits(e.state)
        && q.producer_group.as_deref().is_none_or(|g| g == e.group)
        && q.key
            .as_deref()
            .is_none_or(|k| e.uniq == k || e.keys.split(' ').any(|t| t == k))
        && q.min_age
            .is_none_or(|a| now.saturating_sub(e.stored_ms) >= ms(a))
}

/// Entries a listing walks under one hold of the table's lock.
const LIST_CHUNK: usize = 4096;

/// The listing of `q`, walking the table `chunk` entries at a time (see [`TxnService::list`]).
pub(crate) fn list_in_chunks(
    table: &parking_lot::Mutex<crate::table::Table>,
    q: &ListQuery,
    now: i64,
    chunk: usize,
) -> Vec<TxnView> {
    let mut found = Vec::new();
    if q.limit == 0 {
        return found;
    }
    let mut after = q.after;
    loop {
        let t = table.lock();
        let mut walked = 0;
        for e in t.entries_after(after).take(chunk) {
            walked += 1;
            after = Some(e.id.half_offset);
            if matches(e, q, now) {
                found.push(TxnView::of(e, now));
                if found.len() == q.limit {
                    return found;
                }
            }
        }
        if walked < chunk {
            return found;
        }
    }
}

/// Runs blocking work (store reads, table walks) on tokio's blocking pool. A panic there is
/// the caller's, as if run inline; work the runtime cancelled (shutting down) is `NotStarted`.
pub(crate) async fn off_workers<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, TxnError> + Send + 'static,
) -> Result<T, TxnError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(TxnError::NotStarted),
    }
}

/// The transaction service's in-process API (operators, the HTTP facade, metrics).
#[derive(Clone)]
pub struct TxnService {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for TxnService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnService").finish_non_exhaustive()
    }
}

impl TxnService {
    fn core(&self) -> Result<Arc<Core>, TxnError> {
        self.shared.core.read().clone().ok_or(TxnError::NotStarted)
    }

    /// The core, with the half queue read up to what the store has dispatched, so a half
    /// message whose send was acknowledged shows up without waiting for the checker's tick.
    /// Blocking (store reads, and the checker's tailing lock, held up to its tick budget): call
    /// it off the async workers.
    fn fresh_core(&self) -> Result<Arc<Core>, TxnError> {
        let core = self.core()?;
        core.tail_half_queue(4, Duration::from_millis(50), false, None);
        Ok(core)
    }

    /// [`Self::fresh_core`] on a blocking thread.
    async fn fresh_core_off_workers(&self) -> Result<Arc<Core>, TxnError> {
        let me = self.clone();
        off_workers(move || me.fresh_core()).await
    }

    /// Transactions in memory matching `q` (undecided ones are always in memory). The table
    /// is walked in chunks of [`LIST_CHUNK`] entries, its lock let go between them: a filter
    /// that matches little walks the whole table, and END_TRANSACTION and the checker wait
    /// on that lock. Runs off the async workers.
    pub async fn list(&self, q: &ListQuery) -> Result<Vec<TxnView>, TxnError> {
        let (me, q) = (self.clone(), q.clone());
        off_workers(move || {
            let core = me.fresh_core()?;
            Ok(list_in_chunks(&core.table, &q, now_ms(), LIST_CHUNK))
        })
        .await
    }

    /// One transaction by half offset, if in memory. Runs off the async workers.
    pub async fn get(&self, half_offset: u64) -> Result<Option<TxnView>, TxnError> {
        let me = self.clone();
        off_workers(move || {
            let core = me.fresh_core()?;
            let now = now_ms();
            let view = core
                .table
                .lock()
                .get(half_offset)
                .map(|e| TxnView::of(e, now));
            Ok(view)
        })
        .await
    }

    /// A decided transaction no longer in memory (see [`Self::get`]), read back from its op
    /// record and half message while retention keeps them: decision, who made it and when;
    /// no check count or last answer. `r` must name it (group, offsets, transaction id).
    pub fn get_decided(&self, r: &crate::TxnRef) -> Result<Option<TxnView>, TxnError> {
        let core = self.core()?;
        let entry = core.read_back_decided(r)?;
        Ok(entry.map(|e| TxnView::of(&e, now_ms())))
    }

    /// Claims a check a sink queued (see `sink`), just before the facade calls its webhook or
    /// hands it out to a poller: counts it against `check_max` and journals the count, as a
    /// check sent over TCP is counted before it is sent. `None` when it is no longer wanted:
    /// the transaction was decided, or another check of it was counted since this one was
    /// queued (the facade then drops it). Counted when queued, checks that waited behind slow
    /// webhooks used the budget up, and the final action came without the producer ever
    /// being asked.
    pub async fn claim_check(
        &self,
        check: &PendingCheck,
    ) -> Result<Option<PendingCheck>, TxnError> {
        Ok(self.claim_checks(vec![check.clone()]).await?.pop())
    }

    /// [`TxnService::claim_check`] for several checks at once (a poll's hand-out), counted
    /// under one table lock and journalled with one sync; returns those still wanted.
    pub async fn claim_checks(
        &self,
        checks: Vec<PendingCheck>,
    ) -> Result<Vec<PendingCheck>, TxnError> {
        let (core, shared) = (self.core()?, Arc::clone(&self.shared));
        to_completion(async move { claim(&core, &shared, checks).await }).await
    }

    /// Forces a commit (`true`) or rollback (`false`) of an undecided transaction, as an
    /// operator. The same rules hold: a decided transaction is not changed.
    pub async fn force(&self, half_offset: u64, commit: bool) -> Result<Outcome, TxnError> {
        let decision = if commit {
            Decision::Commit
        } else {
            Decision::Rollback
        };
        let me = self.clone();
        to_completion(async move {
            let core = me.fresh_core_off_workers().await?;
            core.force(half_offset, decision).await
        })
        .await
    }

    /// Re-arms the checks of a parked transaction: open again, check count zero, first check
    /// one `check_after` from now. Recorded durably (an op record).
    pub async fn rearm(&self, half_offset: u64) -> Result<Outcome, TxnError> {
        let core = self.core()?;
        to_completion(async move { core.force(half_offset, Decision::Rearm).await }).await
    }

    /// Answers a transaction by reference: the HTTP twin of END_TRANSACTION. `from_check`
    /// marks an answer to a check (counted, shown as the last answer).
    pub async fn resolve(
        &self,
        r: &TxnRef,
        resolution: Resolution,
        from_check: bool,
    ) -> Result<Outcome, TxnError> {
        let (core, r) = (self.core()?, r.clone());
        to_completion(async move { core.resolve(&r, resolution, from_check).await }).await
    }

    /// Hands out up to `max` queued checks of a pull-mode group (each counts as a delivered
    /// check, journalled before it is handed out, as a pushed check is before it is sent).
    /// Checks of transactions decided meanwhile are dropped, never handed out.
    pub async fn pull_checks(
        &self,
        group: &str,
        max: usize,
    ) -> Result<Vec<PendingCheck>, TxnError> {
        let (core, shared, group) = (self.core()?, Arc::clone(&self.shared), group.to_owned());
        to_completion(async move { hand_out_checks(&core, &shared, &group, max).await }).await
    }

    /// Installs the sink that delivers checks of groups with a `check_url`. `deliver` runs
    /// under the table lock: it must only queue, and must not call back into this service.
    pub fn set_url_sink(&self, sink: Option<Arc<dyn CheckSink>>) {
        *self.shared.url_sink.write() = sink;
    }

    /// Installs (or removes) a sink for one producer group; it takes precedence over the
    /// group's configuration. Same rules as [`TxnService::set_url_sink`].
    pub fn set_check_sink(&self, group: &str, sink: Option<Arc<dyn CheckSink>>) {
        let mut sinks = self.shared.group_sinks.write();
        match sink {
            Some(s) => {
                sinks.insert(group.to_owned(), s);
            }
            None => {
                sinks.remove(group);
            }
        }
    }

    /// The check-back policy `group` gets (its override over the defaults): the HTTP facade
    /// asks whether a group is in pull mode or has a `check_url` before routing its checks.
    pub fn policy(&self, group: &str) -> GroupPolicy {
        self.shared.cfg.policy(group)
    }

    /// Gauges and counters.
    pub fn metrics(&self) -> TxnMetrics {
        let mut m = TxnMetrics::default();
        self.shared.counters.fill(&mut m);
        if let Some(core) = self.shared.core.read().clone() {
            let g = self.table_gauges(&core);
            // Halves stored but not yet read by the checker are open too (they count toward
            // `max_open`): without them the gauge lagged a burst by up to a tick.
            m.open = g.open + self.shared.unindexed.get() as u64;
            m.parked = g.parked;
            m.resolving = g.resolving;
            m.resolved_in_memory = g.done;
            m.oldest_open_age_ms = g.oldest_ms.map_or(0, |o| {
                u64::try_from(now_ms().saturating_sub(o)).unwrap_or(0)
            });
            m.pending_pull_checks = g.pending_pulls;
            m.checks_due_waiting = g.due_waiting;
        }
        m
    }

    /// The table's gauges. Counting them walks every entry under the lock sends and
    /// END_TRANSACTION take: over [`GAUGES_WALK_FREE`] entries, a walk less than
    /// [`GAUGES_FRESH`] old is reused, so scrapes of a public `/metrics` (or a loop of them)
    /// cannot keep the transaction path waiting.
    fn table_gauges(&self, core: &Core) -> TableGauges {
        let mut cached = self.shared.gauges.lock();
        if let Some((at, g)) = *cached {
            if at.elapsed() < GAUGES_FRESH {
                return g;
            }
        }
        let t = core.table.lock();
        let g = t.gauges();
        *cached = (t.len() > GAUGES_WALK_FREE).then(|| (Instant::now(), g));
        g
    }
}

/// Tables up to this many entries are walked for every `metrics` call (a walk is cheap then).
const GAUGES_WALK_FREE: usize = 4096;
/// How long a larger table's walk is reused.
const GAUGES_FRESH: Duration = Duration::from_secs(1);

/// Takes up to `max` queued checks of a pull-mode group, counts and journals them, and reads
/// what they carry (see [`TxnService::pull_checks`]).
async fn hand_out_checks(
    core: &Core,
    shared: &Shared,
    group: &str,
    max: usize,
) -> Result<Vec<PendingCheck>, TxnError> {
    let now = now_ms();
    let taken = core.table.lock().take_pull(group, max, now);
    let counted = taken.iter().map(|(_, c)| *c).collect();
    if let Err(e) = core.journal_checks(counted).await {
        // As for pushed checks: never handed out without their record (see `run_check_round`).
        tracing::warn!(producer_group = group, error = %e, "pulled check counts not journalled; the checks wait");
        let mut t = core.table.lock();
        for (entry, _) in taken.iter().rev() {
            t.uncount_check(entry.id.half_offset);
            t.requeue_pull(group, entry.id.half_offset);
        }
        return Err(e);
    }
    let mut out = Vec::with_capacity(taken.len());
    for (e, c) in taken {
        // Decided while its count was journalled: never handed out (no check for a resolved
        // transaction).
        let still_open = core
            .table
            .lock()
            .get(e.id.half_offset)
            .is_some_and(|now| now.state == TxnState::Open);
        if !still_open {
            continue;
        }
        match core.read_half(e.current.phys_offset) {
            Ok(half) => {
                crate::metrics::Counters::inc(&shared.counters.checks_sent);
                out.push(PendingCheck::new(&e, &half, c.checks, None));
            }
            Err(err) => {
                core.table.lock().uncount_check(e.id.half_offset);
                tracing::warn!(half_offset = e.id.half_offset, error = %err, "pulled check dropped: half message unreadable");
            }
        }
    }
    Ok(out)
}

/// See [`TxnService::claim_checks`].
async fn claim(
    core: &Core,
    shared: &Shared,
    checks: Vec<PendingCheck>,
) -> Result<Vec<PendingCheck>, TxnError> {
    let now = now_ms();
    let mut claimed = Vec::with_capacity(checks.len());
    let mut records = Vec::with_capacity(checks.len());
    {
        let mut t = core.table.lock();
        for check in checks {
            let id = check.half_offset;
            let wanted = t.get(id).is_some_and(|e| {
                e.state == TxnState::Open
                    && e.id.commit_log_offset == check.commit_log_offset
                    && e.checks + 1 == check.check_count
            });
            if !wanted {
                continue;
            }
            let before = t.get(id).and_then(|e| e.last_check_ms);
            if let Some(counted) = t.count_check(id, now) {
                records.push(counted);
                claimed.push((check, before));
            }
        }
    }
    if let Err(e) = core.journal_checks(records).await {
        // Never called without its record (see `run_check_round`): they are offered again.
        let mut t = core.table.lock();
        for (check, before) in claimed.iter().rev() {
            t.unclaim_check(check.half_offset, *before);
        }
        return Err(e);
    }
    // Decided while the counts were journalled: not asked (no check for a resolved
    // transaction).
    let t = core.table.lock();
    let open: Vec<PendingCheck> = claimed
        .into_iter()
        .map(|(c, _)| c)
        .filter(|c| {
            t.get(c.half_offset)
                .is_some_and(|e| e.state == TxnState::Open)
        })
        .collect();
    for _ in &open {
        crate::metrics::Counters::inc(&shared.counters.checks_sent);
    }
    Ok(open)
}

/// Runs `work` on a task of its own and waits for it. A decision moves its transaction to
/// `Resolving`, appends, then makes it final (or reverts it): dropped halfway, as an HTTP
/// handler is when its client disconnects, it would leave the transaction `Resolving` until
/// a restart (every later decision answered "busy", no checks). A task is not dropped with its
/// caller, so the decision always finishes. Pulled checks are counted the same way.
async fn to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, TxnError>> + Send + 'static,
) -> Result<T, TxnError> {
    // In the caller's span, so what the decision logs carries the HTTP request's id.
    match tokio::spawn(tracing::Instrument::in_current_span(work)).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(TxnError::Busy("the broker is shutting down".into())),
    }
}
