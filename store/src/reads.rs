//! Reads by queue, by key and by time: the queries a broker answers for consumers and tools.

use bytes::Bytes;
use sluice_protocol::message::ids::decode_offset_msg_id;
use sluice_protocol::message::properties::{find_property, keys};
use sluice_protocol::message::record::{
    store_timestamp_pos, RecordView, QUEUE_OFFSET_POS, SYSFLAG_POS,
};

use crate::consume_queue::{ConsumeQueue, CqEntry};
use crate::error::{Result, StoreError};
use crate::framing::{self, Probe};
use crate::index::index_key;
use crate::store::Store;

/// Most consume-queue entries one read looks at, filtered or not, so a selective filter over a
/// long queue cannot hold a thread.
const MAX_ENTRIES_SCANNED: u64 = 16_000;
/// Entries a filtered read asks for ahead (64 KiB): more are read a page per fault, and a
/// reply filled early has not paid for the rest.
const PREFETCH_ENTRIES: u64 = 64 * 1024 / crate::consume_queue::ENTRY_LEN;
/// Consume-queue entries in one 4 KiB page.
const ENTRIES_PER_PAGE: u64 = 4096 / crate::consume_queue::ENTRY_LEN;

/// How a queue read went (RocketMQ's `GetMessageStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetStatus {
    /// Messages returned.
    Found,
    /// Entries existed but none passed the filter (or they were damaged or holes).
    NoMatchedMessage,
    /// The queue exists and is empty.
    NoMessageInQueue,
    /// No such queue.
    NoMatchedLogicQueue,
    /// Offset below the queue's minimum.
    OffsetTooSmall,
    /// Offset equals the maximum: caught up.
    OffsetOverflowOne,
    /// Offset beyond the maximum.
    OffsetOverflowBadly,
}

/// One message read from a queue.
#[derive(Debug, Clone)]
pub struct QueueMessage {
    /// Its queue offset.
    pub queue_offset: u64,
    /// Its commit-log offset.
    pub phys_offset: u64,
    /// Its tag code.
    pub tags_code: i64,
    /// The stored record, verified, zero-copy.
    pub bytes: Bytes,
}

/// The result of a queue read.
#[derive(Debug, Clone)]
pub struct GetResult {
    /// What happened.
    pub status: GetStatus,
    /// Where the next read should start.
    pub next_offset: u64,
    /// Queue minimum offset.
    pub min_offset: u64,
    /// Queue maximum offset (next to be written).
    pub max_offset: u64,
    /// The messages, in queue order.
    pub messages: Vec<QueueMessage>,
}

/// Which side of a timestamp [`Store::offset_by_timestamp`] answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// The first offset stored at or after the time.
    Lower,
    /// The last offset stored at or before the time.
    Upper,
}

/// Entries looked at on each side of one without a store time (see `store_time_near`).
const TIME_PROBE: u64 = 64;

impl Store {
    /// Reads up to `max_count` messages and about `max_bytes` from `topic`/`queue_id` starting
    /// at `offset`, keeping entries whose tag code passes `filter`.
    pub fn get_messages(
        &self,
        topic: &str,
        queue_id: i32,
        offset: u64,
        max_count: usize,
        max_bytes: usize,
        filter: Option<&dyn Fn(i64) -> bool>,
    ) -> GetResult {
        let Some(q) = self.cqs.get(topic, queue_id) else {
            return result(GetStatus::NoMatchedLogicQueue, 0, 0, 0);
        };
        let (min, max) = (q.min_offset(), q.max_offset());
        if max == 0 || min == max {
            return result(
                GetStatus::NoMessageInQueue,
                if offset == 0 { 0 } else { max },
                min,
                max,
            );
        }
        if offset < min {
            return result(GetStatus::OffsetTooSmall, min, min, max);
        }
        if offset == max {
            return result(GetStatus::OffsetOverflowOne, offset, min, max);
        }
        if offset > max {
            return result(GetStatus::OffsetOverflowBadly, max, min, max);
        }
        let mut out = result(GetStatus::NoMatchedMessage, offset, min, max);
        let (mut o, mut bytes) = (offset, 0usize);
        let scan_end = max.min(offset + MAX_ENTRIES_SCANNED);
        if filter.is_some() && scan_end - offset > ENTRIES_PER_PAGE {
            // A filtered read may pass thousands of entries, and the queue's map reads a page
            // per fault (random-access advice): a long range is asked for at once. A consumer
            // that is caught up (a few entries behind) makes no system call for it.
            q.prefetch(offset, scan_end.min(offset + PREFETCH_ENTRIES));
        }
        while o < scan_end && out.messages.len() < max_count.max(1) {
            let entry = q.entry(o);
            if let Some(e) = entry.filter(|e| filter.is_none_or(|f| f(e.tags_code))) {
                if !out.messages.is_empty() && bytes + e.size as usize > max_bytes {
                    break;
                }
                if let Some(rec) = self.read_entry(topic, queue_id, o, &e) {
                    bytes += rec.len();
                    out.messages.push(QueueMessage {
                        queue_offset: o,
                        phys_offset: e.phys_offset,
                        tags_code: e.tags_code,
                        bytes: rec,
                    });
                }
            }
            o += 1;
        }
        out.next_offset = o;
        if !out.messages.is_empty() {
            out.status = GetStatus::Found;
        }
        out
    }

    /// The record an entry points at, if it verifies and really is that queue's message.
    fn read_entry(&self, topic: &str, queue_id: i32, offset: u64, e: &CqEntry) -> Option<Bytes> {
        match self.read_verified(e.phys_offset) {
            Ok(rec) if record_is(&rec, topic, queue_id, offset) => Some(rec),
            Ok(_) => {
                tracing::error!(
                    topic,
                    queue_id,
                    offset,
                    phys_offset = e.phys_offset,
                    "consume-queue entry points at another record; skipped"
                );
                None
            }
            Err(err) => {
                tracing::error!(topic, queue_id, offset, phys_offset = e.phys_offset, error = %err, "unreadable record skipped");
                None
            }
        }
    }

    /// Whether the message at `offset` is recent enough to count as "in memory", in RocketMQ's
    /// sense: within the newest `in_memory_window_bytes` of the commit log (40 % of RAM by
    /// default). A broker uses it to let a brand-new consumer group start at offset 0 of a young
    /// queue, as RocketMQ 4.x does. An offset with no message yet counts as in memory.
    pub fn offset_in_memory(&self, topic: &str, queue_id: i32, offset: u64) -> bool {
        let Some(e) = self.cqs.get(topic, queue_id).and_then(|q| q.entry(offset)) else {
            return true;
        };
        self.visible_end().saturating_sub(e.phys_offset) <= self.in_memory_window
    }

    /// First offset still served in the queue (0 for an unknown queue).
    pub fn min_offset(&self, topic: &str, queue_id: i32) -> u64 {
        self.cqs.get(topic, queue_id).map_or(0, |q| q.min_offset())
    }

    /// Where the queue's present life starts: its floor when its topic was deleted and
    /// created again (see [`Store::retire_queues`]), else 0. A new consumer group reads a young
    /// queue from here.
    pub fn queue_start(&self, topic: &str, queue_id: i32) -> u64 {
        self.cqs
            .get(topic, queue_id)
            .map_or(0, |q| q.floor_offset())
    }

    /// Whether a record at `queue_offset` of a queue lies below the queue's floor: its topic
    /// was deleted after it was stored, and it is never served again (a negative offset, a
    /// record that got no queue entry, is not).
    pub fn is_retired(&self, topic: &str, queue_id: i32, queue_offset: i64) -> bool {
        u64::try_from(queue_offset).is_ok_and(|o| o < self.queue_start(topic, queue_id))
    }

    /// Next offset to be written in the queue (0 for an unknown queue).
    pub fn max_offset(&self, topic: &str, queue_id: i32) -> u64 {
        self.cqs.get(topic, queue_id).map_or(0, |q| q.max_offset())
    }

    /// Every (topic, queue id) that has a consume queue.
    pub fn queues(&self) -> Vec<(String, i32)> {
        self.cqs.all().into_iter().map(|(t, q, _)| (t, q)).collect()
    }

    /// Store time of the message at `offset` of a queue, if it is there and readable.
    pub fn store_time(&self, topic: &str, queue_id: i32, offset: u64) -> Option<i64> {
        let q = self.cqs.get(topic, queue_id)?;
        self.store_time_at(&q, offset)
    }

    /// Store time of the message at the queue's minimum offset.
    pub fn earliest_store_time(&self, topic: &str, queue_id: i32) -> Option<i64> {
        let q = self.cqs.get(topic, queue_id)?;
        let (min, max) = (q.min_offset(), q.max_offset());
        (min..max.min(min + 64)).find_map(|o| self.store_time_at(&q, o))
    }

    /// The queue offset nearest to `timestamp_ms` on the given side (binary search on store
    /// times, which rise with the offset).
    pub fn offset_by_timestamp(
        &self,
        topic: &str,
        queue_id: i32,
        timestamp_ms: i64,
        boundary: Boundary,
    ) -> u64 {
        let Some(q) = self.cqs.get(topic, queue_id) else {
            return 0;
        };
        let (mut lo, mut hi) = (q.min_offset(), q.max_offset());
        let (min, max) = (lo, hi);
        let before = |o: u64| match boundary {
            Boundary::Lower => self
                .store_time_near(&q, o, min, max)
                .is_some_and(|t| t < timestamp_ms),
            Boundary::Upper => self
                .store_time_near(&q, o, min, max)
                .is_some_and(|t| t <= timestamp_ms),
        };
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if before(mid) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        match boundary {
            Boundary::Lower => lo,
            Boundary::Upper => lo.saturating_sub(1).clamp(min, max),
        }
    }

    /// The store time at `offset`, or, where it has none (a hole, a damaged record), at the
    /// nearest readable entry after it within [`TIME_PROBE`] entries, else of the first intact
    /// commit-log record after its own (any topic: store times rise with the log), else at the
    /// nearest readable entry before it. Counted as "not before", an entry without a time
    /// steered the search left: inside a damaged run longer than the probes, a time after
    /// the run was answered with an offset inside it.
    fn store_time_near(&self, q: &ConsumeQueue, offset: u64, min: u64, max: u64) -> Option<i64> {
        self.store_time_at(q, offset)
            .or_else(|| {
                (offset + 1..max.min(offset + 1 + TIME_PROBE))
                    .find_map(|o| self.store_time_at(q, o))
            })
            .or_else(|| self.store_time_after_phys(q.entry(offset)?.phys_offset))
            .or_else(|| {
                (min.max(offset.saturating_sub(TIME_PROBE))..offset)
                    .rev()
                    .find_map(|o| self.store_time_at(q, o))
            })
    }

    fn store_time_at(&self, q: &ConsumeQueue, offset: u64) -> Option<i64> {
        let e = q.entry(offset)?;
        store_time_of(&self.read_verified(e.phys_offset).ok()?)
    }

    /// Store time of the first intact record after commit-log offset `phys`, in its segment
    /// or the next, below the written end (the search never scans unwritten space).
    fn store_time_after_phys(&self, phys: u64) -> Option<i64> {
        let written = self.shared.written.get();
        let mut from = self.damage.range_end(phys).unwrap_or(phys).max(phys + 1);
        for _ in 0..2 {
            let seg = self.log.segment_for(from)?;
            let until = written.min(seg.end()).saturating_sub(seg.base) as usize;
            let bytes = seg.file.as_slice();
            let rel = (from - seg.base) as usize;
            match framing::find_next_valid(
                bytes,
                rel,
                until,
                seg.base,
                self.log.max_record(),
                self.log.seal(),
            ) {
                // The probe verified the record and read its time already.
                Some((_, Probe::Record { store_ms, .. })) => return Some(store_ms),
                Some((_, Probe::SegmentEnd { .. })) | None if seg.end() < written => {
                    from = seg.end();
                }
                _ => return None,
            }
        }
        None
    }

    /// Records of `topic` whose KEYS contain `key`, stored within `[begin_ms, end_ms]`, newest
    /// first, at most `max`.
    pub fn query_by_key(
        &self,
        topic: &str,
        key: &str,
        max: usize,
        begin_ms: i64,
        end_ms: i64,
    ) -> Vec<Bytes> {
        self.query_by_key_where(topic, key, max, (begin_ms, end_ms), &|_| true)
            .0
    }

    /// [`Store::query_by_key`] keeping only records whose properties also pass `also`, before
    /// the cap: `max` counts only records that pass, so others sharing the key cannot crowd
    /// them out. Also says whether the look-up stopped at its cap on candidates (`4 × max`,
    /// newest first) before it had seen every record the index holds for the key: then fewer
    /// than `max` results do not mean there are no more. Records of other topics sharing a key
    /// (the schedule's topic holds every real topic's timers) count toward that cap.
    pub fn query_by_key_where(
        &self,
        topic: &str,
        key: &str,
        max: usize,
        (begin_ms, end_ms): (i64, i64),
        also: &dyn Fn(&[u8]) -> bool,
    ) -> (Vec<Bytes>, bool) {
        self.query_index(topic, key, max, begin_ms, end_ms, |props| {
            find_property(props, keys::KEYS)
                .is_some_and(|ks| ks.split(|b| *b == b' ').any(|k| k == key.as_bytes()))
                && also(props)
        })
    }

    /// Records of `topic` whose UNIQ_KEY is `uniq_key`.
    pub fn query_by_uniq_key(&self, topic: &str, uniq_key: &str, max: usize) -> Vec<Bytes> {
        self.query_by_uniq_key_where(topic, uniq_key, max, &|_| true)
            .0
    }

    /// [`Store::query_by_uniq_key`] keeping only records whose properties also pass `also`,
    /// before the cap, with the flag of [`Store::query_by_key_where`].
    pub fn query_by_uniq_key_where(
        &self,
        topic: &str,
        uniq_key: &str,
        max: usize,
        also: &dyn Fn(&[u8]) -> bool,
    ) -> (Vec<Bytes>, bool) {
        self.query_index(topic, uniq_key, max, i64::MIN / 2, i64::MAX / 2, |props| {
            find_property(props, keys::UNIQ_KEY) == Some(uniq_key.as_bytes()) && also(props)
        })
    }

    fn query_index(
        &self,
        topic: &str,
        key: &str,
        max: usize,
        begin_ms: i64,
        end_ms: i64,
        matches: impl Fn(&[u8]) -> bool,
    ) -> (Vec<Bytes>, bool) {
        let limit = candidate_limit(max);
        let (candidates, truncated) =
            self.index
                .lookup(&index_key(topic, key), begin_ms, end_ms, limit);
        // A walk cut short may have missed entries: the answer is not "no more exist".
        let capped = candidates.len() >= limit || truncated;
        let mut out = Vec::new();
        for phys in candidates {
            if out.len() >= max {
                continue;
            }
            // Index entries are not cut when recovery cuts a torn tail, so an entry may point
            // past the end or into the middle of a record written since: that is a stale hit,
            // not damage on disk, and must not fill the damage log.
            let Ok(rec) = self.read_record_untrusted(phys) else {
                continue;
            };
            let Ok(view) = RecordView::parse(&rec, usize::MAX) else {
                continue;
            };
            let ts = view.header.store_timestamp;
            if view.topic == topic && ts >= begin_ms && ts <= end_ms && matches(view.properties) {
                out.push(rec);
            }
        }
        (out, capped)
    }

    /// The record named by an offset message id (store address + commit-log offset).
    pub fn read_by_offset_msg_id(&self, id: &str) -> Result<Bytes> {
        let (_, phys) =
            decode_offset_msg_id(id).map_err(|e| StoreError::InvalidMessage(e.to_string()))?;
        // The id comes from a client: an offset inside a record is not found, never damage.
        self.read_record_untrusted(phys)
    }
}

fn result(status: GetStatus, next_offset: u64, min_offset: u64, max_offset: u64) -> GetResult {
    GetResult {
        status,
        next_offset,
        min_offset,
        max_offset,
        messages: Vec::new(),
    }
}

/// Whether a record belongs to `topic`/`queue_id` at `offset` (cheap: fixed fields first).
fn record_is(rec: &[u8], topic: &str, queue_id: i32, offset: u64) -> bool {
    let qoff = rec
        .get(QUEUE_OFFSET_POS..QUEUE_OFFSET_POS + 8)
        .map(|b| i64::from_be_bytes(b.try_into().expect("8")));
    if qoff != Some(offset as i64) {
        return false;
    }
    RecordView::parse(rec, usize::MAX)
        .is_ok_and(|v| v.topic == topic && v.header.queue_id == queue_id)
}

/// STORETIMESTAMP of a verified record.
fn store_time_of(rec: &[u8]) -> Option<i64> {
    let flag = i32::from_be_bytes(rec.get(SYSFLAG_POS..SYSFLAG_POS + 4)?.try_into().ok()?);
    let pos = store_timestamp_pos(flag);
    Some(i64::from_be_bytes(rec.get(pos..pos + 8)?.try_into().ok()?))
}

/// Index entries a key look-up examines for `max` results: entries of other topics sharing
/// the key's hash, stale entries and records filtered out by the caller take room too.
fn candidate_limit(max: usize) -> usize {
    max.saturating_mul(4).max(16)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_protocol::message::properties::keys;

    use crate::index::{index_key, IndexItem};
    use crate::{MessageInput, Store, StoreConfig};

    #[test]
    fn a_stale_index_hit_inside_a_record_is_skipped_without_recording_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path())).unwrap();
        let mut m = MessageInput::new("T", 0, vec![b'x'; 300]);
        m.properties = format!("{}\u{1}k\u{2}", keys::KEYS);
        let a = store.append_blocking(vec![m]).unwrap()[0];
        assert!(store.wait_dispatched(Duration::from_secs(5)));
        // What a cut tail leaves behind: an entry for the key that now points mid-record.
        let stale = IndexItem::new(&index_key("T", "k"), a.phys_offset + 40, a.store_timestamp);
        store.index.put_batch(&[stale]).unwrap();

        let hits = store.query_by_key("T", "k", 10, 0, i64::MAX / 2);

        assert_eq!(
            hits.len(),
            1,
            "the real record is found, the stale hit skipped"
        );
        assert_eq!(store.damage_count(), 0, "a stale index hit is not damage");
        store.shutdown().unwrap();
    }
}
