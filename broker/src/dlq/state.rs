//! What replay keeps on disk, under `<data>/config/dlq/`:
//! - `tasks/<id>.json`: each task's status and progress, replaced atomically
//!   (`sluice_store::write_atomic`); running tasks resume from it at start.
//! - `ledger/<group>`: DLQ queue offsets already replayed, one per line, appended and synced
//!   after the replayed copy is durable. A torn last line (crash) is ignored, and cut before
//!   the next append. Lines of letters retention deleted (below the DLQ queue's first offset:
//!   never listed or replayed again) are dropped by rewriting the file atomically once it
//!   holds over twice the live lines (and at least `COMPACT_SLACK` more).
//! - `audit.log`: one JSON line per task event (started, resumed, completed, cancelled,
//!   failed), appended and synced. Once the next line would take it past
//!   `audit_log_max_bytes` it is renamed to `audit.log.1` (replacing the one before) and a
//!   new one is started, so the history kept is bounded (between one and two caps' worth).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::replay::{ReplayState, ReplayStatus};
use super::DlqError;

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When (epoch ms).
    pub ts_ms: i64,
    /// `started`, `resumed`, `completed`, `cancelled`, `failed`.
    pub event: String,
    /// The task's status at that moment.
    pub task: ReplayStatus,
}

/// Dead lines a ledger file may hold beyond its live ones before it is rewritten.
#[cfg(not(test))]
const COMPACT_SLACK: u64 = 4096;
#[cfg(test)]
const COMPACT_SLACK: u64 = 8;

/// Replayed DLQ offsets of one group.
#[derive(Debug)]
pub(crate) struct Ledger {
    path: PathBuf,
    done: Mutex<BTreeSet<u64>>,
    /// Whole lines in the file (live and dead).
    lines: AtomicU64,
    /// Lines the last compaction kept: the next waits until the file has grown past twice
    /// that too, so lines kept for running tasks are not rewritten at every record.
    kept: AtomicU64,
    /// Held while a line is appended and synced, so `done` is never held across an `fsync`:
    /// `contains` and `count_in` are asked from async code (a replay's scan, `/metrics`).
    writing: Mutex<()>,
}

impl Ledger {
    fn load(path: PathBuf) -> Result<Self, DlqError> {
        // Cut once here, before any append of this run (see `cut_torn_line`).
        cut_torn_line(&path).map_err(|e| state_err("repair the torn last line of", &path, e))?;
        let (done, lines) = match std::fs::read_to_string(&path) {
            Ok(text) => (
                whole_lines(&text).map(|(offset, _)| offset).collect(),
                whole_lines(&text).count() as u64,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (BTreeSet::new(), 0),
            Err(e) => return Err(state_err("read", &path, e)),
        };
        Ok(Self {
            path,
            done: Mutex::new(done),
            lines: AtomicU64::new(lines),
            kept: AtomicU64::new(0),
            writing: Mutex::new(()),
        })
    }

    /// True when `offset` was replayed.
    pub(crate) fn contains(&self, offset: u64) -> bool {
        self.done.lock().contains(&offset)
    }

    /// Replayed offsets within `[min, max)`. Offsets below `min` (their letters deleted by
    /// retention, never listed again) are dropped from memory, so the usual case, every
    /// offset in range, is answered without walking the set (each `/metrics` scrape asks).
    pub(crate) fn count_in(&self, min: u64, max: u64) -> u64 {
        let mut done = self.done.lock();
        if done.first().is_some_and(|first| *first < min) {
            *done = done.split_off(&min);
        }
        match done.last() {
            Some(last) if *last >= max => done.range(min..max).count() as u64,
            _ => done.len() as u64,
        }
    }

    /// Records `offset` durably, as replayed by `task`; `floor` is the DLQ queue's first
    /// offset now (lines below it are dead, see the module docs). A compaction keeps the lines
    /// of the tasks `running` names (asked only then): one resumed after a crash counts its
    /// lines past its saved progress, retention or not. Blocking.
    pub(crate) fn record(
        &self,
        offset: u64,
        task: &str,
        floor: u64,
        running: impl FnOnce() -> HashSet<String>,
    ) -> Result<(), DlqError> {
        let _writing = self.writing.lock();
        if self.contains(offset) {
            return Ok(());
        }
        append_line(&self.path, &format!("{offset} {task}\n"))?;
        let live = {
            let mut done = self.done.lock();
            done.insert(offset);
            if done.first().is_some_and(|first| *first < floor) {
                *done = done.split_off(&floor);
            }
            done.len() as u64
        };
        let lines = self.lines.fetch_add(1, Ordering::Relaxed) + 1;
        let kept = self.kept.load(Ordering::Relaxed);
        if lines > 2 * live.max(kept) + COMPACT_SLACK {
            // Not fatal: the ledger stays right, only longer, and the next append tries again.
            if let Err(e) = self.compact(floor, &running()) {
                tracing::warn!(path = %self.path.display(), error = %e, "replay ledger not compacted");
            }
        }
        Ok(())
    }

    /// Rewrites the file (atomically) without the lines below `floor`, except those of the
    /// tasks in `keep`. Called with `writing` held.
    fn compact(&self, floor: u64, keep: &HashSet<String>) -> Result<(), DlqError> {
        let text =
            std::fs::read_to_string(&self.path).map_err(|e| state_err("read", &self.path, e))?;
        let kept: String = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .filter(|l| {
                let mut words = l.split_whitespace();
                let live = words
                    .next()
                    .and_then(|w| w.parse::<u64>().ok())
                    .is_some_and(|offset| offset >= floor);
                live || words.next().is_some_and(|task| keep.contains(task))
            })
            .collect();
        let count = kept.lines().count() as u64;
        sluice_store::write_atomic(&self.path, kept.as_bytes())
            .map_err(|e| state_err("rewrite", &self.path, e))?;
        tracing::info!(path = %self.path.display(), before = self.lines.load(Ordering::Relaxed), after = count, "replay ledger compacted");
        self.lines.store(count, Ordering::Relaxed);
        self.kept.store(count, Ordering::Relaxed);
        Ok(())
    }

    /// The offsets from `from` on that `task` recorded. A task resumed after a crash reads
    /// these: its saved progress (written every half second) can be older than its last
    /// copies, and those must count toward its `max` as replayed, not as skipped, or the
    /// task would copy up to `max` more. Blocking (reads the file).
    pub(crate) fn recorded_by(&self, task: &str, from: u64) -> Result<BTreeSet<u64>, DlqError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(state_err("read", &self.path, e)),
        };
        Ok(whole_lines(&text)
            .filter(|(offset, by)| *offset >= from && *by == Some(task))
            .map(|(offset, _)| offset)
            .collect())
    }
}

/// The ledger's whole lines as (offset, task). Lines written before tasks were recorded hold
/// the offset alone; a torn last line (no newline) is left out.
fn whole_lines(text: &str) -> impl Iterator<Item = (u64, Option<&str>)> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let offset = words.next()?.parse().ok()?;
            Some((offset, words.next()))
        })
}

/// A task known to this broker.
pub(crate) struct TaskEntry {
    pub(crate) status: ReplayStatus,
    pub(crate) cancel: Arc<CancelFlag>,
}

/// Set by [`DlqState::cancel`]; the runner checks it between messages and while waiting.
#[derive(Debug, Default)]
pub(crate) struct CancelFlag {
    set: AtomicBool,
    notify: Notify,
}

impl CancelFlag {
    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Resolves once the task is cancelled, also when that happened before this was called:
    /// the wake-up is registered before the flag is checked, so none is lost in between.
    pub(crate) async fn cancelled(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_set() {
            return;
        }
        notified.await;
    }

    fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// The DLQ state of one broker.
pub(crate) struct DlqState {
    dir: PathBuf,
    /// Finished tasks kept; the oldest beyond it are forgotten ([`Self::prune`]).
    kept: usize,
    tasks: Mutex<BTreeMap<String, TaskEntry>>,
    ledgers: Mutex<HashMap<String, Arc<Ledger>>>,
    runners: Mutex<Vec<JoinHandle<()>>>,
    audit_lock: Mutex<()>,
    /// Size past which `audit.log` is rotated (see the module docs).
    audit_max: u64,
    seq: AtomicU64,
}

impl DlqState {
    pub(crate) fn new(data_dir: &Path, kept: usize, audit_max: u64) -> Self {
        Self {
            dir: crate::state_file::config_dir(data_dir).join("dlq"),
            kept,
            tasks: Mutex::new(BTreeMap::new()),
            ledgers: Mutex::new(HashMap::new()),
            runners: Mutex::new(Vec::new()),
            audit_lock: Mutex::new(()),
            audit_max,
            seq: AtomicU64::new(0),
        }
    }

    /// A new task id, unique within this data folder.
    pub(crate) fn next_id(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("replay-{}-{n}", sluice_store::now_ms())
    }

    /// The ledger of `group`, loaded on first use.
    pub(crate) fn ledger(&self, group: &str) -> Result<Arc<Ledger>, DlqError> {
        let mut ledgers = self.ledgers.lock();
        if let Some(l) = ledgers.get(group) {
            return Ok(Arc::clone(l));
        }
        let l = Arc::new(Ledger::load(self.dir.join("ledger").join(group))?);
        ledgers.insert(group.to_owned(), Arc::clone(&l));
        Ok(l)
    }

    /// Loads every group's ledger a previous run left (called once at broker start). Loaded
    /// on first use instead, the first `/metrics` scrape or group view after a start read and
    /// parsed every group's file on an async worker, under the lock replays take.
    pub(crate) fn load_ledgers(&self) {
        let Ok(files) = std::fs::read_dir(self.dir.join("ledger")) else {
            return; // none yet
        };
        for name in files
            .flatten()
            .filter_map(|f| f.file_name().into_string().ok())
        {
            if let Err(e) = self.ledger(&name) {
                tracing::warn!(group = %name, error = %e, "dead-letter ledger not loaded; retried on first use");
            }
        }
    }

    /// Registers a task; `None` when the id is known already.
    pub(crate) fn insert(&self, status: ReplayStatus) -> Option<Arc<CancelFlag>> {
        let mut tasks = self.tasks.lock();
        if tasks.contains_key(&status.id) {
            return None;
        }
        Some(register(&mut tasks, status))
    }

    /// Registers a new task unless its group already has a running one. The check and the
    /// registration share one lock: two starts for one group arriving together must not both
    /// pass the check while the first is still saving its file, or both would run and copy
    /// every dead letter twice. Undo with [`Self::forget`] when the task cannot be saved.
    pub(crate) fn reserve(&self, status: ReplayStatus) -> Result<Arc<CancelFlag>, DlqError> {
        let mut tasks = self.tasks.lock();
        if let Some(id) = running_of(&tasks, &status.group) {
            return Err(DlqError::Busy(id));
        }
        if tasks.contains_key(&status.id) {
            return Err(DlqError::State(format!("task id {} reused", status.id)));
        }
        Ok(register(&mut tasks, status))
    }

    /// Drops a task [`Self::reserve`] registered but that never started.
    pub(crate) fn forget(&self, id: &str) {
        self.tasks.lock().remove(id);
    }

    /// Forgets a task that never started and removes its file, if one was written: left on
    /// disk as running, it was resumed at the next start next to any task started instead.
    /// Blocking.
    pub(crate) fn discard(&self, id: &str) {
        self.forget(id);
        // Durably, or a power cut could bring the "running" file back.
        if let Err(e) = sluice_store::remove_synced(&self.task_path(id)) {
            tracing::error!(task = id, error = %e, "cannot remove the file of a replay task that did not start");
        }
    }

    /// Forgets the oldest finished tasks beyond `kept` and removes their files, so a script
    /// that replays one message at a time cannot grow memory, the task folder and the
    /// listing without bound. Their audit lines stay. Blocking.
    pub(crate) fn prune(&self) {
        let gone = {
            let mut tasks = self.tasks.lock();
            let mut finished: Vec<(i64, String)> = tasks
                .values()
                .filter(|t| t.status.state != ReplayState::Running)
                .map(|t| (t.status.created_ms, t.status.id.clone()))
                .collect();
            let excess = finished.len().saturating_sub(self.kept);
            finished.sort_unstable();
            finished.truncate(excess);
            for (_, id) in &finished {
                tasks.remove(id);
            }
            finished
        };
        for (_, id) in gone {
            // Not synced: a file that comes back after a power cut is pruned again.
            if let Err(e) = std::fs::remove_file(self.task_path(&id)) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(task = %id, error = %e, "cannot remove the file of a forgotten replay task");
                }
            }
        }
    }

    pub(crate) fn status(&self, id: &str) -> Option<ReplayStatus> {
        self.tasks.lock().get(id).map(|t| t.status.clone())
    }

    pub(crate) fn all_statuses(&self) -> Vec<ReplayStatus> {
        let mut v: Vec<_> = self
            .tasks
            .lock()
            .values()
            .map(|t| t.status.clone())
            .collect();
        v.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
        v
    }

    /// Updates the in-memory status (what `status` answers).
    pub(crate) fn update(&self, status: &ReplayStatus) {
        if let Some(t) = self.tasks.lock().get_mut(&status.id) {
            t.status = status.clone();
        }
    }

    pub(crate) fn cancel(&self, id: &str) -> Result<ReplayStatus, DlqError> {
        let tasks = self.tasks.lock();
        let t = tasks
            .get(id)
            .ok_or_else(|| DlqError::NoSuchTask(id.to_owned()))?;
        t.cancel.set();
        Ok(t.status.clone())
    }

    pub(crate) fn add_runner(&self, h: JoinHandle<()>) {
        let mut r = self.runners.lock();
        r.retain(|h| !h.is_finished());
        r.push(h);
    }

    /// Waits for every runner (they stop on the broker's shutdown signal).
    pub(crate) async fn join_runners(&self) {
        let runners: Vec<_> = std::mem::take(&mut *self.runners.lock());
        for h in runners {
            let _ = h.await;
        }
    }

    fn task_path(&self, id: &str) -> PathBuf {
        self.dir.join("tasks").join(format!("{id}.json"))
    }

    /// Writes a task's file atomically. Blocking.
    pub(crate) fn persist(&self, status: &ReplayStatus) -> Result<(), DlqError> {
        let bytes = serde_json::to_vec_pretty(status)
            .map_err(|e| DlqError::State(format!("encode task {}: {e}", status.id)))?;
        crate::state_file::store(&self.task_path(&status.id), &bytes)
            .map_err(|e| DlqError::State(e.to_string()))
    }

    /// Every task file. Blocking. An unreadable file is logged and skipped (its DLQ messages
    /// stay in the DLQ: nothing is lost by not resuming it).
    pub(crate) fn load_tasks(&self) -> Vec<ReplayStatus> {
        let dir = self.dir.join("tasks");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<ReplayStatus>(&b).map_err(|e| e.to_string()))
            {
                Ok(s) => out.push(s),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "unreadable replay task file skipped")
                }
            }
        }
        out
    }

    /// Appends one audit line and syncs it. Blocking.
    pub(crate) fn audit(&self, event: &str, task: &ReplayStatus) -> Result<(), DlqError> {
        let rec = AuditRecord {
            ts_ms: sluice_store::now_ms(),
            event: event.to_owned(),
            task: task.clone(),
        };
        let mut line = serde_json::to_string(&rec)
            .map_err(|e| DlqError::State(format!("encode audit record: {e}")))?;
        line.push('\n');
        let _g = self.audit_lock.lock();
        let path = self.dir.join("audit.log");
        // The audit log is never loaded: its torn last line is cut here (events are rare).
        cut_torn_line(&path).map_err(|e| state_err("repair the torn last line of", &path, e))?;
        self.rotate_audit(&path, line.len() as u64)?;
        append_line(&path, &line)
    }

    /// Renames a full `audit.log` to `audit.log.1` before a line that would take it past
    /// `audit_max`: a script replaying one letter at a time adds lines for ever. A file
    /// already empty is never rotated, so one line larger than the cap is still written.
    fn rotate_audit(&self, path: &Path, adding: u64) -> Result<(), DlqError> {
        let len = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(state_err("inspect", path, e)),
        };
        if len == 0 || len.saturating_add(adding) <= self.audit_max {
            return Ok(());
        }
        let old = path.with_extension("log.1");
        std::fs::rename(path, &old).map_err(|e| state_err("rotate", path, e))?;
        // Synced, or a power cut could bring the full file back under the new lines' name.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| state_err("sync the folder of", path, e))?;
        tracing::info!(path = %old.display(), bytes = len, "DLQ audit log rotated");
        Ok(())
    }

    /// The audit lines kept, oldest first: the rotated file's, then the current one's.
    pub(crate) fn read_audit(&self) -> Result<Vec<AuditRecord>, DlqError> {
        let path = self.dir.join("audit.log");
        let mut out = Vec::new();
        for p in [path.with_extension("log.1"), path] {
            let text = match std::fs::read_to_string(&p) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(state_err("read", &p, e)),
            };
            out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        }
        Ok(out)
    }
}

/// The running task of `group` among `tasks`, if any.
/// Adds a task (its id checked unused by the caller) with a fresh cancel flag.
fn register(tasks: &mut BTreeMap<String, TaskEntry>, status: ReplayStatus) -> Arc<CancelFlag> {
    let cancel = Arc::new(CancelFlag::default());
    tasks.insert(
        status.id.clone(),
        TaskEntry {
            status,
            cancel: Arc::clone(&cancel),
        },
    );
    cancel
}

fn running_of(tasks: &BTreeMap<String, TaskEntry>, group: &str) -> Option<String> {
    tasks
        .values()
        .find(|t| t.status.group == group && t.status.state == ReplayState::Running)
        .map(|t| t.status.id.clone())
}

fn append_line(path: &Path, line: &str) -> Result<(), DlqError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| state_err("create folder for", path, e))?;
    }
    sluice_store::append_synced(path, line.as_bytes()).map_err(|e| state_err("append to", path, e))
}

/// Cuts a last line without its newline (a write torn by a crash or power cut) before the next
/// append: joined to it, a torn `12` and a new `13` read back as offset 1213, replayed although
/// it never was. One byte read; the file is read whole only to repair it. A failed append of
/// this run is cut back by `append_synced` itself.
fn cut_torn_line(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut last = [0u8; 1];
    if len == 0 || (f.read_exact_at(&mut last, len - 1).is_ok() && last[0] == b'\n') {
        return Ok(());
    }
    let bytes = std::fs::read(path)?;
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    tracing::warn!(path = %path.display(), cut = bytes.len() - keep, "torn last line cut before appending");
    sluice_store::truncate_synced(path, keep as u64)
}

fn state_err(op: &str, path: &Path, e: impl std::fmt::Display) -> DlqError {
    DlqError::State(format!("{op} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> ReplayStatus {
        ReplayStatus {
            id: id.to_owned(),
            group: "g".to_owned(),
            filter: Default::default(),
            target_topic: None,
            rate_per_sec: 1,
            dry_run: false,
            max_messages: None,
            requested_by: None,
            state: ReplayState::Completed,
            next_offset: 0,
            end_offset: 0,
            matched: 0,
            replayed: 0,
            skipped: 0,
            failed: 0,
            error: None,
            created_ms: 0,
            updated_ms: 0,
            resumes: 0,
        }
    }

    /// A script replaying one letter at a time grew `audit.log` for ever: past the cap it
    /// is rotated to `audit.log.1` (the one before dropped), and reads see both, in order.
    #[test]
    fn the_audit_log_is_rotated_past_its_cap_and_read_across_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let one = serde_json::to_string(&AuditRecord {
            ts_ms: sluice_store::now_ms(),
            event: "completed".into(),
            task: task("replay-00"),
        })
        .unwrap()
        .len() as u64
            + 1;
        // Room for three lines per file.
        let state = DlqState::new(dir.path(), 10, one * 3 + one / 2);
        for i in 0..10 {
            state
                .audit("completed", &task(&format!("replay-{i:02}")))
                .unwrap();
        }
        let log = state.dir.join("audit.log");
        let current = std::fs::metadata(&log).unwrap().len();
        let rotated = std::fs::metadata(log.with_extension("log.1"))
            .unwrap()
            .len();
        assert!(
            current <= one * 3 && rotated <= one * 3,
            "{current} / {rotated}"
        );
        let ids: Vec<String> = state
            .read_audit()
            .unwrap()
            .into_iter()
            .map(|a| a.task.id)
            .collect();
        // Files of three lines: [0..2] and [3..5] are gone, [6..8] were rotated last.
        assert_eq!(ids, ["replay-06", "replay-07", "replay-08", "replay-09"]);
    }

    /// A power cut left `12` without its newline; the next record used to join it, and the
    /// reloaded ledger then held 1213 (never replayed) and lost both 12 and 13.
    #[test]
    fn a_record_after_a_torn_line_is_not_joined_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger").join("g");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"7\n12").unwrap();
        let ledger = Ledger::load(path.clone()).unwrap();
        assert!(ledger.contains(7) && !ledger.contains(12));
        ledger.record(13, "t", 0, HashSet::new).unwrap();
        let again = Ledger::load(path.clone()).unwrap();
        assert!(again.contains(7) && again.contains(13));
        assert!(!again.contains(1213) && !again.contains(12));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "7\n13 t\n");
    }

    /// Loaded on first use, a ledger was read (and a torn line cut) by whichever call came
    /// first: `/metrics` or a group view, on an async worker.
    #[test]
    fn every_ledger_a_previous_run_left_is_loaded_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let first = DlqState::new(dir.path(), 10, 1 << 20);
        first
            .ledger("g1")
            .unwrap()
            .record(4, "t", 0, HashSet::new)
            .unwrap();
        first
            .ledger("g2")
            .unwrap()
            .record(9, "t", 0, HashSet::new)
            .unwrap();
        let again = DlqState::new(dir.path(), 10, 1 << 20);
        again.load_ledgers();
        let loaded = again.ledgers.lock();
        assert_eq!(loaded.len(), 2);
        assert!(loaded["g1"].contains(4) && loaded["g2"].contains(9));
    }

    #[test]
    fn a_task_finds_what_it_recorded_from_an_offset_on_and_old_lines_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g");
        std::fs::write(&path, b"1\n").unwrap(); // written before lines named their task
        let ledger = Ledger::load(path.clone()).unwrap();
        for (offset, task) in [(2, "a"), (3, "b"), (4, "a"), (6, "a")] {
            ledger.record(offset, task, 0, HashSet::new).unwrap();
        }
        let again = Ledger::load(path).unwrap();
        assert!([1, 2, 3, 4, 6].iter().all(|o| again.contains(*o)));
        let mine: Vec<u64> = again.recorded_by("a", 3).unwrap().into_iter().collect();
        assert_eq!(mine, [4, 6]);
        assert!(again.recorded_by("c", 0).unwrap().is_empty());
    }

    #[test]
    fn replayed_counts_cover_only_letters_still_retained() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::load(dir.path().join("g")).unwrap();
        for offset in [1, 2, 5, 8, 9] {
            ledger.record(offset, "t", 0, HashSet::new).unwrap();
        }
        assert_eq!(ledger.count_in(0, 10), 5);
        assert_eq!(ledger.count_in(0, 9), 4, "9 is past the end");
        assert_eq!(
            ledger.count_in(3, 10),
            3,
            "1 and 2 were deleted by retention"
        );
        assert_eq!(ledger.count_in(3, 10), 3);
        assert_eq!(
            ledger.done.lock().len(),
            3,
            "offsets below the start left memory"
        );
    }

    /// Lines of letters retention deleted are dropped once the file holds over twice the live
    /// lines; what is live, and what each task recorded, reads back the same.
    #[test]
    fn the_ledger_drops_lines_below_the_queue_floor_once_they_outnumber_the_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g");
        let ledger = Ledger::load(path.clone()).unwrap();
        for offset in 0..20 {
            ledger.record(offset, "old", 0, HashSet::new).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 20);
        // Retention deleted letters 0..18: the floor is 18 from now on.
        for offset in 20..24 {
            ledger.record(offset, "new", 18, HashSet::new).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "18 old\n19 old\n20 new\n21 new\n22 new\n23 new\n");
        let again = Ledger::load(path).unwrap();
        assert!((18..24).all(|o| again.contains(o)));
        assert!(!again.contains(17));
        let mine: Vec<u64> = again.recorded_by("new", 0).unwrap().into_iter().collect();
        assert_eq!(mine, [20, 21, 22, 23]);
        again.record(24, "new", 18, HashSet::new).unwrap();
        assert_eq!(again.lines.load(Ordering::Relaxed), 7);
        // A task still running keeps its lines below the floor (a resume counts them).
        for offset in 25..40 {
            again
                .record(offset, "new", 30, || HashSet::from(["new".to_owned()]))
                .unwrap();
        }
        let kept = again.recorded_by("new", 20).unwrap();
        assert_eq!(kept.len(), 20, "every line of the running task: 20..40");
        assert!(!again.recorded_by("old", 0).unwrap().contains(&18));
    }
}
