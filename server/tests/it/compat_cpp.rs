//! Compatibility with an independent RocketMQ client that nobody on this project wrote: the
//! C++ engine `librocketmq.so` from PyPI's rocketmq-python-cvs 2.1.0.3, driven through
//! rocketmq-client-python 2.0.0 (`tests/compat/cpp_client.py`). The suite fetches the client
//! itself (`scripts/fetch-cpp-client`, into `target/compat-cache`); if it cannot, the tests fail
//! loudly: a skipped compatibility test is not a pass. No shim sits between client and broker.

use crate::common;
use crate::cpp_driver;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use cpp_driver::*;

fn consumer(
    ns: std::net::SocketAddr,
    group: &str,
    topic: &str,
    expr: &str,
    expect: usize,
    ready: &std::path::Path,
) -> KillOnDrop {
    let e = expect.to_string();
    let ready = ready.to_string_lossy().to_string();
    driver(
        ns,
        &[
            "consume",
            "--group",
            group,
            "--topic",
            topic,
            "--expression",
            expr,
            "--expect",
            &e,
            "--timeout",
            "180",
            "--settle",
            // Two periods of the client's 5-second offset-persist timer (see the driver), so a
            // late tick on a loaded machine still persists the offsets before the exit (the
            // resume test depends on them).
            "12",
            "--ready-file",
            &ready,
        ],
    )
}

#[test]
fn cpp_client_sends_10000_keyed_tagged_messages_and_push_consumers_get_them_with_tag_filters() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    client_path();
    let sluice = start(data.path(), 0, 0);
    // Create the topic (auto-create on first send) so consumers find a route at once.
    produce(sluice.ns, "CompatTopic", 1, 1_000_000, "Warm");
    let all_ready = work.path().join("all.ready");
    let b_ready = work.path().join("b.ready");
    let all = consumer(
        sluice.ns,
        "compat_all",
        "CompatTopic",
        "*",
        10_000,
        &all_ready,
    );
    let only_b = consumer(
        sluice.ns,
        "compat_b",
        "CompatTopic",
        "TagB",
        5_000,
        &b_ready,
    );
    wait_ready(&all_ready);
    wait_ready(&b_ready);

    produce(sluice.ns, "CompatTopic", 10_000, 0, "TagA,TagB");

    let got_all = finish(all, Duration::from_secs(240));
    let got_b = finish(only_b, Duration::from_secs(240));
    let want_all: BTreeSet<String> = (0..10_000).map(|i| format!("k{i}")).collect();
    let want_b: BTreeSet<String> = (0..10_000)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("k{i}"))
        .collect();
    let all_keys: BTreeSet<String> = keys(&got_all)
        .into_iter()
        .filter(|k| k != "k1000000")
        .collect();
    assert_eq!(all_keys, want_all, "the '*' group receives every key");
    assert_eq!(
        keys(&got_b)
            .into_iter()
            .filter(|k| k != "k1000000")
            .collect::<BTreeSet<_>>(),
        want_b,
        "the TagB group receives every TagB key"
    );
    assert_eq!(
        got_b["tags"],
        serde_json::json!(["TagB"]),
        "the TagB group receives nothing else"
    );
    sluice.stop();
}

#[test]
fn cpp_orderly_send_by_sharding_key_keeps_per_key_order() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    client_path();
    let sluice = start(data.path(), 0, 0);
    produce(sluice.ns, "CompatOrdered", 1, 1_000_000, "Warm");
    let ready = work.path().join("ordered.ready");
    let c = driver(
        sluice.ns,
        &[
            "consume",
            "--group",
            "compat_ordered",
            "--topic",
            "CompatOrdered",
            "--expression",
            "ordered",
            "--expect",
            "800",
            "--timeout",
            "180",
            "--settle",
            "2",
            "--orderly",
            "--full",
            "--ready-file",
            &ready.to_string_lossy(),
        ],
    );
    wait_ready(&ready);
    let sent = finish(
        driver(
            sluice.ns,
            &[
                "produce-orderly",
                "--topic",
                "CompatOrdered",
                "--count",
                "200",
                "--shards",
                "4",
            ],
        ),
        Duration::from_secs(300),
    );
    assert_eq!(sent["sent"], 800, "{sent}");
    let got = finish(c, Duration::from_secs(240));
    let mut per_shard: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in got["messages"].as_array().unwrap() {
        let body = m["body"].as_str().unwrap();
        let (shard, seq) = body.split_once(':').unwrap();
        per_shard
            .entry(shard.to_string())
            .or_default()
            .push(seq.parse().unwrap());
    }
    assert_eq!(per_shard.len(), 4);
    for (shard, seqs) in &per_shard {
        let mut dedup = seqs.clone();
        dedup.dedup();
        assert!(
            dedup.windows(2).all(|w| w[0] < w[1]),
            "{shard} out of order: {seqs:?}"
        );
        assert_eq!(
            dedup,
            (0..200).collect::<Vec<_>>(),
            "{shard} got every message once in order"
        );
    }
    sluice.stop();
}

#[test]
fn cpp_consumer_resumes_from_its_committed_offset_after_a_broker_restart() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    client_path();
    let (nsp, bp) = (free_port(), free_port());
    let sluice = start(data.path(), nsp, bp);
    produce(sluice.ns, "CompatResume", 1, 1_000_000, "Warm");
    let r1 = work.path().join("r1.ready");
    let c1 = consumer(sluice.ns, "compat_resume", "CompatResume", "*", 500, &r1);
    wait_ready(&r1);
    produce(sluice.ns, "CompatResume", 500, 0, "T");
    let first = finish(c1, Duration::from_secs(240));
    let first_keys: BTreeSet<String> = keys(&first)
        .into_iter()
        .filter(|k| k != "k1000000")
        .collect();
    let want_first: BTreeSet<String> = (0..500).map(|i| format!("k{i}")).collect();
    assert_eq!(
        first_keys, want_first,
        "the first run gets every message (a count let one lost message pass)"
    );
    sluice.stop();

    let sluice = start(data.path(), nsp, bp);
    produce(sluice.ns, "CompatResume", 500, 500, "T");
    let r2 = work.path().join("r2.ready");
    let c2 = consumer(sluice.ns, "compat_resume", "CompatResume", "*", 500, &r2);
    let second = finish(c2, Duration::from_secs(240));
    let want: BTreeSet<String> = (500..1000).map(|i| format!("k{i}")).collect();
    assert_eq!(
        keys(&second),
        want,
        "the restarted consumer resumes after its committed offset"
    );
    sluice.stop();
}

/// A consumer that does not know how much it will get (it shares its group): it stops once
/// nothing arrived for `idle_secs` since its last message (at most after 120 s), so a loaded
/// machine only makes it wait longer, never stop early. The idle clock starts at its first
/// message, so it subscribes to tag `T` only: the warm-up message (tag `Warm`, sent before it
/// started) would start the clock long before the test's messages come.
fn idle_stopping_consumer(
    ns: std::net::SocketAddr,
    group: &str,
    topic: &str,
    idle_secs: u32,
    extra: &[&str],
    ready: &std::path::Path,
) -> KillOnDrop {
    let idle = idle_secs.to_string();
    let ready = ready.to_string_lossy().to_string();
    let mut args = vec![
        "consume",
        "--group",
        group,
        "--topic",
        topic,
        "--expression",
        "T",
        "--expect",
        "0",
        "--timeout",
        "120",
        "--idle",
        &idle,
        "--settle",
        "0",
        "--ready-file",
        &ready,
    ];
    args.extend_from_slice(extra);
    driver(ns, &args)
}

#[test]
fn cpp_two_consumers_of_one_group_split_the_queues_and_together_get_everything() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    client_path();
    let sluice = start(data.path(), 0, 0);
    produce(sluice.ns, "CompatShared", 1, 1_000_000, "Warm");
    let (ra, rb) = (work.path().join("a.ready"), work.path().join("b.ready"));
    let a = idle_stopping_consumer(
        sluice.ns,
        "compat_shared",
        "CompatShared",
        15,
        &["--instance", "a"],
        &ra,
    );
    let b = idle_stopping_consumer(
        sluice.ns,
        "compat_shared",
        "CompatShared",
        15,
        &["--instance", "b"],
        &rb,
    );
    wait_ready(&ra);
    wait_ready(&rb);
    // Let both rebalance (the C++ client rebalances at start and on the broker's notification).
    std::thread::sleep(Duration::from_secs(3));
    produce(sluice.ns, "CompatShared", 2_000, 0, "T");
    let (ka, kb) = (
        keys(&finish(a, Duration::from_secs(180))),
        keys(&finish(b, Duration::from_secs(180))),
    );
    let want: BTreeSet<String> = (0..2_000).map(|i| format!("k{i}")).collect();
    let union: BTreeSet<String> = ka
        .union(&kb)
        .filter(|k| *k != "k1000000")
        .cloned()
        .collect();
    assert_eq!(union, want, "together the group receives every message");
    assert!(
        ka.len() > 100 && kb.len() > 100,
        "the queues are split between the two (a: {}, b: {})",
        ka.len(),
        kb.len()
    );
    sluice.stop();
}

#[test]
fn cpp_broadcasting_consumers_each_get_every_message() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    client_path();
    let sluice = start(data.path(), 0, 0);
    produce(sluice.ns, "CompatBroadcast", 1, 1_000_000, "Warm");
    let (ra, rb) = (work.path().join("a.ready"), work.path().join("b.ready"));
    let run = |ready: &std::path::Path, inst: &str| {
        let r = ready.to_string_lossy().to_string();
        driver(
            sluice.ns,
            &[
                "consume",
                "--group",
                "compat_bcast",
                "--topic",
                "CompatBroadcast",
                "--expect",
                "500",
                "--timeout",
                "120",
                "--settle",
                "1",
                "--broadcast",
                "--instance",
                inst,
                "--ready-file",
                &r,
            ],
        )
    };
    let a = run(&ra, "a");
    let b = run(&rb, "b");
    wait_ready(&ra);
    wait_ready(&rb);
    produce(sluice.ns, "CompatBroadcast", 500, 0, "T");
    let want: BTreeSet<String> = (0..500).map(|i| format!("k{i}")).collect();
    for (name, got) in [
        ("a", finish(a, Duration::from_secs(180))),
        ("b", finish(b, Duration::from_secs(180))),
    ] {
        let k: BTreeSet<String> = keys(&got).into_iter().filter(|k| k != "k1000000").collect();
        assert_eq!(
            k, want,
            "broadcasting consumer {name} receives every message"
        );
    }
    sluice.stop();
}

#[test]
fn cpp_delay_level_messages_arrive_after_their_delay_and_not_before() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    client_path();
    let sluice = start(data.path(), 0, 0);
    produce(sluice.ns, "CompatDelayed", 1, 1_000_000, "Warm");
    let ready = work.path().join("delayed.ready");
    let r = ready.to_string_lossy().to_string();
    let c = driver(
        sluice.ns,
        &[
            "consume",
            "--group",
            "compat_delayed",
            "--topic",
            "CompatDelayed",
            "--expression",
            "Later",
            "--expect",
            "20",
            "--timeout",
            "120",
            "--settle",
            "1",
            "--full",
            "--ready-file",
            &r,
        ],
    );
    wait_ready(&ready);
    // Level 2 is 5 s in RocketMQ's default ladder.
    let v = finish(
        driver(
            sluice.ns,
            &[
                "produce",
                "--topic",
                "CompatDelayed",
                "--count",
                "20",
                "--tags",
                "Later",
                "--delay-level",
                "2",
            ],
        ),
        Duration::from_secs(120),
    );
    assert_eq!(v["sent"], 20, "{v}");
    let got = finish(c, Duration::from_secs(180));
    let msgs = got["messages"].as_array().unwrap();
    let keys: BTreeSet<&str> = msgs.iter().map(|m| m["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        (0..20)
            .map(|i| format!("k{i}"))
            .collect::<BTreeSet<_>>()
            .iter()
            .map(String::as_str)
            .collect()
    );
    for m in msgs {
        let (born, stored) = (m["born"].as_i64().unwrap(), m["stored"].as_i64().unwrap());
        assert!(
            stored >= born + 5_000,
            "released {} ms after it was sent, before its 5 s delay",
            stored - born
        );
    }
    sluice.stop();
}
