//! Committed offsets of a push consumer: updated locally as messages are handled, persisted
//! to each queue's broker periodically, when a queue moves to another member, and at shutdown.
//! Offsets are "next to consume"; what was handled but not yet persisted is redelivered after
//! a crash (at-least-once).

use std::collections::HashMap;

use parking_lot::Mutex;
use sluice_protocol::remoting::body::MessageQueue;

use super::remote;
use crate::core::ClientCore;
use crate::error::ClientError;

/// Offsets by queue, with the last value the broker acknowledged.
#[derive(Debug, Default)]
pub(crate) struct OffsetStore {
    table: Mutex<HashMap<MessageQueue, Entry>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: i64,
    persisted: Option<i64>,
}

impl OffsetStore {
    /// Starts tracking `mq` at `offset` (a queue just assigned).
    pub(crate) fn insert(&self, mq: &MessageQueue, offset: i64) {
        let entry = Entry {
            offset,
            persisted: None,
        };
        self.table.lock().insert(mq.clone(), entry);
    }

    /// Moves the offset of a tracked queue. A queue no longer tracked (released to another
    /// member) is left alone, so a late handler cannot commit an old offset over the new
    /// owner's progress.
    pub(crate) fn update(&self, mq: &MessageQueue, offset: i64) {
        if let Some(e) = self.table.lock().get_mut(mq) {
            e.offset = offset;
        }
    }

    /// Forgets `mq`, returning its offset.
    pub(crate) fn remove(&self, mq: &MessageQueue) -> Option<i64> {
        self.table.lock().remove(mq).map(|e| e.offset)
    }

    /// Persists one queue's offset if it changed since the last acknowledgement.
    pub(crate) async fn persist(
        &self,
        core: &ClientCore,
        group: &str,
        mq: &MessageQueue,
    ) -> Result<(), ClientError> {
        let Some(entry) = self.table.lock().get(mq).copied() else {
            return Ok(());
        };
        if entry.persisted == Some(entry.offset) {
            return Ok(());
        }
        remote::commit_offset(core, group, mq, entry.offset).await?;
        tracing::trace!(topic = %mq.topic, queue_id = mq.queue_id, offset = entry.offset, "offset persisted");
        if let Some(e) = self.table.lock().get_mut(mq) {
            e.persisted = Some(entry.offset);
        }
        Ok(())
    }

    /// Persists every changed offset; failures are logged and retried next time.
    pub(crate) async fn persist_all(&self, core: &ClientCore, group: &str) {
        let queues: Vec<MessageQueue> = self.table.lock().keys().cloned().collect();
        for mq in queues {
            if let Err(e) = self.persist(core, group, &mq).await {
                tracing::warn!(topic = %mq.topic, queue_id = mq.queue_id, error = %e, "offset not persisted");
            }
        }
    }
}
