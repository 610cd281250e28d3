//! Request ids and the last word on responses.
//!
//! Every request gets an id: the caller's `x-request-id` when it is short and plain, otherwise
//! a new one. It is in the `x-request-id` response header, in every error body and in every
//! log line of the request (a task-local, so error constructors deep in a handler find it).
//! Responses that axum makes itself (unknown route, wrong method, body over the limit) are
//! rewritten into the one JSON error shape, so no caller ever sees a bare text error.

use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::{code, ApiError};

/// The request and response header carrying the id.
pub const HEADER: &str = "x-request-id";
/// [`HEADER`] as a parsed name: a lookup or insert by `&str` parses the name every time.
static HEADER_NAME: HeaderName = HeaderName::from_static(HEADER);

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The current request's id ("-" outside a request).
pub fn current() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "-".to_owned())
}

/// The id for a request: the caller's `x-request-id` when acceptable, else a new one.
pub(crate) fn id_for(req: &Request) -> String {
    req.headers()
        .get(&HEADER_NAME)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map_or_else(new_id, str::to_owned)
}

/// Runs `f` with `id` as the current request id.
pub(crate) async fn scope<F: std::future::Future>(id: String, f: F) -> F::Output {
    REQUEST_ID.scope(id, f).await
}

/// Puts the id in the response's `x-request-id` header.
pub(crate) fn tag(response: &mut Response, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert(HEADER_NAME.clone(), v);
    }
}

/// Ids from callers are kept when they cannot break a log line or a header.
fn acceptable(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// An error response without a JSON body (made by axum or tower, not by a handler) becomes
/// the JSON error shape with a code matching its status.
pub(crate) fn normalise(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (c, message) = match status {
        StatusCode::NOT_FOUND => (code::NOT_FOUND, "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => {
            (code::METHOD_NOT_ALLOWED, "method not allowed on this path")
        }
        StatusCode::PAYLOAD_TOO_LARGE => (
            code::PAYLOAD_TOO_LARGE,
            "request body larger than the configured limit",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            (code::UNSUPPORTED_MEDIA_TYPE, "unsupported content type")
        }
        StatusCode::TOO_MANY_REQUESTS => (code::TOO_MANY_REQUESTS, "too many requests"),
        StatusCode::UNAUTHORIZED => (code::UNAUTHORIZED, "authentication required"),
        StatusCode::FORBIDDEN => (code::FORBIDDEN, "forbidden"),
        s if s.is_server_error() => (code::INTERNAL, "internal error"),
        _ => (code::BAD_REQUEST, "bad request"),
    };
    let mut out = ApiError::new(status, c, message).into_response();
    if let Some(allow) = response.headers().get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}
