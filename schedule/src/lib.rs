//! # sluice-schedule
//!
//! Delayed messages for Sluice: RocketMQ's delay levels (`DELAY`) and RocketMQ 5's timer
//! properties (`TIMER_DELIVER_MS`, `TIMER_DELAY_MS`, `TIMER_DELAY_SEC`) with millisecond
//! resolution, millions of pending timers in bounded memory, precise release, and — beyond
//! RocketMQ — cancel and reschedule by message id or business key. The design, the on-disk
//! format and the crash behaviour are in `docs/SCHEDULING.md`.
//!
//! ## Layout
//! - [`ScheduleExtension`], [`ScheduleService`] (`service`): start/stop with the broker, the
//!   Rust API (schedule, cancel, reschedule, list, stats), the transaction seam.
//! - `hook` ([`SchedulePutHook`]): parks delayed messages in `SCHEDULE_TOPIC_XXXX` (levels)
//!   or [`TIMER_TOPIC`] before they are stored; refuses bad delays (MESSAGE_ILLEGAL).
//! - `props`: the delay rules, pure and shared by every entry point.
//! - `enqueue`: reads the timer queues and indexes timers (its own thread).
//! - `index`: the in-memory part of the timer index (near window, memtable, counters).
//! - `entry`, `run`: the on-disk part: sorted, immutable runs of 32-byte entries.
//! - `checkpoint`: writes runs and `state.json`, merges runs (its own thread).
//! - `deliver`: releases due timers at the configured rate (a tokio task).
//! - `ops`: cancel, reschedule, list (finding a message's timer records); `ops::group`: what
//!   one message needs next and doing it. `recall`: RECALL_MESSAGE (370).
//! - `records`: reading timer records, building released messages and markers.
//! - [`config`], [`error`], `stats` ([`ScheduleStats`]), `state`, `core`.
//!
//! ## Guarantees
//! - A send with a delay is acknowledged only once the parked message is durable.
//! - Nothing is released before its due time; a release keeps the message's UNIQ_KEY, keys,
//!   tags, flags, body and properties and goes to its real topic and queue.
//! - Cancels are durable before they are answered, and end a race with the release one way.
//! - After a crash nothing is lost; a release interrupted by the crash is repeated only if no
//!   copy of it is found in the store's key index (counted either way).

mod checkpoint;
pub mod config;
mod core;
mod deliver;
mod enqueue;
mod entry;
pub mod error;
mod hook;
mod index;
mod ops;
mod props;
mod recall;
mod records;
mod run;
mod service;
mod state;
mod stats;

pub use config::{parse_levels, ScheduleConfig, DEFAULT_LEVELS};
pub use error::{Result, ScheduleError};
pub use hook::SchedulePutHook;
pub use ops::{MessageState, OpReport, Outcome, ScheduledMessage, Selector, When};
pub use props::{
    CONTROL_QUEUE, PROP_DUE_MS, PROP_TIMER_OFFSET, TIMER_OUT_MS, TIMER_QUEUE, TIMER_TOPIC,
};
pub use recall::recall_handle;
pub use service::{PreparedMessage, ScheduleExtension, ScheduleService, Scheduled};
pub use stats::{ScheduleStats, LATENESS_BOUNDS_MS};
