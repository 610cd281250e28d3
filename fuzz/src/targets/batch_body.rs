//! The SEND_BATCH_MESSAGE body decoder: bytes straight from a client.
//!
//! Oracles: the entries of an accepted batch cover the body exactly (their encoded lengths add
//! up to it), respect the count and body caps, and encode back to a batch that decodes to the
//! same entries.

use sluice_protocol::{decode_batch, encode_batch};

const MAX_COUNT: usize = 64;
const MAX_BODY: usize = 16 * 1024;

/// One input: panics when an oracle above is violated.
pub fn run(data: &[u8]) {
    let Ok(entries) = decode_batch(data, MAX_COUNT, MAX_BODY) else {
        return;
    };
    assert!(!entries.is_empty() && entries.len() <= MAX_COUNT);
    assert!(entries.iter().all(|e| e.body.len() <= MAX_BODY));
    let covered: usize = entries.iter().map(|e| e.encoded_len()).sum();
    assert_eq!(covered, data.len(), "entries must cover the whole body");
    let mut again = Vec::new();
    encode_batch(entries.iter(), &mut again).expect("decoded entries encode");
    let reparsed = decode_batch(&again, MAX_COUNT, MAX_BODY).expect("our own encoding decodes");
    assert_eq!(reparsed, entries);
}
