//! Crash points: named steps inside multi-file operations (replacing a file atomically, rolling
//! a commit-log segment or a consume-queue file, a timer checkpoint) where a test can make the
//! process die on the spot.
//!
//! `SLUICE_CRASH_POINT=<name>[@<file>][#<n>]` aborts the process the `n`-th time (default 1)
//! it reaches the point `<name>`, counting only visits whose file path ends with `<file>` when
//! one is given. `abort` runs no destructors and flushes nothing, which is as abrupt as
//! SIGKILL for everything on disk. The server refuses a name that is not in [`POINTS`], so a
//! renamed point cannot silently stop being tested.
//!
//! Unset, as in production, a crash point costs one read of an initialised `OnceLock`. The
//! end-to-end test (`server/tests/it/crash_points.rs`) visits every point, restarts the real
//! process and checks that the state is the old or the new one, never a mix, and that no
//! temporary file is left behind.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms one crash point.
pub const VAR: &str = "SLUICE_CRASH_POINT";

/// `write_atomic`: the temporary file is written but not synced.
pub const ATOMIC_TMP_WRITTEN: &str = "atomic.tmp_written";
/// `write_atomic`: the temporary file is synced, not yet renamed over the target.
pub const ATOMIC_TMP_SYNCED: &str = "atomic.tmp_synced";
/// `write_atomic`: renamed over the target, the folder not yet synced.
pub const ATOMIC_RENAMED: &str = "atomic.renamed";
/// Segment roll: the end marker is written into the full segment, the next one not created.
pub const SEGMENT_SEALED: &str = "commitlog.sealed";
/// Segment roll: the next segment exists (and its folder is synced), nothing written to it.
pub const SEGMENT_CREATED: &str = "commitlog.created";
/// Consume-queue roll: the next queue file exists, no entry written to it.
pub const CQ_FILE_CREATED: &str = "consumequeue.created";
/// Timer checkpoint: the new run file is in place, `state.json` does not name it yet.
pub const TIMER_RUN_WRITTEN: &str = "schedule.run_written";
/// Timer checkpoint or compaction: `state.json` is replaced, the runs it no longer names
/// are not deleted yet.
pub const TIMER_STATE_SAVED: &str = "schedule.state_saved";

/// Every crash point, for validation and for the test that visits them all.
pub const POINTS: &[&str] = &[
    ATOMIC_TMP_WRITTEN,
    ATOMIC_TMP_SYNCED,
    ATOMIC_RENAMED,
    SEGMENT_SEALED,
    SEGMENT_CREATED,
    CQ_FILE_CREATED,
    TIMER_RUN_WRITTEN,
    TIMER_STATE_SAVED,
];

/// An armed crash point, parsed from [`VAR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Armed {
    /// One of [`POINTS`].
    pub name: String,
    /// Only visits whose file path ends with this count.
    pub file: Option<String>,
    /// Abort at this visit (1-based).
    pub nth: u64,
}

impl Armed {
    /// Parses `<name>[@<file>][#<n>]`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (rest, nth) = match spec.rsplit_once('#') {
            Some((rest, n)) => match n.parse::<u64>() {
                Ok(n) if n >= 1 => (rest, n),
                _ => return Err(format!("{VAR}: `#{n}` must be a visit number from 1")),
            },
            None => (spec, 1),
        };
        let (name, file) = match rest.split_once('@') {
            Some((name, file)) if !file.is_empty() => (name, Some(file.to_string())),
            Some(_) => return Err(format!("{VAR}: empty file after `@`")),
            None => (rest, None),
        };
        if !POINTS.contains(&name) {
            return Err(format!(
                "{VAR}: unknown crash point {name:?} (known: {})",
                POINTS.join(", ")
            ));
        }
        Ok(Self {
            name: name.to_string(),
            file,
            nth,
        })
    }
}

/// What this process was armed with: `Ok(None)` when [`VAR`] is unset.
pub fn armed() -> Result<Option<Armed>, String> {
    match std::env::var(VAR) {
        Ok(spec) => Armed::parse(&spec).map(Some),
        Err(_) => Ok(None),
    }
}

struct State {
    armed: Armed,
    visits: AtomicU64,
}

static STATE: OnceLock<Option<State>> = OnceLock::new();

fn state() -> Option<&'static State> {
    STATE
        .get_or_init(|| {
            armed().ok().flatten().map(|armed| State {
                armed,
                visits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Marks the step `name` of a multi-file operation (no file involved).
pub fn reach(name: &str) {
    if let Some(s) = state() {
        visit(s, name, None);
    }
}

/// Marks the step `name` of a multi-file operation on `path`.
pub fn reach_file(name: &str, path: &Path) {
    if let Some(s) = state() {
        visit(s, name, Some(path));
    }
}

fn visit(s: &State, name: &str, path: Option<&Path>) {
    if s.armed.name != name {
        return;
    }
    if let Some(want) = &s.armed.file {
        let matches = path.is_some_and(|p| p.to_string_lossy().ends_with(want.as_str()));
        if !matches {
            return;
        }
    }
    if s.visits.fetch_add(1, Ordering::SeqCst) + 1 == s.armed.nth {
        let file = path.map(|p| p.display().to_string()).unwrap_or_default();
        eprintln!("sluice: crash point {name} reached {file} ({VAR}); aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_names_a_point_a_file_and_a_visit() {
        let a = Armed::parse("atomic.renamed@offsets.json#3").unwrap();
        assert_eq!(a.name, ATOMIC_RENAMED);
        assert_eq!(a.file.as_deref(), Some("offsets.json"));
        assert_eq!(a.nth, 3);
        let b = Armed::parse("commitlog.sealed").unwrap();
        assert_eq!((b.file, b.nth), (None, 1));
    }

    #[test]
    fn unknown_points_and_bad_visits_are_refused() {
        assert!(Armed::parse("atomic.renamd")
            .unwrap_err()
            .contains("unknown"));
        assert!(Armed::parse("atomic.renamed#0").is_err());
        assert!(Armed::parse("atomic.renamed#x").is_err());
        assert!(Armed::parse("atomic.renamed@").is_err());
    }
}
