//! SEND_MESSAGE (10), SEND_MESSAGE_V2 (310), SEND_BATCH_MESSAGE (320): `rocketmq-protocol.md` §2.2.
//!
//! Order of checks, as Java's `msgCheck`: topic name, not-sendable system topics, existence
//! (auto-create from the template), writable, queue id range. Then the message is built (UNIQ_KEY
//! generated if missing, `CLUSTER` added, bornHost = TCP peer), put hooks run, and the store
//! append is awaited: the response says SUCCESS only once the store acknowledged the message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use sluice_protocol::decode_batch;
use sluice_protocol::message::keys;
use sluice_protocol::message::offset_msg_id;
use sluice_protocol::message::record::{sysflag, MAX_PROPERTIES_LEN};
use sluice_protocol::remoting::body::{perm, TopicConfig};
use sluice_protocol::remoting::custom::{SendMessageRequestHeader, SendMessageResponseHeader};
use sluice_protocol::{request_code, response_code as code, Properties, RemotingCommand};
use sluice_store::{Appended, MessageInput, StoreError};

use super::Reject;
use crate::broker::context::BrokerContext;
use crate::hooks::{HookOutcome, PendingMessage, PutContext, Stored};
use crate::remoting::ConnectionHandle;
use crate::reply;
use crate::stats::Counters;
use crate::topic::{self, RETRY_PREFIX};

/// Least room per message a batch is given: its count is bounded by the body cap over this
/// (32 768 at the default 4 MiB). Apache RocketMQ bounds a batch by its size only, and
/// `ListSplitter`-style batches of 100-byte messages hold thousands; a bound of 4 096 refused
/// them. The bound keeps what the entries cost in memory in proportion to the body.
const MIN_BATCH_ENTRY_BYTES: usize = 128;
/// Fewest messages a batch may hold, whatever the body cap.
const MIN_BATCH_MESSAGES: usize = 4096;
/// Most properties (name and value pairs) across a batch's messages: each is decoded into two
/// strings, 30 times or more what it takes in the body, and the request's byte budget counts
/// only the body.
const MAX_BATCH_PROPERTIES: usize = 262_144;

/// Most messages in a batch under a body cap of `max_body`.
fn max_batch_messages(max_body: usize) -> usize {
    (max_body / MIN_BATCH_ENTRY_BYTES).max(MIN_BATCH_MESSAGES)
}

pub(super) async fn send(
    ctx: &Arc<BrokerContext>,
    conn: &ConnectionHandle,
    req: &RemotingCommand,
    access_key: Option<&str>,
) -> Result<RemotingCommand, Reject> {
    let h = SendMessageRequestHeader::from_ext(&req.ext_fields).map_err(|e| Reject::header(&e))?;
    let topic_cfg = check_topic(ctx, &h)?;
    let queue_id = choose_queue(ctx, &h, &topic_cfg)?;
    super::client::check_producer_group_len(h.producer_group.len())?;
    ctx.clients
        .note_producer(conn, &h.producer_group, Instant::now(), access_key)
        .map_err(|e| Reject::new(code::INVALID_PARAMETER, format!("send refused: {e}")))?;
    let batch = h.is_batch() || req.code == request_code::SEND_BATCH_MESSAGE;
    let born_host = canonical(conn.remote_addr());
    let base = base_input(&h, queue_id, born_host);
    let raw_props = h.properties.as_deref().unwrap_or("");
    if raw_props.len() > MAX_PROPERTIES_LEN {
        // Refused before decoding, as RocketMQ does: the header may be as long as the frame.
        return Err(Reject::new(
            code::MESSAGE_ILLEGAL,
            format!(
                "message properties are {} bytes, more than {MAX_PROPERTIES_LEN}",
                raw_props.len()
            ),
        ));
    }
    let header_props = Properties::decode(raw_props.as_bytes());
    let (pending, wait) = if batch {
        (
            batch_messages(ctx, &h, &base, &req.body)?,
            waits(&header_props),
        )
    } else {
        let msg = single_message(ctx, base, header_props, req.body.clone());
        let wait = waits(&msg.properties);
        (vec![msg], wait)
    };
    let mut pending = pending;
    let mut dead_lettered = 0;
    if !batch {
        for msg in &mut pending {
            if crate::retry::route_retry_send(ctx, h.max_reconsume_times, msg) {
                dead_lettered += 1;
            }
        }
    }
    let put_ctx = PutContext {
        producer_group: &h.producer_group,
        remote: born_host,
        batch,
        max_reconsume_times: h.max_reconsume_times,
    };
    let pending = run_hooks(ctx, &put_ctx, pending)?;
    let uniq_keys: Vec<String> = pending
        .iter()
        .filter_map(|m| m.properties.get(keys::UNIQ_KEY).map(str::to_owned))
        .collect();
    let (inputs, properties) = finish(pending)?;
    let appended = append(ctx, &inputs, properties, wait).await?;
    Counters::add(&ctx.counters.messages_stored, appended.len() as u64);
    Counters::add(&ctx.counters.dead_lettered, dead_lettered);
    tracing::trace!(topic = %h.topic, queue_id, offset = appended[0].queue_offset, count = appended.len(), "stored");
    Ok(success(ctx, req, queue_id, &appended, &uniq_keys))
}

/// Name, permission and existence checks; auto-creates the topic when allowed.
fn check_topic(
    ctx: &Arc<BrokerContext>,
    h: &SendMessageRequestHeader,
) -> Result<TopicConfig, Reject> {
    check_topic_named(ctx, &h.topic, &h.default_topic, h.default_topic_queue_nums)
}

/// [`check_topic`] for any sender: the TCP path and in-process producers share it.
pub(crate) fn check_topic_named(
    ctx: &Arc<BrokerContext>,
    topic_name: &str,
    default_topic: &str,
    default_queue_nums: i32,
) -> Result<TopicConfig, Reject> {
    topic::validate_name(topic_name)?;
    if topic::is_not_sendable(topic_name) {
        return Err(Reject::new(
            code::NO_PERMISSION,
            format!("Sending message to topic[{topic_name}] is forbidden."),
        ));
    }
    let cfg = if ctx.cfg.auto_create_topic || topic_name.starts_with(RETRY_PREFIX) {
        ctx.topics
            .get_or_create_for_send(topic_name, default_topic, default_queue_nums)?
    } else {
        ctx.topics.get(topic_name).ok_or_else(|| {
            Reject::new(
                code::TOPIC_NOT_EXIST,
                format!("topic[{topic_name}] not exist, apply first please!"),
            )
        })?
    };
    if !perm::is_writeable(cfg.perm) {
        return Err(Reject::new(
            code::NO_PERMISSION,
            format!("the topic[{topic_name}] sending message is forbidden"),
        ));
    }
    Ok(cfg)
}

/// The requested queue, or one picked for a negative id. Out of range is SYSTEM_ERROR, as
/// 4.x brokers answer it (5.x answers INVALID_PARAMETER): 4.x producers retry a send answered
/// SYSTEM_ERROR on another queue, and throw INVALID_PARAMETER at the application at once. A
/// producer routed to a queue the topic no longer has (it was shrunk, or auto-created with
/// fewer queues by another producer) then delivers on the next attempt.
fn choose_queue(
    ctx: &BrokerContext,
    h: &SendMessageRequestHeader,
    cfg: &TopicConfig,
) -> Result<i32, Reject> {
    if h.queue_id < 0 {
        return Ok(ctx.pick_queue(cfg.write_queue_nums));
    }
    let valid = cfg.read_queue_nums.max(cfg.write_queue_nums);
    if h.queue_id >= valid {
        // A retry or dead-letter topic has one queue; a client without its route yet sends
        // by the template's four (its first send to `%DLQ%<group>`, say): taken modulo the
        // queues rather than refused on every attempt until its route refreshes.
        if topic::is_retry_or_dlq(&h.topic) && cfg.write_queue_nums > 0 {
            return Ok(h.queue_id % cfg.write_queue_nums);
        }
        return Err(Reject::new(
            code::SYSTEM_ERROR,
            format!(
                "request queueId[{}] is illegal, topic:{} topicConfig.writeQueueNums:{} readQueueNums:{}",
                h.queue_id, h.topic, cfg.write_queue_nums, cfg.read_queue_nums
            ),
        ));
    }
    Ok(h.queue_id)
}

/// An IPv4-mapped IPv6 peer is written as IPv4: C++ and Go clients only read IPv4 hosts.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// `WAIT=false` means "do not wait for the flush".
fn waits(props: &Properties) -> bool {
    props.get(keys::WAIT) != Some("false")
}

/// The fields every message of this send shares.
fn base_input(h: &SendMessageRequestHeader, queue_id: i32, born_host: SocketAddr) -> MessageInput {
    MessageInput {
        topic: h.topic.clone(),
        queue_id,
        flag: h.flag,
        sys_flag: h.sys_flag,
        born_timestamp: h.born_timestamp,
        born_host,
        reconsume_times: h.reconsume_times.unwrap_or(0),
        prepared_transaction_offset: 0,
        body: bytes::Bytes::new(),
        properties: String::new(),
    }
}

/// Adds what the broker adds to every message: a UNIQ_KEY when missing, and `CLUSTER`.
pub(crate) fn stamp(ctx: &BrokerContext, props: &mut Properties) {
    if props.get(keys::UNIQ_KEY).is_none() {
        props.insert(keys::UNIQ_KEY, ctx.uniq.next_key());
    }
    props.insert(keys::CLUSTER, ctx.cfg.cluster_name.clone());
}

fn single_message(
    ctx: &BrokerContext,
    mut input: MessageInput,
    mut properties: Properties,
    body: bytes::Bytes,
) -> PendingMessage {
    stamp(ctx, &mut properties);
    input.body = body;
    let mut msg = PendingMessage { input, properties };
    // A consumer's retry resent as a plain send is stored as one (see `is_half`): left
    // PREPARED, no consume queue would take it, and the retry would vanish.
    if sysflag::transaction_type(msg.input.sys_flag) == sysflag::TRANSACTION_PREPARED
        && !msg.is_half()
    {
        msg.input.sys_flag &= !sysflag::TRANSACTION_MASK;
    }
    msg
}

/// Splits a batch body; every inner message gets the header's topic, queue, sysFlag and
/// timestamps and only its own properties.
fn batch_messages(
    ctx: &BrokerContext,
    h: &SendMessageRequestHeader,
    base: &MessageInput,
    body: &bytes::Bytes,
) -> Result<Vec<PendingMessage>, Reject> {
    if h.topic.starts_with(RETRY_PREFIX) {
        return Err(Reject::new(
            code::MESSAGE_ILLEGAL,
            "batch request does not support retry group",
        ));
    }
    if sysflag::transaction_type(h.sys_flag) == sysflag::TRANSACTION_PREPARED {
        return Err(Reject::new(
            code::MESSAGE_ILLEGAL,
            "batch message does not support transaction",
        ));
    }
    let entries = decode_batch(body, max_batch_messages(ctx.cfg.max_body), ctx.cfg.max_body)
        .map_err(|e| Reject::new(code::MESSAGE_ILLEGAL, format!("invalid batch body: {e}")))?;
    let pairs: usize = entries
        .iter()
        .map(|e| Properties::count_pairs(e.properties))
        .sum();
    if pairs > MAX_BATCH_PROPERTIES {
        return Err(Reject::new(
            code::MESSAGE_ILLEGAL,
            format!(
                "the batch's messages carry {pairs} properties, more than {MAX_BATCH_PROPERTIES}"
            ),
        ));
    }
    entries
        .iter()
        .map(|entry| {
            let mut properties = Properties::decode(entry.properties);
            if properties.get(keys::DELAY).is_some_and(|d| d.trim() != "0") {
                return Err(Reject::new(
                    code::MESSAGE_ILLEGAL,
                    "batch message does not support delay level",
                ));
            }
            if properties.get(keys::TRAN_MSG) == Some("true") {
                return Err(Reject::new(
                    code::MESSAGE_ILLEGAL,
                    "batch message does not support transaction",
                ));
            }
            stamp(ctx, &mut properties);
            let mut input = base.clone();
            input.flag = entry.flag;
            input.body = body.slice_ref(entry.body);
            Ok(PendingMessage { input, properties })
        })
        .collect()
}

pub(crate) fn run_hooks(
    ctx: &BrokerContext,
    put_ctx: &PutContext<'_>,
    mut pending: Vec<PendingMessage>,
) -> Result<Vec<PendingMessage>, Reject> {
    for hook in &ctx.hooks {
        for msg in &mut pending {
            if let HookOutcome::Reject { code, remark } = hook.before_put(put_ctx, msg) {
                tracing::debug!(hook = hook.name(), topic = %msg.input.topic, code, "put hook refused a message");
                return Err(Reject::new(code, remark));
            }
        }
    }
    Ok(pending)
}

/// Encodes properties and refuses what no hook took care of; returns what to append and
/// each message's decoded properties (for the hooks' `after_put`).
pub(crate) fn finish(
    pending: Vec<PendingMessage>,
) -> Result<(Vec<MessageInput>, Vec<Properties>), Reject> {
    pending
        .into_iter()
        .map(|mut m| {
            if is_unhandled_half(&m) {
                return Err(Reject::new(
                    code::NO_PERMISSION,
                    "the broker does not accept transactional (half) messages yet",
                ));
            }
            let len = m.properties.encoded_len();
            if len > MAX_PROPERTIES_LEN {
                return Err(Reject::new(
                    code::MESSAGE_ILLEGAL,
                    format!("message properties are {len} bytes, more than {MAX_PROPERTIES_LEN}"),
                ));
            }
            m.input.properties = m.properties.encode();
            Ok((m.input, m.properties))
        })
        .collect()
}

/// A half message no hook moved to the half topic: storing it would hide it forever.
fn is_unhandled_half(m: &PendingMessage) -> bool {
    m.is_half() && m.input.topic != topic::TRANS_HALF_TOPIC
}

/// Appends and waits for the store's acknowledgement, mapping store errors to send codes;
/// then shows each stored message to the put hooks (`PutHook::after_put`).
pub(crate) async fn append(
    ctx: &BrokerContext,
    inputs: &[MessageInput],
    properties: Vec<Properties>,
    wait: bool,
) -> Result<Vec<Appended>, Reject> {
    let result = match ctx.store.append(inputs, wait) {
        Ok(fut) => fut.await,
        Err(e) => Err(e),
    };
    let appended = result.map_err(|e| store_reject(ctx, &inputs[0], &e))?;
    let mut properties = properties.into_iter();
    for (msg, at) in inputs.iter().zip(&appended) {
        let mut stored = Stored::new(msg, *at, properties.next());
        for hook in &ctx.hooks {
            hook.after_put(&mut stored);
        }
    }
    Ok(appended)
}

/// Store refusals other than Busy: one warning per 10 s and kind, with the count of those
/// held back.
static STORE_REFUSALS_LOG: crate::log_every::LogEvery =
    crate::log_every::LogEvery::new(std::time::Duration::from_secs(10));

/// A store refusal's kind, for [`STORE_REFUSALS_LOG`].
fn refusal_kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::DiskFull(_) => "disk_full",
        StoreError::Fenced(_) => "fenced",
        StoreError::Closed => "closed",
        StoreError::InvalidMessage(_) | StoreError::Record(_) => "illegal",
        _ => "other",
    }
}

fn store_reject(ctx: &BrokerContext, msg: &MessageInput, e: &StoreError) -> Reject {
    let (code, remark) = match e {
        StoreError::Busy(_) => {
            Counters::inc(&ctx.counters.busy_rejections);
            (
                code::SYSTEM_BUSY,
                "[REJECTREQUEST]system busy, store append queue full".to_owned(),
            )
        }
        StoreError::DiskFull(_) | StoreError::Fenced(_) | StoreError::Closed => (
            code::SERVICE_NOT_AVAILABLE,
            format!("service not available now: {e}"),
        ),
        StoreError::InvalidMessage(_) | StoreError::Record(_) => (
            code::MESSAGE_ILLEGAL,
            format!("the message is illegal: {e}"),
        ),
        _ => (code::SYSTEM_ERROR, format!("store error: {e}")),
    };
    // Busy is counted (`busy_rejections`) and expected under overload; the others are logged
    // once per period, since a full disk or a fenced store refuses every send.
    if matches!(e, StoreError::Busy(_)) {
        tracing::debug!(topic = %msg.topic, queue_id = msg.queue_id, code, error = %e, "send refused by the store");
    } else if let Some(held_back) = STORE_REFUSALS_LOG.allow(refusal_kind(e)) {
        tracing::warn!(topic = %msg.topic, queue_id = msg.queue_id, code, error = %e, held_back, "send refused by the store");
    }
    Reject::new(code, remark)
}

fn success(
    ctx: &BrokerContext,
    req: &RemotingCommand,
    queue_id: i32,
    appended: &[Appended],
    uniq_keys: &[String],
) -> RemotingCommand {
    let host = ctx.store.store_host();
    let msg_id = appended
        .iter()
        .map(|a| offset_msg_id(host, a.phys_offset))
        .collect::<Vec<_>>()
        .join(",");
    let header = SendMessageResponseHeader {
        msg_id,
        queue_id,
        queue_offset: appended.first().map_or(0, |a| a.queue_offset),
        transaction_id: uniq_keys.first().cloned(),
    };
    reply::ok_ext(req, header.to_ext())
}
