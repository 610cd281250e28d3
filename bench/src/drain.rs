//! Backlog drain, after OMB's `backlog-1-topic-16-partitions-1kb` workload scaled to two cores
//! (`../shared/reference/benchmarks.md` §4): N messages of 1 KiB are stored in a topic of 16
//! queues (NATS: one stream, 16 subjects) while no consumer runs; then one consumer is started
//! and the clock runs until it has received all N.
//!
//! Reported: the drain rate N / (last receive - consumer start), which includes the
//! consumer's start (route lookup, rebalance, first pulls), and N / (last - first receive).
//! Systems, interleaved within each run, each fresh: Sluice with its defaults (a push
//! consumer from `sluice-client`, offsets committed in the background) and NATS JetStream
//! (file store; a pull consumer without acks, the cheapest consumer NATS offers). Goal
//! (issue #10): drain >= 2x NATS.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use sluice_client::Message;

use crate::nats_peer::{read_ackless, Nats};
use crate::proc::{body, checked, drive, push_consumer, runtime, Sluice};
use crate::stats::{machine_line, print_table, Row};
use crate::timers::producer;

const TOPIC: &str = "BenchDrain";
const QUEUES: usize = 16;
const SIZE: usize = 1024;
/// Sends in flight while the backlog is built.
const FILL_WINDOW: usize = 256;
/// Bound of each fill and each drain.
const BOUND: Duration = Duration::from_secs(180);

pub fn run(dir: &Path, quick: bool, sluice: &Path) -> Result<()> {
    let (runs, n) = if quick { (2, 100_000) } else { (3, 400_000) };
    println!(
        "drain: {runs} runs, a backlog of {n} msgs of {SIZE} B in {QUEUES} queues, then one consumer"
    );
    let rt = runtime()?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut ours_flow, mut theirs_flow) = (Vec::new(), Vec::new());
    for run in 0..runs {
        println!("run {run}: {}", machine_line());
        let a = rt.block_on(sluice_phase(sluice, &dir.join(format!("drain-{run}")), n))?;
        println!("run {run}, sluice: {a}");
        let nats_dir = dir.join(format!("drain-nats-{run}"));
        let nats = Nats::start(&nats_dir)?;
        let b = rt.block_on(nats_phase(&nats, n));
        drop(nats);
        std::fs::remove_dir_all(&nats_dir).ok();
        let b = b?;
        println!("run {run}, nats: {b}");
        ours.push(a.rate(n));
        theirs.push(b.rate(n));
        ours_flow.push(a.flow_rate(n));
        theirs_flow.push(b.flow_rate(n));
    }
    print_table(&[
        Row {
            name: format!("backlog drain, {n} x {SIZE} B, {QUEUES} queues, from consumer start"),
            unit: "msg/s",
            subject: ours,
            baseline: theirs,
            baseline_name: "NATS JetStream, file store, ack-less pull consumer, same run",
            goal: ">= 2x",
        },
        Row {
            name: format!("backlog drain, {n} x {SIZE} B, first to last message"),
            unit: "msg/s",
            subject: ours_flow,
            baseline: theirs_flow,
            baseline_name: "NATS JetStream, file store, ack-less pull consumer, same run",
            goal: "(reported)",
        },
    ]);
    Ok(())
}

/// When a drain started, and when its first and last messages arrived.
#[derive(Debug, Clone, Copy)]
struct Drained {
    fill_rate: f64,
    first: Duration,
    last: Duration,
}

impl Drained {
    fn rate(&self, n: usize) -> f64 {
        n as f64 / self.last.as_secs_f64()
    }

    fn flow_rate(&self, n: usize) -> f64 {
        n as f64 / (self.last - self.first).as_secs_f64()
    }
}

impl std::fmt::Display for Drained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "backlog stored at {:.0} msg/s; first message {:.0} ms after the consumer's start, \
             last after {:.2} s",
            self.fill_rate,
            self.first.as_secs_f64() * 1000.0,
            self.last.as_secs_f64()
        )
    }
}

/// Counts what a consumer receives and notes the first arrival.
struct Counter {
    started: Instant,
    received: AtomicU64,
    first: OnceLock<Duration>,
}

impl Counter {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            received: AtomicU64::new(0),
            first: OnceLock::new(),
        })
    }

    fn got(&self, body: &[u8]) {
        if body.len() == SIZE {
            self.first.get_or_init(|| self.started.elapsed());
            self.received.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits (bounded) until `n` arrived; returns when the last one did.
    async fn all(&self, n: usize, who: &str) -> Result<Duration> {
        let deadline = self.started + BOUND;
        while self.received.load(Ordering::Relaxed) < n as u64 {
            if Instant::now() > deadline {
                bail!(
                    "{who}: only {} of {n} messages drained in {BOUND:?}",
                    self.received.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(self.started.elapsed())
    }
}

async fn sluice_phase(bin: &Path, dir: &Path, n: usize) -> Result<Drained> {
    let s = Sluice::start(bin, dir, &[])?;
    s.create_topic(TOPIC, QUEUES as i32).await?;
    let p = producer(&s.namesrv, "bench-drain", &[TOPIC]).await?;
    let fill = drive(n, FILL_WINDOW, BOUND, move |i| {
        let p = Arc::clone(&p);
        async move {
            let m = Message::new(TOPIC, Bytes::from(body(&format!("{i}:"), SIZE)));
            p.send(m).await.map(drop)
        }
    })
    .await;
    let fill = checked("sluice fill", fill)?;
    let counter = Counter::new();
    let c = {
        let counter = Arc::clone(&counter);
        push_consumer(&s.namesrv, "bench-drain", TOPIC, 0, move |m| {
            counter.got(m.body())
        })
        .await?
    };
    let last = counter.all(n, "sluice").await;
    c.shutdown().await;
    Ok(Drained {
        fill_rate: fill.rate(),
        first: counter.first.get().copied().unwrap_or_default(),
        last: last?,
    })
}

async fn nats_phase(nats: &Nats, n: usize) -> Result<Drained> {
    let js = Arc::new(nats.jetstream().await?);
    let fill = {
        let js = Arc::clone(&js);
        drive(n, FILL_WINDOW, BOUND, move |i| {
            let js = Arc::clone(&js);
            async move {
                let subject = format!("bench.drain.{}", i % QUEUES);
                let payload = Bytes::from(body(&format!("{i}:"), SIZE));
                let ack = js
                    .publish(subject, payload)
                    .await
                    .map_err(|e| e.to_string())?;
                ack.await.map(drop).map_err(|e| e.to_string())
            }
        })
        .await
    };
    let fill = checked("nats fill", fill)?;
    let counter = Counter::new();
    let reader = {
        let counter = Arc::clone(&counter);
        read_ackless(&js, "bench-drain", move |body| counter.got(body)).await?
    };
    let last = counter.all(n, "nats").await;
    reader.abort();
    Ok(Drained {
        fill_rate: fill.rate(),
        first: counter.first.get().copied().unwrap_or_default(),
        last: last?,
    })
}
