//! `POST /v1/topics/{topic}/messages:batch`: up to `max_batch` messages, one result per entry
//! in request order. A bad entry fails alone (partial success is normal, as in SQS); the
//! entries are sent one after another, so entries with one sharding key keep their order.

use std::collections::HashSet;

use axum::extract::{FromRequest, Request, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{peer_of, send_one, SendResult};
use crate::error::{code, ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, PathParams};
use crate::message::MessageIn;
use crate::state::AppState;

/// A batch of messages.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchIn {
    /// The messages (each checked on its own: one bad entry does not fail the others).
    /// Kept as their JSON text and parsed one at a time: as values, a body of nested arrays
    /// took over ten times its size in memory.
    #[schema(value_type = Vec<MessageIn>)]
    #[serde(deserialize_with = "crate::extract::bounded_vec")]
    pub messages: Vec<Box<serde_json::value::RawValue>>,
}

/// The results, one per entry, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchOut {
    /// One per entry.
    pub results: Vec<BatchEntry>,
}

/// One entry's result: `ok` with the send result's fields, or `error`.
#[derive(Debug, Default, Serialize, ToSchema)]
pub(crate) struct BatchEntry {
    /// True when the entry was stored.
    pub ok: bool,
    /// See `SendResult`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
    /// See `SendResult`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset_msg_id: Option<String>,
    /// See `SendResult`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<i32>,
    /// See `SendResult`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_offset: Option<i64>,
    /// See `SendResult`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<bool>,
    /// See `SendResult`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver_at_ms: Option<i64>,
    /// Why the entry was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<EntryError>,
}

/// Why one entry was refused.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EntryError {
    /// Stable code (as in the error shape).
    pub code: String,
    /// Explanation.
    pub message: String,
    /// The HTTP status a single send would have had.
    pub status: u16,
}

impl From<ApiResult<SendResult>> for BatchEntry {
    fn from(r: ApiResult<SendResult>) -> Self {
        match r {
            Ok(s) => Self {
                ok: true,
                msg_id: Some(s.msg_id),
                offset_msg_id: Some(s.offset_msg_id),
                queue_id: Some(s.queue_id),
                queue_offset: s.queue_offset,
                scheduled: Some(s.scheduled),
                deliver_at_ms: s.deliver_at_ms,
                error: None,
            },
            Err(e) => Self {
                error: Some(EntryError {
                    code: e.code.to_owned(),
                    message: e.message,
                    status: e.status.as_u16(),
                }),
                ..Self::default()
            },
        }
    }
}

/// Sends up to `max_batch` messages; each entry gets its own result.
#[utoipa::path(
    post,
    path = "/v1/topics/{topic}/messages:batch",
    tag = "produce",
    params(("topic" = String, Path, description = "Destination topic")),
    request_body = BatchIn,
    responses(
        (status = 200, description = "One result per entry, in order", body = BatchOut),
        (status = 400, description = "Not a batch (bad JSON)", body = ErrorBody),
        (status = 413, description = "More than max_batch entries, or body over max_request_bytes", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "No entries", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn send_batch(
    State(state): State<AppState>,
    PathParams(topic): PathParams<String>,
    req: Request,
) -> ApiResult<Json<BatchOut>> {
    let peer = peer_of(&req);
    let JsonBody(batch) = JsonBody::<BatchIn>::from_request(req, &state).await?;
    check_size(batch.messages.len(), state.config().max_batch)?;
    let mut results = Vec::with_capacity(batch.messages.len());
    // Sharding keys of entries that failed: a later entry with one of them is not sent, or a
    // client retrying the failed entry would have it consumed after the later one.
    let mut broken: HashSet<String> = HashSet::new();
    for entry in batch.messages {
        // Read before the entry is parsed: one that does not parse breaks its key too.
        let key = raw_sharding_key(&entry);
        let r = match &key {
            Some(k) if broken.contains(k) => Err(after_failure(k)),
            _ => match parse_entry(&entry) {
                Ok(m) => match m.decode(state.config()) {
                    Ok(msg) => send_one(&state, &topic, msg, peer).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
        };
        if let (Err(_), Some(key)) = (&r, key) {
            broken.insert(key);
        }
        results.push(BatchEntry::from(r));
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    tracing::debug!(topic = %topic, entries = results.len(), failed, "batch sent over HTTP");
    Ok(Json(BatchOut { results }))
}

/// The refusal of an entry whose sharding key failed earlier in the batch.
fn after_failure(key: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        code::CONFLICT,
        format!(
            "not sent: an earlier entry with sharding key {key:?} failed, and sending this one \
             would put it ahead of that entry once retried"
        ),
    )
}

fn check_size(n: usize, max: usize) -> ApiResult<()> {
    if n == 0 {
        return Err(ApiError::unprocessable("the batch has no messages"));
    }
    if n > max {
        return Err(ApiError::too_large(format!(
            "the batch has {n} messages, more than max_batch ({max})"
        )));
    }
    Ok(())
}

/// An entry's `sharding_key` as sent, whatever else is wrong with the entry.
fn raw_sharding_key(v: &serde_json::value::RawValue) -> Option<String> {
    /// Only the key; every other field is skipped without being built.
    #[derive(Deserialize)]
    struct Key {
        sharding_key: Option<String>,
    }
    serde_json::from_str::<Key>(v.get()).ok()?.sharding_key
}

fn parse_entry(v: &serde_json::value::RawValue) -> ApiResult<MessageIn> {
    serde_json::from_str(v.get()).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            code::INVALID_JSON,
            format!("not a message: {e}"),
        )
    })
}
