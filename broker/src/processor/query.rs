//! QUERY_MESSAGE (12) and VIEW_MESSAGE_BY_ID (33) (§2.8): lookups that answer with raw records.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sluice_protocol::remoting::custom::{
    QueryMessageRequestHeader, QueryMessageResponseHeader, ViewMessageByIdRequestHeader,
};
use sluice_protocol::{response_code as code, RemotingCommand};
use sluice_store::now_ms;

use super::Reject;
use crate::broker::context::BrokerContext;
use crate::reply;

/// Java's `defaultQueryMaxNum`, used for UNIQ_KEY lookups.
const UNIQ_QUERY_MAX: usize = 32;
/// Java's `maxMsgsNumBatch`: the cap on key lookups.
const KEY_QUERY_MAX: usize = 64;
/// Time bounds passed to the store (see `query_message`).
const TS_MIN: i64 = i64::MIN / 2;
const TS_MAX: i64 = i64::MAX / 2;

/// QUERY_MESSAGE: by key (`topic#key` in the index) or, with `_UNIQUE_KEY_QUERY=true`, by
/// UNIQ_KEY. Index walks read many records, so they run on a blocking thread.
pub(super) async fn query_message(
    ctx: &Arc<BrokerContext>,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h = QueryMessageRequestHeader::from_ext(&req.ext_fields).map_err(|e| Reject::header(&e))?;
    let store = Arc::clone(&ctx.store);
    let uniq = h.unique_key_query.unwrap_or(false);
    let max = usize::try_from(h.max_num)
        .unwrap_or(0)
        .clamp(1, KEY_QUERY_MAX);
    // Clients send `Long.MAX_VALUE` as "no end"; the store's index adds a second of slack to
    // the bounds, which overflows there, so keep the bounds well inside i64.
    let begin = h.begin_timestamp.clamp(TS_MIN, TS_MAX);
    let end = h.end_timestamp.clamp(TS_MIN, TS_MAX);
    let (topic, key) = (h.topic.clone(), h.key.clone());
    let found = tokio::task::spawn_blocking(move || {
        if uniq {
            store.query_by_uniq_key(&topic, &key, UNIQ_QUERY_MAX)
        } else {
            store.query_by_key(&topic, &key, max, begin, end)
        }
    })
    .await
    .map_err(|e| Reject::new(code::SYSTEM_ERROR, format!("query failed: {e}")))?;
    let header = QueryMessageResponseHeader {
        index_last_update_timestamp: now_ms(),
        index_last_update_phyoffset: i64::try_from(ctx.store.stats().dispatched)
            .unwrap_or(i64::MAX),
    };
    if found.is_empty() {
        return Ok(reply::error(
            req,
            code::QUERY_NOT_FOUND,
            "can not find message, maybe time range not correct",
        )
        .with_ext(header.to_ext()));
    }
    Ok(reply::ok_ext(req, header.to_ext()).with_body(concat(&found)))
}

fn concat(records: &[Bytes]) -> Bytes {
    let mut body = BytesMut::with_capacity(records.iter().map(Bytes::len).sum());
    for r in records {
        body.extend_from_slice(r);
    }
    body.freeze()
}

/// VIEW_MESSAGE_BY_ID: the record at a commit-log offset (decoded by the client from an
/// offsetMsgId).
pub(super) fn view_by_id(
    ctx: &BrokerContext,
    peer: std::net::SocketAddr,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    let h =
        ViewMessageByIdRequestHeader::from_ext(&req.ext_fields).map_err(|e| Reject::header(&e))?;
    let not_found = || {
        Reject::new(
            code::SYSTEM_ERROR,
            format!("can not find message by the offset, {}", h.offset),
        )
    };
    let phys = u64::try_from(h.offset).map_err(|_| not_found())?;
    // The client's offset may point anywhere: a failed check there is not store damage.
    let record = ctx.store.read_record_untrusted(phys).map_err(|e| {
        tracing::debug!(offset = phys, error = %e, "view by id failed");
        not_found()
    })?;
    // The request names an offset, not a topic: with ACL on, the record's own topic decides
    // (SUB on it; broker-internal topics for admins only). Unchecked, any signed account
    // walked the whole commit log, other tenants' topics and half messages included.
    // With ACL off (the default) the record is not parsed for nothing.
    if ctx.cfg.acl.enabled {
        let topic = sluice_protocol::RecordView::parse(&record, usize::MAX)
            .map(|v| v.topic.to_owned())
            .map_err(|_| not_found())?;
        crate::acl::authorize_topic(&ctx.cfg.acl, peer, req, &topic, crate::acl::Perm::Sub)
            .map_err(|d| Reject::new(code::NO_PERMISSION, d.0))?;
    }
    Ok(reply::ok(req).with_body(record))
}
