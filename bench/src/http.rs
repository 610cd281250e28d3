//! The HTTP facade (issue: HTTP facade), in this process, against an axum null handler in the
//! same process, driven by one reqwest client over loopback, runs interleaved:
//!
//! - (a) `POST /null` on a bare axum server that parses the same JSON body and answers 201
//!   with a similar JSON (the baseline: what any axum service pays for HTTP + JSON);
//! - (b) `POST /v1/topics/{topic}/messages` on Sluice (sync flush, group commit), 1 KiB
//!   bodies, 64 in flight (goal >= 0.7x of (a));
//! - (c) receive (32 per request) + ack of what (b) stored, 4 consumers, messages per second
//!   against (b)'s rate.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::routing::post;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_broker::{Broker, BrokerConfig, BrokerExtensions, BrokerHandle};
use sluice_http::{HttpConfig, HttpFacade};
use sluice_store::StoreConfig;

use crate::proc::{drive, runtime};
use crate::stats::{machine_line, print_table, CpuUse, Row};

const TOPIC: &str = "BenchHttp";
const GROUP: &str = "bench-http";
const SIZE: usize = 1024;
const WINDOW: usize = 64;
const CONSUMERS: usize = 4;
/// Bound of every load phase.
const BOUND: Duration = Duration::from_secs(120);

pub fn run(dir: &Path, quick: bool) -> Result<()> {
    let runs = if quick { 2 } else { 3 };
    let n = if quick { 10_000 } else { 40_000 };
    println!("http: {runs} runs, {n} requests of {SIZE} B per phase, {WINDOW} in flight");
    let rt = runtime()?;
    let (mut null, mut produce, mut consume) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        println!("run {run}: {}", machine_line());
        let (a, b, c, notes) = rt.block_on(one_run(&dir.join(format!("http-{run}")), n))?;
        println!("run {run}: null {a:.0}/s, produce {b:.0}/s, receive+ack {c:.0} msgs/s");
        for note in notes {
            println!("  {note}");
        }
        null.push(a);
        produce.push(b);
        consume.push(c);
    }
    print_table(&[
        Row {
            name: "HTTP produce, 1 KiB JSON, 64 in flight".into(),
            unit: "req/s",
            subject: produce.clone(),
            baseline: null,
            baseline_name: "axum null handler",
            goal: ">= 0.7x",
        },
        Row {
            name: "HTTP receive (32) + ack, 4 consumers".into(),
            unit: "msg/s",
            subject: consume,
            baseline: produce,
            baseline_name: "HTTP produce",
            goal: "(reported)",
        },
    ]);
    Ok(())
}

/// One run's rates (null, produce, receive + ack) and what each post phase measured besides
/// its rate (see `CpuUse`), so a ratio can be read as more work or more waiting.
async fn one_run(dir: &Path, n: usize) -> Result<(f64, f64, f64, Vec<String>)> {
    let null_addr = start_null().await?;
    let (broker, facade) = start_sluice(dir).await?;
    let http_addr = facade.local_addr().context("http bound")?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(WINDOW)
        .timeout(Duration::from_secs(30))
        .build()?;
    let body = json!({ "body": String::from_utf8(crate::proc::body("m", SIZE))? });
    let (null, null_cpu) = post_load(&client, format!("http://{null_addr}/null"), &body, n).await?;
    let url = format!("http://{http_addr}/v1/topics/{TOPIC}/messages");
    let syncs = broker.store().sync_latency();
    let (produce, produce_cpu) = post_load(&client, url, &body, n).await?;
    let after = broker.store().sync_latency();
    let (count, us) = (after.count() - syncs.count(), after.sum_us - syncs.sum_us);
    let notes = vec![
        format!("null: {null_cpu}"),
        format!(
            "produce: {produce_cpu}; {count} syncs of {:.1} requests, {:.0} us each",
            n as f64 / count.max(1) as f64,
            us as f64 / count.max(1) as f64
        ),
    ];
    let consume = receive_ack(&client, http_addr, n).await?;
    broker.shutdown().await;
    Ok((null, produce, consume, notes))
}

/// The rate of `n` posts, and the phase's CPU line (see `CpuUse`).
async fn post_load(
    client: &reqwest::Client,
    url: String,
    body: &Value,
    n: usize,
) -> Result<(f64, String)> {
    let cpu = CpuUse::start(None);
    let rate = post_load_inner(client, url, body, n).await?;
    Ok((rate, cpu.line(n)))
}

async fn post_load_inner(
    client: &reqwest::Client,
    url: String,
    body: &Value,
    n: usize,
) -> Result<f64> {
    let (client, url, body) = (client.clone(), Arc::new(url), Arc::new(body.clone()));
    let load = drive(n, WINDOW, BOUND, move |_| {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move {
            let r = client
                .post(url.as_str())
                .json(body.as_ref())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status().as_u16() == 201 {
                Ok(())
            } else {
                Err(format!("status {}", r.status()))
            }
        }
    })
    .await;
    anyhow::ensure!(load.errors == 0 && !load.timed_out, "load failed: {load:?}");
    Ok(load.rate())
}

/// `CONSUMERS` loops of receive(32) + ack until `n` messages were acked (bounded).
async fn receive_ack(client: &reqwest::Client, addr: SocketAddr, n: usize) -> Result<f64> {
    let started = std::time::Instant::now();
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONSUMERS {
        let (client, acked) = (client.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            consume_loop(&client, addr, n, &acked, started + BOUND).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    let done = acked.load(std::sync::atomic::Ordering::Relaxed);
    anyhow::ensure!(done >= n, "only {done} of {n} messages acked in time");
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

async fn consume_loop(
    client: &reqwest::Client,
    addr: SocketAddr,
    n: usize,
    acked: &std::sync::atomic::AtomicUsize,
    deadline: std::time::Instant,
) -> Result<()> {
    use std::sync::atomic::Ordering;
    let receive = format!("http://{addr}/v1/groups/{GROUP}/topics/{TOPIC}/receive");
    let ack = format!("http://{addr}/v1/groups/{GROUP}/ack");
    while acked.load(Ordering::Relaxed) < n && std::time::Instant::now() < deadline {
        let got: Value = client
            .post(&receive)
            .json(&json!({"max": 32, "wait_ms": 1000}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let receipts: Vec<Value> = got["messages"]
            .as_array()
            .map(|m| m.iter().map(|x| x["receipt"].clone()).collect())
            .unwrap_or_default();
        if receipts.is_empty() {
            continue;
        }
        let count = receipts.len();
        client
            .post(&ack)
            .json(&json!({ "receipts": receipts }))
            .send()
            .await?
            .error_for_status()?;
        acked.fetch_add(count, Ordering::Relaxed);
    }
    Ok(())
}

#[derive(Deserialize)]
#[allow(dead_code)] // parsed to pay what a real handler pays, never read
struct NullMessage {
    body: Option<String>,
    body_base64: Option<String>,
    tag: Option<String>,
    keys: Option<Vec<String>>,
}

/// The baseline: an axum server parsing the same JSON and answering a similar JSON.
async fn start_null() -> Result<SocketAddr> {
    let app = axum::Router::new().route(
        "/null",
        post(|Json(m): Json<NullMessage>| async move {
            let len = m.body.map_or(0, |b| b.len());
            (
                axum::http::StatusCode::CREATED,
                Json(json!({"msg_id": format!("{len:032X}"), "queue_id": 0, "queue_offset": len})),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// A broker with the facade on a free loopback port (no name server), default durability.
async fn start_sluice(dir: &Path) -> Result<(BrokerHandle, Arc<HttpFacade>)> {
    std::fs::create_dir_all(dir)?;
    let mut store = StoreConfig::new(dir);
    store.segment_size = 256 << 20;
    let mut cfg = BrokerConfig::new(store);
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.namesrv_addrs = vec![];
    let facade = HttpFacade::new(
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..HttpConfig::default()
        },
        None,
        None,
    );
    let mut ext = BrokerExtensions::default();
    ext.extensions.push(facade.extension());
    let broker = Broker::start_with(cfg, ext).await?;
    Ok((broker, facade))
}
