//! Liveness, readiness, Prometheus metrics, authentication and the request limits.

use crate::common;

use common::{error_code, Options};
use sluice_http::auth::{Scope, Token};

#[tokio::test]
async fn healthz_and_readyz_answer_ok_on_a_healthy_broker() {
    let s = common::start().await;
    let (status, body) = s.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    let (status, body) = s.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    s.stop().await;
}

/// A broker whose store's file operations go through a fault layer the test controls.
async fn start_over_faulty_io() -> (common::Server, std::sync::Arc<sluice_store::io::FaultyIo>) {
    let io = std::sync::Arc::new(sluice_store::io::FaultyIo::new());
    let s = common::start_with(Options {
        storage_io: Some(io.clone()),
        ..Options::default()
    })
    .await;
    (s, io)
}

/// Appends still succeed while consume-queue entries cannot be written (a disk full under
/// the queues), but consumers see none of them: readiness said "ready" throughout.
#[tokio::test]
async fn readyz_is_not_ready_while_dispatch_keeps_failing_and_ready_again_after() {
    let (s, io) = start_over_faulty_io().await;
    io.fail_queue_zeros(true);
    let (status, body) = s
        .post(
            "/v1/topics/HiddenTopic/messages",
            serde_json::json!({"body": "x"}),
        )
        .await;
    assert_eq!(status, 201, "the append itself is durable: {body}");
    let (status, body) = readyz_until(&s, 503).await;
    assert_eq!(status, 503, "not ready while dispatch fails: {body}");
    assert!(
        body["reasons"]
            .to_string()
            .contains("consume-queue or index entries"),
        "{body}"
    );
    assert!(s
        .metrics()
        .await
        .contains("sluice_store_dispatch_failing 1"));
    io.fail_queue_zeros(false);
    let (status, body) = readyz_until(&s, 200).await;
    assert_eq!(status, 200, "ready again once dispatch succeeds: {body}");
    assert!(s
        .metrics()
        .await
        .contains("sluice_store_dispatch_failing 0"));
    s.stop().await;
}

/// Counters of what was stored moved before the store said yes: a full disk refusing every
/// delayed message and half message still counted each as parked or stored.
#[tokio::test]
async fn refused_writes_count_as_neither_parked_timers_nor_stored_halves() {
    let (s, io) = start_over_faulty_io().await;
    s.create_topic("Counted", 1);
    let delayed = serde_json::json!({"body": "later", "delay_ms": 60_000});
    let half = serde_json::json!({"body": "half", "producer_group": "counted-g"});
    io.fake_disk_usage(Some(0.99));
    let (status, body) = s.post("/v1/topics/Counted/messages", delayed.clone()).await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = s
        .post("/v1/topics/Counted/transactions", half.clone())
        .await;
    assert_eq!(status, 503, "{body}");
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("sluice_timers_parked_total 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_txn_halves_stored_total 0"),
        "{metrics}"
    );
    io.fake_disk_usage(None);
    // The store reads the disk's usage again at most every 100 ms.
    let mut answer = (0, serde_json::Value::Null);
    for _ in 0..100 {
        answer = s.post("/v1/topics/Counted/messages", delayed.clone()).await;
        if answer.0 != 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(answer.0, 201, "{}", answer.1);
    let (status, body) = s.post("/v1/topics/Counted/transactions", half).await;
    assert_eq!(status, 201, "{body}");
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("sluice_timers_parked_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_txn_halves_stored_total 1"),
        "{metrics}"
    );
    s.stop().await;
}

/// A delayed transactional message is parked once, when its commit is stored: the trial of
/// its commit at send time and a restart's look for it parked nothing, but counted.
#[tokio::test]
async fn a_committed_delayed_transaction_counts_as_one_parked_timer() {
    let s = common::start().await;
    s.create_topic("Counted", 1);
    let half =
        serde_json::json!({"body": "half", "producer_group": "counted-g", "delay_ms": 60_000});
    let (status, body) = s.post("/v1/topics/Counted/transactions", half).await;
    assert_eq!(status, 201, "{body}");
    assert!(s.metrics().await.contains("sluice_timers_parked_total 0"));
    let id = body["txn_id"].as_str().expect("txn_id").to_owned();
    let (status, body) = s
        .post(
            &format!("/v1/transactions/{id}/commit"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("sluice_timers_parked_total 1"),
        "{metrics}"
    );
    s.stop().await;
}

/// `/readyz` once it answers `want` (or its last answer, after at most 10 s).
async fn readyz_until(s: &common::Server, want: u16) -> (u16, serde_json::Value) {
    let mut last = (0, serde_json::Value::Null);
    for _ in 0..200 {
        last = s.get("/readyz").await;
        if last.0 == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    last
}

#[tokio::test]
async fn metrics_are_prometheus_text_covering_http_store_txn_and_timers() {
    let s = common::start().await;
    s.broker
        .services()
        .produce(sluice_broker::produce::Produce::new(
            "G",
            "MetricsTopic",
            "x",
        ))
        .await
        .expect("produce");
    let _ = s.get("/healthz").await;
    let r = s.http.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    for needle in [
        "sluice_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1",
        "sluice_http_request_duration_seconds_bucket{method=\"GET\",route=\"/healthz\",le=\"+Inf\"} 1",
        "sluice_messages_stored_total 1",
        "sluice_store_sync_duration_seconds_count",
        "sluice_disk_used_ratio",
        "sluice_store_queues_unsynced 0",
        "sluice_txn_open 0",
        "sluice_txn_oldest_open_age_seconds",
        "sluice_timers_pending 0",
        "sluice_timer_lateness_seconds_bucket{le=\"+Inf\"}",
        // Figures an operator alerts on that were collected but not exported before.
        "sluice_store_dispatch_lag_bytes",
        "sluice_store_damage_total 0",
        "sluice_connections_refused_total 0",
        "sluice_oversize_bodies_total 0",
        "sluice_txn_discarded_total 0",
        "sluice_txn_checks_undelivered_total 0",
        "sluice_timers_dropped_total 0",
        "sluice_timers_possible_duplicates_total 0",
        "sluice_timer_lateness_seconds_sum 0",
        "sluice_lease_in_flight 0",
        "sluice_lease_waiting 0",
        "sluice_lease_remembered_receipts 0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // Every sample line is `name{labels} value` with a numeric value.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }
    s.stop().await;
}

/// Any token is a method to hyper; each one used to become a metrics series of its own,
/// kept for good, so a client could grow every scrape without bound.
#[tokio::test]
async fn invented_methods_share_one_metrics_label() {
    let s = common::start().await;
    for i in 0..20 {
        let method = reqwest::Method::from_bytes(format!("XQ{i}").as_bytes()).unwrap();
        let r = s
            .http
            .request(method, s.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            405,
            "in the JSON error shape, as any wrong method"
        );
    }
    let text = s.metrics().await;
    assert!(
        text.contains(
            "sluice_http_requests_total{method=\"OTHER\",route=\"/healthz\",status=\"405\"} 20"
        ),
        "the invented methods are counted under OTHER:\n{text}"
    );
    assert!(
        !text.contains("XQ"),
        "no series per invented method:\n{text}"
    );
    s.stop().await;
}

fn with_tokens() -> Options {
    let mut o = Options::default();
    o.http.tokens = common::producer_and_admin_tokens();
    o.http.metrics_public = false;
    o
}

#[tokio::test]
async fn with_tokens_configured_metrics_need_an_admin_token_and_probes_do_not() {
    let s = common::start_with(with_tokens()).await;
    let (status, _) = s.get("/healthz").await;
    assert_eq!(status, 200, "probes stay open");
    let (status, body) = s.get("/metrics").await;
    assert_eq!(status, 401);
    assert_eq!(error_code(&body), "unauthorized");
    let r = s
        .http
        .get(s.url("/metrics"))
        .bearer_auth("producer-secret-0123456789")
        .send()
        .await
        .unwrap();
    let (status, body) = common::status_json(r).await;
    assert_eq!(status, 403);
    assert_eq!(error_code(&body), "forbidden");
    let r = s
        .http
        .get(s.url("/metrics"))
        .bearer_auth("admin-secret-0123456789abcd")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = s
        .http
        .get(s.url("/metrics"))
        .bearer_auth("admin-secret-0123456789abcX")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "a near miss is still unknown");
    s.stop().await;
}

/// Without tokens the facade trusts whoever reaches its loopback listener, and a web page
/// could through DNS rebinding (its own name resolving to 127.0.0.1) or a cross-site form
/// post: such requests name another host (`Host`) or come from another origin (`Origin`).
#[tokio::test]
async fn without_tokens_requests_naming_another_host_or_origin_are_refused() {
    let s = common::start().await;
    let send = |host: Option<&'static str>, origin: Option<&'static str>| {
        let mut req = s
            .http
            .post(s.url("/v1/topics"))
            .json(&serde_json::json!({"name": "Rebound"}));
        if let Some(h) = host {
            req = req.header("Host", h);
        }
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        async move { common::status_json(req.send().await.unwrap()).await }
    };
    for (host, origin) in [
        (Some("evil.example:8080"), None),
        (None, Some("http://evil.example")),
        (None, Some("null")),
    ] {
        let (status, body) = send(host, origin).await;
        assert_eq!(status, 403, "{host:?} {origin:?}: {body}");
        assert_eq!(error_code(&body), "forbidden");
    }
    assert!(
        s.broker.services().topic("Rebound").is_none(),
        "nothing done"
    );
    let (status, body) = send(Some("localhost:8080"), Some("http://127.0.0.1:8080")).await;
    assert_eq!(status, 201, "{body}");
    s.stop().await;
}

#[test]
fn an_unauthenticated_listener_off_loopback_is_refused() {
    let cfg = sluice_http::HttpConfig {
        listen: "0.0.0.0:8080".parse().unwrap(),
        ..sluice_http::HttpConfig::default()
    };
    let err = cfg.validate().unwrap_err();
    assert!(err.contains("tokens"), "{err}");
    let short = Token {
        name: "t".into(),
        secret: "short".into(),
        scopes: vec![Scope::Admin],
    };
    assert!(short.validate().is_err(), "short secrets are refused");
}

#[tokio::test]
async fn a_wrong_method_is_405_in_the_json_error_shape() {
    let s = common::start().await;
    let (status, body) = s.delete("/healthz").await;
    assert_eq!(status, 405);
    assert_eq!(error_code(&body), "method_not_allowed");
    s.stop().await;
}

/// Holds the broker's shutdown (it is stopped before the facade) until told to go on.
#[derive(Default)]
struct HoldStop(std::sync::Arc<HoldSignals>);

#[derive(Default)]
struct HoldSignals {
    entered: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl sluice_broker::Extension for HoldStop {
    fn name(&self) -> &'static str {
        "hold-stop"
    }

    fn stop(&self) -> sluice_broker::BoxFuture<'static, ()> {
        let signals = std::sync::Arc::clone(&self.0);
        Box::pin(async move {
            signals.entered.notify_one();
            signals.release.notified().await;
        })
    }
}

/// The facade kept taking (and storing) sends while the broker drained, then cut them off
/// when it stopped: clients saw resets for sends that might be stored, and retried them.
#[tokio::test]
async fn requests_are_refused_with_503_once_the_shutdown_has_begun() {
    let hold = HoldStop::default();
    let signals = std::sync::Arc::clone(&hold.0);
    let s = common::start_with(Options {
        after_facade: vec![std::sync::Arc::new(hold)],
        ..Options::default()
    })
    .await;
    let (status, body) = s
        .post(
            "/v1/topics/Stopping/messages",
            serde_json::json!({"body": "before"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (base, http) = (s.base.clone(), s.http.clone());
    let entered = signals.entered.notified();
    let stopping = tokio::spawn(s.broker.shutdown());
    tokio::time::timeout(std::time::Duration::from_secs(30), entered)
        .await
        .expect("the shutdown reached the extensions");
    let r = http
        .post(format!("{base}/v1/topics/Stopping/messages"))
        .json(&serde_json::json!({"body": "during"}))
        .send()
        .await
        .expect("the facade still answers");
    let (status, body) = common::status_json(r).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_code(&body), "unavailable");
    // Probes still answer, and say why.
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    let (status, body) = common::status_json(r).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reasons"].to_string().contains("shutting down"),
        "{body}"
    );
    signals.release.notify_one();
    let report = stopping.await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}
