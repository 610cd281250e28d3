//! The stored-message record decoder: what recovery, reads and every pull element go through.
//!
//! Oracles:
//! - A parsed record lies within the input and within the length cap.
//! - Encoding the parsed fields again and parsing that gives the same fields (the encoder picks
//!   V1/V2 magic from the topic length, so only the fields are compared, not the bytes).
//! - A record whose own encoding is byte-identical to the input passes its body CRC.

use sluice_protocol::message::record::encode_record;
use sluice_protocol::RecordView;

/// The store's default record cap (4 MiB + 64 KiB).
const MAX_RECORD: usize = 4 * 1024 * 1024 + 64 * 1024;

/// One input: panics when an oracle above is violated.
pub fn run(data: &[u8]) {
    let Ok(view) = RecordView::parse(data, MAX_RECORD) else {
        return;
    };
    assert!(view.total_size <= data.len() && view.total_size <= MAX_RECORD);
    let _ = view.verify_body_crc();
    let _ = view.transaction_type();
    let mut again = Vec::new();
    encode_record(
        &view.header,
        view.body,
        view.topic,
        view.properties,
        &mut again,
    )
    .expect("fields that were parsed fit their length prefixes");
    let reparsed = RecordView::parse(&again, usize::MAX).expect("our own encoding parses");
    assert_eq!(reparsed.header, view.header);
    assert_eq!(reparsed.body, view.body);
    assert_eq!(reparsed.topic, view.topic);
    assert_eq!(reparsed.properties, view.properties);
    assert!(
        reparsed.verify_body_crc().is_ok(),
        "the encoder writes the body CRC"
    );
    if again[..] == data[..view.total_size] {
        assert!(view.verify_body_crc().is_ok());
    }
}
