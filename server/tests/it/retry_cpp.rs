//! Consumer retries through the real `sluice` binary with the independent C++ client
//! (`tests/compat/cpp_client.py`): a push consumer answering RECONSUME_LATER sees each message
//! again no sooner than the configured back-off, with rising reconsume counts, and after the
//! group's maximum finds it in `%DLQ%<group>` (read here with the Rust pull consumer).
//! The level ladder is shortened through `SLUICE_SCHEDULE_LEVELS_MS`, the group maximum
//! through `SLUICE_RETRY_*`.

use crate::common;
use crate::cpp_driver;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use cpp_driver::*;
use sluice_client::{ClientConfig, ConsumeFrom, PullConsumer};

/// Levels 1..18 in ms; retries use levels 3, 4, 5 … (RocketMQ's `3 + reconsumeTimes`).
const LEVELS: [u64; 18] = [
    100, 200, 800, 1200, 1600, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000,
    2000, 2000,
];

#[test]
fn cpp_reconsume_later_retries_at_the_configured_levels_then_dead_letters() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    client_path();
    let levels = format!(
        "[{}]",
        LEVELS
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let sluice = start_with_env(
        data.path(),
        free_port(),
        free_port(),
        &[
            ("SLUICE_SCHEDULE_LEVELS_MS", &levels),
            ("SLUICE_RETRY_MAX_RECONSUME_TIMES", "2"),
            // The C++ client always sends maxReconsumeTimes 16; the group's 2 wins.
            ("SLUICE_RETRY_CLIENT_MAX_WINS", "false"),
        ],
    );
    // The topic must exist before the consumer starts (consumers look routes up every 30 s).
    produce(sluice.ns, "CompatRetry", 1, 1_000_000, "Warm");
    let ready = work.path().join("retry.ready");
    let r = ready.to_string_lossy().to_string();
    // The consumer stops once all three are dead-lettered (read below), not after a fixed
    // time a loaded machine may not reach the dead-lettering in; its --timeout only bounds it.
    let stop = work.path().join("retry.stop");
    let stop_arg = stop.to_string_lossy().to_string();
    let c = driver(
        sluice.ns,
        &[
            "consume",
            "--group",
            "compat_retry",
            "--topic",
            "CompatRetry",
            "--expression",
            "R",
            "--timeout",
            "150",
            "--settle",
            "0",
            "--full",
            "--fail-first",
            "100",
            "--ready-file",
            &r,
            "--stop-file",
            &stop_arg,
        ],
    );
    wait_ready(&ready);
    produce(sluice.ns, "CompatRetry", 3, 0, "R");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Read the dead-letter queue while the consumer runs, until all three are there (bounded):
    // each was delivered for the last time before the client sent it back into the DLQ.
    let dead = rt.block_on(async {
        let cfg = ClientConfig::new(&sluice.ns.to_string());
        let consumer = PullConsumer::builder(cfg, "dlq_reader")
            .consume_from(ConsumeFrom::FirstOffset)
            .start()
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let mut out = Vec::new();
        while out.len() < 3 && std::time::Instant::now() < deadline {
            if consumer.assignment().is_empty() {
                // The DLQ topic exists once the first message is dead-lettered.
                match consumer.queues("%DLQ%compat_retry").await {
                    Ok(queues) if !queues.is_empty() => consumer.assign(queues),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        continue;
                    }
                }
            }
            out.extend(consumer.poll(Duration::from_millis(300)).await.unwrap());
        }
        consumer.shutdown().await;
        out
    });
    std::fs::write(&stop, "stop").unwrap();
    let got = finish(c, Duration::from_secs(180));
    let mut by_key: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for m in got["messages"].as_array().unwrap() {
        by_key
            .entry(m["key"].as_str().unwrap().to_owned())
            .or_default()
            .push((m["at"].as_i64().unwrap(), m["reconsume"].as_i64().unwrap()));
    }
    assert_eq!(by_key.len(), 3, "{got}");
    // The Python binding does not always surface every delivery of this C++ client to the
    // callback when several run at once (the broker log shows each send-back), so the
    // assertions use what was observed: counts rise from 0, never pass the maximum, and two
    // observed deliveries are at least the sum of the back-offs between them apart.
    for (key, mut deliveries) in by_key {
        deliveries.sort();
        let counts: Vec<i64> = deliveries.iter().map(|d| d.1).collect();
        assert_eq!(counts[0], 0, "{key}: first delivery: {got}");
        assert!(
            counts.windows(2).all(|w| w[0] < w[1]),
            "{key}: counts {counts:?}"
        );
        assert!(
            *counts.last().unwrap() <= 2,
            "{key}: delivered past the maximum: {counts:?}"
        );
        for pair in deliveries.windows(2) {
            let (from, to) = (pair[0].1 as usize, pair[1].1 as usize);
            // Retry n (1-based) waits level 2 + n (1-based), i.e. LEVELS[1 + n].
            let wait: u64 = (from + 1..=to).map(|n| LEVELS[1 + n]).sum();
            assert!(
                pair[1].0 - pair[0].0 >= wait as i64,
                "{key}: reconsume {to} came {} ms after reconsume {from}, before its {wait} ms back-off",
                pair[1].0 - pair[0].0
            );
        }
    }
    let observed_retries = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["reconsume"].as_i64() > Some(0))
        .count();
    assert!(observed_retries >= 1, "no retry was delivered: {got}");

    assert_eq!(dead.len(), 3, "every message ends in the DLQ");
    for m in &dead {
        assert_eq!(m.property("RETRY_TOPIC"), Some("CompatRetry"));
        assert_eq!(m.reconsume_times(), 3);
        assert_eq!(m.property("DELAY"), Some("-1"));
        assert_eq!(m.tags(), Some("R"));
    }
    sluice.stop();
}
