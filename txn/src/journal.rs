//! The check journal, `<state dir>/checks.journal`: what keeps "at most `check_max` checks per
//! arming, even across a crash" cheap.
//!
//! Before a round of checks leaves, each counted check is appended here and the file is synced
//! once for the round. The checkpoint (which lists every undecided transaction and, with
//! 100 000 of them, is megabytes of JSON) is then written only on its own schedule; once it is
//! durable it holds every count the journal held, so the journal is emptied.
//!
//! Record, 32 bytes, big-endian: half queue offset `u64`, armed epoch ms `i64`, check count
//! `u32`, check time epoch ms `i64`, CRC32 of the first 28 bytes `u32`. A record that fails its
//! CRC (torn by a crash while its round was written: those checks were never sent) is skipped
//! and counted; records are fixed-size, so the ones after it still read. A torn partial record
//! at the end is cut when the journal is loaded, before anything is appended after it.
//!
//! Replaying a record can only raise a count (the higher of the saved and the journalled count
//! wins), so a stale journal — left behind when a crash fell between a checkpoint and the
//! emptying — over-counts at worst, which the guarantee allows.

use std::fs::OpenOptions;
use std::path::Path;

use crate::error::TxnError;

/// File name under the state folder.
pub(crate) const FILE: &str = "checks.journal";
/// Bytes per record.
const RECORD_LEN: usize = 32;
/// Most records read back at a restart (32 MiB): a journal is emptied at every checkpoint, so
/// a longer one is damage, not history.
#[cfg(not(test))]
const MAX_RECORDS: usize = 1 << 20;
/// Small in unit tests, so the bound is exercised.
#[cfg(test)]
const MAX_RECORDS: usize = 4;

/// One counted check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counted {
    /// The transaction (its half queue offset).
    pub(crate) half_offset: u64,
    /// The arming the check belongs to (`Entry::armed_ms`).
    pub(crate) armed_ms: i64,
    /// The count after this check.
    pub(crate) checks: u32,
    /// When it was counted.
    pub(crate) at_ms: i64,
}

impl Counted {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.half_offset.to_be_bytes());
        out.extend_from_slice(&self.armed_ms.to_be_bytes());
        out.extend_from_slice(&self.checks.to_be_bytes());
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    fn decode(b: &[u8; RECORD_LEN]) -> Option<Self> {
        let crc = u32::from_be_bytes(b[28..32].try_into().ok()?);
        if crc32fast::hash(&b[..28]) != crc {
            return None;
        }
        Some(Self {
            half_offset: u64::from_be_bytes(b[0..8].try_into().ok()?),
            armed_ms: i64::from_be_bytes(b[8..16].try_into().ok()?),
            checks: u32::from_be_bytes(b[16..20].try_into().ok()?),
            at_ms: i64::from_be_bytes(b[20..28].try_into().ok()?),
        })
    }
}

/// Appends `records` and syncs. Blocking: call from a blocking thread.
pub(crate) fn append(dir: &Path, records: &[Counted]) -> Result<(), TxnError> {
    if records.is_empty() {
        return Ok(());
    }
    let path = dir.join(FILE);
    let fail = |what: &str, e: std::io::Error| {
        TxnError::Checkpoint(format!("{what} {}: {e}", path.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| fail("create folder of", e))?;
    let mut buf = Vec::with_capacity(records.len() * RECORD_LEN);
    for r in records {
        r.encode(&mut buf);
    }
    sluice_store::append_synced(&path, &buf).map_err(|e| fail("append to", e))
}

/// Empties the journal after a checkpoint made its records redundant. Blocking. Not synced: a
/// journal that comes back after a crash only repeats counts the checkpoint holds.
pub(crate) fn clear(dir: &Path) -> Result<(), TxnError> {
    let path = dir.join(FILE);
    match OpenOptions::new().write(true).open(&path) {
        Ok(f) => f
            .set_len(0)
            .map_err(|e| TxnError::Checkpoint(format!("truncate {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TxnError::Checkpoint(format!(
            "open {}: {e}",
            path.display()
        ))),
    }
}

/// Reads every intact record; damage is logged and skipped.
pub(crate) fn load(dir: &Path) -> Vec<Counted> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "check journal unreadable; check counts restart from the checkpoint");
            return Vec::new();
        }
    };
    let chunks = bytes.chunks_exact(RECORD_LEN);
    let torn = chunks.remainder().len();
    let mut out = Vec::new();
    let mut damaged = 0usize;
    // Past the bound, the newest records are kept: a count only rises, so the latest ones
    // hold the most; keeping the oldest let checks beyond `check_max` go out after a crash.
    let skip = (bytes.len() / RECORD_LEN).saturating_sub(MAX_RECORDS);
    for chunk in chunks.skip(skip) {
        match <&[u8; RECORD_LEN]>::try_from(chunk)
            .ok()
            .and_then(Counted::decode)
        {
            Some(r) => out.push(r),
            None => damaged += 1,
        }
    }
    if torn > 0 {
        // The next append would start inside the torn record and shift every later one off
        // the record boundaries, where each fails its CRC: cut it first.
        let whole = (bytes.len() - torn) as u64;
        if let Err(e) = sluice_store::truncate_synced(&path, whole) {
            tracing::warn!(path = %path.display(), error = %e, "cannot cut the check journal's torn tail; emptying it");
            let _ = clear(dir);
        }
    }
    if damaged > 0 || torn > 0 || bytes.len() / RECORD_LEN > MAX_RECORDS {
        tracing::warn!(path = %path.display(), damaged, torn_tail_bytes = torn, read = out.len(), "check journal damaged or over its bound; intact records used");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(q: u64, checks: u32) -> Counted {
        Counted {
            half_offset: q,
            armed_ms: 1_700_000_000_000 + q as i64,
            checks,
            at_ms: 1_700_000_001_000,
        }
    }

    #[test]
    fn appended_records_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_empty());
        append(dir.path(), &[rec(1, 1), rec(2, 1)]).unwrap();
        append(dir.path(), &[rec(1, 2)]).unwrap();
        assert_eq!(load(dir.path()), vec![rec(1, 1), rec(2, 1), rec(1, 2)]);
    }

    #[test]
    fn clearing_empties_the_journal_and_tolerates_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        clear(dir.path()).unwrap();
        append(dir.path(), &[rec(7, 3)]).unwrap();
        clear(dir.path()).unwrap();
        assert!(load(dir.path()).is_empty());
        append(dir.path(), &[rec(8, 1)]).unwrap();
        assert_eq!(load(dir.path()), vec![rec(8, 1)]);
    }

    #[test]
    fn a_corrupt_record_and_a_torn_tail_are_skipped_and_the_rest_is_read() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), &[rec(1, 1), rec(2, 1), rec(3, 1)]).unwrap();
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[RECORD_LEN + 5] ^= 0x40; // the second record
        bytes.extend_from_slice(&[0xAB; 13]); // half a record written when the process died
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(load(dir.path()), vec![rec(1, 1), rec(3, 1)]);
    }

    /// A torn tail used to stay in the file, so every record appended after the restart
    /// started off the record boundaries and failed its CRC: those checks were lost.
    #[test]
    fn records_appended_after_a_torn_tail_read_back() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), &[rec(1, 1)]).unwrap();
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0xAB; 13]);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(load(dir.path()), vec![rec(1, 1)]);
        append(dir.path(), &[rec(2, 4)]).unwrap();
        assert_eq!(load(dir.path()), vec![rec(1, 1), rec(2, 4)]);
    }

    /// Past its bound the journal used to keep its oldest records and drop the newest counts.
    #[test]
    fn past_the_bound_the_newest_records_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<Counted> = (1..=6).map(|n| rec(9, n)).collect();
        append(dir.path(), &all).unwrap();
        assert_eq!(load(dir.path()), all[2..].to_vec());
    }
}
