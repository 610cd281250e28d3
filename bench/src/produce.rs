//! Durable produce against a durable peer, both on this disk, runs interleaved:
//!
//! - Sluice: SYNC_FLUSH sends (the default: acknowledged after `fdatasync`), 1 KiB, through
//!   `sluice-client` to the real `sluice` binary, with 1 and with 256 sends in flight;
//! - Redis streams: `XADD` of a 1 KiB field with `appendonly yes` and `appendfsync always`
//!   (Redis writes and fsyncs its AOF before answering, once per event-loop turn, so it group
//!   commits too), from 1 and from 256 connections with one command in flight each.
//!
//! Goal (issue #10): durable produce >= 1.5x Redis `appendfsync always`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use sluice_client::Message;

use crate::proc::{body, checked, drive, runtime, Load, Sluice};
use crate::redis_peer::{Conn, Redis};
use crate::stats::{machine_line, print_table, Row};
use crate::timers::producer;

const TOPIC: &str = "BenchDurable";
const SIZE: usize = 1024;
const BOUND: Duration = Duration::from_secs(120);
const STREAM: &[u8] = b"bench-durable";

/// One concurrency level: in flight, messages per run.
struct Level {
    window: usize,
    n: usize,
}

pub fn run(dir: &Path, quick: bool, sluice: &Path) -> Result<()> {
    let runs = if quick { 2 } else { 3 };
    let levels = [
        Level {
            window: 1,
            n: if quick { 1_000 } else { 3_000 },
        },
        Level {
            window: 256,
            n: if quick { 40_000 } else { 150_000 },
        },
    ];
    println!("produce: {runs} runs, {SIZE} B, SYNC_FLUSH vs Redis XADD with appendfsync always");
    let rt = runtime()?;
    let mut sluice_rates = vec![Vec::new(); levels.len()];
    let mut redis_rates = vec![Vec::new(); levels.len()];
    for run in 0..runs {
        println!("run {run}: {}", machine_line());
        for (li, level) in levels.iter().enumerate() {
            let s = Sluice::start(sluice, &dir.join(format!("produce-{run}-{li}")), &[])?;
            let l = rt.block_on(sluice_produce(&s.namesrv, level))?;
            drop(s);
            let redis_dir = dir.join(format!("redis-{run}-{li}"));
            let redis = Redis::start_durable(&redis_dir)?;
            let r = rt.block_on(redis_xadd(&redis.addr, level))?;
            drop(redis);
            println!(
                "run {run}, {} in flight: sluice {:.0}/s, redis {:.0}/s",
                level.window,
                l.rate(),
                r.rate()
            );
            sluice_rates[li].push(l.rate());
            redis_rates[li].push(r.rate());
        }
    }
    let rows: Vec<Row> = levels
        .iter()
        .enumerate()
        .map(|(li, level)| Row {
            name: format!(
                "durable produce, {SIZE} B, {} in flight ({} msgs)",
                level.window, level.n
            ),
            unit: "msg/s",
            subject: sluice_rates[li].clone(),
            baseline: redis_rates[li].clone(),
            baseline_name: "Redis XADD, appendfsync always, same run",
            goal: ">= 1.5x",
        })
        .collect();
    print_table(&rows);
    Ok(())
}

async fn sluice_produce(namesrv: &str, level: &Level) -> Result<Load> {
    let p = producer(namesrv, "bench-durable", &[TOPIC]).await?;
    let l = drive(level.n, level.window, BOUND, move |i| {
        let p = p.clone();
        async move { p.send(msg(i)).await.map(drop) }
    })
    .await;
    checked("sluice", l)
}

fn msg(i: usize) -> Message {
    Message::new(TOPIC, Bytes::from(body(&format!("{i}:"), SIZE)))
}

async fn redis_xadd(addr: &str, level: &Level) -> Result<Load> {
    let mut conns = Vec::new();
    for _ in 0..level.window {
        conns.push(Arc::new(tokio::sync::Mutex::new(
            Conn::connect(addr).await?,
        )));
    }
    let conns = Arc::new(conns);
    let window = level.window;
    let l = drive(level.n, window, BOUND, move |i| {
        let conns = conns.clone();
        async move {
            let mut c = conns[i % window].lock().await;
            let value = body(&format!("{i}:"), SIZE);
            c.cmd(&[b"XADD", STREAM, b"*", b"m", &value])
                .await
                .map(drop)
        }
    })
    .await;
    checked("redis", l)
}
