//! The OpenAPI document: built from the handlers' own `#[utoipa::path]` annotations and types
//! (so it cannot drift from the code), served at `/openapi.json`.

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
