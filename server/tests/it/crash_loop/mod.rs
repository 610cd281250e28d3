//! Issue #11's crash loop: the real `sluice` binary under mixed load (sync sends over RocketMQ
//! and HTTP, HTTP transactions with check-back, delayed messages with cancels, a RocketMQ pull
//! consumer and HTTP lease consumers) is SIGKILLed at random moments and restarted on the same
//! data folder and ports. A final clean phase drains everything; then a checker proves from
//! the recorded history alone that no promise was broken (see `checker.rs` and
//! docs/DURABILITY.md).
//!
//! `SLUICE_CRASH_CYCLES` (default 10) sets the number of kills, e.g. 100 for the long mode;
//! `SLUICE_CRASH_SEED` replays a run's random choices (kill moments, delays, decisions). The
//! seed is printed first; timing between processes is not replayable, so a failure shows its
//! history excerpt too.

use crate::common;

pub(crate) mod api;
mod checker;
mod consume;
mod history;
mod load;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use api::Api;
use checker::Violation;
use common::{free_port, start_on, Sluice};
use consume::GROUPS;
use history::{Ev, History, TOPICS};
use load::{Book, Run};

/// Kills in the normal suite.
const DEFAULT_CYCLES: usize = 10;
/// Load lasts a random time below this before most kills (it may be 0: a kill right after the
/// ready line, during the first requests).
const SHORT_LOAD_MS: u64 = 4_000;
/// One run in three lasts longer than the broker's consumer-offset flush interval (5 s), so
/// committed offsets are saved between kills and their check across restarts has content.
const LONG_LOAD_MS: std::ops::Range<u64> = 5_500..9_000;
/// Upper bound of the final drain; it ends as soon as everything due has arrived.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// A task still running this long after its run stopped is aborted (and reported).
const JOIN_LIMIT: Duration = Duration::from_secs(30);
/// Quick check-backs, so transactions left open are resolved within a run or two; many checks
/// before the final action, so the broker never decides in the producer's place.
const BROKER_ENV: [(&str, &str); 4] = [
    ("SLUICE_TXN_CHECK_AFTER_MS", "1500"),
    ("SLUICE_TXN_CHECK_INTERVAL_MS", "500"),
    ("SLUICE_TXN_CHECK_MAX", "1000"),
    ("SLUICE_TXN_CHECKPOINT_INTERVAL_MS", "100"),
];

/// The broker's fixed addresses and data folder, and what outlives each run.
struct World {
    data: tempfile::TempDir,
    ports: (u16, u16, u16),
    hist: History,
    book: Arc<Book>,
    seed: u64,
}

impl World {
    fn start(&self, cycle: usize, clean: bool) -> Sluice {
        let (ns, broker, http) = self.ports;
        let sluice = start_on(self.data.path(), ns, broker, http, &BROKER_ENV);
        self.hist.record(Ev::Started { cycle, clean });
        sluice
    }

    fn run(&self, sluice: &Sluice, cycle: usize, produce: bool) -> Run {
        Run {
            hist: self.hist.clone(),
            book: Arc::clone(&self.book),
            api: Api::new(sluice.http),
            ns: sluice.ns,
            cycle,
            seed: self.seed,
            stop: Arc::new(AtomicBool::new(false)),
            produce,
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

fn spawn_tasks(rt: &Runtime, run: &Run) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if run.produce {
        for task in 0..2 {
            tasks.push(rt.spawn(load::tcp_producer(run.clone(), task)));
            tasks.push(rt.spawn(load::http_producer(run.clone(), 10 + task)));
            tasks.push(rt.spawn(load::http_transactions(run.clone(), 20 + task)));
        }
    }
    tasks.push(rt.spawn(load::check_responder(run.clone())));
    tasks.push(rt.spawn(load::canceller(run.clone())));
    tasks.push(rt.spawn(consume::pull_consumer(run.clone())));
    for topic in TOPICS {
        tasks.push(rt.spawn(consume::lease_consumer(run.clone(), topic)));
    }
    tasks
}

/// Sets the stop flag and waits for every task of the run.
fn stop_tasks(rt: &Runtime, run: &Run, tasks: Vec<JoinHandle<()>>) {
    run.stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            let abort = t.abort_handle();
            match tokio::time::timeout(JOIN_LIMIT, t).await {
                Ok(r) => r.expect("load task panicked"),
                Err(_) => {
                    abort.abort();
                    panic!("a load task did not stop within {JOIN_LIMIT:?} of its run's end");
                }
            }
        }
    });
}

/// One cycle: start, read offsets, load for a random time, SIGKILL, wait for the tasks.
fn kill_cycle(rt: &Runtime, w: &World, cycle: usize, load_ms: u64) {
    let sluice = w.start(cycle, false);
    let run = w.run(&sluice, cycle, true);
    rt.block_on(async {
        if cycle == 0 {
            for topic in TOPICS {
                let (status, v) = run.api.create_topic(topic, 4).await.expect("create topic");
                assert!(
                    status == 201 || status == 200,
                    "create {topic}: {status} {v}"
                );
            }
        }
        consume::snapshot_offsets(&run, false).await;
    });
    let acked = || w.hist.count(|e| matches!(e, Ev::Acked { .. }));
    let before = acked();
    let tasks = spawn_tasks(rt, &run);
    // A long cycle must put acknowledged messages at risk: a broker refusing everything after
    // a restart (counted only as indeterminate sends) passed while the first cycle had acks.
    // Its load time counts from its first ack, so a slow start cannot fail it.
    if load_ms >= LONG_LOAD_MS.start {
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked() == before {
            assert!(Instant::now() < deadline, "cycle {cycle}: no ack in 60 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    std::thread::sleep(Duration::from_millis(load_ms));
    sluice.kill();
    w.hist.record(Ev::Killed { cycle });
    stop_tasks(rt, &run, tasks);
}

/// Decides every acknowledged transaction still open, with its producer's decision.
async fn settle_open_transactions(run: &Run) {
    let open: Vec<(String, String, bool)> = {
        let txns = run.book.txns.lock().unwrap();
        txns.iter()
            .filter(|(_, e)| !e.settled)
            .filter_map(|(k, e)| Some((k.clone(), e.txn_id.clone()?, e.commit)))
            .collect()
    };
    for (key, txn_id, commit) in open {
        let answered = load::decide(run, &key, &txn_id, commit).await;
        assert!(answered, "no answer to the final decision of {key}");
    }
}

/// True while something that must be delivered has not been, or a cancel is still to send.
fn still_pending(w: &World) -> bool {
    let report = checker::check(&w.hist.snapshot(), &GROUPS);
    let undelivered = report.violations.iter().any(Violation::is_undelivered);
    undelivered || !w.book.cancels.lock().unwrap().is_empty()
}

/// No more producing: settle open transactions, drain until everything due has arrived (or
/// the limit passes; the checker then reports what is missing), stop cleanly, restart once to
/// read the offsets a clean stop saved.
fn final_phase(rt: &Runtime, w: &World, cycle: usize) -> Duration {
    let sluice = w.start(cycle, false);
    let run = w.run(&sluice, cycle, false);
    rt.block_on(consume::snapshot_offsets(&run, false));
    let tasks = spawn_tasks(rt, &run);
    let began = Instant::now();
    rt.block_on(async {
        settle_open_transactions(&run).await;
        while still_pending(w) && began.elapsed() < DRAIN_LIMIT {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Stragglers (a duplicate, or anything that should never come) get a moment to show.
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let drained = began.elapsed();
    stop_tasks(rt, &run, tasks);
    sluice.stop();
    let sluice = w.start(cycle + 1, true);
    let run = w.run(&sluice, cycle + 1, false);
    rt.block_on(consume::snapshot_offsets(&run, true));
    sluice.stop();
    drained
}

/// The history of the first few keys with a broken promise (ms since the loop began).
fn print_excerpts(events: &[history::Event], violations: &[Violation]) {
    let keys: std::collections::BTreeSet<&str> = violations
        .iter()
        .filter_map(Violation::key)
        .take(10)
        .collect();
    for key in keys {
        eprintln!("  history of {key}:");
        for e in history::excerpt(events, key) {
            eprintln!(
                "    {:>9.3} ms  wall {}  {:?}",
                e.at_us as f64 / 1e3,
                e.wall_ms,
                e.ev
            );
        }
    }
}

#[test]
fn sigkill_loop_under_mixed_load_keeps_every_promise_in_the_history() {
    let cycles = env_number("SLUICE_CRASH_CYCLES").map_or(DEFAULT_CYCLES, |n| n as usize);
    let seed = env_number("SLUICE_CRASH_SEED").unwrap_or_else(rand::random);
    eprintln!("crash loop: {cycles} cycles, seed {seed:#x} (replay: SLUICE_CRASH_SEED={seed:#x})");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let w = World {
        data: tempfile::tempdir().unwrap(),
        ports: (free_port(), free_port(), free_port()),
        hist: History::default(),
        book: Arc::default(),
        seed,
    };
    let began = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    for cycle in 0..cycles {
        let load_ms = if rng.gen_ratio(1, 3) {
            rng.gen_range(LONG_LOAD_MS)
        } else {
            rng.gen_range(0..SHORT_LOAD_MS)
        };
        kill_cycle(&rt, &w, cycle, load_ms);
    }
    let drained = final_phase(&rt, &w, cycles);
    let events = w.hist.snapshot();
    let report = checker::check(&events, &GROUPS);
    eprintln!("{report}");
    eprintln!("  took {:?} (final drain {drained:?})", began.elapsed());
    print_excerpts(&events, &report.violations);
    assert!(
        report.violations.is_empty(),
        "seed {seed:#x}: {} broken promises, listed above",
        report.violations.len()
    );
    let s = &report.stats;
    assert_eq!(s.kills, cycles);
    assert!(
        s.acked_tcp > 0 && s.acked_http > 0 && s.timers_acked > 0 && s.txn_committed > 0,
        "the load reached every path: {s:?}"
    );
}
