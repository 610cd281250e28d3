//! Topic routes as a client uses them: which queues a producer may write (masters with the
//! write perm), which a consumer may read, and where each broker's master is.

use std::collections::HashMap;

use sluice_protocol::remoting::body::{perm, MessageQueue, TopicRouteData};

/// A topic's route, digested.
#[derive(Debug, Clone)]
pub(crate) struct TopicRoute {
    /// Queues producers may write, sorted by (broker name, queue id).
    pub(crate) write_queues: Vec<MessageQueue>,
    /// Queues consumers may read, sorted by (broker name, queue id).
    pub(crate) read_queues: Vec<MessageQueue>,
    /// Broker name to master address.
    masters: HashMap<String, String>,
    /// Every broker address (masters and slaves).
    pub(crate) addrs: Vec<String>,
}

impl TopicRoute {
    /// Digests `data` for `topic`. With `cap` (a route borrowed from `TBW102` for a topic the
    /// broker will create on first send), each broker offers at most `cap` queues.
    pub(crate) fn new(topic: &str, data: &TopicRouteData, cap: Option<i32>) -> Self {
        let mut masters = HashMap::new();
        let mut addrs = Vec::new();
        for b in &data.broker_datas {
            if let Some(m) = b.master_addr() {
                masters.insert(b.broker_name.clone(), m.to_owned());
            }
            addrs.extend(b.broker_addrs.values().cloned());
        }
        addrs.sort();
        addrs.dedup();
        let mut write_queues = Vec::new();
        let mut read_queues = Vec::new();
        for q in &data.queue_datas {
            let limit = |n: i32| cap.map_or(n, |c| n.min(c)).max(0);
            if perm::is_writeable(q.perm) && masters.contains_key(&q.broker_name) {
                write_queues.extend(queues(topic, &q.broker_name, limit(q.write_queue_nums)));
            }
            if perm::is_readable(q.perm) {
                read_queues.extend(queues(topic, &q.broker_name, limit(q.read_queue_nums)));
            }
        }
        write_queues.sort();
        read_queues.sort();
        Self {
            write_queues,
            read_queues,
            masters,
            addrs,
        }
    }

    /// The master address of a broker of this route.
    #[cfg(test)]
    pub(crate) fn master(&self, broker_name: &str) -> Option<&str> {
        self.masters.get(broker_name).map(String::as_str)
    }

    /// Broker name to master address.
    pub(crate) fn masters(&self) -> impl Iterator<Item = (&str, &str)> {
        self.masters.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

fn queues(topic: &str, broker: &str, n: i32) -> Vec<MessageQueue> {
    (0..n)
        .map(|queue_id| MessageQueue {
            topic: topic.to_owned(),
            broker_name: broker.to_owned(),
            queue_id,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::remoting::body::{BrokerData, QueueData};

    fn data() -> TopicRouteData {
        let broker = |name: &str, addrs: &[(i64, &str)]| BrokerData {
            broker_addrs: addrs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            broker_name: name.into(),
            ..BrokerData::default()
        };
        let queue = |name: &str, perm, r, w| QueueData {
            broker_name: name.into(),
            perm,
            read_queue_nums: r,
            write_queue_nums: w,
            topic_sys_flag: 0,
        };
        TopicRouteData {
            broker_datas: vec![
                broker("b", &[(0, "b:1"), (1, "b:2")]),
                broker("a", &[(0, "a:1")]),
                broker("slave-only", &[(1, "s:1")]),
            ],
            queue_datas: vec![
                queue("b", 6, 2, 2),
                queue("a", 6, 4, 3),
                queue("slave-only", 6, 1, 1),
                queue("ro", 4, 1, 1),
            ],
            ..TopicRouteData::default()
        }
    }

    #[test]
    fn producers_write_only_to_masters_with_the_write_perm() {
        let r = TopicRoute::new("T", &data(), None);
        let w: Vec<(String, i32)> = r
            .write_queues
            .iter()
            .map(|q| (q.broker_name.clone(), q.queue_id))
            .collect();
        let want = [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)];
        assert_eq!(w, want.map(|(b, i)| (b.to_owned(), i)));
        assert_eq!(r.read_queues.len(), 4 + 2 + 1 + 1);
        assert_eq!(r.master("b"), Some("b:1"));
        assert_eq!(r.master("slave-only"), None);
        assert_eq!(r.addrs, ["a:1", "b:1", "b:2", "s:1"]);
    }

    #[test]
    fn a_borrowed_default_route_is_capped() {
        let r = TopicRoute::new("New", &data(), Some(1));
        assert!(r
            .write_queues
            .iter()
            .all(|q| q.queue_id == 0 && q.topic == "New"));
        assert_eq!(r.write_queues.len(), 2);
    }
}
