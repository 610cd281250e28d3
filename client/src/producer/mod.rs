//! [`Producer`]: sends messages with route discovery, bounded failover and ordered (sharding
//! key) sends; built by [`ProducerBuilder`].
//!
//! - `send`: the send path shared with transactions and consumer retries.
//! - `result`: [`SendResult`], [`BatchSendResult`], [`SendStatus`].

pub(crate) mod result;
pub(crate) mod send;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_protocol::message::keys;
use sluice_protocol::remoting::body::{HeartbeatData, MessageQueue, ProducerData};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use result::{BatchSendResult, SendResult, SendStatus};
pub(crate) use send::{Outgoing, Sender, Target};

use crate::config::ClientConfig;
use crate::core::ClientCore;
use crate::error::ClientError;
use crate::message::Message;
use crate::net::ServerRequest;

/// Producer group used when none is set.
pub const DEFAULT_PRODUCER_GROUP: &str = "DEFAULT_PRODUCER";
/// Upper bound of [`ProducerBuilder::retry_times`].
pub const MAX_RETRY_TIMES: u32 = 16;
/// Server requests buffered per client before they are dropped (the broker repeats checks).
pub(crate) const SERVER_REQUEST_QUEUE: usize = 256;

/// Settings of a producer.
///
/// ```no_run
/// # async fn demo() -> Result<(), sluice_client::ClientError> {
/// use std::time::Duration;
/// use sluice_client::{ClientConfig, ProducerBuilder};
///
/// let producer = ProducerBuilder::new(ClientConfig::new("127.0.0.1:9876"))
///     .group("billing")
///     .retry_times(2)
///     .send_timeout(Duration::from_secs(3))
///     .warm_topics(["Invoices"])
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ProducerBuilder {
    pub(crate) cfg: ClientConfig,
    pub(crate) group: String,
    pub(crate) retry_times: u32,
    pub(crate) send_timeout: Duration,
    pub(crate) topics: Vec<String>,
}

impl ProducerBuilder {
    /// Defaults: group `DEFAULT_PRODUCER`, 2 retries, 3 s for a whole send.
    pub fn new(cfg: ClientConfig) -> Self {
        Self {
            cfg,
            group: DEFAULT_PRODUCER_GROUP.to_owned(),
            retry_times: 2,
            send_timeout: Duration::from_secs(3),
            topics: Vec::new(),
        }
    }

    /// Sets the producer group (what brokers ask for transaction checks).
    #[must_use]
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Extra attempts after a retryable failure (network, busy, topic missing...), at most
    /// [`MAX_RETRY_TIMES`]; default 2. The same
    /// `UNIQ_KEY` is kept, so a retry after a timeout that was in fact stored is a duplicate
    /// an idempotent consumer recognises.
    #[must_use]
    pub fn retry_times(mut self, n: u32) -> Self {
        self.retry_times = n.min(MAX_RETRY_TIMES);
        self
    }

    /// How long a send may take, retries included (RocketMQ's `sendMsgTimeout`): each
    /// attempt waits for what is left, and no retry starts once it is spent. Default 3 s.
    #[must_use]
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// Topics whose routes are fetched at start, which also registers the producer with their
    /// brokers (so a transactional producer is asked for checks before its first send).
    #[must_use]
    pub fn warm_topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topics.extend(topics.into_iter().map(Into::into));
        self
    }

    /// Starts a plain producer.
    pub async fn start(self) -> Result<Producer, ClientError> {
        let (inner, mut requests) = ProducerInner::start(&self).await?;
        let group = inner.sender.group.clone();
        let drain = tokio::spawn(async move {
            while let Some(req) = requests.recv().await {
                tracing::debug!(group = %group, code = req.cmd.code, "server request to a plain producer ignored");
            }
        });
        inner.tasks.lock().push(drain);
        Ok(Producer { inner })
    }
}

/// State shared by a producer's handle and its background tasks.
pub(crate) struct ProducerInner {
    pub(crate) sender: Sender,
    stop: watch::Sender<bool>,
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl ProducerInner {
    /// Starts the core and heartbeats; returns the server requests for the caller to handle.
    pub(crate) async fn start(
        b: &ProducerBuilder,
    ) -> Result<(Arc<Self>, mpsc::Receiver<ServerRequest>), ClientError> {
        if b.group.is_empty() {
            return Err(ClientError::Config("the producer group is empty".into()));
        }
        if b.send_timeout.is_zero() {
            return Err(ClientError::Config("send_timeout must be positive".into()));
        }
        let (tx, rx) = mpsc::channel(SERVER_REQUEST_QUEUE);
        let core = ClientCore::new(b.cfg.clone(), tx)?;
        core.set_heartbeat(HeartbeatData {
            producer_data_set: vec![ProducerData {
                group_name: b.group.clone(),
            }],
            ..HeartbeatData::default()
        });
        for topic in &b.topics {
            if let Err(e) = core.publish_route(topic).await {
                tracing::warn!(topic = %topic, error = %e, "no route for a warm topic yet");
            }
        }
        let (stop, stop_rx) = watch::channel(false);
        let maintenance = core.spawn_maintenance(stop_rx);
        let sender = Sender::new(core, b.group.clone(), b.retry_times, b.send_timeout);
        tracing::info!(group = %b.group, client_id = %sender.core.client_id, "producer started");
        let inner = Arc::new(Self {
            sender,
            stop,
            tasks: Mutex::new(vec![maintenance]),
        });
        Ok((inner, rx))
    }

    /// Stops background work, unregisters and closes connections.
    pub(crate) async fn shutdown(&self) {
        if self.stop.send_replace(true) {
            return;
        }
        let core = &self.sender.core;
        core.unregister(Some(&self.sender.group), None).await;
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        core.pool.close_all();
        tracing::info!(group = %self.sender.group, "producer stopped");
    }

    pub(crate) fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    pub(crate) fn stop_now(&self) {
        self.stop.send_replace(true);
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        self.sender.core.pool.close_all();
    }
}

/// Sends messages.
///
/// Routes come from the name servers (tried in turn) and are refreshed periodically and after
/// TOPIC_NOT_EXIST / NO_PERMISSION answers. A topic the name servers do not know is sent through
/// the `TBW102` template route, so the broker creates it (when auto-creation is on). A failed
/// attempt is retried up to `retry_times` more times on another broker when there is one.
///
/// Dropping the producer stops it without unregistering; [`Producer::shutdown`] is the clean
/// way out.
///
/// ```no_run
/// # async fn demo() -> Result<(), sluice_client::ClientError> {
/// use sluice_client::{ClientConfig, Message, Producer};
///
/// let producer = Producer::builder(ClientConfig::new("127.0.0.1:9876"))
///     .group("orders")
///     .start()
///     .await?;
/// let sent = producer
///     .send(Message::new("Orders", "created").with_tags("created").with_keys(["order-1"]))
///     .await?;
/// producer.send_ordered(Message::new("Orders", "paid"), "order-1").await?;
/// producer.send_oneway(Message::new("Metrics", "tick")).await?;
/// producer.shutdown().await;
/// # let _ = sent; Ok(()) }
/// ```
pub struct Producer {
    inner: Arc<ProducerInner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("group", &self.inner.sender.group)
            .field("client_id", &self.inner.sender.core.client_id)
            .finish()
    }
}

impl Producer {
    /// A builder with defaults (see [`ProducerBuilder::new`]).
    pub fn builder(cfg: ClientConfig) -> ProducerBuilder {
        ProducerBuilder::new(cfg)
    }

    /// Sends and waits for the broker's answer.
    pub async fn send(&self, msg: Message) -> Result<SendResult, ClientError> {
        self.check_running()?;
        let msg = self.inner.sender.prepare(msg)?;
        self.inner
            .sender
            .send(&Outgoing::plain(msg), Target::Any)
            .await
    }

    /// Sends to one queue (no failover to other queues; retries stay on it).
    pub async fn send_to_queue(
        &self,
        msg: Message,
        queue: &MessageQueue,
    ) -> Result<SendResult, ClientError> {
        self.check_running()?;
        if queue.topic != msg.topic() {
            return Err(ClientError::InvalidMessage(format!(
                "queue of topic {} for a message to {}",
                queue.topic,
                msg.topic()
            )));
        }
        let msg = self.inner.sender.prepare(msg)?;
        self.inner
            .sender
            .send(&Outgoing::plain(msg), Target::Queue(queue))
            .await
    }

    /// Sends an ordered message: every message with the same `sharding_key` goes to the same
    /// queue (Java's `SelectMessageQueueByHash`), so an orderly consumer sees them in send
    /// order. Retries stay on that queue. The key is also stored as `__SHARDINGKEY`.
    pub async fn send_ordered(
        &self,
        msg: Message,
        sharding_key: &str,
    ) -> Result<SendResult, ClientError> {
        self.check_running()?;
        let msg = self
            .inner
            .sender
            .prepare(msg.with_property(keys::SHARDING_KEY, sharding_key))?;
        self.inner
            .sender
            .send(&Outgoing::plain(msg), Target::Hash(sharding_key))
            .await
    }

    /// Sends without waiting for an answer: one attempt, no result, no retry. Cheapest and
    /// least safe: a message lost on the way is not reported.
    pub async fn send_oneway(&self, msg: Message) -> Result<(), ClientError> {
        self.check_running()?;
        let msg = self.inner.sender.prepare(msg)?;
        self.inner.sender.send_oneway(&Outgoing::plain(msg)).await
    }

    /// Sends several messages of one topic in one request, stored on one queue with
    /// consecutive offsets. Batches cannot carry delays or transactions (brokers refuse them).
    pub async fn send_batch(&self, msgs: Vec<Message>) -> Result<BatchSendResult, ClientError> {
        self.check_running()?;
        let Some(first) = msgs.first() else {
            return Err(ClientError::InvalidMessage("the batch is empty".into()));
        };
        let topic = first.topic().to_owned();
        let mut prepared = Vec::with_capacity(msgs.len());
        let mut total = 0;
        for m in msgs {
            if m.topic() != topic {
                return Err(ClientError::InvalidMessage(
                    "every message of a batch must have the same topic".into(),
                ));
            }
            if m.property(keys::DELAY).is_some() {
                return Err(ClientError::InvalidMessage(
                    "batch messages cannot have a delay level".into(),
                ));
            }
            let m = self.inner.sender.prepare(m)?;
            total += m.body().len() + m.properties().encoded_len() + 22;
            prepared.push(m);
        }
        let max = self.inner.sender.core.cfg.max_message_size;
        if total > max {
            return Err(ClientError::InvalidMessage(format!(
                "the batch is {total} bytes, more than {max}"
            )));
        }
        self.inner.sender.send_batch(&prepared).await
    }

    /// The queues this producer may write for `topic`.
    pub async fn queues(&self, topic: &str) -> Result<Vec<MessageQueue>, ClientError> {
        Ok(self
            .inner
            .sender
            .core
            .publish_route(topic)
            .await?
            .write_queues
            .clone())
    }

    /// The id brokers know this client by.
    pub fn client_id(&self) -> &str {
        &self.inner.sender.core.client_id
    }

    /// Unregisters from the brokers and closes connections.
    pub async fn shutdown(self) {
        self.inner.shutdown().await;
    }

    fn check_running(&self) -> Result<(), ClientError> {
        if self.inner.is_stopped() {
            return Err(ClientError::Shutdown);
        }
        Ok(())
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.inner.stop_now();
    }
}
