//! [`PullConsumer`]: the caller picks queues and offsets. Nothing runs in the background but
//! route refreshes: no rebalance, no heartbeat as a group member (so it never disturbs push
//! consumers of the same group), no automatic commits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_protocol::remoting::body::MessageQueue;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::remote::{self, PullResult, PullStatus};
use super::{ConsumeFrom, Subscription};
use crate::config::ClientConfig;
use crate::core::ClientCore;
use crate::error::ClientError;
use crate::message::ConsumedMessage;

/// Settings of a [`PullConsumer`].
///
/// ```no_run
/// # async fn demo() -> Result<(), sluice_client::ClientError> {
/// use sluice_client::{ClientConfig, ConsumeFrom, PullConsumerBuilder};
/// let consumer = PullConsumerBuilder::new(ClientConfig::new("127.0.0.1:9876"), "audit")
///     .consume_from(ConsumeFrom::FirstOffset)
///     .start()
///     .await?;
/// # let _ = consumer; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PullConsumerBuilder {
    cfg: ClientConfig,
    group: String,
    consume_from: ConsumeFrom,
    expression: String,
    batch: i32,
}

impl PullConsumerBuilder {
    /// A pull consumer of `group`: tag expression `*`, 32 messages per pull, starting at the
    /// last offset where the group has none.
    pub fn new(cfg: ClientConfig, group: impl Into<String>) -> Self {
        Self {
            cfg,
            group: group.into(),
            consume_from: ConsumeFrom::LastOffset,
            expression: "*".into(),
            batch: 32,
        }
    }

    /// Where [`PullConsumer::poll`] starts on a queue without a committed offset.
    #[must_use]
    pub fn consume_from(mut self, from: ConsumeFrom) -> Self {
        self.consume_from = from;
        self
    }

    /// Tag expression applied to every pull (`*`, or `TagA || TagB`).
    #[must_use]
    pub fn tags(mut self, expression: &str) -> Self {
        self.expression = expression.to_owned();
        self
    }

    /// Messages asked per pull (default 32).
    #[must_use]
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch = n.clamp(1, 1024) as i32;
        self
    }

    /// Starts the consumer.
    pub async fn start(self) -> Result<PullConsumer, ClientError> {
        if self.group.is_empty() {
            return Err(ClientError::Config("the consumer group is empty".into()));
        }
        let (tx, mut rx) = mpsc::channel(16);
        let core = ClientCore::new(self.cfg, tx)?;
        let (stop, stop_rx) = watch::channel(false);
        let maintenance = core.spawn_maintenance(stop_rx);
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        Ok(PullConsumer {
            core,
            group: self.group,
            consume_from: self.consume_from,
            batch: self.batch,
            expression: self.expression,
            positions: Mutex::new(HashMap::new()),
            assigned: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            stop,
            tasks: vec![maintenance, drain],
        })
    }
}

/// Pulls from queues the caller assigns, at offsets the caller controls.
///
/// Two styles: [`PullConsumer::pull`] / [`PullConsumer::pull_wait`] at explicit offsets, or
/// [`PullConsumer::assign`] then [`PullConsumer::poll`], which tracks a position per queue
/// (starting at the committed offset) that [`PullConsumer::commit_positions`] commits.
///
/// ```no_run
/// # async fn demo() -> Result<(), sluice_client::ClientError> {
/// use std::time::Duration;
/// use sluice_client::{ClientConfig, PullConsumer};
///
/// let consumer = PullConsumer::builder(ClientConfig::new("127.0.0.1:9876"), "audit").start().await?;
/// let queues = consumer.queues("Orders").await?;
/// consumer.assign(queues);
/// let batch = consumer.poll(Duration::from_secs(5)).await?;
/// for msg in &batch { println!("{}", msg.msg_id()); }
/// consumer.commit_positions().await?;
/// # Ok(()) }
/// ```
pub struct PullConsumer {
    core: Arc<ClientCore>,
    group: String,
    consume_from: ConsumeFrom,
    batch: i32,
    expression: String,
    positions: Mutex<HashMap<MessageQueue, i64>>,
    assigned: Mutex<Vec<MessageQueue>>,
    next: AtomicUsize,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for PullConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullConsumer")
            .field("group", &self.group)
            .finish()
    }
}

impl PullConsumer {
    /// A builder; see [`PullConsumerBuilder::new`].
    pub fn builder(cfg: ClientConfig, group: impl Into<String>) -> PullConsumerBuilder {
        PullConsumerBuilder::new(cfg, group)
    }

    /// The readable queues of `topic` (fetched from the name servers).
    pub async fn queues(&self, topic: &str) -> Result<Vec<MessageQueue>, ClientError> {
        Ok(self.core.fetch_route(topic).await?.read_queues.clone())
    }

    /// Sets the queues [`PullConsumer::poll`] reads; positions of queues kept are kept.
    pub fn assign(&self, queues: Vec<MessageQueue>) {
        self.positions.lock().retain(|mq, _| queues.contains(mq));
        *self.assigned.lock() = queues;
    }

    /// The assigned queues.
    pub fn assignment(&self) -> Vec<MessageQueue> {
        self.assigned.lock().clone()
    }

    /// Pulls up to the batch size from `offset`, answering at once.
    pub async fn pull(
        &self,
        mq: &MessageQueue,
        offset: i64,
        max: u32,
    ) -> Result<PullResult, ClientError> {
        self.pull_inner(mq, offset, max, Duration::ZERO).await
    }

    /// As [`PullConsumer::pull`], but the broker may hold the request up to `wait` until a
    /// message arrives (long polling).
    pub async fn pull_wait(
        &self,
        mq: &MessageQueue,
        offset: i64,
        max: u32,
        wait: Duration,
    ) -> Result<PullResult, ClientError> {
        self.pull_inner(mq, offset, max, wait).await
    }

    async fn pull_inner(
        &self,
        mq: &MessageQueue,
        offset: i64,
        max: u32,
        wait: Duration,
    ) -> Result<PullResult, ClientError> {
        self.route_for(mq).await?;
        let sub = Subscription::new(&mq.topic, &self.expression);
        let max = max.clamp(1, 1024) as i32;
        remote::pull(&self.core, &self.group, mq, &sub, offset, max, wait).await
    }

    /// Reads the next messages of the assigned queues, round robin from the queue after the
    /// last one read, and advances that queue's position. With nothing anywhere, waits up to
    /// `wait` on one queue (long polling) and returns what came, possibly nothing. A queue
    /// whose pull fails is passed over (logged); the poll fails only when every queue did.
    pub async fn poll(&self, wait: Duration) -> Result<Vec<ConsumedMessage>, ClientError> {
        let queues = self.assignment();
        if queues.is_empty() {
            return Err(ClientError::Config("no queue assigned".into()));
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // A queue whose broker fails is passed over: its error used to end the whole poll, so
        // one unreachable broker starved the queues of every other one.
        let mut failed: Option<ClientError> = None;
        let mut answered = false;
        for i in 0..queues.len() {
            let mq = &queues[(start + i) % queues.len()];
            let last = i + 1 == queues.len();
            let hold = if last { wait } else { Duration::ZERO };
            let pulled = match self.position(mq).await {
                Ok(offset) => self.pull_inner(mq, offset, self.batch as u32, hold).await,
                Err(e) => Err(e),
            };
            let r = match pulled {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(topic = %mq.topic, broker = %mq.broker_name, queue_id = mq.queue_id, error = %e, "pull failed; polling the other queues");
                    failed = Some(e);
                    continue;
                }
            };
            answered = true;
            self.positions
                .lock()
                .insert(mq.clone(), r.next_begin_offset);
            if r.status == PullStatus::Found && !r.messages.is_empty() {
                // The next poll starts at the queue after this one (`fetch_add` returns
                // what is stored): storing this one kept one busy queue read for ever.
                self.next
                    .store((start + i + 1) % queues.len(), Ordering::Relaxed);
                return Ok(r.messages);
            }
        }
        match failed {
            // Every queue failed: that is the caller's error.
            Some(e) if !answered => Err(e),
            _ => Ok(Vec::new()),
        }
    }

    /// The next offset [`PullConsumer::poll`] reads on `mq`: set by [`PullConsumer::seek`],
    /// else the committed offset, else the consume-from policy.
    pub async fn position(&self, mq: &MessageQueue) -> Result<i64, ClientError> {
        if let Some(p) = self.positions.lock().get(mq) {
            return Ok(*p);
        }
        let p = match self.committed_offset(mq).await? {
            Some(o) if o >= 0 => o,
            _ => match self.consume_from {
                ConsumeFrom::FirstOffset => self.min_offset(mq).await?,
                ConsumeFrom::LastOffset => self.max_offset(mq).await?,
                ConsumeFrom::Timestamp(ts) => self.offset_for_timestamp(mq, ts).await?,
            },
        };
        self.positions.lock().insert(mq.clone(), p);
        Ok(p)
    }

    /// Moves the position of `mq`.
    pub fn seek(&self, mq: &MessageQueue, offset: i64) {
        self.positions.lock().insert(mq.clone(), offset);
    }

    /// Commits every position [`PullConsumer::poll`] reached.
    pub async fn commit_positions(&self) -> Result<(), ClientError> {
        let positions: Vec<(MessageQueue, i64)> = self
            .positions
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (mq, offset) in positions {
            self.commit(&mq, offset).await?;
        }
        Ok(())
    }

    /// The group's committed offset on `mq` (the next to consume); `None` when there is none.
    pub async fn committed_offset(&self, mq: &MessageQueue) -> Result<Option<i64>, ClientError> {
        self.route_for(mq).await?;
        remote::query_offset(&self.core, &self.group, mq).await
    }

    /// Commits `offset` (the next to consume) for the group on `mq`.
    pub async fn commit(&self, mq: &MessageQueue, offset: i64) -> Result<(), ClientError> {
        self.route_for(mq).await?;
        remote::commit_offset(&self.core, &self.group, mq, offset).await
    }

    /// The next offset to be written on `mq`.
    pub async fn max_offset(&self, mq: &MessageQueue) -> Result<i64, ClientError> {
        self.route_for(mq).await?;
        remote::max_offset(&self.core, mq).await
    }

    /// The first offset still stored on `mq`.
    pub async fn min_offset(&self, mq: &MessageQueue) -> Result<i64, ClientError> {
        self.route_for(mq).await?;
        remote::min_offset(&self.core, mq).await
    }

    /// The offset of the first message stored at or after `timestamp` (epoch ms).
    pub async fn offset_for_timestamp(
        &self,
        mq: &MessageQueue,
        timestamp: i64,
    ) -> Result<i64, ClientError> {
        self.route_for(mq).await?;
        remote::search_offset(&self.core, mq, timestamp).await
    }

    /// Makes sure the broker of `mq` is known, and the topic's route stays cached (a use of
    /// it): a route forgotten as idle is fetched again, or its broker's address would never
    /// be refreshed again and pulls would follow a moved master nowhere.
    async fn route_for(&self, mq: &MessageQueue) -> Result<(), ClientError> {
        if self.core.cached_route(&mq.topic).is_none()
            || self.core.master_addr(&mq.broker_name).is_err()
        {
            self.core.fetch_route(&mq.topic).await?;
        }
        Ok(())
    }

    /// Closes connections.
    pub async fn shutdown(self) {
        drop(self);
    }
}

impl Drop for PullConsumer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        for t in &self.tasks {
            t.abort();
        }
        self.core.pool.close_all();
    }
}
