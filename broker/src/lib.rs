//! # sluice-broker
//!
//! A RocketMQ-compatible broker and name server that unmodified 4.x clients (Java, Go, C++)
//! produce to and consume from, built on `sluice-protocol` (the wire format) and `sluice-store`
//! (the storage engine).
//!
//! ## Layout
//! - [`NameServer`] (`namesrv`): broker registration, expiry, routes, cluster info.
//! - [`Broker`] (`broker`): startup, background loops (registration, offset flush, client
//!   expiry), graceful shutdown; [`BrokerHandle`] gives the store, counters and connections.
//! - `processor`: the broker's request handlers, one module per area: `send`, `pull` (long
//!   polling), `offset`, `client` (heartbeats, consumer lists, locks), `query`, `admin`.
//! - `topic`: topic configs, auto-creation, `topics.json`.
//! - `offsets`: consumer offsets, `consumerOffset.json`.
//! - `clients`: producer and consumer groups by connection.
//! - `locks`: orderly-consumption queue locks.
//! - `longpoll`: wake-ups of parked pulls from the store's dispatch listener.
//! - [`hooks`]: [`PutHook`], where later crates (transactions, delays, retries) intercept
//!   messages before they are stored.
//! - [`remoting`]: the TCP machinery both servers share, and [`RemotingClient`].
//! - [`produce`]: in-process sends (the HTTP facade) through the same checks and hooks.
//! - [`retry`]: consumer retries and dead letters (CONSUMER_SEND_MSG_BACK, retry-topic sends,
//!   the Rust send-back API), per-group policy.
//! - [`dlq`]: reading dead-letter queues and replay (redrive) tasks.
//! - [`lease`]: lease-based consumption (receive, ack, nack, visibility) for the HTTP facade,
//!   with receipts, expiry and the same retry/DLQ path.
//! - [`acl`]: RocketMQ ACL signatures, per-topic/group permissions and the admin rule,
//!   checked before any handler runs.
//! - [`config`], [`error`], `stats` ([`BrokerStats`]), `reply`, `state_file`, [`log_every`]
//!   (warnings a sustained failure cannot flood).
//!
//! ## Guarantees
//! - A send is answered SUCCESS only after the store acknowledged it (durable in sync mode).
//! - Nothing a client sends can panic the server or close another client's connection: bad
//!   headers and bodies are answered with an error code and a remark naming the problem, a
//!   handler panic is contained to its request (SYSTEM_ERROR), and only an undecodable frame
//!   closes its own connection.
//! - Every response has language JAVA, version 401, an `extFields` object and string values.

pub mod acl;
mod broker;
mod clients;
pub mod config;
pub mod dlq;
pub mod error;
pub mod hooks;
pub mod lease;
mod locks;
pub mod log_every;
mod longpoll;
mod namesrv;
mod offsets;
mod processor;
pub mod produce;
mod rates;
pub mod remoting;
mod reply;
pub mod retry;
pub mod services;
mod state_file;
mod stats;
mod topic;

pub use broker::{Broker, BrokerHandle, ShutdownReport};
pub use clients::ConsumerGroupInfo;
pub use config::{BrokerConfig, NameServerConfig};
pub use dlq::{
    DlqError, DlqFilter, DlqGroupStats, DlqMessage, DlqPage, DlqQuery, DlqService, ReplaySpec,
    ReplayState, ReplayStatus,
};
pub use error::{BrokerError, RemotingError};
pub use hooks::{BrokerExtensions, HookOutcome, PendingMessage, PutContext, PutHook, Stored};
pub use lease::{Delivery, LeaseConfig, LeaseError, LeaseService, LeaseTotals, ReceiveRequest};
pub use namesrv::{NameServer, NameServerHandle};
pub use remoting::{ClientOptions, ConnectionHandle, ConnectionRegistry, RemotingClient};
pub use retry::{
    Backoff, GroupRetryPolicy, RetryConfig, RetryDelay, RetryError, SendBack, SendBackOutcome,
};
pub use services::{BoxFuture, BrokerServices, DeleteTopicError, Extension};
pub use stats::BrokerStats;
pub use topic::{
    NotAdded, TopicLimit, DEFAULT_TOPIC, DLQ_PREFIX, RETRY_PREFIX, SCHEDULE_TOPIC, TIMER_TOPIC,
    TRANS_CHECK_MAX_TIME_TOPIC, TRANS_HALF_TOPIC, TRANS_OP_HALF_TOPIC,
};

/// Deliberate misbehaviour, so tests can prove a handler panic is contained and the in-flight
/// limit holds. Off unless a test turns it on; with it off these codes are just unknown
/// request codes.
#[doc(hidden)]
pub mod test_hooks {
    use std::sync::atomic::AtomicBool;

    /// A request code whose handler panics when [`ENABLED`] is set.
    pub const PANIC_REQUEST_CODE: i32 = -7001;
    /// A request code whose handler sleeps 2 s, then succeeds, when [`ENABLED`] is set.
    pub const SLOW_REQUEST_CODE: i32 = -7002;
    /// A request code whose handler sleeps 50 ms, then succeeds, when [`ENABLED`] is set.
    pub const BRIEF_REQUEST_CODE: i32 = -7003;
    /// Enables the hooks (process-wide).
    pub static ENABLED: AtomicBool = AtomicBool::new(false);
}
