//! Delayed messages survive SIGKILL of the real `sluice` process: 100 000 timers with random
//! due times are scheduled, the process is killed while many are pending, restarted, and every
//! timer is delivered intact (duplicates counted, rare), never before its due time. The
//! lateness of the ones due after the restart is reported, not asserted (no timing threshold
//! in a test; the `timers` benchmark measures it).

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use rand::{Rng, SeedableRng};
use sluice_client::{ClientConfig, ConsumeFrom, Message, ProducerBuilder, PullConsumer};

const TIMERS: usize = 100_000;
const SENDERS: usize = 32;
/// A timer is due this long after its send (ms, uniform).
const DUE_FROM_MS: i64 = 4_000;
const DUE_TO_MS: i64 = 14_000;
/// The kill comes this long after the last send, while the last sends' timers are pending.
const KILL_AFTER_LAST_SEND_MS: u64 = 3_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_survive_sigkill_and_none_arrives_early() {
    let data = tempfile::tempdir().unwrap();
    let (nsp, bp) = (free_port(), free_port());
    let sluice = start(data.path(), nsp, bp);
    let cfg = ClientConfig::new(&sluice.ns.to_string());
    let producer = Arc::new(
        ProducerBuilder::new(cfg.clone())
            .group("timer-crash")
            .start()
            .await
            .unwrap(),
    );
    // Each timer is due a random 4-14 s after its own send, so however long scheduling
    // 100 000 takes, the kill falls among released and pending ones.
    let base = now_ms();
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let p = Arc::clone(&producer);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0x71AE + sender as u64);
            let mut plan = Vec::with_capacity(TIMERS / SENDERS);
            for i in (sender..TIMERS).step_by(SENDERS) {
                let key = format!("t{i}");
                let due = now_ms() + rng.gen_range(DUE_FROM_MS..DUE_TO_MS);
                let at = UNIX_EPOCH + Duration::from_millis(due as u64);
                let m = Message::new("Timers", key.clone())
                    .with_keys([key.clone()])
                    .with_deliver_at(at);
                p.send(m).await.expect("scheduled send acknowledged");
                plan.push((key, due));
            }
            plan
        }));
    }
    let mut plan: Vec<(String, i64)> = Vec::with_capacity(TIMERS);
    for t in tasks {
        plan.extend(t.await.unwrap());
    }
    let scheduled_in = now_ms() - base;
    // Kill a few seconds after the last send: the early ones have fired, the late ones wait.
    tokio::time::sleep(Duration::from_millis(KILL_AFTER_LAST_SEND_MS)).await;
    let killed_at = now_ms();
    sluice.kill();
    // Timers are due 4-14 s after their send and the kill comes 3 s after the last one, so
    // the last sent are pending by construction (checked, and counted for the report).
    let pending = plan.iter().filter(|(_, d)| *d > killed_at).count();
    // Otherwise this would only show that released messages survive a restart.
    assert!(
        pending > 0,
        "the kill came after every timer was due: nothing pending was tested"
    );
    let sluice = start(data.path(), nsp, bp);
    let restarted = now_ms();

    let consumer = PullConsumer::builder(ClientConfig::new(&sluice.ns.to_string()), "timer-reader")
        .consume_from(ConsumeFrom::FirstOffset)
        .start()
        .await
        .unwrap();
    consumer.assign(consumer.queues("Timers").await.unwrap());
    let due: BTreeMap<&str, i64> = plan.iter().map(|(k, d)| (k.as_str(), *d)).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut lateness: Vec<i64> = Vec::new();
    let deadline = now_ms() + 180_000;
    while seen.len() < TIMERS && now_ms() < deadline {
        for m in consumer.poll(Duration::from_millis(300)).await.unwrap() {
            let key = m.keys().next().unwrap().to_string();
            assert_eq!(
                m.body(),
                key.as_bytes(),
                "{key} delivered with another body"
            );
            let d = due[key.as_str()];
            assert!(
                m.store_timestamp() >= d,
                "{key} released {} ms early",
                d - m.store_timestamp()
            );
            if d >= restarted + 3_000 {
                lateness.push(m.store_timestamp() - d);
            }
            *seen.entry(key).or_default() += 1;
        }
    }
    lateness.sort_unstable();
    let pct = |p: usize| lateness.get(lateness.len() * p / 100).copied().unwrap_or(0);
    let max = lateness.last().copied().unwrap_or(0);
    let dups: usize = seen.values().map(|n| n - 1).sum();
    assert_eq!(
        seen.len(),
        TIMERS,
        "every scheduled message is delivered after the kill"
    );
    eprintln!(
        "{TIMERS} timers scheduled in {scheduled_in} ms, SIGKILL while {pending} were pending: all \
         delivered, none early, {dups} duplicates; lateness of the {} due after the restart: \
         p50 {} ms, p99 {} ms, max {max} ms",
        lateness.len(),
        pct(50),
        pct(99)
    );
    assert!(dups * 100 <= TIMERS, "duplicates stay rare: {dups}");
    if let Ok(p) = Arc::try_unwrap(producer) {
        p.shutdown().await;
    }
    consumer.shutdown().await;
    sluice.stop();
}
