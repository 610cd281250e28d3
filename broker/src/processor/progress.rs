//! What `mqadmin` asks to show progress: GET_CONSUME_STATS (208, `consumerProgress`),
//! QUERY_TOPIC_CONSUME_BY_WHO (300, the groups of a topic) and GET_TOPIC_STATS_INFO (202,
//! `topicStatus`).
//!
//! ConsumeStats and TopicStatsTable are `Map<MessageQueue, ...>`, which Java's fastjson
//! writes (and the admin tool reads) with JSON objects as keys: not JSON, so written here by
//! hand.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use sluice_protocol::remoting::custom::{
    GetConsumeStatsRequestHeader, GetTopicStatsInfoRequestHeader,
    QueryTopicConsumeByWhoRequestHeader,
};
use sluice_protocol::{response_code as code, RemotingCommand};

use super::Reject;
use crate::broker::context::BrokerContext;
use crate::reply;

/// One queue's line of a ConsumeStats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueProgress {
    pub(crate) topic: String,
    pub(crate) queue_id: i32,
    /// The queue's end (next offset to be written).
    pub(crate) broker_offset: u64,
    /// The group's committed offset (0 when none).
    pub(crate) consumer_offset: u64,
    /// Store time of the last message the group consumed (0 when none).
    pub(crate) last_timestamp: i64,
}

/// GET_CONSUME_STATS: the group's committed offset against each queue's end, for the topic
/// named or every topic the group has offsets in (see `group_topics`).
pub(super) fn consume_stats(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h =
        GetConsumeStatsRequestHeader::from_ext(&req.ext_fields).map_err(|e| Reject::header(&e))?;
    let topics: BTreeSet<String> = match h.topic.filter(|t| !t.is_empty()) {
        Some(t) => BTreeSet::from([t]),
        None => group_topics(ctx, &h.consumer_group),
    };
    let mut rows = Vec::new();
    for topic in &topics {
        let Some(cfg) = ctx.topics.get(topic) else {
            continue;
        };
        for queue_id in 0..cfg.read_queue_nums {
            rows.push(queue_progress(ctx, &h.consumer_group, topic, queue_id));
        }
    }
    let body = encode_consume_stats(&ctx.cfg.broker_name, &rows);
    Ok(reply::ok(req).with_body(body.into_bytes()))
}

/// QUERY_TOPIC_CONSUME_BY_WHO: `GroupList` of the groups subscribing to the topic now or
/// holding offsets in it.
pub(super) fn consumed_by(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h = QueryTopicConsumeByWhoRequestHeader::from_ext(&req.ext_fields)
        .map_err(|e| Reject::header(&e))?;
    let mut groups: BTreeSet<String> = ctx.clients.groups_subscribing(&h.topic);
    groups.extend(ctx.offsets.groups_of(&h.topic));
    let body = serde_json::json!({ "groupList": groups });
    Ok(reply::ok(req).with_body(body.to_string().into_bytes()))
}

/// GET_TOPIC_STATS_INFO: each write queue's min and max offset and the store time of its
/// newest message, or TOPIC_NOT_EXIST.
pub(super) fn topic_stats(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h = GetTopicStatsInfoRequestHeader::from_ext(&req.ext_fields)
        .map_err(|e| Reject::header(&e))?;
    let Some(cfg) = ctx.topics.get(&h.topic) else {
        return Err(Reject::new(
            code::TOPIC_NOT_EXIST,
            format!("topic[{}] not exist", h.topic),
        ));
    };
    let entries = (0..cfg.write_queue_nums).map(|queue_id| {
        let (min, max) = (
            ctx.store.min_offset(&h.topic, queue_id),
            ctx.store.max_offset(&h.topic, queue_id),
        );
        let last = max
            .checked_sub(1)
            .and_then(|o| ctx.store.store_time(&h.topic, queue_id, o))
            .unwrap_or(0);
        let value =
            format!(r#"{{"lastUpdateTimestamp":{last},"maxOffset":{max},"minOffset":{min}}}"#);
        (h.topic.as_str(), queue_id, value)
    });
    let out = format!(
        r#"{{"offsetTable":{}}}"#,
        mq_map(&ctx.cfg.broker_name, entries)
    );
    Ok(reply::ok(req).with_body(out.into_bytes()))
}

/// The topics a group has committed offsets in, as Java's broker reports them: without those
/// an online group no longer subscribes to (a dropped topic's backlog is not the group's lag).
fn group_topics(ctx: &BrokerContext, group: &str) -> BTreeSet<String> {
    let online = ctx.clients.consumer_group_info(group);
    ctx.offsets
        .topics_of(group)
        .into_iter()
        .filter(|t| online.as_ref().is_none_or(|g| g.topics.contains(t)))
        .collect()
}

fn queue_progress(ctx: &BrokerContext, group: &str, topic: &str, queue_id: i32) -> QueueProgress {
    let broker_offset = ctx.store.max_offset(topic, queue_id);
    let consumer_offset = ctx
        .offsets
        .query(group, topic, queue_id)
        .and_then(|o| u64::try_from(o).ok())
        .unwrap_or(0);
    let last_timestamp = consumer_offset
        .checked_sub(1)
        .and_then(|last| ctx.store.store_time(topic, queue_id, last))
        .unwrap_or(0);
    QueueProgress {
        topic: topic.to_owned(),
        queue_id,
        broker_offset,
        consumer_offset,
        last_timestamp,
    }
}

/// ConsumeStats as fastjson writes it: `{"consumeTps":0.0,"offsetTable":{{"brokerName":..,
/// "queueId":..,"topic":..}:{"brokerOffset":..,"consumerOffset":..,"lastTimestamp":..},..}}`
/// (properties in alphabetical order, as fastjson sorts them).
pub(crate) fn encode_consume_stats(broker_name: &str, rows: &[QueueProgress]) -> String {
    let entries = rows.iter().map(|r| {
        let value = format!(
            r#"{{"brokerOffset":{},"consumerOffset":{},"lastTimestamp":{}}}"#,
            r.broker_offset, r.consumer_offset, r.last_timestamp
        );
        (r.topic.as_str(), r.queue_id, value)
    });
    format!(
        r#"{{"consumeTps":0.0,"offsetTable":{}}}"#,
        mq_map(broker_name, entries)
    )
}

/// A `Map<MessageQueue, _>` as fastjson writes it: each key the queue as an object
/// (`{"brokerName":..,"queueId":..,"topic":..}`), each value the JSON given with it.
fn mq_map<'a>(broker_name: &str, entries: impl Iterator<Item = (&'a str, i32, String)>) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let broker = quote(broker_name);
    let mut out = String::from("{");
    for (i, (topic, queue_id, value)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"brokerName":{broker},"queueId":{queue_id},"topic":{}}}:{value}"#,
            quote(topic)
        );
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_stats_are_written_with_message_queue_objects_as_keys() {
        let rows = [
            QueueProgress {
                topic: "Orders".into(),
                queue_id: 0,
                broker_offset: 10,
                consumer_offset: 7,
                last_timestamp: 1_700_000_000_000,
            },
            QueueProgress {
                topic: "%RETRY%g".into(),
                queue_id: 0,
                broker_offset: 0,
                consumer_offset: 0,
                last_timestamp: 0,
            },
        ];
        assert_eq!(
            encode_consume_stats("broker-a", &rows),
            concat!(
                r#"{"consumeTps":0.0,"offsetTable":{"#,
                r#"{"brokerName":"broker-a","queueId":0,"topic":"Orders"}:"#,
                r#"{"brokerOffset":10,"consumerOffset":7,"lastTimestamp":1700000000000},"#,
                r#"{"brokerName":"broker-a","queueId":0,"topic":"%RETRY%g"}:"#,
                r#"{"brokerOffset":0,"consumerOffset":0,"lastTimestamp":0}}}"#
            )
        );
        assert_eq!(
            encode_consume_stats("b", &[]),
            r#"{"consumeTps":0.0,"offsetTable":{}}"#
        );
    }
}
