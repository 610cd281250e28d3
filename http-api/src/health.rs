//! `GET /healthz` (the process answers), `GET /readyz` (the broker takes writes and shows
//! them: store not fenced, consume-queue and index entries being written, disk under its
//! guard, not shutting down), and `GET /metrics` (Prometheus text).
//! Health probes never need a token; `/metrics` needs an admin token unless
//! `metrics_public` is set (it is by default: it carries no message data or secrets).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// Liveness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    /// Seconds since the facade started.
    pub uptime_s: u64,
}

/// Readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// `ready` or `not_ready`.
    pub status: String,
    /// Why not (empty when ready).
    pub reasons: Vec<String>,
}

/// Routes without authentication (and `/metrics`, guarded unless public).
pub(crate) fn public_routes(state: &AppState) -> OpenApiRouter<AppState> {
    let metrics = OpenApiRouter::new().routes(routes!(metrics));
    let metrics = if state.config().metrics_public {
        metrics
    } else {
        metrics.route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::admin,
        ))
    };
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .merge(metrics)
}

/// The process is up and answering.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = Health)))]
async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        uptime_s: state.started().elapsed().as_secs(),
    })
}

/// The broker takes writes.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Not ready, with reasons", body = Ready)))]
async fn readyz(State(state): State<AppState>) -> Response {
    let reasons = not_ready_reasons(&state);
    let (status, word) = if reasons.is_empty() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    (
        status,
        Json(Ready {
            status: word.into(),
            reasons,
        }),
    )
        .into_response()
}

fn not_ready_reasons(state: &AppState) -> Vec<String> {
    let mut reasons = Vec::new();
    let store = state.broker().store();
    if let Some(why) = store.fenced() {
        reasons.push(format!("store fenced: {why}"));
    }
    if let Some(why) = store.dispatch_failing() {
        reasons.push(format!(
            "consume-queue or index entries cannot be written ({why}): new messages are hidden from consumers"
        ));
    }
    if let Ok(u) = store.disk_usage() {
        let max = store.config().disk_max_used_ratio;
        if u.ratio() >= max {
            reasons.push(format!(
                "disk {:.1}% used, appends refused above {:.1}%",
                u.ratio() * 100.0,
                max * 100.0
            ));
        }
    }
    if let Some(why) = state.broker().registration_problem() {
        reasons.push(format!("not in any route: {why}"));
    }
    if state.stopping() {
        reasons.push("shutting down".into());
    }
    reasons
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain")),
    // Public by default; with `metrics_public = false` an admin token is needed.
    security((), ("bearer" = [])))]
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&state),
    )
        .into_response()
}
