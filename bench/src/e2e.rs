//! Fixed-rate end-to-end latency, after OMB's `1-topic-16-partitions-1kb` workload scaled to
//! two cores (`../shared/reference/benchmarks.md` §4): one topic of 16 queues (NATS: one
//! stream, 16 subjects), 1 KiB messages published at a fixed 20 000 msg/s by one producer
//! with at most 256 sends outstanding (see `MAX_OUTSTANDING`), one consumer.
//!
//! Each message carries its send time (µs on this process's monotonic clock). Recorded, in
//! HDR histograms, after a warm-up that is not recorded:
//! - **end-to-end**: consumer receive time - send time (OMB's definition);
//! - **publish**: acknowledgement - send time;
//! - **publish delay**: send time - scheduled time. It grows when the producer falls behind
//!   the rate (all 256 sends outstanding), which is what coordinated omission would hide.
//!
//! Systems, interleaved within each run, each fresh: Sluice with its defaults (SYNC_FLUSH:
//! acknowledged after `fdatasync`), Sluice with `flush = "async"`, and NATS JetStream (file
//! store, acknowledged once stored, synced in the background; pull consumer without acks, the
//! cheapest consumer NATS offers). Goal (issue #10): Sluice's p99 <= 0.5x NATS's.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use sluice_client::Message;
use tokio::sync::Semaphore;

use crate::nats_peer::{read_ackless, Nats};
use crate::proc::{push_consumer, runtime, Sluice};
use crate::stats::{machine_line, median, print_table, Row};
use crate::timers::producer;

const TOPIC: &str = "BenchE2e";
const QUEUES: usize = 16;
const SIZE: usize = 1024;
const RATE: u64 = 20_000;
/// Sends outstanding at most. OMB's RocketMQ driver allows 1 024 (`backpressureConcurrency`);
/// a Sluice broker answers SYSTEM_BUSY beyond 256 requests in flight on one connection
/// (`[broker] max_inflight_per_connection`), and its client uses one connection per broker,
/// so the producer keeps to 256, and NATS gets the same window.
const MAX_OUTSTANDING: usize = 256;
/// How long the last messages may take to arrive after the last send.
const TAIL_BOUND: Duration = Duration::from_secs(30);

/// The systems measured, in the order of each run.
const SYSTEMS: [&str; 3] = ["sluice sync", "sluice async", "nats"];

pub fn run(dir: &Path, quick: bool, sluice: &Path) -> Result<()> {
    let (runs, warmup, measure) = if quick { (2, 1, 4) } else { (5, 2, 8) };
    let plan = Plan {
        warm: RATE * warmup,
        total: RATE * (warmup + measure),
    };
    println!(
        "e2e: {runs} runs, {RATE} msg/s of {SIZE} B for {warmup} s (warm-up, not recorded) + \
         {measure} s, {QUEUES} queues, at most {MAX_OUTSTANDING} sends outstanding"
    );
    let rt = runtime()?;
    let mut results: Vec<Vec<Figures>> = vec![Vec::new(); SYSTEMS.len()];
    for run in 0..runs {
        println!("run {run}: {}", machine_line());
        for (k, name) in SYSTEMS.iter().enumerate() {
            let phase_dir = dir.join(format!("e2e-{run}-{k}"));
            let f = match k {
                0 => rt.block_on(sluice_phase(sluice, &phase_dir, &[], plan))?,
                1 => {
                    let env = [("SLUICE_STORE_FLUSH", "async".to_string())];
                    rt.block_on(sluice_phase(sluice, &phase_dir, &env, plan))?
                }
                _ => {
                    let nats = Nats::start(&phase_dir)?;
                    let f = rt.block_on(nats_phase(&nats, plan));
                    drop(nats);
                    std::fs::remove_dir_all(&phase_dir).ok();
                    f?
                }
            };
            println!("run {run}, {name}: {f}");
            results[k].push(f);
        }
    }
    report(&results);
    Ok(())
}

/// How many messages a phase sends, and how many of the first are the warm-up.
#[derive(Debug, Clone, Copy)]
struct Plan {
    warm: u64,
    total: u64,
}

/// One phase's quantiles in ms and its achieved rate.
#[derive(Debug, Clone, Copy)]
struct Figures {
    e2e_p50: f64,
    e2e_p99: f64,
    e2e_p999: f64,
    e2e_max: f64,
    publish_p99: f64,
    delay_p99: f64,
    delay_max: f64,
    rate: f64,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "e2e p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms; publish p99 {:.2} ms; \
             publish delay p99 {:.2} max {:.2} ms; {:.0} msg/s sent",
            self.e2e_p50,
            self.e2e_p99,
            self.e2e_p999,
            self.e2e_max,
            self.publish_p99,
            self.delay_p99,
            self.delay_max,
            self.rate
        )
    }
}

fn report(results: &[Vec<Figures>]) {
    println!("| system | e2e p50 | e2e p99 | e2e p99.9 | e2e max | publish p99 | publish delay p99 | publish delay max | sent msg/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, r) in SYSTEMS.iter().zip(results) {
        let m = |f: fn(&Figures) -> f64| median(&r.iter().map(f).collect::<Vec<_>>());
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} |",
            m(|f| f.e2e_p50),
            m(|f| f.e2e_p99),
            m(|f| f.e2e_p999),
            m(|f| f.e2e_max),
            m(|f| f.publish_p99),
            m(|f| f.delay_p99),
            m(|f| f.delay_max),
            m(|f| f.rate),
        );
    }
    let p99 = |k: usize| results[k].iter().map(|f| f.e2e_p99).collect::<Vec<_>>();
    let p50 = |k: usize| results[k].iter().map(|f| f.e2e_p50).collect::<Vec<_>>();
    let name = |what: &str, mode: &str| {
        format!("end-to-end {what}, {SIZE} B at {RATE} msg/s, {QUEUES} queues, Sluice {mode}")
    };
    print_table(&[
        Row {
            name: name("p99", "sync flush (default)"),
            unit: "ms",
            subject: p99(0),
            baseline: p99(2),
            baseline_name: "NATS JetStream, file store, same run",
            goal: "<= 0.5x",
        },
        Row {
            name: name("p99", "async flush"),
            unit: "ms",
            subject: p99(1),
            baseline: p99(2),
            baseline_name: "NATS JetStream, file store, same run",
            goal: "<= 0.5x",
        },
        Row {
            name: name("p50", "sync flush (default)"),
            unit: "ms",
            subject: p50(0),
            baseline: p50(2),
            baseline_name: "NATS JetStream, file store, same run",
            goal: "(reported)",
        },
    ]);
}

/// Microseconds on this process's monotonic clock.
fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// A body of `SIZE` bytes: send time (µs) and sequence number, then padding.
fn payload(sent_us: u64, seq: u64) -> Bytes {
    let mut b = Vec::with_capacity(SIZE);
    b.extend_from_slice(&sent_us.to_le_bytes());
    b.extend_from_slice(&seq.to_le_bytes());
    b.resize(SIZE, b'x');
    Bytes::from(b)
}

/// The send time and sequence number of a body written by [`payload`].
fn stamp(body: &[u8]) -> Option<(u64, u64)> {
    if body.len() != SIZE {
        return None; // e.g. the producer's warm-up message
    }
    let sent = u64::from_le_bytes(body[0..8].try_into().ok()?);
    let seq = u64::from_le_bytes(body[8..16].try_into().ok()?);
    Some((sent, seq))
}

/// The histograms of one phase (µs) and what arrived.
struct Recorder {
    e2e: Mutex<Histogram<u64>>,
    publish: Mutex<Histogram<u64>>,
    delay: Mutex<Histogram<u64>>,
    received: AtomicU64,
    warm: u64,
}

impl Recorder {
    fn new(warm: u64) -> Result<Arc<Self>> {
        let h = || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map(Mutex::new);
        Ok(Arc::new(Self {
            e2e: h()?,
            publish: h()?,
            delay: h()?,
            received: AtomicU64::new(0),
            warm,
        }))
    }

    /// A consumer got `body` now.
    fn received(&self, body: &[u8]) {
        let now = now_us();
        if let Some((sent, seq)) = stamp(body) {
            self.received.fetch_add(1, Ordering::Relaxed);
            if seq >= self.warm {
                record(&self.e2e, now.saturating_sub(sent));
            }
        }
    }

    fn figures(&self, rate: f64) -> Figures {
        let ms = |h: &Mutex<Histogram<u64>>, q: f64| {
            let h = h.lock().expect("histogram lock");
            h.value_at_quantile(q) as f64 / 1000.0
        };
        let max =
            |h: &Mutex<Histogram<u64>>| h.lock().expect("histogram lock").max() as f64 / 1000.0;
        Figures {
            e2e_p50: ms(&self.e2e, 0.50),
            e2e_p99: ms(&self.e2e, 0.99),
            e2e_p999: ms(&self.e2e, 0.999),
            e2e_max: max(&self.e2e),
            publish_p99: ms(&self.publish, 0.99),
            delay_p99: ms(&self.delay, 0.99),
            delay_max: max(&self.delay),
            rate,
        }
    }
}

fn record(h: &Mutex<Histogram<u64>>, us: u64) {
    let _ = h.lock().expect("histogram lock").record(us.max(1));
}

/// Publishes `plan.total` messages at `RATE`, each through `send(seq, body)`, at most
/// `MAX_OUTSTANDING` at once; returns the achieved send rate once every send is answered.
async fn publish_at_rate<F, Fut>(plan: Plan, rec: &Arc<Recorder>, send: F) -> Result<f64>
where
    F: Fn(u64, Bytes) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_OUTSTANDING));
    let failed = Arc::new(AtomicU64::new(0));
    let start = now_us();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq = 0u64;
    while seq < plan.total {
        ticker.tick().await;
        let due = ((now_us() - start) * RATE / 1_000_000 + 1).min(plan.total);
        while seq < due {
            let scheduled = start + seq * 1_000_000 / RATE;
            let permit = Arc::clone(&slots).acquire_owned().await?;
            let sent = now_us();
            if seq >= plan.warm {
                record(&rec.delay, sent.saturating_sub(scheduled));
            }
            let (send, rec, failed) = (send.clone(), Arc::clone(rec), Arc::clone(&failed));
            let warm = seq >= plan.warm;
            tokio::spawn(async move {
                match send(seq, payload(sent, seq)).await {
                    Ok(()) if warm => record(&rec.publish, now_us().saturating_sub(sent)),
                    Ok(()) => {}
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("  send {seq} failed: {e}");
                        }
                    }
                }
                drop(permit);
            });
            seq += 1;
        }
    }
    let all = u32::try_from(MAX_OUTSTANDING).unwrap_or(u32::MAX);
    let _all = tokio::time::timeout(TAIL_BOUND, slots.acquire_many(all))
        .await
        .context("sends still unanswered")??;
    let secs = (now_us() - start) as f64 / 1e6;
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} sends failed");
    }
    Ok(plan.total as f64 / secs)
}

/// Waits (bounded) until every message arrived at the consumer.
async fn await_all(rec: &Recorder, plan: Plan, who: &str) -> Result<()> {
    let deadline = Instant::now() + TAIL_BOUND;
    while rec.received.load(Ordering::Relaxed) < plan.total {
        if Instant::now() > deadline {
            bail!(
                "{who}: only {} of {} messages received",
                rec.received.load(Ordering::Relaxed),
                plan.total
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn sluice_phase(
    bin: &Path,
    dir: &Path,
    env: &[(&str, String)],
    plan: Plan,
) -> Result<Figures> {
    let s = Sluice::start(bin, dir, env)?;
    s.create_topic(TOPIC, QUEUES as i32).await?;
    let rec = Recorder::new(plan.warm)?;
    let consumer = {
        let rec = Arc::clone(&rec);
        push_consumer(&s.namesrv, "bench-e2e", TOPIC, QUEUES, move |m| {
            rec.received(m.body())
        })
        .await?
    };
    let p = producer(&s.namesrv, "bench-e2e", &[TOPIC]).await?;
    let rate = publish_at_rate(plan, &rec, move |_, body| {
        let p = Arc::clone(&p);
        async move {
            p.send(Message::new(TOPIC, body))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    })
    .await?;
    await_all(&rec, plan, "sluice").await?;
    consumer.shutdown().await;
    Ok(rec.figures(rate))
}

async fn nats_phase(nats: &Nats, plan: Plan) -> Result<Figures> {
    let js = Arc::new(nats.jetstream().await?);
    let rec = Recorder::new(plan.warm)?;
    let reader = {
        let rec = Arc::clone(&rec);
        read_ackless(&js, "bench-e2e", move |body| rec.received(body)).await?
    };
    let rate = publish_at_rate(plan, &rec, move |seq, body| {
        let js = Arc::clone(&js);
        async move {
            let subject = format!("bench.e2e.{}", seq % QUEUES as u64);
            let ack = js.publish(subject, body).await.map_err(|e| e.to_string())?;
            ack.await.map(drop).map_err(|e| e.to_string())
        }
    })
    .await;
    let done = match rate {
        Ok(rate) => await_all(&rec, plan, "nats").await.map(|()| rate),
        Err(e) => Err(e),
    };
    reader.abort();
    Ok(rec.figures(done?))
}
