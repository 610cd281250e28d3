//! The requests consumers make: PULL_MESSAGE (with long polling) and the offset family. Each
//! goes to the master of the queue's broker.

use std::time::Duration;

use sluice_protocol::remoting::body::MessageQueue;
use sluice_protocol::remoting::custom::{
    pull_sysflag, GetMaxOffsetRequestHeader, GetMinOffsetRequestHeader, OffsetResponseHeader,
    PullMessageRequestHeader, PullMessageResponseHeader, QueryConsumerOffsetRequestHeader,
    SearchOffsetRequestHeader, UpdateConsumerOffsetRequestHeader,
};
use sluice_protocol::{request_code, response_code as code, RemotingCommand};

use super::Subscription;
use crate::core::ClientCore;
use crate::error::ClientError;
use crate::message::{decode_records, ConsumedMessage};
use crate::net::{expect_success, failure};

/// What a pull found.
///
/// ```no_run
/// # async fn demo(c: &sluice_client::PullConsumer, mq: &sluice_client::MessageQueue) -> Result<(), sluice_client::ClientError> {
/// use sluice_client::PullStatus;
/// let r = c.pull(mq, 0, 32).await?;
/// match r.status {
///     PullStatus::Found => println!("{} messages", r.messages.len()),
///     PullStatus::NoNewMessage | PullStatus::NoMatchedMessage => println!("caught up"),
///     PullStatus::OffsetIllegal => println!("continue from {}", r.next_begin_offset),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullStatus {
    /// Messages were returned (possibly none after client-side tag filtering).
    Found,
    /// Nothing new: the consumer is caught up.
    NoNewMessage,
    /// Messages were there but none matched the filter.
    NoMatchedMessage,
    /// The offset was out of range; continue from `next_begin_offset`.
    OffsetIllegal,
}

/// The outcome of one pull.
///
/// ```no_run
/// # async fn demo(c: &sluice_client::PullConsumer, mq: &sluice_client::MessageQueue) -> Result<(), sluice_client::ClientError> {
/// let r = c.pull(mq, 0, 32).await?;
/// for m in &r.messages { println!("{}", m.msg_id()); }
/// let next = r.next_begin_offset;
/// # let _ = next; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PullResult {
    /// What was found.
    pub status: PullStatus,
    /// Where the next pull starts.
    pub next_begin_offset: i64,
    /// The queue's first stored offset.
    pub min_offset: i64,
    /// The queue's next offset to be written.
    pub max_offset: i64,
    /// The messages, in queue order, already filtered by tag.
    pub messages: Vec<ConsumedMessage>,
}

/// Pulls from `offset`; with a non-zero `suspend` the broker may hold the request that long
/// waiting for a message (long polling).
pub(crate) async fn pull(
    core: &ClientCore,
    group: &str,
    mq: &MessageQueue,
    sub: &Subscription,
    offset: i64,
    max: i32,
    suspend: Duration,
) -> Result<PullResult, ClientError> {
    let addr = core.master_addr(&mq.broker_name)?;
    let mut sys_flag = pull_sysflag::SUBSCRIPTION;
    if !suspend.is_zero() {
        sys_flag |= pull_sysflag::SUSPEND;
    }
    let header = PullMessageRequestHeader {
        consumer_group: group.to_owned(),
        topic: mq.topic.clone(),
        queue_id: mq.queue_id,
        queue_offset: offset,
        max_msg_nums: max.max(1),
        sys_flag,
        commit_offset: 0,
        suspend_timeout_millis: suspend.as_millis() as i64,
        subscription: Some(sub.expression.clone()),
        sub_version: 0,
        expression_type: Some("TAG".into()),
        max_msg_bytes: None,
    };
    let req = RemotingCommand::request(request_code::PULL_MESSAGE, header.to_ext());
    // The broker answers a held pull after `suspend`; allow the usual RPC time on top.
    let timeout = suspend + core.cfg.rpc_timeout.max(Duration::from_secs(5));
    let resp = core.pool.invoke_held(&addr, req, timeout, suspend).await?;
    read_pull(&addr, mq, sub, resp)
}

fn read_pull(
    addr: &str,
    mq: &MessageQueue,
    sub: &Subscription,
    resp: RemotingCommand,
) -> Result<PullResult, ClientError> {
    let status = match resp.code {
        code::SUCCESS => PullStatus::Found,
        code::PULL_NOT_FOUND => PullStatus::NoNewMessage,
        code::PULL_RETRY_IMMEDIATELY => PullStatus::NoMatchedMessage,
        code::PULL_OFFSET_MOVED => PullStatus::OffsetIllegal,
        _ => return Err(failure(addr, resp)),
    };
    let h = PullMessageResponseHeader::from_ext(&resp.ext_fields)
        .map_err(|e| ClientError::protocol(addr, format!("pull response: {e}")))?;
    let mut next_begin_offset = h.next_begin_offset;
    let messages = if status == PullStatus::Found {
        let decoded = decode_records(&resp.body, &mq.broker_name);
        if let Some(why) = decoded.stopped {
            next_begin_offset = resume_before_undecodable(addr, mq, &decoded.messages, &why)?;
        }
        decoded
            .messages
            .into_iter()
            .filter(|m| sub.matches(m))
            .collect()
    } else {
        Vec::new()
    };
    Ok(PullResult {
        status,
        next_begin_offset,
        min_offset: h.min_offset,
        max_offset: h.max_offset,
        messages,
    })
}

/// Where to pull next when a pull body holds a record that does not decode: right after the
/// last message decoded, so the next pull starts at that record, never past it (the broker's
/// `nextBeginOffset` would skip it and every record after it in the body, and the group would
/// commit past messages it never saw). With nothing decoded the pull fails: the queue is
/// pulled again after a pause, and the record stays in the log until it can be read.
fn resume_before_undecodable(
    addr: &str,
    mq: &MessageQueue,
    decoded: &[ConsumedMessage],
    why: &str,
) -> Result<i64, ClientError> {
    tracing::error!(topic = %mq.topic, broker = %mq.broker_name, queue_id = mq.queue_id, decoded = decoded.len(), reason = %why, "undecodable record in a pull body: not consumed past it");
    match decoded.last() {
        Some(last) => Ok(last.queue_offset() + 1),
        None => Err(ClientError::protocol(
            addr,
            format!("the first record of a pull does not decode: {why}"),
        )),
    }
}

/// The group's committed offset on `mq`; `None` when the broker has none (code 22).
pub(crate) async fn query_offset(
    core: &ClientCore,
    group: &str,
    mq: &MessageQueue,
) -> Result<Option<i64>, ClientError> {
    let addr = core.master_addr(&mq.broker_name)?;
    let header = QueryConsumerOffsetRequestHeader {
        consumer_group: group.to_owned(),
        topic: mq.topic.clone(),
        queue_id: mq.queue_id,
        set_zero_if_not_found: None,
    };
    let req = RemotingCommand::request(request_code::QUERY_CONSUMER_OFFSET, header.to_ext());
    let resp = core.pool.invoke(&addr, req, core.cfg.rpc_timeout).await?;
    if resp.code == code::QUERY_NOT_FOUND {
        return Ok(None);
    }
    let resp = expect_success(&addr, resp)?;
    offset_of(&addr, &resp).map(Some)
}

/// Commits `offset` (the next to consume) for the group on `mq`, waiting for the broker.
pub(crate) async fn commit_offset(
    core: &ClientCore,
    group: &str,
    mq: &MessageQueue,
    offset: i64,
) -> Result<(), ClientError> {
    let addr = core.master_addr(&mq.broker_name)?;
    let header = UpdateConsumerOffsetRequestHeader {
        consumer_group: group.to_owned(),
        topic: mq.topic.clone(),
        queue_id: mq.queue_id,
        commit_offset: offset,
    };
    let req = RemotingCommand::request(request_code::UPDATE_CONSUMER_OFFSET, header.to_ext());
    core.pool
        .invoke_ok(&addr, req, core.cfg.rpc_timeout)
        .await
        .map(drop)
}

/// The queue's next offset to be written.
pub(crate) async fn max_offset(core: &ClientCore, mq: &MessageQueue) -> Result<i64, ClientError> {
    let header = GetMaxOffsetRequestHeader {
        topic: mq.topic.clone(),
        queue_id: mq.queue_id,
        committed: None,
    };
    offset_query(core, mq, request_code::GET_MAX_OFFSET, header.to_ext()).await
}

/// The queue's first stored offset.
pub(crate) async fn min_offset(core: &ClientCore, mq: &MessageQueue) -> Result<i64, ClientError> {
    let header = GetMinOffsetRequestHeader {
        topic: mq.topic.clone(),
        queue_id: mq.queue_id,
    };
    offset_query(core, mq, request_code::GET_MIN_OFFSET, header.to_ext()).await
}

/// The offset of the first message stored at or after `timestamp` (epoch ms).
pub(crate) async fn search_offset(
    core: &ClientCore,
    mq: &MessageQueue,
    timestamp: i64,
) -> Result<i64, ClientError> {
    let header = SearchOffsetRequestHeader {
        topic: mq.topic.clone(),
        queue_id: mq.queue_id,
        timestamp,
        boundary_type: None,
    };
    offset_query(
        core,
        mq,
        request_code::SEARCH_OFFSET_BY_TIMESTAMP,
        header.to_ext(),
    )
    .await
}

async fn offset_query(
    core: &ClientCore,
    mq: &MessageQueue,
    code: i32,
    ext: sluice_protocol::ExtFields,
) -> Result<i64, ClientError> {
    let addr = core.master_addr(&mq.broker_name)?;
    let req = RemotingCommand::request(code, ext);
    let resp = core
        .pool
        .invoke_ok(&addr, req, core.cfg.rpc_timeout)
        .await?;
    offset_of(&addr, &resp)
}

fn offset_of(addr: &str, resp: &RemotingCommand) -> Result<i64, ClientError> {
    OffsetResponseHeader::from_ext(&resp.ext_fields)
        .map(|h| h.offset)
        .map_err(|e| ClientError::protocol(addr, format!("offset response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_codes_map_to_statuses_and_unknown_codes_are_errors() {
        let mq = MessageQueue::default();
        let sub = Subscription::new("T", "*");
        let with = |c: i32| {
            let ext = PullMessageResponseHeader {
                next_begin_offset: 7,
                ..Default::default()
            }
            .to_ext();
            RemotingCommand::response_to(&RemotingCommand::default(), c, None).with_ext(ext)
        };
        let r = read_pull("a", &mq, &sub, with(19)).unwrap();
        assert_eq!(
            (r.status, r.next_begin_offset),
            (PullStatus::NoNewMessage, 7)
        );
        assert_eq!(
            read_pull("a", &mq, &sub, with(21)).unwrap().status,
            PullStatus::OffsetIllegal
        );
        let err = read_pull("a", &mq, &sub, with(24)).unwrap_err();
        assert_eq!(err.response_code(), Some(24));
        let missing = RemotingCommand::response_to(&RemotingCommand::default(), 19, None);
        assert!(matches!(
            read_pull("a", &mq, &sub, missing),
            Err(ClientError::Protocol { .. })
        ));
    }

    /// A record that does not decode is never pulled past: the next pull starts at it (right
    /// after the last message decoded), and a pull whose first record does not decode fails.
    #[test]
    fn an_undecodable_record_is_not_pulled_past() {
        use sluice_protocol::message::record::{encode_record, RecordHeader};
        let mq = MessageQueue::default();
        let sub = Subscription::new("T", "*");
        let found = |body: Vec<u8>| {
            let ext = PullMessageResponseHeader {
                next_begin_offset: 40,
                ..Default::default()
            }
            .to_ext();
            RemotingCommand::response_to(&RemotingCommand::default(), code::SUCCESS, None)
                .with_ext(ext)
                .with_body(body)
        };
        let mut body = Vec::new();
        for queue_offset in [5, 6] {
            let header = RecordHeader {
                queue_offset,
                ..Default::default()
            };
            encode_record(&header, b"m", "T", b"", &mut body).unwrap();
        }
        let whole = read_pull("a", &mq, &sub, found(body.clone())).unwrap();
        assert_eq!((whole.messages.len(), whole.next_begin_offset), (2, 40));

        let mut damaged = body.clone();
        damaged.extend_from_slice(&[0xAB; 64]);
        let r = read_pull("a", &mq, &sub, found(damaged)).unwrap();
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.next_begin_offset, 7, "resumes at the undecodable record");

        let err = read_pull("a", &mq, &sub, found(vec![0xAB; 64])).unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
    }
}
