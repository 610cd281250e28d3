//! The store's typed errors.

use std::path::PathBuf;

use sluice_protocol::message::RecordError;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O error, with the operation and file it happened on.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The append queue is full: the disk is behind. Retry later.
    #[error("store busy: {0}")]
    Busy(&'static str),
    /// Disk usage is above the configured ratio, or the disk is full; nothing was written.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// A sync or write failed earlier; the store accepts no more appends until it is reopened
    /// and recovery has checked what reached the disk.
    #[error("store is fenced after a failed write or sync: {0}")]
    Fenced(String),
    /// The sync covering this append failed; the append is not acknowledged.
    #[error("sync failed, append not durable: {0}")]
    SyncFailed(String),
    /// A message was refused before anything was written.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// A stored record failed verification; it is never served.
    #[error("corrupt record in {path} at byte {position}: {reason}")]
    Corrupt {
        /// Segment file.
        path: PathBuf,
        /// Position in that file.
        position: u64,
        /// What was wrong.
        reason: String,
    },
    /// No record starts at that commit-log offset, or it was deleted by retention.
    #[error("no record at commit-log offset {0}")]
    NotFound(u64),
    /// Recovery found something it will not repair on its own.
    #[error("recovery refused: {0}")]
    Recovery(String),
    /// The configuration is inconsistent.
    #[error("invalid store config: {0}")]
    Config(String),
    /// Another process holds the data folder.
    #[error("data folder {0} is locked by another process")]
    Locked(PathBuf),
    /// The store is shutting down.
    #[error("store is shut down")]
    Closed,
    /// The message codec refused a record.
    #[error(transparent)]
    Record(#[from] RecordError),
}

impl StoreError {
    /// Wraps an I/O error with its context.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
