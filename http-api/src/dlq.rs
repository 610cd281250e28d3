//! Dead letters and replay (admin scope). A dead letter is listed with why it failed
//! (`failure_reason`), where it came from (`original_topic`) and how often it was delivered;
//! replay is an asynchronous, rate-limited, cancellable task with progress (as SQS redrive, but
//! selective: by original topic, key, tag and dead-letter time). The broker's `DlqService`
//! does the work; this module only translates.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sluice_broker::{
    DlqError, DlqFilter, DlqMessage, DlqQuery, ReplaySpec, ReplayState, ReplayStatus,
};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::state::AppState;

/// Highest replay rate accepted (the broker's limit).
const MAX_RATE: u32 = 100_000;
/// Largest page (the broker's `MAX_PAGE`; it cuts larger limits silently, so refuse them).
const MAX_PAGE: usize = 1_000;
/// How long a cancel waits for the task to stop before answering with its current state.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

pub(crate) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_dead_letters))
        .routes(routes!(start_replay))
        .routes(routes!(replays))
        .routes(routes!(replay_status, cancel_replay))
}

/// Which dead letters, and which page.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DlqListQuery {
    /// Most messages (1..=1000, default 100).
    pub limit: Option<usize>,
    /// Cursor: the `next` of the previous page (a DLQ queue offset).
    pub after: Option<u64>,
    /// Only messages first sent to this topic.
    pub original_topic: Option<String>,
    /// Only messages with this key.
    pub key: Option<String>,
    /// Only messages with this tag.
    pub tag: Option<String>,
    /// Only messages dead-lettered at or after this time (epoch ms).
    pub since_ms: Option<i64>,
    /// Only messages dead-lettered at or before this time (epoch ms).
    pub until_ms: Option<i64>,
    /// Also list messages already replayed.
    #[serde(default)]
    pub include_replayed: bool,
}

/// A page of dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DlqPageOut {
    /// Oldest first.
    pub messages: Vec<DeadLetterOut>,
    /// Pass as `after` for the next page; absent at the end of the queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// One dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetterOut {
    /// Position in the dead-letter queue.
    pub dlq_offset: u64,
    /// The message id (UNIQ_KEY), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
    /// Offset message id of the dead-letter record.
    pub offset_msg_id: String,
    /// The topic it was first sent to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_topic: Option<String>,
    /// Why its last delivery failed (as the consumer reported it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// How often it was consumed again before it was given up.
    pub reconsume_times: i32,
    /// When it was dead-lettered (epoch ms).
    pub dead_lettered_ms: i64,
    /// When it was first produced (epoch ms).
    pub born_ms: i64,
    /// Its keys.
    pub keys: Vec<String>,
    /// Its tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The body as text, when it is UTF-8 and not compressed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body as base64 otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// True when the stored body is compressed (as the producer's client sent it).
    pub compressed: bool,
    /// Every property.
    pub properties: BTreeMap<String, String>,
    /// True when a replay already wrote it back.
    pub replayed: bool,
}

/// What to replay.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayIn {
    /// Only messages first sent to this topic.
    pub original_topic: Option<String>,
    /// Only messages with this key.
    pub key: Option<String>,
    /// Only messages with this tag.
    pub tag: Option<String>,
    /// Only messages dead-lettered at or after this time (epoch ms).
    pub since_ms: Option<i64>,
    /// Only messages dead-lettered at or before this time (epoch ms).
    pub until_ms: Option<i64>,
    /// Write the copies here. By default they go to the group's retry topic as retries of
    /// their original topic, so only this group receives them again.
    pub target_topic: Option<String>,
    /// Messages per second (1..=100000, default 100).
    pub rate_per_sec: Option<u32>,
    /// Stop after this many messages.
    pub max: Option<u64>,
    /// Count what would be replayed, write nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// A replay task's definition and progress.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReplayOut {
    /// Task id.
    pub id: String,
    /// Consumer group.
    pub group: String,
    /// `running`, `completed`, `cancelled` or `failed`.
    pub state: String,
    /// Only messages first sent to this topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_topic: Option<String>,
    /// Only messages with this key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Only messages with this tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Dead-lettered at or after (epoch ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    /// Dead-lettered at or before (epoch ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
    /// Destination override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_topic: Option<String>,
    /// Messages per second.
    pub rate_per_sec: u32,
    /// Nothing is written.
    pub dry_run: bool,
    /// Cap on messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    /// Messages that passed the filter.
    pub matched: u64,
    /// Copies written.
    pub replayed: u64,
    /// Messages replayed earlier, skipped.
    pub skipped: u64,
    /// Messages that could not be written (left in the DLQ).
    pub failed: u64,
    /// Next DLQ offset the task looks at.
    pub next_offset: u64,
    /// The DLQ's end when the task started (later dead letters are not replayed).
    pub end_offset: u64,
    /// Why it failed, or the last per-message error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Created (epoch ms).
    pub created_ms: i64,
    /// Last progress (epoch ms).
    pub updated_ms: i64,
}

/// Every replay task, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReplaysOut {
    /// The tasks.
    pub replays: Vec<ReplayOut>,
}

/// Lists a group's dead letters, oldest first.
#[utoipa::path(
    get,
    path = "/v1/groups/{group}/dlq",
    tag = "dlq",
    params(("group" = String, Path, description = "Consumer group"), DlqListQuery),
    responses(
        (status = 200, description = "A page", body = DlqPageOut),
        (status = 400, description = "Bad group name or query", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list_dead_letters(
    State(state): State<AppState>,
    PathParams(group): PathParams<String>,
    QueryParams(q): QueryParams<DlqListQuery>,
) -> ApiResult<Json<DlqPageOut>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be within 1 and {MAX_PAGE}"
        )));
    }
    let query = DlqQuery {
        group,
        filter: DlqFilter {
            original_topic: q.original_topic,
            key: q.key,
            tag: q.tag,
            since_ms: q.since_ms,
            until_ms: q.until_ms,
        },
        start_offset: q.after.unwrap_or(0),
        limit,
        include_replayed: q.include_replayed,
    };
    let dlq = state.broker().dlq();
    let page = tokio::task::spawn_blocking(move || dlq.list(&query))
        .await
        .map_err(ApiError::internal)?
        .map_err(dlq_error)?;
    Ok(Json(DlqPageOut {
        next: (!page.end).then_some(page.next_offset),
        messages: page.messages.into_iter().map(dead_letter_out).collect(),
    }))
}

/// Starts replaying a group's dead letters (one task per group at a time).
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/dlq/replay",
    tag = "dlq",
    params(("group" = String, Path, description = "Consumer group")),
    request_body = ReplayIn,
    responses(
        (status = 202, description = "Started; poll GET /v1/replays/{id}", body = ReplayOut),
        (status = 400, description = "Bad group, topic or body", body = ErrorBody),
        (status = 403, description = "target_topic is a system topic", body = ErrorBody),
        (status = 404, description = "The group has no dead-letter queue", body = ErrorBody),
        (status = 409, description = "A replay of this group is still running", body = ErrorBody),
        (status = 422, description = "rate_per_sec out of range", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn start_replay(
    State(state): State<AppState>,
    PathParams(group): PathParams<String>,
    JsonBody(body): JsonBody<ReplayIn>,
) -> ApiResult<(StatusCode, Json<ReplayOut>)> {
    let rate = body.rate_per_sec.unwrap_or(0);
    if body.rate_per_sec.is_some() && !(1..=MAX_RATE).contains(&rate) {
        return Err(ApiError::unprocessable(format!(
            "rate_per_sec must be within 1 and {MAX_RATE}"
        )));
    }
    let spec = ReplaySpec {
        group,
        filter: DlqFilter {
            original_topic: body.original_topic,
            key: body.key,
            tag: body.tag,
            since_ms: body.since_ms,
            until_ms: body.until_ms,
        },
        target_topic: body.target_topic,
        rate_per_sec: rate,
        dry_run: body.dry_run,
        max_messages: body.max,
        requested_by: Some(format!("http {}", crate::request_id::current())),
    };
    let status = state
        .broker()
        .dlq()
        .start_replay(spec)
        .await
        .map_err(dlq_error)?;
    tracing::info!(task = %status.id, group = %status.group, "replay started over HTTP");
    Ok((StatusCode::ACCEPTED, Json(replay_out(status))))
}

/// Every replay task, newest first.
#[utoipa::path(
    get,
    path = "/v1/replays",
    tag = "dlq",
    responses((status = 200, description = "The tasks", body = ReplaysOut)),
    security(("bearer" = []))
)]
async fn replays(State(state): State<AppState>) -> Json<ReplaysOut> {
    let replays = state.broker().dlq().replays();
    Json(ReplaysOut {
        replays: replays.into_iter().map(replay_out).collect(),
    })
}

/// A replay task's status and progress.
#[utoipa::path(
    get,
    path = "/v1/replays/{id}",
    tag = "dlq",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task", body = ReplayOut),
        (status = 404, description = "No such task", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn replay_status(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<ReplayOut>> {
    let status = state.broker().dlq().replay(&id).map_err(dlq_error)?;
    Ok(Json(replay_out(status)))
}

/// Cancels a replay task: it stops after its current message. Answers once it stopped (or
/// after a bounded wait, with `state: running`); cancelling a finished task changes nothing.
#[utoipa::path(
    delete,
    path = "/v1/replays/{id}",
    tag = "dlq",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task after the cancel", body = ReplayOut),
        (status = 404, description = "No such task", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn cancel_replay(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<ReplayOut>> {
    let dlq = state.broker().dlq();
    let before = dlq.cancel_replay(&id).map_err(dlq_error)?;
    let status = if before.state == ReplayState::Running {
        dlq.wait_replay(&id, CANCEL_WAIT).await.map_err(dlq_error)?
    } else {
        before
    };
    tracing::info!(task = %id, state = ?status.state, "replay cancel over HTTP");
    Ok(Json(replay_out(status)))
}

fn dead_letter_out(m: DlqMessage) -> DeadLetterOut {
    let text = if m.compressed {
        None
    } else {
        std::str::from_utf8(&m.body).ok().map(str::to_owned)
    };
    let body_base64 = text
        .is_none()
        .then(|| base64::engine::general_purpose::STANDARD.encode(&m.body));
    DeadLetterOut {
        dlq_offset: m.queue_offset,
        msg_id: m.uniq_key,
        offset_msg_id: m.msg_id,
        original_topic: m.original_topic,
        failure_reason: m.failure_reason,
        reconsume_times: m.delivery_count,
        dead_lettered_ms: m.dead_lettered_ms,
        born_ms: m.born_timestamp,
        keys: m.keys,
        tag: m.tag,
        body: text,
        body_base64,
        compressed: m.compressed,
        properties: m.properties,
        replayed: m.replayed,
    }
}

fn replay_out(s: ReplayStatus) -> ReplayOut {
    let state = match s.state {
        ReplayState::Running => "running",
        ReplayState::Completed => "completed",
        ReplayState::Cancelled => "cancelled",
        ReplayState::Failed => "failed",
    };
    ReplayOut {
        id: s.id,
        group: s.group,
        state: state.to_owned(),
        original_topic: s.filter.original_topic,
        key: s.filter.key,
        tag: s.filter.tag,
        since_ms: s.filter.since_ms,
        until_ms: s.filter.until_ms,
        target_topic: s.target_topic,
        rate_per_sec: s.rate_per_sec,
        dry_run: s.dry_run,
        max: s.max_messages,
        matched: s.matched,
        replayed: s.replayed,
        skipped: s.skipped,
        failed: s.failed,
        next_offset: s.next_offset,
        end_offset: s.end_offset,
        error: s.error,
        created_ms: s.created_ms,
        updated_ms: s.updated_ms,
    }
}

fn dlq_error(e: DlqError) -> ApiError {
    match e {
        DlqError::NoSuchTask(id) => ApiError::not_found(format!("no replay task {id:?}")),
        DlqError::NoDeadLetters(g) => {
            ApiError::not_found(format!("group {g:?} has no dead-letter queue"))
        }
        DlqError::Invalid(m) => ApiError::bad_request(m),
        DlqError::Forbidden(m) => {
            ApiError::new(StatusCode::FORBIDDEN, crate::error::code::FORBIDDEN, m)
        }
        DlqError::Busy(id) => ApiError::conflict(format!(
            "replay task {id} of this group is still running (one at a time)"
        )),
        // A task or ledger file that could not be written or read (a full disk): nothing was
        // started, and a retry may pass.
        DlqError::State(m) => ApiError::unavailable(format!("replay state: {m}; retry later")),
        other => ApiError::internal(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replay whose task or ledger file could not be written (a full disk) started nothing
    /// and may pass later: 503 with Retry-After, not 500 "a bug".
    #[test]
    fn a_state_file_failure_is_unavailable_not_internal() {
        let e = dlq_error(DlqError::State("write task: no space".into()));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.message.contains("no space"), "{}", e.message);
    }
}
