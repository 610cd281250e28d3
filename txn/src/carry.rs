//! Carry-forward: undecided half messages older than `carry_forward_after` are copied to the
//! half queue's tail (under the same identity), so retention never deletes the only copy of a
//! transaction still waiting. A decision waits while its transaction's copy is being stored
//! (`Table::begin_carry`), so its op record always lands after the copy.

use std::time::Duration;

use sluice_store::{now_ms, MessageInput};

use crate::core::Core;
use crate::metrics::Counters;
use crate::state::TxnState;
use crate::table::{ms, Entry, Location};

/// Half messages carried forward per tick (ticks are at most a second apart). The size
/// budget lets a segment go an hour after the carry-forward age (see the server's
/// `retention_bytes_min_age`), so this bounds how many undecided transactions may reach that
/// age within an hour: 64 a tick was ~230 000; 1 024 is ~3.7 M.
const CARRY_BATCH: usize = 1024;
/// Copies stored per store request, and their bytes at most (or an eighth of a segment).
const CARRY_PUT: usize = 64;
const CARRY_PUT_BYTES: u64 = 4 << 20;
/// How long a transaction whose carry-forward failed is passed over.
const CARRY_RETRY_AFTER: Duration = Duration::from_secs(60);

impl Core {
    /// Copies undecided half messages older than `carry_forward_after` to the queue's tail, so
    /// retention never deletes the only copy of a transaction still waiting.
    pub(crate) async fn carry_forward(&self) {
        let after = self
            .shared
            .cfg
            .carry_forward_after
            .unwrap_or_else(|| self.services.store().config().retention_age / 2);
        // The scan walks every undecided transaction; the deadline is hours away by default,
        // so once a scan found everything carried, the next waits a tenth of it (5 s at most)
        // instead of running every tick (with 100 000 open, ~3 % of a core).
        let every = (after / 10).min(Duration::from_secs(5));
        if self
            .last_carry_scan
            .lock()
            .is_some_and(|t| t.elapsed() < every)
        {
            return;
        }
        let cutoff = now_ms().saturating_sub(ms(after));
        let failed: std::collections::HashSet<u64> = {
            let mut f = self.carry_failed.lock();
            f.retain(|_, at| at.elapsed() < CARRY_RETRY_AFTER);
            f.keys().copied().collect()
        };
        let due: Vec<Entry> = self
            .table
            .lock()
            .entries()
            .filter(|e| matches!(e.state, TxnState::Open | TxnState::Parked))
            .filter(|e| e.current.store_ms <= cutoff)
            .filter(|e| !failed.contains(&e.id.half_offset))
            .take(CARRY_BATCH)
            .cloned()
            .collect();
        *self.last_carry_scan.lock() = (due.len() < CARRY_BATCH).then(std::time::Instant::now);
        // Copies go to the store in chunks (stored together, they share a write and a sync),
        // each small enough for any segment.
        let max_bytes = (self.services.store().config().segment_size / 8).min(CARRY_PUT_BYTES);
        let mut batch = CarryBatch::default();
        for e in &due {
            self.stage_carry(e, &mut batch);
            if batch.copies.len() >= CARRY_PUT || batch.bytes >= max_bytes {
                self.store_carries(&mut batch).await;
            }
        }
        self.store_carries(&mut batch).await;
    }

    /// Reads an undecided half message and adds its copy to `batch`; a transaction decided
    /// since the scan is left out, and one whose half message cannot be read is passed over
    /// for a while. The copy carries the transaction's state as it is once the carry began
    /// (parked or not, its check count, where its half message is), not as the scan saw it:
    /// parked, re-armed or checked meanwhile, the copy told a restart without a checkpoint
    /// the old state.
    fn stage_carry<'a>(&'a self, e: &'a Entry, batch: &mut CarryBatch<'a>) {
        let id = e.id.half_offset;
        let now = {
            let mut t = self.table.lock();
            if !t.begin_carry(id) {
                return; // decided (or being decided) since the scan: nothing to carry
            }
            t.get(id)
                .map(|c| (c.state == TxnState::Parked, c.checks, c.current.phys_offset))
        };
        let guard = Carrying { core: self, id };
        let Some((parked, checks, phys)) = now else {
            return;
        };
        match self.read_half(phys) {
            Ok(half) => {
                let copy = half.carry_forward_copy(e.id, checks, e.stored_ms, parked);
                batch.bytes += (copy.body.len() + copy.properties.len()) as u64;
                batch.copies.push(copy);
                batch.carrying.push((e, guard));
            }
            Err(err) => self.note_carry_failed(id, &err),
        }
    }

    /// Stores the batch's copies in one request and points their transactions at them.
    async fn store_carries(&self, batch: &mut CarryBatch<'_>) {
        if batch.copies.is_empty() {
            return;
        }
        let copies = std::mem::take(&mut batch.copies);
        let carrying = std::mem::take(&mut batch.carrying);
        batch.bytes = 0;
        match self.services.put(copies).await {
            Ok(appended) => {
                for ((e, _guard), a) in carrying.iter().zip(&appended) {
                    let to = Location {
                        half_offset: u64::try_from(a.queue_offset).unwrap_or(0),
                        phys_offset: a.phys_offset,
                        store_ms: a.store_timestamp,
                    };
                    self.table.lock().relocate(e.id, to);
                    Counters::inc(&self.counters().carried_forward);
                    tracing::info!(producer_group = %e.group, half_offset = e.id.half_offset, to_half_offset = to.half_offset, "undecided half message carried forward");
                }
            }
            Err(err) => {
                let err = crate::TxnError::from(err);
                for (e, _) in &carrying {
                    self.note_carry_failed(e.id.half_offset, &err);
                }
            }
        }
    }

    fn note_carry_failed(&self, id: u64, err: &crate::TxnError) {
        self.carry_failed
            .lock()
            .insert(id, std::time::Instant::now());
        tracing::warn!(half_offset = id, error = %err, retry_in = ?CARRY_RETRY_AFTER, "carry-forward failed; the others go on");
    }
}

/// Copies of one carry-forward store request, with their transactions.
#[derive(Default)]
struct CarryBatch<'a> {
    copies: Vec<MessageInput>,
    carrying: Vec<(&'a Entry, Carrying<'a>)>,
    bytes: u64,
}

/// Ends a carry-forward when dropped (after the copy's relocation, on an error, or when the
/// checker stops midway) and wakes the decisions waiting for it.
struct Carrying<'a> {
    core: &'a Core,
    id: u64,
}

impl Drop for Carrying<'_> {
    fn drop(&mut self) {
        self.core.table.lock().end_carry(self.id);
        self.core.resolved.notify_waiters();
    }
}
