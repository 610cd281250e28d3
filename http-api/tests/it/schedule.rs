//! Delayed messages over HTTP: parked until due, then visible; cancel, reschedule and list by
//! business key with definite answers.

use crate::common;

use std::time::Duration;

use common::{error_code, Server};
use serde_json::json;

/// Messages stored in `topic` queue `q` (0 when none).
fn count(s: &Server, topic: &str, q: i32) -> u64 {
    let store = s.broker.services().store().clone();
    assert!(store.wait_dispatched(Duration::from_secs(10)));
    store.max_offset(topic, q) - store.min_offset(topic, q)
}

/// Waits (bounded) until `topic` queue `q` holds `n` messages.
async fn wait_count(s: &Server, topic: &str, q: i32, n: u64) -> bool {
    for _ in 0..400 {
        if count(s, topic, q) >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test]
async fn a_delayed_message_is_invisible_until_due_then_delivered() {
    let s = common::start().await;
    s.create_topic("Later", 1);
    let (st, r) = s
        .post(
            "/v1/topics/Later/messages",
            json!({"body": "soon", "delay_ms": 1500, "keys": ["o-1"]}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    assert_eq!(r["scheduled"], true);
    assert_eq!(r["queue_id"], 0);
    assert!(r.get("queue_offset").is_none());
    let due = r["deliver_at_ms"].as_i64().expect("deliver_at_ms");
    assert!(due > sluice_store::now_ms());
    assert_eq!(count(&s, "Later", 0), 0, "not visible before it is due");
    assert!(
        wait_count(&s, "Later", 0, 1).await,
        "delivered after it is due"
    );
    let (st, l) = s.get("/v1/topics/Later/scheduled?key=o-1").await;
    assert_eq!(st, 200);
    assert_eq!(l["messages"][0]["state"], "delivered");
    assert_eq!(l["messages"][0]["msg_id"], r["msg_id"]);
    s.stop().await;
}

#[tokio::test]
async fn a_delay_level_uses_the_configured_ladder() {
    let s = common::start().await;
    s.create_topic("Lv", 1);
    let before = sluice_store::now_ms();
    let (st, r) = s
        .post(
            "/v1/topics/Lv/messages",
            json!({"body": "x", "delay_level": 2}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    let due = r["deliver_at_ms"].as_i64().unwrap();
    assert!(due >= before + 700, "level 2 is 700ms: {due} vs {before}");
    assert!(wait_count(&s, "Lv", 0, 1).await);
    s.stop().await;
}

#[tokio::test]
async fn cancel_by_key_answers_cancelled_then_already_cancelled_and_nothing_is_delivered() {
    let s = common::start().await;
    s.create_topic("C", 1);
    for i in 0..2 {
        let (st, _) = s
            .post(
                "/v1/topics/C/messages",
                json!({"body": format!("m{i}"), "delay_ms": 3_600_000, "keys": ["order-7"]}),
            )
            .await;
        assert_eq!(st, 201);
    }
    let (st, r) = s.delete("/v1/topics/C/scheduled/order-7").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (r["result"].as_str(), r["count"].as_u64()),
        (Some("cancelled"), Some(2))
    );
    // A retried cancel (its first answer lost) is told apart from an unknown key.
    let (_, r) = s.delete("/v1/topics/C/scheduled/order-7").await;
    assert_eq!(
        (r["result"].as_str(), r["count"].as_u64()),
        (Some("already_cancelled"), Some(2))
    );
    assert_eq!(r["already_cancelled"], 2);
    let (_, r) = s.delete("/v1/topics/C/scheduled/never-sent").await;
    assert_eq!(
        (r["result"].as_str(), r["matched"].as_u64()),
        (Some("not_found"), Some(0))
    );
    let (_, l) = s.get("/v1/topics/C/scheduled?key=order-7").await;
    assert!(l["messages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["state"] == "cancelled"));
    s.stop().await;
}

#[tokio::test]
async fn cancelling_a_delivered_message_answers_already_delivered() {
    let s = common::start().await;
    s.create_topic("Done", 1);
    let (st, _) = s
        .post(
            "/v1/topics/Done/messages",
            json!({"body": "x", "delay_ms": 300, "keys": ["k"]}),
        )
        .await;
    assert_eq!(st, 201);
    assert!(wait_count(&s, "Done", 0, 1).await);
    let (_, r) = s.delete("/v1/topics/Done/scheduled/k").await;
    assert_eq!(
        (r["result"].as_str(), r["count"].as_u64()),
        (Some("already_delivered"), Some(1))
    );
    s.stop().await;
}

#[tokio::test]
async fn reschedule_moves_a_pending_message_and_cancel_by_id_works() {
    let s = common::start().await;
    s.create_topic("R", 1);
    let (_, sent) = s
        .post(
            "/v1/topics/R/messages",
            json!({"body": "x", "delay_ms": 3_600_000, "keys": ["r1"]}),
        )
        .await;
    let (st, r) = s
        .patch("/v1/topics/R/scheduled/r1", json!({"delay_ms": 200}))
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (r["result"].as_str(), r["count"].as_u64()),
        (Some("rescheduled"), Some(1))
    );
    assert!(wait_count(&s, "R", 0, 1).await, "delivered at the new time");
    let (_, l) = s.get("/v1/topics/R/scheduled?key=r1").await;
    let (_, r) = s
        .patch("/v1/topics/R/scheduled/r1", json!({"delay_ms": 1000}))
        .await;
    assert_eq!(r["result"], "already_delivered", "{r} {l}");
    let (_, r) = s
        .patch("/v1/topics/R/scheduled/nothing", json!({"delay_ms": 1000}))
        .await;
    assert_eq!(r["result"], "not_found");

    let (_, sent2) = s
        .post(
            "/v1/topics/R/messages",
            json!({"body": "y", "delay_ms": 3_600_000}),
        )
        .await;
    let id = sent2["msg_id"].as_str().unwrap();
    let (_, r) = s
        .delete(&format!("/v1/topics/R/scheduled/{id}?by=id"))
        .await;
    assert_eq!(r["result"], "cancelled", "{r}");
    assert_ne!(sent["msg_id"], sent2["msg_id"]);
    s.stop().await;
}

#[tokio::test]
async fn reschedule_refuses_bad_bodies_and_times() {
    let s = common::start().await;
    s.create_topic("R", 1);
    let (st, r) = s
        .patch(
            "/v1/topics/R/scheduled/k",
            json!({"delay_ms": 1, "deliver_at_ms": 1}),
        )
        .await;
    assert_eq!((st, error_code(&r)), (400, "bad_request"));
    let (_, _) = s
        .post(
            "/v1/topics/R/messages",
            json!({"body": "x", "delay_ms": 3_600_000, "keys": ["k"]}),
        )
        .await;
    let far = sluice_store::now_ms() + 40 * 86_400_000;
    let (st, r) = s
        .patch("/v1/topics/R/scheduled/k", json!({"deliver_at_ms": far}))
        .await;
    assert_eq!((st, error_code(&r)), (422, "unprocessable"));
    // A blank key is a malformed request (it was answered 422 "new time out of range").
    let (st, r) = s
        .patch("/v1/topics/R/scheduled/%20", json!({"delay_ms": 1_000}))
        .await;
    assert_eq!((st, error_code(&r)), (400, "bad_request"), "{r}");
    let (st, r) = s.get("/v1/topics/R/scheduled").await;
    assert_eq!((st, error_code(&r)), (400, "bad_request"));
    s.stop().await;
}

/// Cancels sent exactly while the timers fire: every answer is definite and true. `cancelled`
/// means never delivered; `already_delivered` means delivered once; nothing else is said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_racing_the_release_answer_definitely_and_truly() {
    let s = common::start().await;
    s.create_topic("Race", 1);
    let base = sluice_store::now_ms() + 1_000;
    let n = 80;
    for i in 0..n {
        let (st, r) = s
            .post(
                "/v1/topics/Race/messages",
                json!({"body": format!("m{i}"), "keys": [format!("k-{i}")], "deliver_at_ms": base + i * 3}),
            )
            .await;
        assert_eq!(st, 201, "{r}");
    }
    let wait = (base - sluice_store::now_ms()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (http, url) = (
            s.http.clone(),
            s.url(&format!("/v1/topics/Race/scheduled/k-{i}")),
        );
        tasks.spawn(async move {
            let r = http.delete(url).send().await.expect("DELETE");
            (i, common::status_json(r).await)
        });
    }
    let mut answers = std::collections::BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        let (i, (st, body)) = r.unwrap();
        assert_eq!(st, 200, "{body}");
        answers.insert(i, body["result"].as_str().unwrap().to_owned());
    }
    let delivered = answers
        .values()
        .filter(|a| *a == "already_delivered")
        .count() as u64;
    assert!(answers
        .values()
        .all(|a| a == "cancelled" || a == "already_delivered"));
    assert!(wait_count(&s, "Race", 0, delivered).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&s, "Race", 0),
        delivered,
        "no cancelled message was delivered"
    );
    for (i, answer) in &answers {
        let (_, l) = s.get(&format!("/v1/topics/Race/scheduled?key=k-{i}")).await;
        let state = l["messages"][0]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let expected = if answer == "cancelled" {
            "cancelled"
        } else {
            "delivered"
        };
        assert_eq!(state, expected, "k-{i} answered {answer}");
    }
    eprintln!(
        "race: {delivered} delivered, {} cancelled",
        n as u64 - delivered
    );
    s.stop().await;
}

/// A nacked message waits as a timer of its group's retry topic, keeping its keys: a
/// `producer` token could list, cancel or move a consumer group's retries (cancelled, the
/// message was never delivered again). Retry, dead-letter and system topics need `admin`.
#[tokio::test]
async fn a_groups_retry_timers_are_an_admin_tokens_to_list_cancel_or_move() {
    let mut o = common::Options::default();
    o.http.tokens = common::producer_and_admin_tokens();
    let s = common::start_with(o).await;
    let call = |method: reqwest::Method, path: &str, token: &str| {
        let req = s
            .http
            .request(method, s.url(path))
            .bearer_auth(token.to_owned());
        async move {
            let r = req.json(&json!({"delay_ms": 60_000})).send().await.unwrap();
            common::status_json(r).await
        }
    };
    let producer = "producer-secret-0123456789";
    for (method, path) in [
        (
            reqwest::Method::DELETE,
            "/v1/topics/%25RETRY%25orders/scheduled/ORDER-42",
        ),
        (
            reqwest::Method::PATCH,
            "/v1/topics/%25RETRY%25orders/scheduled/ORDER-42",
        ),
        (
            reqwest::Method::GET,
            "/v1/topics/%25RETRY%25orders/scheduled?key=ORDER-42",
        ),
        (
            reqwest::Method::DELETE,
            "/v1/topics/%25DLQ%25orders/scheduled/ORDER-42",
        ),
        (
            reqwest::Method::DELETE,
            "/v1/topics/RMQ_SYS_TRANS_HALF_TOPIC/scheduled/K",
        ),
    ] {
        let (status, body) = call(method.clone(), path, producer).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(error_code(&body), "forbidden");
    }
    let (status, body) = call(
        reqwest::Method::DELETE,
        "/v1/topics/%25RETRY%25orders/scheduled/ORDER-42",
        "admin-secret-0123456789abcd",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "not_found");
    let (status, body) = call(
        reqwest::Method::DELETE,
        "/v1/topics/Orders/scheduled/ORDER-42",
        producer,
    )
    .await;
    assert_eq!(status, 200, "a producer's own topic: {body}");
    s.stop().await;
}
