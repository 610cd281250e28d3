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
