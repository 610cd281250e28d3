//! SIGKILL during a DLQ replay task, through the real `sluice` binary: after a restart the
//! task resumes from its saved progress and completes; every dead letter reaches the original
//! topic (at most duplicated, never lost), and the audit log shows the resumptions.
//!
//! Dead letters are made with plain sends to `%RETRY%<group>` past the maximum (the broker
//! rewrites them to `%DLQ%<group>`). The binary has no admin endpoint for replay yet (the
//! HTTP facade will call `DlqService`), so the task is started the way a crashed broker
//! leaves it: a `running` task file under `<data>/store/config/dlq/tasks/`.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use sluice_client::{ClientConfig, ConsumeFrom, PullConsumer};
use sluice_protocol::remoting::custom::{SendHeaderForm, SendMessageRequestHeader};
use sluice_protocol::{request_code, Properties, RemotingCommand};
use sluice_remoting::RemotingClient;

const N: usize = 20;
const GROUP: &str = "crash_group";
const TOPIC: &str = "ReplayCrash";
const TASK: &str = "replay-crash-1";

fn dead_letter_send(i: usize) -> RemotingCommand {
    let mut p = Properties::new();
    p.insert("KEYS", format!("k{i}"));
    p.insert("TAGS", "T");
    p.insert("RETRY_TOPIC", TOPIC);
    p.insert("UNIQ_KEY", format!("CRASHUNIQ{i:04}"));
    let h = SendMessageRequestHeader {
        producer_group: "CLIENT_INNER_PRODUCER".into(),
        topic: format!("%RETRY%{GROUP}"),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id: 0,
        born_timestamp: 1_700_000_000_000,
        properties: Some(p.encode()),
        reconsume_times: Some(17),
        max_reconsume_times: Some(16),
        ..Default::default()
    };
    RemotingCommand::request(request_code::SEND_MESSAGE_V2, h.to_ext(SendHeaderForm::V2))
        .with_body(format!("body-{i}").into_bytes())
}

fn dlq_dir(data: &Path) -> std::path::PathBuf {
    data.join("store").join("config").join("dlq")
}

fn task_file(data: &Path) -> serde_json::Value {
    let path = dlq_dir(data).join("tasks").join(format!("{TASK}.json"));
    serde_json::from_slice(&std::fs::read(path).expect("task file")).expect("task json")
}

fn ledger_lines(data: &Path) -> usize {
    std::fs::read_to_string(dlq_dir(data).join("ledger").join(GROUP))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn sigkill_during_a_replay_loses_nothing_and_the_task_resumes() {
    let data = tempfile::tempdir().unwrap();
    let (ns_port, broker_port) = (free_port(), free_port());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // 1. N dead letters.
    let sluice = start(data.path(), ns_port, broker_port);
    rt.block_on(async {
        let client = RemotingClient::connect(sluice.broker).await.unwrap();
        for i in 0..N {
            let r = client
                .invoke(dead_letter_send(i), Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(r.code, 0, "{:?}", r.remark);
        }
    });
    sluice.stop();

    // 2. A running replay task at 10 messages/s.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let task = serde_json::json!({
        "id": TASK, "group": GROUP, "filter": {}, "target_topic": TOPIC, "rate_per_sec": 10,
        "dry_run": false, "max_messages": null, "requested_by": "crash-test", "state": "running",
        "next_offset": 0, "end_offset": N, "matched": 0, "replayed": 0, "skipped": 0,
        "failed": 0, "error": null, "created_ms": now, "updated_ms": now, "resumes": 0
    });
    let tasks = dlq_dir(data.path()).join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::write(tasks.join(format!("{TASK}.json")), task.to_string()).unwrap();

    // 3. Resume, SIGKILL mid-way.
    let sluice = start(data.path(), ns_port, broker_port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger_lines(data.path()) < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let before_kill = ledger_lines(data.path());
    assert!(before_kill >= 4, "the task did not make progress");
    sluice.kill();
    assert!(
        ledger_lines(data.path()) < N,
        "killed too late to test anything"
    );

    // 4. Restart: the task resumes and completes.
    let sluice = start(data.path(), ns_port, broker_port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while task_file(data.path())["state"] != "completed" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = task_file(data.path());
    assert_eq!(t["state"], "completed", "{t}");
    assert!(t["resumes"].as_u64().unwrap() >= 2, "{t}");
    assert_eq!(ledger_lines(data.path()), N);

    // 5. Every dead letter is in the original topic, at least once.
    let copies = rt.block_on(async {
        let cfg = ClientConfig::new(&sluice.ns.to_string());
        let consumer = PullConsumer::builder(cfg, "crash_reader")
            .consume_from(ConsumeFrom::FirstOffset)
            .start()
            .await
            .unwrap();
        consumer.assign(consumer.queues(TOPIC).await.unwrap());
        let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
        let mut idle = 0;
        for _ in 0..100 {
            let batch = consumer.poll(Duration::from_millis(300)).await.unwrap();
            idle = if batch.is_empty() { idle + 1 } else { 0 };
            for m in batch {
                assert_eq!(m.property("SLUICE_REPLAY_TASK"), Some(TASK));
                assert_eq!(m.reconsume_times(), 0);
                let key = m.keys().next().unwrap().to_owned();
                let body = format!("body-{}", &key[1..]);
                assert_eq!(
                    m.body(),
                    body.as_bytes(),
                    "{key} replayed with another body"
                );
                *by_key.entry(key).or_default() += 1;
            }
            if by_key.len() >= N && idle >= 3 {
                break;
            }
        }
        consumer.shutdown().await;
        by_key
    });
    assert_eq!(copies.len(), N, "every dead letter replayed: {copies:?}");
    let total: usize = copies.values().sum();
    assert!(
        total <= N + 1,
        "at most the in-flight message is duplicated: {copies:?}"
    );
    let audit = std::fs::read_to_string(dlq_dir(data.path()).join("audit.log")).unwrap();
    assert_eq!(audit.matches("\"event\":\"resumed\"").count(), 2, "{audit}");
    assert_eq!(
        audit.matches("\"event\":\"completed\"").count(),
        1,
        "{audit}"
    );
    sluice.stop();
}
