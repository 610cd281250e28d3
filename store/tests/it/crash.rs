//! Crash test on the real process: a child appends under SYNC_FLUSH and is SIGKILLed at a
//! random moment, 20 times over one data folder. After each kill the store is recovered and
//! every append the child saw acknowledged must read back byte for byte, with contiguous queue
//! offsets.

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use sluice_store::{Store, StoreConfig};

const CYCLES: u64 = 20;
/// A kill's random delay starts once the child acknowledged this many appends (waited for up
/// to 30 s), so the test's floor (over 1000 in all) holds however slow the syncs are:
/// CYCLES * 51 > 1000.
const MIN_ACKS_PER_KILL: usize = 51;

struct Ack {
    phys: u64,
    queue_id: i32,
    queue_offset: u64,
}

/// Runs one child until killed; returns the acknowledged appends it printed.
fn run_child_and_kill(
    dir: &std::path::Path,
    first_seq: u64,
    after: Duration,
) -> BTreeMap<u64, Ack> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-store-crash-child"))
        .arg(dir)
        .arg(first_seq.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn crash child");
    let stdout = child.stdout.take().unwrap();
    // The kill timer starts once the child is appending: on a loaded machine its start alone
    // can take longer than the whole run.
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines.next().and_then(|l| l.ok());
    assert_eq!(ready.as_deref(), Some("READY"), "child did not start");
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let reader = std::thread::spawn(move || {
        let mut acks = BTreeMap::new();
        for line in lines.map_while(Result::ok) {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() != 5 || f[0] != "A" {
                continue; // a line cut by the kill
            }
            let parse = |i: usize| f[i].parse::<u64>().ok();
            if let (Some(seq), Some(phys), Some(q), Some(qo)) =
                (parse(1), parse(2), parse(3), parse(4))
            {
                acks.insert(
                    seq,
                    Ack {
                        phys,
                        queue_id: q as i32,
                        queue_offset: qo,
                    },
                );
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
        acks
    });
    // The random delay counts from the child's first acknowledgements (bounded wait): with
    // slow syncs on a loaded machine, a delay from READY could kill it before any.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.load(Ordering::SeqCst) < MIN_ACKS_PER_KILL && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(after);
    child.kill().expect("SIGKILL the child");
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished");
    reader.join().unwrap()
}

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut cfg = StoreConfig::for_tests(dir);
    cfg.segment_size = 1 << 20;
    cfg.max_record_size = 64 * 1024;
    cfg.max_write_batch_bytes = 256 * 1024;
    cfg.max_unflushed_bytes = 1 << 20;
    cfg
}

#[test]
fn every_acknowledged_append_survives_sigkill_with_contiguous_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x51u64);
    let mut all: BTreeMap<u64, Ack> = BTreeMap::new();
    for cycle in 0..CYCLES {
        let wait = Duration::from_millis(rng.gen_range(50..600));
        let acks = run_child_and_kill(dir.path(), cycle * 1_000_000, wait);
        all.extend(acks);
        let store = Store::open(config(dir.path())).expect("recover after SIGKILL");
        assert!(
            !store.recovery_report().clean,
            "cycle {cycle}: the kill was an unclean stop"
        );
        verify(&store, &all, cycle);
        store.shutdown().unwrap();
    }
    assert!(
        all.len() > 1000,
        "the children acknowledged too little to prove anything: {}",
        all.len()
    );
    eprintln!(
        "crash test: {CYCLES} kills, {} acknowledged appends verified",
        all.len()
    );
}

fn verify(store: &Store, acks: &BTreeMap<u64, Ack>, cycle: u64) {
    for (seq, ack) in acks {
        let rec = store
            .read_record(ack.phys)
            .unwrap_or_else(|e| panic!("cycle {cycle}: acked seq {seq} lost: {e}"));
        let v = parse(&rec);
        let want = message("C", ack.queue_id, *seq);
        assert_eq!(v.body, &want.body[..], "cycle {cycle}: seq {seq} body");
        assert_eq!(
            v.properties,
            want.properties.as_bytes(),
            "cycle {cycle}: seq {seq} properties"
        );
        assert_eq!(v.header.queue_offset as u64, ack.queue_offset);
    }
    for q in 0..4 {
        // What a consumer is served: each entry's commit-log offset and record.
        let msgs = read_queue_with(store, "C", q, |m| (m.phys_offset, m.bytes.clone()));
        for (i, (off, _)) in msgs.iter().enumerate() {
            assert_eq!(
                *off, i as u64,
                "cycle {cycle}: queue {q} offsets contiguous"
            );
        }
        for (seq, ack) in acks.iter().filter(|(_, a)| a.queue_id == q) {
            let Some((_, (phys, bytes))) = msgs.get(ack.queue_offset as usize) else {
                panic!(
                    "cycle {cycle}: acked seq {seq} at offset {} beyond the queue",
                    ack.queue_offset
                );
            };
            // The entry at the acknowledged offset serves that very append, not another one.
            assert_eq!(
                *phys, ack.phys,
                "cycle {cycle}: queue {q} entry of seq {seq}"
            );
            let v = parse(bytes);
            let want = message("C", q, *seq);
            assert_eq!(
                (v.body, v.properties),
                (&want.body[..], want.properties.as_bytes()),
                "cycle {cycle}: queue {q} serves seq {seq}"
            );
        }
    }
}
