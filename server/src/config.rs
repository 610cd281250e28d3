//! The server's configuration file (TOML), layered: defaults < file < `SLUICE_*` environment
//! variables < command-line flags. Unknown keys are refused, so a typo never silently falls back
//! to a default.

mod acl;
mod env;
mod http;
mod retry;
mod schedule;
mod tls;
pub use acl::AclSection;
pub use http::HttpSection;
pub use retry::RetrySection;
pub use schedule::ScheduleSection;
pub use tls::{LoadedTls, TlsSection};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use sluice_broker::{BrokerConfig, NameServerConfig};
use sluice_store::{FlushMode, StoreConfig};
use sluice_txn::{FinalAction, GroupOverride, TxnConfig};

/// Everything the `sluice` binary can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Folder for all data. Default `./sluice-data`.
    pub data_dir: PathBuf,
    /// The name server.
    pub namesrv: NamesrvSection,
    /// The broker.
    pub broker: BrokerSection,
    /// The storage engine.
    pub store: StoreSection,
    /// The HTTP facade.
    pub http: HttpSection,
    /// Transactional (half) messages.
    pub txn: TxnSection,
    /// Delayed messages.
    pub schedule: ScheduleSection,
    /// Consumer retries and dead letters.
    pub retry: RetrySection,
    /// Access control of the broker (RocketMQ ACL signatures and permissions).
    pub acl: AclSection,
    /// TLS for the TCP ports and the HTTP facade.
    pub tls: TlsSection,
}

/// `[namesrv]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamesrvSection {
    /// Run a name server in this process. Default true.
    pub enabled: bool,
    /// Listen address. Default `0.0.0.0:9876`.
    pub listen: SocketAddr,
    /// Seconds without a registration before a broker is dropped. Default 120.
    pub broker_expiry_secs: u64,
    /// Bytes of requests the name server handles at once, all connections together, and a
    /// quarter of it per connection; past either a request waits (at most 200 ms, then
    /// SYSTEM_BUSY), except that a connection with nothing else running always gets through
    /// the server-wide bound. At least `broker.max_frame_bytes` (the name server's frame
    /// cap). Default 64 MiB.
    pub max_inflight_bytes: usize,
    /// Broker addresses registered at once; a registration from a new address past it is
    /// refused. Default 1 024.
    pub max_brokers: usize,
    /// Topic routes held, one per (topic, broker name); a registration that would pass it is
    /// refused. Default 500 000.
    pub max_topic_routes: usize,
}

/// `[broker]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSection {
    /// Listen address. Default `0.0.0.0:10911`.
    pub listen: SocketAddr,
    /// Address published in routes; default: the listen address (127.0.0.1 for 0.0.0.0).
    pub advertised_addr: Option<SocketAddr>,
    /// Default `broker-a`.
    pub broker_name: String,
    /// Default `DefaultCluster`.
    pub cluster_name: String,
    /// Name servers to register with; default: the one in this process.
    pub namesrv_addrs: Vec<SocketAddr>,
    /// Create topics on first send. Default true.
    pub auto_create_topic: bool,
    /// Queues of an auto-created topic (capped by a RocketMQ client's request, 4 by default;
    /// an HTTP send asks for none, so it gets these). Applied at every start, also to a
    /// folder made with another value. At most 4 096. Default 8.
    pub default_topic_queue_nums: u32,
    /// Largest frame accepted. Default 16 MiB. Also the name server's body cap: a
    /// registration body lists every topic of a broker.
    pub max_frame_bytes: usize,
    /// Largest message body the broker accepts. Default 4 MiB. Not applied to the name server.
    pub max_body_bytes: usize,
    /// Answered requests in flight per connection; one more waits up to 200 ms for a slot (the
    /// connection is not read meanwhile), then gets SYSTEM_BUSY. Default 256.
    pub max_inflight_per_connection: usize,
    /// Bytes of requests the broker handles at once, all connections together, and a quarter
    /// of it per connection; past either a request waits like one over its connection's
    /// count, except that a connection with nothing else running always gets through the
    /// server-wide bound. At least `max_frame_bytes`. Default 256 MiB.
    pub max_inflight_bytes: usize,
    /// Open connections. Default 10 000.
    pub max_connections: usize,
    /// Producer and consumer groups one connection may be a member of at once; a heartbeat
    /// or send past it is refused. Default 1 024.
    pub max_groups_per_connection: usize,
    /// Committed-offset entries (topic and consumer group) kept at most; a commit that would
    /// add one more is refused. Default 100 000.
    pub max_consumer_offsets: usize,
    /// Long-polling pulls parked at once per connection before SYSTEM_BUSY. Default 4 096.
    pub max_parked_pulls_per_connection: usize,
    /// Long-polling pulls parked at once across the broker before SYSTEM_BUSY. Default
    /// 100 000.
    pub max_parked_pulls: usize,
    /// A connection silent this long is closed, and so is one that accepts none of our bytes
    /// for this long (it stopped reading). Default 120 000 (RocketMQ's).
    pub idle_timeout_ms: u64,
    /// At shutdown, how long to wait for parked pulls to be answered, then for requests in
    /// flight to finish (each). Default 10 000.
    pub drain_timeout_ms: u64,
    /// How often consumer offsets are written to `config/consumerOffset.json`; a crash
    /// replays at most this much consumption (at-least-once). Default 5 000.
    pub offset_flush_interval_ms: u64,
    /// Finished DLQ replay tasks kept (listed by `GET /v1/replays`, one small file each);
    /// the oldest finished ones are forgotten past it. Default 1 000.
    pub replays_kept: usize,
    /// Size past which the DLQ replay audit log is rotated to `audit.log.1` (the one before
    /// is dropped). Default 16 MiB.
    pub audit_log_max_bytes: u64,
    /// Most topics the broker holds (auto-created, retry and admin-created alike); past it a
    /// new topic is refused. The broker's own topics are always created. Default 10 000.
    pub max_topics: usize,
    /// A consumer group's retry topic is removed once the group has had no member, and the
    /// topic nothing left to consume, for this long; its offsets stay and the group's next
    /// heartbeat creates it again. 0: never. Default 3 600.
    pub retry_topic_reclaim_after_secs: u64,
}

/// `[store]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `"sync"` (default: acknowledged only once durable) or `"async"` (risky: acknowledged
    /// once written; a machine crash can lose up to `async_flush_interval_ms`).
    pub flush: String,
    /// Sync interval in async mode. Default 500 ms, at most 10 000.
    pub async_flush_interval_ms: u64,
    /// Commit-log segment size. Default 1 GiB.
    pub segment_bytes: u64,
    /// Segments older than this are deleted. Default 72; at least 48 while `[schedule]` is
    /// enabled (its far timers are re-written every 24 h).
    pub retention_hours: u64,
    /// Oldest segments are deleted while the log is larger than this, but none younger than
    /// `[txn] carry_forward_after_secs` (by default half `retention_hours`) plus an hour while
    /// transactions are enabled, nor than 48 h while `[schedule]` is; at most
    /// `retention_hours`. Those may hold open half messages or timers. Default: no limit.
    pub retention_bytes: Option<u64>,
    /// Appends are refused above this fraction of the disk used. Default 0.90.
    pub disk_max_used_ratio: f64,
    /// Commit-log space kept written with zeros ahead of the writer, so syncs write no
    /// extent metadata. Sync flush only; 0 turns it off. Default 64 MiB (at least 64 KiB when on).
    pub warm_ahead_bytes: u64,
}

/// `[txn]`: transactional messages and their check-back policy (per producer group under
/// `[txn.groups.<group>]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TxnSection {
    /// Accept transactional (half) messages. Default true; false refuses them (NO_PERMISSION).
    pub enabled: bool,
    /// Age of a half message at its first check, unless it sets
    /// `CHECK_IMMUNITY_TIME_IN_SECONDS`. Default 6 000.
    pub check_after_ms: u64,
    /// Time between checks of one transaction. Default 30 000.
    pub check_interval_ms: u64,
    /// Checks per transaction before the final action. Default 15.
    pub check_max: u32,
    /// `"rollback"` (default) or `"keep"` (RocketMQ: park in TRANS_CHECK_MAX_TIME_TOPIC).
    pub final_action: String,
    /// A transaction still open this many hours after its half message gets the final action
    /// whatever its check count (its checks may never reach a producer). Default 72.
    pub max_age_hours: u64,
    /// Most undecided transactions; more half messages get SYSTEM_BUSY. Default 500 000.
    pub max_open: usize,
    /// Seconds a decided transaction stays in memory (later answers come from the store).
    /// Default 300.
    pub resolved_retention_secs: u64,
    /// Checkpoint interval when something changed. Default 1 000.
    pub checkpoint_interval_ms: u64,
    /// Undecided half messages older than this are carried forward. Default: half the
    /// store's retention.
    pub carry_forward_after_secs: Option<u64>,
    /// Checks queued per pull-mode group. Default 10 000.
    pub pending_checks_max: usize,
    /// Most checks (and final actions) started per second over all groups, so a backlog of
    /// due transactions does not take the CPU from plain traffic; 0 = no limit. Default 5 000.
    pub max_checks_per_sec: u32,
    /// Bytes of just-stored half messages kept in memory for their END_TRANSACTION (which
    /// then reads nothing back from the store); 0 keeps none. Default 16 777 216 (16 MiB).
    pub fresh_half_bytes: usize,
    /// Per-group overrides.
    pub groups: std::collections::BTreeMap<String, TxnGroupSection>,
}

/// `[txn.groups.<group>]`: fields left out keep the `[txn]` value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TxnGroupSection {
    /// See `[txn] check_after_ms`.
    pub check_after_ms: Option<u64>,
    /// See `[txn] check_interval_ms`.
    pub check_interval_ms: Option<u64>,
    /// See `[txn] check_max`.
    pub check_max: Option<u32>,
    /// See `[txn] final_action`.
    pub final_action: Option<String>,
    /// See `[txn] max_age_hours`.
    pub max_age_hours: Option<u64>,
    /// Deliver checks to this URL (through the HTTP facade) instead of a TCP producer. Its
    /// user info and query are left out of the effective configuration logged at start (they
    /// may carry credentials).
    #[serde(serialize_with = "url_without_credentials")]
    pub check_url: Option<String>,
    /// Queue checks for pulling over HTTP instead of sending them to a TCP producer.
    pub pull_checks: Option<bool>,
}

fn url_without_credentials<S: serde::Serializer>(
    url: &Option<String>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_str(&sluice_http::txn::webhook::redacted(u)),
        None => s.serialize_none(),
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./sluice-data"),
            namesrv: NamesrvSection::default(),
            broker: BrokerSection::default(),
            store: StoreSection::default(),
            http: HttpSection::default(),
            txn: TxnSection::default(),
            schedule: ScheduleSection::default(),
            retry: RetrySection::default(),
            acl: AclSection::default(),
            tls: TlsSection::default(),
        }
    }
}

impl Default for TxnSection {
    fn default() -> Self {
        Self {
            enabled: true,
            check_after_ms: 6_000,
            check_interval_ms: 30_000,
            check_max: 15,
            final_action: "rollback".into(),
            max_age_hours: 72,
            max_open: 500_000,
            resolved_retention_secs: 300,
            checkpoint_interval_ms: 1_000,
            carry_forward_after_secs: None,
            pending_checks_max: 10_000,
            max_checks_per_sec: 5_000,
            fresh_half_bytes: 16 << 20,
            groups: std::collections::BTreeMap::new(),
        }
    }
}

/// `h` hours (saturating).
fn hours(h: u64) -> Duration {
    Duration::from_secs(h.saturating_mul(3600))
}

fn final_action(s: &str, name: &str) -> Result<FinalAction> {
    FinalAction::parse(s).ok_or_else(|| {
        anyhow::anyhow!("{name}: final_action must be \"rollback\" or \"keep\", not {s:?}")
    })
}

impl Default for NamesrvSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 9876)),
            broker_expiry_secs: 120,
            max_inflight_bytes: 64 << 20,
            max_brokers: 1024,
            max_topic_routes: 500_000,
        }
    }
}

impl Default for BrokerSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 10911)),
            advertised_addr: None,
            broker_name: "broker-a".into(),
            cluster_name: "DefaultCluster".into(),
            namesrv_addrs: Vec::new(),
            auto_create_topic: true,
            default_topic_queue_nums: 8,
            max_frame_bytes: 16 << 20,
            max_body_bytes: 4 << 20,
            max_inflight_per_connection: 256,
            max_inflight_bytes: 256 << 20,
            max_connections: 10_000,
            max_groups_per_connection: 1024,
            max_consumer_offsets: 100_000,
            max_parked_pulls_per_connection: 4096,
            max_parked_pulls: 100_000,
            idle_timeout_ms: 120_000,
            drain_timeout_ms: 10_000,
            offset_flush_interval_ms: 5_000,
            replays_kept: 1_000,
            audit_log_max_bytes: 16 << 20,
            max_topics: 10_000,
            retry_topic_reclaim_after_secs: 3_600,
        }
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            flush: "sync".into(),
            async_flush_interval_ms: 500,
            segment_bytes: 1 << 30,
            retention_hours: 72,
            retention_bytes: None,
            disk_max_used_ratio: 0.90,
            warm_ahead_bytes: 64 << 20,
        }
    }
}

pub use env::layered;

/// [`layered`], validated: the whole loader as the tests and the `server_config` fuzz target
/// drive it (the binary validates after applying its flags).
#[allow(dead_code)]
pub fn load(
    file: Option<&Path>,
    env: impl Iterator<Item = (String, String)>,
) -> Result<ServerConfig> {
    let cfg = layered(file, env)?;
    cfg.validate()?;
    cfg.check_listeners_apart()?;
    Ok(cfg)
}

/// Shortest `namesrv.broker_expiry_secs`: two of the brokers' 30 s registration intervals.
const MIN_BROKER_EXPIRY_SECS: u64 = 60;

/// Whether listeners on `a` and `b` (same port) would clash: the same address, or an
/// unspecified one covering the other (`0.0.0.0` covers IPv4 addresses; `[::]` covers every
/// address, being dual-stack on Linux).
fn overlap(a: std::net::IpAddr, b: std::net::IpAddr) -> bool {
    let covers = |x: std::net::IpAddr, y: std::net::IpAddr| {
        x.is_unspecified() && (x.is_ipv6() || y.is_ipv4())
    };
    a == b || covers(a, b) || covers(b, a)
}

/// Shortest `broker.idle_timeout_ms`: two of the clients' 30 s heartbeat intervals (a parked
/// pull is silent for up to 30 s too).
const MIN_IDLE_TIMEOUT_MS: u64 = 60_000;

/// Longest `store.retention_hours` accepted (100 years).
const MAX_RETENTION_HOURS: u64 = 24 * 365 * 100;

/// Shortest `store.retention_hours` while the schedule runs: a timer due further ahead than
/// the schedule's 24 h roll keeps its record in the commit log until the roll re-writes it,
/// so retention must outlast one roll with a day to spare (a broker down over a roll, a
/// loaded one behind on it). Below this, such timers could be deleted before they fire.
const MIN_RETENTION_HOURS_WITH_SCHEDULE: u64 = 48;

impl ServerConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.store.flush.as_str(), "sync" | "async") {
            bail!(
                "store.flush must be \"sync\" or \"async\", not {:?}",
                self.store.flush
            );
        }
        if self.broker.max_body_bytes == 0 {
            bail!("broker.max_body_bytes must be positive");
        }
        if self.broker.max_body_bytes > self.broker.max_frame_bytes {
            bail!("broker.max_body_bytes must not exceed broker.max_frame_bytes");
        }
        self.check_file_values()?;
        if self.broker.offset_flush_interval_ms == 0 {
            bail!("broker.offset_flush_interval_ms must be positive");
        }
        self.check_limits_agree()?;
        // 0 would delete every dispatched segment at once, consumed or not (and make the
        // transaction checker copy open halves forward on every tick); 0 is not "no limit".
        if !(1..=MAX_RETENTION_HOURS).contains(&self.store.retention_hours) {
            bail!("store.retention_hours must be between 1 and {MAX_RETENTION_HOURS}");
        }
        if self.schedule.enabled && self.store.retention_hours < MIN_RETENTION_HOURS_WITH_SCHEDULE {
            bail!(
                "store.retention_hours must be at least {MIN_RETENTION_HOURS_WITH_SCHEDULE} while \
                 [schedule] is enabled: timers due more than 24 h ahead stay in the commit log \
                 until the schedule re-writes them every 24 h"
            );
        }
        // A segment holds at least two of the largest records; smaller was raised silently.
        let min_segment = (self.broker.max_body_bytes as u64 + 64 * 1024 + 64) * 2;
        if self.store.segment_bytes < min_segment {
            bail!(
                "store.segment_bytes must be at least {min_segment} (two of the largest records \
                 broker.max_body_bytes allows)"
            );
        }
        // Brokers register every 30 s; an expiry below two of those drops live brokers from
        // the routes between their registrations.
        if self.namesrv.broker_expiry_secs < MIN_BROKER_EXPIRY_SECS {
            bail!("namesrv.broker_expiry_secs must be at least {MIN_BROKER_EXPIRY_SECS}");
        }
        // Open halves must be copied forward before retention can delete them: one hour of
        // the retention is left for the checker's rounds.
        let latest = self
            .store
            .retention_hours
            .saturating_mul(3600)
            .saturating_sub(3600);
        if self
            .txn
            .carry_forward_after_secs
            .is_some_and(|s| s > latest.max(1))
        {
            bail!(
                "txn.carry_forward_after_secs must be at most store.retention_hours minus an hour \
                 ({latest} s): an open half message older than the retention is deleted"
            );
        }
        if self.txn.carry_forward_after_secs == Some(0) {
            bail!("txn.carry_forward_after_secs must be positive");
        }
        // Webhook check-backs are promised HMAC-signed: a service must be able to tell the
        // broker's calls from anyone else's. Unsigned calls were sent when no key was set.
        if self.http.enabled && self.http.webhook_secret.is_none() {
            let webhook_group = self.txn.groups.iter().find(|(_, g)| g.check_url.is_some());
            if let Some((group, _)) = webhook_group {
                bail!(
                    "txn.groups.{group}.check_url needs [http] webhook_secret (at least 16 \
                     bytes): webhook check-backs are HMAC-signed with it"
                );
            }
            if !self.http.check_url_hosts.is_empty() {
                bail!(
                    "[http] check_url_hosts needs [http] webhook_secret (at least 16 bytes): \
                     webhook check-backs are HMAC-signed with it"
                );
            }
        }
        if !self.http.enabled {
            let needs_http = self
                .txn
                .groups
                .iter()
                .find(|(_, g)| g.check_url.is_some() || g.pull_checks == Some(true));
            if let Some((group, _)) = needs_http {
                bail!(
                    "txn.groups.{group}: check_url and pull_checks deliver checks through the \
                     HTTP facade, which is disabled ([http] enabled = false): its checks would \
                     never be delivered"
                );
            }
        }
        self.store_config()
            .validate()
            .map_err(|e| anyhow::anyhow!("store: {e}"))?;
        self.txn_config()?
            .validate()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.schedule.to_config()?;
        if self.http.enabled {
            self.http.to_config()?;
        }
        // The sections' own errors first: `broker_config` turns a bad `[acl]` into a
        // fail-closed ACL, whose refusal would hide the real cause.
        let retry = self.retry.to_config()?;
        retry.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        if self.schedule.enabled {
            retry
                .check_max_delay(self.schedule.to_config()?.max_delay)
                .map_err(|e| anyhow::anyhow!("{e} ([schedule] max_delay_secs)"))?;
        }
        self.acl.to_config()?;
        let broker = self.broker_config(None);
        broker
            .lease
            .validate()
            .map_err(|e| anyhow::anyhow!("[http] {}", http::with_file_keys(&e)))?;
        // Before anything is created (the data folder, the name server): these were refused
        // only by `Broker::start_with`.
        broker
            .validate()
            .map_err(|e| anyhow::anyhow!("[broker] {e}"))?;
        self.namesrv_config().validate().map_err(|e| {
            anyhow::anyhow!("[namesrv] {e} (its frame cap is broker.max_frame_bytes)")
        })?;
        self.tls.load()?;
        Ok(())
    }

    /// Values the store and transaction libraries refuse, checked here first so that the
    /// refusal names the key of the file, in its unit (the libraries say `segment_size`,
    /// `check_interval must be at least 10ms`, `async flush interval`).
    fn check_file_values(&self) -> Result<()> {
        let st = &self.store;
        if st.segment_bytes > i32::MAX as u64 {
            bail!(
                "store.segment_bytes must be at most {} (2 GiB - 1)",
                i32::MAX
            );
        }
        if st.flush == "async" && !(1..=10_000).contains(&st.async_flush_interval_ms) {
            bail!("store.async_flush_interval_ms must be within 1 and 10000");
        }
        let t = &self.txn;
        let at_least_10 = |key: &str, ms: u64| {
            if ms < 10 {
                bail!("{key} must be at least 10");
            }
            Ok(())
        };
        at_least_10("txn.check_interval_ms", t.check_interval_ms)?;
        at_least_10("txn.checkpoint_interval_ms", t.checkpoint_interval_ms)?;
        let age_covers = |key: String, hours: u64, after_ms: u64| {
            if hours.saturating_mul(3_600_000) < after_ms {
                bail!("{key} ({hours} h) must be at least its check_after_ms ({after_ms} ms)");
            }
            Ok(())
        };
        age_covers(
            "txn.max_age_hours".into(),
            t.max_age_hours,
            t.check_after_ms,
        )?;
        for (group, g) in &t.groups {
            if let Some(ms) = g.check_interval_ms {
                at_least_10(&format!("txn.groups.{group}.check_interval_ms"), ms)?;
            }
            let hours = g.max_age_hours.unwrap_or(t.max_age_hours);
            let after = g.check_after_ms.unwrap_or(t.check_after_ms);
            age_covers(format!("txn.groups.{group}.max_age_hours"), hours, after)?;
        }
        Ok(())
    }

    /// Limits that must agree with each other or with what clients do.
    fn check_limits_agree(&self) -> Result<()> {
        // A parked pull sends nothing for up to 30 s and clients heartbeat every 30 s: a
        // shorter idle limit closes healthy consumers' connections over and over.
        if self.broker.idle_timeout_ms < MIN_IDLE_TIMEOUT_MS {
            bail!(
                "broker.idle_timeout_ms must be at least {MIN_IDLE_TIMEOUT_MS}: clients send \
                 nothing for up to 30 s while a pull is parked or between heartbeats"
            );
        }
        // Larger HTTP bodies passed the facade's 413 check and failed in the store instead.
        if self.http.enabled && self.http.max_message_bytes > self.broker.max_body_bytes {
            bail!(
                "http.max_message_bytes ({}) must not exceed broker.max_body_bytes ({})",
                self.http.max_message_bytes,
                self.broker.max_body_bytes
            );
        }
        // Below two segments every sealed segment is over the budget: each would be deleted
        // as soon as it is dispatched, consumed or not (as `retention_hours = 0` would).
        if let Some(bytes) = self.store.retention_bytes {
            let min = self.store.segment_bytes.saturating_mul(2);
            if bytes < min {
                bail!("store.retention_bytes must be at least two segments ({min} bytes)");
            }
        }
        Ok(())
    }

    /// For `sluice serve`: two of its listeners on one port fail only once the store is open
    /// (after a recovery that may be long); refused here instead. Port 0 (any free port) never
    /// collides. (`sluice namesrv` opens one listener and does not call this.)
    pub fn check_listeners_apart(&self) -> Result<()> {
        let mut listeners = vec![("broker.listen", self.broker.listen)];
        if self.namesrv.enabled {
            listeners.push(("namesrv.listen", self.namesrv.listen));
        }
        if self.http.enabled {
            listeners.push(("http.listen", self.http.listen));
        }
        for (i, (a_name, a)) in listeners.iter().enumerate() {
            for (b_name, b) in &listeners[i + 1..] {
                if a.port() != 0 && a.port() == b.port() && overlap(a.ip(), b.ip()) {
                    bail!("{a_name} ({a}) and {b_name} ({b}) use the same port");
                }
            }
        }
        Ok(())
    }

    /// The transaction extension's configuration.
    pub fn txn_config(&self) -> Result<TxnConfig> {
        let t = &self.txn;
        let mut cfg = TxnConfig::default();
        cfg.defaults.check_after = Duration::from_millis(t.check_after_ms);
        cfg.defaults.check_interval = Duration::from_millis(t.check_interval_ms);
        cfg.defaults.check_max = t.check_max;
        cfg.defaults.final_action = final_action(&t.final_action, "txn")?;
        cfg.defaults.max_age = hours(t.max_age_hours);
        cfg.max_open = t.max_open;
        cfg.resolved_retention = Duration::from_secs(t.resolved_retention_secs);
        cfg.checkpoint_interval = Duration::from_millis(t.checkpoint_interval_ms);
        cfg.carry_forward_after = t.carry_forward_after_secs.map(Duration::from_secs);
        cfg.pending_checks_max = t.pending_checks_max;
        cfg.max_checks_per_sec = t.max_checks_per_sec;
        cfg.fresh_half_bytes = t.fresh_half_bytes;
        for (group, g) in &t.groups {
            let name = format!("txn.groups.{group}");
            let over = GroupOverride {
                check_after: g.check_after_ms.map(Duration::from_millis),
                check_interval: g.check_interval_ms.map(Duration::from_millis),
                check_max: g.check_max,
                final_action: g
                    .final_action
                    .as_deref()
                    .map(|f| final_action(f, &name))
                    .transpose()?,
                max_age: g.max_age_hours.map(hours),
                check_url: g.check_url.clone(),
                pull_checks: g.pull_checks,
            };
            cfg.groups.insert(group.clone(), over);
        }
        Ok(cfg)
    }

    /// The storage engine's configuration.
    pub fn store_config(&self) -> StoreConfig {
        let mut s = StoreConfig::new(self.data_dir.join("store"));
        s.segment_size = self.store.segment_bytes;
        s.flush = if self.store.flush == "async" {
            FlushMode::Async {
                interval: Duration::from_millis(self.store.async_flush_interval_ms),
            }
        } else {
            FlushMode::Sync
        };
        s.retention_age = Duration::from_secs(self.store.retention_hours.saturating_mul(3600));
        s.retention_bytes = self.store.retention_bytes;
        s.retention_bytes_min_age = self.retention_bytes_min_age(s.retention_age);
        s.disk_max_used_ratio = self.store.disk_max_used_ratio;
        s.warm_ahead_bytes = self.store.warm_ahead_bytes;
        s.max_record_size = self.broker.max_body_bytes + 64 * 1024;
        s.max_write_batch_bytes = s.max_write_batch_bytes.max(s.max_record_size + 64);
        s.max_unflushed_bytes = s.max_unflushed_bytes.max(s.max_write_batch_bytes as u64);
        s
    }

    /// The youngest segment `retention_bytes` may delete: never one holding a timer the
    /// schedule has not rolled yet (as for `retention_hours`, 48 h), nor an open half message
    /// the transaction checker has not carried forward (it copies those older than
    /// `carry_forward_after_secs`, by default half the retention age; an hour more for its
    /// rounds). Never above the retention age itself.
    fn retention_bytes_min_age(&self, retention_age: Duration) -> Duration {
        let carry = self
            .txn
            .carry_forward_after_secs
            .map_or(retention_age / 2, Duration::from_secs);
        let txn = if self.txn.enabled {
            carry + Duration::from_secs(3600)
        } else {
            Duration::ZERO
        };
        let schedule = if self.schedule.enabled {
            Duration::from_secs(MIN_RETENTION_HOURS_WITH_SCHEDULE * 3600)
        } else {
            Duration::ZERO
        };
        txn.max(schedule).min(retention_age)
    }

    /// The name server's configuration. Its body cap is the frame cap, not the broker's
    /// `max_body_bytes`: a REGISTER_BROKER body lists every topic of a broker (a %RETRY% topic
    /// per consumer group included), and a refused registration drops the broker from every
    /// route once it expires.
    pub fn namesrv_config(&self) -> NameServerConfig {
        NameServerConfig {
            listen: self.namesrv.listen,
            broker_expiry: Duration::from_secs(self.namesrv.broker_expiry_secs),
            max_frame: self.broker.max_frame_bytes,
            max_body: self.broker.max_frame_bytes,
            max_inflight_bytes: self.namesrv.max_inflight_bytes,
            max_brokers: self.namesrv.max_brokers,
            max_topic_routes: self.namesrv.max_topic_routes,
            ..NameServerConfig::default()
        }
    }

    /// The broker's configuration; `local_namesrv` is the in-process name server, if any.
    pub fn broker_config(&self, local_namesrv: Option<SocketAddr>) -> BrokerConfig {
        let mut b = BrokerConfig::new(self.store_config());
        b.listen = self.broker.listen;
        b.advertised_addr = self.broker.advertised_addr;
        b.broker_name = self.broker.broker_name.clone();
        b.cluster_name = self.broker.cluster_name.clone();
        b.namesrv_addrs = if self.broker.namesrv_addrs.is_empty() {
            local_namesrv
                .map(loopback_if_unspecified)
                .into_iter()
                .collect()
        } else {
            self.broker.namesrv_addrs.clone()
        };
        b.auto_create_topic = self.broker.auto_create_topic;
        b.default_topic_queue_nums = self.broker.default_topic_queue_nums;
        b.max_frame = self.broker.max_frame_bytes;
        b.max_body = self.broker.max_body_bytes;
        b.max_inflight_per_connection = self.broker.max_inflight_per_connection;
        b.max_inflight_bytes = self.broker.max_inflight_bytes;
        b.max_connections = self.broker.max_connections;
        b.max_groups_per_connection = self.broker.max_groups_per_connection;
        b.max_consumer_offsets = self.broker.max_consumer_offsets;
        b.max_parked_pulls_per_connection = self.broker.max_parked_pulls_per_connection;
        b.max_parked_pulls = self.broker.max_parked_pulls;
        b.idle_timeout = Duration::from_millis(self.broker.idle_timeout_ms);
        b.drain_timeout = Duration::from_millis(self.broker.drain_timeout_ms);
        b.offset_flush_interval = Duration::from_millis(self.broker.offset_flush_interval_ms);
        b.replays_kept = self.broker.replays_kept;
        b.audit_log_max_bytes = self.broker.audit_log_max_bytes;
        b.max_topics = self.broker.max_topics;
        b.retry_topic_reclaim_after =
            Duration::from_secs(self.broker.retry_topic_reclaim_after_secs);
        // Validated in `validate`; a broken section cannot reach this point.
        b.retry = self.retry.to_config().unwrap_or_default();
        // Fail closed: an invalid section (refused by `validate`) makes the broker refuse to start.
        b.acl = self
            .acl
            .to_config()
            .unwrap_or_else(|_| sluice_broker::acl::AclConfig {
                enabled: true,
                ..Default::default()
            });
        let levels = self.schedule.to_config().ok().map(|s| s.levels);
        self.http.apply_lease(&mut b.lease, levels);
        b
    }
}

/// 0.0.0.0:port becomes 127.0.0.1:port, an address a client can dial.
pub fn loopback_if_unspecified(a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], a.port()))
    } else {
        a
    }
}

#[cfg(test)]
mod tests;
