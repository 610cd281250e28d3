//! Queue locks for orderly consumption (Java's `RebalanceLockManager`): per consumer group and
//! queue, one owning client id. A lock lapses 60 s after its last renewal
//! (`rocketmq.broker.rebalance.lockMaxLiveTime`); clients renew every 20 s.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_protocol::remoting::body::MessageQueue;

/// Java's default lock lifetime.
pub(crate) const LOCK_MAX_LIVE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Owner {
    client_id: String,
    renewed: Instant,
}

/// Locks of every group.
#[derive(Debug)]
pub(crate) struct QueueLocks {
    max_live: Duration,
    groups: Mutex<HashMap<String, HashMap<MessageQueue, Owner>>>,
}

impl QueueLocks {
    pub(crate) fn new(max_live: Duration) -> Self {
        Self {
            max_live,
            groups: Mutex::new(HashMap::new()),
        }
    }

    /// Locks or renews each queue for `client_id` where it is free, lapsed or already its own;
    /// returns the queues `client_id` holds among those asked for.
    pub(crate) fn lock(
        &self,
        group: &str,
        client_id: &str,
        queues: &[MessageQueue],
        now: Instant,
    ) -> Vec<MessageQueue> {
        let mut groups = self.groups.lock();
        let locks = groups.entry(group.to_owned()).or_default();
        let mut held = Vec::new();
        for mq in queues {
            let free = locks.get(mq).is_none_or(|o| {
                o.client_id == client_id || now.saturating_duration_since(o.renewed) > self.max_live
            });
            if free {
                let owner = Owner {
                    client_id: client_id.to_owned(),
                    renewed: now,
                };
                locks.insert(mq.clone(), owner);
                held.push(mq.clone());
            }
        }
        held
    }

    /// Releases the queues `client_id` holds among those named.
    pub(crate) fn unlock(&self, group: &str, client_id: &str, queues: &[MessageQueue]) {
        let mut groups = self.groups.lock();
        let Some(locks) = groups.get_mut(group) else {
            return;
        };
        for mq in queues {
            if locks.get(mq).is_some_and(|o| o.client_id == client_id) {
                locks.remove(mq);
            }
        }
        if locks.is_empty() {
            groups.remove(group);
        }
    }

    /// Whether the group holds any unexpired lock (5.1.1+ routes its retries to the DLQ).
    pub(crate) fn group_holds_locks(&self, group: &str, now: Instant) -> bool {
        self.groups.lock().get(group).is_some_and(|locks| {
            locks
                .values()
                .any(|o| now.saturating_duration_since(o.renewed) <= self.max_live)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mq(id: i32) -> MessageQueue {
        MessageQueue {
            topic: "T".into(),
            broker_name: "b".into(),
            queue_id: id,
        }
    }

    #[test]
    fn a_queue_has_one_owner_until_it_lapses_or_is_released() {
        let locks = QueueLocks::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(
            locks.lock("g", "c1", &[mq(0), mq(1)], t0),
            vec![mq(0), mq(1)]
        );
        assert_eq!(locks.lock("g", "c2", &[mq(1), mq(2)], t0), vec![mq(2)]);
        assert_eq!(locks.lock("g", "c1", &[mq(1)], t0), vec![mq(1)]);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(locks.lock("g", "c2", &[mq(0)], later), vec![mq(0)]);
        locks.unlock("g", "c1", &[mq(1)]);
        assert_eq!(locks.lock("g", "c2", &[mq(1)], later), vec![mq(1)]);
        assert!(locks.group_holds_locks("g", later));
        assert!(!locks.group_holds_locks("other", later));
    }
}
