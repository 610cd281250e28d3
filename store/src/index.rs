//! The message index: find records by key (`topic#KEYS token`) or by unique key
//! (`topic#UNIQ_KEY`), in bounded memory (the files are mapped, not loaded).
//!
//! An index file is a hash table on disk, as RocketMQ's `IndexFile`:
//!
//! ```text
//! header (40 B): begin_ts:i64 end_ts:i64 begin_phys:i64 end_phys:i64 slots:u32 count:u32
//! slots:   slots x u32       newest entry number in the slot (0 = empty)
//! entries: entries x 20 B    key_hash:u32 phys:i64 time_s:i32 prev:u32
//! ```
//!
//! (`time_s` counts seconds since 2020-01-01 UTC rather than since the file began, so an entry
//! can be read without a header that may not have reached the disk.)
//!
//! ```text
//! ```
//!
//! Entry 0 is unused so that 0 means "none". Entries are appended in batches with one write
//! each (an entry's `prev` is its slot's old value). The newest file's slot table lives in
//! memory and is written, with the header, at each sync (checkpoint); after an unclean stop it
//! is rebuilt from the entries up to the first empty one, and entries for records after the
//! checkpoint are then added again by the dispatcher. A header whose slot or entry count the
//! file cannot hold is rejected at open and that file rebuilt the same way, with the
//! configured slot count (trusting it would place the table outside the file). A query therefore
//! de-duplicates by commit-log offset and the caller verifies each record's keys, so a hash
//! collision or a stale entry can cost time, never a wrong answer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::commitlog::{file_name, list_numbered_files};
use crate::error::{Result, StoreError};
use crate::io::StorageIo;
use crate::mapped::{ensure_dir, sync_dir, MappedFile};

const HEADER_LEN: u64 = 40;
const ENTRY_LEN: u64 = 20;
/// Entry times are whole seconds since 2020-01-01T00:00:00Z, so an entry decodes on its own.
const TIME_EPOCH_MS: i64 = 1_577_836_800_000;
/// Bytes of the newest entries kept mapped after a sync (the next entries go right after).
const RESIDENT_TAIL: u64 = 256 * 1024;
/// Upper bound on chain steps per file and query, so a hot key cannot stall a query. A walk
/// cut short by it says so: the entries past it may hold the key.
#[cfg(not(test))]
const MAX_CHAIN_STEPS: usize = 100_000;
#[cfg(test)]
const MAX_CHAIN_STEPS: usize = 1_000;

/// 32-bit FNV-1a of the key; stable across versions because it is on disk.
fn key_hash(key: &str) -> u32 {
    key.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The index key for `topic` and `key`.
pub(crate) fn index_key(topic: &str, key: &str) -> String {
    let mut s = String::with_capacity(topic.len() + key.len() + 1);
    s.push_str(topic);
    s.push('#');
    s.push_str(key);
    s
}

#[derive(Debug, Clone, Copy, Default)]
struct Header {
    begin_ts: i64,
    end_ts: i64,
    begin_phys: u64,
    end_phys: u64,
    count: u32,
}

/// Slots per dirty-tracking page (4 KiB of slot table).
const SLOTS_PER_PAGE: usize = 1024;

/// One key to index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexItem {
    hash: u32,
    phys: u64,
    store_ts: i64,
}

impl IndexItem {
    pub(crate) fn new(key: &str, phys: u64, store_ts: i64) -> Self {
        Self {
            hash: key_hash(key),
            phys,
            store_ts,
        }
    }
}

#[derive(Debug)]
struct FileState {
    header: Header,
    /// The slot table of the newest file, kept in memory and written at sync (after an unclean
    /// stop it is rebuilt from the entries, so the disk copy may lag). `None` once sealed.
    live_slots: Option<Vec<u32>>,
    dirty_pages: Vec<bool>,
}

#[derive(Debug)]
struct IndexFile {
    file: MappedFile,
    slots: u32,
    entries: u32,
    /// The header on disk did not fit the file: rebuild before use.
    header_rejected: bool,
    state: Mutex<FileState>,
}

/// Entries a file of `len` bytes holds after a header and `slots` slots; `None` when not even
/// the unused entry 0 fits.
fn entries_fitting(len: u64, slots: u32) -> Option<u32> {
    let entries = len.checked_sub(HEADER_LEN + u64::from(slots) * 4)? / ENTRY_LEN;
    (entries > 0).then(|| u32::try_from(entries).unwrap_or(u32::MAX))
}

impl IndexFile {
    fn open(path: &Path, slots: u32, entries: u32, io: &dyn StorageIo) -> Result<Self> {
        let head = HEADER_LEN + u64::from(slots) * 4;
        let len = head + u64::from(entries) * ENTRY_LEN;
        // The header and slot table now (their pages are written at random); the entries,
        // written in order, are zeroed just ahead of them.
        let file = MappedFile::open_zeroed(path, len, head, io)?;
        let b = file.as_slice();
        let rd64 = |p: usize| i64::from_be_bytes(b[p..p + 8].try_into().expect("8 bytes"));
        let rd32 = |p: usize| u32::from_be_bytes(b[p..p + 4].try_into().expect("4 bytes"));
        let (on_disk_slots, on_disk_count) = (rd32(32), rd32(36));
        let fits = entries_fitting(file.len(), on_disk_slots).is_some_and(|e| on_disk_count <= e);
        // A slot or entry count the file cannot hold is a corrupt header: trusting it would
        // put the slot table or entries outside the file. The configured slot count is what
        // the file was created with unless the configuration changed; the caller rebuilds the
        // slot table and header from the entries, and query answers are verified anyway.
        let header_rejected = on_disk_slots != 0 && !fits;
        if header_rejected {
            tracing::warn!(
                path = %path.display(), on_disk_slots, on_disk_count,
                "index header does not fit its file: rejected, rebuilding from the entries"
            );
        }
        let (slots, header) = if on_disk_slots == 0 || header_rejected {
            let fresh = Header {
                count: 1,
                ..Header::default()
            };
            (slots, fresh)
        } else {
            let header = Header {
                begin_ts: rd64(0),
                end_ts: rd64(8),
                begin_phys: rd64(16) as u64,
                end_phys: rd64(24) as u64,
                count: on_disk_count.max(1),
            };
            (on_disk_slots, header)
        };
        let entries = entries_fitting(file.len(), slots).ok_or_else(|| {
            StoreError::Recovery(format!(
                "index file {} of {} bytes cannot hold {slots} slots",
                path.display(),
                file.len()
            ))
        })?;
        let state = FileState {
            header,
            live_slots: None,
            dirty_pages: Vec::new(),
        };
        Ok(Self {
            file,
            slots,
            entries,
            header_rejected,
            state: Mutex::new(state),
        })
    }

    fn entry_pos(&self, n: u32) -> u64 {
        HEADER_LEN + u64::from(self.slots) * 4 + u64::from(n) * ENTRY_LEN
    }

    fn disk_slot(&self, slot: usize) -> u32 {
        let pos = HEADER_LEN + slot as u64 * 4;
        self.file
            .slice(pos, 4)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }

    /// Loads the slot table into memory: this file is the one being written.
    fn make_live(&self) {
        let mut st = self.state.lock();
        if st.live_slots.is_none() {
            let table: Vec<u32> = (0..self.slots as usize)
                .map(|s| self.disk_slot(s))
                .collect();
            st.dirty_pages = vec![false; table.len().div_ceil(SLOTS_PER_PAGE)];
            st.live_slots = Some(table);
        }
    }

    fn header(&self) -> Header {
        self.state.lock().header
    }

    fn is_full(&self) -> bool {
        self.state.lock().header.count >= self.entries
    }

    /// Appends as many of `items` as fit with one write; returns how many were taken. Slots
    /// change only together with a successful write, so a reader never follows a slot to an
    /// entry that is not there.
    fn put_batch(&self, items: &[IndexItem], io: &dyn StorageIo) -> Result<usize> {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let room = self.entries.saturating_sub(st.header.count) as usize;
        let take = room.min(items.len());
        if take == 0 {
            return Ok(0);
        }
        let slots = st
            .live_slots
            .as_mut()
            .expect("only the live file is written");
        let first = st.header.count;
        let mut buf = Vec::with_capacity(take * ENTRY_LEN as usize);
        let mut undo = Vec::with_capacity(take);
        for (i, item) in items[..take].iter().enumerate() {
            let slot = (item.hash % self.slots) as usize;
            let n = first + i as u32;
            undo.push((slot, slots[slot]));
            buf.extend_from_slice(&item.hash.to_be_bytes());
            buf.extend_from_slice(&item.phys.to_be_bytes());
            buf.extend_from_slice(&to_entry_time(item.store_ts).to_be_bytes());
            buf.extend_from_slice(&slots[slot].to_be_bytes());
            slots[slot] = n;
        }
        if let Err(e) = self.file.write_mapped(io, &buf, self.entry_pos(first)) {
            for (slot, old) in undo.into_iter().rev() {
                slots[slot] = old;
            }
            return Err(e);
        }
        for (slot, _) in &undo {
            st.dirty_pages[slot / SLOTS_PER_PAGE] = true;
        }
        let h = &mut st.header;
        if h.count == 1 {
            (h.begin_ts, h.end_ts, h.begin_phys) =
                (items[0].store_ts, items[0].store_ts, items[0].phys);
        }
        for item in &items[..take] {
            (h.begin_ts, h.end_ts) = (h.begin_ts.min(item.store_ts), h.end_ts.max(item.store_ts));
            h.end_phys = h.end_phys.max(item.phys);
        }
        h.count += take as u32;
        Ok(take)
    }

    /// Writes the header and the changed parts of the slot table, then syncs.
    fn sync(&self, io: &dyn StorageIo) -> Result<()> {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        if let Some(slots) = &st.live_slots {
            for (page, dirty) in st.dirty_pages.iter_mut().enumerate() {
                if !std::mem::take(dirty) {
                    continue;
                }
                let from = page * SLOTS_PER_PAGE;
                let to = (from + SLOTS_PER_PAGE).min(slots.len());
                let bytes: Vec<u8> = slots[from..to]
                    .iter()
                    .flat_map(|v| v.to_be_bytes())
                    .collect();
                self.file
                    .write_at(io, &bytes, HEADER_LEN + from as u64 * 4)?;
            }
        }
        let h = st.header;
        let mut out = [0u8; HEADER_LEN as usize];
        out[..8].copy_from_slice(&h.begin_ts.to_be_bytes());
        out[8..16].copy_from_slice(&h.end_ts.to_be_bytes());
        out[16..24].copy_from_slice(&h.begin_phys.to_be_bytes());
        out[24..32].copy_from_slice(&h.end_phys.to_be_bytes());
        out[32..36].copy_from_slice(&self.slots.to_be_bytes());
        out[36..40].copy_from_slice(&h.count.to_be_bytes());
        self.file.write_at(io, &out, 0)?;
        self.file.sync(io)?;
        // Entries are written through the map and the slot table was read through it (at
        // open or rebuild); the live table is in memory, so all but the newest entries can
        // leave the resident set (see `MappedFile::release_resident`).
        let written = self.entry_pos(h.count);
        self.file
            .release_resident(0, written.saturating_sub(RESIDENT_TAIL));
        Ok(())
    }

    /// Syncs and drops the in-memory slot table: the file is full and read from the map now.
    fn seal(&self, io: &dyn StorageIo) -> Result<()> {
        self.sync(io)?;
        self.state.lock().live_slots = None;
        Ok(())
    }

    /// After an unclean stop: count the entries up to the first empty one, or the first that
    /// points at or past `log_end` (recovery cut the log there: an async-mode crash loses
    /// records the index already had, and new records take their offsets, where a lookup
    /// then read mid-record and reported false damage), and rebuild the slot table from them
    /// (entries carry their own chain links). Entries are written in commit-log order.
    /// Returns how many bytes of the entry region were read to clear it.
    fn rebuild(&self, io: &dyn StorageIo, log_end: u64) -> Result<u64> {
        let written = |n: u32| {
            self.file
                .slice(self.entry_pos(n), ENTRY_LEN as usize)
                .is_some_and(|e| {
                    let phys = u64::from_be_bytes(e[4..12].try_into().expect("8"));
                    e.iter().any(|b| *b != 0) && phys < log_end
                })
        };
        let mut n = 1;
        while n < self.entries && written(n) {
            n += 1;
        }
        let mut table = vec![0u32; self.slots as usize];
        let mut h = Header {
            begin_ts: i64::MAX,
            end_ts: i64::MIN,
            begin_phys: u64::MAX,
            end_phys: 0,
            count: n,
        };
        for i in 1..n {
            let e = self
                .file
                .slice(self.entry_pos(i), ENTRY_LEN as usize)
                .expect("entry in range");
            let hash = u32::from_be_bytes(e[..4].try_into().expect("4"));
            let phys = u64::from_be_bytes(e[4..12].try_into().expect("8"));
            let ts = from_entry_time(i32::from_be_bytes(e[12..16].try_into().expect("4")));
            table[(hash % self.slots) as usize] = i;
            (h.begin_ts, h.end_ts) = (h.begin_ts.min(ts), h.end_ts.max(ts + 999));
            (h.begin_phys, h.end_phys) = (h.begin_phys.min(phys), h.end_phys.max(phys));
        }
        if n == 1 {
            h = Header {
                count: 1,
                ..Header::default()
            };
        }
        // Clear what lies beyond the first empty entry, so no stale chain link survives. Only
        // written ranges are read: the whole entry region is 80 MB by default.
        let examined = self.file.clear_from(io, self.entry_pos(n))?.examined;
        tracing::debug!(
            entries = n - 1,
            examined_bytes = examined,
            "index file rebuilt after an unclean stop"
        );
        {
            let mut st = self.state.lock();
            st.header = h;
            st.dirty_pages = vec![true; table.len().div_ceil(SLOTS_PER_PAGE)];
            st.live_slots = Some(table);
        }
        self.sync(io)?;
        Ok(examined)
    }

    /// The newest entry number in `hash`'s slot.
    fn slot_head(&self, hash: u32) -> (u32, u32) {
        let slot = (hash % self.slots) as usize;
        let st = self.state.lock();
        let head = st
            .live_slots
            .as_ref()
            .map_or_else(|| self.disk_slot(slot), |t| t[slot]);
        (head, st.header.count)
    }

    /// Commit-log offsets of entries matching `key`, newest first. True when the walk stopped
    /// at [`MAX_CHAIN_STEPS`] with entries left: the slot is shared with other keys, and a
    /// frequent one can fill the budget before an older entry of `key` is reached.
    fn lookup(
        &self,
        key: &str,
        begin_ts: i64,
        end_ts: i64,
        max: usize,
        out: &mut Vec<u64>,
    ) -> bool {
        let hash = key_hash(key);
        let (mut n, count) = self.slot_head(hash);
        let mut steps = 0;
        while n != 0 && n < count && out.len() < max {
            if steps >= MAX_CHAIN_STEPS {
                return true;
            }
            steps += 1;
            let Some(e) = self.file.slice(self.entry_pos(n), ENTRY_LEN as usize) else {
                break;
            };
            let h = u32::from_be_bytes(e[..4].try_into().expect("4"));
            let phys = u64::from_be_bytes(e[4..12].try_into().expect("8"));
            let ts = from_entry_time(i32::from_be_bytes(e[12..16].try_into().expect("4")));
            let prev = u32::from_be_bytes(e[16..].try_into().expect("4"));
            // Stored times are whole seconds: widen the window by one second on each side.
            if h == hash
                && ts.saturating_add(1000) >= begin_ts
                && ts <= end_ts.saturating_add(1000)
                && !out.contains(&phys)
            {
                out.push(phys);
            }
            if prev >= n {
                break; // a link must point back; anything else is stale
            }
            n = prev;
        }
        false
    }
}

fn to_entry_time(ts_ms: i64) -> i32 {
    // Saturating: a forged record reached past damage may carry any STORETIMESTAMP, and an
    // overflow (checked in release builds too) would fail every open.
    (ts_ms.saturating_sub(TIME_EPOCH_MS) / 1000).clamp(0, i64::from(i32::MAX)) as i32
}

fn from_entry_time(s: i32) -> i64 {
    TIME_EPOCH_MS + i64::from(s) * 1000
}

/// The set of index files, newest last.
#[derive(Debug)]
pub(crate) struct Index {
    dir: PathBuf,
    slots: u32,
    entries: u32,
    io: Arc<dyn StorageIo>,
    files: Mutex<Vec<(u64, Arc<IndexFile>)>>,
    /// Set when sealing a full file failed to sync. The dispatcher retries the seal, and a
    /// retried `fdatasync` may report success after the kernel dropped what it could not
    /// write, so from then on [`Index::sync`] fails: the checkpoint marks the queues
    /// unsynced and the next open re-dispatches from the last good sync.
    seal_failed: std::sync::atomic::AtomicBool,
}

impl Index {
    /// Opens the index; after an unclean stop (`clean == false`) the newest file is rebuilt,
    /// keeping only entries below `log_end` (the recovered end of the commit log).
    pub(crate) fn open(
        dir: &Path,
        slots: u32,
        entries: u32,
        io: Arc<dyn StorageIo>,
        clean: bool,
        log_end: u64,
    ) -> Result<Self> {
        ensure_dir(dir)?;
        let mut names = list_numbered_files(dir)?;
        names.sort_unstable();
        crate::mapped::refuse_emptied(dir, &names)?;
        let mut files = Vec::new();
        let newest_name = names.last().copied();
        for name in names {
            let f = IndexFile::open(&dir.join(file_name(name)), slots, entries, io.as_ref())?;
            let newest = Some(name) == newest_name;
            if newest && (!clean || f.header_rejected) {
                f.rebuild(io.as_ref(), log_end)?;
            } else if newest {
                f.make_live();
            } else if f.header_rejected {
                // An older file is read from its map: rebuilt, written, then sealed again.
                f.rebuild(io.as_ref(), log_end)?;
                f.state.lock().live_slots = None;
            }
            files.push((name, Arc::new(f)));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            slots,
            entries,
            io,
            files: Mutex::new(files),
            seal_failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Indexes a batch of keys, rolling to new files as they fill.
    pub(crate) fn put_batch(&self, mut items: &[IndexItem]) -> Result<()> {
        while let Some(first) = items.first() {
            let file = self.active(first.phys)?;
            let taken = file.put_batch(items, self.io.as_ref())?;
            items = &items[taken..];
        }
        Ok(())
    }

    /// The file to write to, rolling when the newest is full (the full one is sealed first).
    fn active(&self, phys: u64) -> Result<Arc<IndexFile>> {
        let mut files = self.files.lock();
        if let Some((_, f)) = files.last() {
            if !f.is_full() {
                return Ok(Arc::clone(f));
            }
            if let Err(e) = f.seal(self.io.as_ref()) {
                self.seal_failed
                    .store(true, std::sync::atomic::Ordering::Release);
                return Err(e);
            }
        }
        let name = files.last().map_or(phys, |(n, _)| phys.max(n + 1));
        let f = Arc::new(IndexFile::open(
            &self.dir.join(file_name(name)),
            self.slots,
            self.entries,
            self.io.as_ref(),
        )?);
        f.make_live();
        if let Err(e) = sync_dir(&self.dir) {
            // The file's folder entry may not be durable (see `sync_dir`): no later index sync
            // of this run is trusted (the next open re-dispatches), as after a failed seal.
            self.seal_failed
                .store(true, std::sync::atomic::Ordering::Release);
            return Err(e);
        }
        files.push((name, Arc::clone(&f)));
        Ok(f)
    }

    /// Makes the newest file durable (older ones were sealed when they filled up).
    pub(crate) fn sync(&self) -> Result<()> {
        if self.seal_failed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(StoreError::SyncFailed(
                "an index file's sync failed when it was sealed; not synced again in this run"
                    .into(),
            ));
        }
        let newest = self.files.lock().last().map(|(_, f)| Arc::clone(f));
        match newest {
            Some(f) => f.sync(self.io.as_ref()),
            None => Ok(()),
        }
    }

    /// Commit-log offsets for `key` stored within `[begin_ts, end_ts]`, newest first.
    /// Commit-log offsets of `key`'s entries, newest file first, and whether a walk was cut
    /// short (more entries may exist than were returned).
    pub(crate) fn lookup(
        &self,
        key: &str,
        begin_ts: i64,
        end_ts: i64,
        max: usize,
    ) -> (Vec<u64>, bool) {
        let files: Vec<_> = self
            .files
            .lock()
            .iter()
            .map(|(_, f)| Arc::clone(f))
            .collect();
        let mut out = Vec::new();
        let mut truncated = false;
        for f in files.iter().rev() {
            let h = f.header();
            if h.count > 1
                && (h.end_ts.saturating_add(1000) < begin_ts
                    || h.begin_ts.saturating_sub(1000) > end_ts)
            {
                continue;
            }
            truncated |= f.lookup(key, begin_ts, end_ts, max, &mut out);
            if out.len() >= max {
                break;
            }
        }
        (out, truncated)
    }

    /// Deletes files whose entries all point below `log_min` (never the newest).
    pub(crate) fn delete_below(&self, log_min: u64) -> Result<usize> {
        let doomed: Vec<_> = {
            let mut files = self.files.lock();
            let mut out = Vec::new();
            while files.len() > 1 && files[0].1.header().end_phys < log_min {
                out.push(files.remove(0).1);
            }
            out
        };
        for f in &doomed {
            std::fs::remove_file(f.file.path())
                .map_err(|e| StoreError::io("delete", f.file.path(), e))?;
        }
        Ok(doomed.len())
    }
}

#[cfg(test)]
mod tests;
