//! The checkpoint that bounds a restart: `<state dir>/checkpoint.json`, replaced atomically
//! (`sluice_store::write_atomic`: temp file, fsync, rename, fsync folder).
//!
//! It holds:
//! - `half_next`: every half message below it was in memory when the checkpoint was taken, so a
//!   restart rescans the half queue only from here;
//! - `live`: every undecided transaction then (open, resolving, parked), with its check count,
//!   so check budgets survive a restart;
//! - `op_next`: where the op-queue replay starts. It is the op queue's end when the checkpoint
//!   was taken, lowered to (a) the op-queue end seen when each in-flight decision began (its op
//!   record lands at or above that) and (b) the op offset of every decided entry at or above
//!   `half_next` (the rescan finds it open again; its op must be replayed).
//!
//! The source of truth stays the half and op queues: a missing or unreadable checkpoint means
//! a full rescan of both (slower, same result, except check counts restart from zero).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::TxnError;
use crate::state::{Decision, TxnState};
use crate::table::{Entry, Location};

/// Format version written.
pub(crate) const VERSION: u32 = 1;
/// File name under the state folder.
pub(crate) const FILE: &str = "checkpoint.json";

/// The checkpoint's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CheckpointData {
    pub(crate) version: u32,
    pub(crate) half_next: u64,
    pub(crate) op_next: u64,
    pub(crate) live: Vec<LiveEntry>,
}

/// One undecided transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LiveEntry {
    /// Identity: half queue offset.
    pub(crate) q: u64,
    /// Identity: commit-log offset.
    pub(crate) p: u64,
    /// Current location (a carry-forward copy, or the identity).
    pub(crate) cq: u64,
    pub(crate) cp: u64,
    /// Checks delivered since armed.
    pub(crate) checks: u32,
    /// Last check, epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_check: Option<i64>,
    /// When checks (re)started, epoch ms.
    pub(crate) armed: i64,
    /// Parked by the final action `keep`.
    #[serde(default)]
    pub(crate) parked: bool,
    /// A commit was being stored: its message may be there without its op record (a failed
    /// op append, a stop in between), so the next start looks for it even after a clean stop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) commit_pending: bool,
    /// Op-queue offset of the last op record applied to it (a park or a re-arm): a restart's
    /// op replay may start below it, and applying those records again reset its check count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) op: Option<u64>,
    /// The producer answered commit, and it could not be stored (see `Entry`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) commit_answered: bool,
}

impl LiveEntry {
    pub(crate) fn from_entry(e: &Entry) -> Self {
        Self {
            q: e.id.half_offset,
            p: e.id.commit_log_offset,
            cq: e.current.half_offset,
            cp: e.current.phys_offset,
            checks: e.checks,
            last_check: e.last_check_ms,
            armed: e.armed_ms,
            // A decision still being stored counts as where it came from: if the crash loses
            // it, a parked transaction must come back parked, not open with its checks spent
            // (parked again with a second copy, or discarded if the final action changed).
            parked: matches!(
                e.state,
                TxnState::Parked
                    | TxnState::Resolving {
                        from_parked: true,
                        ..
                    }
            ),
            commit_pending: matches!(
                e.state,
                TxnState::Resolving {
                    decision: Decision::Commit,
                    ..
                }
            ),
            op: e.op_offset,
            commit_answered: e.commit_answered,
        }
    }

    /// Applies the saved progress to an entry rebuilt from its half message.
    pub(crate) fn restore(&self, e: &mut Entry, current_store_ms: i64) {
        e.current = Location {
            half_offset: self.cq,
            phys_offset: self.cp,
            store_ms: current_store_ms,
        };
        e.checks = self.checks;
        e.last_check_ms = self.last_check;
        e.op_offset = self.op;
        if self.armed != e.armed_ms {
            // Re-armed: the immunity applied to the first arming only.
            e.armed_ms = self.armed;
            e.first_check_ms = None;
        }
        if self.parked {
            e.state = TxnState::Parked;
        }
        e.commit_answered |= self.commit_answered;
    }
}

/// Reads the checkpoint; `None` when missing, unreadable or of another version (logged: the
/// caller rescans everything).
pub(crate) fn load(dir: &Path) -> Option<CheckpointData> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "transaction checkpoint unreadable; rescanning the half and op queues");
            return None;
        }
    };
    match serde_json::from_slice::<CheckpointData>(&bytes) {
        Ok(cp) if cp.version == VERSION => Some(cp),
        Ok(cp) => {
            tracing::warn!(path = %path.display(), version = cp.version, "transaction checkpoint of another version; rescanning");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "transaction checkpoint does not parse; rescanning");
            None
        }
    }
}

/// Writes the checkpoint atomically. Blocking: call from a blocking thread.
pub(crate) fn store(dir: &Path, data: &CheckpointData) -> Result<(), TxnError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| TxnError::Checkpoint(format!("create {}: {e}", dir.display())))?;
    let bytes = serde_json::to_vec(data).map_err(|e| TxnError::Checkpoint(e.to_string()))?;
    sluice_store::write_atomic(&dir.join(FILE), &bytes)
        .map_err(|e| TxnError::Checkpoint(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_none());
        let cp = CheckpointData {
            version: VERSION,
            half_next: 10,
            op_next: 4,
            live: vec![LiveEntry {
                q: 3,
                p: 300,
                cq: 3,
                cp: 300,
                checks: 2,
                last_check: Some(5),
                armed: 1,
                parked: false,
                commit_pending: true,
                op: Some(7),
                commit_answered: true,
            }],
        };
        store(dir.path(), &cp).unwrap();
        assert_eq!(load(dir.path()), Some(cp));
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert!(load(dir.path()).is_none());
        std::fs::write(
            dir.path().join(FILE),
            br#"{"version":99,"half_next":0,"op_next":0,"live":[]}"#,
        )
        .unwrap();
        assert!(load(dir.path()).is_none());
    }
}
