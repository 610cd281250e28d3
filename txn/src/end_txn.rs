//! END_TRANSACTION (37): a producer's commit, rollback or UNKNOWN, after its local transaction
//! or in answer to a check.
//!
//! It is answered after the decision is durable: SUCCESS (also for an identical repeat, with a
//! remark saying so), or the error code and remark of [`TxnError`]. RocketMQ clients send it
//! one-way, so they do not read the answer (C++ sends it with flag 0 and drops the response);
//! the broker logs every refusal with the transaction's fields, and a client that invokes it
//! two-way learns the outcome. An UNKNOWN answer is noted and answered SUCCESS.

use sluice_broker::acl::Perm;
use sluice_broker::ConnectionHandle;
use sluice_protocol::message::record::sysflag;
use sluice_protocol::remoting::custom::EndTransactionRequestHeader;
use sluice_protocol::{response_code as code, RemotingCommand};

use crate::core::{Core, Outcome};
use crate::error::TxnError;
use crate::resolve::{Resolution, TxnRef};

/// END_TRANSACTION refusals: one warning per 10 s and kind, with the count of those held back.
static REFUSALS_LOG: sluice_broker::log_every::LogEvery =
    sluice_broker::log_every::LogEvery::new(std::time::Duration::from_secs(10));

/// Handles one END_TRANSACTION.
pub(crate) async fn handle(
    core: &Core,
    conn: &ConnectionHandle,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h = match EndTransactionRequestHeader::from_ext(&req.ext_fields) {
        Ok(h) => h,
        Err(e) => return error(req, code::SYSTEM_ERROR, e.to_string()),
    };
    // Under ACL the request is let through on its signature alone (its header names no
    // topic): deciding needs PUB on the transaction's real topic, or any signed account could
    // commit or roll back another producer's transactions.
    let may = |topic: &str| {
        core.services
            .authorize_topic(conn.remote_addr(), req, topic, Perm::Pub)
            .map_err(TxnError::Denied)
    };
    let result = match parse(&h) {
        Ok((r, resolution)) => {
            core.resolve_if(&r, resolution, h.is_from_check(), may)
                .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(outcome) => {
            tracing::debug!(producer_group = %h.producer_group, transaction_id = %h.msg_id, half_offset = h.tran_state_table_offset, outcome = ?outcome, "END_TRANSACTION");
            let remark = match outcome {
                Outcome::Applied(_) => None,
                Outcome::Already(s) => Some(format!("the transaction is already {s}")),
                Outcome::Noted(s) => Some(format!(
                    "state UNKNOWN noted; the transaction stays undecided ({s})"
                )),
            };
            RemotingCommand::response_to(req, code::SUCCESS, remark)
        }
        Err(e) => {
            // Answered with the reason; logged once per period (a full disk refuses every one).
            if let Some(held_back) = REFUSALS_LOG.allow(e.kind()) {
                tracing::warn!(
                    producer_group = %h.producer_group, transaction_id = %h.msg_id,
                    half_offset = h.tran_state_table_offset, commit_log_offset = h.commit_log_offset,
                    commit_or_rollback = h.commit_or_rollback, from_check = h.is_from_check(),
                    remote = %conn.remote_addr(), error = %e, held_back, "END_TRANSACTION refused"
                );
            }
            error(req, e.response_code(), e.to_string())
        }
    }
}

/// The reference and the resolution a header asks for; negative offsets and unknown
/// `commitOrRollback` values are refused.
fn parse(h: &EndTransactionRequestHeader) -> Result<(TxnRef, Resolution), TxnError> {
    let resolution = match h.commit_or_rollback {
        sysflag::TRANSACTION_COMMIT => Resolution::Commit,
        sysflag::TRANSACTION_ROLLBACK => Resolution::Rollback,
        sysflag::TRANSACTION_NOT_TYPE => Resolution::Unknown,
        other => {
            return Err(TxnError::Invalid(format!(
                "commitOrRollback {other} is none of 0 (unknown), 8 (commit), 12 (rollback)"
            )))
        }
    };
    let offset = |v: i64, name: &str| {
        u64::try_from(v).map_err(|_| TxnError::Invalid(format!("{name} {v} is negative")))
    };
    let r = TxnRef {
        producer_group: h.producer_group.clone(),
        half_offset: offset(h.tran_state_table_offset, "tranStateTableOffset")?,
        commit_log_offset: offset(h.commit_log_offset, "commitLogOffset")?,
        transaction_id: h.transaction_id.clone().filter(|t| !t.is_empty()),
        msg_id: Some(h.msg_id.clone()).filter(|m| !m.is_empty()),
    };
    Ok((r, resolution))
}

fn error(req: &RemotingCommand, code: i32, remark: String) -> RemotingCommand {
    RemotingCommand::response_to(req, code, Some(remark))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_become_references_and_nonsense_is_refused() {
        let mut h = EndTransactionRequestHeader {
            producer_group: "pg".into(),
            tran_state_table_offset: 3,
            commit_log_offset: 900,
            commit_or_rollback: 8,
            msg_id: "U".into(),
            transaction_id: Some(String::new()),
            ..Default::default()
        };
        let (r, res) = parse(&h).unwrap();
        assert_eq!(
            (r.half_offset, r.commit_log_offset, res),
            (3, 900, Resolution::Commit)
        );
        assert_eq!(r.transaction_id, None, "C++ sends an empty transactionId");
        h.commit_or_rollback = 5;
        assert!(matches!(parse(&h), Err(TxnError::Invalid(_))));
        h.commit_or_rollback = 12;
        h.commit_log_offset = -1;
        assert!(parse(&h).unwrap_err().to_string().contains("negative"));
    }
}
