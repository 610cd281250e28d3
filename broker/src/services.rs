//! What crates built on the broker (transactions, delays, retries, the HTTP facade) get: a
//! handle to the broker's services, and the [`Extension`] trait through which they answer
//! request codes, run background work and stop with the broker.
//!
//! An extension is started after the store and state files are open and before the broker
//! accepts connections; it is stopped after in-flight requests finish and before the store
//! closes. An extension that keeps its [`BrokerServices`] must drop it in [`Extension::stop`]:
//! the services hold the broker's state alive.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use sluice_protocol::remoting::body::TopicConfig;
use sluice_protocol::RemotingCommand;
use sluice_store::{Appended, MessageInput, Store, StoreError};
use tokio::sync::watch;

use crate::broker::context::BrokerContext;
use crate::clients::ConsumerGroupInfo;
use crate::error::BrokerError;
use crate::ConnectionHandle;

/// A boxed, sendable future (extension methods are object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A feature added to the broker by a later crate.
pub trait Extension: Send + Sync + 'static {
    /// Name for logs.
    fn name(&self) -> &'static str;

    /// Called once before the broker accepts connections. An error stops the start.
    fn start(&self, services: BrokerServices) -> Result<(), String> {
        let _ = services;
        Ok(())
    }

    /// Request codes this extension answers; the broker passes them to [`Extension::handle`].
    fn request_codes(&self) -> &'static [i32] {
        &[]
    }

    /// Answers one request with one of [`Extension::request_codes`]; `None` sends no response
    /// (one-way requests). Runs on the request's task with the broker's panic containment.
    fn handle(
        &self,
        conn: ConnectionHandle,
        req: RemotingCommand,
    ) -> BoxFuture<'static, Option<RemotingCommand>> {
        let _ = conn;
        Box::pin(async move { Some(crate::reply::not_supported(&req)) })
    }

    /// Called once at shutdown, before the store closes: stop background work, drop the
    /// [`BrokerServices`].
    fn stop(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// The broker's services, for extensions. Cheap to clone.
#[derive(Clone)]
pub struct BrokerServices {
    pub(crate) ctx: Arc<BrokerContext>,
}

impl std::fmt::Debug for BrokerServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerServices")
            .field("broker", &self.ctx.cfg.broker_name)
            .finish()
    }
}

/// [`BrokerServices::delete_topic`] once its checks passed.
async fn delete_topic(
    ctx: &BrokerContext,
    name: &str,
) -> Result<Option<TopicConfig>, DeleteTopicError> {
    let Some((deleting, removed)) = ctx
        .topics
        .begin_delete(name)
        .map_err(|()| DeleteTopicError::Deleting)?
    else {
        return Ok(None);
    };
    match ctx.store.retire_queues(name).await {
        Ok(queues) => {
            // Before sends may create the topic again: what is forgotten here is the old
            // topic's, never the new one's.
            let leases = ctx.leases.get().map_or(0, |l| l.forget_topic(name));
            let groups = ctx.offsets.remove_topic(name);
            deleting.finish();
            tracing::info!(
                topic = name,
                groups,
                queues,
                leases,
                "deleted topic's messages hidden, its consumer offsets and leases forgotten"
            );
            Ok(Some(removed))
        }
        Err(e) => {
            tracing::error!(topic = name, error = %e, "hiding a deleted topic's messages failed; the topic is put back");
            deleting.undo();
            Err(DeleteTopicError::Store(e))
        }
    }
}

/// Why [`BrokerServices::delete_topic`] deleted nothing.
#[derive(Debug, thiserror::Error)]
pub enum DeleteTopicError {
    /// A system topic, or the retry topic of a group that has members.
    #[error("{0}")]
    Refused(String),
    /// The topic's stored messages could not be hidden (the store is busy, full or failing);
    /// the topic is as it was.
    #[error("the topic's stored messages could not be hidden: {0}")]
    Store(#[from] sluice_store::StoreError),
    /// Another deletion of the topic is under way (for a few milliseconds); it may yet fail
    /// and put the topic back, so this one is not answered "no such topic".
    #[error("the topic is being deleted")]
    Deleting,
    /// The deletion's task ended abnormally (a bug); see the log.
    #[error("{0}")]
    Internal(String),
}

impl BrokerServices {
    /// With ACL on: may the account that signed `req` (from `peer`) `perm` on `topic`? For
    /// extension requests whose topic is known only once the handler has looked something
    /// up (END_TRANSACTION's half message). `Err` is the NO_PERMISSION remark.
    pub fn authorize_topic(
        &self,
        peer: SocketAddr,
        req: &RemotingCommand,
        topic: &str,
        perm: crate::acl::Perm,
    ) -> Result<(), String> {
        crate::acl::authorize_topic(&self.ctx.cfg.acl, peer, req, topic, perm).map_err(|d| d.0)
    }

    /// Why RocketMQ clients cannot route to this broker: it has name servers to register
    /// with, and none accepted a registration since the start (the newest failure is named).
    /// `None` without name servers, and once one accepted.
    pub fn registration_problem(&self) -> Option<String> {
        if self.ctx.cfg.namesrv_addrs.is_empty() {
            return None;
        }
        self.ctx.registration.problem()
    }

    /// The storage engine.
    pub fn store(&self) -> &Arc<Store> {
        &self.ctx.store
    }

    /// The address in routes, message ids and records.
    pub fn advertised_addr(&self) -> SocketAddr {
        self.ctx.advertised
    }

    /// This broker's name.
    pub fn broker_name(&self) -> &str {
        &self.ctx.cfg.broker_name
    }

    /// This broker's cluster name.
    pub fn cluster_name(&self) -> &str {
        &self.ctx.cfg.cluster_name
    }

    /// Appends messages straight to the store, past the put hooks (a commit re-puts a half
    /// message; a timer releases a delayed one), and waits for durability.
    pub async fn put(&self, messages: Vec<MessageInput>) -> Result<Vec<Appended>, StoreError> {
        self.ctx.store.append(messages, true)?.await
    }

    /// Sends one message as a producer would: topic checks, put hooks (delays, transactions),
    /// then a durable append. The HTTP facade's produce path.
    pub async fn produce(
        &self,
        message: crate::produce::Produce,
    ) -> Result<crate::produce::Produced, crate::produce::ProduceError> {
        crate::produce::produce(&self.ctx, message).await
    }

    /// A topic's configuration.
    pub fn topic(&self, name: &str) -> Option<TopicConfig> {
        self.ctx.topics.get(name)
    }

    /// Deletes a user topic: its configuration (persisted; name servers hear of it), every
    /// group's committed offsets of it, and its stored messages from queue reads (they age out
    /// with retention; see [`sluice_store::Store::retire_queues`]), so a topic created again
    /// under its name starts empty. System topics (the default template, schedule,
    /// transaction and dead-letter topics) are refused, and so is a consumer group's retry
    /// topic while the group has members. Sends do not create the topic again until its
    /// messages are hidden, and `topics.json` keeps it until then. When they cannot be hidden
    /// (a busy, full or failing disk), the topic is put back and nothing changes. `Ok(None)`:
    /// no such topic.
    pub async fn delete_topic(&self, name: &str) -> Result<Option<TopicConfig>, DeleteTopicError> {
        if let Some(group) = name.strip_prefix(crate::topic::RETRY_PREFIX) {
            self.retry_topic_unused(name, group)
                .map_err(DeleteTopicError::Refused)?;
        } else if name == crate::topic::DEFAULT_TOPIC || crate::topic::is_broker_topic(name) {
            return Err(DeleteTopicError::Refused(format!(
                "{name} is a system topic and cannot be deleted"
            )));
        }
        // Run to the end whatever becomes of the caller (an HTTP client that hangs up): a
        // deletion stopped halfway would leave the topic out of the table but in topics.json.
        let ctx = Arc::clone(&self.ctx);
        let name = name.to_owned();
        tokio::spawn(async move { delete_topic(&ctx, &name).await })
            .await
            .map_err(|e| DeleteTopicError::Internal(format!("the deletion's task failed: {e}")))?
    }

    /// A consumer group's retry topic may go once the group has no member over TCP and no
    /// lease book over HTTP: every group named in a heartbeat gets one, and they count toward
    /// `max_topics`, so groups that no longer exist (or were invented) would hold that room
    /// for good. A member's next heartbeat creates it again.
    fn retry_topic_unused(&self, name: &str, group: &str) -> Result<(), String> {
        if self.group_has_members(group) {
            return Err(format!(
                "{name} is the retry topic of consumer group {group}, which has members; \
                 it can be deleted once they are gone"
            ));
        }
        Ok(())
    }

    fn group_has_members(&self, group: &str) -> bool {
        self.ctx.group_has_members(group)
    }

    /// Groups whose HTTP consumers count as members now (see
    /// [`Self::http_consumers_active`]).
    pub fn http_consumer_groups(&self) -> Vec<String> {
        let Some(leases) = self.ctx.leases.get() else {
            return Vec::new();
        };
        let expiry = self.ctx.cfg.client_expiry;
        leases
            .book_groups()
            .into_iter()
            .filter(|g| leases.has_member(g, expiry))
            .collect()
    }

    /// Whether HTTP consumers count as members of `group` now: leases held, or a receive,
    /// ack, nack or extend within the client expiry (what refuses deleting its offsets).
    pub fn http_consumers_active(&self, group: &str) -> bool {
        self.ctx.has_http_member(group)
    }

    /// Creates or updates a topic (saved in the background; name servers hear of it).
    /// Refused for a new topic past `max_topics`.
    pub fn put_topic(&self, cfg: TopicConfig) -> Result<(), crate::TopicLimit> {
        self.ctx.topics.put(cfg).map(drop)
    }

    /// Creates a topic unless one of that name exists (checked and added in one step), then
    /// waits until `topics.json` holds it. `Ok(Err(_))`: it existed, or the table is full;
    /// nothing changed.
    pub async fn create_topic_durably(
        &self,
        cfg: TopicConfig,
    ) -> Result<Result<(), crate::NotAdded>, BrokerError> {
        if let Err(why) = self.ctx.topics.put_if_absent(cfg) {
            return Ok(Err(why));
        }
        self.ctx.topics.save_durably().await.map(Ok)
    }

    /// Waits until `topics.json` holds the current topics (after [`Self::delete_topic`]).
    pub async fn save_topics(&self) -> Result<(), BrokerError> {
        self.ctx.topics.save_durably().await
    }

    /// Writes the consumer offsets now if they changed (after [`Self::delete_group_offsets`]),
    /// off the async threads.
    pub async fn save_offsets(&self) -> Result<(), BrokerError> {
        let offsets = Arc::clone(&self.ctx.offsets);
        tokio::task::spawn_blocking(move || offsets.save_if_dirty().map(drop))
            .await
            .map_err(|e| BrokerError::Config(format!("offset save task failed: {e}")))?
    }

    /// The open connections of a producer group that may receive the checks of a transaction
    /// of `topic`: with ACL on, those registered by an account that may publish there.
    pub fn producer_connections_for(&self, group: &str, topic: &str) -> Vec<ConnectionHandle> {
        let acl = &self.ctx.cfg.acl;
        self.ctx
            .clients
            .producer_members(group)
            .into_iter()
            .filter(|(_, key)| crate::acl::may_take_checks(acl, key.as_deref(), topic))
            .map(|(conn, _)| conn)
            .collect()
    }

    /// What the broker knows of a consumer group.
    pub fn consumer_group(&self, group: &str) -> Option<ConsumerGroupInfo> {
        self.ctx.clients.consumer_group_info(group)
    }

    /// Whether a consumer group holds unexpired orderly locks.
    pub fn group_holds_locks(&self, group: &str) -> bool {
        self.ctx
            .locks
            .group_holds_locks(group, std::time::Instant::now())
    }

    /// A group's committed offset in a queue (system groups keep their progress here too).
    pub fn query_offset(&self, group: &str, topic: &str, queue_id: i32) -> Option<i64> {
        self.ctx.offsets.query(group, topic, queue_id)
    }

    /// The topics `group` has committed offsets in.
    pub fn committed_topics(&self, group: &str) -> Vec<String> {
        self.ctx.offsets.topics_of(group)
    }

    /// Every (consumer group, topic) pair with a committed offset, sorted: what groups exist
    /// even when none of their members is online.
    pub fn committed_groups(&self) -> Vec<(String, String)> {
        self.ctx.offsets.group_topics()
    }

    /// Commits a group's offset in a queue (persisted with the consumer offsets). Refused,
    /// with the reason, for a new topic and group past `max_consumer_offsets`.
    pub fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: i32,
        offset: i64,
    ) -> Result<(), String> {
        self.ctx
            .offsets
            .commit(group, topic, queue_id, offset)
            .map_err(|e| e.to_string())
    }

    /// Forgets every committed offset of a retired consumer group; returns how many topics it
    /// had offsets in. Refused while the group has members (a TCP connection in the group, or
    /// an HTTP lease book): they would commit again, or start over from where a group without
    /// offsets starts. The group's idle lease book goes with its offsets, so its next receive
    /// starts where a group without offsets starts.
    pub fn delete_group_offsets(&self, group: &str) -> Result<usize, String> {
        if self.group_has_members(group) {
            return Err(format!(
                "consumer group {group} has members; its offsets can be deleted once they are gone"
            ));
        }
        let remove = || self.ctx.offsets.remove_group(group);
        let removed = match self.ctx.leases.get() {
            Some(leases) => leases.without_book(group, remove),
            None => Some(remove()),
        };
        let Some(topics) = removed else {
            return Err(format!(
                "consumer group {group} has members (an HTTP receive is in progress); its offsets can be deleted once they are gone"
            ));
        };
        if self.group_has_members(group) {
            // Joined between the check and the removal: nothing holds both still.
            tracing::warn!(
                group,
                "a member joined while the group's offsets were deleted; it starts where a group without offsets starts"
            );
        }
        tracing::info!(group, topics, "consumer offsets of a retired group deleted");
        Ok(topics)
    }

    /// Dead-letter queues and replay tasks.
    pub fn dlq(&self) -> crate::dlq::DlqService {
        crate::dlq::DlqService {
            ctx: Arc::clone(&self.ctx),
        }
    }

    /// Hands a failed delivery back (HTTP lease expiry and nacks): the same decision, copies
    /// and counts as CONSUMER_SEND_MSG_BACK.
    pub async fn send_back(
        &self,
        req: &crate::retry::SendBack,
    ) -> Result<crate::retry::SendBackOutcome, crate::retry::RetryError> {
        crate::retry::send_back(&self.ctx, req).await
    }

    /// Lease-based consumption (receive, ack, nack, visibility) for HTTP consumers.
    pub fn leases(&self) -> crate::lease::LeaseService {
        crate::lease::service(&self.ctx)
    }

    /// The retry policy of a consumer group.
    pub fn retry_policy(&self, group: &str) -> crate::retry::GroupRetryPolicy {
        self.ctx.cfg.retry.policy(group).clone()
    }

    /// The broker's counters (for `/metrics`).
    pub fn stats(&self) -> crate::BrokerStats {
        self.ctx.stats()
    }

    /// Becomes true when the broker starts shutting down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.ctx.shutdown.clone()
    }
}

// ---- BEGIN sluice-http admin accessors (read-only; added for the HTTP admin endpoints) ----
impl BrokerServices {
    /// Every topic's configuration (system topics included), sorted by name: the HTTP
    /// facade's topic listing.
    pub fn topics(&self) -> Vec<TopicConfig> {
        self.ctx
            .topics
            .snapshot()
            .topic_config_table
            .into_values()
            .collect()
    }

    /// Queues a topic gets when created without a count (`default_topic_queue_nums`).
    pub fn default_topic_queue_nums(&self) -> i32 {
        self.ctx.cfg.default_queue_nums()
    }
}
// ---- END sluice-http admin accessors ----
