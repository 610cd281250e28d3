//! The public handle: open (with recovery), append, read, query, shut down.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::appender::{AppendCommand, AppendRequest, Appender, Done, QueueOffsets, Reply, Visit};
use crate::checkpoint::{self, Checkpoint, FolderLock};
use crate::commitlog::{self, CommitLog};
use crate::config::StoreConfig;
use crate::consume_queue::ConsumeQueues;
use crate::damage::{Damage, DamageLog};
use crate::dispatch::{DispatchListener, Dispatcher};
use crate::dispatch_thread;
use crate::error::{Result, StoreError};
use crate::floors::Floors;
use crate::flusher::{Flusher, Syncer};
use crate::framing::Seal;
use crate::index::Index;
use crate::io::{RealIo, StorageIo};
use crate::message::{self, Appended, MessageInput};
use crate::recovery::{self, RecoveryReport, ScanInput};
use crate::retention::{self, Retention, RetentionReport};
use crate::seal;
use crate::shared::Shared;
use crate::warmer::{WarmFront, WarmPlan, Warmer};

/// The storage engine. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Store {
    pub(crate) cfg: StoreConfig,
    pub(crate) log: Arc<CommitLog>,
    pub(crate) cqs: Arc<ConsumeQueues>,
    pub(crate) index: Arc<Index>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) damage: Arc<DamageLog>,
    dispatcher: Arc<Dispatcher>,
    io: Arc<dyn StorageIo>,
    retention: Retention,
    append_tx: Sender<AppendCommand>,
    /// The warmer's view of the writer, when warming is on.
    warm: Option<Arc<WarmFront>>,
    threads: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
    recovery: RecoveryReport,
    store_host: SocketAddr,
    pub(crate) in_memory_window: u64,
    /// Held until shutdown, so another store (in this process or another) can open the folder
    /// only after this one has let go.
    lock: Mutex<Option<FolderLock>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.cfg.data_dir)
            .finish_non_exhaustive()
    }
}

/// Completes when an append is acknowledged: durable in sync mode, written in async mode.
#[derive(Debug)]
pub struct AppendFuture {
    rx: oneshot::Receiver<Done>,
}

impl AppendFuture {
    /// Blocks the calling thread until the append completes. Not for async contexts.
    pub fn wait(self) -> Result<Vec<Appended>> {
        self.rx
            .blocking_recv()
            .map_or(Err(StoreError::Closed), |(result, _spent)| result)
    }
}

impl Future for AppendFuture {
    type Output = Result<Vec<Appended>>;
    /// The spent messages that come back with the outcome are freed here, on the caller's
    /// thread (see `appender::Done`).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.map_or(Err(StoreError::Closed), |(result, _spent)| result))
    }
}

/// The store's state for operators.
#[derive(Debug, Clone)]
pub struct StoreStats {
    /// Lowest commit-log offset on disk.
    pub min_offset: u64,
    /// End of written bytes.
    pub written: u64,
    /// End of synced bytes.
    pub flushed: u64,
    /// End of dispatched records.
    pub dispatched: u64,
    /// Bytes of commit-log segments on disk.
    pub commit_log_bytes: u64,
    /// Number of consume queues (a deleted topic's included until retention removes them).
    pub queues: usize,
    /// Queues with a floor (a deleted topic's, see [`Store::retire_queues`]).
    pub queue_floors: usize,
    /// End of the commit-log space written with zeros ahead of the writer (`warm_ahead_bytes`);
    /// 0 when warming is off.
    pub warmed: u64,
}

/// Whether the store is fit to serve.
#[derive(Debug, Clone)]
pub struct Health {
    /// Why appends are refused, after a failed write or sync.
    pub fenced: Option<String>,
    /// Damaged ranges (never served), by offset; at most 10 000 (`damage::MAX_LISTED`).
    pub damage: Vec<Damage>,
    /// Damaged ranges found while that list was full (each counted once while up to 100 000
    /// of their offsets are remembered, every encounter after that); logged, never served.
    pub damage_unlisted: u64,
    /// A consume-queue or index sync failed in this run: appends go on, the next open
    /// re-dispatches those files (see DURABILITY.md). A sign of a failing disk.
    pub queues_unsynced: bool,
}

impl Store {
    /// Opens (creating if needed) the store in `cfg.data_dir`, recovering as `recovery` says.
    pub fn open(cfg: StoreConfig) -> Result<Self> {
        Self::open_with_io(cfg, Arc::new(RealIo))
    }

    /// As [`Store::open`], with an injected [`StorageIo`] (fault tests).
    pub fn open_with_io(cfg: StoreConfig, io: Arc<dyn StorageIo>) -> Result<Self> {
        cfg.validate().map_err(StoreError::Config)?;
        crate::mapped::ensure_dir(&cfg.data_dir)?;
        let lock = FolderLock::acquire(&cfg.data_dir)?;
        checkpoint::sweep_temp_files(&cfg.data_dir)?;
        // Read before recovery changes anything: a damaged file refuses the open first.
        let floors = Floors::load(&cfg.data_dir)?;
        // The refusals below come before the folder is marked running: refused, it stays as
        // it was (a clean stop stays clean once the missing file is restored).
        let cp_path = cfg.data_dir.join("checkpoint");
        let cp = Checkpoint::load(&cp_path)?;
        floors.check_kept(cp.as_ref().is_some_and(|c| c.floors_kept))?;
        let sealed = seal::load(&cfg.data_dir)?;
        if let Some(from) = cp
            .as_ref()
            .and_then(|c| c.sealed_from)
            .filter(|_| sealed.is_none())
        {
            return Err(StoreError::Recovery(format!(
                "{} is missing, but the checkpoint says the commit log's checksums have started \
                 from its secret since offset {from}: records written since cannot be verified \
                 without it. Restore the `seal` file from this folder's backup",
                cfg.data_dir.join("seal").display()
            )));
        }
        let clean = !checkpoint::mark_running(&cfg.data_dir)?;
        let cq_root = cfg.data_dir.join("consumequeue");
        // Derived files that are missing are rebuilt by dispatching the whole log again.
        let rebuild_all = cp.is_none() || !cq_root.exists() || !cfg.data_dir.join("index").exists();
        let log_dir = cfg.data_dir.join("commitlog");
        // Before the open pads a short file: synced records the checkpoint vouches for past
        // its end are gone, and nothing must be changed before an operator decides.
        let flushed = cp.as_ref().map_or(0, |c| c.flushed);
        if let Some((end, why)) = commitlog::short_file_end(&log_dir, cfg.segment_size)? {
            if end < flushed {
                return Err(recovery::missing(end, &why, flushed));
            }
        }
        let log = Arc::new(CommitLog::open(
            &log_dir,
            cfg.segment_size,
            Arc::clone(&io),
            sealed.unwrap_or(Seal::PLAIN),
        )?);
        if sealed.is_some() {
            recovery::refuse_foreign_seal(&log)?;
        }
        let damage = Arc::new(DamageLog::default());
        let cp = cp.unwrap_or_default();
        let start = if rebuild_all {
            log.min_offset()
        } else {
            cp.flushed.min(cp.dispatched)
        };
        let mut report = recovery::scan_commit_log(&ScanInput {
            log: &log,
            io: io.as_ref(),
            damage: &damage,
            start,
            clean,
            checkpoint_flushed: cp.flushed,
            checkpoint_written_ms: cp.written_at_ms,
        })?;
        sync_recovered(&log, io.as_ref(), start, report.end)?;
        log.grow_last(report.end)?;
        if sealed.is_none() {
            log.set_seal(seal::create(&cfg.data_dir, report.end)?);
        }
        let cqs = Arc::new(ConsumeQueues::open(
            &cq_root,
            cfg.cq_entries_per_file,
            Arc::clone(&io),
            floors,
        )?);
        let index = Arc::new(Index::open(
            &cfg.data_dir.join("index"),
            cfg.index_slots,
            cfg.index_entries,
            Arc::clone(&io),
            clean && !rebuild_all,
            report.end,
        )?);
        let dispatcher = Arc::new(Dispatcher {
            log: Arc::clone(&log),
            cqs: Arc::clone(&cqs),
            index: Arc::clone(&index),
            damage: Arc::clone(&damage),
            listener: parking_lot::RwLock::new(None),
            scratch: parking_lot::Mutex::default(),
            synced_to: AtomicU64::new(0),
            own_from: report.end,
        });
        let redispatch_from = if rebuild_all {
            log.min_offset()
        } else {
            cp.dispatched.min(report.end)
        };
        // Below this the files are as the last checkpoint vouched; above it this run writes
        // them again, unsynced so far.
        dispatcher
            .synced_to
            .store(redispatch_from.max(log.min_offset()), Ordering::Release);
        let redispatch_started = std::time::Instant::now();
        let (dispatched, failed) =
            dispatcher.dispatch_all(redispatch_from.max(log.min_offset()), report.end);
        report.redispatch_micros = redispatch_started.elapsed().as_micros() as u64;
        let mut queue_offsets = recover_queue_bounds(&cqs, &log, report.end, !clean)?;
        if let Some(e) = failed {
            tracing::error!(error = %e, dispatched, end = report.end, "re-dispatch at open stopped; the dispatcher goes on from there (entries past it are not visible until it can write them)");
            // The records past it are in the log but not re-dispatched. Their entries found on
            // disk are published as they are where they match (so consumers past them are not
            // sent back), but one lost or stale (a power cut keeps some pages of a queue file
            // and loses others) would be published for good, as the dispatcher never rewrites
            // a published entry: publish only up to the first such, so it writes the rest.
            for ((topic, queue_id), (bad, next)) in dispatcher.queue_ends(dispatched, report.end) {
                if let (Some(bad), Some(q)) = (bad, cqs.get(&topic, queue_id)) {
                    tracing::warn!(topic = %topic, queue_id, queue_offset = bad, "queue entry found on disk does not match its record; published up to it, the rest written again once the dispatcher can");
                    q.cap_max(bad);
                }
                let e = queue_offsets
                    .entry(topic)
                    .or_default()
                    .entry(queue_id)
                    .or_insert(0);
                *e = (*e).max(i64::try_from(next).unwrap_or(i64::MAX));
            }
        }
        cqs.settle_floors(&queue_offsets)?;
        report.damaged_ranges = damage.all().len();
        let shared = Arc::new(Shared::new(report.end));
        shared.dispatched.set(dispatched);
        // Not fatal: on a full disk a store that cannot open cannot run the cleaner that frees
        // space. But the previous checkpoint may describe files this recovery cut or rebuilt,
        // so when no new one replaced it, it goes (removing needs no space): the next open
        // then dispatches the whole log again. The dispatcher writes one at its interval.
        if let Err(e) = dispatcher.checkpoint(&shared, &cp_path) {
            tracing::error!(error = %e, "checkpoint after recovery failed; the dispatcher tries again");
            discard_checkpoint(&cp_path);
        }
        tracing::info!(
            data_dir = %cfg.data_dir.display(), clean, end = report.end, scanned_from = report.scanned_from,
            cut_at = ?report.cut_at, damaged = report.damaged_ranges, scan_us = report.scan_micros,
            redispatch_us = report.redispatch_micros,
            "store recovered"
        );
        warn_if_over_guard(io.as_ref(), &cfg);
        Ok(Self::start(
            cfg,
            io,
            log,
            cqs,
            index,
            shared,
            damage,
            dispatcher,
            queue_offsets,
            report,
            lock,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        cfg: StoreConfig,
        io: Arc<dyn StorageIo>,
        log: Arc<CommitLog>,
        cqs: Arc<ConsumeQueues>,
        index: Arc<Index>,
        shared: Arc<Shared>,
        damage: Arc<DamageLog>,
        dispatcher: Arc<Dispatcher>,
        queue_offsets: QueueOffsets,
        recovery: RecoveryReport,
        lock: FolderLock,
    ) -> Self {
        let (append_tx, append_rx) = crossbeam_channel::bounded(cfg.append_queue_capacity);
        let (flush_tx, flush_rx) = crossbeam_channel::unbounded();
        let sync_mode = matches!(cfg.flush, crate::config::FlushMode::Sync);
        // Async flush syncs rarely, each sync covering much: conversions cost it little, and a
        // warmer would only take CPU and disk from the writer.
        let warm_plan = WarmPlan::for_ahead(cfg.warm_ahead_bytes).filter(|_| sync_mode);
        let warm = warm_plan.map(|_| Arc::new(WarmFront::new(recovery.end)));
        let appender = Appender::new(
            Arc::clone(&log),
            Arc::clone(&io),
            Arc::clone(&shared),
            cfg.clone(),
            flush_tx,
            queue_offsets,
            recovery.end,
        )
        .with_warm_front(warm.clone());
        let syncer = Arc::new(Syncer::new(
            Arc::clone(&log),
            Arc::clone(&io),
            Arc::clone(&shared),
        ));
        let appender = if sync_mode {
            appender.with_inline_sync(Arc::clone(&syncer))
        } else {
            appender
        };
        let flusher = Flusher {
            syncer,
            mode: cfg.flush,
        };
        let mut threads = Vec::new();
        threads.push((
            "appender",
            spawn("sluice-appender", move || appender.run(append_rx)),
        ));
        threads.push((
            "flusher",
            spawn("sluice-flusher", move || flusher.run(flush_rx)),
        ));
        let (d, s, c) = (Arc::clone(&dispatcher), Arc::clone(&shared), cfg.clone());
        threads.push((
            "dispatcher",
            spawn("sluice-dispatch", move || dispatch_thread::run(d, s, c)),
        ));
        let passes = Arc::new(parking_lot::Mutex::new(true));
        let make_retention = || Retention {
            pass: Arc::clone(&passes),
            log: Arc::clone(&log),
            cqs: Arc::clone(&cqs),
            index: Arc::clone(&index),
            shared: Arc::clone(&shared),
            dispatcher: Arc::clone(&dispatcher),
            cfg: cfg.clone(),
            held_warned: std::sync::Mutex::new(None),
        };
        let cleaner = make_retention();
        let interval = cfg.clean_interval;
        threads.push((
            "cleaner",
            spawn("sluice-cleaner", move || retention::run(cleaner, interval)),
        ));
        if let (Some(plan), Some(front)) = (warm_plan, &warm) {
            let warmer = Warmer {
                log: Arc::clone(&log),
                io: Arc::clone(&io),
                front: Arc::clone(front),
                plan,
            };
            threads.push(("warmer", spawn("sluice-warmer", move || warmer.run())));
        }
        let retention = make_retention();
        let store_host = cfg.store_host;
        let in_memory_window = cfg
            .in_memory_window_bytes
            .unwrap_or_else(|| physical_memory() / 10 * 4);
        Self {
            cfg,
            log,
            cqs,
            index,
            shared,
            damage,
            dispatcher,
            io,
            retention,
            append_tx,
            warm,
            threads: Mutex::new(threads),
            recovery,
            store_host,
            in_memory_window,
            lock: Mutex::new(Some(lock)),
        }
    }

    /// Queues messages for appending as one unit (stored contiguously, acknowledged together).
    /// Validation happens here, on the caller's thread; pass a `Vec` to avoid a copy. A full queue answers
    /// [`StoreError::Busy`] at once instead of blocking: the caller should push back.
    ///
    /// `wait_durable = false` (RocketMQ's `WAIT=false`) completes after the write, before the
    /// sync.
    pub fn append(
        &self,
        messages: impl Into<Vec<MessageInput>>,
        wait_durable: bool,
    ) -> Result<AppendFuture> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let messages = messages.into();
        if messages.is_empty() {
            return Err(StoreError::InvalidMessage("nothing to append".into()));
        }
        let mut body_crcs = Vec::with_capacity(messages.len());
        let ceiling = self.cfg.append_ceiling();
        for m in &messages {
            message::validate(m, self.store_host, ceiling)?;
            body_crcs.push(sluice_protocol::message::record::body_crc(&m.body));
        }
        let (reply, rx) = oneshot::channel();
        let req = AppendRequest {
            messages,
            body_crcs,
            wait_durable,
            reply: Reply(reply),
        };
        self.submit(AppendCommand::Append(req))?;
        Ok(AppendFuture { rx })
    }

    /// Queues a command for the appender without waiting: a full queue is `Busy` at once.
    fn submit(&self, cmd: AppendCommand) -> Result<()> {
        match self.append_tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                Err(StoreError::Busy("append queue full: the disk is behind"))
            }
            Err(TrySendError::Disconnected(_)) => Err(StoreError::Closed),
        }
    }

    /// Hides every message of `topic` accepted so far from queue reads, for good: each of its
    /// queues' next offset becomes the queue's floor (see `floors`), taken in the appender's
    /// order and saved before this completes. For a topic being deleted: one created again
    /// under its name serves only what is sent after, while the old records wait for
    /// retention. Completes with how many queues got a floor. The save runs on the appender
    /// thread (a small file, rarely), which holds appends back meanwhile.
    pub fn retire_queues(&self, topic: &str) -> impl Future<Output = Result<usize>> + Send {
        let sent = self.send_retire(topic);
        async move { sent?.await.unwrap_or(Err(StoreError::Closed)) }
    }

    fn send_retire(&self, topic: &str) -> Result<oneshot::Receiver<Result<usize>>> {
        message::validate_topic(topic)?;
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let (tx, rx) = oneshot::channel();
        let (cqs, topic) = (Arc::clone(&self.cqs), topic.to_string());
        let visit: Visit = Box::new(move |next: &QueueOffsets| {
            let ends: Vec<(i32, u64)> = next.get(&topic).map_or_else(Vec::new, |queues| {
                queues
                    .iter()
                    .map(|(q, n)| (*q, u64::try_from(*n).unwrap_or(0)))
                    .filter(|(_, end)| *end > 0)
                    .collect()
            });
            let result = cqs.raise_floors(&topic, &ends).map(|()| ends.len());
            let _ = tx.send(result);
        });
        self.submit(AppendCommand::Visit(visit))?;
        Ok(rx)
    }

    /// Appends and blocks until acknowledged. For threads, not async tasks.
    pub fn append_blocking(&self, messages: impl Into<Vec<MessageInput>>) -> Result<Vec<Appended>> {
        self.append(messages, true)?.wait()
    }

    /// Registers the one listener told about every dispatched record (long polling).
    pub fn set_dispatch_listener(&self, listener: DispatchListener) {
        *self.dispatcher.listener.write() = Some(listener);
    }

    /// The verified record at a commit-log offset.
    pub fn read_record(&self, phys_offset: u64) -> Result<Bytes> {
        if phys_offset >= self.visible_end() {
            return Err(StoreError::NotFound(phys_offset));
        }
        self.read_verified(phys_offset)
    }

    /// The verified record at a commit-log offset a client supplied (VIEW_MESSAGE_BY_ID, a
    /// send-back). Such an offset may point anywhere, into the middle of a record included,
    /// so a failed verification there says nothing about the disk: it is answered
    /// [`StoreError::NotFound`] and, unlike [`Store::read_record`], never recorded as damage.
    /// A client probing offsets would otherwise fill the damage log with false alarms.
    pub fn read_record_untrusted(&self, phys_offset: u64) -> Result<Bytes> {
        if phys_offset >= self.visible_end() {
            return Err(StoreError::NotFound(phys_offset));
        }
        match self.log.read(phys_offset) {
            Err(StoreError::Corrupt { .. }) => Err(StoreError::NotFound(phys_offset)),
            res => res,
        }
    }

    /// Reads through the commit log, recording any corruption found so operators see it.
    pub(crate) fn read_verified(&self, phys_offset: u64) -> Result<Bytes> {
        let res = self.log.read(phys_offset);
        if let Err(StoreError::Corrupt {
            path,
            position,
            reason,
        }) = &res
        {
            self.damage.record(path, *position, phys_offset, 1, reason);
        }
        res
    }

    /// End of what readers may see: flushed bytes in sync mode, written bytes in async mode.
    pub(crate) fn visible_end(&self) -> u64 {
        match self.cfg.flush {
            crate::config::FlushMode::Sync => self.shared.flushed.get(),
            crate::config::FlushMode::Async { .. } => self.shared.written.get(),
        }
    }

    /// The address written into records as STOREHOST (and into offset message ids).
    pub fn store_host(&self) -> SocketAddr {
        self.store_host
    }

    /// What recovery found when this store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The configuration in force.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// Offsets and sizes for operators.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            min_offset: self.log.min_offset(),
            written: self.shared.written.get(),
            flushed: self.shared.flushed.get(),
            dispatched: self.shared.dispatched.get(),
            commit_log_bytes: self.log.disk_bytes(),
            queues: self.cqs.count(),
            queue_floors: self.cqs.floor_count(),
            warmed: self.warm.as_ref().map_or(0, |w| w.warmed()),
        }
    }

    /// How long commit-log syncs took (one per group commit).
    pub fn sync_latency(&self) -> crate::latency::LatencySnapshot {
        self.shared.sync_latency.snapshot()
    }

    /// Disk usage of the data folder's file system, as the disk guard sees it.
    pub fn disk_usage(&self) -> std::io::Result<crate::io::DiskUsage> {
        self.io.disk_usage(&self.cfg.data_dir)
    }

    /// Why appends are refused, if they are (cheap: [`Store::health`] copies the damage list).
    pub fn fenced(&self) -> Option<String> {
        self.shared.fenced()
    }

    /// The dispatcher's last error while it keeps failing: appends are acknowledged, but no
    /// consumer sees them until it succeeds again.
    pub fn dispatch_failing(&self) -> Option<String> {
        self.shared.dispatch_failing()
    }

    /// Whether a consume-queue or index sync failed in this run (see [`Health`]).
    pub fn queues_unsynced(&self) -> bool {
        self.shared.queues_unsynced.load(Ordering::Acquire)
    }

    /// Bytes readers may see whose records are not dispatched yet (consume-queue and index
    /// entries to write): a dispatcher that falls behind, or stalls on a failing disk, hides
    /// acknowledged messages from consumers.
    pub fn dispatch_lag_bytes(&self) -> u64 {
        self.visible_end()
            .saturating_sub(self.shared.dispatched.get())
    }

    /// Damaged ranges listed plus damage met while the list was full, without copying it.
    pub fn damage_count(&self) -> u64 {
        self.damage.count()
    }

    /// Fencing and damage (copies the damage list: for operators' views, not per request).
    pub fn health(&self) -> Health {
        Health {
            fenced: self.shared.fenced(),
            damage: self.damage.all(),
            damage_unlisted: self.damage.unlisted(),
            queues_unsynced: self.shared.queues_unsynced.load(Ordering::Acquire),
        }
    }

    /// Runs one retention pass now.
    pub fn run_retention(&self) -> Result<RetentionReport> {
        self.retention.run_once()
    }

    /// Waits until every record written so far is dispatched (tests and shutdown paths).
    pub fn wait_dispatched(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let target = self.visible_end();
            let done = self.shared.dispatched.get();
            if done >= target {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            self.shared.dispatched.wait_beyond(done, deadline - now);
        }
    }

    /// Waits until a checkpoint has synced the consume-queue and index entries of every record
    /// written so far (retention deletes only segments behind that point). False on timeout,
    /// or when a queue sync failed (the point then stops for the rest of the run).
    pub fn wait_queues_synced(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let target = self.visible_end();
        while self.dispatcher.synced_to.load(Ordering::Acquire) < target {
            if std::time::Instant::now() >= deadline || self.queues_unsynced() {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        true
    }

    /// Stops accepting appends, completes what is queued, syncs, dispatches everything, writes
    /// a final checkpoint and removes the abort marker. Idempotent.
    pub fn shutdown(&self) -> Result<()> {
        let threads = std::mem::take(&mut *self.threads.lock());
        if threads.is_empty() {
            return Ok(());
        }
        let _ = self.append_tx.send(AppendCommand::Shutdown);
        let mut threads = threads.into_iter();
        for (name, handle) in threads.by_ref().take(2) {
            join(name, handle); // appender, then flusher (it stops after the appender's Shutdown)
        }
        self.shared.closing.store(true, Ordering::Release);
        if let Some(front) = &self.warm {
            front.stop();
        }
        self.shared.flushed.poke();
        self.shared.written.poke();
        for (name, handle) in threads {
            join(name, handle);
        }
        let unsynced = self.shared.queues_unsynced.load(Ordering::Acquire);
        let result = match self.shared.fenced() {
            Some(reason) => {
                tracing::warn!(reason = %reason, "store was fenced: leaving the abort marker so the next open recovers");
                Ok(())
            }
            None if unsynced => {
                tracing::warn!("a consume-queue or index sync failed: leaving the abort marker so the next open re-dispatches");
                Ok(())
            }
            None => checkpoint::mark_clean(&self.cfg.data_dir),
        };
        self.lock.lock().take();
        result
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "store shutdown failed");
        }
    }
}

/// Physical memory in bytes (1 GiB if the system will not say).
#[allow(unsafe_code)]
fn physical_memory() -> u64 {
    // SAFETY: `sysconf` only reads system constants; it takes and returns plain integers.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && size > 0 {
        pages as u64 * size as u64
    } else {
        1 << 30
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .expect("spawn store thread")
}

fn join(name: &str, handle: JoinHandle<()>) {
    if handle.join().is_err() {
        tracing::error!(thread = name, "store thread panicked");
    }
}

/// Removes a checkpoint that may no longer be true (and makes the removal durable), so the
/// next open dispatches the whole log again. Failures are logged: nothing else can be done.
fn discard_checkpoint(path: &std::path::Path) {
    if let Err(e) = checkpoint::remove_synced(path) {
        tracing::error!(error = %e, path = %path.display(), "cannot remove a stale checkpoint");
    }
}

/// Syncs the recovered range: after a process crash the bytes read back may sit only in the
/// page cache, and the checkpoint is about to vouch for them.
fn sync_recovered(log: &CommitLog, io: &dyn StorageIo, from: u64, to: u64) -> Result<()> {
    for seg in log.segments() {
        if seg.end() > from && seg.base < to.max(from + 1) {
            seg.file.sync(io)?;
        }
    }
    Ok(())
}

/// Sets every queue's bounds from the recovered log and returns the next queue offsets.
fn recover_queue_bounds(
    cqs: &ConsumeQueues,
    log: &CommitLog,
    end: u64,
    unclean: bool,
) -> Result<QueueOffsets> {
    let mut next: QueueOffsets = QueueOffsets::new();
    for (topic, qid, q) in cqs.all() {
        q.recover_bounds(log.min_offset(), end);
        if unclean {
            q.clear_beyond_max(cqs.io())?;
        }
        // Whatever the search and the clearing faulted in: a broker with thousands of queues
        // would otherwise start with hundreds of megabytes of them resident.
        q.release_all();
        next.entry(topic)
            .or_default()
            .insert(qid, q.max_offset() as i64);
    }
    Ok(next)
}

/// Says at open when the disk is already above the guard: the start otherwise looks healthy
/// (a ready line, nothing logged) until the first send is refused.
fn warn_if_over_guard(io: &dyn StorageIo, cfg: &StoreConfig) {
    if let Ok(u) = io.disk_usage(&cfg.data_dir) {
        if u.ratio() >= cfg.disk_max_used_ratio {
            tracing::warn!(
                data_dir = %cfg.data_dir.display(),
                used = format!("{:.1}%", u.ratio() * 100.0),
                max = format!("{:.1}%", cfg.disk_max_used_ratio * 100.0),
                "disk above its guard: appends are refused until space is freed or \
                 disk_max_used_ratio is raised"
            );
        }
    }
}
