//! The server's configuration file (TOML), layered: defaults < file < `SLUICE_*` environment
//! variables < command-line flags. Unknown keys are refused, so a typo never silently falls back
//! to a default.

mod acl;
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

use anyhow::{bail, Context, Result};
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
    /// Queues of an auto-created topic (capped by the client's request). Default 8.
    pub default_topic_queue_nums: u32,
    /// Largest frame accepted. Default 16 MiB. Also the name server's body cap: a
    /// registration body lists every topic of a broker.
    pub max_frame_bytes: usize,
    /// Largest message body the broker accepts. Default 4 MiB. Not applied to the name server.
    pub max_body_bytes: usize,
    /// Answered requests in flight per connection; one more waits up to 200 ms for a slot (the
    /// connection is not read meanwhile), then gets SYSTEM_BUSY. Default 256.
    pub max_inflight_per_connection: usize,
    /// Open connections. Default 10 000.
    pub max_connections: usize,
    /// Long-polling pulls parked at once per connection before SYSTEM_BUSY. Default 4 096.
    pub max_parked_pulls_per_connection: usize,
    /// Long-polling pulls parked at once across the broker before SYSTEM_BUSY. Default
    /// 100 000.
    pub max_parked_pulls: usize,
    /// A connection silent this long is closed, and so is one that accepts none of our bytes
    /// for this long (it stopped reading). Default 120 000 (RocketMQ's).
    pub idle_timeout_ms: u64,
    /// How often consumer offsets are written to `config/consumerOffset.json`; a crash
    /// replays at most this much consumption (at-least-once). Default 5 000.
    pub offset_flush_interval_ms: u64,
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
    /// Deliver checks to this URL (through the HTTP facade) instead of a TCP producer.
    pub check_url: Option<String>,
    /// Queue checks for pulling over HTTP instead of sending them to a TCP producer.
    pub pull_checks: Option<bool>,
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
            max_connections: 10_000,
            max_parked_pulls_per_connection: 4096,
            max_parked_pulls: 100_000,
            idle_timeout_ms: 120_000,
            offset_flush_interval_ms: 5_000,
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

/// Builds the layered table: the file (if any), then `SLUICE_*` variables from `env`.
pub fn load(
    file: Option<&Path>,
    env: impl Iterator<Item = (String, String)>,
) -> Result<ServerConfig> {
    let mut table = match file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))?;
            text.parse::<toml::Table>()
                .with_context(|| format!("parsing config {}", p.display()))?
        }
        None => toml::Table::new(),
    };
    for (key, value) in env {
        apply_env(&mut table, &key, &value)?;
    }
    let cfg: ServerConfig =
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| {
                anyhow::anyhow!(
                    "invalid configuration (unknown keys are refused): {}",
                    without_values(&e.to_string())
                )
            })?;
    cfg.validate()?;
    Ok(cfg)
}

const SECTIONS: [&str; 9] = [
    "namesrv", "broker", "store", "http", "txn", "schedule", "retry", "acl", "tls",
];
/// Variables that configure something other than the file's keys (the crash point is a test
/// hook, checked by `sluice_store::crash_point::armed` at start).
const NOT_CONFIG: [&str; 3] = [
    "SLUICE_LOG",
    "SLUICE_CONFIG",
    sluice_store::crash_point::VAR,
];

/// `SLUICE_BROKER_LISTEN=...` sets `[broker] listen`; `SLUICE_DATA_DIR` sets `data_dir`.
/// Values are read as TOML (numbers, booleans, arrays) and otherwise as strings.
fn apply_env(table: &mut toml::Table, key: &str, value: &str) -> Result<()> {
    let Some(rest) = key.strip_prefix("SLUICE_") else {
        return Ok(());
    };
    if NOT_CONFIG.contains(&key) {
        return Ok(());
    }
    let rest = rest.to_ascii_lowercase();
    if rest != "data_dir" && !SECTIONS.iter().any(|s| rest.starts_with(&format!("{s}_"))) {
        // Not a key of the file: SLUICE_NAMESRV and SLUICE_HTTP are the examples' addresses of
        // a running Sluice, SLUICE_CRASH_CYCLES and the like configure tests. Taking them as
        // keys made `sluice` refuse to start in a shell that had them set.
        eprintln!("sluice: {key} is not a configuration variable; ignored");
        return Ok(());
    }
    let parsed = parse_env_value(value);
    for section in SECTIONS {
        if let Some(field) = rest.strip_prefix(section).and_then(|r| r.strip_prefix('_')) {
            let entry = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(sub) = entry.as_table_mut() else {
                bail!("[{section}] in the config file is not a table")
            };
            sub.insert(field.to_string(), parsed);
            return Ok(());
        }
    }
    table.insert(rest, parsed);
    Ok(())
}

/// An error text with its quoted values left out: a value of the wrong type is quoted in it,
/// and the value may be a secret (`SLUICE_ACL_ACCOUNTS`, `SLUICE_HTTP_TOKENS` with a quoting
/// mistake fell back to a plain string and was printed whole).
fn without_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut quoted, mut escaped) = (false, false);
    for c in text.chars() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => quoted = false,
            (true, false, _) => {}
            (false, _, '"') => {
                out.push_str("\"…\"");
                quoted = true;
            }
            (false, _, c) => out.push(c),
        }
    }
    out
}

fn parse_env_value(value: &str) -> toml::Value {
    format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

/// Shortest `namesrv.broker_expiry_secs`: two of the brokers' 30 s registration intervals.
const MIN_BROKER_EXPIRY_SECS: u64 = 60;

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
        if self.broker.max_body_bytes > self.broker.max_frame_bytes {
            bail!("broker.max_body_bytes must not exceed broker.max_frame_bytes");
        }
        if self.broker.idle_timeout_ms == 0 || self.broker.offset_flush_interval_ms == 0 {
            bail!("broker.idle_timeout_ms and broker.offset_flush_interval_ms must be positive");
        }
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
        self.broker_config(None)
            .lease
            .validate()
            .map_err(|e| anyhow::anyhow!("[http] leases: {e}"))?;
        self.retry
            .to_config()?
            .validate()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.acl.to_config()?;
        self.tls.load()?;
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
        b.max_connections = self.broker.max_connections;
        b.max_parked_pulls_per_connection = self.broker.max_parked_pulls_per_connection;
        b.max_parked_pulls = self.broker.max_parked_pulls;
        b.idle_timeout = Duration::from_millis(self.broker.idle_timeout_ms);
        b.offset_flush_interval = Duration::from_millis(self.broker.offset_flush_interval_ms);
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
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn defaults_are_valid_and_sync() {
        let cfg = load(None, env(&[])).unwrap();
        assert_eq!(cfg.store.flush, "sync");
        assert_eq!(cfg.broker.listen.port(), 10911);
        assert_eq!(cfg.namesrv.listen.port(), 9876);
        assert_eq!(cfg.data_dir, PathBuf::from("./sluice-data"));
    }

    /// The size budget never takes a segment the schedule or the transaction checker may
    /// still need, and never waits longer than the age limit.
    #[test]
    fn the_size_budget_spares_what_timers_and_open_halves_need() {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        let with = |retention: &str, schedule: &str| {
            load(
                None,
                env(&[
                    ("SLUICE_STORE_RETENTION_HOURS", retention),
                    ("SLUICE_STORE_RETENTION_BYTES", "1073741824"),
                    ("SLUICE_SCHEDULE_ENABLED", schedule),
                ]),
            )
            .unwrap()
            .store_config()
        };
        let s = with("72", "true");
        assert_eq!(s.retention_bytes, Some(1 << 30));
        assert_eq!(s.retention_bytes_min_age, hours(48));
        assert_eq!(with("200", "true").retention_bytes_min_age, hours(101));
        assert_eq!(with("72", "false").retention_bytes_min_age, hours(37));
        assert_eq!(with("1", "false").retention_bytes_min_age, hours(1));
        // Neither transactions nor the schedule: nothing of the broker's own to keep.
        let plain = load(
            None,
            env(&[
                ("SLUICE_STORE_RETENTION_BYTES", "1073741824"),
                ("SLUICE_SCHEDULE_ENABLED", "false"),
                ("SLUICE_TXN_ENABLED", "false"),
            ]),
        )
        .unwrap()
        .store_config();
        assert_eq!(plain.retention_bytes_min_age, Duration::ZERO);
        // A later carry-forward keeps younger segments off the budget for longer.
        let late_carry = load(
            None,
            env(&[
                ("SLUICE_STORE_RETENTION_HOURS", "200"),
                (
                    "SLUICE_TXN_CARRY_FORWARD_AFTER_SECS",
                    &(150 * 3600).to_string(),
                ),
            ]),
        )
        .unwrap()
        .store_config();
        assert_eq!(late_carry.retention_bytes_min_age, hours(151));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[broker]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap();
        let err = format!("{:#}", load(Some(&p), env(&[])).unwrap_err());
        assert!(err.contains("listen_port"), "{err}");
        let err = format!(
            "{:#}",
            load(None, env(&[("SLUICE_BROKER_NO_SUCH", "1")])).unwrap_err()
        );
        assert!(err.contains("no_such"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "data_dir = \"/a\"\n[store]\nflush = \"async\"\n").unwrap();
        let cfg = load(
            Some(&p),
            env(&[
                ("SLUICE_DATA_DIR", "/b"),
                ("SLUICE_STORE_FLUSH", "sync"),
                ("SLUICE_BROKER_DEFAULT_TOPIC_QUEUE_NUMS", "4"),
                ("SLUICE_LOG", "debug"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/b"));
        assert_eq!(cfg.store.flush, "sync");
        assert_eq!(cfg.broker.default_topic_queue_nums, 4);
    }

    #[test]
    fn the_txn_section_has_defaults_group_overrides_and_env() {
        let cfg = load(None, env(&[])).unwrap();
        let t = cfg.txn_config().unwrap();
        assert_eq!(t.defaults.check_after, Duration::from_secs(6));
        assert_eq!(t.defaults.check_max, 15);
        assert!(cfg.txn.enabled);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[txn]\nfinal_action = \"keep\"\n[txn.groups.pay]\ncheck_max = 3\npull_checks = true\n",
        )
        .unwrap();
        let cfg = load(Some(&p), env(&[("SLUICE_TXN_CHECK_AFTER_MS", "300")])).unwrap();
        let t = cfg.txn_config().unwrap();
        assert_eq!(t.defaults.check_after, Duration::from_millis(300));
        let pay = t.policy("pay");
        assert_eq!((pay.check_max, pay.pull_checks), (3, true));
        assert_eq!(pay.final_action, FinalAction::Keep);
        std::fs::write(&p, "[txn.groups.pay]\nchek_max = 3\n").unwrap();
        let err = format!("{:#}", load(Some(&p), env(&[])).unwrap_err());
        assert!(err.contains("chek_max"), "{err}");
        let err = format!(
            "{:#}",
            load(None, env(&[("SLUICE_TXN_FINAL_ACTION", "drop")])).unwrap_err()
        );
        assert!(err.contains("final_action"), "{err}");
        let err = format!(
            "{:#}",
            load(None, env(&[("SLUICE_TXN_CHECK_MAX", "0")])).unwrap_err()
        );
        assert!(err.contains("check_max"), "{err}");
    }

    #[test]
    fn the_retry_section_has_defaults_group_overrides_and_env() {
        let cfg = load(None, env(&[])).unwrap();
        let r = cfg.broker_config(None).retry;
        assert_eq!(r.defaults.max_reconsume_times, 16);
        assert_eq!(r.defaults.backoff, sluice_broker::Backoff::default());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[retry.groups.fast]\nbackoff = \"ladder\"\nladder_ms = [10, 20]\nmax_reconsume_times = 2\n",
        )
        .unwrap();
        let cfg = load(Some(&p), env(&[("SLUICE_RETRY_MAX_RECONSUME_TIMES", "3")])).unwrap();
        let r = cfg.broker_config(None).retry;
        assert_eq!(r.defaults.max_reconsume_times, 3);
        let fast = r.policy("fast");
        assert_eq!(fast.max_reconsume_times, 2);
        assert_eq!(
            fast.backoff,
            sluice_broker::Backoff::Ladder(vec![
                Duration::from_millis(10),
                Duration::from_millis(20)
            ])
        );
        std::fs::write(&p, "[retry.groups.g]\nmax_retries = 3\n").unwrap();
        let err = format!("{:#}", load(Some(&p), env(&[])).unwrap_err());
        assert!(err.contains("max_retries"), "{err}");
        let err = format!(
            "{:#}",
            load(None, env(&[("SLUICE_RETRY_BACKOFF", "linear")])).unwrap_err()
        );
        assert!(err.contains("backoff"), "{err}");
        let err = format!(
            "{:#}",
            load(None, env(&[("SLUICE_RETRY_BACKOFF", "ladder")])).unwrap_err()
        );
        assert!(err.contains("ladder"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        let err = format!(
            "{:#}",
            load(None, env(&[("SLUICE_STORE_FLUSH", "sometimes")])).unwrap_err()
        );
        assert!(err.contains("store.flush"), "{err}");
        let err = format!(
            "{:#}",
            load(
                None,
                env(&[
                    ("SLUICE_STORE_ASYNC_FLUSH_INTERVAL_MS", "60000"),
                    ("SLUICE_STORE_FLUSH", "async")
                ])
            )
            .unwrap_err()
        );
        assert!(err.contains("interval"), "{err}");
        let err = format!(
            "{:#}",
            load(None, env(&[("SLUICE_BROKER_IDLE_TIMEOUT_MS", "0")])).unwrap_err()
        );
        assert!(err.contains("idle_timeout_ms"), "{err}");
        let err = format!(
            "{:#}",
            load(None, env(&[("SLUICE_TLS_MODE", "sometimes")])).unwrap_err()
        );
        assert!(err.contains("[tls] mode"), "{err}");
        let err = format!(
            "{:#}",
            load(None, env(&[("SLUICE_TLS_HTTP", "true")])).unwrap_err()
        );
        assert!(err.contains("cert_file and key_file"), "{err}");
    }

    #[test]
    fn connection_idle_time_and_offset_saves_are_configurable() {
        let b = load(None, env(&[])).unwrap().broker_config(None);
        assert_eq!(b.idle_timeout, Duration::from_secs(120));
        assert_eq!(b.offset_flush_interval, Duration::from_secs(5));
        let cfg = load(
            None,
            env(&[
                ("SLUICE_BROKER_IDLE_TIMEOUT_MS", "30000"),
                ("SLUICE_BROKER_OFFSET_FLUSH_INTERVAL_MS", "1000"),
            ]),
        )
        .unwrap();
        let b = cfg.broker_config(None);
        assert_eq!(b.idle_timeout, Duration::from_secs(30));
        assert_eq!(b.offset_flush_interval, Duration::from_secs(1));
    }

    /// Accepted before: retention 0 deleted every dispatched segment (consumed or not) and
    /// made the transaction checker copy open halves forward on every tick; a carry-forward of
    /// 0 did the latter; a group checked over HTTP with the facade off was never checked.
    #[test]
    fn settings_that_would_delete_everything_or_strand_checks_are_refused() {
        for (k, v, names) in [
            ("SLUICE_STORE_RETENTION_HOURS", "0", "retention_hours"),
            ("SLUICE_STORE_RETENTION_HOURS", "876001", "retention_hours"),
            ("SLUICE_STORE_RETENTION_HOURS", "47", "schedule"),
            (
                "SLUICE_TXN_CARRY_FORWARD_AFTER_SECS",
                "0",
                "carry_forward_after_secs",
            ),
            (
                // Past the default 72 h retention: open halves would be deleted first.
                "SLUICE_TXN_CARRY_FORWARD_AFTER_SECS",
                "300000",
                "carry_forward_after_secs",
            ),
            ("SLUICE_STORE_SEGMENT_BYTES", "1048576", "segment_bytes"),
            (
                "SLUICE_NAMESRV_BROKER_EXPIRY_SECS",
                "20",
                "broker_expiry_secs",
            ),
        ] {
            let err = load(None, env(&[(k, v)])).expect_err(k).to_string();
            assert!(err.contains(names), "{k}={v}: {err}");
        }
        // Without the schedule, short retention deletes nothing it still needs.
        let cfg = load(
            None,
            env(&[
                ("SLUICE_STORE_RETENTION_HOURS", "1"),
                ("SLUICE_SCHEDULE_ENABLED", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.store.retention_hours, 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            "[http]\nenabled = false\n[txn.groups.g]\ncheck_url = \"http://127.0.0.1:9/c\"\n",
        )
        .unwrap();
        let err = load(Some(&path), env(&[]))
            .expect_err("stranded")
            .to_string();
        assert!(err.contains("txn.groups.g"), "{err}");
    }

    /// Webhook check-backs went out unsigned when no key was set, although they are promised
    /// HMAC-signed: a service could not tell the broker's calls from anyone else's.
    #[test]
    fn webhook_check_backs_need_a_signing_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        for (toml, names) in [
            (
                "[txn.groups.g]\ncheck_url = \"http://127.0.0.1:9/c\"\n",
                "txn.groups.g.check_url",
            ),
            (
                "[http]\ncheck_url_hosts = [\"127.0.0.1\"]\n",
                "check_url_hosts",
            ),
        ] {
            std::fs::write(&path, toml).unwrap();
            let err = load(Some(&path), env(&[])).expect_err(toml).to_string();
            assert!(
                err.contains(names) && err.contains("webhook_secret"),
                "{err}"
            );
            let key = "webhook_secret = \"0123456789abcdef\"\n";
            let with_key = if toml.starts_with("[http]") {
                toml.replace("[http]\n", &format!("[http]\n{key}"))
            } else {
                format!("[http]\n{key}{toml}")
            };
            std::fs::write(&path, with_key).unwrap();
            load(Some(&path), env(&[])).expect("accepted with a key");
        }
    }

    /// `SLUICE_NAMESRV` and `SLUICE_HTTP` (the examples' addresses of a running Sluice) and
    /// test variables were taken as keys, so `sluice` refused to start in a shell that had
    /// them set; a malformed secret-bearing variable was printed whole in the error.
    #[test]
    fn variables_that_are_not_keys_are_ignored_and_errors_do_not_echo_values() {
        let cfg = load(
            None,
            env(&[
                ("SLUICE_NAMESRV", "127.0.0.1:9876"),
                ("SLUICE_HTTP", "http://127.0.0.1:8080"),
                ("SLUICE_CRASH_CYCLES", "100"),
            ]),
        )
        .expect("not configuration variables");
        assert!(cfg.namesrv.enabled);
        let err = load(
            None,
            env(&[(
                "SLUICE_ACL_ACCOUNTS",
                r#"[{access_key = "ak", secret_key = "topsecret-123"}"#,
            )]),
        )
        .expect_err("malformed")
        .to_string();
        assert!(!err.contains("topsecret-123"), "{err}");
        assert!(err.contains("acl"), "the error still names the key: {err}");
        let typo = load(None, env(&[("SLUICE_BROKER_LISTN", "127.0.0.1:1")]));
        assert!(typo.is_err(), "a typo inside a section is still refused");
    }

    #[test]
    fn parked_pulls_per_connection_are_configurable() {
        let b = load(None, env(&[])).unwrap().broker_config(None);
        assert_eq!(b.max_parked_pulls_per_connection, 4096);
        let cfg = load(
            None,
            env(&[("SLUICE_BROKER_MAX_PARKED_PULLS_PER_CONNECTION", "16")]),
        )
        .unwrap();
        assert_eq!(cfg.broker_config(None).max_parked_pulls_per_connection, 16);
        assert_eq!(b.max_parked_pulls, 100_000);
        let cfg = load(None, env(&[("SLUICE_BROKER_MAX_PARKED_PULLS", "500")])).unwrap();
        assert_eq!(cfg.broker_config(None).max_parked_pulls, 500);
    }

    #[test]
    fn the_name_server_accepts_registration_bodies_up_to_the_frame_size() {
        let cfg = load(None, env(&[])).unwrap();
        let n = cfg.namesrv_config();
        assert_eq!(n.max_body, n.max_frame);
        // A registration body bigger than the broker's own body cap decodes whole.
        let body_len = cfg.broker_config(None).max_body + (1 << 20);
        let register = sluice_protocol::RemotingCommand::request(
            sluice_protocol::request_code::REGISTER_BROKER,
            Default::default(),
        )
        .with_body(vec![b'x'; body_len]);
        let mut wire = bytes::BytesMut::new();
        register.encode(&mut wire).unwrap();
        let decoder = sluice_protocol::FrameDecoder::new(n.max_frame, n.max_body);
        let decoded = decoder.decode(&mut wire).unwrap().unwrap();
        assert_eq!(decoded.body.len(), body_len);
        let cfg = load(
            None,
            env(&[
                ("SLUICE_BROKER_MAX_FRAME_BYTES", "33554432"),
                ("SLUICE_BROKER_MAX_BODY_BYTES", "1048576"),
            ]),
        )
        .unwrap();
        let n = cfg.namesrv_config();
        assert_eq!((n.max_frame, n.max_body), (33_554_432, 33_554_432));
    }

    #[test]
    fn the_crash_point_variable_is_not_a_config_key() {
        let cfg = load(None, env(&[("SLUICE_CRASH_POINT", "commitlog.sealed")]));
        assert!(cfg.is_ok(), "{:?}", cfg.err());
    }
}
