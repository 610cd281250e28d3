//! Durable produce against a durable peer, both on this disk, runs interleaved:
//!
//! - Sluice: SYNC_FLUSH sends (the default: acknowledged after `fdatasync`), 1 KiB, through
//!   `sluice-client` to the real `sluice` binary, with 1 and with 256 sends in flight;
//! - Redis streams: `XADD` of a 1 KiB field with `appendonly yes` and `appendfsync always`
//!   (Redis writes and fsyncs its AOF before answering, once per event-loop turn, so it group
//!   commits too), from 1 and from 256 connections with one command in flight each;
//! - RabbitMQ 3.10: persistent messages to a durable queue on one channel in confirm mode,
//!   1 and 256 publishes awaiting their confirms (`rabbit_peer`).
//!
//! Goals (issue #10): durable produce >= 1.5x Redis `appendfsync always` and >= 10x RabbitMQ
//! durable with confirms.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use sluice_client::Message;

use crate::proc::{body, checked, drive, runtime, Load, Sluice};
use crate::rabbit_peer::Rabbit;
use crate::redis_peer::{Conn, Redis};
use crate::stats::{machine_line, print_table, Row};
use crate::timers::producer;

const TOPIC: &str = "BenchDurable";
const SIZE: usize = 1024;
const BOUND: Duration = Duration::from_secs(120);
const STREAM: &[u8] = b"bench-durable";
/// Longest wait for one RabbitMQ publisher confirm.
const CONFIRM_BOUND: Duration = Duration::from_secs(30);

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
    println!(
        "produce: {runs} runs, {SIZE} B, SYNC_FLUSH vs Redis XADD with appendfsync always \
         vs RabbitMQ durable queue with confirms"
    );
    let rt = runtime()?;
    let mut sluice_rates = vec![Vec::new(); levels.len()];
    let mut redis_rates = vec![Vec::new(); levels.len()];
    let mut rabbit_rates = vec![Vec::new(); levels.len()];
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
            let rabbit = Rabbit::start(&dir.join(format!("rabbit-{run}-{li}")))?;
            let q = rt.block_on(rabbit_publish(&rabbit.url, level))?;
            drop(rabbit);
            println!(
                "run {run}, {} in flight: sluice {:.0}/s, redis {:.0}/s, rabbitmq {:.0}/s",
                level.window,
                l.rate(),
                r.rate(),
                q.rate()
            );
            sluice_rates[li].push(l.rate());
            redis_rates[li].push(r.rate());
            rabbit_rates[li].push(q.rate());
        }
    }
    let name = |level: &Level| {
        format!(
            "durable produce, {SIZE} B, {} in flight ({} msgs)",
            level.window, level.n
        )
    };
    let against = |peer: &[Vec<f64>], baseline_name: &'static str, goal: &'static str| {
        let row = |(li, level): (usize, &Level)| Row {
            name: name(level),
            unit: "msg/s",
            subject: sluice_rates[li].clone(),
            baseline: peer[li].clone(),
            baseline_name,
            goal,
        };
        levels.iter().enumerate().map(row).collect::<Vec<Row>>()
    };
    let mut rows = against(
        &redis_rates,
        "Redis XADD, appendfsync always, same run",
        ">= 1.5x",
    );
    rows.extend(against(
        &rabbit_rates,
        "RabbitMQ durable queue, persistent, confirms, same run",
        ">= 10x",
    ));
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

async fn rabbit_publish(url: &str, level: &Level) -> Result<Load> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    // lapin's own runtime (async-global-executor and async-io): the one it is tested with.
    let props = ConnectionProperties::default();
    let conn = Connection::connect(url, props).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("bench-durable", durable, FieldTable::default())
        .await?;
    let l = drive(level.n, level.window, BOUND, move |i| {
        let ch = ch.clone();
        async move {
            let payload = body(&format!("{i}:"), SIZE);
            let persistent = BasicProperties::default().with_delivery_mode(2);
            let confirm = ch
                .basic_publish(
                    "",
                    "bench-durable",
                    BasicPublishOptions::default(),
                    &payload,
                    persistent,
                )
                .await
                .map_err(|e| e.to_string())?;
            // Bounded: a confirm that never comes fails the run instead of hanging it.
            let confirmed = tokio::time::timeout(CONFIRM_BOUND, confirm)
                .await
                .map_err(|_| format!("no confirm within {CONFIRM_BOUND:?}"))?;
            match confirmed.map_err(|e| e.to_string())? {
                lapin::publisher_confirm::Confirmation::Ack(_) => Ok(()),
                other => Err(format!("not confirmed: {other:?}")),
            }
        }
    })
    .await;
    let _ = conn.close(200, "done").await;
    checked("rabbitmq", l)
}
