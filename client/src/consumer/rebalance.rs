//! Rebalancing (`rocketmq-protocol.md` §9.2): for each subscribed topic, the group's members
//! (GET_CONSUMER_LIST_BY_GROUP) and the topic's readable queues decide, with
//! [`allocate_averagely`], which queues this member owns. Queues gained get a worker starting
//! at the committed offset; queues lost have their offset persisted (and, orderly, their lock
//! released) so the next owner continues where this one stopped.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::remoting::body::{
    decode_json, encode_json, ConsumerListBody, LockBatchRequestBody, LockBatchResponseBody,
    MessageQueue,
};
use sluice_protocol::remoting::custom::GetConsumerListByGroupRequestHeader;
use sluice_protocol::{request_code, RemotingCommand};

use super::allocate::allocate_averagely;
use super::process_queue::ProcessQueue;
use super::push::ConsumerInner;
use super::{remote, ConsumeFrom};
use crate::error::ClientError;

/// First wait before retrying a topic whose rebalance failed (no route yet, say); doubles up
/// to the rebalance interval.
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// How long a lost queue waits for its running handlers before its offset is persisted.
const RELEASE_DRAIN: Duration = Duration::from_secs(2);
/// How often orderly locks are renewed (RocketMQ: 20 s).
const LOCK_RENEW: Duration = Duration::from_secs(20);
/// After shutdown: how often a queue whose orderly handler outlived it is looked at.
const BUSY_POLL: Duration = Duration::from_millis(200);
/// After shutdown: the wait before renewing a busy queue's lock again after a failed request.
const BUSY_RENEW_RETRY: Duration = Duration::from_secs(2);

impl ConsumerInner {
    pub(super) async fn rebalance_loop(self: Arc<Self>) {
        let mut stop = self.stop_signal();
        let mut backoff = RETRY_FIRST;
        loop {
            let complete = self.rebalance().await;
            let wait = if complete {
                backoff = RETRY_FIRST;
                self.s.rebalance_interval
            } else {
                let w = backoff;
                backoff = (backoff * 2).min(self.s.rebalance_interval);
                w
            };
            tokio::select! {
                () = crate::core::stopped(&mut stop) => break,
                () = tokio::time::sleep(wait) => {}
                () = self.rebalance_now.notified() => {}
            }
        }
    }

    /// Rebalances every topic; false when one of them could not be (retried sooner).
    async fn rebalance(&self) -> bool {
        let mut complete = true;
        for sub in &self.subs {
            if self.is_stopped() {
                return true;
            }
            if let Err(e) = self.rebalance_topic(&sub.topic).await {
                tracing::debug!(group = %self.group, topic = %sub.topic, error = %e, "rebalance of topic postponed");
                complete = false;
            }
        }
        complete
    }

    #[tracing::instrument(skip(self), fields(group = %self.group))]
    async fn rebalance_topic(&self, topic: &str) -> Result<(), ClientError> {
        let route = match self.core.fetch_route(topic).await {
            Ok(r) => r,
            Err(e) => self.core.cached_route(topic).ok_or(e)?,
        };
        let members = self
            .members(
                &route
                    .masters()
                    .map(|(_, a)| a.to_owned())
                    .collect::<Vec<_>>(),
            )
            .await?;
        if !members.contains(&self.core.client_id) {
            // The broker has not registered us yet: keep what we have and say hello again.
            self.core.send_heartbeats().await;
            return Err(ClientError::Config(format!(
                "{} is not in the group's member list yet",
                self.core.client_id
            )));
        }
        let mine = allocate_averagely(&route.read_queues, &members, &self.core.client_id);
        self.apply(topic, mine).await;
        Ok(())
    }

    /// The group's members, from the first broker that answers.
    async fn members(&self, addrs: &[String]) -> Result<Vec<String>, ClientError> {
        let mut last = ClientError::NoRoute {
            topic: self.group.clone(),
            reason: "no broker to ask for the consumer list".into(),
        };
        for addr in addrs {
            let header = GetConsumerListByGroupRequestHeader {
                consumer_group: self.group.clone(),
            };
            let req =
                RemotingCommand::request(request_code::GET_CONSUMER_LIST_BY_GROUP, header.to_ext());
            match self
                .core
                .pool
                .invoke_ok(addr, req, self.core.cfg.rpc_timeout)
                .await
            {
                Ok(resp) => {
                    let body: ConsumerListBody = decode_json(&resp.body)
                        .map_err(|e| ClientError::protocol(addr, format!("consumer list: {e}")))?;
                    return Ok(body.consumer_id_list);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Releases queues of `topic` no longer ours (and retries releases left pending) and
    /// starts workers for new ones.
    async fn apply(&self, topic: &str, mine: Vec<MessageQueue>) {
        let wanted: HashSet<&MessageQueue> = mine.iter().collect();
        let lost: Vec<Arc<ProcessQueue>> = self
            .queues
            .lock()
            .iter()
            .filter(|(mq, pq)| mq.topic == topic && (!wanted.contains(mq) || pq.is_dropped()))
            .map(|(_, pq)| Arc::clone(pq))
            .collect();
        for pq in lost {
            self.release(pq).await;
        }
        for mq in mine {
            if self.is_stopped() || self.queues.lock().contains_key(&mq) {
                continue;
            }
            match self.start_offset(&mq).await {
                Ok(offset) => self.adopt(mq, offset),
                Err(e) => {
                    tracing::warn!(topic = %mq.topic, queue_id = mq.queue_id, error = %e, "cannot find where to start; next rebalance retries")
                }
            }
        }
    }

    fn adopt(&self, mq: MessageQueue, offset: i64) {
        tracing::info!(group = %self.group, topic = %mq.topic, broker = %mq.broker_name, queue_id = mq.queue_id, offset, "queue assigned");
        let pq = Arc::new(ProcessQueue::new(mq.clone(), offset));
        self.offsets.insert(&mq, offset);
        self.queues.lock().insert(mq, Arc::clone(&pq));
        if let Some(me) = self.self_arc() {
            // Detached: the worker ends when the queue is dropped or the consumer stops.
            drop(tokio::spawn(super::worker::run(me, pq)));
        }
    }

    /// Stops a lost queue's worker, lets running handlers finish (bounded), forgets the
    /// queue, persists its offset and, orderly, unlocks it.
    ///
    /// Orderly, a handler still running after the wait keeps the queue: it stays in the table,
    /// dropped, with its broker lock (still renewed), and the next rebalance tries again.
    /// Unlocking now would let the next owner consume the queue beside that handler, out of
    /// order (RocketMQ's `removeUnnecessaryMessageQueue` waits the same way).
    async fn release(&self, pq: Arc<ProcessQueue>) {
        pq.drop_queue();
        let deadline = tokio::time::Instant::now() + RELEASE_DRAIN;
        while pq.inflight() > 0 && tokio::time::Instant::now() < deadline {
            pq.wait_progress(Duration::from_millis(50)).await;
        }
        let consuming = tokio::time::timeout(RELEASE_DRAIN, pq.consuming.lock()).await;
        if self.s.orderly && consuming.is_err() {
            tracing::info!(group = %self.group, topic = %pq.mq.topic, queue_id = pq.mq.queue_id, "orderly handler still running; the queue is released at the next rebalance");
            return;
        }
        self.forget(&pq);
        self.offsets.update(&pq.mq, pq.commit_point());
        if let Err(e) = self
            .offsets
            .persist_and_remove(&self.core, &self.group, &pq.mq)
            .await
        {
            tracing::warn!(topic = %pq.mq.topic, queue_id = pq.mq.queue_id, error = %e, "offset of a released queue not persisted");
        }
        if self.s.orderly {
            self.unlock(vec![pq.mq.clone()]).await;
        }
        tracing::info!(group = %self.group, topic = %pq.mq.topic, queue_id = pq.mq.queue_id, offset = pq.commit_point(), "queue released");
    }

    /// Removes `pq` from the owned queues, unless the table holds another one for its queue.
    fn forget(&self, pq: &Arc<ProcessQueue>) {
        let mut queues = self.queues.lock();
        if queues.get(&pq.mq).is_some_and(|q| Arc::ptr_eq(q, pq)) {
            queues.remove(&pq.mq);
        }
    }

    /// The committed offset, else the consume-from policy (retry topics start at 0).
    async fn start_offset(&self, mq: &MessageQueue) -> Result<i64, ClientError> {
        if let Some(o) = remote::query_offset(&self.core, &self.group, mq).await? {
            if o >= 0 {
                return Ok(o);
            }
        }
        if mq.topic.starts_with("%RETRY%") {
            return Ok(0);
        }
        match self.s.consume_from {
            ConsumeFrom::FirstOffset => remote::min_offset(&self.core, mq).await,
            ConsumeFrom::LastOffset => remote::max_offset(&self.core, mq).await,
            ConsumeFrom::Timestamp(ts) => remote::search_offset(&self.core, mq, ts).await,
        }
    }

    /// Orderly: renews the locks of every owned queue.
    pub(super) async fn lock_loop(self: Arc<Self>) {
        let mut stop = self.stop_signal();
        let mut tick = tokio::time::interval(LOCK_RENEW);
        loop {
            tokio::select! {
                () = crate::core::stopped(&mut stop) => break,
                _ = tick.tick() => {
                    let owned: Vec<MessageQueue> = self.queues.lock().keys().cloned().collect();
                    self.lock(owned).await;
                }
            }
        }
    }

    /// Locks queues at their brokers; each owned queue learns whether it holds its lock.
    ///
    /// A queue released while its lock request was on the way (the renewal loop took its list
    /// before the release, and a release unlocks without waiting for the renewal) was locked
    /// again after its unlock, and its next owner could not lock it until the broker's lock
    /// expired. A lock granted for a queue no longer owned is given back at once.
    pub(crate) async fn lock(&self, queues: Vec<MessageQueue>) {
        for (broker, mqs) in by_broker(queues) {
            let held = match self.lock_request(&broker, &mqs).await {
                Ok(held) => held,
                Err(e) => {
                    // No answer is not a refusal: the broker keeps a lock 60 s after its last
                    // renewal, and each queue's own lock lapses locally (`LOCK_TTL`) unless a
                    // renewal succeeds first. Taken as refused, one timed-out request stopped
                    // every orderly queue of the broker after its current message, each to be
                    // locked and its offset read again.
                    tracing::debug!(broker = %broker, error = %e, "lock request failed; locks held so far lapse on their own");
                    continue;
                }
            };
            let not_owned: Vec<MessageQueue> = {
                let queues = self.queues.lock();
                for mq in &mqs {
                    if let Some(pq) = queues.get(mq) {
                        pq.set_locked(held.contains(mq));
                    }
                }
                held.into_iter()
                    .filter(|mq| !queues.contains_key(mq))
                    .collect()
            };
            if !not_owned.is_empty() {
                tracing::debug!(broker = %broker, queues = not_owned.len(), "lock granted for queues released meanwhile; unlocking");
                self.unlock(not_owned).await;
            }
        }
    }

    async fn lock_request(
        &self,
        broker: &str,
        mqs: &[MessageQueue],
    ) -> Result<HashSet<MessageQueue>, ClientError> {
        let addr = self.core.master_addr(broker)?;
        let req = RemotingCommand::request(request_code::LOCK_BATCH_MQ, Default::default())
            .with_body(encode_json(&self.lock_body(mqs)));
        let resp = self
            .core
            .pool
            .invoke_ok(&addr, req, self.core.cfg.rpc_timeout)
            .await?;
        if resp.body.is_empty() {
            return Ok(HashSet::new());
        }
        let body: LockBatchResponseBody = decode_json(&resp.body)
            .map_err(|e| ClientError::protocol(&addr, format!("lock response: {e}")))?;
        Ok(body.lock_ok_mq_set.into_iter().collect())
    }

    /// Orderly, after shutdown: keeps the locks of queues whose handler outlived the
    /// shutdown, and unlocks each once its handler ends.
    ///
    /// Left alone, a lock lapses at the broker 35 s after its last renewal once this client
    /// has left, and a handler running longer would overlap the next owner, out of order. The
    /// locks are renewed every 20 s (at once, too) for at most `consume_timeout`, the bound
    /// after which a handler counts as hung; a queue whose renewal is refused (another owner
    /// holds it) is let go.
    pub(super) async fn keep_busy_locks(self: Arc<Self>, mut busy: Vec<Arc<ProcessQueue>>) {
        // `consume_timeout` may be huge ("never cut"): then there is no deadline.
        let deadline = tokio::time::Instant::now().checked_add(self.s.consume_timeout);
        let mut renew_at = tokio::time::Instant::now();
        loop {
            let (ended, running): (Vec<_>, Vec<_>) = busy
                .into_iter()
                .partition(|pq| pq.consuming.try_lock().is_ok());
            busy = running;
            if !ended.is_empty() {
                self.unlock(ended.iter().map(|pq| pq.mq.clone()).collect())
                    .await;
            }
            let now = tokio::time::Instant::now();
            if busy.is_empty() {
                return;
            }
            if deadline.is_some_and(|d| now >= d) {
                tracing::warn!(group = %self.group, queues = busy.len(), "orderly handlers still running after consume_timeout; their locks are left to lapse");
                return;
            }
            if now >= renew_at {
                renew_at = now + self.renew_busy(&mut busy).await;
            }
            tokio::time::sleep(BUSY_POLL).await;
        }
    }

    /// Orderly, while a shutdown waits for handlers and commits: renews the locks of the
    /// drained queues whose handler still runs, at once and then as the lock loop did (which
    /// stopped with the shutdown). Without it a wait longer than the broker's lock lifetime
    /// (60 s after the last renewal, 35 s once the client has left) let the next owner lock
    /// the queue and consume it beside the running handler. The shutdown aborts this task
    /// before it unlocks the idle queues, so none is locked again after its unlock.
    pub(super) async fn renew_while_draining(self: Arc<Self>, mut queues: Vec<Arc<ProcessQueue>>) {
        loop {
            queues.retain(|pq| pq.consuming.try_lock().is_err());
            if queues.is_empty() {
                return;
            }
            let wait = self.renew_busy(&mut queues).await;
            tokio::time::sleep(wait).await;
        }
    }

    /// Renews `busy` queues' locks; drops those another client holds. Returns the wait before
    /// the next renewal (shorter after a failed request: the lock lapses 35 s after the last).
    pub(super) async fn renew_busy(&self, busy: &mut Vec<Arc<ProcessQueue>>) -> Duration {
        let mut wait = LOCK_RENEW;
        for (broker, mqs) in by_broker(busy.iter().map(|pq| pq.mq.clone()).collect()) {
            match self.lock_request(&broker, &mqs).await {
                Ok(held) => busy.retain(|pq| {
                    let keep = pq.mq.broker_name != broker || held.contains(&pq.mq);
                    if !keep {
                        tracing::warn!(group = %self.group, topic = %pq.mq.topic, queue_id = pq.mq.queue_id, "lock of a queue whose orderly handler still runs was lost");
                    }
                    keep
                }),
                Err(e) => {
                    tracing::debug!(broker = %broker, error = %e, "renewal of a busy queue's lock failed");
                    wait = BUSY_RENEW_RETRY;
                }
            }
        }
        wait
    }

    /// Releases locks (orderly), best effort: brokers expire them anyway.
    pub(crate) async fn unlock(&self, queues: Vec<MessageQueue>) {
        for (broker, mqs) in by_broker(queues) {
            let Ok(addr) = self.core.master_addr(&broker) else {
                continue;
            };
            let req = RemotingCommand::request(request_code::UNLOCK_BATCH_MQ, Default::default())
                .with_body(encode_json(&self.lock_body(&mqs)));
            if let Err(e) = self
                .core
                .pool
                .invoke_ok(&addr, req, self.core.cfg.rpc_timeout)
                .await
            {
                tracing::debug!(broker = %broker, error = %e, "unlock failed; the broker lets it expire");
            }
        }
    }

    fn lock_body(&self, mqs: &[MessageQueue]) -> LockBatchRequestBody {
        LockBatchRequestBody {
            consumer_group: self.group.clone(),
            client_id: self.core.client_id.clone(),
            only_this_broker: false,
            mq_set: mqs.to_vec(),
        }
    }
}

/// Queues grouped by their broker's name.
pub(super) fn by_broker(queues: Vec<MessageQueue>) -> BTreeMap<String, Vec<MessageQueue>> {
    let mut out: BTreeMap<String, Vec<MessageQueue>> = BTreeMap::new();
    for mq in queues {
        out.entry(mq.broker_name.clone()).or_default().push(mq);
    }
    out
}
