//! The operator console, end to end in a real browser: a broker with the HTTP facade and
//! tokens configured (auth on), real traffic (messages, a consumer group with lag, an open
//! transaction, a pending and a released scheduled message, dead letters), then
//! `http-api/console/tests/e2e.mjs` drives headless Chromium through every view: it enters
//! the token, checks the figures each view shows, force-commits the transaction, cancels the
//! scheduled message and replays and cancels dead letters through the UI (confirmations
//! accepted), traces messages, checks the phone layout and the unreachable-broker banner, and
//! saves a screenshot of each view under `target/console-screenshots/`. Afterwards this test
//! checks through the API that those actions really happened.
//!
//! Chromium (Debian's) and playwright-core (npm) are installed by `scripts/fetch-browser`; if
//! that fails, the test fails with its message: a skipped browser test is not a pass.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{status_json, Options, Server};
use serde_json::{json, Value};
use sluice_http::auth::{Scope, Token};
use sluice_http::HttpConfig;

const ADMIN: &str = "console-admin-secret-0123456789";
/// Most background messages produced while the browser runs.
const TICKS: u32 = 1500;
/// Longest the browser run may take before it is killed (it needs well under a minute).
const BROWSER_DEADLINE: Duration = Duration::from_secs(150);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// Runs `scripts/fetch-browser`; returns the folder holding `node_modules` and `bin/node`, or
/// fails the test.
fn fetch_browser() -> PathBuf {
    let out = Command::new(workspace().join("scripts/fetch-browser"))
        .current_dir(workspace())
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/fetch-browser could not be started");
    assert!(
        out.status.success(),
        "scripts/fetch-browser failed ({}): Chromium or playwright-core could not be installed, \
         so the console cannot be tested; see its output above",
        out.status
    );
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim())
}

/// A JSON call with the admin token.
async fn call(s: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = s.http.request(m, s.url(path)).bearer_auth(ADMIN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    status_json(req.send().await.expect("request")).await
}

async fn produce(s: &Server, topic: &str, body: Value) -> Value {
    let (st, r) = call(
        s,
        "POST",
        &format!("/v1/topics/{topic}/messages"),
        Some(body),
    )
    .await;
    assert_eq!(st, 201, "{r}");
    r
}

/// Sends `body` to `topic` and dead-letters it for `group` with `reason`; returns its msg_id.
async fn dead_letter(s: &Server, group: &str, topic: &str, body: &str, reason: &str) -> String {
    let r = produce(
        s,
        topic,
        json!({"body": body, "keys": [body], "tag": "EUR"}),
    )
    .await;
    let (_, phys) =
        sluice_protocol::message::ids::decode_offset_msg_id(r["offset_msg_id"].as_str().unwrap())
            .unwrap();
    let services = s.broker.services();
    assert!(services.store().wait_dispatched(Duration::from_secs(10)));
    let out = services
        .send_back(&sluice_broker::SendBack {
            group: group.into(),
            phys_offset: phys,
            delay_level: -1,
            reason: Some(reason.into()),
            ..sluice_broker::SendBack::default()
        })
        .await
        .expect("dead-lettered");
    assert!(out.dead_letter);
    r["msg_id"].as_str().unwrap().to_owned()
}

/// Receives `n` messages of `topic` for `group` over HTTP (bounded); returns their receipts.
async fn receive(s: &Server, group: &str, topic: &str, n: usize) -> Vec<Value> {
    let mut receipts = Vec::new();
    for _ in 0..50 {
        let path = format!("/v1/groups/{group}/topics/{topic}/receive");
        let body = json!({"max": n - receipts.len(), "wait_ms": 1000});
        let (st, r) = call(s, "POST", &path, Some(body)).await;
        assert_eq!(st, 200, "{r}");
        receipts.extend(
            r["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["receipt"].clone()),
        );
        if receipts.len() == n {
            return receipts;
        }
    }
    panic!("{n} messages of {topic} were not received");
}

/// Polls `path` (bounded) until `done` holds for its answer.
async fn until(s: &Server, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let (st, r) = call(s, "GET", path, None).await;
        if st == 200 && done(&r) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never reached the expected state");
}

/// The traffic the console shows; returns the facts the browser script checks.
async fn traffic(s: &Server, shots: &Path) -> Value {
    s.create_topic("Orders", 1);
    for i in 1..=5 {
        produce(
            s,
            "Orders",
            json!({"body": format!("order {i}"), "keys": [format!("order-{i}")]}),
        )
        .await;
    }
    // Three of the five orders are received: two acked, one nacked (so the group has a retry
    // topic, which is how the broker knows its consumer groups); two are left as lag.
    let receipts = receive(s, "billing", "Orders", 3).await;
    let (st, r) = call(
        s,
        "POST",
        "/v1/groups/billing/ack",
        Some(json!({"receipts": receipts[..2]})),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let (st, r) = call(
        s,
        "POST",
        "/v1/groups/billing/nack",
        Some(json!({"receipts": receipts[2..]})),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    until(s, "/v1/groups", |g| {
        g["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["group"] == "billing")
    })
    .await;
    until(s, "/v1/groups/billing", |g| g["offsets"][0]["lag"] == 2).await;

    let (st, txn) = call(
        s,
        "POST",
        "/v1/topics/Invoices/transactions",
        Some(json!({"body": "invoice 7", "keys": ["invoice-7"], "producer_group": "invoicing"})),
    )
    .await;
    assert_eq!(st, 201, "{txn}");

    let reminder = produce(
        s,
        "Reminders",
        json!({"body": "pay order 1", "keys": ["remind-1"], "delay_ms": 600_000}),
    )
    .await;
    produce(
        s,
        "Reminders",
        json!({"body": "soon", "keys": ["soon-1"], "delay_ms": 100}),
    )
    .await;
    // The released reminder and the retry's back-off fill the lateness histogram.
    until(s, "/v1/stats/schedule", |f| {
        f["delivered"] == 2 && f["pending"] == 1
    })
    .await;

    let mut first = String::new();
    for i in 1..=6 {
        let id = dead_letter(
            s,
            "payments",
            "Payments",
            &format!("pay-{i}"),
            "card declined",
        )
        .await;
        if i == 1 {
            first = id;
        }
    }
    json!({
        "base": s.base,
        "token": ADMIN,
        "screenshots": shots,
        "topic": "Orders",
        "topic_messages": 5,
        "group": "billing",
        "group_lag_text": "Orders/0: 2",
        "txn": {"msg_id": txn["msg_id"], "producer_group": "invoicing", "topic": "Invoices", "txn_id": txn["txn_id"]},
        "scheduled": {"topic": "Reminders", "key": "remind-1", "msg_id": reminder["msg_id"]},
        "dlq": {"group": "payments", "topic": "Payments", "count": 6, "reason": "card declined",
                "first_key": "pay-1", "first_body": "pay-1", "first_body_hex": "70 61 79 2d 31",
                "first_msg_id": first},
    })
}

/// Produces a message every 100 ms (at most [`TICKS`]) until `stop`, so the overview's live
/// charts have throughput and flush latency to draw while the browser watches.
fn ticker(s: &Server, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let (http, url) = (s.http.clone(), s.url("/v1/topics/Ticks/messages"));
    tokio::spawn(async move {
        for i in 0..TICKS {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let body = json!({"body": format!("tick {i}")});
            let r = http.post(&url).bearer_auth(ADMIN).json(&body).send().await;
            assert!(r.is_ok_and(|r| r.status() == 201), "tick {i} not produced");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Runs the browser script with a deadline (its progress goes to the test's output); returns
/// the result it wrote.
fn run_browser(modules: &Path, facts: &Path, result: &Path) -> Value {
    let script = workspace().join("http-api/console/tests/e2e.mjs");
    // The Node.js fetch-browser chose (at least 20, as playwright-core needs).
    let mut child = Command::new(modules.join("bin/node"))
        .arg(&script)
        .arg(facts)
        .env("PLAYWRIGHT_MODULES", modules)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node could not be started (is Node.js installed?)");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for node") {
            break st;
        }
        if started.elapsed() > BROWSER_DEADLINE {
            let _ = child.kill();
            panic!("the browser test did not finish within {BROWSER_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "the console's browser test failed ({status}); its output is above"
    );
    let text = std::fs::read_to_string(result).expect("the script's result file");
    serde_json::from_str(&text).expect("the script's result is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_real_traffic_and_acts_through_the_api_in_a_real_browser() {
    let modules = fetch_browser();
    let s = common::start_with(Options {
        http: HttpConfig {
            tokens: vec![Token {
                name: "operator".into(),
                secret: ADMIN.into(),
                scopes: vec![Scope::Admin],
            }],
            ..Options::default().http
        },
        ..Options::default()
    })
    .await;
    let shots = workspace().join("target/console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let mut facts = traffic(&s, &shots).await;
    let facts_file = s.dir.path().join("console-facts.json");
    let result_file = s.dir.path().join("console-result.json");
    facts["result_file"] = json!(result_file);
    std::fs::write(&facts_file, facts.to_string()).expect("write facts");

    let stop = Arc::new(AtomicBool::new(false));
    let ticks = ticker(&s, stop.clone());
    let result =
        tokio::task::spawn_blocking(move || run_browser(&modules, &facts_file, &result_file))
            .await
            .expect("browser run");
    stop.store(true, Ordering::Relaxed);
    ticks.await.expect("ticker");
    assert_eq!(result["result"], "passed");

    // What the browser did, seen through the API.
    let txn_id = facts["txn"]["txn_id"].as_str().unwrap();
    let (_, t) = call(&s, "GET", &format!("/v1/transactions/{txn_id}"), None).await;
    assert_eq!(
        (t["state"].as_str(), t["decided_by"].as_str()),
        (Some("committed"), Some("operator")),
        "{t}"
    );
    let (_, l) = call(
        &s,
        "GET",
        "/v1/topics/Reminders/scheduled?key=remind-1",
        None,
    )
    .await;
    assert_eq!(l["messages"][0]["state"], "cancelled", "{l}");
    let first = result["replays"]["first"].as_str().unwrap();
    let (_, r) = call(&s, "GET", &format!("/v1/replays/{first}"), None).await;
    assert_eq!(
        (r["state"].as_str(), r["replayed"].as_u64()),
        (Some("completed"), Some(1)),
        "{r}"
    );
    let second = result["replays"]["second"].as_str().unwrap();
    let (_, r) = call(&s, "GET", &format!("/v1/replays/{second}"), None).await;
    assert_eq!(r["state"], "cancelled", "{r}");
    for view in [
        "01-overview",
        "02-transactions",
        "03-scheduled",
        "04-dlq-inspect",
        "05-dlq-replay-running",
        "06-lookup-dead-letter",
        "07-phone-overview",
        "08-unreachable",
    ] {
        assert!(
            shots.join(format!("{view}.png")).is_file(),
            "no screenshot {view}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn console_files_are_public_with_their_types_and_a_strict_policy() {
    let s = common::start_with(Options {
        http: HttpConfig {
            tokens: vec![Token {
                name: "operator".into(),
                secret: ADMIN.into(),
                scopes: vec![Scope::Admin],
            }],
            ..Options::default().http
        },
        ..Options::default()
    })
    .await;
    for (path, ctype) in [
        ("/console", "text/html"),
        ("/console/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/views/dlq.js", "text/javascript"),
        ("/console/console.css", "text/css"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        let r = s.http.get(s.url(path)).send().await.expect("GET");
        assert_eq!(r.status(), 200, "{path} needs no token");
        let h = r.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(ctype),
            "{path}: {:?}",
            h["content-type"]
        );
        assert!(h["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'self'"));
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-cache");
        let etag = h["etag"].clone();
        let again = s
            .http
            .get(s.url(path))
            .header("if-none-match", etag)
            .send()
            .await
            .expect("GET");
        assert_eq!(again.status(), 304, "{path} revalidates");
    }
    let (st, r) = s.get("/console/nope.js").await;
    assert_eq!((st, common::error_code(&r)), (404, "not_found"));
    let (st, _) = s.get("/v1/stats/store").await;
    assert_eq!(st, 401, "the data behind the console still needs the token");
    s.stop().await;
}
