//! The commit log: an ordered run of segments, each named by the commit-log offset of its
//! first byte (20 decimal digits, as RocketMQ names them). New segments have the configured
//! size; existing ones keep theirs, so the size can change between runs.
//!
//! This module owns the segment list and reads; the appender thread owns writing, and
//! `recovery` decides where the valid data ends.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::crash_point;
use crate::error::{Result, StoreError};
use crate::framing::{self, Probe, Seal};
use crate::io::StorageIo;
use crate::mapped::{ensure_dir, sync_dir, MappedFile};

/// One commit-log segment.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Commit-log offset of the first byte.
    pub(crate) base: u64,
    pub(crate) file: MappedFile,
}

impl Segment {
    /// Commit-log offset just past this segment.
    pub(crate) fn end(&self) -> u64 {
        self.base + self.file.len()
    }
}

/// The segment list.
#[derive(Debug)]
pub(crate) struct CommitLog {
    dir: PathBuf,
    segment_size: u64,
    io: Arc<dyn StorageIo>,
    segments: RwLock<Vec<Arc<Segment>>>,
    /// What trailer checksums start from (`framing`, "Sealed checksums"): set once at open,
    /// before any other thread runs, and read on every verification (so no lock).
    seal_key: AtomicU32,
    seal_from: AtomicU64,
}

/// The longest record any stored length field can describe (TOTALSIZE is an `i32`).
pub const STORED_RECORD_MAX: usize = i32::MAX as usize;

/// Where the log's data ends if a segment file is shorter than its place in the log (cut by
/// an operator or a tool; [`CommitLog::open`] pads such a file with zeros when a later one
/// follows it, and [`CommitLog::grow_last`] the last one after recovery): the end of the
/// first such file. Looked at before anything is padded.
pub(crate) fn short_file_end(dir: &Path, segment_size: u64) -> Result<Option<(u64, String)>> {
    if !dir.exists() {
        return Ok(None);
    }
    let mut bases = list_numbered_files(dir)?;
    bases.sort_unstable();
    for (i, &base) in bases.iter().enumerate() {
        let next = bases.get(i + 1).copied();
        let len = next.map_or(segment_size, |next| next - base);
        let path = dir.join(file_name(base));
        let found = std::fs::metadata(&path)
            .map_err(|e| StoreError::io("stat", &path, e))?
            .len();
        if found < len {
            // Said with both files: a gap between two whole files (one deleted or renamed)
            // read as "a segment file cut short", which sent operators to the wrong file.
            let why = match next {
                Some(next) => format!(
                    "segment file {} is {found} bytes but the next one starts at offset \
                     {next}: a file cut short, or segment files missing or renamed between \
                     them",
                    path.display()
                ),
                None => format!("segment file {} cut short to {found} bytes", path.display()),
            };
            return Ok(Some((base + found, why)));
        }
    }
    Ok(None)
}

/// 20-digit zero-padded decimal, RocketMQ's file naming.
pub(crate) fn file_name(offset: u64) -> String {
    format!("{offset:020}")
}

impl CommitLog {
    /// Opens every segment under `dir`, in offset order, checking that they are contiguous.
    pub(crate) fn open(
        dir: &Path,
        segment_size: u64,
        io: Arc<dyn StorageIo>,
        seal: Seal,
    ) -> Result<Self> {
        ensure_dir(dir)?;
        let mut bases = list_numbered_files(dir)?;
        bases.sort_unstable();
        let mut segments = Vec::with_capacity(bases.len());
        for (i, &base) in bases.iter().enumerate() {
            // A segment followed by another one is as long as the gap to it, whatever the
            // configured size is now: growing it to a raised size had broken contiguity (and
            // the open) for good. Only a shorter file (cut by a crash or an operator) is
            // extended. The last one keeps the length it has (an empty one gets the
            // configured size): if it was sealed under a smaller size, its end marker holds
            // only at that length. Recovery grows it once it knows the log ends inside it
            // (`grow_last`).
            let path = dir.join(file_name(base));
            let len = match bases.get(i + 1) {
                Some(next) => next - base,
                None => match std::fs::metadata(&path)
                    .map_err(|e| StoreError::io("stat", &path, e))?
                    .len()
                {
                    0 => segment_size,
                    found => found,
                },
            };
            let file = MappedFile::open_or_create(&path, len, io.as_ref())?;
            let seg = Arc::new(Segment { base, file });
            if let Some(prev) = segments.last().map(|s: &Arc<Segment>| s.end()) {
                if prev != base {
                    return Err(StoreError::Recovery(format!(
                        "commit-log segments are not contiguous: one ends at {prev}, the next starts at {base} ({})",
                        dir.display()
                    )));
                }
            }
            segments.push(seg);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            segment_size,
            io,
            segments: RwLock::new(segments),
            seal_key: AtomicU32::new(seal.key()),
            seal_from: AtomicU64::new(seal.from()),
        })
    }

    /// What trailer checksums start from.
    pub(crate) fn seal(&self) -> Seal {
        Seal::new(
            self.seal_key.load(Ordering::Acquire),
            self.seal_from.load(Ordering::Acquire),
        )
    }

    /// Sets the seal made at open for a folder without one, before the store's threads start.
    pub(crate) fn set_seal(&self, seal: Seal) {
        self.seal_key.store(seal.key(), Ordering::Release);
        self.seal_from.store(seal.from(), Ordering::Release);
    }

    /// Grows the last segment to the configured size when the log ends inside it (`end`) and
    /// it is shorter: written under a smaller size and not sealed, or cut short by a tool. A
    /// last segment the log ends at the end of (sealed, or full) keeps its length, and the
    /// appender starts the next segment. Run at open, before anything reads or writes.
    pub(crate) fn grow_last(&self, end: u64) -> Result<()> {
        let mut segs = self.segments.write();
        let Some(last) = segs.last_mut() else {
            return Ok(());
        };
        if end >= last.end() || last.file.len() >= self.segment_size {
            return Ok(());
        }
        let path = self.dir.join(file_name(last.base));
        let file = MappedFile::open_or_create(&path, self.segment_size, self.io.as_ref())?;
        *last = Arc::new(Segment {
            base: last.base,
            file,
        });
        Ok(())
    }

    /// The longest record a read accepts: any a record's length field can say (the segment's
    /// end and the checksum bound it), not the configured `max_record_size`, which sizes new
    /// appends only. Read against the configured one, a record stored before an operator
    /// lowered it counted as damage: never served again, and cut with every acknowledged
    /// record after it when it lay in the window an unclean stop rescans.
    pub(crate) fn max_record(&self) -> usize {
        STORED_RECORD_MAX
    }

    pub(crate) fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// The segment holding `offset`.
    pub(crate) fn segment_for(&self, offset: u64) -> Option<Arc<Segment>> {
        let segs = self.segments.read();
        let idx = segs.partition_point(|s| s.end() <= offset);
        segs.get(idx).filter(|s| s.base <= offset).cloned()
    }

    /// All segments, oldest first.
    pub(crate) fn segments(&self) -> Vec<Arc<Segment>> {
        self.segments.read().clone()
    }

    /// The newest segment.
    pub(crate) fn last(&self) -> Option<Arc<Segment>> {
        self.segments.read().last().cloned()
    }

    /// The lowest offset still on disk.
    pub(crate) fn min_offset(&self) -> u64 {
        self.segments.read().first().map_or(0, |s| s.base)
    }

    /// Creates the segment starting at `base` (which must follow the last one).
    pub(crate) fn create_segment(&self, base: u64) -> Result<Arc<Segment>> {
        let path = self.dir.join(file_name(base));
        let file = MappedFile::open_or_create(&path, self.segment_size, self.io.as_ref());
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&path); // leave no half-allocated segment behind
                return Err(e);
            }
        };
        // A failure is SyncFailed (see `sync_dir`): the appender fences the store on it.
        sync_dir(&self.dir)?;
        crash_point::reach_file(crash_point::SEGMENT_CREATED, &path);
        let seg = Arc::new(Segment { base, file });
        let mut segs = self.segments.write();
        if let Some(last) = segs.last() {
            debug_assert_eq!(last.end(), base, "segments must be contiguous");
        }
        segs.push(Arc::clone(&seg));
        tracing::info!(segment = %path.display(), base, "commit-log segment created");
        Ok(seg)
    }

    /// Deletes the oldest segment's file and removes it from the list. Readers holding its
    /// bytes keep them; the mapping lives until the last one is dropped.
    ///
    /// The file goes first and the segment leaves the list only after: when the removal
    /// fails, the segment stays listed (counted against `retention_bytes`, readable, tried
    /// again at the next pass) instead of lingering on disk unseen by the size budget. Its
    /// map stays valid for readers that hold it while the file is unlinked.
    pub(crate) fn delete_oldest(&self) -> Result<Option<Arc<Segment>>> {
        let seg = {
            let segs = self.segments.read();
            if segs.len() <= 1 {
                return Ok(None);
            }
            Arc::clone(&segs[0])
        };
        match std::fs::remove_file(seg.file.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("delete", seg.file.path(), e)),
        }
        {
            let mut segs = self.segments.write();
            if segs.first().is_some_and(|s| Arc::ptr_eq(s, &seg)) {
                segs.remove(0);
            }
        }
        sync_dir(&self.dir)?;
        Ok(Some(seg))
    }

    /// Deletes every segment that starts at or after `offset` (recovery, after a torn tail).
    pub(crate) fn delete_from(&self, offset: u64) -> Result<usize> {
        let doomed: Vec<_> = {
            let mut segs = self.segments.write();
            let keep = segs.partition_point(|s| s.base < offset);
            segs.split_off(keep)
        };
        // Newest first: a crash midway leaves the log's tail shorter, never a gap.
        for seg in doomed.iter().rev() {
            std::fs::remove_file(seg.file.path())
                .map_err(|e| StoreError::io("delete", seg.file.path(), e))?;
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(doomed.len())
    }

    /// Verifies and returns the record at `offset`: never bytes that fail verification.
    pub(crate) fn read(&self, offset: u64) -> Result<Bytes> {
        let seg = self
            .segment_for(offset)
            .ok_or(StoreError::NotFound(offset))?;
        let pos = (offset - seg.base) as usize;
        match framing::probe(
            seg.file.as_slice(),
            pos,
            seg.base,
            STORED_RECORD_MAX,
            self.seal(),
        ) {
            Probe::Record { total, .. } => seg
                .file
                .bytes(pos as u64, total)
                .ok_or(StoreError::NotFound(offset)),
            Probe::Empty | Probe::SegmentEnd { .. } => Err(StoreError::NotFound(offset)),
            Probe::Invalid(reason) => Err(StoreError::Corrupt {
                path: seg.file.path().to_path_buf(),
                position: pos as u64,
                reason,
            }),
        }
    }

    /// Total bytes of all segments.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.segments.read().iter().map(|s| s.file.len()).sum()
    }
}

/// Numbers of the files in `dir` whose names are all digits (temporary files are ignored).
pub(crate) fn list_numbered_files(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = name.parse() {
                out.push(n);
            }
        }
    }
    Ok(out)
}
