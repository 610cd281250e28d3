//! The SEND_BATCH_MESSAGE body (`rocketmq-protocol.md` §3.5): inner messages back to back.
//!
//! ```text
//! TOTALSIZE:i32 | MAGIC:i32 | BODYCRC:i32 | FLAG:i32 | BODYLEN:i32 | BODY | PROPLEN:i16 | PROPS
//! ```
//!
//! Clients write 0 for MAGIC and BODYCRC and Java's broker never reads them, so neither is
//! checked. Everything else is: TOTALSIZE must equal the sum of the parts, so a corrupt batch is
//! refused whole (`MESSAGE_ILLEGAL`) rather than stored as garbage. The topic, queue, sysFlag and
//! timestamps come from the request header, not from here.

use super::record::MAX_PROPERTIES_LEN;

/// Bytes of each inner message that are not body or properties.
pub const BATCH_ENTRY_OVERHEAD: usize = 22;

/// One message of a batch, borrowed from the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEntry<'a> {
    /// The user flag.
    pub flag: i32,
    /// The body as sent (batches are never compressed).
    pub body: &'a [u8],
    /// The raw properties string: UNIQ_KEY, TAGS, KEYS and so on.
    pub properties: &'a [u8],
}

impl BatchEntry<'_> {
    /// Encoded length of this entry.
    pub fn encoded_len(&self) -> usize {
        BATCH_ENTRY_OVERHEAD + self.body.len() + self.properties.len()
    }
}

/// Why a batch body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The body holds no messages.
    #[error("batch is empty")]
    Empty,
    /// The body ends inside an entry.
    #[error("batch entry at byte {offset} is truncated")]
    Truncated {
        /// Where the entry starts.
        offset: usize,
    },
    /// TOTALSIZE is out of range or disagrees with the entry's own lengths.
    #[error("batch entry at byte {offset} has an inconsistent size: {reason}")]
    Inconsistent {
        /// Where the entry starts.
        offset: usize,
        /// What did not add up.
        reason: &'static str,
    },
    /// More messages than allowed.
    #[error("batch has more than {max} messages")]
    TooManyMessages {
        /// The limit.
        max: usize,
    },
    /// An inner body is over the limit.
    #[error("batch entry at byte {offset} has a {len}-byte body (max {max})")]
    BodyTooLarge {
        /// Where the entry starts.
        offset: usize,
        /// Its body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field is too long to encode.
    #[error("{field} too long to encode: {len} bytes (max {max})")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Splits a batch body into its messages, checking every length against the bytes at hand
/// before slicing. At most `max_count` messages and `max_body` bytes per body are accepted.
pub fn decode_batch(
    buf: &[u8],
    max_count: usize,
    max_body: usize,
) -> Result<Vec<BatchEntry<'_>>, BatchError> {
    if buf.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut entries = Vec::with_capacity(max_count.min(buf.len() / BATCH_ENTRY_OVERHEAD));
    let mut offset = 0;
    while offset < buf.len() {
        if entries.len() == max_count {
            return Err(BatchError::TooManyMessages { max: max_count });
        }
        let (entry, len) = decode_entry(&buf[offset..], offset, max_body)?;
        entries.push(entry);
        offset += len;
    }
    Ok(entries)
}

/// Decodes the entry at the start of `buf` (which begins at byte `offset` of the batch),
/// returning it with its length.
fn decode_entry(
    buf: &[u8],
    offset: usize,
    max_body: usize,
) -> Result<(BatchEntry<'_>, usize), BatchError> {
    let truncated = BatchError::Truncated { offset };
    let inconsistent = |reason| BatchError::Inconsistent { offset, reason };
    let int = |at: usize| -> Result<i32, BatchError> {
        let bytes = buf.get(at..at + 4).ok_or(truncated.clone())?;
        Ok(i32::from_be_bytes(bytes.try_into().expect("4 bytes")))
    };
    let total = usize::try_from(int(0)?).map_err(|_| inconsistent("negative TOTALSIZE"))?;
    if total < BATCH_ENTRY_OVERHEAD {
        return Err(inconsistent("TOTALSIZE below the 22-byte minimum"));
    }
    if total > buf.len() {
        return Err(truncated);
    }
    let entry = &buf[..total];
    let flag = int(12)?;
    let body_len = usize::try_from(int(16)?).map_err(|_| inconsistent("negative BODYLEN"))?;
    if body_len > max_body {
        return Err(BatchError::BodyTooLarge {
            offset,
            len: body_len,
            max: max_body,
        });
    }
    let body_end = 20usize
        .checked_add(body_len)
        .filter(|end| end + 2 <= total)
        .ok_or(inconsistent("BODYLEN runs past TOTALSIZE"))?;
    let prop_len = i16::from_be_bytes([entry[body_end], entry[body_end + 1]]);
    let prop_len = usize::try_from(prop_len).map_err(|_| inconsistent("negative PROPLEN"))?;
    if body_end + 2 + prop_len != total {
        return Err(inconsistent("lengths do not add up to TOTALSIZE"));
    }
    let body = &entry[20..body_end];
    let properties = &entry[body_end + 2..];
    Ok((
        BatchEntry {
            flag,
            body,
            properties,
        },
        total,
    ))
}

/// Appends the batch encoding of `entries` to `out`, as clients write it (MAGIC and BODYCRC 0).
/// On error `out` is left as it was.
pub fn encode_batch<'a>(
    entries: impl IntoIterator<Item = &'a BatchEntry<'a>>,
    out: &mut Vec<u8>,
) -> Result<(), BatchError> {
    let start = out.len();
    for entry in entries {
        if let Err(e) = encode_entry(entry, out) {
            out.truncate(start);
            return Err(e);
        }
    }
    Ok(())
}

fn encode_entry(entry: &BatchEntry<'_>, out: &mut Vec<u8>) -> Result<(), BatchError> {
    let props = entry.properties.len();
    if props > MAX_PROPERTIES_LEN {
        return Err(BatchError::TooLong {
            field: "properties",
            len: props,
            max: MAX_PROPERTIES_LEN,
        });
    }
    let max_body = i32::MAX as usize - BATCH_ENTRY_OVERHEAD - props;
    if entry.body.len() > max_body {
        let len = entry.body.len();
        return Err(BatchError::TooLong {
            field: "body",
            len,
            max: max_body,
        });
    }
    out.reserve(entry.encoded_len());
    out.extend_from_slice(&(entry.encoded_len() as i32).to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&entry.flag.to_be_bytes());
    out.extend_from_slice(&(entry.body.len() as i32).to_be_bytes());
    out.extend_from_slice(entry.body);
    out.extend_from_slice(&(props as i16).to_be_bytes());
    out.extend_from_slice(entry.properties);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<BatchEntry<'static>> {
        vec![
            BatchEntry {
                flag: 1,
                body: b"first",
                properties: b"UNIQ_KEY\x01A\x02TAGS\x01x\x02",
            },
            BatchEntry {
                flag: 0,
                body: b"",
                properties: b"",
            },
            BatchEntry {
                flag: -7,
                body: b"third body",
                properties: b"KEYS\x01k\x02",
            },
        ]
    }

    fn encoded(entries: &[BatchEntry<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_batch(entries, &mut out).unwrap();
        out
    }

    #[test]
    fn batch_round_trips_with_22_bytes_of_overhead_each() {
        let raw = encoded(&sample());
        let payload: usize = sample()
            .iter()
            .map(|e| e.body.len() + e.properties.len())
            .sum();
        assert_eq!(raw.len(), payload + 3 * BATCH_ENTRY_OVERHEAD);
        assert_eq!(decode_batch(&raw, 16, 1024).unwrap(), sample());
    }

    #[test]
    fn limits_on_count_and_body_size_are_enforced() {
        let raw = encoded(&sample());
        assert_eq!(
            decode_batch(&raw, 2, 1024),
            Err(BatchError::TooManyMessages { max: 2 })
        );
        let err = decode_batch(&raw, 16, 5).unwrap_err();
        assert!(
            matches!(
                err,
                BatchError::BodyTooLarge {
                    len: 10,
                    max: 5,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(decode_batch(&[], 16, 1024), Err(BatchError::Empty));
    }

    #[test]
    fn every_cut_inside_an_entry_is_refused() {
        let raw = encoded(&sample());
        let mut boundaries = vec![0];
        for e in sample() {
            boundaries.push(boundaries.last().unwrap() + e.encoded_len());
        }
        for cut in 1..raw.len() {
            let got = decode_batch(&raw[..cut], 16, 1024);
            match boundaries.iter().position(|b| *b == cut) {
                Some(n) => assert_eq!(got.unwrap(), sample()[..n]),
                None => assert!(got.is_err(), "cut at {cut} decoded as {got:?}"),
            }
        }
    }

    #[test]
    fn inconsistent_lengths_are_refused_before_slicing() {
        let raw = encoded(&sample()[..1]);
        let mut bad_total = raw.clone();
        bad_total[..4].copy_from_slice(&21i32.to_be_bytes());
        assert!(matches!(
            decode_batch(&bad_total, 16, 1024),
            Err(BatchError::Inconsistent { .. })
        ));
        let mut huge_body = raw.clone();
        huge_body[16..20].copy_from_slice(&(i32::MAX).to_be_bytes());
        assert!(matches!(
            decode_batch(&huge_body, 16, usize::MAX),
            Err(BatchError::Inconsistent { .. })
        ));
        let mut neg_props = raw.clone();
        let at = 20 + b"first".len();
        neg_props[at..at + 2].copy_from_slice(&(-1i16).to_be_bytes());
        assert!(matches!(
            decode_batch(&neg_props, 16, 1024),
            Err(BatchError::Inconsistent { .. })
        ));
        let mut neg_total = raw;
        neg_total[..4].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            decode_batch(&neg_total, 16, 1024),
            Err(BatchError::Inconsistent { .. })
        ));
    }

    #[test]
    fn oversized_properties_are_not_encoded() {
        let props = vec![b'a'; MAX_PROPERTIES_LEN + 1];
        let entry = BatchEntry {
            flag: 0,
            body: b"",
            properties: &props,
        };
        let mut out = vec![9];
        assert!(matches!(
            encode_batch([&entry], &mut out),
            Err(BatchError::TooLong { .. })
        ));
        assert_eq!(out, [9]);
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_bytes(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_batch(&raw, 64, 256);
        }

        #[test]
        fn arbitrary_batches_round_trip(
            parts in proptest::collection::vec(
                (any::<i32>(), proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 0..40)),
                1..6,
            )
        ) {
            let entries: Vec<BatchEntry<'_>> = parts
                .iter()
                .map(|(flag, body, props)| BatchEntry { flag: *flag, body, properties: props })
                .collect();
            let raw = encoded(&entries);
            prop_assert_eq!(decode_batch(&raw, 64, 1024).unwrap(), entries);
        }
    }
}
