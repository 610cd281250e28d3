//! CONSUMER_SEND_MSG_BACK (36): `rocketmq-protocol.md` §2.7 and §8.2. The decision and the
//! copy are in `crate::retry`, shared with the Rust API.
//!
//! Besides RocketMQ's header, an optional ext field `failureReason` (a Sluice extension that
//! RocketMQ clients never send) is kept on the copy as `SLUICE_FAILURE_REASON`.

use std::sync::Arc;

use sluice_protocol::remoting::custom::ConsumerSendMsgBackRequestHeader;
use sluice_protocol::RemotingCommand;

use super::Reject;
use crate::broker::context::BrokerContext;
use crate::reply;
use crate::retry::{self, SendBack};

/// Ext field carrying a failure reason.
pub(crate) const FAILURE_REASON_FIELD: &str = "failureReason";

pub(super) async fn send_back(
    ctx: &Arc<BrokerContext>,
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
    // Without an id the offset would be trusted as is (the path for in-process callers), and
    // a client could copy any record into a retry topic: a half message, a not-yet-due
    // scheduled one, another topic's. RocketMQ clients always send it.
    let Some(origin_msg_id) = h.origin_msg_id.filter(|id| !id.is_empty()) else {
        return Err(Reject::new(
            sluice_protocol::response_code::SYSTEM_ERROR,
            format!(
                "originMsgId is required to hand back the message at commit-log offset {}",
                h.offset
            ),
        ));
    };
    let back = SendBack {
        group: h.group,
        phys_offset,
        delay_level: h.delay_level,
        origin_msg_id: Some(origin_msg_id),
        origin_topic: h.origin_topic.filter(|t| !t.is_empty()),
        max_reconsume_times: h.max_reconsume_times,
        reason: req
            .ext_fields
            .get_str(FAILURE_REASON_FIELD)
            .map(str::to_owned),
    };
    match retry::send_back(ctx, &back).await {
        Ok(_) => Ok(reply::ok(req)),
        Err(e) => {
            tracing::debug!(group = %back.group, offset = phys_offset, error = %e, "send-back refused");
            Err(Reject::new(e.response_code(), e.to_string()))
        }
    }
}
