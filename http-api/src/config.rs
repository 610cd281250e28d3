//! `HttpConfig`: everything the facade can be told. Every limit is explicit; the server's
//! `[http]` section maps onto it.

use std::net::SocketAddr;

use crate::auth::Token;

/// The HTTP facade's configuration.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Listen address. Default `127.0.0.1:8080`; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Bearer tokens and their scopes. Empty = no authentication, which is allowed only on a
    /// loopback listener (checked by [`HttpConfig::validate`]).
    pub tokens: Vec<Token>,
    /// Largest request body in bytes (413 above it). Default 6 MiB, so a maximum message
    /// still fits when base64 in JSON.
    pub max_request_bytes: usize,
    /// Largest message body in bytes after decoding (413 above it). Default 4 MiB.
    pub max_message_bytes: usize,
    /// Most entries in one batch request. Default 256.
    pub max_batch: usize,
    /// Requests handled at once; more are answered 429 at once (never queued unboundedly).
    /// Long polls and the health probes are not counted here. Default 1 024.
    pub max_concurrent_requests: usize,
    /// Long polls (receive, and polls for checks) waiting at once; more are answered 429.
    /// Their own budget: idle consumers polling must not take the slots acks and sends need
    /// (refused acks let leases run out, which counts toward the DLQ). Default 4 096.
    pub max_long_polls: usize,
    /// Longest time a request body may take to arrive; a stalled upload is refused and
    /// gives its request slot back. Default 30 s.
    pub body_read_timeout: std::time::Duration,
    /// How long requests in progress may take to finish once the facade stops (after the
    /// broker drained); the rest are cut off. Default 5 s.
    pub shutdown_grace: std::time::Duration,
    /// Time a client has to send a request's line and headers, counted from when the
    /// connection waits for them: slow-loris senders and idle keep-alive connections are
    /// closed after it. Default 30 s.
    pub header_read_timeout: std::time::Duration,
    /// Open HTTP connections; one beyond it is closed at once. Default 10 000.
    pub max_connections: usize,
    /// Serve HTTPS only, with this certificate (`ServerTls::from_files`; its mode is not used:
    /// a port serves HTTP or HTTPS). Default `None`: plain HTTP.
    pub tls: Option<sluice_remoting::ServerTls>,
    /// Producer group recorded for HTTP sends that name none. Default `SLUICE_HTTP_PRODUCER`.
    pub default_producer_group: String,
    /// Serve `/metrics` without a token (it carries no message data or secrets). Default
    /// true; false requires an admin token.
    pub metrics_public: bool,
    /// Lease-based consumption limits.
    pub consume: crate::consume::ConsumeConfig,
    /// Transaction check-back over HTTP (webhooks, polling).
    pub checks: crate::txn::CheckConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens: Vec::new(),
            max_request_bytes: 6 * 1024 * 1024,
            max_message_bytes: 4 * 1024 * 1024,
            max_batch: 256,
            max_concurrent_requests: 1024,
            max_long_polls: 4096,
            body_read_timeout: std::time::Duration::from_secs(30),
            shutdown_grace: std::time::Duration::from_secs(5),
            header_read_timeout: std::time::Duration::from_secs(30),
            max_connections: 10_000,
            tls: None,
            default_producer_group: "SLUICE_HTTP_PRODUCER".into(),
            metrics_public: true,
            consume: crate::consume::ConsumeConfig::default(),
            checks: crate::txn::CheckConfig::default(),
        }
    }
}

impl HttpConfig {
    /// Checks the limits, and refuses an unauthenticated listener that is not loopback.
    pub fn validate(&self) -> Result<(), String> {
        if self.tokens.is_empty() && !self.listen.ip().is_loopback() {
            return Err(format!(
                "the HTTP listener {} is not loopback: configure [http] tokens (or listen on 127.0.0.1)",
                self.listen
            ));
        }
        if self.max_message_bytes == 0 || self.max_request_bytes < self.max_message_bytes {
            return Err(format!(
                "max_request_bytes ({}) must be at least max_message_bytes ({}), both > 0",
                self.max_request_bytes, self.max_message_bytes
            ));
        }
        if self.body_read_timeout.is_zero() || self.header_read_timeout.is_zero() {
            return Err("body_read_timeout and header_read_timeout must be > 0".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections must be > 0".into());
        }
        if self.max_batch == 0 || self.max_concurrent_requests == 0 || self.max_long_polls == 0 {
            return Err("max_batch, max_concurrent_requests and max_long_polls must be > 0".into());
        }
        if self.max_batch > crate::extract::MAX_ARRAY_ENTRIES {
            return Err(format!(
                "max_batch ({}) must be at most {}",
                self.max_batch,
                crate::extract::MAX_ARRAY_ENTRIES
            ));
        }
        for t in &self.tokens {
            t.validate()?;
        }
        self.consume.validate()?;
        self.checks.validate()?;
        Ok(())
    }
}
