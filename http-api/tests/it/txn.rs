//! Transactions over HTTP, through the real listener: send, commit, rollback, conflicts, check
//! back by webhook (a real HTTP server in the test) and by polling, the operator endpoints.
//!
//! Waits are bounded loops on an observable condition (never a timing threshold): the broker's
//! checks come every 500 ms in these tests (`tests/common`).

use crate::common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{error_code, Server};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{json, Value};
use sha2::Sha256;
use sluice_http::txn::CheckConfig;
use sluice_http::HttpConfig;
use sluice_protocol::message::record::RecordView;
use sluice_protocol::Properties;

const SECRET: &str = "webhook-secret-0123456789";

/// Rounds of a bounded wait (each sleeps [`NAP`]); ample for several check intervals.
const ROUNDS: usize = 400;
const NAP: Duration = Duration::from_millis(50);

async fn start_signed() -> Server {
    let mut opts = common::Options::default();
    opts.http = HttpConfig {
        checks: CheckConfig {
            webhook_secret: Some(SECRET.into()),
            check_url_hosts: vec!["127.0.0.1".into()],
            ..CheckConfig::default()
        },
        ..opts.http
    };
    let s = common::start_with(opts).await;
    s.create_topic("Orders", 2);
    s
}

async fn send(s: &Server, group: &str, extra: Value) -> (String, String) {
    let mut body = json!({"body": "order-42 paid", "keys": ["order-42"], "tag": "Paid", "producer_group": group});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, v) = s.post("/v1/topics/Orders/transactions", body).await;
    assert_eq!(status, 201, "{v}");
    (
        v["txn_id"].as_str().unwrap().to_owned(),
        v["msg_id"].as_str().unwrap().to_owned(),
    )
}

/// How many records in the topic's queues carry `msg_id` as UNIQ_KEY.
fn copies_in_topic(s: &Server, topic: &str, msg_id: &str) -> usize {
    let services = s.broker.services();
    let store = services.store();
    let mut found = 0;
    for queue in 0..2 {
        let r = store.get_messages(topic, queue, 0, 1000, 64 << 20, None);
        for m in &r.messages {
            let view = RecordView::parse(&m.bytes, usize::MAX).expect("record");
            if Properties::decode(view.properties).get("UNIQ_KEY") == Some(msg_id) {
                found += 1;
            }
        }
    }
    found
}

/// Waits (bounded) until the message is in its topic; false if it never came.
async fn appears(s: &Server, msg_id: &str) -> bool {
    for _ in 0..ROUNDS {
        if copies_in_topic(s, "Orders", msg_id) > 0 {
            return true;
        }
        tokio::time::sleep(NAP).await;
    }
    false
}

/// Waits (bounded) until `GET /v1/transactions/{id}` satisfies `cond`; returns the last view.
async fn wait_for_txn(s: &Server, txn_id: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..ROUNDS {
        let (status, v) = s.get(&format!("/v1/transactions/{txn_id}")).await;
        assert_eq!(status, 200, "{v}");
        if cond(&v) {
            return v;
        }
        last = v;
        tokio::time::sleep(NAP).await;
    }
    panic!("transaction never reached the expected state; last view: {last}");
}

#[tokio::test]
async fn a_committed_transaction_is_visible_exactly_once_and_a_repeat_answers_the_same() {
    let s = start_signed().await;
    let (id, msg_id) = send(&s, "orders", json!({})).await;
    assert_eq!(
        copies_in_topic(&s, "Orders", &msg_id),
        0,
        "invisible before the commit"
    );
    let (status, v) = s
        .post(&format!("/v1/transactions/{id}/commit"), json!({}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["result"].as_str(), v["repeated"].as_bool()),
        (Some("committed"), Some(false))
    );
    let (status, again) = s
        .post(&format!("/v1/transactions/{id}/commit"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (again["result"].as_str(), again["repeated"].as_bool()),
        (Some("committed"), Some(true))
    );
    assert!(appears(&s, &msg_id).await);
    assert_eq!(copies_in_topic(&s, "Orders", &msg_id), 1);
    s.stop().await;
}

#[tokio::test]
async fn a_rolled_back_transaction_is_never_visible_and_cannot_be_committed() {
    let s = start_signed().await;
    let (id, msg_id) = send(&s, "orders", json!({"body_base64": "AAEC", "body": null})).await;
    let (status, v) = s
        .post(&format!("/v1/transactions/{id}/rollback"), json!({}))
        .await;
    assert_eq!((status, v["result"].as_str()), (200, Some("rolled_back")));
    let (status, v) = s
        .post(&format!("/v1/transactions/{id}/rollback"), json!({}))
        .await;
    assert_eq!((status, v["repeated"].as_bool()), (200, Some(true)));
    let (status, v) = s
        .post(&format!("/v1/transactions/{id}/commit"), json!({}))
        .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(error_code(&v), "conflict");
    assert_eq!(copies_in_topic(&s, "Orders", &msg_id), 0);
    s.stop().await;
}

#[tokio::test]
async fn a_rollback_after_a_commit_is_a_conflict() {
    let s = start_signed().await;
    let (id, _) = send(&s, "orders", json!({})).await;
    let (status, _) = s
        .post(&format!("/v1/transactions/{id}/commit"), json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, v) = s
        .post(&format!("/v1/transactions/{id}/rollback"), json!({}))
        .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(error_code(&v), "conflict");
    s.stop().await;
}

#[tokio::test]
async fn unknown_and_malformed_transaction_ids_are_404_and_400() {
    let s = start_signed().await;
    let (id, msg_id) = send(&s, "orders", json!({})).await;
    // Same layout, another half offset: well-formed, names no transaction.
    let mut raw = URL_SAFE_NO_PAD.decode(&id).unwrap();
    raw[1..9].copy_from_slice(&987_654u64.to_be_bytes());
    let forged = URL_SAFE_NO_PAD.encode(&raw);
    let (status, v) = s
        .post(&format!("/v1/transactions/{forged}/commit"), json!({}))
        .await;
    assert_eq!((status, error_code(&v)), (404, "not_found"), "{v}");
    // The right offsets with another group: not this transaction either.
    let mut raw = URL_SAFE_NO_PAD.decode(&id).unwrap();
    let group_at = 1 + 8 + 8 + 1;
    raw[group_at] = b'X';
    let other_group = URL_SAFE_NO_PAD.encode(&raw);
    let (status, v) = s
        .post(&format!("/v1/transactions/{other_group}/commit"), json!({}))
        .await;
    assert_eq!(status, 404);
    // The answer says nothing that would help forge an id: not the real group, not the real
    // commit-log offset, not the real id.
    for answer in [
        &v,
        &s.post(&format!("/v1/transactions/{forged}/commit"), json!({}))
            .await
            .1,
    ] {
        let text = answer.to_string();
        assert!(!text.contains("orders"), "{text}");
        assert!(
            !text.contains("belongs to") && !text.contains("commit-log offset"),
            "{text}"
        );
        assert!(!text.contains(&msg_id), "{text}");
    }
    let (status, v) = s
        .post("/v1/transactions/not-an-id!/commit", json!({}))
        .await;
    assert_eq!((status, error_code(&v)), (400, "bad_request"));
    let (status, v) = s.get(&format!("/v1/transactions/{forged}")).await;
    assert_eq!((status, error_code(&v)), (404, "not_found"));
    s.stop().await;
}

#[tokio::test]
async fn bad_send_requests_are_refused_before_anything_is_stored() {
    let s = start_signed().await;
    let cases = [
        json!({"body": "x"}),
        json!({"body": "x", "producer_group": "has space"}),
        json!({"body": "x", "producer_group": "g", "check_url": "ftp://host/x"}),
        json!({"body": "x", "producer_group": "g", "check_url": "http://u:p@host/x"}),
        json!({"body": "x", "body_base64": "eA==", "producer_group": "g"}),
        json!({"body": "x", "producer_group": "g", "properties": {"UNIQ_KEY": "mine"}}),
        json!({"body": "x", "producer_group": "g", "surprise": 1}),
    ];
    for body in cases {
        let (status, v) = s.post("/v1/topics/Orders/transactions", body.clone()).await;
        assert_eq!(status, 400, "{body} → {v}");
    }
    let (status, v) = s.get("/v1/transactions?producer_group=g").await;
    assert_eq!(status, 200);
    assert_eq!(v["transactions"].as_array().map(Vec::len), Some(0));
    s.stop().await;
}

/// A per-message `check_url` makes the broker call an address the producer chose. Before,
/// any http(s) URL was taken (a cloud metadata endpoint, a local Redis): now only hosts in
/// `check_url_hosts` are, the rest is 403 and nothing is stored; with no list (the default)
/// every per-message URL is refused.
#[tokio::test]
async fn a_check_url_outside_the_allowed_hosts_is_403_and_nothing_is_stored() {
    let s = start_signed().await; // allows 127.0.0.1 only
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:6379/",
        "http://127.0.0.1.nip.io/check",
    ] {
        let body = json!({"body": "x", "producer_group": "g", "check_url": url});
        let (status, v) = s.post("/v1/topics/Orders/transactions", body).await;
        assert_eq!((status, error_code(&v)), (403, "forbidden"), "{url}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("check_url_hosts"),
            "the refusal names the setting: {v}"
        );
    }
    let (status, v) = s.get("/v1/transactions?producer_group=g").await;
    assert_eq!(status, 200);
    assert_eq!(v["transactions"].as_array().map(Vec::len), Some(0));
    s.stop().await;

    let s = common::start_with(common::Options::default()).await;
    s.create_topic("Orders", 2);
    let body = json!({"body": "x", "producer_group": "g", "check_url": "http://127.0.0.1:9/check"});
    let (status, v) = s.post("/v1/topics/Orders/transactions", body).await;
    assert_eq!(
        (status, error_code(&v)),
        (403, "forbidden"),
        "no list refuses every URL: {v}"
    );
    s.stop().await;
}

/// A transactional send takes every delay form and the sharding key a produce takes, and a
/// delay the schedule refuses is 422 at send time, as for produce. Before, the trial at send
/// time ran as a commit (leniently): a 60-day delay was accepted and delivered at 30 days.
#[tokio::test]
async fn a_transactional_send_judges_its_delay_as_produce_does() {
    let s = start_signed().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for refused in [
        json!({"body": "x", "producer_group": "g", "delay_ms": 60_i64 * 24 * 3600 * 1000}),
        json!({"body": "x", "producer_group": "g", "deliver_at_ms": now - 3_600_000}),
    ] {
        let (status, v) = s
            .post("/v1/topics/Orders/transactions", refused.clone())
            .await;
        assert_eq!(status, 422, "{refused} → {v}");
    }
    let (status, v) = s.get("/v1/transactions?producer_group=g").await;
    assert_eq!(status, 200);
    assert_eq!(
        v["transactions"].as_array().map(Vec::len),
        Some(0),
        "nothing stored"
    );
    for accepted in [
        json!({"body": "x", "producer_group": "g", "sharding_key": "order-42"}),
        json!({"body": "x", "producer_group": "g", "deliver_at_ms": now + 3_600_000}),
        json!({"body": "x", "producer_group": "g", "delay_level": 2}),
    ] {
        let (status, v) = s
            .post("/v1/topics/Orders/transactions", accepted.clone())
            .await;
        assert_eq!(status, 201, "{accepted} → {v}");
    }
    s.stop().await;
}

/// A webhook receiver: answers from a script (the last answer repeats), records every check
/// and whether its signature verified.
#[derive(Default)]
struct Hook {
    /// How long each call takes before it answers.
    delay: Mutex<Duration>,
    script: Mutex<VecDeque<(StatusCode, Value)>>,
    last: Mutex<Option<(StatusCode, Value)>>,
    calls: Mutex<Vec<(Value, bool)>>,
}

async fn hook_handler(
    State(hook): State<Arc<Hook>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    let ts = headers
        .get("x-sluice-timestamp")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let sig = headers
        .get("x-sluice-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let verified = !ts.is_empty() && sig == format!("sha256={expected}");
    let check: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    hook.calls.lock().push((check, verified));
    // Waits `delay`, read again as the call waits: a test that lowers it (to zero) ends the
    // calls already waiting, so a long delay never holds the broker's shutdown, which waits
    // for webhook calls in flight.
    let called = tokio::time::Instant::now();
    loop {
        let (delay, spent) = (*hook.delay.lock(), called.elapsed());
        if spent >= delay {
            break;
        }
        tokio::time::sleep((delay - spent).min(Duration::from_millis(20))).await;
    }
    let next = hook.script.lock().pop_front();
    let answer = match next {
        Some(a) => {
            *hook.last.lock() = Some(a.clone());
            a
        }
        None => hook
            .last
            .lock()
            .clone()
            .unwrap_or((StatusCode::OK, json!({"state": "unknown"}))),
    };
    (answer.0, Json(answer.1))
}

/// Starts the receiver on 127.0.0.1:0; returns it and its URL.
async fn start_hook(script: Vec<(StatusCode, Value)>) -> (Arc<Hook>, String) {
    let hook = Arc::new(Hook {
        script: Mutex::new(script.into()),
        ..Hook::default()
    });
    let app = Router::new()
        .route("/check", post(hook_handler))
        .with_state(Arc::clone(&hook));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (hook, format!("http://{addr}/check?token=abc"))
}

fn answer(state: &str) -> (StatusCode, Value) {
    (StatusCode::OK, json!({"state": state}))
}

#[tokio::test]
async fn a_webhook_answering_commit_commits_with_a_signed_check() {
    let s = start_signed().await;
    let (hook, url) = start_hook(vec![answer("commit")]).await;
    let (id, msg_id) = send(
        &s,
        "web",
        json!({"check_url": url, "properties": {"order": "42"}}),
    )
    .await;
    assert!(
        appears(&s, &msg_id).await,
        "the webhook's commit stored the message"
    );
    let v = wait_for_txn(&s, &id, |v| v["state"] == "committed").await;
    assert_eq!(v["decided_by"], "check");
    let calls = hook.calls.lock().clone();
    let (check, verified) = &calls[0];
    assert!(verified, "signature verifies with the shared secret");
    assert_eq!(check["txn_id"], id.as_str());
    assert_eq!(check["msg_id"], msg_id.as_str());
    assert_eq!(check["producer_group"], "web");
    assert_eq!(check["topic"], "Orders");
    assert_eq!(check["body"], "order-42 paid");
    assert_eq!(check["keys"], json!(["order-42"]));
    assert_eq!(check["tag"], "Paid");
    assert_eq!(check["check_number"], 1);
    assert_eq!(
        check["properties"],
        json!({"order": "42"}),
        "only user properties"
    );
    assert!(check["born_at_ms"].as_i64().is_some_and(|t| t > 0));
    let services = s.broker.services();
    let stored = services
        .store()
        .get_messages("Orders", 0, 0, 100, 1 << 20, None);
    let stored1 = services
        .store()
        .get_messages("Orders", 1, 0, 100, 1 << 20, None);
    for m in stored.messages.iter().chain(&stored1.messages) {
        let view = RecordView::parse(&m.bytes, usize::MAX).unwrap();
        assert_eq!(
            Properties::decode(view.properties).get("SLUICE_CHECK_URL"),
            None,
            "consumers never see the check URL"
        );
    }
    s.stop().await;
}

/// The transaction of the first webhook call `hook` got (waiting for one, bounded).
async fn first_called(hook: &Hook) -> String {
    for _ in 0..ROUNDS {
        if !hook.calls.lock().is_empty() {
            break;
        }
        tokio::time::sleep(NAP).await;
    }
    let calls = hook.calls.lock();
    let first = calls.first().expect("a webhook call");
    first.0["txn_id"].as_str().unwrap().to_owned()
}

/// Signed webhooks to 127.0.0.1, one call at a time (so checks queue behind a slow one).
fn one_webhook_call_at_a_time() -> common::Options {
    let mut opts = common::Options::default();
    opts.http = HttpConfig {
        checks: CheckConfig {
            webhook_secret: Some(SECRET.into()),
            check_url_hosts: vec!["127.0.0.1".into()],
            webhook_concurrency: 1,
            ..CheckConfig::default()
        },
        ..opts.http
    };
    opts
}

/// Checks wait in the webhook queue behind slow calls: one whose transaction was committed
/// meanwhile was still POSTed ("no check for a resolved transaction").
#[tokio::test]
async fn a_check_whose_transaction_was_decided_while_it_waited_is_not_sent() {
    let opts = one_webhook_call_at_a_time();
    let s = common::start_with(opts).await;
    s.create_topic("Orders", 2);
    let (hook, url) = start_hook(vec![answer("unknown")]).await;
    *hook.delay.lock() = Duration::from_secs(2);
    let (a, _) = send(&s, "web", json!({"check_url": url})).await;
    let (b, _) = send(&s, "web", json!({"check_url": url})).await;
    // Both checks are queued (offered: `last_check_ms` set), the single call slot busy with
    // the first one.
    wait_for_txn(&s, &a, |v| v["last_check_ms"].is_i64()).await;
    wait_for_txn(&s, &b, |v| v["last_check_ms"].is_i64()).await;
    let first = first_called(&hook).await;
    let queued = if first == a { &b } else { &a };
    let (_, v) = s.get(&format!("/v1/transactions/{queued}")).await;
    assert_eq!(
        v["check_count"], 0,
        "a queued check is counted only when it is called: {v}"
    );
    let (status, v) = s
        .post(&format!("/v1/transactions/{queued}/commit"), json!({}))
        .await;
    assert_eq!(status, 200, "{v}");
    *hook.delay.lock() = Duration::ZERO;
    // The first call ends, and the first transaction's next check comes: the queue moved on.
    wait_for_txn(&s, &first, |v| v["check_count"].as_u64() >= Some(2)).await;
    for _ in 0..ROUNDS {
        if hook.calls.lock().len() >= 2 {
            break;
        }
        tokio::time::sleep(NAP).await;
    }
    let calls = hook.calls.lock().clone();
    assert!(calls.len() >= 2, "the next check came: {calls:?}");
    assert!(
        calls.iter().all(|(c, _)| c["txn_id"] != queued.as_str()),
        "no check was sent for the transaction committed while its check waited: {calls:?}"
    );
    // Counted as skipped, and never against the transaction's budget.
    assert!(webhook_count(&s, "skipped").await >= 1);
    s.stop().await;
}

/// A check waiting in the webhook queue (behind a slow call) used to count against
/// `check_max` when queued, and the next one replaced it: with calls slower than
/// `check_interval`, the budget ran out and the final action rolled the transaction back
/// without its webhook ever being called. Checks count when they are called now.
#[tokio::test]
async fn checks_waiting_behind_a_slow_webhook_do_not_use_the_budget() {
    let mut opts = one_webhook_call_at_a_time();
    opts.txn.defaults.check_interval = Duration::from_millis(200);
    opts.txn.defaults.check_max = 2;
    // The first call holds the one slot for the whole check below, however slow the machine:
    // 10 s, within the call's timeout (so the broker does not give up on it first), and ended
    // by resetting the delay before the test stops.
    opts.http.checks.webhook_timeout = Duration::from_secs(15);
    let s = common::start_with(opts).await;
    s.create_topic("Orders", 2);
    let (hook, url) = start_hook(vec![answer("unknown")]).await;
    *hook.delay.lock() = Duration::from_secs(10);
    let (a, _) = send(&s, "web", json!({"check_url": url})).await;
    let (b, _) = send(&s, "web", json!({"check_url": url})).await;
    let first = first_called(&hook).await;
    let waiting = if first == a { &b } else { &a };
    // Five intervals and more while the one call slot is taken: before, the waiting
    // transaction's two checks were counted and its final action came at the third interval.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (_, v) = s.get(&format!("/v1/transactions/{waiting}")).await;
    assert_eq!(v["state"], "open", "{v}");
    assert_eq!(v["check_count"], 0, "never called, never counted: {v}");
    *hook.delay.lock() = Duration::ZERO;
    s.stop().await;
}

/// The count of `sluice_http_check_webhooks_total` for `result`.
async fn webhook_count(s: &common::Server, result: &str) -> u64 {
    let text = s.metrics().await;
    let prefix = format!("sluice_http_check_webhooks_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_webhook_answering_rollback_rolls_back_and_nothing_appears() {
    let s = start_signed().await;
    let (_hook, url) = start_hook(vec![answer("rollback")]).await;
    let (id, msg_id) = send(&s, "web", json!({"check_url": url})).await;
    let v = wait_for_txn(&s, &id, |v| v["state"] == "rolled_back").await;
    assert_eq!(v["decided_by"], "check");
    assert_eq!(copies_in_topic(&s, "Orders", &msg_id), 0);
    s.stop().await;
}

#[tokio::test]
async fn a_webhook_answering_unknown_then_commit_commits_after_the_second_check() {
    let s = start_signed().await;
    let (hook, url) = start_hook(vec![answer("unknown"), answer("commit")]).await;
    let (id, msg_id) = send(&s, "web", json!({"check_url": url})).await;
    assert!(appears(&s, &msg_id).await);
    let v = wait_for_txn(&s, &id, |v| v["state"] == "committed").await;
    assert!(v["check_count"].as_u64() >= Some(2), "{v}");
    let numbers: Vec<Value> = hook
        .calls
        .lock()
        .iter()
        .map(|(c, _)| c["check_number"].clone())
        .collect();
    assert_eq!(numbers[..2], [json!(1), json!(2)]);
    s.stop().await;
}

#[tokio::test]
async fn a_webhook_failing_or_answering_nonsense_leaves_the_transaction_open() {
    let s = start_signed().await;
    // A 200 whose text says commit but is not the answer shape, then a 500: no answer.
    let (hook, url) = start_hook(vec![
        (StatusCode::OK, json!({"result": "commit"})),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"state": "commit"}),
        ),
        answer("commit"),
    ])
    .await;
    let (id, msg_id) = send(&s, "web", json!({"check_url": url})).await;
    assert!(appears(&s, &msg_id).await);
    let v = wait_for_txn(&s, &id, |v| v["state"] == "committed").await;
    assert!(
        v["check_count"].as_u64() >= Some(3),
        "only the third call answered: {v}"
    );
    assert!(hook.calls.lock().len() >= 3);
    // The two failed calls are told apart from answers in /metrics.
    assert_eq!(webhook_count(&s, "no_answer").await, 2);
    assert!(webhook_count(&s, "commit").await >= 1);
    assert_eq!(webhook_count(&s, "unknown").await, 0);
    s.stop().await;
}

#[tokio::test]
async fn an_unreachable_webhook_leaves_the_transaction_open_and_it_is_checked_again() {
    let s = start_signed().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/check");
    let (id, msg_id) = send(&s, "web", json!({"check_url": url})).await;
    let v = wait_for_txn(&s, &id, |v| v["check_count"].as_u64() >= Some(2)).await;
    assert_eq!(v["state"], "open");
    assert!(v.get("last_answer").is_none(), "a failed call is no answer");
    assert_eq!(copies_in_topic(&s, "Orders", &msg_id), 0);
    s.stop().await;
}

#[tokio::test]
async fn a_per_message_check_url_survives_a_broker_restart() {
    let s = start_signed().await;
    let (hook, url) = start_hook(vec![answer("unknown")]).await;
    let (id, msg_id) = send(&s, "web", json!({"check_url": url})).await;
    wait_for_txn(&s, &id, |v| v["last_answer"]["answer"] == "unknown").await;
    let opts = common::Options {
        http: HttpConfig {
            checks: CheckConfig {
                webhook_secret: Some(SECRET.into()),
                check_url_hosts: vec!["127.0.0.1".into()],
                ..CheckConfig::default()
            },
            ..common::Options::default().http
        },
        ..common::Options::default()
    };
    let dir = s.stop().await;
    *hook.last.lock() = Some(answer("commit"));
    let s = common::start_in(dir, opts).await;
    s.create_topic("Orders", 2);
    assert!(
        appears(&s, &msg_id).await,
        "checked at the URL after the restart"
    );
    let v = wait_for_txn(&s, &id, |v| v["state"] == "committed").await;
    assert_eq!(v["decided_by"], "check");
    s.stop().await;
}

async fn poll(s: &Server, group: &str) -> Vec<Value> {
    for _ in 0..20 {
        let (status, v) = s
            .get(&format!(
                "/v1/producer-groups/{group}/checks?wait_ms=2000&max=10"
            ))
            .await;
        assert_eq!(status, 200, "{v}");
        let checks = v["checks"].as_array().cloned().unwrap_or_default();
        if !checks.is_empty() {
            return checks;
        }
    }
    panic!("no check was handed out");
}

#[tokio::test]
async fn a_group_that_polls_gets_its_checks_and_answers_them() {
    let s = start_signed().await;
    let (id, msg_id) = send(&s, "poller", json!({})).await;
    let checks = poll(&s, "poller").await;
    assert_eq!(checks[0]["txn_id"], id.as_str());
    assert_eq!(checks[0]["msg_id"], msg_id.as_str());
    let (status, v) = s
        .post(
            &format!("/v1/transactions/{id}/check-answer"),
            json!({"state": "commit"}),
        )
        .await;
    assert_eq!((status, v["result"].as_str()), (200, Some("committed")));
    assert!(appears(&s, &msg_id).await);
    let v = wait_for_txn(&s, &id, |v| v["state"] == "committed").await;
    assert_eq!(v["decided_by"], "check");
    // A contrary answer to the decided transaction is refused, and does not become its "last
    // answer" (which then read as though the producer had asked for a rollback).
    let (status, v) = s
        .post(
            &format!("/v1/transactions/{id}/check-answer"),
            json!({"state": "rollback"}),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    let (_, v) = s.get(&format!("/v1/transactions/{id}")).await;
    assert_eq!(v["last_answer"]["answer"], "commit", "{v}");
    s.stop().await;
}

/// A group that polled once and stopped is no longer handed checks after a short grace: they
/// are not counted, so the transaction keeps its check budget. They used to be queued (and
/// counted) for the whole 60 s registration, then dropped unanswered.
#[tokio::test]
async fn checks_are_not_counted_for_a_group_that_stopped_polling() {
    let s = start_signed().await;
    let (id, _) = send(&s, "quitter", json!({})).await;
    let (status, v) = s.get("/v1/producer-groups/quitter/checks?wait_ms=0").await;
    assert_eq!(status, 200, "{v}");
    assert!(v["checks"].as_array().unwrap().is_empty(), "none due yet");
    // Checks fall due every 500 ms. Past the grace after the poll, none is counted.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let count = |v: &Value| v["check_count"].as_u64().unwrap();
    let (_, before) = s.get(&format!("/v1/transactions/{id}")).await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let (_, after) = s.get(&format!("/v1/transactions/{id}")).await;
    assert_eq!(
        count(&after),
        count(&before),
        "no check counted while nobody polls: {before} / {after}"
    );
    let checks = poll(&s, "quitter").await;
    assert_eq!(checks[0]["txn_id"], id.as_str());
    // One queued within the grace (already counted), or a new one.
    assert!(
        checks[0]["check_number"].as_u64().unwrap() <= count(&after) + 1,
        "{}",
        checks[0]
    );
    s.stop().await;
}

#[tokio::test]
async fn a_configured_pull_group_is_polled_and_answered_with_commit() {
    let mut opts = common::Options::default();
    opts.txn.groups.insert(
        "pulled".into(),
        sluice_txn::GroupOverride {
            pull_checks: Some(true),
            ..Default::default()
        },
    );
    let s = common::start_with(opts).await;
    s.create_topic("Orders", 2);
    let (id, msg_id) = send(&s, "pulled", json!({})).await;
    let checks = poll(&s, "pulled").await;
    assert_eq!(checks[0]["txn_id"], id.as_str());
    assert_eq!(checks[0]["check_number"], 1);
    let (status, _) = s
        .post(&format!("/v1/transactions/{id}/commit"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert!(appears(&s, &msg_id).await);
    s.stop().await;
}

#[tokio::test]
async fn polling_a_group_whose_checks_go_to_a_url_is_a_conflict() {
    let mut opts = common::Options::default();
    opts.txn.groups.insert(
        "hooked".into(),
        sluice_txn::GroupOverride {
            check_url: Some("http://127.0.0.1:9/check".into()),
            ..Default::default()
        },
    );
    let s = common::start_with(opts).await;
    let (status, v) = s.get("/v1/producer-groups/hooked/checks").await;
    assert_eq!((status, error_code(&v)), (409, "conflict"));
    let (status, _) = s.get("/v1/producer-groups/bad%20group/checks").await;
    assert_eq!(status, 400);
    s.stop().await;
}

/// A restart keeps no decided transaction in memory (nor does memory past
/// `resolved_retention`): GET read "no such transaction" seconds after a commit. It reads the
/// decision back from its op record now: state, who decided and when, the message's fields.
#[tokio::test]
async fn a_decided_transaction_is_shown_after_a_restart() {
    let s = start_signed().await;
    let (committed, _) = send(&s, "after", json!({})).await;
    let (rolled_back, _) = send(&s, "after", json!({})).await;
    for (id, action) in [(&committed, "commit"), (&rolled_back, "rollback")] {
        let (status, v) = s
            .post(&format!("/v1/transactions/{id}/{action}"), json!({}))
            .await;
        assert_eq!(status, 200, "{v}");
    }
    let (_, before) = s.get(&format!("/v1/transactions/{committed}")).await;
    let dir = s.stop().await;

    let s = common::start_in(dir, common::Options::default()).await;
    let (status, v) = s.get(&format!("/v1/transactions/{committed}")).await;
    assert_eq!(status, 200, "{v}");
    for field in [
        "state",
        "decided_by",
        "topic",
        "keys",
        "tag",
        "producer_group",
        "txn_id",
    ] {
        assert_eq!(v[field], before[field], "{field}: {v} against {before}");
    }
    let decided = |v: &Value| v["resolved_ms"].as_i64().unwrap();
    assert!(
        (decided(&v) - decided(&before)).abs() < 5_000,
        "{v} against {before}"
    );
    let (status, v) = s.get(&format!("/v1/transactions/{rolled_back}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["state"].as_str(), v["decided_by"].as_str()),
        (Some("rolled_back"), Some("producer"))
    );
    s.stop().await;
}

/// A check poll's out-of-range `wait_ms` was cut to the limit without a word (a poll asked
/// for 40 s answered after 20 s); it is refused as a receive refuses it, and so is `max`.
#[tokio::test]
async fn a_check_poll_out_of_range_is_refused() {
    let s = start_signed().await;
    for query in ["wait_ms=20001", "max=0", "max=65"] {
        let (status, v) = s
            .get(&format!("/v1/producer-groups/ranged/checks?{query}"))
            .await;
        assert_eq!(
            (status, error_code(&v)),
            (422, "unprocessable"),
            "{query}: {v}"
        );
    }
    let (status, v) = s
        .get("/v1/producer-groups/ranged/checks?wait_ms=0&max=64")
        .await;
    assert_eq!(status, 200, "{v}");
    s.stop().await;
}

#[tokio::test]
async fn operators_list_inspect_and_force_transactions() {
    let s = start_signed().await;
    let (id, msg_id) = send(&s, "ops", json!({"keys": ["order-7"]})).await;
    let (status, v) = s
        .get("/v1/transactions?producer_group=ops&state=open")
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["transactions"][0]["txn_id"], id.as_str());
    let (_, v) = s.get("/v1/transactions?key=order-7").await;
    assert_eq!(v["transactions"].as_array().map(Vec::len), Some(1));
    let (status, _) = s.get("/v1/transactions?state=sideways").await;
    assert_eq!(status, 400);
    let (status, v) = s
        .post(
            &format!("/v1/transactions/{id}/force"),
            json!({"action": "commit"}),
        )
        .await;
    assert_eq!(
        (status, v["result"].as_str()),
        (200, Some("committed")),
        "{v}"
    );
    assert!(appears(&s, &msg_id).await);
    let (_, v) = s.get(&format!("/v1/transactions/{id}")).await;
    assert_eq!(
        (v["state"].as_str(), v["decided_by"].as_str()),
        (Some("committed"), Some("operator"))
    );
    let (status, v) = s
        .post(
            &format!("/v1/transactions/{id}/force"),
            json!({"action": "rollback"}),
        )
        .await;
    assert_eq!((status, error_code(&v)), (409, "conflict"));
    s.stop().await;
}

/// Parked transactions (final action `keep`) could be re-armed only through the Rust API:
/// an operator of the binary had no way to have one checked again.
#[tokio::test]
async fn an_operator_re_arms_a_parked_transaction_and_its_next_check_decides_it() {
    let mut opts = common::Options::default();
    opts.http.checks.check_url_hosts = vec!["127.0.0.1".into()];
    opts.http.checks.webhook_secret = Some(SECRET.into());
    opts.txn.defaults.check_interval = Duration::from_millis(200);
    opts.txn.defaults.check_max = 1;
    opts.txn.defaults.final_action = sluice_txn::FinalAction::Keep;
    let s = common::start_with(opts).await;
    s.create_topic("Orders", 2);
    let (_hook, url) = start_hook(vec![answer("unknown"), answer("commit")]).await;
    let (id, msg_id) = send(&s, "web", json!({"check_url": url})).await;
    let v = wait_for_txn(&s, &id, |v| v["state"] == "parked").await;
    assert_eq!(v["check_count"], 1, "{v}");
    let (status, v) = s
        .post(
            &format!("/v1/transactions/{id}/force"),
            json!({"action": "rearm"}),
        )
        .await;
    assert_eq!((status, v["state"].as_str()), (200, Some("open")), "{v}");
    let v = wait_for_txn(&s, &id, |v| v["state"] == "committed").await;
    assert_eq!(v["decided_by"], "check", "{v}");
    assert!(appears(&s, &msg_id).await);
    let (status, v) = s
        .post(
            &format!("/v1/transactions/{id}/force"),
            json!({"action": "rearm"}),
        )
        .await;
    assert_eq!((status, error_code(&v)), (409, "conflict"), "{v}");
    s.stop().await;
}

#[tokio::test]
async fn the_transaction_listing_pages_after_its_cursor_without_repeats_or_gaps() {
    let s = start_signed().await;
    let mut sent = Vec::new();
    for _ in 0..5 {
        sent.push(send(&s, "pages", json!({})).await.0);
    }
    let mut seen = Vec::new();
    let mut url = "/v1/transactions?producer_group=pages&limit=2".to_string();
    for _ in 0..5 {
        let (status, v) = s.get(&url).await;
        assert_eq!(status, 200, "{v}");
        let page: Vec<String> = v["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["txn_id"].as_str().unwrap().to_owned())
            .collect();
        assert!(page.len() <= 2, "{v}");
        seen.extend(page);
        match v["next_after"].as_u64() {
            Some(next) => {
                url = format!("/v1/transactions?producer_group=pages&limit=2&after={next}")
            }
            None => break,
        }
    }
    let mut want = sent.clone();
    want.sort();
    let mut got = seen.clone();
    got.sort();
    assert_eq!(got, want, "every open transaction listed once: {seen:?}");
    s.stop().await;
}

#[test]
fn webhook_config_refuses_a_short_secret_and_a_long_poll_past_30s() {
    let short = HttpConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        checks: CheckConfig {
            webhook_secret: Some("short".into()),
            ..CheckConfig::default()
        },
        ..HttpConfig::default()
    };
    assert!(short.validate().unwrap_err().contains("webhook_secret"));
    let long = HttpConfig {
        checks: CheckConfig {
            max_poll_wait: Duration::from_secs(31),
            poll_idle: Duration::from_secs(60),
            ..CheckConfig::default()
        },
        ..HttpConfig::default()
    };
    assert!(long.validate().unwrap_err().contains("max_poll_wait"));
    let shown = format!(
        "{:?}",
        CheckConfig {
            webhook_secret: Some(SECRET.into()),
            check_url_hosts: vec!["127.0.0.1".into()],
            ..CheckConfig::default()
        }
    );
    assert!(!shown.contains(SECRET), "the secret is never printed");
}
