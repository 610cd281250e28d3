//! Wake-ups for parked pulls (the waking half of Java's `PullRequestHoldService`).
//!
//! A parked pull subscribes to its `topic@queueId` and waits on a [`Notify`]. The store's
//! dispatch listener calls [`PullWaiters::wake`] on its own thread for every record that became
//! consumable: a short map lookup under a lock and `notify_waiters`, which never blocks. Only
//! queues someone waits on have an entry; the last waiter to leave removes it.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};

#[derive(Debug)]
struct Slot {
    notify: Arc<Notify>,
    waiters: usize,
}

/// Parked-pull subscriptions by topic and queue.
#[derive(Debug, Default)]
pub(crate) struct PullWaiters {
    topics: Mutex<HashMap<String, HashMap<i32, Slot>>>,
}

/// A pull's subscription; dropping it unsubscribes.
#[derive(Debug)]
pub(crate) struct Subscription {
    waiters: Arc<PullWaiters>,
    topic: String,
    queue_id: i32,
    notify: Arc<Notify>,
}

impl Subscription {
    /// Notified whenever a record is dispatched to the queue.
    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl PullWaiters {
    /// Subscribes to new records of `topic`/`queue_id`.
    pub(crate) fn subscribe(self: &Arc<Self>, topic: &str, queue_id: i32) -> Subscription {
        let mut topics = self.topics.lock();
        let slot = topics
            .entry(topic.to_owned())
            .or_default()
            .entry(queue_id)
            .or_insert_with(|| Slot {
                notify: Arc::new(Notify::new()),
                waiters: 0,
            });
        slot.waiters += 1;
        Subscription {
            waiters: Arc::clone(self),
            topic: topic.to_owned(),
            queue_id,
            notify: Arc::clone(&slot.notify),
        }
    }

    /// Wakes every pull parked on the queue. Called on the store's dispatcher thread.
    pub(crate) fn wake(&self, topic: &str, queue_id: i32) {
        let topics = self.topics.lock();
        if let Some(slot) = topics.get(topic).and_then(|q| q.get(&queue_id)) {
            slot.notify.notify_waiters();
        }
    }

    /// Wakes every parked pull (shutdown).
    pub(crate) fn wake_all(&self) {
        for queues in self.topics.lock().values() {
            for slot in queues.values() {
                slot.notify.notify_waiters();
            }
        }
    }

    fn unsubscribe(&self, topic: &str, queue_id: i32) {
        let mut topics = self.topics.lock();
        let Some(queues) = topics.get_mut(topic) else {
            return;
        };
        if let Some(slot) = queues.get_mut(&queue_id) {
            slot.waiters -= 1;
            if slot.waiters == 0 {
                queues.remove(&queue_id);
            }
        }
        if queues.is_empty() {
            topics.remove(topic);
        }
    }

    #[cfg(test)]
    fn queues_watched(&self) -> usize {
        self.topics.lock().values().map(HashMap::len).sum()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.waiters.unsubscribe(&self.topic, self.queue_id);
    }
}

/// Parked pulls per connection. A parked pull no longer holds its connection's in-flight
/// slot, so without this one connection could park pulls until the broker-wide cap is
/// reached and every other consumer's empty pull were answered SYSTEM_BUSY. Only connections
/// with a parked pull have an entry; the last slot to go removes it.
#[derive(Debug)]
pub(crate) struct ParkedPerConnection {
    max: usize,
    counts: Mutex<HashMap<u64, (usize, Arc<Semaphore>)>>,
}

/// Parked pulls of one connection that may build and hold an answer at once. A woken pull
/// holds its answer (up to a pull's byte limit) until the connection takes it: without this
/// bound a peer that reads slowly, with thousands of pulls parked, had the broker hold a
/// response per pull, over a GiB per connection.
const ANSWERING_PER_CONNECTION: usize = 32;

/// One parked pull's share of its connection's budget; dropping it gives the share back.
#[derive(Debug)]
pub(crate) struct ParkSlot {
    owner: Arc<ParkedPerConnection>,
    conn_id: u64,
    /// Its connection's answering budget (see [`ANSWERING_PER_CONNECTION`]).
    pub(crate) answering: Arc<Semaphore>,
}

impl ParkedPerConnection {
    /// At most `max` parked pulls per connection.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// The cap per connection.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// A slot for one more parked pull on connection `conn_id`; `None` at the cap.
    pub(crate) fn try_take(self: &Arc<Self>, conn_id: u64) -> Option<ParkSlot> {
        let mut counts = self.counts.lock();
        let (count, answering) = counts
            .entry(conn_id)
            .or_insert_with(|| (0, Arc::new(Semaphore::new(ANSWERING_PER_CONNECTION))));
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ParkSlot {
            owner: Arc::clone(self),
            conn_id,
            answering: Arc::clone(answering),
        })
    }

    fn give_back(&self, conn_id: u64) {
        let mut counts = self.counts.lock();
        if let Some((count, _)) = counts.get_mut(&conn_id) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&conn_id);
            }
        }
    }

    #[cfg(test)]
    fn connections_tracked(&self) -> usize {
        self.counts.lock().len()
    }
}

impl Drop for ParkSlot {
    fn drop(&mut self) {
        self.owner.give_back(self.conn_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;

    #[tokio::test]
    async fn a_wake_reaches_an_enabled_waiter_and_entries_are_cleaned_up() {
        let w = Arc::new(PullWaiters::default());
        let sub = w.subscribe("T", 1);
        let other = w.subscribe("T", 2);
        {
            let mut notified = pin!(sub.notify().notified());
            notified.as_mut().enable();
            let waker = Arc::clone(&w);
            std::thread::spawn(move || waker.wake("T", 1))
                .join()
                .unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(5), notified)
                .await
                .expect("woken");
        }
        assert_eq!(w.queues_watched(), 2);
        drop(sub);
        drop(other);
        assert_eq!(w.queues_watched(), 0);
    }

    #[test]
    fn a_connection_at_its_parking_cap_is_refused_while_another_still_parks() {
        let parked = Arc::new(ParkedPerConnection::new(2));
        let first = parked.try_take(1).expect("first slot");
        let second = parked.try_take(1).expect("second slot");
        assert!(parked.try_take(1).is_none(), "over the cap");
        let other = parked.try_take(2).expect("another connection parks");
        drop(first);
        let again = parked.try_take(1).expect("a freed slot is reusable");
        drop((second, again, other));
        assert_eq!(
            parked.connections_tracked(),
            0,
            "no entry outlives its slots"
        );
    }
}
