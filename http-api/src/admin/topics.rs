//! `POST /v1/topics`, `GET /v1/topics`, `GET /v1/topics/{topic}`.
//!
//! Creation is idempotent: creating a topic that exists with the same queues and permission
//! answers 200 with it; one that exists with another shape answers 409 (changing a live
//! topic's queue count moves keys between queues, which must be a deliberate act, not a side
//! effect of a retried create). A new topic answers 201.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use sluice_broker::{DeleteTopicError, NotAdded};
use sluice_protocol::remoting::body::{perm, TopicConfig};
use utoipa::{IntoParams, ToSchema};

use crate::error::{code, ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::state::AppState;

/// Most queues a topic may have (the broker's bound: queue ids become folders).
const MAX_QUEUES: i32 = 4096;
/// Longest topic name (RocketMQ's rule).
const MAX_NAME: usize = 127;
/// Names and prefixes of topics the broker owns.
const SYSTEM_PREFIXES: &[&str] = &["%RETRY%", "%DLQ%", "RMQ_SYS_", "SLUICE_SYS_", "rmq_sys_"];
const SYSTEM_NAMES: &[&str] = &[
    sluice_broker::DEFAULT_TOPIC,
    sluice_broker::SCHEDULE_TOPIC,
    sluice_broker::TRANS_HALF_TOPIC,
    sluice_broker::TRANS_OP_HALF_TOPIC,
    sluice_broker::TRANS_CHECK_MAX_TIME_TOPIC,
    "SELF_TEST_TOPIC",
    "OFFSET_MOVED_EVENT",
];

/// A topic to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTopicIn {
    /// `[a-zA-Z0-9_|-]`, at most 127 characters; not a system name.
    pub name: String,
    /// Queue count (1..=4096; default the broker's `default_topic_queue_nums`).
    pub queues: Option<i32>,
    /// Permission bits: 6 read-write (default), 4 read-only, 2 write-only.
    pub perm: Option<i32>,
}

/// A topic.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TopicOut {
    /// Name.
    pub name: String,
    /// Queues consumers read.
    pub read_queues: i32,
    /// Queues producers write.
    pub write_queues: i32,
    /// Permission bits (4 read, 2 write).
    pub perm: i32,
    /// Ordered topic.
    pub order: bool,
    /// Owned by the broker (retry, dead-letter, schedule, transaction topics).
    pub system: bool,
}

/// Topics.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TopicsOut {
    /// Sorted by name.
    pub topics: Vec<TopicOut>,
    /// More topics follow: pass this as `after` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// A topic with its queues.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TopicDetailOut {
    /// The topic.
    #[serde(flatten)]
    pub topic: TopicOut,
    /// Its queues.
    pub queues: Vec<QueueOut>,
}

/// One queue.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QueueOut {
    /// Queue id.
    pub queue_id: i32,
    /// First offset still stored (older messages aged out).
    pub min_offset: u64,
    /// Next offset to be written.
    pub max_offset: u64,
    /// Messages stored (`max_offset - min_offset`).
    pub messages: u64,
}

/// Listing options.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListTopicsQuery {
    /// Also list the broker's own topics (retry, dead-letter, schedule, transactions).
    #[serde(default)]
    pub system: bool,
    /// Most topics in the answer, 1 to 10 000 (default 1 000).
    pub limit: Option<usize>,
    /// Topics after this name (the previous page's `next_after`).
    pub after: Option<String>,
}

/// Creates a topic (idempotent for the same shape).
#[utoipa::path(
    post,
    path = "/v1/topics",
    tag = "admin",
    request_body = CreateTopicIn,
    responses(
        (status = 201, description = "Created", body = TopicOut),
        (status = 200, description = "Already exists with this shape", body = TopicOut),
        (status = 400, description = "Bad name or permission", body = ErrorBody),
        (status = 409, description = "Exists with another shape, or a topic of that name is being deleted (retry)", body = ErrorBody),
        (status = 422, description = "Out of range (queues), or the broker holds `[broker] max_topics` topics", body = ErrorBody),
        (status = 503, description = "In effect, but topics.json could not be saved; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn create_topic(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateTopicIn>,
) -> ApiResult<(StatusCode, Json<TopicOut>)> {
    check_name(&body.name)?;
    let default_queues = state.broker().default_topic_queue_nums();
    let queues = body.queues.unwrap_or(default_queues.clamp(1, MAX_QUEUES));
    if !(1..=MAX_QUEUES).contains(&queues) {
        return Err(ApiError::unprocessable(format!(
            "queues must be within 1 and {MAX_QUEUES}"
        )));
    }
    let perm = body.perm.unwrap_or(perm::READ_WRITE);
    if ![perm::READ_WRITE, perm::READ, perm::WRITE].contains(&perm) {
        return Err(ApiError::bad_request(
            "perm must be 6 (read-write), 4 (read-only) or 2 (write-only)",
        ));
    }
    let wanted = TopicConfig::new(&body.name, queues, perm);
    // Checked and added in one step: two creates of one name racing with different shapes
    // get one 201 and one 409, never two 201s with the last shape silently in force.
    let created = state
        .broker()
        .create_topic_durably(wanted.clone())
        .await
        .map_err(not_saved)?;
    if let Err(not_added) = created {
        let existing = match not_added {
            NotAdded::Exists(existing) => existing,
            NotAdded::Limit(limit) => return Err(ApiError::unprocessable(limit.to_string())),
            NotAdded::Deleting => {
                return Err(ApiError::conflict(format!(
                    "topic {:?} is being deleted; create it again once that is done",
                    body.name
                )))
            }
        };
        let out = same_shape(existing, &wanted)?;
        // It may be in effect from an earlier request whose save failed (503): a 200 must
        // mean it is on disk too.
        state.broker().save_topics().await.map_err(not_saved)?;
        return Ok((StatusCode::OK, Json(out)));
    }
    tracing::info!(topic = %body.name, queues, perm, "topic created over HTTP");
    Ok((StatusCode::CREATED, Json(topic_out(&wanted))))
}

/// Lists topics.
#[utoipa::path(
    get,
    path = "/v1/topics",
    tag = "admin",
    params(ListTopicsQuery),
    responses(
        (status = 200, description = "Topics, sorted by name", body = TopicsOut),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list_topics(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListTopicsQuery>,
) -> ApiResult<Json<TopicsOut>> {
    // Sorted by name: the broker's topic table is a BTreeMap.
    let all = state.broker().topics();
    let shown = all.iter().filter(|t| q.system || !is_system(&t.topic_name));
    let (topics, next_after) = super::page(
        shown,
        |t| t.topic_name.as_str(),
        q.after.as_deref(),
        q.limit,
    )?;
    Ok(Json(TopicsOut {
        topics: topics.into_iter().map(topic_out).collect(),
        next_after,
    }))
}

/// A topic with its queues' offsets.
#[utoipa::path(
    get,
    path = "/v1/topics/{topic}",
    tag = "admin",
    params(("topic" = String, Path, description = "Topic")),
    responses(
        (status = 200, description = "The topic", body = TopicDetailOut),
        (status = 404, description = "No such topic", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_topic(
    State(state): State<AppState>,
    PathParams(topic): PathParams<String>,
) -> ApiResult<Json<TopicDetailOut>> {
    let cfg = state
        .broker()
        .topic(&topic)
        .ok_or_else(|| topic_not_found(&topic))?;
    let store = state.broker().store();
    let queues = (0..cfg.read_queue_nums.max(cfg.write_queue_nums))
        .map(|q| {
            let (min, max) = (store.min_offset(&topic, q), store.max_offset(&topic, q));
            QueueOut {
                queue_id: q,
                min_offset: min,
                max_offset: max,
                messages: max.saturating_sub(min),
            }
        })
        .collect();
    Ok(Json(TopicDetailOut {
        topic: topic_out(&cfg),
        queues,
    }))
}

/// Deletes a topic: it disappears from routes and listings, producers and HTTP receivers get
/// `topic_not_found` (unless auto-creation brings it back on a send), and its stored
/// messages are never delivered again (they age out with retention), so a topic created
/// again under its name starts empty. System topics are refused (403).
#[utoipa::path(
    delete,
    path = "/v1/topics/{topic}",
    tag = "admin",
    params(("topic" = String, Path, description = "Topic")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "A system topic, or the retry topic of a consumer group that has members", body = ErrorBody),
        (status = 404, description = "No such topic", body = ErrorBody),
        (status = 409, description = "Another request is deleting it; retry", body = ErrorBody),
        (status = 429, description = "Not deleted: the store is busy; retry", body = ErrorBody),
        (status = 503, description = "Not deleted: the store cannot write (full or failing disk); or deleted, but topics.json could not be saved. Retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete_topic(
    State(state): State<AppState>,
    PathParams(topic): PathParams<String>,
) -> ApiResult<StatusCode> {
    match state.broker().delete_topic(&topic).await {
        Ok(Some(_)) => {
            state.broker().save_topics().await.map_err(not_saved)?;
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(None) => Err(topic_not_found(&topic)),
        Err(DeleteTopicError::Refused(why)) => {
            Err(ApiError::new(StatusCode::FORBIDDEN, code::FORBIDDEN, why))
        }
        Err(DeleteTopicError::Store(e)) => Err(not_hidden(e)),
        Err(DeleteTopicError::Deleting) => Err(ApiError::conflict(format!(
            "topic {topic:?} is being deleted by another request; retry to see how that ended"
        ))),
        Err(e @ DeleteTopicError::Internal(_)) => Err(ApiError::internal(e)),
    }
}

/// The deleted topic's messages could not be hidden, so the topic was kept: 429 while the
/// store is busy, 503 while it cannot write (full disk, failed sync, shutting down), else 500.
/// A retry may succeed.
fn not_hidden(e: sluice_store::StoreError) -> ApiError {
    use sluice_store::StoreError;
    tracing::error!(request_id = %crate::request_id::current(), error = %e, "deleting a topic failed in the store");
    match e {
        StoreError::Busy(_) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            code::TOO_MANY_REQUESTS,
            "the store is busy; the topic is kept, retry shortly",
        ),
        StoreError::DiskFull(_) | StoreError::Fenced(_) | StoreError::Closed => {
            ApiError::unavailable(
                "the store cannot take writes now; the topic is kept, retry later",
            )
        }
        // The floors file (`queue-floors`) could not be written: a full or failing disk, or
        // a folder the broker may not write; the log says which.
        StoreError::Io { .. } | StoreError::SyncFailed(_) => ApiError::unavailable(
            "the store could not save the floors that hide the topic's messages (its \
             queue-floors file; the broker log has the cause under this request id); the \
             topic is kept, retry once that is fixed",
        ),
        other => ApiError::internal(other),
    }
}

/// 503: the change is in effect but `topics.json` could not be written (a full or failing
/// disk); the caller may retry, and the details go to the log under the request id.
fn not_saved(e: sluice_broker::BrokerError) -> ApiError {
    tracing::error!(request_id = %crate::request_id::current(), error = %e, "saving topics failed");
    ApiError::unavailable("the topic change could not be saved to disk; retry later")
}

/// 404 `topic_not_found`.
pub(super) fn topic_not_found(topic: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        code::TOPIC_NOT_FOUND,
        format!("topic {topic:?} does not exist"),
    )
}

fn same_shape(existing: TopicConfig, wanted: &TopicConfig) -> ApiResult<TopicOut> {
    let same = existing.read_queue_nums == wanted.read_queue_nums
        && existing.write_queue_nums == wanted.write_queue_nums
        && existing.perm == wanted.perm;
    if same {
        Ok(topic_out(&existing))
    } else {
        Err(ApiError::conflict(format!(
            "topic {:?} exists with {} queues and perm {}",
            existing.topic_name, existing.write_queue_nums, existing.perm
        )))
    }
}

fn check_name(name: &str) -> ApiResult<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(ApiError::bad_request(format!(
            "a topic name has 1 to {MAX_NAME} characters"
        )));
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'|' | b'_' | b'-'));
    if !ok {
        return Err(ApiError::bad_request(format!(
            "topic name {name:?} may only hold [a-zA-Z0-9_|-]"
        )));
    }
    if is_system(name) {
        return Err(ApiError::bad_request(format!(
            "topic name {name:?} is reserved by the broker"
        )));
    }
    Ok(())
}

/// True for topics the broker owns.
pub(super) fn is_system(name: &str) -> bool {
    SYSTEM_NAMES.contains(&name) || SYSTEM_PREFIXES.iter().any(|p| name.starts_with(p))
}

fn topic_out(t: &TopicConfig) -> TopicOut {
    TopicOut {
        name: t.topic_name.clone(),
        read_queues: t.read_queue_nums,
        write_queues: t.write_queue_nums,
        perm: t.perm,
        order: t.order,
        system: is_system(&t.topic_name),
    }
}
