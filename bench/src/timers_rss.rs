//! Memory and restart with many pending timers (issue: delayed messages, "10 M pending with
//! bounded memory, a restart that does not re-read every message"), against the real `sluice`
//! binary: fill N far-future timers (default 10 000 000, 128 B, due 6-7 h ahead) with the Rust
//! client, sampling VmRSS and RssAnon every million; then restart over the same folder and
//! time the start to its ready line, against the cold start on an empty folder in the same run.
//!
//! Usage: `sluice-bench timers-rss [--pending N]`. A 10 M fill writes ~4 GB of commit log and
//! takes minutes; every phase is bounded in time.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use sluice_client::Message;

use crate::proc::{body, drive, now_ms, runtime, Sluice};
use crate::stats::machine_line;
use crate::timers::{at, producer, BG_SIZE, T_BG};

/// Sends in flight during the fill.
const WINDOW: usize = 128;
/// Bound of the whole fill.
const FILL_BOUND: Duration = Duration::from_secs(1_800);
/// Timers per sample.
const STEP: usize = 1_000_000;

pub fn run(dir: &Path, sluice: &Path, pending: usize) -> Result<()> {
    println!(
        "timers-rss: {pending} far-future timers of {BG_SIZE} B; {}",
        machine_line()
    );
    let data = dir.join("timers-rss");
    let cold = Instant::now();
    let s = Sluice::start(sluice, &data, &[])?;
    let cold_ms = cold.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "| pending | VmRSS MiB | RssAnon MiB | fill rate /s |\n|---|---|---|---|\n| 0 | {:.0} | {:.0} | |",
        s.rss_mib(),
        s.rss_anon_mib()
    );
    let rt = runtime()?;
    let far = now_ms() + 6 * 3_600_000;
    let started = Instant::now();
    let mut done = 0;
    rt.block_on(async {
        let p = producer(&s.namesrv, "bench-timers-rss", &[T_BG]).await?;
        while done < pending && started.elapsed() < FILL_BOUND {
            let n = STEP.min(pending - done);
            let base = done;
            let pp = p.clone();
            let left = FILL_BOUND.saturating_sub(started.elapsed());
            let load = drive(n, WINDOW, left, move |i| {
                let pp = pp.clone();
                let k = base + i;
                async move {
                    let m = Message::new(T_BG, Bytes::from(body(&format!("r:{k}:"), BG_SIZE)))
                        .with_deliver_at(at(far + (k as u64 * 7919) % 3_600_000));
                    pp.send(m).await.map(drop)
                }
            })
            .await;
            done += load.ok;
            println!(
                "| {done} | {:.0} | {:.0} | {:.0} |",
                s.rss_mib(),
                s.rss_anon_mib(),
                load.rate()
            );
            if load.timed_out || load.ok == 0 {
                println!("fill stopped: time bound or errors ({load:?})");
                break;
            }
        }
        anyhow::Ok(())
    })?;
    s.stop_keep_data();
    let warm = Instant::now();
    let s = Sluice::start(sluice, &data, &[])?;
    let restart_ms = warm.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "\nrestart with {done} pending: ready in {restart_ms:.0} ms (cold start on an empty folder: \
         {cold_ms:.0} ms); after restart VmRSS {:.0} MiB, RssAnon {:.0} MiB",
        s.rss_mib(),
        s.rss_anon_mib()
    );
    drop(s);
    Ok(())
}
