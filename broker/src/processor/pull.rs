//! PULL_MESSAGE (11) and LITE_PULL_MESSAGE (361), with long polling (§2.3, §9.3).
//!
//! A pull that finds nothing new (PULL_NOT_FOUND) with the SUSPEND bit is parked: its request
//! task ends (freeing the connection's in-flight slot) and a holder task waits for the store's
//! dispatch listener to report a record on that queue, re-running the pull without suspension
//! and answering with the original opaque. It answers 19 with the requested offset when
//! `min(suspendTimeoutMillis, long_poll_max)` passes, and at once on shutdown. Because a parked
//! pull no longer counts against the connection's in-flight budget, parked pulls have budgets
//! of their own: per connection and broker-wide; beyond either the pull is answered
//! SYSTEM_BUSY.
//!
//! Every pull response, refusals included, carries the four required header fields as strings.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_protocol::remoting::body::{heartbeat::EXPRESSION_TYPE_TAG, parse_tags, perm};
use sluice_protocol::remoting::custom::{PullMessageRequestHeader, PullMessageResponseHeader};
use sluice_protocol::remoting::frame::flag;
use sluice_protocol::{java_hash, response_code as code, RemotingCommand};
use sluice_store::{GetResult, GetStatus};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::Reject;
use crate::broker::context::BrokerContext;
use crate::remoting::ConnectionHandle;
use crate::reply;
use crate::stats::Counters;

/// Most messages per pull (Java's in-memory transfer cap).
const MAX_PULL_MSGS: i32 = 32;
/// Most bytes per pull (Java's in-memory transfer cap).
const MAX_PULL_BYTES: usize = 256 * 1024;
/// A parked pull looks at its queue at least this often, whatever the wake-ups say.
const RECHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Which tag codes pass.
#[derive(Debug, Clone)]
enum TagFilter {
    All,
    /// Sorted, without repeats: each entry scanned is a binary search.
    Codes(Vec<i32>),
}

/// Most tags a pull's subscription may name: every pull parses and hashes them, and each
/// entry scanned (up to 16 000 a read, again at each wake-up of a held pull) looks its tag up
/// among them.
const MAX_TAGS: usize = 4096;

/// What a pull needs once its checks passed.
#[derive(Debug, Clone)]
struct Plan {
    filter: TagFilter,
    max_count: usize,
    max_bytes: usize,
}

/// A pull's result, ready to become a response.
struct Outcome {
    code: i32,
    remark: &'static str,
    header: PullMessageResponseHeader,
    body: Bytes,
}

pub(super) async fn pull(
    ctx: &Arc<BrokerContext>,
    conn: &ConnectionHandle,
    req: RemotingCommand,
) -> Option<RemotingCommand> {
    let h = match PullMessageRequestHeader::from_ext(&req.ext_fields) {
        Ok(h) => h,
        Err(e) => return Some(reply::bad_header(&req, &e)),
    };
    let plan = match prepare(ctx, &h) {
        Ok(plan) => plan,
        Err(r) => return Some(refusal(ctx, &req, &h, r)),
    };
    if h.has_commit_offset() {
        // Refused past `max_consumer_offsets` (logged there): the pull itself is served.
        let _ = ctx
            .offsets
            .commit(&h.consumer_group, &h.topic, h.queue_id, h.commit_offset);
    }
    let outcome = execute(ctx, &h, &plan);
    let suspend = Duration::from_millis(u64::try_from(h.suspend_timeout_millis).unwrap_or(0))
        .min(ctx.cfg.long_poll_max);
    if outcome.code == code::PULL_NOT_FOUND && h.is_suspend() && !suspend.is_zero() {
        return park(ctx, conn, req, h, plan, suspend);
    }
    Some(outcome.into_response(&req))
}

/// Topic, queue and subscription checks (§2.3 "Broker checks before reading").
fn prepare(ctx: &BrokerContext, h: &PullMessageRequestHeader) -> Result<Plan, Reject> {
    // A pull commits the group's offset (`commitOffset`): the group name follows the rule
    // UPDATE_CONSUMER_OFFSET's does, or a pull with its own subscription (no heartbeat)
    // stored offsets under any name, megabytes long, for good.
    super::client::check_consumer_group(&h.consumer_group)?;
    if crate::topic::is_not_consumable(&h.topic) {
        return Err(Reject::new(
            code::NO_PERMISSION,
            format!(
                "topic[{}] holds uncommitted or not-yet-due messages and cannot be consumed",
                h.topic
            ),
        ));
    }
    let topic = ctx.topics.get(&h.topic).ok_or_else(|| {
        Reject::new(
            code::TOPIC_NOT_EXIST,
            format!("topic[{}] not exist, apply first please!", h.topic),
        )
    })?;
    if !perm::is_readable(topic.perm) {
        return Err(Reject::new(
            code::NO_PERMISSION,
            format!("the topic[{}] pulling message is forbidden", h.topic),
        ));
    }
    if h.queue_id < 0 || h.queue_id >= topic.read_queue_nums {
        return Err(Reject::new(
            code::INVALID_PARAMETER,
            format!(
                "queueId[{}] is illegal, topic:[{}] topicConfig.readQueueNums:[{}]",
                h.queue_id, h.topic, topic.read_queue_nums
            ),
        ));
    }
    let mut max_bytes = MAX_PULL_BYTES;
    if let Some(b) = h
        .max_msg_bytes
        .and_then(|b| usize::try_from(b).ok())
        .filter(|b| *b > 0)
    {
        max_bytes = max_bytes.min(b);
    }
    Ok(Plan {
        filter: filter_of(ctx, h)?,
        max_count: h.max_msg_nums.clamp(1, MAX_PULL_MSGS) as usize,
        max_bytes,
    })
}

/// The tag filter: from the request's `subscription` with sysFlag bit 2, else from the group's
/// heartbeat-registered subscription. Codes are always recomputed with Java's hash.
fn filter_of(ctx: &BrokerContext, h: &PullMessageRequestHeader) -> Result<TagFilter, Reject> {
    let (expression_type, expression) = if h.has_subscription() {
        let t = h
            .expression_type
            .clone()
            .unwrap_or_else(|| EXPRESSION_TYPE_TAG.to_owned());
        (t, h.subscription.clone().unwrap_or_default())
    } else {
        let sub = registered_subscription(ctx, h)?;
        (sub.expression_type, sub.sub_string)
    };
    if !expression_type.eq_ignore_ascii_case(EXPRESSION_TYPE_TAG) {
        return Err(Reject::new(
            code::SYSTEM_ERROR,
            format!("The broker does not support consumer to filter message by {expression_type}"),
        ));
    }
    let tags = parse_tags(&expression);
    if tags.is_empty() {
        return Ok(TagFilter::All);
    }
    let n = tags.len();
    Reject::unless_at_most(
        code::SUBSCRIPTION_PARSE_FAILED,
        "the subscription",
        n,
        "tags",
        MAX_TAGS,
    )?;
    let mut codes: Vec<i32> = tags.iter().map(|t| java_hash(t)).collect();
    codes.sort_unstable();
    codes.dedup();
    Ok(TagFilter::Codes(codes))
}

fn registered_subscription(
    ctx: &BrokerContext,
    h: &PullMessageRequestHeader,
) -> Result<sluice_protocol::remoting::body::SubscriptionData, Reject> {
    let Some(sub) = ctx.clients.subscription(&h.consumer_group, &h.topic) else {
        let remark = if ctx.clients.has_consumer_group(&h.consumer_group) {
            format!(
                "the consumer's subscription not exist, group: {} topic: {}",
                h.consumer_group, h.topic
            )
        } else {
            format!(
                "the consumer's group info not exist, group: {}",
                h.consumer_group
            )
        };
        return Err(Reject::new(code::SUBSCRIPTION_NOT_EXIST, remark));
    };
    if sub.sub_version < h.sub_version {
        return Err(Reject::new(
            code::SUBSCRIPTION_NOT_LATEST,
            format!(
                "the consumer's subscription not latest, group: {}",
                h.consumer_group
            ),
        ));
    }
    Ok(sub)
}

/// Reads from the store and maps its status to a response code and `nextBeginOffset`.
fn execute(ctx: &BrokerContext, h: &PullMessageRequestHeader, plan: &Plan) -> Outcome {
    let Ok(offset) = u64::try_from(h.queue_offset) else {
        let min = ctx.store.min_offset(&h.topic, h.queue_id);
        let max = ctx.store.max_offset(&h.topic, h.queue_id);
        return Outcome::empty(code::PULL_OFFSET_MOVED, "OFFSET_TOO_SMALL", min, min, max);
    };
    let filter_fn;
    let filter: Option<&dyn Fn(i64) -> bool> = match &plan.filter {
        TagFilter::All => None,
        TagFilter::Codes(codes) => {
            filter_fn = move |tags_code: i64| codes.binary_search(&(tags_code as i32)).is_ok();
            Some(&filter_fn)
        }
    };
    let r = ctx.store.get_messages(
        &h.topic,
        h.queue_id,
        offset,
        plan.max_count,
        plan.max_bytes,
        filter,
    );
    let (code, remark, next) = map_status(&r, offset);
    if code != code::SUCCESS {
        return Outcome::empty(code, remark, next, r.min_offset, r.max_offset);
    }
    Counters::add(&ctx.counters.messages_pulled, r.messages.len() as u64);
    let mut outcome = Outcome::empty(code, remark, next, r.min_offset, r.max_offset);
    outcome.body = concat(&r);
    outcome
}

/// The remark of a pull whose every record was filtered out; [`skipped_to`] recognises the
/// outcome by this constant, so the two cannot drift apart.
const NO_MATCHED: &str = "NO_MATCHED_MESSAGE";

/// §2.3's table. A caught-up consumer on a queue whose messages were all deleted is told 19
/// (so it long-polls), not "offset moved"; one below them (a new consumer at 0, say) is told
/// to move to where they ended, as RocketMQ's OFFSET_TOO_SMALL does. Told 19 there, it stayed
/// at 0, its lag counting every deleted message, until the next message arrived.
fn map_status(r: &GetResult, offset: u64) -> (i32, &'static str, u64) {
    match r.status {
        GetStatus::Found => (code::SUCCESS, "FOUND", r.next_offset),
        GetStatus::NoMatchedMessage => (code::PULL_RETRY_IMMEDIATELY, NO_MATCHED, r.next_offset),
        GetStatus::NoMessageInQueue if offset == r.max_offset => {
            (code::PULL_NOT_FOUND, "NO_MESSAGE_IN_QUEUE", offset)
        }
        GetStatus::NoMessageInQueue if offset < r.min_offset => {
            (code::PULL_OFFSET_MOVED, "OFFSET_TOO_SMALL", r.min_offset)
        }
        GetStatus::NoMessageInQueue => (
            code::PULL_OFFSET_MOVED,
            "NO_MESSAGE_IN_QUEUE",
            r.next_offset,
        ),
        GetStatus::NoMatchedLogicQueue if offset == 0 => {
            (code::PULL_NOT_FOUND, "NO_MATCHED_LOGIC_QUEUE", 0)
        }
        GetStatus::NoMatchedLogicQueue => (code::PULL_OFFSET_MOVED, "NO_MATCHED_LOGIC_QUEUE", 0),
        GetStatus::OffsetTooSmall => (code::PULL_OFFSET_MOVED, "OFFSET_TOO_SMALL", r.next_offset),
        GetStatus::OffsetOverflowOne => (code::PULL_NOT_FOUND, "OFFSET_OVERFLOW_ONE", offset),
        // Past the end of a queue that still starts at 0 (its data was replaced, or an async
        // flush crash cut it short): start again at 0, as RocketMQ 4.x does, so the messages
        // now in it are delivered; jumping to its end would skip them.
        GetStatus::OffsetOverflowBadly if r.min_offset == 0 => {
            (code::PULL_OFFSET_MOVED, "OFFSET_OVERFLOW_BADLY", 0)
        }
        GetStatus::OffsetOverflowBadly => (
            code::PULL_OFFSET_MOVED,
            "OFFSET_OVERFLOW_BADLY",
            r.next_offset,
        ),
    }
}

/// The records back to back; one record is passed on without copying.
fn concat(r: &GetResult) -> Bytes {
    if let [one] = r.messages.as_slice() {
        return one.bytes.clone();
    }
    let total = r.messages.iter().map(|m| m.bytes.len()).sum();
    let mut body = BytesMut::with_capacity(total);
    for m in &r.messages {
        body.extend_from_slice(&m.bytes);
    }
    body.freeze()
}

impl Outcome {
    fn empty(code: i32, remark: &'static str, next: u64, min: u64, max: u64) -> Self {
        Self {
            code,
            remark,
            header: PullMessageResponseHeader {
                suggest_which_broker_id: 0,
                next_begin_offset: next as i64,
                min_offset: min as i64,
                max_offset: max as i64,
                ..PullMessageResponseHeader::default()
            },
            body: Bytes::new(),
        }
    }

    fn into_response(self, req: &RemotingCommand) -> RemotingCommand {
        RemotingCommand::response_to(req, self.code, Some(self.remark.to_owned()))
            .with_ext(self.header.to_ext())
            .with_body(self.body)
    }
}

/// A refused pull, still with the four required fields (`nextBeginOffset` = the request's).
fn refusal(
    ctx: &BrokerContext,
    req: &RemotingCommand,
    h: &PullMessageRequestHeader,
    r: Reject,
) -> RemotingCommand {
    let header = PullMessageResponseHeader {
        suggest_which_broker_id: 0,
        next_begin_offset: h.queue_offset,
        min_offset: ctx.store.min_offset(&h.topic, h.queue_id) as i64,
        max_offset: ctx.store.max_offset(&h.topic, h.queue_id) as i64,
        ..PullMessageResponseHeader::default()
    };
    reply::error(req, r.code, r.remark).with_ext(header.to_ext())
}

/// Parks a pull; the holder task answers later on `conn` with the request's opaque.
fn park(
    ctx: &Arc<BrokerContext>,
    conn: &ConnectionHandle,
    req: RemotingCommand,
    h: PullMessageRequestHeader,
    plan: Plan,
    suspend: Duration,
) -> Option<RemotingCommand> {
    // Past the broker-wide cap (`max_parked_pulls`) a pull is answered SYSTEM_BUSY, which
    // clients retry after a pause (1 s for C++, 3 s for Java) rather than at once. Each
    // connection also has its own cap, so no single one takes this whole pool.
    // Reserved in one step: a check and a later increment let concurrent pulls all pass.
    let cap = ctx.cfg.max_parked_pulls as u64;
    let reserved = ctx.counters.parked_pulls.fetch_update(
        std::sync::atomic::Ordering::AcqRel,
        std::sync::atomic::Ordering::Acquire,
        |n| (n < cap).then_some(n + 1),
    );
    if reserved.is_err() {
        let remark = format!("[OVERLOAD]system busy, {cap} pulls already parked");
        return Some(reply::error(&req, code::SYSTEM_BUSY, remark));
    }
    let Some(slot) = ctx.parked.try_take(conn.id()) else {
        Counters::dec(&ctx.counters.parked_pulls);
        let remark = format!(
            "[OVERLOAD]system busy, {} pulls already parked on this connection",
            ctx.parked.max()
        );
        return Some(reply::error(&req, code::SYSTEM_BUSY, remark));
    };
    let stub = RemotingCommand {
        code: req.code,
        opaque: req.opaque,
        flag: req.flag,
        ..RemotingCommand::default()
    };
    let guard = ctx.tracker.guard();
    let (ctx, conn) = (Arc::clone(ctx), conn.clone());
    // A parked pull's request frame no longer counts against the connection's byte budget:
    // keep only what the wait reads (topic, queue, offset; the filter is in `plan`), not a
    // subscription string of up to a frame's size, times thousands of parked pulls.
    drop(req);
    let h = PullMessageRequestHeader {
        subscription: None,
        expression_type: None,
        ..h
    };
    tokio::spawn(async move {
        let deadline = Instant::now() + suspend;
        let answering = Arc::clone(&slot.answering);
        let holder = tokio::spawn(hold(
            Arc::clone(&ctx),
            conn.clone(),
            h,
            plan,
            deadline,
            answering,
        ));
        // The permit is held until the answer is queued (below), then dropped with it.
        let mut permit = None;
        let mut response = match holder.await {
            Ok((outcome, p)) => {
                permit = p;
                outcome.into_response(&stub)
            }
            Err(_) => {
                Counters::inc(&ctx.counters.handler_panics);
                tracing::error!(remote = %conn.remote_addr(), "parked pull panicked");
                reply::error(
                    &stub,
                    code::SYSTEM_ERROR,
                    "internal error while holding a pull",
                )
            }
        };
        if !stub.is_oneway() {
            response.flag |= flag::RESPONSE;
            let _ = conn.send(response).await;
        }
        drop(permit);
        // Only now: shutdown waits for this count to reach zero before closing connections.
        Counters::dec(&ctx.counters.parked_pulls);
        drop(slot);
        drop(guard);
    });
    None
}

/// Waits for a record on the queue (or the deadline, shutdown, or the client leaving) and runs
/// the pull again each time; the first result other than PULL_NOT_FOUND is the answer.
///
/// Records its tag filter skips move the pull on past them and it stays parked, as RocketMQ's
/// hold service does by matching the tag before it wakes a pull: answering each such wake-up
/// with an empty PULL_RETRY_IMMEDIATELY cost a tag-filtered consumer one round trip per
/// dispatched batch of other tags.
///
/// Each look is made holding one of the connection's answering permits, kept with the answer
/// until it is queued: only that many answers of one connection's parked pulls are held at once.
async fn hold(
    ctx: Arc<BrokerContext>,
    conn: ConnectionHandle,
    mut h: PullMessageRequestHeader,
    plan: Plan,
    deadline: Instant,
    answering: Arc<Semaphore>,
) -> (Outcome, Option<OwnedSemaphorePermit>) {
    let sub = ctx.waiters.subscribe(&h.topic, h.queue_id);
    let mut shutdown = ctx.shutdown.clone();
    loop {
        // Enabled before the check, so a record dispatched in between still wakes us.
        let mut notified = pin!(sub.notify().notified());
        notified.as_mut().enable();
        let permit = Arc::clone(&answering).acquire_owned().await.ok();
        let outcome = execute(&ctx, &h, &plan);
        let now = Instant::now();
        let skipped = skipped_to(&outcome, &h);
        if (outcome.code != code::PULL_NOT_FOUND && skipped.is_none())
            || now >= deadline
            || ctx.shutting_down()
            || conn.is_closed()
        {
            return (outcome, permit);
        }
        drop(permit);
        if let Some(next) = skipped {
            h.queue_offset = next;
            // Many parked pulls may chase a long run of other tags: let other tasks run.
            tokio::task::yield_now().await;
            continue;
        }
        let wait = (deadline - now).min(RECHECK_INTERVAL);
        let shutdown_gone = tokio::select! {
            () = notified => false,
            () = tokio::time::sleep(wait) => false,
            () = conn.closed() => false,
            r = shutdown.wait_for(|s| *s) => r.is_err(),
        };
        // The broker's shutdown sender is gone (its handle dropped without a shutdown): the
        // wait would return at once from now on and the loop would spin until the deadline.
        if shutdown_gone {
            return (outcome, None);
        }
    }
}

/// The offset a pull moved on to when every record it looked at was filtered out.
fn skipped_to(outcome: &Outcome, h: &PullMessageRequestHeader) -> Option<i64> {
    let next = outcome.header.next_begin_offset;
    (outcome.code == code::PULL_RETRY_IMMEDIATELY
        && outcome.remark == NO_MATCHED
        && next > h.queue_offset)
        .then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty(min: u64, max: u64, next: u64) -> GetResult {
        GetResult {
            status: GetStatus::NoMessageInQueue,
            next_offset: next,
            min_offset: min,
            max_offset: max,
            messages: Vec::new(),
        }
    }

    #[test]
    fn an_empty_queue_keeps_a_caught_up_consumer_and_moves_the_others() {
        // Never written: a new consumer at 0 waits; one elsewhere moves to 0 (RocketMQ).
        assert_eq!(
            map_status(&empty(0, 0, 0), 0),
            (19, "NO_MESSAGE_IN_QUEUE", 0)
        );
        assert_eq!(map_status(&empty(0, 0, 0), 5).0, code::PULL_OFFSET_MOVED);
        assert_eq!(map_status(&empty(0, 0, 0), 5).2, 0);
        // Every message deleted (min == max == 10): caught up waits, below moves to 10.
        assert_eq!(
            map_status(&empty(10, 10, 10), 10),
            (19, "NO_MESSAGE_IN_QUEUE", 10)
        );
        assert_eq!(
            map_status(&empty(10, 10, 0), 0),
            (code::PULL_OFFSET_MOVED, "OFFSET_TOO_SMALL", 10)
        );
        assert_eq!(map_status(&empty(10, 10, 10), 3).2, 10);
        assert_eq!(
            map_status(&empty(10, 10, 10), 12),
            (code::PULL_OFFSET_MOVED, "NO_MESSAGE_IN_QUEUE", 10)
        );
    }
}
