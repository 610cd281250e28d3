//! Producer and consumer groups (Java's `ProducerManager` and `ConsumerManager`).
//!
//! Membership is per connection: a client registers over each connection by heartbeat and
//! leaves by UNREGISTER_CLIENT, by closing the connection, or by staying silent longer than
//! `client_expiry`. Every operation returns the consumer groups whose set of client ids changed,
//! so the caller can send NOTIFY_CONSUMER_IDS_CHANGED to their members (they rebalance at once
//! instead of within 20 s).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_protocol::remoting::body::{
    ConsumeFromWhere, ConsumeType, ConsumerData, HeartbeatData, MessageModel, SubscriptionData,
};

use crate::remoting::ConnectionHandle;

/// One client over one connection.
#[derive(Debug, Clone)]
struct Member {
    conn: ConnectionHandle,
    client_id: String,
    last_seen: Instant,
    /// Announced by a heartbeat. False for a producer only noted from its sends: such an
    /// entry going stale says nothing about the connection, which may carry a healthy
    /// heartbeating consumer, so it is dropped without closing the connection.
    heartbeat: bool,
    /// The ACL access key of the request that registered it (None with ACL off, or from a
    /// trusted address): transaction checks go only to members whose account may publish to
    /// the transaction's topic.
    access_key: Option<String>,
    /// What its last heartbeat's frame said it is (admin listings).
    meta: ClientMeta,
}

/// A client's language and version, from the frame of its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientMeta {
    /// `JAVA`, `CPP`, ...; `OTHER` when it never sent a heartbeat.
    pub(crate) language: &'static str,
    /// Its version ordinal (0 when unknown).
    pub(crate) version: i32,
}

impl Default for ClientMeta {
    fn default() -> Self {
        Self {
            language: "OTHER",
            version: 0,
        }
    }
}

/// A consumer group. Like Java, one subscription table per group: members are expected to
/// subscribe alike, and the latest heartbeat wins.
#[derive(Debug, Default)]
struct ConsumerGroup {
    members: HashMap<u64, Member>,
    subscriptions: HashMap<String, SubscriptionData>,
    message_model: MessageModel,
    consume_type: ConsumeType,
    consume_from_where: ConsumeFromWhere,
}

impl ConsumerGroup {
    fn client_ids(&self) -> BTreeSet<String> {
        self.members.values().map(|m| m.client_id.clone()).collect()
    }
}

#[derive(Debug, Default)]
struct Groups {
    producers: HashMap<String, HashMap<u64, Member>>,
    consumers: HashMap<String, ConsumerGroup>,
    /// The groups each connection is a member of: bounds a connection's memberships and lets
    /// a closing connection leave only its own groups instead of a walk over all of them.
    by_conn: HashMap<u64, ConnGroups>,
    /// (group, client id) of consumers whose last connection left the group, until
    /// [`ClientManager::take_departed`] (called right after each removal) takes them.
    departed: Vec<(String, String)>,
}

/// The producer and consumer groups one connection is a member of.
#[derive(Debug, Default)]
struct ConnGroups {
    producers: HashSet<String>,
    consumers: HashSet<String>,
}

impl ConnGroups {
    fn len(&self) -> usize {
        self.producers.len() + self.consumers.len()
    }
}

/// A connection would be a member of more groups than `max_groups_per_connection` allows.
/// Each membership keeps a copy of the client id and the group name until the connection
/// closes or goes silent, so without a bound one connection could register groups by the
/// million, a heartbeat or a send at a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this connection would be a member of {would_be} producer and consumer groups, \
     at most {max} ([broker] max_groups_per_connection)"
)]
pub(crate) struct TooManyGroups {
    pub(crate) would_be: usize,
    pub(crate) max: usize,
}

/// One member connection of a group, as `mqadmin consumerConnection` and
/// `producerConnection` show it (Java's `Connection`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClientConnection {
    /// The client's id.
    pub client_id: String,
    /// Its address as the broker sees it.
    pub client_addr: String,
    /// `JAVA`, `CPP`, ... from its heartbeat's frame (`OTHER` when it never sent one).
    pub language: &'static str,
    /// Its version ordinal, from the same frame (0 when unknown).
    pub version: i32,
}

/// A consumer group's members and settings (Java's `ConsumerConnection`).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConsumerConnection {
    /// Its members.
    pub connection_set: Vec<ClientConnection>,
    /// Its subscriptions by topic.
    pub subscription_table: std::collections::BTreeMap<String, SubscriptionData>,
    /// Push, pull or pop.
    pub consume_type: ConsumeType,
    /// Clustering or broadcasting.
    pub message_model: MessageModel,
    /// Where members start without an offset.
    pub consume_from_where: ConsumeFromWhere,
}

/// What a consumer group looks like now (for admin and later crates).
#[derive(Debug, Clone)]
pub struct ConsumerGroupInfo {
    /// Clustering or broadcasting.
    pub message_model: MessageModel,
    /// Push, pull or pop.
    pub consume_type: ConsumeType,
    /// Where members start without an offset.
    pub consume_from_where: ConsumeFromWhere,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Client ids, sorted.
    pub client_ids: Vec<String>,
}

/// Every group this broker knows.
#[derive(Debug)]
pub(crate) struct ClientManager {
    groups: Mutex<Groups>,
    max_groups_per_connection: usize,
}

impl Default for ClientManager {
    fn default() -> Self {
        Self::new(crate::config::DEFAULT_MAX_GROUPS_PER_CONNECTION)
    }
}

impl ClientManager {
    /// A manager allowing each connection `max_groups_per_connection` memberships. A
    /// heartbeat past the bound is refused whole (none of its groups is refreshed, and they
    /// expire after `client_expiry` if the client keeps announcing too many).
    pub(crate) fn new(max_groups_per_connection: usize) -> Self {
        Self {
            groups: Mutex::default(),
            max_groups_per_connection,
        }
    }

    /// Registers (or refreshes) everything a heartbeat announces over `conn`. Refused, with
    /// nothing registered, when the connection would then be a member of too many groups.
    pub(crate) fn heartbeat(
        &self,
        conn: &ConnectionHandle,
        hb: &HeartbeatData,
        now: Instant,
        access_key: Option<&str>,
        meta: ClientMeta,
    ) -> Result<Vec<String>, TooManyGroups> {
        let member = Member {
            conn: conn.clone(),
            client_id: hb.client_id.clone(),
            last_seen: now,
            heartbeat: true,
            access_key: access_key.map(str::to_owned),
            meta,
        };
        let mut g = self.groups.lock();
        self.check_room(&g, conn.id(), hb)?;
        if hb.producer_data_set.is_empty() && hb.consumer_data_set.is_empty() {
            // No entry for a connection of no group: one made after the connection closed
            // (a heartbeat finishing late) would never be removed.
            return Ok(Vec::new());
        }
        let mut changed = Vec::new();
        let Groups {
            producers,
            consumers,
            by_conn,
            ..
        } = &mut *g;
        let index = by_conn.entry(conn.id()).or_default();
        for p in &hb.producer_data_set {
            producers
                .entry(p.group_name.clone())
                .or_default()
                .insert(conn.id(), member.clone());
            index.producers.insert(p.group_name.clone());
        }
        for c in &hb.consumer_data_set {
            let group = consumers.entry(c.group_name.clone()).or_default();
            let before = group.client_ids();
            group.members.insert(conn.id(), member.clone());
            let topics_changed = update_group(group, c);
            if topics_changed || group.client_ids() != before {
                changed.push(c.group_name.clone());
            }
            index.consumers.insert(c.group_name.clone());
        }
        Ok(changed)
    }

    /// Refuses a heartbeat after which `conn_id` would be a member of too many groups (asked
    /// before the heartbeat creates retry topics; `heartbeat` asks again under its lock).
    pub(crate) fn room_for(&self, conn_id: u64, hb: &HeartbeatData) -> Result<(), TooManyGroups> {
        self.check_room(&self.groups.lock(), conn_id, hb)
    }

    fn check_room(
        &self,
        g: &Groups,
        conn_id: u64,
        hb: &HeartbeatData,
    ) -> Result<(), TooManyGroups> {
        let empty = ConnGroups::default();
        let have = g.by_conn.get(&conn_id).unwrap_or(&empty);
        let new_producers: HashSet<&str> = hb
            .producer_data_set
            .iter()
            .map(|p| p.group_name.as_str())
            .filter(|name| !have.producers.contains(*name))
            .collect();
        let new_consumers: HashSet<&str> = hb
            .consumer_data_set
            .iter()
            .map(|c| c.group_name.as_str())
            .filter(|name| !have.consumers.contains(*name))
            .collect();
        let would_be = have.len() + new_producers.len() + new_consumers.len();
        if would_be > self.max_groups_per_connection {
            return Err(TooManyGroups {
                would_be,
                max: self.max_groups_per_connection,
            });
        }
        Ok(())
    }

    /// Notes that `conn` sends for a producer group (C++ producers heartbeat late, and a
    /// transaction check-back needs a producer connection). A heartbeat's client id is kept;
    /// sending counts as a sign of life, so a producer that never heartbeats is not expired
    /// while it keeps sending. When an entry only noted here expires, it leaves its group but
    /// its connection stays open (see `Member::heartbeat`). Refused for a new group when the
    /// connection is a member of as many groups as it may be.
    pub(crate) fn note_producer(
        &self,
        conn: &ConnectionHandle,
        group: &str,
        now: Instant,
        access_key: Option<&str>,
    ) -> Result<(), TooManyGroups> {
        let mut g = self.groups.lock();
        let existing = g
            .producers
            .get_mut(group)
            .and_then(|members| members.get_mut(&conn.id()));
        if let Some(m) = existing {
            m.last_seen = now;
            if m.access_key.as_deref() != access_key {
                m.access_key = access_key.map(str::to_owned);
            }
            return Ok(());
        }
        let have = g.by_conn.get(&conn.id()).map_or(0, ConnGroups::len);
        if have >= self.max_groups_per_connection {
            return Err(TooManyGroups {
                would_be: have + 1,
                max: self.max_groups_per_connection,
            });
        }
        // A new member only sent for is listed with what the connection's heartbeats said.
        let member = Member {
            conn: conn.clone(),
            client_id: conn.remote_addr().to_string(),
            last_seen: now,
            heartbeat: false,
            access_key: access_key.map(str::to_owned),
            meta: meta_of(&g, conn.id()),
        };
        g.producers
            .entry(group.to_owned())
            .or_default()
            .insert(conn.id(), member);
        g.by_conn
            .entry(conn.id())
            .or_default()
            .producers
            .insert(group.to_owned());
        Ok(())
    }

    /// The open connections of a producer group, each with the access key that registered it.
    pub(crate) fn producer_members(&self, group: &str) -> Vec<(ConnectionHandle, Option<String>)> {
        self.groups
            .lock()
            .producers
            .get(group)
            .map(|p| {
                p.values()
                    .filter(|m| !m.conn.is_closed())
                    .map(|m| (m.conn.clone(), m.access_key.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// UNREGISTER_CLIENT: removes `conn` from the named groups.
    pub(crate) fn unregister(
        &self,
        conn: &ConnectionHandle,
        producer_group: Option<&str>,
        consumer_group: Option<&str>,
    ) -> Vec<String> {
        let mut g = self.groups.lock();
        if let Some(p) = producer_group {
            remove_producer(&mut g, p, conn.id());
        }
        let mut changed = Vec::new();
        if let Some(c) = consumer_group {
            if remove_consumer(&mut g, c, conn.id()) {
                changed.push(c.to_owned());
            }
        }
        changed
    }

    /// Removes a closed connection from every group it is a member of.
    pub(crate) fn remove_connection(&self, conn_id: u64) -> Vec<String> {
        let mut g = self.groups.lock();
        let Some(mine) = g.by_conn.remove(&conn_id) else {
            return Vec::new();
        };
        for p in &mine.producers {
            remove_producer(&mut g, p, conn_id);
        }
        mine.consumers
            .into_iter()
            .filter(|c| remove_consumer(&mut g, c, conn_id))
            .collect()
    }

    /// The (group, client id) of consumers whose last connection left their group since the
    /// last call (their orderly queue locks are released at once, not after they lapse).
    pub(crate) fn take_departed(&self) -> Vec<(String, String)> {
        std::mem::take(&mut self.groups.lock().departed)
    }

    /// Removes members silent for longer than `expiry`; returns the changed consumer groups and
    /// the connections of expired heartbeat members (the caller closes them, as Java does).
    pub(crate) fn expire(
        &self,
        now: Instant,
        expiry: Duration,
    ) -> (Vec<String>, Vec<ConnectionHandle>) {
        let mut dropped: HashMap<u64, ConnectionHandle> = HashMap::new();
        let mut g = self.groups.lock();
        let Groups {
            producers,
            consumers,
            by_conn,
            departed,
        } = &mut *g;
        for (name, members) in producers.iter_mut() {
            for stale in take_stale(members, now, expiry) {
                unindex(by_conn, stale.conn.id(), |c| c.producers.remove(name));
                if stale.heartbeat {
                    dropped.insert(stale.conn.id(), stale.conn);
                }
            }
        }
        producers.retain(|_, m| !m.is_empty());
        let mut changed = Vec::new();
        for (name, group) in consumers.iter_mut() {
            let before = group.client_ids();
            for stale in take_stale(&mut group.members, now, expiry) {
                unindex(by_conn, stale.conn.id(), |c| c.consumers.remove(name));
                if stale.heartbeat {
                    dropped.insert(stale.conn.id(), stale.conn);
                }
            }
            let after = group.client_ids();
            if after != before {
                note_departed(departed, name, &before, &after);
                changed.push(name.clone());
            }
        }
        consumers.retain(|_, c| !c.members.is_empty());
        (changed, dropped.into_values().collect())
    }

    /// Client ids of a consumer group, sorted and without duplicates.
    pub(crate) fn consumer_ids(&self, group: &str) -> Vec<String> {
        self.groups
            .lock()
            .consumers
            .get(group)
            .map(|c| c.client_ids().into_iter().collect())
            .unwrap_or_default()
    }

    /// Connections of a consumer group's members.
    pub(crate) fn consumer_connections(&self, group: &str) -> Vec<ConnectionHandle> {
        self.groups
            .lock()
            .consumers
            .get(group)
            .map(|c| c.members.values().map(|m| m.conn.clone()).collect())
            .unwrap_or_default()
    }

    /// Connections of a producer group's members that are still open.
    #[cfg(test)]
    pub(crate) fn producer_connections(&self, group: &str) -> Vec<ConnectionHandle> {
        self.producer_members(group)
            .into_iter()
            .map(|(conn, _)| conn)
            .collect()
    }

    /// The group's registered subscription of `topic`.
    pub(crate) fn subscription(&self, group: &str, topic: &str) -> Option<SubscriptionData> {
        self.groups
            .lock()
            .consumers
            .get(group)
            .and_then(|c| c.subscriptions.get(topic).cloned())
    }

    /// A consumer group's members and settings; `None` when it has no member.
    pub(crate) fn consumer_connection(&self, group: &str) -> Option<ConsumerConnection> {
        let g = self.groups.lock();
        // Groups leave the map as their last member goes: one here has members.
        let c = g.consumers.get(group)?;
        Some(ConsumerConnection {
            connection_set: connections(c.members.values()),
            subscription_table: c
                .subscriptions
                .iter()
                .map(|(t, s)| (t.clone(), s.clone()))
                .collect(),
            consume_type: c.consume_type,
            message_model: c.message_model,
            consume_from_where: c.consume_from_where,
        })
    }

    /// A producer group's member connections; empty when it has none.
    pub(crate) fn producer_connection(&self, group: &str) -> Vec<ClientConnection> {
        let g = self.groups.lock();
        g.producers
            .get(group)
            .map_or_else(Vec::new, |members| connections(members.values()))
    }

    /// The groups with a member subscribing to `topic`.
    pub(crate) fn groups_subscribing(&self, topic: &str) -> std::collections::BTreeSet<String> {
        self.groups
            .lock()
            .consumers
            .iter()
            .filter(|(_, c)| c.subscriptions.contains_key(topic))
            .map(|(g, _)| g.clone())
            .collect()
    }

    /// Whether the consumer group has members.
    pub(crate) fn has_consumer_group(&self, group: &str) -> bool {
        self.groups.lock().consumers.contains_key(group)
    }

    /// A description of a consumer group.
    pub(crate) fn consumer_group_info(&self, group: &str) -> Option<ConsumerGroupInfo> {
        let g = self.groups.lock();
        let c = g.consumers.get(group)?;
        let mut topics: Vec<String> = c.subscriptions.keys().cloned().collect();
        topics.sort();
        Some(ConsumerGroupInfo {
            message_model: c.message_model,
            consume_type: c.consume_type,
            consume_from_where: c.consume_from_where,
            topics,
            client_ids: c.client_ids().into_iter().collect(),
        })
    }
}

/// What the heartbeats over connection `id` said, from any group it is a member of.
fn meta_of(g: &Groups, id: u64) -> ClientMeta {
    let Some(mine) = g.by_conn.get(&id) else {
        return ClientMeta::default();
    };
    let producers = mine
        .producers
        .iter()
        .filter_map(|p| g.producers.get(p)?.get(&id));
    let consumers = mine
        .consumers
        .iter()
        .filter_map(|c| g.consumers.get(c)?.members.get(&id));
    producers
        .chain(consumers)
        .find(|m| m.heartbeat)
        .map_or_else(ClientMeta::default, |m| m.meta)
}

/// Members as admin listings show them, sorted by client id.
fn connections<'a>(members: impl Iterator<Item = &'a Member>) -> Vec<ClientConnection> {
    let mut out: Vec<ClientConnection> = members
        .map(|m| {
            let ClientMeta { language, version } = m.meta;
            // Names newer than Java 4.9.3's enum are listed as OTHER: an older admin tool
            // would fail to read the whole listing over one unknown name (our responses'
            // frames say JAVA for the same reason).
            let language = match language {
                "RUST" | "NODE_JS" => "OTHER",
                known => known,
            };
            ClientConnection {
                client_id: m.client_id.clone(),
                client_addr: m.conn.remote_addr().to_string(),
                language,
                version,
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.client_id, &a.client_addr).cmp(&(&b.client_id, &b.client_addr)));
    out
}

/// Copies a heartbeat's group settings and subscriptions; true when the subscribed topics
/// changed. RocketMQ's broker notifies the members then too: a member that added or dropped a
/// topic has the others rebalance at once, not at their next timer. (As there, members that
/// subscribe differently, in a rolling deploy say, flip the set at each heartbeat.) Tag
/// subscriptions are normalised: C++ clients send `atoi(tag)` as codes, so codes are
/// recomputed from `subString`.
fn update_group(group: &mut ConsumerGroup, c: &ConsumerData) -> bool {
    group.message_model = c.message_model;
    group.consume_type = c.consume_type;
    group.consume_from_where = c.consume_from_where;
    let mut subs = HashMap::with_capacity(c.subscription_data_set.len());
    for s in &c.subscription_data_set {
        let s = s.clone().normalized();
        // Keep a newer version we already hold (a stale member's late heartbeat).
        let keep = group
            .subscriptions
            .get(&s.topic)
            .filter(|old| old.sub_version > s.sub_version)
            .cloned();
        subs.insert(s.topic.clone(), keep.unwrap_or(s));
    }
    let topics_changed = subs.len() != group.subscriptions.len()
        || subs.keys().any(|t| !group.subscriptions.contains_key(t));
    group.subscriptions = subs;
    topics_changed
}

/// Removes and returns the members silent for longer than `expiry` (the caller closes the
/// connections of those announced by a heartbeat).
fn take_stale(members: &mut HashMap<u64, Member>, now: Instant, expiry: Duration) -> Vec<Member> {
    let stale: Vec<u64> = members
        .iter()
        .filter(|(_, m)| now.saturating_duration_since(m.last_seen) > expiry)
        .map(|(id, _)| *id)
        .collect();
    stale
        .into_iter()
        .filter_map(|id| members.remove(&id))
        .collect()
}

/// Takes a membership out of connection `conn_id`'s index entry, dropping the entry once it
/// holds none.
fn unindex(
    by_conn: &mut HashMap<u64, ConnGroups>,
    conn_id: u64,
    remove: impl FnOnce(&mut ConnGroups) -> bool,
) {
    if let Some(c) = by_conn.get_mut(&conn_id) {
        remove(c);
        if c.len() == 0 {
            by_conn.remove(&conn_id);
        }
    }
}

fn remove_producer(g: &mut Groups, group: &str, conn_id: u64) {
    unindex(&mut g.by_conn, conn_id, |c| c.producers.remove(group));
    if let Some(members) = g.producers.get_mut(group) {
        members.remove(&conn_id);
        if members.is_empty() {
            g.producers.remove(group);
        }
    }
}

/// Removes a member; true when the group's client-id set changed.
fn remove_consumer(g: &mut Groups, group: &str, conn_id: u64) -> bool {
    unindex(&mut g.by_conn, conn_id, |c| c.consumers.remove(group));
    let Some(c) = g.consumers.get_mut(group) else {
        return false;
    };
    let before = c.client_ids();
    if c.members.remove(&conn_id).is_none() {
        return false;
    }
    let after = c.client_ids();
    let changed = after != before;
    if c.members.is_empty() {
        g.consumers.remove(group);
    }
    note_departed(&mut g.departed, group, &before, &after);
    changed
}

/// Notes the client ids in `before` and not in `after` as gone from `group`.
fn note_departed(
    departed: &mut Vec<(String, String)>,
    group: &str,
    before: &BTreeSet<String>,
    after: &BTreeSet<String>,
) {
    departed.extend(
        before
            .difference(after)
            .map(|id| (group.to_owned(), id.clone())),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::java_hash;
    use sluice_protocol::remoting::body::decode_json;
    use std::net::SocketAddr;

    fn conn(id: u64) -> ConnectionHandle {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let addr = SocketAddr::from(([127, 0, 0, 1], 1000 + id as u16));
        ConnectionHandle::new(id, addr, addr, tx)
    }

    fn hb(client_id: &str) -> HeartbeatData {
        let raw = format!(
            r#"{{"clientID":"{client_id}","consumerDataSet":[{{"groupName":"g","consumeType":1,"messageModel":1,"subscriptionDataSet":[{{"topic":"T","subString":"TagA","codeSet":[0],"subVersion":"5"}}]}}]}}"#
        );
        decode_json(raw.as_bytes()).unwrap()
    }

    #[test]
    fn a_producer_group_only_sent_for_is_listed_with_its_connections_heartbeat_language() {
        let m = ClientManager::default();
        let c = conn(1);
        let cpp = ClientMeta {
            language: "CPP",
            version: 401,
        };
        m.heartbeat(&c, &hb("A"), Instant::now(), None, cpp)
            .unwrap();
        m.note_producer(&c, "sends-only", Instant::now(), None)
            .unwrap();
        let listed = m.producer_connection("sends-only");
        assert_eq!((listed[0].language, listed[0].version), ("CPP", 401));
        m.note_producer(&conn(2), "sends-only", Instant::now(), None)
            .unwrap();
        let unknown = m.producer_connection("sends-only");
        assert!(unknown
            .iter()
            .any(|c| (c.language, c.version) == ("OTHER", 0)));
    }

    #[test]
    fn a_stale_send_only_producer_entry_leaves_without_closing_a_heartbeating_consumer() {
        let m = ClientManager::default();
        let c = conn(1);
        let t0 = Instant::now();
        let expiry = Duration::from_secs(10);
        m.note_producer(&c, "pg", t0, None).unwrap();
        assert_eq!(
            m.heartbeat(
                &c,
                &hb("A"),
                t0 + Duration::from_secs(8),
                None,
                ClientMeta::default()
            )
            .unwrap(),
            ["g"]
        );
        let (changed, dropped) = m.expire(t0 + Duration::from_secs(15), expiry);
        assert!(dropped.is_empty(), "the consumer's connection stays open");
        assert!(changed.is_empty());
        assert!(
            m.producer_connections("pg").is_empty(),
            "the stale entry is gone"
        );
        assert_eq!(m.consumer_ids("g"), ["A"]);
        // The consumer itself still expires, closing its connection, when it goes silent.
        let (_, dropped) = m.expire(t0 + Duration::from_secs(30), expiry);
        assert_eq!(
            dropped.iter().map(ConnectionHandle::id).collect::<Vec<_>>(),
            [1]
        );
    }

    #[test]
    fn membership_changes_are_reported_once() {
        let m = ClientManager::default();
        let (c1, c2) = (conn(1), conn(2));
        let t0 = Instant::now();
        assert_eq!(
            m.heartbeat(&c1, &hb("A"), t0, None, ClientMeta::default())
                .unwrap(),
            ["g"]
        );
        assert!(m
            .heartbeat(&c1, &hb("A"), t0, None, ClientMeta::default())
            .unwrap()
            .is_empty());
        assert_eq!(
            m.heartbeat(&c2, &hb("B"), t0, None, ClientMeta::default())
                .unwrap(),
            ["g"]
        );
        assert_eq!(m.consumer_ids("g"), ["A", "B"]);
        assert_eq!(m.remove_connection(2), ["g"]);
        assert_eq!(m.consumer_ids("g"), ["A"]);
        let gone = |who: &str| vec![("g".to_owned(), who.to_owned())];
        assert_eq!(m.take_departed(), gone("B"), "B's orderly locks go");
        assert!(m.take_departed().is_empty(), "taken once");
        let sub = m.subscription("g", "T").unwrap();
        assert_eq!(
            sub.code_set,
            [java_hash("TagA")],
            "C++ atoi codes are recomputed"
        );
        let (changed, dropped) = m.expire(t0 + Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!((changed.len(), dropped.len()), (1, 1));
        assert!(!m.has_consumer_group("g"));
        assert_eq!(m.take_departed(), gone("A"), "an expired client leaves too");
    }

    #[test]
    fn a_sending_producer_stays_registered_and_unregister_removes_it() {
        let m = ClientManager::default();
        let c = conn(3);
        let t0 = Instant::now();
        m.note_producer(&c, "pg", t0, None).unwrap();
        m.note_producer(&c, "pg", t0 + Duration::from_secs(10), None)
            .unwrap();
        let (_, dropped) = m.expire(t0 + Duration::from_secs(11), Duration::from_secs(5));
        assert!(dropped.is_empty());
        assert_eq!(m.producer_connections("pg").len(), 1);
        m.unregister(&c, Some("pg"), None);
        assert!(m.producer_connections("pg").is_empty());
    }

    fn hb_groups(client_id: &str, producers: &[&str], consumers: &[&str]) -> HeartbeatData {
        let producers: Vec<String> = producers
            .iter()
            .map(|g| format!(r#"{{"groupName":"{g}"}}"#))
            .collect();
        let consumers: Vec<String> = consumers
            .iter()
            .map(|g| {
                format!(
                    r#"{{"groupName":"{g}","consumeType":1,"messageModel":1,"subscriptionDataSet":[]}}"#
                )
            })
            .collect();
        let raw = format!(
            r#"{{"clientID":"{client_id}","producerDataSet":[{}],"consumerDataSet":[{}]}}"#,
            producers.join(","),
            consumers.join(",")
        );
        decode_json(raw.as_bytes()).unwrap()
    }

    #[test]
    fn a_connection_past_its_group_bound_is_refused_and_keeps_what_it_had() {
        let m = ClientManager::new(3);
        let (c, t0) = (conn(1), Instant::now());
        let meta = ClientMeta::default();
        m.heartbeat(&c, &hb_groups("A", &["p1"], &["c1"]), t0, None, meta)
            .unwrap();
        m.note_producer(&c, "p2", t0, None).unwrap();
        let refused = m.note_producer(&c, "p3", t0, None).unwrap_err();
        assert_eq!((refused.would_be, refused.max), (4, 3));
        assert!(m.producer_connections("p3").is_empty());
        // Groups it already has are refreshed, whatever the bound.
        m.note_producer(&c, "p2", t0, None).unwrap();
        m.heartbeat(&c, &hb_groups("A", &["p1", "p2"], &["c1"]), t0, None, meta)
            .unwrap();
        let refused = m
            .heartbeat(&c, &hb_groups("A", &["p1"], &["c1", "c2"]), t0, None, meta)
            .unwrap_err();
        assert_eq!(refused.would_be, 4);
        assert_eq!(m.room_for(1, &hb_groups("A", &[], &["c2"])), Err(refused));
        assert!(
            !m.has_consumer_group("c2"),
            "nothing of a refused heartbeat is kept"
        );
        assert_eq!(m.consumer_ids("c1"), ["A"]);
        // Another connection has a bound of its own.
        m.heartbeat(&conn(2), &hb_groups("B", &["p3"], &["c2"]), t0, None, meta)
            .unwrap();
    }

    #[test]
    fn leaving_groups_frees_room_and_a_closed_connection_leaves_only_its_own() {
        let m = ClientManager::new(2);
        let t0 = Instant::now();
        let meta = ClientMeta::default();
        let (c1, c2) = (conn(1), conn(2));
        m.heartbeat(&c1, &hb_groups("A", &["p"], &["g"]), t0, None, meta)
            .unwrap();
        m.heartbeat(&c2, &hb_groups("B", &["p"], &["g"]), t0, None, meta)
            .unwrap();
        assert!(m.note_producer(&c1, "q", t0, None).is_err());
        m.unregister(&c1, Some("p"), None);
        m.note_producer(&c1, "q", t0, None).unwrap();
        assert_eq!(m.remove_connection(1), ["g"]);
        assert_eq!(m.consumer_ids("g"), ["B"]);
        assert_eq!(m.producer_connections("p").len(), 1);
        assert!(m.producer_connections("q").is_empty());
        // A member gone by expiry frees its room too.
        m.note_producer(&c2, "late", t0 + Duration::from_secs(20), None)
            .unwrap_err();
        let (_, dropped) = m.expire(t0 + Duration::from_secs(20), Duration::from_secs(10));
        assert_eq!(
            dropped.len(),
            1,
            "the heartbeating member's connection is closed"
        );
        m.note_producer(&c2, "late", t0 + Duration::from_secs(20), None)
            .unwrap();
        m.note_producer(&c2, "later", t0 + Duration::from_secs(20), None)
            .unwrap();
        assert!(!m.groups.lock().by_conn.contains_key(&1));
    }
}
