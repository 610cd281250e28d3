//! Client management (§2.5): HEART_BEAT, UNREGISTER_CLIENT, GET_CONSUMER_LIST_BY_GROUP,
//! LOCK_BATCH_MQ and UNLOCK_BATCH_MQ.

use std::sync::Arc;
use std::time::Instant;

use sluice_protocol::remoting::body::{
    decode_json, encode_json, ConsumerListBody, HeartbeatData, LockBatchRequestBody,
    LockBatchResponseBody, MessageQueue,
};
use sluice_protocol::remoting::custom::{
    GetConsumerListByGroupRequestHeader, UnregisterClientRequestHeader,
};
use sluice_protocol::{response_code as code, RemotingCommand};

use super::Reject;
use crate::broker::context::BrokerContext;
use crate::remoting::ConnectionHandle;
use crate::reply;
use crate::stats::Counters;
use crate::topic;

/// Longest client id taken (Java's are `ip@instance[@unit]`): every group of a heartbeat and
/// every queue locked keeps a copy of it.
const MAX_CLIENT_ID: usize = 1024;
/// Most producer and consumer groups in one heartbeat (each keeps a member entry).
const MAX_GROUPS_PER_HEARTBEAT: usize = 1024;
/// Longest producer group name (RocketMQ's limit for group names; consumer groups are held to
/// the topic-name rules of their retry topics).
const MAX_GROUP_NAME: usize = 255;
/// Most queues one LOCK_BATCH_MQ or UNLOCK_BATCH_MQ names.
const MAX_QUEUES_PER_LOCK: usize = 4096;

/// HEART_BEAT: registers the client's groups over this connection (before answering, so the
/// consumer list is right when the client's first rebalance asks), creates `%RETRY%<group>`
/// for every consumer group, and tells a group's members when its membership changed.
pub(super) fn heartbeat(
    ctx: &Arc<BrokerContext>,
    conn: &ConnectionHandle,
    req: &RemotingCommand,
    access_key: Option<&str>,
) -> Result<RemotingCommand, Reject> {
    let mut hb: HeartbeatData = decode_json(&req.body).map_err(|e| {
        Reject::new(
            code::SYSTEM_ERROR,
            format!("invalid HeartbeatData body: {e}"),
        )
    })?;
    check_heartbeat_bounds(&hb)?;
    for c in &hb.consumer_data_set {
        check_consumer_group(&c.group_name)?;
    }
    let too_many = |e: crate::clients::TooManyGroups| {
        Reject::new(code::INVALID_PARAMETER, format!("heartbeat refused: {e}"))
    };
    ctx.clients.room_for(conn.id(), &hb).map_err(too_many)?;
    // Java creates it for every consumer group; C++ rebalancing stops for all topics when a
    // subscribed retry topic has no readable queue, so it gets one read-write queue at once.
    // A group whose retry topic is refused (`max_topics`, or a name too long for 4.x clients
    // to read its records) is left out and named in an error answer; the client's other
    // groups are still registered, or one such group would let all of them expire.
    let mut refused = Vec::new();
    hb.consumer_data_set.retain(|c| {
        let retry = topic::retry_topic(&c.group_name);
        match ctx.topics.get_or_create_retry(&retry) {
            Ok(_) => true,
            Err(limit) => {
                refused.push((c.group_name.clone(), limit));
                false
            }
        }
    });
    let meta = crate::clients::ClientMeta {
        language: req.language.name(),
        version: req.version,
    };
    let changed = ctx
        .clients
        .heartbeat(conn, &hb, Instant::now(), access_key, meta)
        .map_err(too_many)?;
    ctx.notify_consumers_changed(&changed);
    if refused.is_empty() {
        return Ok(reply::ok(req));
    }
    Counters::add(&ctx.counters.heartbeat_groups_refused, refused.len() as u64);
    let each: Vec<String> = refused
        .iter()
        .map(|(g, why)| format!("{g} ({why})"))
        .collect();
    // The clients log only the error code: without this, nothing told the operator why a
    // group's consumers received nothing.
    if let Some(held_back) = HEARTBEAT_REFUSALS_LOG.allow("refused") {
        tracing::warn!(client_id = %hb.client_id, groups = %each.join(", "), held_back, "consumer group(s) not registered: their retry topics could not be created; their members consume nothing until they can");
    }
    // A name too long is the client's to fix (as a send to such a retry topic is answered);
    // a full topic table is the broker's.
    let all_too_long = refused
        .iter()
        .all(|(_, why)| matches!(why, topic::RetryTopicRefused::TooLong(_)));
    Err(Reject::new(
        if all_too_long {
            code::INVALID_PARAMETER
        } else {
            code::SYSTEM_ERROR
        },
        format!(
            "consumer group(s) not registered, their retry topics could not be created: {}; \
             the heartbeat's other groups are registered",
            each.join(", ")
        ),
    ))
}

/// Heartbeats that left groups out: one warning per 10 s (clients send one every 30 s each).
static HEARTBEAT_REFUSALS_LOG: crate::log_every::LogEvery =
    crate::log_every::LogEvery::new(std::time::Duration::from_secs(10));

/// Refuses a heartbeat whose client id, group count or producer group names are over their
/// bounds: one body of 4 MiB otherwise made the broker copy a long id once per group.
fn check_heartbeat_bounds(hb: &HeartbeatData) -> Result<(), Reject> {
    check_client_id(&hb.client_id)?;
    let groups = hb.producer_data_set.len() + hb.consumer_data_set.len();
    let bad = code::INVALID_PARAMETER;
    Reject::unless_at_most(
        bad,
        "the heartbeat",
        groups,
        "groups",
        MAX_GROUPS_PER_HEARTBEAT,
    )?;
    let longest = hb
        .producer_data_set
        .iter()
        .map(|p| p.group_name.len())
        .max();
    check_producer_group_len(longest.unwrap_or(0))?;
    check_subscriptions(hb)
}

/// Subscriptions one heartbeat may announce, all its consumer groups together.
const MAX_SUBSCRIPTIONS_PER_HEARTBEAT: usize = 4096;
/// Bytes of subscription text (topics, expressions, tags, tag codes) one heartbeat may
/// announce: each group keeps its latest set, with every tag decoded again.
const MAX_SUBSCRIPTION_BYTES_PER_HEARTBEAT: usize = 1 << 20;

/// Longest topic a subscription may name (the longest a topic can have, a %RETRY% one).
const MAX_SUBSCRIBED_TOPIC_LEN: usize = 255;

/// Refuses a heartbeat whose subscriptions are over their bounds: they were kept whatever
/// their number and size (hundreds of thousands per group, each stored at ten times its size
/// in the body).
fn check_subscriptions(hb: &HeartbeatData) -> Result<(), Reject> {
    let bad = code::INVALID_PARAMETER;
    let subs = || {
        hb.consumer_data_set
            .iter()
            .flat_map(|c| &c.subscription_data_set)
    };
    Reject::unless_at_most(
        bad,
        "the heartbeat",
        subs().count(),
        "subscriptions",
        MAX_SUBSCRIPTIONS_PER_HEARTBEAT,
    )?;
    let bytes: usize = subs()
        .map(|s| {
            s.topic.len()
                + s.sub_string.len()
                + s.tags_set.iter().map(String::len).sum::<usize>()
                + 4 * s.code_set.len()
        })
        .sum();
    Reject::unless_at_most(
        bad,
        "the heartbeat",
        bytes,
        "bytes of subscriptions",
        MAX_SUBSCRIPTION_BYTES_PER_HEARTBEAT,
    )?;
    let longest = subs().map(|s| s.topic.len()).max().unwrap_or(0);
    Reject::unless_at_most(
        bad,
        "a subscription's topic",
        longest,
        "bytes",
        MAX_SUBSCRIBED_TOPIC_LEN,
    )
}

/// Refuses a producer group name longer than RocketMQ's clients allow. Sends are held to it
/// too: the broker keeps the name of every group a connection sends for.
pub(super) fn check_producer_group_len(len: usize) -> Result<(), Reject> {
    Reject::unless_at_most(
        code::INVALID_PARAMETER,
        "a producer group name",
        len,
        "bytes",
        MAX_GROUP_NAME,
    )
}

/// A consumer group's name is valid when its retry topic's is (the heartbeat's rule, which
/// consumer offsets follow too).
pub(super) fn check_consumer_group(group: &str) -> Result<(), Reject> {
    topic::validate_name(&topic::retry_topic(group)).map_err(|r| {
        Reject::new(
            code::INVALID_PARAMETER,
            format!("invalid consumer group {group:?}: {}", r.remark),
        )
    })
}

fn check_client_id(client_id: &str) -> Result<(), Reject> {
    let len = client_id.len();
    Reject::unless_at_most(
        code::INVALID_PARAMETER,
        "the client id",
        len,
        "bytes",
        MAX_CLIENT_ID,
    )
}

/// UNREGISTER_CLIENT: the client leaves a producer or consumer group.
pub(super) fn unregister(
    ctx: &Arc<BrokerContext>,
    conn: &ConnectionHandle,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h =
        UnregisterClientRequestHeader::from_ext(&req.ext_fields).map_err(|e| Reject::header(&e))?;
    let changed = ctx.clients.unregister(
        conn,
        h.producer_group.as_deref(),
        h.consumer_group.as_deref(),
    );
    tracing::info!(client_id = %h.client_id, remote = %conn.remote_addr(), "client unregistered");
    ctx.release_departed_locks();
    ctx.notify_consumers_changed(&changed);
    Ok(reply::ok(req))
}

/// GET_CONSUMER_LIST_BY_GROUP: sorted client ids, exactly as heartbeats sent them.
pub(super) fn consumer_list(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h = GetConsumerListByGroupRequestHeader::from_ext(&req.ext_fields)
        .map_err(|e| Reject::header(&e))?;
    let ids = ctx.clients.consumer_ids(&h.consumer_group);
    if ids.is_empty() {
        return Err(Reject::new(
            code::SYSTEM_ERROR,
            format!("no consumer for this group, {}", h.consumer_group),
        ));
    }
    let body = ConsumerListBody {
        consumer_id_list: ids,
    };
    Ok(reply::ok(req).with_body(encode_json(&body)))
}

fn lock_body(req: &RemotingCommand) -> Result<LockBatchRequestBody, Reject> {
    let body: LockBatchRequestBody = decode_json(&req.body).map_err(|e| {
        Reject::new(
            code::SYSTEM_ERROR,
            format!("invalid LockBatchRequestBody: {e}"),
        )
    })?;
    check_client_id(&body.client_id)?;
    let queues = body.mq_set.len();
    Reject::unless_at_most(
        code::INVALID_PARAMETER,
        "the request",
        queues,
        "queues",
        MAX_QUEUES_PER_LOCK,
    )?;
    Ok(body)
}

/// Lock entries past which a group without members locks nothing new (see [`lock`]).
const MAX_LOCKS_WITHOUT_MEMBERS: usize = 16_384;

/// LOCK_BATCH_MQ: locks what is free for the caller; answers the queues it holds (numeric
/// `queueId`, which C++ requires).
///
/// Only queues this broker has are locked, for a group whose name a heartbeat would take:
/// locks of invented groups and queues filled memory, and one invented queue locked under
/// another group's name made that group count as holding locks (its plain retries then go to
/// the DLQ). Others are left out of the answer, as queues the caller does not hold.
pub(super) fn lock(ctx: &BrokerContext, req: &RemotingCommand) -> Result<RemotingCommand, Reject> {
    let body = lock_body(req)?;
    check_consumer_group(&body.consumer_group)?;
    // Lock requests naming ever new groups grew the table without bound (every other table a
    // client fills is bounded broker-wide). A group with a member locks freely; any other
    // (an orderly consumer renewing right after a broker restart, before its next heartbeat)
    // adds entries only while the table is small.
    let cap = (!ctx.clients.has_consumer_group(&body.consumer_group))
        .then_some(MAX_LOCKS_WITHOUT_MEMBERS);
    let ours: Vec<MessageQueue> = body
        .mq_set
        .iter()
        .filter(|mq| is_our_queue(ctx, mq))
        .cloned()
        .collect();
    let held = ctx.locks.lock(
        &body.consumer_group,
        &body.client_id,
        &ours,
        Instant::now(),
        cap,
    );
    let resp = LockBatchResponseBody {
        lock_ok_mq_set: held,
    };
    Ok(reply::ok(req).with_body(encode_json(&resp)))
}

/// Whether `mq` is a queue of an existing topic on this broker.
fn is_our_queue(ctx: &BrokerContext, mq: &MessageQueue) -> bool {
    mq.broker_name == ctx.cfg.broker_name
        && ctx
            .topics
            .get(&mq.topic)
            .is_some_and(|t| (0..t.read_queue_nums.max(t.write_queue_nums)).contains(&mq.queue_id))
}

/// UNLOCK_BATCH_MQ: releases the caller's locks on the named queues.
pub(super) fn unlock(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let body = lock_body(req)?;
    ctx.locks
        .unlock(&body.consumer_group, &body.client_id, &body.mq_set);
    Ok(reply::ok(req))
}
