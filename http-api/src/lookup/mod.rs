//! `GET /v1/messages?id=` or `?key=&topic=` (admin scope): a message and its trace.
//!
//! The broker keeps no trace log, so the trace is read from what the message left behind: every
//! copy the broker stores (the half message, a parked timer, the message in its topic, retry
//! copies, the dead letter, a replayed copy) keeps the message's `UNIQ_KEY`, and the store's
//! index finds records by topic and `UNIQ_KEY` (or business key). Which copy is which is told
//! by the topic it is stored in and by the properties the txn, schedule and retry code set
//! (`REAL_TOPIC`, `RETRY_TOPIC`, `SLUICE_*`); the transaction's and the timer's current state
//! come from their services, and "consumed" from the consumer groups' committed offsets. So
//! the trace is exactly as complete as the retained commit log: records aged out by retention
//! are gone from it too.

mod trace;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::QueryParams;
use crate::state::AppState;

pub(crate) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(lookup))
}

/// Which message: `id` (a `msg_id`, or an `offset_msg_id`), or `key` with `topic`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct LookupQuery {
    /// The message id (`msg_id` of the send, the `UNIQ_KEY`), or a stored record's
    /// `offset_msg_id`.
    pub id: Option<String>,
    /// A business key (one of the message's `keys`); needs `topic`.
    pub key: Option<String>,
    /// The message's topic: required with `key`, narrows an `id` look-up.
    pub topic: Option<String>,
}

/// The messages found, each with its trace.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LookupOut {
    /// Oldest first; empty when nothing matched.
    pub messages: Vec<TracedMessage>,
    /// More matched than one answer holds, or the topic bound or the search's time bound
    /// (10 s) cut it short.
    pub truncated: bool,
}

/// One message and what happened to it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TracedMessage {
    /// Its id (`UNIQ_KEY`).
    pub msg_id: String,
    /// The topic it was sent to.
    pub topic: String,
    /// Its keys.
    pub keys: Vec<String>,
    /// Its tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// When the producer sent it (epoch ms).
    pub born_ms: i64,
    /// The body as text, when it is UTF-8 and not compressed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body as base64 otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// True when the stored body is compressed (as the producer's client sent it).
    pub compressed: bool,
    /// True when the body was left out: the answer's bodies reached [`MAX_BODY_BYTES`] (look
    /// the message up by its id to see it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub body_omitted: bool,
    /// Every property of the copy shown (the one in its topic when there is one).
    pub properties: BTreeMap<String, String>,
    /// What happened, in store order.
    pub events: Vec<TraceEvent>,
}

/// Most stored body bytes one look-up keeps and answers (the first message's always; see
/// `trace::keep_shown_body`), as a receive and a DLQ page are bounded: 20 messages of 4 MiB
/// were 80 MiB, and up to six times that as escaped JSON.
pub(super) const MAX_BODY_BYTES: usize = 8 << 20;

/// One step of a message's life.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct TraceEvent {
    /// `half`, `committed`, `rolled_back`, `scheduled`, `produced`, `released` (a timer
    /// delivered it), `replayed`, `consumed`, `retry_parked`, `retried`, `dead_lettered`.
    pub kind: String,
    /// When (epoch ms): the copy's store time, or the decision's time; absent for `consumed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<i64>,
    /// The topic of the stored copy.
    pub topic: String,
    /// Its queue.
    pub queue_id: i32,
    /// Its queue offset.
    pub queue_offset: i64,
    /// Its offset message id (absent for events without a copy of their own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset_msg_id: Option<String>,
    /// The consumer group (consumed, retried, dead-lettered) or producer group (half).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The due time of a timer (epoch ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<i64>,
    /// The state now: a transaction's (`open`, `committed`, ...) or a timer's (`pending`,
    /// `cancelled`, `delivered`, `dropped`, or `rescheduled` for one a rescheduled copy
    /// replaced); `deleted` for a copy whose topic was deleted after it was stored (it is
    /// not delivered again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// More: the failure reason, the check count, who decided, the delivery number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Finds messages by id or by key and traces them.
#[utoipa::path(
    get,
    path = "/v1/messages",
    tag = "admin",
    params(LookupQuery),
    responses(
        (status = 200, description = "The messages found (possibly none), with their traces", body = LookupOut),
        (status = 400, description = "Not exactly one of id and key, or key without topic", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn lookup(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<LookupQuery>,
) -> ApiResult<Json<LookupOut>> {
    let target = match (q.id, q.key, q.topic) {
        (Some(id), None, topic) if !id.trim().is_empty() => trace::Target::Id { id, topic },
        (None, Some(key), Some(topic)) if !key.trim().is_empty() && !topic.is_empty() => {
            trace::Target::Key { key, topic }
        }
        (None, Some(_), None) => {
            return Err(ApiError::bad_request(
                "a key look-up needs the topic (keys are indexed per topic)",
            ))
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of a non-empty id and key",
            ))
        }
    };
    let services = state.broker().clone();
    let found = tokio::task::spawn_blocking(move || trace::find(&services, &target))
        .await
        .map_err(ApiError::internal)?;
    let mut messages = Vec::with_capacity(found.messages.len());
    for m in found.messages {
        messages.push(trace::complete(&state, m).await);
    }
    Ok(Json(LookupOut {
        messages,
        truncated: found.truncated,
    }))
}
