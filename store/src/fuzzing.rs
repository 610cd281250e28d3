//! Entry points for the fuzz targets in `fuzz/`; not an API (hidden from the docs, may change
//! with any release).
//!
//! Recovery judges every position of a segment with two pure functions over its bytes,
//! `framing::probe` and `framing::find_next_valid`. Opening a whole store per input runs at
//! a few inputs a second (`fuzz/fuzz_targets/store_recovery.rs` does that); these wrappers let
//! a fuzzer drive the same two functions millions of times a second, unchanged.

use crate::framing::{self, Probe};

/// Bytes after each record (watermark and CRC).
pub const TRAILER_LEN: usize = framing::TRAILER_LEN;
/// Bytes of the end-of-segment marker.
pub const BLANK_LEN: usize = framing::BLANK_LEN;

/// What recovery finds at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A verified record of `total` bytes, then its trailer.
    Record {
        /// TOTALSIZE.
        total: usize,
        /// Durable offset when it was written.
        watermark: u64,
    },
    /// A verified end-of-segment marker.
    SegmentEnd {
        /// Durable offset when it was written.
        watermark: u64,
    },
    /// Nothing was written here.
    Empty,
    /// Torn, corrupt or garbage.
    Invalid,
}

/// `framing::probe`: judges the bytes at `pos` of a segment starting at offset `base`.
pub fn probe(seg: &[u8], pos: usize, base: u64, max_record: usize) -> Found {
    found(framing::probe(
        seg,
        pos,
        base,
        max_record,
        framing::Seal::PLAIN,
    ))
}

/// `framing::find_next_valid`: the first verified record or end marker in `[from, until)`.
pub fn find_next_valid(
    seg: &[u8],
    from: usize,
    until: usize,
    base: u64,
    max_record: usize,
) -> Option<(usize, Found)> {
    framing::find_next_valid(seg, from, until, base, max_record, framing::Seal::PLAIN)
        .map(|(p, f)| (p, found(f)))
}

fn found(p: Probe) -> Found {
    match p {
        Probe::Record {
            total, watermark, ..
        } => Found::Record { total, watermark },
        Probe::SegmentEnd { watermark } => Found::SegmentEnd { watermark },
        Probe::Empty => Found::Empty,
        Probe::Invalid(_) => Found::Invalid,
    }
}
