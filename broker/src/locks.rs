//! Queue locks for orderly consumption (Java's `RebalanceLockManager`): per consumer group and
//! queue, one owning client id. A lock lapses 60 s after its last renewal
//! (`rocketmq.broker.rebalance.lockMaxLiveTime`); clients renew every 20 s.
//!
//! A client that leaves its group (its last connection closed, it expired or unregistered)
//! keeps its locks until [`DEPARTED_LIVE`] after their last renewal, not 60 s, and not none: a
//! client trusts a lock for 30 s after taking it (Java's and C++'s
//! `REBALANCE_LOCK_MAX_LIVE_TIME`), and one whose connection dropped and came back goes on
//! consuming its queues meanwhile. Released at once, another member locked them and both
//! consumed the same queue, out of order.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_protocol::remoting::body::MessageQueue;

/// Java's default lock lifetime.
pub(crate) const LOCK_MAX_LIVE: Duration = Duration::from_secs(60);

/// How long after its last renewal a departed client's lock lapses: the 30 s a client trusts
/// a lock it took, and 5 s for the answer's way back and clock rates.
pub(crate) const DEPARTED_LIVE: Duration = Duration::from_secs(35);

#[derive(Debug, Clone)]
struct Owner {
    client_id: String,
    renewed: Instant,
    /// How long after `renewed` the lock lapses.
    live: Duration,
}

impl Owner {
    fn lapsed(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.renewed) > self.live
    }
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
            locks.retain(|_, o| !o.lapsed(now));
        }
        groups.retain(|_, locks| !locks.is_empty());
    }

    /// Locks or renews each queue for `client_id` where it is free, lapsed or already its own;
    /// returns the queues `client_id` holds among those asked for. With `cap`, a queue
    /// without an entry is locked only while the whole table holds fewer entries (renewals
    /// and lapsed entries taken over add none), checked under the table's lock.
    pub(crate) fn lock(
        &self,
        group: &str,
        client_id: &str,
        queues: &[MessageQueue],
        now: Instant,
        cap: Option<usize>,
    ) -> Vec<MessageQueue> {
        let mut groups = self.groups.lock();
        self.prune(&mut groups, now);
        if queues.is_empty() {
            return Vec::new();
        }
        let mut entries = cap.map_or(0, |_| groups.values().map(HashMap::len).sum::<usize>());
        let locks = groups.entry(group.to_owned()).or_default();
        let mut held = Vec::new();
        for mq in queues {
            let free = match locks.get(mq) {
                Some(o) => o.client_id == client_id || o.lapsed(now),
                None if cap.is_some_and(|c| entries >= c) => false,
                None => {
                    entries += 1;
                    true
                }
            };
            if free {
                let owner = Owner {
                    client_id: client_id.to_owned(),
                    renewed: now,
                    live: self.max_live,
                };
                locks.insert(mq.clone(), owner);
                held.push(mq.clone());
            }
        }
        if locks.is_empty() {
            groups.remove(group);
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

    /// `client_id` left `group` (its last connection closed, it expired or unregistered): its
    /// locks there lapse [`DEPARTED_LIVE`] after their last renewal (module docs) instead of
    /// `max_live`, so another member takes them sooner, but never while the client may still
    /// trust them. A renewal (the client came back) makes them whole again.
    pub(crate) fn client_departed(&self, group: &str, client_id: &str) {
        let mut groups = self.groups.lock();
        let Some(locks) = groups.get_mut(group) else {
            return;
        };
        for o in locks.values_mut().filter(|o| o.client_id == client_id) {
            o.live = o.live.min(DEPARTED_LIVE);
        }
    }

    /// Whether the group holds any unexpired lock (5.1.1+ routes its retries to the DLQ).
    pub(crate) fn group_holds_locks(&self, group: &str, now: Instant) -> bool {
        self.groups
            .lock()
            .get(group)
            .is_some_and(|locks| locks.values().any(|o| !o.lapsed(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A departed client's locks go sooner than 60 s, but not before the 30 s it may still
    /// trust them: released at once, a client whose connection dropped and came back went on
    /// consuming its queues while another member locked and consumed them too.
    #[test]
    fn a_departed_clients_locks_lapse_once_it_can_no_longer_trust_them() {
        let locks = QueueLocks::new(LOCK_MAX_LIVE);
        let t0 = Instant::now();
        assert_eq!(locks.lock("g", "a", &[mq(0), mq(1)], t0, None).len(), 2);
        assert_eq!(locks.lock("g", "b", &[mq(2)], t0, None).len(), 1);
        assert_eq!(locks.lock("h", "a", &[mq(0)], t0, None).len(), 1);
        locks.client_departed("g", "a");
        let trusted = t0 + Duration::from_secs(30);
        assert!(
            locks
                .lock("g", "b", &[mq(0), mq(1)], trusted, None)
                .is_empty(),
            "still a's while it may trust them"
        );
        let after = t0 + DEPARTED_LIVE + Duration::from_secs(1);
        assert_eq!(
            locks.lock("g", "b", &[mq(0), mq(1)], after, None).len(),
            2,
            "free before the 60 s"
        );
        assert!(
            locks.lock("h", "b", &[mq(0)], after, None).is_empty(),
            "other group kept"
        );
        // A departed client that renews (it came back) holds them for the full time again.
        locks.client_departed("h", "a");
        assert_eq!(locks.lock("h", "a", &[mq(0)], after, None).len(), 1);
        let later = after + Duration::from_secs(50);
        assert!(locks.lock("h", "b", &[mq(0)], later, None).is_empty());
    }

    /// Lock requests naming ever new groups grew the table without bound. With a cap, queues
    /// without an entry are locked only while the whole table is under it; renewals and
    /// lapsed entries taken over are not held back.
    #[test]
    fn a_cap_bounds_new_entries_but_not_renewals() {
        let locks = QueueLocks::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(
            locks
                .lock("a", "c1", &[mq(0), mq(1), mq(2)], t0, Some(2))
                .len(),
            2
        );
        assert!(
            locks.lock("b", "c2", &[mq(0)], t0, Some(2)).is_empty(),
            "full"
        );
        assert_eq!(
            locks.lock("b", "c2", &[mq(0)], t0, None).len(),
            1,
            "no cap: a member"
        );
        assert_eq!(
            locks.lock("a", "c1", &[mq(0), mq(1)], t0, Some(2)).len(),
            2,
            "renewals pass a full table"
        );
        // c1 left: its locks lapse 35 s after their renewal, before the 60 s prune is due,
        // and the table is still full (three entries).
        locks.client_departed("a", "c1");
        let lapsed = t0 + DEPARTED_LIVE + Duration::from_secs(5);
        assert_eq!(
            locks.lock("a", "c3", &[mq(0)], lapsed, Some(3)).len(),
            1,
            "a lapsed entry taken over adds none"
        );
        assert!(
            locks.lock("a", "c3", &[mq(5)], lapsed, Some(3)).is_empty(),
            "a new one still does"
        );
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
            locks.lock("g", "c1", &[mq(0), mq(1)], t0, None),
            vec![mq(0), mq(1)]
        );
        assert_eq!(
            locks.lock("g", "c2", &[mq(1), mq(2)], t0, None),
            vec![mq(2)]
        );
        assert_eq!(locks.lock("g", "c1", &[mq(1)], t0, None), vec![mq(1)]);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(locks.lock("g", "c2", &[mq(0)], later, None), vec![mq(0)]);
        locks.unlock("g", "c1", &[mq(1)]);
        assert_eq!(locks.lock("g", "c2", &[mq(1)], later, None), vec![mq(1)]);
        assert!(locks.group_holds_locks("g", later));
        assert!(!locks.group_holds_locks("other", later));
    }

    /// Lapsed locks of groups nobody locks any more go; an empty request makes no entry.
    #[test]
    fn lapsed_locks_and_empty_requests_leave_nothing_behind() {
        let locks = QueueLocks::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for g in 0..100 {
            locks.lock(&format!("invented-{g}"), "c", &[mq(g)], t0, None);
        }
        assert!(locks.lock("empty", "c", &[], t0, None).is_empty());
        assert_eq!(locks.groups.lock().len(), 100);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(locks.lock("g", "c", &[mq(0)], later, None), vec![mq(0)]);
        assert_eq!(locks.groups.lock().len(), 1, "only the live group is left");
    }
}
