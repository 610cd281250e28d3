//! # sluice-http
//!
//! The HTTP facade: how services in any language use Sluice. It calls the broker core in
//! process (the same checks, hooks, store and retry policy as the RocketMQ protocol), so there
//! is no second copy of any logic. Served by the `sluice` binary (default `127.0.0.1:8080`).
//!
//! ## Layout
//! - [`HttpFacade`] (`facade`): a broker extension that binds the listener at broker start and
//!   stops it before the store closes.
//! - [`router`]: every route, grouped by the scope it needs, with the OpenAPI document built
//!   from the handlers' own types (`openapi`).
//! - Endpoints, one module per area: `produce` (send, batch, raw), `consume` (leases:
//!   receive, ack, nack, visibility), `txn` (transactions, webhook and polled check-back),
//!   `schedule` (cancel, reschedule, list by key), `dlq` (dead letters, replay), `admin`
//!   (topics, groups, stats), `health` (healthz, readyz, Prometheus metrics), `lookup`
//!   (a message and its trace), `figures` (JSON figures for dashboards).
//! - `console`: the operator console's static files, embedded, served at `/console`.
//! - Cross-cutting: `front` (the one middleware before every route: request id, load
//!   shedding, the body's idle timeout (`body_timeout`), error normalising, metrics), [`error`] (one JSON error shape, stable codes),
//!   [`request_id`], [`auth`] (bearer tokens with scopes), [`extract`] (extractors with JSON
//!   rejections), `metrics`, [`config`], `state`.

pub mod auth;
mod body_timeout;
pub mod config;
pub mod error;
pub mod extract;
mod facade;
mod front;
#[doc(hidden)]
pub mod fuzzing;
pub mod request_id;
mod serve;
mod state;

mod admin;
mod console;
pub mod consume;
mod dlq;
mod figures;
mod health;
mod lookup;
mod message;
mod metrics;
mod openapi;
mod produce;
mod schedule;
pub mod txn;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::Router;
use tokio::sync::Semaphore;
use utoipa_axum::router::OpenApiRouter;

pub use config::HttpConfig;
pub use error::{ApiError, ApiResult};
pub use facade::HttpFacade;
pub use state::AppState;

/// Every route with its middleware, and the OpenAPI document describing them.
pub fn router(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let producer = OpenApiRouter::new()
        .merge(produce::routes())
        .merge(txn::producer_routes())
        .merge(schedule::producer_routes());
    let producer = guarded(producer, &state, auth::Scope::Producer);
    let consumer = guarded(consume::routes(), &state, auth::Scope::Consumer);
    let admin = OpenApiRouter::new()
        .merge(txn::admin_routes())
        .merge(dlq::admin_routes())
        .merge(admin::admin_routes())
        .merge(lookup::admin_routes())
        .merge(figures::admin_routes());
    let admin = guarded(admin, &state, auth::Scope::Admin);
    let (routes, mut api) = OpenApiRouter::with_openapi(openapi::base())
        .merge(producer)
        .merge(consumer)
        .merge(admin)
        .merge(health::public_routes(&state))
        .split_for_parts();
    openapi::add_shared_responses(&mut api);
    let spec = Arc::new(api.clone());
    let limit = Arc::new(Semaphore::new(state.config().max_concurrent_requests));
    let long_polls = Arc::new(Semaphore::new(state.config().max_long_polls));
    let router = routes
        .merge(openapi::spec_route(spec))
        .merge(console::routes())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(state.config().max_request_bytes))
        .layer(middleware::from_fn_with_state(
            front::Front {
                state: state.clone(),
                limit,
                long_polls,
            },
            front::layer,
        ))
        .with_state(state);
    (router, api)
}

/// Puts the scope's token check in front of every route of `routes`.
fn guarded(
    routes: OpenApiRouter<AppState>,
    state: &AppState,
    scope: auth::Scope,
) -> OpenApiRouter<AppState> {
    if routes.get_openapi().paths.paths.is_empty() {
        return routes; // a layer over no routes is refused by utoipa-axum
    }
    if state.config().tokens.is_empty() {
        // No tokens: every request would pass (allowed only on a loopback listener), so the
        // check is left out rather than run per request. Tokens are fixed at start.
        return routes;
    }
    let st = state.clone();
    match scope {
        auth::Scope::Producer => {
            routes.route_layer(middleware::from_fn_with_state(st, auth::producer))
        }
        auth::Scope::Consumer => {
            routes.route_layer(middleware::from_fn_with_state(st, auth::consumer))
        }
        auth::Scope::Admin => routes.route_layer(middleware::from_fn_with_state(st, auth::admin)),
    }
}
