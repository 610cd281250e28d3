//! # sluice-store
//!
//! The storage engine every other part of Sluice stands on. It does not lose acknowledged
//! messages, and it runs on its own threads: nothing here touches tokio, and async callers
//! await an [`AppendFuture`] that completes only after durability.
//!
//! ## Layout
//! - [`Store`] (`store`): open with recovery, append, shut down; `reads`: queue reads, key and
//!   time queries.
//! - `commitlog`, `framing`: segments of RocketMQ-layout records, each followed by a trailer
//!   (CRC over the whole record, durable watermark) so torn and corrupt bytes are caught.
//! - `appender`, `flusher`: the single writer (`pwrite`) and group commit (`fdatasync`).
//! - `warmer`: writes zeros ahead of the appender so its syncs write no extent metadata.
//! - `dispatch`, `consume_queue`, `index`: derived entries per queue and per key;
//!   `dispatch_thread`: the loop that runs them, its retries and checkpoints.
//! - [`recovery`]: the written policy for torn tails and interior damage.
//! - `floors`: per queue, the offset below which a deleted topic's records are not served.
//! - `retention`: deleting old segments with their queue and index files.
//! - `checkpoint`: checkpoint, abort marker, folder lock, atomic file replacement.
//! - `seal`: the secret the trailers' checksums start from (see `framing`).
//! - [`crash_point`]: named steps of multi-file operations where a test can abort the process.
//! - [`io`]: the storage trait and its fault-injecting twin.
//! - [`latency`]: the sync-latency histogram behind `/metrics`.
//!
//! ## Files under the data folder
//! `commitlog/<20-digit offset>`, `consumequeue/<topic>/<queue>/<20-digit byte offset>`,
//! `index/<20-digit offset>`, `checkpoint`, `abort`, `lock`, `seal`, `queue-floors`.

mod appender;
#[doc(hidden)]
pub mod baseline;
mod checkpoint;
mod commitlog;
mod config;
mod consume_queue;
pub mod crash_point;
mod damage;
mod dispatch;
mod dispatch_thread;
mod error;
mod floors;
mod flusher;
mod framing;
#[doc(hidden)]
pub mod fuzzing;
mod index;
pub mod io;
pub mod latency;
mod mapped;
mod message;
mod progress;
mod reads;
pub mod recovery;
mod retention;
mod seal;
mod shared;
mod store;
mod warmer;

pub use checkpoint::{
    append_synced, check_folder_free, remove_synced, sweep_temp_files, truncate_synced,
    write_atomic, Checkpoint,
};
pub use commitlog::STORED_RECORD_MAX;
pub use config::{FlushMode, StoreConfig};
pub use consume_queue::CqEntry;
pub use damage::Damage;
pub use dispatch::{DispatchEvent, DispatchListener};
pub use error::{Result, StoreError};
pub use message::{now_ms, validate_topic, Appended, MessageInput};
pub use reads::{Boundary, GetResult, GetStatus, QueueMessage};
pub use recovery::RecoveryReport;
pub use retention::RetentionReport;
pub use store::{AppendFuture, Health, Store, StoreStats};
