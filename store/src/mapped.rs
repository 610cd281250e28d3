//! A file of fixed size with a memory map.
//!
//! Every file the store maps (commit-log segments, consume-queue files, index files) is created
//! at its full size before it is mapped and never shrunk while mapped. Commit-log segments get
//! their blocks up front (`fallocate`); consume-queue and index files are sparse (below).
//! Retention unlinks files; a mapping outlives the unlink, so readers holding a [`Bytes`] slice
//! stay valid.
//!
//! Commit-log segments are mapped read-only and written only through [`StorageIo`] (`pwrite`),
//! so fault injection sees every record write. Consume-queue and index files
//! ([`MappedFile::open_zeroed`]) are mapped writable as well: their entries are 20-32 bytes,
//! and the dispatcher writes them through the map ([`MappedFile::write_mapped`]) rather than
//! with one `pwrite` system call per queue per batch (the largest part of its cost in the
//! produce profiles). `fdatasync` on the file makes pages dirtied through the map durable like
//! any other.
//!
//! A mapped write into a hole would need a block at fault time and SIGBUS on a full disk, so
//! entries only ever land in space already written: a new file gets its head (the index's
//! slot table) written with zeros at creation, and the rest is zeroed [`ZERO_AHEAD`] bytes at
//! a time with `pwrite` just ahead of the sequential entry writes. Those zeros are what gives
//! the file its blocks: a queue holding a few messages takes ~256 KiB of disk, not 6 MB (and
//! an index file ~4 MB, not 84 MB). A `pwrite` that finds the disk full fails cleanly, and a
//! mapped write that would pass the zeroed space is then refused, to be retried. A file found
//! on disk resumes zeroing after its written data. Zeroing a whole new index file (84 MB) and
//! its fdatasync on the dispatcher thread had held every producer's sync behind it at the disk
//! (up to ~45 ms in the HTTP benchmark); entry writes also convert no extents.
//!
//! Those sparse maps are advised random access (`MADV_RANDOM`): a fault reads its own page and
//! no read-around. With the kernel's read-around, the first look at a queue file's few written
//! entries (recovery reads each queue's end at open) read the whole 6 MB file, holes and all,
//! as zero-filled page cache: a restart over 1 200 queues added ~6.9 GB of cache and took
//! seconds. Their readers want entries, not the pages around them; the commit log's sequential
//! reads keep the default.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{Mmap, MmapRaw};
use parking_lot::Mutex;

use crate::error::{Result, StoreError};
use crate::io::StorageIo;

/// One mapped file. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub(crate) struct MappedFile {
    path: PathBuf,
    file: File,
    map: Arc<Map>,
    len: u64,
    /// For a file opened by [`MappedFile::open_zeroed`]: the end of the space written (with
    /// zeros or entries) so far. Nothing at or after it has ever been written, and it may be a
    /// hole: mapped writes stay below it.
    zeroed_to: Option<Mutex<u64>>,
}

/// What [`MappedFile::clear_from`] did, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Cleared {
    /// Read to look for non-zero bytes.
    pub(crate) examined: u64,
    /// Overwritten with zeros.
    pub(crate) zeroed: u64,
}

/// How far ahead of an entry write the rest of a new consume-queue or index file is zeroed.
pub(crate) const ZERO_AHEAD: u64 = 256 * 1024;
/// The largest single write of those zeros. The page cache keeps a write's pages as one
/// folio, and the first entry written through the map then maps the whole folio: zeroed 256
/// KiB at a time, every queue holding a message kept 256 KiB resident (500 MB for 2 000
/// queues). In 16 KiB writes, a queue's first entry maps 16 KiB; the extra system calls
/// cost a few nanoseconds per entry.
const ZERO_AHEAD_WRITE: usize = 16 * 1024;

/// The mapping: read-only, or writable for files written through it.
#[derive(Debug)]
enum Map {
    Read(Mmap),
    Write(MmapRaw),
}

impl Map {
    /// The whole mapping. For a writable one, only while nothing writes it (at open, in
    /// tests): a slice of the whole map while the dispatcher writes other bytes through it
    /// would alias those writes. Readers of a live file use [`Map::range`].
    #[allow(unsafe_code)]
    fn as_slice(&self) -> &[u8] {
        match self {
            Map::Read(m) => m,
            // SAFETY: the pointer and length describe one live MAP_SHARED mapping owned by
            // `self`, of a file that is never truncated while mapped (see `map_file`); callers
            // take the whole of a writable map only while no thread writes through it.
            Map::Write(m) => unsafe { std::slice::from_raw_parts(m.as_ptr(), m.len()) },
        }
    }

    /// `len` bytes at `start`, or `None` when out of range.
    #[allow(unsafe_code)]
    fn range(&self, start: usize, len: usize) -> Option<&[u8]> {
        let end = start.checked_add(len)?;
        match self {
            Map::Read(m) => m.get(start..end),
            Map::Write(m) if end <= m.len() => {
                // SAFETY: `[start, end)` lies inside one live MAP_SHARED mapping owned by
                // `self`, of a file that is never truncated while mapped (see `map_file`). It
                // covers only the bytes asked for: a writer writes (through `write_mapped`)
                // only positions no reader looks at before the writer publishes them, the
                // same contract `pwrite` had, so no write aliases this slice.
                Some(unsafe { std::slice::from_raw_parts(m.as_ptr().add(start), len) })
            }
            Map::Write(_) => None,
        }
    }
}

impl MappedFile {
    /// Opens `path`, creating it if needed, makes sure it has `len` bytes of real blocks, and
    /// maps it. A shorter file (a new one, or one cut short by a crash or an operator) is
    /// extended with zeros, which read as "no record here".
    pub(crate) fn open_or_create(path: &Path, len: u64, io: &dyn StorageIo) -> Result<Self> {
        Self::open_with(path, len, io, None)
    }

    /// As [`MappedFile::open_or_create`], mapped writable, for consume-queue and index files.
    ///
    /// New space up to `head` is written with real zeros and synced now; the rest is zeroed
    /// ahead of [`MappedFile::write_mapped`] as entries reach it (module docs). Entries then
    /// land in extents that are already written, so they add no extent conversion (metadata)
    /// to the journal, and a commit-log `fdatasync` is not made to flush their data too (ext4
    /// ordered mode).
    pub(crate) fn open_zeroed(
        path: &Path,
        len: u64,
        head: u64,
        io: &dyn StorageIo,
    ) -> Result<Self> {
        Self::open_with(path, len, io, Some(head))
    }

    fn open_with(path: &Path, len: u64, io: &dyn StorageIo, head: Option<u64>) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StoreError::io("open", path, e))?;
        let current = file
            .metadata()
            .map_err(|e| StoreError::io("stat", path, e))?
            .len();
        let mut zeroed_to = None;
        match head {
            None if current < len => io
                .allocate(&file, len)
                .map_err(|e| map_alloc_error(path, e))?,
            None => {}
            // Written through the map: sparse, with blocks coming from the zeros written
            // ahead of the entries (module docs).
            Some(head) if current == 0 => {
                file.set_len(len)
                    .map_err(|e| StoreError::io("extend", path, e))?;
                let to = head.min(len);
                write_zeros(&file, io, 0, to).map_err(|e| map_alloc_error(path, e))?;
                zeroed_to = Some(to);
            }
            // Made at full length in one call, so shorter is damage (a truncating copy, a
            // repair tool): extended, its lost entries read as holes and a queue's offsets
            // were handed out again. Both folders are rebuilt from the commit log.
            Some(_) if current < len => {
                return Err(StoreError::Recovery(format!(
                    "{} is {current} bytes, shorter than its {len}: truncated or damaged. \
                     Remove the `consumequeue` or `index` folder it is in: both are rebuilt \
                     from the commit log at the next start",
                    path.display()
                )))
            }
            Some(_) => {}
        }
        let map = if head.is_some() {
            let map = map_writable(&file, path)?;
            if let Err(e) = map.advise(memmap2::Advice::Random) {
                // Only the page cache's size depends on it (module docs).
                tracing::debug!(path = %path.display(), error = %e, "madvise(RANDOM) failed");
            }
            Map::Write(map)
        } else {
            Map::Read(map_file(&file, path)?)
        };
        let mut f = Self {
            path: path.to_path_buf(),
            file,
            len: map.as_slice().len() as u64,
            map: Arc::new(map),
            zeroed_to: None,
        };
        if head.is_some() {
            let to = match zeroed_to {
                Some(to) => to,
                None => f.zeroed_on_open(io)?,
            };
            f.zeroed_to = Some(Mutex::new(to));
        }
        Ok(f)
    }

    /// Where zeroing ahead resumes in a writable file found on disk: after its written data
    /// (entries and the zeros written ahead of them; the rest may be a hole, or space an older
    /// version reserved). Blocks are reserved below that point too: after a power cut,
    /// write-back may have put a later page on disk and lost an earlier one, leaving a hole
    /// under written data that the re-dispatch at open then writes through the map (a SIGBUS
    /// on a full disk). Where the file system cannot tell holes apart, that is every block,
    /// as older versions reserved at creation.
    ///
    /// Reserving fails on a full disk only where such holes exist: the open then fails with a
    /// clear error instead of the process dying later.
    fn zeroed_on_open(&self, io: &dyn StorageIo) -> Result<u64> {
        let ranges = self.data_ranges(0);
        let written = ranges.last().map_or(0, |(_, end)| *end).min(self.len);
        let holes_below = ranges.len() > 1 || ranges.first().is_some_and(|(start, _)| *start > 0);
        if written >= self.len || holes_below {
            io.allocate(&self.file, written)
                .map_err(|e| map_alloc_error(&self.path, e))?;
        }
        Ok(written)
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Mapped length.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The mapped bytes. For a file opened with [`MappedFile::open_zeroed`], only while
    /// nothing writes it (see `Map::as_slice`); [`MappedFile::slice`] otherwise.
    pub(crate) fn as_slice(&self) -> &[u8] {
        self.map.as_slice()
    }

    /// `len` bytes at `pos`, or `None` when out of range.
    pub(crate) fn slice(&self, pos: u64, len: usize) -> Option<&[u8]> {
        self.map.range(usize::try_from(pos).ok()?, len)
    }

    /// A zero-copy [`Bytes`] of `len` bytes at `pos` that keeps the mapping alive.
    pub(crate) fn bytes(&self, pos: u64, len: usize) -> Option<Bytes> {
        self.slice(pos, len)?;
        let start = pos as usize;
        Some(Bytes::from_owner(MapSlice {
            map: Arc::clone(&self.map),
            start,
            end: start + len,
        }))
    }

    /// Writes `buf` at `pos` through `io`.
    pub(crate) fn write_at(&self, io: &dyn StorageIo, buf: &[u8], pos: u64) -> Result<()> {
        self.check_range("write past end of", pos, buf.len() as u64)?;
        io.write_at(&self.file, buf, pos)
            .map_err(|e| StoreError::io("write", &self.path, e))
    }

    /// Copies `buf` to `pos` through the writable map of a file opened with
    /// [`MappedFile::open_zeroed`] (no system call); through `io` for a read-only one.
    ///
    /// The caller owns the range: no other thread writes it, and readers do not read it before
    /// the caller publishes it (consume queues publish their max offset after this returns).
    #[allow(unsafe_code)]
    pub(crate) fn write_mapped(&self, io: &dyn StorageIo, buf: &[u8], pos: u64) -> Result<()> {
        self.check_range("write past end of", pos, buf.len() as u64)?;
        let Map::Write(map) = &*self.map else {
            return self.write_at(io, buf, pos);
        };
        self.zero_ahead(io, pos + buf.len() as u64)?;
        // SAFETY: `check_range` put `[pos, pos + buf.len())` inside this live, writable
        // MAP_SHARED mapping of a file that is never truncated while mapped, and `zero_ahead`
        // returned Ok, so the range lies below `zeroed_to`: its blocks were written (zeros or
        // entries) or reserved with `fallocate` before, a write fault needs no new block, and
        // the store cannot SIGBUS here. `buf` is ordinary memory, so the ranges do not overlap.
        // No reference to these bytes is read concurrently (the caller's contract above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                buf.as_ptr(),
                map.as_mut_ptr().add(pos as usize),
                buf.len(),
            );
        }
        Ok(())
    }

    /// Writes `zeros` at `pos` (the warmer's preparation of space nobody has written yet; see
    /// `warmer`).
    pub(crate) fn write_zeros_ahead(
        &self,
        io: &dyn StorageIo,
        zeros: &[u8],
        pos: u64,
    ) -> Result<()> {
        self.check_range("zero past end of", pos, zeros.len() as u64)?;
        io.write_zeros_ahead(&self.file, zeros, pos)
            .map_err(|e| StoreError::io("write zeros into", &self.path, e))
    }

    /// Another descriptor of this file, for the commit-log warmer. A write-back error is
    /// reported once per open descriptor: had the warmer waited on write-back through the
    /// descriptor the store syncs with, it could take the report of a failed write-back of
    /// appended records, and the sync after it would succeed and acknowledge them. Through its
    /// own descriptor it sees its own copy of the report, and the sync still sees the error.
    pub(crate) fn open_another(&self) -> Result<File> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| StoreError::io("open another descriptor of", &self.path, e))
    }

    /// [`Self::write_zeros_ahead`] through `via`, a descriptor from [`Self::open_another`].
    pub(crate) fn write_zeros_ahead_via(
        &self,
        via: &File,
        io: &dyn StorageIo,
        zeros: &[u8],
        pos: u64,
    ) -> Result<()> {
        self.check_range("zero past end of", pos, zeros.len() as u64)?;
        io.write_zeros_ahead(via, zeros, pos)
            .map_err(|e| StoreError::io("write zeros into", &self.path, e))
    }

    /// Writes back `[pos, pos + len)` through `via`, a descriptor of this file, and waits for
    /// it, committing no metadata.
    pub(crate) fn write_back_via(
        &self,
        via: &File,
        io: &dyn StorageIo,
        pos: u64,
        len: u64,
    ) -> Result<()> {
        self.check_range("write back past end of", pos, len)?;
        io.write_back(via, pos, len)
            .map_err(|e| StoreError::io("write back", &self.path, e))
    }

    fn check_range(&self, what: &'static str, pos: u64, len: u64) -> Result<()> {
        if pos + len > self.len {
            return Err(StoreError::io(
                what,
                &self.path,
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        Ok(())
    }

    /// The ranges at or after `from` that hold written data (`SEEK_DATA`/`SEEK_HOLE`), so a
    /// scan can skip preallocated space that was never written instead of faulting in a
    /// gigabyte of zero pages. Where the file system cannot tell, the whole rest is one range.
    pub(crate) fn data_ranges(&self, from: u64) -> Vec<(u64, u64)> {
        use std::os::unix::io::AsRawFd;
        let fd = self.file.as_raw_fd();
        let mut out = Vec::new();
        let mut pos = from;
        while pos < self.len {
            let Some(start) = seek(fd, pos, libc::SEEK_DATA) else {
                break;
            };
            if start >= self.len {
                break;
            }
            // A file system that cannot answer reports the offset itself: all the rest is data.
            let end = seek(fd, start, libc::SEEK_HOLE)
                .filter(|end| *end > start)
                .unwrap_or(self.len)
                .min(self.len);
            out.push((start, end));
            pos = end;
        }
        out
    }

    /// Where the written data ends: everything after it reads as zeros, without having to be
    /// read. Known without a system call for a writable file (its zeroing front).
    pub(crate) fn written_len(&self) -> u64 {
        match &self.zeroed_to {
            Some(to) => *to.lock(),
            None => self.scan_written_len(),
        }
    }

    /// The end of the last range [`Self::data_ranges`] reports.
    fn scan_written_len(&self) -> u64 {
        self.data_ranges(0).last().map_or(0, |(_, end)| *end)
    }

    /// Writes zeros over every non-zero chunk from `from` to the end of the file, reading only
    /// the ranges that hold written data: the rest of a preallocated or sparse file is zeros
    /// already, and reading it through the map would fault it in (and read around it).
    pub(crate) fn clear_from(&self, io: &dyn StorageIo, from: u64) -> Result<Cleared> {
        const CHUNK: u64 = 64 * 1024;
        let zeros = vec![0u8; CHUNK as usize];
        let mut out = Cleared::default();
        for (start, end) in self.data_ranges(from) {
            let mut pos = start.max(from);
            while pos < end {
                let n = (end - pos).min(CHUNK - pos % CHUNK);
                let slice = self.slice(pos, n as usize).expect("range checked");
                if slice.iter().any(|b| *b != 0) {
                    self.write_at(io, &zeros[..n as usize], pos)?;
                    out.zeroed += n;
                }
                out.examined += n;
                pos += n;
            }
        }
        Ok(out)
    }

    /// Stops `[from, to)` (shrunk inward to [`RELEASE_ALIGN`]) counting in this process's
    /// resident set: `MADV_DONTNEED` drops the page-table entries of a shared file mapping,
    /// the pages stay in the page cache, and the next read faults the same bytes back in.
    /// Without it, every commit-log page the dispatcher or a reader ever touched stays mapped,
    /// and a long log shows as gigabytes of VmRSS.
    #[allow(unsafe_code)]
    pub(crate) fn release_resident(&self, from: u64, to: u64) {
        let align = RELEASE_ALIGN as u64;
        let start = from.div_ceil(align) * align;
        let end = to.min(self.len) / align * align;
        if end <= start {
            return;
        }
        let (start, len) = (start as usize, (end - start) as usize);
        // SAFETY: the range lies inside this MAP_SHARED file mapping. MADV_DONTNEED on a
        // shared file mapping only unmaps pages (a page dirtied through a writable map keeps
        // its dirty state in the page cache): any later access, including through a live
        // `Bytes` slice, faults the unchanged file page back from the page cache, so no reader
        // can see different bytes (the zero-fill semantics apply to private mappings only).
        let r = unsafe {
            match &*self.map {
                Map::Read(m) => {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
                }
                Map::Write(m) => {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
                }
            }
        };
        if let Err(e) = r {
            tracing::debug!(path = %self.path.display(), error = %e, "madvise(DONTNEED) failed");
        }
    }

    /// Starts reading `[from, to)` into the page cache in large requests (`MADV_WILLNEED`):
    /// for a scan of a known range through a map advised random access, whose faults
    /// otherwise read one page at a time.
    pub(crate) fn prefetch(&self, from: u64, to: u64) {
        let to = to.min(self.len);
        if to <= from {
            return;
        }
        let (start, len) = (from as usize, (to - from) as usize);
        let r = match &*self.map {
            Map::Read(m) => m.advise_range(memmap2::Advice::WillNeed, start, len),
            Map::Write(m) => m.advise_range(memmap2::Advice::WillNeed, start, len),
        };
        if let Err(e) = r {
            tracing::debug!(path = %self.path.display(), error = %e, "madvise(WILLNEED) failed");
        }
    }

    /// Writes zeros from the zeroed end to [`ZERO_AHEAD`] past `end` once `end` comes within
    /// half of that of it. Nothing there was ever written (see `zeroed_to`), so only zeros are
    /// overwritten. Not synced: the file's next `fdatasync` covers it. The zeros are what
    /// gives the sparse file its blocks, so when they cannot be written (a full disk) a write
    /// that would reach past them is refused: a mapped write into a hole could SIGBUS.
    fn zero_ahead(&self, io: &dyn StorageIo, end: u64) -> Result<()> {
        let Some(zeroed_to) = &self.zeroed_to else {
            return Ok(());
        };
        let mut to = zeroed_to.lock();
        if end + ZERO_AHEAD / 2 <= *to || *to >= self.len {
            return Ok(());
        }
        let target = (end + ZERO_AHEAD).min(self.len);
        match fill_zeros(*to, target, ZERO_AHEAD_WRITE, |zeros, pos| {
            self.write_zeros_ahead(io, zeros, pos)
        }) {
            Ok(()) => {
                *to = target;
                Ok(())
            }
            Err(e) if end <= *to => {
                tracing::warn!(path = %self.path.display(), error = %e, "zeroing ahead of entries failed; retried at the next write");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Makes this file's data durable.
    pub(crate) fn sync(&self, io: &dyn StorageIo) -> Result<()> {
        io.sync(&self.file)
            .map_err(|e| StoreError::io("fdatasync", &self.path, e))
    }
}

/// Alignment of released ranges: a multiple of every page size Linux uses (4, 16, 64 KiB).
pub(crate) const RELEASE_ALIGN: usize = 64 * 1024;

/// A range of a shared map, owned by a [`Bytes`].
struct MapSlice {
    map: Arc<Map>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        self.map
            .range(self.start, self.end - self.start)
            .expect("checked when the slice was made")
    }
}

/// `lseek` with `SEEK_DATA`/`SEEK_HOLE`: `None` when there is no more data (ENXIO); the
/// offset itself when the file system does not support the query.
#[allow(unsafe_code)]
fn seek(fd: i32, pos: u64, whence: i32) -> Option<u64> {
    // SAFETY: a plain syscall on an open descriptor owned by the caller's `File`; the file
    // offset it moves is never used by this crate, which reads and writes at explicit offsets.
    let r = unsafe { libc::lseek(fd, pos as libc::off_t, whence) };
    if r >= 0 {
        return Some(r as u64);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENXIO) => None,
        _ => Some(pos),
    }
}

#[allow(unsafe_code)]
fn map_file(file: &File, path: &Path) -> Result<Mmap> {
    // SAFETY: the file was just given its full length with real blocks and the store never
    // truncates a mapped file (recovery zeroes bytes instead), so every mapped page stays
    // backed and no access can SIGBUS. Bytes that are being written concurrently through
    // `pwrite` are never read: readers stop at the published write/flush offsets.
    unsafe { Mmap::map(file) }.map_err(|e| StoreError::io("mmap", path, e))
}

/// A writable shared map of a consume-queue or index file (see the module docs).
fn map_writable(file: &File, path: &Path) -> Result<MmapRaw> {
    MmapRaw::map_raw(file).map_err(|e| StoreError::io("mmap", path, e))
}

fn map_alloc_error(path: &Path, e: std::io::Error) -> StoreError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        StoreError::DiskFull(format!("cannot allocate {}: {e}", path.display()))
    } else {
        StoreError::io("fallocate", path, e)
    }
}

/// Refuses an empty file among the numbered files `names` (sorted) of a consume queue or the
/// index, but the last: a crash while creating the newest leaves it empty, while an older one
/// was full once, and reopened as new its entries were lost without a word (see the refusal
/// of a short file in [`MappedFile::open_zeroed`]).
pub(crate) fn refuse_emptied(dir: &Path, names: &[u64]) -> Result<()> {
    let Some((_, older)) = names.split_last() else {
        return Ok(());
    };
    for name in older {
        let path = dir.join(crate::commitlog::file_name(*name));
        let len = std::fs::metadata(&path)
            .map_err(|e| StoreError::io("stat", &path, e))?
            .len();
        if len == 0 {
            return Err(StoreError::Recovery(format!(
                "{} is empty, though newer files follow it: truncated or damaged. Remove the \
                 `consumequeue` or `index` folder it is in: both are rebuilt from the commit \
                 log at the next start",
                path.display()
            )));
        }
    }
    Ok(())
}

/// New space at creation: written with `pwrite` (a store write like any other) and synced.
fn write_zeros(file: &File, io: &dyn StorageIo, from: u64, to: u64) -> std::io::Result<()> {
    if from >= to {
        return Ok(());
    }
    fill_zeros(from, to, 1 << 20, |zeros, pos| {
        io.write_at(file, zeros, pos)
    })?;
    io.sync(file)
}

/// Calls `write` with zeros for `[from, to)`, at most `most_per_write` bytes at a time.
fn fill_zeros<E>(
    from: u64,
    to: u64,
    most_per_write: usize,
    mut write: impl FnMut(&[u8], u64) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let zeros = vec![0u8; to.saturating_sub(from).min(most_per_write as u64) as usize];
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(zeros.len() as u64) as usize;
        write(&zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// Creates `dir` and its parents.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io("create folder", dir, e))
}

/// Syncs a folder so that file creations, renames and deletions in it are durable.
/// A failure is [`StoreError::SyncFailed`], as a failed file sync is: the kernel reports a
/// failed write-back once, so a second folder sync may succeed without the entries being
/// durable, and no caller may take a retry's success for it.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::SyncFailed(format!("fsync folder {}: {e}", dir.display())))
}

/// Kilobytes of `file` in the page cache, mapped by anyone or not (tests): shows what a
/// scan read, after its pages left this process's resident set.
#[cfg(test)]
#[allow(unsafe_code)]
pub(crate) fn cached_kib(file: &MappedFile) -> u64 {
    let page = 4096usize;
    let bytes = file.as_slice();
    let mut vec = vec![0u8; bytes.len().div_ceil(page)];
    // SAFETY: the range is this live mapping (page aligned at its start, as every mapping
    // is) and `vec` has one byte per page of it, as mincore requires; it only reports.
    let r = unsafe {
        libc::mincore(
            bytes.as_ptr() as *mut libc::c_void,
            bytes.len(),
            vec.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|b| **b & 1 == 1).count() as u64 * page as u64 / 1024
}

/// Drops `path`'s clean pages from the page cache, as a reboot or memory pressure does (tests).
#[cfg(test)]
#[allow(unsafe_code)]
pub(crate) fn evict_cached(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = File::open(path).unwrap();
    // SAFETY: `f` is an open file; the call only advises the kernel about its page cache.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "posix_fadvise");
}

/// Resident kilobytes of this process's mappings of `path` (tests).
#[cfg(test)]
pub(crate) fn mapped_rss_kib(path: &Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let name = path.to_string_lossy();
    let mut in_it = false;
    let mut total = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if !first.ends_with(':') {
            // A mapping header: range, perms, offset, device, inode, [path].
            in_it = line.ends_with(name.as_ref());
        } else if in_it && first == "Rss:" {
            let kib = line.split_whitespace().nth(1).unwrap_or("0");
            total += kib.parse::<u64>().unwrap();
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::RealIo;

    #[test]
    fn the_warmer_writes_through_a_descriptor_of_its_own() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let f = MappedFile::open_zeroed(&path, 1 << 20, 1 << 20, &RealIo).unwrap();
        let own = f.open_another().unwrap();
        assert_ne!(
            own.as_raw_fd(),
            f.file.as_raw_fd(),
            "write-back errors are reported per descriptor: the sync's must stay its own"
        );
        f.write_zeros_ahead_via(&own, &RealIo, &[7u8; 4096], 4096)
            .unwrap();
        f.write_back_via(&own, &RealIo, 4096, 4096).unwrap();
        assert_eq!(f.bytes(4096, 4096).unwrap(), vec![7u8; 4096], "same file");
    }

    #[test]
    fn released_pages_leave_the_resident_set_and_read_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let len = 8u64 << 20;
        let f = MappedFile::open_zeroed(&path, len, len, &RealIo).unwrap();
        let pattern: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        f.write_at(&RealIo, &pattern, 0).unwrap();
        let before = f.bytes(1 << 20, 4096).unwrap();
        let sum: u64 = f
            .as_slice()
            .iter()
            .step_by(4096)
            .map(|b| u64::from(*b))
            .sum();
        assert!(sum > 0);
        let touched = mapped_rss_kib(&path);
        assert!(
            touched >= 7 * 1024,
            "all pages mapped after reading: {touched} KiB"
        );

        f.release_resident(0, len);
        let released = mapped_rss_kib(&path);
        assert!(released < 1024, "released: {released} KiB still resident");
        assert_eq!(
            f.as_slice(),
            &pattern[..],
            "every byte reads back unchanged"
        );
        assert_eq!(
            &before[..],
            &pattern[1 << 20..(1 << 20) + 4096],
            "a live slice too"
        );
    }

    #[test]
    fn a_release_is_shrunk_to_whole_aligned_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let f = MappedFile::open_zeroed(&path, 1 << 20, 1 << 20, &RealIo).unwrap();
        let _: u64 = f
            .as_slice()
            .iter()
            .step_by(4096)
            .map(|b| u64::from(*b))
            .sum();
        // Less than one aligned block: nothing is released (and nothing breaks).
        f.release_resident(1, RELEASE_ALIGN as u64);
        f.release_resident(5, 6);
        assert!(mapped_rss_kib(&path) >= 1000);
    }

    #[test]
    fn bytes_written_through_the_map_are_in_the_file_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq");
        let len = 64 * 1024;
        let f = MappedFile::open_zeroed(&path, len, len, &RealIo).unwrap();
        let entry: Vec<u8> = (1..=20).collect();
        f.write_mapped(&RealIo, &entry, 4090).unwrap();
        assert_eq!(f.slice(4090, 20).unwrap(), &entry[..], "readers of the map");
        f.sync(&RealIo).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[4090..4110], &entry[..], "readers of the file");
        assert!(on_disk[..4090]
            .iter()
            .chain(&on_disk[4110..])
            .all(|b| *b == 0));
        drop(f);
        let again = MappedFile::open_zeroed(&path, len, len, &RealIo).unwrap();
        assert_eq!(again.slice(4090, 20).unwrap(), &entry[..]);
    }

    #[test]
    fn a_mapped_write_past_the_end_is_refused_and_a_read_only_file_is_written_with_pwrite() {
        let dir = tempfile::tempdir().unwrap();
        let cq = MappedFile::open_zeroed(&dir.path().join("cq"), 4096, 0, &RealIo).unwrap();
        assert!(cq.write_mapped(&RealIo, &[1; 8], 4090).is_err());
        assert!(cq.as_slice().iter().all(|b| *b == 0), "nothing written");
        let seg = MappedFile::open_or_create(&dir.path().join("seg"), 4096, &RealIo).unwrap();
        seg.write_mapped(&RealIo, &[7; 8], 100).unwrap();
        assert_eq!(seg.slice(100, 8).unwrap(), &[7; 8]);
    }

    /// Records the zero writes ahead of entries, and fails them while `full` is set, as a
    /// full disk would.
    #[derive(Debug, Default)]
    struct ZeroLog(Mutex<Vec<(u64, u64)>>, std::sync::atomic::AtomicBool);

    impl StorageIo for ZeroLog {
        fn allocate(&self, file: &File, len: u64) -> std::io::Result<()> {
            RealIo.allocate(file, len)
        }
        fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
            RealIo.write_at(file, buf, offset)
        }
        fn sync(&self, file: &File) -> std::io::Result<()> {
            RealIo.sync(file)
        }
        fn disk_usage(&self, dir: &Path) -> std::io::Result<crate::io::DiskUsage> {
            RealIo.disk_usage(dir)
        }
        fn write_zeros_ahead(&self, file: &File, zeros: &[u8], offset: u64) -> std::io::Result<()> {
            if self.1.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.0.lock().push((offset, offset + zeros.len() as u64));
            RealIo.write_zeros_ahead(file, zeros, offset)
        }
    }

    #[test]
    fn a_new_file_is_zeroed_in_steps_just_ahead_of_its_entries_and_an_old_one_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq");
        let len = 4 * ZERO_AHEAD;
        let io = ZeroLog::default();
        let f = MappedFile::open_zeroed(&path, len, 4096, &io).unwrap();
        assert!(
            io.0.lock().is_empty(),
            "only the head is zeroed at creation"
        );
        let entry = [9u8; 20];
        let mut pos = 4096;
        while pos + 20 <= len {
            f.write_mapped(&io, &entry, pos).unwrap();
            pos += 20;
        }
        let zeroed = io.0.lock().clone();
        assert_eq!(zeroed.first().map(|z| z.0), Some(4096), "{zeroed:?}");
        assert_eq!(zeroed.last().map(|z| z.1), Some(len), "{zeroed:?}");
        for w in zeroed.windows(2) {
            assert_eq!(
                w[0].1, w[1].0,
                "contiguous, never over written entries: {zeroed:?}"
            );
        }
        assert!(
            zeroed.len() as u64 <= 2 * len / ZERO_AHEAD_WRITE as u64 + 4,
            "in steps, not per entry: {}",
            zeroed.len()
        );
        assert!(
            zeroed.iter().all(|z| z.1 - z.0 <= ZERO_AHEAD_WRITE as u64),
            "{zeroed:?}"
        );
        assert!(f.as_slice()[4096..pos as usize]
            .chunks(20)
            .all(|c| c == entry));
        drop(f);

        let again = ZeroLog::default();
        let f = MappedFile::open_zeroed(&path, len, 4096, &again).unwrap();
        f.write_mapped(&again, &entry, 0).unwrap();
        assert!(
            again.0.lock().is_empty(),
            "a file found whole is left as it is"
        );
        assert!(f.as_slice()[4096..pos as usize]
            .chunks(20)
            .all(|c| c == entry));
    }

    /// Zeros written 256 KiB at a time became one page-cache folio, and a queue's first entry
    /// written through the map mapped all of it: 256 KiB resident per queue holding anything.
    #[test]
    fn a_first_entry_maps_little_of_the_space_zeroed_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq");
        let f = MappedFile::open_zeroed(&path, 6_000_000, 0, &RealIo).unwrap();
        f.write_mapped(&RealIo, &[7; 20], 0).unwrap();
        let rss = mapped_rss_kib(&path);
        assert!(rss <= 64, "{rss} KiB resident for one entry");
    }

    /// Blocks the file takes on disk.
    fn disk_bytes(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn a_writable_file_takes_disk_space_only_as_its_entries_near_and_after_a_reopen_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq");
        let len = 6_000_000; // a consume-queue file
        let f = MappedFile::open_zeroed(&path, len, 0, &RealIo).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        assert!(disk_bytes(&path) < 64 * 1024, "{}", disk_bytes(&path));
        for i in 0..100u64 {
            f.write_mapped(&RealIo, &[7; 20], i * 20).unwrap();
        }
        f.sync(&RealIo).unwrap();
        let used = disk_bytes(&path);
        assert!(
            (ZERO_AHEAD..2 * ZERO_AHEAD).contains(&used),
            "entries and the zeros ahead of them: {used} bytes"
        );
        drop(f);

        // Reopened: zeroing resumes after the written data, so a write far beyond it still
        // lands in space that was written first.
        let io = ZeroLog::default();
        let f = MappedFile::open_zeroed(&path, len, 0, &io).unwrap();
        f.write_mapped(&io, &[8; 20], 3_000_000).unwrap();
        let zeroed = io.0.lock().clone();
        let resumed = zeroed.first().map_or(0, |z| z.0);
        assert!(
            (2_000 + ZERO_AHEAD..=used).contains(&resumed),
            "resumed at {resumed}, after the written {used} bytes"
        );
        assert_eq!(zeroed.last().map(|z| z.1), Some(3_000_020 + ZERO_AHEAD));
        assert_eq!(f.slice(3_000_000, 20).unwrap(), &[8; 20]);
        assert_eq!(f.slice(1_980, 20).unwrap(), &[7; 20]);
    }

    /// After a power cut a later page may be on disk and an earlier one lost: a hole under
    /// written data, which the re-dispatch at open writes through the map (a SIGBUS on a full
    /// disk). Such holes are reserved at open; a file without any is left alone.
    #[test]
    fn a_hole_under_written_data_is_reserved_at_open() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq");
        let len = 1 << 20;
        {
            let file = std::fs::File::create(&path).unwrap();
            file.set_len(len).unwrap();
            file.write_all_at(&[7; 4096], 0).unwrap();
            file.write_all_at(&[9; 4096], 256 * 1024).unwrap();
            file.sync_all().unwrap();
        }
        let before = disk_bytes(&path);
        assert!(before < 64 * 1024, "the test needs the hole: {before}");
        let f = MappedFile::open_zeroed(&path, len, 0, &RealIo).unwrap();
        assert!(
            disk_bytes(&path) >= 256 * 1024 + 4096,
            "the hole is reserved: {} bytes",
            disk_bytes(&path)
        );
        assert_eq!(f.slice(256 * 1024, 4).unwrap(), &[9; 4]);
        assert_eq!(f.slice(0, 4).unwrap(), &[7; 4]);
        assert_eq!(f.slice(4096, 4).unwrap(), &[0; 4]);
    }

    #[test]
    fn a_mapped_write_past_the_zeroed_space_is_refused_while_zeros_cannot_be_written() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let io = ZeroLog::default();
        let f = MappedFile::open_zeroed(&dir.path().join("cq"), 4 * ZERO_AHEAD, 0, &io).unwrap();
        f.write_mapped(&io, &[1; 20], 0).unwrap(); // zeroes [0, ZERO_AHEAD + 20)
        io.1.store(true, Ordering::SeqCst);
        // Inside the zeroed space: written (the zeroing ahead is retried later).
        f.write_mapped(&io, &[2; 20], ZERO_AHEAD - 20).unwrap();
        // Past it: refused, nothing written, instead of a write into a hole.
        let far = 2 * ZERO_AHEAD;
        assert!(f.write_mapped(&io, &[3; 20], far).is_err());
        assert!(f.slice(far, 20).unwrap().iter().all(|b| *b == 0));
        io.1.store(false, Ordering::SeqCst);
        f.write_mapped(&io, &[3; 20], far).unwrap();
        assert_eq!(
            f.slice(far, 20).unwrap(),
            &[3; 20],
            "writes resume with space"
        );
    }
}
