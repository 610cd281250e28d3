//! Retiring a topic's queues (a deleted topic): what was sent before is never served again,
//! what is sent after is, across restarts, until retention takes the old records.

use crate::common;

use std::time::Duration;

use common::*;
use sluice_store::{GetStatus, Store};

fn retire(store: &Store, topic: &str) -> usize {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(store.retire_queues(topic))
        .expect("retire")
}

fn offsets(store: &Store, topic: &str, queue_id: i32) -> Vec<u64> {
    read_queue(store, topic, queue_id)
        .into_iter()
        .map(|(o, _)| o)
        .collect()
}

#[test]
fn a_retired_topic_serves_only_what_is_sent_after_it_also_after_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let store = open(&cfg);
    append_seqs(&store, "T", 0, 0..10);
    append_seqs(&store, "T", 1, 0..3);
    append_seqs(&store, "Other", 0, 0..4);
    assert_eq!(retire(&store, "T"), 2);
    assert_eq!(store.stats().queue_floors, 2);
    assert!(store.wait_dispatched(Duration::from_secs(10)));
    assert_eq!(
        (store.min_offset("T", 0), store.max_offset("T", 0)),
        (10, 10)
    );
    assert_eq!(store.queue_start("T", 0), 10);
    let r = store.get_messages("T", 0, 0, 8, 1 << 20, None);
    assert_eq!(r.status, GetStatus::NoMessageInQueue);
    assert!(r.messages.is_empty());
    assert!(offsets(&store, "T", 1).is_empty());
    assert_eq!(
        offsets(&store, "Other", 0),
        vec![0, 1, 2, 3],
        "other topics untouched"
    );

    append_seqs(&store, "T", 0, 100..102);
    assert!(store.wait_dispatched(Duration::from_secs(10)));
    let r = store.get_messages("T", 0, 0, 8, 1 << 20, None);
    assert_eq!((r.status, r.next_offset), (GetStatus::OffsetTooSmall, 10));
    let after = read_queue(&store, "T", 0);
    assert_eq!(
        after.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        vec![10, 11]
    );
    assert_eq!(after[0].1, body_for(100));
    store.shutdown().unwrap();

    after_clean_and_unclean_restarts(dir.path(), &cfg, |store| {
        assert_eq!(offsets(store, "T", 0), vec![10, 11]);
        assert_eq!(store.queue_start("T", 0), 10);
        assert!(offsets(store, "T", 1).is_empty());
        assert_eq!(store.min_offset("T", 1), 3);
    });
}

/// The floor is taken in the appender's order: a message queued before the retire, not yet
/// written when it was asked for, is hidden like the rest.
#[test]
fn messages_queued_before_the_retire_are_hidden_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&small_config(dir.path()));
    let pending: Vec<_> = (0..200)
        .map(|s| store.append(vec![message("T", 0, s)], true).unwrap())
        .collect();
    let floors = store.retire_queues("T");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(rt.block_on(floors).unwrap(), 1);
    for p in pending {
        p.wait().unwrap();
    }
    assert!(store.wait_dispatched(Duration::from_secs(10)));
    assert_eq!(
        (store.min_offset("T", 0), store.max_offset("T", 0)),
        (200, 200)
    );
    assert!(offsets(&store, "T", 0).is_empty());
    store.shutdown().unwrap();
}

fn retention_config(dir: &std::path::Path) -> sluice_store::StoreConfig {
    let mut cfg = small_config(dir);
    cfg.clean_interval = Duration::from_secs(3600);
    cfg.retention_bytes = Some(cfg.segment_size * 2);
    cfg.retention_bytes_min_age = Duration::ZERO;
    cfg
}

/// Fills other segments and runs retention until it deleted some.
fn age_out(store: &Store) {
    append_seqs(store, "Other", 0, 0..1500);
    assert!(store.wait_queues_synced(Duration::from_secs(10)));
    assert!(store.run_retention().unwrap().segments > 0);
}

fn floors_file(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("queue-floors")).unwrap_or_default()
}

/// Runs `check` on the store reopened after a clean stop, then after an unclean one.
fn after_clean_and_unclean_restarts(
    dir: &std::path::Path,
    cfg: &sluice_store::StoreConfig,
    check: impl Fn(&Store),
) {
    for unclean in [false, true] {
        if unclean {
            mark_unclean(dir);
        }
        let store = open(cfg);
        check(&store);
        store.shutdown().unwrap();
    }
}

/// When a message is stored in topic `T` (retired at queue offset 50) around the retention
/// pass that deletes its first 50.
#[derive(PartialEq)]
enum Stored {
    Nothing,
    BeforeAging,
    AfterAging,
}

/// A store whose topic `T` had 50 messages, was retired, and aged out with retention (one
/// more message stored as `after` says); shut down, for a reopen.
fn aged_out(after: Stored) -> (tempfile::TempDir, sluice_store::StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = retention_config(dir.path());
    let store = open(&cfg);
    append_seqs(&store, "T", 0, 0..50);
    retire(&store, "T");
    if after == Stored::BeforeAging {
        append_seqs(&store, "T", 0, 50..51);
    }
    age_out(&store);
    if after == Stored::AfterAging {
        append_seqs(&store, "T", 0, 50..51);
    }
    store.shutdown().unwrap();
    assert_floor(dir.path(), "T", true);
    (dir, cfg)
}

/// Whether `queue-floors` has a line for `topic`, as `kept` says.
fn assert_floor(dir: &std::path::Path, topic: &str, kept: bool) {
    let text = floors_file(dir);
    assert_eq!(text.contains(&format!(" {topic}\n")), kept, "{text}");
}

/// Retention deleted exactly the records under the floor, and the queue holds messages from
/// it: the floor is kept, so a new group still reads the queue from there as a young queue.
#[test]
fn a_floor_that_retention_reached_is_kept_as_the_queue_start() {
    let (dir, cfg) = aged_out(Stored::AfterAging);
    let store = open(&cfg);
    assert_floor(dir.path(), "T", true);
    assert_eq!(
        (store.min_offset("T", 0), store.queue_start("T", 0)),
        (50, 50)
    );
    assert_eq!(offsets(&store, "T", 0), vec![50]);
    store.shutdown().unwrap();
}

/// Once retention has also deleted records past the floor, it hides and tells nothing and is
/// dropped at the next open; the queue goes on from where it was.
#[test]
fn a_floor_is_dropped_once_retention_has_passed_it() {
    let (dir, cfg) = aged_out(Stored::BeforeAging);
    let store = open(&cfg);
    assert_floor(dir.path(), "T", false);
    assert_eq!(
        (store.min_offset("T", 0), store.queue_start("T", 0)),
        (51, 0)
    );
    append_seqs(&store, "T", 0, 0..1);
    assert_eq!(offsets(&store, "T", 0), vec![51]);
    store.shutdown().unwrap();
}

/// A floor above its queue's end (records under it lost with an unclean stop, never
/// acknowledged) comes down to the end at open and is saved so: the next messages are
/// served, also after later restarts.
#[test]
fn a_floor_above_the_queue_end_is_lowered_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let store = open(&cfg);
    append_seqs(&store, "T", 0, 0..10);
    store.shutdown().unwrap();
    std::fs::write(
        dir.path().join("queue-floors"),
        "sluice queue floors 1\n0 100 T\n",
    )
    .unwrap();
    let store = open(&cfg);
    assert_eq!(
        (store.min_offset("T", 0), store.queue_start("T", 0)),
        (10, 10)
    );
    assert_eq!(floors_file(dir.path()), "sluice queue floors 1\n0 10 T\n");
    append_seqs(&store, "T", 0, 10..12);
    assert_eq!(offsets(&store, "T", 0), vec![10, 11]);
    store.shutdown().unwrap();
    after_clean_and_unclean_restarts(dir.path(), &cfg, |store| {
        assert_eq!(offsets(store, "T", 0), vec![10, 11]);
    });
}

/// A deleted topic's floor goes once retention took everything under it and nothing came
/// after: the file does not keep a line for every topic ever deleted.
#[test]
fn the_floor_of_a_topic_never_created_again_goes_after_retention() {
    let (dir, cfg) = aged_out(Stored::Nothing);
    let store = open(&cfg);
    assert_floor(dir.path(), "T", false);
    assert_eq!(store.min_offset("T", 0), 50);
    store.shutdown().unwrap();
}

#[test]
fn retiring_a_topic_with_nothing_stored_saves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&small_config(dir.path()));
    assert_eq!(retire(&store, "Never"), 0);
    assert!(!dir.path().join("queue-floors").exists());
    assert!(tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(store.retire_queues("bad name"))
        .is_err());
    store.shutdown().unwrap();
}

/// A removed floors file is not taken for a folder without floors (the checkpoint says the
/// folder keeps one): the open refuses and says how to restore it or drop the floors on
/// purpose; with the file's header alone, the deleted topic's messages are served again.
#[test]
fn a_removed_floors_file_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let store = open(&cfg);
    append_seqs(&store, "T", 0, 0..4);
    assert_eq!(retire(&store, "T"), 1);
    store.shutdown().unwrap();
    let path = dir.path().join("queue-floors");
    std::fs::remove_file(&path).unwrap();
    let e = Store::open(cfg.clone()).map(drop).unwrap_err().to_string();
    assert!(
        e.contains("queue-floors is missing") && e.contains("Restore it"),
        "{e}"
    );
    assert!(
        !dir.path().join("abort").exists(),
        "refused before the folder is marked running: it stays cleanly stopped"
    );
    std::fs::write(&path, "sluice queue floors 1\n").unwrap();
    let store = open(&cfg);
    assert_eq!(offsets(&store, "T", 0), vec![0, 1, 2, 3]);
    store.shutdown().unwrap();
}
