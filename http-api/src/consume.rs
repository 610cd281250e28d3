//! Stub: filled in by the consume work.

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}

/// Limits of lease-based consumption.
#[derive(Debug, Clone, Default)]
pub struct ConsumeConfig {}

impl ConsumeConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}
