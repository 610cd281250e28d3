//! Configuration of the two servers. Every field documents its default; `validate` checks the
//! limits against each other before anything starts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use sluice_protocol::remoting::frame::{DEFAULT_MAX_BODY, DEFAULT_MAX_FRAME};
use sluice_store::StoreConfig;

use crate::error::BrokerError;

/// Default of [`BrokerConfig::max_groups_per_connection`]: the most groups one heartbeat may
/// name (far more than a client has: a client with that many producer and consumer groups
/// over one connection, plus groups it only sends for, would be refused).
pub(crate) const DEFAULT_MAX_GROUPS_PER_CONNECTION: usize = 1024;

/// Name-server settings.
#[derive(Debug, Clone)]
pub struct NameServerConfig {
    /// Listening address. Default `0.0.0.0:9876`.
    pub listen: SocketAddr,
    /// A broker silent this long is dropped from routes. Default 120 s.
    pub broker_expiry: Duration,
    /// How often silent brokers are looked for. Default 5 s.
    pub scan_interval: Duration,
    /// Largest frame. Default 16 MiB.
    pub max_frame: usize,
    /// Largest body. Registration bodies list every topic of a broker, so default 16 MiB.
    pub max_body: usize,
    /// Bytes of request frames being handled at once, all connections together, and a
    /// quarter of it per connection; past either a request waits (at most 200 ms, then
    /// SYSTEM_BUSY), except that a connection with nothing else running always gets through
    /// the server-wide bound. At least `max_frame`. Default 64 MiB.
    pub max_inflight_bytes: usize,
    /// Broker addresses registered at once; a registration from a new address past it is
    /// refused (SYSTEM_ERROR, the bound named). Default 1 024.
    pub max_brokers: usize,
    /// Topic routes held, one per (topic, broker name): a registration that would take the
    /// table past it is refused. Registrations are unauthenticated, so without it one
    /// request listing many topics could make the name server allocate without end.
    /// Default 500 000 (fifty brokers at the broker's default `max_topics`).
    pub max_topic_routes: usize,
    /// TLS for the name server's port. Default `None`: plaintext.
    pub tls: Option<sluice_remoting::ServerTls>,
}

impl Default for NameServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9876)),
            broker_expiry: Duration::from_secs(120),
            scan_interval: Duration::from_secs(5),
            max_frame: DEFAULT_MAX_FRAME,
            max_body: DEFAULT_MAX_FRAME,
            max_inflight_bytes: 64 << 20,
            max_brokers: 1024,
            max_topic_routes: 500_000,
            tls: None,
        }
    }
}

impl NameServerConfig {
    /// Refuses settings the broker cannot run with (also checked by `Broker::start_with`).
    pub fn validate(&self) -> Result<(), BrokerError> {
        check_frames(self.max_frame, self.max_body)?;
        check_inflight_bytes(self.max_inflight_bytes, self.max_frame)?;
        if self.scan_interval.is_zero() || self.broker_expiry.is_zero() {
            return Err(BrokerError::Config(
                "scan_interval and broker_expiry must be positive".into(),
            ));
        }
        if self.max_brokers == 0 || self.max_topic_routes == 0 {
            return Err(BrokerError::Config(
                "max_brokers and max_topic_routes must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Broker settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Listening address. Default `0.0.0.0:10911`.
    pub listen: SocketAddr,
    /// The address put in routes and message ids. Default: `listen`, with 127.0.0.1 when the
    /// listen IP is unspecified (and the real port when `listen` asks for port 0).
    pub advertised_addr: Option<SocketAddr>,
    /// Broker name. Default `broker-a`.
    pub broker_name: String,
    /// Cluster name, also added to every message as `CLUSTER`. Default `DefaultCluster`.
    pub cluster_name: String,
    /// Name servers to register with. Default none.
    pub namesrv_addrs: Vec<SocketAddr>,
    /// How often to register again. Default 30 s.
    pub register_interval: Duration,
    /// Create unknown topics on first send from the `TBW102` template, and create `TBW102`.
    /// Default true.
    pub auto_create_topic: bool,
    /// Queues of `TBW102`. Default 8.
    pub default_topic_queue_nums: u32,
    /// Most topics the broker holds. Past it a new topic is refused, whether auto-created by
    /// a send, a consumer group's retry topic, or created by an admin; the broker's own
    /// topics (system and dead-letter topics) are always created. Topics already on disk
    /// stay when the limit is lowered. Default 10 000.
    pub max_topics: usize,
    /// Largest frame. Default 16 MiB.
    pub max_frame: usize,
    /// Largest body; bigger is answered MESSAGE_ILLEGAL. Default 4 MiB.
    pub max_body: usize,
    /// Requests running at once per connection; more are answered SYSTEM_BUSY. Default 256.
    /// One-way requests (never answered) have a second budget of the same size: beyond it
    /// the connection is not read until one finishes.
    pub max_inflight_per_connection: usize,
    /// Bytes of request frames being handled at once, all connections together (the count
    /// above times `max_frame` is gigabytes per connection), and a quarter of it (at least
    /// `max_frame`) per connection. Past either a request waits like one over its
    /// connection's count (an answered one at most 200 ms, then SYSTEM_BUSY), except that a
    /// connection with nothing else running always gets through the server-wide bound: a
    /// flood on other connections cannot starve a client sending one request at a time. At
    /// least `max_frame`. Default 256 MiB.
    pub max_inflight_bytes: usize,
    /// Open connections; more are refused. Default 10 000.
    pub max_connections: usize,
    /// Producer and consumer groups one connection may be a member of at once (each keeps a
    /// copy of the client id until the connection closes or goes silent); a heartbeat or a
    /// send that would go past it is refused with INVALID_PARAMETER. Default 1 024.
    pub max_groups_per_connection: usize,
    /// Committed-offset entries (one per topic and consumer group) kept at most; a commit
    /// that would add one more is refused (UPDATE_CONSUMER_OFFSET answers SYSTEM_ERROR naming
    /// the bound; a pull's piggy-backed commit and an HTTP ack's are dropped and logged). A
    /// retired group's entries are removed with `DELETE /v1/groups/{group}/offsets`.
    /// Default 100 000.
    pub max_consumer_offsets: usize,
    /// Long-polling pulls parked at once per connection; more are answered SYSTEM_BUSY. A
    /// parked pull gives its in-flight slot back, so without this bound one connection could
    /// take the whole broker-wide pool (`max_parked_pulls`). A client process parks one pull
    /// per queue it consumes over one connection per broker, hence a default of 4 096, far
    /// above `max_inflight_per_connection`.
    pub max_parked_pulls_per_connection: usize,
    /// Long-polling pulls parked at once across the broker (each holds a task and a request
    /// in memory); more are answered SYSTEM_BUSY, which clients retry after a pause. Default
    /// 100 000.
    pub max_parked_pulls: usize,
    /// Cap on a pull's `suspendTimeoutMillis`. Default 30 s.
    pub long_poll_max: Duration,
    /// How often consumer offsets are written to disk. Default 5 s.
    pub offset_flush_interval: Duration,
    /// A client without heartbeat this long is dropped. Default 120 s.
    pub client_expiry: Duration,
    /// A connection that sends nothing for this long is closed (a silent peer, a half-open
    /// socket, a slow-loris sender), and so is one that accepts none of our bytes for this
    /// long (a peer that stopped reading would otherwise pin its connection, its handlers and
    /// its parked pulls forever). Default 120 s, as RocketMQ's broker.
    pub idle_timeout: Duration,
    /// How long a shutdown waits for parked pulls to be answered, then for requests in
    /// flight to finish, each. Default 10 s.
    pub drain_timeout: Duration,
    /// Finished DLQ replay tasks kept (in memory, as files, and in `GET /v1/replays`); past
    /// it the oldest finished ones are forgotten (their audit lines stay). Running tasks
    /// always count. Default 1 000.
    pub replays_kept: usize,
    /// Size past which the DLQ replay audit log (`config/dlq/audit.log`) is renamed to
    /// `audit.log.1`, replacing the one before: between one and two of these are kept.
    /// Default 16 MiB.
    pub audit_log_max_bytes: u64,
    /// A consumer group's retry topic is removed once its group has had no member and the
    /// topic nothing left to consume for this long (see `retry::reclaim`); its committed
    /// offsets stay, and a member's heartbeat creates it again. Zero: never. Default 1 h.
    pub retry_topic_reclaim_after: Duration,
    /// TLS for the broker's port (permissive or enforcing). Default `None`: plaintext.
    pub tls: Option<sluice_remoting::ServerTls>,
    /// TLS when registering with name servers (needed when they are TLS-only). Default `None`.
    pub namesrv_tls: Option<sluice_remoting::ClientTls>,
    /// The storage engine's settings. `store_host` is overwritten with the advertised address.
    pub store: StoreConfig,
    /// Consumer retry policies (maximum, back-off), per group. Default RocketMQ's: 16 retries
    /// at delay level `3 + reconsumeTimes`.
    pub retry: crate::retry::RetryConfig,
    /// Lease-based consumption (the HTTP facade's receive/ack/nack): receive size, lease
    /// times, long-poll cap, leases per group, expiry tick.
    pub lease: crate::lease::LeaseConfig,
    /// Access control: signatures, permissions, the admin rule. Default off (admin request
    /// codes from loopback peers only).
    pub acl: crate::acl::AclConfig,
}

impl BrokerConfig {
    /// `default_topic_queue_nums` as a queue count (validated to at most 4 096).
    pub fn default_queue_nums(&self) -> i32 {
        i32::try_from(self.default_topic_queue_nums).unwrap_or(crate::topic::MAX_QUEUE_NUMS)
    }

    /// Defaults (see each field) around the given store settings.
    pub fn new(store: StoreConfig) -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 10911)),
            advertised_addr: None,
            broker_name: "broker-a".into(),
            cluster_name: "DefaultCluster".into(),
            namesrv_addrs: Vec::new(),
            register_interval: Duration::from_secs(30),
            auto_create_topic: true,
            default_topic_queue_nums: 8,
            max_topics: 10_000,
            max_frame: DEFAULT_MAX_FRAME,
            max_body: DEFAULT_MAX_BODY,
            max_inflight_per_connection: 256,
            max_inflight_bytes: 256 << 20,
            max_connections: 10_000,
            max_groups_per_connection: DEFAULT_MAX_GROUPS_PER_CONNECTION,
            max_consumer_offsets: 100_000,
            max_parked_pulls_per_connection: 4096,
            max_parked_pulls: 100_000,
            long_poll_max: Duration::from_secs(30),
            offset_flush_interval: Duration::from_secs(5),
            client_expiry: Duration::from_secs(120),
            idle_timeout: crate::remoting::server::IDLE_TIMEOUT,
            drain_timeout: Duration::from_secs(10),
            replays_kept: 1_000,
            audit_log_max_bytes: 16 << 20,
            retry_topic_reclaim_after: Duration::from_secs(3600),
            tls: None,
            namesrv_tls: None,
            store,
            retry: crate::retry::RetryConfig::default(),
            lease: crate::lease::LeaseConfig::default(),
            acl: crate::acl::AclConfig::default(),
        }
    }

    /// Refuses settings the broker cannot run with (also checked by `Broker::start_with`).
    pub fn validate(&self) -> Result<(), BrokerError> {
        check_frames(self.max_frame, self.max_body)?;
        check_inflight_bytes(self.max_inflight_bytes, self.max_frame)?;
        let positive = [
            (
                "max_inflight_per_connection",
                self.max_inflight_per_connection,
            ),
            ("max_connections", self.max_connections),
            ("max_groups_per_connection", self.max_groups_per_connection),
            ("max_consumer_offsets", self.max_consumer_offsets),
            (
                "max_parked_pulls_per_connection",
                self.max_parked_pulls_per_connection,
            ),
            ("max_parked_pulls", self.max_parked_pulls),
            ("replays_kept", self.replays_kept),
            (
                "audit_log_max_bytes",
                usize::try_from(self.audit_log_max_bytes).unwrap_or(usize::MAX),
            ),
            ("max_topics", self.max_topics),
            (
                "default_topic_queue_nums",
                self.default_topic_queue_nums as usize,
            ),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(BrokerError::Config(format!("{name} must be positive")));
            }
        }
        if self.default_topic_queue_nums > crate::topic::MAX_QUEUE_NUMS as u32 {
            return Err(BrokerError::Config(format!(
                "default_topic_queue_nums must be at most {} (a topic's most queues)",
                crate::topic::MAX_QUEUE_NUMS
            )));
        }
        if self.max_inflight_per_connection > u32::MAX as usize / 4 {
            return Err(BrokerError::Config(
                "max_inflight_per_connection is too large".into(),
            ));
        }
        if self.broker_name.is_empty() || self.cluster_name.is_empty() {
            return Err(BrokerError::Config(
                "broker_name and cluster_name must be set".into(),
            ));
        }
        // Name servers refuse registrations with longer ones (crate::namesrv::MAX_NAME_LEN).
        if self.broker_name.len() > 127 || self.cluster_name.len() > 127 {
            return Err(BrokerError::Config(
                "broker_name and cluster_name must be at most 127 bytes".into(),
            ));
        }
        let durations = [
            ("register_interval", self.register_interval),
            ("offset_flush_interval", self.offset_flush_interval),
            ("client_expiry", self.client_expiry),
            ("idle_timeout", self.idle_timeout),
            ("drain_timeout", self.drain_timeout),
        ];
        for (name, d) in durations {
            if d.is_zero() {
                return Err(BrokerError::Config(format!("{name} must be positive")));
            }
        }
        self.lease.validate().map_err(BrokerError::Config)?;
        self.acl.validate().map_err(BrokerError::Config)?;
        self.retry.validate().map_err(BrokerError::Config)
    }

    /// The address clients are told to use, once the listener is bound to `bound`.
    pub(crate) fn advertised(&self, bound: SocketAddr) -> SocketAddr {
        if let Some(addr) = self.advertised_addr {
            return addr;
        }
        let ip = match bound.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, bound.port())
    }
}

/// The byte budget must let the largest frame through.
fn check_inflight_bytes(max_inflight_bytes: usize, max_frame: usize) -> Result<(), BrokerError> {
    if max_inflight_bytes < max_frame {
        return Err(BrokerError::Config(format!(
            "max_inflight_bytes {max_inflight_bytes} must be at least max_frame {max_frame}"
        )));
    }
    Ok(())
}

fn check_frames(max_frame: usize, max_body: usize) -> Result<(), BrokerError> {
    if max_frame < 1024 || max_frame > i32::MAX as usize {
        return Err(BrokerError::Config(format!(
            "max_frame {max_frame} must be within 1 KiB and 2 GiB"
        )));
    }
    if max_body == 0 || max_body > max_frame {
        return Err(BrokerError::Config(format!(
            "max_body {max_body} must be positive and at most max_frame {max_frame}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_address_replaces_an_unspecified_ip_and_keeps_the_bound_port() {
        let cfg = BrokerConfig::new(StoreConfig::for_tests("/tmp/x"));
        let bound = SocketAddr::from(([0, 0, 0, 0], 40111));
        assert_eq!(
            cfg.advertised(bound),
            SocketAddr::from(([127, 0, 0, 1], 40111))
        );
        let fixed = SocketAddr::from(([10, 1, 2, 3], 10911));
        let cfg = BrokerConfig {
            advertised_addr: Some(fixed),
            ..cfg
        };
        assert_eq!(cfg.advertised(bound), fixed);
    }

    #[test]
    fn inconsistent_limits_are_refused() {
        let mut cfg = BrokerConfig::new(StoreConfig::for_tests("/tmp/x"));
        assert!(cfg.validate().is_ok());
        cfg.max_body = cfg.max_frame + 1;
        assert!(cfg.validate().is_err());
        let ns = NameServerConfig {
            scan_interval: Duration::ZERO,
            ..NameServerConfig::default()
        };
        assert!(ns.validate().is_err());
    }

    #[test]
    fn a_byte_budget_below_the_largest_frame_is_refused() {
        let mut cfg = BrokerConfig::new(StoreConfig::for_tests("/tmp/x"));
        cfg.max_inflight_bytes = cfg.max_frame;
        assert!(cfg.validate().is_ok());
        cfg.max_inflight_bytes = cfg.max_frame - 1;
        assert!(cfg.validate().is_err());
        let ns = NameServerConfig {
            max_inflight_bytes: DEFAULT_MAX_FRAME - 1,
            ..NameServerConfig::default()
        };
        assert!(ns.validate().is_err());
    }
}
