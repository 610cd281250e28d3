//! How a send happens: validation and the unique key, queue choice (round robin that avoids
//! brokers that just failed, a fixed queue, or a sharding-key hash), the bounded retry loop,
//! and reading the broker's answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use sluice_protocol::message::keys;
use sluice_protocol::remoting::body::MessageQueue;
use sluice_protocol::remoting::custom::{
    SendHeaderForm, SendMessageRequestHeader, SendMessageResponseHeader,
};
use sluice_protocol::{encode_batch, java_hash, request_code, BatchEntry, RemotingCommand};

use super::result::{BatchSendResult, SendResult, SendStatus};
use crate::core::{ClientCore, DEFAULT_TOPIC, DEFAULT_TOPIC_QUEUE_NUMS};
use crate::error::ClientError;
use crate::message::Message;
use crate::route::TopicRoute;

/// How long a broker that failed at the network level is passed over by round robin.
const FAULT_BACKOFF: Duration = Duration::from_secs(5);

/// A message on its way out, with the header fields a [`Message`] does not carry.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) msg: Message,
    pub(crate) sys_flag: i32,
    pub(crate) reconsume_times: Option<i32>,
    pub(crate) max_reconsume_times: Option<i32>,
}

impl Outgoing {
    pub(crate) fn plain(msg: Message) -> Self {
        Self {
            msg,
            sys_flag: 0,
            reconsume_times: None,
            max_reconsume_times: None,
        }
    }
}

/// Which queue a send goes to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// Round robin, avoiding brokers that just failed.
    Any,
    /// This queue, every attempt.
    Queue(&'a MessageQueue),
    /// `abs(javaHash(key)) % queues`, every attempt (so order per key holds).
    Hash(&'a str),
}

/// The sending half of a producer, shared by [`crate::Producer`], the transactional producer
/// and the push consumer's retry fallback.
pub(crate) struct Sender {
    pub(crate) core: Arc<ClientCore>,
    pub(crate) group: String,
    pub(crate) retry_times: u32,
    pub(crate) send_timeout: Duration,
    next_queue: AtomicUsize,
    faults: Mutex<HashMap<String, Instant>>,
}

impl Sender {
    pub(crate) fn new(
        core: Arc<ClientCore>,
        group: String,
        retry_times: u32,
        send_timeout: Duration,
    ) -> Self {
        Self {
            core,
            group,
            retry_times,
            send_timeout,
            next_queue: AtomicUsize::new(0),
            faults: Mutex::new(HashMap::new()),
        }
    }

    /// Validates and gives the message a `UNIQ_KEY` unless the caller set one (a fixed key
    /// lets an idempotent consumer recognise a deliberate re-send).
    pub(crate) fn prepare(&self, mut msg: Message) -> Result<Message, ClientError> {
        msg.validate(self.core.cfg.max_message_size)?;
        if msg.property(keys::UNIQ_KEY).is_none() {
            let key = self.core.uniq.next_key();
            msg.properties_mut().insert(keys::UNIQ_KEY, key);
        }
        Ok(msg)
    }

    /// Sends and waits for the broker, retrying retryable failures up to `retry_times` more
    /// times (on another broker when the target allows it). All attempts share one
    /// `send_timeout`, as RocketMQ's producers do: each waits only for what is left of it, and
    /// none starts once it is spent, so a send returns within about `send_timeout` however
    /// many retries are allowed.
    #[tracing::instrument(skip_all, fields(topic = %out.msg.topic(), group = %self.group))]
    pub(crate) async fn send(
        &self,
        out: &Outgoing,
        target: Target<'_>,
    ) -> Result<SendResult, ClientError> {
        let attempts = self.retry_times + 1;
        let deadline = Instant::now() + self.send_timeout;
        let topic = out.msg.topic();
        let mut avoid: Option<String> = None;
        let mut attempt = 0;
        // An ordered send keeps the queue its key picked first: hashed again after a route
        // refresh, a retry could land on another queue and break the key's order silently.
        let mut hashed: Option<MessageQueue> = None;
        loop {
            attempt += 1;
            let picked = match (&hashed, target) {
                (Some(mq), _) => Ok(mq.clone()),
                _ => within(deadline, self.pick(topic, target, avoid.as_deref()))
                    .await
                    .ok_or_else(|| self.timed_out(topic, attempt - 1))?,
            };
            if let (Ok(mq), Target::Hash(_)) = (&picked, target) {
                hashed.get_or_insert_with(|| mq.clone());
            }
            let result = match picked {
                Ok(mq) => {
                    let Some(r) = within(deadline, self.attempt(out, &mq, left(deadline))).await
                    else {
                        // The broker took the whole budget (unreachable, say, with a connect
                        // that waits as long as a send may): the next sends avoid it.
                        self.note_stalled(&mq);
                        return Err(self.timed_out(topic, attempt));
                    };
                    if let Err(e) = &r {
                        self.note_failure(&mq, e);
                        avoid = Some(mq.broker_name.clone());
                    }
                    r
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(r) => return Ok(r),
                Err(e) if e.is_retryable() && attempt < attempts && !spent(deadline) => {
                    tracing::warn!(attempt, error = %e, "send failed; retrying");
                    if matches!(e.response_code(), Some(16 | 17)) {
                        let _ = within(deadline, self.core.fetch_route(topic)).await;
                    }
                }
                Err(e) => {
                    return Err(ClientError::SendFailed {
                        topic: topic.to_owned(),
                        attempts: attempt,
                        last: Box::new(e),
                    })
                }
            }
        }
    }

    /// The error of a send whose budget ran out after `attempts` attempts started.
    fn timed_out(&self, topic: &str, attempts: u32) -> ClientError {
        ClientError::SendTimeout {
            topic: topic.to_owned(),
            timeout: self.send_timeout,
            attempts,
        }
    }

    /// Sends without waiting for (or getting) an answer: one attempt, within `send_timeout`
    /// (a route lookup, a connect or a full writer queue could otherwise hold it for minutes).
    pub(crate) async fn send_oneway(&self, out: &Outgoing) -> Result<(), ClientError> {
        let topic = out.msg.topic();
        self.bounded(topic, async {
            let mq = self.pick(topic, Target::Any, None).await?;
            let addr = self.core.master_addr(&mq.broker_name)?;
            let req = self.request(out, &mq, false);
            self.core.pool.invoke_oneway(&addr, req).await
        })
        .await
    }

    /// Runs `f` (a one-way send: this one's, END_TRANSACTION) within `send_timeout`, failing
    /// with a timeout past it.
    pub(crate) async fn bounded<T>(
        &self,
        topic: &str,
        f: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        within(Instant::now() + self.send_timeout, f)
            .await
            .unwrap_or_else(|| Err(self.timed_out(topic, 1)))
    }

    /// Sends `msgs` (one topic, already prepared) as one SEND_BATCH_MESSAGE.
    pub(crate) async fn send_batch(
        &self,
        msgs: &[Message],
    ) -> Result<BatchSendResult, ClientError> {
        let topic = msgs[0].topic();
        let props: Vec<String> = msgs.iter().map(|m| m.properties().encode()).collect();
        let entries: Vec<BatchEntry<'_>> = msgs
            .iter()
            .zip(&props)
            .map(|(m, p)| BatchEntry {
                flag: m.flag(),
                body: m.body(),
                properties: p.as_bytes(),
            })
            .collect();
        let mut body = Vec::new();
        encode_batch(entries.iter(), &mut body)
            .map_err(|e| ClientError::InvalidMessage(e.to_string()))?;
        let carrier = Outgoing::plain(Message::new(topic, body));
        let ids: Vec<String> = msgs
            .iter()
            .map(|m| m.property(keys::UNIQ_KEY).unwrap_or_default().to_owned())
            .collect();
        let attempts = self.retry_times + 1;
        let deadline = Instant::now() + self.send_timeout;
        let mut avoid = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mq = within(deadline, self.pick(topic, Target::Any, avoid.as_deref()))
                .await
                .ok_or_else(|| self.timed_out(topic, attempt - 1))??;
            let sent = within(
                deadline,
                self.batch_attempt(&carrier, &mq, &ids, left(deadline)),
            );
            let Some(sent) = sent.await else {
                self.note_stalled(&mq);
                return Err(self.timed_out(topic, attempt));
            };
            match sent {
                Ok(r) => return Ok(r),
                Err(e) if e.is_retryable() && attempt < attempts && !spent(deadline) => {
                    tracing::warn!(topic, attempt, error = %e, "batch send failed; retrying");
                    self.note_failure(&mq, &e);
                    avoid = Some(mq.broker_name.clone());
                }
                Err(e) => {
                    return Err(ClientError::SendFailed {
                        topic: topic.to_owned(),
                        attempts: attempt,
                        last: Box::new(e),
                    })
                }
            }
        }
    }

    async fn batch_attempt(
        &self,
        carrier: &Outgoing,
        mq: &MessageQueue,
        ids: &[String],
        timeout: Duration,
    ) -> Result<BatchSendResult, ClientError> {
        let addr = self.core.master_addr(&mq.broker_name)?;
        let mut req = self.request(carrier, mq, true);
        req.code = request_code::SEND_BATCH_MESSAGE;
        let resp = self.core.pool.invoke(&addr, req, timeout).await?;
        let single = read_response(&addr, mq, resp, String::new())?;
        Ok(BatchSendResult {
            status: single.status,
            msg_ids: ids.to_vec(),
            offset_msg_ids: single
                .offset_msg_id
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            queue: single.queue,
            first_queue_offset: single.queue_offset,
        })
    }

    /// One attempt at one queue, waiting at most `timeout`.
    async fn attempt(
        &self,
        out: &Outgoing,
        mq: &MessageQueue,
        timeout: Duration,
    ) -> Result<SendResult, ClientError> {
        let addr = self.core.master_addr(&mq.broker_name)?;
        let req = self.request(out, mq, false);
        let resp = self.core.pool.invoke(&addr, req, timeout).await?;
        let uniq = out
            .msg
            .property(keys::UNIQ_KEY)
            .unwrap_or_default()
            .to_owned();
        let r = read_response(&addr, mq, resp, uniq)?;
        tracing::debug!(broker = %mq.broker_name, queue_id = mq.queue_id, offset = r.queue_offset, msg_id = %r.msg_id, "sent");
        Ok(r)
    }

    fn request(&self, out: &Outgoing, mq: &MessageQueue, batch: bool) -> RemotingCommand {
        let header = SendMessageRequestHeader {
            producer_group: self.group.clone(),
            topic: mq.topic.clone(),
            default_topic: DEFAULT_TOPIC.to_owned(),
            default_topic_queue_nums: DEFAULT_TOPIC_QUEUE_NUMS,
            queue_id: mq.queue_id,
            sys_flag: out.sys_flag,
            born_timestamp: now_ms(),
            flag: out.msg.flag(),
            properties: (!batch).then(|| out.msg.properties().encode()),
            reconsume_times: out.reconsume_times,
            unit_mode: Some(false),
            max_reconsume_times: out.max_reconsume_times,
            batch: Some(batch),
            broker_name: None,
        };
        RemotingCommand::request(
            request_code::SEND_MESSAGE_V2,
            header.to_ext(SendHeaderForm::V2),
        )
        .with_body(out.msg.body().clone())
    }

    /// The queue for this attempt.
    async fn pick(
        &self,
        topic: &str,
        target: Target<'_>,
        avoid: Option<&str>,
    ) -> Result<MessageQueue, ClientError> {
        if let Target::Queue(mq) = target {
            // A use of the topic's route, which keeps it (and its broker's address) refreshed;
            // a route forgotten as idle is fetched again, or a moved broker would be sent to
            // at its old address for good. A failed fetch leaves the address known.
            if self.core.cached_route(topic).is_none() {
                let _ = self.core.fetch_route(topic).await;
            }
            return Ok(mq.clone());
        }
        let route = self.core.publish_route(topic).await?;
        let chosen = match target {
            Target::Hash(key) => pick_by_hash(&route, key),
            _ => self.pick_round_robin(&route, avoid),
        };
        chosen.ok_or_else(|| ClientError::NoRoute {
            topic: topic.to_owned(),
            reason: "the route has no writable queue".into(),
        })
    }

    fn pick_round_robin(&self, route: &TopicRoute, avoid: Option<&str>) -> Option<MessageQueue> {
        let queues = &route.write_queues;
        if queues.is_empty() {
            return None;
        }
        let start = self.next_queue.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let faults = self.faults.lock();
        let healthy = |mq: &MessageQueue| {
            Some(mq.broker_name.as_str()) != avoid
                && faults
                    .get(&mq.broker_name)
                    .is_none_or(|until| *until <= now)
        };
        (0..queues.len())
            .map(|i| &queues[(start + i) % queues.len()])
            .find(|mq| healthy(mq))
            .or_else(|| {
                (0..queues.len())
                    .map(|i| &queues[(start + i) % queues.len()])
                    .find(|mq| Some(mq.broker_name.as_str()) != avoid)
            })
            .or_else(|| queues.get(start % queues.len()))
            .cloned()
    }

    /// Network failures park the broker for [`FAULT_BACKOFF`], so later sends skip it.
    fn note_failure(&self, mq: &MessageQueue, e: &ClientError) {
        if matches!(e, ClientError::Remoting { .. }) {
            self.note_stalled(mq);
        }
    }

    /// Avoids `mq`'s broker for [`FAULT_BACKOFF`]: a network failure, or an attempt still
    /// unfinished when the send's budget ran out.
    fn note_stalled(&self, mq: &MessageQueue) {
        self.faults
            .lock()
            .insert(mq.broker_name.clone(), Instant::now() + FAULT_BACKOFF);
    }
}

/// Java's `SelectMessageQueueByHash`: the same key always lands on the same queue while the
/// queue count stays the same.
pub(crate) fn pick_by_hash(route: &TopicRoute, key: &str) -> Option<MessageQueue> {
    let queues = &route.write_queues;
    if queues.is_empty() {
        return None;
    }
    let idx = java_hash(key).unsigned_abs() as usize % queues.len();
    Some(queues[idx].clone())
}

/// Turns a send response into a result: 0/10/11/12 mean stored, anything else is an error.
fn read_response(
    addr: &str,
    mq: &MessageQueue,
    resp: RemotingCommand,
    uniq: String,
) -> Result<SendResult, ClientError> {
    let Some(status) = SendStatus::from_code(resp.code) else {
        return Err(ClientError::Broker {
            addr: addr.to_owned(),
            code: resp.code,
            remark: resp.remark.unwrap_or_default(),
        });
    };
    let h = SendMessageResponseHeader::from_ext(&resp.ext_fields)
        .map_err(|e| ClientError::protocol(addr, format!("send response: {e}")))?;
    let queue = MessageQueue {
        topic: mq.topic.clone(),
        broker_name: mq.broker_name.clone(),
        queue_id: h.queue_id,
    };
    Ok(SendResult {
        status,
        msg_id: uniq,
        offset_msg_id: h.msg_id,
        queue,
        queue_offset: h.queue_offset,
        transaction_id: h.transaction_id,
    })
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What is left of a send's budget.
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Runs `f` within what is left of a send's budget; `None` when the budget ran out first
/// (a future already done when polled still counts).
async fn within<T>(deadline: Instant, f: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(left(deadline), f).await.ok()
}

/// True once a send's budget is spent: no further attempt starts.
fn spent(deadline: Instant) -> bool {
    Instant::now() >= deadline
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::remoting::body::{BrokerData, QueueData, TopicRouteData};

    fn route(n: i32) -> TopicRoute {
        let data = TopicRouteData {
            broker_datas: vec![BrokerData {
                broker_addrs: [(0, "a:1".to_owned())].into_iter().collect(),
                broker_name: "a".into(),
                ..BrokerData::default()
            }],
            queue_datas: vec![QueueData {
                broker_name: "a".into(),
                perm: 6,
                read_queue_nums: n,
                write_queue_nums: n,
                topic_sys_flag: 0,
            }],
            ..TopicRouteData::default()
        };
        TopicRoute::new("T", &data, None)
    }

    #[test]
    fn the_same_key_always_picks_the_same_queue() {
        let r = route(4);
        let q = pick_by_hash(&r, "order-1").unwrap();
        for _ in 0..10 {
            assert_eq!(pick_by_hash(&r, "order-1").unwrap(), q);
        }
        // abs(javaHash) % n, as Java's SelectMessageQueueByHash.
        let want = java_hash("order-1").unsigned_abs() as i32 % 4;
        assert_eq!(q.queue_id, want);
        assert!(pick_by_hash(&route(0), "k").is_none());
    }

    #[test]
    fn a_timed_out_or_refused_response_is_an_error_but_flush_timeouts_are_stored() {
        let mq = route(1).write_queues[0].clone();
        let ext = SendMessageResponseHeader {
            msg_id: "X".into(),
            queue_id: 0,
            queue_offset: 3,
            transaction_id: None,
        }
        .to_ext();
        let stored =
            RemotingCommand::response_to(&RemotingCommand::default(), 10, None).with_ext(ext);
        let r = read_response("a:1", &mq, stored, "U".into()).unwrap();
        assert_eq!(
            (r.status, r.queue_offset, r.msg_id.as_str()),
            (SendStatus::FlushDiskTimeout, 3, "U")
        );
        let refused =
            RemotingCommand::response_to(&RemotingCommand::default(), 13, Some("bad".into()));
        let err = read_response("a:1", &mq, refused, "U".into()).unwrap_err();
        assert_eq!(err.response_code(), Some(13));
    }
}
