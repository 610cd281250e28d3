//! What a send returns.

use sluice_protocol::remoting::body::MessageQueue;
use sluice_protocol::response_code as code;

/// How the broker stored a message. Every status means "stored"; the last three say a
/// durability step (flush, replication) did not confirm in time.
///
/// ```
/// use sluice_client::SendStatus;
/// let status = SendStatus::FlushDiskTimeout;
/// // Stored, but not yet known to be on disk: alert, do not resend (that would duplicate).
/// assert_ne!(status, SendStatus::Ok);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendStatus {
    /// Stored as configured.
    Ok,
    /// Stored, but the disk flush timed out.
    FlushDiskTimeout,
    /// Stored, but the slave flush timed out.
    FlushSlaveTimeout,
    /// Stored, but no slave was available.
    SlaveNotAvailable,
}

impl SendStatus {
    /// The status for a send response code, `None` for codes that mean "not stored".
    pub(crate) fn from_code(c: i32) -> Option<Self> {
        match c {
            code::SUCCESS => Some(Self::Ok),
            code::FLUSH_DISK_TIMEOUT => Some(Self::FlushDiskTimeout),
            code::FLUSH_SLAVE_TIMEOUT => Some(Self::FlushSlaveTimeout),
            code::SLAVE_NOT_AVAILABLE => Some(Self::SlaveNotAvailable),
            _ => None,
        }
    }
}

/// The outcome of a successful send.
///
/// ```no_run
/// # async fn demo(producer: &sluice_client::Producer) -> Result<(), sluice_client::ClientError> {
/// let r = producer.send(sluice_client::Message::new("Orders", "hi")).await?;
/// println!("{} stored at {}#{} offset {}", r.msg_id, r.queue.broker_name, r.queue.queue_id, r.queue_offset);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// How it was stored.
    pub status: SendStatus,
    /// The client id (`UNIQ_KEY`) of the message: stable across retries and redeliveries.
    pub msg_id: String,
    /// The broker's id of the stored copy (store address + commit-log offset).
    pub offset_msg_id: String,
    /// The queue written.
    pub queue: MessageQueue,
    /// The message's offset in that queue.
    pub queue_offset: i64,
    /// The transaction id the broker reported, for half messages.
    pub transaction_id: Option<String>,
}

/// The outcome of a batch send: one queue, consecutive offsets.
///
/// ```no_run
/// # async fn demo(producer: &sluice_client::Producer) -> Result<(), sluice_client::ClientError> {
/// use sluice_client::Message;
/// let batch = vec![Message::new("Orders", "a"), Message::new("Orders", "b")];
/// let r = producer.send_batch(batch).await?;
/// assert_eq!(r.msg_ids.len(), 2);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSendResult {
    /// How it was stored.
    pub status: SendStatus,
    /// Each message's `UNIQ_KEY`, in order.
    pub msg_ids: Vec<String>,
    /// Each stored copy's broker id, in order (as many as the broker reported).
    pub offset_msg_ids: Vec<String>,
    /// The queue written.
    pub queue: MessageQueue,
    /// The first message's offset; the others follow it.
    pub first_queue_offset: i64,
}
