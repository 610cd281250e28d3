//! Disk faults through the injectable storage layer: no failure is ever acknowledged, and the
//! store recovers or resumes as promised.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use sluice_store::io::FaultyIo;
use sluice_store::{MessageInput, Store, StoreError};

fn open_faulty(cfg: &sluice_store::StoreConfig) -> (Store, Arc<FaultyIo>) {
    let io = Arc::new(FaultyIo::new());
    let store = Store::open_with_io(
        cfg.clone(),
        Arc::clone(&io) as Arc<dyn sluice_store::io::StorageIo>,
    )
    .unwrap();
    (store, io)
}

#[test]
fn eio_on_sync_fails_every_waiting_append_and_fences_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (store, io) = open_faulty(&cfg);
    let acked = append_seqs(&store, "T", 0, 0..20);
    io.fail_syncs(true);
    let pending: Vec<_> = (20..60)
        .map(|s| store.append(&[message("T", 0, s)], true).unwrap())
        .collect();
    let mut failures = 0;
    for f in pending {
        match f.wait() {
            Ok(a) => panic!("append acknowledged although its sync failed: {a:?}"),
            Err(StoreError::SyncFailed(_) | StoreError::Fenced(_)) => failures += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(failures, 40);
    assert!(store.health().fenced.is_some());
    let later = store.append_blocking(&[message("T", 0, 99)]);
    assert!(
        matches!(later, Err(StoreError::Fenced(_))),
        "no silent retry after a failed sync"
    );
    drop(store);

    // Reopen on a healthy disk: everything acknowledged is there, byte for byte.
    let store = open(&cfg);
    assert!(
        !store.recovery_report().clean,
        "a fenced store does not claim a clean stop"
    );
    for (seq, phys, _) in acked {
        assert_eq!(parse(&store.read_record(phys).unwrap()).body, body_for(seq));
    }
}

/// A request staged while a sync is running waits for the flush window before it is written;
/// when that sync fails meanwhile, the request is refused unwritten, though it did not ask to
/// wait for durability (the appender checks the fence again after the wait).
#[test]
fn a_request_staged_during_a_sync_that_fails_is_neither_written_nor_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.max_record_size = 2048;
    cfg.max_write_batch_bytes = 4096;
    cfg.max_unflushed_bytes = 4096;
    let (store, io) = open_faulty(&cfg);
    io.hold_syncs(true);
    // Written at once (no wait for durability), 6 KB: its sync is handed to the flusher, held.
    let part = MessageInput::new("T", 0, bytes::Bytes::from(vec![b'a'; 1900]));
    store.append(vec![part; 3], false).unwrap().wait().unwrap();
    let written = store.stats().written;
    // Over the flush window now: this one is staged and waits for the held sync.
    let staged = store
        .append(
            vec![MessageInput::new("T", 0, bytes::Bytes::from_static(b"b"))],
            false,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    io.fail_syncs(true);
    io.hold_syncs(false);
    match staged.wait() {
        Ok(a) => panic!("acknowledged after the store was fenced: {a:?}"),
        Err(StoreError::Fenced(_)) => {}
        Err(e) => panic!("unexpected error {e}"),
    }
    assert!(store.health().fenced.is_some());
    assert_eq!(
        store.stats().written,
        written,
        "nothing written after the fence"
    );
}

#[test]
fn a_lone_append_is_synced_before_its_ack_and_refused_when_its_sync_fails() {
    // One append at a time: the appender finds nothing else queued and syncs it itself.
    let dir = tempfile::tempdir().unwrap();
    let (store, io) = open_faulty(&small_config(dir.path()));
    let before = io.sync_count();
    append_seqs(&store, "T", 0, 0..10);
    assert_eq!(
        io.sync_count() - before,
        10,
        "every lone durable append has exactly one commit-log sync of its own"
    );
    io.fail_syncs(true);
    let r = store.append_blocking(&[message("T", 0, 10)]);
    assert!(matches!(r, Err(StoreError::SyncFailed(_))), "{r:?}");
    assert!(store.health().fenced.is_some());
}

#[test]
fn enospc_when_rolling_a_segment_is_a_clean_error_and_appends_resume_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (store, io) = open_faulty(&cfg);
    io.fail_allocations(true);
    let mut acked = Vec::new();
    let mut refused = None;
    for seq in 0..2_000u64 {
        match store.append_blocking(&[message("T", 0, seq)]) {
            Ok(a) => acked.push((seq, a[0])),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert!(
        matches!(refused, Some(StoreError::DiskFull(_))),
        "{refused:?}"
    );
    // Still full: still refused, still nothing half-written.
    assert!(matches!(
        store.append_blocking(&[message("T", 0, 5000)]),
        Err(StoreError::DiskFull(_))
    ));
    assert!(
        store.health().fenced.is_none(),
        "a full disk does not fence the store"
    );
    io.fail_allocations(false);
    let next = store.append_blocking(&[message("T", 0, 9999)]).unwrap()[0];
    assert_eq!(
        next.queue_offset,
        acked.len() as i64,
        "refused appends took no queue offset"
    );
    let msgs = read_queue(&store, "T", 0);
    assert_eq!(msgs.len(), acked.len() + 1);
    for (seq, a) in &acked {
        assert_eq!(msgs[a.queue_offset as usize].1, body_for(*seq));
    }
    assert_eq!(msgs.last().unwrap().1, body_for(9999));
}

#[test]
fn appends_are_refused_above_the_disk_usage_ratio_and_resume_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (store, io) = open_faulty(&cfg);
    append_seqs(&store, "T", 0, 0..5);
    io.fake_disk_usage(Some(0.99));
    std::thread::sleep(Duration::from_millis(250)); // the appender re-reads usage every 100 ms
    let written = store.stats().written;
    let err = store.append_blocking(&[message("T", 0, 5)]).unwrap_err();
    assert!(
        matches!(&err, StoreError::DiskFull(why) if why.contains("99.0%")),
        "{err}"
    );
    assert_eq!(
        store.stats().written,
        written,
        "nothing written while refused"
    );
    io.fake_disk_usage(None);
    std::thread::sleep(Duration::from_millis(250));
    let a = store.append_blocking(&[message("T", 0, 5)]).unwrap()[0];
    assert_eq!(a.queue_offset, 5);
}

#[test]
fn torn_write_fences_and_recovery_cuts_the_torn_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (store, io) = open_faulty(&cfg);
    let acked = append_seqs(&store, "T", 0, 0..30);
    let end = store.stats().written;
    io.tear_next_write(37);
    assert!(store.append_blocking(&[message("T", 0, 30)]).is_err());
    assert!(store.health().fenced.is_some());
    drop(store);

    let store = open(&cfg);
    assert_eq!(store.recovery_report().end, end);
    assert_eq!(store.recovery_report().cut_at, Some(end));
    for (seq, phys, _) in &acked {
        assert_eq!(
            parse(&store.read_record(*phys).unwrap()).body,
            body_for(*seq)
        );
    }
    let a = store
        .append_blocking(&[MessageInput::new("T", 0, "after")])
        .unwrap()[0];
    assert_eq!((a.phys_offset, a.queue_offset), (end, 30));
}

/// As `common::append_seqs` for queue T/0, in requests of 100 instead of one sync per message
/// (a request never spans the test config's small segments).
fn append_in_hundreds(store: &Store, seqs: std::ops::Range<u64>) {
    let all: Vec<u64> = seqs.collect();
    for chunk in all.chunks(100) {
        let batch: Vec<MessageInput> = chunk.iter().map(|s| message("T", 0, *s)).collect();
        store.append_blocking(batch).unwrap();
    }
}

/// Fills queue T/0 to 10 entries short of its first file's end (all dispatched), then makes
/// the next queue file's space fail and appends 30 more: a run that crosses into that file.
fn run_into_a_full_queue_file(store: &Store, io: &FaultyIo, per_file: u64) {
    append_in_hundreds(store, 0..per_file - 10);
    assert!(store.wait_dispatched(Duration::from_secs(10)));
    assert_eq!(store.max_offset("T", 0), per_file - 10);
    io.fail_queue_zeros(true);
    append_in_hundreds(store, per_file - 10..per_file + 20);
}

#[test]
fn a_full_disk_at_a_new_queue_file_holds_its_entries_back_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (store, io) = open_faulty(&cfg);
    let per_file = cfg.cq_entries_per_file;
    // The appends are still acknowledged (the commit log has room), and the queue holds them
    // back instead of writing into a hole.
    run_into_a_full_queue_file(&store, &io, per_file);
    assert!(!store.wait_dispatched(Duration::from_millis(500)));
    assert_eq!(
        store.max_offset("T", 0),
        per_file - 10,
        "nothing of the run is published while part of it could not be written"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.dispatch_failing().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        store.dispatch_failing().is_some(),
        "the store says its dispatch keeps failing (readiness shows it)"
    );

    io.fail_queue_zeros(false);
    assert!(store.wait_dispatched(Duration::from_secs(10)));
    assert_eq!(
        store.dispatch_failing(),
        None,
        "cleared once dispatch succeeds"
    );
    let msgs = read_queue(&store, "T", 0);
    assert_eq!(msgs.len() as u64, per_file + 20);
    for (i, (offset, body)) in msgs.iter().enumerate() {
        assert_eq!((*offset, body), (i as u64, &body_for(i as u64)));
    }
    store.shutdown().unwrap();
}

#[test]
fn shutdown_while_dispatching_keeps_failing_stops_cleanly_and_the_next_open_dispatches_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (store, io) = open_faulty(&cfg);
    let per_file = cfg.cq_entries_per_file;
    // The next queue file never gets its space during this run.
    run_into_a_full_queue_file(&store, &io, per_file);
    assert!(!store.wait_dispatched(Duration::from_millis(300)));

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(store.shutdown().map_err(|e| e.to_string()));
    });
    // Generous: a shutdown takes milliseconds; before the fix it never returned.
    let result = done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("shutdown returns although the last dispatch keeps failing");
    result.unwrap();

    let store = open(&cfg);
    assert!(store.recovery_report().clean, "the stop was clean");
    let msgs = read_queue(&store, "T", 0);
    assert_eq!(msgs.len() as u64, per_file + 20);
    for (i, (offset, body)) in msgs.iter().enumerate() {
        assert_eq!((*offset, body), (i as u64, &body_for(i as u64)));
    }
    store.shutdown().unwrap();
}

/// A failed consume-queue or index sync was retried at the next checkpoint, which the kernel
/// may report as a success after dropping the pages it could not write, and the checkpoint
/// then vouched for entries that might not be on the disk; a stop after it was called clean.
/// Now checkpoints hold `dispatched` where the last good sync left it for the rest of the run
/// and the next open re-dispatches from there.
#[test]
fn a_failed_queue_sync_holds_the_checkpoint_and_the_next_open_re_dispatches() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (store, io) = open_faulty(&cfg);
    append_seqs(&store, "T", 0, 0..10);
    assert!(store.wait_dispatched(Duration::from_secs(10)));
    io.fail_queue_syncs(true);
    let during = append_seqs(&store, "T", 0, 10..20);
    assert!(store.wait_dispatched(Duration::from_secs(10)));
    // A checkpoint (every 200 ms here) meets the failure.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while io.queue_sync_failures() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        io.queue_sync_failures() > 0,
        "a checkpoint synced the queue"
    );
    io.fail_queue_syncs(false); // later syncs would succeed: the run must not trust them
    let after = append_seqs(&store, "T", 0, 20..25);
    // Checkpoints go on recording the log's progress, with `dispatched` held below the
    // entries the failed sync may have lost.
    let last_phys = after.last().unwrap().1;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let cp = loop {
        let cp = sluice_store::Checkpoint::load(&cfg.data_dir.join("checkpoint"))
            .unwrap()
            .unwrap();
        if cp.flushed > last_phys || std::time::Instant::now() > deadline {
            break cp;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(cp.flushed > last_phys, "checkpoints went on: {cp:?}");
    assert!(store.health().queues_unsynced, "operators can see it");
    assert!(cp.dispatched <= during[0].1, "dispatched held: {cp:?}");
    store.shutdown().unwrap();
    assert!(
        store.health().fenced.is_none(),
        "appends were never refused for it"
    );
    drop(store);

    let store = open(&cfg);
    assert!(
        !store.recovery_report().clean,
        "a stop after a failed queue sync is recovered as unclean"
    );
    let msgs = read_queue(&store, "T", 0);
    assert_eq!(msgs.len(), 25);
    for (i, (offset, body)) in msgs.iter().enumerate() {
        assert_eq!((*offset, body), (i as u64, &body_for(i as u64)));
    }
}

/// Fills the first segment until the roll to a second one fails (disk full), so the only
/// segment on disk ends in an end marker; returns how many appends were acknowledged.
fn fill_until_the_roll_fails(store: &Store, io: &FaultyIo) -> u64 {
    store.append_blocking(&[message("T", 0, 0)]).unwrap();
    io.fail_allocations(true);
    let mut acked = 1u64;
    while store.append_blocking(&[message("T", 0, acked)]).is_ok() {
        acked += 1;
        assert!(acked < 10_000, "the segment never filled");
    }
    acked
}

/// The disk filled at a roll, so the last segment on disk ends in an end marker; the store
/// stopped cleanly and is opened with a larger `segment_size`. The open used to grow that
/// last file first, so its marker no longer matched the file's length: a later scan across it
/// (an unclean stop without a checkpoint) recorded the marker as damage. Now the sealed file
/// keeps its length and the next append starts a segment of the new size.
#[test]
fn a_store_whose_last_segment_was_sealed_opens_with_a_larger_segment_size() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (store, io) = open_faulty(&cfg);
    let acked = fill_until_the_roll_fails(&store, &io);
    assert!(acked > 1);
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "the roll left no second file"
    );
    store.shutdown().unwrap();
    drop(store);
    let sealed_len = std::fs::metadata(&segment_files(dir.path())[0])
        .unwrap()
        .len();
    let mut bigger = cfg.clone();
    bigger.segment_size = cfg.segment_size * 2;
    let store = open(&bigger);
    let msgs = read_queue(&store, "T", 0);
    assert_eq!(msgs.len() as u64, acked);
    let next = store.append_blocking(&[message("T", 0, acked)]).unwrap()[0];
    assert_eq!(next.queue_offset, acked as i64);
    store.shutdown().unwrap();
    drop(store);
    let files = segment_files(dir.path());
    assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), sealed_len);
    assert_eq!(
        std::fs::metadata(&files[1]).unwrap().len(),
        bigger.segment_size
    );
    // A full scan (an unclean stop without a checkpoint) reads across the end marker.
    mark_unclean(dir.path());
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let store = open(&bigger);
    assert!(
        store.health().damage.is_empty(),
        "{:?}",
        store.health().damage
    );
    assert_eq!(read_queue(&store, "T", 0).len() as u64, acked + 1);
    store.shutdown().unwrap();
}

/// The same sealed last segment, after a stop whose checkpoint held `dispatched` below the
/// marker (a queue sync failed): the open rescans from there, across the marker. With the
/// file grown first that scan found no valid marker and refused the open, saying
/// acknowledged records were missing.
#[test]
fn a_sealed_last_segment_rescanned_under_a_larger_segment_size_opens() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (store, io) = open_faulty(&cfg);
    io.fail_queue_syncs(true);
    let acked = fill_until_the_roll_fails(&store, &io);
    store.shutdown().unwrap();
    drop(store);
    let mut bigger = cfg.clone();
    bigger.segment_size = cfg.segment_size * 2;
    let store = open(&bigger);
    assert!(
        store.health().damage.is_empty(),
        "{:?}",
        store.health().damage
    );
    assert_eq!(read_queue(&store, "T", 0).len() as u64, acked);
    store.shutdown().unwrap();
}

/// A producer sends a message whose body holds a whole forged record (with a trailer, a
/// watermark beyond the message's own offset, and the offset the forged record would land
/// at), and the write of that message is torn. Recovery's search past the torn bytes used to
/// find the forged record: its watermark made the torn tail count as interior damage (kept,
/// not cut) and the forged record was dispatched into the queue it named, over an
/// acknowledged message. Trailer checksums start from the folder's secret now, which no
/// producer can know: the forged record does not verify and the torn tail is cut.
#[test]
fn a_record_forged_inside_a_torn_message_body_is_not_taken_for_a_real_one() {
    use sluice_protocol::message::record::{encode_record, patch_store_fields, RecordHeader};
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (store, io) = open_faulty(&cfg);
    let acked = append_seqs(&store, "V", 0, 0..5);
    let first = store.read_record(acked[0].1).unwrap();
    let body = body_for(0);
    let body_at = first
        .windows(body.len())
        .position(|w| w == body.as_slice())
        .expect("the body is in the record") as u64;
    let p = store.stats().written;
    let q = p + body_at;
    let mut forged = Vec::new();
    encode_record(&RecordHeader::default(), b"forged", "V", b"", &mut forged).unwrap();
    patch_store_fields(&mut forged, 0, q as i64, 1);
    let watermark = q.to_be_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&forged);
    crc.update(&watermark);
    let mut evil = forged.clone();
    evil.extend_from_slice(&watermark);
    evil.extend_from_slice(&crc.finalize().to_be_bytes());
    let keep = body_at + evil.len() as u64 + 16;
    evil.extend_from_slice(&[0u8; 64]);
    io.tear_next_write(keep);
    assert!(store
        .append_blocking(&[MessageInput::new("V", 0, evil)])
        .is_err());
    drop(store);

    let store = open(&cfg);
    assert_eq!(store.recovery_report().cut_at, Some(p));
    assert!(
        store.health().damage.is_empty(),
        "{:?}",
        store.health().damage
    );
    let msgs = read_queue(&store, "V", 0);
    let bodies: Vec<Vec<u8>> = msgs.into_iter().map(|(_, b)| b).collect();
    let expected: Vec<Vec<u8>> = (0..5).map(body_for).collect();
    assert_eq!(bodies, expected);
    store.shutdown().unwrap();
}

/// A folder whose `seal` file was lost (a copy that left it behind) is refused while its
/// checkpoint says it was sealed: making a new seal would leave every record written since
/// unverifiable for good. With the file back, the folder opens with everything in it.
#[test]
fn a_folder_that_lost_its_seal_file_is_refused_until_it_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, acked) = ten_records_stopped(dir.path());
    let seal = dir.path().join("seal");
    let saved = std::fs::read(&seal).unwrap();
    std::fs::remove_file(&seal).unwrap();
    for unclean in [false, true] {
        if unclean {
            mark_unclean(dir.path());
        }
        let err = sluice_store::Store::open(cfg.clone())
            .map(drop)
            .expect_err("refused");
        assert!(err.to_string().contains("Restore the `seal` file"), "{err}");
        assert!(!seal.exists(), "no new seal was made");
    }
    std::fs::write(&seal, &saved).unwrap();
    let store = open(&cfg);
    assert!(store.health().damage.is_empty());
    assert_eq!(read_queue(&store, "T", 0).len(), acked.len());
    store.shutdown().unwrap();
}

/// With the checkpoint gone too, nothing said the log was sealed: every record failed its
/// checksum, and the whole log was cut as a "torn tail" (zeroed, later segments deleted),
/// after a clean stop as after a crash. Whole records that fail only their checksum are
/// refused as a seal problem now, and a seal from another folder likewise.
#[test]
fn a_folder_that_lost_its_seal_and_checkpoint_is_refused_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, acked) = ten_records_stopped(dir.path());
    let other = tempfile::tempdir().unwrap();
    let other_cfg = small_config(other.path());
    drop(open(&other_cfg));
    let seal = dir.path().join("seal");
    let saved = std::fs::read(&seal).unwrap();
    let log_bytes = || dir_bytes(&dir.path().join("commitlog"));
    let before = log_bytes();
    let checkpoint = dir.path().join("checkpoint");
    let saved_checkpoint = std::fs::read(&checkpoint).unwrap();
    // A foreign seal is refused with the checkpoint there, too (the scan then starts past
    // every older record, which was later read as damage).
    for (unclean, foreign, keep_checkpoint) in [
        (false, true, true),
        (false, false, false),
        (true, false, false),
        (true, true, false),
    ] {
        if unclean {
            mark_unclean(dir.path());
        }
        if foreign {
            std::fs::copy(other.path().join("seal"), &seal).unwrap();
        } else if seal.exists() {
            std::fs::remove_file(&seal).unwrap();
        }
        if keep_checkpoint {
            std::fs::write(&checkpoint, &saved_checkpoint).unwrap();
        } else if checkpoint.exists() {
            std::fs::remove_file(&checkpoint).unwrap();
        }
        let err = sluice_store::Store::open(cfg.clone())
            .map(drop)
            .expect_err("refused");
        assert!(err.to_string().contains("seal"), "{err}");
        assert_eq!(log_bytes(), before, "nothing of the log changed");
    }
    std::fs::write(&seal, &saved).unwrap();
    let store = open(&cfg);
    assert!(store.health().damage.is_empty());
    assert_eq!(read_queue(&store, "T", 0).len(), acked.len());
    store.shutdown().unwrap();
}

/// A store in `dir` holding ten records of queue T/0, stopped cleanly: its config and acks.
fn ten_records_stopped(dir: &std::path::Path) -> (sluice_store::StoreConfig, Vec<(u64, u64, i64)>) {
    let cfg = small_config(dir);
    let store = open(&cfg);
    let acked = append_seqs(&store, "T", 0, 0..10);
    store.shutdown().unwrap();
    (cfg, acked)
}

/// Every file under `dir` with its bytes, by name.
fn dir_bytes(dir: &std::path::Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// At open, re-dispatching onto a disk that is still full failed the open, so the broker could
/// not start (and the cleaner that frees space runs only once the store is open). The store
/// now opens, holds the entries it cannot write back, hands out no queue offset twice, and
/// the dispatcher writes them once space returns.
#[test]
fn a_store_opens_on_a_still_full_disk_and_dispatches_the_rest_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (store, io) = open_faulty(&cfg);
    let per_file = cfg.cq_entries_per_file;
    run_into_a_full_queue_file(&store, &io, per_file);
    store.shutdown().unwrap();
    drop(store);

    let store = Store::open_with_io(
        cfg.clone(),
        Arc::clone(&io) as Arc<dyn sluice_store::io::StorageIo>,
    )
    .expect("a still-full disk does not keep the store from opening");
    // Written up to the queue file that has no space; the rest held back, not published.
    let visible = store.max_offset("T", 0);
    assert!(
        (per_file - 10..=per_file).contains(&visible),
        "{visible} of {} visible",
        per_file + 20
    );
    // A new append takes the next offset after the held-back ones, not one of theirs.
    let next = store
        .append_blocking(&[message("T", 0, per_file + 20)])
        .unwrap()[0];
    assert_eq!(next.queue_offset, (per_file + 20) as i64);
    io.fail_queue_zeros(false);
    assert!(store.wait_dispatched(Duration::from_secs(10)));
    let msgs = read_queue(&store, "T", 0);
    assert_eq!(msgs.len() as u64, per_file + 21);
    for (i, (offset, body)) in msgs.iter().enumerate() {
        assert_eq!((*offset, body), (i as u64, &body_for(i as u64)));
    }
    store.shutdown().unwrap();
}

/// A re-dispatch at open that stops part way (a full disk) left the queue entries found on
/// disk past that point published, holes and stale ones included, and the dispatcher never
/// rewrites a published entry: a message whose entry a power cut lost was stepped over for
/// good. The entries past that point are checked against their records now: published up to
/// the first that does not match, and the dispatcher writes the rest once it can.
#[test]
fn entries_past_a_stopped_re_dispatch_are_written_again_not_trusted() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (store, io) = open_faulty(&cfg);
    let per_file = cfg.cq_entries_per_file;
    // V's record first: the re-dispatch stops there, before it rewrites any of T's entries.
    store.append_blocking(vec![message("V", 0, 0)]).unwrap();
    append_in_hundreds(&store, 0..per_file + 20);
    assert!(store.wait_dispatched(Duration::from_secs(10)));
    store.shutdown().unwrap();
    drop(store);

    // As a power cut could leave it: no checkpoint (the whole log is dispatched again), V's
    // queue file never written, and one of T's later entries lost.
    let data = dir.path();
    std::fs::remove_file(data.join("checkpoint")).unwrap();
    std::fs::remove_dir_all(data.join("consumequeue/V")).unwrap();
    let second = data.join(format!("consumequeue/T/0/{:020}", per_file * 20));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&second)
        .unwrap();
    f.write_all_at(&[0; 20], 10 * 20).unwrap();
    f.sync_all().unwrap();
    drop(f);

    // V's new queue file cannot get its space: the re-dispatch stops at V's record, the
    // log's first.
    io.fail_queue_zeros(true);
    let store = Store::open_with_io(
        cfg.clone(),
        Arc::clone(&io) as Arc<dyn sluice_store::io::StorageIo>,
    )
    .expect("opens on a full disk");
    assert_eq!(
        store.max_offset("T", 0),
        per_file + 10,
        "the entries found on disk that match their records stay published (consumers past \
         them are not sent back), up to the lost one"
    );
    io.fail_queue_zeros(false);
    assert!(store.wait_dispatched(Duration::from_secs(10)));
    let msgs = read_queue(&store, "T", 0);
    assert_eq!(msgs.len() as u64, per_file + 20, "none stepped over");
    for (i, (offset, body)) in msgs.iter().enumerate() {
        assert_eq!((*offset, body), (i as u64, &body_for(i as u64)));
    }
    assert_eq!(read_queue(&store, "V", 0).len(), 1);
    store.shutdown().unwrap();
}

/// A consume-queue or index file cut short (or emptied while newer files follow it) was
/// extended at open as if new: its entries were lost without a word, and the queue's offsets
/// were handed out again to new messages. The open is refused, naming the file and the
/// folder to remove; without it, everything is rebuilt from the commit log.
#[test]
fn a_truncated_queue_or_index_file_is_refused_and_its_folder_rebuilt_when_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let per_file = cfg.cq_entries_per_file;
    let store = open(&cfg);
    let acked = append_seqs(&store, "T", 0, 0..per_file + 10);
    store.shutdown().unwrap();
    drop(store);
    let queue_dir = dir.path().join("consumequeue").join("T").join("0");
    let first = queue_dir.join("00000000000000000000");
    let index = std::fs::read_dir(dir.path().join("index"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .expect("an index file");
    for (file, len) in [(&first, 600), (&first, 0), (&index, 1000)] {
        let saved = std::fs::read(file).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .unwrap()
            .set_len(len)
            .unwrap();
        let err = sluice_store::Store::open(cfg.clone())
            .map(drop)
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains(&file.display().to_string()) && text.contains("Remove the"),
            "{text}"
        );
        std::fs::write(file, saved).unwrap();
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap()
        .set_len(600)
        .unwrap();
    std::fs::remove_dir_all(dir.path().join("consumequeue")).unwrap();
    let store = open(&cfg);
    assert_eq!(
        read_queue(&store, "T", 0).len(),
        acked.len(),
        "rebuilt whole"
    );
    store.shutdown().unwrap();
}
