//! One error shape for every endpoint: `{"error":{"code","message","request_id"}}` with a
//! stable `code` (clients branch on it, never on the message) and an honest status. Details
//! that help an operator are logged with the request id; the body says what the caller can fix.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sluice_protocol::response_code as rc;
use utoipa::ToSchema;

use crate::request_id;

/// Stable error codes. Add new ones; never change or reuse one.
pub mod code {
    /// The request is malformed (bad field, bad value, bad base64).
    pub const BAD_REQUEST: &str = "bad_request";
    /// The body is not the JSON this endpoint takes.
    pub const INVALID_JSON: &str = "invalid_json";
    /// No or unknown bearer token.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// The token lacks the scope, or the broker forbids the operation.
    pub const FORBIDDEN: &str = "forbidden";
    /// No such route or resource.
    pub const NOT_FOUND: &str = "not_found";
    /// The topic does not exist (and is not auto-created).
    pub const TOPIC_NOT_FOUND: &str = "topic_not_found";
    /// The method is not allowed on this path.
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// The request conflicts with the current state (e.g. commit after rollback).
    pub const CONFLICT: &str = "conflict";
    /// The body or message is larger than the configured limit.
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// The content type is not one this endpoint takes.
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    /// Well-formed but unacceptable (e.g. a delay out of range).
    pub const UNPROCESSABLE: &str = "unprocessable";
    /// Too many requests at once, or the store's queue is full: retry later.
    pub const TOO_MANY_REQUESTS: &str = "too_many_requests";
    /// The broker cannot take writes now (disk full, shutting down, feature disabled).
    pub const UNAVAILABLE: &str = "unavailable";
    /// A bug or an unexpected failure; the log has the details under the request id.
    pub const INTERNAL: &str = "internal";
    /// A change of several messages failed part way: some were changed (503).
    pub const PARTIALLY_APPLIED: &str = "partially_applied";
}

/// The JSON error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (see the `code` module).
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The request id (also in the `x-request-id` response header and the broker's log).
    pub request_id: String,
}

/// An error answered to an HTTP caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Explanation for the caller.
    pub message: String,
}

impl ApiError {
    /// An error with any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code::BAD_REQUEST, message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code::NOT_FOUND, message)
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code::CONFLICT, message)
    }

    /// 413 `payload_too_large`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::PAYLOAD_TOO_LARGE,
            message,
        )
    }

    /// 422 `unprocessable`.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code::UNPROCESSABLE,
            message,
        )
    }

    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE, message)
    }

    /// 500 `internal`; the cause is logged, not shown.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(request_id = %request_id::current(), error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            code::INTERNAL,
            "internal error; the broker log has the details under this request id",
        )
    }

    /// Maps a broker response code (from a send, a send-back, a topic check) to HTTP.
    pub fn from_broker(code: i32, remark: impl Into<String>) -> Self {
        let remark = remark.into();
        match code {
            rc::TOPIC_NOT_EXIST => Self::new(StatusCode::NOT_FOUND, code::TOPIC_NOT_FOUND, remark),
            rc::NO_PERMISSION => Self::new(StatusCode::FORBIDDEN, code::FORBIDDEN, remark),
            rc::MESSAGE_ILLEGAL | rc::INVALID_PARAMETER => Self::bad_request(remark),
            rc::SYSTEM_BUSY => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                code::TOO_MANY_REQUESTS,
                remark,
            ),
            rc::SERVICE_NOT_AVAILABLE => Self::unavailable(remark),
            rc::TRANSACTION_SHOULD_COMMIT | rc::TRANSACTION_SHOULD_ROLLBACK => {
                Self::conflict(remark)
            }
            _ => Self::internal(format!("broker code {code}: {remark}")),
        }
    }
}

impl From<sluice_broker::produce::ProduceError> for ApiError {
    fn from(e: sluice_broker::produce::ProduceError) -> Self {
        Self::from_broker(e.code, e.remark)
    }
}

/// 5xx answers other than 500: one warning per 10 s and error code, with the count of those
/// held back.
static SERVER_ERRORS_LOG: sluice_broker::log_every::LogEvery =
    sluice_broker::log_every::LogEvery::new(std::time::Duration::from_secs(10));

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = request_id::current();
        if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            // `ApiError::internal` logged the cause already, with this request id.
            tracing::debug!(%request_id, code = self.code, message = %self.message, "request failed");
        } else if self.status.is_server_error() {
            // A 503 answers every request while its cause lasts (a full disk, a fenced store,
            // shutting down): one warning per period, the rest at debug.
            match SERVER_ERRORS_LOG.allow(self.code) {
                Some(held_back) => {
                    tracing::warn!(%request_id, status = self.status.as_u16(), code = self.code, message = %self.message, held_back, "request failed")
                }
                None => {
                    tracing::debug!(%request_id, status = self.status.as_u16(), code = self.code, message = %self.message, "request failed")
                }
            }
        } else {
            tracing::debug!(%request_id, status = self.status.as_u16(), code = self.code, message = %self.message, "request refused");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                request_id,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        // Busy (429) and unavailable (503: disk full, shutting down, a service off) answers
        // changed nothing (except a topic create or delete whose save failed: in effect, not
        // yet on disk; see docs/HTTP.md): say when a retry makes sense rather than leave
        // clients to guess.
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

/// `Retry-After` of 429 and 503 answers, in seconds.
pub const RETRY_AFTER_SECS: &str = "1";

/// Handler results.
pub type ApiResult<T> = Result<T, ApiError>;
