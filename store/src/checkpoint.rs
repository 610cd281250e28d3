//! Small files that say what state the data folder is in: the checkpoint, the abort marker and
//! the process lock; plus the atomic-replace helper every metadata file uses.
//!
//! - `checkpoint`: offsets vouched for at the last checkpoint. Everything in the commit log
//!   below `flushed` was synced; every record below `dispatched` has its consume-queue and
//!   index entries synced. Recovery starts scanning at `min(flushed, dispatched)`.
//! - `abort`: created at open, removed after a clean shutdown. Present at open = unclean stop.
//! - `lock`: `flock`ed for the life of the store, so two processes never share a folder.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::crash_point;
use crate::error::{Result, StoreError};
use crate::mapped::sync_dir;

const CHECKPOINT_MAGIC: &[u8; 4] = b"SLCP";
const CHECKPOINT_VERSION: u32 = 3;
/// Version 1 had no `sealed_from`.
const CHECKPOINT_V1_LEN: usize = 4 + 4 + 8 + 8 + 8 + 4;
/// Version 2 had no flags.
const CHECKPOINT_V2_LEN: usize = CHECKPOINT_V1_LEN + 8;
const CHECKPOINT_LEN: usize = CHECKPOINT_V2_LEN + 8;
/// Flag: the folder keeps a `queue-floors` file.
const FLAG_FLOORS_KEPT: u64 = 1;

/// The offsets recorded at the last checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Commit-log bytes below this were synced.
    pub flushed: u64,
    /// Records below this have synced consume-queue and index entries.
    pub dispatched: u64,
    /// When it was written, epoch ms.
    pub written_at_ms: i64,
    /// Where the commit log's sealed checksums begin (`seal` file), when it has a seal: an
    /// open that finds this but no `seal` file refuses instead of making a new one, which
    /// would leave every record written since unverifiable for good.
    pub sealed_from: Option<u64>,
    /// The folder has a `queue-floors` file (made once a topic was deleted, never removed):
    /// an open that finds this but no file refuses, instead of serving the deleted topics'
    /// messages again.
    pub floors_kept: bool,
}

impl Checkpoint {
    fn encode(&self) -> Vec<u8> {
        // Version 2 while there is no flag to write: a binary from before version 3 then
        // still reads the checkpoint of a folder that never deleted a topic (an unreadable
        // one costs a full scan and the refusals it vouches for).
        let version = if self.floors_kept {
            CHECKPOINT_VERSION
        } else {
            2
        };
        let mut out = Vec::with_capacity(CHECKPOINT_LEN);
        out.extend_from_slice(CHECKPOINT_MAGIC);
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&self.flushed.to_be_bytes());
        out.extend_from_slice(&self.dispatched.to_be_bytes());
        out.extend_from_slice(&self.written_at_ms.to_be_bytes());
        out.extend_from_slice(&self.sealed_from.unwrap_or(u64::MAX).to_be_bytes());
        if self.floors_kept {
            out.extend_from_slice(&FLAG_FLOORS_KEPT.to_be_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let lens = [CHECKPOINT_V1_LEN, CHECKPOINT_V2_LEN, CHECKPOINT_LEN];
        if !lens.contains(&b.len()) || &b[..4] != CHECKPOINT_MAGIC {
            return None;
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32fast::hash(body).to_be_bytes() != crc {
            return None;
        }
        let u64_at = |p: usize| u64::from_be_bytes(b[p..p + 8].try_into().expect("8 bytes"));
        let sealed_from = (b.len() >= CHECKPOINT_V2_LEN)
            .then(|| u64_at(32))
            .filter(|from| *from != u64::MAX);
        let flags = if b.len() == CHECKPOINT_LEN {
            u64_at(40)
        } else {
            0
        };
        Some(Self {
            flushed: u64_at(8),
            dispatched: u64_at(16),
            written_at_ms: u64_at(24) as i64,
            sealed_from,
            floors_kept: flags & FLAG_FLOORS_KEPT != 0,
        })
    }

    /// Reads `path`. A missing or undecodable checkpoint is `None`: recovery then scans the
    /// whole commit log, which is slow but safe. A file that is there but cannot be read
    /// (EIO, EMFILE) is an error: taken as "no checkpoint", its promise of what was synced
    /// would be forgotten, and with it the refusal of a log shorter than promised.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("read", path, e)),
        };
        let cp = Self::decode(&bytes);
        if cp.is_none() {
            tracing::warn!(path = %path.display(), "checkpoint unreadable; scanning the whole commit log");
        }
        Ok(cp)
    }

    /// Writes `path` atomically.
    pub fn store(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.encode())
    }
}

/// Replaces `path` with `bytes` so that a crash at any moment leaves the old or the new
/// content, never a mix: write a temporary file, sync it, rename it over, sync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| StoreError::io("write", &tmp, e))?;
        crash_point::reach_file(crash_point::ATOMIC_TMP_WRITTEN, path);
        f.sync_all().map_err(|e| StoreError::io("fsync", &tmp, e))?;
        crash_point::reach_file(crash_point::ATOMIC_TMP_SYNCED, path);
        std::fs::rename(&tmp, path).map_err(|e| StoreError::io("rename", path, e))?;
        crash_point::reach_file(crash_point::ATOMIC_RENAMED, path);
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Appends `bytes` to `path` (created if missing) and syncs them. On failure the file is cut
/// back to its length before the call: a short write on a full disk left a fragment that the
/// next append joined, and a reader took the joined line or record for a real one.
pub fn append_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    let before = f.metadata()?.len();
    let result = f.write_all(bytes).and_then(|()| f.sync_data());
    if result.is_err() {
        let _ = f.set_len(before);
    }
    result
}

/// Cuts `path` back to `len` bytes and syncs it: for the torn tail a crash left in an
/// append-only file, which the next append would otherwise join to its first record.
pub fn truncate_synced(path: &Path, len: u64) -> std::io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()
}

/// Removes `path` (already gone is fine) and syncs its folder, so the removal survives a
/// power cut.
pub fn remove_synced(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        removed => removed?,
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all())
}

/// Removes temporary files a crash left behind in `dir` (names ending in `.tmp`).
pub fn sweep_temp_files(dir: &Path) -> Result<usize> {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".tmp") {
            std::fs::remove_file(entry.path())
                .map_err(|e| StoreError::io("delete", entry.path(), e))?;
            n += 1;
        }
    }
    Ok(n)
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Attempts after the first before a held folder lock is refused, and the pause between them.
const LOCK_RETRIES: u32 = 10;
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// The exclusive lock on a data folder, held until dropped.
#[derive(Debug)]
pub(crate) struct FolderLock {
    _file: File,
}

impl FolderLock {
    pub(crate) fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io("open", &path, e))?;
        // A lock just released can still be held for a moment by a copy of its descriptor:
        // a process this one forks (any `Command::spawn` on another thread) inherits it
        // until its `exec` closes it. A reopen right after a clean stop was refused so, now
        // and then, in the test suite; a short bounded wait covers that window and still
        // refuses a folder another live process holds.
        for attempt in 0..=LOCK_RETRIES {
            if flock_exclusive(&file) {
                return Ok(Self { _file: file });
            }
            if attempt < LOCK_RETRIES {
                std::thread::sleep(LOCK_RETRY_PAUSE);
            }
        }
        Err(StoreError::Locked(dir.to_path_buf()))
    }
}

/// Refuses (`StoreError::Locked`) a data folder another process holds, without keeping it:
/// a process about to start can say so before it binds its ports, instead of after (a second
/// start with the same configuration failed on the name server's port, hiding the cause).
/// [`crate::Store::open`] still takes the lock itself.
pub fn check_folder_free(dir: &Path) -> Result<()> {
    if !dir.join("lock").exists() {
        return Ok(());
    }
    FolderLock::acquire(dir).map(drop)
}

#[allow(unsafe_code)]
fn flock_exclusive(file: &File) -> bool {
    // SAFETY: a plain syscall on a descriptor owned by `file`; no memory is passed.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Creates the abort marker; returns whether one was already there (an unclean stop).
pub(crate) fn mark_running(dir: &Path) -> Result<bool> {
    let path = dir.join("abort");
    let existed = path.exists();
    File::create(&path).map_err(|e| StoreError::io("create", &path, e))?;
    sync_dir(dir)?;
    Ok(existed)
}

/// Removes the abort marker after a clean shutdown.
pub(crate) fn mark_clean(dir: &Path) -> Result<()> {
    let path = dir.join("abort");
    std::fs::remove_file(&path).map_err(|e| StoreError::io("delete", &path, e))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint");
        let cp = Checkpoint {
            flushed: 10,
            dispatched: 7,
            written_at_ms: 99,
            sealed_from: Some(4),
            floors_kept: true,
        };
        cp.store(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), Some(cp));
        let unsealed = Checkpoint {
            sealed_from: None,
            floors_kept: false,
            ..cp
        };
        unsealed.store(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), Some(unsealed));
        assert_eq!(
            std::fs::read(&path).unwrap().len(),
            CHECKPOINT_V2_LEN,
            "without a flag, the layout older binaries read"
        );
        // Files of versions 1 (no seal field) and 2 (no flags) still read.
        for (version, len, sealed_from) in [
            (1u32, CHECKPOINT_V1_LEN, None),
            (2, CHECKPOINT_V2_LEN, Some(4)),
        ] {
            cp.store(&path).unwrap();
            let mut old = std::fs::read(&path).unwrap();
            old.truncate(len - 4);
            old[4..8].copy_from_slice(&version.to_be_bytes());
            let crc = crc32fast::hash(&old);
            old.extend_from_slice(&crc.to_be_bytes());
            std::fs::write(&path, &old).unwrap();
            let read = Checkpoint::load(&path).unwrap();
            assert_eq!(
                read,
                Some(Checkpoint {
                    sealed_from,
                    floors_kept: false,
                    ..cp
                }),
                "version {version}"
            );
        }
        cp.store(&path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), None);
    }

    /// Missing is "no checkpoint"; there but unreadable is an error, not a forgotten promise.
    #[test]
    fn a_checkpoint_that_cannot_be_read_is_an_error_not_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint");
        assert_eq!(Checkpoint::load(&path).unwrap(), None);
        std::fs::create_dir(&path).unwrap(); // reading it fails with EISDIR
        assert!(Checkpoint::load(&path).is_err());
    }

    #[test]
    fn atomic_write_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offsets.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        std::fs::write(dir.path().join("x.json.tmp"), b"junk").unwrap();
        assert_eq!(sweep_temp_files(dir.path()).unwrap(), 1);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("offsets.json")]);
    }

    #[test]
    fn second_lock_on_a_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = FolderLock::acquire(dir.path()).unwrap();
        assert!(matches!(
            FolderLock::acquire(dir.path()),
            Err(StoreError::Locked(_))
        ));
    }
}
