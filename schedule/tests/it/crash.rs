//! Crash checks across later stops: a timer that may have been released before a crash is
//! looked up in its real topic before it is released or cancelled, until that is done —
//! however many clean stops come in between.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use sluice_schedule::{Outcome, ScheduleConfig, Selector, When};

const TOPIC: &str = "Reminders";

fn by_key(key: &str) -> Selector {
    key_in(TOPIC, key)
}

/// Defect: a clean stop soon after a crash-restart wrote `clean` while timers due before
/// that restart were still unchecked, so the next start checked nothing: such a timer was
/// released a second time, and a cancel of it answered "cancelled" for a message consumers
/// already had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_checks_survive_clean_stops_until_every_suspect_timer_is_checked() {
    const HALF: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let no_checkpoint = no_checkpoint_config();
    // 1. Released, then a crash before any checkpoint: every timer is pending on disk.
    let node = Node::start(dir.path(), ns.local_addr(), no_checkpoint.clone()).await;
    let svc = node.service();
    for key in ["cancel-me", "leave-me"] {
        for _ in 0..HALF {
            svc.schedule_at(
                input(TOPIC, 0, key, &[]),
                When::After(Duration::from_millis(300)),
            )
            .await
            .unwrap();
        }
    }
    let got = node
        .wait_released(TOPIC, 1, 2 * HALF, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 2 * HALF);
    node.ext.crash_on_stop();
    node.stop().await;

    // 2. Restarted with one release a second, and stopped cleanly before the deliverer has
    //    checked them all (as an orchestrator restarting the node again would).
    let trickle = ScheduleConfig {
        release_rate: 1,
        release_batch: 1,
        ..test_config()
    };
    let node = Node::start(dir.path(), ns.local_addr(), trickle.clone()).await;
    let (listed, _) = node.service().list(&by_key("leave-me")).await.unwrap();
    assert_eq!(listed.len(), HALF, "the index has read the timers back");
    node.stop().await;

    // 3. After that clean stop, a cancel still checks the real topic first.
    let node = Node::start(dir.path(), ns.local_addr(), trickle).await;
    let r = node.service().cancel(&by_key("cancel-me")).await.unwrap();
    assert_eq!(r.outcomes.len(), HALF);
    let wrong: Vec<_> = r
        .outcomes
        .iter()
        .filter(|(_, o)| *o != Outcome::AlreadyDelivered)
        .collect();
    assert!(
        wrong.is_empty(),
        "released before the crash, answered {wrong:?}"
    );
    node.stop().await;

    // 4. After a second clean stop, the deliverer still checks before releasing.
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    wait_nothing_pending(&node).await;
    let released = node.released(TOPIC, 1);
    let seen = copies_by_id(&released);
    assert_eq!(seen.len(), 2 * HALF);
    assert_eq!(released.len(), 2 * HALF, "none released twice: {seen:?}");
    assert_eq!(node.service().stats().unwrap().possible_duplicates, 0);
    node.stop().await;
    ns.shutdown().await;
}

/// Defect: a release whose sync failed (EIO; the store is fenced after it) may still have put
/// its copy on the disk, but a clean stop after it saved no check horizon for it, so the next
/// start released the timer again unchecked: consumers got the message twice. Such a timer is
/// now checked in its real topic before it is released again, across the clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_sync_failed_is_checked_not_repeated_after_a_clean_stop() {
    const N: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let faulty = std::sync::Arc::new(sluice_store::io::FaultyIo::new());
    let node = Node::start_with_io(
        dir.path(),
        ns.local_addr(),
        test_config(),
        Some(faulty.clone()),
    )
    .await;
    let svc = node.service();
    for i in 0..N {
        svc.schedule_at(
            input(TOPIC, 0, &format!("sync-failed-{i}"), &[]),
            When::After(Duration::from_millis(1_500)),
        )
        .await
        .unwrap();
    }
    // 1. Every sync fails from now on: the releases are written, not made durable, and the
    //    store is fenced.
    faulty.fail_syncs(true);
    let deadline = Instant::now() + Duration::from_secs(20);
    while svc.stats().unwrap().release_retries == 0 {
        assert!(Instant::now() < deadline, "no release was attempted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(svc.stats().unwrap().delivered, 0, "nothing acknowledged");
    // 2. A clean stop, then a start on a healthy disk: the written copies came back.
    node.stop().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    // Nothing is pending until the index has read the timers back: waiting for that alone
    // could end before they were (a loaded machine).
    node.wait_released(TOPIC, 1, N, Duration::from_secs(20))
        .await;
    wait_nothing_pending(&node).await;
    let released = node.released(TOPIC, 1);
    let seen = copies_by_id(&released);
    assert_eq!(seen.len(), N, "every timer released: {seen:?}");
    assert_eq!(released.len(), N, "none released twice: {seen:?}");
    node.stop().await;
    ns.shutdown().await;
}

/// How many copies of each message id were released.
fn copies_by_id(released: &[Msg]) -> HashMap<&str, usize> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for m in released {
        *seen.entry(m.uniq()).or_default() += 1;
    }
    seen
}

/// Waits (bounded) until the index counts no pending timer.
async fn wait_nothing_pending(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pending = node.service().stats().unwrap().pending;
        if pending == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{pending} timers still pending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A clean stop's `state.json` used to stay "clean" until the next run's first checkpoint, so
/// a crash before it (soon after a clean start, or a crash loop) made the next start trust
/// that nothing had been released: every timer released in between was released again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_soon_after_a_clean_start_does_not_release_twice() {
    const N: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let no_checkpoint = no_checkpoint_config();
    // 1. Scheduled, then a clean stop before anything is due.
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    for _ in 0..N {
        node.service()
            .schedule_at(
                input(TOPIC, 0, "after-clean", &[]),
                When::After(Duration::from_millis(1_500)),
            )
            .await
            .unwrap();
    }
    node.stop().await;
    // 2. A clean start releases them, then crashes before any checkpoint.
    let node = Node::start(dir.path(), ns.local_addr(), no_checkpoint).await;
    let got = node
        .wait_released(TOPIC, 1, N, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), N);
    node.ext.crash_on_stop();
    node.stop().await;
    // 3. The next start finds the releases and makes no second copy.
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.service().stats().unwrap().pending != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node.service().stats().unwrap().pending, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let released = node.released(TOPIC, 1);
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for m in &released {
        *per_id.entry(m.uniq()).or_default() += 1;
    }
    assert_eq!(per_id.len(), N);
    assert!(
        per_id.values().all(|&n| n == 1),
        "released again after the crash: {per_id:?}"
    );
    node.stop().await;
    ns.shutdown().await;
}

/// Entries in a run file of `len` bytes: 32 B each, then a 16 B sparse key per 128 entries,
/// then the 64 B footer (`schedule/src/run.rs`).
fn run_entries(len: usize) -> usize {
    (1..len / 32)
        .find(|n| n * 32 + n.div_ceil(128) * 16 + 64 == len)
        .unwrap_or_else(|| panic!("{len} bytes is not a run file's size"))
}

/// A run whose footer and sparse index were intact but one entry damaged opened fine, and the
/// deliverer's window then stopped at that entry's block for good, restart after restart:
/// every later timer stayed undelivered. Now the start checks every entry and rebuilds the
/// index from the timer queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_run_entry_is_found_at_start_and_every_timer_still_fires_once() {
    const N: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv().await;
    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let svc = node.service();
    for _ in 0..N {
        svc.schedule_at(
            input(TOPIC, 0, "later", &[]),
            When::After(Duration::from_secs(4)),
        )
        .await
        .unwrap();
    }
    node.stop().await;
    let runs = dir.path().join("schedule/runs");
    let biggest = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("the timers were saved in a run");
    let mut bytes = std::fs::read(&biggest).unwrap();
    // The 300 timers may have been saved in more than one run (a checkpoint between the
    // sends of a slow run): damage the middle entry of the biggest, whatever its size.
    let entries = run_entries(bytes.len());
    assert!(entries >= 3, "{} bytes: {entries} entries", bytes.len());
    let mut victim = entries / 2;
    if victim.is_multiple_of(128) {
        victim += 1; // not an entry whose key the sparse index repeats
    }
    bytes[victim * 32 + 3] ^= 0x10;
    std::fs::write(&biggest, bytes).unwrap();

    let node = Node::start(dir.path(), ns.local_addr(), test_config()).await;
    let got = node
        .wait_released(TOPIC, 1, N, Duration::from_secs(20))
        .await;
    assert_eq!(got.len(), N, "every timer fired");
    let copies = copies_by_id(&got);
    assert!(copies.values().all(|n| *n == 1), "once each");
    node.stop().await;
}
