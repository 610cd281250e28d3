//! Index file tests: rebuilds and rejected headers.

use super::*;
use crate::io::RealIo;

#[test]
fn a_rebuild_clears_stale_entries_and_reads_only_the_written_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000000000000000000");
    let (slots, entries) = (1024, 1_000_000); // 20 MB of entries
    let ts = TIME_EPOCH_MS + 86_400_000;
    let f = IndexFile::open(&path, slots, entries, &RealIo).unwrap();
    f.make_live();
    let items: Vec<_> = (0..10u64)
        .map(|i| IndexItem::new(&index_key("T", &format!("k{i}")), 1000 + i, ts))
        .collect();
    assert_eq!(f.put_batch(&items, &RealIo).unwrap(), 10);
    // An entry far beyond the first empty one, as a torn write-back could leave; unsynced
    // header and slot table, as after a SIGKILL.
    let far = f.entry_pos(600_000);
    f.file
        .write_at(&RealIo, &[0xAA; ENTRY_LEN as usize], far)
        .unwrap();
    drop(f);

    let f = IndexFile::open(&path, slots, entries, &RealIo).unwrap();
    let examined = f.rebuild(&RealIo, u64::MAX).unwrap();
    assert!(
        examined < 2 << 20,
        "read {examined} bytes of a 20 MB entry region that holds 10 entries"
    );
    assert_eq!(f.header().count, 11, "entry 0 is unused");
    let stale = f.file.slice(far, ENTRY_LEN as usize).unwrap();
    assert!(stale.iter().all(|b| *b == 0), "the stale entry is cleared");
    for i in 0..10u64 {
        let mut out = Vec::new();
        f.lookup(&index_key("T", &format!("k{i}")), ts, ts, 4, &mut out);
        assert_eq!(out, vec![1000 + i], "key k{i} is found after the rebuild");
    }
}

#[test]
fn an_older_file_with_a_slot_count_it_cannot_hold_is_rebuilt_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (slots, entries) = (64, 8);
    let ts = TIME_EPOCH_MS + 86_400_000;
    let io: Arc<dyn StorageIo> = Arc::new(RealIo);
    let index = Index::open(dir.path(), slots, entries, Arc::clone(&io), true, u64::MAX).unwrap();
    let items: Vec<_> = (0..20u64)
        .map(|i| IndexItem::new(&index_key("T", &format!("k{i}")), 1000 + i, ts))
        .collect();
    index.put_batch(&items).unwrap();
    index.sync().unwrap();
    drop(index);
    let oldest = dir.path().join(file_name(1000));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&oldest)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &u32::MAX.to_be_bytes(), 32).unwrap();

    let index = Index::open(dir.path(), slots, entries, io, true, u64::MAX).unwrap();
    assert!(
        index.files.lock().len() >= 3,
        "the oldest file is not the newest"
    );
    for i in 0..20u64 {
        let (found, _) = index.lookup(&index_key("T", &format!("k{i}")), ts, ts, 4);
        assert_eq!(found, vec![1000 + i], "key k{i}");
    }
}

/// After an async-mode crash recovery cut the log below records the index had: their entries
/// go, so lookups never read at offsets new records take.
#[test]
fn a_rebuild_drops_entries_past_the_recovered_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000000000000000000");
    let (slots, entries) = (1024, 1000);
    let ts = TIME_EPOCH_MS + 86_400_000;
    let f = IndexFile::open(&path, slots, entries, &RealIo).unwrap();
    f.make_live();
    let items: Vec<_> = (0..10u64)
        .map(|i| IndexItem::new(&index_key("T", &format!("k{i}")), 1000 + i * 100, ts))
        .collect();
    assert_eq!(f.put_batch(&items, &RealIo).unwrap(), 10);
    drop(f);
    let f = IndexFile::open(&path, slots, entries, &RealIo).unwrap();
    f.rebuild(&RealIo, 1500).unwrap();
    assert_eq!(
        f.header().count,
        6,
        "entries for 1000..=1400, and the unused entry 0"
    );
    for i in 0..10u64 {
        let mut out = Vec::new();
        f.lookup(&index_key("T", &format!("k{i}")), ts, ts, 4, &mut out);
        let want: Vec<u64> = if i < 5 { vec![1000 + i * 100] } else { vec![] };
        assert_eq!(out, want, "key k{i}");
    }
}

/// A failed sync when a full file was sealed was retried by the dispatcher, and a retried
/// `fdatasync` may report success after the kernel dropped the pages it could not write: the
/// file was then trusted, and the checkpoint vouched for it.
#[test]
fn a_failed_seal_is_not_trusted_after_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(crate::io::FaultyIo::new());
    let index = Index::open(dir.path(), 64, 4, io.clone(), true, 0).unwrap();
    let ts = TIME_EPOCH_MS + 86_400_000;
    let items: Vec<_> = (0..8u64)
        .map(|i| IndexItem::new(&index_key("T", &format!("k{i}")), 1000 + i, ts))
        .collect();
    index.put_batch(&items[..3]).unwrap();
    index.sync().unwrap();
    io.fail_queue_syncs(true);
    assert!(
        index.put_batch(&items[3..]).is_err(),
        "the seal's sync fails"
    );
    io.fail_queue_syncs(false);
    index.put_batch(&items[3..]).unwrap(); // the dispatcher's retry goes through
    assert!(
        index.sync().is_err(),
        "the checkpoint must not vouch for the index after a failed seal"
    );
}

/// A forged record reached past damage may carry any STORETIMESTAMP: with overflow checks on
/// in release builds, `i64::MIN` panicked the dispatcher, and so every open.
#[test]
fn any_store_timestamp_maps_to_an_entry_time_without_overflow() {
    assert_eq!(super::to_entry_time(i64::MIN), 0);
    assert_eq!(super::to_entry_time(i64::MAX), i32::MAX);
}

/// A slot is shared by every key whose hash falls in it, and the walk's step budget counts
/// them all: a frequent key could use it up before an older entry of another key, and the
/// look-up answered "none", not "there may be more" (a transaction's recovery then took a
/// stored commit for a missing one).
#[test]
fn a_walk_cut_short_by_its_step_budget_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let ts = TIME_EPOCH_MS + 86_400_000;
    // One slot: every key collides.
    let index = Index::open(dir.path(), 1, 10_000, Arc::new(RealIo), true, 0).unwrap();
    index
        .put_batch(&[IndexItem::new(&index_key("T", "target"), 100, ts)])
        .unwrap();
    let hot: Vec<_> = (0..MAX_CHAIN_STEPS as u64 + 1)
        .map(|i| IndexItem::new(&index_key("T", "hot"), 1_000 + i, ts))
        .collect();
    index.put_batch(&hot).unwrap();
    let (found, truncated) = index.lookup(&index_key("T", "target"), ts, ts, 4);
    assert!(found.is_empty() && truncated, "{found:?} {truncated}");
    let (found, truncated) = index.lookup(&index_key("T", "hot"), ts, ts, 4);
    assert_eq!((found.len(), truncated), (4, false));
}
