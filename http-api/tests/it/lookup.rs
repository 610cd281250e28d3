//! `GET /v1/messages` (a message and its trace) and the figures endpoints
//! (`/v1/stats/store`, `/v1/stats/schedule`, `/v1/stats/txn`) the console draws.

use crate::common;

use std::time::Duration;

use common::{error_code, Server};
use serde_json::{json, Value};

/// The event kinds of the one message a look-up found.
fn kinds(r: &Value) -> Vec<String> {
    let msgs = r["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 1, "{r}");
    msgs[0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls `path` (bounded) until `done` holds.
async fn until(s: &Server, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let (st, r) = s.get(path).await;
        if st == 200 && done(&r) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{path} never reached the expected state");
}

#[tokio::test]
async fn a_produced_message_is_found_by_id_offset_id_and_key_with_its_body() {
    let s = common::start().await;
    s.create_topic("Orders", 1);
    let (st, r) = s
        .post(
            "/v1/topics/Orders/messages",
            json!({"body": "order 42", "keys": ["order-42"], "tag": "Created"}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    let id = r["msg_id"].as_str().unwrap();
    let found = until(&s, &format!("/v1/messages?id={id}"), |r| {
        r["messages"].as_array().is_some_and(|m| !m.is_empty())
    })
    .await;
    assert_eq!(kinds(&found), ["produced"]);
    let m = &found["messages"][0];
    assert_eq!(
        (m["topic"].as_str(), m["body"].as_str(), m["tag"].as_str()),
        (Some("Orders"), Some("order 42"), Some("Created"))
    );
    assert_eq!(m["keys"], json!(["order-42"]));
    assert_eq!(m["properties"]["UNIQ_KEY"], id);

    let offset_id = r["offset_msg_id"].as_str().unwrap();
    let (_, by_offset) = s.get(&format!("/v1/messages?id={offset_id}")).await;
    assert_eq!(by_offset["messages"][0]["msg_id"], id, "{by_offset}");
    let (_, by_key) = s.get("/v1/messages?key=order-42&topic=Orders").await;
    assert_eq!(by_key["messages"][0]["msg_id"], id, "{by_key}");
    let (st, none) = s.get("/v1/messages?key=order-43&topic=Orders").await;
    assert_eq!((st, none["messages"].as_array().unwrap().len()), (200, 0));
    s.stop().await;
}

#[tokio::test]
async fn a_transaction_is_traced_from_half_to_committed_by_the_operator() {
    let s = common::start().await;
    let (st, t) = s
        .post(
            "/v1/topics/Invoices/transactions",
            json!({"body": "invoice", "keys": ["inv-1"], "producer_group": "invoicing"}),
        )
        .await;
    assert_eq!(st, 201, "{t}");
    let (id, txn_id) = (t["msg_id"].as_str().unwrap(), t["txn_id"].as_str().unwrap());
    let half = until(&s, &format!("/v1/messages?id={id}&topic=Invoices"), |r| {
        r["messages"][0]["events"][0]["state"] == "open"
    })
    .await;
    assert_eq!(kinds(&half), ["half"]);
    assert_eq!(half["messages"][0]["events"][0]["state"], "open", "{half}");
    assert_eq!(half["messages"][0]["events"][0]["group"], "invoicing");

    let (st, r) = s
        .post(
            &format!("/v1/transactions/{txn_id}/force"),
            json!({"action": "commit"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let done = until(&s, &format!("/v1/messages?id={id}&topic=Invoices"), |r| {
        r["messages"][0]["events"]
            .as_array()
            .is_some_and(|e| e.len() == 2)
    })
    .await;
    assert_eq!(kinds(&done), ["half", "committed"]);
    assert_eq!(done["messages"][0]["events"][0]["state"], "committed");
    assert_eq!(
        done["messages"][0]["body"], "invoice",
        "the shown copy is the committed one"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_scheduled_message_is_traced_with_its_timer_state() {
    let s = common::start().await;
    let (st, r) = s
        .post(
            "/v1/topics/Reminders/messages",
            json!({"body": "later", "keys": ["rem-1"], "delay_ms": 600_000}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    let (st, soon) = s
        .post(
            "/v1/topics/Reminders/messages",
            json!({"body": "soon", "keys": ["rem-2"], "delay_ms": 100}),
        )
        .await;
    assert_eq!(st, 201, "{soon}");
    let parked = until(&s, "/v1/messages?key=rem-1&topic=Reminders", |r| {
        r["messages"].as_array().is_some_and(|m| !m.is_empty())
    })
    .await;
    assert_eq!(kinds(&parked), ["scheduled"]);
    let ev = &parked["messages"][0]["events"][0];
    assert_eq!(ev["state"], "pending", "{parked}");
    assert!(ev["due_ms"].as_i64().is_some(), "{parked}");

    let (_, c) = s.delete("/v1/topics/Reminders/scheduled/rem-1").await;
    assert_eq!(c["result"], "cancelled", "{c}");
    let (_, cancelled) = s.get("/v1/messages?key=rem-1&topic=Reminders").await;
    assert_eq!(
        cancelled["messages"][0]["events"][0]["state"], "cancelled",
        "{cancelled}"
    );

    let id = soon["msg_id"].as_str().unwrap();
    let released = until(&s, &format!("/v1/messages?id={id}"), |r| {
        r["messages"][0]["events"]
            .as_array()
            .is_some_and(|e| e.len() == 2)
    })
    .await;
    assert_eq!(kinds(&released), ["scheduled", "released"]);
    assert_eq!(released["messages"][0]["events"][0]["state"], "delivered");
    s.stop().await;
}

/// The timer a reschedule replaced showed the copy's state ("delivered" once the copy was).
#[tokio::test]
async fn a_rescheduled_message_shows_its_replaced_timer_as_rescheduled() {
    let s = common::start().await;
    let (st, r) = s
        .post(
            "/v1/topics/Reminders/messages",
            json!({"body": "r", "keys": ["rk"], "delay_ms": 600_000}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    let (st, r) = s
        .patch(
            "/v1/topics/Reminders/scheduled/rk",
            json!({"delay_ms": 100}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let traced = until(&s, "/v1/messages?key=rk&topic=Reminders", |r| {
        r["messages"][0]["events"]
            .as_array()
            .is_some_and(|e| e.len() == 3)
    })
    .await;
    assert_eq!(
        kinds(&traced),
        ["scheduled", "scheduled", "released"],
        "{traced}"
    );
    let events = &traced["messages"][0]["events"];
    let states: Vec<&str> = (0..2)
        .map(|i| events[i]["state"].as_str().unwrap_or("none"))
        .collect();
    assert_eq!(states, ["rescheduled", "delivered"], "{traced}");
    s.stop().await;
}

#[tokio::test]
async fn a_nacked_message_is_traced_through_retry_and_consumption() {
    let s = common::start().await;
    s.create_topic("Jobs", 1);
    let (_, r) = s
        .post(
            "/v1/topics/Jobs/messages",
            json!({"body": "job", "keys": ["job-1"]}),
        )
        .await;
    let id = r["msg_id"].as_str().unwrap().to_owned();
    let mut receipt = Value::Null;
    for _ in 0..50 {
        let (_, got) = s
            .post(
                "/v1/groups/workers/topics/Jobs/receive",
                json!({"max": 1, "wait_ms": 500}),
            )
            .await;
        if let Some(m) = got["messages"].as_array().and_then(|m| m.first()) {
            receipt = m["receipt"].clone();
            break;
        }
    }
    let (st, n) = s
        .post("/v1/groups/workers/nack", json!({"receipts": [receipt]}))
        .await;
    assert_eq!(st, 200, "{n}");
    let traced = until(&s, &format!("/v1/messages?id={id}"), |r| {
        let k: Vec<&str> = r["messages"][0]["events"]
            .as_array()
            .map(|e| e.iter().filter_map(|e| e["kind"].as_str()).collect())
            .unwrap_or_default();
        k.contains(&"retried") && k.contains(&"consumed")
    })
    .await;
    let k = kinds(&traced);
    assert_eq!(k[0], "produced", "{traced}");
    let consumed = traced["messages"][0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "consumed")
        .unwrap()
        .clone();
    assert_eq!(
        (consumed["group"].as_str(), consumed["topic"].as_str()),
        (Some("workers"), Some("Jobs"))
    );
    s.stop().await;
}

/// An HTTP consumer that acked (and never failed a delivery) has no retry topic, and its
/// consumption was missing from the trace.
#[tokio::test]
async fn an_acked_message_is_traced_as_consumed_by_its_http_group() {
    let s = common::start().await;
    s.create_topic("Acked", 1);
    let (_, r) = s
        .post(
            "/v1/topics/Acked/messages",
            json!({"body": "a", "keys": ["ak-1"]}),
        )
        .await;
    let id = r["msg_id"].as_str().unwrap().to_owned();
    let (_, got) = s
        .post(
            "/v1/groups/ackers/topics/Acked/receive",
            json!({"max": 1, "wait_ms": 5000}),
        )
        .await;
    let receipt = got["messages"][0]["receipt"].clone();
    let (st, a) = s
        .post("/v1/groups/ackers/ack", json!({"receipts": [receipt]}))
        .await;
    assert_eq!(st, 200, "{a}");
    let traced = until(&s, &format!("/v1/messages?id={id}"), |r| {
        r["messages"][0]["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == "consumed"))
    })
    .await;
    let consumed: Vec<&Value> = traced["messages"][0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "consumed")
        .collect();
    assert_eq!(consumed.len(), 1, "{traced}");
    assert_eq!(consumed[0]["group"], "ackers", "{traced}");
    s.stop().await;
}

#[tokio::test]
async fn a_look_up_needs_exactly_an_id_or_a_key_with_its_topic() {
    let s = common::start().await;
    for bad in [
        "/v1/messages",
        "/v1/messages?key=k",
        "/v1/messages?id=a&key=b&topic=T",
        "/v1/messages?id=",
    ] {
        let (st, r) = s.get(bad).await;
        assert_eq!((st, error_code(&r)), (400, "bad_request"), "{bad}");
    }
    let (st, r) = s
        .get("/v1/messages?id=7F0000010000000000000000DEADBEEF")
        .await;
    assert_eq!(
        (st, r["messages"].as_array().unwrap().len()),
        (200, 0),
        "{r}"
    );
    s.stop().await;
}

#[tokio::test]
async fn figures_report_store_schedule_and_transactions() {
    let s = common::start().await;
    let (st, _) = s.post("/v1/topics/T/messages", json!({"body": "x"})).await;
    assert_eq!(st, 201);
    let (_, _) = s
        .post(
            "/v1/topics/T/messages",
            json!({"body": "later", "delay_ms": 600_000}),
        )
        .await;
    let (_, _) = s
        .post(
            "/v1/topics/T/transactions",
            json!({"body": "t", "producer_group": "g"}),
        )
        .await;

    let store = until(&s, "/v1/stats/store", |f| {
        f["messages_stored"].as_u64() >= Some(1)
    })
    .await;
    assert!(
        store["sync_latency"]["count"].as_u64().unwrap() >= 1,
        "{store}"
    );
    let buckets = store["sync_latency"]["buckets"].as_array().unwrap();
    assert!(
        buckets.last().unwrap().get("le").is_none(),
        "the last bucket is unbounded"
    );
    assert!(
        store["disk_used_ratio"]
            .as_f64()
            .is_some_and(|r| (0.0..=1.0).contains(&r)),
        "{store}"
    );

    let sched = until(&s, "/v1/stats/schedule", |f| f["pending"] == 1).await;
    assert_eq!(sched["pending_by_topic"]["T"], 1, "{sched}");
    assert!(sched["lateness_ms"]["buckets"].as_array().unwrap().len() > 1);

    let txn = until(&s, "/v1/stats/txn", |f| f["open"] == 1).await;
    assert_eq!(txn["halves_stored"], 1, "{txn}");
    s.stop().await;
}

/// A key naming several large messages was answered with every body (twenty of 4 MiB were
/// 80 MiB, more as escaped JSON), and the trace held every copy's record meanwhile. Bodies
/// past 8 MiB are left out, and say so; the message is still listed with its trace.
#[tokio::test]
async fn a_key_naming_large_messages_answers_at_most_eight_mib_of_bodies() {
    let s = common::start_with(common::Options {
        broker: Box::new(|c| {
            c.store.max_record_size = 4 << 20;
            c.store.segment_size = 16 << 20;
            c.store.max_write_batch_bytes = 8 << 20;
        }),
        ..common::Options::default()
    })
    .await;
    s.create_topic("Big", 1);
    let services = s.broker.services();
    for i in 0..3 {
        let mut p = sluice_broker::produce::Produce::new("p", "Big", vec![b'a' + i; 3 << 20]);
        let mut props = sluice_protocol::Properties::new();
        props.insert("KEYS", "bulky");
        p.properties = props;
        services.produce(p).await.expect("produced");
    }
    let found = until(&s, "/v1/messages?key=bulky&topic=Big", |r| {
        r["messages"].as_array().is_some_and(|m| m.len() == 3)
    })
    .await;
    let msgs = found["messages"].as_array().unwrap();
    let shown: Vec<bool> = msgs.iter().map(|m| m["body"].is_string()).collect();
    assert_eq!(
        shown,
        [true, true, false],
        "6 MiB shown, the third past 8 MiB"
    );
    assert_eq!(msgs[2]["body_omitted"], true);
    assert!(msgs[2]["events"].as_array().is_some_and(|e| !e.is_empty()));
    assert_eq!(
        found["truncated"], false,
        "every matching message is listed"
    );
    s.stop().await;
}
