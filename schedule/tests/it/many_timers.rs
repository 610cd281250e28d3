//! 100 000 timers with random due times over ten seconds, and a broker restart half way:
//! every timer is released exactly once, none before its time. Lateness is printed, not
//! asserted (the `timers` benchmark measures it).

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use sluice_protocol::Properties;
use sluice_schedule::When;
use sluice_store::now_ms;

const N: usize = 100_000;
const TOPIC: &str = "Bulk";
const QUEUES: i32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_timers_survive_a_restart_half_way() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let svc = node.service();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let t0 = now_ms();
    let mut due_of: HashMap<String, i64> = HashMap::with_capacity(N);
    let mut batch = Vec::new();
    let services = node.broker.services();
    for i in 0..N {
        let due = now_ms() + rng.gen_range(2_000..10_000);
        let m = input(TOPIC, (i as i32) % QUEUES, &format!("bulk-{i}"), &[]);
        let p = svc.prepare(with_due(m, due)).unwrap();
        assert_eq!(p.due_ms, Some(due));
        let props = Properties::decode(p.input.properties.as_bytes());
        due_of.insert(props.get("UNIQ_KEY").unwrap().to_owned(), due);
        batch.push(p.input);
        if batch.len() == 500 {
            services
                .put(std::mem::take(&mut batch))
                .await
                .expect("parked");
        }
    }
    let parked_in = now_ms() - t0;
    println!("parked {N} timers in {parked_in} ms");
    // Restart once releases have begun (observed, not a fixed time: parking speed varies),
    // so the restart falls among released and pending timers.
    let wait_from = Instant::now();
    let mut before = 0;
    while before == 0 && wait_from.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        before = node.released(TOPIC, QUEUES).len();
    }
    let stats = svc.stats().unwrap();
    println!("before restart: released {before}, stats {stats:?}");
    assert!(
        stats.runs >= 1 && stats.run_entries > 0,
        "far timers are on disk"
    );
    node.stop().await;

    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let started = Instant::now();
    let got = node
        .wait_released(TOPIC, QUEUES, N, Duration::from_secs(120))
        .await;
    println!(
        "after restart: {} released in {:?}",
        got.len(),
        started.elapsed()
    );
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut max_late = 0;
    for m in &got {
        *seen.entry(m.uniq()).or_default() += 1;
        m.assert_not_early();
        let want = due_of.get(m.uniq()).copied().expect("a message we parked");
        assert_eq!(m.due_ms(), want, "released for its own due time");
        max_late = max_late.max(m.store_ms - want);
    }
    assert_eq!(seen.len(), N, "every timer released");
    assert!(
        seen.values().all(|n| *n == 1),
        "no duplicates after a clean restart"
    );
    let stats = node.service().stats().unwrap();
    println!("max lateness {max_late} ms; stats after: {stats:?}");
    assert_eq!(stats.pending, 0);
    assert!(
        before > 0 && before < N,
        "the restart fell among released and pending timers ({before} of {N} released \
         before it; parking took {} ms)",
        parked_in
    );
    node.stop().await;
    ns.shutdown().await;
}

/// The schedule service stops as if killed (releases in flight abandoned, no last
/// checkpoint) half way through 20 000 timers: after the restart every timer is released,
/// none early, and releases the crash interrupted are found and not repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_half_way_loses_nothing_and_repeats_nothing_it_can_find() {
    const M: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let svc = node.service();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut batch = Vec::new();
    for i in 0..M {
        let due = now_ms() + rng.gen_range(1_000..5_000);
        let m = input(TOPIC, (i as i32) % QUEUES, &format!("crash-{i}"), &[]);
        batch.push(svc.prepare(with_due(m, due)).unwrap().input);
        if batch.len() == 500 {
            node.broker
                .services()
                .put(std::mem::take(&mut batch))
                .await
                .expect("parked");
        }
    }
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    node.ext.crash_on_stop();
    node.stop().await;

    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let got = node
        .wait_released(TOPIC, QUEUES, M, Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = if got.len() > M {
        got
    } else {
        node.released(TOPIC, QUEUES)
    };
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for m in &got {
        *seen.entry(m.uniq()).or_default() += 1;
        m.assert_not_early();
    }
    let stats = node.service().stats().unwrap();
    println!(
        "after the crash: {} releases of {} messages; stats {stats:?}",
        got.len(),
        seen.len()
    );
    assert_eq!(seen.len(), M, "nothing lost");
    let duplicates = got.len() - seen.len();
    assert_eq!(
        duplicates as u64, stats.possible_duplicates,
        "every duplicate is counted"
    );
    assert_eq!(
        duplicates, 0,
        "interrupted releases were found, not repeated"
    );
    assert!(
        stats.crash_checks > 0,
        "due timers were checked for earlier releases"
    );
    assert_eq!(stats.pending, 0);
    node.stop().await;
    ns.shutdown().await;
}

fn with_due(mut m: sluice_store::MessageInput, due: i64) -> sluice_store::MessageInput {
    let mut p = Properties::decode(m.properties.as_bytes());
    p.insert("TIMER_DELIVER_MS", When::At(due).due_ms(0).to_string());
    m.properties = p.encode();
    m
}
