//! Recovery: where the valid commit log ends, and what to do with anything that is not valid.
//!
//! # Policy
//!
//! Recovery scans forward from the checkpoint (`min(flushed, dispatched)`; the whole log when
//! there is no readable checkpoint), verifying every record (length range, magic, the offset it
//! claims, and the CRC over record and trailer). When it meets a position `p` that is not a
//! verified record or end marker (zeros included: a zeroed record head followed by valid data
//! is damage too; only after a clean stop are zeros at the checkpoint's flushed offset taken
//! as the end without searching, since that checkpoint was written at the end):
//!
//! 1. **Nothing valid follows** (in this segment or any later one): `p` is the end of the log.
//!    Whatever bytes lie after it are a torn or never-completed write; they are zeroed (the
//!    file keeps its size, so no mapping can fault) and later segments are deleted. Logged at
//!    WARN with the file and position. Nothing acknowledged can be lost this way: an
//!    acknowledgement needs a sync covering the record, and a synced record is valid. So when
//!    `p` is below the checkpoint's flushed offset, synced records are gone (a disk that lost
//!    them, bytes zeroed by a tool): the open is refused with nothing changed, as it is when a
//!    segment file is found cut short below that offset (`Store::open`, before the commit log
//!    pads the file). Removing the checkpoint accepts the loss.
//! 2. **Something valid follows at `q`** and `p` is known to have been durable: the previous run
//!    shut down cleanly, or `p` is below the checkpoint's flushed offset, or any verified record
//!    or end marker from `q` to the end of the log carries a watermark (durable offset when it
//!    was written) beyond `p`. Not only the one at `q`: every record of one sync window (a
//!    batch, a group commit, `WAIT=false` appends) carries the watermark of the sync before
//!    it, so the records right after a damaged one may not vouch for it while a later one
//!    does. Stopping at `q` had cut acknowledged records and deleted every later segment.
//!    Then `[p, q)` is
//!    **damage**: it is recorded, logged at ERROR with file and position, never served, and
//!    never "repaired" by cutting the valid records after it. The scan goes on from `q`.
//! 3. **Something valid follows, but `p` was never known durable** (an unclean stop, above the
//!    checkpoint, every later record written before `p` was synced): the later records were in
//!    the same unsynced window, so none of them was acknowledged. The window is cut as in 1.
//!    The appender keeps that window under `max_unflushed_bytes`.
//!
//! After the commit log, consume queues and the index are brought in line by dispatching the
//! records after the checkpoint again (see `store::open`).

use std::time::Instant;

use crate::commitlog::CommitLog;
use crate::damage::DamageLog;
use crate::error::{Result, StoreError};
use crate::framing::{self, Probe};
use crate::io::StorageIo;

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Whether the previous run shut down cleanly.
    pub clean: bool,
    /// Where the scan started.
    pub scanned_from: u64,
    /// End of the valid log: the next append goes here.
    pub end: u64,
    /// Torn or unacknowledged bytes that were cut (zeroed), if any.
    pub cut_at: Option<u64>,
    /// Damaged ranges found (kept, never served).
    pub damaged_ranges: usize,
    /// Microseconds the commit-log scan took.
    pub scan_micros: u64,
    /// Microseconds spent dispatching records again into consume queues and the index.
    pub redispatch_micros: u64,
    /// The newest STORETIMESTAMP among the records scanned, or the checkpoint's time when
    /// later (epoch ms; 0 when neither is known). A lower bound of the wall clock the
    /// previous run reached: after a crash and a clock stepped back, whatever that run
    /// released by time (delayed messages) was due at or before this.
    pub clock_high_water_ms: i64,
}

/// Facts recovery needs about the previous run.
pub(crate) struct ScanInput<'a> {
    pub(crate) log: &'a CommitLog,
    pub(crate) io: &'a dyn StorageIo,
    pub(crate) damage: &'a DamageLog,
    pub(crate) start: u64,
    pub(crate) clean: bool,
    pub(crate) checkpoint_flushed: u64,
    /// When the checkpoint was written (epoch ms), 0 without one.
    pub(crate) checkpoint_written_ms: i64,
}

/// Finds the end of the valid log, applying the policy above.
pub(crate) fn scan_commit_log(input: &ScanInput<'_>) -> Result<RecoveryReport> {
    let started = Instant::now();
    let log = input.log;
    let mut report = RecoveryReport {
        clean: input.clean,
        clock_high_water_ms: input.checkpoint_written_ms,
        ..RecoveryReport::default()
    };
    let Some(last) = log.last() else {
        if input.checkpoint_flushed > 0 {
            return Err(StoreError::Recovery(format!(
                "the checkpoint vouches for {} synced bytes but no commit-log segment exists",
                input.checkpoint_flushed
            )));
        }
        return Ok(report);
    };
    if input.start > last.end() {
        return Err(StoreError::Recovery(format!(
            "the checkpoint starts at {} but the commit log ends at {}: segments are missing",
            input.start,
            last.end()
        )));
    }
    let mut pos = input.start.max(log.min_offset());
    report.scanned_from = pos;
    // Everything below this was proven synced by a watermark found after a bad position.
    let mut proven_durable = 0;
    while let Some(seg) = log.segment_for(pos) {
        let rel = (pos - seg.base) as usize;
        let probe = framing::probe(
            seg.file.as_slice(),
            rel,
            seg.base,
            log.max_record(),
            log.seal(),
        );
        let reason = match probe {
            Probe::Record {
                total, store_ms, ..
            } => {
                report.clock_high_water_ms = report.clock_high_water_ms.max(store_ms);
                pos += framing::frame_len(total);
                continue;
            }
            Probe::SegmentEnd { .. } => {
                pos = seg.end();
                continue;
            }
            // After a clean stop the checkpoint's flushed offset is the end of the log: zeros
            // there are its end, found without searching the zeros written ahead of it.
            Probe::Empty if input.clean && pos == input.checkpoint_flushed => break,
            Probe::Empty => "zeroed bytes".to_string(),
            Probe::Invalid(r) => r,
        };
        let Some((q, _)) = next_valid_after(log, pos) else {
            refuse_if_sealed_otherwise(log, pos)?;
            if pos < input.checkpoint_flushed {
                // Nothing valid follows, yet the checkpoint says more was synced: those
                // acknowledged records are gone (a disk that lost synced writes, a segment
                // zeroed). Opening would hand their offsets to new records.
                return Err(missing(pos, &reason, input.checkpoint_flushed));
            }
            if cut_tail(input, pos, &reason)? {
                report.cut_at = Some(pos);
            }
            break;
        };
        if pos >= proven_durable && !input.clean && pos >= input.checkpoint_flushed {
            proven_durable = proven_durable.max(durable_proof_after(log, pos, q).unwrap_or(0));
        }
        if input.clean || pos < input.checkpoint_flushed || pos < proven_durable {
            input
                .damage
                .record(seg.file.path(), rel as u64, pos, q - pos, &reason);
            report.damaged_ranges += 1;
            pos = q;
        } else {
            if cut_tail(input, pos, &reason)? {
                report.cut_at = Some(pos);
            }
            break;
        }
    }
    report.end = pos;
    report.scan_micros = started.elapsed().as_micros() as u64;
    Ok(report)
}

/// Refuses to take the log's end at `pos` when the two frames from there are whole records
/// that fail only their checksum: records checked with another seal, not a torn tail (a torn
/// write leaves one frame at most, followed by zeros or stale bytes). A folder that lost its
/// `seal` file together with its checkpoint (a copy that skipped the small files) had every
/// record after the seal's start zeroed as a "torn tail", after a clean stop too.
pub(crate) fn refuse_if_sealed_otherwise(log: &CommitLog, pos: u64) -> Result<()> {
    if !sealed_otherwise(log, pos) {
        return Ok(());
    }
    Err(StoreError::Recovery(format!(
        "the records from commit-log offset {pos} on are whole but their checksums do not \
         verify with this folder's seal: its `seal` file is missing or from another folder. \
         Restore it from this folder's backup (nothing was changed)"
    )))
}

/// Whether the two frames from `pos` are whole records failing only their checksum under the
/// log's seal: one such frame is damage (a bad trailer), two in a row are records sealed
/// otherwise.
fn sealed_otherwise(log: &CommitLog, pos: u64) -> bool {
    let whole_failing = |at: u64| {
        let seg = log.segment_for(at)?;
        let (bytes, rel) = (seg.file.as_slice(), (at - seg.base) as usize);
        let probe = framing::probe(bytes, rel, seg.base, log.max_record(), log.seal());
        if !matches!(probe, Probe::Invalid(_)) {
            return None;
        }
        framing::whole_but_checksum(bytes, rel, seg.base, log.max_record())
    };
    whole_failing(pos)
        .and_then(|first| whole_failing(pos + first))
        .is_some()
}

/// Refuses a `seal` file that is not this folder's (copied from another one): the records at
/// the start of the oldest or the newest segment, whole but failing their checksums under it.
/// With a checkpoint the scan starts past them, and every older record was later read as
/// damage (quarantined, skipped by consumers, missing from look-ups) in a broker that said it
/// was ready. Two segments, not all: each probe of a cold segment reads around its first page.
pub(crate) fn refuse_foreign_seal(log: &CommitLog) -> Result<()> {
    let segments = log.segments();
    for seg in segments.first().into_iter().chain(segments.last()) {
        refuse_if_sealed_otherwise(log, seg.base)?;
    }
    Ok(())
}

/// The refusal of a log that ends at `end`, below the `flushed` bytes a checkpoint vouches for.
pub(crate) fn missing(end: u64, why: &str, flushed: u64) -> StoreError {
    StoreError::Recovery(format!(
        "the commit log ends at {end} ({why}), below the {flushed} bytes the checkpoint says \
         were synced: acknowledged records are missing. Nothing was changed. To accept the \
         loss, remove the `checkpoint` file of the store's data folder and start again"
    ))
}

/// The first verified record or end marker after `pos`, with its watermark. Only ranges that
/// hold written data are searched.
fn next_valid_after(log: &CommitLog, pos: u64) -> Option<(u64, u64)> {
    let mut from = pos + 1;
    while let Some(seg) = log.segment_for(from) {
        let bytes = seg.file.as_slice();
        for (start, end) in seg.file.data_ranges(from - seg.base) {
            let begin = start.max(from - seg.base) as usize;
            let found = framing::find_next_valid(
                bytes,
                begin,
                end as usize,
                seg.base,
                log.max_record(),
                log.seal(),
            );
            if let Some((p, probe)) = found {
                let watermark = match probe {
                    Probe::Record { watermark, .. } | Probe::SegmentEnd { watermark } => watermark,
                    _ => 0,
                };
                return Some((seg.base + p as u64, watermark));
            }
        }
        from = seg.end();
    }
    None
}

/// The first watermark beyond `pos` carried by a verified record or end marker at or after `q`
/// (the first valid position after `pos`), up to the end of the log.
///
/// Records written in one sync window (a batch, group commit, `WAIT=false`) all carry the
/// watermark of the sync before them, so the record right after a damaged one may not vouch
/// for it while a later one does: stopping at the first valid record would cut acknowledged
/// data. Each step moves forward by at least one byte and stops at the last segment's end.
fn durable_proof_after(log: &CommitLog, pos: u64, q: u64) -> Option<u64> {
    let mut at = q;
    while let Some(seg) = log.segment_for(at) {
        let rel = (at - seg.base) as usize;
        at = match framing::probe(
            seg.file.as_slice(),
            rel,
            seg.base,
            log.max_record(),
            log.seal(),
        ) {
            Probe::Record { watermark, .. } | Probe::SegmentEnd { watermark }
                if watermark > pos =>
            {
                return Some(watermark);
            }
            Probe::Record { total, .. } => at + framing::frame_len(total),
            Probe::SegmentEnd { .. } => seg.end(),
            Probe::Empty | Probe::Invalid(_) => next_valid_after(log, at)?.0,
        };
    }
    None
}

/// Zeroes everything written after `pos` in its segment and deletes the later segments;
/// returns whether there was anything to cut.
fn cut_tail(input: &ScanInput<'_>, pos: u64, reason: &str) -> Result<bool> {
    let log = input.log;
    let seg = log.segment_for(pos).expect("cut position inside a segment");
    let rel = pos - seg.base;
    let zeroed = seg.file.clear_from(input.io, rel)?.zeroed;
    if zeroed > 0 {
        seg.file.sync(input.io)?;
    }
    let deleted = log.delete_from(seg.end())?;
    if zeroed > 0 || deleted > 0 {
        tracing::warn!(
            segment = %seg.file.path().display(), position = rel, offset = pos, zeroed, deleted_segments = deleted,
            reason, "torn tail cut: the log ends at the last whole record"
        );
    }
    Ok(zeroed > 0 || deleted > 0)
}
