//! JSON state files under `<data_dir>/config/`: `topics.json` and `consumerOffset.json`.
//!
//! Written whole with `sluice_store::write_atomic` (temp file, fsync, rename, fsync folder), so
//! a crash leaves the old or the new file, never a mix. A file that exists but does not parse
//! stops the broker from starting: silently starting empty would forget consumer offsets and
//! make every group skip or replay its backlog.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use sluice_protocol::remoting::body::decode_json;

use crate::error::BrokerError;

/// `<data_dir>/config`.
pub(crate) fn config_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("config")
}

/// Reads and parses `path`; `Ok(None)` when it is missing or empty. Java's fastjson form (bare
/// integer keys) is accepted as well as standard JSON.
pub(crate) fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, BrokerError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(state_error("read", path, e)),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    decode_json(&bytes)
        .map(Some)
        .map_err(|e| state_error("parse", path, e))
}

/// Replaces `path` atomically with `bytes`, creating its folder if needed. Blocking: call it
/// from a blocking thread.
pub(crate) fn store(path: &Path, bytes: &[u8]) -> Result<(), BrokerError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| state_error("create folder for", path, e))?;
    }
    sluice_store::write_atomic(path, bytes).map_err(|e| state_error("write", path, e))
}

/// Removes the temporary files a crash in the middle of [`store`] left anywhere under
/// `config/` (the DLQ keeps folders of its own there). Their targets are intact: the rename
/// that would have replaced them never happened.
pub(crate) fn sweep_temp_files(data_dir: &Path) -> Result<usize, BrokerError> {
    let mut removed = 0;
    let mut dirs = vec![config_dir(data_dir)];
    while let Some(dir) = dirs.pop() {
        removed +=
            sluice_store::sweep_temp_files(&dir).map_err(|e| state_error("clean up", &dir, e))?;
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
    }
    if removed > 0 {
        tracing::info!(
            removed,
            "temporary state files from an interrupted write removed"
        );
    }
    Ok(removed)
}

fn state_error(op: &'static str, path: &Path, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::StateFile {
        op,
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}
