//! The crate's typed errors.

use std::path::PathBuf;

use sluice_store::StoreError;

/// Everything that can go wrong in the schedule service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The configuration is inconsistent.
    #[error("invalid schedule config: {0}")]
    Config(String),
    /// A message's delay properties are refused (answered MESSAGE_ILLEGAL on the send path).
    #[error("{0}")]
    InvalidDelay(String),
    /// A caller's argument is unusable (empty key, bad time).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The extension is not started, or already stopped.
    #[error("the schedule service is not running")]
    NotRunning,
    /// The store refused or failed an append or a read.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A file of the timer index could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file of the timer index failed verification.
    #[error("corrupt timer index file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A bounded wait ran out (the index did not catch up, a delivery did not finish).
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// A cancel or reschedule failed part way: `done` messages were already changed (their
    /// new state is durable) when the next one failed with `cause`; `next_partly` when some
    /// of that message's own copies (a message sent twice has a timer per copy) were changed.
    #[error("{done} of {matched} messages were changed before the next failed{}: {cause}", if *next_partly { " (some of its copies were changed)" } else { "" })]
    Partial {
        /// Messages this call changed before the failure (not those found already settled:
        /// when none was changed and nothing of the failing one either, the bare error is
        /// answered, as for a call that changed nothing).
        done: usize,
        /// Messages the selector matched.
        matched: usize,
        /// Some copies of the message that failed were changed before the failure.
        next_partly: bool,
        /// The failure.
        cause: Box<ScheduleError>,
    },
}

impl ScheduleError {
    /// Wraps an I/O error with its context.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// A corruption report for `path`.
    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Result alias for the crate.
pub type Result<T, E = ScheduleError> = std::result::Result<T, E>;
