//! [`AppState`]: what every handler reaches, cheap to clone.

use std::sync::Arc;
use std::time::Instant;

use sluice_broker::services::BrokerServices;
use sluice_schedule::ScheduleService;
use sluice_txn::TxnService;

use crate::config::HttpConfig;
use crate::error::ApiError;

/// Shared state of the facade.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: HttpConfig,
    services: BrokerServices,
    txn: Option<TxnService>,
    schedule: Option<ScheduleService>,
    started: Instant,
    metrics: crate::metrics::HttpMetrics,
    txn_http: crate::txn::TxnHttp,
    /// The broker's shutdown flag: once set, new requests (probes aside) are answered 503
    /// while the broker drains (see `front`).
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("listen", &self.inner.config.listen)
            .finish()
    }
}

impl AppState {
    /// State over a started broker's services; `txn` and `schedule` are `None` when those
    /// features are disabled (their endpoints then answer 503).
    pub fn new(
        config: HttpConfig,
        services: BrokerServices,
        txn: Option<TxnService>,
        schedule: Option<ScheduleService>,
    ) -> Self {
        let txn_http = crate::txn::TxnHttp::new(&config, txn.clone());
        let services_shutdown = services.shutdown_signal();
        Self {
            inner: Arc::new(Inner {
                config,
                services,
                txn,
                schedule,
                started: Instant::now(),
                metrics: crate::metrics::HttpMetrics::default(),
                txn_http,
                shutdown: services_shutdown,
            }),
        }
    }

    /// True once the broker's shutdown has begun.
    pub(crate) fn stopping(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// The configuration.
    pub fn config(&self) -> &HttpConfig {
        &self.inner.config
    }

    /// The broker.
    pub fn broker(&self) -> &BrokerServices {
        &self.inner.services
    }

    /// Transactions, or 503 when disabled.
    pub fn txn(&self) -> Result<&TxnService, ApiError> {
        self.inner.txn.as_ref().ok_or_else(|| {
            ApiError::unavailable("transactional messages are disabled ([txn] enabled = false)")
        })
    }

    /// Scheduling, or 503 when disabled.
    pub fn schedule(&self) -> Result<&ScheduleService, ApiError> {
        self.inner.schedule.as_ref().ok_or_else(|| {
            ApiError::unavailable("delayed messages are disabled ([schedule] enabled = false)")
        })
    }

    /// HTTP request metrics.
    pub fn metrics(&self) -> &crate::metrics::HttpMetrics {
        &self.inner.metrics
    }

    /// The transactional check-back machinery of the facade (webhooks, polling).
    pub fn txn_http(&self) -> &crate::txn::TxnHttp {
        &self.inner.txn_http
    }

    /// When the facade started.
    pub fn started(&self) -> Instant {
        self.inner.started
    }
}
