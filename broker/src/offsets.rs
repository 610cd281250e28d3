//! Consumer offsets (Java's `ConsumerOffsetManager`): `topic@group` → queue id → next offset to
//! consume, saved to `<data_dir>/config/consumerOffset.json` every `offset_flush_interval` and at
//! shutdown. At-least-once: after a crash up to one interval of progress is replayed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
use crate::state_file;

/// The file's shape, as Java writes it (minus `dataVersion`, which nobody reads).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OffsetFile {
    #[serde(default)]
    offset_table: BTreeMap<String, BTreeMap<i32, i64>>,
}

/// Committed offsets of every group.
#[derive(Debug)]
pub(crate) struct OffsetManager {
    path: PathBuf,
    table: Mutex<HashMap<String, BTreeMap<i32, i64>>>,
    dirty: AtomicBool,
    write_lock: Mutex<()>,
    /// Most `topic@group` entries; a commit that would add one more is refused.
    max_entries: usize,
    /// Commits refused for that bound (the log says so at most every 10 s).
    refused: AtomicU64,
    refusals_log: crate::log_every::LogEvery,
}

/// A commit refused because the table holds `[broker] max_consumer_offsets` entries. Every
/// entry is kept in memory, saved whole every few seconds and loaded at each start, and a
/// group that is gone leaves its entries behind, so without a bound group names (a test run's,
/// a deploy's, an invented one's) would grow the table and its file for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "consumer offsets hold their limit of {max} topic@group entries \
     ([broker] max_consumer_offsets); delete a retired group's offsets to make room"
)]
pub(crate) struct OffsetsFull {
    pub(crate) max: usize,
}

fn key(group: &str, topic: &str) -> String {
    format!("{topic}@{group}")
}

/// `(topic, group)` of a `topic@group` key: the first `@` splits it (topic names cannot
/// contain one, group names may).
fn split_key(k: &str) -> Option<(&str, &str)> {
    k.split_once('@')
}

impl OffsetManager {
    /// Loads `consumerOffset.json`, if present.
    pub(crate) fn load(data_dir: &Path, max_entries: usize) -> Result<Self, BrokerError> {
        let path = state_file::config_dir(data_dir).join("consumerOffset.json");
        let saved: Option<OffsetFile> = state_file::load(&path)?;
        // Written at start even when empty (see the broker's `open_state`): a folder always has
        // one after its first start, so a missing file says it was lost.
        let missing = saved.is_none();
        let table: HashMap<_, _> = saved.unwrap_or_default().offset_table.into_iter().collect();
        tracing::info!(path = %path.display(), entries = table.len(), "consumer offsets loaded");
        Ok(Self {
            path,
            table: Mutex::new(table),
            dirty: AtomicBool::new(missing),
            write_lock: Mutex::new(()),
            max_entries,
            refused: AtomicU64::new(0),
            refusals_log: crate::log_every::LogEvery::new(std::time::Duration::from_secs(10)),
        })
    }

    /// The committed offset, if any.
    pub(crate) fn query(&self, group: &str, topic: &str, queue_id: i32) -> Option<i64> {
        self.table
            .lock()
            .get(&key(group, topic))
            .and_then(|q| q.get(&queue_id).copied())
    }

    /// Every (group, topic) with a committed offset, sorted.
    pub(crate) fn group_topics(&self) -> Vec<(String, String)> {
        let mut out = self.pairs(|_, _| true);
        out.sort();
        out
    }

    /// The groups with a committed offset in `topic`.
    pub(crate) fn groups_of(&self, topic: &str) -> Vec<String> {
        self.pairs(|_, t| t == topic)
            .into_iter()
            .map(|(g, _)| g)
            .collect()
    }

    /// The topics where `group` has a committed offset, sorted.
    pub(crate) fn topics_of(&self, group: &str) -> Vec<String> {
        let mut topics: Vec<String> = self
            .pairs(|g, _| g == group)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        // Each (topic, group) key is unique, so no topic comes twice.
        topics.sort();
        topics
    }

    /// The (group, topic) pairs with a committed offset that `keep` accepts, filtered under
    /// the lock so only the matches are copied.
    fn pairs(&self, keep: impl Fn(&str, &str) -> bool) -> Vec<(String, String)> {
        self.table
            .lock()
            .keys()
            .filter_map(|k| split_key(k))
            .filter(|(topic, group)| keep(group, topic))
            .map(|(topic, group)| (group.to_owned(), topic.to_owned()))
            .collect()
    }

    /// Records `offset` as the next offset `group` consumes from the queue.
    /// A negative offset is no position and is ignored, whoever commits it: stored, it was
    /// read back as -1, which clients take for "no offset" (consuming from the last offset,
    /// they skipped the backlog). A commit for a new `topic@group` is refused once the table
    /// holds `max_entries` (logged at most every 10 s); existing entries always move.
    pub(crate) fn commit(
        &self,
        group: &str,
        topic: &str,
        queue_id: i32,
        offset: i64,
    ) -> Result<(), OffsetsFull> {
        if offset < 0 {
            tracing::debug!(
                group,
                topic,
                queue_id,
                offset,
                "negative consumer offset ignored"
            );
            return Ok(());
        }
        let k = key(group, topic);
        let mut t = self.table.lock();
        let full = t.len() >= self.max_entries;
        match t.get_mut(&k) {
            Some(queues) => {
                queues.insert(queue_id, offset);
            }
            None if full => {
                drop(t);
                return Err(self.refuse(group, topic));
            }
            None => {
                t.insert(k, BTreeMap::from([(queue_id, offset)]));
            }
        }
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Makes sure `group` can commit offsets in `topic`: its `topic@group` entry exists
    /// (added empty when there is room), or the bound refuses it. A lease-based receive asks
    /// first, so that it never hands out a message whose acknowledgement could not be kept
    /// (the ack said done, and a restart delivered the message again).
    /// True when the entry was added now (empty: see [`Self::release_empty`]).
    pub(crate) fn reserve(&self, group: &str, topic: &str) -> Result<bool, OffsetsFull> {
        let k = key(group, topic);
        let mut t = self.table.lock();
        if t.contains_key(&k) {
            return Ok(false);
        }
        if t.len() >= self.max_entries {
            drop(t);
            let full = OffsetsFull {
                max: self.max_entries,
            };
            if self.refusals_log.allow("reserve").is_some() {
                tracing::warn!(group, topic, "a receive refused: {full}");
            }
            return Err(full);
        }
        t.insert(k, BTreeMap::new());
        self.dirty.store(true, Ordering::Release);
        Ok(true)
    }

    /// Takes back one reservation that still holds no offset (a receive that could not
    /// reserve its retry topic after its topic).
    pub(crate) fn release_reserved(&self, group: &str, topic: &str) {
        let mut t = self.table.lock();
        let k = key(group, topic);
        if t.get(&k).is_some_and(BTreeMap::is_empty) {
            t.remove(&k);
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Removes the entries of `groups` that hold no offset: the reservations of lease groups
    /// that never committed, once their books are dropped (groups polling an empty topic,
    /// then gone, would otherwise keep two entries each for good). One pass over the table
    /// for a whole sweep's groups.
    pub(crate) fn release_empty_of(&self, groups: &HashSet<String>) -> usize {
        let mut t = self.table.lock();
        let before = t.len();
        t.retain(|k, queues| {
            !(queues.is_empty() && split_key(k).is_some_and(|(_, g)| groups.contains(g)))
        });
        let removed = before - t.len();
        if removed > 0 {
            self.dirty.store(true, Ordering::Release);
        }
        removed
    }

    fn refuse(&self, group: &str, topic: &str) -> OffsetsFull {
        let full = OffsetsFull {
            max: self.max_entries,
        };
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if self.refusals_log.allow("full").is_some() {
            tracing::warn!(group, topic, refused, "{full}");
        }
        full
    }

    /// Commits refused because the table was full, since start.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Forgets every offset of `group` (a retired group); returns how many topics it had.
    pub(crate) fn remove_group(&self, group: &str) -> usize {
        let mut t = self.table.lock();
        let before = t.len();
        t.retain(|k, _| split_key(k).is_none_or(|(_, g)| g != group));
        let removed = before - t.len();
        if removed > 0 {
            self.dirty.store(true, Ordering::Release);
        }
        removed
    }

    /// Forgets every group's offsets of `topic` (it was deleted); returns how many groups had
    /// some. Without this, a topic's offsets outlived it in every save and every start.
    pub(crate) fn remove_topic(&self, topic: &str) -> usize {
        let mut t = self.table.lock();
        let before = t.len();
        t.retain(|k, _| split_key(k).is_none_or(|(tp, _)| tp != topic));
        let removed = before - t.len();
        if removed > 0 {
            self.dirty.store(true, Ordering::Release);
        }
        removed
    }

    /// Writes the file if anything changed since the last write. Blocking.
    pub(crate) fn save_if_dirty(&self) -> Result<bool, BrokerError> {
        let _w = self.write_lock.lock();
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let file = OffsetFile {
            offset_table: self
                .table
                .lock()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| BrokerError::StateFile {
            op: "encode",
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        if let Err(e) = state_file::store(&self.path, &bytes) {
            self.dirty.store(true, Ordering::Release);
            return Err(e);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_survive_a_reload_and_java_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let m = OffsetManager::load(dir.path(), 100).unwrap();
        assert_eq!(m.query("g", "T", 0), None);
        m.commit("g", "T", 0, 12).unwrap();
        m.commit("g", "T", 3, 7).unwrap();
        assert!(m.save_if_dirty().unwrap());
        assert!(!m.save_if_dirty().unwrap());
        let m = OffsetManager::load(dir.path(), 100).unwrap();
        assert_eq!(
            (m.query("g", "T", 0), m.query("g", "T", 3)),
            (Some(12), Some(7))
        );

        let java =
            br#"{"offsetTable":{"T@G":{0:5,1:6}},"dataVersion":{"counter":1,"timestamp":2}}"#;
        std::fs::write(dir.path().join("config/consumerOffset.json"), java).unwrap();
        let m = OffsetManager::load(dir.path(), 100).unwrap();
        assert_eq!(m.query("G", "T", 1), Some(6));
    }

    #[test]
    fn a_corrupt_file_stops_the_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        std::fs::write(dir.path().join("config/consumerOffset.json"), b"{not json").unwrap();
        assert!(OffsetManager::load(dir.path(), 100).is_err());
    }

    #[test]
    fn a_new_entry_past_the_bound_is_refused_and_known_ones_still_move() {
        let dir = tempfile::tempdir().unwrap();
        let m = OffsetManager::load(dir.path(), 2).unwrap();
        m.commit("g1", "T", 0, 1).unwrap();
        m.commit("g2", "T", 0, 1).unwrap();
        assert_eq!(m.commit("g3", "T", 0, 1), Err(OffsetsFull { max: 2 }));
        assert_eq!(m.refused(), 1);
        m.commit("g1", "T", 1, 5).unwrap();
        assert_eq!(m.query("g1", "T", 1), Some(5));
        assert_eq!(m.query("g3", "T", 0), None);
        // Room comes back when a retired group is removed, and the removal is saved.
        assert_eq!(m.remove_group("g2"), 1);
        m.commit("g3", "T", 0, 1).unwrap();
        assert!(m.save_if_dirty().unwrap());
        let m = OffsetManager::load(dir.path(), 2).unwrap();
        assert_eq!(m.query("g2", "T", 0), None);
        assert_eq!(m.query("g3", "T", 0), Some(1));
        let file = std::fs::read_to_string(dir.path().join("config/consumerOffset.json")).unwrap();
        assert!(!file.contains("T@g2"), "{file}");
    }
}
