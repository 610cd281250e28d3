//! How records sit in a segment, and how a position is judged.
//!
//! Each RocketMQ record (`sluice_protocol::message::record`) is followed by a 12-byte trailer
//! that RocketMQ does not have:
//!
//! ```text
//! | record (TOTALSIZE bytes) | watermark: u64 | crc: u32 |
//! ```
//!
//! - `crc` is CRC-32 over the record *and* the watermark, so a bit flip anywhere, a zeroed
//!   region or a torn write is caught, not only one in the body (RocketMQ's BODYCRC).
//! - `watermark` is the commit-log offset known durable (synced) when the record was written.
//!   Recovery uses it to tell a torn tail from interior corruption: an invalid record at `p`
//!   followed by a valid record whose watermark is beyond `p` means `p` had been durable, so it
//!   is damage, not an unfinished write (see `recovery`). A watermark beyond the record's own
//!   offset is impossible, and such a record is refused.
//!
//! # Sealed checksums
//! A message body can hold bytes that look like a whole record with its trailer, placed so
//! that they claim the offset they would land at. After a torn write of that message, the
//! search for valid records past the torn bytes would find them: their watermark would make
//! the torn tail count as interior damage (kept, not cut), and the forged record would be
//! served in whatever queue it names. So the CRC of trailers and end markers starts from a
//! secret of the data folder (the `seal` file, see [`crate::seal`]) instead of from zero,
//! for everything at or after the offset where that secret was first used; trailers are never
//! served, so a producer cannot learn it. Older bytes keep the plain CRC.
//!
//! The record keeps its exact RocketMQ bytes, so a pull serves `TOTALSIZE` bytes unchanged.
//! A segment ends with a 20-byte blank marker when the next record does not fit:
//! `remaining: i32 | BLANK_MAGIC | watermark: u64 | crc: u32`.

use sluice_protocol::message::record::{RecordView, MIN_RECORD_LEN, PHYSICAL_OFFSET_POS};
use sluice_protocol::message::{BLANK_MAGIC, MAGIC_V1, MAGIC_V2};

/// Bytes after each record.
pub(crate) const TRAILER_LEN: usize = 12;
/// Bytes of the end-of-segment marker.
pub(crate) const BLANK_LEN: usize = 20;

/// The secret the checksums of trailers and end markers start from (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    key: u32,
    /// First commit-log offset written under `key`; before it, the plain CRC.
    from: u64,
}

impl Seal {
    /// No secret: every checksum is the plain CRC.
    pub const PLAIN: Seal = Seal {
        key: 0,
        from: u64::MAX,
    };

    /// Checksums at or after `from` start from `key`.
    pub(crate) fn new(key: u32, from: u64) -> Self {
        Self { key, from }
    }

    pub(crate) fn key(self) -> u32 {
        self.key
    }

    pub(crate) fn from(self) -> u64 {
        self.from
    }

    /// The checksum state for bytes at commit-log offset `offset`.
    fn hasher(self, offset: u64) -> crc32fast::Hasher {
        if offset >= self.from {
            crc32fast::Hasher::new_with_initial(self.key)
        } else {
            crc32fast::Hasher::new()
        }
    }
}

/// What is found at a position in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// A whole, verified record: `total` record bytes, then the trailer.
    Record {
        /// TOTALSIZE.
        total: usize,
        /// Durable offset when it was written.
        watermark: u64,
        /// STORETIMESTAMP: the wall clock when it was appended.
        store_ms: i64,
    },
    /// A verified end-of-segment marker.
    SegmentEnd {
        /// Durable offset when it was written.
        watermark: u64,
    },
    /// Zeros (or too few bytes for a header): nothing was written here.
    Empty,
    /// Something that is neither: torn, corrupt or garbage.
    Invalid(String),
}

/// The trailer for an encoded record stored at commit-log offset `offset`.
pub(crate) fn trailer(record: &[u8], watermark: u64, seal: Seal, offset: u64) -> [u8; TRAILER_LEN] {
    let mut out = [0u8; TRAILER_LEN];
    out[..8].copy_from_slice(&watermark.to_be_bytes());
    let mut h = seal.hasher(offset);
    h.update(record);
    h.update(&out[..8]);
    out[8..].copy_from_slice(&h.finalize().to_be_bytes());
    out
}

/// The end-of-segment marker for a marker written at `pos` in a segment of `segment_size`
/// starting at commit-log offset `base`.
pub(crate) fn blank_marker(
    pos: u64,
    segment_size: u64,
    watermark: u64,
    seal: Seal,
    base: u64,
) -> [u8; BLANK_LEN] {
    let mut out = [0u8; BLANK_LEN];
    out[..4].copy_from_slice(&((segment_size - pos) as i32).to_be_bytes());
    out[4..8].copy_from_slice(&BLANK_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&watermark.to_be_bytes());
    let mut h = seal.hasher(base + pos);
    h.update(&out[..16]);
    let crc = h.finalize();
    out[16..].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Bytes a record of `total` bytes takes in a segment.
pub(crate) fn frame_len(total: usize) -> u64 {
    (total + TRAILER_LEN) as u64
}

/// The length of the record at `pos`, read from its frame only: TOTALSIZE and magic sane and
/// the whole frame inside the segment. For the dispatcher's reading of records this run's
/// appender wrote (encoded here from checked input, read back from the same page cache):
/// their checksum guards against the disk and a crash, neither of which stands between the
/// write and this read, and checking it again cost the dispatcher a pass over every byte.
/// Everything else (an end marker, zeros, a frame that does not fit) is `None`: [`probe`] it.
pub(crate) fn own_record_len(seg: &[u8], pos: usize, max_record: usize) -> Option<usize> {
    let head = seg.get(pos..pos + 8)?;
    let total = i32::from_be_bytes(head[..4].try_into().expect("4 bytes"));
    let magic = u32::from_be_bytes(head[4..].try_into().expect("4 bytes"));
    let total = usize::try_from(total).ok()?;
    let sane = (magic == MAGIC_V1 || magic == MAGIC_V2)
        && (MIN_RECORD_LEN..=max_record).contains(&total)
        && pos + total + TRAILER_LEN <= seg.len();
    sane.then_some(total)
}

/// The commit-log offset (PHYSICALOFFSET) the record at `pos` names, if its field is there.
pub(crate) fn claimed_offset(seg: &[u8], pos: usize) -> Option<u64> {
    let at = pos + PHYSICAL_OFFSET_POS;
    let field = seg.get(at..at + 8)?;
    u64::try_from(i64::from_be_bytes(field.try_into().expect("8 bytes"))).ok()
}

/// Judges the bytes at `pos` of a segment whose first byte is commit-log offset `base`.
pub(crate) fn probe(seg: &[u8], pos: usize, base: u64, max_record: usize, seal: Seal) -> Probe {
    let Some(head) = seg.get(pos..pos + 8) else {
        return Probe::Empty;
    };
    if head.iter().all(|b| *b == 0) {
        return Probe::Empty;
    }
    let total = i32::from_be_bytes(head[..4].try_into().expect("4 bytes"));
    let magic = u32::from_be_bytes(head[4..].try_into().expect("4 bytes"));
    if magic == BLANK_MAGIC {
        return probe_blank(seg, pos, base, total, seal);
    }
    if magic != MAGIC_V1 && magic != MAGIC_V2 {
        return Probe::Invalid(format!("bad magic {magic:#010x}"));
    }
    if total < MIN_RECORD_LEN as i32 || total as usize > max_record {
        return Probe::Invalid(format!("record length {total} out of range"));
    }
    let total = total as usize;
    let Some(frame) = seg.get(pos..pos + total + TRAILER_LEN) else {
        return Probe::Invalid(format!("record of {total} bytes runs past the segment end"));
    };
    let (record, tail) = frame.split_at(total);
    let stored_crc = u32::from_be_bytes(tail[8..].try_into().expect("4 bytes"));
    let watermark = u64::from_be_bytes(tail[..8].try_into().expect("8 bytes"));
    let mut h = seal.hasher(base + pos as u64);
    h.update(record);
    h.update(&tail[..8]);
    if h.finalize() != stored_crc {
        return Probe::Invalid("record checksum mismatch".into());
    }
    if let Some(why) = watermark_beyond_itself(watermark, base + pos as u64) {
        return Probe::Invalid(why);
    }
    let phys = i64::from_be_bytes(
        record[PHYSICAL_OFFSET_POS..PHYSICAL_OFFSET_POS + 8]
            .try_into()
            .expect("8 bytes"),
    );
    if phys != (base + pos as u64) as i64 {
        return Probe::Invalid(format!(
            "record claims offset {phys}, found at {}",
            base + pos as u64
        ));
    }
    let store_ms = match RecordView::parse(record, max_record) {
        Err(e) => return Probe::Invalid(format!("record structure: {e}")),
        // A topic names consume-queue folders: one that could not have been appended (`..`,
        // `/`) is forged, and must never reach a path join.
        Ok(v) if crate::message::validate_topic(v.topic).is_err() => {
            return Probe::Invalid(format!("record topic {:?} is not a valid topic", v.topic));
        }
        Ok(v) => v.header.store_timestamp,
    };
    Probe::Record {
        total,
        watermark,
        store_ms,
    }
}

/// The frame length at `pos` when it holds a whole record in every respect but its trailer
/// checksum: a sane length and magic, the frame inside the segment, PHYSICALOFFSET naming this
/// very position, a record that parses with a valid topic and whose body matches its BODYCRC,
/// and a trailer that was written (a checksum that is not zero, a plausible watermark). That
/// is how a record checked with another seal looks (the `seal` file lost or replaced), and not
/// how a torn write looks, which leaves zeros, a stale record, or a body or trailer that lost
/// its page.
pub(crate) fn whole_but_checksum(
    seg: &[u8],
    pos: usize,
    base: u64,
    max_record: usize,
) -> Option<u64> {
    let total = own_record_len(seg, pos, max_record)?;
    let (record, tail) = seg.get(pos..pos + total + TRAILER_LEN)?.split_at(total);
    let at = base + pos as u64;
    let watermark = u64::from_be_bytes(tail[..8].try_into().expect("8 bytes"));
    let stored_crc = u32::from_be_bytes(tail[8..].try_into().expect("4 bytes"));
    let whole = claimed_offset(seg, pos) == Some(at)
        && stored_crc != 0
        && watermark_beyond_itself(watermark, at).is_none()
        && RecordView::parse(record, max_record).is_ok_and(|v| {
            crate::message::validate_topic(v.topic).is_ok()
                && sluice_protocol::message::record::body_crc(v.body) == v.body_crc
        });
    whole.then(|| frame_len(total))
}

fn probe_blank(seg: &[u8], pos: usize, base: u64, remaining: i32, seal: Seal) -> Probe {
    let Some(marker) = seg.get(pos..pos + BLANK_LEN) else {
        return Probe::Invalid("end marker runs past the segment end".into());
    };
    let crc = u32::from_be_bytes(marker[16..].try_into().expect("4 bytes"));
    let mut h = seal.hasher(base + pos as u64);
    h.update(&marker[..16]);
    if h.finalize() != crc || remaining as i64 != (seg.len() - pos) as i64 {
        return Probe::Invalid("end marker checksum or length mismatch".into());
    }
    let watermark = u64::from_be_bytes(marker[8..16].try_into().expect("8"));
    if let Some(why) = watermark_beyond_itself(watermark, base + pos as u64) {
        return Probe::Invalid(why);
    }
    Probe::SegmentEnd { watermark }
}

/// Why a record or marker at `offset` claiming `watermark` cannot be real, if it cannot. The
/// watermark is the synced offset when it was written, and nothing past the writer is ever
/// synced, so a real one is never beyond its own offset. A record forged inside a message body
/// (found after a torn write) need not respect that, and recovery would take its watermark as
/// proof that earlier bad bytes had been durable.
fn watermark_beyond_itself(watermark: u64, offset: u64) -> Option<String> {
    (watermark > offset).then(|| format!("watermark {watermark} is beyond its own offset {offset}"))
}

/// The first position in `[from, until)` holding a verified record or end marker, with what
/// it holds. Recovery uses it to learn whether anything valid follows a bad position.
pub(crate) fn find_next_valid(
    seg: &[u8],
    from: usize,
    until: usize,
    base: u64,
    max_record: usize,
    seal: Seal,
) -> Option<(usize, Probe)> {
    let until = until.min(seg.len());
    let mut pos = from;
    while pos + 8 <= until {
        // Jump to the next byte that can begin a magic (0xDA.. or 0xCB..) at `pos + 4`: the
        // regions searched are mostly zeros, and a byte-by-byte probe would crawl.
        let hit = memchr::memchr2(0xDA, 0xCB, &seg[pos + 4..until])?;
        pos += hit;
        if pos + 8 > seg.len() {
            return None;
        }
        let magic = u32::from_be_bytes(seg[pos + 4..pos + 8].try_into().expect("4 bytes"));
        if magic == MAGIC_V1 || magic == MAGIC_V2 || magic == BLANK_MAGIC {
            let p = probe(seg, pos, base, max_record, seal);
            if matches!(p, Probe::Record { .. } | Probe::SegmentEnd { .. }) {
                return Some((pos, p));
            }
        }
        pos += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::message::record::{encode_record, patch_store_fields, RecordHeader};

    fn record_at(phys: u64, body: &[u8]) -> Vec<u8> {
        let mut rec = Vec::new();
        encode_record(&RecordHeader::default(), body, "T", b"", &mut rec).unwrap();
        patch_store_fields(&mut rec, 0, phys as i64, 1);
        rec
    }

    fn segment_with(records: &[Vec<u8>], size: usize) -> Vec<u8> {
        let mut seg = Vec::new();
        for r in records {
            seg.extend_from_slice(r);
            seg.extend_from_slice(&trailer(r, 0, Seal::PLAIN, 0));
        }
        seg.resize(size, 0);
        seg
    }

    #[test]
    fn verified_record_then_empty() {
        let r = record_at(1000, b"abc");
        let seg = segment_with(std::slice::from_ref(&r), 4096);
        assert_eq!(
            probe(&seg, 0, 1000, 1 << 20, Seal::PLAIN),
            Probe::Record {
                total: r.len(),
                watermark: 0,
                store_ms: 1
            }
        );
        assert_eq!(
            probe(&seg, r.len() + TRAILER_LEN, 1000, 1 << 20, Seal::PLAIN),
            Probe::Empty
        );
    }

    #[test]
    fn own_records_are_measured_from_their_frame_and_anything_else_is_left_to_the_probe() {
        let r = record_at(1000, b"abc");
        let seg = segment_with(std::slice::from_ref(&r), 4096);
        assert_eq!(own_record_len(&seg, 0, 1 << 20), Some(r.len()));
        assert_eq!(claimed_offset(&seg, 0), Some(1000));
        let mut flipped = seg.clone();
        flipped[r.len() - 1] ^= 1;
        assert_eq!(
            own_record_len(&flipped, 0, 1 << 20),
            Some(r.len()),
            "the checksum is the probe's to check"
        );
        let next = r.len() + TRAILER_LEN;
        assert_eq!(own_record_len(&seg, next, 1 << 20), None, "zeros");
        assert_eq!(own_record_len(&seg, 0, r.len() - 1), None, "over the limit");
        assert_eq!(
            own_record_len(&seg[..r.len() + TRAILER_LEN - 1], 0, 1 << 20),
            None,
            "frame past the segment's end"
        );
        let mut blank = seg.clone();
        blank[..4].copy_from_slice(&100i32.to_be_bytes());
        blank[4..8].copy_from_slice(&BLANK_MAGIC.to_be_bytes());
        assert_eq!(own_record_len(&blank, 0, 1 << 20), None, "end marker");
    }

    #[test]
    fn any_flipped_bit_is_invalid() {
        let r = record_at(0, b"hello world");
        let seg = segment_with(std::slice::from_ref(&r), 512);
        for byte in 0..r.len() + TRAILER_LEN {
            for bit in 0..8 {
                let mut bad = seg.clone();
                bad[byte] ^= 1 << bit;
                let p = probe(&bad, 0, 0, 1 << 20, Seal::PLAIN);
                assert!(
                    !matches!(p, Probe::Record { .. }),
                    "flip at {byte}.{bit} accepted"
                );
            }
        }
    }

    #[test]
    fn a_record_whose_topic_could_not_be_appended_is_invalid() {
        for topic in ["..", "../../x", "a/b", ""] {
            let mut rec = Vec::new();
            if encode_record(&RecordHeader::default(), b"x", topic, b"", &mut rec).is_err() {
                continue; // the encoder refuses it already
            }
            patch_store_fields(&mut rec, 0, 0, 1);
            let seg = segment_with(&[rec], 512);
            assert!(
                matches!(probe(&seg, 0, 0, 1 << 20, Seal::PLAIN), Probe::Invalid(_)),
                "topic {topic:?} accepted"
            );
        }
    }

    #[test]
    fn record_at_wrong_offset_is_invalid() {
        let seg = segment_with(&[record_at(64, b"x")], 512);
        assert!(matches!(
            probe(&seg, 0, 0, 1 << 20, Seal::PLAIN),
            Probe::Invalid(_)
        ));
    }

    #[test]
    fn blank_marker_round_trips_and_checks_length() {
        let mut seg = vec![0u8; 100];
        seg[40..60].copy_from_slice(&blank_marker(40, 100, 7, Seal::PLAIN, 0));
        assert_eq!(
            probe(&seg, 40, 0, 1 << 20, Seal::PLAIN),
            Probe::SegmentEnd { watermark: 7 }
        );
        let mut short = seg[..90].to_vec();
        short[40..60].copy_from_slice(&blank_marker(40, 100, 7, Seal::PLAIN, 0));
        assert!(matches!(
            probe(&short, 40, 0, 1 << 20, Seal::PLAIN),
            Probe::Invalid(_)
        ));
    }

    #[test]
    fn find_next_valid_skips_garbage() {
        let a = record_at(0, b"a");
        let b_pos = a.len() + TRAILER_LEN;
        let b = record_at(b_pos as u64, b"b");
        let mut seg = segment_with(&[a, b], 1024);
        seg[3] ^= 0x55; // damage the first record's length
        assert!(matches!(
            probe(&seg, 0, 0, 1 << 20, Seal::PLAIN),
            Probe::Invalid(_)
        ));
        let (pos, p) = find_next_valid(&seg, 1, seg.len(), 0, 1 << 20, Seal::PLAIN).unwrap();
        assert_eq!(pos, b_pos);
        assert!(matches!(p, Probe::Record { .. }));
    }

    #[test]
    fn a_record_whose_watermark_is_beyond_its_own_offset_is_invalid() {
        // A real record's watermark is the synced offset when it was written, never past the
        // record itself; a record forged inside a message body need not respect that.
        let at = 4096u64;
        let rec = record_at(at, b"x");
        let mut seg = vec![0u8; 512];
        let framed = |watermark: u64| {
            let mut s = seg.clone();
            s[..rec.len()].copy_from_slice(&rec);
            s[rec.len()..rec.len() + TRAILER_LEN].copy_from_slice(&trailer(
                &rec,
                watermark,
                Seal::PLAIN,
                0,
            ));
            s
        };
        for ok in [0, at - 1, at] {
            assert!(matches!(
                probe(&framed(ok), 0, at, 1 << 20, Seal::PLAIN),
                Probe::Record { .. }
            ));
        }
        for bad in [at + 1, u64::MAX] {
            assert!(matches!(
                probe(&framed(bad), 0, at, 1 << 20, Seal::PLAIN),
                Probe::Invalid(_)
            ));
        }
        seg[40..60].copy_from_slice(&blank_marker(40, 512, at + 41, Seal::PLAIN, 0));
        assert!(matches!(
            probe(&seg, 40, at, 1 << 20, Seal::PLAIN),
            Probe::Invalid(_)
        ));
    }

    /// Under a seal, bytes at or after its first offset verify only with the secret: a
    /// record with the plain CRC there (one forged inside a message body) is refused, while
    /// bytes before that offset keep verifying with the plain CRC.
    #[test]
    fn a_sealed_offset_verifies_only_with_the_secret_and_older_bytes_with_the_plain_crc() {
        let seal = Seal::new(0x5EA1_0001, 1000);
        let rec = record_at(1000, b"body");
        let framed = |seal: Seal| {
            let mut seg = rec.clone();
            seg.extend_from_slice(&trailer(&rec, 0, seal, 1000));
            seg
        };
        assert!(matches!(
            probe(&framed(seal), 0, 1000, 1 << 20, seal),
            Probe::Record { .. }
        ));
        assert!(matches!(
            probe(&framed(Seal::PLAIN), 0, 1000, 1 << 20, seal),
            Probe::Invalid(_)
        ));
        assert!(
            find_next_valid(&framed(Seal::PLAIN), 0, rec.len() + 12, 1000, 1 << 20, seal).is_none()
        );
        // Below the seal's first offset the plain CRC still holds.
        let old = record_at(500, b"body");
        let mut seg = old.clone();
        seg.extend_from_slice(&trailer(&old, 0, Seal::PLAIN, 500));
        assert!(matches!(
            probe(&seg, 0, 500, 1 << 20, seal),
            Probe::Record { .. }
        ));
        let mut marker = vec![0u8; 40];
        marker[20..40].copy_from_slice(&blank_marker(20, 40, 0, seal, 1000));
        assert!(matches!(
            probe(&marker, 20, 1000, 1 << 20, seal),
            Probe::SegmentEnd { .. }
        ));
        assert!(matches!(
            probe(&marker, 20, 1000, 1 << 20, Seal::PLAIN),
            Probe::Invalid(_)
        ));
    }
}
