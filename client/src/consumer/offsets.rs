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
    /// Held by a round of [`Self::persist_all`] and by a released queue's last commit, so the
    /// two never race: a round's older offset, answered after the release's newer one, could
    /// be applied last (the broker handles each request on its own) and pull the group's
    /// committed offset back, to redeliver what the released queue had finished.
    committing: tokio::sync::Mutex<()>,
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

    /// A released queue: commits its offset (after any round under way) and forgets it.
    pub(crate) async fn persist_and_remove(
        &self,
        core: &ClientCore,
        group: &str,
        mq: &MessageQueue,
    ) -> Result<(), ClientError> {
        let _one = self.committing.lock().await;
        let persisted = self.persist(core, group, mq).await;
        self.table.lock().remove(mq);
        persisted
    }

    /// Persists every changed offset; failures are logged and retried next time.
    ///
    /// Brokers are committed to side by side, and a broker that cannot be reached (a
    /// connection error, not an answer) gets no further try this round: each queue waited
    /// its own connect timeout before, one after another, so a shutdown with one black-holed
    /// broker took queues times the timeout and the healthy brokers' queues queued behind
    /// it could miss their final commit.
    pub(crate) async fn persist_all(&self, core: &ClientCore, group: &str) {
        let _one = self.committing.lock().await;
        let queues: Vec<MessageQueue> = self.table.lock().keys().cloned().collect();
        let rounds = super::rebalance::by_broker(queues).into_values().map(|queues| async move {
            for (i, mq) in queues.iter().enumerate() {
                match self.persist(core, group, mq).await {
                    Ok(()) => {}
                    Err(e @ ClientError::Remoting { .. }) => {
                        tracing::warn!(broker = %mq.broker_name, error = %e, left = queues.len() - i, "broker unreachable; its offsets are tried again next round");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(topic = %mq.topic, queue_id = mq.queue_id, error = %e, "offset not persisted");
                    }
                }
            }
        });
        futures::future::join_all(rounds).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A broker that cannot be reached was tried once per queue, one after another, each
    /// try waiting its connect timeout (a shutdown with a black-holed broker took queues
    /// times the timeout): after its first connection failure a broker gets no further try
    /// in that round.
    #[tokio::test]
    async fn an_unreachable_broker_is_tried_once_per_round_not_once_per_queue() {
        // Accepts and drops every connection: each try fails at the network level.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let server = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
        });
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let core = ClientCore::new(crate::ClientConfig::new("127.0.0.1:9876"), tx).unwrap();
        core.set_master_for_tests("dead", &addr);
        let store = OffsetStore::default();
        for queue_id in 0..5 {
            let mq = MessageQueue {
                topic: "T".into(),
                broker_name: "dead".into(),
                queue_id,
            };
            store.insert(&mq, 7);
        }
        store.persist_all(&core, "g").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one try for the broker");
        server.abort();
    }

    /// A released queue's last commit raced a periodic round: the round's older offset,
    /// answered later, could be applied last and pull the group's offset back. It waits for
    /// the round now, then forgets the queue.
    #[tokio::test]
    async fn a_released_queues_last_commit_waits_for_a_round_under_way() {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let core =
            Arc::new(ClientCore::new(crate::ClientConfig::new("127.0.0.1:9876"), tx).unwrap());
        let store = Arc::new(OffsetStore::default());
        let mq = MessageQueue {
            topic: "T".into(),
            broker_name: "nowhere".into(),
            queue_id: 0,
        };
        store.insert(&mq, 3);
        let round = store.committing.lock().await;
        let release = {
            let (store, core, mq) = (Arc::clone(&store), Arc::clone(&core), mq.clone());
            tokio::spawn(async move { store.persist_and_remove(&core, "g", &mq).await })
        };
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!release.is_finished(), "waits while a round runs");
        drop(round);
        let _ = release.await.unwrap();
        assert!(store.table.lock().get(&mq).is_none(), "forgotten");
    }
}
