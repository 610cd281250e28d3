//! From the txn crate's types to the HTTP ones: views, checks, outcomes and errors.

use axum::http::StatusCode;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sluice_txn::{Outcome, PendingCheck, TxnError, TxnState, TxnView};

use super::id::TxnHandle;
use super::model::{CheckItem, DecisionResponse, LastAnswer, TxnItem};
use crate::error::{code, ApiError};

/// The handle of a transaction the txn crate describes.
pub(crate) fn handle_of_view(v: &TxnView) -> TxnHandle {
    TxnHandle {
        producer_group: v.producer_group.clone(),
        half_offset: v.half_offset,
        commit_log_offset: v.commit_log_offset,
        uniq_key: v.transaction_id.clone(),
    }
}

/// True when `v` is the transaction `h` names (not just one at the same half offset).
pub(crate) fn view_matches(v: &TxnView, h: &TxnHandle) -> bool {
    v.commit_log_offset == h.commit_log_offset
        && v.producer_group == h.producer_group
        && v.transaction_id.eq_ignore_ascii_case(&h.uniq_key)
}

/// Operators' view of one transaction.
pub(crate) fn item_of_view(v: &TxnView) -> TxnItem {
    TxnItem {
        txn_id: handle_of_view(v).encode(),
        producer_group: v.producer_group.clone(),
        topic: v.topic.clone(),
        queue_id: v.queue_id,
        msg_id: v.transaction_id.clone(),
        keys: split_keys(&v.keys),
        tag: non_empty(&v.tags),
        state: v.state.name().to_owned(),
        check_count: v.check_count,
        last_check_ms: v.last_check_ms,
        last_answer: v.last_answer.map(|(a, at_ms)| LastAnswer {
            answer: a.name().to_owned(),
            at_ms,
        }),
        decided_by: v.decided_by.map(|s| s.name().to_owned()),
        resolved_ms: v.resolved_ms,
        born_at_ms: v.born_ms,
        stored_ms: v.stored_ms,
        age_ms: v.age_ms,
        half_offset: v.half_offset,
    }
}

/// A check as the producer's application sees it. The body is `body` when it is UTF-8 text,
/// else `body_base64` (so a text body round-trips as text; a producer that sent UTF-8 bytes as
/// base64 gets them back as text). Properties the broker set are left out.
pub(crate) fn check_item(c: &PendingCheck) -> CheckItem {
    let handle = TxnHandle {
        producer_group: c.producer_group.clone(),
        half_offset: c.half_offset,
        commit_log_offset: c.commit_log_offset,
        uniq_key: c.transaction_id.clone(),
    };
    let (body, body_base64) = match std::str::from_utf8(&c.body) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(STANDARD.encode(&c.body))),
    };
    CheckItem {
        txn_id: handle.encode(),
        producer_group: c.producer_group.clone(),
        topic: c.topic.clone(),
        msg_id: c.transaction_id.clone(),
        keys: split_keys(&c.keys),
        tag: non_empty(&c.tags),
        body,
        body_base64,
        properties: c
            .properties
            .iter()
            .filter(|(k, _)| !crate::message::is_reserved(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        check_number: c.check_count,
        born_at_ms: c.born_ms,
    }
}

fn split_keys(keys: &str) -> Vec<String> {
    keys.split(' ')
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect()
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// The answer to a commit, rollback, force or check answer.
pub(crate) fn decision(outcome: Outcome, txn_id: String) -> DecisionResponse {
    let (state, repeated) = match outcome {
        Outcome::Applied(s) | Outcome::Noted(s) => (s, false),
        Outcome::Already(s) => (s, true),
    };
    let result = match (outcome, state) {
        (Outcome::Noted(_), _) => "unknown",
        (_, TxnState::Committed) => "committed",
        (_, TxnState::RolledBack | TxnState::Discarded) => "rolled_back",
        (_, other) => other.name(),
    };
    DecisionResponse {
        result: result.to_owned(),
        txn_id,
        state: state.name().to_owned(),
        repeated,
    }
}

/// How a refused or failed transaction request is answered. A reference that does not
/// describe a stored transaction (unknown, other group, other id) is 404 whatever the cause,
/// with one fixed message: the caller holds an id we did not issue for this transaction, and
/// the details (the half's real commit-log offset, its group, its id) are exactly what it
/// would need to forge one for somebody else's transaction. They go to the debug log only.
pub(crate) fn txn_error(e: TxnError) -> ApiError {
    match e {
        TxnError::NotStarted => ApiError::unavailable("the transaction service is not running"),
        TxnError::Unknown { .. } | TxnError::Mismatch(_) | TxnError::WrongGroup { .. } => {
            tracing::debug!(reason = %e, "transaction reference refused");
            ApiError::not_found("no such transaction")
        }
        TxnError::Conflict { .. } => ApiError::conflict(e.to_string()),
        TxnError::Invalid(m) => ApiError::bad_request(m),
        TxnError::Busy(m) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            code::TOO_MANY_REQUESTS,
            format!("busy, nothing changed; retry: {m}"),
        ),
        TxnError::Refused { code, remark } => ApiError::from_broker(code, remark),
        other => {
            let code = other.response_code();
            ApiError::from_broker(code, other.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `unknown` answer reports where the transaction stands, not always "open".
    #[test]
    fn an_unknown_answer_reports_the_transactions_real_state() {
        let parked = decision(Outcome::Noted(TxnState::Parked), "t".into());
        assert_eq!(
            (parked.result.as_str(), parked.state.as_str()),
            ("unknown", "parked")
        );
        let open = decision(Outcome::Noted(TxnState::Open), "t".into());
        assert_eq!(open.state, "open");
        let again = decision(Outcome::Already(TxnState::Discarded), "t".into());
        assert_eq!(
            (again.result.as_str(), again.state.as_str(), again.repeated),
            ("rolled_back", "discarded", true)
        );
    }

    /// A journal that could not be written, or a decision whose sync failed (its state put
    /// back), changed nothing and is worth retrying: 503, not 500 "a bug".
    #[test]
    fn failures_that_changed_nothing_and_may_pass_are_unavailable_not_internal() {
        use sluice_store::StoreError;
        for e in [
            TxnError::Checkpoint("journal: no space".into()),
            TxnError::Store(StoreError::SyncFailed("EIO".into())),
            TxnError::Store(StoreError::Io {
                op: "write",
                path: "x".into(),
                source: std::io::Error::from_raw_os_error(5),
            }),
        ] {
            let what = e.to_string();
            assert_eq!(
                txn_error(e).status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{what}"
            );
        }
    }
}
