//! Replay (redrive) tasks: copy dead letters back to their original topic (or another),
//! filtered, rate-limited, cancellable, resumable, audited. See the module docs of `dlq` for
//! the crash rule (copy first, then ledger, then progress: at most a duplicate).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_store::now_ms;
use tokio::time::Instant;

use super::read::{scan, DlqFilter, DlqMessage};
use super::state::{CancelFlag, Ledger};
use super::DlqError;
use crate::broker::context::BrokerContext;
use crate::processor::send as put;
use crate::retry::copy::{replay_copy, Original};
use crate::retry::{dlq_topic, ensure_one_queue_topic, PROP_REPLAYED_FROM, PROP_REPLAY_TASK};
use crate::stats::Counters;
use crate::topic::{retry_topic, DEFAULT_TOPIC};

/// Default rate (messages per second).
pub const DEFAULT_RATE: u32 = 100;
/// Highest rate accepted.
pub const MAX_RATE: u32 = 100_000;
/// How often progress is written while a task runs.
const PERSIST_EVERY: Duration = Duration::from_millis(500);

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplaySpec {
    /// Consumer group whose DLQ is replayed.
    pub group: String,
    /// Which messages (all when empty).
    pub filter: DlqFilter,
    /// Destination. By default each copy goes to the group's retry topic
    /// (`%RETRY%<group>`), as a retry of the message's original topic with a fresh retry
    /// count, so only this group consumes it again.
    pub target_topic: Option<String>,
    /// Messages per second (0 = [`DEFAULT_RATE`]).
    pub rate_per_sec: u32,
    /// Count what would be replayed, write nothing.
    pub dry_run: bool,
    /// Stop after this many matching messages.
    pub max_messages: Option<u64>,
    /// Who asked (kept in the audit log).
    pub requested_by: Option<String>,
}

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayState {
    /// Working (or waiting to resume after a restart).
    Running,
    /// Every selected message was handled.
    Completed,
    /// Stopped by [`super::DlqService::cancel_replay`].
    Cancelled,
    /// Stopped by an error (`error` says which); what was not replayed stays in the DLQ.
    Failed,
}

/// A task's definition and progress; also its file on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayStatus {
    /// Task id.
    pub id: String,
    /// Consumer group.
    pub group: String,
    /// Which messages.
    pub filter: DlqFilter,
    /// Destination override.
    pub target_topic: Option<String>,
    /// Messages per second.
    pub rate_per_sec: u32,
    /// Nothing is written.
    pub dry_run: bool,
    /// Cap on matching messages.
    pub max_messages: Option<u64>,
    /// Who asked.
    pub requested_by: Option<String>,
    /// State.
    pub state: ReplayState,
    /// Next DLQ queue offset to look at (everything before it is done).
    pub next_offset: u64,
    /// The DLQ's end when the task started; later dead letters are not replayed.
    pub end_offset: u64,
    /// Messages that passed the filter (and were not replayed before).
    pub matched: u64,
    /// Copies written.
    pub replayed: u64,
    /// Messages skipped: replayed earlier (ledger, or a copy found after a crash).
    pub skipped: u64,
    /// Messages that could not be written (left in the DLQ).
    pub failed: u64,
    /// Why the task failed, or the last per-message error.
    pub error: Option<String>,
    /// Created (epoch ms).
    pub created_ms: i64,
    /// Last progress (epoch ms).
    pub updated_ms: i64,
    /// Times the task was resumed after a restart.
    pub resumes: u32,
}

pub(crate) async fn start(
    ctx: &Arc<BrokerContext>,
    spec: ReplaySpec,
) -> Result<ReplayStatus, DlqError> {
    let topic = dlq_topic(&spec.group);
    crate::topic::validate_name(&topic)
        .map_err(|_| DlqError::Invalid(format!("invalid group {:?}", spec.group)))?;
    if let Some(t) = &spec.target_topic {
        check_target(t)?;
    }
    if spec.rate_per_sec > MAX_RATE {
        return Err(DlqError::Invalid(format!(
            "rate_per_sec must be at most {MAX_RATE}"
        )));
    }
    check_spec(ctx, &spec)?;
    // Refused before any state is made: a ledger and a task per invented group name would
    // otherwise pile up.
    if ctx.topics.get(&topic).is_none() {
        return Err(DlqError::NoDeadLetters(spec.group));
    }
    let now = now_ms();
    let status = ReplayStatus {
        id: ctx.dlq.next_id(),
        group: spec.group,
        filter: spec.filter,
        target_topic: spec.target_topic,
        rate_per_sec: if spec.rate_per_sec == 0 {
            DEFAULT_RATE
        } else {
            spec.rate_per_sec
        },
        dry_run: spec.dry_run,
        max_messages: spec.max_messages,
        requested_by: spec.requested_by,
        state: ReplayState::Running,
        next_offset: ctx.store.min_offset(&topic, 0),
        end_offset: ctx.store.max_offset(&topic, 0),
        matched: 0,
        replayed: 0,
        skipped: 0,
        failed: 0,
        error: None,
        created_ms: now,
        updated_ms: now,
        resumes: 0,
    };
    ctx.dlq.ledger(&status.group)?;
    // Reserved before the save awaits, so a concurrent start for the group sees it (Busy).
    let cancel = ctx.dlq.reserve(status.clone())?;
    // Launched on its own task: a caller that goes away while the file is being saved (an
    // HTTP client hanging up) must not leave the reservation behind with no runner, which
    // would refuse every later replay of the group as Busy.
    tokio::spawn(launch(Arc::clone(ctx), status, cancel))
        .await
        .map_err(|e| DlqError::State(e.to_string()))?
}

/// Saves a reserved task's file and audit line, then runs it; drops the reservation when
/// the save fails, so the group is free again.
async fn launch(
    ctx: Arc<BrokerContext>,
    status: ReplayStatus,
    cancel: Arc<CancelFlag>,
) -> Result<ReplayStatus, DlqError> {
    if let Err(e) = save(&ctx, &status, Some("started"), &BTreeSet::new()).await {
        // The task file may be saved although the audit line was not.
        let (ctx2, id) = (Arc::clone(&ctx), status.id.clone());
        let _ = tokio::task::spawn_blocking(move || ctx2.dlq.discard(&id)).await;
        return Err(e);
    }
    spawn(&ctx, status.clone(), cancel);
    tracing::info!(task = %status.id, group = %status.group, dry_run = status.dry_run, rate = status.rate_per_sec, "replay task started");
    Ok(status)
}

/// Refuses a destination a producer may not send to, and the broker's own topics. Copies are
/// appended without the send path's checks and hooks, so a copy there would be read as a
/// timer, a half message or an op record, or would sit where no consumer reads it (a DLQ),
/// while the ledger marks its dead letter replayed.
fn check_target(topic: &str) -> Result<(), DlqError> {
    crate::topic::validate_name(topic).map_err(|r| DlqError::Invalid(r.remark))?;
    if crate::topic::is_broker_topic(topic) {
        return Err(DlqError::Forbidden(format!(
            "replaying to topic[{topic}] is forbidden: it is a system topic"
        )));
    }
    Ok(())
}

/// A task saved as running, registered again at start and waiting to be run.
pub(crate) struct Resumed(ReplayStatus, Arc<CancelFlag>);

/// Refuses what would match nothing or fail every message, instead of a task that walks the
/// whole DLQ at the given rate to that end: an empty filter value (leave it out to match any),
/// a time window that ends before it starts, `max` 0, a target topic that does not exist while
/// topics are not created on first send.
fn check_spec(ctx: &BrokerContext, spec: &ReplaySpec) -> Result<(), DlqError> {
    let f = &spec.filter;
    for (name, value) in [
        ("original_topic", &f.original_topic),
        ("key", &f.key),
        ("tag", &f.tag),
    ] {
        if value.as_deref().is_some_and(str::is_empty) {
            return Err(DlqError::Invalid(format!(
                "{name} must not be empty (leave it out to match any)"
            )));
        }
    }
    if let (Some(since), Some(until)) = (f.since_ms, f.until_ms) {
        if since > until {
            return Err(DlqError::Invalid(format!(
                "since_ms {since} is after until_ms {until}"
            )));
        }
    }
    if spec.max_messages == Some(0) {
        return Err(DlqError::Invalid("max must be at least 1".into()));
    }
    if let Some(cfg) = spec.target_topic.as_ref().and_then(|t| ctx.topics.get(t)) {
        if !sluice_protocol::remoting::body::perm::is_writeable(cfg.perm) {
            return Err(DlqError::Forbidden(format!(
                "replaying to topic[{}] is forbidden: it is not writable",
                cfg.topic_name
            )));
        }
    }
    if let Some(t) = &spec.target_topic {
        let created_on_use = t.starts_with(crate::topic::RETRY_PREFIX) || ctx.cfg.auto_create_topic;
        if !created_on_use && ctx.topics.get(t).is_none() {
            return Err(DlqError::Invalid(format!(
                "target topic {t} does not exist, and topics are not created on first send"
            )));
        }
    }
    Ok(())
}

/// Loads task files at broker start and registers them, before anything can start a new task
/// (the HTTP facade, started with the extensions, accepts requests at once): a start for a
/// group whose saved task is still running is then refused as Busy, instead of running next
/// to it. Returns the running ones, for [`run_resumed`] once the extensions have started.
///
/// At most one task per group resumes, the newest: two saved as running for one group (a
/// task whose final state could not be saved, and one started after it) ran side by side
/// and copied the same dead letters. The others are saved as failed, saying why.
pub(crate) fn register_saved(ctx: &Arc<BrokerContext>) -> Vec<Resumed> {
    let mut resumed = Vec::new();
    let mut tasks = ctx.dlq.load_tasks();
    let newest_running = newest_running_per_group(&tasks);
    for status in &mut tasks {
        if status.state == ReplayState::Running
            && newest_running.get(&status.group) != Some(&status.id)
        {
            status.state = ReplayState::Failed;
            status.error = Some(format!(
                "not resumed at restart: task {} of the same group was running too, and resumed instead",
                newest_running[&status.group]
            ));
            status.updated_ms = now_ms();
            tracing::warn!(task = %status.id, group = %status.group, "a second running replay task of one group found at restart; only the newest resumes");
            if let Err(e) = ctx
                .dlq
                .persist(status)
                .and_then(|()| ctx.dlq.audit("failed", status))
            {
                tracing::error!(task = %status.id, error = %e, "saving a replay task stopped at restart failed");
            }
        }
    }
    for mut status in tasks {
        let running = status.state == ReplayState::Running;
        if running {
            status.resumes += 1;
        }
        let Some(cancel) = ctx.dlq.insert(status.clone()) else {
            continue;
        };
        if running {
            // Startup, before connections: a small synchronous write is fine here.
            if let Err(e) = ctx.dlq.persist(&status) {
                tracing::error!(task = %status.id, error = %e, "saving a resumed replay task failed");
            }
            if let Err(e) = ctx.dlq.audit("resumed", &status) {
                tracing::error!(task = %status.id, error = %e, "audit of a resumed replay failed");
            }
            resumed.push(Resumed(status, cancel));
        }
    }
    ctx.dlq.prune();
    resumed
}

/// The id of the newest running task of each group (by creation time, then id).
fn newest_running_per_group(tasks: &[ReplayStatus]) -> std::collections::HashMap<String, String> {
    let mut newest: std::collections::HashMap<String, &ReplayStatus> = Default::default();
    for t in tasks.iter().filter(|t| t.state == ReplayState::Running) {
        let e = newest.entry(t.group.clone()).or_insert(t);
        if (t.created_ms, &t.id) > (e.created_ms, &e.id) {
            *e = t;
        }
    }
    newest.into_iter().map(|(g, t)| (g, t.id.clone())).collect()
}

/// Runs the tasks [`register_saved`] found running.
pub(crate) fn run_resumed(ctx: &Arc<BrokerContext>, resumed: Vec<Resumed>) {
    for Resumed(status, cancel) in resumed {
        tracing::info!(task = %status.id, group = %status.group, next_offset = status.next_offset, "replay task resumed");
        spawn(ctx, status, cancel);
    }
}

fn spawn(ctx: &Arc<BrokerContext>, status: ReplayStatus, cancel: Arc<CancelFlag>) {
    let h = tokio::spawn(run(Arc::clone(ctx), status, cancel));
    ctx.dlq.add_runner(h);
}

/// Persists `status` (and an audit line for `event`) on a blocking thread.
/// Saves the task. Progress of a task that may resume (still running) leaves out the copies
/// counted ahead of the scan at this run's start (`ahead`, at or past `next_offset`): the next
/// resume finds them in the ledger past the saved `next_offset` and counts them again, so
/// saving them too counted them twice after a second crash.
async fn save(
    ctx: &Arc<BrokerContext>,
    status: &ReplayStatus,
    event: Option<&'static str>,
    ahead: &BTreeSet<u64>,
) -> Result<(), DlqError> {
    let ctx2 = Arc::clone(ctx);
    let mut s = status.clone();
    if s.state == ReplayState::Running {
        let n = ahead.range(s.next_offset..).count() as u64;
        s.replayed = s.replayed.saturating_sub(n);
        s.matched = s.matched.saturating_sub(n);
    }
    tokio::task::spawn_blocking(move || {
        ctx2.dlq.persist(&s)?;
        if let Some(ev) = event {
            ctx2.dlq.audit(ev, &s)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| DlqError::State(e.to_string()))?
}

/// Tries of a task's last save before its final state is shown anyway.
const FINAL_SAVE_ATTEMPTS: u32 = 4;

/// Why the loop stopped.
enum Stop {
    Finished(ReplayState),
    Shutdown,
}

async fn run(ctx: Arc<BrokerContext>, mut status: ReplayStatus, cancel: Arc<CancelFlag>) {
    let mut ahead = BTreeSet::new();
    let stop = match run_loop(&ctx, &mut status, &cancel, &mut ahead).await {
        Ok(stop) => stop,
        Err(e) => {
            status.error = Some(e.to_string());
            Stop::Finished(ReplayState::Failed)
        }
    };
    status.updated_ms = now_ms();
    let event = match stop {
        Stop::Shutdown => None,
        Stop::Finished(state) => {
            status.state = state;
            Some(match state {
                ReplayState::Completed => "completed",
                ReplayState::Cancelled => "cancelled",
                _ => "failed",
            })
        }
    };
    // Saved (task file and audit line) before the final state is shown, so whoever sees a
    // task finished also finds it in the audit log, and a crash in between leaves a task
    // that nobody has seen finish.
    // Tried a few times: a final state left unsaved (a full disk) shows the task finished
    // here while its file still says running, and the next start resumes it.
    let attempts = if event.is_some() {
        FINAL_SAVE_ATTEMPTS
    } else {
        1
    };
    for attempt in 1..=attempts {
        match save(&ctx, &status, event, &ahead).await {
            Ok(()) => break,
            Err(e) if attempt == attempts => {
                tracing::error!(task = %status.id, error = %e, "saving the replay task's final state failed; a restart resumes it");
            }
            Err(e) => {
                tracing::warn!(task = %status.id, error = %e, attempt, "saving the replay task's final state failed; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
    ctx.dlq.update(&status);
    let ctx2 = Arc::clone(&ctx);
    let _ = tokio::task::spawn_blocking(move || ctx2.dlq.prune()).await;
    tracing::info!(task = %status.id, state = ?status.state, matched = status.matched, replayed = status.replayed, skipped = status.skipped, failed = status.failed, "replay task stopped");
}

/// Spaces copies `1 / rate` apart. Time spent without copying (scanning entries the filter
/// skips, or already replayed ones) earns no credit: before, the due time counted from the
/// task's start, so a match found 10 s in at 100/s went out as a burst of 1 000 copies.
struct Pacer {
    next: Instant,
    interval: Duration,
}

impl Pacer {
    fn new(rate: u32) -> Self {
        Self {
            next: Instant::now(),
            interval: Duration::from_secs_f64(1.0 / f64::from(rate.max(1))),
        }
    }

    /// When the next copy may go.
    fn due(&mut self) -> Instant {
        self.next = self.next.max(Instant::now());
        self.next
    }

    /// One copy went.
    fn sent(&mut self) {
        self.next += self.interval;
    }
}

async fn run_loop(
    ctx: &Arc<BrokerContext>,
    status: &mut ReplayStatus,
    cancel: &CancelFlag,
    ahead: &mut BTreeSet<u64>,
) -> Result<Stop, DlqError> {
    let topic = dlq_topic(&status.group);
    let ledger = ctx.dlq.ledger(&status.group)?;
    let mut shutdown = ctx.shutdown.clone();
    let mut pacer = Pacer::new(status.rate_per_sec);
    let mut last_save = Instant::now();
    // Copies this task made after its last saved progress (a crash) count at once, not when
    // the scan reaches them: their letters may be gone by then (retention) or not decode.
    *ahead = recorded_since_save(&ledger, status).await?;
    status.replayed += ahead.len() as u64;
    status.matched += ahead.len() as u64;
    loop {
        if cancel.is_set() {
            return Ok(Stop::Finished(ReplayState::Cancelled));
        }
        if *shutdown.borrow() {
            return Ok(Stop::Shutdown);
        }
        if status.next_offset >= status.end_offset || capped(status) {
            return Ok(Stop::Finished(ReplayState::Completed));
        }
        let batch = scan(&ctx.store, &topic, status.next_offset);
        for (qo, rec) in &batch.records {
            if *qo >= status.end_offset {
                // The store skipped every entry from `next_offset` up to here (unreadable
                // records), so nothing before the end is left: without this the same batch
                // would be read again and again, never awaiting, with the task stuck Running.
                status.next_offset = status.end_offset;
                break;
            }
            if capped(status) {
                break;
            }
            let Some(orig) = Original::decode(rec) else {
                status.next_offset = qo + 1;
                continue;
            };
            let mut m = DlqMessage::from_original(&orig, *qo, &ctx.store);
            if !status.filter.matches(&m) {
                status.next_offset = qo + 1;
                continue;
            }
            if ledger.contains(*qo) {
                if !ahead.contains(qo) {
                    status.skipped += 1;
                }
                status.next_offset = qo + 1;
                continue;
            }
            if !status.dry_run {
                let due = pacer.due();
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = cancel.cancelled() => return Ok(Stop::Finished(ReplayState::Cancelled)),
                    _ = shutdown.wait_for(|s| *s) => return Ok(Stop::Shutdown),
                }
                pacer.sent();
                m.replayed = true;
                match replay_one(ctx, &ledger, &orig, &m, status).await {
                    Ok(Replayed::Copied) => status.replayed += 1,
                    Ok(Replayed::FoundCopied) => status.skipped += 1,
                    Ok(Replayed::NotLedgered(e)) => {
                        // The copy is stored but the ledger does not say so: going on would
                        // leave more such letters for a later task to copy again. Stopped
                        // here, with progress at this letter.
                        status.replayed += 1;
                        return Err(DlqError::State(format!(
                            "dead letter at offset {qo} was copied, but the replay ledger could not record it ({e}); a later task may copy it again"
                        )));
                    }
                    Err(e) => {
                        tracing::warn!(task = %status.id, dlq_offset = qo, error = %e, "message not replayed; it stays in the DLQ");
                        status.failed += 1;
                        status.error = Some(e);
                    }
                }
            }
            status.matched += 1;
            status.next_offset = qo + 1;
            if cancel.is_set() {
                break;
            }
            if last_save.elapsed() >= PERSIST_EVERY {
                status.updated_ms = now_ms();
                ctx.dlq.update(status);
                save(ctx, status, None, ahead).await?;
                last_save = Instant::now();
            }
        }
        if batch.records.is_empty() {
            if batch.end {
                return Ok(Stop::Finished(ReplayState::Completed));
            }
            status.next_offset = status.next_offset.max(batch.next);
        }
        ctx.dlq.update(status);
        // A batch of entries the filter skips awaits nothing: without this a replay over a
        // large DLQ held its worker thread until the end.
        tokio::task::yield_now().await;
    }
}

/// For a resumed task: the dead letters it copied (and ledgered) past its saved progress.
async fn recorded_since_save(
    ledger: &Arc<Ledger>,
    status: &ReplayStatus,
) -> Result<BTreeSet<u64>, DlqError> {
    if status.resumes == 0 {
        return Ok(BTreeSet::new());
    }
    let (ledger, task, from) = (Arc::clone(ledger), status.id.clone(), status.next_offset);
    tokio::task::spawn_blocking(move || ledger.recorded_by(&task, from))
        .await
        .map_err(|e| DlqError::State(format!("reading the replay ledger: {e}")))?
}

/// The topic a dead letter was first sent to, for a copy into a retry topic.
fn original_of(m: &DlqMessage) -> Result<String, String> {
    let origin = m
        .original_topic
        .clone()
        .ok_or("the message has no RETRY_TOPIC, so it cannot go back to a retry topic")?;
    check_target(&origin).map_err(|e| e.to_string())?;
    Ok(origin)
}

fn capped(status: &ReplayStatus) -> bool {
    status.max_messages.is_some_and(|m| status.matched >= m)
}

/// What [`replay_one`] did with a dead letter.
enum Replayed {
    /// Copied and ledgered.
    Copied,
    /// A replay copy was already there (a crash came between the copy and the ledger), so
    /// it was only ledgered.
    FoundCopied,
    /// Copied (or found copied), but the ledger write failed.
    NotLedgered(String),
}

/// Writes one copy, then ledgers it.
async fn replay_one(
    ctx: &Arc<BrokerContext>,
    ledger: &Arc<Ledger>,
    orig: &Original,
    m: &DlqMessage,
    status: &ReplayStatus,
) -> Result<Replayed, String> {
    // Checked per message too: a task file from an older version may name any target.
    if let Some(t) = &status.target_topic {
        check_target(t).map_err(|e| e.to_string())?;
    }
    let (dest, queue_id, retry_of) = match &status.target_topic {
        Some(t) if !t.starts_with(crate::topic::RETRY_PREFIX) => {
            let cfg = if ctx.cfg.auto_create_topic {
                // As an HTTP send's auto-creation: the template's queue count.
                ctx.topics
                    .get_or_create_for_send(t, DEFAULT_TOPIC, ctx.cfg.default_queue_nums())
                    .map_err(|r| r.remark)?
            } else {
                ctx.topics
                    .get(t)
                    .ok_or_else(|| format!("topic {t} does not exist"))?
            };
            writable(t, &cfg)?;
            (t.clone(), ctx.pick_queue(cfg.write_queue_nums), None)
        }
        // By default the copy goes to the group's retry topic, as a retry of its original
        // topic: only this group consumes it again. Copied into the original topic, it went
        // to every other group subscribed there too, which had handled it already. A retry
        // topic named as the target (another group's, to redrive there) is written the same
        // way: queue 0, with the original topic, which its readers need (without it the
        // lease reader skipped the copy while the ledger marked its dead letter replayed).
        retry_target => {
            let origin = original_of(m)?;
            let retry = retry_target
                .clone()
                .unwrap_or_else(|| retry_topic(&status.group));
            let cfg = ensure_one_queue_topic(ctx, &retry).map_err(|e| e.to_string())?;
            writable(&retry, &cfg)?;
            (retry, 0, Some(origin))
        }
    };
    // Looked up for every letter, whoever copied it: a task that copied it and crashed before
    // ledgering may have been cancelled after resuming, before it came back to the letter,
    // and the next task (which never resumed) copied it a second time.
    let already = copy_exists(ctx, &dest, m)?;
    if !already {
        let input = replay_copy(
            orig,
            &dest,
            queue_id,
            retry_of.as_deref(),
            &m.msg_id,
            &status.id,
        );
        let appended = put::append(ctx, &[input], Vec::new(), true)
            .await
            .map_err(|r| r.remark)?;
        Counters::add(&ctx.counters.messages_stored, appended.len() as u64);
        Counters::inc(&ctx.counters.replayed);
    }
    let ledger = Arc::clone(ledger);
    let qo = m.queue_offset;
    let task = status.id.clone();
    let floor = ctx.store.min_offset(&dlq_topic(&status.group), 0);
    let (dlq, group) = (Arc::clone(&ctx.dlq), status.group.clone());
    let running = move || {
        dlq.all_statuses()
            .into_iter()
            .filter(|s| s.group == group && s.state == ReplayState::Running)
            .map(|s| s.id)
            .collect()
    };
    let recorded = tokio::task::spawn_blocking(move || ledger.record(qo, &task, floor, running))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(e) = recorded {
        tracing::error!(task = %status.id, dlq_offset = qo, error = %e, "message copied but not written to the replay ledger; the task stops");
        return Ok(Replayed::NotLedgered(e));
    }
    Ok(if already {
        Replayed::FoundCopied
    } else {
        Replayed::Copied
    })
}

/// The write restriction an operator set on a topic holds for copies as for sends.
fn writable(topic: &str, cfg: &sluice_protocol::remoting::body::TopicConfig) -> Result<(), String> {
    if sluice_protocol::remoting::body::perm::is_writeable(cfg.perm) {
        Ok(())
    } else {
        Err(format!("the topic[{topic}] sending message is forbidden"))
    }
}

/// Records of one message id looked at for an earlier replay copy (the index yields up to
/// four times as many candidates).
const COPY_LOOKUP_MAX: usize = 1024;

/// True when `dest` holds a replay copy of `m`, by any task (found by UNIQ_KEY). An index
/// look-up that could not say (capped before finding one) is an error: the letter is counted
/// failed and stays in the DLQ rather than risk a second copy.
fn copy_exists(ctx: &BrokerContext, dest: &str, m: &DlqMessage) -> Result<bool, String> {
    let Some(uniq) = m.uniq_key.as_deref() else {
        return Ok(false);
    };
    // Records of this id in `dest` include its retry copies (up to the group's maximum per
    // dead-lettering, again after each replay): looked at in the thousands, so only an id
    // retried and replayed that often, or a cut-short index walk, leaves it undecided.
    let (records, capped) = ctx
        .store
        .query_by_uniq_key_where(dest, uniq, COPY_LOOKUP_MAX, &|_| true);
    let found = records.iter().filter_map(Original::decode).any(|o| {
        o.properties.get(PROP_REPLAY_TASK).is_some()
            && o.properties
                .get(PROP_REPLAYED_FROM)
                .is_some_and(|from| same_record(from, &m.msg_id))
    });
    if !found && capped {
        return Err(format!(
            "cannot tell whether {dest} holds a copy already: the index look-up of its id was cut short"
        ));
    }
    Ok(found)
}

/// Whether two offset message ids name one record: the same commit-log offset, whatever
/// store address each was made with (the broker may come back on another address after a
/// crash, and the id of a dead letter is made with the current one).
fn same_record(a: &str, b: &str) -> bool {
    use sluice_protocol::message::decode_offset_msg_id;
    a == b
        || matches!(
            (decode_offset_msg_id(a), decode_offset_msg_id(b)),
            (Ok((_, x)), Ok((_, y))) if x == y
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dead letter's id made after the broker came back on another address still names the
    /// record a copy was made from before.
    #[test]
    fn ids_of_one_record_match_across_store_addresses() {
        use sluice_protocol::message::offset_msg_id;
        let before = offset_msg_id("10.0.0.1:10911".parse().unwrap(), 4096);
        let after = offset_msg_id("10.0.0.2:10912".parse().unwrap(), 4096);
        let other = offset_msg_id("10.0.0.1:10911".parse().unwrap(), 8192);
        assert!(same_record(&before, &after));
        assert!(!same_record(&before, &other));
        assert!(!same_record("not-an-id", &before));
    }

    /// Time spent sending nothing (scanning skipped entries) earned credit before: the next
    /// matches went out back to back. Now copies stay `1 / rate` apart whatever came before.
    #[tokio::test(start_paused = true)]
    async fn the_pacer_earns_no_credit_while_nothing_is_sent() {
        let mut pacer = Pacer::new(10);
        tokio::time::advance(Duration::from_secs(10)).await;
        let start = Instant::now();
        let mut offsets = Vec::new();
        for _ in 0..3 {
            let due = pacer.due();
            offsets.push(due - start);
            tokio::time::sleep_until(due).await;
            pacer.sent();
        }
        let ms = Duration::from_millis;
        assert_eq!(offsets, [ms(0), ms(100), ms(200)]);
    }

    #[test]
    fn user_and_retry_topics_are_replay_targets() {
        for t in ["Orders", "%RETRY%billing", "SLUICE_orders"] {
            assert!(check_target(t).is_ok(), "{t}");
        }
    }

    #[test]
    fn system_topics_are_refused_as_replay_targets() {
        for t in [
            "SLUICE_SYS_TIMER",
            "SCHEDULE_TOPIC_XXXX",
            "RMQ_SYS_TRANS_HALF_TOPIC",
            "RMQ_SYS_TRANS_OP_HALF_TOPIC",
            "TRANS_CHECK_MAX_TIME_TOPIC",
            "OFFSET_MOVED_EVENT",
            "%DLQ%billing",
        ] {
            assert!(
                matches!(check_target(t), Err(DlqError::Forbidden(_))),
                "{t}"
            );
        }
    }

    #[test]
    fn a_malformed_target_is_invalid_not_forbidden() {
        assert!(matches!(
            check_target("bad topic"),
            Err(DlqError::Invalid(_))
        ));
    }
}
