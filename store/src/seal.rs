//! The data folder's `seal` file: the secret the commit log's trailer and end-marker checksums
//! start from, and the first offset written under it (why: `framing`, "Sealed checksums").
//!
//! Format, 16 bytes, big-endian: `from: u64 | key: u32 | crc32 of the first 12 bytes: u32`,
//! replaced atomically. A folder without one (new, or written by a version before seals) gets
//! one at open, after recovery and before anything is appended, with `from` at the end of the
//! log: older records keep verifying with the plain CRC. The file belongs to the data folder
//! like the commit log itself: records written after `from` do not verify without it (a copy
//! of the folder must include it). One that is there but unreadable stops the open.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::checkpoint::write_atomic;
use crate::error::{Result, StoreError};
use crate::framing::Seal;

const LEN: usize = 16;

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("seal")
}

/// The folder's seal, `None` when it has none yet.
pub(crate) fn load(data_dir: &Path) -> Result<Option<Seal>> {
    let p = path(data_dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("read", &p, e)),
    };
    decode(&bytes).map(Some).ok_or_else(|| {
        StoreError::Recovery(format!(
            "{} is damaged: the commit log's checksums since it was made cannot be verified \
             without it (restore it from the folder's backup)",
            p.display()
        ))
    })
}

/// Makes (durably) a seal with a fresh secret for offsets from `from` on.
pub(crate) fn create(data_dir: &Path, from: u64) -> Result<Seal> {
    let seal = Seal::new(fresh_key()?, from);
    write_atomic(&path(data_dir), &encode(seal))?;
    tracing::info!(from, "commit-log seal created");
    Ok(seal)
}

fn encode(seal: Seal) -> [u8; LEN] {
    let mut out = [0u8; LEN];
    out[..8].copy_from_slice(&seal.from().to_be_bytes());
    out[8..12].copy_from_slice(&seal.key().to_be_bytes());
    let crc = crc32fast::hash(&out[..12]);
    out[12..].copy_from_slice(&crc.to_be_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<Seal> {
    let bytes: &[u8; LEN] = bytes.try_into().ok()?;
    let crc = u32::from_be_bytes(bytes[12..].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..12]) != crc {
        return None;
    }
    let from = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    let key = u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
    (key != 0).then(|| Seal::new(key, from))
}

/// A random, non-zero key (zero would be the plain CRC).
fn fresh_key() -> Result<u32> {
    let p = Path::new("/dev/urandom");
    let mut f = std::fs::File::open(p).map_err(|e| StoreError::io("open", p, e))?;
    loop {
        let mut b = [0u8; 4];
        f.read_exact(&mut b)
            .map_err(|e| StoreError::io("read", p, e))?;
        let key = u32::from_be_bytes(b);
        if key != 0 {
            return Ok(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_is_made_once_reads_back_and_a_damaged_file_stops_the_open() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let seal = create(dir.path(), 4096).unwrap();
        assert_eq!(seal.from(), 4096);
        assert_ne!(seal.key(), 0);
        assert_eq!(load(dir.path()).unwrap(), Some(seal));
        let mut bytes = std::fs::read(path(dir.path())).unwrap();
        bytes[9] ^= 1;
        std::fs::write(path(dir.path()), &bytes).unwrap();
        assert!(load(dir.path()).is_err());
        std::fs::write(path(dir.path()), b"short").unwrap();
        assert!(load(dir.path()).is_err());
    }
}
