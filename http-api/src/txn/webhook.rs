//! Check-back by webhook (DTM style, without its flaws).
//!
//! The txn crate hands checks to [`UrlSink::deliver`] under its table lock, so delivery only
//! queues (a bounded channel; full = "not delivered", the check is not counted and comes again
//! one interval later). One worker task takes them and POSTs each, at most
//! `webhook_concurrency` at once, each bounded by `webhook_timeout`. A check whose
//! transaction was decided, or checked again, while it waited is dropped, not sent.
//!
//! The request: `POST <url>`, JSON [`CheckItem`], headers `X-Sluice-Timestamp` (epoch seconds)
//! and, with a secret configured, `X-Sluice-Signature: sha256=<hex HMAC-SHA256 of
//! "{timestamp}.{body}">` so the receiver can verify the sender and refuse replays.
//!
//! The answer: status 200 with JSON `{"state":"commit"|"rollback"|"unknown"}`. The outcome is
//! read from that field only, never sniffed from text; any other status, a body that is not
//! that JSON, a redirect, a timeout or a refused connection is no answer: the transaction
//! stays open and is checked again (logged at WARN). Commit and rollback are applied with
//! `resolve(.., from_check = true)`; UNKNOWN is noted as the last answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sluice_txn::{CheckSink, PendingCheck, Resolution, TxnService};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use super::allow::CheckUrlHosts;
use super::budget::{ByteBudget, Held};
use super::convert::check_item;
use super::model::{AnswerState, CheckAnswer};
use super::CheckConfig;

/// Header carrying the signing time (epoch seconds).
pub const TIMESTAMP_HEADER: &str = "x-sluice-timestamp";
/// Header carrying `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-sluice-signature";
/// Largest answer body read; a bigger one is not an answer.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The sink installed with `TxnService::set_url_sink`: queues, never blocks.
pub(super) struct UrlSink {
    /// Each check with its share of the byte budget, held until its call ends.
    pub(super) tx: mpsc::Sender<(PendingCheck, Held)>,
    pub(super) budget: Arc<ByteBudget>,
    /// `check_url_hosts`: the only hosts a half message's own URL may name.
    pub(super) hosts: CheckUrlHosts,
}

impl CheckSink for UrlSink {
    fn name(&self) -> &'static str {
        "http-webhook"
    }

    fn accepts(&self, message_url: &str) -> bool {
        self.hosts.allows_text(message_url)
    }

    fn deliver(&self, check: PendingCheck) -> Result<(), String> {
        let held = self.budget.hold(&check)?;
        self.tx.try_send((check, held)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => "webhook queue full (webhook_queue)".to_owned(),
            mpsc::error::TrySendError::Closed(_) => "webhook worker stopped".to_owned(),
        })
    }
}

/// How the webhook checks taken from the queue ended, for `/metrics`: the txn crate counts
/// a check as sent once it is claimed to be called, which says nothing of whether anyone
/// answered.
#[derive(Debug, Default)]
pub struct WebhookCounts {
    commit: AtomicU64,
    rollback: AtomicU64,
    unknown: AtomicU64,
    /// Calls that produced no answer (error status, bad body, timeout, refused).
    no_answer: AtomicU64,
    /// Checks not sent: decided or checked again while they waited.
    skipped: AtomicU64,
}

impl WebhookCounts {
    /// `(result, count)` for each result label, in a fixed order.
    pub fn by_result(&self) -> [(&'static str, u64); 5] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("commit", get(&self.commit)),
            ("rollback", get(&self.rollback)),
            ("unknown", get(&self.unknown)),
            ("no_answer", get(&self.no_answer)),
            ("skipped", get(&self.skipped)),
        ]
    }

    fn answered(&self, state: AnswerState) {
        let c = match state {
            AnswerState::Commit => &self.commit,
            AnswerState::Rollback => &self.rollback,
            AnswerState::Unknown => &self.unknown,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one webhook call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CallResult {
    /// A well-formed answer.
    Answer(AnswerState),
    /// No answer; why.
    Failed(String),
}

/// Calls webhooks and applies their answers.
pub(super) struct Caller {
    client: reqwest::Client,
    secret: Option<Arc<[u8]>>,
    txn: TxnService,
    counts: Arc<WebhookCounts>,
}

impl Caller {
    pub(super) fn new(
        cfg: &CheckConfig,
        txn: TxnService,
        counts: Arc<WebhookCounts>,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(cfg.webhook_timeout)
            .connect_timeout(cfg.webhook_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("sluice-check/1")
            .build()
            .map_err(|e| format!("webhook HTTP client: {e}"))?;
        Ok(Self {
            client,
            secret: cfg
                .webhook_secret
                .as_deref()
                .map(|s| Arc::from(s.as_bytes())),
            txn,
            counts,
        })
    }

    /// One check: call, then apply the answer.
    async fn check(&self, c: PendingCheck) {
        // Only the URL the checker chose (and checked against the allowed hosts): the
        // message's own SLUICE_CHECK_URL is never called unchecked.
        let Some(url) = c.url.clone() else {
            tracing::warn!(producer_group = %c.producer_group, transaction_id = %c.transaction_id, "check routed to the webhook sink without a URL; dropped");
            return;
        };
        let target = redacted(&url);
        // Counted against the budget now, as it is called, not when it was queued.
        let c = match self.txn.claim_check(&c).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                self.counts.skipped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(producer_group = %c.producer_group, transaction_id = %c.transaction_id, check = c.check_count, "transaction decided or checked again while its webhook waited; not sent");
                return;
            }
            Err(e) => {
                self.counts.skipped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(producer_group = %c.producer_group, transaction_id = %c.transaction_id, error = %e, "check not counted; not sent (it is offered again)");
                return;
            }
        };
        match self.call(&url, &c).await {
            CallResult::Answer(state) => {
                self.counts.answered(state);
                self.apply(&c, state, &target).await;
            }
            CallResult::Failed(why) => {
                self.counts.no_answer.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(producer_group = %c.producer_group, transaction_id = %c.transaction_id, check = c.check_count, url = %target, error = %why, "check webhook gave no answer; the transaction stays open and is checked again");
            }
        }
    }

    async fn call(&self, url: &str, c: &PendingCheck) -> CallResult {
        let body = match serde_json::to_vec(&check_item(c)) {
            Ok(b) => b,
            Err(e) => return CallResult::Failed(format!("encoding the check: {e}")),
        };
        let timestamp = epoch_secs().to_string();
        let mut req = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, &timestamp);
        if let Some(secret) = &self.secret {
            req = req.header(SIGNATURE_HEADER, signature(secret, &timestamp, &body));
        }
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => return CallResult::Failed(describe(&e)),
        };
        let status = resp.status();
        if status != reqwest::StatusCode::OK {
            return CallResult::Failed(format!("status {status} (only 200 carries an answer)"));
        }
        match read_bounded(resp).await {
            Ok(bytes) => parse_answer(&bytes),
            Err(why) => CallResult::Failed(why),
        }
    }

    async fn apply(&self, c: &PendingCheck, state: AnswerState, target: &str) {
        let resolution = match state {
            AnswerState::Commit => Resolution::Commit,
            AnswerState::Rollback => Resolution::Rollback,
            AnswerState::Unknown => Resolution::Unknown,
        };
        // An answer is the producer's decision: one refused for a passing reason (another
        // decision being stored, a full append queue) is applied again, for a while, rather
        // than dropped, or the final action could undo what the producer committed.
        let give_up = tokio::time::Instant::now() + APPLY_RETRY_FOR;
        let mut pause = Duration::from_millis(100);
        loop {
            match self.txn.resolve(&c.reference(), resolution, true).await {
                Ok(outcome) => {
                    tracing::debug!(producer_group = %c.producer_group, transaction_id = %c.transaction_id, check = c.check_count, url = %target, answer = ?state, outcome = ?outcome, "check webhook answered");
                    return;
                }
                Err(e) if e.is_retriable() && tokio::time::Instant::now() + pause < give_up => {
                    tracing::debug!(producer_group = %c.producer_group, transaction_id = %c.transaction_id, answer = ?state, error = %e, "check webhook answer not applied yet; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::warn!(producer_group = %c.producer_group, transaction_id = %c.transaction_id, url = %target, answer = ?state, error = %e, "check webhook answer not applied");
                    return;
                }
            }
        }
    }
}

/// How long an answer refused for a passing reason (`TxnError::is_retriable`) is applied again. The call
/// keeps its slot meanwhile, so this stays short of the check interval.
const APPLY_RETRY_FOR: Duration = Duration::from_secs(10);

/// The worker: takes queued checks until `stop`, at most `limit` calls at once; then waits
/// for calls in flight (each bounded by the client's timeout) up to `grace`.
pub(super) async fn run(
    caller: Arc<Caller>,
    mut rx: mpsc::Receiver<(PendingCheck, Held)>,
    limit: usize,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limit));
    let mut calls = JoinSet::new();
    let mut stop_waiting = stop.clone();
    loop {
        tokio::select! {
            () = super::stopped(&mut stop) => break,
            Some(_) = calls.join_next(), if !calls.is_empty() => {}
            next = rx.recv() => {
                let Some((check, held)) = next else { break };
                let permit = tokio::select! {
                    p = Arc::clone(&permits).acquire_owned() => p,
                    () = super::stopped(&mut stop_waiting) => break,
                };
                let Ok(permit) = permit else { break };
                let caller = Arc::clone(&caller);
                calls.spawn(async move {
                    let _permit = permit;
                    let _held = held;
                    caller.check(check).await;
                });
                // Reap finished calls so the set holds at most `limit` live ones.
                while calls.try_join_next().is_some() {}
            }
        }
    }
    let drained =
        tokio::time::timeout(grace, async { while calls.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            in_flight = calls.len(),
            "check webhooks still running at shutdown; abandoned"
        );
        calls.abort_all();
    }
}

/// `sha256=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        // HMAC takes keys of any length; this cannot happen.
        return String::new();
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn parse_answer(bytes: &[u8]) -> CallResult {
    match serde_json::from_slice::<CheckAnswer>(bytes) {
        Ok(a) => CallResult::Answer(a.state),
        Err(e) => CallResult::Failed(format!(
            "the body is not {{\"state\":\"commit\"|\"rollback\"|\"unknown\"}}: {e}"
        )),
    }
}

/// Reads the answer body, refusing more than [`MAX_ANSWER_BYTES`].
async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A transport error without the URL (it may hold a credential in its query).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the answer failed"
    } else {
        "request failed"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut detail = String::new();
    // Innermost cause, a few levels at most.
    for _ in 0..4 {
        let Some(s) = source else { break };
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

/// The URL for logs and the printed configuration: scheme, host and port only. The query and
/// user info may carry credentials, and so may the path (Slack- and Zapier-style hooks put
/// their token there); a path is shown as `/...`.
pub fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default(),
            if u.path().len() > 1 { "/..." } else { "" }
        ),
        Err(_) => "<unparsable>".to_owned(),
    }
}

fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // RFC 4231 test case 2 ("Jefe"), with the message split as "{timestamp}.{body}".
        let sig = signature(b"Jefe", "what do ya want ", b" for nothing?");
        assert_eq!(sig.len(), 7 + 64);
        let whole = {
            let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
            mac.update(b"what do ya want . for nothing?");
            mac.finalize().into_bytes()
        };
        let hex: String = whole.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sig, format!("sha256={hex}"));
        assert_ne!(
            sig,
            signature(b"Jeff", "what do ya want ", b" for nothing?")
        );
    }

    #[test]
    fn only_the_state_field_decides_an_answer() {
        assert_eq!(
            parse_answer(br#"{"state":"commit"}"#),
            CallResult::Answer(AnswerState::Commit)
        );
        assert_eq!(
            parse_answer(br#"{"state":"rollback","note":"x"}"#),
            CallResult::Answer(AnswerState::Rollback)
        );
        for not_an_answer in [
            &b"commit"[..],
            br#"{"status":"commit"}"#,
            br#"{"state":"COMMIT"}"#,
            br#"{"state":"FAILURE"}"#,
            b"",
        ] {
            assert!(
                matches!(parse_answer(not_an_answer), CallResult::Failed(_)),
                "{not_an_answer:?}"
            );
        }
    }

    #[test]
    fn logged_urls_lose_their_path_query_and_credentials() {
        assert_eq!(
            redacted("https://user:pw@app.example:8443/txn/check?token=s3cret"),
            "https://app.example:8443/..."
        );
        assert_eq!(
            redacted("https://hooks.example/services/T0/B0/s3cretToken"),
            "https://hooks.example/..."
        );
        assert_eq!(redacted("http://app.example"), "http://app.example");
    }
}
