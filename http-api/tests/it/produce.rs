//! Produce over HTTP: JSON and raw sends land in the store with their metadata, batches answer
//! per entry, and every refusal has its status and code.

use crate::common;

use std::time::Duration;

use common::{error_code, Options, Server};
use serde_json::{json, Value};
use sluice_protocol::message::keys;
use sluice_protocol::{Properties, RecordView};

/// The record at `queue_offset` of `topic`/`queue_id`: (body, properties).
fn stored(s: &Server, topic: &str, queue_id: i64, queue_offset: i64) -> (Vec<u8>, Properties) {
    let store = s.broker.services().store().clone();
    assert!(store.wait_dispatched(Duration::from_secs(10)), "dispatch");
    let r = store.get_messages(
        topic,
        i32::try_from(queue_id).unwrap(),
        u64::try_from(queue_offset).unwrap(),
        1,
        usize::MAX,
        None,
    );
    let m = r.messages.first().expect("a stored message");
    let v = RecordView::parse(&m.bytes, m.bytes.len()).unwrap();
    (v.body.to_vec(), Properties::decode(v.properties))
}

/// Posts `messages` as a batch to topic `B`; returns each entry's `ok` and the results.
async fn post_batch(s: &Server, messages: Value) -> (Vec<bool>, Vec<Value>) {
    let (st, r) = s
        .post(
            "/v1/topics/B/messages:batch",
            json!({ "messages": messages }),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let res = r["results"].as_array().unwrap().clone();
    let oks = res.iter().map(|e| e["ok"].as_bool().unwrap()).collect();
    (oks, res)
}

async fn raw(
    s: &Server,
    path: &str,
    body: &'static [u8],
    headers: &[(&str, &str)],
    ct: &str,
) -> (u16, Value) {
    let mut req = s
        .http
        .post(s.url(path))
        .header("content-type", ct)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    common::status_json(req.send().await.unwrap()).await
}

#[tokio::test]
async fn a_json_message_is_stored_with_its_tag_keys_and_properties() {
    let s = common::start().await;
    s.create_topic("Orders", 2);
    let (st, r) = s
        .post(
            "/v1/topics/Orders/messages",
            json!({"body": "hello", "tag": "Created", "keys": ["order-1", "cust-9"],
                   "properties": {"region": "eu"}}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    assert!(r["msg_id"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(r["scheduled"], false);
    let (body, props) = stored(
        &s,
        "Orders",
        r["queue_id"].as_i64().unwrap(),
        r["queue_offset"].as_i64().unwrap(),
    );
    assert_eq!(body, b"hello");
    assert_eq!(props.get(keys::TAGS), Some("Created"));
    assert_eq!(props.get(keys::KEYS), Some("order-1 cust-9"));
    assert_eq!(props.get("region"), Some("eu"));
    assert_eq!(props.get(keys::UNIQ_KEY), r["msg_id"].as_str());
    s.stop().await;
}

#[tokio::test]
async fn a_base64_body_is_stored_as_bytes_and_bad_base64_is_400() {
    let s = common::start().await;
    s.create_topic("Bin", 1);
    let (st, r) = s
        .post(
            "/v1/topics/Bin/messages",
            json!({"body_base64": "AAEC/w=="}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    let (body, _) = stored(&s, "Bin", 0, r["queue_offset"].as_i64().unwrap());
    assert_eq!(body, vec![0, 1, 2, 255]);
    let (st, r) = s
        .post("/v1/topics/Bin/messages", json!({"body_base64": "***"}))
        .await;
    assert_eq!((st, error_code(&r)), (400, "bad_request"));
    let (st, r) = s
        .post(
            "/v1/topics/Bin/messages",
            json!({"body": "a", "body_base64": "YQ=="}),
        )
        .await;
    assert_eq!((st, error_code(&r)), (400, "bad_request"));
    s.stop().await;
}

#[tokio::test]
async fn a_raw_body_takes_its_metadata_from_headers() {
    let s = common::start().await;
    s.create_topic("Raw", 1);
    let headers = [
        ("x-sluice-tag", "T1"),
        ("x-sluice-keys", "a, b"),
        ("x-sluice-property-region", "us"),
        ("x-sluice-producer-group", "raw-producers"),
    ];
    let (st, r) = raw(
        &s,
        "/v1/topics/Raw/messages",
        b"\x00raw\xff",
        &headers,
        "application/octet-stream",
    )
    .await;
    assert_eq!(st, 201, "{r}");
    let (body, props) = stored(&s, "Raw", 0, r["queue_offset"].as_i64().unwrap());
    assert_eq!(body, b"\x00raw\xff");
    assert_eq!(props.get(keys::TAGS), Some("T1"));
    assert_eq!(props.get(keys::KEYS), Some("a b"));
    assert_eq!(props.get("region"), Some("us"));
    s.stop().await;
}

#[tokio::test]
async fn other_content_types_are_415_and_bad_json_is_invalid_json() {
    let s = common::start().await;
    s.create_topic("T", 1);
    let (st, r) = raw(&s, "/v1/topics/T/messages", b"hi", &[], "text/plain").await;
    assert_eq!((st, error_code(&r)), (415, "unsupported_media_type"));
    let (st, r) = raw(
        &s,
        "/v1/topics/T/messages",
        b"{not json",
        &[],
        "application/json",
    )
    .await;
    assert_eq!((st, error_code(&r)), (400, "invalid_json"));
    let (st, r) = s
        .post(
            "/v1/topics/T/messages",
            json!({"body": "x", "colour": "red"}),
        )
        .await;
    assert_eq!(
        (st, error_code(&r)),
        (400, "invalid_json"),
        "unknown fields are refused"
    );
    s.stop().await;
}

#[tokio::test]
async fn reserved_properties_are_refused_with_400() {
    let s = common::start().await;
    s.create_topic("T", 1);
    for name in [
        "UNIQ_KEY",
        "TAGS",
        "KEYS",
        "DELAY",
        "TRAN_MSG",
        "PGROUP",
        "TIMER_DELIVER_MS",
    ] {
        let (st, r) = s
            .post(
                "/v1/topics/T/messages",
                json!({"body": "x", "properties": {name: "1"}}),
            )
            .await;
        assert_eq!((st, error_code(&r)), (400, "bad_request"), "{name}: {r}");
    }
    let (st, r) = raw(
        &s,
        "/v1/topics/T/messages",
        b"x",
        &[("x-sluice-property-uniq_key", "1")],
        "application/octet-stream",
    )
    .await;
    assert_eq!((st, error_code(&r)), (400, "bad_request"));
    s.stop().await;
}

#[tokio::test]
async fn a_body_over_max_message_bytes_is_413() {
    let s = common::start_with(Options {
        http: sluice_http::HttpConfig {
            max_message_bytes: 1024,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            ..sluice_http::HttpConfig::default()
        },
        ..Options::default()
    })
    .await;
    s.create_topic("T", 1);
    let (st, r) = s
        .post("/v1/topics/T/messages", json!({"body": "x".repeat(1025)}))
        .await;
    assert_eq!((st, error_code(&r)), (413, "payload_too_large"));
    let big: &'static [u8] = Box::leak(vec![7u8; 1025].into_boxed_slice());
    let (st, r) = raw(
        &s,
        "/v1/topics/T/messages",
        big,
        &[],
        "application/octet-stream",
    )
    .await;
    assert_eq!((st, error_code(&r)), (413, "payload_too_large"));
    let (st, _) = s
        .post("/v1/topics/T/messages", json!({"body": "x".repeat(1024)}))
        .await;
    assert_eq!(st, 201);
    s.stop().await;
}

/// An HTTP send that creates a topic asked the template for 4 queues (a RocketMQ producer's
/// default): `[broker] default_topic_queue_nums` had no effect on it.
#[tokio::test]
async fn an_auto_created_topic_gets_the_configured_queue_count() {
    let s = common::start_with(Options {
        broker: Box::new(|c| c.default_topic_queue_nums = 6),
        ..Options::default()
    })
    .await;
    let (st, _) = s
        .post("/v1/topics/Fresh/messages", json!({"body": "x"}))
        .await;
    assert_eq!(st, 201);
    let (st, t) = s.get("/v1/topics/Fresh").await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["write_queues"].as_i64(), Some(6), "{t}");
    s.stop().await;
}

#[tokio::test]
async fn an_unknown_topic_is_404_when_auto_create_is_off() {
    let s = common::start_with(Options {
        broker: Box::new(|c| c.auto_create_topic = false),
        ..Options::default()
    })
    .await;
    let (st, r) = s
        .post("/v1/topics/Nowhere/messages", json!({"body": "x"}))
        .await;
    assert_eq!((st, error_code(&r)), (404, "topic_not_found"));
    s.stop().await;
}

/// Retry, dead-letter and system topics take no sends over HTTP: any producer token could
/// otherwise inject "retries" a group's consumers handle, or forge dead letters.
#[tokio::test]
async fn broker_topics_are_403_for_produce_and_transactions() {
    let s = common::start().await;
    for topic in [
        "%25RETRY%25billing",
        "%25DLQ%25billing",
        "RMQ_SYS_TRANS_HALF_TOPIC",
        "SCHEDULE_TOPIC_XXXX",
    ] {
        let (st, r) = s
            .post(
                &format!("/v1/topics/{topic}/messages"),
                json!({"body": "x"}),
            )
            .await;
        assert_eq!((st, error_code(&r)), (403, "forbidden"), "{topic}: {r}");
        let (st, r) = s
            .post(
                &format!("/v1/topics/{topic}/transactions"),
                json!({"body": "x", "producer_group": "pg"}),
            )
            .await;
        assert_eq!(st, 403, "{topic}: {r}");
    }
    assert!(
        s.broker.services().topic("%RETRY%billing").is_none(),
        "no retry topic was created"
    );
    s.stop().await;
}

/// An entry that does not even parse breaks its sharding key like any failed entry.
#[tokio::test]
async fn a_batch_entry_that_does_not_parse_holds_back_its_sharding_key() {
    let s = common::start().await;
    s.create_topic("B", 2);
    let (oks, res) = post_batch(
        &s,
        json!([
            {"body": "one", "sharding_key": "k", "tag": 5},
            {"body": "two", "sharding_key": "k"},
            {"body": "other", "sharding_key": "j"}
        ]),
    )
    .await;
    assert_eq!(oks, vec![false, false, true], "{res:?}");
    assert_eq!(res[0]["error"]["code"], "invalid_json", "{res:?}");
    assert_eq!(res[1]["error"]["code"], "conflict", "{res:?}");
    s.stop().await;
}

/// Properties too large to store are a bad request, delayed or not: a delayed message's was
/// answered 422 "delay refused", the broker's refusal sharing its code with a refused delay.
#[tokio::test]
async fn oversized_properties_are_400_even_on_a_delayed_message() {
    let s = common::start().await;
    let keys: Vec<String> = (0..140).map(|i| format!("{i:0>250}")).collect();
    for delay in [json!(null), json!(1000)] {
        let (st, r) = s
            .post(
                "/v1/topics/Big/messages",
                json!({"body": "x", "keys": keys, "delay_ms": delay}),
            )
            .await;
        assert_eq!((st, error_code(&r)), (400, "bad_request"), "{r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("bytes encoded"),
            "{r}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn a_batch_answers_each_entry_in_order() {
    let s = common::start().await;
    s.create_topic("B", 2);
    let (st, r) = s
        .post(
            "/v1/topics/B/messages:batch",
            json!({"messages": [
                {"body": "one", "sharding_key": "k"},
                {"body": "x", "properties": {"UNIQ_KEY": "mine"}},
                {"body_base64": "%%%"},
                {"body": "two", "sharding_key": "k"},
                {"bogus": 1}
            ]}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let res = r["results"].as_array().unwrap();
    let oks: Vec<bool> = res.iter().map(|e| e["ok"].as_bool().unwrap()).collect();
    assert_eq!(oks, vec![true, false, false, true, false]);
    assert_eq!(res[1]["error"]["code"], "bad_request");
    assert_eq!(res[2]["error"]["code"], "bad_request");
    assert_eq!(res[4]["error"]["code"], "invalid_json");
    assert_eq!(
        res[0]["queue_id"], res[3]["queue_id"],
        "one sharding key, one queue"
    );
    let q = res[0]["queue_id"].as_i64().unwrap();
    assert_eq!(
        res[3]["queue_offset"].as_i64().unwrap(),
        res[0]["queue_offset"].as_i64().unwrap() + 1
    );
    assert_eq!(
        stored(&s, "B", q, res[3]["queue_offset"].as_i64().unwrap()).0,
        b"two"
    );
    s.stop().await;
}

/// A client retries the entries that failed. Had a later entry with the same sharding key
/// been stored, the retried one would be consumed after it: such entries are not sent.
#[tokio::test]
async fn a_batch_does_not_send_past_a_failed_entry_of_the_same_sharding_key() {
    let s = common::start().await;
    s.create_topic("B", 2);
    let (oks, res) = post_batch(
        &s,
        json!([
            {"body": "one", "sharding_key": "k", "properties": {"UNIQ_KEY": "mine"}},
            {"body": "two", "sharding_key": "k"},
            {"body": "other", "sharding_key": "j"}
        ]),
    )
    .await;
    assert_eq!(oks, vec![false, false, true], "{res:?}");
    assert_eq!(res[1]["error"]["code"], "conflict", "{res:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_batch_over_max_batch_is_413_and_an_empty_one_422() {
    let s = common::start().await;
    s.create_topic("B", 1);
    let many: Vec<Value> = (0..257).map(|i| json!({"body": i.to_string()})).collect();
    let (st, r) = s
        .post("/v1/topics/B/messages:batch", json!({"messages": many}))
        .await;
    assert_eq!((st, error_code(&r)), (413, "payload_too_large"));
    let (st, r) = s
        .post("/v1/topics/B/messages:batch", json!({"messages": []}))
        .await;
    assert_eq!((st, error_code(&r)), (422, "unprocessable"));
    s.stop().await;
}

#[tokio::test]
async fn a_delay_out_of_range_is_422() {
    let s = common::start().await;
    s.create_topic("D", 1);
    let far = sluice_store::now_ms() + 40 * 86_400_000;
    for body in [
        json!({"body": "x", "deliver_at_ms": far}),
        json!({"body": "x", "deliver_at_ms": 1_000}),
        json!({"body": "x", "delay_ms": -5}),
        json!({"body": "x", "delay_level": 0}),
    ] {
        let (st, r) = s.post("/v1/topics/D/messages", body.clone()).await;
        assert_eq!((st, error_code(&r)), (422, "unprocessable"), "{body}");
    }
    let (st, r) = s
        .post(
            "/v1/topics/D/messages",
            json!({"body": "x", "delay_ms": 5, "delay_level": 1}),
        )
        .await;
    assert_eq!((st, error_code(&r)), (400, "bad_request"));
    s.stop().await;
}
