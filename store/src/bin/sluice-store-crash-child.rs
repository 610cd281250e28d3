//! Crash-test child: appends under SYNC_FLUSH from several threads and prints every
//! acknowledged append, until the parent test kills it with SIGKILL.
//!
//! Usage: `sluice-store-crash-child DATA_DIR FIRST_SEQ`. Prints `READY`, then one line
//! `A seq phys queue_id queue_offset` per acknowledged append. Bounded: it stops by itself
//! after 60 s or 200 000 appends, so a lost parent never leaves it running.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../../tests/it/common/workload.rs"]
mod workload;

use sluice_store::{Store, StoreConfig};

const WRITERS: u64 = 8;
const QUEUES: u64 = 4;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: DATA_DIR FIRST_SEQ");
    let first: u64 = args.next().and_then(|s| s.parse().ok()).expect("FIRST_SEQ");
    let mut cfg = StoreConfig::for_tests(&dir);
    cfg.segment_size = 1 << 20;
    cfg.max_record_size = 64 * 1024;
    cfg.max_write_batch_bytes = 256 * 1024;
    cfg.max_unflushed_bytes = 1 << 20;
    let store = Arc::new(Store::open(cfg).expect("open store"));
    println!("READY");
    let next = Arc::new(AtomicU64::new(first));
    let deadline = Instant::now() + Duration::from_secs(60);
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (store, next) = (Arc::clone(&store), Arc::clone(&next));
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    let seq = next.fetch_add(1, Ordering::SeqCst);
                    if seq >= first + 200_000 {
                        break;
                    }
                    let qid = (seq % QUEUES) as i32;
                    let a = store
                        .append_blocking(&[workload::message("C", qid, seq)])
                        .expect("append")[0];
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "A {seq} {} {qid} {}", a.phys_offset, a.queue_offset);
                    let _ = out.flush();
                }
            })
        })
        .collect();
    for w in writers {
        let _ = w.join();
    }
}
