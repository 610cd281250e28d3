//! What callers hand the store and what they get back.

use std::net::SocketAddr;

use bytes::Bytes;
use sluice_protocol::message::record::{record_len, sysflag, RecordHeader, MAX_PROPERTIES_LEN};

use crate::error::{Result, StoreError};

/// A message to append, as the broker hands it over. The store assigns the queue offset,
/// commit-log offset and store timestamp.
#[derive(Debug, Clone)]
pub struct MessageInput {
    /// Destination topic (`[%|a-zA-Z0-9_-]`, at most 255 bytes).
    pub topic: String,
    /// Queue within the topic.
    pub queue_id: i32,
    /// The user's int flag.
    pub flag: i32,
    /// Message sysFlag (compression, transaction type).
    pub sys_flag: i32,
    /// Producer timestamp, epoch ms.
    pub born_timestamp: i64,
    /// Producer address.
    pub born_host: SocketAddr,
    /// Reconsume count (retry topics).
    pub reconsume_times: i32,
    /// For a committed transactional message, the half message's commit-log offset.
    pub prepared_transaction_offset: i64,
    /// The body, stored as given.
    pub body: Bytes,
    /// The encoded properties string (`key\x01value\x02...`).
    pub properties: String,
}

impl MessageInput {
    /// A plain message with defaults for everything but topic, queue and body.
    pub fn new(topic: impl Into<String>, queue_id: i32, body: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            queue_id,
            flag: 0,
            sys_flag: 0,
            born_timestamp: now_ms(),
            born_host: SocketAddr::from(([127, 0, 0, 1], 0)),
            reconsume_times: 0,
            prepared_transaction_offset: 0,
            body: body.into(),
            properties: String::new(),
        }
    }

    /// Whether this record gets a consume-queue slot: prepared and rolled-back transactional
    /// records do not (RocketMQ semantics), so consumers never see them.
    pub fn is_consumable(&self) -> bool {
        let t = sysflag::transaction_type(self.sys_flag);
        t == sysflag::TRANSACTION_NOT_TYPE || t == sysflag::TRANSACTION_COMMIT
    }
}

/// Where a message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Commit-log offset of the record.
    pub phys_offset: u64,
    /// Record size (TOTALSIZE).
    pub size: u32,
    /// Consume-queue offset (0 for records that get none).
    pub queue_offset: i64,
    /// Store timestamp, epoch ms.
    pub store_timestamp: i64,
}

/// Checks a topic name: the characters RocketMQ allows, so it is also a safe folder name.
pub fn validate_topic(topic: &str) -> Result<()> {
    if topic.is_empty() || topic.len() > 255 {
        return Err(StoreError::InvalidMessage(format!(
            "topic must be 1 to 255 bytes, got {}",
            topic.len()
        )));
    }
    let ok = topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-'));
    if !ok {
        return Err(StoreError::InvalidMessage(format!(
            "topic {topic:?} may only contain letters, digits, %, |, _ and -"
        )));
    }
    Ok(())
}

/// The record header for `msg`; the appender fills in the offsets and store time.
pub(crate) fn header(msg: &MessageInput, store_host: SocketAddr) -> RecordHeader {
    RecordHeader {
        queue_id: msg.queue_id,
        flag: msg.flag,
        sys_flag: msg.sys_flag,
        born_timestamp: msg.born_timestamp,
        born_host: msg.born_host,
        store_host,
        reconsume_times: msg.reconsume_times,
        prepared_transaction_offset: msg.prepared_transaction_offset,
        ..RecordHeader::default()
    }
}

/// Checks a message on the caller's thread, so the appender only ever sees messages that encode.
pub(crate) fn validate(
    msg: &MessageInput,
    store_host: SocketAddr,
    max_record: usize,
) -> Result<()> {
    validate_topic(&msg.topic)?;
    if msg.queue_id < 0 {
        return Err(StoreError::InvalidMessage(format!(
            "queue id {} is negative",
            msg.queue_id
        )));
    }
    if msg.properties.len() > MAX_PROPERTIES_LEN {
        return Err(StoreError::InvalidMessage(format!(
            "properties of {} bytes exceed {MAX_PROPERTIES_LEN}",
            msg.properties.len()
        )));
    }
    let len = record_len(
        &header(msg, store_host),
        &msg.body,
        &msg.topic,
        msg.properties.as_bytes(),
    );
    if len > max_record {
        return Err(StoreError::InvalidMessage(format!(
            "record of {len} bytes exceeds the limit of {max_record}"
        )));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
