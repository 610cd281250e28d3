//! Everything a request handler may touch, shared by the processor and the background tasks.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use sluice_protocol::message::UniqKeyGenerator;
use sluice_protocol::remoting::custom::NotifyConsumerIdsChangedRequestHeader;
use sluice_protocol::{request_code, RemotingCommand};
use sluice_store::Store;
use tokio::sync::watch;

use crate::clients::ClientManager;
use crate::config::BrokerConfig;
use crate::hooks::PutHook;
use crate::locks::QueueLocks;
use crate::longpoll::PullWaiters;
use crate::offsets::OffsetManager;
use crate::remoting::tracker::TaskTracker;
use crate::stats::Counters;
use crate::topic::TopicManager;

/// The broker's shared state. Owned by an `Arc`; dropped when the last task ends, which is when
/// the store's folder lock is released.
pub(crate) struct BrokerContext {
    pub(crate) cfg: BrokerConfig,
    /// The address in routes, message ids and records.
    pub(crate) advertised: SocketAddr,
    pub(crate) store: Arc<Store>,
    pub(crate) topics: Arc<TopicManager>,
    pub(crate) offsets: Arc<OffsetManager>,
    pub(crate) clients: ClientManager,
    pub(crate) locks: QueueLocks,
    pub(crate) waiters: Arc<PullWaiters>,
    /// Parked pulls per connection, capped by `cfg.max_parked_pulls_per_connection`.
    pub(crate) parked: Arc<crate::longpoll::ParkedPerConnection>,
    pub(crate) hooks: Vec<Arc<dyn PutHook>>,
    /// Extensions by the request codes they answer.
    pub(crate) handlers: std::collections::HashMap<i32, Arc<dyn crate::services::Extension>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) tracker: Arc<TaskTracker>,
    /// Flips to true when shutdown starts; parked pulls answer at once.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Makes UNIQ_KEYs for messages sent without one.
    pub(crate) uniq: UniqKeyGenerator,
    /// Spreads sends with a negative queue id over the queues.
    queue_picker: AtomicU32,
    /// Replay tasks, ledgers and the audit log of the dead-letter queues.
    pub(crate) dlq: Arc<crate::dlq::state::DlqState>,
    /// In-flight leases of HTTP consumers (created on first use).
    pub(crate) leases: std::sync::OnceLock<Arc<crate::lease::state::LeaseState>>,
    /// Stored and pulled rates and daily totals (GET_BROKER_RUNTIME_INFO).
    pub(crate) rates: crate::rates::Rates,
    /// How the registrations with name servers went (readiness).
    pub(crate) registration: Arc<super::register::RegistrationStatus>,
}

impl BrokerContext {
    /// The server's counters, with the offset manager's refusals.
    pub(crate) fn stats(&self) -> crate::BrokerStats {
        let mut s = self.counters.snapshot();
        s.offset_commits_refused = self.offsets.refused();
        s
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: BrokerConfig,
        advertised: SocketAddr,
        store: Arc<Store>,
        topics: Arc<TopicManager>,
        offsets: Arc<OffsetManager>,
        hooks: Vec<Arc<dyn PutHook>>,
        counters: Arc<Counters>,
        tracker: Arc<TaskTracker>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let ip = match advertised.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
        };
        let dlq = Arc::new(crate::dlq::state::DlqState::new(
            &cfg.store.data_dir,
            cfg.replays_kept,
            cfg.audit_log_max_bytes,
        ));
        let clients = ClientManager::new(cfg.max_groups_per_connection);
        let parked = Arc::new(crate::longpoll::ParkedPerConnection::new(
            cfg.max_parked_pulls_per_connection,
        ));
        Self {
            cfg,
            advertised,
            store,
            topics,
            offsets,
            clients,
            locks: QueueLocks::new(crate::locks::LOCK_MAX_LIVE),
            waiters: Arc::new(PullWaiters::default()),
            parked,
            hooks,
            handlers: std::collections::HashMap::new(),
            counters,
            tracker,
            shutdown,
            uniq: UniqKeyGenerator::new(ip),
            queue_picker: AtomicU32::new(0),
            dlq,
            leases: std::sync::OnceLock::new(),
            rates: crate::rates::Rates::default(),
            registration: Arc::default(),
        }
    }

    /// True once shutdown started.
    pub(crate) fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// A queue id in `0..queues` for a send that asked the broker to pick.
    pub(crate) fn pick_queue(&self, queues: i32) -> i32 {
        let n = self.queue_picker.fetch_add(1, Ordering::Relaxed);
        (n % queues.max(1) as u32) as i32
    }

    /// Whether a consumer group has a member: a TCP connection in the group, or an HTTP
    /// consumer (a lease book in use, or one that received within `client_expiry`, the time
    /// a silent TCP member is kept).
    pub(crate) fn group_has_members(&self, group: &str) -> bool {
        self.clients.has_consumer_group(group) || self.has_http_member(group)
    }

    /// Whether HTTP consumers count as members of `group`: leases held, or a receive, ack,
    /// nack or extend within the client expiry.
    pub(crate) fn has_http_member(&self, group: &str) -> bool {
        self.leases
            .get()
            .is_some_and(|l| l.has_member(group, self.cfg.client_expiry))
    }

    /// Shortens the orderly queue locks of consumers that just left their group (last
    /// connection closed, expired, unregistered) to lapse once the client can no longer trust
    /// them (`locks::DEPARTED_LIVE`), instead of after 60 s.
    pub(crate) fn release_departed_locks(&self) {
        for (group, client_id) in self.clients.take_departed() {
            self.locks.client_departed(&group, &client_id);
        }
    }

    /// Sends one-way NOTIFY_CONSUMER_IDS_CHANGED to every member of each group, without waiting:
    /// a member whose queue is full misses it and rebalances on its 20 s timer instead.
    pub(crate) fn notify_consumers_changed(&self, groups: &[String]) {
        for group in groups {
            let header = NotifyConsumerIdsChangedRequestHeader {
                consumer_group: group.clone(),
            };
            for conn in self.clients.consumer_connections(group) {
                let cmd = RemotingCommand::request(
                    request_code::NOTIFY_CONSUMER_IDS_CHANGED,
                    header.to_ext(),
                );
                if let Err(e) = conn.try_invoke_oneway(cmd) {
                    tracing::debug!(group = %group, remote = %conn.remote_addr(), error = %e, "consumer ids change notification not sent");
                }
            }
            tracing::info!(group = %group, "consumer group membership changed; members notified");
        }
    }
}
