//! Produce: `POST /v1/topics/{topic}/messages` (one message, JSON or raw bytes) and
//! `POST /v1/topics/{topic}/messages:batch` (many, one result each).
//!
//! Every send goes through [`sluice_broker::services::BrokerServices::produce`]: the same topic
//! checks, put hooks (delays) and durable append as a TCP SEND_MESSAGE, so `201` means the
//! message (or, when delayed, its parked copy) is in the commit log.
//!
//! A delayed message is refused with 503 when the schedule extension is disabled (without it
//! the message would be delivered at once, a silent broken promise), and a refusal of its delay
//! by the schedule hook (too far ahead, too far in the past) is 422.

mod batch;

use std::net::SocketAddr;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRequest, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use serde::Serialize;
use sluice_broker::produce::{ProduceError, Produced};
use sluice_broker::SCHEDULE_TOPIC;
use sluice_protocol::message::keys;
use sluice_protocol::response_code as rc;
use sluice_protocol::{Properties, RecordView};
use sluice_schedule::{TIMER_OUT_MS, TIMER_TOPIC};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{code, ApiError, ApiResult, ErrorBody};
use crate::extract::{bytes_rejection, JsonBody, PathParams};
use crate::message::{DecodedMessage, MessageIn, MessageMeta};
use crate::state::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send))
        .routes(routes!(batch::send_batch))
}

/// What a send stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct SendResult {
    /// The message id (UNIQ_KEY): what consumers see, and what cancel by id takes.
    pub msg_id: String,
    /// Offset message id of the stored record (of the parked copy when scheduled).
    pub offset_msg_id: String,
    /// The queue the message is (or, when scheduled, will be) in.
    pub queue_id: i32,
    /// Its offset in that queue; absent when scheduled (known only once it is delivered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_offset: Option<i64>,
    /// True when the message waits for its delivery time.
    pub scheduled: bool,
    /// When a scheduled message will be delivered (epoch ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver_at_ms: Option<i64>,
}

/// How the request body is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Raw,
}

/// Sends one message.
///
/// JSON (`application/json`): a `MessageIn`. Raw (`application/octet-stream`): the body is the
/// message; metadata in headers `x-sluice-tag`, `x-sluice-keys` (comma-separated),
/// `x-sluice-delay-level`, `x-sluice-delay-ms`, `x-sluice-deliver-at-ms`,
/// `x-sluice-sharding-key`, `x-sluice-producer-group`, `x-sluice-property-<name>`.
#[utoipa::path(
    post,
    path = "/v1/topics/{topic}/messages",
    tag = "produce",
    params(
        ("topic" = String, Path, description = "Destination topic"),
        ("x-sluice-tag" = Option<String>, Header, description = "Raw body only: the tag"),
        ("x-sluice-keys" = Option<String>, Header, description = "Raw body only: keys, comma-separated"),
        ("x-sluice-delay-level" = Option<i32>, Header, description = "Raw body only: a delay level"),
        ("x-sluice-delay-ms" = Option<i64>, Header, description = "Raw body only: a delay in milliseconds"),
        ("x-sluice-deliver-at-ms" = Option<i64>, Header, description = "Raw body only: a delivery time (epoch ms)"),
        ("x-sluice-sharding-key" = Option<String>, Header, description = "Raw body only: messages with one key keep their order"),
        ("x-sluice-producer-group" = Option<String>, Header, description = "Raw body only: the producer group"),
    ),
    request_body(content(
        (MessageIn = "application/json"),
        ("application/octet-stream")
    )),
    responses(
        (status = 201, description = "Stored (durable); scheduled when delayed", body = SendResult),
        (status = 400, description = "Malformed message, bad base64, reserved property", body = ErrorBody),
        (status = 403, description = "The topic is a system topic or not writable", body = ErrorBody),
        (status = 404, description = "Unknown topic (auto-create off)", body = ErrorBody),
        (status = 413, description = "Body over max_message_bytes", body = ErrorBody),
        (status = 415, description = "Neither JSON nor octet-stream", body = ErrorBody),
        (status = 422, description = "Delay refused (out of range)", body = ErrorBody),
        (status = 429, description = "Store busy: retry later", body = ErrorBody),
        (status = 503, description = "Disk full, shutting down, or delays disabled", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn send(
    State(state): State<AppState>,
    PathParams(topic): PathParams<String>,
    req: Request,
) -> ApiResult<(StatusCode, Json<SendResult>)> {
    let peer = peer_of(&req);
    let msg = match body_kind(req.headers())? {
        BodyKind::Json => {
            let JsonBody(m) = JsonBody::<MessageIn>::from_request(req, &state).await?;
            m.decode(state.config())?
        }
        BodyKind::Raw => {
            let (parts, body) = req.into_parts();
            let meta = MessageMeta::from_headers(&parts.headers)?;
            let req = Request::from_parts(parts, body);
            let bytes = Bytes::from_request(req, &state)
                .await
                .map_err(bytes_rejection)?;
            DecodedMessage::new(bytes, meta, state.config())?
        }
    };
    let sent = send_one(&state, &topic, msg, peer).await?;
    Ok((StatusCode::CREATED, Json(sent)))
}

/// Sends one checked message: 503 for a delay without the schedule extension, 422 for a
/// delay the schedule hook refuses. Reusable by any endpoint that stores a message.
pub(crate) async fn send_one(
    state: &AppState,
    topic: &str,
    msg: DecodedMessage,
    peer: SocketAddr,
) -> ApiResult<SendResult> {
    let delayed = msg.meta.delay.is_some();
    if delayed {
        state.schedule()?;
    }
    let produce = msg.into_produce(topic, &state.config().default_producer_group, peer);
    let produced = state
        .broker()
        .produce(produce)
        .await
        .map_err(|e| produce_error(e, delayed))?;
    let sent = result_of(state, topic, &produced);
    tracing::debug!(
        topic,
        msg_id = %sent.msg_id,
        queue_id = sent.queue_id,
        queue_offset = ?sent.queue_offset,
        deliver_at_ms = ?sent.deliver_at_ms,
        "message sent over HTTP"
    );
    Ok(sent)
}

/// The broker's refusal as HTTP; MESSAGE_ILLEGAL of a delayed message is the schedule hook
/// refusing the delay (422).
pub(crate) fn produce_error(e: ProduceError, delayed: bool) -> ApiError {
    if delayed && e.code == rc::MESSAGE_ILLEGAL {
        ApiError::unprocessable(e.remark)
    } else {
        ApiError::from(e)
    }
}

/// The answer for a stored message; a parked one is described by its timer record.
fn result_of(state: &AppState, topic: &str, p: &Produced) -> SendResult {
    let parked = p.stored_topic != topic
        && (p.stored_topic == SCHEDULE_TOPIC || p.stored_topic == TIMER_TOPIC);
    let mut r = SendResult {
        msg_id: p.uniq_key.clone(),
        offset_msg_id: p.msg_id.clone(),
        queue_id: p.queue_id,
        queue_offset: Some(p.queue_offset),
        scheduled: parked,
        deliver_at_ms: None,
    };
    if parked {
        let (due, qid) = parked_timer(state, p.phys_offset);
        r.queue_offset = None;
        r.deliver_at_ms = due;
        r.queue_id = qid.unwrap_or(-1);
    }
    r
}

/// Due time and real queue of a parked record (read back: the hook decided both).
fn parked_timer(state: &AppState, phys: u64) -> (Option<i64>, Option<i32>) {
    let Ok(rec) = state.broker().store().read_record(phys) else {
        tracing::warn!(
            phys_offset = phys,
            "parked record not readable after its send"
        );
        return (None, None);
    };
    let Ok(view) = RecordView::parse(&rec, rec.len()) else {
        return (None, None);
    };
    let props = Properties::decode(view.properties);
    let parse = |k: &str| props.get(k).and_then(|v| v.parse::<i64>().ok());
    (
        parse(TIMER_OUT_MS),
        parse(keys::REAL_QID).and_then(|q| i32::try_from(q).ok()),
    )
}

/// JSON or raw by content type; anything else is 415.
fn body_kind(headers: &HeaderMap) -> ApiResult<BodyKind> {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(BodyKind::Json)
    } else if mime == "application/octet-stream" {
        Ok(BodyKind::Raw)
    } else {
        Err(unsupported_media_type())
    }
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        code::UNSUPPORTED_MEDIA_TYPE,
        "expected content-type: application/json (a message) or application/octet-stream (raw body, metadata in x-sluice-* headers)",
    )
}

/// The caller's address (recorded as the message's born host).
pub(crate) fn peer_of(req: &Request) -> SocketAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |c| c.0)
}
