//! Producer endpoints: send a half message, commit, roll back, answer a check, poll checks.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use sluice_protocol::message::keys;
use sluice_protocol::message::record::sysflag;
use sluice_txn::{Resolution, PROP_CHECK_URL};

use super::allow::CheckUrlHosts;
use super::convert::{check_item, decision, txn_error};
use super::id::{is_group_char, TxnHandle};
use super::model::{
    AnswerState, CheckAnswer, ChecksResponse, DecisionResponse, PollParams, SendTxnRequest,
    SendTxnResponse,
};
use super::pull::Source;
use crate::error::{code, ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::message::MessageIn;
use crate::produce::produce_error;
use crate::state::AppState;

/// Longest `check_url` accepted.
const MAX_URL_LEN: usize = 2048;
/// Checks per poll when the caller does not say.
const DEFAULT_POLL_MAX: usize = 16;

/// Stores a half message: durable, invisible until committed.
#[utoipa::path(post, path = "/v1/topics/{topic}/transactions", tag = "transactions",
    params(("topic" = String, Path, description = "The real topic")),
    request_body = SendTxnRequest,
    responses(
        (status = 201, description = "Half message stored", body = SendTxnResponse),
        (status = 400, description = "Bad field, body or check_url", body = ErrorBody),
        (status = 403, description = "check_url names a host outside checks.check_url_hosts", body = ErrorBody),
        (status = 404, description = "Topic not found", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Delay refused by the schedule", body = ErrorBody),
        (status = 429, description = "Too many open transactions or store busy", body = ErrorBody),
        (status = 503, description = "Transactions or (for a delay) scheduling disabled", body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn send(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    PathParams(topic): PathParams<String>,
    JsonBody(req): JsonBody<SendTxnRequest>,
) -> ApiResult<(StatusCode, Json<SendTxnResponse>)> {
    state.txn()?;
    check_group(&req.producer_group)?;
    let hosts = state.txn_http().check_url_hosts();
    let url = req
        .check_url
        .as_deref()
        .map(|u| check_url(u, hosts))
        .transpose()?;
    let group = req.producer_group;
    let message = MessageIn {
        body: req.body,
        body_base64: req.body_base64,
        tag: req.tag,
        keys: req.keys,
        properties: req.properties,
        delay_level: req.delay_level,
        delay_ms: req.delay_ms,
        deliver_at_ms: req.deliver_at_ms,
        sharding_key: req.sharding_key,
        producer_group: Some(group.clone()),
    }
    .decode(state.config())?;
    // As for produce: a delay needs the schedule (503 without it, never delivered at once),
    // and one it refuses is 422.
    let delayed = message.meta.delay.is_some();
    if delayed {
        state.schedule()?;
    }
    let peer = peer.map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |p| p.0 .0);
    let mut p = message.into_produce(&topic, &group, peer);
    p.sys_flag |= sysflag::TRANSACTION_PREPARED;
    p.properties.insert(keys::TRAN_MSG, "true");
    p.properties.insert(keys::PGROUP, group.as_str());
    if let Some(url) = url {
        p.properties.insert(PROP_CHECK_URL, url);
    }
    let stored = state
        .broker()
        .produce(p)
        .await
        .map_err(|e| produce_error(e, delayed))?;
    let handle = TxnHandle {
        producer_group: group,
        half_offset: u64::try_from(stored.queue_offset)
            .map_err(|_| ApiError::internal("negative half queue offset"))?,
        commit_log_offset: stored.phys_offset,
        uniq_key: stored.uniq_key.clone(),
    };
    tracing::debug!(topic = %topic, producer_group = %handle.producer_group, transaction_id = %handle.uniq_key, half_offset = handle.half_offset, "half message stored over HTTP");
    let body = SendTxnResponse {
        txn_id: handle.encode(),
        msg_id: stored.uniq_key,
    };
    Ok((StatusCode::CREATED, Json(body)))
}

/// Commits: the message appears in its topic, exactly once. Repeating it answers the same.
#[utoipa::path(post, path = "/v1/transactions/{txn_id}/commit", tag = "transactions",
    params(("txn_id" = String, Path, description = "From the send")),
    responses(
        (status = 200, description = "Committed (now or before)", body = DecisionResponse),
        (status = 400, description = "Malformed txn_id", body = ErrorBody),
        (status = 404, description = "No such transaction", body = ErrorBody),
        (status = 409, description = "Already rolled back", body = ErrorBody),
        (status = 429, description = "Another decision on it is being stored, or the store is busy: nothing changed, retry", body = ErrorBody),
        (status = 503, description = "Transactions disabled, disk full, or shutting down", body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn commit(
    State(state): State<AppState>,
    PathParams(txn_id): PathParams<String>,
) -> ApiResult<Json<DecisionResponse>> {
    resolve(&state, &txn_id, Resolution::Commit, false).await
}

/// Rolls back: the message never appears. Repeating it answers the same.
#[utoipa::path(post, path = "/v1/transactions/{txn_id}/rollback", tag = "transactions",
    params(("txn_id" = String, Path, description = "From the send")),
    responses(
        (status = 200, description = "Rolled back (now or before)", body = DecisionResponse),
        (status = 400, description = "Malformed txn_id", body = ErrorBody),
        (status = 404, description = "No such transaction", body = ErrorBody),
        (status = 409, description = "Already committed", body = ErrorBody),
        (status = 429, description = "Another decision on it is being stored, or the store is busy: nothing changed, retry", body = ErrorBody),
        (status = 503, description = "Transactions disabled, disk full, or shutting down", body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn rollback(
    State(state): State<AppState>,
    PathParams(txn_id): PathParams<String>,
) -> ApiResult<Json<DecisionResponse>> {
    resolve(&state, &txn_id, Resolution::Rollback, false).await
}

/// Answers a check (polled or not): like commit / rollback, but recorded as a check answer,
/// and `unknown` is accepted (noted; checks go on).
#[utoipa::path(post, path = "/v1/transactions/{txn_id}/check-answer", tag = "transactions",
    params(("txn_id" = String, Path, description = "From the check")),
    request_body = CheckAnswer,
    responses(
        (status = 200, description = "Applied, repeated or noted", body = DecisionResponse),
        (status = 400, description = "Malformed txn_id or state", body = ErrorBody),
        (status = 404, description = "No such transaction", body = ErrorBody),
        (status = 409, description = "Decided the other way already", body = ErrorBody),
        (status = 429, description = "Another decision on it is being stored, or the store is busy: nothing changed, retry", body = ErrorBody),
        (status = 503, description = "Transactions disabled, disk full, or shutting down", body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn check_answer(
    State(state): State<AppState>,
    PathParams(txn_id): PathParams<String>,
    JsonBody(answer): JsonBody<CheckAnswer>,
) -> ApiResult<Json<DecisionResponse>> {
    let resolution = match answer.state {
        AnswerState::Commit => Resolution::Commit,
        AnswerState::Rollback => Resolution::Rollback,
        AnswerState::Unknown => Resolution::Unknown,
    };
    resolve(&state, &txn_id, resolution, true).await
}

async fn resolve(
    state: &AppState,
    txn_id: &str,
    resolution: Resolution,
    from_check: bool,
) -> ApiResult<Json<DecisionResponse>> {
    let txn = state.txn()?;
    let handle = decode_id(txn_id)?;
    let outcome = txn
        .resolve(&handle.reference(), resolution, from_check)
        .await
        .map_err(txn_error)?;
    Ok(Json(decision(outcome, txn_id.to_owned())))
}

/// Long-polls the checks of a producer group (pull mode: see the module docs of `txn::pull`).
#[utoipa::path(get, path = "/v1/producer-groups/{group}/checks", tag = "transactions",
    params(("group" = String, Path, description = "Producer group"), PollParams),
    responses(
        (status = 200, description = "Checks (maybe none)", body = ChecksResponse),
        (status = 400, description = "Bad group or parameter", body = ErrorBody),
        (status = 409, description = "The group's checks go to its check_url", body = ErrorBody),
        (status = 422, description = "max or wait_ms out of range (max: 1 to 64; wait_ms: up to max_check_poll_wait_ms)", body = ErrorBody),
        (status = 429, description = "Too many polling groups", body = ErrorBody),
        (status = 503, description = "Transactions disabled", body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn poll_checks(
    State(state): State<AppState>,
    PathParams(group): PathParams<String>,
    QueryParams(q): QueryParams<PollParams>,
) -> ApiResult<Json<ChecksResponse>> {
    let txn = state.txn()?;
    check_group(&group)?;
    let cfg = &state.config().checks;
    // Out of range is refused, as a receive refuses it: a value quietly cut to the limit
    // left the caller waiting less, or taking fewer, than it asked with no sign why.
    let max = match q.max {
        Some(m) if m == 0 || m > cfg.max_poll_batch => {
            return Err(ApiError::unprocessable(format!(
                "max must be within 1 and {}",
                cfg.max_poll_batch
            )))
        }
        Some(m) => m,
        None => DEFAULT_POLL_MAX.min(cfg.max_poll_batch),
    };
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0));
    if wait > cfg.max_poll_wait {
        return Err(ApiError::unprocessable(format!(
            "wait_ms must be at most {} (max_check_poll_wait_ms)",
            cfg.max_poll_wait.as_millis()
        )));
    }
    let policy = txn.policy(&group);
    if policy.check_url.is_some() {
        return Err(ApiError::conflict(format!(
            "checks of producer group {group} go to its configured check_url, not to pollers"
        )));
    }
    let pull = state.txn_http().pull();
    let source = if policy.pull_checks {
        Source::Configured
    } else {
        pull.begin(txn, &group).ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                code::TOO_MANY_REQUESTS,
                "too many producer groups poll for checks (max_pull_groups)",
            )
        })?
    };
    let checks = pull
        .poll(txn, &group, &source, max, wait)
        .await
        .map_err(txn_error)?;
    Ok(Json(ChecksResponse {
        checks: checks.iter().map(check_item).collect(),
    }))
}

/// A `txn_id` path parameter, strictly (400 when it is not one we issue).
pub(super) fn decode_id(txn_id: &str) -> Result<TxnHandle, ApiError> {
    TxnHandle::decode(txn_id).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// RocketMQ's group names: 1..=255 of `%|a-zA-Z0-9_-` (also what a `txn_id` can carry).
pub(super) fn check_group(group: &str) -> Result<(), ApiError> {
    if group.is_empty() || group.len() > 255 || !group.chars().all(is_group_char) {
        return Err(ApiError::bad_request(format!(
            "producer_group {group:?} must be 1 to 255 of the characters a-z A-Z 0-9 _ - % |"
        )));
    }
    Ok(())
}

/// An absolute http(s) URL with a host and no credentials (the signature authenticates the
/// broker to the receiver; a password in the URL would end up stored in the message), whose
/// host the operator allows (403 otherwise: see `allow`).
fn check_url(raw: &str, hosts: &CheckUrlHosts) -> Result<String, ApiError> {
    if raw.len() > MAX_URL_LEN {
        return Err(ApiError::bad_request(format!(
            "check_url is longer than {MAX_URL_LEN} bytes"
        )));
    }
    let url = reqwest::Url::parse(raw)
        .map_err(|e| ApiError::bad_request(format!("check_url is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::bad_request("check_url must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request("check_url must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::bad_request(
            "check_url must not hold credentials; verify X-Sluice-Signature instead",
        ));
    }
    if !hosts.allows(&url) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            code::FORBIDDEN,
            "check_url names a host this broker may not call: the operator lists allowed hosts \
             in checks.check_url_hosts ([http] check_url_hosts)",
        ));
    }
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_without_credentials_are_check_urls() {
        let hosts = CheckUrlHosts::parse(&["127.0.0.1".into(), "app.example".into()]).unwrap();
        let check_url = |u: &str| super::check_url(u, &hosts);
        assert_eq!(
            check_url("http://127.0.0.1:9000/check?x=1").unwrap(),
            "http://127.0.0.1:9000/check?x=1"
        );
        assert!(check_url("https://app.example/check").is_ok());
        for bad in [
            "ftp://app.example/check",
            "/relative/path",
            "http://user:pw@app.example/",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(check_url(bad).is_err(), "accepted {bad}");
        }
        assert!(check_url(&format!("http://a.example/{}", "x".repeat(MAX_URL_LEN))).is_err());
    }

    #[test]
    fn a_check_url_outside_the_allowed_hosts_is_forbidden() {
        let hosts = CheckUrlHosts::parse(&["hooks.example.com".into()]).unwrap();
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:6379/",
            "http://hooks.example.com.evil.net/",
        ] {
            let e = check_url(url, &hosts).expect_err(url);
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{url}");
        }
        assert!(check_url("http://127.0.0.1:9000/", &CheckUrlHosts::default()).is_err());
    }

    #[test]
    fn group_names_use_rocketmqs_alphabet() {
        assert!(check_group("orders_service-1%|x").is_ok());
        for bad in ["", "has space", "ünïcode", &"g".repeat(256)] {
            assert!(check_group(bad).is_err(), "accepted {bad:?}");
        }
    }
}
