//! [`ClientCore`]: the machinery every producer and consumer owns one of: the connection pool,
//! name-server lookups with failover, the route cache with its periodic refresh, and
//! heartbeats to every broker the routes name.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use sluice_protocol::message::UniqKeyGenerator;
use sluice_protocol::remoting::body::{encode_json, HeartbeatData, TopicRouteData};
use sluice_protocol::remoting::custom::{GetRouteInfoRequestHeader, UnregisterClientRequestHeader};
use sluice_protocol::{request_code, response_code, RemotingCommand};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::net::{expect_success, Pool, ServerRequest};
use crate::route::TopicRoute;

/// The auto-create template topic: a producer borrows its route for a topic that does not
/// exist yet, and the broker creates the topic on the first send.
pub(crate) const DEFAULT_TOPIC: &str = "TBW102";
/// Queues a topic created on first send gets (RocketMQ's `defaultTopicQueueNums`).
pub(crate) const DEFAULT_TOPIC_QUEUE_NUMS: i32 = 4;

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// How long a route lookup waits for the first heartbeats to the brokers it found.
const FIRST_GREETING_WAIT: Duration = Duration::from_secs(1);

/// A cached route and its last use (ms since `ClientCore::born`).
struct CachedRoute {
    route: Arc<TopicRoute>,
    used_ms: AtomicU64,
}

/// Shared machinery of one client.
pub(crate) struct ClientCore {
    pub(crate) cfg: ClientConfig,
    pub(crate) client_id: String,
    pub(crate) pool: Pool,
    pub(crate) uniq: UniqKeyGenerator,
    /// Routes by topic, each with when it was last used (see [`Self::refresh_routes`]).
    routes: RwLock<HashMap<String, CachedRoute>>,
    /// The clock `CachedRoute::used_ms` counts from.
    born: Instant,
    /// Broker name to master address, across every route seen: a message's broker stays
    /// reachable for send-back and END_TRANSACTION even if a refresh drops it.
    masters: RwLock<HashMap<String, String>>,
    /// Brokers greeted with a first heartbeat (see `learn_brokers`).
    greeted: Mutex<HashSet<String>>,
    heartbeat: RwLock<HeartbeatData>,
    namesrv_next: AtomicUsize,
}

impl ClientCore {
    /// A core whose server-initiated requests go to `requests`.
    pub(crate) fn new(
        cfg: ClientConfig,
        requests: mpsc::Sender<ServerRequest>,
    ) -> Result<Arc<Self>, ClientError> {
        cfg.validate()?;
        let ip = match cfg.client_ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
        };
        Ok(Arc::new(Self {
            client_id: cfg.client_id_for_new_client(),
            pool: Pool::new(cfg.connect_timeout, requests)
                .with_credentials(cfg.credentials().cloned())
                .with_tls(cfg.tls().cloned())
                .with_binary_headers(cfg.binary_headers),
            uniq: UniqKeyGenerator::new(ip),
            routes: RwLock::new(HashMap::new()),
            born: Instant::now(),
            masters: RwLock::new(HashMap::new()),
            greeted: Mutex::new(HashSet::new()),
            heartbeat: RwLock::new(HeartbeatData::default()),
            namesrv_next: AtomicUsize::new(0),
            cfg,
        }))
    }

    /// Sets what heartbeats announce.
    pub(crate) fn set_heartbeat(&self, mut data: HeartbeatData) {
        data.client_id = self.client_id.clone();
        *self.heartbeat.write() = data;
    }

    /// The route of `topic` from the cache, or from the name servers.
    pub(crate) async fn route(&self, topic: &str) -> Result<Arc<TopicRoute>, ClientError> {
        if let Some(r) = self.cached_route(topic) {
            return Ok(r);
        }
        self.fetch_route(topic).await
    }

    /// The cached route of `topic` (which counts as a use of it).
    pub(crate) fn cached_route(&self, topic: &str) -> Option<Arc<TopicRoute>> {
        let routes = self.routes.read();
        let cached = routes.get(topic)?;
        cached.used_ms.store(self.now_ms(), Ordering::Relaxed);
        Some(Arc::clone(&cached.route))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A producer's route: the topic's own (writable or not), or for a topic the name servers
    /// do not know, the template's queues (at most [`DEFAULT_TOPIC_QUEUE_NUMS`] per broker), which the broker
    /// turns into the topic on the first send. The borrowed route is not cached, so the real
    /// one is used as soon as the name servers know it.
    pub(crate) async fn publish_route(&self, topic: &str) -> Result<Arc<TopicRoute>, ClientError> {
        match self.route(topic).await {
            // A topic the name servers know, even with no writable queue now (its master
            // down, or made read-only), is sent to as it is, and fails: borrowing the template
            // there had another broker create the topic silently and take its messages
            // (ordered keys moved while the old queues still held a backlog).
            Ok(r) => Ok(r),
            Err(ClientError::TopicNotFound(_)) => {
                let data =
                    self.query_route(DEFAULT_TOPIC)
                        .await
                        .map_err(|e| ClientError::NoRoute {
                            topic: topic.to_owned(),
                            reason: format!("topic unknown and no template route: {e}"),
                        })?;
                tracing::debug!(
                    topic,
                    "topic unknown to name servers; using the template route"
                );
                let route = TopicRoute::new(topic, &data, Some(DEFAULT_TOPIC_QUEUE_NUMS));
                self.learn_brokers(&route).await;
                Ok(Arc::new(route))
            }
            Err(e) => Err(e),
        }
    }

    /// Fetches the route of `topic` from the name servers and caches it (a use of it).
    pub(crate) async fn fetch_route(&self, topic: &str) -> Result<Arc<TopicRoute>, ClientError> {
        self.fetch_and_cache(topic, true).await
    }

    /// `used`: the caller needs the route now; a refresh does not, and keeps the route's
    /// last use as it was, or no route would ever go idle.
    async fn fetch_and_cache(
        &self,
        topic: &str,
        used: bool,
    ) -> Result<Arc<TopicRoute>, ClientError> {
        let data = self.query_route(topic).await?;
        let route = Arc::new(TopicRoute::new(topic, &data, None));
        {
            let mut routes = self.routes.write();
            let used_ms = match routes.get(topic) {
                Some(old) if !used => old.used_ms.load(Ordering::Relaxed),
                _ => self.now_ms(),
            };
            routes.insert(
                topic.to_owned(),
                CachedRoute {
                    route: Arc::clone(&route),
                    used_ms: AtomicU64::new(used_ms),
                },
            );
        }
        self.learn_brokers(&route).await;
        Ok(route)
    }

    /// Asks the name servers in turn, starting with the last one that answered.
    async fn query_route(&self, topic: &str) -> Result<TopicRouteData, ClientError> {
        let servers = self.cfg.name_servers();
        let start = self.namesrv_next.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        let mut not_found = 0;
        for i in 0..servers.len() {
            let idx = (start + i) % servers.len();
            let addr = &servers[idx];
            match self.query_route_at(addr, topic).await {
                Ok(data) => {
                    self.namesrv_next.store(idx, Ordering::Relaxed);
                    return Ok(data);
                }
                Err(ClientError::TopicNotFound(_)) => not_found += 1,
                Err(e) => {
                    tracing::debug!(namesrv = %addr, topic, error = %e, "name server failed; trying the next");
                    errors.push(e.to_string());
                }
            }
        }
        if not_found > 0 {
            return Err(ClientError::TopicNotFound(topic.to_owned()));
        }
        Err(ClientError::NoRoute {
            topic: topic.to_owned(),
            reason: errors.join("; "),
        })
    }

    async fn query_route_at(&self, addr: &str, topic: &str) -> Result<TopicRouteData, ClientError> {
        let header = GetRouteInfoRequestHeader {
            topic: topic.to_owned(),
            accept_standard_json_only: Some(true),
        };
        let req = RemotingCommand::request(request_code::GET_ROUTEINFO_BY_TOPIC, header.to_ext());
        let resp = self.pool.invoke(addr, req, self.cfg.rpc_timeout).await?;
        if resp.code == response_code::TOPIC_NOT_EXIST {
            return Err(ClientError::TopicNotFound(topic.to_owned()));
        }
        let resp = expect_success(addr, resp)?;
        TopicRouteData::from_json(&resp.body)
            .map_err(|e| ClientError::protocol(addr, format!("route of {topic}: {e}")))
    }

    /// Records the brokers of a route and greets new ones with a heartbeat at once, so a
    /// transactional producer can be asked for checks before its first periodic heartbeat.
    /// The greetings run together and are waited for [`FIRST_GREETING_WAIT`] at most: this
    /// runs inside a send's budget, and one unreachable broker (a slave, say) must not spend
    /// it. Each broker is greeted once this way; one whose greeting failed or was cut short
    /// gets the periodic heartbeat (every 30 s) instead.
    async fn learn_brokers(&self, route: &TopicRoute) {
        {
            let mut masters = self.masters.write();
            for (name, addr) in route.masters() {
                masters.insert(name.to_owned(), addr.to_owned());
            }
        }
        if !self.has_groups() {
            return;
        }
        let fresh: Vec<String> = {
            let mut greeted = self.greeted.lock();
            route
                .addrs
                .iter()
                .filter(|a| greeted.insert((*a).clone()))
                .cloned()
                .collect()
        };
        if fresh.is_empty() {
            return;
        }
        let greetings = futures::future::join_all(fresh.iter().map(|addr| async move {
            if let Err(e) = self.heartbeat_to(addr).await {
                tracing::debug!(broker = %addr, error = %e, "first heartbeat failed");
            }
        }));
        let wait = FIRST_GREETING_WAIT.min(self.cfg.rpc_timeout);
        if tokio::time::timeout(wait, greetings).await.is_err() {
            tracing::debug!(
                brokers = fresh.len(),
                "first heartbeats not all answered in time; the periodic heartbeat greets the rest"
            );
        }
    }

    fn has_groups(&self) -> bool {
        let hb = self.heartbeat.read();
        !hb.producer_data_set.is_empty() || !hb.consumer_data_set.is_empty()
    }

    /// Names `addr` as `broker_name`'s master without a route (tests).
    #[cfg(test)]
    pub(crate) fn set_master_for_tests(&self, broker_name: &str, addr: &str) {
        self.masters
            .write()
            .insert(broker_name.to_owned(), addr.to_owned());
    }

    /// The master address of a broker seen in any route.
    pub(crate) fn master_addr(&self, broker_name: &str) -> Result<String, ClientError> {
        self.masters
            .read()
            .get(broker_name)
            .cloned()
            .ok_or_else(|| ClientError::BrokerNotFound(broker_name.to_owned()))
    }

    /// Forgets the routes unused for `route_idle_expiry`, then fetches the others again; a
    /// failure keeps the old route. A producer that sent once to each of many topics (one per
    /// tenant, per day) kept every route and asked the name servers for all of them at every
    /// refresh, for ever.
    pub(crate) async fn refresh_routes(&self) {
        self.forget_idle_routes();
        let topics: Vec<String> = self.routes.read().keys().cloned().collect();
        for topic in topics {
            if let Err(e) = self.fetch_and_cache(&topic, false).await {
                tracing::debug!(topic = %topic, error = %e, "route refresh failed; keeping the cached route");
            }
        }
    }

    fn forget_idle_routes(&self) {
        self.forget_routes_idle_at(self.now_ms());
    }

    fn forget_routes_idle_at(&self, now: u64) {
        let idle = u64::try_from(self.cfg.route_idle_expiry.as_millis()).unwrap_or(u64::MAX);
        self.routes.write().retain(|topic, cached| {
            let keep = now.saturating_sub(cached.used_ms.load(Ordering::Relaxed)) < idle;
            if !keep {
                tracing::debug!(topic = %topic, "route unused for route_idle_expiry; forgotten");
            }
            keep
        });
    }

    /// Every broker address of every cached route.
    fn broker_addrs(&self) -> Vec<String> {
        let mut addrs: Vec<String> = self
            .routes
            .read()
            .values()
            .flat_map(|r| r.route.addrs.iter().cloned())
            .collect();
        addrs.extend(self.masters.read().values().cloned());
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// Sends a heartbeat to every known broker; returns how many accepted it.
    pub(crate) async fn send_heartbeats(&self) -> usize {
        let mut ok = 0;
        for addr in self.broker_addrs() {
            match self.heartbeat_to(&addr).await {
                Ok(()) => ok += 1,
                Err(e) => tracing::debug!(broker = %addr, error = %e, "heartbeat failed"),
            }
        }
        ok
    }

    async fn heartbeat_to(&self, addr: &str) -> Result<(), ClientError> {
        let body = encode_json(&*self.heartbeat.read());
        let req =
            RemotingCommand::request(request_code::HEART_BEAT, Default::default()).with_body(body);
        self.pool
            .invoke_ok(addr, req, self.cfg.rpc_timeout)
            .await
            .map(drop)
    }

    /// Tells every known broker this client leaves its groups, so consumer groups rebalance
    /// at once instead of after the broker's expiry.
    pub(crate) async fn unregister(
        &self,
        producer_group: Option<&str>,
        consumer_group: Option<&str>,
    ) {
        let header = UnregisterClientRequestHeader {
            client_id: self.client_id.clone(),
            producer_group: producer_group.map(str::to_owned),
            consumer_group: consumer_group.map(str::to_owned),
        };
        for addr in self.broker_addrs() {
            let req = RemotingCommand::request(request_code::UNREGISTER_CLIENT, header.to_ext());
            if let Err(e) = self.pool.invoke_ok(&addr, req, self.cfg.rpc_timeout).await {
                tracing::debug!(broker = %addr, error = %e, "unregister failed");
            }
        }
    }

    /// Runs route refreshes and heartbeats until `stop` turns true, each in a task of its own:
    /// a refresh of many topics against a slow name server must not hold the heartbeats back
    /// past the brokers' expiry of this client. Aborting the returned task aborts both (the
    /// set drops with it).
    pub(crate) fn spawn_maintenance(
        self: &Arc<Self>,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let mut loops = tokio::task::JoinSet::new();
        let refresh = Arc::clone(self);
        loops.spawn(every(
            refresh.cfg.route_refresh_interval,
            stop.clone(),
            move || {
                let core = Arc::clone(&refresh);
                async move { core.refresh_routes().await }
            },
        ));
        let beat = Arc::clone(self);
        loops.spawn(every(beat.cfg.heartbeat_interval, stop, move || {
            let core = Arc::clone(&beat);
            async move {
                core.send_heartbeats().await;
            }
        }));
        tokio::spawn(async move { while loops.join_next().await.is_some() {} })
    }
}

/// Runs `job` every `period` (the first after one period) until `stop` turns true.
async fn every<F, Fut>(period: Duration, mut stop: watch::Receiver<bool>, job: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut ticks = tokio::time::interval(period);
    ticks.tick().await;
    loop {
        tokio::select! {
            () = crate::core::stopped(&mut stop) => break,
            _ = ticks.tick() => job().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clients_made_from_one_cloned_config_get_different_ids_unless_named() {
        let cfg = ClientConfig::new("127.0.0.1:9876");
        let (tx, _rx) = mpsc::channel(1);
        let a = ClientCore::new(cfg.clone(), tx.clone()).unwrap();
        let b = ClientCore::new(cfg.clone(), tx.clone()).unwrap();
        assert_ne!(a.client_id, b.client_id);
        // A name the user chose is kept as given: its uniqueness is theirs to keep.
        let named = cfg.with_instance_name("billing-1");
        let c = ClientCore::new(named.clone(), tx.clone()).unwrap();
        let d = ClientCore::new(named, tx).unwrap();
        assert_eq!(
            (c.client_id.as_str(), d.client_id.as_str()),
            ("127.0.0.1@billing-1", "127.0.0.1@billing-1")
        );
    }

    /// A producer that sent once to each of many topics kept every route, and asked the name
    /// servers for all of them at every refresh, for ever: a route no send, rebalance or pull
    /// used for `route_idle_expiry` is forgotten, and a look-up counts as a use.
    #[tokio::test]
    async fn routes_unused_for_the_idle_expiry_are_forgotten_and_used_ones_kept() {
        let mut cfg = ClientConfig::new("127.0.0.1:9876");
        cfg.route_idle_expiry = Duration::from_secs(600);
        let (tx, _rx) = mpsc::channel(1);
        let core = ClientCore::new(cfg, tx).unwrap();
        let hour = 3_600_000;
        for (topic, used_ms) in [("Used", hour), ("Idle", 0)] {
            let route = Arc::new(TopicRoute::new(topic, &TopicRouteData::default(), None));
            let used_ms = AtomicU64::new(used_ms);
            core.routes
                .write()
                .insert(topic.to_owned(), CachedRoute { route, used_ms });
        }
        core.forget_routes_idle_at(hour + 1_000);
        let left: Vec<String> = core.routes.read().keys().cloned().collect();
        assert_eq!(left, ["Used"]);

        core.routes.read()["Used"]
            .used_ms
            .store(0, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(core.cached_route("Used").is_some());
        assert!(core.routes.read()["Used"].used_ms.load(Ordering::Relaxed) >= 5);
    }
}
