//! Admin endpoints (admin scope): topics (`topics`), consumer groups (`groups`) and the
//! broker's counters (`stats`). Reads come straight from the broker's tables and the store;
//! topic creation goes through the same topic table the RocketMQ admin request uses.

mod groups;
mod stats;
mod topics;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub(crate) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(topics::create_topic, topics::list_topics))
        .routes(routes!(topics::get_topic, topics::delete_topic))
        .routes(routes!(groups::list_groups))
        .routes(routes!(groups::get_group))
        .routes(routes!(stats::get_stats))
}
