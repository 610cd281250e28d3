//! Consume queues: per (topic, queue id), a dense array of 20-byte entries
//! `commit-log offset: i64 | size: i32 | tag code: i64`, where entry `n` is queue offset `n`.
//!
//! Files hold `entries_per_file` entries and are named by the byte offset of their first entry
//! (`n * 20`, 20 digits), as RocketMQ names them: `consumequeue/<topic>/<queue id>/<name>`.
//! Entries are written by the dispatcher only, each at the slot its record's QUEUEOFFSET names,
//! so dispatching a record twice (after a crash) rewrites the same bytes.
//!
//! A consume queue is derived data: the commit log is the truth, and recovery rewrites any
//! entry the last checkpoint does not vouch for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::appender::QueueOffsets;
use crate::commitlog::{file_name, list_numbered_files};
use crate::crash_point;
use crate::error::{Result, StoreError};
use crate::floors::Floors;
use crate::io::StorageIo;
use crate::mapped::{ensure_dir, sync_dir, MappedFile};

/// Bytes per entry.
/// Entries looked at past a queue's apparent end for valid ones after a hole (records skipped
/// as damage, a run of them after a torn range): 20 KiB of reads at most per hole.
const HOLE_LOOKAHEAD: u64 = 1024;
pub(crate) const ENTRY_LEN: u64 = 20;

/// One consume-queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEntry {
    /// Commit-log offset of the record.
    pub phys_offset: u64,
    /// Record size.
    pub size: u32,
    /// Java hash of the record's tag (0 without one).
    pub tags_code: i64,
}

impl CqEntry {
    fn encode(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..8].copy_from_slice(&self.phys_offset.to_be_bytes());
        out[8..12].copy_from_slice(&self.size.to_be_bytes());
        out[12..].copy_from_slice(&self.tags_code.to_be_bytes());
        out
    }

    /// `None` for an all-zero (never written) entry.
    fn decode(b: &[u8]) -> Option<Self> {
        let size = u32::from_be_bytes(b[8..12].try_into().ok()?);
        if size == 0 {
            return None;
        }
        Some(Self {
            phys_offset: u64::from_be_bytes(b[..8].try_into().ok()?),
            size,
            tags_code: i64::from_be_bytes(b[12..20].try_into().ok()?),
        })
    }
}

/// Bytes of a written queue's newest entries kept mapped (readers near the end use them).
const RESIDENT_TAIL: u64 = 256 * 1024;

/// One queue.
#[derive(Debug)]
pub(crate) struct ConsumeQueue {
    dir: PathBuf,
    per_file: u64,
    files: RwLock<Vec<(u64, Arc<MappedFile>)>>,
    /// First offset with an entry on disk (raised by retention).
    min: AtomicU64,
    /// Nothing below it is served (see `floors`); 0 for most queues.
    floor: AtomicU64,
    /// Next offset to be written: entries `[min, max)` exist.
    max: AtomicU64,
    /// Lowest offset written since the last sync (`u64::MAX`: none). The checkpoint that
    /// follows a sync vouches for every entry below `dispatched`, so every file written since
    /// is synced, not only the newest ones: a rebuild or a burst can fill many files between
    /// two checkpoints.
    dirty_from: AtomicU64,
    /// A file (or this queue's folder) was created since the last sync: its folder entry must
    /// be made durable too.
    created: AtomicBool,
}

impl ConsumeQueue {
    fn open(dir: &Path, per_file: u64, io: &dyn StorageIo) -> Result<Self> {
        let existed = dir.is_dir();
        ensure_dir(dir)?;
        let mut names = list_numbered_files(dir)?;
        names.sort_unstable();
        crate::mapped::refuse_emptied(dir, &names)?;
        let mut files = Vec::with_capacity(names.len());
        for name in names {
            let first = name / ENTRY_LEN;
            let f =
                MappedFile::open_zeroed(&dir.join(file_name(name)), per_file * ENTRY_LEN, 0, io)?;
            files.push((first, Arc::new(f)));
        }
        let min = files.first().map_or(0, |(first, _)| *first);
        Ok(Self {
            dir: dir.to_path_buf(),
            per_file,
            files: RwLock::new(files),
            min: AtomicU64::new(min),
            floor: AtomicU64::new(0),
            max: AtomicU64::new(min),
            dirty_from: AtomicU64::new(u64::MAX),
            created: AtomicBool::new(!existed),
        })
    }

    /// First offset served: past what retention deleted, and not below the queue's floor
    /// (while the entries up to the floor are still being dispatched, up to the last one).
    pub(crate) fn min_offset(&self) -> u64 {
        self.stored_min().max(self.floor_offset())
    }

    /// First offset with an entry on disk, floor or not.
    pub(crate) fn stored_min(&self) -> u64 {
        self.min.load(Ordering::Acquire)
    }

    /// The floor, up to the last entry dispatched (0: none).
    pub(crate) fn floor_offset(&self) -> u64 {
        self.floor.load(Ordering::Acquire).min(self.max_offset())
    }

    /// Hides every entry below `floor` from readers (only ever raised).
    pub(crate) fn raise_floor(&self, floor: u64) {
        self.floor.fetch_max(floor, Ordering::AcqRel);
    }

    /// Publishes nothing at or past `at` (at open, before any reader: see `Store::open`).
    pub(crate) fn cap_max(&self, at: u64) {
        self.max.fetch_min(at, Ordering::AcqRel);
        self.min.fetch_min(at, Ordering::AcqRel);
    }

    /// Whether the entry written at `offset` is the record at `phys` of `size` bytes (at open,
    /// before any reader).
    pub(crate) fn holds(&self, offset: u64, phys: u64, size: u32) -> bool {
        self.raw_entry(offset)
            .is_some_and(|e| e.phys_offset == phys && e.size == size)
    }

    pub(crate) fn max_offset(&self) -> u64 {
        self.max.load(Ordering::Acquire)
    }

    fn file_for(&self, offset: u64) -> Option<Arc<MappedFile>> {
        let first = offset - offset % self.per_file;
        let files = self.files.read();
        let idx = files.binary_search_by_key(&first, |(f, _)| *f).ok()?;
        Some(Arc::clone(&files[idx].1))
    }

    /// Asks for the entries `[from, to)` to be read into the page cache in large requests (see
    /// [`MappedFile::prefetch`]); only what was written is asked for.
    pub(crate) fn prefetch(&self, from: u64, to: u64) {
        let files: Vec<(u64, Arc<MappedFile>)> = self
            .files
            .read()
            .iter()
            .filter(|(first, _)| *first < to && first + self.per_file > from)
            .cloned()
            .collect();
        for (first, f) in &files {
            let start = from.saturating_sub(*first) * ENTRY_LEN;
            let end = to.saturating_sub(*first).min(self.per_file) * ENTRY_LEN;
            f.prefetch(start, end.min(f.written_len()));
        }
    }

    /// The entry at `offset`, ignoring the published bounds (recovery and internal use).
    fn raw_entry(&self, offset: u64) -> Option<CqEntry> {
        let file = self.file_for(offset)?;
        let pos = (offset % self.per_file) * ENTRY_LEN;
        CqEntry::decode(file.slice(pos, ENTRY_LEN as usize)?)
    }

    /// The entry at `offset` if it is within `[min, max)` and was written.
    pub(crate) fn entry(&self, offset: u64) -> Option<CqEntry> {
        if offset < self.min_offset() || offset >= self.max_offset() {
            return None;
        }
        self.raw_entry(offset)
    }

    /// Writes entries for queue offsets `first..` through the files' maps (one copy per file
    /// touched) and then publishes them.
    pub(crate) fn put_run(
        &self,
        first: u64,
        entries: &[CqEntry],
        io: &dyn StorageIo,
    ) -> Result<()> {
        // Queue offsets come from records: refuse, rather than overflow on, one whose entries
        // would lie past what a file name (20-digit byte position) can express.
        let end = first
            .checked_add(entries.len() as u64)
            .filter(|end| end.checked_mul(ENTRY_LEN).is_some())
            .ok_or_else(|| {
                StoreError::InvalidMessage(format!("queue offset {first} out of range"))
            })?;
        // A retry after a failure later in its batch (the index) writes the same run again:
        // the part already published (below `max`) is left alone, since readers may hold
        // slices of it, and it holds these very entries.
        let published = self.max.load(Ordering::Acquire).clamp(first, end);
        let mut offset = published;
        let mut rest = &entries[(published - first) as usize..];
        while !rest.is_empty() {
            let file = match self.file_for(offset) {
                Some(f) => f,
                None => self.create_file(offset, io)?,
            };
            let room = (self.per_file - offset % self.per_file) as usize;
            let (now, later) = rest.split_at(room.min(rest.len()));
            let bytes: Vec<u8> = now.iter().flat_map(CqEntry::encode).collect();
            file.write_mapped(io, &bytes, (offset % self.per_file) * ENTRY_LEN)?;
            offset += now.len() as u64;
            rest = later;
        }
        self.dirty_from.fetch_min(first, Ordering::AcqRel);
        self.max.fetch_max(end, Ordering::AcqRel);
        Ok(())
    }

    /// Creates the file that holds queue offset `entry`. The queue's first file sets its `min`
    /// to `entry`, not to the file's start: a queue rebuilt after retention starts mid-file.
    fn create_file(&self, entry: u64, io: &dyn StorageIo) -> Result<Arc<MappedFile>> {
        let first = entry - entry % self.per_file;
        let path = self.dir.join(file_name(first * ENTRY_LEN));
        let f = Arc::new(MappedFile::open_zeroed(
            &path,
            self.per_file * ENTRY_LEN,
            0,
            io,
        )?);
        crash_point::reach_file(crash_point::CQ_FILE_CREATED, &path);
        self.created.store(true, Ordering::Release);
        let mut files = self.files.write();
        let idx = files.partition_point(|(b, _)| *b < first);
        files.insert(idx, (first, Arc::clone(&f)));
        if idx == 0 && files.len() == 1 {
            self.min.store(entry, Ordering::Release);
        }
        Ok(f)
    }

    /// Syncs every file written since the last call, and the folder entries of files (and
    /// of this queue's folder) created since.
    pub(crate) fn sync_if_dirty(&self, io: &dyn StorageIo) -> Result<()> {
        let from = self.dirty_from.swap(u64::MAX, Ordering::AcqRel);
        if from == u64::MAX {
            return Ok(());
        }
        let max = self.max_offset();
        let files = self.files.read().clone();
        for (first, f) in &files {
            if first + self.per_file > from && *first <= max {
                f.sync(io)?;
            }
        }
        if self.created.swap(false, Ordering::AcqRel) {
            sync_dir(&self.dir)?;
            for parent in self.dir.ancestors().skip(1).take(2) {
                sync_dir(parent)?;
            }
        }
        self.release_behind(RESIDENT_TAIL, false);
        Ok(())
    }

    /// Drops this queue's mapped pages more than `keep` bytes behind its end from the
    /// process's resident set (they stay in the page cache, and a read faults them back):
    /// entries are written through the map, so without this every entry ever written or read
    /// stays resident, ~20 MB per million messages. After each sync of a written queue only
    /// its last two files are looked at (where writes went); `all_files` also sweeps older
    /// ones, whose pages only lagging readers fault in (the dispatcher does it now and then).
    pub(crate) fn release_behind(&self, keep: u64, all_files: bool) {
        let end = self.max_offset();
        let files = self.files.read();
        let skip = if all_files {
            0
        } else {
            files.len().saturating_sub(2)
        };
        for (first, f) in files.iter().skip(skip) {
            let written = end.saturating_sub(*first).saturating_mul(ENTRY_LEN);
            f.release_resident(0, written.saturating_sub(keep));
            if written < f.len() {
                break; // later files hold nothing yet
            }
        }
    }

    /// [`Self::release_behind`] over every file, keeping the newest entries mapped.
    pub(crate) fn release_old(&self) {
        self.release_behind(RESIDENT_TAIL, true);
    }

    /// Drops every mapped page of this queue from the resident set: after recovery, whose
    /// search and clearing fault pages in all over each file.
    pub(crate) fn release_all(&self) {
        for (_, f) in self.files.read().iter() {
            f.release_resident(0, f.len());
        }
    }

    /// Recovery: sets `max` to the end of the run of entries that point below `log_end`,
    /// holes included (the zero entry of a record skipped as damage does not end the run),
    /// and `min` to its first entry. Entries at or past the end point at records that no
    /// longer exist; they are left for later dispatches to overwrite and are never served,
    /// being beyond `max`.
    ///
    /// Entries past a file's last written byte are zeros, so they are judged without being
    /// read: a read there would fault in a page the file system has to read around (8 MB on
    /// this machine's disk), and every searched file would end up wholly cached and resident.
    ///
    /// A queue's entries point at ever later records, so past the first entry at or beyond
    /// `log_end` none is valid: after a binary search for the end, the written entries after
    /// it are read up to the first one that is not a hole, however many holes come first. A
    /// queue rebuilt from the log after retention starts with such holes, thousands of them
    /// in its first file, and a search limited to a short look-ahead took it for empty.
    pub(crate) fn recover_bounds(&self, log_min: u64, log_end: u64) {
        let files = self.files.read().clone();
        let written: Vec<(u64, u64)> = files
            .iter()
            .map(|(first, f)| (*first, first + f.written_len() / ENTRY_LEN))
            .collect();
        let is_written = |o: u64| {
            let first = o - o % self.per_file;
            written
                .binary_search_by_key(&first, |(f, _)| *f)
                .is_ok_and(|i| o < written[i].1)
        };
        let valid =
            |o: u64| is_written(o) && self.raw_entry(o).is_some_and(|e| e.phys_offset < log_end);
        // The first written entry at or after `from` that is not a hole, if it is valid.
        let next_valid = |from: u64| {
            written
                .iter()
                .flat_map(|(first, end)| (*first).max(from)..*end)
                .find_map(|o| self.raw_entry(o).map(|e| (o, e)))
                .filter(|(_, e)| e.phys_offset < log_end)
                .map(|(o, _)| o)
        };
        let Some((last_first, _)) = files.last() else {
            return;
        };
        let queue_start = files.first().map_or(0, |(f, _)| *f);
        // The queue's first entry: past any holes a rebuild after retention left before it.
        let first_entry = next_valid(queue_start);
        // Find the last file that holds a valid first entry, then search inside it.
        let mut start = *last_first;
        for (first, _) in files.iter().rev() {
            start = *first;
            if valid(*first) {
                break;
            }
        }
        if !valid(start) {
            start = first_entry.unwrap_or(queue_start);
        }
        let lo = start;
        let first_entry = first_entry.unwrap_or(lo);
        let hi = last_first + self.per_file;
        let file_end = start - start % self.per_file + self.per_file;
        let mut end = partition_point(lo, file_end.min(hi), valid);
        // Holes (records skipped as damage) may follow with valid entries after them, where
        // the search above stopped: search again from the next valid entry, until none. That
        // reads every written entry after the end (at least the zeros written ahead of it),
        // which the map's random-access advice would fetch a page per fault: asked for at once.
        self.prefetch(end, u64::MAX);
        while let Some(next) = next_valid(end) {
            end = partition_point(next, hi, valid);
        }
        self.min.store(first_entry.min(end), Ordering::Release);
        self.max.store(end, Ordering::Release);
        self.advance_min(log_min);
    }

    /// After an unclean stop: zeroes entries at and after `max` in the last file, which point
    /// at records the crash took away, so no later recovery can mistake them for live ones.
    pub(crate) fn clear_beyond_max(&self, io: &dyn StorageIo) -> Result<()> {
        let max = self.max_offset();
        let files = self.files.read().clone();
        for (first, f) in files
            .iter()
            .filter(|(first, _)| first + self.per_file > max)
        {
            let from = max.saturating_sub(*first) * ENTRY_LEN;
            if f.clear_from(io, from)?.zeroed > 0 {
                f.sync(io)?;
            }
        }
        Ok(())
    }

    /// Raises `min` past entries whose records were deleted by retention.
    pub(crate) fn advance_min(&self, log_min: u64) {
        let (lo, hi) = (self.stored_min(), self.max_offset());
        let below = |o: u64| match self.raw_entry(o) {
            Some(e) => e.phys_offset < log_min,
            None => self.hole_below(o, lo, hi, log_min),
        };
        let first_live = partition_point(lo, hi, below);
        self.min.store(first_live.max(lo), Ordering::Release);
    }

    /// Whether a hole (the zero entry of a record skipped as damage) lies in the deleted part
    /// of the queue: judged by the nearest entry after it, else before it, within
    /// `HOLE_LOOKAHEAD`. A hole counted as deleted whatever its place let the search jump past
    /// live entries after it, and their files were then deleted. With no entry near, it is
    /// kept (the minimum stays lower; reads step over holes).
    fn hole_below(&self, o: u64, lo: u64, hi: u64, log_min: u64) -> bool {
        let after = (o + 1..hi.min(o + 1 + HOLE_LOOKAHEAD)).find_map(|n| self.raw_entry(n));
        let before = || {
            (o.saturating_sub(HOLE_LOOKAHEAD).max(lo)..o)
                .rev()
                .find_map(|n| self.raw_entry(n))
        };
        after
            .or_else(before)
            .is_some_and(|e| e.phys_offset < log_min)
    }

    /// Deletes whole files below `min` (never the last file). Returns how many.
    pub(crate) fn delete_files_below_min(&self) -> Result<usize> {
        let min = self.stored_min();
        let mut doomed = Vec::new();
        {
            let mut files = self.files.write();
            while files.len() > 1 && files[0].0 + self.per_file <= min {
                doomed.push(files.remove(0).1);
            }
        }
        for f in &doomed {
            std::fs::remove_file(f.path()).map_err(|e| StoreError::io("delete", f.path(), e))?;
        }
        Ok(doomed.len())
    }
}

/// First `o` in `[lo, hi)` where `pred(o)` is false, assuming `pred` is true then false.
fn partition_point(mut lo: u64, mut hi: u64, pred: impl Fn(u64) -> bool) -> u64 {
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Every consume queue, by topic and queue id.
#[derive(Debug)]
pub(crate) struct ConsumeQueues {
    root: PathBuf,
    per_file: u64,
    io: Arc<dyn StorageIo>,
    queues: RwLock<HashMap<String, HashMap<i32, Arc<ConsumeQueue>>>>,
    floors: Floors,
}

impl ConsumeQueues {
    /// Opens every queue found under `root`, each held to its floor.
    pub(crate) fn open(
        root: &Path,
        per_file: u64,
        io: Arc<dyn StorageIo>,
        floors: Floors,
    ) -> Result<Self> {
        ensure_dir(root)?;
        let mut queues: HashMap<String, HashMap<i32, Arc<ConsumeQueue>>> = HashMap::new();
        for topic_dir in read_dirs(root)? {
            let Some(topic) = topic_dir
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            for qdir in read_dirs(&topic_dir)? {
                let Some(qid) = qdir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse().ok())
                else {
                    continue;
                };
                let q = ConsumeQueue::open(&qdir, per_file, io.as_ref())?;
                q.raise_floor(floors.get(&topic, qid));
                queues
                    .entry(topic.clone())
                    .or_default()
                    .insert(qid, Arc::new(q));
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            per_file,
            io,
            queues: RwLock::new(queues),
            floors,
        })
    }

    /// The queue, if it exists.
    pub(crate) fn get(&self, topic: &str, queue_id: i32) -> Option<Arc<ConsumeQueue>> {
        self.queues.read().get(topic)?.get(&queue_id).cloned()
    }

    /// The queue, created if needed.
    pub(crate) fn get_or_create(&self, topic: &str, queue_id: i32) -> Result<Arc<ConsumeQueue>> {
        if let Some(q) = self.get(topic, queue_id) {
            return Ok(q);
        }
        let mut all = self.queues.write();
        if let Some(q) = all.get(topic).and_then(|m| m.get(&queue_id)) {
            return Ok(Arc::clone(q));
        }
        let dir = self.root.join(topic).join(queue_id.to_string());
        let q = Arc::new(ConsumeQueue::open(&dir, self.per_file, self.io.as_ref())?);
        // Read under the table's lock (a short one: saves do not hold it): `raise_floors`
        // updates the floors before it looks for the queues, so either this sees the new
        // floor, or that finds this queue.
        q.raise_floor(self.floors.get(topic, queue_id));
        all.entry(topic.to_string())
            .or_default()
            .insert(queue_id, Arc::clone(&q));
        Ok(q)
    }

    /// Saves `ends` as floors of `topic`'s queues, then hides what lies below them. On an
    /// error the floors may still be in force (the file replaced, its folder not synced):
    /// they are applied then too, and the error returned.
    pub(crate) fn raise_floors(&self, topic: &str, ends: &[(i32, u64)]) -> Result<()> {
        let raised = self.floors.raise(topic, ends);
        if raised.in_force {
            for &(queue_id, end) in ends {
                if let Some(q) = self.get(topic, queue_id) {
                    q.raise_floor(end);
                }
            }
        }
        raised.error.map_or(Ok(()), Err)
    }

    /// Whether the folder keeps a floors file (for checkpoints).
    pub(crate) fn floors_kept(&self) -> bool {
        self.floors.kept()
    }

    /// At open, once `next` holds each queue's next offset. A floor above it comes down to
    /// it: the records between were lost with an unclean stop, never acknowledged, and the
    /// next message takes the next offset (queue offsets follow the log without gaps; the
    /// dispatcher holds a record claiming more for damage). A floor goes once it hides
    /// nothing and the queue is empty there (retention deleted everything under it and
    /// nothing was stored since), or retention passed it. Fails when a lowered floor cannot
    /// be saved: the next open would raise it again above messages acknowledged meanwhile.
    pub(crate) fn settle_floors(&self, next: &QueueOffsets) -> Result<()> {
        self.floors.settle(|topic, queue_id, floor| {
            let end = next
                .get(topic)
                .and_then(|m| m.get(&queue_id))
                .map_or(0, |n| u64::try_from(*n).unwrap_or(0));
            if end < floor {
                tracing::warn!(topic, queue_id, floor, queue_end = end, "queue floor above its queue's end (records under it were lost with an unclean stop, never acknowledged): lowered to the end");
            }
            let floor = floor.min(end);
            let q = self.get(topic, queue_id);
            let stored_min = q.as_ref().map_or(end, |q| q.stored_min());
            let spent = floor == 0 || stored_min > floor || (stored_min == floor && end == floor);
            let kept = (!spent).then_some(floor);
            if let Some(q) = q {
                // Before anything reads the queue.
                q.floor.store(kept.unwrap_or(0), Ordering::Release);
            }
            kept
        })
    }

    /// How many queues have a floor.
    pub(crate) fn floor_count(&self) -> usize {
        self.floors.len()
    }

    /// How many queues there are (no copy of the map).
    pub(crate) fn count(&self) -> usize {
        self.queues.read().values().map(HashMap::len).sum()
    }

    /// Every queue with its topic and id.
    pub(crate) fn all(&self) -> Vec<(String, i32, Arc<ConsumeQueue>)> {
        let all = self.queues.read();
        let mut out = Vec::new();
        for (topic, qs) in all.iter() {
            for (qid, q) in qs {
                out.push((topic.clone(), *qid, Arc::clone(q)));
            }
        }
        out
    }

    pub(crate) fn io(&self) -> &dyn StorageIo {
        self.io.as_ref()
    }
}

fn read_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))? {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::RealIo;
    use crate::mapped::{cached_kib, mapped_rss_kib};

    fn entries(n: u64) -> Vec<CqEntry> {
        (0..n)
            .map(|i| CqEntry {
                phys_offset: 1000 + i * 100,
                size: 100,
                tags_code: 0,
            })
            .collect()
    }

    #[test]
    fn recovery_searches_only_the_written_part_and_leaves_nothing_resident() {
        let dir = tempfile::tempdir().unwrap();
        let per_file = 300_000; // 6 MB files, as by default
        let q = ConsumeQueue::open(dir.path(), per_file, &RealIo).unwrap();
        q.put_run(0, &entries(100), &RealIo).unwrap();
        q.sync_if_dirty(&RealIo).unwrap();
        drop(q);
        let file = dir.path().join(file_name(0));
        // As after a reboot, or once memory pressure took them: none of its pages cached.
        crate::mapped::evict_cached(&file);

        let q = ConsumeQueue::open(dir.path(), per_file, &RealIo).unwrap();
        q.recover_bounds(0, 1000 + 99 * 100 + 1);
        assert_eq!((q.min_offset(), q.max_offset()), (0, 100));
        // Written: 100 entries and the 256 KiB zeroed ahead of them. A read elsewhere, or the
        // kernel's read-around of the entries' page, brought in megabytes of the never-written
        // rest (all 6 MB: a restart over 1 200 queues filled ~6.9 GB of page cache).
        let cached = cached_kib(&q.file_for(0).unwrap());
        assert!(cached < 1024, "{cached} KiB of a 6 MB file read");
        q.clear_beyond_max(&RealIo).unwrap();
        q.release_all();
        assert_eq!(mapped_rss_kib(&file), 0);
        assert_eq!(q.entry(99).unwrap().phys_offset, 1000 + 99 * 100);
    }

    /// A hole (a record skipped as damage) among live entries is not taken for the deleted
    /// part of the queue: the minimum used to jump past it and the live entries before it.
    #[test]
    fn a_hole_among_live_entries_does_not_move_the_minimum_past_them() {
        let dir = tempfile::tempdir().unwrap();
        let q = ConsumeQueue::open(dir.path(), 1000, &RealIo).unwrap();
        let all = entries(100);
        // Entries 0..20 point below the log's minimum; 50 is a hole among live ones.
        q.put_run(0, &all[..50], &RealIo).unwrap();
        q.put_run(51, &all[51..], &RealIo).unwrap();
        q.recover_bounds(0, 1000 + 100 * 100);
        assert_eq!(q.max_offset(), 100);
        // The binary search's first probe (50) is the hole.
        q.advance_min(all[20].phys_offset);
        assert_eq!(q.min_offset(), 20);
    }

    /// Counts data syncs, per file path.
    #[derive(Debug, Default)]
    struct CountingIo(parking_lot::Mutex<Vec<std::path::PathBuf>>);

    impl StorageIo for CountingIo {
        fn allocate(&self, file: &std::fs::File, len: u64) -> std::io::Result<()> {
            RealIo.allocate(file, len)
        }
        fn write_at(&self, file: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<()> {
            RealIo.write_at(file, buf, offset)
        }
        fn sync(&self, file: &std::fs::File) -> std::io::Result<()> {
            use std::os::fd::AsRawFd;
            let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
            self.0.lock().push(path);
            RealIo.sync(file)
        }
        fn disk_usage(&self, dir: &Path) -> std::io::Result<crate::io::DiskUsage> {
            RealIo.disk_usage(dir)
        }
    }

    #[test]
    fn a_sync_covers_every_file_written_since_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let per_file = 1024;
        let io = CountingIo::default();
        let q = ConsumeQueue::open(dir.path(), per_file, &io).unwrap();
        // Five files filled between two checkpoints (a rebuild, or a burst on one queue).
        q.put_run(0, &entries(5 * per_file), &io).unwrap();
        q.sync_if_dirty(&io).unwrap();
        let synced = io.0.lock().clone();
        for n in 0..5 {
            let file = dir.path().join(file_name(n * per_file * ENTRY_LEN));
            assert!(
                synced.iter().any(|p| *p == file.canonicalize().unwrap()),
                "file {n} synced before a checkpoint vouches for it: {synced:?}"
            );
        }
    }

    #[test]
    fn a_sync_keeps_only_the_newest_entries_resident() {
        let dir = tempfile::tempdir().unwrap();
        let q = ConsumeQueue::open(dir.path(), 300_000, &RealIo).unwrap();
        q.put_run(0, &entries(200_000), &RealIo).unwrap(); // 4 MB written through the map
        let file = dir.path().join(file_name(0));
        assert!(mapped_rss_kib(&file) >= 3 * 1024);
        q.sync_if_dirty(&RealIo).unwrap();
        let kept = mapped_rss_kib(&file);
        // The kept tail, and pages mapped around the last writes.
        assert!(kept < 1024, "{kept} KiB still resident");
        assert_eq!(
            q.entry(0).unwrap().phys_offset,
            1000,
            "a released page reads back"
        );
    }

    #[test]
    fn pages_readers_fault_into_older_files_go_at_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let per_file = 32_768; // 640 KiB files
        let q = ConsumeQueue::open(dir.path(), per_file, &RealIo).unwrap();
        q.put_run(0, &entries(3 * per_file), &RealIo).unwrap();
        q.sync_if_dirty(&RealIo).unwrap();
        let oldest = dir.path().join(file_name(0));
        for o in (0..per_file).step_by(100) {
            assert!(q.entry(o).is_some()); // a lagging reader
        }
        assert!(mapped_rss_kib(&oldest) >= 512);
        q.sync_if_dirty(&RealIo).unwrap(); // nothing written: nothing looked at
        assert!(mapped_rss_kib(&oldest) >= 512);
        q.release_old();
        assert!(
            mapped_rss_kib(&oldest) < 64,
            "{} KiB",
            mapped_rss_kib(&oldest)
        );
    }
}
