//! Lease-based consumption through the real listener: receive (text and binary bodies, long
//! poll), ack, lease expiry, nack to the dead-letter queue, stale receipts and every error
//! shape. Messages are produced in process (not through the HTTP produce endpoints).

use crate::common;

use std::time::Duration;

use common::{error_code, Options, Server};
use serde_json::{json, Value};
use sluice_broker::produce::Produce;
use sluice_broker::{Backoff, DlqQuery, GroupRetryPolicy};
use sluice_protocol::Properties;

/// A long poll long enough for anything that should happen within milliseconds.
const WAIT_MS: u64 = 10_000;

/// Produces `bodies` to queue 0 of `topic` with tag `tag` and waits until they are visible.
async fn produce(s: &Server, topic: &str, bodies: &[&[u8]], tag: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for body in bodies {
        let mut p = Produce::new("p", topic, body.to_vec());
        p.queue_id = Some(0);
        let mut props = Properties::new();
        props.insert("TAGS", tag);
        props.insert("KEYS", "k1 k2");
        props.insert("order_id", "42");
        p.properties = props;
        ids.push(
            s.broker
                .services()
                .produce(p)
                .await
                .expect("produce")
                .uniq_key,
        );
    }
    let store = s.broker.store();
    let visible =
        tokio::task::spawn_blocking(move || store.wait_dispatched(Duration::from_secs(10)))
            .await
            .unwrap();
    assert!(visible, "dispatched");
    ids
}

async fn receive(s: &Server, group: &str, topic: &str, body: Value) -> Vec<Value> {
    let (status, resp) = s
        .post(&format!("/v1/groups/{group}/topics/{topic}/receive"), body)
        .await;
    assert_eq!(status, 200, "{resp}");
    resp["messages"].as_array().expect("messages").clone()
}

async fn settle(s: &Server, group: &str, op: &str, body: Value) -> Vec<Value> {
    let (status, resp) = s.post(&format!("/v1/groups/{group}/{op}"), body).await;
    assert_eq!(status, 200, "{resp}");
    resp["results"].as_array().expect("results").clone()
}

fn receipt(m: &Value) -> String {
    m["receipt"].as_str().expect("receipt").to_owned()
}

/// Leases short enough to expire within a test, and a quick retry ladder for group `g`.
fn quick(max_reconsume_times: i32) -> Options {
    Options {
        broker: Box::new(move |cfg| {
            cfg.lease.min_visibility = Duration::from_millis(200);
            cfg.lease.expiry_tick = Duration::from_millis(20);
            let policy = GroupRetryPolicy {
                max_reconsume_times,
                backoff: Backoff::Ladder(vec![Duration::from_millis(10)]),
                ..GroupRetryPolicy::default()
            };
            cfg.retry.groups.insert("g".into(), policy);
        }),
        ..Options::default()
    }
}

/// A receive without `max` used to ask for 10 and get 422 when `max_per_receive` was lower.
#[tokio::test]
async fn a_receive_without_max_works_under_a_low_max_per_receive() {
    let s = common::start_with(Options {
        broker: Box::new(|cfg| cfg.lease.max_per_receive = 3),
        ..Options::default()
    })
    .await;
    s.create_topic("Few", 1);
    produce(&s, "Few", &[b"1", b"2", b"3", b"4", b"5"], "t").await;
    let got = receive(&s, "g", "Few", json!({})).await;
    assert_eq!(got.len(), 3, "the configured most, not 10");
    s.stop().await;
}

#[tokio::test]
async fn receive_returns_text_and_binary_bodies_with_their_metadata_and_ack_finishes_them() {
    let s = common::start().await;
    s.create_topic("Orders", 1);
    let ids = produce(&s, "Orders", &[b"hello", &[0xff, 0xfe]], "created").await;
    let msgs = receive(&s, "g", "Orders", json!({"max": 5})).await;
    assert_eq!(msgs.len(), 2);
    let m = &msgs[0];
    assert_eq!(m["msg_id"], ids[0].as_str());
    assert_eq!(m["body"], "hello");
    assert!(m.get("body_base64").is_none());
    assert_eq!(m["tag"], "created");
    assert_eq!(m["keys"], json!(["k1", "k2"]));
    assert_eq!(m["properties"], json!({"order_id": "42"}));
    assert_eq!(m["delivery_count"], 1);
    assert_eq!(
        (m["queue_id"].as_i64(), m["queue_offset"].as_i64()),
        (Some(0), Some(0))
    );
    assert!(m["born_at_ms"].as_i64().unwrap() > 0);
    assert_eq!(msgs[1]["body_base64"], "//4=");
    assert!(msgs[1].get("body").is_none());

    let receipts: Vec<String> = msgs.iter().map(receipt).collect();
    let results = settle(&s, "g", "ack", json!({ "receipts": receipts })).await;
    assert!(results.iter().all(|r| r["ok"] == true), "{results:?}");
    assert_eq!(s.broker.services().query_offset("g", "Orders", 0), Some(2));
    let again = settle(&s, "g", "ack", json!({ "receipts": receipts[..1] })).await;
    assert_eq!(again[0]["ok"], false);
    assert_eq!(again[0]["error"]["code"], "already_acked");
    assert!(receive(&s, "g", "Orders", json!({})).await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn an_expired_lease_is_redelivered_and_the_old_receipt_answers_receipt_expired() {
    let s = common::start_with(quick(16)).await;
    s.create_topic("Orders", 1);
    let ids = produce(&s, "Orders", &[b"a"], "t").await;
    let first = receive(&s, "g", "Orders", json!({"visibility_ms": 200})).await;
    assert_eq!(first.len(), 1);
    let again = receive(&s, "g", "Orders", json!({"wait_ms": WAIT_MS})).await;
    assert_eq!(again.len(), 1, "redelivered after the lease expired");
    assert_eq!(again[0]["msg_id"], ids[0].as_str());
    assert_eq!(again[0]["topic"], "Orders");
    assert_eq!(again[0]["delivery_count"], 2);
    let stale = settle(&s, "g", "ack", json!({"receipts": [receipt(&first[0])]})).await;
    assert_eq!(stale[0]["error"]["code"], "receipt_expired");
    let ok = settle(&s, "g", "ack", json!({"receipts": [receipt(&again[0])]})).await;
    assert_eq!(ok[0]["ok"], true);
    s.stop().await;
}

#[tokio::test]
async fn nacks_past_the_groups_maximum_put_the_message_in_the_dlq() {
    let s = common::start_with(quick(1)).await;
    s.create_topic("Orders", 1);
    let ids = produce(&s, "Orders", &[b"a"], "t").await;
    for (attempt, delay) in [(1, json!(0)), (2, Value::Null)] {
        let msgs = receive(&s, "g", "Orders", json!({"wait_ms": WAIT_MS})).await;
        assert_eq!(msgs.len(), 1, "delivery {attempt}");
        assert_eq!(msgs[0]["delivery_count"], attempt);
        let results = settle(
            &s,
            "g",
            "nack",
            json!({"receipts": [receipt(&msgs[0])], "delay_ms": delay}),
        )
        .await;
        assert_eq!(results[0]["ok"], true, "{results:?}");
        let twice = settle(&s, "g", "nack", json!({"receipts": [receipt(&msgs[0])]})).await;
        assert_eq!(twice[0]["error"]["code"], "already_nacked");
    }
    let store = s.broker.store();
    tokio::task::spawn_blocking(move || store.wait_dispatched(Duration::from_secs(10)))
        .await
        .unwrap();
    let page = s
        .broker
        .dlq()
        .list(&DlqQuery {
            group: "g".into(),
            ..DlqQuery::default()
        })
        .unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].uniq_key.as_deref(), Some(ids[0].as_str()));
    assert_eq!(page.messages[0].delivery_count, 2);
    assert!(receive(&s, "g", "Orders", json!({})).await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn a_long_poll_returns_a_message_produced_while_it_waits() {
    let s = common::start().await;
    s.create_topic("Orders", 2);
    let url = s.url("/v1/groups/g/topics/Orders/receive");
    let http = s.http.clone();
    let waiting = tokio::spawn(async move {
        let r = http
            .post(url)
            .json(&json!({"wait_ms": WAIT_MS}))
            .send()
            .await
            .unwrap();
        common::status_json(r).await
    });
    tokio::task::yield_now().await;
    let ids = produce(&s, "Orders", &[b"late"], "t").await;
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["messages"][0]["msg_id"], ids[0].as_str());
    s.stop().await;
}

#[tokio::test]
async fn visibility_extends_a_lease_and_foreign_or_garbage_receipts_are_refused() {
    let s = common::start().await;
    s.create_topic("Orders", 1);
    produce(&s, "Orders", &[b"a"], "t").await;
    let msgs = receive(&s, "g", "Orders", json!({})).await;
    let r = receipt(&msgs[0]);
    let ext = settle(
        &s,
        "g",
        "visibility",
        json!({"receipts": [r], "visibility_ms": 60_000}),
    )
    .await;
    assert_eq!(ext[0]["ok"], true);
    let results = settle(&s, "g", "ack", json!({"receipts": ["garbage", r.clone()]})).await;
    assert_eq!(results[0]["error"]["code"], "receipt_unknown");
    assert!(results[0]["error"]["message"].is_string());
    assert_eq!(results[0]["receipt"], "garbage");
    assert_eq!(results[1]["ok"], true);
    let foreign = settle(&s, "other", "ack", json!({"receipts": [r]})).await;
    assert_eq!(foreign[0]["error"]["code"], "receipt_wrong_group");
    s.stop().await;
}

#[tokio::test]
async fn request_errors_use_the_error_shape_with_stable_codes() {
    let s = common::start().await;
    s.create_topic("Orders", 1);
    let recv = "/v1/groups/g/topics/Orders/receive";
    let cases = [
        (
            "/v1/groups/g/topics/Nope/receive",
            json!({}),
            404,
            "topic_not_found",
        ),
        (recv, json!({"wait_ms": 30_001}), 422, "unprocessable"),
        (recv, json!({"max": 0}), 422, "unprocessable"),
        (recv, json!({"max": 33}), 422, "unprocessable"),
        (recv, json!({"visibility_ms": 10}), 422, "unprocessable"),
        (
            recv,
            json!({"tag": "t||".repeat(1_400)}),
            422,
            "unprocessable",
        ),
        (recv, json!({"wait_ms": -1}), 400, "invalid_json"),
        (recv, json!({"unknown": 1}), 400, "invalid_json"),
        (
            "/v1/groups/bad%20group/topics/Orders/receive",
            json!({}),
            400,
            "bad_request",
        ),
        (
            "/v1/groups/g/ack",
            json!({"receipts": []}),
            422,
            "unprocessable",
        ),
        (
            "/v1/groups/g/ack",
            json!({"receipts": vec!["x"; 1001]}),
            422,
            "unprocessable",
        ),
        ("/v1/groups/g/ack", json!({}), 400, "invalid_json"),
        (
            "/v1/groups/g/nack",
            json!({"receipts": ["x"], "delay_ms": 86_400_000u64}),
            422,
            "unprocessable",
        ),
        (
            "/v1/groups/g/visibility",
            json!({"receipts": ["x"], "visibility_ms": 0}),
            422,
            "unprocessable",
        ),
    ];
    for (path, body, status, code) in cases {
        let (got, resp) = s.post(path, body.clone()).await;
        assert_eq!(got, status, "{path} {body}: {resp}");
        assert_eq!(error_code(&resp), code, "{path} {body}");
    }
    let r = s.http.post(s.url(recv)).body("{}").send().await.unwrap();
    let (status, resp) = common::status_json(r).await;
    assert_eq!((status, error_code(&resp)), (415, "unsupported_media_type"));
    s.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_the_consume_endpoints() {
    let s = common::start().await;
    let (_, doc) = s.get("/openapi.json").await;
    for path in [
        "/v1/groups/{group}/topics/{topic}/receive",
        "/v1/groups/{group}/ack",
        "/v1/groups/{group}/nack",
        "/v1/groups/{group}/visibility",
    ] {
        assert!(doc["paths"][path]["post"].is_object(), "{path} missing");
    }
    assert!(doc["components"]["schemas"]["ReceivedMessage"].is_object());
    s.stop().await;
}

fn bodies(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Leases of a deleted topic's messages: expired or nacked after the delete, they came back
/// as retries of a topic created again; and an old lease held the group's committed offset
/// below the new messages, which came back after a restart although acknowledged. The delete
/// drops them: their receipts are unknown, nothing of them is retried, and the group commits
/// the new topic's offsets.
#[tokio::test]
async fn leases_of_a_deleted_topic_are_dropped_with_it() {
    let s = common::start_with(quick(3)).await;
    s.create_topic("Gone", 1);
    produce(&s, "Gone", &[b"old0", b"old1", b"old2"], "t").await;
    let held = receive(&s, "g", "Gone", json!({"max": 3, "visibility_ms": 300})).await;
    assert_eq!(held.len(), 3);
    let (status, body) = s.delete("/v1/topics/Gone").await;
    assert_eq!(status, 204, "{body}");
    let nacked = settle(&s, "g", "nack", json!({"receipts": [receipt(&held[0])]})).await;
    assert_eq!(nacked[0]["error"]["code"], "receipt_unknown", "{nacked:?}");

    s.create_topic("Gone", 1);
    produce(&s, "Gone", &[b"new0", b"new1"], "t").await;
    // Past the old leases' visibility and the retry ladder: nothing old comes back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let got = receive(&s, "g", "Gone", json!({"max": 10, "wait_ms": 2000})).await;
    assert_eq!(bodies(&got), ["new0", "new1"]);
    let receipts: Vec<String> = got.iter().map(receipt).collect();
    let acked = settle(&s, "g", "ack", json!({ "receipts": receipts })).await;
    assert!(acked.iter().all(|r| r["ok"] == true), "{acked:?}");
    let old = settle(&s, "g", "ack", json!({"receipts": [receipt(&held[1])]})).await;
    assert_eq!(old[0]["ok"], false, "{old:?}");
    let more = receive(&s, "g", "Gone", json!({"max": 10, "wait_ms": 300})).await;
    assert!(more.is_empty(), "{:?}", bodies(&more));
    assert_eq!(s.broker.services().query_offset("g", "Gone", 0), Some(5));

    let dir = s.stop().await;
    let s = common::start_in(dir, quick(3)).await;
    let again = receive(&s, "g", "Gone", json!({"max": 10, "wait_ms": 300})).await;
    assert!(
        again.is_empty(),
        "acknowledged, not again: {:?}",
        bodies(&again)
    );
    s.stop().await;
}
