//! The broker: startup wiring, background loops and graceful shutdown.
//!
//! Start: validate the config, bind (so the real port is known), open the store with
//! `store_host` = the advertised address, load topics and offsets, hook long polling to the
//! store's dispatch listener, serve, register with name servers.
//!
//! Shutdown: stop accepting and reading, let in-flight requests and parked pulls finish
//! (bounded), unregister, stop the extensions (last started, first stopped), save offsets and
//! topics, shut the store down on a blocking thread.

pub(crate) mod context;
mod register;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::hooks::BrokerExtensions;
use crate::offsets::OffsetManager;
use crate::processor::BrokerProcessor;
use crate::remoting::server::{Server, ServerOptions};
use crate::remoting::tracker::TaskTracker;
use crate::remoting::ConnectionRegistry;
use crate::services::{BrokerServices, Extension};
use crate::stats::{BrokerStats, Counters};
use crate::topic::TopicManager;
use context::BrokerContext;
use register::{Identity, Registrar};

/// Upper bound between two client-expiry scans.
const CLIENT_SCAN_MAX: Duration = Duration::from_secs(10);

/// Entry point of the broker.
#[derive(Debug)]
pub struct Broker;

/// A running broker.
pub struct BrokerHandle {
    ctx: Arc<BrokerContext>,
    extensions: Vec<Arc<dyn Extension>>,
    server: Option<Server>,
    registry: Arc<ConnectionRegistry>,
    registrar: Arc<Registrar>,
    stop: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for BrokerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerHandle")
            .field("local_addr", &self.local_addr)
            .field("advertised", &self.ctx.advertised)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Starts a broker with no extensions.
    pub async fn start(cfg: BrokerConfig) -> Result<BrokerHandle, BrokerError> {
        Self::start_with(cfg, BrokerExtensions::default()).await
    }

    /// Starts a broker with put hooks from later crates (transactions, delays, retries).
    pub async fn start_with(
        mut cfg: BrokerConfig,
        ext: BrokerExtensions,
    ) -> Result<BrokerHandle, BrokerError> {
        cfg.validate()?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| BrokerError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| BrokerError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let advertised = cfg.advertised(bound);
        cfg.store.store_host = advertised;
        let extensions = ext.extensions.clone();
        let (ctx, stop) = open_context(cfg, advertised, ext).await?;
        // Saved replay tasks are registered before the extensions start (the HTTP facade can
        // start a new one at once) and run after (their copies go through the put hooks).
        let resumed = crate::dlq::register_saved_replays(&ctx);
        if let Err((started, e)) = start_extensions(&ctx, &extensions) {
            abandon_start(&ctx, &stop, &extensions[..started]).await;
            return Err(e);
        }
        crate::dlq::run_resumed_replays(&ctx, resumed);
        let registry = Arc::new(ConnectionRegistry::default());
        let server = match Server::start(
            listener,
            server_options(&ctx.cfg),
            Arc::new(BrokerProcessor {
                ctx: Arc::clone(&ctx),
            }),
            Arc::clone(&registry),
            Arc::clone(&ctx.counters),
            Arc::clone(&ctx.tracker),
        ) {
            Ok(server) => server,
            Err(source) => {
                abandon_start(&ctx, &stop, &extensions).await;
                return Err(BrokerError::Bind {
                    addr: bound,
                    source,
                });
            }
        };
        let identity = Identity {
            broker_name: ctx.cfg.broker_name.clone(),
            cluster_name: ctx.cfg.cluster_name.clone(),
            broker_addr: advertised,
        };
        let registrar = Arc::new(Registrar::new(
            identity,
            Arc::clone(&ctx.topics),
            &ctx.cfg.namesrv_addrs,
            ctx.cfg.namesrv_tls.clone(),
            Arc::clone(&ctx.registration),
        ));
        registrar.register_all().await;
        let background = spawn_background(&ctx, &registrar, &stop);
        tracing::info!(listen = %bound, advertised = %advertised, broker_name = %ctx.cfg.broker_name, "broker started");
        Ok(BrokerHandle {
            ctx,
            extensions,
            server: Some(server),
            registry,
            registrar,
            stop,
            background,
            local_addr: bound,
        })
    }
}

/// Starts each extension with the broker's services; an extension that fails stops the start
/// (the error comes with how many had started).
fn start_extensions(
    ctx: &Arc<BrokerContext>,
    extensions: &[Arc<dyn Extension>],
) -> Result<(), (usize, BrokerError)> {
    for (i, ext) in extensions.iter().enumerate() {
        let services = BrokerServices {
            ctx: Arc::clone(ctx),
        };
        ext.start(services)
            .map_err(|e| (i, BrokerError::Task(ext.name(), e)))?;
        tracing::info!(extension = ext.name(), codes = ?ext.request_codes(), "extension started");
    }
    Ok(())
}

/// Undoes a start that failed after the store opened: stops the extensions that started (last
/// first) and closes the store cleanly. Before, the process exited with the store open, so
/// every later start after a misconfiguration (a port in use) ran crash recovery.
async fn abandon_start(
    ctx: &Arc<BrokerContext>,
    stop: &watch::Sender<bool>,
    started: &[Arc<dyn Extension>],
) {
    stop.send_replace(true);
    for ext in started.iter().rev() {
        ext.stop().await;
    }
    ctx.dlq.join_runners().await;
    let store = Arc::clone(&ctx.store);
    let closed = tokio::task::spawn_blocking(move || store.shutdown()).await;
    if !matches!(closed, Ok(Ok(()))) {
        tracing::error!("closing the store after a failed start failed");
    }
}

fn server_options(cfg: &BrokerConfig) -> ServerOptions {
    ServerOptions {
        name: "broker",
        max_frame: cfg.max_frame,
        max_body: cfg.max_body,
        max_inflight: cfg.max_inflight_per_connection,
        max_inflight_bytes: cfg.max_inflight_bytes,
        max_connections: cfg.max_connections,
        drain_timeout: cfg.drain_timeout,
        idle_timeout: cfg.idle_timeout,
        tls: cfg.tls.clone(),
    }
}

/// Opens the store and loads the state files, on a blocking thread: recovery and the state
/// files are plain file I/O.
async fn open_context(
    cfg: BrokerConfig,
    advertised: SocketAddr,
    ext: BrokerExtensions,
) -> Result<(Arc<BrokerContext>, watch::Sender<bool>), BrokerError> {
    let open_cfg = cfg.clone();
    let io = ext.storage_io.clone();
    let (store, topics, offsets) = tokio::task::spawn_blocking(move || open_state(&open_cfg, io))
        .await
        .map_err(|e| BrokerError::Task("open store and state", e.to_string()))??;
    let (stop, stop_rx) = watch::channel(false);
    let mut ctx = BrokerContext::new(
        cfg,
        advertised,
        Arc::clone(&store),
        topics,
        offsets,
        ext.put_hooks,
        Arc::new(Counters::default()),
        Arc::new(TaskTracker::default()),
        stop_rx,
    );
    for e in &ext.extensions {
        for code in e.request_codes() {
            ctx.handlers.insert(*code, Arc::clone(e));
        }
    }
    let ctx = Arc::new(ctx);
    let waiters = Arc::clone(&ctx.waiters);
    store.set_dispatch_listener(Arc::new(move |ev| waiters.wake(&ev.topic, ev.queue_id)));
    Ok((ctx, stop))
}

type OpenedState = (Arc<Store>, Arc<TopicManager>, Arc<OffsetManager>);

/// Blocking part of startup. On a state-file error the store is shut down again, or its folder
/// would stay locked for the rest of this process.
fn open_state(
    cfg: &BrokerConfig,
    io: Option<Arc<dyn sluice_store::io::StorageIo>>,
) -> Result<OpenedState, BrokerError> {
    let store = match io {
        Some(io) => Store::open_with_io(cfg.store.clone(), io)?,
        None => Store::open(cfg.store.clone())?,
    };
    let data_dir = &cfg.store.data_dir;
    let state = crate::state_file::sweep_temp_files(data_dir)
        .and_then(|_| {
            TopicManager::load(
                data_dir,
                cfg.auto_create_topic,
                cfg.default_topic_queue_nums,
            )
            .map(|t| t.with_max_topics(cfg.max_topics))
        })
        .and_then(|topics| {
            // Not fatal (a full disk must not keep the broker from starting and freeing
            // space): the offset flush loop saves the topics again until it succeeds.
            if let Err(e) = topics.save() {
                tracing::error!(error = %e, "saving topics at start failed; tried again at the next offset flush");
            }
            Ok((Arc::new(topics), Arc::new(OffsetManager::load(
                data_dir,
                cfg.max_consumer_offsets,
            )?)))
        });
    match state {
        Ok((topics, offsets)) => {
            warn_state_lost(data_dir, &store, &topics);
            // A missing offsets file is written now, empty: from here on a missing one means a
            // lost one, also after a crash before the first periodic save.
            if let Err(e) = offsets.save_if_dirty() {
                tracing::error!(error = %e, "saving consumer offsets at start failed; tried again at the next offset flush");
            }
            Ok((Arc::new(store), topics, offsets))
        }
        Err(e) => {
            if let Err(close) = store.shutdown() {
                tracing::error!(error = %close, "store shutdown after a failed start failed");
            }
            Err(e)
        }
    }
}

/// Says loudly when the broker's own state files are gone while the commit log holds
/// messages (a copy or restore that left `config/` behind): without them every topic's
/// configuration is forgotten (its queues are not served until it is created again) and every
/// consumer group starts over, which the start used to note only as "0 entries loaded".
fn warn_state_lost(data_dir: &std::path::Path, store: &Store, topics: &TopicManager) {
    let config = crate::state_file::config_dir(data_dir);
    let unconfigured: std::collections::BTreeSet<String> = store
        .queues()
        .into_iter()
        .filter(|(t, q)| store.max_offset(t, *q) > store.queue_start(t, *q))
        .map(|(t, _)| t)
        .filter(|t| topics.get(t).is_none())
        .collect();
    if !unconfigured.is_empty() {
        tracing::warn!(
            topics = unconfigured.len(),
            first = %unconfigured.iter().next().map_or("", String::as_str),
            path = %config.join("topics.json").display(),
            "topics with stored messages have no configuration (topics.json lost or older?): they are not served until created again"
        );
    }
    let offsets = config.join("consumerOffset.json");
    if !offsets.exists() && store.stats().written > 0 {
        tracing::warn!(path = %offsets.display(), "consumer offsets file missing while the commit log holds messages (lost with a copy or restore?): every consumer group starts where a group without offsets starts");
    }
}

fn spawn_background(
    ctx: &Arc<BrokerContext>,
    registrar: &Arc<Registrar>,
    stop: &watch::Sender<bool>,
) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(Arc::clone(registrar).run(ctx.cfg.register_interval, stop.subscribe())),
        tokio::spawn(flush_offsets_loop(Arc::clone(ctx), stop.subscribe())),
        tokio::spawn(expire_clients_loop(Arc::clone(ctx), stop.subscribe())),
        tokio::spawn(sample_rates_loop(Arc::clone(ctx), stop.subscribe())),
        tokio::spawn(reclaim_retry_topics_loop(Arc::clone(ctx), stop.subscribe())),
    ]
}

/// Removes retry topics unused for `retry_topic_reclaim_after` (see `retry::reclaim`).
async fn reclaim_retry_topics_loop(ctx: Arc<BrokerContext>, mut stop: watch::Receiver<bool>) {
    let after = ctx.cfg.retry_topic_reclaim_after;
    if after.is_zero() {
        return;
    }
    let every = crate::retry::reclaim::sweep_interval(after);
    let state = Arc::new(parking_lot::Mutex::new(
        crate::retry::reclaim::Unused::default(),
    ));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (ctx, state) = (Arc::clone(&ctx), Arc::clone(&state));
        let swept = move || crate::retry::reclaim::sweep(&ctx, &mut state.lock(), after);
        if let Err(e) = tokio::task::spawn_blocking(swept).await {
            tracing::error!(error = %e, "retry topic sweep failed");
        }
    }
}

/// Saves consumer offsets, and the topics when they changed since their last save, every
/// `offset_flush_interval`.
async fn flush_offsets_loop(ctx: Arc<BrokerContext>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(ctx.cfg.offset_flush_interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (offsets, topics) = (Arc::clone(&ctx.offsets), Arc::clone(&ctx.topics));
        // Topics too: a topic created on the send path is saved in the background once, and
        // when that save failed (a full disk) nothing wrote it again, so after a crash its
        // stored messages had no topic to be read through. A save of an unchanged table
        // only compares a version.
        let saved = move || (offsets.save_if_dirty(), topics.save());
        match tokio::task::spawn_blocking(saved).await {
            Ok((offsets, topics)) => {
                if let Err(e) = offsets {
                    Counters::inc(&ctx.counters.state_save_failures);
                    tracing::error!(error = %e, "saving consumer offsets failed");
                }
                if let Err(e) = topics {
                    Counters::inc(&ctx.counters.state_save_failures);
                    tracing::error!(error = %e, "saving topics failed; tried again at the next flush");
                }
            }
            Err(e) => tracing::error!(error = %e, "offset flush task failed"),
        }
    }
}

/// Samples the stored and pulled counters once a second (GET_BROKER_RUNTIME_INFO's rates).
async fn sample_rates_loop(ctx: Arc<BrokerContext>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let s = ctx.counters.snapshot();
        let day = sluice_store::now_ms() / 86_400_000;
        ctx.rates
            .sample(Instant::now(), day, s.messages_stored, s.messages_pulled);
    }
}

/// Drops clients silent for longer than `client_expiry` and closes their connections.
async fn expire_clients_loop(ctx: Arc<BrokerContext>, mut stop: watch::Receiver<bool>) {
    let every = (ctx.cfg.client_expiry / 4).clamp(Duration::from_millis(100), CLIENT_SCAN_MAX);
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (changed, dropped) = ctx.clients.expire(Instant::now(), ctx.cfg.client_expiry);
        ctx.release_departed_locks();
        for conn in &dropped {
            tracing::info!(remote = %conn.remote_addr(), "client expired: no heartbeat in time; closing its connection");
            conn.close();
        }
        ctx.notify_consumers_changed(&changed);
    }
}

impl BrokerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address in routes and message ids.
    pub fn advertised_addr(&self) -> SocketAddr {
        self.ctx.advertised
    }

    /// Dead-letter queues and replay tasks (reading, sizes, redrive).
    pub fn dlq(&self) -> crate::dlq::DlqService {
        crate::dlq::DlqService {
            ctx: Arc::clone(&self.ctx),
        }
    }

    /// The broker's services, as extensions get them (in-process callers such as the HTTP
    /// facade).
    pub fn services(&self) -> BrokerServices {
        BrokerServices {
            ctx: Arc::clone(&self.ctx),
        }
    }

    /// The storage engine.
    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.ctx.store)
    }

    /// Counters since start.
    pub fn stats(&self) -> BrokerStats {
        self.ctx.stats()
    }

    /// Open client connections (to send them requests: CHECK_TRANSACTION_STATE and the like).
    pub fn connections(&self) -> &ConnectionRegistry {
        &self.registry
    }

    /// What the broker knows of a consumer group.
    pub fn consumer_group(&self, group: &str) -> Option<crate::ConsumerGroupInfo> {
        self.ctx.clients.consumer_group_info(group)
    }

    /// Whether a consumer group holds unexpired orderly locks.
    pub fn group_holds_locks(&self, group: &str) -> bool {
        self.ctx.locks.group_holds_locks(group, Instant::now())
    }

    /// Waits (bounded) until woken parked pulls have queued their answers, so they go out
    /// before the connections close.
    async fn answer_parked_pulls(&self) {
        let deadline = Instant::now() + self.ctx.cfg.drain_timeout;
        while self
            .ctx
            .counters
            .parked_pulls
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        {
            if Instant::now() >= deadline {
                tracing::warn!("parked pulls still waiting at shutdown");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the broker gracefully; see the module docs for the order. The report says
    /// whether everything was saved and the store closed cleanly (the next start then needs
    /// no recovery); problems are logged as they happen and listed in it.
    pub async fn shutdown(mut self) -> ShutdownReport {
        tracing::info!(addr = %self.local_addr, "broker shutting down");
        self.stop.send_replace(true);
        self.ctx.waiters.wake_all();
        self.answer_parked_pulls().await;
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        if !self.ctx.tracker.wait_idle(self.ctx.cfg.drain_timeout).await {
            tracing::warn!(
                live = self.ctx.tracker.live(),
                "tasks still running after the drain timeout"
            );
        }
        for task in self.background.drain(..) {
            let _ = task.await;
        }
        self.ctx.dlq.join_runners().await;
        self.registrar.unregister_all().await;
        // In the reverse of their start order: a later extension may call an earlier one
        // (the HTTP facade decides transactions and cancels timers), so it stops first.
        for ext in self.extensions.drain(..).rev() {
            ext.stop().await;
        }
        let ctx = Arc::clone(&self.ctx);
        let saved = tokio::task::spawn_blocking(move || close_state(&ctx)).await;
        let problems = saved.unwrap_or_else(|e| {
            tracing::error!(error = %e, "shutdown task failed");
            vec![format!("shutdown task failed: {e}")]
        });
        tracing::info!(addr = %self.local_addr, clean = problems.is_empty(), "broker stopped");
        ShutdownReport { problems }
    }
}

/// What a shutdown left undone; empty when the broker stopped cleanly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Each state file not saved, and why the store kept its abort marker, if it did.
    pub problems: Vec<String>,
}

impl ShutdownReport {
    /// True when offsets and topics were saved and the store closed with its clean marker.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Saves the broker's state files and closes the store (blocking); returns what failed.
fn close_state(ctx: &BrokerContext) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = ctx.offsets.save_if_dirty() {
        tracing::error!(error = %e, "saving consumer offsets at shutdown failed");
        problems.push(format!("consumer offsets not saved: {e}"));
    }
    if let Err(e) = ctx.topics.save() {
        tracing::error!(error = %e, "saving topics at shutdown failed");
        problems.push(format!("topics not saved: {e}"));
    }
    if let Err(e) = ctx.store.shutdown() {
        tracing::error!(error = %e, "store shutdown failed");
        problems.push(format!("store not closed cleanly: {e}"));
        return problems;
    }
    let health = ctx.store.health();
    if let Some(reason) = health.fenced {
        problems.push(format!(
            "store fenced ({reason}): the next start recovers from the commit log"
        ));
    } else if health.queues_unsynced {
        problems
            .push("a consume-queue or index sync failed: the next start re-dispatches".to_string());
    }
    problems
}
