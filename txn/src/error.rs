//! Why a transaction operation was refused, and the response code each reason maps to.

use sluice_protocol::response_code as code;
use sluice_store::StoreError;

use crate::state::{Decision, Source, TxnState};

/// A refused or failed transaction operation. Every variant names what the client must know.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TxnError {
    /// The extension is not running (not started yet, or stopped).
    #[error("the transaction service is not running")]
    NotStarted,
    /// No half message matches, and no op record remembers one.
    #[error("unknown transaction: no half message at queue offset {half_offset} / commit-log offset {commit_log_offset}")]
    Unknown {
        /// `tranStateTableOffset` asked for.
        half_offset: u64,
        /// `commitLogOffset` asked for.
        commit_log_offset: u64,
    },
    /// A half message exists there but the request does not describe it.
    #[error("transaction mismatch: {0}")]
    Mismatch(String),
    /// The request names another producer group than the half message's `PGROUP`.
    #[error("the transaction belongs to producer group {expected}, not {got}")]
    WrongGroup {
        /// The half message's group.
        expected: String,
        /// The request's group.
        got: String,
    },
    /// The transaction went the other way already.
    #[error("{requested} refused: the transaction is already {state}{}", by_suffix(.decided_by))]
    Conflict {
        /// What was asked.
        requested: Decision,
        /// Where the transaction is.
        state: TxnState,
        /// Who decided it, when known.
        decided_by: Option<Source>,
    },
    /// A concurrent decision did not finish in time, or the broker pushed back.
    #[error("busy: {0}")]
    Busy(String),
    /// The store refused the records of a decision; nothing changed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The requester may not decide this transaction (ACL: no PUB on its topic).
    #[error("{0}")]
    Denied(String),
    /// The half message could not be read or is not a half message.
    #[error("half message unreadable: {0}")]
    Record(String),
    /// A commit hook (e.g. a schedule extension) refused the committed message.
    #[error("refused by a commit hook: {remark}")]
    Refused {
        /// The hook's response code.
        code: i32,
        /// The hook's remark.
        remark: String,
    },
    /// The state checkpoint could not be written (the next one retries; a restart rescans more).
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The request itself is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl TxnError {
    /// A short name of the variant, for logs rate-limited per kind.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::NotStarted => "not_started",
            Self::Unknown { .. } => "unknown",
            Self::Mismatch(_) => "mismatch",
            Self::WrongGroup { .. } => "wrong_group",
            Self::Conflict { .. } => "conflict",
            Self::Busy(_) => "busy",
            Self::Store(_) => "store",
            Self::Denied(_) => "denied",
            Self::Record(_) => "record",
            Self::Refused { .. } => "refused",
            Self::Checkpoint(_) => "checkpoint",
            Self::Invalid(_) => "invalid",
        }
    }
}

fn by_suffix(by: &Option<Source>) -> String {
    by.map(|s| format!(" (decided by {s})")).unwrap_or_default()
}

impl TxnError {
    /// The RocketMQ response code a remoting client gets for this error.
    ///
    /// A conflict says which way the transaction went: TRANSACTION_SHOULD_COMMIT (200) when it
    /// was committed, TRANSACTION_SHOULD_ROLLBACK (201) when it was rolled back or discarded.
    pub fn response_code(&self) -> i32 {
        match self {
            Self::NotStarted => code::SERVICE_NOT_AVAILABLE,
            Self::Unknown { .. } | Self::Mismatch(_) | Self::Record(_) => code::SYSTEM_ERROR,
            // The state or journal could not be written (a full or failing disk): nothing was
            // changed or handed out, and a retry is right.
            Self::Checkpoint(_) => code::SERVICE_NOT_AVAILABLE,
            Self::WrongGroup { .. } => code::TRANSACTION_STATE_GROUP_WRONG,
            Self::Conflict { state, .. } => match state {
                TxnState::Committed => code::TRANSACTION_SHOULD_COMMIT,
                TxnState::RolledBack | TxnState::Discarded => code::TRANSACTION_SHOULD_ROLLBACK,
                _ => code::ILLEGAL_OPERATION,
            },
            Self::Busy(_) => code::SYSTEM_BUSY,
            Self::Store(e) => match e {
                StoreError::Busy(_) => code::SYSTEM_BUSY,
                // Not appended, or not acknowledged and the state put back: retry later.
                StoreError::DiskFull(_)
                | StoreError::Fenced(_)
                | StoreError::Closed
                | StoreError::SyncFailed(_)
                | StoreError::Io { .. } => code::SERVICE_NOT_AVAILABLE,
                _ => code::SYSTEM_ERROR,
            },
            Self::Refused { code, .. } => *code,
            Self::Denied(_) => code::NO_PERMISSION,
            Self::Invalid(_) => code::INVALID_PARAMETER,
        }
    }

    /// True when the same request may succeed a moment later (nothing was decided): another
    /// decision of the transaction being stored, a full append queue, a full disk. Not an
    /// invalid or corrupt record, nor a store that must be restarted.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            Self::Busy(_) | Self::Store(StoreError::Busy(_) | StoreError::DiskFull(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_tell_which_way_the_transaction_went() {
        let e = TxnError::Conflict {
            requested: Decision::Rollback,
            state: TxnState::Committed,
            decided_by: Some(Source::Producer),
        };
        assert_eq!(e.response_code(), code::TRANSACTION_SHOULD_COMMIT);
        assert_eq!(
            e.to_string(),
            "rollback refused: the transaction is already committed (decided by producer)"
        );
        let e = TxnError::Conflict {
            requested: Decision::Commit,
            state: TxnState::Discarded,
            decided_by: Some(Source::FinalAction),
        };
        assert_eq!(e.response_code(), code::TRANSACTION_SHOULD_ROLLBACK);
        assert!(!e.is_retriable());
        assert!(TxnError::Busy("x".into()).is_retriable());
    }
}
