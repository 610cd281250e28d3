//! The flusher thread: group commit.
//!
//! In sync mode it waits for the first request that needs durability, takes every request
//! that arrived meanwhile, syncs each segment holding bytes between the flushed and written
//! offsets (oldest first, so an end marker is durable before anything after it), and only then
//! completes the requests. While it syncs, the appender keeps writing, and the next round takes
//! everything that piled up: one `fdatasync` serves many appends.
//!
//! A failed sync fences the store and fails every request it covered and every later one:
//! none is acknowledged. In async mode it syncs dirty data at least every `interval`.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::appender::{FlushCommand, Reply};
use crate::commitlog::CommitLog;
use crate::config::FlushMode;
use crate::error::{Result, StoreError};
use crate::io::StorageIo;
use crate::message::Appended;
use crate::shared::Shared;

pub(crate) struct Flusher {
    pub(crate) log: Arc<CommitLog>,
    pub(crate) io: Arc<dyn StorageIo>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) mode: FlushMode,
}

type Waiter = (u64, Reply, Vec<Appended>);

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
        if let Some(reason) = self.shared.fenced() {
            for (_, reply, _) in waiters.drain(..) {
                let _ = reply.send(Err(StoreError::Fenced(reason.clone())));
            }
            return;
        }
        let flushed = self.shared.flushed.get();
        let target = self.shared.written.get();
        if target > flushed {
            let started = std::time::Instant::now();
            let synced = self.sync_range(flushed, target);
            self.shared.sync_latency.record(started.elapsed());
            if let Err(e) = synced {
                self.shared.fence(format!("sync failed: {e}"));
                for (_, reply, _) in waiters.drain(..) {
                    let _ = reply.send(Err(StoreError::SyncFailed(e.to_string())));
                }
                return;
            }
            self.shared.flushed.set(target);
        }
        // Every waiter's end is at most `target`: the appender sends a waiter only after
        // publishing the written offset that covers it.
        for (end, reply, result) in waiters.drain(..) {
            debug_assert!(end <= target, "waiter beyond the written offset");
            let _ = reply.send(Ok(result));
        }
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

/// Files a command; true means shutdown was asked.
fn take(cmd: FlushCommand, waiters: &mut Vec<Waiter>) -> bool {
    match cmd {
        FlushCommand::Wait { end, reply, result } => {
            waiters.push((end, reply, result));
            false
        }
        FlushCommand::Nudge => false,
        FlushCommand::Shutdown => true,
    }
}
