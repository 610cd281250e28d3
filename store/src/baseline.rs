//! Baselines for the benchmarks in `bench/`: the simplest loops that do the same I/O as the
//! store, measured in the same run so the store's figures are ratios, not absolutes. They live
//! here because they need `unsafe` memory maps, which the project allows only in the store.
//! Not used by the store itself.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use memmap2::MmapMut;

use crate::io::{RealIo, StorageIo};

/// Copies each record into a preallocated, mapped file with a CRC over it, back to back, as a
/// raw mmap append loop would; returns the elapsed time. No sync.
pub fn mmap_append(path: &Path, records: &[Vec<u8>], file_len: u64) -> std::io::Result<Duration> {
    mmap_append_with(path, records, file_len, false)
}

/// [`mmap_append`] into pages written with zeros before the timing starts (what RocketMQ's
/// `warmMappedFile` does), so no page-cache page is allocated or zeroed inside the loop: the
/// ceiling of a single in-memory append loop. The cold loop's figure swings several-fold with
/// the host's memory state; this one does not.
pub fn mmap_append_warm(
    path: &Path,
    records: &[Vec<u8>],
    file_len: u64,
) -> std::io::Result<Duration> {
    mmap_append_with(path, records, file_len, true)
}

fn mmap_append_with(
    path: &Path,
    records: &[Vec<u8>],
    file_len: u64,
    warm: bool,
) -> std::io::Result<Duration> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    RealIo.allocate(&file, file_len)?;
    if warm {
        let used: u64 = records.iter().map(|r| r.len() as u64 + 4).sum();
        let zeros = vec![0u8; 1 << 20];
        let mut pos = 0;
        while pos < used.min(file_len) {
            file.write_all_at(&zeros, pos)?;
            pos += zeros.len() as u64;
        }
    }
    let mut map = map_mut(&file)?;
    let start = Instant::now();
    let mut pos = 0usize;
    for rec in records {
        let end = pos + rec.len() + 4;
        if end > map.len() {
            pos = 0;
        }
        map[pos..pos + rec.len()].copy_from_slice(rec);
        let crc = crc32fast::hash(rec);
        map[pos + rec.len()..pos + rec.len() + 4].copy_from_slice(&crc.to_be_bytes());
        pos += rec.len() + 4;
    }
    Ok(start.elapsed())
}

#[allow(unsafe_code)]
fn map_mut(file: &std::fs::File) -> std::io::Result<MmapMut> {
    // SAFETY: the file was just created by this function and allocated to its full length; it
    // is not truncated or shared while the map lives.
    unsafe { MmapMut::map_mut(file) }
}

/// One `pwrite` + `fdatasync` per record, back to back; returns the elapsed time.
pub fn pwrite_fdatasync(
    path: &Path,
    records: &[Vec<u8>],
    file_len: u64,
) -> std::io::Result<Duration> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    RealIo.allocate(&file, file_len)?;
    file.sync_all()?;
    let start = Instant::now();
    let mut pos = 0u64;
    for rec in records {
        if pos + rec.len() as u64 > file_len {
            pos = 0;
        }
        file.write_all_at(rec, pos)?;
        file.sync_data()?;
        pos += rec.len() as u64;
    }
    Ok(start.elapsed())
}
