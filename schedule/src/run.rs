//! Runs: immutable files of index entries sorted by key, written once and fsynced, then
//! named in the state file. A run is read by key range through a sparse index kept in its
//! footer, so opening one reads a few KiB, not its entries.
//!
//! File: `entries (32 B each, sorted by (key, kind)) | sparse keys (16 B each, the key of
//! every SPARSE_EVERY-th entry) | footer (64 B)`. Footer: `magic "SLTRUN01" | count u64 |
//! sparse count u64 | min key (i64, u64) | max key (i64, u64) | sparse CRC u32 | footer CRC
//! u32`. Every entry carries its own CRC (see [`crate::entry`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::entry::{DiskEntry, Key, Kind, ENTRY_LEN};
use crate::error::{Result, ScheduleError};

const MAGIC: &[u8; 8] = b"SLTRUN01";
const FOOTER_LEN: usize = 64;
/// One sparse key per this many entries (a 4 KiB read block).
pub(crate) const SPARSE_EVERY: usize = 128;

/// An open run.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) id: u64,
    path: PathBuf,
    file: File,
    pub(crate) count: u64,
    pub(crate) min: Key,
    pub(crate) max: Key,
    sparse: Vec<Key>,
}

/// The file name of run `id`.
pub(crate) fn run_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.run"))
}

/// Run ids of the `*.run` files in `dir`.
pub(crate) fn list_runs(dir: &Path) -> Result<Vec<u64>> {
    let entries = std::fs::read_dir(dir).map_err(|e| ScheduleError::io("list", dir, e))?;
    let mut ids: Vec<u64> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".run")?.parse().ok()
        })
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Writes sorted entries as run `id` (temp file, fsync, rename, fsync folder); `None` when
/// there were no entries. A failed write removes its temporary file: left behind (a full
/// disk), it held its space until the next attempt, which refilled it with a new merge, so
/// space an operator freed was taken again.
pub(crate) fn write_run(
    dir: &Path,
    id: u64,
    entries: impl Iterator<Item = DiskEntry>,
) -> Result<Option<Run>> {
    let path = run_path(dir, id);
    let tmp = path.with_extension("run.tmp");
    let written = write_through_tmp(dir, id, path, &tmp, entries);
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn write_through_tmp(
    dir: &Path,
    id: u64,
    path: PathBuf,
    tmp: &Path,
    entries: impl Iterator<Item = DiskEntry>,
) -> Result<Option<Run>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(|e| ScheduleError::io("create", tmp, e))?;
    let mut w = BufWriter::with_capacity(1 << 16, file);
    let io = |e| ScheduleError::io("write", tmp, e);
    let (mut count, mut sparse, mut min, mut max) = (0u64, Vec::new(), None, Key::MIN);
    let mut last: Option<(Key, Kind)> = None;
    for e in entries {
        debug_assert!(
            last.is_none_or(|l| l <= (e.key, e.kind)),
            "run entries out of order"
        );
        last = Some((e.key, e.kind));
        if count % SPARSE_EVERY as u64 == 0 {
            sparse.push(e.key);
        }
        min.get_or_insert(e.key);
        max = e.key;
        w.write_all(&e.encode()).map_err(io)?;
        count += 1;
    }
    let Some(min) = min else {
        drop(w);
        let _ = std::fs::remove_file(tmp);
        return Ok(None);
    };
    let mut sparse_bytes = Vec::with_capacity(sparse.len() * 16);
    for k in &sparse {
        sparse_bytes.extend_from_slice(&k.fire_ms.to_be_bytes());
        sparse_bytes.extend_from_slice(&k.phys.to_be_bytes());
    }
    w.write_all(&sparse_bytes).map_err(io)?;
    w.write_all(&footer(count, sparse.len() as u64, min, max, &sparse_bytes))
        .map_err(io)?;
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all()
        .map_err(|e| ScheduleError::io("fsync", tmp, e))?;
    std::fs::rename(tmp, &path).map_err(|e| ScheduleError::io("rename", &path, e))?;
    sync_dir(dir)?;
    Ok(Some(Run {
        id,
        path,
        file,
        count,
        min,
        max,
        sparse,
    }))
}

fn footer(count: u64, sparse_n: u64, min: Key, max: Key, sparse: &[u8]) -> [u8; FOOTER_LEN] {
    let mut f = [0u8; FOOTER_LEN];
    f[0..8].copy_from_slice(MAGIC);
    f[8..16].copy_from_slice(&count.to_be_bytes());
    f[16..24].copy_from_slice(&sparse_n.to_be_bytes());
    f[24..32].copy_from_slice(&min.fire_ms.to_be_bytes());
    f[32..40].copy_from_slice(&min.phys.to_be_bytes());
    f[40..48].copy_from_slice(&max.fire_ms.to_be_bytes());
    f[48..56].copy_from_slice(&max.phys.to_be_bytes());
    f[56..60].copy_from_slice(&crc32fast::hash(sparse).to_be_bytes());
    let crc = crc32fast::hash(&f[..60]);
    f[60..64].copy_from_slice(&crc.to_be_bytes());
    f
}

/// Makes a rename or delete in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ScheduleError::io("fsync folder", dir, e))
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

impl Run {
    /// Opens run `id`, reading and checking only its footer and sparse index.
    pub(crate) fn open(dir: &Path, id: u64) -> Result<Self> {
        let path = run_path(dir, id);
        let file = File::open(&path).map_err(|e| ScheduleError::io("open", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| ScheduleError::io("stat", &path, e))?
            .len();
        let bad = |r: &str| ScheduleError::corrupt(&path, r.to_owned());
        if len < FOOTER_LEN as u64 {
            return Err(bad("shorter than a footer"));
        }
        let mut f = [0u8; FOOTER_LEN];
        file.read_exact_at(&mut f, len - FOOTER_LEN as u64)
            .map_err(|e| ScheduleError::io("read", &path, e))?;
        if &f[0..8] != MAGIC || be_u32(&f, 60) != crc32fast::hash(&f[..60]) {
            return Err(bad("bad footer"));
        }
        let (count, sparse_n) = (be_u64(&f, 8), be_u64(&f, 16));
        let expect = count
            .checked_mul(ENTRY_LEN as u64)
            .and_then(|n| n.checked_add(sparse_n.checked_mul(16)?))
            .and_then(|n| n.checked_add(FOOTER_LEN as u64));
        if expect != Some(len) || sparse_n != count.div_ceil(SPARSE_EVERY as u64) {
            return Err(bad("footer counts do not match the file length"));
        }
        let mut raw = vec![0u8; sparse_n as usize * 16];
        file.read_exact_at(&mut raw, count * ENTRY_LEN as u64)
            .map_err(|e| ScheduleError::io("read", &path, e))?;
        if crc32fast::hash(&raw) != be_u32(&f, 56) {
            return Err(bad("sparse index CRC mismatch"));
        }
        let sparse = raw
            .chunks_exact(16)
            .map(|c| Key::new(be_u64(c, 0) as i64, be_u64(c, 8)))
            .collect();
        Ok(Self {
            id,
            path,
            file,
            count,
            min: Key::new(be_u64(&f, 24) as i64, be_u64(&f, 32)),
            max: Key::new(be_u64(&f, 40) as i64, be_u64(&f, 48)),
            sparse,
        })
    }

    /// Reads every entry and checks its CRC, kind and order (at start: `open` reads only the
    /// footer and sparse index, and a damaged entry found later by the deliverer stopped the
    /// window at its block for good, across restarts; found here, the index is rebuilt from
    /// the timer queues). Reads 1 MiB at a time.
    pub(crate) fn verify(&self) -> Result<()> {
        const CHUNK: u64 = 32 * 1024;
        let bad = |r: String| ScheduleError::corrupt(&self.path, r);
        let mut buf = Vec::new();
        let mut prev: Option<Key> = None;
        let mut at = 0u64;
        while at < self.count {
            let n = CHUNK.min(self.count - at);
            buf.resize(n as usize * ENTRY_LEN, 0);
            self.file
                .read_exact_at(&mut buf, at * ENTRY_LEN as u64)
                .map_err(|e| ScheduleError::io("read", &self.path, e))?;
            for (i, raw) in buf.chunks_exact(ENTRY_LEN).enumerate() {
                let e = DiskEntry::decode(raw)
                    .map_err(|why| bad(format!("entry {}: {why}", at + i as u64)))?;
                if prev.is_some_and(|p| p > e.key) {
                    return Err(bad(format!("entry {} out of order", at + i as u64)));
                }
                prev = Some(e.key);
            }
            at += n;
        }
        Ok(())
    }

    /// The file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends to `out` the entries with `from <= key < to`, at most `limit`.
    pub(crate) fn read_range(
        &self,
        from: Key,
        to: Key,
        limit: usize,
        out: &mut Vec<DiskEntry>,
    ) -> Result<()> {
        if self.max < from || self.min >= to || limit == 0 {
            return Ok(());
        }
        let block = self.sparse.partition_point(|k| *k < from).saturating_sub(1);
        let mut cursor = Cursor::new(self, block as u64 * SPARSE_EVERY as u64);
        let mut taken = 0;
        while let Some(e) = cursor.next_entry()? {
            if e.key >= to || taken >= limit {
                break;
            }
            if e.key >= from {
                out.push(e);
                taken += 1;
            }
        }
        Ok(())
    }

    /// What this run says about one key: the timer's kind and size, and whether a tombstone
    /// for it is here.
    pub(crate) fn lookup(&self, key: Key) -> Result<(Option<(Kind, u32)>, bool)> {
        let mut found = Vec::new();
        self.read_range(key, key.next(), 4, &mut found)?;
        let target = found
            .iter()
            .find(|e| e.kind != Kind::Tombstone)
            .map(|e| (e.kind, e.size));
        Ok((target, found.iter().any(|e| e.kind == Kind::Tombstone)))
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}

/// Reads a run's entries in order, a block at a time.
struct Cursor<'a> {
    run: &'a Run,
    next: u64,
    buf: Vec<DiskEntry>,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(run: &'a Run, start: u64) -> Self {
        Self {
            run,
            next: start,
            buf: Vec::new(),
            pos: 0,
        }
    }

    fn next_entry(&mut self) -> Result<Option<DiskEntry>> {
        if self.pos == self.buf.len() {
            self.fill()?;
        }
        let e = self.buf.get(self.pos).copied();
        self.pos += 1;
        Ok(e)
    }

    fn fill(&mut self) -> Result<()> {
        self.buf.clear();
        self.pos = 0;
        let n = (self.run.count.saturating_sub(self.next)).min(SPARSE_EVERY as u64) as usize;
        if n == 0 {
            return Ok(());
        }
        let mut raw = vec![0u8; n * ENTRY_LEN];
        let at = self.next * ENTRY_LEN as u64;
        self.run
            .file
            .read_exact_at(&mut raw, at)
            .map_err(|e| ScheduleError::io("read", &self.run.path, e))?;
        for (i, chunk) in raw.chunks_exact(ENTRY_LEN).enumerate() {
            let e = DiskEntry::decode(chunk).map_err(|r| {
                ScheduleError::corrupt(
                    &self.run.path,
                    format!("entry {}: {r}", self.next + i as u64),
                )
            })?;
            self.buf.push(e);
        }
        self.next += n as u64;
        Ok(())
    }
}

/// Merges runs into run `id`, dropping entries below `below` (done) and timers whose
/// tombstone is among the inputs (both go). Tombstones without their timer are kept: it may
/// sit in a run not merged here. Streams: memory does not grow with the runs' size.
pub(crate) fn merge(dir: &Path, id: u64, runs: &[Arc<Run>], below: Key) -> Result<Option<Run>> {
    let mut it = MergeIter {
        cursors: runs.iter().map(|r| Cursor::new(r, 0)).collect(),
        heap: BinaryHeap::new(),
        group: Vec::new(),
        below,
        error: None,
        started: false,
    };
    let run = write_run(dir, id, &mut it);
    if let Some(err) = it.error {
        if let Ok(Some(r)) = &run {
            let _ = std::fs::remove_file(r.path());
        }
        return Err(err);
    }
    run
}

/// The k-way merge behind [`merge`]; a read error ends it and is kept in `error`.
struct MergeIter<'a> {
    cursors: Vec<Cursor<'a>>,
    heap: BinaryHeap<Reverse<(DiskEntry, usize)>>,
    /// Entries of the key being gathered.
    group: Vec<DiskEntry>,
    below: Key,
    error: Option<ScheduleError>,
    started: bool,
}

impl MergeIter<'_> {
    fn pull(&mut self, i: usize) {
        match self.cursors[i].next_entry() {
            Ok(Some(e)) => self.heap.push(Reverse((e, i))),
            Ok(None) => {}
            Err(e) => self.error = Some(e),
        }
    }

    /// What a finished group leaves in the output.
    fn resolve(group: &[DiskEntry]) -> Option<DiskEntry> {
        let tomb = group.iter().any(|e| e.kind == Kind::Tombstone);
        let timer = group.iter().find(|e| e.kind != Kind::Tombstone).copied();
        match (timer, tomb) {
            (Some(t), false) => Some(t),
            (None, true) => group.first().copied(),
            _ => None,
        }
    }
}

impl Iterator for MergeIter<'_> {
    type Item = DiskEntry;

    fn next(&mut self) -> Option<DiskEntry> {
        if !self.started {
            self.started = true;
            for i in 0..self.cursors.len() {
                self.pull(i);
            }
        }
        loop {
            if self.error.is_some() {
                return None;
            }
            let Some(Reverse((e, i))) = self.heap.pop() else {
                let out = Self::resolve(&self.group);
                self.group.clear();
                return out;
            };
            self.pull(i);
            if e.key < self.below {
                continue;
            }
            if self.group.first().is_some_and(|g| g.key != e.key) {
                let out = Self::resolve(&self.group);
                self.group.clear();
                self.group.push(e);
                if out.is_some() {
                    return out;
                }
            } else {
                self.group.push(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(fire: i64, phys: u64, kind: Kind) -> DiskEntry {
        DiskEntry {
            key: Key::new(fire, phys),
            kind,
            size: 100,
        }
    }

    #[test]
    fn ranges_and_lookups_find_exactly_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<DiskEntry> = (0..1000).map(|i| e(i / 3, i as u64, Kind::Fire)).collect();
        let run = write_run(dir.path(), 7, entries.clone().into_iter())
            .unwrap()
            .unwrap();
        drop(run);
        let run = Run::open(dir.path(), 7).unwrap();
        assert_eq!(
            (run.count, run.min, run.max),
            (1000, entries[0].key, entries[999].key)
        );
        let mut out = Vec::new();
        run.read_range(Key::at(100), Key::at(200), usize::MAX, &mut out)
            .unwrap();
        assert_eq!(out, entries[300..600].to_vec());
        out.clear();
        run.read_range(Key::at(100), Key::at(200), 7, &mut out)
            .unwrap();
        assert_eq!(out.len(), 7);
        assert_eq!(
            run.lookup(Key::new(5, 15)).unwrap(),
            (Some((Kind::Fire, 100)), false)
        );
        assert_eq!(run.lookup(Key::new(5, 18)).unwrap(), (None, false));
        assert!(write_run(dir.path(), 8, std::iter::empty())
            .unwrap()
            .is_none());
        assert_eq!(list_runs(dir.path()).unwrap(), vec![7]);
    }

    /// A temporary run left by a failed write kept its space (on a full disk, until the next
    /// merge refilled it). Here the rename fails: a folder holds the run's name.
    #[test]
    fn a_failed_run_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = run_path(dir.path(), 3);
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("blocker"), b"x").unwrap();
        let entries = (0..100).map(|i| e(i, i as u64, Kind::Fire));
        assert!(write_run(dir.path(), 3, entries).is_err());
        assert!(!path.with_extension("run.tmp").exists());
    }

    #[test]
    fn merging_drops_done_and_cancelled_pairs_but_keeps_lonely_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let a = [
            e(1, 1, Kind::Fire),
            e(5, 2, Kind::Fire),
            e(9, 3, Kind::Roll),
        ];
        let b = [
            e(5, 2, Kind::Tombstone),
            e(7, 4, Kind::Tombstone),
            e(8, 5, Kind::Fire),
        ];
        let ra = Arc::new(write_run(dir.path(), 1, a.into_iter()).unwrap().unwrap());
        let rb = Arc::new(write_run(dir.path(), 2, b.into_iter()).unwrap().unwrap());
        let m = merge(dir.path(), 3, &[ra, rb], Key::at(2))
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        m.read_range(Key::MIN, Key::at(i64::MAX), usize::MAX, &mut out)
            .unwrap();
        assert_eq!(
            out,
            vec![
                e(7, 4, Kind::Tombstone),
                e(8, 5, Kind::Fire),
                e(9, 3, Kind::Roll)
            ]
        );
    }

    #[test]
    fn a_flipped_bit_is_reported_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let run = write_run(dir.path(), 1, (0..10).map(|i| e(i, i as u64, Kind::Fire)))
            .unwrap()
            .unwrap();
        let path = run.path().to_owned();
        drop(run);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        let run = Run::open(dir.path(), 1).unwrap();
        let mut out = Vec::new();
        let err = run
            .read_range(Key::MIN, Key::at(100), 100, &mut out)
            .unwrap_err();
        assert!(matches!(err, ScheduleError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn verifying_a_run_finds_a_damaged_entry_its_open_does_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let run = write_run(dir.path(), 1, (0..300).map(|i| e(i, i as u64, Kind::Fire)))
            .unwrap()
            .unwrap();
        run.verify().unwrap();
        let path = run.path().to_owned();
        drop(run);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[200 * ENTRY_LEN + 3] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        let run = Run::open(dir.path(), 1).expect("the footer and sparse index are intact");
        let err = run.verify().unwrap_err();
        assert!(err.to_string().contains("entry 200"), "{err}");
    }
}
