//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::path::Path;

use bytes::Bytes;
use sluice_protocol::message::record::RecordView;
use sluice_store::{Store, StoreConfig};

pub mod workload;
pub use workload::*;

pub fn small_config(dir: &Path) -> StoreConfig {
    let mut cfg = StoreConfig::for_tests(dir);
    cfg.segment_size = 256 * 1024 + 64 * 1024;
    cfg.max_record_size = 64 * 1024;
    cfg.max_write_batch_bytes = 128 * 1024;
    cfg.max_unflushed_bytes = 1 << 20;
    cfg
}

pub fn open(cfg: &StoreConfig) -> Store {
    Store::open(cfg.clone()).expect("open store")
}

pub fn parse(rec: &Bytes) -> RecordView<'_> {
    RecordView::parse(rec, usize::MAX).expect("valid record")
}

/// Appends messages `seqs` one request each, returns (seq, phys, queue offset).
pub fn append_seqs(
    store: &Store,
    topic: &str,
    queue_id: i32,
    seqs: impl Iterator<Item = u64>,
) -> Vec<(u64, u64, i64)> {
    seqs.map(|s| {
        let a = store
            .append_blocking(&[message(topic, queue_id, s)])
            .expect("append");
        (s, a[0].phys_offset, a[0].queue_offset)
    })
    .collect()
}

/// Every message of a queue, from its min offset, as (queue offset, body).
pub fn read_queue(store: &Store, topic: &str, queue_id: i32) -> Vec<(u64, Vec<u8>)> {
    read_queue_with(store, topic, queue_id, |m| parse(&m.bytes).body.to_vec())
}

/// Reads of a queue end within this many batches (a read that stopped advancing would
/// otherwise loop, and grow, for ever).
pub const MAX_QUEUE_BATCHES: usize = 100_000;

/// Every message of a queue, from its min offset, as (queue offset, `take(message)`).
pub fn read_queue_with<T>(
    store: &Store,
    topic: &str,
    queue_id: i32,
    mut take: impl FnMut(&sluice_store::QueueMessage) -> T,
) -> Vec<(u64, T)> {
    assert!(store.wait_dispatched(std::time::Duration::from_secs(10)));
    let mut out = Vec::new();
    let mut off = store.min_offset(topic, queue_id);
    for _ in 0..MAX_QUEUE_BATCHES {
        let r = store.get_messages(topic, queue_id, off, 32, 1 << 20, None);
        for m in &r.messages {
            out.push((m.queue_offset, take(m)));
        }
        if r.messages.is_empty() || r.next_offset >= r.max_offset {
            return out;
        }
        off = r.next_offset;
    }
    panic!("the read of {topic}/{queue_id} did not end within {MAX_QUEUE_BATCHES} batches");
}

/// Copies a folder tree (a pristine data folder to damage in many ways, or a live one at a
/// simulated power cut: a file removed meanwhile, such as a state file's temporary copy
/// renamed into place, is skipped, as the cut would have found it gone).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
            continue;
        }
        match std::fs::copy(entry.path(), dest) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            copied => {
                copied.unwrap();
            }
        }
    }
}

/// The commit-log segment files, oldest first.
pub fn segment_files(data: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(data.join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Makes the next open see an unclean stop.
pub fn mark_unclean(data: &Path) {
    std::fs::write(data.join("abort"), b"").unwrap();
}

/// Flips one bit of the file at `pos`.
pub fn flip_bit(path: &Path, pos: u64, bit: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, pos).unwrap();
    b[0] ^= 1 << bit;
    f.write_all_at(&b, pos).unwrap();
}
