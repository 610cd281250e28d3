//! Transactional messages (issue: transactions), against the real `sluice` binary through
//! `sluice-client`, each run in a fresh process, runs interleaved:
//!
//! - (a) plain send, 1 KiB, 64 in flight (the baseline);
//! - (b) `send_in_transaction` whose local transaction commits at once, same concurrency
//!   (goal >= 0.7x of (a));
//! - (c) plain send again while 100 000 half messages stay open (local transaction and checker
//!   both answer Unknown) and the broker checks them on a short schedule (goal: drop < 20 %).
//!
//! Order inside a run: a, b, fill the open halves, wait for checks to start, c.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use sluice_client::{
    ClientConfig, ConsumedMessage, Message, Producer, ProducerBuilder, TransactionProducer,
    TransactionState,
};

use crate::proc::{drive, runtime, Load, Sluice};
use crate::stats::{machine_line, median, print_table, CpuUse, Row};

const TOPIC: &str = "BenchTxn";
const SIZE: usize = 1024;
const WINDOW: usize = 64;
/// Check schedule given to the broker: first check 1 s after the half, then every 5 s.
const CHECK_AFTER_MS: u64 = 1_000;
const CHECK_INTERVAL_MS: u64 = 5_000;
/// Bound of every load phase.
const BOUND: Duration = Duration::from_secs(120);

struct RunResult {
    plain: f64,
    txn: f64,
    plain_open: f64,
    halves: usize,
    checks_during: usize,
    window_secs: f64,
    /// Where the plain and transactional phases' time went (see `CpuUse`).
    notes: Vec<String>,
}

pub fn run(dir: &Path, quick: bool, sluice: &Path) -> Result<()> {
    let runs = if quick { 2 } else { 3 };
    let n = if quick { 30_000 } else { 100_000 };
    let halves = if quick { 25_000 } else { 100_000 };
    println!(
        "txn: {runs} runs, {n} msgs of {SIZE} B per phase, {WINDOW} in flight, {halves} open halves, \
         check after {CHECK_AFTER_MS} ms then every {CHECK_INTERVAL_MS} ms"
    );
    let rt = runtime()?;
    let mut results = Vec::new();
    for run in 0..runs {
        println!("run {run}: {}", machine_line());
        let env = [
            ("SLUICE_TXN_CHECK_AFTER_MS", CHECK_AFTER_MS.to_string()),
            (
                "SLUICE_TXN_CHECK_INTERVAL_MS",
                CHECK_INTERVAL_MS.to_string(),
            ),
            ("SLUICE_TXN_CHECK_MAX", "1000000".to_string()),
        ];
        let s = Sluice::start(sluice, &dir.join(format!("txn-{run}")), &env)?;
        let r = rt.block_on(one_run(&s.namesrv, s.pid(), n, halves))?;
        println!(
            "run {run}: plain {:.0}/s, txn {:.0}/s, plain with {} open halves {:.0}/s \
             ({} checks answered in its {:.1} s), sluice RSS {:.0} MiB",
            r.plain,
            r.txn,
            r.halves,
            r.plain_open,
            r.checks_during,
            r.window_secs,
            s.rss_mib()
        );
        for note in &r.notes {
            println!("  {note}");
        }
        results.push(r);
        drop(s);
    }
    let col = |f: fn(&RunResult) -> f64| results.iter().map(f).collect::<Vec<_>>();
    let plain = col(|r| r.plain);
    let rows = vec![
        Row {
            name: format!(
                "transactional send (half + commit), {SIZE} B, {WINDOW} in flight ({n} msgs)"
            ),
            unit: "msg/s",
            subject: col(|r| r.txn),
            baseline: plain.clone(),
            baseline_name: "Sluice plain send, same run",
            goal: ">= 0.7x",
        },
        Row {
            name: format!(
                "plain send while {} open halves are checked ({n} msgs)",
                results.iter().map(|r| r.halves).min().unwrap_or(0)
            ),
            unit: "msg/s",
            subject: col(|r| r.plain_open),
            baseline: plain,
            baseline_name: "Sluice plain send, same run, no open halves",
            goal: ">= 0.8x (drop < 20 %)",
        },
    ];
    print_table(&rows);
    let checks = col(|r| r.checks_during as f64 / r.window_secs);
    println!(
        "\nchecks answered per second during the open-halves phase (median): {:.0}",
        median(&checks)
    );
    Ok(())
}

fn msg(i: usize) -> Message {
    let mut b = format!("{i}:").into_bytes();
    b.resize(SIZE, b'x');
    Message::new(TOPIC, Bytes::from(b))
}

fn report(name: &str, l: &Load) -> Result<f64> {
    if l.errors > 0 || l.timed_out {
        eprintln!(
            "  {name}: {} ok, {} errors, timed out: {}",
            l.ok, l.errors, l.timed_out
        );
    }
    anyhow::ensure!(l.ok > 0, "{name}: nothing succeeded");
    Ok(l.rate())
}

async fn one_run(namesrv: &str, pid: u32, n: usize, halves: usize) -> Result<RunResult> {
    let plain = Arc::new(
        Producer::builder(ClientConfig::new(namesrv))
            .group("bench-plain")
            .warm_topics([TOPIC])
            .start()
            .await
            .context("plain producer")?,
    );
    // Warm-up: creates the topic and the connections.
    let p = plain.clone();
    drive(500, 16, BOUND, move |i| {
        let p = p.clone();
        async move { p.send(msg(i)).await.map(drop) }
    })
    .await;

    let p = plain.clone();
    let cpu = CpuUse::start(Some(pid));
    let a = drive(n, WINDOW, BOUND, move |i| {
        let p = p.clone();
        async move { p.send(msg(i)).await.map(drop) }
    })
    .await;
    let mut notes = vec![format!("plain: {}", cpu.line(a.ok))];
    let a = report("plain", &a)?;

    let tx = Arc::new(
        TransactionProducer::builder(
            ProducerBuilder::new(ClientConfig::new(namesrv))
                .group("bench-txn")
                .warm_topics([TOPIC]),
            |_m: ConsumedMessage| async { TransactionState::Commit },
        )
        .start()
        .await
        .context("transaction producer")?,
    );
    let t = tx.clone();
    let cpu = CpuUse::start(Some(pid));
    let b = drive(n, WINDOW, BOUND, move |i| {
        let t = t.clone();
        async move {
            t.send_in_transaction(msg(i), |_| async { TransactionState::Commit })
                .await
                .map(drop)
        }
    })
    .await;
    notes.push(format!("transactional: {}", cpu.line(b.ok)));
    let b = report("txn", &b)?;

    let checks = Arc::new(AtomicUsize::new(0));
    let counter = checks.clone();
    let open = Arc::new(
        TransactionProducer::builder(
            ProducerBuilder::new(ClientConfig::new(namesrv))
                .group("bench-open")
                .warm_topics([TOPIC]),
            move |_m: ConsumedMessage| {
                counter.fetch_add(1, Ordering::Relaxed);
                async { TransactionState::Unknown }
            },
        )
        .check_concurrency(16)
        .start()
        .await
        .context("open-halves producer")?,
    );
    let o = open.clone();
    let fill = drive(halves, WINDOW, BOUND, move |i| {
        let o = o.clone();
        async move {
            o.send_in_transaction(msg(i), |_| async { TransactionState::Unknown })
                .await
                .map(drop)
        }
    })
    .await;
    if fill.errors > 0 || fill.timed_out {
        eprintln!("  open halves: {} stored, {} errors", fill.ok, fill.errors);
    }
    println!(
        "  {} open halves stored in {:.1} s ({:.0}/s)",
        fill.ok,
        fill.secs,
        fill.rate()
    );
    // Wait (bounded) until the broker's checks reach the checker.
    let waited = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(CHECK_AFTER_MS)).await;
    while checks.load(Ordering::Relaxed) < 1_000 && waited.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "  {} checks answered {:.1} s after the last half was stored",
        checks.load(Ordering::Relaxed),
        waited.elapsed().as_secs_f64()
    );
    let before = checks.load(Ordering::Relaxed);
    let p = plain.clone();
    let c = drive(n, WINDOW, BOUND, move |i| {
        let p = p.clone();
        async move { p.send(msg(i)).await.map(drop) }
    })
    .await;
    let checks_during = checks.load(Ordering::Relaxed) - before;
    let window_secs = c.secs;
    let c = report("plain with open halves", &c)?;

    for p in [tx, open] {
        if let Ok(p) = Arc::try_unwrap(p) {
            p.shutdown().await;
        }
    }
    if let Ok(p) = Arc::try_unwrap(plain) {
        p.shutdown().await;
    }
    Ok(RunResult {
        plain: a,
        txn: b,
        plain_open: c,
        halves: fill.ok,
        checks_during,
        window_secs,
        notes,
    })
}
