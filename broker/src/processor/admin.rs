//! Admin requests: UPDATE_AND_CREATE_TOPIC (17) and GET_ALL_TOPIC_CONFIG (21).
//!
//! Who may send them is decided before dispatch (`crate::acl::authorize`: admin accounts with
//! ACL on; loopback peers only with ACL off unless `allow_remote_admin`).

use std::sync::Arc;

use sluice_protocol::remoting::body::broker::{MULTI_TAG, SINGLE_TAG};
use sluice_protocol::remoting::body::{encode_json, perm, TopicConfig};
use sluice_protocol::remoting::custom::UpdateAndCreateTopicRequestHeader;
use sluice_protocol::{response_code as code, RemotingCommand};

use super::Reject;
use crate::broker::context::BrokerContext;
use crate::reply;
use crate::topic::{self, MAX_QUEUE_NUMS};

/// UPDATE_AND_CREATE_TOPIC: validates and stores the topic, answers once `topics.json` holds
/// it, and re-registers at once.
pub(super) async fn create_topic(
    ctx: &Arc<BrokerContext>,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h = UpdateAndCreateTopicRequestHeader::from_ext(&req.ext_fields)
        .map_err(|e| Reject::header(&e))?;
    topic::validate_name(&h.topic)?;
    if h.topic == h.default_topic || h.topic == topic::DEFAULT_TOPIC {
        return Err(Reject::new(
            code::SYSTEM_ERROR,
            format!(
                "The topic[{}] is conflict with system reserved words.",
                h.topic
            ),
        ));
    }
    for (name, n) in [
        ("readQueueNums", h.read_queue_nums),
        ("writeQueueNums", h.write_queue_nums),
    ] {
        if !(1..=MAX_QUEUE_NUMS).contains(&n) {
            return Err(Reject::new(
                code::INVALID_PARAMETER,
                format!("{name} {n} must be within 1 and {MAX_QUEUE_NUMS}"),
            ));
        }
    }
    let (read_queues, write_queues) = dead_letter_queues(&h);
    let filter_type = if h.topic_filter_type == MULTI_TAG {
        MULTI_TAG
    } else {
        SINGLE_TAG
    };
    let cfg = TopicConfig {
        order: h.order,
        perm: h.perm & (perm::READ | perm::WRITE | perm::INHERIT | perm::PRIORITY),
        read_queue_nums: read_queues,
        topic_filter_type: filter_type.to_owned(),
        topic_name: h.topic.clone(),
        topic_sys_flag: h.topic_sys_flag.unwrap_or(0),
        write_queue_nums: write_queues,
    };
    ctx.topics
        .put(cfg)
        .map_err(|limit| Reject::new(code::SYSTEM_ERROR, limit.to_string()))?;
    ctx.topics.save_durably().await.map_err(|e| {
        tracing::error!(topic = %h.topic, error = %e, "saving a created topic failed");
        Reject::new(code::SYSTEM_ERROR, format!("topic not saved: {e}"))
    })?;
    Ok(reply::ok(req))
}

/// The queue counts to store: as asked, except for a dead-letter topic, which keeps one
/// queue. Dead letters are listed, counted and replayed from queue 0 (the broker writes them
/// there); with more queues, a client's fallback send to the topic landed where no dead-letter
/// tool looks. `mqadmin updateTopic -p 6 -t %DLQ%g` (the usual way to make one readable)
/// sends the tool's default of 8 queues, so the count is not refused, only kept at one.
fn dead_letter_queues(h: &UpdateAndCreateTopicRequestHeader) -> (i32, i32) {
    if !h.topic.starts_with(crate::DLQ_PREFIX) {
        return (h.read_queue_nums, h.write_queue_nums);
    }
    if (h.read_queue_nums, h.write_queue_nums) != (1, 1) {
        tracing::info!(
            topic = %h.topic,
            read_queues = h.read_queue_nums,
            write_queues = h.write_queue_nums,
            "a dead-letter topic keeps one queue; the other settings are applied"
        );
    }
    (1, 1)
}

/// GET_ALL_TOPIC_CONFIG: `TopicConfigSerializeWrapper` JSON.
pub(super) fn all_topic_config(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    Ok(reply::ok(req).with_body(encode_json(&ctx.topics.snapshot())))
}
