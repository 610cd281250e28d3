//! [`TxnExtension`]: how the transaction service plugs into the broker (`Extension` for
//! END_TRANSACTION, start and stop; a `PutHook` for half messages).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use sluice_broker::{
    BoxFuture, BrokerExtensions, BrokerServices, ConnectionHandle, Extension, PutHook,
};
use sluice_protocol::{request_code, response_code, RemotingCommand};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::TxnConfig;
use crate::core::Core;
use crate::fresh::FreshHalves;
use crate::hook::TxnPutHook;
use crate::metrics::Counters;
use crate::service::TxnService;
use crate::sink::CheckSink;
use crate::table::Table;

/// What the hook, the service and the running core share.
pub(crate) struct Shared {
    pub(crate) cfg: TxnConfig,
    pub(crate) counters: Counters,
    /// Live (undecided) transactions, for the hook's `max_open` check.
    pub(crate) live: Arc<AtomicUsize>,
    /// Halves stored but not yet in the table, counted with `live` for `max_open`.
    pub(crate) unindexed: crate::table::Unindexed,
    /// Hooks the committed message goes through (the schedule seam).
    pub(crate) commit_hooks: RwLock<Vec<Arc<dyn PutHook>>>,
    pub(crate) url_sink: RwLock<Option<Arc<dyn CheckSink>>>,
    pub(crate) group_sinks: RwLock<HashMap<String, Arc<dyn CheckSink>>>,
    /// Present between start and stop.
    pub(crate) core: RwLock<Option<Arc<Core>>>,
    /// Half messages just stored, for their END_TRANSACTION (see `fresh`).
    pub(crate) fresh: Mutex<FreshHalves>,
    /// The table's gauges as last walked, and when (see `TxnService::metrics`).
    pub(crate) gauges: Mutex<Option<(std::time::Instant, crate::table::TableGauges)>>,
    checker: Mutex<Option<(watch::Sender<bool>, JoinHandle<()>)>>,
}

/// The transaction extension. Clone it freely: clones share one service.
///
/// ```no_run
/// # async fn run(cfg: sluice_broker::BrokerConfig) {
/// let txn = sluice_txn::TxnExtension::new(sluice_txn::TxnConfig::default());
/// let broker = sluice_broker::Broker::start_with(cfg, txn.broker_extensions()).await;
/// # }
/// ```
#[derive(Clone)]
pub struct TxnExtension {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TxnExtension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnExtension")
            .field("config", &self.shared.cfg)
            .finish_non_exhaustive()
    }
}

impl TxnExtension {
    /// A stopped extension with this configuration (validated at start).
    pub fn new(config: TxnConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                cfg: config,
                counters: Counters::default(),
                live: Arc::new(AtomicUsize::new(0)),
                unindexed: crate::table::Unindexed::new(),
                commit_hooks: RwLock::new(Vec::new()),
                url_sink: RwLock::new(None),
                group_sinks: RwLock::new(HashMap::new()),
                core: RwLock::new(None),
                fresh: Mutex::new(FreshHalves::default()),
                gauges: Mutex::new(None),
                checker: Mutex::new(None),
            }),
        }
    }

    /// Sets the hooks a committed message goes through before it is stored: **the seam for the
    /// schedule extension** (a hook that moves `DELAY`/`TIMER_*` messages to the schedule topic).
    /// Set before start. They also run on a trial copy at send time, so a refusal comes early.
    pub fn with_commit_hooks(self, hooks: Vec<Arc<dyn PutHook>>) -> Self {
        *self.shared.commit_hooks.write() = hooks;
        self
    }

    /// The put hook that stores half messages; install it in the broker with this extension.
    pub fn put_hook(&self) -> Arc<dyn PutHook> {
        Arc::new(TxnPutHook {
            shared: Arc::clone(&self.shared),
        })
    }

    /// The hook and the extension, ready for `Broker::start_with`.
    pub fn broker_extensions(&self) -> BrokerExtensions {
        BrokerExtensions {
            put_hooks: vec![self.put_hook()],
            extensions: vec![Arc::new(self.clone()) as Arc<dyn Extension>],
            ..BrokerExtensions::default()
        }
    }

    /// The operator / HTTP API.
    pub fn service(&self) -> TxnService {
        TxnService {
            shared: Arc::clone(&self.shared),
        }
    }

    fn start_core(&self, services: BrokerServices) -> Result<(), String> {
        self.shared.cfg.validate()?;
        let store = Arc::clone(services.store());
        let state_dir: PathBuf = self
            .shared
            .cfg
            .state_dir
            .clone()
            .unwrap_or_else(|| store.config().data_dir.join("txn"));
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| format!("creating {}: {e}", state_dir.display()))?;
        sluice_store::sweep_temp_files(&state_dir).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the transaction extension needs a tokio runtime".to_owned())?;
        let core = Arc::new(Core {
            services,
            shared: Arc::clone(&self.shared),
            table: Mutex::new({
                let mut t = Table::new(Arc::clone(&self.shared.live));
                t.track_unindexed(self.shared.unindexed.clone());
                t
            }),
            resolved: tokio::sync::Notify::new(),
            state_dir,
            // Records are read whatever their size when stored (see STORED_RECORD_MAX).
            max_record: sluice_store::STORED_RECORD_MAX,
            round_robin: Mutex::new(HashMap::new()),
            checkpoint_lock: tokio::sync::Mutex::new(()),
            last_checkpoint: Mutex::new(std::time::Instant::now()),
            last_carry_scan: Mutex::new(None),
            carry_failed: Mutex::new(std::collections::HashMap::new()),
            pacer: Mutex::new(crate::pace::Pacer::default()),
            tailing: Mutex::new(()),
            lost_listed: Mutex::new(HashMap::new()),
        });
        self.shared.fresh.lock().clear();
        self.shared.unindexed.start_at(u64::MAX);
        let (report, torn) = core.rebuild();
        // Everything below `half_next` was read; halves stored from there on count as
        // unindexed until the table takes them in.
        let half_next = core.table.lock().half_next;
        self.shared.unindexed.start_at(half_next);
        let g = core.table.lock().gauges();
        let (open, parked, done) = (g.open, g.parked, g.done);
        tracing::info!(
            from_checkpoint = report.from_checkpoint,
            listed = report.listed,
            lost = report.lost,
            new_halves = report.new_halves,
            ops_replayed = report.ops_replayed,
            check_journal_records = report.journalled,
            torn_commits = report.torn_commits,
            open,
            parked,
            decided_in_memory = done,
            "transaction state rebuilt"
        );
        *self.shared.core.write() = Some(Arc::clone(&core));
        if !torn.is_empty() {
            runtime.spawn(Arc::clone(&core).complete_torn_commits(torn));
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let checker = runtime.spawn(crate::checker::run(core, stop_rx));
        *self.shared.checker.lock() = Some((stop_tx, checker));
        Ok(())
    }
}

impl Extension for TxnExtension {
    fn name(&self) -> &'static str {
        "txn"
    }

    fn start(&self, services: BrokerServices) -> Result<(), String> {
        self.start_core(services)
    }

    fn request_codes(&self) -> &'static [i32] {
        &[request_code::END_TRANSACTION]
    }

    fn handle(
        &self,
        conn: ConnectionHandle,
        req: RemotingCommand,
    ) -> BoxFuture<'static, Option<RemotingCommand>> {
        let core = self.shared.core.read().clone();
        Box::pin(async move {
            Some(match core {
                Some(core) => crate::end_txn::handle(&core, &conn, &req).await,
                None => RemotingCommand::response_to(
                    &req,
                    response_code::SERVICE_NOT_AVAILABLE,
                    Some("the transaction service is not running".into()),
                ),
            })
        })
    }

    /// Stops the checker (it writes a last checkpoint) and drops the broker services.
    fn stop(&self) -> BoxFuture<'static, ()> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let checker = shared.checker.lock().take();
            if let Some((stop, handle)) = checker {
                stop.send_replace(true);
                if let Err(e) = handle.await {
                    tracing::error!(error = %e, "transaction checker ended abnormally");
                }
            }
            shared.core.write().take();
            tracing::info!("transaction service stopped");
        })
    }
}
