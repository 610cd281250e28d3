//! The two pure functions recovery judges a segment with (`framing::probe` and
//! `framing::find_next_valid`, through `sluice_store::fuzzing`), walked over arbitrary segment
//! bytes the way `recovery::scan_commit_log` walks them. Fast where `store_recovery` is deep;
//! both read the same input format (flags byte, then up to two 16 KiB segments), so they share
//! seeds.
//!
//! Oracles:
//! - A verified record lies inside the segment, parses as a record of exactly that length and
//!   claims the offset it was found at.
//! - `find_next_valid` returns a verified position after the bad one, and never skips one: no
//!   earlier position in between verifies (checked exhaustively over a bounded window).

use super::super::{MAX_RECORD, SEGMENT};
use sluice_protocol::RecordView;
use sluice_store::fuzzing::{find_next_valid, probe, Found, BLANK_LEN, TRAILER_LEN};

/// Widest gap checked position by position for a skipped record.
const EXHAUSTIVE_WINDOW: usize = 2048;

/// One input: panics when an oracle above is violated.
pub fn run(data: &[u8]) {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let segments = if flags & 2 != 0 { 2 } else { 1 };
    for i in 0..segments {
        let start = (i * SEGMENT).min(bytes.len());
        let end = ((i + 1) * SEGMENT).min(bytes.len());
        let mut seg = bytes[start..end].to_vec();
        seg.resize(SEGMENT, 0); // as the store extends a short file
        walk(&seg, (i * SEGMENT) as u64);
    }
}

/// Walks one segment from its start; every step moves forward, so it ends within `seg.len()`
/// steps.
fn walk(seg: &[u8], base: u64) {
    let mut pos = 0;
    for _ in 0..seg.len() {
        match probe(seg, pos, base, MAX_RECORD) {
            Found::Record { total, .. } => {
                check_record(seg, pos, total, base);
                pos += total + TRAILER_LEN;
            }
            Found::SegmentEnd { .. } => {
                assert!(pos + BLANK_LEN <= seg.len());
                return;
            }
            Found::Empty | Found::Invalid => {
                let Some((next, found)) =
                    find_next_valid(seg, pos + 1, seg.len(), base, MAX_RECORD)
                else {
                    return;
                };
                assert!(next > pos);
                assert!(matches!(
                    found,
                    Found::Record { .. } | Found::SegmentEnd { .. }
                ));
                assert_eq!(probe(seg, next, base, MAX_RECORD), found);
                check_nothing_skipped(seg, pos + 1, next, base);
                pos = next;
            }
        }
    }
}

fn check_record(seg: &[u8], pos: usize, total: usize, base: u64) {
    assert!(total <= MAX_RECORD && pos + total + TRAILER_LEN <= seg.len());
    let view =
        RecordView::parse(&seg[pos..pos + total], MAX_RECORD).expect("a verified record parses");
    assert_eq!(view.total_size, total);
    assert_eq!(view.header.physical_offset, (base + pos as u64) as i64);
}

/// No position in `[from, next)` verifies (looked at when the gap is small enough).
fn check_nothing_skipped(seg: &[u8], from: usize, next: usize, base: u64) {
    if next - from > EXHAUSTIVE_WINDOW {
        return;
    }
    for q in from..next {
        let p = probe(seg, q, base, MAX_RECORD);
        assert!(
            matches!(p, Found::Empty | Found::Invalid),
            "find_next_valid skipped a valid position {q} (returned {next})"
        );
    }
}
