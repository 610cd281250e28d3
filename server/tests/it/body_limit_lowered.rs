//! An operator lowers `[broker] max_body_bytes` while messages accepted under the larger limit
//! are still held: a delayed message and an open transaction. Releasing the one and
//! committing the other write the stored bodies again, and the store refused them ("exceeds
//! the limit"): the timer was dropped for good, and the commit answered 500, then the
//! transaction was rolled back by its final action. Both are written now; new messages are
//! still held to the lowered limit.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

use crate::crash_loop::api::{str_field, Api};

const TOPIC: &str = "Held";

fn limit(bytes: &'static str) -> [(&'static str, &'static str); 2] {
    [
        ("SLUICE_BROKER_MAX_BODY_BYTES", bytes),
        ("SLUICE_HTTP_MAX_MESSAGE_BYTES", bytes),
    ]
}

/// Receives and acks until `want` bodies arrived or 30 s passed.
async fn receive_bodies(api: &Api, want: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while bodies.len() < want && Instant::now() < deadline {
        let (status, v) = api.receive("reader", TOPIC, 2_000).await.expect("receive");
        assert_eq!(status, 200, "{v}");
        let got = v["messages"].as_array().cloned().unwrap_or_default();
        let receipts: Vec<String> = got
            .iter()
            .filter_map(|m| str_field(m, "receipt").map(str::to_owned))
            .collect();
        bodies.extend(
            got.iter()
                .filter_map(|m| str_field(m, "body").map(str::to_owned)),
        );
        if !receipts.is_empty() {
            assert_eq!(api.ack("reader", receipts).await.expect("ack").0, 200);
        }
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_over_a_lowered_body_limit_are_still_released_and_committed() {
    let data = tempfile::tempdir().unwrap();
    let big = "b".repeat(150 * 1024);
    let sluice = start_on(data.path(), 0, 0, 0, &limit("262144"));
    let api = Api::new(sluice.http);
    let (status, v) = api.produce(TOPIC, "late", &big, Some(4_000)).await.unwrap();
    assert_eq!(status, 201, "{v}");
    let (status, half) = api.half(TOPIC, "pg", "tx", &big).await.unwrap();
    assert_eq!(status, 201, "{half}");
    let txn_id = str_field(&half, "txn_id").expect("txn_id").to_owned();
    sluice.stop();

    let sluice = start_on(data.path(), 0, 0, 0, &limit("65536"));
    let api = Api::new(sluice.http);
    let (status, v): (u16, Value) = api.decide(&txn_id, true).await.unwrap();
    assert_eq!(status, 200, "the producer's commit is stored: {v}");
    let bodies = receive_bodies(&api, 2).await;
    assert_eq!(
        bodies.len(),
        2,
        "the committed and the delayed message arrive"
    );
    assert!(bodies.iter().all(|b| *b == big), "bodies intact");
    let (status, v) = api.produce(TOPIC, "new", &big, None).await.unwrap();
    assert_eq!(
        status, 413,
        "a new message is held to the lowered limit: {v}"
    );
    sluice.stop();
}
