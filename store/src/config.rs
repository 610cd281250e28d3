//! Store configuration: every limit is explicit, with its default next to it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// The default: an append completes only after `fdatasync` covered its bytes. Concurrent
    /// appends share one sync (group commit).
    Sync,
    /// Risky opt-in: an append completes once written to the page cache; a background sync runs
    /// at least every `interval`. A machine crash (not a process crash) loses up to that much.
    Async {
        /// Upper bound between two syncs while data is dirty.
        interval: Duration,
    },
}

/// Everything the store can be told. Build with [`StoreConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Root folder: `commitlog/`, `consumequeue/`, `index/`, `checkpoint`, `abort`, `lock`.
    pub data_dir: PathBuf,
    /// Commit-log segment size in bytes. Default 1 GiB; tests use a few MiB.
    pub segment_size: u64,
    /// Sync or async flush. Default [`FlushMode::Sync`].
    pub flush: FlushMode,
    /// Largest record a new message makes (header + body + topic + properties): segments
    /// hold two of them and one write carries one. Default 4 MiB + 64 KiB. New messages are
    /// held to it at the broker's edges (its body limit); an append itself takes any record up
    /// to [`StoreConfig::append_ceiling`], so that a message accepted under an earlier, larger
    /// limit is written again when a timer releases it, a commit or a retry copies it, or a
    /// replay writes it back, instead of being lost to a lowered setting.
    pub max_record_size: usize,
    /// Appends waiting for the appender thread; a full queue answers `Busy`. Default 16 384.
    pub append_queue_capacity: usize,
    /// Bytes the appender may have written beyond the last completed sync before it waits
    /// (sync mode). Bounds the torn-write window recovery must consider. Default 64 MiB.
    pub max_unflushed_bytes: u64,
    /// Largest single write the appender issues (at least one maximum record). Default 8 MiB.
    pub max_write_batch_bytes: usize,
    /// Consume-queue entries per file (20 bytes each). Default 300 000 (6 MB files).
    pub cq_entries_per_file: u64,
    /// Hash slots per index file. Default 1 000 000.
    pub index_slots: u32,
    /// Entries per index file before it rolls. Default 4 000 000.
    pub index_entries: u32,
    /// How often the dispatcher makes consume queues and index durable and writes a checkpoint.
    /// Default 1 s.
    pub checkpoint_interval: Duration,
    /// Segments whose last write is older than this are deleted. Default 72 h.
    pub retention_age: Duration,
    /// Oldest segments are deleted while the commit log is larger than this. Default: no limit.
    pub retention_bytes: Option<u64>,
    /// `retention_bytes` never deletes a segment whose last write is younger than this: the
    /// broker keeps records of its own there that it has not finished with (open half
    /// messages until they are carried forward, timers until they are rolled or released).
    /// Past the budget, the log then grows until the disk guard refuses appends. Default 0.
    pub retention_bytes_min_age: Duration,
    /// How often the cleaner runs. Default 10 s.
    pub clean_interval: Duration,
    /// Above this fraction of the disk used, appends are refused before anything is written.
    /// Default 0.90.
    pub disk_max_used_ratio: f64,
    /// The broker address written into records as STOREHOST. Default 127.0.0.1:10911.
    pub store_host: SocketAddr,
    /// Commit-log space the warmer keeps written with real zeros ahead of the appender, so
    /// appends and their syncs land in blocks the file system already counts as written
    /// (cheaper `fdatasync`: no extent metadata to make durable). Sync flush only. 0 turns it
    /// off. Default 64 MiB; otherwise at least 64 KiB.
    pub warm_ahead_bytes: u64,
    /// How much of the newest commit log counts as "in memory" (RocketMQ's
    /// `accessMessageInMemoryMaxRatio`). Default: 40 % of physical memory.
    pub in_memory_window_bytes: Option<u64>,
}

impl StoreConfig {
    /// Defaults for a store under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            segment_size: 1 << 30,
            flush: FlushMode::Sync,
            max_record_size: 4 * 1024 * 1024 + 64 * 1024,
            append_queue_capacity: 16_384,
            max_unflushed_bytes: 64 << 20,
            max_write_batch_bytes: 8 << 20,
            cq_entries_per_file: 300_000,
            index_slots: 1_000_000,
            index_entries: 4_000_000,
            checkpoint_interval: Duration::from_secs(1),
            retention_age: Duration::from_secs(72 * 3600),
            retention_bytes: None,
            retention_bytes_min_age: Duration::ZERO,
            clean_interval: Duration::from_secs(10),
            disk_max_used_ratio: 0.90,
            store_host: SocketAddr::from(([127, 0, 0, 1], 10911)),
            in_memory_window_bytes: None,
            warm_ahead_bytes: 64 << 20,
        }
    }

    /// Small files for tests: 4 MiB segments, 256 KiB records, 1 024-entry queue files, a
    /// small index. The disk guard sits at 98 %: tests share build machines whose disks they
    /// do not control, and the guard's own tests fake the usage with `FaultyIo`.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            segment_size: 4 << 20,
            max_record_size: 256 << 10,
            max_write_batch_bytes: 1 << 20,
            max_unflushed_bytes: 8 << 20,
            cq_entries_per_file: 1024,
            index_slots: 4096,
            index_entries: 16_384,
            checkpoint_interval: Duration::from_millis(200),
            disk_max_used_ratio: 0.98,
            ..Self::new(data_dir)
        }
    }

    /// Largest record an append takes: what a segment holds twice and one write carries
    /// (at least `max_record_size`; see there).
    pub fn append_ceiling(&self) -> usize {
        let per_segment = usize::try_from(self.segment_size / 2).unwrap_or(usize::MAX);
        per_segment
            .min(self.max_write_batch_bytes)
            .saturating_sub(64)
    }

    /// Checks the limits against each other; called by `Store::open`.
    pub fn validate(&self) -> Result<(), String> {
        let min_segment = (self.max_record_size as u64 + 64) * 2;
        if self.segment_size < min_segment || self.segment_size > i32::MAX as u64 {
            return Err(format!(
                "segment_size {} must be between {min_segment} (two maximum records) and {}",
                self.segment_size,
                i32::MAX
            ));
        }
        if self.max_record_size < 1024 {
            return Err("max_record_size must be at least 1024".into());
        }
        if self.append_queue_capacity == 0 || self.cq_entries_per_file == 0 {
            return Err("append_queue_capacity and cq_entries_per_file must be positive".into());
        }
        if self.max_write_batch_bytes < self.max_record_size + 64 {
            return Err("max_write_batch_bytes must hold at least one maximum record".into());
        }
        if self.max_unflushed_bytes < self.max_write_batch_bytes as u64 {
            return Err("max_unflushed_bytes must be at least max_write_batch_bytes".into());
        }
        if self.index_slots == 0 || self.index_entries < 2 {
            return Err("index_slots and index_entries must be positive".into());
        }
        if self.warm_ahead_bytes != 0 && self.warm_ahead_bytes < 64 << 10 {
            return Err("warm_ahead_bytes must be 0 (off) or at least 64 KiB".into());
        }
        if !(0.0..=1.0).contains(&self.disk_max_used_ratio) {
            return Err("disk_max_used_ratio must be within 0..=1".into());
        }
        if let FlushMode::Async { interval } = self.flush {
            if interval.is_zero() || interval > Duration::from_secs(10) {
                return Err("async flush interval must be within (0, 10 s]".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_test_defaults_are_consistent() {
        StoreConfig::new("/tmp/x").validate().unwrap();
        StoreConfig::for_tests("/tmp/x").validate().unwrap();
    }

    #[test]
    fn inconsistent_limits_are_refused_with_a_reason() {
        let mut c = StoreConfig::new("/tmp/x");
        c.segment_size = 1024;
        assert!(c.validate().unwrap_err().contains("segment_size"));
        let mut c = StoreConfig::new("/tmp/x");
        c.flush = FlushMode::Async {
            interval: Duration::from_secs(60),
        };
        assert!(c.validate().unwrap_err().contains("async"));
    }
}
