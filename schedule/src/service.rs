//! [`ScheduleExtension`] (what the broker starts and stops) and [`ScheduleService`] (the
//! Rust API the HTTP facade, the transaction crate and operators call).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};
use sluice_broker::{
    BoxFuture, BrokerExtensions, BrokerServices, ConnectionHandle, Extension, PendingMessage,
    PutHook,
};
use sluice_protocol::message::keys;
use sluice_protocol::message::record::sysflag;
use sluice_protocol::message::UniqKeyGenerator;
use sluice_protocol::{request_code, Properties, RemotingCommand};
use sluice_store::{now_ms, Appended, MessageInput};

use crate::config::ScheduleConfig;
use crate::core::{Core, Wake};
use crate::error::{Result, ScheduleError};
use crate::hook::SchedulePutHook;
use crate::ops::{self, Action, OpReport, ScheduledMessage, Selector, When};
use crate::props;
use crate::stats::{Counters, ScheduleStats};
use crate::{checkpoint, deliver, enqueue};

/// What the hook, the service and the running tasks share.
pub(crate) struct Shared {
    pub(crate) cfg: ScheduleConfig,
    pub(crate) counters: Arc<Counters>,
    pub(crate) wake: Arc<Wake>,
    /// Present between start and stop.
    core: RwLock<Option<Arc<Core>>>,
    tasks: Mutex<Option<Tasks>>,
    uniq: UniqKeyGenerator,
}

/// The running tasks, joined in this order at stop.
struct Tasks {
    deliver: tokio::task::JoinHandle<()>,
    enqueue: JoinHandle<()>,
    checkpoint: JoinHandle<()>,
}

/// The schedule extension. Clone it freely: clones share one service.
///
/// ```no_run
/// # async fn run(cfg: sluice_broker::BrokerConfig) {
/// let schedule = sluice_schedule::ScheduleExtension::new(sluice_schedule::ScheduleConfig::default());
/// let broker = sluice_broker::Broker::start_with(cfg, schedule.broker_extensions()).await;
/// let service = schedule.service(); // cancel, reschedule, list, stats
/// # }
/// ```
#[derive(Clone)]
pub struct ScheduleExtension {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ScheduleExtension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScheduleExtension")
            .field("config", &self.shared.cfg)
            .finish_non_exhaustive()
    }
}

impl ScheduleExtension {
    /// A stopped extension with this configuration (validated at start).
    pub fn new(config: ScheduleConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                cfg: config,
                counters: Arc::new(Counters::default()),
                wake: Arc::new(Wake::default()),
                core: RwLock::new(None),
                tasks: Mutex::new(None),
                uniq: UniqKeyGenerator::new(Ipv4Addr::LOCALHOST),
            }),
        }
    }

    /// The put hook that parks delayed messages. Install it in the broker, and give it to
    /// the transaction extension's commit hooks (`TxnExtension::with_commit_hooks`), so a
    /// committed message with a delay is parked too.
    pub fn put_hook(&self) -> Arc<dyn PutHook> {
        Arc::new(SchedulePutHook {
            shared: Arc::clone(&self.shared),
        })
    }

    /// Test hook: the next stop behaves like a crash of this service (releases in flight
    /// are abandoned, no last checkpoint), while the store still closes cleanly. Recovery
    /// from it is what a restart after SIGKILL runs.
    #[doc(hidden)]
    pub fn crash_on_stop(&self) {
        if let Some(core) = self.shared.core.read().as_ref() {
            core.stop
                .crash
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// The Rust API.
    pub fn service(&self) -> ScheduleService {
        ScheduleService {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The hook and the extension, ready for `Broker::start_with`.
    pub fn broker_extensions(&self) -> BrokerExtensions {
        BrokerExtensions {
            put_hooks: vec![self.put_hook()],
            extensions: vec![Arc::new(self.clone()) as Arc<dyn Extension>],
            ..BrokerExtensions::default()
        }
    }

    fn start_tasks(&self, core: &Arc<Core>) -> std::io::Result<Tasks> {
        let c = Arc::clone(core);
        let enqueue = std::thread::Builder::new()
            .name("schedule-enqueue".into())
            .spawn(move || enqueue::run(c))?;
        let c = Arc::clone(core);
        let checkpoint = std::thread::Builder::new()
            .name("schedule-checkpoint".into())
            .spawn(move || checkpoint::run(c))?;
        let deliver = tokio::spawn(deliver::run(Arc::clone(core)));
        Ok(Tasks {
            deliver,
            enqueue,
            checkpoint,
        })
    }
}

impl Extension for ScheduleExtension {
    fn name(&self) -> &'static str {
        "schedule"
    }

    fn start(&self, services: BrokerServices) -> std::result::Result<(), String> {
        let s = &self.shared;
        let core = Core::open(
            s.cfg.clone(),
            services,
            Arc::clone(&s.counters),
            Arc::clone(&s.wake),
        )
        .map_err(|e| e.to_string())?;
        let core = Arc::new(core);
        let tasks = self
            .start_tasks(&core)
            .map_err(|e| format!("starting schedule threads: {e}"))?;
        *s.core.write() = Some(core);
        *s.tasks.lock() = Some(tasks);
        Ok(())
    }

    fn request_codes(&self) -> &'static [i32] {
        &[request_code::RECALL_MESSAGE]
    }

    fn handle(
        &self,
        _conn: ConnectionHandle,
        req: RemotingCommand,
    ) -> BoxFuture<'static, Option<RemotingCommand>> {
        let service = Arc::new(self.service());
        Box::pin(async move { Some(crate::recall::handle(service, req).await) })
    }

    fn stop(&self) -> BoxFuture<'static, ()> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let core = shared.core.write().take();
            let tasks = shared.tasks.lock().take();
            let (Some(core), Some(tasks)) = (core, tasks) else {
                return;
            };
            stop_tasks(&core, tasks).await;
            tracing::info!("schedule service stopped");
        })
    }
}

/// Stops the deliverer (its appends finish), then the reader, then the checkpointer (which
/// writes a last checkpoint).
async fn stop_tasks(core: &Arc<Core>, tasks: Tasks) {
    use std::sync::atomic::Ordering;
    core.stop.deliver.store(true, Ordering::Release);
    core.deliver_wake.notify_one();
    if core.stop.crash.load(Ordering::Acquire) {
        tasks.deliver.abort();
    }
    match tasks.deliver.await {
        Err(e) if !e.is_cancelled() => tracing::error!(error = %e, "schedule deliverer failed"),
        _ => {}
    }
    core.stop.enqueue.store(true, Ordering::Release);
    core.wake.wake();
    core.stop.checkpoint.store(true, Ordering::Release);
    let joined = tokio::task::spawn_blocking(move || {
        let a = tasks.enqueue.join().is_ok();
        let b = tasks.checkpoint.join().is_ok();
        a && b
    })
    .await;
    if !matches!(joined, Ok(true)) {
        tracing::error!("a schedule thread panicked");
    }
}

/// A message handed to [`ScheduleService::schedule`], as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    /// Its id (UNIQ_KEY; generated when the input had none).
    pub uniq_key: String,
    /// When it will be released, epoch ms; `None` when it was stored in its topic at once.
    pub due_ms: Option<i64>,
    /// Where the store put it (a schedule topic, or the real topic when not delayed).
    pub appended: Appended,
}

/// [`ScheduleService::prepare`]'s result: the message to append.
#[derive(Debug, Clone)]
pub struct PreparedMessage {
    /// Ready for `Store::append` / `BrokerServices::put`: parked in a schedule topic when
    /// delayed, unchanged otherwise (UNIQ_KEY added when missing).
    pub input: MessageInput,
    /// When it will be released; `None` when not delayed.
    pub due_ms: Option<i64>,
}

/// The Rust API of the schedule service. Cheap to clone.
#[derive(Clone)]
pub struct ScheduleService {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ScheduleService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScheduleService").finish_non_exhaustive()
    }
}

impl ScheduleService {
    fn core(&self) -> Result<Arc<Core>> {
        self.shared
            .core
            .read()
            .clone()
            .ok_or(ScheduleError::NotRunning)
    }

    pub(crate) fn broker_name(&self) -> Option<String> {
        self.core()
            .ok()
            .map(|c| c.services.broker_name().to_owned())
    }

    /// Parks a ready-to-store message if its properties ask for a delay (`DELAY`,
    /// `TIMER_DELIVER_MS`, `TIMER_DELAY_MS`, `TIMER_DELAY_SEC`), without storing it: the
    /// **seam for a caller that appends it together with other records** (a transaction
    /// commit appends the committed message with its op record in one request). A message
    /// with sysFlag COMMIT is treated leniently (a passed due time releases at once, a delay
    /// beyond the maximum is clamped); others are refused as the send path refuses them.
    /// Works before start too (it only rewrites).
    pub fn prepare(&self, input: MessageInput) -> Result<PreparedMessage> {
        let mut msg = PendingMessage {
            properties: Properties::decode(input.properties.as_bytes()),
            input,
        };
        // What the put hook enforces on sends.
        if let Err(topic) = props::sanitize(&mut msg) {
            return Err(ScheduleError::InvalidArgument(format!(
                "topic {topic} is the schedule's own"
            )));
        }
        if msg.properties.get(keys::UNIQ_KEY).is_none() {
            msg.properties
                .insert(keys::UNIQ_KEY, self.shared.uniq.next_key());
        }
        let lenient = sysflag::transaction_type(msg.input.sys_flag) == sysflag::TRANSACTION_COMMIT;
        let plan = props::plan(&msg.properties, now_ms(), &self.shared.cfg, lenient)
            .map_err(ScheduleError::InvalidDelay)?;
        let due_ms = props::park(&mut msg, plan).map_err(ScheduleError::InvalidDelay)?;
        msg.input.properties = msg.properties.encode();
        Ok(PreparedMessage {
            input: msg.input,
            due_ms,
        })
    }

    /// Parks (or, when not delayed, stores) one ready-to-store message and waits until it is
    /// durable. **The seam for the transaction commit path** when it stores the committed
    /// message on its own; see [`ScheduleService::prepare`] for the rules.
    pub async fn schedule(&self, input: MessageInput) -> Result<Scheduled> {
        let core = self.core()?;
        let prepared = self.prepare(input)?;
        let uniq_key = Properties::decode(prepared.input.properties.as_bytes())
            .get(keys::UNIQ_KEY)
            .unwrap_or_default()
            .to_owned();
        let appended = core.services.put(vec![prepared.input]).await?;
        if prepared.due_ms.is_some() {
            Counters::add(&self.shared.counters.parked, 1);
            self.shared.wake.wake();
        }
        let appended = appended
            .first()
            .copied()
            .ok_or(ScheduleError::Timeout("the store acknowledged nothing"))?;
        Ok(Scheduled {
            uniq_key,
            due_ms: prepared.due_ms,
            appended,
        })
    }

    /// Schedules a message for a time (the HTTP facade's deliver-at / delay): sets
    /// `TIMER_DELIVER_MS` and calls [`ScheduleService::schedule`]. Millisecond resolution.
    pub async fn schedule_at(&self, mut input: MessageInput, when: When) -> Result<Scheduled> {
        let mut props = Properties::decode(input.properties.as_bytes());
        for k in [keys::DELAY, keys::TIMER_DELAY_SEC, keys::TIMER_DELAY_MS] {
            props.remove(k);
        }
        props.insert(keys::TIMER_DELIVER_MS, when.due_ms(now_ms()).to_string());
        input.properties = props.encode();
        self.schedule(input).await
    }

    /// Cancels the pending messages `sel` matches. Durable before it returns; a message
    /// being released meanwhile ends either delivered or cancelled, never both.
    pub async fn cancel(&self, sel: &Selector) -> Result<OpReport> {
        self.apply(sel, Action::Cancel).await
    }

    /// Moves the pending messages `sel` matches to a new due time (earlier or later; a time
    /// up to the tolerance in the past releases at once). They keep their id, keys and body.
    pub async fn reschedule(&self, sel: &Selector, when: When) -> Result<OpReport> {
        let core = self.core()?;
        let due = ops::check_new_due(&core, when)?;
        self.apply(sel, Action::Reschedule(due)).await
    }

    pub(crate) async fn apply(&self, sel: &Selector, action: Action) -> Result<OpReport> {
        check_selector(sel)?;
        let core = self.core()?;
        // On a task of its own, holding the operations' lock to the end: run in the caller's
        // future, a caller that went away (an HTTP client hanging up during a slow write)
        // released the lock while its begun cancel went on, and a cancel of the same key let
        // in meanwhile could settle as already cancelled while the rescheduled copy was
        // still being written, to be delivered after that answer.
        let sel = sel.clone();
        let work = async move { ops::apply(&core, &sel, action).await };
        // In the caller's span, so what the cancel logs carries the HTTP request's id.
        tokio::spawn(tracing::Instrument::in_current_span(work))
            .await
            .map_err(|_| ScheduleError::Timeout("a cancel or reschedule task failed"))?
    }

    /// The messages `sel` matches with their state; the flag says the list was cut at
    /// `max_key_matches`.
    pub async fn list(&self, sel: &Selector) -> Result<(Vec<ScheduledMessage>, bool)> {
        check_selector(sel)?;
        let core = self.core()?;
        ops::list(&core, sel).await
    }

    /// Counters, pending counts, the next due time and the lateness histogram.
    pub fn stats(&self) -> Result<ScheduleStats> {
        let core = self.core()?;
        let mut s = ScheduleStats::default();
        {
            let g = core.index.inner.lock();
            s.pending_by_topic = g
                .pending
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(t, n)| (t.clone(), *n))
                .collect();
            s.next_due_ms = g.next_due();
            s.near_window_entries = g.near_len();
            s.memtable_entries = g.memtable_len();
            s.runs = g.runs.len();
            s.run_entries = g.runs.iter().map(|r| r.count).sum();
        }
        s.pending = s.pending_by_topic.values().sum();
        self.shared.counters.fill(&mut s);
        Ok(s)
    }
}

fn check_selector(sel: &Selector) -> Result<()> {
    let bad = |m: &str| Err(ScheduleError::InvalidArgument(m.to_owned()));
    match sel {
        Selector::Id { uniq_key, .. } if uniq_key.trim().is_empty() => bad("empty message id"),
        Selector::Key { key, topic } if key.trim().is_empty() || topic.is_empty() => {
            bad("a key selector needs a topic and a non-empty key")
        }
        _ => Ok(()),
    }
}
