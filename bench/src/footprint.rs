//! Idle footprint of the `sluice` binary (issue: broker): cold start to the ready line on an
//! empty data folder, and resident memory once idle. Absolute goals: < 200 ms, < 50 MB.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::stats::median;

pub fn run(dir: &Path, quick: bool, sluice: &Path) -> Result<()> {
    let runs = if quick { 3 } else { 5 };
    let (mut starts, mut rss) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let data = dir.join(format!("footprint-{run}"));
        let (ms, kb) = one(sluice, &data)?;
        starts.push(ms);
        rss.push(kb / 1024.0);
        std::fs::remove_dir_all(&data).ok();
    }
    println!("| measure | median of {runs} | runs | goal |");
    println!("|---|---|---|---|");
    println!(
        "| cold start to ready, empty data folder | {:.0} ms | {:?} | < 200 ms |",
        median(&starts),
        round(&starts)
    );
    println!(
        "| idle RSS 2 s after ready | {:.1} MB | {:?} | < 50 MB |",
        median(&rss),
        round(&rss)
    );
    Ok(())
}

fn round(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 10.0).round() / 10.0).collect()
}

fn one(sluice: &Path, data: &Path) -> Result<(f64, f64)> {
    let started = Instant::now();
    let mut child = Command::new(sluice)
        .args([
            "serve",
            "--namesrv-listen",
            "127.0.0.1:0",
            "--broker-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {}", sluice.display()))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let ready = lines.next().transpose()?.unwrap_or_default();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !ready.starts_with("sluice ready") {
        let _ = child.kill();
        bail!("sluice did not report ready: {ready:?}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    child.wait()?;
    Ok((ms, kb))
}
