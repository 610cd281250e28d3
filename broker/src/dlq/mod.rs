//! Dead-letter queues: reading them, sizing them, and replaying (redriving) them.
//!
//! A DLQ is `%DLQ%<group>` queue 0, written by [`crate::retry`]. It is an append-only log, so
//! "moving a message out" means: the replay task appends a copy to the destination topic,
//! then records the DLQ queue offset in the group's replay ledger (`<data>/config/dlq/`).
//! Listings hide ledgered messages unless asked, and later replays skip them. A crash between
//! the two steps leaves a message replayed but not ledgered; on resume the task finds the copy
//! through the destination's key index (UNIQ_KEY + its own task id) and only ledgers it, so a
//! message is never lost and at most duplicated.
//!
//! - `read`: [`DlqMessage`] decoding, [`DlqFilter`], paging ([`DlqService::list`]), sizes.
//! - `replay`: the background task (rate limit, progress, cancel, dry run).
//! - `state`: task files, ledgers and the audit log on disk.

mod read;
mod replay;
pub(crate) mod state;

use std::sync::Arc;

pub use read::{DlqFilter, DlqGroupStats, DlqMessage, DlqPage, DlqQuery, MAX_PAGE_BYTES};
pub use replay::{ReplaySpec, ReplayState, ReplayStatus};
pub use state::AuditRecord;

use crate::broker::context::BrokerContext;
use crate::retry::SendBack;

/// Loads the replay ledgers and registers the replay tasks a previous run saved (called once
/// at broker start, before the extensions start); returns the running ones, for
/// [`run_resumed_replays`].
pub(crate) fn register_saved_replays(ctx: &Arc<BrokerContext>) -> Vec<replay::Resumed> {
    ctx.dlq.load_ledgers();
    replay::register_saved(ctx)
}

/// Runs the replay tasks [`register_saved_replays`] found running.
pub(crate) fn run_resumed_replays(ctx: &Arc<BrokerContext>, resumed: Vec<replay::Resumed>) {
    replay::run_resumed(ctx, resumed);
}

/// Why a DLQ operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DlqError {
    /// No such replay task.
    #[error("no replay task {0:?}")]
    NoSuchTask(String),
    /// The group has never had a dead letter (no `%DLQ%<group>` topic): nothing to replay.
    #[error("group {0:?} has no dead-letter queue")]
    NoDeadLetters(String),
    /// The request is not acceptable.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The operation is not allowed, as a producer's send to the same topic would not be
    /// (NO_PERMISSION): e.g. a replay into a system topic.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Another replay task of the group is still running (one at a time, as SQS).
    #[error("replay task {0} of this group is still running")]
    Busy(String),
    /// A state file could not be written or read.
    #[error("state: {0}")]
    State(String),
}

/// The Rust API over dead-letter queues and replay tasks, for operators and the HTTP
/// facade. Get it from [`crate::BrokerServices::dlq`] or [`crate::BrokerHandle::dlq`].
#[derive(Clone)]
pub struct DlqService {
    pub(crate) ctx: Arc<BrokerContext>,
}

impl std::fmt::Debug for DlqService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlqService").finish_non_exhaustive()
    }
}

impl DlqService {
    /// One page of a group's dead letters, oldest first. Blocking reads of the store: call
    /// from a blocking thread for large pages.
    pub fn list(&self, q: &DlqQuery) -> Result<DlqPage, DlqError> {
        read::list(&self.ctx, q)
    }

    /// Sizes of every DLQ (total, replayed, still waiting).
    pub fn stats(&self) -> Vec<DlqGroupStats> {
        read::stats(&self.ctx)
    }

    /// Sizes of one group's DLQ (zero when it has none).
    pub fn group_stats(&self, group: &str) -> DlqGroupStats {
        read::group_stats(&self.ctx, group.to_owned())
    }

    /// Starts a replay task in the background; returns its first status.
    pub async fn start_replay(&self, spec: ReplaySpec) -> Result<ReplayStatus, DlqError> {
        replay::start(&self.ctx, spec).await
    }

    /// The status of one replay task.
    pub fn replay(&self, id: &str) -> Result<ReplayStatus, DlqError> {
        self.ctx
            .dlq
            .status(id)
            .ok_or_else(|| DlqError::NoSuchTask(id.to_owned()))
    }

    /// Every known replay task, newest first.
    pub fn replays(&self) -> Vec<ReplayStatus> {
        self.ctx.dlq.all_statuses()
    }

    /// Asks a running task to stop; it records `Cancelled` after its current message.
    pub fn cancel_replay(&self, id: &str) -> Result<ReplayStatus, DlqError> {
        self.ctx.dlq.cancel(id)
    }

    /// Waits until a task is no longer running (bounded by `timeout`); returns its status.
    pub async fn wait_replay(
        &self,
        id: &str,
        timeout: std::time::Duration,
    ) -> Result<ReplayStatus, DlqError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.replay(id)?;
            if s.state != ReplayState::Running || tokio::time::Instant::now() >= deadline {
                return Ok(s);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The audit log, oldest first.
    pub fn audit(&self) -> Result<Vec<AuditRecord>, DlqError> {
        self.ctx.dlq.read_audit()
    }

    /// Hands a failed delivery back (HTTP lease expiry and nacks): the same path and counts
    /// as CONSUMER_SEND_MSG_BACK.
    pub async fn send_back(
        &self,
        req: &SendBack,
    ) -> Result<crate::retry::SendBackOutcome, crate::retry::RetryError> {
        crate::retry::send_back(&self.ctx, req).await
    }
}
