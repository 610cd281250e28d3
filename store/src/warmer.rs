//! The warmer thread: writes real zeros into the commit-log space just ahead of the appender
//! and waits until they are on the disk, so that appends land in blocks the file system already
//! counts as written.
//!
//! # Why
//! Segments are preallocated with `fallocate`, which reserves *unwritten* extents. The first
//! write-back into such an extent converts it to written, and that conversion is metadata: an
//! `fdatasync` covering freshly converted blocks must also make the changed extents durable
//! (a journal commit on a journaled ext4; on this machine's journal-less ext4, a write of the
//! inode's extent blocks that the sync waits for). Here an 8 KiB `pwrite` + `fdatasync` took
//! ~210 µs (p50) in fallocated space and ~140 µs in space written with zeros beforehand, with
//! ~30 % less CPU in the syncing thread (`docs/BENCHMARKS.md`, "Fourth pass"). The appender's `pwrite` also finds
//! the pages already in the page cache instead of allocating and zeroing them itself.
//!
//! # Rules that keep it safe
//! - It never writes where the appender has written or is writing. The appender announces the
//!   end of each write before issuing it ([`WarmFront::before_write`]), under the lock the
//!   warmer claims each piece it zeroes under, and the warmer only claims a piece at least
//!   `gap` bytes past the announced end (giving up the rest of its chunk otherwise). A write that would overlap the piece being zeroed (the writer caught up) waits
//!   for that one `pwrite`, then overwrites its zeros.
//! - Zeros read as "no record here", exactly like unwritten space, so a crash at any moment
//!   leaves recovery nothing new to interpret. Recovery's search for valid records after a
//!   torn tail reads at most `warm_ahead_bytes` more zero bytes than before.
//! - It writes and waits through a descriptor of its own, not the one the store syncs with:
//!   Linux reports a write-back error once per open descriptor, and a wait here must not
//!   take the report a sync needs to fail the appends it covers.
//! - Its writes go through [`StorageIo::write_zeros_ahead`], which fault injection leaves alone:
//!   they are not appends. A failed zero write only costs speed: it is logged once and the
//!   warmer stops; appends are unaffected.
//! - It works only inside segments that exist (the appender still creates each segment) and
//!   never more than `warm_ahead_bytes` past the writer; within that, about half a second of
//!   the writer's recent pace, so a fresh store or segment costs no burst of zero writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::commitlog::{CommitLog, Segment};
use crate::io::StorageIo;

/// Largest chunk zeroed and written back in one claim.
const MAX_CHUNK: u64 = 1 << 20;
/// Smallest chunk: one page.
const MIN_CHUNK: u64 = 4 << 10;
/// Largest distance kept between the writer and the next byte the warmer zeroes.
const MAX_GAP: u64 = 64 << 10;
/// Size of one `pwrite` of zeros inside a chunk: the appender's own writes take the same inode
/// lock, so smaller pieces keep its waits short.
const PIECE: usize = 256 << 10;
/// How long the warmer sleeps when the writer has not moved (a safety net: the appender wakes
/// it when it has moved a chunk).
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// How far ahead to warm, and in which steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WarmPlan {
    /// Space kept warm past the writer.
    pub(crate) ahead: u64,
    /// Bytes zeroed per claim.
    pub(crate) chunk: u64,
    /// Distance from the writer's announced end below which the warmer never claims.
    pub(crate) gap: u64,
}

impl WarmPlan {
    /// The plan for `ahead` bytes (`None` when 0: warming off). A chunk is a sixteenth of the
    /// distance (4 KiB to 1 MiB). The gap is small (at most 64 KiB), so a fresh store or
    /// segment is warm almost from its first byte; a writer that comes within the gap of a
    /// piece makes the warmer give that piece up rather than be waited for.
    pub(crate) fn for_ahead(ahead: u64) -> Option<Self> {
        if ahead == 0 {
            return None;
        }
        let chunk = (ahead / 16).clamp(MIN_CHUNK, MAX_CHUNK);
        Some(Self {
            ahead,
            chunk,
            gap: chunk.min(MAX_GAP),
        })
    }
}

/// Where the writer and the warmer are; shared by the appender and the warmer.
#[derive(Debug)]
pub(crate) struct WarmFront {
    state: Mutex<FrontState>,
    changed: Condvar,
    /// End of the space zeroed and written back (read without the lock by stats).
    warmed: AtomicU64,
}

#[derive(Debug)]
struct FrontState {
    /// End of the latest write the appender has announced.
    writer_end: u64,
    /// The chunk being zeroed now.
    busy: Option<(u64, u64)>,
    /// The appender wakes the warmer once `writer_end` reaches this.
    wake_at: u64,
    stopping: bool,
}

impl WarmFront {
    /// A front whose writer starts at `end` (the recovered end of the log).
    pub(crate) fn new(end: u64) -> Self {
        Self {
            state: Mutex::new(FrontState {
                writer_end: end,
                busy: None,
                wake_at: end,
                stopping: false,
            }),
            changed: Condvar::new(),
            warmed: AtomicU64::new(end),
        }
    }

    /// Called by the appender before it writes `[start, end)`: announces the write and waits
    /// while the warmer is zeroing any of it.
    pub(crate) fn before_write(&self, start: u64, end: u64) {
        let mut s = self.state.lock();
        s.writer_end = s.writer_end.max(end);
        if s.writer_end >= s.wake_at {
            s.wake_at = u64::MAX;
            self.changed.notify_all();
        }
        while matches!(s.busy, Some((lo, hi)) if lo < end && start < hi) {
            self.changed.wait(&mut s);
        }
    }

    /// End of the commit-log space zeroed and on disk so far.
    pub(crate) fn warmed(&self) -> u64 {
        self.warmed.load(Ordering::Relaxed)
    }

    /// Asks the warmer to stop after its current chunk.
    pub(crate) fn stop(&self) {
        self.state.lock().stopping = true;
        self.changed.notify_all();
    }
}

/// The warmer thread's state.
pub(crate) struct Warmer {
    pub(crate) log: Arc<CommitLog>,
    pub(crate) io: Arc<dyn StorageIo>,
    pub(crate) front: Arc<WarmFront>,
    pub(crate) plan: WarmPlan,
}

impl Warmer {
    /// Runs until [`WarmFront::stop`] or the first failed zero write.
    pub(crate) fn run(self) {
        let zeros = vec![0u8; PIECE];
        let mut pace = Pace::new(self.front.state.lock().writer_end);
        // Its own descriptor of the segment being warmed (see `MappedFile::open_another`):
        // never the one the store syncs with, so no write-back error of appended records is
        // reported here instead of there. Opened once per segment.
        let mut own: Option<(u64, std::fs::File)> = None;
        while let Some((seg, lo, hi)) = self.next_chunk(&mut pace) {
            let warmed = match &own {
                Some((base, file)) if *base == seg.base => {
                    self.warm_chunk(&seg, file, lo, hi, &zeros)
                }
                _ => seg.file.open_another().and_then(|file| {
                    let done = self.warm_chunk(&seg, &file, lo, hi, &zeros);
                    own = Some((seg.base, file));
                    done
                }),
            };
            if let Err(e) = warmed {
                tracing::warn!(
                    error = %e, offset = lo,
                    "cannot write zeros ahead of the commit-log writer; appends go on without it"
                );
                return;
            }
        }
    }

    /// Waits until a whole chunk (or a segment's last bytes) lies between the gap and the
    /// lead the writer's pace asks for; `None` when asked to stop.
    fn next_chunk(&self, pace: &mut Pace) -> Option<(Arc<Segment>, u64, u64)> {
        let mut s = self.front.state.lock();
        loop {
            if s.stopping {
                return None;
            }
            let lead = pace.lead(s.writer_end, &self.plan);
            let from = self.front.warmed().max(s.writer_end + self.plan.gap);
            let limit = s.writer_end + lead;
            if let Some(seg) = self.log.segment_for(from).filter(|_| from < limit) {
                let hi = (from + self.plan.chunk).min(limit).min(seg.end());
                if hi - from >= self.plan.chunk || hi == seg.end() {
                    return Some((seg, from, hi));
                }
            }
            // Nothing to do until the writer has moved a chunk (or into a new segment).
            s.wake_at = s.writer_end + self.plan.chunk;
            self.front.changed.wait_for(&mut s, IDLE_WAIT);
        }
    }

    /// Zeroes `[lo, hi)` piece by piece, each piece claimed under the front's lock so an
    /// appender waits at most for one `pwrite`, then writes back what it zeroed. A piece the
    /// writer has come within the gap of is left alone, with the rest of the chunk.
    fn warm_chunk(
        &self,
        seg: &Segment,
        own: &std::fs::File,
        lo: u64,
        hi: u64,
        zeros: &[u8],
    ) -> crate::Result<()> {
        let mut pos = lo;
        while pos < hi {
            let end = (pos + zeros.len() as u64).min(hi);
            if !self.claim_piece(pos, end) {
                break;
            }
            let piece = &zeros[..(end - pos) as usize];
            let written =
                seg.file
                    .write_zeros_ahead_via(own, self.io.as_ref(), piece, pos - seg.base);
            self.release_piece();
            written?;
            pos = end;
        }
        if pos > lo {
            seg.file
                .write_back_via(own, self.io.as_ref(), lo - seg.base, pos - lo)?;
            self.front.warmed.fetch_max(pos, Ordering::Relaxed);
        }
        Ok(())
    }

    fn claim_piece(&self, lo: u64, hi: u64) -> bool {
        let mut s = self.front.state.lock();
        if s.stopping || lo < s.writer_end + self.plan.gap {
            return false;
        }
        s.busy = Some((lo, hi));
        true
    }

    /// Ends the claim and wakes an appender waiting for it.
    fn release_piece(&self) {
        self.front.state.lock().busy = None;
        self.front.changed.notify_all();
    }
}

/// The writer's recent speed, which sets how far ahead the warmer works: zeros are written at
/// about the pace of the records that will overwrite them, so a fresh store or segment costs
/// no burst of zero writes, and a fast writer still finds its space ready.
struct Pace {
    at: Instant,
    end: u64,
    bytes_per_sec: f64,
}

/// How much writing time the lead covers.
const LEAD_TIME: Duration = Duration::from_millis(500);

impl Pace {
    fn new(end: u64) -> Self {
        Self {
            at: Instant::now(),
            end,
            bytes_per_sec: 0.0,
        }
    }

    /// The lead for a writer now at `writer_end`: half a second of its recent pace, at least
    /// the gap plus two chunks, at most `plan.ahead`.
    fn lead(&mut self, writer_end: u64, plan: &WarmPlan) -> u64 {
        let elapsed = self.at.elapsed();
        if elapsed >= Duration::from_millis(50) {
            let moved = writer_end.saturating_sub(self.end) as f64;
            let now = moved / elapsed.as_secs_f64();
            self.bytes_per_sec = now.max(self.bytes_per_sec * 0.5);
            self.at = Instant::now();
            self.end = writer_end;
        }
        let lead = (self.bytes_per_sec * LEAD_TIME.as_secs_f64()) as u64;
        lead.clamp(
            plan.gap + 2 * plan.chunk,
            plan.ahead.max(plan.gap + 2 * plan.chunk),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_keeps_its_gap_and_chunks_inside_the_distance() {
        assert_eq!(WarmPlan::for_ahead(0), None);
        let big = WarmPlan::for_ahead(64 << 20).unwrap();
        assert_eq!((big.chunk, big.gap), (1 << 20, 64 << 10));
        let small = WarmPlan::for_ahead(64 << 10).unwrap();
        assert_eq!((small.chunk, small.gap), (4 << 10, 4 << 10));
        let tiny = WarmPlan::for_ahead(4 << 10).unwrap();
        assert!(tiny.chunk >= MIN_CHUNK);
    }

    #[test]
    fn a_write_overlapping_the_chunk_being_zeroed_waits_for_it() {
        let front = Arc::new(WarmFront::new(0));
        front.state.lock().busy = Some((100, 200));
        let (tx, rx) = std::sync::mpsc::channel();
        let f = Arc::clone(&front);
        let writer = std::thread::spawn(move || {
            f.before_write(150, 160);
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "the write went ahead while its range was being zeroed"
        );
        front.state.lock().busy = None;
        front.changed.notify_all();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the write goes ahead once the chunk is released");
        writer.join().unwrap();
        assert_eq!(front.state.lock().writer_end, 160);
    }

    #[test]
    fn a_write_beside_the_chunk_being_zeroed_does_not_wait() {
        let front = WarmFront::new(0);
        front.state.lock().busy = Some((100, 200));
        front.before_write(50, 100);
        front.before_write(200, 210);
        assert_eq!(front.state.lock().writer_end, 210);
    }
}
