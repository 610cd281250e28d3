//! The message as RocketMQ stores and serves it.
//!
//! - [`record`]: the byte-exact stored record (`rocketmq-protocol.md` §3.1), encoded once by the
//!   store and sent unchanged in pull responses.
//! - [`properties`]: the `key\x01value\x02` properties string and the well-known keys.
//! - [`ids`]: offset message ids (store address + commit-log offset) and client unique keys.
//! - [`hash`]: Java's `String.hashCode`, which tag codes must match bit for bit.

pub mod batch;
pub mod hash;
pub mod ids;
pub mod properties;
pub mod record;

pub use hash::java_hash;
pub use ids::{decode_offset_msg_id, offset_msg_id, MessageIdError, UniqKeyGenerator};
pub use properties::{find_properties, find_property, keys, Properties};
pub use record::{
    sysflag, RecordError, RecordHeader, RecordView, BLANK_MAGIC, MAGIC_V1, MAGIC_V2,
    MAX_PROPERTIES_LEN,
};
