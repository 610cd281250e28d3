//! A preallocated file with a read-only memory map.
//!
//! Every file the store maps (commit-log segments, consume-queue files, index files) is created
//! at its full size with real blocks before it is mapped, written only through [`StorageIo`]
//! (`pwrite`), and never shrunk while mapped. Retention unlinks files; a mapping outlives the
//! unlink, so readers holding a [`Bytes`] slice stay valid.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::Mmap;

use crate::error::{Result, StoreError};
use crate::io::StorageIo;

/// One mapped file. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub(crate) struct MappedFile {
    path: PathBuf,
    file: File,
    map: Arc<Mmap>,
    len: u64,
}

impl MappedFile {
    /// Opens `path`, creating it if needed, makes sure it has `len` bytes of real blocks, and
    /// maps it. A shorter file (a new one, or one cut short by a crash or an operator) is
    /// extended with zeros, which read as "no record here".
    pub(crate) fn open_or_create(path: &Path, len: u64, io: &dyn StorageIo) -> Result<Self> {
        Self::open_with(path, len, io, false)
    }

    /// As [`MappedFile::open_or_create`], but new space is written with real zeros and synced.
    ///
    /// Used for consume-queue and index files: their small writes then land in extents that are
    /// already written, so they add no extent conversion (metadata) to the journal, and a
    /// commit-log `fdatasync` is not made to flush their data too (ext4 ordered mode).
    pub(crate) fn open_zeroed(path: &Path, len: u64, io: &dyn StorageIo) -> Result<Self> {
        Self::open_with(path, len, io, true)
    }

    fn open_with(path: &Path, len: u64, io: &dyn StorageIo, zeroed: bool) -> Result<Self> {
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
        if current < len {
            io.allocate(&file, len)
                .map_err(|e| map_alloc_error(path, e))?;
            if zeroed {
                write_zeros(&file, io, current, len).map_err(|e| map_alloc_error(path, e))?;
            }
        }
        let map = map_file(&file, path)?;
        let len = map.len() as u64;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            map: Arc::new(map),
            len,
        })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Mapped length.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The mapped bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.map
    }

    /// `len` bytes at `pos`, or `None` when out of range.
    pub(crate) fn slice(&self, pos: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(pos).ok()?;
        let end = start.checked_add(len)?;
        self.map.get(start..end)
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
        if pos + buf.len() as u64 > self.len {
            return Err(StoreError::io(
                "write past end of",
                &self.path,
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        io.write_at(&self.file, buf, pos)
            .map_err(|e| StoreError::io("write", &self.path, e))
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
            let end = seek(fd, start, libc::SEEK_HOLE)
                .unwrap_or(self.len)
                .min(self.len);
            out.push((start, end));
            pos = end;
        }
        out
    }

    /// Makes this file's data durable.
    pub(crate) fn sync(&self, io: &dyn StorageIo) -> Result<()> {
        io.sync(&self.file)
            .map_err(|e| StoreError::io("fdatasync", &self.path, e))
    }
}

/// A range of a shared map, owned by a [`Bytes`].
struct MapSlice {
    map: Arc<Mmap>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.end]
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

fn map_alloc_error(path: &Path, e: std::io::Error) -> StoreError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        StoreError::DiskFull(format!("cannot allocate {}: {e}", path.display()))
    } else {
        StoreError::io("fallocate", path, e)
    }
}

fn write_zeros(file: &File, io: &dyn StorageIo, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(zeros.len() as u64) as usize;
        io.write_at(file, &zeros[..n], pos)?;
        pos += n as u64;
    }
    io.sync(file)
}

/// Creates `dir` and its parents.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io("create folder", dir, e))
}

/// Syncs a folder so that file creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync folder", dir, e))
}
