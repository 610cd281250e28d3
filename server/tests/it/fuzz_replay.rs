//! Issue #11's time-bounded fuzzing run in the normal suite. Every fuzz target's oracles
//! (`fuzz/src/targets/`, the same code `scripts/fuzz` runs under libFuzzer) are run over:
//! - every checked-in seed of `fuzz/corpus/<target>/` and every crash reproducer in
//!   `fuzz/artifacts/<target>/`;
//! - then mutations of those seeds (bit flips, byte changes, insertions, deletions,
//!   duplications, truncations, splices) from a fixed-seed generator, bounded by count and by
//!   time per target.
//!
//! This is not coverage-guided (libFuzzer by hand is: `scripts/fuzz [secs]`); it makes every
//! CI run exercise the oracles on thousands of hostile inputs. A violated oracle fails with
//! the input saved under `target/fuzz-replay-failures/` to feed to the real target.
//! `SLUICE_FUZZ_REPLAY_SECS` lengthens the run (default 3 s per target).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[allow(dead_code, missing_docs)]
#[path = "../../../fuzz/src/lib.rs"]
mod sluice_fuzz;

use sluice_fuzz::targets;

/// Mutations per target at most (the time bound usually ends it first).
const MAX_MUTATIONS: usize = 20_000;
/// Largest mutated input.
const MAX_LEN: usize = 64 * 1024;

type Run = fn(&[u8]);

#[test]
fn batch_body_oracles_hold_on_seeds_and_mutations() {
    replay("batch_body", targets::batch_body::run);
}

#[test]
fn http_body_parsers_hold_on_seeds_and_mutations() {
    replay("http_bodies", targets::http_bodies::run);
}

#[test]
fn properties_oracles_hold_on_seeds_and_mutations() {
    replay("properties", targets::properties::run);
}

#[test]
fn remoting_frame_oracles_hold_on_seeds_and_mutations() {
    replay("remoting_frame", targets::remoting_frame::run);
}

#[test]
fn segment_scan_oracles_hold_on_seeds_and_mutations() {
    replay("segment_scan", targets::segment_scan::run);
}

#[test]
fn store_recovery_oracles_hold_on_seeds_and_mutations() {
    replay("store_recovery", targets::store_recovery::run);
}

#[test]
fn stored_record_oracles_hold_on_seeds_and_mutations() {
    replay("stored_record", targets::stored_record::run);
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files_in(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

fn budget() -> Duration {
    let secs = std::env::var("SLUICE_FUZZ_REPLAY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    Duration::from_secs(secs)
}

fn replay(target: &str, run: Run) {
    let seeds = files_in(&fuzz_dir().join("corpus").join(target));
    assert!(
        !seeds.is_empty(),
        "fuzz/corpus/{target} has no seeds (regenerate with fuzz/examples/make_seeds.rs)"
    );
    for input in seeds
        .iter()
        .chain(&files_in(&fuzz_dir().join("artifacts").join(target)))
    {
        check(target, run, input);
    }
    let mut rng = XorShift(fnv(target.as_bytes()));
    let deadline = Instant::now() + budget();
    let mut runs = 0;
    while runs < MAX_MUTATIONS && Instant::now() < deadline {
        let base = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, base, other);
        check(target, run, &input);
        runs += 1;
    }
    eprintln!("{target}: {} seeds, {runs} mutations", seeds.len());
    assert!(runs > 0, "{target}: no mutation ran within the budget");
}

/// Runs one input; on a violated oracle, saves it and fails naming the file.
fn check(target: &str, run: Run, input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| run(input))).is_ok() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-replay-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{target}-{:016x}", fnv(input)));
    std::fs::write(&path, input).unwrap();
    panic!(
        "{target}: an oracle failed on {} bytes, saved as {} \
         (reproduce: cargo fuzz run --fuzz-dir fuzz {target} {})",
        input.len(),
        path.display(),
        path.display()
    );
}

fn mutate(rng: &mut XorShift, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..=rng.below(4) {
        let len = v.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = *[0u8, 0xff, 0x7f, 0x80, 1, b'"', b'{']
                    .get(rng.below(7))
                    .unwrap();
            }
            2 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(32)).min(len);
                v.drain(at..end);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(64)).min(len);
                let copy = v[at..end].to_vec();
                let to = rng.below(len + 1);
                v.splice(to..to, copy);
            }
            5 => v.truncate(rng.below(len + 1)),
            _ if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    v.truncate(MAX_LEN);
    v
}

/// A fixed-seed generator: the same mutations on every run, so a failure reproduces.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
