//! The storage trait: the few system calls that make data durable, behind a seam so tests can
//! inject the failures real disks produce (EIO on sync, ENOSPC, torn writes).
//!
//! Reads go through memory maps and are not part of the trait: a fault in what was written is
//! modelled by corrupting the file itself, which recovery and the read path must then catch.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Used and usable bytes of the file system holding the data folder, counted as `df` counts
/// them: blocks reserved for root or held back by the file system are in neither figure, so
/// [`DiskUsage::ratio`] is the `Use%` an operator sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes in use.
    pub used: u64,
    /// Bytes in use plus bytes still available to this process.
    pub total: u64,
}

impl DiskUsage {
    /// `used / total`, 0 for an empty file system.
    pub fn ratio(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.used as f64 / self.total as f64
        }
    }
}

/// The write-side system calls of the store.
pub trait StorageIo: Send + Sync + std::fmt::Debug + 'static {
    /// Reserves real blocks for the first `len` bytes, extending the file to `len` if
    /// shorter, without changing what it holds (no sparse files: a full disk must fail here,
    /// not later as a SIGBUS on a mapped page). Called only while a file is opened or created.
    fn allocate(&self, file: &File, len: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync(&self, file: &File) -> io::Result<()>;
    /// Disk usage of the file system holding `dir`.
    fn disk_usage(&self, dir: &Path) -> io::Result<DiskUsage>;
    /// Writes `zeros` at `offset`: how the warmer prepares commit-log space ahead of the
    /// appender (see `warmer`). Not an append, so fault injection leaves it alone by default.
    fn write_zeros_ahead(&self, file: &File, zeros: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(zeros, offset)
    }
    /// Writes back `[offset, offset + len)` and waits until it is on the disk, without
    /// committing metadata or syncing anything else of the file (`sync_file_range`).
    fn write_back(&self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        write_back_range(file, offset, len)
    }
}

/// The real thing: `fallocate`, `pwrite`, `fdatasync`, `statvfs`.
#[derive(Debug, Default)]
pub struct RealIo;

impl StorageIo for RealIo {
    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        let len = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let rc = loop {
            // `fallocate` mode 0 allocates blocks and extends the size; the new range reads as
            // zeros. Safe FFI: plain integers and a valid open descriptor.
            let rc = fallocate(file.as_raw_fd(), len);
            if rc != libc::EINTR {
                break rc;
            }
        };
        match rc {
            0 => Ok(()),
            libc::EOPNOTSUPP => reserve_by_writing(file, len as u64),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }

    fn sync(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn disk_usage(&self, dir: &Path) -> io::Result<DiskUsage> {
        statvfs_usage(dir)
    }
}

/// `posix_fallocate`-style call returning an errno (0 on success).
#[allow(unsafe_code)]
fn fallocate(fd: i32, len: i64) -> i32 {
    // SAFETY: `fd` is an open descriptor owned by the caller's `File`; the call reads no memory.
    let rc = unsafe { libc::fallocate(fd, 0, 0, len) };
    if rc == 0 {
        0
    } else {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    }
}

/// `sync_file_range` with wait-before, write and wait-after: the range's dirty pages are
/// written and their write-back has completed. It makes no metadata durable, which is why the
/// warmer uses it (the flusher's next `fdatasync` makes the chunk's extent conversions durable,
/// once per chunk instead of once per sync).
#[allow(unsafe_code)]
fn write_back_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    let (offset, len) = (offset as libc::off64_t, len as libc::off64_t);
    loop {
        // SAFETY: `file` is an open descriptor owned by the caller; the call reads no memory.
        let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Fallback for file systems without `fallocate`: no block of the first `len` bytes is left
/// a hole. Past the file's size that is zeros. Below it, a file extended with `set_len` (or
/// one whose unsynced pages a power cut lost) may have holes that only a write fills: the
/// ranges `SEEK_HOLE` finds are read and written back, and where it finds none although the
/// blocks the file takes are fewer than its bytes, the whole file is.
/// Allocation happens only while a file is opened or created, before anything else writes it.
fn reserve_by_writing(file: &File, len: u64) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    let below = meta.len().min(len);
    let holes = holes_below(file, below);
    if !holes.is_empty() {
        // Read and written back, not zeroed: a file system that reports unsynced data as a
        // hole (some do) keeps it. A true hole reads as zeros anyway.
        for (start, end) in holes {
            rewrite_in_place(file, start, end)?;
        }
    } else if below > 0 && meta.blocks().saturating_mul(512) < below {
        // Fewer blocks than bytes, and no hole found: a file system that cannot tell.
        rewrite_in_place(file, 0, below)?;
    }
    write_zeros_at(file, meta.len(), len)
}

/// The holes of `file` below `end`, as `SEEK_DATA`/`SEEK_HOLE` report them (none where the
/// file system cannot tell: it then reports everything as data).
#[allow(unsafe_code)]
fn holes_below(file: &File, end: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let seek = |pos: u64, whence: i32| -> Option<u64> {
        // SAFETY: a plain syscall on an open descriptor owned by `file`; the file offset it
        // moves is never used, as every read and write here is at an explicit offset.
        let r = unsafe { libc::lseek(fd, pos as libc::off_t, whence) };
        u64::try_from(r).ok()
    };
    let mut holes = Vec::new();
    let mut pos = 0;
    while pos < end {
        let Some(hole) = seek(pos, libc::SEEK_HOLE).filter(|h| *h < end) else {
            break;
        };
        let data = seek(hole, libc::SEEK_DATA).map_or(end, |d| d.min(end));
        if data <= hole {
            break;
        }
        holes.push((hole, data));
        pos = data;
    }
    holes
}

/// Reads `[from, to)` and writes it back, chunk by chunk: every block gets written.
fn rewrite_in_place(file: &File, from: u64, to: u64) -> io::Result<()> {
    let mut buf = vec![0u8; ZERO_CHUNK];
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(ZERO_CHUNK as u64) as usize;
        file.read_exact_at(&mut buf[..n], pos)?;
        file.write_all_at(&buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// Writes zeros over `[from, to)`.
fn write_zeros_at(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros =
        vec![0u8; ZERO_CHUNK.min(usize::try_from(to.saturating_sub(from)).unwrap_or(ZERO_CHUNK))];
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// Chunk of the fallback's reads and writes.
const ZERO_CHUNK: usize = 1 << 20;

#[allow(unsafe_code)]
fn statvfs_usage(dir: &Path) -> io::Result<DiskUsage> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string and `st` points to writable memory of
    // the right type; `statvfs` fills it on success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `statvfs` returned 0, so it initialised the struct (and it started zeroed).
    let st = unsafe { st.assume_init() };
    // As `df` does: used = blocks - free blocks; the base is used + blocks available to an
    // unprivileged writer. Counting reserved blocks as used would refuse appends on a disk
    // that `df` shows far from full.
    let frsize = st.f_frsize;
    let used = st.f_blocks.saturating_sub(st.f_bfree) * frsize;
    let avail = st.f_bavail * frsize;
    Ok(DiskUsage {
        used,
        total: used + avail,
    })
}

/// A [`StorageIo`] that delegates to [`RealIo`] until told to fail.
///
/// Used by tests to check that no failure is ever acknowledged as a success.
#[derive(Debug, Default)]
pub struct FaultyIo {
    real: RealIo,
    fail_sync: AtomicBool,
    fail_queue_sync: AtomicBool,
    queue_sync_failures: AtomicU64,
    fail_allocate: AtomicBool,
    fail_queue_zeros: AtomicBool,
    /// When non-zero, the next write to a commit-log segment longer than this stores only this
    /// many bytes and then fails with EIO.
    torn_write_at: AtomicU64,
    fake_used_ratio_millis: AtomicU64,
    syncs: AtomicU64,
    hold_sync: AtomicBool,
}

impl FaultyIo {
    /// A fault layer that injects nothing yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Every sync fails with EIO while `on`.
    pub fn fail_syncs(&self, on: bool) {
        self.fail_sync.store(on, Ordering::SeqCst);
    }
    /// Every sync of a file that is not a commit-log segment (consume queues, index) fails
    /// with EIO while `on`.
    pub fn fail_queue_syncs(&self, on: bool) {
        self.fail_queue_sync.store(on, Ordering::SeqCst);
    }
    /// Syncs failed by [`FaultyIo::fail_queue_syncs`] so far.
    pub fn queue_sync_failures(&self) -> u64 {
        self.queue_sync_failures.load(Ordering::SeqCst)
    }
    /// Syncs of commit-log segments wait while `on` (at most 30 s), then go on as they would
    /// have (failing if [`FaultyIo::fail_syncs`] says so by then): a sync in progress, for
    /// as long as a test needs one.
    pub fn hold_syncs(&self, on: bool) {
        self.hold_sync.store(on, Ordering::SeqCst);
    }
    /// Every allocation fails with ENOSPC while `on`.
    pub fn fail_allocations(&self, on: bool) {
        self.fail_allocate.store(on, Ordering::SeqCst);
    }
    /// Every zero write ahead of consume-queue and index entries fails with ENOSPC while
    /// `on` (the commit log's warmer is left alone): a disk that fills up under the queues.
    pub fn fail_queue_zeros(&self, on: bool) {
        self.fail_queue_zeros.store(on, Ordering::SeqCst);
    }
    /// The next write to a commit-log segment that is longer than `keep` bytes keeps only its
    /// first `keep` bytes and fails with EIO.
    pub fn tear_next_write(&self, keep: u64) {
        self.torn_write_at.store(keep.max(1), Ordering::SeqCst);
    }
    /// Reports this disk usage ratio instead of the real one; `None` restores the real value.
    pub fn fake_disk_usage(&self, ratio: Option<f64>) {
        let v = ratio.map_or(0, |r| (r * 1000.0) as u64 + 1);
        self.fake_used_ratio_millis.store(v, Ordering::SeqCst);
    }
    /// Successful syncs of commit-log segments so far (consume-queue and index files not
    /// counted).
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }
}

/// Whether `file` is a commit-log segment (its path, as the kernel knows it, has a
/// `commitlog` folder).
fn is_commit_log(file: &File) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).is_ok_and(|p| {
        p.parent()
            .and_then(|d| d.file_name())
            .is_some_and(|n| n == "commitlog")
    })
}

impl StorageIo for FaultyIo {
    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        if self.fail_allocate.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.real.allocate(file, len)
    }

    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        let keep = self.torn_write_at.load(Ordering::SeqCst);
        if keep > 0
            && buf.len() as u64 > keep
            && is_commit_log(file)
            && self
                .torn_write_at
                .compare_exchange(keep, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.real.write_at(file, &buf[..keep as usize], offset)?;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.real.write_at(file, buf, offset)
    }

    fn sync(&self, file: &File) -> io::Result<()> {
        if self.hold_sync.load(Ordering::SeqCst) && is_commit_log(file) {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while self.hold_sync.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        if self.fail_queue_sync.load(Ordering::SeqCst) && !is_commit_log(file) {
            self.queue_sync_failures.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.real.sync(file)?;
        if is_commit_log(file) {
            self.syncs.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn write_zeros_ahead(&self, file: &File, zeros: &[u8], offset: u64) -> io::Result<()> {
        if self.fail_queue_zeros.load(Ordering::SeqCst) && !is_commit_log(file) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.real.write_zeros_ahead(file, zeros, offset)
    }

    fn disk_usage(&self, dir: &Path) -> io::Result<DiskUsage> {
        match self.fake_used_ratio_millis.load(Ordering::SeqCst) {
            0 => self.real.disk_usage(dir),
            v => Ok(DiskUsage {
                used: v - 1,
                total: 1000,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    /// Without `fallocate`, reserving a file already at its full length (extended with
    /// `set_len`: sparse) wrote nothing, so a mapped write into a hole could still SIGBUS on a
    /// full disk. Every block is written now, and the content is kept.
    #[test]
    fn the_fallback_fills_the_holes_of_a_file_already_at_length_and_keeps_its_content() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let len = 4u64 << 20;
        file.set_len(len).unwrap();
        file.write_all_at(b"entry", 3 << 20).unwrap();
        file.sync_all().unwrap();
        let sparse_blocks = file.metadata().unwrap().blocks() * 512;
        assert!(sparse_blocks < len, "the test needs a sparse file first");

        reserve_by_writing(&file, len + 4096).unwrap();
        file.sync_all().unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), len + 4096);
        assert!(
            meta.blocks() * 512 >= len + 4096,
            "{} blocks",
            meta.blocks()
        );
        let mut got = [0u8; 5];
        file.read_exact_at(&mut got, 3 << 20).unwrap();
        assert_eq!(&got, b"entry");
    }

    /// The guard must refuse at the figure an operator reads off `df`, not at a stricter one
    /// that counts root-reserved blocks as used.
    #[test]
    fn disk_usage_ratio_agrees_with_df_use_percent() {
        let dir = std::env::temp_dir();
        let ours = RealIo.disk_usage(&dir).expect("statvfs").ratio() * 100.0;
        let out = std::process::Command::new("df")
            .args(["-P", "--"])
            .arg(&dir)
            .output()
            .expect("df runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().nth(1).expect("df prints a data line");
        let pcent: f64 = line
            .split_whitespace()
            .find_map(|f| f.strip_suffix('%'))
            .and_then(|p| p.parse().ok())
            .expect("df prints Use%");
        // df rounds up to a whole percent; other writers may move the disk between the calls.
        assert!(
            (ours - pcent).abs() <= 2.0,
            "ours {ours:.2}% vs df {pcent}%"
        );
    }
}
