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
//! Entry 0 is unused so that 0 means "none". A put writes the entry (whose `prev` is the slot's
//! old value), then the slot. The header is written at sync time. After an unclean stop the
//! newest file's slots are rebuilt from its entries up to the first empty one; entries for
//! records after the checkpoint are then added again by the dispatcher. A query therefore
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
/// Upper bound on chain steps per file and query, so a hot key cannot stall a query.
const MAX_CHAIN_STEPS: usize = 100_000;

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

#[derive(Debug)]
struct IndexFile {
    file: MappedFile,
    slots: u32,
    entries: u32,
    header: Mutex<Header>,
}

impl IndexFile {
    fn open(path: &Path, slots: u32, entries: u32, io: &dyn StorageIo) -> Result<Self> {
        let len = HEADER_LEN + u64::from(slots) * 4 + u64::from(entries) * ENTRY_LEN;
        let file = MappedFile::open_or_create(path, len, io)?;
        let b = file.as_slice();
        let rd64 = |p: usize| i64::from_be_bytes(b[p..p + 8].try_into().expect("8 bytes"));
        let rd32 = |p: usize| u32::from_be_bytes(b[p..p + 4].try_into().expect("4 bytes"));
        let on_disk_slots = rd32(32);
        let (slots, count) = if on_disk_slots == 0 {
            (slots, 1)
        } else {
            (on_disk_slots, rd32(36).max(1))
        };
        let entries = ((file.len() - HEADER_LEN - u64::from(slots) * 4) / ENTRY_LEN) as u32;
        let header = Header {
            begin_ts: rd64(0),
            end_ts: rd64(8),
            begin_phys: rd64(16) as u64,
            end_phys: rd64(24) as u64,
            count,
        };
        Ok(Self {
            file,
            slots,
            entries,
            header: Mutex::new(header),
        })
    }

    fn slot_pos(&self, hash: u32) -> u64 {
        HEADER_LEN + u64::from(hash % self.slots) * 4
    }

    fn entry_pos(&self, n: u32) -> u64 {
        HEADER_LEN + u64::from(self.slots) * 4 + u64::from(n) * ENTRY_LEN
    }

    fn read_u32(&self, pos: u64) -> u32 {
        self.file
            .slice(pos, 4)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }

    fn is_full(&self) -> bool {
        self.header.lock().count >= self.entries
    }

    /// Adds one entry. The caller rolls to a new file when this one is full.
    fn put(&self, key: &str, phys: u64, store_ts: i64, io: &dyn StorageIo) -> Result<()> {
        let mut h = self.header.lock();
        if h.count >= self.entries {
            return Err(StoreError::Recovery("index file full".into()));
        }
        if h.count == 1 {
            h.begin_ts = store_ts;
            h.end_ts = store_ts;
            h.begin_phys = phys;
        }
        let hash = key_hash(key);
        let slot_pos = self.slot_pos(hash);
        let prev = self.read_u32(slot_pos);
        let diff = to_entry_time(store_ts);
        let mut entry = [0u8; ENTRY_LEN as usize];
        entry[..4].copy_from_slice(&hash.to_be_bytes());
        entry[4..12].copy_from_slice(&phys.to_be_bytes());
        entry[12..16].copy_from_slice(&diff.to_be_bytes());
        entry[16..].copy_from_slice(&prev.to_be_bytes());
        let n = h.count;
        self.file.write_at(io, &entry, self.entry_pos(n))?;
        self.file.write_at(io, &n.to_be_bytes(), slot_pos)?;
        h.count += 1;
        h.begin_ts = h.begin_ts.min(store_ts);
        h.end_ts = h.end_ts.max(store_ts);
        h.end_phys = h.end_phys.max(phys);
        Ok(())
    }

    fn write_header(&self, io: &dyn StorageIo) -> Result<()> {
        let h = *self.header.lock();
        let mut out = [0u8; HEADER_LEN as usize];
        out[..8].copy_from_slice(&h.begin_ts.to_be_bytes());
        out[8..16].copy_from_slice(&h.end_ts.to_be_bytes());
        out[16..24].copy_from_slice(&h.begin_phys.to_be_bytes());
        out[24..32].copy_from_slice(&h.end_phys.to_be_bytes());
        out[32..36].copy_from_slice(&self.slots.to_be_bytes());
        out[36..40].copy_from_slice(&h.count.to_be_bytes());
        self.file.write_at(io, &out, 0)
    }

    fn sync(&self, io: &dyn StorageIo) -> Result<()> {
        self.write_header(io)?;
        self.file.sync(io)
    }

    /// After an unclean stop: count the entries up to the first empty one and rebuild the
    /// slot table from them (entries carry their own chain links).
    fn rebuild(&self, io: &dyn StorageIo) -> Result<()> {
        let written = |n: u32| {
            self.file
                .slice(self.entry_pos(n), ENTRY_LEN as usize)
                .is_some_and(|e| e.iter().any(|b| *b != 0))
        };
        let mut n = 1;
        while n < self.entries && written(n) {
            n += 1;
        }
        let mut slots = vec![0u8; self.slots as usize * 4];
        let (mut begin_ts, mut end_ts, mut begin_phys, mut end_phys) =
            (i64::MAX, i64::MIN, u64::MAX, 0u64);
        for i in 1..n {
            let e = self
                .file
                .slice(self.entry_pos(i), ENTRY_LEN as usize)
                .expect("entry in range");
            let hash = u32::from_be_bytes(e[..4].try_into().expect("4"));
            let phys = u64::from_be_bytes(e[4..12].try_into().expect("8"));
            let diff = i32::from_be_bytes(e[12..16].try_into().expect("4"));
            let s = (hash % self.slots) as usize * 4;
            slots[s..s + 4].copy_from_slice(&i.to_be_bytes());
            let ts = from_entry_time(diff);
            (begin_ts, end_ts) = (begin_ts.min(ts), end_ts.max(ts + 999));
            (begin_phys, end_phys) = (begin_phys.min(phys), end_phys.max(phys));
        }
        self.file.write_at(io, &slots, HEADER_LEN)?;
        // Clear what lies beyond the first empty entry, so no stale chain link survives.
        let stale_from = self.entry_pos(n);
        let stale_to = self.entry_pos(self.entries);
        zero_range(&self.file, io, stale_from, stale_to)?;
        {
            let mut h = self.header.lock();
            h.count = n;
            if n > 1 {
                (h.begin_ts, h.end_ts, h.begin_phys, h.end_phys) =
                    (begin_ts, end_ts, begin_phys, end_phys);
            }
        }
        self.sync(io)
    }

    /// Commit-log offsets of entries matching `key`, newest first.
    fn lookup(&self, key: &str, begin_ts: i64, end_ts: i64, max: usize, out: &mut Vec<u64>) {
        let hash = key_hash(key);
        let count = self.header.lock().count;
        let mut n = self.read_u32(self.slot_pos(hash));
        let mut steps = 0;
        while n != 0 && n < count && out.len() < max && steps < MAX_CHAIN_STEPS {
            steps += 1;
            let Some(e) = self.file.slice(self.entry_pos(n), ENTRY_LEN as usize) else {
                break;
            };
            let h = u32::from_be_bytes(e[..4].try_into().expect("4"));
            let phys = u64::from_be_bytes(e[4..12].try_into().expect("8"));
            let ts = from_entry_time(i32::from_be_bytes(e[12..16].try_into().expect("4")));
            let prev = u32::from_be_bytes(e[16..].try_into().expect("4"));
            // Stored times are whole seconds: widen the window by one second on each side.
            if h == hash && ts + 1000 >= begin_ts && ts <= end_ts + 1000 && !out.contains(&phys) {
                out.push(phys);
            }
            if prev >= n {
                break; // a link must point back; anything else is stale
            }
            n = prev;
        }
    }
}

fn to_entry_time(ts_ms: i64) -> i32 {
    ((ts_ms - TIME_EPOCH_MS) / 1000).clamp(0, i64::from(i32::MAX)) as i32
}

fn from_entry_time(s: i32) -> i64 {
    TIME_EPOCH_MS + i64::from(s) * 1000
}

fn zero_range(file: &MappedFile, io: &dyn StorageIo, from: u64, to: u64) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    let mut pos = from;
    let zeros = vec![0u8; CHUNK as usize];
    while pos < to {
        let slice = file
            .slice(pos, (to - pos).min(CHUNK) as usize)
            .unwrap_or(&[]);
        let n = slice.len() as u64;
        if n == 0 {
            break;
        }
        if slice.iter().any(|b| *b != 0) {
            file.write_at(io, &zeros[..n as usize], pos)?;
        }
        pos += n;
    }
    Ok(())
}

/// The set of index files, newest last.
#[derive(Debug)]
pub(crate) struct Index {
    dir: PathBuf,
    slots: u32,
    entries: u32,
    io: Arc<dyn StorageIo>,
    files: Mutex<Vec<(u64, Arc<IndexFile>)>>,
}

impl Index {
    /// Opens the index; after an unclean stop (`clean == false`) the newest file is rebuilt.
    pub(crate) fn open(
        dir: &Path,
        slots: u32,
        entries: u32,
        io: Arc<dyn StorageIo>,
        clean: bool,
    ) -> Result<Self> {
        ensure_dir(dir)?;
        let mut names = list_numbered_files(dir)?;
        names.sort_unstable();
        let mut files = Vec::new();
        for name in names {
            let f = IndexFile::open(&dir.join(file_name(name)), slots, entries, io.as_ref())?;
            files.push((name, Arc::new(f)));
        }
        if !clean {
            if let Some((_, newest)) = files.last() {
                newest.rebuild(io.as_ref())?;
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            slots,
            entries,
            io,
            files: Mutex::new(files),
        })
    }

    /// Indexes `key` for the record at `phys`.
    pub(crate) fn put(&self, key: &str, phys: u64, store_ts: i64) -> Result<()> {
        let file = self.active(phys)?;
        file.put(key, phys, store_ts, self.io.as_ref())
    }

    /// The file to write to, rolling when the newest is full (the full one is synced first).
    fn active(&self, phys: u64) -> Result<Arc<IndexFile>> {
        let mut files = self.files.lock();
        if let Some((_, f)) = files.last() {
            if !f.is_full() {
                return Ok(Arc::clone(f));
            }
            f.sync(self.io.as_ref())?;
        }
        let name = files.last().map_or(phys, |(n, _)| phys.max(n + 1));
        let f = Arc::new(IndexFile::open(
            &self.dir.join(file_name(name)),
            self.slots,
            self.entries,
            self.io.as_ref(),
        )?);
        sync_dir(&self.dir)?;
        files.push((name, Arc::clone(&f)));
        Ok(f)
    }

    /// Makes the newest file durable (older ones were synced when they filled up).
    pub(crate) fn sync(&self) -> Result<()> {
        let newest = self.files.lock().last().map(|(_, f)| Arc::clone(f));
        match newest {
            Some(f) => f.sync(self.io.as_ref()),
            None => Ok(()),
        }
    }

    /// Commit-log offsets for `key` stored within `[begin_ts, end_ts]`, newest first.
    pub(crate) fn lookup(&self, key: &str, begin_ts: i64, end_ts: i64, max: usize) -> Vec<u64> {
        let files: Vec<_> = self
            .files
            .lock()
            .iter()
            .map(|(_, f)| Arc::clone(f))
            .collect();
        let mut out = Vec::new();
        for f in files.iter().rev() {
            let h = *f.header.lock();
            if h.count > 1 && (h.end_ts + 1000 < begin_ts || h.begin_ts - 1000 > end_ts) {
                continue;
            }
            f.lookup(key, begin_ts, end_ts, max, &mut out);
            if out.len() >= max {
                break;
            }
        }
        out
    }

    /// Deletes files whose entries all point below `log_min` (never the newest).
    pub(crate) fn delete_below(&self, log_min: u64) -> Result<usize> {
        let doomed: Vec<_> = {
            let mut files = self.files.lock();
            let mut out = Vec::new();
            while files.len() > 1 && files[0].1.header.lock().end_phys < log_min {
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
