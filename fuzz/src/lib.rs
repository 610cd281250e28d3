//! The fuzz targets' oracles ([`targets`]) and the helpers they share with the seed generator
//! (`examples/make_seeds.rs`), so that the seeds are written with exactly the limits the
//! targets use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_protocol::message::{MAGIC_V1, MAGIC_V2};
use sluice_protocol::RecordView;
use sluice_store::StoreConfig;

pub mod targets;

/// Segment size of the store the recovery target opens: small, so an input covers a segment.
pub const SEGMENT: usize = 16 * 1024;
/// Largest record of that store.
pub const MAX_RECORD: usize = 4096;

/// A store configuration small enough to open hundreds of times a second.
pub fn store_config(dir: &Path) -> StoreConfig {
    let mut cfg = StoreConfig::for_tests(dir);
    cfg.segment_size = SEGMENT as u64;
    cfg.max_record_size = MAX_RECORD;
    cfg.max_write_batch_bytes = 2 * MAX_RECORD;
    cfg.max_unflushed_bytes = SEGMENT as u64;
    cfg.cq_entries_per_file = 64;
    cfg.index_slots = 64;
    cfg.index_entries = 256;
    cfg.checkpoint_interval = Duration::from_secs(5);
    cfg
}

/// Where targets make their temporary folders: `SLUICE_FUZZ_TMP`, else `/dev/shm` (memory,
/// fast, and no disk wear), else the system temp folder.
pub fn scratch_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_FUZZ_TMP") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

/// True when some record-shaped bytes in `seg` carry a topic the store would never have
/// written (`sluice_store::validate_topic` fails: `..`, `/`, too long...).
///
/// The recovery target skips such inputs. The store's dispatcher joins a recovered record's
/// topic onto the consume-queue folder without checking it, so a forged record (libFuzzer can
/// satisfy the CRC comparison) would make the target create folders outside its temporary
/// folder. See the fuzzing report: the fix belongs in the store (`framing::probe` refusing such
/// a record), after which this filter can go.
pub fn has_unsafe_topic(seg: &[u8]) -> bool {
    let mut pos = 0;
    while pos + 8 <= seg.len() {
        let magic = u32::from_be_bytes(seg[pos + 4..pos + 8].try_into().expect("4 bytes"));
        if magic == MAGIC_V1 || magic == MAGIC_V2 {
            if let Ok(view) = RecordView::parse(&seg[pos..], usize::MAX) {
                if sluice_store::validate_topic(view.topic).is_err() {
                    return true;
                }
            }
        }
        pos += 1;
    }
    false
}
