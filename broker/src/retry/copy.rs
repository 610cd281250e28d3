//! Building the copy a retry, a dead-letter or a replay stores, from a stored record.
//!
//! The copy keeps body, flag, born data, tags, keys and UNIQ_KEY (so a consumer's message id
//! is stable across deliveries) and drops what would make the put path treat it as something
//! else: delay and timer properties of an earlier park (a record released by the schedule
//! extension still carries `DELAY`, `REAL_TOPIC`, `TIMER_OUT_MS`), and transaction marks.

use std::net::SocketAddr;

use bytes::Bytes;
use sluice_protocol::message::keys;
use sluice_protocol::message::record::sysflag;
use sluice_protocol::{Properties, RecordView};
use sluice_store::MessageInput;

use super::config::RetryDelay;
use crate::hooks::PendingMessage;

/// Last failure reason given by the client (HTTP nack, Rust API); at most
/// [`MAX_REASON_LEN`] bytes.
pub const PROP_FAILURE_REASON: &str = "SLUICE_FAILURE_REASON";
/// Store time (epoch ms) when the message was dead-lettered.
pub const PROP_DLQ_TIME: &str = "SLUICE_DLQ_TIME";
/// On a replayed message: the offset message id of the DLQ record it came from.
pub const PROP_REPLAYED_FROM: &str = "SLUICE_REPLAYED_FROM";
/// On a replayed message: the replay task that wrote it.
pub const PROP_REPLAY_TASK: &str = "SLUICE_REPLAY_TASK";
/// Longest failure reason kept.
pub const MAX_REASON_LEN: usize = 256;

/// Properties of an earlier park or transaction that a copy must not carry.
const STRIPPED: [&str; 14] = [
    keys::DELAY,
    keys::TIMER_DELAY_SEC,
    keys::TIMER_DELAY_MS,
    keys::TIMER_DELIVER_MS,
    keys::REAL_TOPIC,
    keys::REAL_QID,
    keys::TRAN_MSG,
    keys::MIN_OFFSET,
    keys::MAX_OFFSET,
    "TIMER_OUT_MS",
    "SLUICE_DUE_MS",
    "SLUICE_TIMER_OFFSET",
    "SLUICE_TIMER_PREV",
    "SLUICE_TIMER_REPLACES",
];

/// A stored record, decoded enough to copy it.
#[derive(Debug, Clone)]
pub(crate) struct Original {
    pub(crate) topic: String,
    pub(crate) queue_id: i32,
    pub(crate) queue_offset: i64,
    pub(crate) phys_offset: u64,
    pub(crate) flag: i32,
    pub(crate) sys_flag: i32,
    pub(crate) born_timestamp: i64,
    pub(crate) born_host: SocketAddr,
    pub(crate) store_timestamp: i64,
    pub(crate) reconsume_times: i32,
    pub(crate) body: Bytes,
    pub(crate) properties: Properties,
}

impl Original {
    /// Decodes `record` (already verified by the store); `None` if it does not parse.
    pub(crate) fn decode(record: &Bytes) -> Option<Self> {
        let view = RecordView::parse(record, usize::MAX).ok()?;
        Some(Self {
            topic: view.topic.to_owned(),
            queue_id: view.header.queue_id,
            queue_offset: view.header.queue_offset,
            phys_offset: u64::try_from(view.header.physical_offset).ok()?,
            flag: view.header.flag,
            sys_flag: view.header.sys_flag,
            born_timestamp: view.header.born_timestamp,
            born_host: view.header.born_host,
            store_timestamp: view.header.store_timestamp,
            reconsume_times: view.header.reconsume_times,
            body: record.slice_ref(view.body),
            properties: Properties::decode(view.properties),
        })
    }

    /// The properties a copy starts from.
    fn copied_properties(&self) -> Properties {
        let mut p = self.properties.clone();
        for k in STRIPPED {
            p.remove(k);
        }
        p
    }

    /// A message input with this record's body and born data, aimed at `topic`/`queue_id`.
    fn input(&self, topic: &str, queue_id: i32, reconsume_times: i32) -> MessageInput {
        MessageInput {
            topic: topic.to_owned(),
            queue_id,
            flag: self.flag,
            // Compression and MULTI_TAGS stay; transaction and host bits do not.
            sys_flag: self.sys_flag & (sysflag::COMPRESSED | sysflag::MULTI_TAGS),
            born_timestamp: self.born_timestamp,
            born_host: self.born_host,
            reconsume_times,
            prepared_transaction_offset: 0,
            body: self.body.clone(),
            properties: String::new(),
        }
    }
}

/// Where a failed message goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `%RETRY%<group>` with this delay.
    Retry(RetryDelay),
    /// `%DLQ%<group>`, at once.
    DeadLetter,
}

/// The retry or dead-letter copy of `orig` (RocketMQ `consumerSendMsgBack`): reconsume count
/// plus one, `RETRY_TOPIC` set if absent (or if `orig` is not itself a retry copy), `ORIGIN_MESSAGE_ID` kept or set to `origin_id`,
/// `RECONSUME_TIME`, and the delay; a dead letter gets `DELAY=-1` and no timer, so no hook
/// parks it (apache/rocketmq#2724).
pub(crate) fn failure_copy(
    orig: &Original,
    topic: &str,
    target: &Target,
    origin_id: &str,
    reason: Option<&str>,
    now_ms: i64,
) -> PendingMessage {
    let times = orig.reconsume_times.saturating_add(1);
    let mut p = orig.copied_properties();
    // RETRY_TOPIC means something only on a record of a retry topic (as RocketMQ clients read
    // it): a message of a topic that carries one (forwarded with its properties) is retried
    // for the topic it was consumed from.
    if p.get(keys::RETRY_TOPIC).is_none() || !orig.topic.starts_with(crate::topic::RETRY_PREFIX) {
        p.insert(keys::RETRY_TOPIC, orig.topic.clone());
    }
    if p.get(keys::ORIGIN_MESSAGE_ID).is_none() {
        p.insert(keys::ORIGIN_MESSAGE_ID, origin_id);
    }
    p.insert(keys::RECONSUME_TIME, times.to_string());
    if let Some(r) = reason.map(clean_reason).filter(|r| !r.is_empty()) {
        p.insert(PROP_FAILURE_REASON, r);
    }
    match target {
        Target::Retry(RetryDelay::Level(l)) => p.insert(keys::DELAY, l.to_string()),
        Target::Retry(RetryDelay::Millis(ms)) if *ms > 0 => {
            p.insert(keys::TIMER_DELAY_MS, ms.to_string());
        }
        Target::Retry(RetryDelay::Millis(_)) => {}
        Target::DeadLetter => {
            p.insert(keys::DELAY, "-1");
            p.insert(PROP_DLQ_TIME, now_ms.to_string());
        }
    }
    PendingMessage {
        input: orig.input(topic, 0, times),
        properties: p,
    }
}

/// The replay copy of a dead letter: fresh retry budget (reconsume count 0, no retry
/// bookkeeping), provenance in [`PROP_REPLAYED_FROM`] and [`PROP_REPLAY_TASK`]. Copied into a
/// group's retry topic, `retry_of` names the original topic (`RETRY_TOPIC`), which consumers
/// deliver it as.
pub(crate) fn replay_copy(
    orig: &Original,
    topic: &str,
    queue_id: i32,
    retry_of: Option<&str>,
    dlq_msg_id: &str,
    task_id: &str,
) -> MessageInput {
    let mut p = orig.copied_properties();
    for k in [
        keys::RETRY_TOPIC,
        keys::RECONSUME_TIME,
        keys::MAX_RECONSUME_TIMES,
        PROP_DLQ_TIME,
    ] {
        p.remove(k);
    }
    if let Some(origin) = retry_of {
        p.insert(keys::RETRY_TOPIC, origin);
    }
    p.insert(PROP_REPLAYED_FROM, dlq_msg_id);
    p.insert(PROP_REPLAY_TASK, task_id);
    let mut input = orig.input(topic, queue_id, 0);
    input.properties = p.encode();
    input
}

/// Rewrites a plain send to `%RETRY%<group>` into a dead letter (RocketMQ
/// `handleRetryAndDLQ`): queue 0 of `dlq_topic`, `DELAY=-1`, no timer.
pub(crate) fn to_dead_letter(msg: &mut PendingMessage, dlq_topic: &str, now_ms: i64) {
    for k in STRIPPED {
        msg.properties.remove(k);
    }
    msg.properties.insert(keys::DELAY, "-1");
    msg.properties.insert(PROP_DLQ_TIME, now_ms.to_string());
    msg.input.topic = dlq_topic.to_owned();
    msg.input.queue_id = 0;
}

/// A reason safe to store as a property value: no separators, bounded.
fn clean_reason(r: &str) -> String {
    let mut out: String = r
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_REASON_LEN {
        let mut cut = MAX_REASON_LEN;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_lose_separators_and_are_bounded() {
        assert_eq!(clean_reason("a\u{1}b\u{2}c"), "a b c");
        assert_eq!(clean_reason(&"é".repeat(300)).len(), 256);
    }
}
