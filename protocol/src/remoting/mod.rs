//! RocketMQ's remoting layer: frames, command headers, codes, typed custom headers and JSON
//! bodies (`rocketmq-protocol.md` §1, §2). Everything is bytes in, values out; no I/O.
//!
//! - [`frame`]: [`RemotingCommand`], the two-phase [`FrameDecoder`] with its size caps, and the
//!   frame encoder (JSON headers only).
//! - [`header`]: the JSON and binary header serialisations, read liberally, and [`LanguageCode`].
//! - [`codes`]: request and response codes.
//! - [`ext`]: [`ExtFields`], the string map every custom header travels in, with typed getters.
//! - [`custom`]: typed request and response headers (`from_ext` / `to_ext`).
//! - [`body`]: JSON bodies (heartbeat, routes, broker registration, locks, consumer lists) and
//!   fastjson's unquoted numeric keys.
//!
//! The batch body of `SEND_BATCH_MESSAGE` is binary, not JSON, and lives in
//! [`crate::message::batch`].

pub mod body;
pub mod codes;
pub mod custom;
pub mod ext;
pub mod frame;
pub mod header;

pub use codes::{request_code, response_code};
pub use ext::{ExtFields, HeaderError};
pub use frame::{encode, EncodeError, FrameDecoder, FrameError, RemotingCommand};
pub use header::LanguageCode;
