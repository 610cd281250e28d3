//! Stub: filled in by the transactions work.

use utoipa_axum::router::OpenApiRouter;

use crate::config::HttpConfig;
use crate::state::AppState;

/// How checks reach HTTP producers.
#[derive(Debug, Clone, Default)]
pub struct CheckConfig {}

impl CheckConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Check-back machinery of the facade.
#[derive(Debug, Default)]
pub struct TxnHttp {}

impl TxnHttp {
    pub(crate) fn new(_config: &HttpConfig, _txn: Option<sluice_txn::TxnService>) -> Self {
        Self {}
    }

    pub(crate) fn start(&self, _state: &AppState) {}

    pub(crate) async fn stop(&self) {}
}

pub(crate) fn producer_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}

pub(crate) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
