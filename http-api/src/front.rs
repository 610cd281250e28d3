//! The one middleware in front of every route. In order, it:
//! - gives the request its id and runs it in that id's scope (`request_id`) and in a tracing
//!   span carrying it, so every line logged meanwhile names the request;
//! - refuses every request but the probes with 503 once the broker's shutdown has begun;
//! - sheds load: past `max_concurrent_requests` requests in progress it answers 429 at once,
//!   instead of queueing without bound; long polls have their own budget (`max_long_polls`),
//!   and the health probes are never shed;
//! - puts `body_read_timeout` on the request body (`body_timeout`);
//! - normalises bare error responses into the JSON error shape;
//! - records the request's method (a bounded label), route, status and latency (`metrics`),
//!   429s included;
//! - puts the id in the `x-request-id` response header.
//!
//! One layer, not one per concern: every axum `from_fn` layer clones and boxes the service
//! under it on every request, which the produce benchmark showed in its profile.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::error::{code, ApiError};
use crate::state::AppState;
use crate::{body_timeout, request_id};

/// What the front middleware needs.
#[derive(Clone)]
pub(crate) struct Front {
    pub(crate) state: AppState,
    /// `max_concurrent_requests`.
    pub(crate) limit: Arc<Semaphore>,
    /// `max_long_polls`.
    pub(crate) long_polls: Arc<Semaphore>,
}

/// Routes whose requests may wait long (up to 30 s) for something to arrive.
const LONG_POLLS: [&str; 2] = [
    "/v1/groups/{group}/topics/{topic}/receive",
    "/v1/producer-groups/{group}/checks",
];
/// Probes answer whatever the load: shedding them told orchestrators a busy broker was dead.
const PROBES: [&str; 2] = ["/healthz", "/readyz"];

/// The middleware (see the module docs).
pub(crate) async fn layer(State(front): State<Front>, req: Request, next: Next) -> Response {
    let id = request_id::id_for(&req);
    // Every line logged while the request runs (facade, broker, transactions, store) carries
    // the id through this span, not only the facade's own lines.
    let span = tracing::info_span!("http", request_id = %id);
    let mut response = request_id::scope(id.clone(), answer(front, req, next))
        .instrument(span)
        .await;
    request_id::tag(&mut response, &id);
    response
}

/// Whether a request names this host by a loopback name (`Host`, and `Origin` when sent).
/// Without tokens the facade listens on loopback only and trusts whoever can reach it, which
/// a web page can through DNS rebinding (its own name resolving to 127.0.0.1): a browser then
/// sends that page's name as `Host`, and cross-site requests (a form posted from any page,
/// with `Origin: null` from a sandboxed frame) carry its `Origin`. A request without `Host`
/// (HTTP/1.0) is taken as local.
fn loopback_request(req: &Request) -> bool {
    let headers = req.headers();
    // Every copy of each header: a second one must not hide behind a first that passes.
    let host_ok = headers
        .get_all(axum::http::header::HOST)
        .iter()
        .all(|h| h.to_str().is_ok_and(loopback_authority));
    let origin_ok = headers.get_all(axum::http::header::ORIGIN).iter().all(|o| {
        o.to_str().is_ok_and(|o| {
            o.split_once("://")
                .is_some_and(|(_, authority)| loopback_authority(authority))
        })
    });
    host_ok && origin_ok
}

/// `host[:port]` naming the local machine: `localhost`, `127.x.x.x` or `[::1]`, with a port
/// of digits only (`localhost:80@evil.example` is not this machine).
fn loopback_authority(authority: &str) -> bool {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((h, after)) => (
                h,
                after.strip_prefix(':').or((after.is_empty()).then_some("")),
            ),
            None => return false,
        },
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, Some("")),
        },
    };
    let port_ok = port.is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    port_ok && loopback_host(host)
}

/// `localhost`, `127.x.x.x` or `::1`.
fn loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Sheds or runs the request, normalises its response and records it, inside the id's scope.
async fn answer(front: Front, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let req = body_timeout::limit(req, front.state.config().body_read_timeout);
    let method = method_label(req.method());
    let route = req.extensions().get::<MatchedPath>().cloned();
    // Only the debug log line needs the raw path.
    let path = tracing::enabled!(tracing::Level::DEBUG).then(|| req.uri().path().to_owned());
    let template = route.as_ref().map(MatchedPath::as_str);
    let budget = match template {
        Some(t) if PROBES.contains(&t) => None,
        Some(t) if LONG_POLLS.contains(&t) => Some(&front.long_polls),
        _ => Some(&front.limit),
    };
    // Probes (no budget) stay open to any name (a kubelet's names the pod's address): they
    // reveal nothing a page could use and change nothing. A refused name takes no permit.
    let foreign =
        budget.is_some() && front.state.config().tokens.is_empty() && !loopback_request(&req);
    let response = match budget.filter(|_| !foreign).map(|b| b.try_acquire()) {
        _ if foreign => ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            crate::error::code::FORBIDDEN,
            "without tokens only loopback names are served (Host, and Origin when sent): \
             configure [http] tokens to serve other names",
        )
        .into_response(),
        None => next.run(req).await,
        // The listener stays open while the broker drains its other work, and requests taken
        // then would be cut off when the facade stops: they are refused instead (nothing
        // changed, retry elsewhere or later).
        Some(_) if front.state.stopping() => {
            ApiError::unavailable("the broker is shutting down; nothing was done").into_response()
        }
        Some(Ok(_permit)) => next.run(req).await,
        Some(Err(_)) => too_many(),
    };
    let response = request_id::normalise(response);
    let status = response.status().as_u16();
    if let Some(path) = path {
        tracing::debug!(method = %method, %path, status, "http request");
    }
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    front
        .state
        .metrics()
        .record(method, route, status, started.elapsed());
    response
}

/// The method as a metrics label: the standard methods by name, any other token `OTHER`. hyper
/// accepts any token as a method, and each new label was a new series kept for good, so a
/// client inventing methods grew the metrics (and every scrape) without bound.
fn method_label(m: &Method) -> &'static str {
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::TRACE, "TRACE"),
        (Method::CONNECT, "CONNECT"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == m)
        .map_or("OTHER", |(_, name)| name)
}

fn too_many() -> Response {
    ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        code::TOO_MANY_REQUESTS,
        "too many requests in progress (max_concurrent_requests, or max_long_polls for long \
         polls); retry shortly",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_are_told_from_others() {
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:1",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(loopback_authority(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example:8080",
            "10.0.0.1:8080",
            "[::2]:8080",
            "",
            "localhost:38081@evil.example",
            "127.0.0.1:1@evil.example",
            "[::1]x",
            "[::1",
        ] {
            assert!(!loopback_authority(bad), "{bad}");
        }
    }
}
