//! Delayed messages survive SIGKILL of the real `sluice` process: timers with random due times
//! are scheduled, the process is killed half way, restarted, and every timer is delivered once
//! (duplicates counted, not expected), never before its due time.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use rand::{Rng, SeedableRng};
use sluice_client::{ClientConfig, ConsumeFrom, Message, ProducerBuilder, PullConsumer};

const TIMERS: usize = 3_000;
const SENDERS: usize = 12;

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
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x71AE);
    // key -> due time (ms); due 2-8 s from now, so the kill falls among pending and released ones.
    let base = now_ms();
    let plan: Vec<(String, i64)> = (0..TIMERS)
        .map(|i| (format!("t{i}"), base + rng.gen_range(2_000..8_000)))
        .collect();
    let mut tasks = Vec::new();
    for chunk in plan.chunks(TIMERS / SENDERS) {
        let (p, chunk) = (Arc::clone(&producer), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for (key, due) in chunk {
                let at = UNIX_EPOCH + Duration::from_millis(due as u64);
                let m = Message::new("Timers", key.clone())
                    .with_keys([key])
                    .with_deliver_at(at);
                p.send(m).await.expect("scheduled send acknowledged");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Kill while some timers have fired and most have not.
    let wait = (base + 4_000 - now_ms()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    sluice.kill();
    let sluice = start(data.path(), nsp, bp);

    let consumer = PullConsumer::builder(ClientConfig::new(&sluice.ns.to_string()), "timer-reader")
        .consume_from(ConsumeFrom::FirstOffset)
        .start()
        .await
        .unwrap();
    consumer.assign(consumer.queues("Timers").await.unwrap());
    let due: BTreeMap<&str, i64> = plan.iter().map(|(k, d)| (k.as_str(), *d)).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = now_ms() + 60_000;
    while seen.len() < TIMERS && now_ms() < deadline {
        for m in consumer.poll(Duration::from_millis(300)).await.unwrap() {
            let key = m.keys().next().unwrap().to_string();
            let d = due[key.as_str()];
            assert!(
                m.store_timestamp() >= d,
                "{key} released {} ms early",
                d - m.store_timestamp()
            );
            *seen.entry(key).or_default() += 1;
        }
    }
    let dups: usize = seen.values().map(|n| n - 1).sum();
    assert_eq!(
        seen.len(),
        TIMERS,
        "every scheduled message is delivered after the kill"
    );
    eprintln!("{TIMERS} timers across a SIGKILL: all delivered, none early, {dups} duplicates");
    assert!(dups * 100 <= TIMERS, "duplicates stay rare: {dups}");
    if let Ok(p) = Arc::try_unwrap(producer) {
        p.shutdown().await;
    }
    consumer.shutdown().await;
    sluice.stop();
}
