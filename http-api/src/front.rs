//! The one middleware in front of every route. In order, it:
//! - gives the request its id and runs it in that id's scope (`request_id`);
//! - sheds load: past `max_concurrent_requests` requests in progress it answers 429 at once,
//!   instead of queueing without bound;
//! - normalises bare error responses into the JSON error shape;
//! - records the request's route, status and latency (`metrics`), 429s included;
//! - puts the id in the `x-request-id` response header.
//!
//! One layer, not one per concern: every axum `from_fn` layer clones and boxes the service
//! under it on every request, which the produce benchmark showed in its profile.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::error::{code, ApiError};
use crate::request_id;
use crate::state::AppState;

/// What the front middleware needs.
#[derive(Clone)]
pub(crate) struct Front {
    pub(crate) state: AppState,
    pub(crate) limit: Arc<Semaphore>,
}

/// The middleware (see the module docs).
pub(crate) async fn layer(State(front): State<Front>, req: Request, next: Next) -> Response {
    let id = request_id::id_for(&req);
    let mut response = request_id::scope(id.clone(), answer(front, req, next)).await;
    request_id::tag(&mut response, &id);
    response
}

/// Sheds or runs the request, normalises its response and records it, inside the id's scope.
async fn answer(front: Front, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    // Only the debug log line needs the raw path.
    let path = tracing::enabled!(tracing::Level::DEBUG).then(|| req.uri().path().to_owned());
    let response = match front.limit.try_acquire() {
        Ok(_permit) => next.run(req).await,
        Err(_) => too_many(),
    };
    let response = request_id::normalise(response);
    let status = response.status().as_u16();
    if let Some(path) = path {
        tracing::debug!(request_id = %request_id::current(), %method, %path, status, "http request");
    }
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    front
        .state
        .metrics()
        .record(method.as_str(), route, status, started.elapsed());
    response
}

fn too_many() -> Response {
    ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        code::TOO_MANY_REQUESTS,
        "too many requests in progress (max_concurrent_requests); retry shortly",
    )
    .into_response()
}
