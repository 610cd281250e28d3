//! [`HttpFacade`]: the facade as a broker extension. It binds its listener when the broker
//! starts (a port in use stops the start with a clear error) and stops serving when the broker
//! shuts down, before the store closes: in-flight requests get a bounded grace period, held
//! long polls are woken by the broker's shutdown signal.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use sluice_broker::services::{BoxFuture, BrokerServices, Extension};
use sluice_schedule::ScheduleService;
use sluice_txn::TxnService;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::HttpConfig;
use crate::serve::{serve, ConnLimits};
use crate::state::AppState;

/// The HTTP facade. Clone-free: wrap in `Arc` and hand [`HttpFacade::extension`] to the
/// broker.
pub struct HttpFacade {
    config: HttpConfig,
    txn: Option<TxnService>,
    schedule: Option<ScheduleService>,
    local_addr: OnceLock<SocketAddr>,
    running: Mutex<Option<Running>>,
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    state: AppState,
}

impl std::fmt::Debug for HttpFacade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFacade")
            .field("listen", &self.config.listen)
            .field("local_addr", &self.local_addr.get())
            .finish()
    }
}

impl HttpFacade {
    /// A facade over the given services (`None` = that feature is disabled).
    pub fn new(
        config: HttpConfig,
        txn: Option<TxnService>,
        schedule: Option<ScheduleService>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            txn,
            schedule,
            local_addr: OnceLock::new(),
            running: Mutex::new(None),
        })
    }

    /// The extension to install in the broker (after the txn and schedule extensions).
    pub fn extension(self: &Arc<Self>) -> Arc<dyn Extension> {
        Arc::new(FacadeExtension(Arc::clone(self)))
    }

    /// The bound address, once the broker started.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr.get().copied()
    }

    /// The state handlers see (for in-process tests), once started.
    pub fn state(&self) -> Option<AppState> {
        self.running.lock().as_ref().map(|r| r.state.clone())
    }

    fn start(&self, services: BrokerServices) -> Result<(), String> {
        self.config.validate()?;
        let std_listener = std::net::TcpListener::bind(self.config.listen)
            .map_err(|e| format!("HTTP listener {}: {e}", self.config.listen))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| format!("HTTP listener: {e}"))?;
        let addr = std_listener
            .local_addr()
            .map_err(|e| format!("HTTP listener: {e}"))?;
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .map_err(|e| format!("HTTP listener: {e}"))?;
        let state = AppState::new(
            self.config.clone(),
            services,
            self.txn.clone(),
            self.schedule.clone(),
        );
        state.txn_http().start(&state);
        let (router, _) = crate::router(state.clone());
        let (stop, stopped) = watch::channel(false);
        let limits = ConnLimits {
            header_read_timeout: self.config.header_read_timeout,
            max_connections: self.config.max_connections,
            refused: std::sync::Arc::clone(&state.metrics().connections_refused),
        };
        let tls = self.config.tls.as_ref().map(|t| t.acceptor.clone());
        let task = tokio::spawn(serve(listener, router, limits, tls, stopped));
        let _ = self.local_addr.set(addr);
        tracing::info!(%addr, "HTTP facade listening");
        *self.running.lock() = Some(Running { stop, task, state });
        Ok(())
    }

    async fn stop(&self) {
        let running = self.running.lock().take();
        let Some(running) = running else { return };
        running.state.txn_http().stop().await;
        let _ = running.stop.send(true);
        let mut task = running.task;
        let grace = running.state.config().shutdown_grace;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            tracing::warn!("HTTP requests still running after the grace period; aborting them");
            task.abort();
        }
    }
}

struct FacadeExtension(Arc<HttpFacade>);

impl Extension for FacadeExtension {
    fn name(&self) -> &'static str {
        "http"
    }

    fn start(&self, services: BrokerServices) -> Result<(), String> {
        self.0.start(services)
    }

    fn stop(&self) -> BoxFuture<'static, ()> {
        let facade = Arc::clone(&self.0);
        Box::pin(async move { facade.stop().await })
    }
}
