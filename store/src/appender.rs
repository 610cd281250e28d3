//! The appender thread: the only writer of the commit log.
//!
//! It takes whole requests from a bounded queue, assigns queue offsets in arrival order, fills
//! in each record's offsets, store time and trailer, and issues one `pwrite` for everything it
//! drained. Durability is the flusher's job: a request that must be durable is passed on to the
//! flusher and completed only after a sync covers it.
//!
//! A request (one message, or a batch) never spans segments, so it is stored whole or not at
//! all. When it does not fit, the segment is closed with an end marker and the next one is
//! created first; if that fails (disk full), nothing of the request is written.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use sluice_protocol::message::record::{encode_record_with_crc, patch_store_fields, record_len};
use tokio::sync::oneshot;

use crate::commitlog::{CommitLog, Segment};
use crate::config::{FlushMode, StoreConfig};
use crate::crash_point;
use crate::error::{Result, StoreError};
use crate::flusher::Syncer;
use crate::framing;
use crate::io::StorageIo;
use crate::message::{self, now_ms, Appended, MessageInput};
use crate::shared::Shared;
use crate::warmer::WarmFront;

/// What an append completes with: its outcome, and the request's messages handed back so that
/// the caller's thread frees them. The appender is the store's one serial thread, and freeing
/// each batch there (a topic string and a body reference per message) took ~13 % of its time
/// with 128-byte records.
pub(crate) type Done = (Result<Vec<Appended>>, Vec<MessageInput>);

/// The reply channel of one append.
#[derive(Debug)]
pub(crate) struct Reply(pub(crate) oneshot::Sender<Done>);

impl Reply {
    /// Completes with an error before anything of the request was written.
    pub(crate) fn fail(self, e: StoreError) {
        let _ = self.0.send((Err(e), Vec::new()));
    }

    /// Completes with `result`, handing the spent messages back.
    pub(crate) fn complete(self, result: Result<Vec<Appended>>, spent: Vec<MessageInput>) {
        let _ = self.0.send((result, spent));
    }
}

/// One append request: its records are stored contiguously and acknowledged together.
#[derive(Debug)]
pub(crate) struct AppendRequest {
    /// Validated messages, encoded straight into the write buffer by the appender.
    pub(crate) messages: Vec<MessageInput>,
    /// BODYCRC of each message, computed on the caller's thread.
    pub(crate) body_crcs: Vec<u32>,
    /// False when the producer said `WAIT=false`: complete after the write, not the sync.
    pub(crate) wait_durable: bool,
    pub(crate) reply: Reply,
}

/// Work run on the appender thread with the queues' next offsets, between two requests.
pub(crate) type Visit = Box<dyn FnOnce(&QueueOffsets) + Send>;

/// Messages to the appender.
pub(crate) enum AppendCommand {
    Append(AppendRequest),
    /// Runs in the order of the requests: every request queued before it has its offsets.
    Visit(Visit),
    Shutdown,
}

impl std::fmt::Debug for AppendCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Append(req) => f.debug_tuple("Append").field(req).finish(),
            Self::Visit(_) => f.write_str("Visit"),
            Self::Shutdown => f.write_str("Shutdown"),
        }
    }
}

/// Messages to the flusher.
#[derive(Debug)]
pub(crate) enum FlushCommand {
    /// Complete `reply` once the sync covers `end`.
    Wait {
        end: u64,
        reply: Reply,
        result: Vec<Appended>,
        spent: Vec<MessageInput>,
    },
    /// Data was written that nobody waits for: sync it soon.
    Nudge,
    Shutdown,
}

/// Next queue offset per topic and queue.
pub(crate) type QueueOffsets = HashMap<String, HashMap<i32, i64>>;

pub(crate) struct Appender {
    log: Arc<CommitLog>,
    io: Arc<dyn StorageIo>,
    shared: Arc<Shared>,
    cfg: StoreConfig,
    flush_tx: Sender<FlushCommand>,
    queue_offsets: QueueOffsets,
    /// Where the next record goes (commit-log offset); `segment` holds it unless `sealed`.
    next: u64,
    segment: Option<Arc<Segment>>,
    buf: Vec<u8>,
    /// Commit-log offset of `buf[0]`.
    buf_start: u64,
    /// Requests whose bytes are in `buf`, with their end offsets and results.
    staged: Vec<(u64, AppendRequest, Vec<Appended>)>,
    disk_checked: Instant,
    disk_full: Option<String>,
    /// When the drained batch started: the disk-usage check reads this instead of the clock
    /// (not free at one record per request). The store timestamp is still read per request:
    /// it must not be older than the request (a timer released at its due time is stored at
    /// or after it).
    batch_started: Instant,
    /// Shared with the warmer, when it runs: every write is announced there first.
    warm: Option<Arc<WarmFront>>,
    /// Set in sync mode: when idle, the appender syncs its own batch instead of handing it on.
    syncer: Option<Arc<Syncer>>,
}

impl Appender {
    pub(crate) fn new(
        log: Arc<CommitLog>,
        io: Arc<dyn StorageIo>,
        shared: Arc<Shared>,
        cfg: StoreConfig,
        flush_tx: Sender<FlushCommand>,
        queue_offsets: QueueOffsets,
        next: u64,
    ) -> Self {
        let segment = log.segment_for(next);
        Self {
            log,
            io,
            shared,
            cfg,
            flush_tx,
            queue_offsets,
            next,
            segment,
            buf: Vec::with_capacity(1 << 20),
            buf_start: next,
            staged: Vec::new(),
            disk_checked: Instant::now() - Duration::from_secs(3600),
            disk_full: None,
            batch_started: Instant::now(),
            warm: None,
            syncer: None,
        }
    }

    /// Lets the appender sync inline when nothing else is queued and no sync is running.
    pub(crate) fn with_inline_sync(mut self, syncer: Arc<Syncer>) -> Self {
        self.syncer = Some(syncer);
        self
    }

    /// Announces every write to the warmer's front (when warming is on).
    pub(crate) fn with_warm_front(mut self, warm: Option<Arc<WarmFront>>) -> Self {
        self.warm = warm;
        self
    }

    /// Runs until a `Shutdown` command or until every sender is gone.
    pub(crate) fn run(mut self, rx: Receiver<AppendCommand>) {
        while let Ok(cmd) = rx.recv() {
            self.batch_started = Instant::now();
            let mut stop = !self.handle(cmd);
            while !stop && self.buf.len() < self.cfg.max_write_batch_bytes {
                match rx.try_recv() {
                    Ok(cmd) => stop = !self.handle(cmd),
                    Err(_) => break,
                }
            }
            self.write_staged(!stop && rx.is_empty());
            if stop {
                break;
            }
        }
        // Refuse whatever is still queued: nothing of it was written (a visit dropped unrun
        // answers its caller `Closed`).
        while let Ok(cmd) = rx.try_recv() {
            if let AppendCommand::Append(req) = cmd {
                req.reply.fail(StoreError::Closed);
            }
        }
        let _ = self.flush_tx.send(FlushCommand::Shutdown);
    }

    /// Handles one command; false means stop.
    fn handle(&mut self, cmd: AppendCommand) -> bool {
        match cmd {
            AppendCommand::Shutdown => false,
            AppendCommand::Visit(visit) => {
                visit(&self.queue_offsets);
                true
            }
            AppendCommand::Append(req) => {
                if let Err(e) = self.precheck() {
                    req.reply.fail(e);
                } else {
                    self.stage(req);
                }
                true
            }
        }
    }

    fn precheck(&mut self) -> Result<()> {
        if let Some(reason) = self.shared.fenced() {
            return Err(StoreError::Fenced(reason));
        }
        // While refusing, the clock is read per request: refused requests add nothing to the
        // batch, so under a backlog one batch could last long after space returned.
        let now = if self.disk_full.is_some() {
            Instant::now()
        } else {
            self.batch_started
        };
        if now.saturating_duration_since(self.disk_checked) >= Duration::from_millis(100) {
            self.refresh_disk_usage();
        }
        match &self.disk_full {
            Some(why) => Err(StoreError::DiskFull(why.clone())),
            None => Ok(()),
        }
    }

    fn refresh_disk_usage(&mut self) {
        self.disk_checked = Instant::now();
        self.disk_full = match self.io.disk_usage(&self.cfg.data_dir) {
            Ok(u) if u.ratio() >= self.cfg.disk_max_used_ratio => Some(format!(
                "disk {:.1}% used, appends refused above {:.1}%",
                u.ratio() * 100.0,
                self.cfg.disk_max_used_ratio * 100.0
            )),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read disk usage");
                None
            }
        };
    }

    /// Places a request's records after the staged bytes, rolling the segment first if needed.
    fn stage(&mut self, req: AppendRequest) {
        let host = self.cfg.store_host;
        let need: u64 = req
            .messages
            .iter()
            .map(|m| {
                framing::frame_len(record_len(
                    &message::header(m, host),
                    &m.body,
                    &m.topic,
                    m.properties.as_bytes(),
                ))
            })
            .sum();
        if need + framing::BLANK_LEN as u64 > self.log.segment_size() {
            let e =
                StoreError::InvalidMessage(format!("request of {need} bytes exceeds a segment"));
            req.reply.fail(e);
            return;
        }
        if let Err(e) = self.ensure_room(need) {
            req.reply.fail(e);
            return;
        }
        if self.buf.is_empty() {
            self.buf_start = self.next;
        }
        let watermark = self.shared.flushed.get();
        let seal = self.log.seal();
        let store_ts = now_ms();
        let mut result = Vec::with_capacity(req.messages.len());
        // Offsets are reserved per run of messages for one queue (a batch is usually one run),
        // so the topic is hashed once per run, not once per message.
        let mut reserved = 0..0;
        for (i, (m, crc)) in req.messages.iter().zip(&req.body_crcs).enumerate() {
            let queue_offset = if m.is_consumable() {
                if reserved.is_empty() {
                    let run = req.messages[i..]
                        .iter()
                        .take_while(|n| {
                            n.is_consumable() && n.queue_id == m.queue_id && n.topic == m.topic
                        })
                        .count() as i64;
                    let first = self.reserve_queue_offsets(&m.topic, m.queue_id, run);
                    reserved = first..first + run;
                }
                reserved.next().expect("reserved for the whole run")
            } else {
                0
            };
            let phys = self.next;
            let start = self.buf.len();
            let size = encode_record_with_crc(
                &message::header(m, host),
                &m.body,
                *crc,
                &m.topic,
                m.properties.as_bytes(),
                &mut self.buf,
            )
            .expect("validated before queueing");
            let record = &mut self.buf[start..];
            patch_store_fields(record, queue_offset, phys as i64, store_ts);
            let trailer = framing::trailer(record, watermark, seal, phys);
            self.buf.extend_from_slice(&trailer);
            self.next += framing::frame_len(size);
            result.push(Appended {
                phys_offset: phys,
                size: size as u32,
                queue_offset,
                store_timestamp: store_ts,
            });
        }
        self.staged.push((self.next, req, result));
    }

    /// Reserves `count` consecutive offsets of a queue; returns the first.
    fn reserve_queue_offsets(&mut self, topic: &str, queue_id: i32, count: i64) -> i64 {
        let per_topic = match self.queue_offsets.get_mut(topic) {
            Some(m) => m,
            None => self.queue_offsets.entry(topic.to_string()).or_default(),
        };
        let slot = per_topic.entry(queue_id).or_insert(0);
        let first = *slot;
        *slot += count;
        first
    }

    /// Makes sure `need` bytes fit at `self.next` in an open segment.
    fn ensure_room(&mut self, need: u64) -> Result<()> {
        if let Some(seg) = &self.segment {
            // The segment's own length: one written under another configured size keeps it.
            let pos = self.next - seg.base;
            if pos + need + framing::BLANK_LEN as u64 <= seg.file.len() {
                return Ok(());
            }
            self.seal_segment(pos)?;
        }
        self.wait_for_flush_window();
        self.refresh_disk_usage();
        if let Some(why) = &self.disk_full {
            return Err(StoreError::DiskFull(why.clone()));
        }
        let seg = match self.log.create_segment(self.next) {
            Ok(seg) => seg,
            Err(StoreError::SyncFailed(why)) => {
                let reason = format!("commit-log segment not made durable: {why}");
                self.shared.fence(reason.clone());
                return Err(StoreError::Fenced(reason));
            }
            Err(e) => return Err(e),
        };
        self.segment = Some(seg);
        Ok(())
    }

    /// Writes the end marker into the current segment and moves `next` to the next segment.
    fn seal_segment(&mut self, pos: u64) -> Result<()> {
        let seg = self.segment.take().expect("sealing needs a segment");
        let marker = framing::blank_marker(
            pos,
            seg.file.len(),
            self.shared.flushed.get(),
            self.log.seal(),
            seg.base,
        );
        if self.buf.is_empty() {
            self.buf_start = self.next;
        }
        self.buf.extend_from_slice(&marker);
        self.next = seg.end();
        // Write what is staged (with the marker) now, so the next segment starts clean.
        self.segment = Some(seg);
        self.write_staged(false);
        self.segment = None;
        crash_point::reach(crash_point::SEGMENT_SEALED);
        if let Some(reason) = self.shared.fenced() {
            return Err(StoreError::Fenced(reason));
        }
        Ok(())
    }

    /// In sync mode, keeps the bytes written but not yet synced under `max_unflushed_bytes`,
    /// which bounds the window recovery treats as possibly torn.
    fn wait_for_flush_window(&self) {
        if !matches!(self.cfg.flush, FlushMode::Sync) {
            return;
        }
        let limit = self.cfg.max_unflushed_bytes;
        loop {
            let flushed = self.shared.flushed.get();
            let written = self.shared.written.get();
            if written.saturating_sub(flushed) <= limit || self.shared.fenced().is_some() {
                return;
            }
            let _ = self.flush_tx.send(FlushCommand::Nudge);
            self.shared
                .flushed
                .wait_beyond(flushed, Duration::from_millis(50));
        }
    }

    /// Issues one `pwrite` for everything staged, then hands the requests on (or, when `idle`,
    /// may sync them itself).
    fn write_staged(&mut self, idle: bool) {
        if self.buf.is_empty() {
            return;
        }
        self.wait_for_flush_window();
        // After a seal `next` is the following segment's base: the rest of the sealed
        // segment is empty, and counting it as written lets readers step over it.
        let end = self.next;
        let start = self.buf_start;
        // A failed sync may have fenced the store since these requests were staged (the
        // window wait returns at once then): nothing more is written, and none of them is
        // acknowledged, `WAIT=false` ones included.
        let outcome = match (self.shared.fenced(), &self.segment) {
            (Some(reason), _) => Err(StoreError::Fenced(reason)),
            (None, Some(seg)) => {
                if let Some(front) = &self.warm {
                    front.before_write(start, start + self.buf.len() as u64);
                }
                seg.file
                    .write_at(self.io.as_ref(), &self.buf, start - seg.base)
            }
            (None, None) => Err(StoreError::Recovery("no open segment to write to".into())),
        };
        self.buf.clear();
        let mut staged = std::mem::take(&mut self.staged);
        match outcome {
            Ok(()) => {
                self.shared.written.set(end);
                if !(idle && self.sync_inline(&mut staged)) {
                    self.complete_written(staged);
                }
            }
            Err(e) => {
                let why = match e {
                    StoreError::Fenced(reason) => reason,
                    e => {
                        self.shared.fence(format!("commit-log write failed: {e}"));
                        e.to_string()
                    }
                };
                for (_, req, _) in staged {
                    req.reply.fail(StoreError::Fenced(why.clone()));
                }
            }
        }
    }

    /// Syncs and completes `staged` on this thread when the flusher has nothing queued and is
    /// not syncing; false (nothing done) otherwise. Requests handed to the flusher earlier are
    /// covered by the same sync and completed by the flusher's next round without a sync.
    fn sync_inline(&self, staged: &mut Vec<(u64, AppendRequest, Vec<Appended>)>) -> bool {
        let Some(syncer) = &self.syncer else {
            return false;
        };
        let durable = staged.iter().any(|(_, req, _)| req.wait_durable);
        if !durable || !self.flush_tx.is_empty() {
            return false;
        }
        let Some(outcome) = syncer.try_sync_written() else {
            return false;
        };
        for (_, req, result) in staged.drain(..) {
            let reply = match &outcome {
                Ok(_) => Ok(result),
                Err(why) => Err(why.to_error()),
            };
            req.reply.complete(reply, req.messages);
        }
        true
    }

    fn complete_written(&self, staged: Vec<(u64, AppendRequest, Vec<Appended>)>) {
        let sync = matches!(self.cfg.flush, FlushMode::Sync);
        let mut nudge = false;
        for (end, req, result) in staged {
            if sync && req.wait_durable {
                let _ = self.flush_tx.send(FlushCommand::Wait {
                    end,
                    reply: req.reply,
                    result,
                    spent: req.messages,
                });
            } else {
                nudge |= sync;
                req.reply.complete(Ok(result), req.messages);
            }
        }
        if nudge {
            let _ = self.flush_tx.send(FlushCommand::Nudge);
        }
    }
}
