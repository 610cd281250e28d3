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
///
/// Lapsed locks are dropped (every `max_live` at most, over all groups), and an entry is made
/// only for a queue being locked: a lapsed lock used to stay until its owner unlocked it, so
/// invented groups and queues in LOCK_BATCH_MQ bodies filled memory for the broker's life.
#[derive(Debug)]
pub(crate) struct QueueLocks {
    max_live: Duration,
    groups: Mutex<HashMap<String, HashMap<MessageQueue, Owner>>>,
    pruned: Mutex<Option<Instant>>,
}

impl QueueLocks {
    pub(crate) fn new(max_live: Duration) -> Self {
        Self {
            max_live,
            groups: Mutex::new(HashMap::new()),
            pruned: Mutex::new(None),
        }
    }

    /// Drops lapsed locks and emptied groups, at most once per `max_live`.
    fn prune(&self, groups: &mut HashMap<String, HashMap<MessageQueue, Owner>>, now: Instant) {
        let mut pruned = self.pruned.lock();
        if pruned.is_some_and(|t| now.saturating_duration_since(t) < self.max_live) {
            return;
        }
        *pruned = Some(now);
        for locks in groups.values_mut() {
            locks.retain(|_, o| now.saturating_duration_since(o.renewed) <= self.max_live);
        }
        groups.retain(|_, locks| !locks.is_empty());
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
        self.prune(&mut groups, now);
        if queues.is_empty() {
            return Vec::new();
        }
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

    /// Releases every queue of `group` that `client_id` holds (it left the group: its last
    /// connection closed or it expired), so another member can take them at once instead of
    /// after they lapse, and the group stops counting as holding locks.
    pub(crate) fn release_client(&self, group: &str, client_id: &str) {
        let mut groups = self.groups.lock();
        let Some(locks) = groups.get_mut(group) else {
            return;
        };
        locks.retain(|_, o| o.client_id != client_id);
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

    #[test]
    fn a_departed_client_releases_only_its_own_locks_of_that_group() {
        let locks = QueueLocks::new(LOCK_MAX_LIVE);
        let now = Instant::now();
        assert_eq!(locks.lock("g", "a", &[mq(0), mq(1)], now).len(), 2);
        assert_eq!(locks.lock("g", "b", &[mq(2)], now).len(), 1);
        assert_eq!(locks.lock("h", "a", &[mq(0)], now).len(), 1);
        locks.release_client("g", "a");
        assert_eq!(
            locks.lock("g", "b", &[mq(0), mq(1)], now).len(),
            2,
            "free now"
        );
        assert!(
            locks.lock("h", "b", &[mq(0)], now).is_empty(),
            "other group kept"
        );
        locks.release_client("g", "b");
        assert!(!locks.group_holds_locks("g", now));
    }

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

    /// Lapsed locks of groups nobody locks any more go; an empty request makes no entry.
    #[test]
    fn lapsed_locks_and_empty_requests_leave_nothing_behind() {
        let locks = QueueLocks::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for g in 0..100 {
            locks.lock(&format!("invented-{g}"), "c", &[mq(g)], t0);
        }
        assert!(locks.lock("empty", "c", &[], t0).is_empty());
        assert_eq!(locks.groups.lock().len(), 100);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(locks.lock("g", "c", &[mq(0)], later), vec![mq(0)]);
        assert_eq!(locks.groups.lock().len(), 1, "only the live group is left");
    }
}
