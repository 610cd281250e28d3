//! Damage found in the commit log: ranges that failed verification although valid data follows
//! them. They are never served and never cut away; an operator sees them in `Store::health`.
//!
//! The list is bounded ([`MAX_LISTED`]): a badly damaged disk must not grow memory without
//! limit. Ranges past the bound are still logged, counted (once each while their offsets
//! are remembered, see `MAX_UNLISTED_KNOWN`) and never served; the dispatcher then finds each
//! again by scanning instead of looking it up.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

/// Most damaged ranges kept for lookups and `Store::health` (~200 bytes each).
pub const MAX_LISTED: usize = 10_000;

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

/// Offsets of unlisted ranges remembered, so meeting one again neither counts nor logs it
/// again (8 bytes each, ~2 MiB at most); past this, every encounter counts and logs.
const MAX_UNLISTED_KNOWN: usize = 100_000;

#[derive(Debug, Default)]
struct Ranges {
    /// By commit-log offset.
    listed: BTreeMap<u64, Damage>,
    /// Damage found while the list was full: distinct ranges while [`MAX_UNLISTED_KNOWN`]
    /// are remembered, every encounter after that.
    unlisted: u64,
    /// Offsets of the ranges counted in `unlisted` (see [`MAX_UNLISTED_KNOWN`]).
    unlisted_known: HashSet<u64>,
}

/// Damage found since open.
#[derive(Debug, Default)]
pub(crate) struct DamageLog {
    ranges: Mutex<Ranges>,
}

impl DamageLog {
    pub(crate) fn record(&self, path: &Path, position: u64, offset: u64, len: u64, reason: &str) {
        {
            let mut r = self.ranges.lock();
            if r.listed.contains_key(&offset) || r.unlisted_known.contains(&offset) {
                return;
            }
            if r.listed.len() >= MAX_LISTED {
                r.unlisted += 1;
                if r.unlisted_known.len() < MAX_UNLISTED_KNOWN {
                    r.unlisted_known.insert(offset);
                }
            } else {
                let damage = Damage {
                    path: path.to_path_buf(),
                    position,
                    offset,
                    len,
                    reason: reason.to_string(),
                };
                r.listed.insert(offset, damage);
            }
        }
        tracing::error!(
            segment = %path.display(), position, offset, len, reason,
            "commit-log damage: range quarantined, never served"
        );
    }

    /// End of the listed damaged range containing `offset`, if any.
    pub(crate) fn range_end(&self, offset: u64) -> Option<u64> {
        let r = self.ranges.lock();
        r.listed
            .range(..=offset)
            .next_back()
            .map(|(_, d)| d.offset + d.len)
            .filter(|end| offset < *end)
    }

    /// The listed ranges, by offset.
    pub(crate) fn all(&self) -> Vec<Damage> {
        self.ranges.lock().listed.values().cloned().collect()
    }

    /// Damaged ranges found: the listed ones plus those met while the list was full.
    pub(crate) fn count(&self) -> u64 {
        let r = self.ranges.lock();
        (r.listed.len() as u64).saturating_add(r.unlisted)
    }

    /// Ranges found but not listed (the list was full).
    pub(crate) fn unlisted(&self) -> u64 {
        self.ranges.lock().unlisted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_range_is_found_from_any_offset_inside_it() {
        let log = DamageLog::default();
        log.record(Path::new("s"), 100, 1_100, 50, "bad crc");
        log.record(Path::new("s"), 10, 1_010, 20, "bad crc");
        assert_eq!(log.range_end(1_010), Some(1_030));
        assert_eq!(log.range_end(1_029), Some(1_030));
        assert_eq!(log.range_end(1_030), None);
        assert_eq!(log.range_end(1_149), Some(1_150));
        assert_eq!(log.range_end(1_000), None);
        let offsets: Vec<u64> = log.all().iter().map(|d| d.offset).collect();
        assert_eq!(offsets, [1_010, 1_100]);
    }

    /// Before, every range found was kept in a list scanned on each lookup: a disk with
    /// millions of damaged ranges grew memory without bound and slowed every lookup.
    #[test]
    fn the_list_stops_at_its_bound_and_counts_the_rest() {
        let log = DamageLog::default();
        for i in 0..(MAX_LISTED as u64 + 5) {
            log.record(Path::new("s"), i * 10, i * 10, 5, "bad crc");
        }
        log.record(Path::new("s"), 0, 0, 5, "seen again");
        let unlisted = MAX_LISTED as u64 * 10 + 10;
        log.record(Path::new("s"), unlisted, unlisted, 5, "read again");
        assert_eq!(log.all().len(), MAX_LISTED);
        assert_eq!(
            log.unlisted(),
            5,
            "a range seen again is not counted twice, listed or not"
        );
        assert_eq!(log.count(), MAX_LISTED as u64 + 5);
        assert_eq!(log.range_end(MAX_LISTED as u64 * 10 + 2), None, "unlisted");
    }
}
