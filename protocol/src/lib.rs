//! # sluice-protocol
//!
//! Apache RocketMQ's classic remoting protocol, as 4.x clients speak it, with no I/O at all:
//! everything here turns bytes into values and back, so it can be fuzzed and reused by the
//! broker, the store and the Rust client alike.
//!
//! ## Layout
//! - [`acl`]: RocketMQ ACL request signatures (`AccessKey`, `Signature`: HmacSHA1 over the
//!   sorted ext-field values and the body), to sign and to verify, with [`acl::Credentials`].
//! - [`message`]: the stored-message record (the commit-log layout that is also a pull-response
//!   element), its sysFlag bits, the properties string, message ids and Java's `String.hashCode`.
//! - [`remoting`]: frames, command headers, request/response codes, typed custom headers and the
//!   JSON bodies clients send and expect.
//! - [`text`]: wire bytes as text (lossy UTF-8 with a fast path for valid input).
//!
//! Every integer on the wire is big-endian. Every decoder checks a length before it allocates
//! or slices with it, and incomplete input is reported apart from invalid input.

pub mod acl;
pub mod message;
pub mod remoting;
pub mod text;

pub use message::batch::{decode_batch, encode_batch, BatchEntry, BatchError};
pub use message::{
    java_hash, MessageIdError, Properties, RecordError, RecordHeader, RecordView, BLANK_MAGIC,
    MAGIC_V1, MAGIC_V2,
};
pub use remoting::{
    request_code, response_code, ExtFields, FrameDecoder, FrameError, HeaderError, LanguageCode,
    RemotingCommand,
};
