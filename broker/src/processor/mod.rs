//! Request handlers of the broker, one module per area, and the dispatch by request code.
//!
//! - `send`: SEND_MESSAGE, SEND_MESSAGE_V2, SEND_BATCH_MESSAGE.
//! - `pull`: PULL_MESSAGE and LITE_PULL_MESSAGE, with long polling.
//! - `offset`: consumer offsets and queue offset queries.
//! - `client`: heartbeat, unregister, consumer list, queue locks.
//! - `query`: QUERY_MESSAGE, VIEW_MESSAGE_BY_ID.
//! - `admin`: UPDATE_AND_CREATE_TOPIC, GET_ALL_TOPIC_CONFIG.
//! - `progress`: GET_CONSUME_STATS, QUERY_TOPIC_CONSUME_BY_WHO, GET_TOPIC_STATS_INFO
//!   (`mqadmin consumerProgress`, `topicStatus`).
//! - `connections`: GET_CONSUMER/PRODUCER_CONNECTION_LIST (`mqadmin consumerConnection`),
//!   INVOKE_BROKER_TO_RESET_OFFSET (`resetOffsetByTime`).
//! - `runtime`: GET_BROKER_RUNTIME_INFO (`mqadmin clusterList`, `brokerStatus`).
//! - `retry`: CONSUMER_SEND_MSG_BACK (the logic is in `crate::retry`).
//!
//! Every request first passes `crate::acl::authorize` (signatures, permissions, the admin
//! rule); a refusal is answered NO_PERMISSION before any handler runs.
//!
//! Handlers return `Result<RemotingCommand, Reject>`: a [`Reject`] is a refusal the client
//! caused or must handle, answered with its code and remark; it is never a panic or a closed
//! connection.

mod admin;
mod client;
mod connections;
mod offset;
mod progress;
mod pull;
mod query;
mod retry;
mod runtime;
pub(crate) mod send;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use sluice_protocol::remoting::ext::HeaderError;
use sluice_protocol::{request_code, RemotingCommand};

use crate::broker::context::BrokerContext;
use crate::remoting::server::Processor;
use crate::remoting::ConnectionHandle;
use crate::reply;
use crate::test_hooks;

/// GET_ALL_TOPIC_CONFIG: not in the protocol crate's list.
pub(crate) const GET_ALL_TOPIC_CONFIG: i32 = 21;

/// A refusal: response code and remark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reject {
    pub(crate) code: i32,
    pub(crate) remark: String,
}

impl Reject {
    pub(crate) fn new(code: i32, remark: impl Into<String>) -> Self {
        Self {
            code,
            remark: remark.into(),
        }
    }

    /// Refuses `n` of something past its bound `max`, naming both, as
    /// "{what} has {n} {unit}, at most {max}": every bound a request can cross says which.
    pub(crate) fn unless_at_most(
        code: i32,
        what: &str,
        n: usize,
        unit: &str,
        max: usize,
    ) -> Result<(), Self> {
        if n <= max {
            return Ok(());
        }
        Err(Self::new(
            code,
            format!("{what} has {n} {unit}, at most {max}"),
        ))
    }

    /// SYSTEM_ERROR naming the unreadable header field.
    pub(crate) fn header(err: &HeaderError) -> Self {
        Self::new(
            sluice_protocol::response_code::SYSTEM_ERROR,
            err.to_string(),
        )
    }
}

impl From<crate::topic::TopicReject> for Reject {
    fn from(r: crate::topic::TopicReject) -> Self {
        Self::new(r.code, r.remark)
    }
}

/// Turns a handler result into the response.
fn respond(req: &RemotingCommand, result: Result<RemotingCommand, Reject>) -> RemotingCommand {
    result.unwrap_or_else(|r| reply::error(req, r.code, r.remark))
}

/// The broker's [`Processor`].
pub(crate) struct BrokerProcessor {
    pub(crate) ctx: Arc<BrokerContext>,
}

/// Request codes clients send without reading the answer although they do not mark them
/// one-way: the C++ client sends END_TRANSACTION and UPDATE_CONSUMER_OFFSET with flag 0 and
/// drops the answer (`compat-notes.md`), so refused busy, a commit or an offset was lost
/// silently. They wait for room instead (see `Processor::answer_unread`).
pub(crate) fn answers_unread(code: i32) -> bool {
    matches!(
        code,
        request_code::END_TRANSACTION | request_code::UPDATE_CONSUMER_OFFSET
    )
}

impl Processor for BrokerProcessor {
    async fn process(
        self: Arc<Self>,
        conn: ConnectionHandle,
        req: RemotingCommand,
    ) -> Option<RemotingCommand> {
        dispatch(&self.ctx, &conn, req).await
    }

    fn answer_unread(&self, cmd: &RemotingCommand) -> bool {
        answers_unread(cmd.code)
    }

    fn on_closed(&self, conn: &ConnectionHandle) {
        let changed = self.ctx.clients.remove_connection(conn.id());
        self.ctx.release_departed_locks();
        self.ctx.notify_consumers_changed(&changed);
    }
}

async fn dispatch(
    ctx: &Arc<BrokerContext>,
    conn: &ConnectionHandle,
    req: RemotingCommand,
) -> Option<RemotingCommand> {
    use request_code as rc;
    // The access key a producer or consumer is registered under (transaction checks go
    // only to accounts that may publish to the transaction's topic).
    let access_key = match crate::acl::authorize(&ctx.cfg.acl, conn.remote_addr(), &req) {
        Ok(key) => key,
        Err(denied) => {
            let reject = Reject::new(sluice_protocol::response_code::NO_PERMISSION, denied.0);
            return Some(respond(&req, Err(reject)));
        }
    };
    let result = match req.code {
        rc::SEND_MESSAGE | rc::SEND_MESSAGE_V2 | rc::SEND_BATCH_MESSAGE => {
            send::send(ctx, conn, &req, access_key).await
        }
        rc::PULL_MESSAGE | rc::LITE_PULL_MESSAGE => return pull::pull(ctx, conn, req).await,
        rc::QUERY_CONSUMER_OFFSET => offset::query_consumer_offset(ctx, &req),
        rc::UPDATE_CONSUMER_OFFSET => offset::update_consumer_offset(ctx, &req),
        rc::GET_MAX_OFFSET => offset::max_offset(ctx, &req),
        rc::GET_MIN_OFFSET => offset::min_offset(ctx, &req),
        rc::SEARCH_OFFSET_BY_TIMESTAMP => offset::search_by_timestamp(ctx, &req),
        rc::GET_EARLIEST_MSG_STORETIME => offset::earliest_store_time(ctx, &req),
        rc::HEART_BEAT => client::heartbeat(ctx, conn, &req, access_key),
        rc::UNREGISTER_CLIENT => client::unregister(ctx, conn, &req),
        rc::GET_CONSUMER_LIST_BY_GROUP => client::consumer_list(ctx, &req),
        rc::LOCK_BATCH_MQ => client::lock(ctx, &req),
        rc::UNLOCK_BATCH_MQ => client::unlock(ctx, &req),
        rc::QUERY_MESSAGE => query::query_message(ctx, &req).await,
        rc::VIEW_MESSAGE_BY_ID => query::view_by_id(ctx, conn.remote_addr(), &req),
        rc::CONSUMER_SEND_MSG_BACK => retry::send_back(ctx, conn.remote_addr(), &req).await,
        rc::UPDATE_AND_CREATE_TOPIC => admin::create_topic(ctx, &req).await,
        GET_ALL_TOPIC_CONFIG => admin::all_topic_config(ctx, &req),
        rc::GET_CONSUME_STATS => progress::consume_stats(ctx, &req),
        rc::QUERY_TOPIC_CONSUME_BY_WHO => progress::consumed_by(ctx, &req),
        rc::GET_TOPIC_STATS_INFO => progress::topic_stats(ctx, &req),
        rc::GET_CONSUMER_CONNECTION_LIST => connections::consumer_connections(ctx, &req),
        rc::GET_PRODUCER_CONNECTION_LIST => connections::producer_connections(ctx, &req),
        rc::GET_BROKER_RUNTIME_INFO => runtime::runtime_info(ctx, &req),
        rc::INVOKE_BROKER_TO_RESET_OFFSET => connections::reset_offset(ctx, &req),
        test_hooks::PANIC_REQUEST_CODE if test_hooks::ENABLED.load(Ordering::Relaxed) => {
            panic!("test hook: deliberate handler panic")
        }
        test_hooks::SLOW_REQUEST_CODE if test_hooks::ENABLED.load(Ordering::Relaxed) => {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            Ok(reply::ok(&req))
        }
        test_hooks::BRIEF_REQUEST_CODE if test_hooks::ENABLED.load(Ordering::Relaxed) => {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            Ok(reply::ok(&req))
        }
        code => match ctx.handlers.get(&code) {
            Some(ext) => return ext.handle(conn.clone(), req).await,
            None => Ok(reply::not_supported(&req)),
        },
    };
    Some(respond(&req, result))
}
