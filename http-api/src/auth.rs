//! Bearer tokens with scopes. A token is compared in constant time against every configured
//! token (no early exit that would leak which one nearly matched). With no tokens configured
//! every request is allowed; `HttpConfig::validate` permits that only on a loopback listener.
//!
//! Scopes: `producer` (send, transactions), `consumer` (receive, ack, nack), `admin`
//! (everything, including topics, DLQ replay, forced decisions). `admin` implies the others.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{code, ApiError};
use crate::state::AppState;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Produce and transactional endpoints.
    Producer,
    /// Receive, ack, nack, visibility.
    Consumer,
    /// Everything.
    Admin,
}

impl Scope {
    /// Parses `producer`, `consumer` or `admin`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "producer" => Ok(Self::Producer),
            "consumer" => Ok(Self::Consumer),
            "admin" => Ok(Self::Admin),
            other => Err(format!(
                "unknown scope {other:?} (producer, consumer, admin)"
            )),
        }
    }
}

/// A configured bearer token.
#[derive(Clone)]
pub struct Token {
    /// A name for logs (the secret itself is never logged).
    pub name: String,
    /// The secret the client sends as `Authorization: Bearer <secret>`.
    pub secret: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl Token {
    /// Secrets must be long enough not to be guessed.
    pub fn validate(&self) -> Result<(), String> {
        if self.secret.len() < 16 {
            return Err(format!(
                "token {:?}: the secret must be at least 16 characters",
                self.name
            ));
        }
        if self.scopes.is_empty() {
            return Err(format!("token {:?} has no scopes", self.name));
        }
        Ok(())
    }

    fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }
}

/// Checks the request's bearer token for `scope`: 401 without a known token, 403 without the
/// scope.
pub fn authorize(state: &AppState, scope: Scope, req: &Request) -> Result<(), ApiError> {
    authorize_headers(state, scope, req.headers())
}

/// [`authorize`] from the request's headers (a handler checking a further scope).
pub fn authorize_headers(
    state: &AppState,
    scope: Scope,
    headers: &axum::http::HeaderMap,
) -> Result<(), ApiError> {
    let tokens = &state.config().tokens;
    if tokens.is_empty() {
        return Ok(());
    }
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                code::UNAUTHORIZED,
                "missing bearer token (Authorization: Bearer <token>)",
            )
        })?;
    // Digests are compared, not the secrets: a slice comparison returns at once on a length
    // difference, which told a caller each secret's length.
    let presented = Sha256::digest(presented.as_bytes());
    let mut found: Option<&Token> = None;
    for t in tokens {
        let eq: bool = Sha256::digest(t.secret.as_bytes())
            .as_slice()
            .ct_eq(presented.as_slice())
            .into();
        if eq {
            found = Some(t);
        }
    }
    let token = found.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            code::UNAUTHORIZED,
            "unknown token",
        )
    })?;
    if token.allows(scope) {
        Ok(())
    } else {
        tracing::debug!(token = %token.name, ?scope, "token lacks scope");
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            code::FORBIDDEN,
            format!("this token lacks the {scope:?} scope"),
        ))
    }
}

async fn check(state: AppState, scope: Scope, req: Request, next: Next) -> Response {
    match authorize(&state, scope, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Middleware for producer routes.
pub async fn producer(State(s): State<AppState>, req: Request, next: Next) -> Response {
    check(s, Scope::Producer, req, next).await
}

/// Middleware for consumer routes.
pub async fn consumer(State(s): State<AppState>, req: Request, next: Next) -> Response {
    check(s, Scope::Consumer, req, next).await
}

/// Middleware for admin routes.
pub async fn admin(State(s): State<AppState>, req: Request, next: Next) -> Response {
    check(s, Scope::Admin, req, next).await
}
