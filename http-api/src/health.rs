//! `GET /healthz` (the process answers), `GET /readyz` (the broker takes writes), and
//! `GET /metrics` (Prometheus text).

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// Routes without authentication.
pub(crate) fn public_routes(_state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
