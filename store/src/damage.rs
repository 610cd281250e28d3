//! Damage found in the commit log: ranges that failed verification although valid data follows
//! them. They are never served and never cut away; an operator sees them in `Store::health`.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;

/// One damaged range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub path: PathBuf,
    /// Byte position in that file.
    pub position: u64,
    /// Commit-log offset of the range.
    pub offset: u64,
    /// Length of the range in bytes.
    pub len: u64,
    /// What failed.
    pub reason: String,
}

/// All damage found since open.
#[derive(Debug, Default)]
pub(crate) struct DamageLog {
    ranges: Mutex<Vec<Damage>>,
}

impl DamageLog {
    pub(crate) fn record(&self, path: &Path, position: u64, offset: u64, len: u64, reason: &str) {
        tracing::error!(
            segment = %path.display(), position, offset, len, reason,
            "commit-log damage: range quarantined, never served"
        );
        let mut ranges = self.ranges.lock();
        if !ranges.iter().any(|d| d.offset == offset) {
            ranges.push(Damage {
                path: path.to_path_buf(),
                position,
                offset,
                len,
                reason: reason.to_string(),
            });
        }
    }

    /// End of the damaged range containing `offset`, if any.
    pub(crate) fn range_end(&self, offset: u64) -> Option<u64> {
        self.ranges
            .lock()
            .iter()
            .find(|d| d.offset <= offset && offset < d.offset + d.len)
            .map(|d| d.offset + d.len)
    }

    pub(crate) fn all(&self) -> Vec<Damage> {
        self.ranges.lock().clone()
    }
}
