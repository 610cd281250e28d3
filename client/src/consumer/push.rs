//! [`PushConsumer`]: subscribe, hand every message to an async handler with bounded
//! concurrency, share queues with the group's other members, retry failures through the
//! broker, commit offsets, and shut down without losing what was handled.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use sluice_protocol::remoting::body::{
    ConsumeType, ConsumerData, HeartbeatData, MessageModel, MessageQueue, SubscriptionData,
};
use sluice_protocol::request_code;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use super::offsets::OffsetStore;
use super::process_queue::ProcessQueue;
use super::{retry_topic, ConsumeFrom, MessageHandler, Subscription};
use crate::config::ClientConfig;
use crate::core::ClientCore;
use crate::error::ClientError;
use crate::net::ServerRequest;
use crate::producer::{Sender, SERVER_REQUEST_QUEUE};

/// Producer group of the client's own retry sends (RocketMQ's inner producer group).
const INNER_PRODUCER_GROUP: &str = "CLIENT_INNER_PRODUCER";

/// Tunables of a push consumer.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) consume_from: ConsumeFrom,
    pub(crate) max_concurrency: usize,
    pub(crate) orderly: bool,
    pub(crate) max_reconsume_times: i32,
    pub(crate) pull_batch_size: i32,
    pub(crate) long_poll: Duration,
    pub(crate) persist_interval: Duration,
    pub(crate) rebalance_interval: Duration,
    pub(crate) orderly_retry_delay: Duration,
    pub(crate) max_cached_per_queue: usize,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) consume_timeout: Duration,
}

/// Settings of a [`PushConsumer`].
///
/// ```no_run
/// # async fn demo() -> Result<(), sluice_client::ClientError> {
/// use std::time::Duration;
/// use sluice_client::{ClientConfig, ConsumeFrom, ConsumeResult, ConsumedMessage, PushConsumerBuilder};
///
/// let consumer = PushConsumerBuilder::new(ClientConfig::new("127.0.0.1:9876"), "billing")
///     .subscribe("Orders", "created || paid")
///     .consume_from(ConsumeFrom::FirstOffset)
///     .max_concurrency(8)
///     .max_reconsume_times(5)
///     .start(|msg: ConsumedMessage| async move {
///         println!("{}", msg.msg_id());
///         ConsumeResult::Success
///     })
///     .await?;
/// consumer.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PushConsumerBuilder {
    cfg: ClientConfig,
    group: String,
    subs: Vec<Subscription>,
    s: Settings,
    max_reconsume_set: bool,
}

impl PushConsumerBuilder {
    /// A consumer of `group` with RocketMQ's defaults: start at the last offset, 20 handlers
    /// at once, 16 retries, 32 messages per pull, 15 s long polls, offsets persisted every
    /// 5 s, rebalance every 20 s (and whenever the broker says the group changed), handlers
    /// cut after 15 min.
    pub fn new(cfg: ClientConfig, group: impl Into<String>) -> Self {
        Self {
            cfg,
            group: group.into(),
            subs: Vec::new(),
            s: Settings {
                consume_from: ConsumeFrom::LastOffset,
                max_concurrency: 20,
                orderly: false,
                max_reconsume_times: 16,
                pull_batch_size: 32,
                long_poll: Duration::from_secs(15),
                persist_interval: Duration::from_secs(5),
                rebalance_interval: Duration::from_secs(20),
                orderly_retry_delay: Duration::from_secs(1),
                max_cached_per_queue: 1000,
                shutdown_timeout: Duration::from_secs(30),
                consume_timeout: Duration::from_secs(15 * 60),
            },
            max_reconsume_set: false,
        }
    }

    /// Subscribes to `topic` with a tag expression: `*` for all, or `TagA || TagB`.
    #[must_use]
    pub fn subscribe(mut self, topic: &str, expression: &str) -> Self {
        self.subs.retain(|s| s.topic != topic);
        self.subs.push(Subscription::new(topic, expression));
        self
    }

    /// Where to start on queues the group has no offset for.
    #[must_use]
    pub fn consume_from(mut self, from: ConsumeFrom) -> Self {
        self.s.consume_from = from;
        self
    }

    /// Most handlers running at once across all queues (default 20).
    #[must_use]
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.s.max_concurrency = n;
        self
    }

    /// Orderly mode: each queue is locked at its broker so only one member consumes it, and
    /// its messages are handled one at a time in queue order. A `Retry` retries the same
    /// message locally (blocking the queue); past the maximum it goes to the dead-letter queue.
    #[must_use]
    pub fn orderly(mut self, orderly: bool) -> Self {
        self.s.orderly = orderly;
        self
    }

    /// Deliveries after the first before a message goes to `%DLQ%<group>` (default 16;
    /// unlimited for orderly consumers unless set).
    #[must_use]
    pub fn max_reconsume_times(mut self, n: u32) -> Self {
        self.s.max_reconsume_times = n.min(i32::MAX as u32) as i32;
        self.max_reconsume_set = true;
        self
    }

    /// Messages asked per pull (default 32).
    #[must_use]
    pub fn pull_batch_size(mut self, n: u32) -> Self {
        self.s.pull_batch_size = n.clamp(1, 1024) as i32;
        self
    }

    /// How long the broker may hold a pull that finds nothing (default 15 s). Must be
    /// positive: a pull that is not held is answered at once, and the worker would pull again
    /// in a tight loop.
    #[must_use]
    pub fn long_polling(mut self, hold: Duration) -> Self {
        self.s.long_poll = hold;
        self
    }

    /// How often offsets are persisted (default 5 s).
    #[must_use]
    pub fn persist_interval(mut self, every: Duration) -> Self {
        self.s.persist_interval = every;
        self
    }

    /// How often the group's queues are shared out again without a membership notice
    /// (default 20 s).
    #[must_use]
    pub fn rebalance_interval(mut self, every: Duration) -> Self {
        self.s.rebalance_interval = every;
        self
    }

    /// Orderly mode: wait before retrying a message locally when the handler gave no delay
    /// (default 1 s).
    #[must_use]
    pub fn orderly_retry_delay(mut self, delay: Duration) -> Self {
        self.s.orderly_retry_delay = delay;
        self
    }

    /// Longest one handler call may run in concurrent mode (default 15 min, RocketMQ's
    /// `consumeTimeout`). Past it the handler's future is dropped, cancelling it at its next
    /// await, and the message counts as `Retry(None)`: a handler stuck on a call without a
    /// timeout would otherwise hold its queue's committed offset and a concurrency permit
    /// forever. Orderly handlers are not cut (as in RocketMQ); one that outlives
    /// [`PushConsumer::shutdown`] keeps its queue locked for at most this long.
    #[must_use]
    pub fn consume_timeout(mut self, timeout: Duration) -> Self {
        self.s.consume_timeout = timeout;
        self
    }

    /// How long [`PushConsumer::shutdown`] waits for running handlers (default 30 s).
    /// Orderly, a queue whose handler still runs then keeps its broker lock, renewed in the
    /// background, until that handler ends (for at most `consume_timeout`), so the group's
    /// next owner of the queue never consumes it beside the handler.
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.s.shutdown_timeout = timeout;
        self
    }

    /// Starts consuming with `handler`.
    pub async fn start(
        mut self,
        handler: impl MessageHandler,
    ) -> Result<PushConsumer, ClientError> {
        self.validate()?;
        if self.s.orderly && !self.max_reconsume_set {
            self.s.max_reconsume_times = i32::MAX;
        }
        let inner = ConsumerInner::start(self, Arc::new(handler)).await?;
        Ok(PushConsumer { inner })
    }

    fn validate(&self) -> Result<(), ClientError> {
        if self.group.is_empty() || self.group.len() > 120 {
            return Err(ClientError::Config(
                "the consumer group must be 1 to 120 characters".into(),
            ));
        }
        crate::message::validate_topic(&retry_topic(&self.group))
            .map_err(|e| ClientError::Config(format!("consumer group: {e}")))?;
        if self.subs.is_empty() {
            return Err(ClientError::Config(
                "subscribe to at least one topic".into(),
            ));
        }
        for s in &self.subs {
            crate::message::validate_topic(&s.topic)
                .map_err(|e| ClientError::Config(e.to_string()))?;
        }
        if self.s.max_concurrency == 0 {
            return Err(ClientError::Config(
                "max_concurrency must be positive".into(),
            ));
        }
        let positive = [
            self.s.persist_interval,
            self.s.rebalance_interval,
            self.s.consume_timeout,
        ];
        if positive.iter().any(Duration::is_zero) {
            return Err(ClientError::Config(
                "intervals and the consume timeout must be positive".into(),
            ));
        }
        if self.s.long_poll.is_zero() {
            return Err(ClientError::Config(
                "long_polling must be positive (an unheld pull would be repeated at once)".into(),
            ));
        }
        Ok(())
    }
}

/// State shared by a push consumer's handle and its tasks.
pub(crate) struct ConsumerInner {
    /// Itself, for the workers it spawns from `&self` methods.
    me: Weak<ConsumerInner>,
    pub(crate) core: Arc<ClientCore>,
    pub(crate) group: String,
    pub(crate) s: Settings,
    pub(crate) subs: Vec<Subscription>,
    pub(crate) handler: Arc<dyn MessageHandler>,
    pub(crate) offsets: OffsetStore,
    pub(crate) queues: Mutex<HashMap<MessageQueue, Arc<ProcessQueue>>>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) retry_sender: Sender,
    stop: watch::Sender<bool>,
    pub(crate) rebalance_now: Notify,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl ConsumerInner {
    async fn start(
        b: PushConsumerBuilder,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<Arc<Self>, ClientError> {
        let (tx, rx) = mpsc::channel(SERVER_REQUEST_QUEUE);
        let core = ClientCore::new(b.cfg, tx)?;
        let mut subs = b.subs;
        // RocketMQ clustering consumers read their group's retry topic like any topic.
        subs.push(Subscription::new(&retry_topic(&b.group), "*"));
        core.set_heartbeat(heartbeat(&b.group, &b.s, &subs));
        // One retry, and a budget for two attempts of `rpc_timeout` each.
        let retry_sender = Sender::new(
            Arc::clone(&core),
            INNER_PRODUCER_GROUP.into(),
            1,
            core.cfg.rpc_timeout * 2,
        );
        let (stop, _) = watch::channel(false);
        let inner = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            core,
            group: b.group,
            permits: Arc::new(Semaphore::new(b.s.max_concurrency)),
            s: b.s,
            subs,
            handler,
            offsets: OffsetStore::default(),
            queues: Mutex::new(HashMap::new()),
            retry_sender,
            stop,
            rebalance_now: Notify::new(),
            tasks: Mutex::new(Vec::new()),
        });
        for sub in &inner.subs {
            if let Err(e) = inner.core.fetch_route(&sub.topic).await {
                tracing::debug!(topic = %sub.topic, error = %e, "no route yet; rebalance will retry");
            }
        }
        let greeted = inner.core.send_heartbeats().await;
        tracing::info!(group = %inner.group, client_id = %inner.core.client_id, brokers = greeted, orderly = inner.s.orderly, "push consumer started");
        inner.spawn_tasks(rx);
        Ok(inner)
    }

    fn spawn_tasks(self: &Arc<Self>, requests: mpsc::Receiver<ServerRequest>) {
        let mut tasks = vec![
            self.core.spawn_maintenance(self.stop.subscribe()),
            tokio::spawn(Arc::clone(self).listen(requests)),
            tokio::spawn(Arc::clone(self).rebalance_loop()),
            tokio::spawn(Arc::clone(self).persist_loop()),
        ];
        if self.s.orderly {
            tasks.push(tokio::spawn(Arc::clone(self).lock_loop()));
        }
        self.tasks.lock().extend(tasks);
    }

    /// A membership notice triggers a rebalance at once.
    async fn listen(self: Arc<Self>, mut requests: mpsc::Receiver<ServerRequest>) {
        while let Some(req) = requests.recv().await {
            if req.cmd.code == request_code::NOTIFY_CONSUMER_IDS_CHANGED {
                tracing::debug!(group = %self.group, "group membership changed; rebalancing");
                self.rebalance_now.notify_one();
            }
        }
    }

    async fn persist_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut tick = tokio::time::interval(self.s.persist_interval);
        tick.tick().await;
        loop {
            tokio::select! {
                () = crate::core::stopped(&mut stop) => break,
                _ = tick.tick() => self.offsets.persist_all(&self.core, &self.group).await,
            }
        }
    }

    /// An owning handle on this consumer; `None` only while it is being dropped.
    pub(crate) fn self_arc(&self) -> Option<Arc<Self>> {
        self.me.upgrade()
    }

    /// A receiver that turns true when the consumer stops.
    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub(crate) fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// The subscription of an owned queue's topic.
    pub(crate) fn subscription(&self, topic: &str) -> Option<&Subscription> {
        self.subs.iter().find(|s| s.topic == topic)
    }

    /// Graceful stop: no new pulls, running handlers finish (bounded), final offsets are
    /// committed, orderly locks released (those of queues whose handler still runs once it
    /// ends: [`ConsumerInner::keep_busy_locks`]), and the group told we left.
    async fn shutdown(&self) {
        if self.stop.send_replace(true) {
            return;
        }
        let queues: Vec<Arc<ProcessQueue>> = self.queues.lock().drain().map(|(_, pq)| pq).collect();
        for pq in &queues {
            pq.drop_queue();
        }
        let renewing = self
            .s
            .orderly
            .then(|| self.self_arc())
            .flatten()
            .map(|me| tokio::spawn(me.renew_while_draining(queues.clone())));
        let all = u32::try_from(self.s.max_concurrency).unwrap_or(u32::MAX);
        let drained =
            tokio::time::timeout(self.s.shutdown_timeout, self.permits.acquire_many(all)).await;
        // Holding every permit, then closing, keeps workers from starting another handler.
        let _held = drained.ok().and_then(Result::ok);
        if _held.is_none() {
            tracing::warn!(group = %self.group, "handlers still running at shutdown; their messages will be redelivered");
        }
        self.permits.close();
        for pq in &queues {
            self.offsets.update(&pq.mq, pq.commit_point());
        }
        self.offsets.persist_all(&self.core, &self.group).await;
        if let Some(renewing) = renewing {
            // Waited for: a renewal already on its way could land after the unlock below and
            // hold an idle queue for the broker's departed-client lifetime.
            renewing.abort();
            let _ = renewing.await;
        }
        let mut busy_queues = Vec::new();
        if self.s.orderly {
            // A queue whose handler still runs keeps its lock: unlocked, the next owner
            // would consume it beside that handler, out of order. Renewed once more here, so
            // that the broker's shorter lifetime for a departed client (35 s after the last
            // renewal) starts now; `keep_busy_locks` renews it from then on.
            let (idle, busy): (Vec<_>, Vec<_>) = queues
                .iter()
                .partition(|pq| pq.consuming.try_lock().is_ok());
            busy_queues = busy.into_iter().map(Arc::clone).collect();
            if !busy_queues.is_empty() {
                tracing::warn!(group = %self.group, queues = busy_queues.len(), "orderly handlers still running at shutdown; their queues stay locked until the handlers end");
                self.renew_busy(&mut busy_queues).await;
            }
            self.unlock(idle.iter().map(|pq| pq.mq.clone()).collect())
                .await;
        }
        self.core.unregister(None, Some(&self.group)).await;
        self.stop_now();
        if !busy_queues.is_empty() {
            if let Some(me) = self.self_arc() {
                // Not among `tasks` (stopping aborts those), and started once the pool's
                // connections were closed, so its renewals use connections of their own.
                drop(tokio::spawn(me.keep_busy_locks(busy_queues)));
            }
        }
        tracing::info!(group = %self.group, "push consumer stopped");
    }

    fn stop_now(&self) {
        self.stop.send_replace(true);
        for pq in self.queues.lock().values() {
            pq.drop_queue();
        }
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        self.core.pool.close_all();
    }
}

fn heartbeat(group: &str, s: &Settings, subs: &[Subscription]) -> HeartbeatData {
    let version = crate::producer::send::now_ms();
    HeartbeatData {
        consumer_data_set: vec![ConsumerData {
            consume_from_where: s.consume_from.wire(),
            consume_type: ConsumeType::ConsumePassively,
            group_name: group.to_owned(),
            message_model: MessageModel::Clustering,
            subscription_data_set: subs
                .iter()
                .map(|sub| {
                    SubscriptionData::from_expression(sub.topic.clone(), &sub.expression, version)
                })
                .collect(),
            unit_mode: false,
        }],
        ..HeartbeatData::default()
    }
}

/// Consumes a group's subscriptions with an async handler.
///
/// Clustering mode: the queues of every subscribed topic (and of the group's retry topic) are
/// shared among the group's members with [`crate::allocate_averagely`], recomputed when the
/// broker reports a membership change and every `rebalance_interval`. A `Retry` result (or a
/// handler error or panic) hands the message back with CONSUMER_SEND_MSG_BACK so the broker's
/// retry schedule and dead-letter queue apply; when the broker refuses that or cannot be
/// reached, the client sends a copy to `%RETRY%<group>` itself, as RocketMQ clients do (past
/// the maximum, the broker moves that copy to `%DLQ%<group>`).
///
/// Dropping the consumer stops it abruptly (no final offset commit); use
/// [`PushConsumer::shutdown`].
///
/// ```no_run
/// # async fn demo() -> Result<(), sluice_client::ClientError> {
/// use sluice_client::{ClientConfig, ConsumeResult, ConsumedMessage, PushConsumer};
///
/// let consumer = PushConsumer::builder(ClientConfig::new("127.0.0.1:9876"), "billing")
///     .subscribe("Orders", "*")
///     .start(|msg: ConsumedMessage| async move {
///         match std::str::from_utf8(msg.body()) {
///             Ok(_) => ConsumeResult::Success,
///             Err(_) => ConsumeResult::Retry(None),
///         }
///     })
///     .await?;
/// consumer.shutdown().await;
/// # Ok(()) }
/// ```
pub struct PushConsumer {
    inner: Arc<ConsumerInner>,
}

impl std::fmt::Debug for PushConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConsumer")
            .field("group", &self.inner.group)
            .field("client_id", &self.inner.core.client_id)
            .finish()
    }
}

impl PushConsumer {
    /// A builder; see [`PushConsumerBuilder::new`].
    pub fn builder(cfg: ClientConfig, group: impl Into<String>) -> PushConsumerBuilder {
        PushConsumerBuilder::new(cfg, group)
    }

    /// The queues this member consumes now (not those it is giving up).
    pub fn assigned_queues(&self) -> Vec<MessageQueue> {
        let mut v: Vec<MessageQueue> = self
            .inner
            .queues
            .lock()
            .iter()
            .filter(|(_, pq)| !pq.is_dropped())
            .map(|(mq, _)| mq.clone())
            .collect();
        v.sort();
        v
    }

    /// The id brokers know this member by.
    pub fn client_id(&self) -> &str {
        &self.inner.core.client_id
    }

    /// Asks for a rebalance now (it also happens on its own).
    pub fn rebalance(&self) {
        self.inner.rebalance_now.notify_one();
    }

    /// Stops gracefully: see the type's docs.
    pub async fn shutdown(self) {
        self.inner.shutdown().await;
    }
}

impl Drop for PushConsumer {
    fn drop(&mut self) {
        self.inner.stop_now();
    }
}
