//! The warmer: commit-log space ahead of the writer is written with zeros, and records written
//! into that space (or racing the warmer for it) read back byte for byte.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use sluice_store::Store;

/// Waits (bounded) until the warmer has zeroed past `beyond`; returns where it got to.
fn wait_warmed_beyond(store: &Store, beyond: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let warmed = store.stats().warmed;
        if warmed > beyond || Instant::now() >= deadline {
            return warmed;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn check_all(store: &Store, acks: &[(u64, u64, i64)]) {
    for (seq, phys, _) in acks {
        let rec = store.read_record(*phys).unwrap();
        let v = parse(&rec);
        assert_eq!(v.body, body_for(*seq), "message {seq} at {phys}");
        v.verify_body_crc().unwrap();
    }
}

#[test]
fn space_ahead_of_the_writer_is_zeroed_and_records_written_into_it_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::small_config(dir.path());
    cfg.segment_size = 4 << 20;
    cfg.warm_ahead_bytes = 1 << 20;
    let store = open(&cfg);
    let mut acks = append_seqs(&store, "Warm", 0, 0..50);
    let written = store.stats().written;
    // An idle writer: the lead is the smallest one, the gap plus two chunks (64 KiB each)
    // past the writer.
    let warmed = wait_warmed_beyond(&store, written + (128 << 10));
    assert!(
        warmed > written + (128 << 10) && warmed <= written + (1 << 20),
        "warmed to {warmed} with the writer at {written}: expected past the gap, within 1 MiB"
    );
    let segment = std::fs::read(dir.path().join("commitlog").join(format!("{:020}", 0))).unwrap();
    assert!(
        segment[written as usize..warmed as usize]
            .iter()
            .all(|b| *b == 0),
        "the warmed space holds only zeros"
    );
    // Write through the warmed space and beyond, into the next segment.
    acks.extend(append_seqs(&store, "Warm", 0, 50..6_000));
    assert!(
        store.stats().written > 4 << 20,
        "crossed into a second segment"
    );
    check_all(&store, &acks);
    let offsets: Vec<i64> = acks.iter().map(|a| a.2).collect();
    assert_eq!(offsets, (0..6_000).collect::<Vec<_>>());
}

#[test]
fn writers_racing_the_warmer_for_the_same_space_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::small_config(dir.path());
    // The smallest distance: 4 KiB pieces claimed 4 KiB past the writer, so appends keep
    // running into the piece being zeroed and must wait for it.
    cfg.warm_ahead_bytes = 64 << 10;
    let store = std::sync::Arc::new(open(&cfg));
    let writers: Vec<_> = (0..4i32)
        .map(|q| {
            let store = std::sync::Arc::clone(&store);
            std::thread::spawn(move || {
                let seqs = (q as u64 * 10_000)..(q as u64 * 10_000 + 1_500);
                append_seqs(&store, "Race", q, seqs)
            })
        })
        .collect();
    let mut acks = Vec::new();
    for w in writers {
        acks.extend(w.join().unwrap());
    }
    assert!(store.stats().warmed > 0, "the warmer ran");
    check_all(&store, &acks);
    for q in 0..4 {
        let read = read_queue(&store, "Race", q);
        assert_eq!(read.len(), 1_500, "queue {q}");
        for (i, (_, body)) in read.iter().enumerate() {
            assert_eq!(body, &body_for(q as u64 * 10_000 + i as u64));
        }
    }
}
