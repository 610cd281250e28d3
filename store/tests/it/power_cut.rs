//! Power loss, simulated. A SIGKILL leaves the page cache alone, so it never loses a write the
//! store made; a power cut loses every write not yet synced, page by page, in any combination,
//! and may tear a page at a sector. Here a recording storage layer keeps, for every commit-log
//! write not yet covered by a sync, the bytes it overwrote. At a random moment it holds every
//! write and sync back, the data folder is copied, and in the copy each page such writes
//! touched is kept, lost (its earlier bytes put back) or torn (lost from a sector on).
//! Consume-queue, index and checkpoint files are copied as they were: written through maps,
//! they may name records the cut took away, which recovery must then never serve.
//!
//! The copy is opened (recovery) and must hold every append acknowledged before the cut, byte
//! for byte, at its commit-log offset and at its queue offset, with each queue contiguous and
//! every entry a whole message; no damage may be reported (a lost unsynced write is not
//! damage). Appends then go on in the copy until the next cut, several times over.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use sluice_protocol::Properties;
use sluice_store::io::{DiskUsage, RealIo, StorageIo};
use sluice_store::{Store, StoreConfig};

const TOPIC: &str = "P";
/// Threads that wait for durable acknowledgements, one queue each.
const DURABLE_WRITERS: i32 = 3;
/// Queue of the writer that does not wait for the sync (its appends widen the unsynced
/// window; they may be lost, but never served damaged).
const EAGER_QUEUE: i32 = DURABLE_WRITERS;
const CUTS: usize = 6;
/// A cut's random delay starts once this many durable appends of its round were acknowledged
/// (waited for up to 30 s), so the test's floor of acknowledged appends (over 100 in all) holds
/// however slow the syncs are: CUTS * 17 > 100.
const MIN_ACKS_PER_CUT: usize = 17;
const SECTOR: u64 = 512;
const PAGE: u64 = 4096;

/// A commit-log write not yet covered by a sync.
struct Unsynced {
    seq: u64,
    path: PathBuf,
    offset: u64,
    /// What the range held before the write (a lost page gets these bytes back).
    before: Vec<u8>,
}

#[derive(Debug, Default)]
struct PowerCutIo {
    real: RealIo,
    /// Held shared by every write and sync, exclusively while the folder is copied.
    gate: RwLock<()>,
    writes: Mutex<Vec<Unsynced>>,
    next_seq: AtomicU64,
}

impl std::fmt::Debug for Unsynced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}@{}+{}", self.path, self.offset, self.before.len())
    }
}

fn commit_log_path(file: &File) -> Option<PathBuf> {
    let p = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    let in_log = p
        .parent()
        .and_then(|d| d.file_name())
        .is_some_and(|n| n == "commitlog");
    in_log.then_some(p)
}

impl StorageIo for PowerCutIo {
    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        let _open = self.gate.read().unwrap();
        self.real.allocate(file, len)
    }

    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        let _open = self.gate.read().unwrap();
        if let Some(path) = commit_log_path(file) {
            let mut before = vec![0u8; buf.len()];
            let n = file.read_at(&mut before, offset)?;
            before.truncate(n); // past the end of the file there was nothing
            self.real.write_at(file, buf, offset)?;
            let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
            self.writes.lock().unwrap().push(Unsynced {
                seq,
                path,
                offset,
                before,
            });
            return Ok(());
        }
        self.real.write_at(file, buf, offset)
    }

    fn sync(&self, file: &File) -> io::Result<()> {
        let _open = self.gate.read().unwrap();
        // Only writes finished before the sync began are surely covered by it.
        let covered = self.next_seq.load(Ordering::SeqCst);
        self.real.sync(file)?;
        if let Some(path) = commit_log_path(file) {
            self.writes
                .lock()
                .unwrap()
                .retain(|w| w.path != path || w.seq >= covered);
        }
        Ok(())
    }

    fn disk_usage(&self, dir: &Path) -> io::Result<DiskUsage> {
        self.real.disk_usage(dir)
    }

    fn write_zeros_ahead(&self, file: &File, zeros: &[u8], offset: u64) -> io::Result<()> {
        let _open = self.gate.read().unwrap();
        self.real.write_zeros_ahead(file, zeros, offset)
    }

    fn write_back(&self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        let _open = self.gate.read().unwrap();
        self.real.write_back(file, offset, len)
    }
}

/// An acknowledged append: what must survive.
#[derive(Debug, Clone, Copy)]
struct Ack {
    seq: u64,
    queue_id: i32,
    queue_offset: i64,
    phys: u64,
}

fn config(dir: &Path) -> StoreConfig {
    let mut cfg = small_config(dir);
    cfg.checkpoint_interval = Duration::from_millis(20);
    cfg
}

/// What became of one page at the cut.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Kept,
    Lost,
    /// Written up to this many sectors, lost from there.
    Torn(u64),
}

/// Puts the copy in the state a power cut could leave: each page an unsynced write touched is
/// kept, lost or torn; a lost byte gets back what it held before the writes (undone newest
/// first, so overlapping writes end at the oldest earlier content).
fn apply_cut(writes: &[Unsynced], from: &Path, to: &Path, rng: &mut impl Rng) -> (usize, usize) {
    let mut fates: HashMap<(PathBuf, u64), Fate> = HashMap::new();
    let (mut lost, mut torn) = (0, 0);
    for w in writes.iter().rev() {
        let path = to.join(w.path.strip_prefix(from).expect("inside the folder"));
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let end = w.offset + w.before.len() as u64;
        let mut page = w.offset / PAGE * PAGE;
        while page < end {
            let fate =
                *fates
                    .entry((path.clone(), page))
                    .or_insert_with(|| match rng.gen_range(0..10) {
                        0..=3 => Fate::Kept,
                        4..=7 => {
                            lost += 1;
                            Fate::Lost
                        }
                        _ => {
                            torn += 1;
                            Fate::Torn(rng.gen_range(1..PAGE / SECTOR))
                        }
                    });
            let undo_from = match fate {
                Fate::Kept => None,
                Fate::Lost => Some(page),
                Fate::Torn(sectors) => Some(page + sectors * SECTOR),
            };
            if let Some(undo_from) = undo_from {
                let a = undo_from.max(w.offset);
                let b = (page + PAGE).min(end);
                if a < b {
                    let rel = (a - w.offset) as usize..(b - w.offset) as usize;
                    file.write_all_at(&w.before[rel], a).unwrap();
                }
            }
            page += PAGE;
        }
    }
    (lost, torn)
}

/// Runs the writers until the cut, copies the folder to `to` in the cut's state and returns
/// the appends acknowledged before it.
fn run_until_cut(
    store: &Arc<Store>,
    io: &Arc<PowerCutIo>,
    from: &Path,
    to: &Path,
    next_seq: &Arc<AtomicU64>,
    rng: &mut impl Rng,
) -> Vec<Ack> {
    let cut = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for queue_id in 0..=EAGER_QUEUE {
        let (store, cut, stop, next_seq, acks) = (
            Arc::clone(store),
            Arc::clone(&cut),
            Arc::clone(&stop),
            Arc::clone(next_seq),
            Arc::clone(&acks),
        );
        writers.push(std::thread::spawn(move || {
            let durable = queue_id != EAGER_QUEUE;
            let mut acked = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            for round in 0..20_000u64 {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let n = if round % 5 == 0 { 4 } else { 1 };
                let first = next_seq.fetch_add(n, Ordering::SeqCst);
                let batch: Vec<_> = (first..first + n)
                    .map(|s| message(TOPIC, queue_id, s))
                    .collect();
                let Ok(pending) = store.append(batch, durable) else {
                    break;
                };
                let Ok(done) = pending.wait() else { break };
                // Seen before the cut began: its sync finished before the folder was copied.
                if durable && !cut.load(Ordering::SeqCst) {
                    for (i, a) in done.iter().enumerate() {
                        acked.push(Ack {
                            seq: first + i as u64,
                            queue_id,
                            queue_offset: a.queue_offset,
                            phys: a.phys_offset,
                        });
                    }
                    acks.fetch_add(done.len(), Ordering::SeqCst);
                }
            }
            acked
        }));
    }
    // The random delay counts from the round's first acknowledgements (bounded wait): with
    // slow syncs on a loaded machine, a delay from the start could cut before any.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acks.load(Ordering::SeqCst) < MIN_ACKS_PER_CUT && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(rng.gen_range(30..300)));
    cut.store(true, Ordering::SeqCst);
    // Cut while some write is unsynced when that happens within a bounded wait (a sync
    // follows each write within microseconds, so a cut at a random instant mostly finds none).
    let unsynced = (0..2_000)
        .find_map(|attempt| {
            let _held = io.gate.write().unwrap();
            if io.writes.lock().unwrap().is_empty() && attempt < 1_999 {
                drop(_held);
                std::thread::sleep(Duration::from_micros(200));
                return None;
            }
            copy_dir(from, to);
            Some(std::mem::take(&mut *io.writes.lock().unwrap()))
        })
        .expect("the last attempt cuts");
    stop.store(true, Ordering::SeqCst);
    let acked: Vec<Ack> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    let _ = std::fs::remove_file(to.join("lock"));
    let (lost, torn) = apply_cut(&unsynced, from, to, rng);
    eprintln!(
        "cut: {} acknowledged, {} unsynced writes, {lost} pages lost, {torn} torn",
        acked.len(),
        unsynced.len()
    );
    acked
}

/// Every entry of a queue, from its minimum offset, as (queue offset, seq, body), the seq
/// read from the record's `UNIQ_KEY` (`U<seq, 30 digits>`, see `message`).
fn read_entries(store: &Store, queue_id: i32) -> Vec<(u64, Option<u64>, Vec<u8>)> {
    read_queue_with(store, TOPIC, queue_id, |m| {
        let view = parse(&m.bytes);
        (seq_of(view.properties), view.body.to_vec())
    })
    .into_iter()
    .map(|(off, (seq, body))| (off, seq, body))
    .collect()
}

/// The seq a record's properties name in `UNIQ_KEY`.
fn seq_of(properties: &[u8]) -> Option<u64> {
    Properties::decode(properties)
        .get("UNIQ_KEY")?
        .strip_prefix('U')?
        .parse()
        .ok()
}

/// Everything acknowledged is there, at its offsets; queues are contiguous and whole.
fn verify(store: &Store, acked: &BTreeMap<u64, Ack>) {
    let health = store.health();
    assert!(health.fenced.is_none(), "{:?}", health.fenced);
    assert!(
        health.damage.is_empty(),
        "a lost unsynced write was taken for damage: {:?}",
        health.damage
    );
    let mut by_queue: BTreeMap<i32, BTreeMap<u64, u64>> = BTreeMap::new();
    for a in acked.values() {
        let record = store
            .read_record(a.phys)
            .unwrap_or_else(|e| panic!("acknowledged message {} at {}: {e}", a.seq, a.phys));
        assert_eq!(parse(&record).body, body_for(a.seq).as_slice());
        by_queue
            .entry(a.queue_id)
            .or_default()
            .insert(a.queue_offset as u64, a.seq);
    }
    for queue_id in 0..=EAGER_QUEUE {
        let entries = read_entries(store, queue_id);
        let first = store.min_offset(TOPIC, queue_id);
        let mut served = BTreeMap::new();
        for (expect_offset, (offset, seq, body)) in (first..).zip(entries) {
            assert_eq!(offset, expect_offset, "queue {queue_id} has a gap");
            let seq = seq.unwrap_or_else(|| {
                panic!("queue {queue_id} offset {offset} serves a record that is not a message")
            });
            assert_eq!(body, body_for(seq), "queue {queue_id} offset {offset}");
            served.insert(offset, seq);
        }
        for (offset, seq) in by_queue.get(&queue_id).into_iter().flatten() {
            assert_eq!(
                served.get(offset),
                Some(seq),
                "acknowledged message {seq} missing at queue {queue_id} offset {offset}"
            );
        }
    }
}

#[test]
fn every_acknowledged_append_survives_power_cuts_that_lose_unsynced_pages() {
    let root = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xC0FFEE);
    let next_seq = Arc::new(AtomicU64::new(0));
    let mut acked: BTreeMap<u64, Ack> = BTreeMap::new();
    let mut dir = root.path().join("cut-0");
    for cut in 1..=CUTS {
        let io = Arc::new(PowerCutIo::default());
        let store = Arc::new(
            Store::open_with_io(config(&dir), Arc::clone(&io) as Arc<dyn StorageIo>)
                .unwrap_or_else(|e| panic!("open after cut {}: {e}", cut - 1)),
        );
        if cut > 1 {
            assert!(!store.recovery_report().clean, "a cut is an unclean stop");
            verify(&store, &acked);
        }
        let next = root.path().join(format!("cut-{cut}"));
        for a in run_until_cut(&store, &io, &dir, &next, &next_seq, &mut rng) {
            acked.insert(a.seq, a);
        }
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
        dir = next;
    }
    let store = Store::open(config(&dir)).expect("open after the last cut");
    verify(&store, &acked);
    assert!(acked.len() > 100, "the cuts came after real traffic");
}
