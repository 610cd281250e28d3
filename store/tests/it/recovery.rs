//! Recovery: torn tails at every byte, zeroed tails, garbage, interior bit flips, lost derived
//! files. Each case damages a copy of a pristine data folder and reopens it.

use crate::common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use sluice_store::{MessageInput, StoreConfig, StoreError};

/// Builds a pristine folder with `n` messages in queue 0 of "T" and returns the phys offsets
/// and the position just past the last record's frame.
fn pristine(dir: &Path, n: u64) -> (StoreConfig, Vec<u64>, u64) {
    let cfg = small_config(dir);
    let store = open(&cfg);
    let mut phys: Vec<u64> = append_seqs(&store, "T", 0, 0..n - 1)
        .iter()
        .map(|a| a.1)
        .collect();
    // Keep a checkpoint taken before the last record, as a crash during that write would.
    assert!(store.wait_dispatched(Duration::from_secs(5)));
    std::thread::sleep(cfg.checkpoint_interval * 3);
    std::fs::copy(dir.join("checkpoint"), dir.join("checkpoint.before-last")).unwrap();
    // Stored in a later millisecond than that checkpoint was written.
    std::thread::sleep(Duration::from_millis(5));
    // A short last record keeps the every-byte loop quick.
    let last = store
        .append_blocking(&[MessageInput::new("T", 0, "last!")])
        .unwrap()[0];
    phys.push(last.phys_offset);
    let end = store.stats().written;
    store.shutdown().unwrap();
    (cfg, phys, end)
}

/// The state a crash while writing the last record leaves: no clean-shutdown marker, and a
/// checkpoint from before that record.
fn crash_during_last_write(d: &Path) {
    std::fs::rename(d.join("checkpoint.before-last"), d.join("checkpoint")).unwrap();
    mark_unclean(d);
}

fn reopen_copy(
    pristine: &Path,
    cfg: &StoreConfig,
    damage: impl FnOnce(&Path),
) -> (tempfile::TempDir, sluice_store::Store) {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(pristine, copy.path());
    damage(copy.path());
    let mut cfg = cfg.clone();
    cfg.data_dir = copy.path().to_path_buf();
    let store = sluice_store::Store::open(cfg).expect("recovery opens the store");
    (copy, store)
}

/// After losing the last record: every earlier record is intact, the queue agrees, and the
/// next append takes over the last record's place and queue offset.
fn assert_recovered_without_last(store: &sluice_store::Store, phys: &[u64], n: u64) {
    let last = phys[n as usize - 1];
    assert_eq!(
        store.recovery_report().end,
        last,
        "log ends at the last whole record"
    );
    assert_eq!(store.max_offset("T", 0), n - 1);
    for (seq, p) in phys.iter().take(n as usize - 1).enumerate() {
        assert_eq!(
            parse(&store.read_record(*p).unwrap()).body,
            body_for(seq as u64)
        );
    }
    assert!(store.read_record(last).is_err());
    let a = store
        .append_blocking(&[MessageInput::new("T", 0, "again")])
        .unwrap()[0];
    assert_eq!((a.phys_offset, a.queue_offset), (last, n as i64 - 1));
    let msgs = read_queue(store, "T", 0);
    assert_eq!(msgs.len() as u64, n);
    assert_eq!(msgs.last().unwrap().1, b"again");
}

#[test]
fn torn_tail_cut_at_every_byte_of_the_last_record_ends_at_the_last_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let n = 30;
    let (cfg, phys, end) = pristine(dir.path(), n);
    let last = phys[n as usize - 1];
    let pristine_seg = std::fs::read(segment_files(dir.path()).pop().unwrap()).unwrap();
    let base = segment_base(last, &cfg);
    for cut in last..end {
        let (_copy, store) = reopen_copy(dir.path(), &cfg, |d| {
            let seg = segment_files(d).pop().unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&seg)
                .unwrap()
                .set_len(cut)
                .unwrap();
            crash_during_last_write(d);
        });
        assert_recovered_without_last(&store, &phys, n);
        let torn_bytes_left = pristine_seg[(last - base) as usize..(cut - base) as usize]
            .iter()
            .any(|b| *b != 0);
        assert_eq!(
            store.recovery_report().cut_at.is_some(),
            torn_bytes_left,
            "cut at {cut}"
        );
    }
}

#[test]
fn torn_tail_with_zeroed_bytes_or_garbage_after_the_last_record_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20;
    let (cfg, phys, end) = pristine(dir.path(), n);
    let last = phys[n as usize - 1];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..40 {
        let keep = rng.gen_range(last..end);
        let garbage: Vec<u8> = (0..rng.gen_range(1..=1024)).map(|_| rng.gen()).collect();
        let (_copy, store) = reopen_copy(dir.path(), &cfg, |d| {
            let seg = segment_files(d).pop().unwrap();
            let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
            // Zero the rest of the last record, then (every other round) garbage after it.
            f.write_all_at(&vec![0u8; (end - keep) as usize], keep)
                .unwrap();
            if round % 2 == 1 {
                f.write_all_at(&garbage, keep).unwrap();
            }
            crash_during_last_write(d);
        });
        assert_recovered_without_last(&store, &phys, n);
    }
}

#[test]
fn random_garbage_after_an_intact_tail_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, phys, end) = pristine(dir.path(), 10);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..20 {
        let garbage: Vec<u8> = (0..rng.gen_range(1..=1024)).map(|_| rng.gen()).collect();
        let (_copy, store) = reopen_copy(dir.path(), &cfg, |d| {
            let seg = segment_files(d).pop().unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&seg)
                .unwrap()
                .write_all_at(&garbage, end)
                .unwrap();
            mark_unclean(d);
        });
        assert_eq!(store.recovery_report().end, end);
        assert_eq!(store.max_offset("T", 0), 10);
        let a = store
            .append_blocking(&[MessageInput::new("T", 0, "after")])
            .unwrap()[0];
        assert_eq!((a.phys_offset, a.queue_offset), (end, 10));
        assert_eq!(parse(&store.read_record(phys[9]).unwrap()).body, b"last!");
    }
}

#[test]
fn flipped_bit_in_a_sealed_segment_is_refused_and_nothing_after_it_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let store = open(&cfg);
    let acks = append_seqs(&store, "T", 0, 0..1200);
    store.shutdown().unwrap();
    drop(store);
    assert!(segment_files(dir.path()).len() >= 3);
    let victim = 40usize; // in the first, sealed segment
    flip_bit(&segment_files(dir.path())[0], acks[victim].1 + 120, 3);
    for unclean in [false, true] {
        if unclean {
            mark_unclean(dir.path());
        }
        let store = open(&cfg);
        assert!(matches!(
            store.read_record(acks[victim].1),
            Err(StoreError::Corrupt { .. })
        ));
        let msgs = read_queue(&store, "T", 0);
        assert_eq!(msgs.len(), 1199, "only the damaged record is withheld");
        assert!(msgs
            .iter()
            .all(|(off, body)| *off != victim as u64 && *body == body_for(*off)));
        assert_eq!(store.max_offset("T", 0), 1200);
        assert!(!store.health().damage.is_empty(), "damage is reported");
        store.shutdown().unwrap();
    }
}

#[test]
fn flipped_bit_in_the_active_segment_is_quarantined_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, phys, end) = pristine(dir.path(), 30);
    for scan_all in [false, true] {
        let (_copy, store) = reopen_copy(dir.path(), &cfg, |d| {
            flip_bit(
                &segment_files(d).pop().unwrap(),
                phys[10] - segment_base(phys[10], &cfg) + 100,
                0,
            );
            mark_unclean(d);
            if scan_all {
                // Without a checkpoint recovery scans every record, including the damaged one.
                std::fs::remove_file(d.join("checkpoint")).unwrap();
            }
        });
        assert_eq!(
            store.recovery_report().end,
            end,
            "nothing after the damage is cut"
        );
        if scan_all {
            assert_eq!(store.recovery_report().damaged_ranges, 1);
        }
        assert!(matches!(
            store.read_record(phys[10]),
            Err(StoreError::Corrupt { .. })
        ));
        let msgs = read_queue(&store, "T", 0);
        assert_eq!(msgs.len(), 29);
        assert!(msgs.iter().all(|(off, _)| *off != 10));
        let a = store
            .append_blocking(&[MessageInput::new("T", 0, "next")])
            .unwrap()[0];
        assert_eq!((a.phys_offset, a.queue_offset), (end, 30));
    }
}

fn segment_base(phys: u64, cfg: &StoreConfig) -> u64 {
    phys - phys % cfg.segment_size
}

#[test]
fn lost_consume_queues_index_and_checkpoint_are_rebuilt_from_the_commit_log() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, phys, _) = pristine(dir.path(), 200);
    for what in ["consumequeue", "index", "checkpoint"] {
        let (_copy, store) = reopen_copy(dir.path(), &cfg, |d| {
            let p = d.join(what);
            if p.is_dir() {
                std::fs::remove_dir_all(p).unwrap();
            } else {
                std::fs::remove_file(p).unwrap();
            }
        });
        assert_eq!(store.max_offset("T", 0), 200, "{what}");
        assert!(store.wait_dispatched(Duration::from_secs(5)));
        let msgs = read_queue(&store, "T", 0);
        assert_eq!(msgs.len(), 200, "{what}");
        let hits = store.query_by_key("T", "key-77", 4, 0, i64::MAX / 2);
        assert_eq!(hits.len(), 1, "{what}: index answers");
        assert_eq!(
            parse(&store.read_record(phys[77]).unwrap()).body,
            body_for(77)
        );
    }
}

#[test]
fn unclean_stop_without_damage_recovers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, phys, end) = pristine(dir.path(), 100);
    let (_copy, store) = reopen_copy(dir.path(), &cfg, mark_unclean);
    let r = store.recovery_report();
    assert!(!r.clean);
    assert_eq!((r.end, r.cut_at, r.damaged_ranges), (end, None, 0));
    assert_eq!(read_queue(&store, "T", 0).len(), 100);
    assert_eq!(parse(&store.read_record(phys[99]).unwrap()).body, b"last!");
}

/// The schedule bounds the previous run's wall clock by this after a crash (a clock stepped
/// back must not let it release a delayed message again unchecked): the newest record's store
/// time, not just the (older) checkpoint's.
#[test]
fn recovery_reports_the_newest_store_time_it_scanned() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, phys, _) = pristine(dir.path(), 10);
    let (_copy, store) = reopen_copy(dir.path(), &cfg, crash_during_last_write);
    let last = parse(&store.read_record(phys[9]).unwrap())
        .header
        .store_timestamp;
    assert_eq!(store.recovery_report().clock_high_water_ms, last);
}

/// Resident kilobytes of this process's mappings of `path` (`/proc/self/smaps`).
fn mapped_rss_kib(path: &Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let name = path.to_string_lossy();
    let (mut in_it, mut total) = (false, 0);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if !first.ends_with(':') {
            in_it = line.ends_with(name.as_ref());
        } else if in_it && first == "Rss:" {
            total += line
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap();
        }
    }
    total
}

#[test]
fn an_unclean_restart_leaves_queue_and_index_files_out_of_the_resident_set() {
    let dir = tempfile::tempdir().unwrap();
    // Full-size queue (6 MB) and index (84 MB) files, as a real broker has them.
    let mut cfg = StoreConfig::new(dir.path());
    cfg.segment_size = 16 << 20;
    cfg.warm_ahead_bytes = 0;
    let store = open(&cfg);
    append_seqs(&store, "T", 0, 0..100);
    assert!(store.wait_dispatched(Duration::from_secs(5)));
    store.shutdown().unwrap();
    drop(store);
    mark_unclean(dir.path());

    let store = open(&cfg);
    assert!(!store.recovery_report().clean);
    let cq = dir.path().join("consumequeue/T/0/00000000000000000000");
    let index = dir.path().join("index/00000000000000000000");
    let (cq_kib, index_kib) = (mapped_rss_kib(&cq), mapped_rss_kib(&index));
    assert_eq!(read_queue(&store, "T", 0).len(), 100);
    eprintln!("resident after the restart: queue {cq_kib} KiB, index {index_kib} KiB");
    // Recovery reads only written parts (unit tests of both) and releases what it read; the
    // index keeps its newest entries mapped. Before: the whole 6 MB queue file and 84 MB.
    assert!(cq_kib < 256, "{cq_kib} KiB of the queue file resident");
    assert!(
        index_kib < 1024,
        "{index_kib} KiB of the index file resident"
    );
    store.shutdown().unwrap();
}

/// Appends messages `0..batch` as ONE request (one sync window, so every record of it carries
/// the same watermark, below the batch's first record), then `batch..total` one by one, which
/// spreads over later segments. Returns each message's phys offset, in sequence order.
fn batch_then_singles(cfg: &StoreConfig, batch: u64, total: u64) -> Vec<u64> {
    let store = open(cfg);
    let msgs: Vec<MessageInput> = (0..batch).map(|s| message("T", 0, s)).collect();
    let mut phys: Vec<u64> = store
        .append_blocking(msgs)
        .unwrap()
        .iter()
        .map(|a| a.phys_offset)
        .collect();
    phys.extend(
        append_seqs(&store, "T", 0, batch..total)
            .iter()
            .map(|a| a.1),
    );
    store.shutdown().unwrap();
    phys
}

/// What a damaged record inside a batch must leave: that record refused, every other message
/// (in this and in later segments) served, the log end and the queue's end unchanged.
fn assert_only_victim_refused(store: &sluice_store::Store, phys: &[u64], victim: usize) {
    let total = phys.len() as u64;
    assert!(store.recovery_report().cut_at.is_none(), "nothing is cut");
    assert_eq!(store.recovery_report().damaged_ranges, 1);
    // Corrupt for a flipped bit; a zeroed head reads as "no record here".
    assert!(store.read_record(phys[victim]).is_err());
    assert_eq!(store.max_offset("T", 0), total);
    let msgs = read_queue(store, "T", 0);
    assert_eq!(
        msgs.len() as u64,
        total - 1,
        "only the damaged record is withheld"
    );
    assert!(msgs
        .iter()
        .all(|(off, body)| *off != victim as u64 && *body == body_for(*off)));
    let a = store
        .append_blocking(&[MessageInput::new("T", 0, "next")])
        .unwrap()[0];
    assert_eq!(a.queue_offset, total as i64);
}

#[test]
fn flipped_bit_in_a_record_of_one_batch_is_refused_and_later_records_and_segments_survive() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let phys = batch_then_singles(&cfg, 40, 1200);
    let segments = segment_files(dir.path()).len();
    assert!(segments >= 3);
    let victim = 10;
    let (_copy, store) = reopen_copy(dir.path(), &cfg, |d| {
        flip_bit(&segment_files(d)[0], phys[victim] + 100, 2);
        mark_unclean(d);
        // No checkpoint: the damaged record is above anything a checkpoint vouches for.
        std::fs::remove_file(d.join("checkpoint")).unwrap();
    });
    assert_eq!(
        segment_files(_copy.path()).len(),
        segments,
        "no segment deleted"
    );
    assert!(matches!(
        store.read_record(phys[victim]),
        Err(StoreError::Corrupt { .. })
    ));
    assert_only_victim_refused(&store, &phys, victim);
}

#[test]
fn zeroed_record_head_inside_a_batch_is_damage_after_a_clean_or_unclean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let phys = batch_then_singles(&cfg, 40, 1200);
    let victim = 10;
    for unclean in [false, true] {
        let (_copy, store) = reopen_copy(dir.path(), &cfg, |d| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&segment_files(d)[0])
                .unwrap()
                .write_all_at(&[0u8; 8], phys[victim])
                .unwrap();
            if unclean {
                mark_unclean(d);
            }
            std::fs::remove_file(d.join("checkpoint")).unwrap();
        });
        assert_only_victim_refused(&store, &phys, victim);
    }
}

#[test]
fn a_corrupt_index_header_is_rejected_and_the_file_rebuilt_from_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let store = open(&cfg);
    append_seqs(&store, "T", 0, 0..300);
    assert!(store.wait_dispatched(Duration::from_secs(5)));
    store.shutdown().unwrap();
    drop(store);
    // Slot count (bytes 32..36) larger than the file could hold, or an entry count (36..40)
    // beyond its entries.
    for (field, value) in [(32u64, u32::MAX), (32, 1 << 30), (36, u32::MAX)] {
        for unclean in [false, true] {
            let (_copy, store) = reopen_copy(dir.path(), &cfg, |d| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("index/00000000000000000000"))
                    .unwrap()
                    .write_all_at(&value.to_be_bytes(), field)
                    .unwrap();
                if unclean {
                    mark_unclean(d);
                }
            });
            assert!(store.wait_dispatched(Duration::from_secs(10)));
            let hits = store.query_by_key("T", "key-77", 4, 0, i64::MAX / 2);
            assert_eq!(
                hits.len(),
                1,
                "field {field} = {value:#x}, unclean {unclean}"
            );
            append_seqs(&store, "T", 0, 300..310);
            // Indexed by the dispatcher after the appends are acknowledged.
            assert!(store.wait_dispatched(Duration::from_secs(10)));
            let hits = store.query_by_key("T", "key-305", 4, 0, i64::MAX / 2);
            assert_eq!(hits.len(), 1, "new entries are indexed too");
            store.shutdown().unwrap();
        }
    }
}

/// Writes a record for queue 0 of "T" claiming `queue_offset`, with a valid trailer, at the
/// end of the log (where a torn write could leave a record forged inside a message body).
fn forge_record_at_end(data: &Path, cfg: &StoreConfig, end: u64, queue_offset: i64) {
    use sluice_protocol::message::record::{encode_record, patch_store_fields, RecordHeader};
    let header = RecordHeader {
        queue_id: 0,
        ..RecordHeader::default()
    };
    let mut rec = Vec::new();
    encode_record(&header, b"forged", "T", b"", &mut rec).unwrap();
    patch_store_fields(&mut rec, queue_offset, end as i64, 1);
    let watermark = 0u64.to_be_bytes();
    // With the folder's seal (its checksums start from that secret), so the record verifies
    // and the queue-offset checks are what refuse it.
    let seal = std::fs::read(data.join("seal")).unwrap();
    let from = u64::from_be_bytes(seal[..8].try_into().unwrap());
    let key = u32::from_be_bytes(seal[8..12].try_into().unwrap());
    let mut crc = if end >= from {
        crc32fast::Hasher::new_with_initial(key)
    } else {
        crc32fast::Hasher::new()
    };
    crc.update(&rec);
    crc.update(&watermark);
    rec.extend_from_slice(&watermark);
    rec.extend_from_slice(&crc.finalize().to_be_bytes());
    std::fs::OpenOptions::new()
        .write(true)
        .open(segment_files(data).pop().unwrap())
        .unwrap()
        .write_all_at(&rec, end - segment_base(end, cfg))
        .unwrap();
}

#[test]
fn a_record_claiming_a_negative_or_impossible_queue_offset_is_never_dispatched() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _, end) = pristine(dir.path(), 20);
    for queue_offset in [-1, i64::MIN, i64::MAX, 1 << 40] {
        for unclean in [false, true] {
            let (_copy, store) = reopen_copy(dir.path(), &cfg, |d| {
                forge_record_at_end(d, &cfg, end, queue_offset);
                if unclean {
                    mark_unclean(d);
                }
            });
            assert_eq!(store.max_offset("T", 0), 20, "queue offset {queue_offset}");
            let msgs = read_queue(&store, "T", 0);
            assert_eq!(msgs.len(), 20);
            assert!(msgs.iter().all(|(_, body)| body != b"forged"));
            store.shutdown().unwrap();
        }
    }
}

/// A damaged record skipped while the consume queue is rebuilt leaves a hole (a zero entry)
/// with valid entries after it. The queue's end was found by a binary search that assumed
/// none: a probe landing on the hole ended the queue there, and new appends took the queue
/// offsets of the records after it.
#[test]
fn a_hole_left_by_a_damaged_record_does_not_end_its_rebuilt_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, phys, _) = pristine(dir.path(), 10);
    // Queue offset 8 is where a search over a file of 1 024 entries probes last.
    let (_copy, store) = reopen_copy(dir.path(), &cfg, |d| {
        flip_bit(
            &segment_files(d).pop().unwrap(),
            phys[8] - segment_base(phys[8], &cfg) + 100,
            0,
        );
        std::fs::remove_dir_all(d.join("consumequeue")).unwrap();
    });
    assert_eq!(
        store.max_offset("T", 0),
        10,
        "the queue ends after its last record"
    );
    let msgs = read_queue(&store, "T", 0);
    assert_eq!(
        msgs.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5, 6, 7, 9],
        "only the damaged record is withheld"
    );
    let a = store
        .append_blocking(&[MessageInput::new("T", 0, "next")])
        .unwrap()[0];
    assert_eq!(a.queue_offset, 10, "no queue offset is given out twice");
}

/// A record stored under a larger `max_record_size` reads back after the limit is lowered,
/// after a clean stop and after an unclean one: it used to count as damage (never served
/// again), and the unclean open could cut it and every acknowledged record after it.
#[test]
fn records_stored_before_max_record_size_was_lowered_still_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.max_record_size = 100 * 1024;
    cfg.max_write_batch_bytes = 128 * 1024;
    let big_body = vec![b'b'; 90 * 1024];
    let (big, small) = {
        let store = open(&cfg);
        let big = store
            .append_blocking(&[sluice_store::MessageInput::new("T", 0, big_body.clone())])
            .unwrap()[0];
        let small = append_seqs(&store, "T", 0, 1..4);
        store.shutdown().unwrap();
        (big, small)
    };
    let mut lowered = cfg.clone();
    lowered.max_record_size = 16 * 1024;
    lowered.max_write_batch_bytes = 32 * 1024;
    for unclean in [false, true] {
        if unclean {
            std::fs::write(dir.path().join("abort"), b"").unwrap();
            let _ = std::fs::remove_file(dir.path().join("checkpoint"));
        }
        let store = open(&lowered);
        let rec = store
            .read_record(big.phys_offset)
            .expect("the big record reads back");
        assert_eq!(parse(&rec).body, &big_body[..]);
        for (_, phys, _) in &small {
            store.read_record(*phys).expect("later records are kept");
        }
        assert_eq!(read_queue(&store, "T", 0).len(), 4);
        assert!(store.health().damage.is_empty(), "unclean: {unclean}");
        store.shutdown().unwrap();
    }
}

/// A record accepted under a larger `max_record_size` is appended again after the limit was
/// lowered (a timer's release, a commit, a retry copy or a replay writes a stored body
/// again): the append refused it, and each of those lost the message for good. Appends take
/// records up to the ceiling that segments and writes allow; the broker holds new messages to
/// its body limit.
#[test]
fn a_record_over_a_lowered_max_record_size_is_appended_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.max_record_size = 16 * 1024;
    let body = vec![b'b'; 90 * 1024];
    let store = open(&cfg);
    let a = store
        .append_blocking(&[MessageInput::new("T", 0, body.clone())])
        .expect("under the ceiling")[0];
    assert_eq!(
        parse(&store.read_record(a.phys_offset).unwrap()).body,
        &body[..]
    );
    let over = vec![b'x'; cfg.append_ceiling()];
    match store.append_blocking(&[MessageInput::new("T", 0, over)]) {
        Err(StoreError::InvalidMessage(why)) => assert!(why.contains("exceeds the limit"), "{why}"),
        other => panic!("expected a refusal over the ceiling, got {other:?}"),
    }
    store.shutdown().unwrap();
}

/// A segment file cut short below what the checkpoint says was synced: acknowledged records
/// are gone. The open used to accept the shorter log silently and hand their offsets to new
/// records; it now refuses, naming the loss, and changes nothing.
#[test]
fn a_log_shorter_than_the_checkpoint_vouches_for_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let acks = {
        let store = open(&cfg);
        let acks = append_seqs(&store, "T", 0, 0..20);
        assert!(store.wait_dispatched(Duration::from_secs(5)));
        std::thread::sleep(cfg.checkpoint_interval * 3);
        store.shutdown().unwrap();
        acks
    };
    // The file loses its last five records (and is padded with zeros again at open).
    let base = segment_base(acks[15].1, &cfg);
    let seg = dir.path().join("commitlog").join(format!("{base:020}"));
    let cut = acks[15].1 - base;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(cut)
        .unwrap();
    for unclean in [false, true] {
        if unclean {
            mark_unclean(dir.path());
        }
        let err = sluice_store::Store::open(cfg.clone())
            .map(drop)
            .expect_err("refused");
        assert!(
            err.to_string().contains("acknowledged records are missing"),
            "{err}"
        );
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            cut,
            "nothing was changed"
        );
    }
}

/// A segment missing between two whole ones (deleted, or renamed) was refused as "a segment
/// file cut short", which sent operators to the wrong file: the refusal names the file before
/// the gap and where the next one starts.
#[test]
fn a_segment_missing_between_two_others_is_refused_naming_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    {
        let store = open(&cfg);
        let mut seq = 0;
        while segment_files(dir.path()).len() < 3 && seq < 100_000 {
            append_seqs(&store, "T", 0, seq..seq + 100);
            seq += 100;
        }
        assert!(store.wait_dispatched(Duration::from_secs(5)));
        std::thread::sleep(cfg.checkpoint_interval * 3);
        store.shutdown().unwrap();
    }
    let segments = segment_files(dir.path());
    assert!(segments.len() >= 3, "{segments:?}");
    std::fs::remove_file(&segments[1]).unwrap();
    let err = sluice_store::Store::open(cfg.clone())
        .map(drop)
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains(&segments[0].display().to_string())
            && err.contains("missing or renamed")
            && err.contains("acknowledged records are missing"),
        "{err}"
    );
}
