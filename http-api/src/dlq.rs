//! Stub: filled in by the dlq work.

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub(crate) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
