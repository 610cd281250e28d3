//! Sending from inside the process (the HTTP facade): the same checks, put hooks and durable
//! append as SEND_MESSAGE, without a remoting frame. A delayed or transactional message is
//! parked by its hook exactly as if a TCP producer had sent it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use sluice_protocol::message::keys;
use sluice_protocol::message::offset_msg_id;
use sluice_protocol::{java_hash, Properties};
use sluice_store::MessageInput;

use crate::broker::context::BrokerContext;
use crate::hooks::{PendingMessage, PutContext};
use crate::processor::send;
use crate::processor::Reject;
use crate::stats::Counters;
use crate::topic::DEFAULT_TOPIC;

/// One message from an in-process producer.
#[derive(Debug, Clone)]
pub struct Produce {
    /// Producer group (`PGROUP` of a transactional message; shown in producer stats).
    pub producer_group: String,
    /// Destination topic.
    pub topic: String,
    /// Queue: `None` lets the broker pick (round robin, or by `sharding_key`).
    pub queue_id: Option<i32>,
    /// Messages with the same key go to the same queue (`java_hash(key) % write queues`), so
    /// they are consumed in order.
    pub sharding_key: Option<String>,
    /// The body, stored as given.
    pub body: Bytes,
    /// User and system properties (`TAGS`, `KEYS`, `DELAY`, `TIMER_DELIVER_MS`, `TRAN_MSG`...).
    pub properties: Properties,
    /// sysFlag (`TRANSACTION_PREPARED` for a half message).
    pub sys_flag: i32,
    /// The user's int flag.
    pub flag: i32,
    /// The producer's address (the HTTP peer).
    pub born_host: SocketAddr,
    /// Producer timestamp, epoch ms.
    pub born_ms: i64,
}

impl Produce {
    /// A plain message with defaults: broker-picked queue, no properties, born now at 127.0.0.1.
    pub fn new(producer_group: &str, topic: &str, body: impl Into<Bytes>) -> Self {
        Self {
            producer_group: producer_group.to_owned(),
            topic: topic.to_owned(),
            queue_id: None,
            sharding_key: None,
            body: body.into(),
            properties: Properties::default(),
            sys_flag: 0,
            flag: 0,
            born_host: SocketAddr::from(([127, 0, 0, 1], 0)),
            born_ms: now_ms(),
        }
    }
}

/// What a successful send stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    /// Offset message id of the stored record (for a parked message: of the parked copy).
    pub msg_id: String,
    /// The message's `UNIQ_KEY` (a transaction's id; what consumers see as the message id).
    pub uniq_key: String,
    /// Queue of the stored record.
    pub queue_id: i32,
    /// Queue offset of the stored record.
    pub queue_offset: i64,
    /// Commit-log offset of the stored record.
    pub phys_offset: u64,
    /// The topic the record was stored in (differs from the request for parked messages).
    pub stored_topic: String,
}

/// Why a send was refused: the response code and remark a TCP producer would get.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{remark} (code {code})")]
pub struct ProduceError {
    /// `sluice_protocol::response_code`.
    pub code: i32,
    /// Why, for the caller.
    pub remark: String,
}

impl From<Reject> for ProduceError {
    fn from(r: Reject) -> Self {
        Self {
            code: r.code,
            remark: r.remark,
        }
    }
}

/// Retry, dead-letter and the broker's own topics take no sends on this path. RocketMQ's TCP
/// send accepts `%RETRY%<group>` because a consumer's send-back fallback writes there; over
/// HTTP any producer token could inject "retries" that a group's consumers then handle,
/// forge dead letters an operator later replays, and create a retry topic per invented name.
fn refuse_broker_topic(topic: &str) -> Result<(), ProduceError> {
    if topic.starts_with(crate::topic::RETRY_PREFIX) || crate::topic::is_broker_topic(topic) {
        return Err(ProduceError {
            code: sluice_protocol::response_code::NO_PERMISSION,
            remark: format!(
                "topic {topic} belongs to the broker (retry, dead-letter or system topic): it \
                 takes no direct sends"
            ),
        });
    }
    Ok(())
}

/// Checks, hooks and a durable append; answers only after the store acknowledged.
pub(crate) async fn produce(
    ctx: &Arc<BrokerContext>,
    p: Produce,
) -> Result<Produced, ProduceError> {
    refuse_broker_topic(&p.topic)?;
    // No client asks for a queue count here: an auto-created topic gets the template's,
    // `[broker] default_topic_queue_nums` (a RocketMQ producer asks for its own, 4 by default).
    let topic_cfg =
        send::check_topic_named(ctx, &p.topic, DEFAULT_TOPIC, ctx.cfg.default_queue_nums())?;
    let queue_id = pick_queue(ctx, &p, topic_cfg.write_queue_nums)?;
    let born_host = send::canonical(p.born_host);
    let mut properties = p.properties;
    send::stamp(ctx, &mut properties);
    let uniq_key = properties
        .get(keys::UNIQ_KEY)
        .unwrap_or_default()
        .to_owned();
    let input = MessageInput {
        topic: p.topic.clone(),
        queue_id,
        flag: p.flag,
        sys_flag: p.sys_flag,
        born_timestamp: p.born_ms,
        born_host,
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        body: p.body,
        properties: String::new(),
    };
    let put_ctx = PutContext {
        producer_group: &p.producer_group,
        remote: born_host,
        batch: false,
        max_reconsume_times: None,
    };
    let pending = vec![PendingMessage { input, properties }];
    let pending = send::run_hooks(ctx, &put_ctx, pending)?;
    let (inputs, properties) = send::finish(pending)?;
    let appended = send::append(ctx, &inputs, properties, true).await?;
    Counters::add(&ctx.counters.messages_stored, appended.len() as u64);
    let a = appended.first().ok_or_else(|| ProduceError {
        code: sluice_protocol::response_code::SYSTEM_ERROR,
        remark: "the store acknowledged nothing".into(),
    })?;
    tracing::trace!(topic = %p.topic, queue_id, offset = a.queue_offset, "stored (in-process send)");
    Ok(Produced {
        msg_id: offset_msg_id(ctx.store.store_host(), a.phys_offset),
        uniq_key,
        queue_id: inputs[0].queue_id,
        queue_offset: a.queue_offset,
        phys_offset: a.phys_offset,
        stored_topic: inputs[0].topic.clone(),
    })
}

/// The requested queue (range-checked), the sharding key's queue, or round robin.
fn pick_queue(ctx: &BrokerContext, p: &Produce, write_queues: i32) -> Result<i32, Reject> {
    let queues = write_queues.max(1);
    match (p.queue_id, &p.sharding_key) {
        (Some(q), _) if q < 0 || q >= queues => Err(Reject::new(
            sluice_protocol::response_code::INVALID_PARAMETER,
            format!(
                "queue {q} is out of range: topic {} has {queues} write queues",
                p.topic
            ),
        )),
        (Some(q), _) => Ok(q),
        (None, Some(key)) => Ok((java_hash(key).unsigned_abs() % queues as u32) as i32),
        (None, None) => Ok(ctx.pick_queue(queues)),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
