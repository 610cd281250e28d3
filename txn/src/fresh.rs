//! Half messages as their sends stored them, kept a short while for the END_TRANSACTION that
//! follows.
//!
//! A producer ends its transaction the moment its half message is acknowledged, well before
//! the tailer reads the half queue, so END_TRANSACTION used to read the half back through the
//! half queue and parse it (the largest part of its cost). The put hook sees every half
//! message once the store accepted it, with where it went (`after_put`), and keeps it here;
//! END takes it from here instead. What is kept is exactly what was stored at that queue and
//! commit-log offset (half queue offsets are never reused), so the record built from it is
//! the one a read would return, and it goes through the same checks.
//!
//! Bounded by bytes (`fresh_half_bytes`): the oldest go first, and a transaction whose half is
//! no longer here is read from the store as before. A decision takes its transaction's entry
//! (a commit or park uses it, a rollback drops it). Nothing here is needed for correctness.

use std::collections::BTreeMap;

use bytes::Bytes;
use sluice_protocol::message::record::RecordHeader;
use sluice_protocol::Properties;

/// Bytes counted per entry beyond its body and properties (the header and the map slot).
const OVERHEAD: usize = 192;
/// Bytes counted per decoded property beyond its text (two strings and their allocations).
const PER_PROPERTY: usize = 80;

/// One kept half message: the parts a read of its record would give, properties already
/// decoded (the send's own decoded copy, so neither side decodes them twice).
#[derive(Debug, Clone)]
pub(crate) struct Fresh {
    pub(crate) header: RecordHeader,
    pub(crate) body: Bytes,
    pub(crate) props: Properties,
    /// Size of the encoded properties, for the budget.
    pub(crate) props_len: usize,
}

impl Fresh {
    fn bytes(&self) -> usize {
        self.body.len() + self.props_len + PER_PROPERTY * self.props.len() + OVERHEAD
    }

    fn queue_offset(&self) -> u64 {
        u64::try_from(self.header.queue_offset).unwrap_or(0)
    }

    fn phys_offset(&self) -> u64 {
        u64::try_from(self.header.physical_offset).unwrap_or(0)
    }
}

/// Kept half messages by half queue offset, oldest first.
#[derive(Debug, Default)]
pub(crate) struct FreshHalves {
    by_offset: BTreeMap<u64, Fresh>,
    bytes: usize,
}

impl FreshHalves {
    /// Keeps `fresh` under the `max_bytes` budget, dropping the oldest kept ones to make room;
    /// one larger than the whole budget is not kept.
    pub(crate) fn keep(&mut self, fresh: Fresh, max_bytes: usize) {
        let size = fresh.bytes();
        let offset = fresh.queue_offset();
        if size > max_bytes {
            return;
        }
        while self.bytes + size > max_bytes {
            // Oldest first, the newcomer included (a half put back after its reference was
            // refused may be older than everything kept since).
            if self
                .by_offset
                .first_key_value()
                .is_some_and(|(k, _)| offset < *k)
            {
                return;
            }
            let Some((_, old)) = self.by_offset.pop_first() else {
                break;
            };
            self.bytes -= old.bytes();
        }
        self.bytes += size;
        if let Some(old) = self.by_offset.insert(offset, fresh) {
            self.bytes -= old.bytes();
        }
    }

    /// Takes the half message stored at half queue offset `offset` and commit-log offset
    /// `phys`, if kept (a reference naming another `phys` leaves it for the right one).
    pub(crate) fn take(&mut self, offset: u64, phys: u64) -> Option<Fresh> {
        if self.by_offset.get(&offset)?.phys_offset() != phys {
            return None;
        }
        let fresh = self.by_offset.remove(&offset)?;
        self.bytes -= fresh.bytes();
        Some(fresh)
    }

    /// Forgets everything (the service restarts: offsets may name another store's records).
    pub(crate) fn clear(&mut self) {
        self.by_offset.clear();
        self.bytes = 0;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_offset.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(offset: i64, body: usize) -> Fresh {
        Fresh {
            header: RecordHeader {
                queue_offset: offset,
                physical_offset: 1000 + offset,
                ..RecordHeader::default()
            },
            body: Bytes::from(vec![b'x'; body]),
            props: Properties::new(),
            props_len: 0,
        }
    }

    #[test]
    fn the_oldest_go_first_to_stay_within_the_budget() {
        let mut f = FreshHalves::default();
        let one = fresh(0, 1000).bytes();
        for i in 0..5 {
            f.keep(fresh(i, 1000), 3 * one);
        }
        assert_eq!(f.len(), 3);
        assert!(f.take(1, 1001).is_none(), "evicted");
        assert!(f.take(4, 1003).is_none(), "not at that commit-log offset");
        assert_eq!(f.take(4, 1004).map(|x| x.phys_offset()), Some(1004));
        assert!(f.take(4, 1004).is_none(), "taken once");
        assert_eq!(f.bytes, 2 * one);
    }

    #[test]
    fn one_put_back_older_than_everything_kept_since_is_the_one_dropped() {
        let mut f = FreshHalves::default();
        let one = fresh(0, 1000).bytes();
        for i in 1..=3 {
            f.keep(fresh(i, 1000), 3 * one);
        }
        f.keep(fresh(0, 1000), 3 * one);
        assert!(f.take(0, 1000).is_none(), "the oldest is the one left out");
        for i in 1..=3u64 {
            assert!(f.take(i, 1000 + i).is_some(), "{i} kept");
        }
    }

    #[test]
    fn a_message_larger_than_the_budget_is_not_kept_and_nothing_is_dropped_for_it() {
        let mut f = FreshHalves::default();
        f.keep(fresh(0, 10), 1000);
        f.keep(fresh(1, 5000), 1000);
        assert_eq!(f.len(), 1);
        f.clear();
        assert_eq!((f.len(), f.bytes), (0, 0));
    }
}
