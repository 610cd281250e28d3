//! Lease-based consumption over HTTP (SQS-style): receive with long polling, ack, nack,
//! visibility. The semantics (competing consumers, receipts, expiry, retries and dead letters
//! with the group's RocketMQ policy, committed offsets) live in the broker's
//! [`sluice_broker::LeaseService`]; this module maps JSON onto it.
//!
//! - `POST /v1/groups/{group}/topics/{topic}/receive` → `{messages:[…]}` (empty when nothing
//!   arrived within `wait_ms`).
//! - `POST /v1/groups/{group}/ack | /nack | /visibility` with `{receipts:[…]}` → one result
//!   per receipt: `{receipt, ok:true}` or `{receipt, ok:false, error:{code, message}}`. A
//!   stale receipt is always an explicit error (`receipt_expired`, `already_acked`, …), never
//!   a silent success.
//!
//! Request-level problems use the one error shape: 404 `topic_not_found`, 422
//! `unprocessable` for values out of range (including an empty or oversized receipt list),
//! 400 for malformed input.

mod dto;

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use sluice_broker::{LeaseError, ReceiveRequest};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use dto::{
    receipt_code, AckBody, NackBody, ReceiptError, ReceiptResult, ReceiptResults, ReceiveBody,
    ReceiveResponse, ReceivedMessage, VisibilityBody,
};

use crate::error::{code, ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, PathParams};
use crate::state::AppState;

/// Messages per receive when the request names no `max` (or `max_per_receive`, if lower).
const DEFAULT_MAX: usize = 10;

/// HTTP-side limits of lease-based consumption (the lease bounds themselves are the broker's
/// `LeaseConfig`).
#[derive(Debug, Clone)]
pub struct ConsumeConfig {
    /// Most receipts in one ack, nack or visibility request (422 above). Default 1 000.
    pub max_receipts: usize,
}

impl Default for ConsumeConfig {
    fn default() -> Self {
        Self {
            max_receipts: 1_000,
        }
    }
}

impl ConsumeConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.max_receipts == 0 || self.max_receipts > 100_000 {
            return Err(format!(
                "consume.max_receipts ({}) must be within 1 and 100 000",
                self.max_receipts
            ));
        }
        Ok(())
    }
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(receive))
        .routes(routes!(ack))
        .routes(routes!(nack))
        .routes(routes!(visibility))
}

/// Leases messages of a topic (and the group's retries of it) for `visibility_ms`.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/topics/{topic}/receive",
    tag = "consume",
    params(
        ("group" = String, Path, description = "Consumer group"),
        ("topic" = String, Path, description = "Topic"),
    ),
    request_body = ReceiveBody,
    responses(
        (status = 200, description = "Leased messages (maybe none)", body = ReceiveResponse),
        (status = 400, description = "Malformed request or group name", body = ErrorBody),
        (status = 403, description = "The topic cannot be consumed", body = ErrorBody),
        (status = 404, description = "No such topic", body = ErrorBody),
        (status = 422, description = "A value out of range", body = ErrorBody),
        (status = 429, description = "A new group while max_groups groups hold leases or open entries", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(group = %group, topic = %topic))]
async fn receive(
    State(state): State<AppState>,
    PathParams((group, topic)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<ReceiveBody>,
) -> ApiResult<Json<ReceiveResponse>> {
    let leases = state.broker().leases();
    let visibility = body
        .visibility_ms
        .map_or(leases.config().default_visibility, Duration::from_millis);
    let req = ReceiveRequest {
        group,
        topic,
        // The default never exceeds the configured most per receive (which may be below it).
        max: body
            .max
            .unwrap_or(DEFAULT_MAX.min(leases.config().max_per_receive)),
        wait: Duration::from_millis(body.wait_ms.unwrap_or(0)),
        visibility,
        tag: body.tag,
    };
    let got = leases.receive(req).await.map_err(receive_error)?;
    Ok(Json(ReceiveResponse {
        messages: got.into_iter().map(ReceivedMessage::from).collect(),
    }))
}

/// Acknowledges deliveries: they are done and will not be delivered again.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/ack",
    tag = "consume",
    params(("group" = String, Path, description = "Consumer group")),
    request_body = AckBody,
    responses(
        (status = 200, description = "One result per receipt", body = ReceiptResults),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 422, description = "No receipts, or too many", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn ack(
    State(state): State<AppState>,
    PathParams(group): PathParams<String>,
    JsonBody(body): JsonBody<AckBody>,
) -> ApiResult<Json<ReceiptResults>> {
    check_receipts(&state, &body.receipts)?;
    let results = state.broker().leases().ack(&group, &body.receipts);
    Ok(Json(ReceiptResults::new(body.receipts, results)))
}

/// Hands deliveries back as failed: retried after `delay_ms` (or the group's back-off), or
/// dead-lettered after the group's maximum.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/nack",
    tag = "consume",
    params(("group" = String, Path, description = "Consumer group")),
    request_body = NackBody,
    responses(
        (status = 200, description = "One result per receipt", body = ReceiptResults),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 422, description = "No receipts, too many, or a delay out of range", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn nack(
    State(state): State<AppState>,
    PathParams(group): PathParams<String>,
    JsonBody(body): JsonBody<NackBody>,
) -> ApiResult<Json<ReceiptResults>> {
    check_receipts(&state, &body.receipts)?;
    let leases = state.broker().leases();
    let delay = body.delay_ms.map(Duration::from_millis);
    let longest = leases.config().nack_levels.last().copied();
    if let (Some(d), Some(max)) = (delay, longest) {
        if d > max {
            return Err(ApiError::unprocessable(format!(
                "delay_ms must be at most {} (the longest delay level)",
                max.as_millis()
            )));
        }
    }
    let results = leases.nack(&group, &body.receipts, delay).await;
    Ok(Json(ReceiptResults::new(body.receipts, results)))
}

/// Sets the remaining lease time of deliveries to `visibility_ms` from now (a lease lasts at
/// most 12 h from its receive by default).
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/visibility",
    tag = "consume",
    params(("group" = String, Path, description = "Consumer group")),
    request_body = VisibilityBody,
    responses(
        (status = 200, description = "One result per receipt", body = ReceiptResults),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 422, description = "No receipts, too many, or a visibility out of range", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn visibility(
    State(state): State<AppState>,
    PathParams(group): PathParams<String>,
    JsonBody(body): JsonBody<VisibilityBody>,
) -> ApiResult<Json<ReceiptResults>> {
    check_receipts(&state, &body.receipts)?;
    let leases = state.broker().leases();
    let cfg = leases.config();
    let v = Duration::from_millis(body.visibility_ms);
    if v < cfg.min_visibility || v > cfg.max_visibility {
        return Err(ApiError::unprocessable(format!(
            "visibility_ms must be within {} and {}",
            cfg.min_visibility.as_millis(),
            cfg.max_visibility.as_millis()
        )));
    }
    let results = leases.extend(&group, &body.receipts, v);
    Ok(Json(ReceiptResults::new(body.receipts, results)))
}

/// A receipt list must name at least one and at most `max_receipts` receipts.
fn check_receipts(state: &AppState, receipts: &[String]) -> ApiResult<()> {
    let max = state.config().consume.max_receipts;
    if receipts.is_empty() || receipts.len() > max {
        return Err(ApiError::unprocessable(format!(
            "receipts must list 1 to {max} receipts (got {})",
            receipts.len()
        )));
    }
    Ok(())
}

/// Maps a refused receive onto the error shape.
fn receive_error(e: LeaseError) -> ApiError {
    use axum::http::StatusCode;
    match e {
        LeaseError::TopicNotFound(_) => {
            ApiError::new(StatusCode::NOT_FOUND, code::TOPIC_NOT_FOUND, e.to_string())
        }
        LeaseError::NotConsumable(_) => {
            ApiError::new(StatusCode::FORBIDDEN, code::FORBIDDEN, e.to_string())
        }
        LeaseError::InvalidGroup(_) => ApiError::bad_request(e.to_string()),
        LeaseError::Invalid(m) => ApiError::unprocessable(m),
        LeaseError::TooManyGroups(_) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            code::TOO_MANY_REQUESTS,
            e.to_string(),
        ),
        LeaseError::OffsetsFull(why) => ApiError::unavailable(why),
        other => ApiError::internal(other),
    }
}
