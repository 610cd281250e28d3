//! Admin endpoints (admin scope): topics (`topics`), consumer groups (`groups`) and the
//! broker's counters (`stats`). Reads come straight from the broker's tables and the store;
//! topic creation goes through the same topic table the RocketMQ admin request uses.

mod groups;
mod stats;
mod topics;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Names a listing answers when `limit` is not given.
const DEFAULT_PAGE: usize = 1_000;
/// Most names a listing answers at once.
const MAX_PAGE: usize = 10_000;

/// One page of a listing sorted by name: the items after the cursor `after`, at most `limit`
/// (1 to `MAX_PAGE`, default `DEFAULT_PAGE`), and the cursor of the next page when more
/// follow. Topics are auto-created by any producer, so a listing has no other bound.
fn page<T>(
    sorted: impl Iterator<Item = T>,
    name: impl Fn(&T) -> &str,
    after: Option<&str>,
    limit: Option<usize>,
) -> ApiResult<(Vec<T>, Option<String>)> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_PAGE}"
        )));
    }
    let mut out: Vec<T> = sorted
        .filter(|t| after.is_none_or(|a| name(t) > a))
        .take(limit + 1)
        .collect();
    let next = if out.len() > limit {
        out.truncate(limit);
        out.last().map(|t| name(t).to_owned())
    } else {
        None
    };
    Ok((out, next))
}

pub(crate) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(topics::create_topic, topics::list_topics))
        .routes(routes!(topics::get_topic, topics::delete_topic))
        .routes(routes!(groups::list_groups))
        .routes(routes!(groups::get_group))
        .routes(routes!(groups::delete_group_offsets))
        .routes(routes!(stats::get_stats))
}
