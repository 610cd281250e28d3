//! The operator console: `GET /console` and `GET /console/{*asset}`.
//!
//! The console is a static page (HTML, CSS, JS modules from `http-api/console/`) embedded in
//! the binary at compile time, so `sluice` serves it with no Node, no build step and no CDN.
//! The pages hold no data, so they need no token; every figure the page shows comes from the
//! JSON API with the operator's bearer token, so the console can do nothing the API does not
//! allow, and there is no second copy of any logic.
//!
//! Every answer carries a strict Content-Security-Policy (`default-src 'self'`, no inline
//! script or style, no framing), `nosniff`, and `Cache-Control: no-cache` with an `ETag`: the
//! file names carry no content hash, so a browser must revalidate to pick up a new binary's
//! console, and a 304 keeps that cheap.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// The policy of every console answer: only this origin's scripts, styles, images and API.
pub(crate) const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'; object-src 'none'";

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: u64,
}

/// FNV-1a, at compile time: a strong enough validator for files that change only with the
/// binary.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

macro_rules! asset {
    ($path:literal, $ct:expr) => {
        Asset {
            path: $path,
            content_type: $ct,
            body: include_bytes!(concat!("../console/", $path)),
            etag: fnv1a(include_bytes!(concat!("../console/", $path))),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the console serves; anything else under `/console/` is 404.
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("chart.js", JS),
    asset!("views/overview.js", JS),
    asset!("views/txn.js", JS),
    asset!("views/schedule.js", JS),
    asset!("views/dlq.js", JS),
    asset!("views/lookup.js", JS),
];

/// The console's routes (public: they serve no data).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/{*asset}", get(file))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn file(Path(asset): Path<String>, headers: HeaderMap) -> Response {
    serve(&asset, &headers)
}

fn serve(path: &str, req: &HeaderMap) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.path == path) else {
        return ApiError::not_found(format!("no console file {path:?}")).into_response();
    };
    let etag = format!("\"{:016x}\"", a.etag);
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_embedded_once_with_a_distinct_validator() {
        for (i, a) in ASSETS.iter().enumerate() {
            assert!(!a.body.is_empty(), "{} is empty", a.path);
            for b in &ASSETS[i + 1..] {
                assert_ne!(a.path, b.path);
                assert_ne!(a.etag, b.etag, "{} and {}", a.path, b.path);
            }
        }
    }

    #[test]
    fn the_page_loads_only_files_the_console_serves() {
        let index = std::str::from_utf8(ASSETS[0].body).expect("utf-8");
        for part in index.split("\"/console/").skip(1) {
            let path = part.split('"').next().unwrap_or_default();
            assert!(
                ASSETS.iter().any(|a| a.path == path),
                "index.html loads /console/{path}, which is not embedded"
            );
        }
    }
}
