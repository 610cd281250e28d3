//! Delayed messages (issue: delayed messages), against the real `sluice` binary through
//! `sluice-client`, side by side with a Redis sorted-set delay queue (`ZADD` score = due time,
//! a poller doing `ZRANGEBYSCORE -inf now LIMIT 0 1000` + `ZREM`, sleeping 1 ms when idle):
//!
//! - (a) enqueue rate of delayed sends (`TIMER_DELIVER_MS` 10 min ahead), 1 KiB, 64 in
//!   flight, against plain sends in the same run (goal >= 0.5x) and Redis `ZADD` from 64
//!   connections; its own `sluice` process, stopped before the timers fall due;
//! - (b) lateness (receive time - due time, ms) of timers spread over a few seconds while P
//!   far-future timers are pending (full: 1 000 000, quick: 50 000); Sluice's are received by
//!   a push consumer, Redis's by the poller; runs interleaved;
//! - (c) burst release: T timers due in the same second, T / (last receive - due);
//!   with the default `[schedule] release_rate` (with P pending) and, in a separate process
//!   without P, with `release_rate` raised to 10 000 000 (the engine's own ceiling);
//! - (d) RSS of the `sluice` process before and after P pending (and of `redis-server`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use bytes::Bytes;
use sluice_client::{ClientConfig, Message, Producer, PushConsumer};
use tokio::sync::mpsc;

use crate::proc::{body, drive, now_ms, push_consumer, runtime, Load, Sluice};
use crate::redis_peer::{Conn, Redis, Reply};
use crate::stats::{fmt, machine_line, median, print_table, Row};

const SIZE: usize = 1024;
pub(crate) const BG_SIZE: usize = 128;
const WINDOW: usize = 64;
const ZKEY: &[u8] = b"delayq";
const T_ENQ: &str = "BenchTimerEnq";
pub(crate) const T_BG: &str = "BenchTimerBg";
const T_LATE: &str = "BenchTimerLate";
/// A delivered timer: (kind, run, due ms, receive ms).
/// (kind, run, due ms, received ms, stored ms: when the release was appended to the topic).
type Got = (String, usize, u64, u64, u64);

struct Sizes {
    runs: usize,
    lat_runs: usize,
    enq_n: usize,
    pending: usize,
    fill_bound: Duration,
    late_n: usize,
    late_span_ms: u64,
    burst_n: usize,
}

pub fn run(dir: &Path, quick: bool, sluice: &Path) -> Result<()> {
    let z = if quick {
        Sizes {
            runs: 2,
            lat_runs: 2,
            enq_n: 10_000,
            pending: 50_000,
            fill_bound: Duration::from_secs(60),
            late_n: 500,
            late_span_ms: 2_500,
            burst_n: 10_000,
        }
    } else {
        Sizes {
            runs: 3,
            lat_runs: 5,
            enq_n: 40_000,
            pending: 1_000_000,
            fill_bound: Duration::from_secs(420),
            late_n: 2_000,
            late_span_ms: 8_000,
            burst_n: 100_000,
        }
    };
    let rt = runtime()?;
    let redis = match Redis::start() {
        Ok(r) => Some(r),
        Err(e) => {
            println!("Redis peer NOT available ({e:#}); reporting Sluice-only figures");
            None
        }
    };
    let enq_timer_rate = enqueue_phase(&rt, dir, sluice, &z, redis.as_ref())?;
    if let Some(r) = &redis {
        rt.block_on(async {
            let mut c = Conn::connect(&r.addr).await?;
            c.cmd(&[b"FLUSHALL"]).await.map(drop)
        })?;
    }
    main_phase(&rt, dir, sluice, &z, redis.as_ref(), enq_timer_rate)?;
    ceiling_phase(&rt, dir, sluice, &z, enq_timer_rate)?;
    Ok(())
}

/// `timers --burst N`, run by hand: only the unpaced burst (`release_rate` lifted, plain sends
/// during it), with N timers due in one second, twice. For the "1 M in one second".
pub fn run_burst(dir: &Path, sluice: &Path, n: usize) -> Result<()> {
    println!("timers burst: 2 runs of {n} timers of {BG_SIZE} B due in one second");
    let z = Sizes {
        runs: 2,
        lat_runs: 0,
        enq_n: 0,
        pending: 0,
        fill_bound: Duration::ZERO,
        late_n: 0,
        late_span_ms: 0,
        burst_n: n,
    };
    // The enqueue rate only sets how far ahead the due second lies (see `sluice_burst`).
    ceiling_phase(&runtime()?, dir, sluice, &z, 50_000.0)
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

pub(crate) fn at(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

pub(crate) async fn producer(namesrv: &str, group: &str, topics: &[&str]) -> Result<Arc<Producer>> {
    let p = Producer::builder(ClientConfig::new(namesrv))
        .group(group)
        .warm_topics(topics.iter().copied())
        .start()
        .await
        .context("producer")?;
    let p = Arc::new(p);
    // Warm-up: creates the topics and connections.
    for t in topics {
        p.send(Message::new(*t, "warm")).await?;
    }
    Ok(p)
}

/// (a): plain vs delayed vs Redis ZADD, interleaved. Returns the median delayed-send rate.
fn enqueue_phase(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    sluice: &Path,
    z: &Sizes,
    redis: Option<&Redis>,
) -> Result<f64> {
    let s = Sluice::start(sluice, &dir.join("timers-enq"), &[])?;
    let bound = Duration::from_secs(120);
    let n = z.enq_n;
    let (mut plain, mut timer, mut zadd) = (Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        let p = producer(&s.namesrv, "bench-timers-enq", &[T_ENQ]).await?;
        for run in 0..z.runs {
            println!("enqueue run {run}: {}", machine_line());
            let pp = p.clone();
            let l = drive(n, WINDOW, bound, move |i| {
                let pp = pp.clone();
                async move {
                    pp.send(Message::new(
                        T_ENQ,
                        Bytes::from(body(&format!("p:{i}:"), SIZE)),
                    ))
                    .await
                    .map(drop)
                }
            })
            .await;
            plain.push(report("plain", &l)?);
            let due = now_ms() + 600_000;
            let pp = p.clone();
            let l = drive(n, WINDOW, bound, move |i| {
                let pp = pp.clone();
                async move {
                    let m = Message::new(T_ENQ, Bytes::from(body(&format!("t:{i}:"), SIZE)))
                        .with_deliver_at(at(due + i as u64 % 1000));
                    pp.send(m).await.map(drop)
                }
            })
            .await;
            timer.push(report("delayed", &l)?);
            if let Some(r) = redis {
                let l = redis_zadd(&r.addr, n, due).await?;
                zadd.push(report("redis zadd", &l)?);
            }
            println!(
                "  plain {:.0}/s, delayed {:.0}/s{}",
                plain[run],
                timer[run],
                zadd.get(run)
                    .map(|r| format!(", redis ZADD {r:.0}/s"))
                    .unwrap_or_default()
            );
        }
        anyhow::Ok(())
    })?;
    drop(s);
    let mut rows = vec![Row {
        name: format!(
            "delayed send (TIMER_DELIVER_MS +10 min), {SIZE} B, {WINDOW} in flight ({n} msgs)"
        ),
        unit: "msg/s",
        subject: timer.clone(),
        baseline: plain,
        baseline_name: "Sluice plain send, same run",
        goal: ">= 0.5x",
    }];
    if !zadd.is_empty() {
        rows.push(Row {
            name: format!(
                "delayed send vs Redis ZADD, {SIZE} B members, {WINDOW} connections ({n})"
            ),
            unit: "msg/s",
            subject: timer.clone(),
            baseline: zadd,
            baseline_name: "Redis ZADD (no persistence)",
            goal: "peer (higher is better)",
        });
    }
    print_table(&rows);
    println!();
    Ok(median(&timer))
}

/// ZADD from `WINDOW` connections, one command in flight each.
async fn redis_zadd(addr: &str, n: usize, due: u64) -> Result<Load> {
    let mut conns = Vec::new();
    for _ in 0..WINDOW {
        conns.push(Arc::new(tokio::sync::Mutex::new(
            Conn::connect(addr).await?,
        )));
    }
    let conns = Arc::new(conns);
    Ok(drive(n, WINDOW, Duration::from_secs(120), move |i| {
        let conns = conns.clone();
        async move {
            let c = &conns[i % WINDOW];
            let mut c = c.lock().await;
            let score = (due + i as u64 % 1000).to_string();
            let member = body(&format!("enq:{i}:"), SIZE);
            c.cmd(&[b"ZADD", ZKEY, score.as_bytes(), &member])
                .await
                .map(drop)
        }
    })
    .await)
}

/// Redis fill: `n` members scored `score(i)`, pipelined 1 000 per round trip.
async fn redis_fill(
    c: &mut Conn,
    n: usize,
    size: usize,
    member: impl Fn(usize) -> String,
    score: impl Fn(usize) -> u64,
) -> Result<()> {
    let mut i = 0;
    while i < n {
        let end = (i + 1000).min(n);
        for j in i..end {
            let s = score(j).to_string();
            let m = body(&member(j), size);
            c.push(&[b"ZADD", ZKEY, s.as_bytes(), &m]);
        }
        c.flush(end - i).await?;
        i = end;
    }
    Ok(())
}

/// The Redis poller: takes due members until `want` of run `run` and `kind` arrived or the
/// deadline passed. Returns (due, receive) pairs.
async fn redis_poll(
    addr: &str,
    kind: &str,
    run: usize,
    want: usize,
    deadline: Instant,
) -> Result<Vec<(u64, u64)>> {
    let mut c = Conn::connect(addr).await?;
    let mut got = Vec::with_capacity(want);
    while got.len() < want && Instant::now() < deadline {
        let now = now_ms().to_string();
        let r = c
            .cmd(&[
                b"ZRANGEBYSCORE",
                ZKEY,
                b"-inf",
                now.as_bytes(),
                b"LIMIT",
                b"0",
                b"1000",
            ])
            .await?;
        let recv = now_ms();
        let Reply::Array(items) = r else { continue };
        if items.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let mut args: Vec<&[u8]> = vec![b"ZREM", ZKEY];
        for it in &items {
            if let Reply::Value(m) = it {
                args.push(m);
                if let Some((k, r, due)) = parse(m) {
                    if k == kind && r == run {
                        got.push((due, recv));
                    }
                }
            }
        }
        c.cmd(&args).await?;
    }
    Ok(got)
}

/// `kind:run:i:due:` at the start of a body or member.
fn parse(b: &[u8]) -> Option<(&str, usize, u64)> {
    let s = std::str::from_utf8(&b[..b.len().min(64)]).ok()?;
    let mut it = s.split(':');
    let kind = it.next()?;
    let run = it.next()?.parse().ok()?;
    let _i = it.next()?;
    let due = it.next()?.parse().ok()?;
    Some((kind, run, due))
}

async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Got>,
    kind: &str,
    run: usize,
    want: usize,
    deadline: Instant,
) -> Vec<(u64, u64)> {
    collect_stored(rx, kind, run, want, deadline)
        .await
        .into_iter()
        .map(|(due, recv, _)| (due, recv))
        .collect()
}

/// As [`collect`], with each release's store time: (due, received, stored).
async fn collect_stored(
    rx: &mut mpsc::UnboundedReceiver<Got>,
    kind: &str,
    run: usize,
    want: usize,
    deadline: Instant,
) -> Vec<(u64, u64, u64)> {
    let mut got = Vec::with_capacity(want);
    while got.len() < want {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some((k, r, due, recv, stored))) if k == kind && r == run => {
                got.push((due, recv, stored))
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    got
}

async fn consumer(namesrv: &str, tx: mpsc::UnboundedSender<Got>) -> Result<PushConsumer> {
    push_consumer(namesrv, "bench-timers", T_LATE, 1, move |m| {
        let recv = now_ms();
        let stored = u64::try_from(m.store_timestamp()).unwrap_or(0);
        if let Some((k, r, due)) = parse(m.body()) {
            let _ = tx.send((k.to_owned(), r, due, recv, stored));
        }
    })
    .await
}

/// Lateness quantiles in ms: (p50, p99, max, min).
fn quantiles(got: &[(u64, u64)]) -> (f64, f64, f64, f64) {
    let mut l: Vec<f64> = got.iter().map(|&(d, r)| r as f64 - d as f64).collect();
    l.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| l[((p * l.len() as f64).ceil() as usize).clamp(1, l.len()) - 1];
    (q(0.50), q(0.99), l[l.len() - 1], l[0])
}

struct Lateness {
    p50: Vec<f64>,
    p99: Vec<f64>,
    max: Vec<f64>,
    min: Vec<f64>,
    lost: usize,
}

impl Lateness {
    fn new() -> Self {
        Self {
            p50: Vec::new(),
            p99: Vec::new(),
            max: Vec::new(),
            min: Vec::new(),
            lost: 0,
        }
    }
    fn push(&mut self, got: &[(u64, u64)], want: usize) {
        self.lost += want - got.len();
        if got.is_empty() {
            return;
        }
        let (a, b, c, d) = quantiles(got);
        self.p50.push(a);
        self.p99.push(b);
        self.max.push(c);
        self.min.push(d);
    }
}

/// What one Sluice burst showed.
struct Burst {
    /// Timers received per second, from the due second to the last receive (end to end).
    received: f64,
    /// Timers released per second, from the due second to the last release's store time
    /// (appended to the real topic, durable): the release engine without the consumer hop.
    released: f64,
    /// Milliseconds from the due second to the first receive.
    first: f64,
    /// The enqueue finished before the due second.
    in_time: bool,
    /// Plain sends per second while the burst was released, and just before it (same
    /// producer, same size and concurrency): how much the release takes from normal traffic.
    plain_during: f64,
    plain_before: f64,
}

/// Burst: T timers due at one whole second.
async fn sluice_burst(
    p: &Arc<Producer>,
    rx: &mut mpsc::UnboundedReceiver<Got>,
    run: usize,
    t: usize,
    est_rate: f64,
) -> Result<Burst> {
    let plain_n = (t / 10).max(1_000);
    let plain_before = plain_load(p, plain_n).await?;
    let lead = 2_000 + (t as f64 / (est_rate * 0.5).max(2_000.0) * 1000.0) as u64;
    let due = (now_ms() + lead).div_ceil(1000) * 1000;
    // Plain sends that start at the due second, while the burst is being released.
    let pd = p.clone();
    let during = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(due.saturating_sub(now_ms()))).await;
        plain_load(&pd, plain_n).await
    });
    let pp = p.clone();
    let l = drive(t, WINDOW * 2, Duration::from_secs(120), move |i| {
        let pp = pp.clone();
        async move {
            let m = Message::new(
                T_LATE,
                Bytes::from(body(&format!("burst:{run}:{i}:{due}:"), BG_SIZE)),
            )
            .with_deliver_at(at(due));
            pp.send(m).await.map(drop)
        }
    })
    .await;
    report("burst enqueue", &l)?;
    let in_time = now_ms() < due;
    let got = collect_stored(
        rx,
        "burst",
        run,
        l.ok,
        Instant::now() + Duration::from_millis(due.saturating_sub(now_ms()) + 60_000),
    )
    .await;
    let received: Vec<(u64, u64)> = got.iter().map(|&(d, r, _)| (d, r)).collect();
    let stored: Vec<(u64, u64)> = got.iter().map(|&(d, _, s)| (d, s)).collect();
    let (received, first, in_time) = burst_rate(&received, due, l.ok, in_time)?;
    let (released, _, _) = burst_rate(&stored, due, l.ok, in_time)?;
    let plain_during = during.await??;
    Ok(Burst {
        received,
        released,
        first,
        in_time,
        plain_during,
        plain_before,
    })
}

/// `n` plain 1 KiB sends to the enqueue topic, `WINDOW` in flight; their rate.
async fn plain_load(p: &Arc<Producer>, n: usize) -> Result<f64> {
    let pp = p.clone();
    let l = drive(n, WINDOW, Duration::from_secs(60), move |i| {
        let pp = pp.clone();
        async move {
            let m = Message::new(T_ENQ, Bytes::from(body(&format!("plain:{i}:"), SIZE)));
            pp.send(m).await.map(drop)
        }
    })
    .await;
    report("plain during burst", &l)
}

fn burst_rate(
    got: &[(u64, u64)],
    due: u64,
    sent: usize,
    in_time: bool,
) -> Result<(f64, f64, bool)> {
    anyhow::ensure!(!got.is_empty(), "no burst timer was delivered");
    if got.len() < sent {
        eprintln!("  burst: only {} of {sent} delivered in time", got.len());
    }
    let last = got.iter().map(|g| g.1).max().unwrap_or(due);
    let first = got.iter().map(|g| g.1).min().unwrap_or(due);
    let secs = (last.saturating_sub(due)).max(1) as f64 / 1000.0;
    Ok((got.len() as f64 / secs, first as f64 - due as f64, in_time))
}

async fn redis_burst(addr: &str, run: usize, t: usize) -> Result<(f64, f64, bool)> {
    let mut c = Conn::connect(addr).await?;
    let due = (now_ms() + 1_500).div_ceil(1000) * 1000;
    redis_fill(
        &mut c,
        t,
        BG_SIZE,
        |i| format!("burst:{run}:{i}:{due}:"),
        |_| due,
    )
    .await?;
    let in_time = now_ms() < due;
    let deadline = Instant::now() + Duration::from_millis(due.saturating_sub(now_ms()) + 60_000);
    let got = redis_poll(addr, "burst", run, t, deadline).await?;
    burst_rate(&got, due, t, in_time)
}

/// (b), (c) with the default release rate, (d).
fn main_phase(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    sluice: &Path,
    z: &Sizes,
    redis: Option<&Redis>,
    est_rate: f64,
) -> Result<()> {
    let s = Sluice::start(sluice, &dir.join("timers-main"), &[])?;
    std::thread::sleep(Duration::from_secs(1));
    let rss_empty = s.rss_mib();
    let anon_empty = s.rss_anon_mib();
    let (mut sl, mut rl) = (Lateness::new(), Lateness::new());
    let (mut sb, mut rb) = (Vec::new(), Vec::new());
    let mut sb_released = Vec::new();
    let mut plain_share = Vec::new();
    let mut rss = Vec::new();
    let mut anon = Vec::new();
    let mut redis_rss = Vec::new();
    let mut pending = 0;
    let mut late_enqueue = 0;
    rt.block_on(async {
        let p = producer(&s.namesrv, "bench-timers", &[T_BG, T_LATE]).await?;
        // P far-future timers (6 h ahead, spread over an hour), bounded in time.
        println!("filling {} pending timers: {}", z.pending, machine_line());
        let far = now_ms() + 6 * 3_600_000;
        let pp = p.clone();
        let fill = drive(z.pending, WINDOW * 2, z.fill_bound, move |i| {
            let pp = pp.clone();
            async move {
                let m = Message::new(T_BG, Bytes::from(body(&format!("bg:0:{i}:"), BG_SIZE)))
                    .with_deliver_at(at(far + (i as u64 * 7919) % 3_600_000));
                pp.send(m).await.map(drop)
            }
        })
        .await;
        pending = fill.ok;
        println!(
            "  Sluice: {} pending timers stored in {:.1} s ({:.0}/s){}; RSS {:.0} MiB (empty {:.0} MiB)",
            fill.ok,
            fill.secs,
            fill.rate(),
            if fill.timed_out { " -- TIME BOUND HIT" } else { "" },
            s.rss_mib(),
            rss_empty
        );
        if let Some(r) = redis {
            let t0 = Instant::now();
            let mut c = Conn::connect(&r.addr).await?;
            redis_fill(&mut c, pending, BG_SIZE, |i| format!("bg:0:{i}:"), |i| far + (i as u64 * 7919) % 3_600_000).await?;
            println!(
                "  Redis: {pending} pending members in {:.1} s; RSS {:.0} MiB",
                t0.elapsed().as_secs_f64(),
                r.rss_mib()
            );
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let cons = consumer(&s.namesrv, tx).await?;
        let n = z.late_n;
        let step = z.late_span_ms / n as u64;
        for run in 0..z.lat_runs {
            println!("lateness run {run}: {}", machine_line());
            let base = now_ms() + 2_000;
            let pp = p.clone();
            let l = drive(n, WINDOW, Duration::from_secs(60), move |i| {
                let pp = pp.clone();
                let due = base + i as u64 * step;
                async move {
                    let m = Message::new(T_LATE, Bytes::from(body(&format!("late:{run}:{i}:{due}:"), SIZE)))
                        .with_deliver_at(at(due));
                    pp.send(m).await.map(drop)
                }
            })
            .await;
            report("lateness enqueue", &l)?;
            if now_ms() > base {
                late_enqueue += 1;
            }
            let deadline = Instant::now() + Duration::from_millis(z.late_span_ms + 2_000 + 15_000);
            let got = collect(&mut rx, "late", run, l.ok, deadline).await;
            sl.push(&got, l.ok);
            if !got.is_empty() {
                let (a, b, c, d) = quantiles(&got);
                println!("  Sluice: {} delivered, lateness p50 {a:.1} ms, p99 {b:.1} ms, max {c:.1} ms, min {d:.1} ms", got.len());
            }
            rss.push(s.rss_mib());
            anon.push(s.rss_anon_mib());
            if let Some(r) = redis {
                let mut c = Conn::connect(&r.addr).await?;
                let base = now_ms() + 2_000;
                let poller = {
                    let addr = r.addr.clone();
                    let deadline = Instant::now() + Duration::from_millis(z.late_span_ms + 2_000 + 15_000);
                    tokio::spawn(async move { redis_poll(&addr, "late", run, n, deadline).await })
                };
                redis_fill(&mut c, n, SIZE, |i| format!("late:{run}:{i}:{}:", base + i as u64 * step), |i| base + i as u64 * step).await?;
                let got = poller.await??;
                rl.push(&got, n);
                if !got.is_empty() {
                    let (a, b, c, d) = quantiles(&got);
                    println!("  Redis:  {} delivered, lateness p50 {a:.1} ms, p99 {b:.1} ms, max {c:.1} ms, min {d:.1} ms", got.len());
                }
                redis_rss.push(r.rss_mib());
            }
        }
        for run in 0..z.runs {
            println!("burst run {run}: {}", machine_line());
            let b = sluice_burst(&p, &mut rx, run, z.burst_n, est_rate).await?;
            println!("  Sluice: {} timers released at {:.0}/s, received at {:.0}/s (first {:.0} ms after due){}; plain sends {:.0}/s during, {:.0}/s before", z.burst_n, b.released, b.received, b.first, if b.in_time { "" } else { " -- enqueue finished after the due time" }, b.plain_during, b.plain_before);
            sb.push(b.received);
            sb_released.push(b.released);
            plain_share.push(b.plain_during / b.plain_before);
            if let Some(r) = redis {
                let (rate, first, ok) = redis_burst(&r.addr, run, z.burst_n).await?;
                println!("  Redis:  {} members taken at {rate:.0}/s (first {first:.0} ms after due){}", z.burst_n, if ok { "" } else { " -- enqueue finished after the due time" });
                rb.push(rate);
            }
        }
        cons.shutdown().await;
        anyhow::Ok(())
    })?;
    let rss_pending = median(&rss);
    let anon_pending = median(&anon);
    drop(s);

    println!(
        "\nlateness (receive - due), {} timers of {SIZE} B spread over {} ms per run, {pending} far-future timers pending{}:",
        z.late_n,
        z.late_span_ms,
        if pending < z.pending { " (time bound hit: fewer than asked)" } else { "" }
    );
    println!("| system | runs | p50 (median of runs) | p99 (median of runs) | max (median of runs) | max (worst run) | min | lost | goal |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let line = |name: &str, l: &Lateness, goal: &str| {
        let worst = l.max.iter().copied().fold(f64::NAN, f64::max);
        let min = l.min.iter().copied().fold(f64::NAN, f64::min);
        println!(
            "| {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} | {goal} |",
            l.p50.len(),
            median(&l.p50),
            median(&l.p99),
            median(&l.max),
            worst,
            min,
            l.lost
        );
    };
    line("Sluice (push consumer)", &sl, "p99 <= 20 ms");
    if redis.is_some() {
        line("Redis ZSET + 1 ms poller", &rl, "peer");
        println!(
            "\nratio of p99 medians Sluice / Redis: {:.2}x; p50: {:.2}x",
            median(&sl.p99) / median(&rl.p99),
            median(&sl.p50) / median(&rl.p50)
        );
    }
    if late_enqueue > 0 {
        println!("note: in {late_enqueue} run(s) the enqueue finished after the first due time");
    }
    println!(
        "\nburst release, {} timers of {BG_SIZE} B due in the same second, default release_rate, {pending} pending:",
        z.burst_n
    );
    println!("| system | runs | rate (median) | runs | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| Sluice released (appended to the topic), default release_rate 50 000/s | {} | {}/s | {:?} | >= 200k/s |",
        sb_released.len(),
        fmt(median(&sb_released)),
        sb_released.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    println!(
        "| Sluice received by the push consumer, same runs | {} | {}/s | {:?} | |",
        sb.len(),
        fmt(median(&sb)),
        sb.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    print_share(&plain_share);
    if !rb.is_empty() {
        println!(
            "| Redis ZSET + poller | {} | {}/s | {:?} | peer |",
            rb.len(),
            fmt(median(&rb)),
            rb.iter().map(|v| v.round()).collect::<Vec<_>>()
        );
    }
    println!("\nmemory:");
    println!("| measure | value |");
    println!("|---|---|");
    println!("| Sluice RSS, empty | {rss_empty:.0} MiB |");
    println!(
        "| Sluice RSS, {pending} pending (median of {} samples) | {rss_pending:.0} MiB |",
        rss.len()
    );
    println!("| Sluice RssAnon (not file-backed), empty | {anon_empty:.0} MiB |");
    println!(
        "| Sluice RssAnon, {pending} pending (median of {} samples) | {anon_pending:.0} MiB |",
        anon.len()
    );
    if pending > 0 {
        println!(
            "| Sluice RssAnon per 1 M pending (linear, not measured at 10 M) | {:.0} MiB |",
            (anon_pending - anon_empty) / pending as f64 * 1e6
        );
    }
    if !redis_rss.is_empty() {
        println!(
            "| redis-server RSS, {pending} pending members of {BG_SIZE} B | {:.0} MiB |",
            median(&redis_rss)
        );
    }
    Ok(())
}

/// (c) again in a fresh process with `release_rate` raised, no pending timers.
fn ceiling_phase(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    sluice: &Path,
    z: &Sizes,
    est_rate: f64,
) -> Result<()> {
    let env = [("SLUICE_SCHEDULE_RELEASE_RATE", "10000000".to_string())];
    let s = Sluice::start(sluice, &dir.join("timers-ceiling"), &env)?;
    let mut sb = Vec::new();
    let mut sb_released = Vec::new();
    let mut plain_share = Vec::new();
    rt.block_on(async {
        let p = producer(&s.namesrv, "bench-timers", &[T_LATE]).await?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let cons = consumer(&s.namesrv, tx).await?;
        for run in 0..z.runs {
            println!("burst (release_rate 10M) run {run}: {}", machine_line());
            let b = sluice_burst(&p, &mut rx, run, z.burst_n, est_rate).await?;
            println!(
                "  Sluice: {} timers released at {:.0}/s, received at {:.0}/s (first {:.0} ms after due){}; plain sends {:.0}/s during, {:.0}/s before",
                z.burst_n,
                b.released,
                b.received,
                b.first,
                if b.in_time {
                    ""
                } else {
                    " -- enqueue finished after the due time"
                },
                b.plain_during,
                b.plain_before
            );
            sb.push(b.received);
            sb_released.push(b.released);
            plain_share.push(b.plain_during / b.plain_before);
        }
        cons.shutdown().await;
        anyhow::Ok(())
    })?;
    drop(s);
    println!("\nburst release ceiling:");
    println!("| system | runs | rate (median) | runs | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| Sluice released (appended to the topic), release_rate 10 000 000/s, nothing else pending | {} | {}/s | {:?} | >= 200k/s |",
        sb_released.len(),
        fmt(median(&sb_released)),
        sb_released.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    println!(
        "| Sluice received by the push consumer, same runs | {} | {}/s | {:?} | |",
        sb.len(),
        fmt(median(&sb)),
        sb.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    print_share(&plain_share);
    Ok(())
}

/// The row for plain sends during a burst, as a share of their rate just before it.
fn print_share(share: &[f64]) {
    println!(
        "| plain sends during the burst / just before it, same runs | {} | {:.2}x | {:?} | no starvation |",
        share.len(),
        median(share),
        share.iter().map(|v| (v * 100.0).round() / 100.0).collect::<Vec<_>>()
    );
}
