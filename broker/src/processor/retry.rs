//! CONSUMER_SEND_MSG_BACK (36): `rocketmq-protocol.md` §2.7 and §8.2. The decision and the
//! copy are in `crate::retry`, shared with the Rust API.
//!
//! Besides RocketMQ's header, an optional ext field `failureReason` (a Sluice extension that
//! RocketMQ clients never send) is kept on the copy as `SLUICE_FAILURE_REASON`.

use std::sync::Arc;

use sluice_protocol::message::offset_msg_id;
use sluice_protocol::remoting::custom::ConsumerSendMsgBackRequestHeader;
use sluice_protocol::RemotingCommand;

use super::Reject;
use crate::broker::context::BrokerContext;
use crate::reply;
use crate::retry::copy::Original;
use crate::retry::{self, SendBack};
use crate::topic;

/// Ext field carrying a failure reason.
pub(crate) const FAILURE_REASON_FIELD: &str = "failureReason";

pub(super) async fn send_back(
    ctx: &Arc<BrokerContext>,
    peer: std::net::SocketAddr,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h = ConsumerSendMsgBackRequestHeader::from_ext(&req.ext_fields)
        .map_err(|e| Reject::header(&e))?;
    let phys_offset = u64::try_from(h.offset).map_err(|_| {
        Reject::new(
            sluice_protocol::response_code::SYSTEM_ERROR,
            format!("no message at commit-log offset {}", h.offset),
        )
    })?;
    let (origin_msg_id, origin_topic) = match h.origin_msg_id.filter(|id| !id.is_empty()) {
        Some(id) => (id, h.origin_topic.filter(|t| !t.is_empty())),
        None => named_by_offset(ctx, peer, req, &h.group, phys_offset)?,
    };
    let back = SendBack {
        group: h.group.clone(),
        phys_offset,
        delay_level: h.delay_level,
        origin_msg_id: Some(origin_msg_id),
        origin_topic,
        max_reconsume_times: h.max_reconsume_times,
        reason: req
            .ext_fields
            .get_str(FAILURE_REASON_FIELD)
            .map(str::to_owned),
    };
    match retry::send_back(ctx, &back).await {
        Ok(_) => Ok(reply::ok(req)),
        Err(e @ retry::RetryError::Deleted(_)) => {
            tracing::debug!(group = %back.group, offset = phys_offset, error = %e, "send-back of a deleted topic's message dropped");
            Ok(reply::ok(req))
        }
        Err(e) => {
            tracing::debug!(group = %back.group, offset = phys_offset, error = %e, "send-back refused");
            Err(Reject::new(e.response_code(), e.to_string()))
        }
    }
}

/// For a request without `originMsgId` (rocketmq-client-cpp before 2.1 sends only `group`,
/// `delayLevel` and `offset`): the record at the offset names itself, by its offset message
/// id and topic, but only when it is a whole record starting there, of the group's retry topic
/// or of a topic the group's connected consumers subscribe to (never a broker topic: a half,
/// not-yet-due scheduled or dead-lettered message). Trusting the offset as it is would let a
/// client copy any record into a retry topic; refusing outright made those clients lose every
/// failed message (1.x commits the offset anyway) or retry it locally for ever (2.0).
///
/// With ACL on, the record's own topic needs SUB, as `originTopic` does when sent: the
/// group's subscriptions may be another account's, and the copy would let this one read it.
fn named_by_offset(
    ctx: &BrokerContext,
    peer: std::net::SocketAddr,
    req: &RemotingCommand,
    group: &str,
    phys_offset: u64,
) -> Result<(String, Option<String>), Reject> {
    let refuse = |why: String| {
        Reject::new(
            sluice_protocol::response_code::SYSTEM_ERROR,
            format!("no message of group {group} at commit-log offset {phys_offset} to hand back: {why}"),
        )
    };
    // The offset is the client's: a miss there is not store damage.
    let record = ctx
        .store
        .read_record_untrusted(phys_offset)
        .map_err(|e| refuse(e.to_string()))?;
    let orig = Original::decode(&record).ok_or_else(|| refuse("unreadable record".into()))?;
    if orig.phys_offset != phys_offset {
        return Err(refuse("no record starts there".into()));
    }
    let allowed = orig.topic == topic::retry_topic(group)
        || (!topic::is_broker_topic(&orig.topic)
            && ctx.clients.subscription(group, &orig.topic).is_some());
    if !allowed {
        return Err(refuse(format!(
            "its topic {} is neither %RETRY%{group} nor one the group subscribes to",
            orig.topic
        )));
    }
    if orig.topic != topic::retry_topic(group) {
        crate::acl::authorize_topic(&ctx.cfg.acl, peer, req, &orig.topic, crate::acl::Perm::Sub)
            .map_err(|d| Reject::new(sluice_protocol::response_code::NO_PERMISSION, d.0))?;
    }
    Ok((
        offset_msg_id(ctx.store.store_host(), phys_offset),
        Some(orig.topic),
    ))
}
