//! The dispatcher: turns commit-log records into consume-queue and index entries, and writes
//! checkpoints.
//!
//! It follows the *flushed* offset in sync mode, so a consumer can never see a message that a
//! crash could still take away; in async mode it follows the written offset (documented as part
//! of the async risk). Each record's entries go to the slot its QUEUEOFFSET names, so running
//! it twice over the same records (recovery) is harmless.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use sluice_protocol::message::java_hash;
use sluice_protocol::message::properties::{find_properties, keys};
use sluice_protocol::message::record::{sysflag, RecordView, MIN_RECORD_LEN};
use sluice_protocol::text::lossy_utf8;

use crate::checkpoint::Checkpoint;
use crate::commitlog::{CommitLog, Segment};
use crate::consume_queue::{ConsumeQueue, ConsumeQueues, CqEntry};
use crate::damage::DamageLog;
use crate::error::Result;
use crate::framing::{self, Probe};
use crate::index::{index_key, Index, IndexItem};
use crate::message::now_ms;
use crate::shared::Shared;

/// What a listener hears after a record became consumable.
#[derive(Debug, Clone)]
pub struct DispatchEvent {
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue_id: i32,
    /// The record's queue offset; the queue's max offset is now `queue_offset + 1`.
    pub queue_offset: u64,
    /// Java hash of its tag.
    pub tags_code: i64,
    /// Commit-log offset.
    pub phys_offset: u64,
    /// Store timestamp.
    pub store_timestamp: i64,
}

/// Called on the dispatcher thread for every dispatched record; keep it short (wake a waiter).
pub type DispatchListener = Arc<dyn Fn(&DispatchEvent) + Send + Sync>;

/// Writes derived entries for commit-log ranges.
pub(crate) struct Dispatcher {
    pub(crate) log: Arc<CommitLog>,
    pub(crate) cqs: Arc<ConsumeQueues>,
    pub(crate) index: Arc<Index>,
    pub(crate) damage: Arc<DamageLog>,
    pub(crate) listener: RwLock<Option<DispatchListener>>,
    /// The batch buffers, kept between calls: a fresh batch of 4 096 records is a few hundred
    /// KiB, which the allocator takes from (and returns to) the OS each time, faulting and
    /// zeroing a huge page per call.
    pub(crate) scratch: Mutex<Batch>,
    /// The most a checkpoint may claim dispatched: what the last successful consume-queue and
    /// index sync covered (at open, where this run began to re-dispatch). It stops moving
    /// once such a sync fails (see `Shared::queues_unsynced`).
    pub(crate) synced_to: AtomicU64,
    /// Where the log ended at open: records from here on were encoded by this run's appender
    /// from checked input and are read back from the same page cache, so their checksum and
    /// structure are not verified again (see [`framing::own_record_len`]). Below it (records
    /// re-dispatched at open) every record is probed in full.
    pub(crate) own_from: u64,
}

/// Commit-log bytes behind the dispatcher that stay mapped (recent reads stay cheap).
const RESIDENT_WINDOW: u64 = 64 << 20;

/// Most records one `dispatch_range` call handles, so listeners hear about new records soon.
const MAX_RECORDS_PER_CALL: usize = 4096;

/// Entries gathered during one call and written together: one write per queue run and one
/// for the index, instead of a system call per entry.
#[derive(Default)]
pub(crate) struct Batch {
    runs: Vec<(Arc<ConsumeQueue>, u64, Vec<CqEntry>)>,
    index: Vec<IndexItem>,
    events: Vec<DispatchEvent>,
}

impl Batch {
    fn clear(&mut self) {
        self.runs.clear();
        self.index.clear();
        self.events.clear();
    }

    fn push_cq(&mut self, q: Arc<ConsumeQueue>, offset: u64, entry: CqEntry) {
        let run = self
            .runs
            .iter_mut()
            .rev()
            .find(|(rq, first, es)| Arc::ptr_eq(rq, &q) && first + es.len() as u64 == offset);
        match run {
            Some((_, _, es)) => es.push(entry),
            None => self.runs.push((q, offset, vec![entry])),
        }
    }
}

impl Dispatcher {
    /// Dispatches the records in `[from, to)` (at most [`MAX_RECORDS_PER_CALL`]); returns the
    /// offset reached. Entries become visible, and listeners hear of them, after the writes.
    pub(crate) fn dispatch_range(&self, from: u64, to: u64) -> Result<u64> {
        let mut scratch = self.scratch.lock();
        let batch = &mut *scratch;
        batch.clear();
        let mut ctx = Gathering {
            queue: None,
            events: self.listener.read().is_some(),
        };
        let reached = self.walk(from, to, MAX_RECORDS_PER_CALL, |pos, seg, rel, total| {
            let bytes = &seg.file.as_slice()[rel..rel + total];
            if let Err(why) = self.gather(pos, bytes, batch, &mut ctx)? {
                let len = framing::frame_len(total);
                self.damage
                    .record(seg.file.path(), rel as u64, pos, len, &why);
            }
            Ok(())
        })?;
        self.write_batch(batch)?;
        Ok(reached)
    }

    /// Walks the records of `[from, to)`, at most `max` of them, handing `f` each one's
    /// commit-log offset, segment, place in it and size (damage and segment ends are stepped
    /// over, see [`Dispatcher::step`]); returns the offset reached. The segment is looked up
    /// again only when the walk leaves it, not once per record.
    fn walk(
        &self,
        from: u64,
        to: u64,
        max: usize,
        mut f: impl FnMut(u64, &Segment, usize, usize) -> Result<()>,
    ) -> Result<u64> {
        let (mut pos, mut records) = (from, 0);
        let mut seg = None::<Arc<Segment>>;
        while pos < to && records < max {
            let (rel, total) = match self.step(&mut seg, pos, to) {
                Step::Record { rel, total } => (rel, total),
                Step::Skip(next) => {
                    pos = next;
                    continue;
                }
                Step::End => break,
            };
            let Some(seg) = seg.as_ref() else {
                break; // `step` found the record in it
            };
            f(pos, seg, rel, total)?;
            pos += framing::frame_len(total);
            records += 1;
        }
        Ok(pos)
    }

    /// One step of a walk over `[pos, to)`: the record at `pos`, or where to go on (a
    /// segment's end, past damage). `seg` is the segment of the last step, looked up again
    /// only when `pos` leaves it.
    fn step(&self, seg: &mut Option<Arc<Segment>>, pos: u64, to: u64) -> Step {
        if !seg.as_ref().is_some_and(|s| s.base <= pos && pos < s.end()) {
            *seg = self.log.segment_for(pos);
        }
        let Some(s) = seg.as_ref() else {
            return Step::End;
        };
        let rel = (pos - s.base) as usize;
        match self.record_at(s, rel, pos, to) {
            Probe::Record { total, .. } => Step::Record { rel, total },
            Probe::SegmentEnd { .. } => Step::Skip(s.end()),
            Probe::Empty | Probe::Invalid(_) => Step::Skip(self.skip_damage(pos, s, to)),
        }
    }

    /// What is at `rel` of `seg` (commit-log offset `pos`): for this run's own records, read
    /// from the frame alone; for older ones (and anything the frame does not vouch for), the
    /// full probe (checksum, structure, topic).
    fn record_at(&self, seg: &Segment, rel: usize, pos: u64, to: u64) -> Probe {
        let bytes = seg.file.as_slice();
        let max = self.log.max_record();
        if pos >= self.own_from {
            // Bounded by `to` and by the offset the record names: in async mode the dispatcher
            // follows `written`, and pages the kernel failed to write back and dropped are read
            // from the disk again; a length read there cannot walk past what was written or
            // out of step with the records.
            let own = framing::own_record_len(bytes, rel, max)
                .filter(|t| pos + framing::frame_len(*t) <= to)
                .filter(|_| framing::claimed_offset(bytes, rel) == Some(pos));
            if let Some(total) = own {
                // The caller reads only `total` of it.
                return Probe::Record {
                    total,
                    watermark: 0,
                    store_ms: 0,
                };
            }
        }
        framing::probe(bytes, rel, seg.base, max, self.log.seal())
    }

    /// Dispatches everything in `[from, to)` (recovery) until done or a write fails; returns
    /// the offset reached, with the failure if one stopped it. The dispatcher thread goes on
    /// from there, as it does after a failure at run time: a full disk under the queue files
    /// must not keep the store from opening (its cleaner, which frees space, runs only once
    /// it is open).
    pub(crate) fn dispatch_all(&self, mut from: u64, to: u64) -> (u64, Option<crate::StoreError>) {
        while from < to {
            let reached = match self.dispatch_range(from, to) {
                Ok(r) => r,
                Err(e) => return (from, Some(e)),
            };
            if reached == from {
                break; // no segment there: nothing more to dispatch
            }
            from = reached;
        }
        (from, None)
    }

    /// For every queue with records in `[pos, to)`, which are not in their consume queues yet
    /// (a re-dispatch that stopped): the queue offset after its last one, which the appender
    /// must not hand out again, and the first whose entry found on disk is not that record's
    /// (lost or stale: a power cut keeps some pages of a queue file and loses others), if any.
    pub(crate) fn queue_ends(
        &self,
        pos: u64,
        to: u64,
    ) -> std::collections::HashMap<(String, i32), (Option<u64>, u64)> {
        let mut out = std::collections::HashMap::new();
        let walked = self.walk(pos, to, usize::MAX, |pos, seg, rel, total| {
            // As `gather` takes them: consumable records at a queue offset a record can have.
            let Ok(view) = RecordView::parse(&seg.file.as_slice()[rel..rel + total], usize::MAX)
            else {
                return Ok(());
            };
            let q = plausible_queue_offset(view.header.queue_offset, pos);
            if let (true, Some(q)) = (consumable(&view), q) {
                let (bad, next) = out
                    .entry((view.topic.to_owned(), view.header.queue_id))
                    .or_insert((None, 0));
                *next = (*next).max(q + 1);
                let on_disk = self
                    .cqs
                    .get(view.topic, view.header.queue_id)
                    .is_some_and(|cq| cq.holds(q, pos, view.total_size as u32));
                if !on_disk {
                    *bad = Some(bad.map_or(q, |b: u64| b.min(q)));
                }
            }
            Ok(())
        });
        debug_assert!(walked.is_ok(), "the walk's callback never fails");
        out
    }

    /// Consume-queue runs first: rewriting them on a retry puts the same entries at the same
    /// places, while index entries are appended, so a retry after a failed run (a full disk
    /// under a new queue file) appended the whole batch's keys to the index again.
    fn write_batch(&self, batch: &Batch) -> Result<()> {
        for (q, first, entries) in &batch.runs {
            q.put_run(*first, entries, self.cqs.io())?;
        }
        self.index.put_batch(&batch.index)?;
        if let Some(listener) = self.listener.read().as_ref() {
            for e in &batch.events {
                listener(e);
            }
        }
        Ok(())
    }

    /// Steps over a damaged range: a known one, or one found now (recorded as damage). The
    /// search for the next valid record stops at `to`: past it the appender may be writing,
    /// and a record found there would have made every record between `to` and it "damage"
    /// that was never dispatched. Damage reaching past `to` is stepped over by the next call.
    fn skip_damage(&self, pos: u64, seg: &Segment, to: u64) -> u64 {
        if let Some(end) = self.damage.range_end(pos) {
            return end;
        }
        let rel = (pos - seg.base) as usize;
        let bytes = seg.file.as_slice();
        let until = usize::try_from(to.min(seg.end()) - seg.base).unwrap_or(bytes.len());
        let next = framing::find_next_valid(
            bytes,
            rel + 1,
            until,
            seg.base,
            self.log.max_record(),
            self.log.seal(),
        );
        let end = next.map_or(to.min(seg.end()), |(p, _)| seg.base + p as u64);
        self.damage.record(
            seg.file.path(),
            pos - seg.base,
            pos,
            end - pos,
            "found by the dispatcher",
        );
        end
    }

    /// Adds a record's index and consume-queue entries to the batch. The inner `Err` is a
    /// record refused (it does not parse, or claims what no appended record can): nothing of
    /// it is dispatched, and the caller records it as damage.
    fn gather(
        &self,
        phys: u64,
        bytes: &[u8],
        batch: &mut Batch,
        ctx: &mut Gathering,
    ) -> Result<std::result::Result<(), String>> {
        // Records of this run are not probed in full (`own_from`): one that does not parse is
        // damage like any other, not a dispatch failure retried for ever.
        let view = match RecordView::parse(bytes, usize::MAX) {
            Ok(v) => v,
            Err(e) => return Ok(Err(format!("record structure: {e}"))),
        };
        let Some(queue_offset) = plausible_queue_offset(view.header.queue_offset, phys) else {
            return Ok(Err(format!(
                "queue offset {} impossible at commit-log offset {phys}",
                view.header.queue_offset
            )));
        };
        let tx = view.transaction_type();
        let store_ts = view.header.store_timestamp;
        let [tags, uniq, user_keys] =
            find_properties(view.properties, [keys::TAGS, keys::UNIQ_KEY, keys::KEYS]);
        if tx != sysflag::TRANSACTION_ROLLBACK {
            gather_index(&view, uniq, user_keys, phys, store_ts, &mut batch.index);
        }
        if !consumable(&view) {
            return Ok(Ok(()));
        }
        let tags_code = tags.map_or(0, |t| i64::from(java_hash(&lossy_utf8(t))));
        let cq = ctx.queue_for(&self.cqs, view.topic, view.header.queue_id)?;
        batch.push_cq(
            cq,
            queue_offset,
            CqEntry {
                phys_offset: phys,
                size: view.total_size as u32,
                tags_code,
            },
        );
        if ctx.events {
            batch.events.push(DispatchEvent {
                topic: view.topic.to_string(),
                queue_id: view.header.queue_id,
                queue_offset,
                tags_code,
                phys_offset: phys,
                store_timestamp: store_ts,
            });
        }
        Ok(Ok(()))
    }

    /// Releases the commit-log pages mapped below `dispatched - RESIDENT_WINDOW` from this
    /// process's resident set (they stay in the page cache; see
    /// `MappedFile::release_resident`). Runs after each checkpoint, so pages that readers fault
    /// back in while catching up are released again a checkpoint later.
    pub(crate) fn release_behind(&self, dispatched: u64) {
        let Some(below) = dispatched.checked_sub(RESIDENT_WINDOW) else {
            return;
        };
        for seg in self.log.segments() {
            if seg.base >= below {
                break;
            }
            seg.file.release_resident(0, below - seg.base);
        }
    }

    /// Releases the pages readers faulted into the older files of every queue (writers'
    /// pages are released at each sync; see `ConsumeQueue::release_behind`).
    pub(crate) fn release_queue_pages(&self) {
        for (_, _, q) in self.cqs.all() {
            q.release_old();
        }
    }

    /// Syncs consume queues and the index, then records the checkpoint. After a failed sync
    /// those files are not synced again in this run (a retry may be reported a success after
    /// the kernel dropped what it could not write): checkpoints go on recording the commit
    /// log's progress, with `dispatched` held at what the last good sync covered, so the
    /// next open re-dispatches from there (see `Shared::queues_unsynced`). An error means no
    /// checkpoint was written (a failed queue sync is logged, not returned).
    pub(crate) fn checkpoint(&self, shared: &Shared, path: &std::path::Path) -> Result<()> {
        let flushed = shared.flushed.get();
        if !shared.queues_unsynced.load(Ordering::Acquire) {
            let dispatched = shared.dispatched.get();
            let synced = self
                .cqs
                .all()
                .into_iter()
                .try_for_each(|(_, _, q)| q.sync_if_dirty(self.cqs.io()))
                .and_then(|()| self.index.sync());
            match synced {
                Ok(()) => self.synced_to.store(dispatched, Ordering::Release),
                Err(e) => {
                    shared.queues_unsynced.store(true, Ordering::Release);
                    tracing::error!(
                        error = %e, held_at = self.synced_to.load(Ordering::Acquire),
                        "consume-queue or index sync failed: for the rest of this run checkpoints \
                         hold `dispatched` where the last good sync left it, and the next open \
                         re-dispatches from there"
                    );
                }
            }
        }
        let seal = self.log.seal();
        Checkpoint {
            flushed,
            dispatched: self.synced_to.load(Ordering::Acquire),
            written_at_ms: now_ms(),
            sealed_from: (seal != crate::framing::Seal::PLAIN).then(|| seal.from()),
            floors_kept: self.cqs.floors_kept(),
        }
        .store(path)
    }
}

/// What [`Dispatcher::step`] found.
enum Step {
    /// A record of `total` bytes at `rel` of the step's segment.
    Record { rel: usize, total: usize },
    /// Nothing to read at the position: go on at this offset.
    Skip(u64),
    /// No segment holds the position.
    End,
}

/// Whether a record gets a consume-queue entry: a prepared or rolled-back one does not.
fn consumable(view: &RecordView<'_>) -> bool {
    let tx = view.transaction_type();
    tx == sysflag::TRANSACTION_NOT_TYPE || tx == sysflag::TRANSACTION_COMMIT
}

/// The queue offset a record at `phys` claims, if an appended record could claim it. Offset
/// `n` of a queue follows `n` records of that queue earlier in the commit log (offsets are
/// never reused, and the log's offsets never restart), each at least a minimal frame long, so
/// `n` is at most `phys / min frame`. A negative or larger one is forged (a record inside a
/// message body, exposed by a torn write); taken as it is, it named consume-queue files past
/// `u64::MAX` bytes and panicked the open.
fn plausible_queue_offset(claimed: i64, phys: u64) -> Option<u64> {
    let claimed = u64::try_from(claimed).ok()?;
    let most = phys / framing::frame_len(MIN_RECORD_LEN);
    (claimed <= most).then_some(claimed)
}

fn gather_index(
    view: &RecordView<'_>,
    uniq: Option<&[u8]>,
    user_keys: Option<&[u8]>,
    phys: u64,
    store_ts: i64,
    out: &mut Vec<IndexItem>,
) {
    if let Some(uniq) = uniq {
        out.push(IndexItem::new(
            &index_key(view.topic, &lossy_utf8(uniq)),
            phys,
            store_ts,
        ));
    }
    if let Some(ks) = user_keys {
        for k in lossy_utf8(ks).split(' ').filter(|k| !k.is_empty()) {
            out.push(IndexItem::new(&index_key(view.topic, k), phys, store_ts));
        }
    }
}

/// What one `dispatch_range` call keeps between records: the queue the last record went to
/// (most runs of records share one, and a lookup hashes the topic under a lock), and whether
/// a listener wants events.
struct Gathering {
    queue: Option<(String, i32, Arc<ConsumeQueue>)>,
    events: bool,
}

impl Gathering {
    fn queue_for(
        &mut self,
        cqs: &ConsumeQueues,
        topic: &str,
        queue_id: i32,
    ) -> Result<Arc<ConsumeQueue>> {
        if let Some((t, q, cq)) = &self.queue {
            if *q == queue_id && t == topic {
                return Ok(Arc::clone(cq));
            }
        }
        let cq = cqs.get_or_create(topic, queue_id)?;
        // Records of several queues interleave (a transaction's half, op and real message),
        // so the cached name's buffer is reused rather than allocated at every switch.
        match &mut self.queue {
            Some((t, q, c)) => {
                t.clear();
                t.push_str(topic);
                *q = queue_id;
                *c = Arc::clone(&cq);
            }
            None => self.queue = Some((topic.to_owned(), queue_id, Arc::clone(&cq))),
        }
        Ok(cq)
    }
}
