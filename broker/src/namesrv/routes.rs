//! The name server's tables (Java's `RouteInfoManager`): brokers by name, clusters, the queues
//! each broker holds per topic, and when each broker address last registered.
//!
//! Plain data behind one lock: every operation is a few map updates, and routes must be
//! consistent snapshots (a topic's queue data and the broker addresses it names).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use sluice_protocol::remoting::body::{
    BrokerData, ClusterInfo, QueueData, RegisterBrokerBody, TopicRouteData,
};

/// A broker address's registration.
#[derive(Debug, Clone)]
struct Live {
    broker_name: String,
    broker_id: i64,
    last_update: Instant,
    /// The connection it registered over; closing it removes the broker at once, as in Java.
    conn_id: u64,
}

/// One REGISTER_BROKER, already decoded.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub(crate) cluster: String,
    pub(crate) broker_name: String,
    pub(crate) broker_addr: String,
    pub(crate) broker_id: i64,
    pub(crate) body: RegisterBrokerBody,
    pub(crate) conn_id: u64,
}

/// Routes and liveness.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    brokers: BTreeMap<String, BrokerData>,
    clusters: BTreeMap<String, BTreeSet<String>>,
    topics: BTreeMap<String, BTreeMap<String, QueueData>>,
    live: HashMap<String, Live>,
    /// Routes (a topic's queue data on one broker name) held per broker name, kept with
    /// `topics` so the route bound is checked without walking every topic.
    routes_of: HashMap<String, usize>,
    /// The sum of `routes_of`.
    routes: usize,
}

/// What a registration may hold and add (see `NameServerConfig`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_brokers: usize,
    pub(crate) max_topic_routes: usize,
}

/// The topics of a registration that get routes: those with a name a client may use (up to
/// 255 bytes, `^[%|a-zA-Z0-9_-]+$`). Any other is skipped rather than kept at any length.
fn routable(
    body: &RegisterBrokerBody,
) -> impl Iterator<Item = (&String, &sluice_protocol::remoting::body::TopicConfig)> {
    body.topic_config_serialize_wrapper
        .topic_config_table
        .iter()
        .filter(|(name, _)| crate::topic::validate_name(name).is_ok())
}

/// Why a registration is not taken.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Names out of bounds, or no room for another broker: nothing of it is kept.
    Invalid(String),
    /// Its topics would pass `max_topic_routes`: a broker already live keeps its routes.
    Routes(String),
}

/// Longest broker and cluster name kept (RocketMQ's topic-name bound): each route keeps its
/// broker's name, so a long one multiplied by many topics was unbounded memory.
pub(crate) const MAX_NAME_LEN: usize = 127;
/// Longest broker address kept (`host:port`, an IPv6 host included).
pub(crate) const MAX_ADDR_LEN: usize = 255;

impl RouteTable {
    /// Keeps a live broker whose registration was refused for the route bound live (as its
    /// registration would), with the routes it had: refused whole, it expired after
    /// `broker_expiry` with every route, and could never come back (its routes no longer
    /// counted as its own). True when `reg`'s address is live under the same name.
    pub(crate) fn keep_alive(&mut self, reg: &Registration, now: Instant) -> bool {
        match self.live.get_mut(&reg.broker_addr) {
            Some(l) if l.broker_name == reg.broker_name && l.broker_id == reg.broker_id => {
                l.last_update = now;
                l.conn_id = reg.conn_id;
                true
            }
            _ => false,
        }
    }

    /// Why `reg` cannot be taken without passing `limits`, or holds names no broker sends.
    /// Checked before anything changes: a refused registration leaves the table as it was.
    pub(crate) fn refusal(&self, reg: &Registration, limits: Limits) -> Option<Refusal> {
        for (what, v, max) in [
            ("brokerName", &reg.broker_name, MAX_NAME_LEN),
            ("clusterName", &reg.cluster, MAX_NAME_LEN),
            ("brokerAddr", &reg.broker_addr, MAX_ADDR_LEN),
        ] {
            if v.is_empty() || v.len() > max {
                return Some(Refusal::Invalid(format!(
                    "{what} must be 1 to {max} bytes, not {}",
                    v.len()
                )));
            }
        }
        if !self.live.contains_key(&reg.broker_addr) && self.live.len() >= limits.max_brokers {
            return Some(Refusal::Invalid(format!(
                "the name server holds {} brokers, its max_brokers",
                limits.max_brokers
            )));
        }
        if reg.broker_id != 0 {
            return None; // a slave's topics are not taken
        }
        let adding = routable(&reg.body).count();
        let after = self.routes - self.routes_of(&reg.broker_name) - self.leaving(reg) + adding;
        (after > limits.max_topic_routes).then(|| {
            Refusal::Routes(format!(
                "registering {adding} topics would hold {after} topic routes, past max_topic_routes ({})",
                limits.max_topic_routes
            ))
        })
    }

    fn routes_of(&self, broker_name: &str) -> usize {
        self.routes_of.get(broker_name).copied().unwrap_or(0)
    }

    /// Routes `reg` takes away besides its own name's: those of the name its address was
    /// registered under before, when that address is the name's last (see `register`).
    fn leaving(&self, reg: &Registration) -> usize {
        let Some(old) = self.live.get(&reg.broker_addr) else {
            return 0;
        };
        if old.broker_name == reg.broker_name {
            return 0;
        }
        let last = self.brokers.get(&old.broker_name).is_some_and(|data| {
            data.broker_addrs
                .iter()
                .all(|(id, addr)| *id == old.broker_id && *addr == reg.broker_addr)
        });
        if last {
            self.routes_of(&old.broker_name)
        } else {
            0
        }
    }

    /// Records a registration. A master's registration replaces the topics of its broker name:
    /// our brokers always send their whole topic table, so a topic missing from it is gone.
    pub(crate) fn register(&mut self, reg: Registration, now: Instant) {
        // The address was registered under another broker name: it leaves that name first,
        // or the old name's route would stay with nothing live to ever remove it.
        if let Some(old) = self.live.get(&reg.broker_addr) {
            if old.broker_name != reg.broker_name {
                let (name, id) = (old.broker_name.clone(), old.broker_id);
                self.forget_addr(&name, id, &reg.broker_addr);
            }
        }
        // A broker name that moved to another cluster leaves the old one.
        if let Some(old) = self.brokers.get(&reg.broker_name) {
            if old.cluster != reg.cluster {
                let (name, cluster) = (reg.broker_name.clone(), old.cluster.clone());
                self.leave_cluster(&cluster, &name);
            }
        }
        self.clusters
            .entry(reg.cluster.clone())
            .or_default()
            .insert(reg.broker_name.clone());
        let data = self
            .brokers
            .entry(reg.broker_name.clone())
            .or_insert_with(|| BrokerData {
                broker_name: reg.broker_name.clone(),
                ..BrokerData::default()
            });
        data.cluster = reg.cluster.clone();
        // The same address under another id means the broker changed role: forget the old id.
        data.broker_addrs
            .retain(|id, addr| *addr != reg.broker_addr || *id == reg.broker_id);
        data.broker_addrs
            .insert(reg.broker_id, reg.broker_addr.clone());
        if reg.broker_id == 0 {
            self.replace_topics(&reg.broker_name, &reg.body);
        }
        self.live.insert(
            reg.broker_addr,
            Live {
                broker_name: reg.broker_name,
                broker_id: reg.broker_id,
                last_update: now,
                conn_id: reg.conn_id,
            },
        );
    }

    fn replace_topics(&mut self, broker_name: &str, body: &RegisterBrokerBody) {
        let table = &body.topic_config_serialize_wrapper.topic_config_table;
        self.remove_queue_data(broker_name, |topic| !table.contains_key(topic));
        let skipped = table.len() - routable(body).count();
        if skipped > 0 {
            tracing::warn!(
                broker_name,
                skipped,
                "topics with names no client may use are not routed"
            );
        }
        for (name, cfg) in routable(body) {
            let queue = QueueData {
                broker_name: broker_name.to_owned(),
                perm: cfg.perm,
                read_queue_nums: cfg.read_queue_nums,
                topic_sys_flag: cfg.topic_sys_flag,
                write_queue_nums: cfg.write_queue_nums,
            };
            let added = self
                .topics
                .entry(name.clone())
                .or_default()
                .insert(broker_name.to_owned(), queue)
                .is_none();
            if added {
                *self.routes_of.entry(broker_name.to_owned()).or_default() += 1;
                self.routes += 1;
            }
        }
    }

    /// Removes `broker_name`'s queue data from every topic `which` selects; drops empty topics.
    fn remove_queue_data(&mut self, broker_name: &str, which: impl Fn(&str) -> bool) {
        if self.routes_of(broker_name) == 0 {
            return;
        }
        let mut removed = 0;
        self.topics.retain(|topic, queues| {
            if which(topic) && queues.remove(broker_name).is_some() {
                removed += 1;
            }
            !queues.is_empty()
        });
        self.routes -= removed;
        if let Some(n) = self.routes_of.get_mut(broker_name) {
            *n -= removed;
            if *n == 0 {
                self.routes_of.remove(broker_name);
            }
        }
    }

    /// Removes one broker address (UNREGISTER_BROKER, expiry, closed connection). When a broker
    /// name has no address left, it leaves its cluster and every route.
    pub(crate) fn remove_addr(&mut self, broker_addr: &str) -> bool {
        let Some(live) = self.live.remove(broker_addr) else {
            return false;
        };
        self.forget_addr(&live.broker_name, live.broker_id, broker_addr);
        true
    }

    /// Takes `broker_addr` (as `broker_id`) out of `name`'s addresses; a name left without
    /// any leaves its cluster and every route.
    fn forget_addr(&mut self, name: &str, broker_id: i64, broker_addr: &str) {
        let now_empty = match self.brokers.get_mut(name) {
            Some(data) => {
                if data.broker_addrs.get(&broker_id).map(String::as_str) == Some(broker_addr) {
                    data.broker_addrs.remove(&broker_id);
                }
                data.broker_addrs.is_empty()
            }
            None => false,
        };
        if now_empty {
            self.brokers.remove(name);
            self.clusters.retain(|_, names| {
                names.remove(name);
                !names.is_empty()
            });
            self.remove_queue_data(name, |_| true);
        }
    }

    /// Removes `name` from `cluster`'s members; drops the cluster when it has none left.
    fn leave_cluster(&mut self, cluster: &str, name: &str) {
        if let Some(names) = self.clusters.get_mut(cluster) {
            names.remove(name);
            if names.is_empty() {
                self.clusters.remove(cluster);
            }
        }
    }

    /// Addresses that did not register within `expiry`.
    pub(crate) fn expired(&self, now: Instant, expiry: Duration) -> Vec<String> {
        self.live
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.last_update) > expiry)
            .map(|(addr, _)| addr.clone())
            .collect()
    }

    /// Addresses that registered over connection `conn_id`.
    pub(crate) fn registered_over(&self, conn_id: u64) -> Vec<String> {
        self.live
            .iter()
            .filter(|(_, l)| l.conn_id == conn_id)
            .map(|(addr, _)| addr.clone())
            .collect()
    }

    /// The route of `topic`: its queues on every broker and those brokers' addresses.
    pub(crate) fn route(&self, topic: &str) -> Option<TopicRouteData> {
        let queues = self.topics.get(topic).filter(|q| !q.is_empty())?;
        let queue_datas: Vec<QueueData> = queues.values().cloned().collect();
        let broker_datas = queues
            .keys()
            .filter_map(|name| self.brokers.get(name).cloned())
            .collect();
        Some(TopicRouteData {
            broker_datas,
            queue_datas,
            ..TopicRouteData::default()
        })
    }

    /// Every topic some registered broker serves, sorted.
    pub(crate) fn topic_names(&self) -> Vec<String> {
        self.topics
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Every broker and cluster.
    pub(crate) fn cluster_info(&self) -> ClusterInfo {
        ClusterInfo {
            broker_addr_table: self.brokers.clone(),
            cluster_addr_table: self.clusters.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::remoting::body::TopicConfig;

    fn reg(name: &str, addr: &str, id: i64, topics: &[(&str, i32)], conn: u64) -> Registration {
        let mut body = RegisterBrokerBody::default();
        for (t, q) in topics {
            body.topic_config_serialize_wrapper
                .topic_config_table
                .insert((*t).to_owned(), TopicConfig::new(*t, *q, 6));
        }
        Registration {
            cluster: "C".into(),
            broker_name: name.into(),
            broker_addr: addr.into(),
            broker_id: id,
            body,
            conn_id: conn,
        }
    }

    #[test]
    fn a_topic_spans_brokers_and_shrinks_when_one_leaves() {
        let mut t = RouteTable::default();
        let now = Instant::now();
        t.register(reg("a", "h1:1", 0, &[("T", 4)], 1), now);
        t.register(reg("b", "h2:1", 0, &[("T", 2), ("U", 1)], 2), now);
        let r = t.route("T").unwrap();
        assert_eq!(r.queue_datas.len(), 2);
        assert_eq!(r.broker_datas.len(), 2);
        assert!(t.remove_addr("h2:1"));
        assert_eq!(t.route("T").unwrap().queue_datas.len(), 1);
        assert!(t.route("U").is_none());
        assert!(!t.cluster_info().cluster_addr_table["C"].contains("b"));
    }

    #[test]
    fn re_registration_drops_topics_the_broker_no_longer_has() {
        let mut t = RouteTable::default();
        let now = Instant::now();
        t.register(reg("a", "h1:1", 0, &[("T", 4), ("U", 1)], 1), now);
        t.register(reg("a", "h1:1", 0, &[("T", 4)], 1), now);
        assert!(t.route("U").is_none());
        assert_eq!(t.registered_over(1), vec!["h1:1".to_string()]);
    }

    /// An address registered again under another broker name kept its old name's route: no
    /// live entry pointed at it any more, so expiry, close and unregister never removed it,
    /// and clients kept routing to a dead address.
    #[test]
    fn an_address_registered_under_a_new_name_leaves_its_old_name_and_route() {
        let mut t = RouteTable::default();
        let now = Instant::now();
        t.register(reg("a", "h1:1", 0, &[("T", 4)], 1), now);
        t.register(reg("b", "h1:1", 0, &[("U", 1)], 2), now);
        assert!(t.route("T").is_none(), "the old name's route is gone");
        assert!(!t.cluster_info().cluster_addr_table["C"].contains("a"));
        assert!(t.remove_addr("h1:1"));
        assert!(t.route("U").is_none());
        assert!(t.cluster_info().cluster_addr_table.is_empty());
    }

    #[test]
    fn a_broker_that_moves_to_another_cluster_leaves_the_old_one() {
        let mut t = RouteTable::default();
        let now = Instant::now();
        t.register(reg("a", "h1:1", 0, &[("T", 4)], 1), now);
        let mut moved = reg("a", "h1:1", 0, &[("T", 4)], 1);
        moved.cluster = "D".into();
        t.register(moved, now);
        let clusters = t.cluster_info().cluster_addr_table;
        assert!(!clusters.contains_key("C"), "{clusters:?}");
        assert!(clusters["D"].contains("a"));
    }

    /// The running route counts agree with the table after every kind of change.
    fn assert_counts(t: &RouteTable) {
        let walked: usize = t.topics.values().map(BTreeMap::len).sum();
        assert_eq!(t.routes, walked);
        for (name, n) in &t.routes_of {
            let mine = t.topics.values().filter(|q| q.contains_key(name)).count();
            assert_eq!(*n, mine, "{name}");
        }
    }

    const LIMITS: Limits = Limits {
        max_brokers: 8,
        max_topic_routes: 3,
    };

    #[test]
    fn route_counts_follow_registrations_removals_and_renames() {
        let mut t = RouteTable::default();
        let now = Instant::now();
        t.register(reg("a", "h1:1", 0, &[("T", 4), ("U", 1)], 1), now);
        t.register(reg("b", "h2:1", 0, &[("T", 2)], 2), now);
        assert_counts(&t);
        assert_eq!(t.routes, 3);
        t.register(reg("a", "h1:1", 0, &[("T", 4), ("V", 1)], 1), now);
        assert_counts(&t);
        t.register(reg("c", "h2:1", 0, &[("W", 1)], 2), now);
        assert_counts(&t);
        assert_eq!(t.routes, 3, "b left with its address: {:?}", t.routes_of);
        assert!(t.remove_addr("h1:1"));
        assert_counts(&t);
        assert_eq!(t.routes, 1);
    }

    /// An address re-registering under a new name leaves its old name's routes (see
    /// `register`), so the bound must not count them: a broker renamed at the bound was
    /// refused although the table would not grow.
    #[test]
    fn a_renamed_address_at_the_route_bound_is_not_refused() {
        let mut t = RouteTable::default();
        let now = Instant::now();
        t.register(reg("a", "h1:1", 0, &[("T", 4), ("U", 1), ("V", 1)], 1), now);
        let renamed = reg("b", "h1:1", 0, &[("T", 4), ("U", 1), ("V", 1)], 1);
        assert!(t.refusal(&renamed, LIMITS).is_none());
        // Another address still serving the old name keeps its routes: they count.
        t.register(reg("a", "h3:1", 1, &[], 3), now);
        assert!(matches!(
            t.refusal(&renamed, LIMITS),
            Some(Refusal::Routes(_))
        ));
        let grown = reg("a", "h1:1", 0, &[("T", 4), ("U", 1), ("V", 1), ("W", 1)], 1);
        assert!(matches!(
            t.refusal(&grown, LIMITS),
            Some(Refusal::Routes(_))
        ));
    }

    #[test]
    fn silent_brokers_expire() {
        let mut t = RouteTable::default();
        let then = Instant::now();
        t.register(reg("a", "h1:1", 0, &[("T", 4)], 1), then);
        let later = then + Duration::from_secs(10);
        assert!(t.expired(later, Duration::from_secs(20)).is_empty());
        assert_eq!(
            t.expired(later, Duration::from_secs(5)),
            vec!["h1:1".to_string()]
        );
    }
}
