//! Reading dead letters: decoding, filters, paging and sizes.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_protocol::message::{keys, offset_msg_id};
use sluice_store::{GetStatus, Store};

use super::DlqError;
use crate::broker::context::BrokerContext;
use crate::retry::copy::Original;
use crate::retry::{dlq_topic, PROP_FAILURE_REASON};
use crate::topic::DLQ_PREFIX;

/// Most queue entries one [`DlqService::list`](super::DlqService::list) call looks at, so a
/// selective filter over a long DLQ cannot hold a thread.
pub(crate) const MAX_SCAN: u64 = 10_000;
/// Largest page.
pub const MAX_PAGE: usize = 1_000;
/// Body bytes past which a page ends early (with `next_offset` where it stopped): a page of
/// 1 000 letters of 4 MiB held 4 GiB, then its JSON. A page always has at least one message.
pub const MAX_PAGE_BYTES: usize = 16 << 20;
/// Entries read from the store per step.
const BATCH: usize = 64;

/// Which dead letters a listing or a replay takes. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DlqFilter {
    /// Original topic (`RETRY_TOPIC`).
    pub original_topic: Option<String>,
    /// One of the message's KEYS.
    pub key: Option<String>,
    /// The message's tag.
    pub tag: Option<String>,
    /// Dead-lettered at or after this time (epoch ms).
    pub since_ms: Option<i64>,
    /// Dead-lettered at or before this time (epoch ms).
    pub until_ms: Option<i64>,
}

impl DlqFilter {
    /// True when `m` passes every set field.
    pub fn matches(&self, m: &DlqMessage) -> bool {
        self.original_topic
            .as_deref()
            .is_none_or(|t| m.original_topic.as_deref() == Some(t))
            && self
                .key
                .as_deref()
                .is_none_or(|k| m.keys.iter().any(|mk| mk == k))
            && self
                .tag
                .as_deref()
                .is_none_or(|t| m.tag.as_deref() == Some(t))
            && self.since_ms.is_none_or(|s| m.dead_lettered_ms >= s)
            && self.until_ms.is_none_or(|u| m.dead_lettered_ms <= u)
    }
}

/// A page request.
#[derive(Debug, Clone, Default)]
pub struct DlqQuery {
    /// Consumer group.
    pub group: String,
    /// Which messages.
    pub filter: DlqFilter,
    /// DLQ queue offset to start at (a previous page's `next_offset`).
    pub start_offset: u64,
    /// Most messages (at most [`MAX_PAGE`]; 0 means 100).
    pub limit: usize,
    /// Also list messages already replayed.
    pub include_replayed: bool,
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqMessage {
    /// Offset in `%DLQ%<group>` queue 0.
    pub queue_offset: u64,
    /// Offset message id of the DLQ record.
    pub msg_id: String,
    /// The client message id (`UNIQ_KEY`).
    pub uniq_key: Option<String>,
    /// First message id (`ORIGIN_MESSAGE_ID`).
    pub origin_message_id: Option<String>,
    /// The topic it was consumed from (`RETRY_TOPIC`).
    pub original_topic: Option<String>,
    /// Business keys.
    pub keys: Vec<String>,
    /// Tag.
    pub tag: Option<String>,
    /// Deliveries that failed (the record's reconsume count).
    pub delivery_count: i32,
    /// Last failure reason, when the client gave one.
    pub failure_reason: Option<String>,
    /// When it was dead-lettered (store time, epoch ms).
    pub dead_lettered_ms: i64,
    /// The producer's timestamp.
    pub born_timestamp: i64,
    /// True when the body is compressed (sysFlag bit 0); the body is as stored.
    pub compressed: bool,
    /// The body as stored.
    pub body: Bytes,
    /// Every property.
    pub properties: BTreeMap<String, String>,
    /// True when a replay task already wrote it back.
    pub replayed: bool,
}

impl DlqMessage {
    pub(crate) fn from_original(o: &Original, queue_offset: u64, store: &Store) -> Self {
        let p = &o.properties;
        let get = |k: &str| p.get(k).map(str::to_owned);
        Self {
            queue_offset,
            msg_id: offset_msg_id(store.store_host(), o.phys_offset),
            uniq_key: get(keys::UNIQ_KEY),
            origin_message_id: get(keys::ORIGIN_MESSAGE_ID),
            original_topic: get(keys::RETRY_TOPIC),
            keys: p
                .get(keys::KEYS)
                .map(|k| {
                    k.split(' ')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            tag: get(keys::TAGS),
            delivery_count: o.reconsume_times,
            failure_reason: get(PROP_FAILURE_REASON),
            dead_lettered_ms: o.store_timestamp,
            born_timestamp: o.born_timestamp,
            compressed: o.sys_flag & sluice_protocol::message::record::sysflag::COMPRESSED != 0,
            body: o.body.clone(),
            properties: p
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            replayed: false,
        }
    }
}

/// A page of dead letters.
#[derive(Debug, Clone, Default)]
pub struct DlqPage {
    /// Matching messages, oldest first.
    pub messages: Vec<DlqMessage>,
    /// Where the next page starts.
    pub next_offset: u64,
    /// True when the end of the DLQ was reached.
    pub end: bool,
}

/// Sizes of one group's DLQ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DlqGroupStats {
    /// Consumer group.
    pub group: String,
    /// Messages in the DLQ (retained).
    pub total: u64,
    /// Of these, already replayed.
    pub replayed: u64,
    /// Of these, still waiting.
    pub waiting: u64,
}

/// One step of a DLQ scan: records with their queue offsets, where to go on, and whether
/// the end was reached.
pub(crate) struct Batch {
    pub(crate) records: Vec<(u64, Bytes)>,
    pub(crate) next: u64,
    pub(crate) end: bool,
}

/// Reads the next records of `topic` queue 0 from `offset`, skipping holes and retention.
pub(crate) fn scan(store: &Store, topic: &str, offset: u64) -> Batch {
    let r = store.get_messages(topic, 0, offset, BATCH, 4 << 20, None);
    match r.status {
        GetStatus::Found => {
            let next = r.next_offset.max(offset + 1);
            Batch {
                records: r
                    .messages
                    .into_iter()
                    .map(|m| (m.queue_offset, m.bytes))
                    .collect(),
                next,
                end: false,
            }
        }
        GetStatus::OffsetTooSmall | GetStatus::NoMatchedMessage if r.next_offset > offset => {
            Batch {
                records: Vec::new(),
                next: r.next_offset,
                end: false,
            }
        }
        _ => Batch {
            records: Vec::new(),
            next: offset.max(r.next_offset.min(r.max_offset)),
            end: true,
        },
    }
}

pub(crate) fn list(ctx: &BrokerContext, q: &DlqQuery) -> Result<DlqPage, DlqError> {
    let topic = dlq_topic(&q.group);
    crate::topic::validate_name(&topic)
        .map_err(|_| DlqError::Invalid(format!("invalid group {:?}", q.group)))?;
    let limit = match q.limit {
        0 => 100,
        n => n.min(MAX_PAGE),
    };
    let mut page = DlqPage {
        next_offset: q.start_offset,
        ..DlqPage::default()
    };
    // A group that never dead-lettered anything has no DLQ topic: nothing to list, and no
    // ledger is loaded (kept for the broker's life) for a name any caller may invent.
    if ctx.topics.get(&topic).is_none() {
        page.end = true;
        return Ok(page);
    }
    let ledger = ctx.dlq.ledger(&q.group)?;
    let mut offset = q.start_offset;
    let mut bytes = 0usize;
    while page.messages.len() < limit && offset - q.start_offset < MAX_SCAN {
        let batch = scan(&ctx.store, &topic, offset);
        for (qo, rec) in &batch.records {
            if page.messages.len() >= limit || bytes >= MAX_PAGE_BYTES {
                page.next_offset = *qo;
                return Ok(page);
            }
            offset = qo + 1;
            let Some(o) = Original::decode(rec) else {
                continue;
            };
            let mut m = DlqMessage::from_original(&o, *qo, &ctx.store);
            m.replayed = ledger.contains(*qo);
            if (q.include_replayed || !m.replayed) && q.filter.matches(&m) {
                bytes += m.body.len();
                page.messages.push(m);
            }
        }
        offset = offset.max(batch.next);
        if batch.end {
            page.end = true;
            break;
        }
    }
    page.next_offset = offset;
    Ok(page)
}

pub(crate) fn stats(ctx: &BrokerContext) -> Vec<DlqGroupStats> {
    let mut out: Vec<DlqGroupStats> = ctx
        .store
        .queues()
        .into_iter()
        .filter_map(|(topic, q)| {
            let group = topic.strip_prefix(DLQ_PREFIX)?.to_owned();
            (q == 0).then(|| group_stats(ctx, group))
        })
        .collect();
    out.sort_by(|a, b| a.group.cmp(&b.group));
    out
}

/// The sizes of one group's DLQ (all zero when it has none), without walking the others.
pub(crate) fn group_stats(ctx: &BrokerContext, group: String) -> DlqGroupStats {
    let topic = format!("{DLQ_PREFIX}{group}");
    let (min, max) = (
        ctx.store.min_offset(&topic, 0),
        ctx.store.max_offset(&topic, 0),
    );
    let total = max.saturating_sub(min);
    let replayed = if total == 0 {
        0
    } else {
        ctx.dlq
            .ledger(&group)
            .map(|l| l.count_in(min, max))
            .unwrap_or(0)
    };
    DlqGroupStats {
        group,
        total,
        replayed,
        waiting: total.saturating_sub(replayed),
    }
}
