//! What each request code needs, read from the request the way its handler reads it.
//!
//! | Request | Needs |
//! |---|---|
//! | SEND_MESSAGE, SEND_MESSAGE_V2, SEND_BATCH_MESSAGE | PUB on the topic; for `%RETRY%<g>`, SUB on group `g` |
//! | PULL_MESSAGE, LITE_PULL_MESSAGE | SUB on the topic and on `consumerGroup` |
//! | QUERY_CONSUMER_OFFSET, UPDATE_CONSUMER_OFFSET | SUB on the topic and on `consumerGroup` |
//! | GET_CONSUME_STATS | SUB on the topic and on `consumerGroup`; without a topic (every topic of the group), an admin account |
//! | QUERY_TOPIC_CONSUME_BY_WHO, GET_TOPIC_STATS_INFO | SUB on the topic |
//! | GET_CONSUMER_CONNECTION_LIST | SUB on `consumerGroup` |
//! | GET_PRODUCER_CONNECTION_LIST, INVOKE_BROKER_TO_RESET_OFFSET | an admin account |
//! | HEART_BEAT | per consumer in the body: SUB on its group and on every subscribed topic |
//! | CONSUMER_SEND_MSG_BACK | SUB on `group`, and on `originTopic` when given (without `originMsgId`, the handler checks SUB on the topic of the record at `offset`) |
//! | UNREGISTER_CLIENT, GET_CONSUMER_LIST_BY_GROUP | SUB on `consumerGroup` (when given) |
//! | LOCK_BATCH_MQ, UNLOCK_BATCH_MQ | SUB on the body's `consumerGroup` |
//! | QUERY_MESSAGE | SUB on the topic; of the broker's own topics (half, schedule, timer), an admin account |
//! | RECALL_MESSAGE | PUB on the topic |
//! | admin codes ([`ADMIN_CODES`]) | an admin account |
//! | VIEW_MESSAGE_BY_ID | a valid signature here; then SUB on the record's topic, checked by the handler once it has read it (broker-internal topics: admin) |
//! | END_TRANSACTION | a valid signature here; then PUB on the transaction's real topic, checked by the txn extension once it has found it |
//! | anything else (offsets by queue, GET_ALL_TOPIC_CONFIG…) | a valid signature only |
//!
//! A header or body that cannot be read adds no need: the handler refuses it anyway, after the
//! signature was checked.
//!
//! A `%RETRY%<g>` topic takes group `g`'s permission, and so does a `%DLQ%<g>` topic not named
//! in the account's topic permissions (`AclAccount::topic_perm`).

use sluice_protocol::remoting::body::{decode_json, HeartbeatData, LockBatchRequestBody};
use sluice_protocol::remoting::custom::SendMessageRequestHeader;
use sluice_protocol::{request_code as rc, RemotingCommand};

use super::Perm;

/// RocketMQ's admin request codes (`Permission.ADMIN_CODE`): UPDATE_AND_CREATE_TOPIC (17),
/// UPDATE_BROKER_CONFIG (25), UPDATE_AND_CREATE_SUBSCRIPTIONGROUP (200),
/// DELETE_SUBSCRIPTIONGROUP (207), DELETE_TOPIC_IN_BROKER (215).
pub const ADMIN_CODES: [i32; 5] = [rc::UPDATE_AND_CREATE_TOPIC, 25, 200, 207, 215];

/// True for the codes in [`ADMIN_CODES`].
pub fn is_admin_code(code: i32) -> bool {
    ADMIN_CODES.contains(&code)
}

/// One thing a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Need {
    Admin,
    Topic(String, Perm),
    Group(String, Perm),
}

pub(super) fn needed(req: &RemotingCommand) -> Vec<Need> {
    let ext = &req.ext_fields;
    let s = |k: &str| ext.get_str(k).filter(|v| !v.is_empty()).map(str::to_owned);
    // A group named by an empty value is still a group (""), held to the account's default
    // group permission: skipped, an account with SUB on a topic and no group rights pulled it
    // and committed offsets as group "".
    let g = |k: &str| ext.get_str(k).map(str::to_owned);
    let mut out = Vec::new();
    let sub_topic_and_group = |out: &mut Vec<Need>| {
        if let Some(t) = s("topic") {
            out.push(Need::Topic(t, Perm::Sub));
        }
        if let Some(g) = g("consumerGroup") {
            out.push(Need::Group(g, Perm::Sub));
        }
    };
    match req.code {
        code if is_admin_code(code) => out.push(Need::Admin),
        rc::SEND_MESSAGE | rc::SEND_MESSAGE_V2 | rc::SEND_BATCH_MESSAGE => {
            if let Ok(h) = SendMessageRequestHeader::from_ext(ext) {
                match h.topic.strip_prefix(crate::RETRY_PREFIX) {
                    Some(group) => out.push(Need::Group(group.to_owned(), Perm::Sub)),
                    None => out.push(Need::Topic(h.topic, Perm::Pub)),
                }
            }
        }
        rc::PULL_MESSAGE
        | rc::LITE_PULL_MESSAGE
        | rc::QUERY_CONSUMER_OFFSET
        | rc::UPDATE_CONSUMER_OFFSET => sub_topic_and_group(&mut out),
        // Without a topic it reports every topic of the group, SUB on some of which the
        // account may lack.
        rc::GET_CONSUME_STATS if s("topic").is_none() => out.push(Need::Admin),
        rc::GET_CONSUME_STATS => sub_topic_and_group(&mut out),
        rc::HEART_BEAT => {
            if let Ok(hb) = decode_json::<HeartbeatData>(&req.body) {
                for c in hb.consumer_data_set {
                    for sub in c.subscription_data_set {
                        out.push(Need::Topic(sub.topic, Perm::Sub));
                    }
                    out.push(Need::Group(c.group_name, Perm::Sub));
                }
            }
        }
        rc::CONSUMER_SEND_MSG_BACK => {
            if let Some(g) = g("group") {
                out.push(Need::Group(g, Perm::Sub));
            }
            if let Some(t) = s("originTopic") {
                out.push(Need::Topic(t, Perm::Sub));
            }
        }
        // An unregister only removes the connection's own memberships, and C++ producers
        // send it with an empty consumerGroup: that is no group.
        rc::UNREGISTER_CLIENT => {
            if let Some(g) = s("consumerGroup") {
                out.push(Need::Group(g, Perm::Sub));
            }
        }
        rc::GET_CONSUMER_LIST_BY_GROUP => {
            if let Some(g) = g("consumerGroup") {
                out.push(Need::Group(g, Perm::Sub));
            }
        }
        rc::LOCK_BATCH_MQ | rc::UNLOCK_BATCH_MQ => {
            if let Ok(body) = decode_json::<LockBatchRequestBody>(&req.body) {
                out.push(Need::Group(body.consumer_group, Perm::Sub));
            }
        }
        rc::GET_CONSUMER_CONNECTION_LIST => {
            if let Some(g) = g("consumerGroup") {
                out.push(Need::Group(g, Perm::Sub));
            }
        }
        rc::GET_PRODUCER_CONNECTION_LIST | rc::INVOKE_BROKER_TO_RESET_OFFSET => {
            out.push(Need::Admin)
        }
        // A query answers whole records: of the broker's own topics (half, not-yet-due
        // scheduled and timer messages, which are key-indexed too, and which no pull serves)
        // only to admins; a dead-letter topic takes its group's permission (`topic_perm`).
        rc::QUERY_MESSAGE => {
            if let Some(t) = s("topic") {
                if crate::topic::is_admin_only(&t) {
                    out.push(Need::Admin);
                } else {
                    out.push(Need::Topic(t, Perm::Sub));
                }
            }
        }
        rc::QUERY_TOPIC_CONSUME_BY_WHO | rc::GET_TOPIC_STATS_INFO => {
            if let Some(t) = s("topic") {
                out.push(Need::Topic(t, Perm::Sub));
            }
        }
        rc::RECALL_MESSAGE => {
            if let Some(t) = s("topic") {
                out.push(Need::Topic(t, Perm::Pub));
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::ExtFields;

    #[test]
    fn an_empty_group_name_is_a_group_to_check_not_none() {
        let pull = ExtFields::new()
            .with("consumerGroup", "")
            .with("topic", "Orders");
        assert_eq!(
            needed(&RemotingCommand::request(rc::PULL_MESSAGE, pull)),
            vec![
                Need::Topic("Orders".into(), Perm::Sub),
                Need::Group(String::new(), Perm::Sub)
            ]
        );
        let back = ExtFields::new()
            .with("group", "")
            .with("originTopic", "Orders");
        assert!(
            needed(&RemotingCommand::request(rc::CONSUMER_SEND_MSG_BACK, back))
                .contains(&Need::Group(String::new(), Perm::Sub))
        );
    }

    #[test]
    fn send_v2_needs_pub_and_retry_sends_need_the_group() {
        let ext = ExtFields::new()
            .with("a", "prod")
            .with("b", "Orders")
            .with("c", "TBW102")
            .with("d", "4")
            .with("e", "0")
            .with("f", "0")
            .with("g", "1")
            .with("h", "0");
        let req = RemotingCommand::request(rc::SEND_MESSAGE_V2, ext.clone());
        assert_eq!(needed(&req), vec![Need::Topic("Orders".into(), Perm::Pub)]);
        let retry = RemotingCommand::request(rc::SEND_MESSAGE_V2, ext.with("b", "%RETRY%billing"));
        assert_eq!(
            needed(&retry),
            vec![Need::Group("billing".into(), Perm::Sub)]
        );
    }

    #[test]
    fn admin_codes_need_admin() {
        for code in ADMIN_CODES {
            let req = RemotingCommand::request(code, ExtFields::new());
            assert_eq!(needed(&req), vec![Need::Admin]);
        }
    }
}
