//! Stub: filled in by the schedule work.

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub(crate) fn producer_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
