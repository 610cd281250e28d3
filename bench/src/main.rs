//! # sluice-bench
//!
//! Benchmarks whose every figure is a ratio against a baseline (or, later, a peer) measured in
//! the same run, interleaved A/B, reporting medians and the ratio of medians.
//!
//! ## Layout
//! - `stats`: medians, ratios, the markdown table.
//! - `store`: storage-engine scenarios (append rate against a raw mmap loop, SYNC_FLUSH against
//!   a raw `pwrite`+`fdatasync` loop, recovery seconds per GiB).
//! - `footprint`: cold start and idle RSS of the `sluice` binary.
//! - `produce`: durable (SYNC_FLUSH) produce against Redis streams with `appendfsync always`.
//! - `maxrate`: async-durability max-rate produce against NATS JetStream (file store).
//! - `txn`: transactional send against plain send, and plain send while many half messages
//!   are open and checked (real `sluice` binary, `sluice-client`).
//! - `timers`: delayed sends against plain sends and a Redis sorted-set delay queue: enqueue
//!   rate, lateness with many pending, burst release, memory; `--burst N` runs only the
//!   unpaced burst of N timers (by hand, e.g. the 1 M in one second of issue #6).
//! - `timers_rss`: VmRSS / RssAnon while 10 M far-future timers fill, and the restart over them.
//! - `e2e`: fixed-rate end-to-end latency (OMB `1-topic-16-partitions-1kb` at 20 000 msg/s)
//!   with HDR histograms, against NATS JetStream.
//! - `drain`: backlog drain (OMB `backlog-1-topic-16-partitions-1kb`, scaled) against NATS
//!   JetStream.
//! - `http`: the HTTP facade's produce against an axum null handler in the same process, and
//!   receive + ack.
//! - `proc`, `redis_peer`, `nats_peer`, `rabbit_peer`: the `sluice` child process, the load
//!   driver, the Redis, NATS and RabbitMQ peers.
//!
//! Usage: `cargo run --release -p sluice-bench -- store|footprint|produce|maxrate|e2e|drain|txn|timers|timers-rss|http [--quick] [--pending N] [--burst N] [--dir DIR]
//! [--sluice target/release/sluice]`.

mod drain;
mod e2e;
mod footprint;
mod http;
mod maxrate;
mod nats_peer;
mod proc;
mod produce;
mod rabbit_peer;
mod redis_peer;
mod stats;
mod store;
mod timers;
mod timers_rss;
mod txn;

use std::path::PathBuf;

/// mimalloc, as the `sluice` binary uses: the in-process broker (store, http) and every
/// client measure with the allocator the server ships with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let dir = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench-tmp"));
    std::fs::create_dir_all(&dir)?;
    let work = tempfile::tempdir_in(&dir)?;
    println!("{}", stats::machine_line());
    let sluice = args
        .iter()
        .position(|a| a == "--sluice")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/sluice"));
    match args.first().map(String::as_str) {
        Some("store") => store::run(work.path(), quick),
        Some("footprint") => footprint::run(work.path(), quick, &sluice),
        Some("txn") => txn::run(work.path(), quick, &sluice),
        Some("produce") => produce::run(work.path(), quick, &sluice),
        Some("maxrate") => maxrate::run(work.path(), quick, &sluice),
        Some("timers") => match number_after(&args, "--burst") {
            Some(n) => timers::run_burst(work.path(), &sluice, n),
            None => timers::run(work.path(), quick, &sluice),
        },
        Some("http") => http::run(work.path(), quick),
        Some("e2e") => e2e::run(work.path(), quick, &sluice),
        Some("drain") => drain::run(work.path(), quick, &sluice),
        Some("timers-rss") => {
            let pending = number_after(&args, "--pending").unwrap_or(10_000_000);
            timers_rss::run(work.path(), &sluice, pending)
        }
        _ => {
            eprintln!("usage: sluice-bench store|footprint|produce|maxrate|e2e|drain|txn|timers|timers-rss|http [--quick] [--pending N] [--burst N] [--dir DIR] [--sluice PATH]");
            std::process::exit(2);
        }
    }
}

/// The number after `flag`, if given.
fn number_after(args: &[String], flag: &str) -> Option<usize> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}
