//! `AllocateMessageQueueAveragely`, RocketMQ's default: consecutive blocks of the sorted
//! queues, the first `n % c` members taking one extra.

use sluice_protocol::remoting::body::MessageQueue;

/// The queues member `me` owns when `all` queues are shared among `members`. Both lists are
/// sorted here (queues by topic, broker, id; members as strings), as every RocketMQ client
/// does, so every member computes the same split. A member not in the list gets nothing.
///
/// ```
/// use sluice_client::{allocate_averagely, MessageQueue};
///
/// let qs: Vec<MessageQueue> = (0..5)
///     .map(|i| MessageQueue { topic: "T".into(), broker_name: "b".into(), queue_id: i })
///     .collect();
/// let members = ["c1".to_string(), "c2".to_string()];
/// let ids = |m: &str| allocate_averagely(&qs, &members, m).iter().map(|q| q.queue_id).collect::<Vec<_>>();
/// assert_eq!(ids("c1"), [0, 1, 2]);
/// assert_eq!(ids("c2"), [3, 4]);
/// ```
pub fn allocate_averagely(all: &[MessageQueue], members: &[String], me: &str) -> Vec<MessageQueue> {
    let mut queues = all.to_vec();
    queues.sort();
    let mut ids: Vec<&str> = members.iter().map(String::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    let Some(i) = ids.iter().position(|c| *c == me) else {
        return Vec::new();
    };
    let (n, c) = (queues.len(), ids.len());
    if i >= n {
        return Vec::new();
    }
    let modulo = n % c;
    let size = if n <= c {
        1
    } else if i < modulo {
        n / c + 1
    } else {
        n / c
    };
    let start = if i < modulo {
        i * size
    } else {
        i * size + modulo
    };
    let take = size.min(n - start);
    queues[start..start + take].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qs(n: i32) -> Vec<MessageQueue> {
        (0..n)
            .map(|queue_id| MessageQueue {
                topic: "T".into(),
                broker_name: "b".into(),
                queue_id,
            })
            .collect()
    }

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn every_queue_has_exactly_one_owner() {
        for n in 0..12 {
            for c in 1..6 {
                let mut owned: Vec<i32> = members(c)
                    .iter()
                    .flat_map(|m| allocate_averagely(&qs(n), &members(c), m))
                    .map(|q| q.queue_id)
                    .collect();
                owned.sort_unstable();
                assert_eq!(owned, (0..n).collect::<Vec<_>>(), "n={n} c={c}");
            }
        }
    }

    #[test]
    fn matches_rocketmq_for_eight_queues_and_three_members() {
        let ids = |m: &str| -> Vec<i32> {
            allocate_averagely(&qs(8), &members(3), m)
                .iter()
                .map(|q| q.queue_id)
                .collect()
        };
        assert_eq!(ids("c0"), [0, 1, 2]);
        assert_eq!(ids("c1"), [3, 4, 5]);
        assert_eq!(ids("c2"), [6, 7]);
        assert!(ids("stranger").is_empty());
        assert_eq!(allocate_averagely(&qs(1), &members(3), "c2"), []);
    }
}
