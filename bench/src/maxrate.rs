//! Max-rate produce with asynchronous durability, against NATS JetStream, runs interleaved:
//!
//! - Sluice with `flush = "async"` (acknowledged once written to the page cache, synced in the
//!   background; `docs/DURABILITY.md`), `sluice-client`, 256 sends in flight;
//! - NATS JetStream, file store (`nats-server -js`, its default: acknowledged once stored,
//!   fsync in the background), `async-nats` publishing with the stream's ack, 256 in flight.
//!
//! 128 B and 1 KiB bodies. Goal (issue #10): async max-rate produce >= 2x NATS JetStream.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use sluice_client::Message;

use crate::nats_peer::Nats;
use crate::proc::{body, checked, drive, runtime, Load, Sluice};
use crate::stats::{machine_line, print_table, Row};
use crate::timers::producer;

const TOPIC: &str = "BenchMaxRate";
const WINDOW: usize = 256;
const BOUND: Duration = Duration::from_secs(120);

pub fn run(dir: &Path, quick: bool, sluice: &Path) -> Result<()> {
    let runs = if quick { 2 } else { 3 };
    let n = if quick { 50_000 } else { 200_000 };
    let sizes = [128usize, 1024];
    println!("maxrate: {runs} runs, {n} msgs per phase, {WINDOW} in flight, async durability");
    let rt = runtime()?;
    let mut ours = vec![Vec::new(); sizes.len()];
    let mut theirs = vec![Vec::new(); sizes.len()];
    for run in 0..runs {
        println!("run {run}: {}", machine_line());
        for (si, &size) in sizes.iter().enumerate() {
            let env = [("SLUICE_STORE_FLUSH", "async".to_string())];
            let s = Sluice::start(sluice, &dir.join(format!("maxrate-{run}-{size}")), &env)?;
            let a = rt.block_on(sluice_produce(&s.namesrv, n, size))?;
            drop(s);
            let nats = Nats::start(&dir.join(format!("nats-{run}-{size}")))?;
            let b = rt.block_on(nats_publish(&nats, n, size))?;
            drop(nats);
            println!(
                "run {run}, {size} B: sluice {:.0}/s, nats jetstream {:.0}/s",
                a.rate(),
                b.rate()
            );
            ours[si].push(a.rate());
            theirs[si].push(b.rate());
        }
    }
    let rows: Vec<Row> = sizes
        .iter()
        .enumerate()
        .map(|(si, size)| Row {
            name: format!("async max-rate produce, {size} B, {WINDOW} in flight ({n} msgs)"),
            unit: "msg/s",
            subject: ours[si].clone(),
            baseline: theirs[si].clone(),
            baseline_name: "NATS JetStream publish with ack, file store, same run",
            goal: ">= 2x",
        })
        .collect();
    print_table(&rows);
    Ok(())
}

async fn sluice_produce(namesrv: &str, n: usize, size: usize) -> Result<Load> {
    let p = producer(namesrv, "bench-maxrate", &[TOPIC]).await?;
    let l = drive(n, WINDOW, BOUND, move |i| {
        let p = p.clone();
        async move {
            let m = Message::new(TOPIC, Bytes::from(body(&format!("{i}:"), size)));
            p.send(m).await.map(drop)
        }
    })
    .await;
    checked("sluice", l)
}

async fn nats_publish(nats: &Nats, n: usize, size: usize) -> Result<Load> {
    let js = Arc::new(nats.jetstream().await?);
    let l = drive(n, WINDOW, BOUND, move |i| {
        let js = js.clone();
        async move {
            let payload = Bytes::from(body(&format!("{i}:"), size));
            let ack = js
                .publish("bench.maxrate", payload)
                .await
                .map_err(|e| e.to_string())?;
            ack.await.map(drop).map_err(|e| e.to_string())
        }
    })
    .await;
    checked("nats", l)
}
