//! The store's recovery scanner, end to end: arbitrary bytes as commit-log segments, then
//! `Store::open` (scan, cut or quarantine, re-dispatch), exactly as a restart meets them.
//!
//! Input: byte 0 holds flags (bit 0: the previous run stopped uncleanly, so the abort marker
//! is there; bit 1: the rest fills two segments instead of one), the rest is segment bytes.
//!
//! Oracles:
//! - Opening never fails and never panics, whatever the segments hold.
//! - Every message a queue serves afterwards is a well-formed record of that queue.
//! - The recovered store takes a new append, and after a clean stop the next open finds that
//!   append intact and nothing to cut (recovery is idempotent).

use super::super::{has_unsafe_topic, scratch_root, store_config, MAX_RECORD, SEGMENT};
use sluice_protocol::RecordView;
use sluice_store::{MessageInput, Store};

/// Most messages read back per queue: every loop is bounded.
const MAX_READ: usize = 512;

/// One input: panics when an oracle above is violated.
pub fn run(data: &[u8]) {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let segments = if flags & 2 != 0 { 2 } else { 1 };
    let bytes = &bytes[..bytes.len().min(SEGMENT * segments)];
    if has_unsafe_topic(bytes) {
        return;
    }
    let dir = tempfile::tempdir_in(scratch_root()).expect("scratch folder");
    write_segments(dir.path(), bytes, segments);
    if flags & 1 != 0 {
        std::fs::write(dir.path().join("abort"), b"").expect("abort marker");
    }
    let store = Store::open(store_config(dir.path())).expect("recovery opens any segment");
    assert!(store.recovery_report().end <= (SEGMENT * segments) as u64);
    check_served_records(&store);
    let after = store
        .append_blocking(vec![MessageInput::new(
            "FuzzAfter",
            0,
            &b"after recovery"[..],
        )])
        .expect("a recovered store takes appends")[0];
    store.shutdown().expect("clean stop");
    drop(store);

    let again = Store::open(store_config(dir.path())).expect("reopen after a clean stop");
    assert_eq!(
        again.recovery_report().cut_at,
        None,
        "a clean reopen cut data"
    );
    let record = again
        .read_record(after.phys_offset)
        .expect("the append survived");
    assert_eq!(
        RecordView::parse(&record, MAX_RECORD).unwrap().body,
        b"after recovery"
    );
    again.shutdown().expect("clean stop");
}

/// Writes `bytes` as consecutive segments starting at offset 0 (the store extends short files
/// with zeros, which read as "nothing written").
fn write_segments(dir: &std::path::Path, bytes: &[u8], segments: usize) {
    let log = dir.join("commitlog");
    std::fs::create_dir_all(&log).expect("commitlog folder");
    for i in 0..segments {
        let start = (i * SEGMENT).min(bytes.len());
        let end = ((i + 1) * SEGMENT).min(bytes.len());
        let name = log.join(format!("{:020}", i * SEGMENT));
        std::fs::write(name, &bytes[start..end]).expect("segment");
    }
}

/// Every queue's messages parse as records of that queue.
fn check_served_records(store: &Store) {
    for (topic, queue_id) in store.queues() {
        let min = store.min_offset(&topic, queue_id);
        let got = store.get_messages(&topic, queue_id, min, MAX_READ, 1 << 20, None);
        for m in &got.messages {
            let view = RecordView::parse(&m.bytes, MAX_RECORD).expect("served bytes are a record");
            assert_eq!(
                (view.topic, view.header.queue_id),
                (topic.as_str(), queue_id)
            );
            assert_eq!(view.header.queue_offset as u64, m.queue_offset);
        }
    }
}
