//! Consumer offsets and queue offset queries (§2.4). Every success carries `offset` (or
//! `timestamp`) as a decimal string; C++ clients crash on a missing one.

use sluice_protocol::remoting::custom::{
    GetEarliestMsgStoretimeRequestHeader, GetEarliestMsgStoretimeResponseHeader,
    GetMaxOffsetRequestHeader, GetMinOffsetRequestHeader, OffsetResponseHeader,
    QueryConsumerOffsetRequestHeader, SearchOffsetRequestHeader, UpdateConsumerOffsetRequestHeader,
};
use sluice_protocol::{response_code as code, RemotingCommand};
use sluice_store::Boundary;

use super::Reject;
use crate::broker::context::BrokerContext;
use crate::reply;

fn offset_reply(req: &RemotingCommand, offset: u64) -> RemotingCommand {
    let offset = i64::try_from(offset).unwrap_or(i64::MAX);
    reply::ok_ext(req, OffsetResponseHeader { offset }.to_ext())
}

/// QUERY_CONSUMER_OFFSET: the committed offset; with none, RocketMQ 4.x's answer: offset 0
/// when the queue still starts at 0 and that message is "in memory" (a young queue, so a new
/// group reads it from the start), otherwise QUERY_NOT_FOUND (22), which every client reads as
/// "no offset yet" and then applies its consume-from-where policy. A queue of a topic deleted
/// and created again starts at its floor (`Store::queue_start`), and is young from there.
pub(super) fn query_consumer_offset(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h = QueryConsumerOffsetRequestHeader::from_ext(&req.ext_fields)
        .map_err(|e| Reject::header(&e))?;
    let start = ctx.store.queue_start(&h.topic, h.queue_id);
    let young = |ctx: &BrokerContext| {
        ctx.store.min_offset(&h.topic, h.queue_id) == start
            && ctx.store.offset_in_memory(&h.topic, h.queue_id, start)
    };
    match ctx.offsets.query(&h.consumer_group, &h.topic, h.queue_id) {
        Some(offset) => Ok(reply::ok_ext(req, OffsetResponseHeader { offset }.to_ext())),
        None if young(ctx) => Ok(offset_reply(req, start)),
        None => Err(Reject::new(
            code::QUERY_NOT_FOUND,
            "Not found, maybe this group consumer boot first",
        )),
    }
}

/// UPDATE_CONSUMER_OFFSET: records the next offset to consume. Answered even though clients
/// mean it one-way (C++ never sets the one-way bit; the answer is dropped by them).
pub(super) fn update_consumer_offset(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h = UpdateConsumerOffsetRequestHeader::from_ext(&req.ext_fields)
        .map_err(|e| Reject::header(&e))?;
    check_offset_target(ctx, &h)?;
    ctx.offsets
        .commit(&h.consumer_group, &h.topic, h.queue_id, h.commit_offset)
        .map_err(|e| Reject::new(code::SYSTEM_ERROR, e.to_string()))?;
    Ok(reply::ok(req))
}

/// Every committed offset is kept in memory, saved whole every few seconds and loaded at each
/// start, so one is taken only for a queue that exists, of a group whose name a heartbeat
/// would take (5.x answers the same codes): invented topics, queue ids or megabyte names grew the file
/// without bound.
fn check_offset_target(
    ctx: &BrokerContext,
    h: &UpdateConsumerOffsetRequestHeader,
) -> Result<(), Reject> {
    let Some(topic) = ctx.topics.get(&h.topic) else {
        return Err(Reject::new(
            code::TOPIC_NOT_EXIST,
            format!("topic[{}] not exist", h.topic),
        ));
    };
    let queues = topic.read_queue_nums.max(topic.write_queue_nums);
    if h.queue_id < 0 || h.queue_id >= queues {
        return Err(Reject::new(
            code::INVALID_PARAMETER,
            format!(
                "queueId {} is not a queue of {} (it has {queues})",
                h.queue_id, h.topic
            ),
        ));
    }
    super::client::check_consumer_group(&h.consumer_group)
}

/// GET_MAX_OFFSET: the next offset to be written.
pub(super) fn max_offset(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h = GetMaxOffsetRequestHeader::from_ext(&req.ext_fields).map_err(|e| Reject::header(&e))?;
    Ok(offset_reply(
        req,
        ctx.store.max_offset(&h.topic, h.queue_id),
    ))
}

/// GET_MIN_OFFSET: the first offset still stored.
pub(super) fn min_offset(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h = GetMinOffsetRequestHeader::from_ext(&req.ext_fields).map_err(|e| Reject::header(&e))?;
    Ok(offset_reply(
        req,
        ctx.store.min_offset(&h.topic, h.queue_id),
    ))
}

/// SEARCH_OFFSET_BY_TIMESTAMP: binary search on store times (`boundaryType` lower by default).
pub(super) fn search_by_timestamp(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h = SearchOffsetRequestHeader::from_ext(&req.ext_fields).map_err(|e| Reject::header(&e))?;
    let boundary = match h.boundary_type.as_deref() {
        Some(b) if b.eq_ignore_ascii_case("upper") => Boundary::Upper,
        _ => Boundary::Lower,
    };
    let offset = ctx
        .store
        .offset_by_timestamp(&h.topic, h.queue_id, h.timestamp, boundary);
    Ok(offset_reply(req, offset))
}

/// GET_EARLIEST_MSG_STORETIME: store time of the queue's first message, -1 when empty (Java).
pub(super) fn earliest_store_time(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h = GetEarliestMsgStoretimeRequestHeader::from_ext(&req.ext_fields)
        .map_err(|e| Reject::header(&e))?;
    let timestamp = ctx
        .store
        .earliest_store_time(&h.topic, h.queue_id)
        .unwrap_or(-1);
    Ok(reply::ok_ext(
        req,
        GetEarliestMsgStoretimeResponseHeader { timestamp }.to_ext(),
    ))
}
