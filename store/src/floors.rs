//! Queue floors: per queue, the offset below which nothing is served although the records
//! are still in the commit log.
//!
//! A deleted topic's messages stay until retention takes their segments (the log is shared,
//! and only whole segments go), and a topic of the same name created again continues the
//! same queues. Without a floor, a consumer group with no committed offset there (every group,
//! after the delete) read the old messages again. [`crate::Store::retire_queues`] takes each
//! queue's next offset as its floor, in the appender's order, so every message accepted
//! before it is hidden from queue reads, and every one after it is served. Look-ups by id or
//! key read the log, not the queues, and still find the old records until retention.
//!
//! The floors are kept in `<data_dir>/queue-floors`, replaced atomically at each change, one
//! line per queue (`<queue id> <floor> <topic>`; topic names hold no spaces), and applied at
//! open. There a floor is lowered to its queue's next offset (records lost with an unclean
//! stop were never acknowledged, and the next append must be served), and dropped once it
//! hides nothing and the queue is empty there, or retention deleted records past it.
//! The file is never removed (with no floors left it holds its header only), and checkpoints
//! record that it exists, so an open that finds it gone refuses rather than serve the
//! deleted topics' messages again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::checkpoint::write_atomic;
use crate::error::{Result, StoreError};

/// The file's first line.
const HEADER: &str = "sluice queue floors 1";
/// How an operator drops every floor on purpose (the file is never removed).
const EMPTY_IT: &str = "to serve those messages again on purpose, make it a file holding \
                        the single line `sluice queue floors 1`";

/// Floors by (topic, queue id).
pub(crate) type FloorMap = BTreeMap<(String, i32), u64>;

/// What [`Floors::raise`] did.
#[derive(Debug)]
pub(crate) struct Raised {
    /// The new floors hold (saved, or in the file although its folder's sync failed).
    pub(crate) in_force: bool,
    /// Why the save failed, if it did.
    pub(crate) error: Option<StoreError>,
}

/// The floors and their file.
#[derive(Debug)]
pub(crate) struct Floors {
    path: PathBuf,
    /// Held while the file is replaced, so two changes are saved in their order; readers of
    /// `map` never wait for a save (the dispatcher asks for a floor while it holds the queue
    /// table's lock, which every read takes).
    saving: Mutex<()>,
    map: Mutex<FloorMap>,
    /// The file exists (found at open, or written since). It is never removed, so the
    /// checkpoint can say so ([`crate::checkpoint::Checkpoint::floors_kept`]) and an open
    /// can tell a removed file from a folder that never had one.
    kept: AtomicBool,
}

impl Floors {
    /// Reads `<data_dir>/queue-floors` (none: no floors).
    pub(crate) fn load(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("queue-floors");
        let unreadable = |why: String| {
            StoreError::Recovery(format!(
                "{} is unreadable ({why}); it hides deleted topics' messages, so it is not \
                 ignored: restore it from a backup, or {EMPTY_IT}",
                path.display()
            ))
        };
        let (map, kept) = match std::fs::read_to_string(&path) {
            Ok(text) => (parse(&text).map_err(unreadable)?, true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (FloorMap::new(), false),
            Err(e) => return Err(unreadable(e.to_string())),
        };
        Ok(Self {
            path,
            saving: Mutex::new(()),
            map: Mutex::new(map),
            kept: AtomicBool::new(kept),
        })
    }

    /// Whether the file exists (see `kept`).
    pub(crate) fn kept(&self) -> bool {
        self.kept.load(Ordering::Acquire)
    }

    /// At open, given the checkpoint's word that the folder keeps a floors file: refuses
    /// when it is gone. Served again, the deleted topics' messages would reach every group
    /// that has no offset past them (all of them, after a delete), with no sign of why.
    pub(crate) fn check_kept(&self, checkpoint_says_kept: bool) -> Result<()> {
        if !checkpoint_says_kept || self.kept() {
            return Ok(());
        }
        Err(StoreError::Recovery(format!(
            "{} is missing, but the checkpoint says this folder keeps one: it hides the \
             messages of deleted topics. Restore it from this folder's backup, or {EMPTY_IT}",
            self.path.display()
        )))
    }

    /// The floor of a queue (0: none).
    pub(crate) fn get(&self, topic: &str, queue_id: i32) -> u64 {
        self.map
            .lock()
            .get(&(topic.to_string(), queue_id))
            .copied()
            .unwrap_or(0)
    }

    /// Raises the floors of `topic`'s queues to `ends` and saves them. Nothing changes when
    /// the save fails before the new file took the old one's place; after that (its folder's
    /// sync failed) the new floors are in force, and the error is still reported: the change
    /// may not survive a power cut.
    pub(crate) fn raise(&self, topic: &str, ends: &[(i32, u64)]) -> Raised {
        let _saving = self.saving.lock();
        let mut next = self.map.lock().clone();
        let before = next.clone();
        for &(queue_id, end) in ends.iter().filter(|(_, end)| *end > 0) {
            let slot = next.entry((topic.to_string(), queue_id)).or_insert(0);
            *slot = (*slot).max(end);
        }
        if next == before {
            return Raised {
                in_force: true,
                error: None,
            };
        }
        let text = encode(&next);
        let error = write_atomic(&self.path, text.as_bytes()).err();
        let in_force =
            error.is_none() || std::fs::read_to_string(&self.path).is_ok_and(|now| now == text);
        if in_force {
            *self.map.lock() = next;
            self.kept.store(true, Ordering::Release);
        }
        Raised { in_force, error }
    }

    /// At open, before anything reads or appends: sets each floor to what `settle` makes of
    /// it (`None`: dropped) and saves the file when that changed anything. A floor lowered
    /// but not saved would come back at the next open above messages acknowledged meanwhile,
    /// so a failed save then refuses the open (free space and start again); one that only
    /// drops floors is logged (a dropped floor hid nothing any more).
    pub(crate) fn settle(
        &self,
        mut settle: impl FnMut(&str, i32, u64) -> Option<u64>,
    ) -> Result<()> {
        let _saving = self.saving.lock();
        let before = self.map.lock().clone();
        let next: FloorMap = before
            .iter()
            .filter_map(|((t, q), f)| settle(t, *q, *f).map(|f| ((t.clone(), *q), f)))
            .collect();
        if next == before {
            return Ok(());
        }
        let lowered = next
            .iter()
            .any(|(k, f)| before.get(k).is_some_and(|b| f < b));
        if let Err(e) = write_atomic(&self.path, encode(&next).as_bytes()) {
            if lowered {
                return Err(StoreError::Recovery(format!(
                    "a queue floor in {} must come down to its queue's end (records under it \
                     were lost with an unclean stop) and could not be saved: {e}",
                    self.path.display()
                )));
            }
            tracing::warn!(error = %e, path = %self.path.display(), "saving queue floors without the spent ones failed; tried again at the next open");
        } else {
            self.kept.store(true, Ordering::Release);
        }
        *self.map.lock() = next;
        Ok(())
    }

    /// How many floors there are.
    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Every floor.
    #[cfg(test)]
    pub(crate) fn all(&self) -> FloorMap {
        self.map.lock().clone()
    }
}

fn encode(map: &FloorMap) -> String {
    let mut out = format!("{HEADER}\n");
    for ((topic, queue_id), floor) in map {
        out.push_str(&format!("{queue_id} {floor} {topic}\n"));
    }
    out
}

fn parse(text: &str) -> std::result::Result<FloorMap, String> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!("its first line is not {HEADER:?}"));
    }
    let mut map = FloorMap::new();
    for (n, line) in lines.enumerate() {
        let bad = || format!("line {} is not `<queue id> <floor> <topic>`", n + 2);
        let mut parts = line.splitn(3, ' ');
        let queue_id = parts.next().and_then(|s| s.parse::<i32>().ok());
        let floor = parts.next().and_then(|s| s.parse::<u64>().ok());
        let topic = parts.next().filter(|t| crate::validate_topic(t).is_ok());
        match (queue_id, floor, topic) {
            (Some(q), Some(f), Some(t)) if q >= 0 => map.insert((t.to_string(), q), f),
            _ => return Err(bad()),
        };
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_survive_a_reload_and_only_rise() {
        let dir = tempfile::tempdir().unwrap();
        let floors = Floors::load(dir.path()).unwrap();
        assert!(floors.raise("T", &[(0, 5), (1, 0), (2, 7)]).error.is_none());
        assert!(floors.raise("T", &[(0, 3)]).error.is_none());
        let again = Floors::load(dir.path()).unwrap();
        assert_eq!(again.get("T", 0), 5);
        assert_eq!(again.get("T", 1), 0, "a zero floor is not kept");
        assert_eq!(again.get("T", 2), 7);
        assert_eq!(again.all().len(), 2);
    }

    #[test]
    fn settling_drops_and_lowers_and_saves() {
        let dir = tempfile::tempdir().unwrap();
        let floors = Floors::load(dir.path()).unwrap();
        assert!(floors.raise("A", &[(0, 10), (1, 10)]).error.is_none());
        floors.settle(|_, q, f| (q == 0).then_some(f - 4)).unwrap();
        let again = Floors::load(dir.path()).unwrap();
        assert_eq!(again.all(), FloorMap::from([(("A".to_string(), 0), 6)]));
    }

    #[test]
    fn a_damaged_file_stops_the_open_instead_of_serving_hidden_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue-floors");
        for text in [
            "",
            "junk\n",
            "sluice queue floors 1\n0 x T\n",
            "sluice queue floors 1\n0 5 a b\n",
        ] {
            std::fs::write(&path, text).unwrap();
            let e = Floors::load(dir.path()).unwrap_err().to_string();
            assert!(
                e.contains("queue-floors") && e.contains("restore it"),
                "{e}"
            );
        }
        // Bytes that are not text, and a folder in its place: the same advice.
        std::fs::write(&path, b"sluice queue floors 1\n0 5 T\n\xff\xfe\n").unwrap();
        let e = Floors::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("restore it"), "{e}");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let e = Floors::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("restore it"), "{e}");
    }
}
