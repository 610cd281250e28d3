//! Scheduled messages by business key (or id): cancel, reschedule, list. Every answer is
//! definite: the schedule service settles a race with the release under one lock, so a
//! message is reported either `cancelled`/`rescheduled` (and will not be delivered at its old
//! time) or `already_delivered`, never "maybe"; cancels are durable before the answer.
//!
//! `{key}` is a business key (one of the message's `keys`); with `?by=id` it is the message id
//! (`msg_id` of the send). A key may name several messages: `result` summarises (any
//! cancelled now → `cancelled`; else any delivered → `already_delivered`; else any cancelled
//! before → `already_cancelled`, so a retried cancel is told apart from an unknown key; else
//! any given up as undeliverable → `already_dropped` (it never reached its topic); else
//! `not_found`), `count` is how many got that result, and `messages` gives each one's outcome.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use sluice_schedule::{
    MessageState, OpReport, Outcome, ScheduleError, ScheduledMessage, Selector, When,
};
use sluice_store::StoreError;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::state::AppState;

pub(crate) fn producer_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(cancel, reschedule))
        .routes(routes!(list))
}

/// How `{key}` is read.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum By {
    /// A business key (default).
    #[default]
    Key,
    /// A message id (UNIQ_KEY).
    Id,
}

/// Query of cancel and reschedule.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ByQuery {
    /// `key` (default) or `id`.
    #[serde(default)]
    #[param(inline)]
    pub by: By,
}

/// Query of the listing: exactly one of `key` and `msg_id`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// A business key.
    pub key: Option<String>,
    /// A message id.
    pub msg_id: Option<String>,
}

/// A new delivery time: exactly one of the two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RescheduleIn {
    /// Deliver this many ms from now.
    pub delay_ms: Option<i64>,
    /// Deliver at this epoch ms.
    pub deliver_at_ms: Option<i64>,
}

/// The answer to a cancel or reschedule.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OpOut {
    /// `cancelled`, `rescheduled`, `already_delivered`, `already_cancelled`,
    /// `already_dropped` or `not_found`.
    pub result: String,
    /// Messages with that result.
    pub count: usize,
    /// Messages the key or id matched (including ones cancelled before).
    pub matched: usize,
    /// Of those, cancelled before this call.
    pub already_cancelled: usize,
    /// Of those, delivered before this call (or being delivered when it came).
    pub already_delivered: usize,
    /// Of those, dropped as undeliverable before this call (never delivered).
    pub already_dropped: usize,
    /// More messages matched than the broker handles in one call (`max_key_matches`).
    pub truncated: bool,
    /// For a reschedule: the new delivery time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver_at_ms: Option<i64>,
    /// Each message's outcome.
    pub messages: Vec<OutcomeOut>,
}

/// One message's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OutcomeOut {
    /// Its id.
    pub msg_id: String,
    /// `cancelled`, `rescheduled`, `already_cancelled`, `already_delivered` or
    /// `already_dropped`.
    pub outcome: String,
    /// For `rescheduled`: the new delivery time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver_at_ms: Option<i64>,
}

/// Scheduled messages with a key or id.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ListOut {
    /// The messages (pending, cancelled or delivered).
    pub messages: Vec<ScheduledOut>,
    /// More matched than the broker lists in one call.
    pub truncated: bool,
}

/// One scheduled message.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ScheduledOut {
    /// Its id.
    pub msg_id: String,
    /// Its topic.
    pub topic: String,
    /// Its queue.
    pub queue_id: i32,
    /// When it is (or was) due, epoch ms.
    pub deliver_at_ms: i64,
    /// When it was parked, epoch ms.
    pub scheduled_at_ms: i64,
    /// Its keys.
    pub keys: Vec<String>,
    /// Its tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// `pending`, `cancelled`, `delivered` or `dropped` (given up as undeliverable).
    pub state: String,
}

/// Cancels the pending messages with this key (or id).
#[utoipa::path(
    delete,
    path = "/v1/topics/{topic}/scheduled/{key}",
    tag = "schedule",
    params(
        ("topic" = String, Path, description = "The messages' topic"),
        ("key" = String, Path, description = "Business key (or message id with ?by=id)"),
        ByQuery
    ),
    responses(
        (status = 200, description = "cancelled, already_delivered, already_cancelled, already_dropped or not_found", body = OpOut),
        (status = 400, description = "Bad key or query", body = ErrorBody),
        (status = 403, description = "A retry, dead-letter or system topic without an admin token", body = ErrorBody),
        (status = 429, description = "The store is busy; retry shortly", body = ErrorBody),
        (status = 503, description = "Delays disabled, or the index did not catch up in time", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams((topic, key)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<ByQuery>,
) -> ApiResult<Json<OpOut>> {
    guard_group_topic(&state, &topic, &headers)?;
    let sel = selector(&topic, key, q.by);
    let svc = state.schedule()?;
    let report = svc.cancel(&sel).await.map_err(schedule_error)?;
    tracing::info!(topic = %topic, selector = ?sel, matched = report.matched, cancelled = report.cancelled, "cancel over HTTP");
    Ok(Json(op_out(&report, "cancelled", report.cancelled)))
}

/// Moves the pending messages with this key (or id) to a new delivery time.
#[utoipa::path(
    patch,
    path = "/v1/topics/{topic}/scheduled/{key}",
    tag = "schedule",
    params(
        ("topic" = String, Path, description = "The messages' topic"),
        ("key" = String, Path, description = "Business key (or message id with ?by=id)"),
        ByQuery
    ),
    request_body = RescheduleIn,
    responses(
        (status = 200, description = "rescheduled, already_delivered, already_cancelled, already_dropped or not_found", body = OpOut),
        (status = 400, description = "Bad body (not exactly one of delay_ms, deliver_at_ms)", body = ErrorBody),
        (status = 403, description = "A retry, dead-letter or system topic without an admin token", body = ErrorBody),
        (status = 422, description = "New time out of range", body = ErrorBody),
        (status = 429, description = "The store is busy; retry shortly", body = ErrorBody),
        (status = 503, description = "Delays disabled, or the index did not catch up in time", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn reschedule(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams((topic, key)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<ByQuery>,
    JsonBody(body): JsonBody<RescheduleIn>,
) -> ApiResult<Json<OpOut>> {
    guard_group_topic(&state, &topic, &headers)?;
    let when = when_of(&body)?;
    let sel = selector(&topic, key, q.by);
    let svc = state.schedule()?;
    // A bad selector (a blank key) is 400, a time out of range (`InvalidDelay`) 422.
    let report = svc.reschedule(&sel, when).await.map_err(schedule_error)?;
    tracing::info!(topic = %topic, selector = ?sel, matched = report.matched, rescheduled = report.rescheduled, "reschedule over HTTP");
    Ok(Json(op_out(&report, "rescheduled", report.rescheduled)))
}

/// Lists the scheduled messages with a key (or id), in any state.
#[utoipa::path(
    get,
    path = "/v1/topics/{topic}/scheduled",
    tag = "schedule",
    params(("topic" = String, Path, description = "The messages' topic"), ListQuery),
    responses(
        (status = 200, description = "The messages", body = ListOut),
        (status = 400, description = "Not exactly one of key, msg_id", body = ErrorBody),
        (status = 403, description = "A retry, dead-letter or system topic without an admin token", body = ErrorBody),
        (status = 503, description = "Delays disabled", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(topic): PathParams<String>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<ListOut>> {
    guard_group_topic(&state, &topic, &headers)?;
    let sel = match (q.key, q.msg_id) {
        (Some(key), None) => selector(&topic, key, By::Key),
        (None, Some(id)) => selector(&topic, id, By::Id),
        _ => return Err(ApiError::bad_request("give exactly one of key and msg_id")),
    };
    let (messages, truncated) = state.schedule()?.list(&sel).await.map_err(schedule_error)?;
    Ok(Json(ListOut {
        messages: messages.into_iter().map(scheduled_out).collect(),
        truncated,
    }))
}

/// A consumer group's retry and dead-letter timers, and the broker's own topics, are not a
/// producer's to list, cancel or move: a retry is parked with its group's retry topic as its
/// topic, keeping the message's keys, so a `producer` token could cancel a group's retries
/// (the group had moved past the original: the message was never delivered again). Over
/// TCP such a topic takes the group's permission; over HTTP an `admin` token.
fn guard_group_topic(state: &AppState, topic: &str, headers: &HeaderMap) -> ApiResult<()> {
    let group_or_system = topic.starts_with(sluice_broker::RETRY_PREFIX)
        || topic.starts_with(sluice_broker::DLQ_PREFIX)
        || topic.starts_with("RMQ_SYS_")
        || topic.starts_with("SLUICE_SYS_")
        || [sluice_broker::SCHEDULE_TOPIC, sluice_broker::TIMER_TOPIC].contains(&topic);
    if group_or_system {
        crate::auth::authorize_headers(state, crate::auth::Scope::Admin, headers)?;
    }
    Ok(())
}

fn selector(topic: &str, key: String, by: By) -> Selector {
    match by {
        By::Key => Selector::Key {
            topic: topic.to_owned(),
            key,
        },
        By::Id => Selector::Id {
            topic: Some(topic.to_owned()),
            uniq_key: key,
        },
    }
}

fn when_of(body: &RescheduleIn) -> ApiResult<When> {
    match (body.delay_ms, body.deliver_at_ms) {
        (Some(ms), None) => {
            let ms = u64::try_from(ms).map_err(|_| {
                ApiError::unprocessable(format!("delay_ms must not be negative, got {ms}"))
            })?;
            Ok(When::After(std::time::Duration::from_millis(ms)))
        }
        (None, Some(at)) => Ok(When::At(at)),
        _ => Err(ApiError::bad_request(
            "give exactly one of delay_ms and deliver_at_ms",
        )),
    }
}

/// Summarises a report: `done` messages got the operation's own result.
fn op_out(r: &OpReport, done_name: &str, done: usize) -> OpOut {
    let (result, count) = if done > 0 {
        (done_name, done)
    } else if r.already_delivered > 0 {
        ("already_delivered", r.already_delivered)
    } else if r.already_cancelled > 0 {
        ("already_cancelled", r.already_cancelled)
    } else if r.already_dropped > 0 {
        ("already_dropped", r.already_dropped)
    } else {
        ("not_found", 0)
    };
    let deliver_at_ms = r.outcomes.iter().find_map(|(_, o)| match o {
        Outcome::Rescheduled { due_ms } => Some(*due_ms),
        _ => None,
    });
    OpOut {
        result: result.to_owned(),
        count,
        matched: r.matched,
        already_cancelled: r.already_cancelled,
        already_delivered: r.already_delivered,
        already_dropped: r.already_dropped,
        truncated: r.truncated,
        deliver_at_ms,
        messages: r.outcomes.iter().map(outcome_out).collect(),
    }
}

fn outcome_out((id, o): &(String, Outcome)) -> OutcomeOut {
    let (outcome, deliver_at_ms) = match o {
        Outcome::Cancelled => ("cancelled", None),
        Outcome::Rescheduled { due_ms } => ("rescheduled", Some(*due_ms)),
        Outcome::AlreadyCancelled => ("already_cancelled", None),
        Outcome::AlreadyDelivered => ("already_delivered", None),
        Outcome::AlreadyDropped => ("already_dropped", None),
    };
    OutcomeOut {
        msg_id: id.clone(),
        outcome: outcome.to_owned(),
        deliver_at_ms,
    }
}

fn scheduled_out(m: ScheduledMessage) -> ScheduledOut {
    let state = match m.state {
        MessageState::Pending => "pending",
        MessageState::Cancelled => "cancelled",
        MessageState::Delivered => "delivered",
        MessageState::Dropped => "dropped",
    };
    ScheduledOut {
        msg_id: m.uniq_key,
        topic: m.topic,
        queue_id: m.queue_id,
        deliver_at_ms: m.due_ms,
        scheduled_at_ms: m.parked_ms,
        keys: m.keys,
        tag: m.tags,
        state: state.to_owned(),
    }
}

/// The schedule service's errors as HTTP.
fn schedule_error(e: ScheduleError) -> ApiError {
    match e {
        ScheduleError::Partial {
            done,
            matched,
            next_partly,
            cause,
        } => ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            crate::error::code::PARTIALLY_APPLIED,
            format!(
                "{done} of the {matched} messages were changed before the next one failed{} \
                 ({}); repeating the request is safe, and GET .../scheduled shows each \
                 message's state",
                if next_partly {
                    ", some of whose copies (it was sent more than once) were changed"
                } else {
                    ""
                },
                schedule_error(*cause).message
            ),
        ),
        ScheduleError::InvalidArgument(m) => ApiError::bad_request(m),
        ScheduleError::InvalidDelay(m) => ApiError::unprocessable(m),
        ScheduleError::NotRunning => ApiError::unavailable("the schedule service is not running"),
        ScheduleError::Timeout(what) => {
            ApiError::unavailable(format!("timed out: {what}; retry shortly"))
        }
        ScheduleError::Store(StoreError::Busy(_)) => ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            crate::error::code::TOO_MANY_REQUESTS,
            "the store is busy; retry shortly",
        ),
        ScheduleError::Store(
            e @ (StoreError::DiskFull(_) | StoreError::Fenced(_) | StoreError::Closed),
        ) => ApiError::unavailable(format!("the store cannot take writes now: {e}")),
        other => ApiError::internal(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cancel of a key naming several messages that fails after the first was changed was
    /// answered 429/503 like a request that changed nothing; it now says what was done.
    #[test]
    fn a_change_that_failed_part_way_is_told_apart_from_one_that_changed_nothing() {
        let partial = schedule_error(ScheduleError::Partial {
            done: 1,
            matched: 2,
            next_partly: false,
            cause: Box::new(ScheduleError::Store(StoreError::Busy("queue full"))),
        });
        assert_eq!(partial.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(partial.code, crate::error::code::PARTIALLY_APPLIED);
        assert!(
            partial
                .message
                .starts_with("1 of the 2 messages were changed"),
            "{}",
            partial.message
        );
        assert!(
            partial.message.contains("store is busy"),
            "{}",
            partial.message
        );
        let nothing = schedule_error(ScheduleError::Store(StoreError::Busy("queue full")));
        assert_eq!(nothing.code, crate::error::code::TOO_MANY_REQUESTS);
    }
}
