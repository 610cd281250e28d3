//! Storage-engine benchmarks (issue: storage engine), each against a baseline in the same run:
//!
//! - append rate, 128 B and 1 KiB records, no sync in the path (async flush), against a raw
//!   loop that copies pre-encoded records with a CRC into a fresh mapped file (goal >= 0.7x),
//!   and against the same loop into pages warmed first (the ceiling, reported);
//! - SYNC_FLUSH append rate with 1, 16 and 256 appends in flight, against a raw
//!   `pwrite`+`fdatasync` loop (one sync per record);
//! - SYNC_FLUSH with the commit-log space written ahead (the default) against the same with
//!   warming off, 1 and 16 in flight;
//! - recovery: seconds per GiB for a full scan after an unclean stop with no checkpoint.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use sluice_protocol::message::record::{encode_record, RecordHeader};
use sluice_store::baseline;
use sluice_store::{AppendFuture, FlushMode, MessageInput, Store, StoreConfig};

use crate::stats::{median, print_table, Row};

const SEGMENT: u64 = 1 << 30;

pub fn run(dir: &Path, quick: bool) -> Result<()> {
    let runs = if quick { 2 } else { 3 };
    let mut rows = Vec::new();
    for size in [128usize, 1024] {
        let n = if quick { 100_000 } else { 400_000 };
        rows.extend(append_rate(dir, size, n, 1, runs)?);
        rows.extend(append_rate(dir, size, n, 64, runs)?);
    }
    for (inflight, n) in [(1usize, 1_000usize), (16, 10_000), (256, 60_000)] {
        let n = if quick { n / 4 } else { n };
        rows.push(sync_rate(dir, inflight, n, runs)?);
    }
    for inflight in [1usize, 16] {
        rows.push(warm_rate(
            dir,
            inflight,
            if quick { 1_500 } else { 5_000 } * inflight.min(4),
            runs,
        )?);
    }
    print_table(&rows);
    let (gib, secs) = recovery(dir, if quick { 128 } else { 512 })?;
    println!("\nrecovery (full scan, no checkpoint, unclean stop): {gib:.3} GiB in {secs:.3} s = {:.2} s/GiB", secs / gib);
    Ok(())
}

fn body_for_record(size: usize) -> Bytes {
    // 91 bytes of header + 1-byte topic "B" + empty properties.
    Bytes::from(vec![b'x'; size.saturating_sub(92)])
}

fn store_config(dir: &Path, flush: FlushMode) -> StoreConfig {
    let mut cfg = StoreConfig::new(dir);
    cfg.segment_size = SEGMENT;
    cfg.flush = flush;
    cfg
}

/// Rate of messages appended with `window` requests of `per_request` messages in flight from
/// one submitting thread.
fn store_rate(
    store: &Store,
    msg: &MessageInput,
    n: usize,
    per_request: usize,
    window: usize,
) -> Result<f64> {
    let start = Instant::now();
    let mut pending: VecDeque<AppendFuture> = VecDeque::with_capacity(window);
    let batch = vec![msg.clone(); per_request];
    for _ in 0..n.div_ceil(per_request) {
        if pending.len() >= window {
            pending.pop_front().expect("non-empty").wait()?;
        }
        loop {
            match store.append(batch.clone(), true) {
                Ok(f) => {
                    pending.push_back(f);
                    break;
                }
                Err(sluice_store::StoreError::Busy(_)) => {
                    if let Some(f) = pending.pop_front() {
                        f.wait()?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    for f in pending {
        f.wait()?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// [`store_rate`] in a store opened fresh with `cfg`, removed afterwards.
fn fresh_store_rate(
    cfg: StoreConfig,
    msg: &MessageInput,
    n: usize,
    per_request: usize,
    window: usize,
) -> Result<f64> {
    let sdir = cfg.data_dir.clone();
    let store = Store::open(cfg)?;
    let rate = store_rate(&store, msg, n, per_request, window)?;
    store.shutdown()?;
    drop(store);
    std::fs::remove_dir_all(&sdir)?;
    Ok(rate)
}

/// The store's append rate against two raw loops in the same runs: one into a fresh mapped
/// file (it pays a page fault and a zeroed page per 4 KiB, so it swings with the host) and one
/// into pages warmed before its timing (the ceiling).
fn append_rate(
    dir: &Path,
    size: usize,
    n: usize,
    per_request: usize,
    runs: usize,
) -> Result<[Row; 2]> {
    let msg = MessageInput::new("B", 0, body_for_record(size));
    let records = encoded(size, n);
    let (mut subject, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let path = dir.join(format!("raw-mmap-{run}"));
        let t = baseline::mmap_append(&path, &records, SEGMENT)?;
        cold.push(n as f64 / t.as_secs_f64());
        std::fs::remove_file(&path)?;
        let t = baseline::mmap_append_warm(&path, &records, SEGMENT)?;
        warm.push(n as f64 / t.as_secs_f64());
        std::fs::remove_file(&path)?;
        let cfg = store_config(
            &dir.join(format!("append-{size}-{run}")),
            FlushMode::Async {
                interval: Duration::from_secs(1),
            },
        );
        subject.push(fresh_store_rate(
            cfg,
            &msg,
            n,
            per_request,
            4096 / per_request,
        )?);
    }
    let name = format!("append {size} B, {per_request} msg/request, no sync in path ({n} msgs)");
    Ok([
        Row {
            name: name.clone(),
            unit: "msg/s",
            subject: subject.clone(),
            baseline: cold,
            baseline_name: "raw mmap append + CRC, fresh file",
            goal: ">= 0.7x",
        },
        Row {
            name,
            unit: "msg/s",
            subject,
            baseline: warm,
            baseline_name: "same, pages warmed first (ceiling)",
            goal: "(reported)",
        },
    ])
}

fn sync_rate(dir: &Path, inflight: usize, n: usize, runs: usize) -> Result<Row> {
    let size = 1024;
    let msg = MessageInput::new("B", 0, body_for_record(size));
    let raw_n = 500.min(n);
    let records = encoded(size, raw_n);
    let (mut subject, mut base) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let path = dir.join(format!("raw-sync-{run}"));
        let t = baseline::pwrite_fdatasync(&path, &records, 64 << 20)?;
        base.push(raw_n as f64 / t.as_secs_f64());
        std::fs::remove_file(&path)?;
        let cfg = store_config(&dir.join(format!("sync-{inflight}-{run}")), FlushMode::Sync);
        subject.push(fresh_store_rate(cfg, &msg, n, 1, inflight)?);
    }
    Ok(Row {
        name: format!("SYNC_FLUSH append 1 KiB, {inflight} in flight ({n} msgs)"),
        unit: "msg/s",
        subject,
        baseline: base,
        baseline_name: "raw pwrite+fdatasync, 1 per record",
        goal: "higher is better",
    })
}

/// SYNC_FLUSH appends into space the warmer wrote ahead (the default) against the same with
/// `warm_ahead_bytes = 0` (fallocated space whose extents each sync must convert), runs
/// interleaved.
fn warm_rate(dir: &Path, inflight: usize, n: usize, runs: usize) -> Result<Row> {
    let msg = MessageInput::new("B", 0, body_for_record(1024));
    let (mut subject, mut base) = (Vec::new(), Vec::new());
    for run in 0..runs {
        for (ahead, out) in [(0, &mut base), (64 << 20, &mut subject)] {
            let mut cfg = store_config(&dir.join(format!("warm-{ahead}-{run}")), FlushMode::Sync);
            cfg.warm_ahead_bytes = ahead;
            out.push(fresh_store_rate(cfg, &msg, n, 1, inflight)?);
        }
    }
    Ok(Row {
        name: format!(
            "SYNC_FLUSH append 1 KiB, {inflight} in flight, space written ahead ({n} msgs)"
        ),
        unit: "msg/s",
        subject,
        baseline: base,
        baseline_name: "same, warm_ahead_bytes = 0",
        goal: "higher is better",
    })
}

fn encoded(size: usize, n: usize) -> Vec<Vec<u8>> {
    let body = body_for_record(size);
    let mut rec = Vec::new();
    encode_record(&RecordHeader::default(), &body, "B", b"", &mut rec).expect("encode");
    vec![rec; n]
}

/// Writes `mib` MiB of 1 KiB records, stops uncleanly without a checkpoint, and times the open.
fn recovery(dir: &Path, mib: usize) -> Result<(f64, f64)> {
    let sdir = dir.join("recovery");
    let n = mib * 1024;
    let cfg = store_config(
        &sdir,
        FlushMode::Async {
            interval: Duration::from_secs(1),
        },
    );
    {
        let store = Store::open(cfg.clone())?;
        store_rate(
            &store,
            &MessageInput::new("B", 0, body_for_record(1024)),
            n,
            64,
            64,
        )?;
        store.shutdown()?;
    }
    std::fs::remove_file(sdir.join("checkpoint"))?;
    std::fs::write(sdir.join("abort"), b"")?;
    let mut times = Vec::new();
    let start = Instant::now();
    let store = Store::open(cfg)?;
    times.push(start.elapsed().as_secs_f64());
    let r = store.recovery_report();
    let scanned = r.end - r.scanned_from;
    println!(
        "recovery breakdown: scan {} ms, re-dispatch {} ms",
        r.scan_micros / 1000,
        r.redispatch_micros / 1000
    );
    store.shutdown()?;
    drop(store);
    std::fs::remove_dir_all(&sdir)?;
    Ok((scanned as f64 / f64::from(1u32 << 30), median(&times)))
}
