//! `[http]`: the HTTP facade. Secrets (token secrets, the webhook signing secret) are never
//! printed: the effective configuration logged at start shows them as `<redacted>`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize, Serializer};
use sluice_broker::lease::LeaseConfig;
use sluice_http::auth::{Scope, Token};
use sluice_http::HttpConfig;

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Serve the HTTP facade. Default true.
    pub enabled: bool,
    /// Listen address. Default `127.0.0.1:8080`. A non-loopback address needs `tokens`.
    pub listen: SocketAddr,
    /// Bearer tokens: `[[http.tokens]] name = "...", secret = "...", scopes = ["producer"]`.
    /// None = no authentication (loopback only).
    pub tokens: Vec<TokenSection>,
    /// Largest request body. Default 6 MiB.
    pub max_request_bytes: usize,
    /// Largest message body after decoding. Default 4 MiB.
    pub max_message_bytes: usize,
    /// Most entries in one batch request. Default 256.
    pub max_batch: usize,
    /// Requests in progress at once (long polls and health probes aside); more are answered
    /// 429. Default 1 024.
    pub max_concurrent_requests: usize,
    /// Long polls (receive, polls for checks) waiting at once; more are answered 429.
    /// Default 4 096.
    pub max_long_polls: usize,
    /// Serve `/metrics` without a token. Default true.
    pub metrics_public: bool,
    /// Longest time a request body may take to arrive. Default 30 000.
    pub body_read_timeout_ms: u64,
    /// At shutdown, after the broker drained, how long HTTP requests still in progress may
    /// take before they are cut off. Default 5 000.
    pub shutdown_grace_ms: u64,
    /// Longest time a request's line and headers may take (slow-loris senders and idle
    /// keep-alive connections are closed after it). Default 30 000.
    pub header_read_timeout_ms: u64,
    /// Open HTTP connections; more are closed at once. Default 10 000.
    pub max_connections: usize,
    /// Hosts a producer may name in a per-message `check_url`: `host` (any port),
    /// `host:port` or `*.domain`. Empty (the default) refuses every per-message URL (403), so
    /// producers cannot make the broker call addresses of their choosing; groups' configured
    /// `check_url`s are not limited by it.
    pub check_url_hosts: Vec<String>,
    /// Key of the check-back webhook signature (`X-Sluice-Signature`), at least 16 bytes.
    /// Required when webhooks can be called (`check_url_hosts` or a group's `check_url`).
    #[serde(serialize_with = "redacted_opt")]
    pub webhook_secret: Option<String>,
    /// Timeout of one webhook call. Default 5 000.
    pub webhook_timeout_ms: u64,
    /// Webhook calls in flight at once. Default 16.
    pub webhook_concurrency: usize,
    /// Checks waiting for a webhook call. Default 1 024.
    pub webhook_queue: usize,
    /// Bytes the checks waiting in the facade (for a webhook call, or for their group's next
    /// poll) may hold together; more are refused and tried again one check interval later.
    /// Default 67 108 864 (64 MiB).
    pub check_queue_bytes: usize,
    /// Longest long poll for checks. Default 20 000, at most 30 000.
    pub max_check_poll_wait_ms: u64,
    /// Most messages one receive hands out. Default 32.
    pub max_receive: usize,
    /// Lease of a receive that names none. Default 30 000.
    pub default_visibility_ms: u64,
    /// Longest lease, extensions included. Default 43 200 000 (12 h).
    pub max_visibility_ms: u64,
    /// Leases one consumer group may hold at once. Default 10 000.
    pub max_inflight_per_group: usize,
    /// Leases every consumer group together may hold at once. Default 100 000.
    pub max_inflight_total: usize,
    /// Retries of other topics one group's retry queue keeps aside while a receive looks for
    /// its own topic's; past it that group's retry cursor waits. Default 10 000.
    pub max_parked_retries: usize,
    /// Entries every group together keeps waiting (retries kept aside, failed hand-backs);
    /// past it, groups holding their share of it keep no more retries aside. Default 100 000.
    pub max_parked_retries_total: usize,
    /// Finished receipts one group remembers, so a stale receipt answers `already_acked`
    /// rather than `receipt_unknown`. Default 100 000.
    pub remembered_receipts: usize,
    /// Finished receipts every group together remembers. Default 1 000 000.
    pub remembered_receipts_total: usize,
    /// Consumer groups that may hold a lease book at once; at the bound, idle books (no
    /// leases, nothing open) are dropped, and a receive for a new group is 429 only when none
    /// is idle. Default 10 000.
    pub max_receive_groups: usize,
    /// Most receipts in one ack, nack or visibility request (422 above). Default 1 000, at
    /// most 100 000.
    pub max_receipts: usize,
}

/// `[[http.tokens]]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    /// A name for logs.
    pub name: String,
    /// The bearer secret (at least 16 characters).
    #[serde(serialize_with = "redacted")]
    pub secret: String,
    /// `producer`, `consumer`, `admin`.
    pub scopes: Vec<String>,
}

fn redacted_opt<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

fn redacted<S: Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}

impl Default for HttpSection {
    fn default() -> Self {
        let d = HttpConfig::default();
        let lease = LeaseConfig::default();
        Self {
            enabled: true,
            listen: d.listen,
            tokens: Vec::new(),
            max_request_bytes: d.max_request_bytes,
            max_message_bytes: d.max_message_bytes,
            max_batch: d.max_batch,
            max_concurrent_requests: d.max_concurrent_requests,
            max_long_polls: d.max_long_polls,
            metrics_public: d.metrics_public,
            body_read_timeout_ms: d.body_read_timeout.as_millis() as u64,
            shutdown_grace_ms: d.shutdown_grace.as_millis() as u64,
            header_read_timeout_ms: d.header_read_timeout.as_millis() as u64,
            max_connections: d.max_connections,
            check_url_hosts: d.checks.check_url_hosts.clone(),
            webhook_secret: None,
            webhook_timeout_ms: d.checks.webhook_timeout.as_millis() as u64,
            webhook_concurrency: d.checks.webhook_concurrency,
            webhook_queue: d.checks.webhook_queue,
            check_queue_bytes: d.checks.queue_bytes,
            max_check_poll_wait_ms: d.checks.max_poll_wait.as_millis() as u64,
            max_receive: lease.max_per_receive,
            default_visibility_ms: lease.default_visibility.as_millis() as u64,
            max_visibility_ms: lease.max_visibility.as_millis() as u64,
            max_inflight_per_group: lease.max_inflight_per_group,
            max_inflight_total: lease.max_inflight_total,
            max_parked_retries: lease.max_parked_retries,
            max_parked_retries_total: lease.max_parked_retries_total,
            remembered_receipts: lease.remembered_receipts,
            remembered_receipts_total: lease.remembered_receipts_total,
            max_receive_groups: lease.max_groups,
            max_receipts: d.consume.max_receipts,
        }
    }
}

impl HttpSection {
    /// Applies the lease settings to the broker's lease limits; `levels` is the schedule
    /// ladder, so a nack's delay maps onto the levels the broker really has.
    pub fn apply_lease(&self, lease: &mut LeaseConfig, levels: Option<Vec<Duration>>) {
        lease.max_per_receive = self.max_receive;
        lease.default_visibility = Duration::from_millis(self.default_visibility_ms);
        lease.max_visibility = Duration::from_millis(self.max_visibility_ms);
        lease.max_inflight_per_group = self.max_inflight_per_group;
        lease.max_inflight_total = self.max_inflight_total;
        lease.max_parked_retries = self.max_parked_retries;
        lease.max_parked_retries_total = self.max_parked_retries_total;
        lease.remembered_receipts = self.remembered_receipts;
        lease.remembered_receipts_total = self.remembered_receipts_total;
        lease.max_groups = self.max_receive_groups;
        if let Some(levels) = levels.filter(|l| !l.is_empty()) {
            lease.nack_levels = levels;
        }
    }

    /// The facade's configuration, validated.
    pub fn to_config(&self) -> Result<HttpConfig> {
        let tokens = self
            .tokens
            .iter()
            .map(|t| {
                let scopes = t
                    .scopes
                    .iter()
                    .map(|s| Scope::parse(s))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| anyhow!("[[http.tokens]] {:?}: {e}", t.name))?;
                Ok(Token {
                    name: t.name.clone(),
                    secret: t.secret.clone(),
                    scopes,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut checks = sluice_http::txn::CheckConfig {
            check_url_hosts: self.check_url_hosts.clone(),
            webhook_secret: self.webhook_secret.clone(),
            webhook_timeout: Duration::from_millis(self.webhook_timeout_ms),
            webhook_concurrency: self.webhook_concurrency,
            webhook_queue: self.webhook_queue,
            queue_bytes: self.check_queue_bytes,
            max_poll_wait: Duration::from_millis(self.max_check_poll_wait_ms),
            ..sluice_http::txn::CheckConfig::default()
        };
        checks.poll_idle = checks.poll_idle.max(checks.max_poll_wait);
        let cfg = HttpConfig {
            checks,
            listen: self.listen,
            tokens,
            max_request_bytes: self.max_request_bytes,
            max_message_bytes: self.max_message_bytes,
            max_batch: self.max_batch,
            max_concurrent_requests: self.max_concurrent_requests,
            max_long_polls: self.max_long_polls,
            metrics_public: self.metrics_public,
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            max_connections: self.max_connections,
            consume: sluice_http::consume::ConsumeConfig {
                max_receipts: self.max_receipts,
            },
            ..HttpConfig::default()
        };
        cfg.validate()
            .map_err(|e| anyhow!("[http] {}", with_file_keys(&e)))?;
        Ok(cfg)
    }
}

/// The facade's and the broker's names for `[http]` settings they check, and the file keys
/// those come from: a refused start names the key the operator wrote, not a field they
/// cannot find in any file.
const FILE_KEYS: &[(&str, &str)] = &[
    ("checks.check_url_hosts", "check_url_hosts"),
    ("checks.webhook_secret", "webhook_secret"),
    ("checks.webhook_timeout", "webhook_timeout_ms"),
    ("checks.max_poll_wait", "max_check_poll_wait_ms"),
    ("checks.webhook_concurrency", "webhook_concurrency"),
    ("checks.webhook_queue", "webhook_queue"),
    ("checks.queue_bytes", "check_queue_bytes"),
    ("consume.max_receipts", "max_receipts"),
    ("lease.max_per_receive", "max_receive"),
    ("lease.max_inflight_per_group", "max_inflight_per_group"),
    ("lease.max_inflight_total", "max_inflight_total"),
    ("lease.max_groups", "max_receive_groups"),
    ("lease.max_parked_retries_total", "max_parked_retries_total"),
    ("lease.max_parked_retries", "max_parked_retries"),
    (
        "lease.remembered_receipts_total",
        "remembered_receipts_total",
    ),
    (
        "lease visibility",
        "default_visibility_ms and max_visibility_ms: lease visibility",
    ),
];

/// `message` with the library's setting names replaced by their `[http]` file keys.
pub(crate) fn with_file_keys(message: &str) -> String {
    let mut out = message.to_owned();
    for (library, file) in FILE_KEYS {
        out = out.replace(library, file);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_secrets_are_redacted_when_the_configuration_is_printed() {
        let mut s = HttpSection::default();
        s.tokens.push(TokenSection {
            name: "ops".into(),
            secret: "very-secret-value-123".into(),
            scopes: vec!["admin".into()],
        });
        s.webhook_secret = Some("webhook-secret-value-456".into());
        let printed = serde_json::to_string(&s).unwrap();
        assert!(!printed.contains("webhook-secret-value-456"), "{printed}");
        assert!(!printed.contains("very-secret-value-123"), "{printed}");
        assert!(printed.contains("<redacted>"));
        assert_eq!(s.to_config().unwrap().tokens[0].scopes, vec![Scope::Admin]);
    }

    #[test]
    fn refusals_name_the_keys_of_the_file() {
        let s = HttpSection {
            max_check_poll_wait_ms: 10_000_000,
            ..HttpSection::default()
        };
        let e = s.to_config().unwrap_err().to_string();
        assert!(e.contains("max_check_poll_wait_ms"), "{e}");
        assert!(!e.contains("checks."), "{e}");
        let s = HttpSection {
            max_receipts: 0,
            ..HttpSection::default()
        };
        let e = s.to_config().unwrap_err().to_string();
        assert!(e.starts_with("[http] max_receipts "), "{e}");
        let s = HttpSection {
            check_url_hosts: vec!["not a host!".into()],
            ..HttpSection::default()
        };
        let e = s.to_config().unwrap_err().to_string();
        assert!(
            e.contains("check_url_hosts") && !e.contains("checks."),
            "{e}"
        );
        let mut cfg = crate::config::ServerConfig::default();
        cfg.http.max_receive_groups = 0;
        let e = format!("{:#}", cfg.validate().unwrap_err());
        assert!(
            e.contains("[http] max_receive_groups must be positive"),
            "{e}"
        );
        let mut cfg = crate::config::ServerConfig::default();
        cfg.http.max_receive = 0;
        let e = format!("{:#}", cfg.validate().unwrap_err());
        assert!(e.contains("[http] max_receive must be positive"), "{e}");
    }

    #[test]
    fn unknown_scopes_and_open_non_loopback_listeners_are_refused() {
        let mut s = HttpSection::default();
        s.tokens.push(TokenSection {
            name: "x".into(),
            secret: "0123456789abcdefgh".into(),
            scopes: vec!["root".into()],
        });
        assert!(s.to_config().unwrap_err().to_string().contains("root"));
        let open = HttpSection {
            listen: "0.0.0.0:8080".parse().unwrap(),
            ..HttpSection::default()
        };
        assert!(open.to_config().is_err());
    }

    #[test]
    fn lease_settings_reach_the_broker_and_nacks_use_the_schedule_ladder() {
        let mut cfg = crate::config::ServerConfig::default();
        cfg.schedule.levels_ms = Some(vec![100, 200, 400]);
        cfg.http.max_receive = 8;
        cfg.http.default_visibility_ms = 5_000;
        let lease = cfg.broker_config(None).lease;
        assert_eq!(lease.max_per_receive, 8);
        assert_eq!(lease.default_visibility, Duration::from_secs(5));
        assert_eq!(
            lease.nack_levels,
            [100, 200, 400].map(Duration::from_millis).to_vec()
        );
        cfg.http.max_receive = 0;
        assert!(cfg.validate().is_err(), "a zero receive size is refused");
    }
}
