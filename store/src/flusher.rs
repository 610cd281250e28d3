//! The flusher thread: group commit.
//!
//! In sync mode it waits for the first request that needs durability, takes every request
//! that arrived meanwhile, syncs each segment holding bytes between the flushed and written
//! offsets (oldest first, so an end marker is durable before anything after it), and only then
//! completes the requests. While it syncs, the appender keeps writing, and the next round takes
//! everything that piled up: one `fdatasync` serves many appends.
//!
//! When the appender has nothing more queued and no sync is running, it syncs its own batch
//! inline through the same [`Syncer`] instead of handing it over: at low concurrency that
//! saves a thread hand-off (a wake-up of an idle thread) per append.
//!
//! A failed sync fences the store and fails every request it covered and every later one:
//! none is acknowledged. In async mode it syncs dirty data at least every `interval`.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;

use crate::appender::{FlushCommand, Reply};
use crate::commitlog::CommitLog;
use crate::config::FlushMode;
use crate::error::{Result, StoreError};
use crate::io::StorageIo;
use crate::message::{Appended, MessageInput};
use crate::shared::Shared;

pub(crate) struct Flusher {
    pub(crate) syncer: Arc<Syncer>,
    pub(crate) mode: FlushMode,
}

/// Why a sync did not happen: the store was fenced before, or this sync failed.
#[derive(Debug, Clone)]
pub(crate) enum NotSynced {
    Fenced(String),
    Failed(String),
}

impl NotSynced {
    /// The error each append waiting on this sync gets.
    pub(crate) fn to_error(&self) -> StoreError {
        match self {
            Self::Fenced(reason) => StoreError::Fenced(reason.clone()),
            Self::Failed(e) => StoreError::SyncFailed(e.clone()),
        }
    }
}

/// Syncs the commit log up to the written offset. Shared by the flusher and the appender (which
/// syncs inline when it is idle and the flusher is not busy), so one lock orders every sync and
/// every advance of the flushed offset.
pub(crate) struct Syncer {
    log: Arc<CommitLog>,
    io: Arc<dyn StorageIo>,
    shared: Arc<Shared>,
    lock: Mutex<()>,
}

impl Syncer {
    pub(crate) fn new(log: Arc<CommitLog>, io: Arc<dyn StorageIo>, shared: Arc<Shared>) -> Self {
        Self {
            log,
            io,
            shared,
            lock: Mutex::new(()),
        }
    }

    /// Syncs everything written so far (returns the durable offset); a failed sync fences the
    /// store.
    pub(crate) fn sync_written(&self) -> std::result::Result<u64, NotSynced> {
        let _held = self.lock.lock();
        self.sync_locked()
    }

    /// As [`Syncer::sync_written`], unless another sync is running (`None`).
    pub(crate) fn try_sync_written(&self) -> Option<std::result::Result<u64, NotSynced>> {
        let _held = self.lock.try_lock()?;
        Some(self.sync_locked())
    }

    fn sync_locked(&self) -> std::result::Result<u64, NotSynced> {
        if let Some(reason) = self.shared.fenced() {
            return Err(NotSynced::Fenced(reason));
        }
        let flushed = self.shared.flushed.get();
        let target = self.shared.written.get();
        if target > flushed {
            let started = std::time::Instant::now();
            let synced = self.sync_range(flushed, target);
            self.shared.sync_latency.record(started.elapsed());
            if let Err(e) = synced {
                self.shared.fence(format!("sync failed: {e}"));
                return Err(NotSynced::Failed(e.to_string()));
            }
            self.shared.flushed.set(target);
        }
        Ok(target.max(flushed))
    }

    fn sync_range(&self, from: u64, to: u64) -> Result<()> {
        for seg in self.log.segments() {
            if seg.end() > from && seg.base < to {
                seg.file.sync(self.io.as_ref())?;
            }
        }
        Ok(())
    }
}

type Waiter = (u64, Reply, Vec<Appended>, Vec<MessageInput>);

impl Flusher {
    pub(crate) fn run(self, rx: Receiver<FlushCommand>) {
        let tick = match self.mode {
            FlushMode::Sync => Duration::from_millis(50),
            FlushMode::Async { interval } => interval,
        };
        let mut waiters: Vec<Waiter> = Vec::new();
        loop {
            let mut stop = false;
            match rx.recv_timeout(tick) {
                Ok(cmd) => stop |= take(cmd, &mut waiters),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop = true,
            }
            while let Ok(cmd) = rx.try_recv() {
                stop |= take(cmd, &mut waiters);
            }
            self.flush_round(&mut waiters);
            if stop {
                break;
            }
        }
    }

    /// Syncs up to the current written offset and completes the waiters.
    fn flush_round(&self, waiters: &mut Vec<Waiter>) {
        match self.syncer.sync_written() {
            // Every waiter's end is at most the synced offset: the appender sends a waiter
            // only after publishing the written offset that covers it.
            Ok(target) => {
                for (end, reply, result, spent) in waiters.drain(..) {
                    debug_assert!(end <= target, "waiter beyond the written offset");
                    reply.complete(Ok(result), spent);
                }
            }
            Err(why) => {
                for (_, reply, _, spent) in waiters.drain(..) {
                    reply.complete(Err(why.to_error()), spent);
                }
            }
        }
    }
}

/// Files a command; true means shutdown was asked.
fn take(cmd: FlushCommand, waiters: &mut Vec<Waiter>) -> bool {
    match cmd {
        FlushCommand::Wait {
            end,
            reply,
            result,
            spent,
        } => {
            waiters.push((end, reply, result, spent));
            false
        }
        FlushCommand::Nudge => false,
        FlushCommand::Shutdown => true,
    }
}
