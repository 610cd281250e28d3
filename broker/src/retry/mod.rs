//! Consumer retries and dead letters (`rocketmq-protocol.md` §8), shared by
//! CONSUMER_SEND_MSG_BACK (`processor::retry`), plain sends to `%RETRY%<group>`
//! (`processor::send`) and Rust callers such as the HTTP facade's lease expiry and nacks
//! ([`crate::BrokerServices::send_back`]), so every path counts the same way.
//!
//! Decision (RocketMQ `consumerSendMsgBack`): dead letter when the request says
//! `delayLevel < 0` or the stored reconsume count is at least the maximum; otherwise a copy
//! goes to `%RETRY%<group>` queue 0 with the group's back-off. Both copies are stored through
//! the put hooks, so the schedule extension parks a delayed retry until it is due; a dead
//! letter carries no delay and is visible at once (apache/rocketmq#2724).
//!
//! `reclaim`: retry topics of groups that left, with nothing left to consume, are removed
//! after `retry_topic_reclaim_after`, so they do not hold `max_topics` room for good.

pub mod config;
pub(crate) mod copy;
pub(crate) mod reclaim;

use std::sync::Arc;

use bytes::Bytes;
use sluice_protocol::message::ids::decode_offset_msg_id;
use sluice_protocol::message::{keys, offset_msg_id};
use sluice_protocol::remoting::body::{perm, TopicConfig};
use sluice_protocol::response_code as code;
use sluice_store::{now_ms, StoreError};

pub use config::{Backoff, GroupRetryPolicy, RetryConfig, RetryDelay};
pub use copy::{
    MAX_REASON_LEN, PROP_DLQ_TIME, PROP_FAILURE_REASON, PROP_REPLAYED_FROM, PROP_REPLAY_TASK,
};

use crate::broker::context::BrokerContext;
use crate::hooks::{PendingMessage, PutContext};
use crate::processor::send as put;
use crate::stats::Counters;
use crate::topic::{self, DLQ_PREFIX, RETRY_PREFIX};
use copy::{Original, Target};

/// Candidates read from the key index when checking a client's offset.
const LOOKUP_MAX: usize = 64;

/// A failed delivery handed back: the wire's CONSUMER_SEND_MSG_BACK, or a Rust caller.
#[derive(Debug, Clone, Default)]
pub struct SendBack {
    /// Consumer group.
    pub group: String,
    /// Commit-log offset of the delivered record.
    pub phys_offset: u64,
    /// 0 = the group's back-off; -1 = dead-letter now; > 0 = that delay level.
    pub delay_level: i32,
    /// The message's id (UNIQ_KEY, or an offset message id) as the client saw it. With it the
    /// offset is checked through the key index before it is read, and only records of the
    /// origin topic or the group's retry topic are handed back; without it the offset is
    /// trusted (Rust callers that read the record themselves). CONSUMER_SEND_MSG_BACK over
    /// the wire is refused without it.
    pub origin_msg_id: Option<String>,
    /// The topic the client saw (the original topic for a retried message).
    pub origin_topic: Option<String>,
    /// The client's `maxReconsumeTimes`.
    pub max_reconsume_times: Option<i32>,
    /// Why the delivery failed (kept on the copy as `SLUICE_FAILURE_REASON`).
    pub reason: Option<String>,
}

/// What a send-back did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendBackOutcome {
    /// `%RETRY%<group>` or `%DLQ%<group>`.
    pub topic: String,
    /// True when the message went to the dead-letter queue.
    pub dead_letter: bool,
    /// Reconsume count of the copy.
    pub reconsume_times: i32,
    /// The retry's delay (`None` for a dead letter).
    pub delay: Option<RetryDelay>,
    /// Offset message id of the stored copy (of the parked copy for a delayed retry).
    pub msg_id: String,
}

/// Why a send-back failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetryError {
    /// No record starts at the offset (or it is not the message the client named).
    #[error("no message at commit-log offset {0}")]
    NoSuchMessage(u64),
    /// The group name is not a valid topic suffix.
    #[error("invalid consumer group {0:?}")]
    InvalidGroup(String),
    /// The message's topic was deleted after it was delivered (it lies below its queue's
    /// floor, see `sluice_store::Store::retire_queues`): nothing is retried. A remoting
    /// client is answered success, as for a message handed back.
    #[error("the topic {0} of this message was deleted; it is not retried")]
    Deleted(String),
    /// A put hook or the store refused the copy.
    #[error("copy refused (code {code}): {remark}")]
    Refused {
        /// Response code.
        code: i32,
        /// Remark.
        remark: String,
    },
}

impl RetryError {
    /// The response code a remoting client gets.
    pub fn response_code(&self) -> i32 {
        match self {
            Self::NoSuchMessage(_) => code::SYSTEM_ERROR,
            Self::Deleted(_) => code::SUCCESS,
            Self::InvalidGroup(_) => code::INVALID_PARAMETER,
            Self::Refused { code, .. } => *code,
        }
    }
}

/// `%DLQ%<group>`.
pub(crate) fn dlq_topic(group: &str) -> String {
    format!("{DLQ_PREFIX}{group}")
}

/// Handles one failed delivery. See the module docs.
#[tracing::instrument(skip_all, fields(group = %req.group, offset = req.phys_offset, delay_level = req.delay_level))]
pub(crate) async fn send_back(
    ctx: &Arc<BrokerContext>,
    req: &SendBack,
) -> Result<SendBackOutcome, RetryError> {
    let retry = topic::retry_topic(&req.group);
    topic::validate_name(&retry).map_err(|_| RetryError::InvalidGroup(req.group.clone()))?;
    let record = locate(ctx, req, &retry)?;
    let orig = Original::decode(&record).ok_or(RetryError::NoSuchMessage(req.phys_offset))?;
    // Delivered before its topic was deleted: a retry would bring it back.
    if ctx
        .store
        .is_retired(&orig.topic, orig.queue_id, orig.queue_offset)
    {
        return Err(RetryError::Deleted(orig.topic));
    }
    let policy = ctx.cfg.retry.policy(&req.group);
    let message_max = orig
        .properties
        .get(keys::MAX_RECONSUME_TIMES)
        .and_then(|v| v.trim().parse().ok());
    let max = policy.effective_max(message_max, req.max_reconsume_times);
    let target = if req.delay_level < 0 || orig.reconsume_times >= max {
        Target::DeadLetter
    } else if req.delay_level > 0 {
        Target::Retry(RetryDelay::Level(req.delay_level))
    } else {
        Target::Retry(policy.backoff.delay_for(orig.reconsume_times))
    };
    let topic = match target {
        Target::DeadLetter => dlq_topic(&req.group),
        Target::Retry(_) => retry,
    };
    let cfg = ensure_one_queue_topic(ctx, &topic)?;
    // As 4.x brokers answer a send-back to a retry topic an operator made read-only: the
    // restriction holds for copies as it does for producers' sends.
    if !perm::is_writeable(cfg.perm) {
        return Err(RetryError::Refused {
            code: code::NO_PERMISSION,
            remark: format!("the topic[{topic}] sending message is forbidden"),
        });
    }
    let origin_id = offset_msg_id(ctx.store.store_host(), orig.phys_offset);
    let msg = copy::failure_copy(
        &orig,
        &topic,
        &target,
        &origin_id,
        req.reason.as_deref(),
        now_ms(),
    );
    let reconsume_times = msg.input.reconsume_times;
    let msg_id = store_through_hooks(ctx, &req.group, msg, req.max_reconsume_times).await?;
    let dead_letter = target == Target::DeadLetter;
    Counters::inc(if dead_letter {
        &ctx.counters.dead_lettered
    } else {
        &ctx.counters.retries
    });
    tracing::debug!(topic = %topic, reconsume_times, dead_letter, "failed message handed back");
    Ok(SendBackOutcome {
        topic,
        dead_letter,
        reconsume_times,
        delay: match target {
            Target::Retry(d) => Some(d),
            Target::DeadLetter => None,
        },
        msg_id,
    })
}

/// Reads the record at the request's offset. Without `origin_msg_id` (in-process callers only:
/// the wire requires it) the offset is trusted. With it, see [`locate_named`].
fn locate(ctx: &BrokerContext, req: &SendBack, retry: &str) -> Result<Bytes, RetryError> {
    let not_found = || RetryError::NoSuchMessage(req.phys_offset);
    let Some(id) = req.origin_msg_id.as_deref().filter(|s| !s.is_empty()) else {
        return ctx.store.read_record(req.phys_offset).map_err(|e| {
            tracing::debug!(error = %e, "send-back offset unreadable");
            not_found()
        });
    };
    locate_named(ctx, req, id, retry).ok_or_else(not_found)
}

/// The record a client named by `id` at the request's offset, only from a topic it may hand
/// back from: the origin topic it named (unless that is one consumers never read, such as
/// half or not-yet-due scheduled messages) or the group's retry topic. Looked up as UNIQ_KEY
/// through the key index (so a bogus offset is never read), or as an offset message id
/// naming the same offset, whose record must then be that message and in one of those topics.
fn locate_named(ctx: &BrokerContext, req: &SendBack, id: &str, retry: &str) -> Option<Bytes> {
    let topics: Vec<&str> = req
        .origin_topic
        .iter()
        .map(String::as_str)
        .filter(|t| !topic::is_not_consumable(t))
        .chain(std::iter::once(retry))
        .collect();
    for t in &topics {
        for rec in ctx.store.query_by_uniq_key(t, id, LOOKUP_MAX) {
            if Original::decode(&rec).is_some_and(|o| o.phys_offset == req.phys_offset) {
                return Some(rec);
            }
        }
    }
    let (_, phys) = decode_offset_msg_id(id).ok()?;
    if phys != req.phys_offset {
        return None;
    }
    // The offset is the client's: a miss there is not store damage.
    let rec = ctx.store.read_record_untrusted(phys).ok()?;
    let orig = Original::decode(&rec)?;
    (orig.phys_offset == phys && topics.contains(&orig.topic.as_str())).then_some(rec)
}

/// Creates `%RETRY%`/`%DLQ%` topics on demand: one read-write queue (RocketMQ ≥ 4.9.2 perm).
/// Past `max_topics` a new retry topic is refused, and so is the dead-letter topic of a group
/// without a retry topic (see `topic::TopicLimit`).
pub(crate) fn ensure_one_queue_topic(
    ctx: &BrokerContext,
    name: &str,
) -> Result<TopicConfig, RetryError> {
    ctx.topics
        .get_or_create_retry(name)
        .map_err(|limit| RetryError::Refused {
            code: code::SYSTEM_ERROR,
            remark: format!("topic {name} not created: {limit}"),
        })
}

/// Runs the put hooks (the schedule extension parks a delayed retry), then appends.
async fn store_through_hooks(
    ctx: &BrokerContext,
    group: &str,
    msg: PendingMessage,
    max_reconsume_times: Option<i32>,
) -> Result<String, RetryError> {
    let put_ctx = PutContext {
        producer_group: group,
        remote: ctx.advertised,
        batch: false,
        max_reconsume_times,
    };
    let refused = |r: crate::processor::Reject| RetryError::Refused {
        code: r.code,
        remark: r.remark,
    };
    let pending = put::run_hooks(ctx, &put_ctx, vec![msg]).map_err(refused)?;
    let (inputs, properties) = put::finish(pending).map_err(refused)?;
    let appended = put::append(ctx, &inputs, properties, true)
        .await
        .map_err(refused)?;
    Counters::add(&ctx.counters.messages_stored, appended.len() as u64);
    Ok(appended
        .first()
        .map(|a| offset_msg_id(ctx.store.store_host(), a.phys_offset))
        .unwrap_or_default())
}

/// A plain send to `%RETRY%<group>` (a client's fallback, or an orderly consumer past its
/// maximum) becomes a dead letter when `reconsumeTimes > max` or, as RocketMQ 5.1.1+, when the
/// group holds unexpired orderly locks. Returns true when rewritten (the caller counts it in
/// `dead_lettered` once it is stored: the hooks or the store may still refuse it).
pub(crate) fn route_retry_send(
    ctx: &BrokerContext,
    header_max: Option<i32>,
    msg: &mut PendingMessage,
) -> bool {
    let Some(group) = msg
        .input
        .topic
        .strip_prefix(RETRY_PREFIX)
        .map(str::to_owned)
    else {
        return false;
    };
    let policy = ctx.cfg.retry.policy(&group);
    let message_max = msg
        .properties
        .get(keys::MAX_RECONSUME_TIMES)
        .and_then(|v| v.trim().parse().ok());
    let max = policy.effective_max(message_max, header_max);
    let locked = ctx
        .locks
        .group_holds_locks(&group, std::time::Instant::now());
    if msg.input.reconsume_times <= max && !locked {
        return false;
    }
    let dlq = dlq_topic(&group);
    // The group's retry topic exists (this send is to it), so its dead-letter topic is not
    // refused for the topic limit; a bad name can still fail.
    if topic::validate_name(&dlq).is_err() || ensure_one_queue_topic(ctx, &dlq).is_err() {
        return false;
    }
    copy::to_dead_letter(msg, &dlq, now_ms());
    tracing::debug!(group = %group, reconsume_times = msg.input.reconsume_times, max, locked, "retry send dead-lettered");
    true
}

impl From<&StoreError> for RetryError {
    fn from(e: &StoreError) -> Self {
        Self::Refused {
            code: code::SYSTEM_ERROR,
            remark: e.to_string(),
        }
    }
}
