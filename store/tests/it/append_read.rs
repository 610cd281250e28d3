//! Appends and every kind of read, across segment boundaries and restarts.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sluice_protocol::message::ids::offset_msg_id;
use sluice_protocol::message::java_hash;
use sluice_protocol::message::record::sysflag;
use sluice_store::{Boundary, GetStatus, MessageInput, StoreError};

#[test]
fn appended_records_read_back_byte_for_byte_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&small_config(dir.path()));
    let acks = append_seqs(&store, "Orders", 0, 0..800);
    assert!(
        store.stats().min_offset == 0 && store.stats().written > 2 * 320 * 1024,
        "crossed segments"
    );
    for (seq, phys, qoff) in &acks {
        let rec = store.read_record(*phys).unwrap();
        let v = parse(&rec);
        assert_eq!(v.body, body_for(*seq));
        assert_eq!(v.header.queue_offset, *qoff);
        assert_eq!(v.header.physical_offset as u64, *phys);
        assert_eq!(v.topic, "Orders");
        v.verify_body_crc().unwrap();
    }
    let offsets: Vec<i64> = acks.iter().map(|a| a.2).collect();
    assert_eq!(
        offsets,
        (0..800).collect::<Vec<_>>(),
        "queue offsets are contiguous"
    );
}

#[test]
fn queue_offsets_are_contiguous_per_queue_under_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&small_config(dir.path())));
    let seq = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (store, seq) = (Arc::clone(&store), Arc::clone(&seq));
            std::thread::spawn(move || {
                for _ in 0..100 {
                    let s = seq.fetch_add(1, Ordering::SeqCst);
                    store
                        .append_blocking(&[message("T", (s % 4) as i32, s)])
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut total = 0;
    for q in 0..4 {
        let msgs = read_queue(&store, "T", q);
        let offs: Vec<u64> = msgs.iter().map(|m| m.0).collect();
        assert_eq!(offs, (0..msgs.len() as u64).collect::<Vec<_>>());
        total += msgs.len();
    }
    assert_eq!(total, 800);
}

#[test]
fn batch_is_stored_contiguously_with_consecutive_queue_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&small_config(dir.path()));
    append_seqs(&store, "B", 1, 0..3);
    let batch: Vec<MessageInput> = (10..20).map(|s| message("B", 1, s)).collect();
    let acks = store.append_blocking(batch).unwrap();
    let qoffs: Vec<i64> = acks.iter().map(|a| a.queue_offset).collect();
    assert_eq!(qoffs, (3..13).collect::<Vec<_>>());
    for w in acks.windows(2) {
        assert!(w[1].phys_offset > w[0].phys_offset);
    }
}

#[test]
fn a_mixed_batch_takes_each_queues_next_offsets_and_lands_in_those_queues() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&small_config(dir.path()));
    append_seqs(&store, "M", 0, 0..2);
    let mut prepared = message("M", 0, 102);
    prepared.sys_flag = sysflag::TRANSACTION_PREPARED;
    let batch = vec![
        message("M", 0, 100),
        message("M", 0, 101),
        prepared,
        message("M", 0, 103),
        message("M", 1, 104),
        message("N", 0, 105),
        message("M", 0, 106),
    ];
    let acks = store.append_blocking(batch).unwrap();
    let qoffs: Vec<i64> = acks.iter().map(|a| a.queue_offset).collect();
    assert_eq!(
        qoffs,
        [2, 3, 0, 4, 0, 0, 5],
        "the prepared record takes no slot"
    );
    let bodies = |topic, q| -> Vec<(u64, Vec<u8>)> { read_queue(&store, topic, q) };
    let expect = |seqs: &[u64], first: u64| -> Vec<(u64, Vec<u8>)> {
        seqs.iter()
            .enumerate()
            .map(|(i, s)| (first + i as u64, body_for(*s)))
            .collect()
    };
    assert_eq!(bodies("M", 0)[2..], expect(&[100, 101, 103, 106], 2));
    assert_eq!(bodies("M", 1), expect(&[104], 0));
    assert_eq!(bodies("N", 0), expect(&[105], 0));
}

#[test]
fn get_messages_reports_rocketmq_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&small_config(dir.path()));
    assert_eq!(
        store.get_messages("Nope", 0, 0, 32, 1 << 20, None).status,
        GetStatus::NoMatchedLogicQueue
    );
    append_seqs(&store, "S", 0, 0..10);
    assert!(store.wait_dispatched(Duration::from_secs(5)));
    let r = store.get_messages("S", 0, 0, 4, 1 << 20, None);
    assert_eq!(
        (r.status, r.messages.len(), r.next_offset, r.max_offset),
        (GetStatus::Found, 4, 4, 10)
    );
    let r = store.get_messages("S", 0, 10, 4, 1 << 20, None);
    assert_eq!(
        (r.status, r.next_offset),
        (GetStatus::OffsetOverflowOne, 10)
    );
    let r = store.get_messages("S", 0, 99, 4, 1 << 20, None);
    assert_eq!(
        (r.status, r.next_offset),
        (GetStatus::OffsetOverflowBadly, 10)
    );
    // Byte limit: always at least one message, then stop before exceeding.
    let r = store.get_messages("S", 0, 0, 32, 1, None);
    assert_eq!(r.messages.len(), 1);
}

#[test]
fn tag_filter_skips_other_tags_and_advances_past_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&small_config(dir.path()));
    append_seqs(&store, "F", 0, 0..9); // tags tag0, tag1, tag2 repeating
    assert!(store.wait_dispatched(Duration::from_secs(5)));
    let want = i64::from(java_hash("tag1"));
    let only_tag1 = move |code: i64| code == want;
    let r = store.get_messages("F", 0, 0, 32, 1 << 20, Some(&only_tag1));
    let offs: Vec<u64> = r.messages.iter().map(|m| m.queue_offset).collect();
    assert_eq!(offs, vec![1, 4, 7]);
    assert_eq!(r.next_offset, 9);
    let none = |_: i64| false;
    let r = store.get_messages("F", 0, 0, 32, 1 << 20, Some(&none));
    assert_eq!((r.status, r.next_offset), (GetStatus::NoMatchedMessage, 9));
}

/// Fewer results than asked is a definite "no more" only when the look-up saw every
/// candidate: with 50 records sharing a key and a filter refusing all, a look-up for 2 (16
/// candidates) says it stopped at its cap; one for 100 saw them all.
#[test]
fn a_key_lookup_says_when_it_stopped_at_its_candidate_cap() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&small_config(dir.path()));
    append_seqs(&store, "K", 2, 0..50);
    assert!(store.wait_dispatched(Duration::from_secs(5)));
    let none = |_: &[u8]| false;
    let window = (0, i64::MAX / 2);
    let (hits, capped) = store.query_by_key_where("K", "shared", 2, window, &none);
    assert!(hits.is_empty() && capped);
    let (hits, capped) = store.query_by_key_where("K", "shared", 100, window, &none);
    assert!(hits.is_empty() && !capped);
    let (hits, capped) = store.query_by_key_where("K", "shared", 100, window, &|_| true);
    assert_eq!((hits.len(), capped), (50, false));
}

#[test]
fn lookups_by_key_unique_key_offset_id_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&small_config(dir.path()));
    let acks = append_seqs(&store, "K", 2, 0..50);
    assert!(store.wait_dispatched(Duration::from_secs(5)));
    let hits = store.query_by_key("K", "key-17", 10, 0, i64::MAX / 2);
    assert_eq!(hits.len(), 1);
    assert_eq!(parse(&hits[0]).body, body_for(17));
    assert_eq!(
        store
            .query_by_key("K", "shared", 100, 0, i64::MAX / 2)
            .len(),
        50
    );
    assert!(store
        .query_by_key("Other", "key-17", 10, 0, i64::MAX / 2)
        .is_empty());
    let uniq = store.query_by_uniq_key("K", &format!("U{:030}", 33), 4);
    assert_eq!(parse(&uniq[0]).body, body_for(33));
    let id = offset_msg_id(store.store_host(), acks[5].1);
    assert_eq!(
        parse(&store.read_by_offset_msg_id(&id).unwrap()).body,
        body_for(5)
    );
    let first = store.earliest_store_time("K", 2).unwrap();
    assert_eq!(
        store.offset_by_timestamp("K", 2, first - 1000, Boundary::Lower),
        0
    );
    assert_eq!(
        store.offset_by_timestamp("K", 2, i64::MAX / 2, Boundary::Lower),
        50
    );
    assert_eq!(
        store.offset_by_timestamp("K", 2, i64::MAX / 2, Boundary::Upper),
        49
    );
}

#[test]
fn prepared_and_rolled_back_records_never_reach_a_queue() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&small_config(dir.path()));
    let mut half = message("TX", 0, 1);
    half.sys_flag = sysflag::TRANSACTION_PREPARED;
    let mut rollback = message("TX", 0, 2);
    rollback.sys_flag = sysflag::TRANSACTION_ROLLBACK;
    let mut commit = message("TX", 0, 3);
    commit.sys_flag = sysflag::TRANSACTION_COMMIT;
    let a = store.append_blocking(&[half, rollback, commit]).unwrap();
    assert_eq!(
        a.iter().map(|x| x.queue_offset).collect::<Vec<_>>(),
        vec![0, 0, 0]
    );
    let msgs = read_queue(&store, "TX", 0);
    assert_eq!(msgs, vec![(0, body_for(3))]);
    assert!(
        store.read_record(a[0].phys_offset).is_ok(),
        "the half message is stored"
    );
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&small_config(dir.path()));
    let before = store.stats().written;
    for topic in ["", "a/b", "..", "x y"] {
        let err = store
            .append(&[MessageInput::new(topic, 0, "x")], true)
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidMessage(_)),
            "{topic:?}: {err}"
        );
    }
    let cfg = small_config(dir.path());
    let big = MessageInput::new("T", 0, vec![0u8; cfg.append_ceiling()]);
    assert!(matches!(
        store.append(&[big], true),
        Err(StoreError::InvalidMessage(_))
    ));
    assert!(matches!(
        store.append(&[MessageInput::new("T", -1, "x")], true),
        Err(StoreError::InvalidMessage(_))
    ));
    assert_eq!(store.stats().written, before);
}

#[test]
fn clean_restart_keeps_everything_and_continues_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let first = {
        let store = open(&cfg);
        let a = append_seqs(&store, "R", 0, 0..300);
        store.shutdown().unwrap();
        a
    };
    let store = open(&cfg);
    assert!(store.recovery_report().clean);
    assert_eq!(store.max_offset("R", 0), 300);
    let next = append_seqs(&store, "R", 0, 300..310);
    assert_eq!(next[0].2, 300);
    assert!(next[0].1 > first.last().unwrap().1);
    let msgs = read_queue(&store, "R", 0);
    assert_eq!(msgs.len(), 310);
    for (off, body) in msgs {
        assert_eq!(body, body_for(off));
    }
}

#[test]
fn a_second_store_on_the_same_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(&small_config(dir.path()));
    assert!(matches!(
        sluice_store::Store::open(small_config(dir.path())),
        Err(StoreError::Locked(_))
    ));
}

#[test]
fn dispatch_listener_hears_each_consumable_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&small_config(dir.path()));
    let heard = Arc::new(AtomicU64::new(0));
    let h = Arc::clone(&heard);
    store.set_dispatch_listener(Arc::new(move |e| {
        assert_eq!(e.topic, "L");
        h.fetch_add(1, Ordering::SeqCst);
    }));
    append_seqs(&store, "L", 0, 0..25);
    assert!(store.wait_dispatched(Duration::from_secs(5)));
    assert_eq!(heard.load(Ordering::SeqCst), 25);
}

#[tokio::test]
async fn async_callers_await_durable_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&small_config(dir.path()));
    let futs: Vec<_> = (0..64)
        .map(|s| store.append(&[message("A", 0, s)], true).unwrap())
        .collect();
    let mut offs = Vec::new();
    for f in futs {
        let a = f.await.unwrap();
        assert!(
            a[0].phys_offset < store.stats().flushed,
            "acknowledged only once flushed"
        );
        offs.push(a[0].queue_offset);
    }
    assert_eq!(offs, (0..64).collect::<Vec<_>>());
}

#[test]
fn shutdown_releases_the_folder_for_the_next_store_even_before_drop() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(&small_config(dir.path()));
    append_seqs(&first, "T", 0, 0..3);
    first.shutdown().unwrap();
    let second = open(&small_config(dir.path()));
    assert_eq!(second.max_offset("T", 0), 3);
    drop(first);
}

#[test]
fn raising_the_segment_size_keeps_old_segments_as_they_are_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let store = open(&cfg);
    append_seqs(&store, "T", 0, 0..800);
    store.shutdown().unwrap();
    drop(store);
    let old_segments = segment_files(dir.path()).len();
    assert!(old_segments >= 2);

    let mut bigger = cfg.clone();
    bigger.segment_size = cfg.segment_size * 2;
    for (round, unclean) in [false, true].into_iter().enumerate() {
        if unclean {
            mark_unclean(dir.path());
        }
        let store =
            sluice_store::Store::open(bigger.clone()).expect("opens with a larger segment size");
        let from = 800 + round as u64 * 800;
        append_seqs(&store, "T", 0, from..from + 800);
        let msgs = read_queue(&store, "T", 0);
        assert_eq!(msgs.len() as u64, from + 800);
        for (i, (offset, body)) in msgs.iter().enumerate() {
            assert_eq!((*offset, body), (i as u64, &body_for(i as u64)));
        }
        store.shutdown().unwrap();
    }
    let sizes: Vec<u64> = segment_files(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    assert!(
        sizes[..old_segments - 1]
            .iter()
            .all(|s| *s == cfg.segment_size),
        "sealed segments keep their size: {sizes:?}"
    );
}

/// A damaged record where the timestamp search first probes does not steer it too early:
/// the search takes the nearest readable entry's time instead.
#[test]
fn the_timestamp_search_steps_over_a_damaged_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let store = open(&cfg);
    let mut acks = Vec::new();
    for s in 0..60 {
        acks.extend(append_seqs(&store, "Z", 0, s..s + 1));
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(store.wait_dispatched(Duration::from_secs(5)));
    let time_of = |o: u64| {
        let r = store.get_messages("Z", 0, o, 1, 1 << 20, None);
        parse(&r.messages[0].bytes).header.store_timestamp
    };
    let t45 = time_of(45);
    assert!(time_of(44) < t45, "distinct times");
    // The record at queue offset 30, the search's first probe, fails its checksum.
    let phys = acks[30].1;
    let base = phys - phys % cfg.segment_size;
    flip_bit(
        &dir.path().join("commitlog").join(format!("{base:020}")),
        phys - base + 40,
        3,
    );
    assert_eq!(store.offset_by_timestamp("Z", 0, t45, Boundary::Lower), 45);
    assert_eq!(store.offset_by_timestamp("Z", 0, t45, Boundary::Upper), 45);
}

/// Where the search probes inside a damaged run longer than its probes on either side, it
/// found no time and went left: a time after the run was answered with an offset inside it
/// (a consumer reset by time would have read the whole run and more again).
#[test]
fn the_timestamp_search_crosses_a_long_damaged_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let store = open(&cfg);
    let mut acks = Vec::new();
    for s in 0..300 {
        acks.extend(append_seqs(&store, "Z", 0, s..s + 1));
        if s >= 290 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(store.wait_dispatched(Duration::from_secs(5)));
    let time_of = |o: u64| {
        let r = store.get_messages("Z", 0, o, 1, 1 << 20, None);
        parse(&r.messages[0].bytes).header.store_timestamp
    };
    let t295 = time_of(295);
    assert!(time_of(294) < t295, "distinct times");
    // Queue offsets 40..290 all fail their checksums: the first probes (150, ...) lie more
    // than 64 entries from any readable one.
    for (_, phys, _) in &acks[40..290] {
        let base = phys - phys % cfg.segment_size;
        flip_bit(
            &dir.path().join("commitlog").join(format!("{base:020}")),
            phys - base + 40,
            3,
        );
    }
    assert_eq!(
        store.offset_by_timestamp("Z", 0, t295, Boundary::Lower),
        295
    );
    assert_eq!(
        store.offset_by_timestamp("Z", 0, t295, Boundary::Upper),
        295
    );
}
