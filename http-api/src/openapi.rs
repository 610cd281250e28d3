//! The OpenAPI document: built from the handlers' own `#[utoipa::path]` annotations and types
//! (so it cannot drift from the code), served at `/openapi.json`.

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice HTTP API",
        description = "Transactional and delayed messaging over HTTP: produce, lease-based consume, transactions with webhook or polled check-back, cancellable scheduled messages, dead letters and replay. Errors are always {\"error\":{\"code\",\"message\",\"request_id\"}}."
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    modifiers(&BearerAuth)
)]
struct BaseDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document's fixed parts (info, security scheme, error schema); routes add paths.
pub(crate) fn base() -> utoipa::openapi::OpenApi {
    BaseDoc::openapi()
}

/// Probes the front middleware never sheds (no 429).
const NEVER_SHED: [&str; 2] = ["/healthz", "/readyz"];

/// Declares the answers that come from the layers every route shares rather than from its
/// handler, on each operation that can get them and does not declare them itself: 401/403
/// from the token check (routes with a security requirement), 400/413/415 from the body
/// extractors (routes with a request body), 429 from load shedding (all but the probes).
/// Without them a client generated from the document has no type for these answers.
pub(crate) fn add_shared_responses(api: &mut utoipa::openapi::OpenApi) {
    for (path, item) in api.paths.paths.iter_mut() {
        let shed = !NEVER_SHED.contains(&path.as_str());
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            add_shared(op, shed);
        }
    }
}

fn add_shared(op: &mut Operation, shed: bool) {
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let mut shared = Vec::new();
    if secured {
        shared.push(("401", "Missing or unknown bearer token"));
        shared.push(("403", "The token lacks the scope this route needs"));
    }
    if op.request_body.is_some() {
        shared.push(("400", "Malformed request body"));
        shared.push(("413", "Request body over max_request_bytes"));
        shared.push(("415", "Wrong content-type for the body"));
    }
    // Path and query parameters are parsed by extractors that refuse bad values (and
    // unknown query parameters) with 400.
    if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
        shared.push((
            "400",
            "Malformed path or query parameter, or an unknown one",
        ));
    }
    if shed {
        shared.push((
            "429",
            "Too many requests in progress (max_concurrent_requests, or max_long_polls for long polls): retry shortly",
        ));
        shared.push((
            "503",
            "The broker is shutting down (or the store cannot take writes): nothing was done",
        ));
    }
    for (status, description) in shared {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| {
                RefOr::T(
                    ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                        )
                        .build(),
                )
            });
    }
}

/// `GET /openapi.json`.
pub(crate) fn spec_route(spec: Arc<utoipa::openapi::OpenApi>) -> Router<AppState> {
    Router::new().route(
        "/openapi.json",
        get(move || {
            let spec = Arc::clone(&spec);
            async move { Json(spec.as_ref().clone()) }
        }),
    )
}
