//! Dead letters over HTTP: listed with their failure reason and origin, replayed by an
//! asynchronous task whose status and cancel are endpoints too.

use crate::common;

use std::time::Duration;

use common::{error_code, Server};
use serde_json::{json, Value};
use sluice_broker::SendBack;

/// Sends `body` to `topic` over HTTP and dead-letters it for `group`.
async fn dead_letter(s: &Server, group: &str, topic: &str, body: &str, reason: &str) {
    let (st, r) = s
        .post(
            &format!("/v1/topics/{topic}/messages"),
            json!({"body": body, "keys": [body]}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    let (_, phys) =
        sluice_protocol::message::ids::decode_offset_msg_id(r["offset_msg_id"].as_str().unwrap())
            .unwrap();
    let services = s.broker.services();
    assert!(services.store().wait_dispatched(Duration::from_secs(10)));
    let out = services
        .send_back(&SendBack {
            group: group.into(),
            phys_offset: phys,
            delay_level: -1,
            reason: Some(reason.into()),
            ..SendBack::default()
        })
        .await
        .expect("dead-lettered");
    assert!(out.dead_letter);
    assert!(services.store().wait_dispatched(Duration::from_secs(10)));
}

/// Polls a replay (bounded) until it is no longer running.
async fn finished(s: &Server, id: &str) -> Value {
    for _ in 0..400 {
        let (st, r) = s.get(&format!("/v1/replays/{id}")).await;
        assert_eq!(st, 200, "{r}");
        if r["state"] != "running" {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("replay {id} did not finish");
}

/// Receives (group billing, topic Orders, up to 10) and counts the messages with `body`
/// delivered as messages of Orders; the answer too, for assertion messages.
async fn received_from_orders(s: &Server, body: &str) -> (usize, Value) {
    let (st, r) = s
        .post(
            "/v1/groups/billing/topics/Orders/receive",
            json!({"max": 10}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let n = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["body"] == body && m["topic"] == "Orders")
        .count();
    (n, r)
}

#[tokio::test]
async fn dead_letters_are_listed_with_reason_origin_and_count() {
    let s = common::start().await;
    s.create_topic("Orders", 1);
    dead_letter(&s, "billing", "Orders", "m1", "card declined").await;
    dead_letter(&s, "billing", "Orders", "m2", "timeout").await;
    let (st, r) = s.get("/v1/groups/billing/dlq").await;
    assert_eq!(st, 200, "{r}");
    let msgs = r["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["failure_reason"], "card declined");
    assert_eq!(msgs[0]["original_topic"], "Orders");
    assert_eq!(msgs[0]["body"], "m1");
    assert!(msgs[0]["reconsume_times"].is_i64());
    assert!(r.get("next").is_none(), "one page holds both");

    let (_, r) = s.get("/v1/groups/billing/dlq?limit=1").await;
    assert_eq!(r["messages"].as_array().unwrap().len(), 1);
    let next = r["next"].as_u64().expect("a next page");
    let (_, r) = s
        .get(&format!("/v1/groups/billing/dlq?limit=1&after={next}"))
        .await;
    assert_eq!(r["messages"][0]["body"], "m2");
    let (_, r) = s.get("/v1/groups/billing/dlq?key=m2").await;
    assert_eq!(r["messages"].as_array().unwrap().len(), 1);
    let (st, r) = s.get("/v1/groups/billing/dlq?limit=0").await;
    assert_eq!((st, error_code(&r)), (400, "bad_request"));
    s.stop().await;
}

#[tokio::test]
async fn a_replay_to_the_groups_retry_topic_named_explicitly_is_received_again() {
    let s = common::start().await;
    s.create_topic("Orders", 1);
    dead_letter(&s, "billing", "Orders", "m1", "boom").await;
    let (st, r) = s
        .post(
            "/v1/groups/billing/dlq/replay",
            json!({"rate_per_sec": 1000, "target_topic": "%RETRY%billing"}),
        )
        .await;
    assert_eq!(st, 202, "{r}");
    let done = finished(&s, r["id"].as_str().unwrap()).await;
    assert_eq!(done["replayed"].as_u64(), Some(1), "{done}");
    assert!(s
        .broker
        .services()
        .store()
        .wait_dispatched(Duration::from_secs(10)));
    let (copies, r) = received_from_orders(&s, "m1").await;
    assert_eq!(copies, 2, "the original and the replayed copy: {r}");
    s.stop().await;
}

#[tokio::test]
async fn a_replay_copies_dead_letters_back_and_reports_progress() {
    let s = common::start().await;
    s.create_topic("Orders", 1);
    dead_letter(&s, "billing", "Orders", "m1", "boom").await;
    let store = s.broker.services().store().clone();
    let before = store.max_offset("Orders", 0);
    let retry_before = store.max_offset("%RETRY%billing", 0);

    let (st, r) = s
        .post(
            "/v1/groups/billing/dlq/replay",
            json!({"rate_per_sec": 1000}),
        )
        .await;
    assert_eq!(st, 202, "{r}");
    let id = r["id"].as_str().unwrap().to_owned();
    let done = finished(&s, &id).await;
    assert_eq!(
        (done["state"].as_str(), done["replayed"].as_u64()),
        (Some("completed"), Some(1))
    );
    assert!(store.wait_dispatched(Duration::from_secs(10)));
    assert_eq!(
        store.max_offset("%RETRY%billing", 0),
        retry_before + 1,
        "the copy is a retry of the group's"
    );
    assert_eq!(
        store.max_offset("Orders", 0),
        before,
        "other groups of Orders do not get it again"
    );
    // The group receives it as a message of Orders: the original (never consumed over HTTP
    // here) and the replayed copy.
    let (copies, r) = received_from_orders(&s, "m1").await;
    assert_eq!(copies, 2, "the replayed letter is received again: {r}");

    let (_, r) = s.get("/v1/groups/billing/dlq").await;
    assert!(
        r["messages"].as_array().unwrap().is_empty(),
        "replayed letters are hidden"
    );
    let (_, r) = s.get("/v1/groups/billing/dlq?include_replayed=true").await;
    assert_eq!(r["messages"][0]["replayed"], true);

    let (st, r) = s.delete(&format!("/v1/replays/{id}")).await;
    assert_eq!(
        (st, r["state"].as_str()),
        (200, Some("completed")),
        "cancel after the end changes nothing"
    );
    let (st, r) = s.get("/v1/replays").await;
    assert_eq!(st, 200);
    assert_eq!(r["replays"][0]["id"], id.as_str());
    s.stop().await;
}

#[tokio::test]
async fn replay_refusals_have_their_codes() {
    let s = common::start().await;
    let (st, r) = s.get("/v1/replays/no-such-task").await;
    assert_eq!((st, error_code(&r)), (404, "not_found"));
    let (st, r) = s.delete("/v1/replays/no-such-task").await;
    assert_eq!((st, error_code(&r)), (404, "not_found"));
    let (st, r) = s
        .post("/v1/groups/g/dlq/replay", json!({"rate_per_sec": 0}))
        .await;
    assert_eq!((st, error_code(&r)), (422, "unprocessable"));
    let (st, r) = s
        .post(
            "/v1/groups/g/dlq/replay",
            json!({"target_topic": "bad topic"}),
        )
        .await;
    assert_eq!((st, error_code(&r)), (400, "bad_request"));
    for system in ["SLUICE_SYS_TIMER", "RMQ_SYS_TRANS_HALF_TOPIC", "%DLQ%g"] {
        let (st, r) = s
            .post("/v1/groups/g/dlq/replay", json!({"target_topic": system}))
            .await;
        assert_eq!((st, error_code(&r)), (403, "forbidden"), "{system}: {r}");
    }
    let (st, r) = s.post("/v1/groups/g/dlq/replay", json!({"speed": 1})).await;
    assert_eq!((st, error_code(&r)), (400, "invalid_json"));
    let (st, r) = s.post("/v1/groups/nobody/dlq/replay", json!({})).await;
    assert_eq!((st, error_code(&r)), (404, "not_found"), "{r}");
    let (_, r) = s.get("/v1/replays").await;
    assert_eq!(
        r["replays"].as_array().map(Vec::len),
        Some(0),
        "no task made: {r}"
    );
    s.stop().await;
}
