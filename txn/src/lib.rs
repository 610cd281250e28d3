//! # sluice-txn
//!
//! Transactional (half) messages, RocketMQ-compatible: the producer's local transaction and its
//! message either both happen or neither does. A half message is stored durably and invisibly;
//! END_TRANSACTION commits it (the real message appears in its topic exactly once) or rolls it
//! back; transactions left open are checked back with their producer group, then get a final
//! action. The state machine and its durability are in `docs/TRANSACTIONS.md`.
//!
//! ## Layout
//! - [`TxnExtension`] (`extension`): plugs into the broker: a `PutHook` for half messages, an
//!   `Extension` answering END_TRANSACTION, start (rebuild) and stop.
//! - `hook`: the half-message rewrite (`RMQ_SYS_TRANS_HALF_TOPIC`/0, `REAL_TOPIC`, ...).
//! - [`state`]: the per-transaction state machine as a pure transition table.
//! - `table`: the in-memory state of every transaction, under one lock.
//! - `core`: the one decision path: in-memory transition, then ONE atomic store append.
//! - `resolve`: from a client's reference (offsets, group, ids) to a transaction; `fresh`:
//!   half messages kept from their put, so END_TRANSACTION need not read them back.
//! - `end_txn`: END_TRANSACTION.
//! - `checker`: the background loop: tail the half queue, checks, final actions,
//!   checkpoints; `carry`: undecided half messages copied forward ahead of retention;
//!   `pace`: how many checks a tick may start.
//! - [`sink`]: where checks go: TCP producers, or a sink / pull queue for the HTTP facade.
//! - `recovery`, `checkpoint`, `journal`: the restart rebuild, bounded by a checkpoint file,
//!   and the check journal that keeps check counts between checkpoints.
//! - `records`: the half, op, commit, copy and check-body records.
//! - [`TxnService`] (`service`): list, force, re-arm, resolve, pull checks, metrics.
//! - [`config`], [`error`], `metrics`.
//!
//! ## Guarantees
//! - A half message is never visible in its real topic before a commit, and never after a
//!   rollback; a commit stores the real message and its op record in one store request.
//! - Decisions are idempotent and exclusive: a repeat is answered from the state, the opposite
//!   decision is refused (TRANSACTION_SHOULD_COMMIT / TRANSACTION_SHOULD_ROLLBACK).
//! - No check is sent for a transaction that is not open, and at most `check_max` checks are
//!   delivered per arming, even across a crash (counts are journalled before sending).

mod carry;
mod checker;
mod checkpoint;
pub mod config;
mod core;
mod end_txn;
pub mod error;
mod extension;
mod fresh;
mod hook;
mod journal;
mod metrics;
mod pace;
mod records;
mod recovery;
mod resolve;
mod service;
pub mod sink;
pub mod state;
mod table;

pub use crate::core::Outcome;
pub use config::{FinalAction, GroupOverride, GroupPolicy, TxnConfig};
pub use error::TxnError;
pub use extension::TxnExtension;
pub use hook::TxnPutHook;
pub use metrics::TxnMetrics;
pub use records::{
    TxnId, PROP_BY, PROP_OP, PROP_ORIGIN_PHYS, PROP_ORIGIN_QUEUE_OFFSET, PROP_ORIGIN_STORE_MS,
    PROP_PARKED, PROP_PHYS,
};
pub use resolve::{Resolution, TxnRef};
pub use service::{ListQuery, StateFilter, TxnService, TxnView};
pub use sink::{CheckSink, PendingCheck, PROP_CHECK_URL};
pub use state::{CheckAnswer, Decision, Source, TxnState};
