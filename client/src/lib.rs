//! # sluice-client
//!
//! How Rust services use Sluice. It speaks RocketMQ 4.x's classic remoting protocol, so the
//! same code works against Apache RocketMQ brokers; what only Sluice (or RocketMQ 5.x) honours
//! is marked **Sluice-only** where it appears (an arbitrary deliver time,
//! [`Message::with_deliver_at`]).
//!
//! ## Layout
//! - [`config`]: [`ClientConfig`], what every client shares (name servers, client id,
//!   timeouts).
//! - [`message`]: [`Message`] (what producers send, with keys, tags, properties and delays) and
//!   [`ConsumedMessage`] (what consumers receive).
//! - [`producer`]: [`Producer`]: route discovery, bounded failover, one-way, batch and ordered
//!   (sharding key) sends.
//! - [`transaction`]: [`TransactionProducer`], local transactions and [`TransactionChecker`]
//!   answering the broker's check-backs.
//! - [`consumer`]: [`PushConsumer`] (subscriptions, rebalance, bounded concurrency, retries
//!   through the broker, orderly mode, offsets, graceful shutdown) and [`PullConsumer`].
//! - [`idempotent`]: [`Idempotent`], handlers that run at most once per dedupe key (within a
//!   window for `UNIQ_KEY`) inside a SQLite or PostgreSQL transaction.
//! - [`error`]: [`ClientError`], every failure, typed.
//! - Internals: `core` (connection pool, routes, heartbeats), `net`, `route`.
//!
//! ## Delivery guarantees
//! Consumption is at-least-once: offsets are committed after handlers finish, periodically and
//! at shutdown, so a crash or a rebalance can redeliver. [`Idempotent`] turns that into
//! effectively-once for database side effects.
//!
//! ## Logging
//! Everything logs through `tracing` with fields (`group`, `topic`, `queue_id`, `msg_id`,
//! `broker`); the crate installs no subscriber.

pub mod config;
pub mod consumer;
mod core;
pub mod error;
pub mod idempotent;
pub mod message;
mod net;
pub mod producer;
mod route;
pub mod transaction;

pub use config::ClientConfig;
pub use consumer::{
    allocate_averagely, ConsumeFrom, ConsumeResult, IntoConsumeResult, MessageHandler,
    PullConsumer, PullConsumerBuilder, PullResult, PullStatus, PushConsumer, PushConsumerBuilder,
};
pub use error::ClientError;
pub use idempotent::{DedupeKey, Idempotent, Outcome};
pub use message::{delay_level_for, ConsumedMessage, Message, DELAY_LEVELS};
pub use producer::{BatchSendResult, Producer, ProducerBuilder, SendResult, SendStatus};
pub use sluice_protocol::remoting::body::MessageQueue;
pub use transaction::{
    HalfMessage, IntoTransactionState, TransactionChecker, TransactionProducer,
    TransactionProducerBuilder, TransactionSendResult, TransactionState,
};
