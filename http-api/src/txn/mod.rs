//! Transactions over HTTP: send a half message, commit or roll it back by `txn_id`, and answer
//! check-backs by **webhook** (the broker POSTs to a URL) or by **polling** (the producer
//! long-polls its group's checks). Operators list, inspect and force transactions.
//!
//! Everything decides through `sluice_txn::TxnService`, the same path as END_TRANSACTION: one
//! state machine, so HTTP and TCP producers get the same guarantees (idempotent repeats, the
//! opposite decision refused, no check for a decided transaction).
//!
//! ## Layout
//! - `routes`: producer endpoints (send, commit, rollback, check-answer, poll).
//! - `admin`: operator endpoints (list, get, force).
//! - `allow`: the hosts a per-message `check_url` may name (`check_url_hosts`).
//! - `id`: the `txn_id` format (group + half offsets + UNIQ_KEY, base64url; strict decode).
//! - `webhook`: the URL sink, its worker, signing.
//! - `pull`: pull mode, configured or by polling.
//! - `model`, `convert`: the JSON shapes and the mapping from the txn crate's types.
//!
//! ## Where a check goes
//! A half message sent with `check_url` keeps it as its `SLUICE_CHECK_URL` property (so it
//! survives a restart; removed from the committed message): its checks go to that URL, when
//! its host is in `check_url_hosts` (a URL outside it is refused at send, 403, and one set by
//! a TCP producer is ignored: its checks take the group's route). Else
//! the group decides: `[txn.groups.<g>] check_url` (webhook), `pull_checks` (polling), a group
//! that polls (pull mode by polling), or a TCP producer of the group.

mod admin;
mod allow;
mod budget;
mod convert;
mod id;
mod model;
mod pull;
mod routes;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_txn::TxnService;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use model::{
    AnswerState, CheckAnswer, CheckItem, ChecksResponse, DecisionResponse, SendTxnRequest,
    SendTxnResponse, TxnItem, TxnList,
};

use crate::config::HttpConfig;
use crate::state::AppState;

/// Longest long-poll a configuration may allow: below common proxy idle timeouts.
const MAX_POLL_WAIT_LIMIT: Duration = Duration::from_secs(30);

/// How checks reach HTTP producers. Defaults suit production; every limit is explicit.
#[derive(Clone)]
pub struct CheckConfig {
    /// Hosts a producer may name in a per-message `check_url` (`host`, `host:port` or
    /// `*.domain`; see `allow`). Empty (the default) refuses every per-message URL, so a
    /// producer cannot make the broker call an address of its choosing; a group's configured
    /// `check_url` is not limited by it.
    pub check_url_hosts: Vec<String>,
    /// Key of the webhook signature (`X-Sluice-Signature`); none = unsigned requests. At
    /// least 16 bytes. Never logged.
    pub webhook_secret: Option<String>,
    /// Whole-call timeout of one webhook call (connect, send, answer). Default 5 s.
    pub webhook_timeout: Duration,
    /// Webhook calls in flight at once. Default 16.
    pub webhook_concurrency: usize,
    /// Checks waiting for a webhook call; more are refused (not counted, retried one interval
    /// later). Default 1 024.
    pub webhook_queue: usize,
    /// Bytes all checks waiting in the facade may hold together (the webhook queue and the
    /// queues of polling groups; each check counts its body and properties); beyond it a
    /// check is refused like one over a count (tried again one interval later). One check is
    /// always let in when none waits. Default 64 MiB.
    pub queue_bytes: usize,
    /// Longest long-poll (`wait_ms` is capped to it). Default 20 s, at most 30 s.
    pub max_poll_wait: Duration,
    /// Most checks one poll returns (`max` is capped to it). Default 64.
    pub max_poll_batch: usize,
    /// How long after its last poll a group that is in pull mode by polling stays registered
    /// (it queues checks only while a poll waits or for 2 s after one); then it is
    /// unregistered. Default 60 s; at least `max_poll_wait`.
    pub poll_idle: Duration,
    /// Checks queued per group in pull mode by polling. Default 1 000.
    pub pending_per_group: usize,
    /// Groups in pull mode by polling at once (memory bound). Default 1 024.
    pub max_pull_groups: usize,
}

impl std::fmt::Debug for CheckConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckConfig")
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("check_url_hosts", &self.check_url_hosts)
            .field("webhook_timeout", &self.webhook_timeout)
            .field("webhook_concurrency", &self.webhook_concurrency)
            .field("webhook_queue", &self.webhook_queue)
            .field("queue_bytes", &self.queue_bytes)
            .field("max_poll_wait", &self.max_poll_wait)
            .field("max_poll_batch", &self.max_poll_batch)
            .field("poll_idle", &self.poll_idle)
            .field("pending_per_group", &self.pending_per_group)
            .field("max_pull_groups", &self.max_pull_groups)
            .finish()
    }
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            check_url_hosts: Vec::new(),
            webhook_secret: None,
            webhook_timeout: Duration::from_secs(5),
            webhook_concurrency: 16,
            webhook_queue: 1024,
            queue_bytes: 64 << 20,
            max_poll_wait: Duration::from_secs(20),
            max_poll_batch: 64,
            poll_idle: Duration::from_secs(60),
            pending_per_group: 1000,
            max_pull_groups: 1024,
        }
    }
}

impl CheckConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        allow::CheckUrlHosts::parse(&self.check_url_hosts)?;
        if self.webhook_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err("checks.webhook_secret must be at least 16 bytes".into());
        }
        if self.webhook_timeout.is_zero() || self.webhook_timeout > Duration::from_secs(300) {
            return Err("checks.webhook_timeout must be between 1 ms and 300 s".into());
        }
        if self.max_poll_wait > MAX_POLL_WAIT_LIMIT {
            return Err(format!(
                "checks.max_poll_wait must be at most {MAX_POLL_WAIT_LIMIT:?}"
            ));
        }
        if self.poll_idle < self.max_poll_wait || self.poll_idle.is_zero() {
            return Err("checks.poll_idle must be positive and at least max_poll_wait".into());
        }
        let counts = [
            ("webhook_concurrency", self.webhook_concurrency),
            ("webhook_queue", self.webhook_queue),
            ("max_poll_batch", self.max_poll_batch),
            ("pending_per_group", self.pending_per_group),
            ("max_pull_groups", self.max_pull_groups),
        ];
        for (name, v) in counts {
            if v == 0 || v > 1_000_000 {
                return Err(format!("checks.{name} must be between 1 and 1 000 000"));
            }
        }
        if self.queue_bytes == 0 {
            return Err("checks.queue_bytes must be positive".into());
        }
        Ok(())
    }
}

/// The facade's check-back machinery: the webhook worker and the pull-mode registry. Created
/// with the state, started by the facade at broker start and stopped before the store closes.
pub struct TxnHttp {
    config: CheckConfig,
    /// `check_url_hosts`, parsed once (the facade refuses to start with a bad entry).
    hosts: allow::CheckUrlHosts,
    txn: Option<TxnService>,
    pull: Arc<pull::PullGroups>,
    /// `queue_bytes`: shared by the webhook queue and the polled queues.
    budget: Arc<budget::ByteBudget>,
    /// `true` stops the worker, the sweeper and every poll in progress.
    stop: watch::Sender<bool>,
    /// The webhook worker and the pull sweeper; joined by `stop`.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// How webhook checks ended (`/metrics`).
    webhooks: Arc<webhook::WebhookCounts>,
}

impl std::fmt::Debug for TxnHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnHttp")
            .field("config", &self.config)
            .field("enabled", &self.txn.is_some())
            .finish_non_exhaustive()
    }
}

impl TxnHttp {
    pub(crate) fn new(config: &HttpConfig, txn: Option<TxnService>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let budget = budget::ByteBudget::new(config.checks.queue_bytes);
        Self {
            config: config.checks.clone(),
            hosts: allow::CheckUrlHosts::parse(&config.checks.check_url_hosts).unwrap_or_default(),
            txn,
            pull: pull::PullGroups::new(config.checks.clone(), Arc::clone(&budget), stopped),
            budget,
            stop,
            tasks: Mutex::new(Vec::new()),
            webhooks: Arc::default(),
        }
    }

    /// How the webhook checks taken so far ended.
    pub fn webhook_counts(&self) -> &webhook::WebhookCounts {
        &self.webhooks
    }

    /// The hosts a per-message `check_url` may name.
    pub(crate) fn check_url_hosts(&self) -> &allow::CheckUrlHosts {
        &self.hosts
    }

    /// Installs the URL sink and starts the webhook worker and the pull sweeper.
    pub(crate) fn start(&self, _state: &AppState) {
        let Some(txn) = self.txn.clone() else { return };
        // The sweeper first: polling works without webhooks, and without it idle polling
        // groups were never unregistered when the webhook client could not be built.
        let sweeper = tokio::spawn(sweep_loop(
            Arc::clone(&self.pull),
            txn.clone(),
            self.config.poll_idle,
            self.stop.subscribe(),
        ));
        self.tasks.lock().push(sweeper);
        let caller = match webhook::Caller::new(
            &self.config,
            txn.clone(),
            Arc::clone(&self.webhooks),
        ) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::error!(error = %e, "check webhooks disabled: groups with a check_url are checked over TCP");
                return;
            }
        };
        let (tx, rx) = mpsc::channel(self.config.webhook_queue);
        let grace = self.config.webhook_timeout + Duration::from_secs(1);
        let worker = tokio::spawn(webhook::run(
            caller,
            rx,
            self.config.webhook_concurrency,
            grace,
            self.stop.subscribe(),
        ));
        self.tasks.lock().push(worker);
        txn.set_url_sink(Some(Arc::new(webhook::UrlSink {
            tx,
            budget: Arc::clone(&self.budget),
            hosts: self.hosts.clone(),
        })));
        tracing::debug!(
            signed = self.config.webhook_secret.is_some(),
            "transaction check-back over HTTP started"
        );
    }

    /// Uninstalls the sinks, wakes held polls and waits (bounded) for webhook calls in flight.
    pub(crate) async fn stop(&self) {
        if let Some(txn) = &self.txn {
            txn.set_url_sink(None);
            self.pull.clear(txn);
        }
        let _ = self.stop.send(true);
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        let bound = self.config.webhook_timeout + Duration::from_secs(2);
        for mut task in tasks {
            if tokio::time::timeout(bound, &mut task).await.is_err() {
                task.abort();
            }
        }
    }

    fn pull(&self) -> &Arc<pull::PullGroups> {
        &self.pull
    }
}

/// Ends pull registrations of groups that stopped polling, every half `poll_idle`.
async fn sweep_loop(
    pull: Arc<pull::PullGroups>,
    txn: TxnService,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let every = (idle / 2).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => { pull.sweep(&txn); }
            () = stopped(&mut stop) => break,
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone). Holds no watch guard across an
/// await, so the futures that select on it stay `Send`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Send, commit, rollback, check answers and polling (producer scope).
pub(crate) fn producer_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(routes::send))
        .routes(routes!(routes::commit))
        .routes(routes!(routes::rollback))
        .routes(routes!(routes::check_answer))
        .routes(routes!(routes::poll_checks))
}

/// Listing, inspection and forced decisions (admin scope).
pub(crate) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(admin::list))
        .routes(routes!(admin::get_one))
        .routes(routes!(admin::force))
}
