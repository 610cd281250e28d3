//! Who is connected, as `mqadmin consumerConnection` and `producerConnection` ask:
//! GET_CONSUMER_CONNECTION_LIST (203) and GET_PRODUCER_CONNECTION_LIST (204).

use sluice_protocol::remoting::custom::{
    GetConsumerConnectionListRequestHeader, GetProducerConnectionListRequestHeader,
};
use sluice_protocol::{response_code as code, RemotingCommand};

use super::Reject;
use crate::broker::context::BrokerContext;
use crate::reply;

/// GET_CONSUMER_CONNECTION_LIST: `ConsumerConnection` JSON, or CONSUMER_NOT_ONLINE (206) for
/// a group without members (the tool then says so).
pub(super) fn consumer_connections(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h = GetConsumerConnectionListRequestHeader::from_ext(&req.ext_fields)
        .map_err(|e| Reject::header(&e))?;
    let Some(c) = ctx.clients.consumer_connection(&h.consumer_group) else {
        return Err(Reject::new(
            code::CONSUMER_NOT_ONLINE,
            format!("the consumer group[{}] not online", h.consumer_group),
        ));
    };
    let body =
        serde_json::to_vec(&c).map_err(|e| Reject::new(code::SYSTEM_ERROR, e.to_string()))?;
    Ok(reply::ok(req).with_body(body))
}

/// GET_PRODUCER_CONNECTION_LIST: `ProducerConnection` JSON, or SYSTEM_ERROR for a group
/// without members (as Java answers).
pub(super) fn producer_connections(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h = GetProducerConnectionListRequestHeader::from_ext(&req.ext_fields)
        .map_err(|e| Reject::header(&e))?;
    let set = ctx.clients.producer_connection(&h.producer_group);
    if set.is_empty() {
        return Err(Reject::new(
            code::SYSTEM_ERROR,
            format!("the producer group[{}] not exist", h.producer_group),
        ));
    }
    let body = serde_json::json!({ "connectionSet": set });
    Ok(reply::ok(req).with_body(body.to_string().into_bytes()))
}

/// INVOKE_BROKER_TO_RESET_OFFSET (`mqadmin resetOffsetByTime`). Sluice does not push offset
/// resets to running clients: with no member online it answers CONSUMER_NOT_ONLINE, on which
/// the tool resets through GET_CONSUME_STATS, SEARCH_OFFSET_BY_TIMESTAMP and
/// UPDATE_CONSUMER_OFFSET; with members online the reset is refused with what to do, since
/// their next commit would overwrite it.
pub(super) fn reset_offset(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h = sluice_protocol::remoting::custom::ResetOffsetRequestHeader::from_ext(&req.ext_fields)
        .map_err(|e| Reject::header(&e))?;
    if !ctx.clients.has_consumer_group(&h.group) {
        return Err(Reject::new(
            code::CONSUMER_NOT_ONLINE,
            format!(
                "Consumer not online, so can not reset offset, Group: {} Topic: {} Timestamp: {}",
                h.group, h.topic, h.timestamp
            ),
        ));
    }
    Err(Reject::new(
        code::SYSTEM_ERROR,
        format!(
            "group {} has consumers online: stop them, then reset again (Sluice does not push \
             offset resets to running clients, whose next commit would overwrite it)",
            h.group
        ),
    ))
}
