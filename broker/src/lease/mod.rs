//! Lease-based consumption (SQS-style receive / ack / nack / visibility), the consumer model
//! of the HTTP facade, with RocketMQ's retry and dead-letter policy.
//!
//! ## Model
//! - **Competing consumers**: every receiver of a group shares every queue of the topic. A
//!   receive leases up to `max` entries nobody holds, each with a fresh receipt, for a
//!   visibility timeout; with nothing available it long-polls (woken by the store's dispatch
//!   notifications, a failed hand-back, or broker shutdown).
//! - **Receipts** ([`receipt`]) are opaque base64url strings naming group, queue, offset, the
//!   broker run and a per-run delivery generation, plus a keyed-hash token. Every delivery
//!   gets a new one. A receipt whose delivery is over is refused explicitly: `AlreadyAcked`,
//!   `AlreadyNacked`, or `ReceiptExpired` (the lease ran out, also before the expiry task
//!   handed the message back); an unparsable, forged, forgotten or pre-restart one is
//!   `UnknownReceipt`; another group's is `WrongGroup`. Never a silent success.
//! - **Failure path**: a nack or an expired lease is a failed delivery and goes through
//!   [`crate::retry::send_back`], exactly as a TCP consumer's CONSUMER_SEND_MSG_BACK: a copy
//!   in `%RETRY%<group>` with the group's back-off (a nack's delay becomes the smallest level
//!   of [`LeaseConfig::nack_levels`] at least that long), or `%DLQ%<group>` after the group's
//!   maximum. Then the original entry is finished.
//! - **Retries**: a receive of topic T also takes the group's retry queue entries whose
//!   `RETRY_TOPIC` is T (`delivery_count` = reconsume times + 1). The retry queue is per group,
//!   not per topic, so its cursor keeps retries of other topics aside (open, waiting, bounded
//!   by `max_parked_retries`) instead of skipping them; its committed offset stays below every
//!   entry kept aside, so nothing is lost across restarts.
//! - **Offsets**: each queue's committed offset is the lowest unfinished entry (acked, handed
//!   back and filtered entries are finished), committed with the consumer offsets. After a
//!   restart, leased-but-unacked messages are delivered again (at-least-once) and old receipts
//!   are unknown. A group new to a queue starts at its committed offset if any, else at the
//!   queue's **minimum** offset: it sees what was produced before its first receive (for a
//!   young queue this is what RocketMQ's CONSUME_FROM_LAST_OFFSET does too).
//! - **Tags**: a receive's tag expression (`*`, `a||b`) filters; entries that do not pass are
//!   finished for the group, as RocketMQ's subscription filtering does, so a group should keep
//!   one expression per topic.
//! - **Bounds**: every count a book keeps has a per-group bound and a broker-wide one
//!   (`max_inflight_total`, `max_parked_retries_total`, `remembered_receipts_total`), counted
//!   by the books themselves (`state::Totals`; [`LeaseService::totals`] reads them), so the
//!   memory of all books together stays within about twice those, whatever `max_groups` is
//!   (past the waiting bound a group below its share may still keep a retry aside, and a
//!   failed hand-back always waits).
//! - **Expiry**: a background task (started on first use, stopped at shutdown) hands back up
//!   to `max_expired_per_tick` expired leases every `expiry_tick`.
//!
//! ## Known limits
//! - A compressed body (sysFlag bit 0, Java clients compress bodies over 4 KiB) is delivered
//!   inflated, and counts inflated against `max_receive_bytes`; one that does not inflate
//!   (damaged, or over 64 MiB) is delivered as stored with [`Delivery::compressed`] set.
//! - HTTP receivers and TCP consumers must not share a group name: both commit the same
//!   offsets.
//! - The lease book lives in memory, keyed per broker instance in a process-wide registry
//!   (the broker context has no slot for it).
//!
//! Layout: `config` ([`LeaseConfig`]), `receipt`, `state` (the book), `receive` (taking
//! entries), `settle` (ack, nack, extend, expiry), `decode` (record → [`Delivery`]).

mod config;
mod decode;
pub(crate) mod receipt;
mod receive;
mod settle;
pub(crate) mod state;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::futures::Notified;
use tokio::time::Instant;

pub use config::LeaseConfig;

use crate::broker::context::BrokerContext;
use crate::retry::RetryError;
use receive::{Plan, TagFilter};
use state::LeaseState;

/// A long poll looks again at least this often, whatever the wake-ups say.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What every group's lease book holds together, against the `*_total` bounds of
/// [`LeaseConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTotals {
    /// Leases held (and room reserved by receives collecting right now).
    pub in_flight: usize,
    /// Entries waiting: retries kept aside, failed hand-backs.
    pub waiting: usize,
    /// Finished receipts remembered.
    pub remembered_receipts: usize,
}

/// One receive.
#[derive(Debug, Clone)]
pub struct ReceiveRequest {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Most messages (1 ..= `max_per_receive`).
    pub max: usize,
    /// Long-poll time when nothing is available (at most `max_wait`; zero = answer at once).
    pub wait: Duration,
    /// Lease time (`min_visibility` ..= `max_visibility`).
    pub visibility: Duration,
    /// Tag expression: `None` or `*` for all, else `a||b`.
    pub tag: Option<String>,
}

/// One leased message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Needed to ack, nack or extend this delivery; unique per delivery.
    pub receipt: String,
    /// The client message id (`UNIQ_KEY`, stable across retries), else the offset message id.
    pub msg_id: String,
    /// The original topic (also for a retried message).
    pub topic: String,
    /// Queue the entry was leased from (for a retry: queue 0 of `%RETRY%<group>`).
    pub queue_id: i32,
    /// Offset in that queue.
    pub queue_offset: u64,
    /// Commit-log offset of the record.
    pub phys_offset: u64,
    /// The body as stored.
    pub body: Bytes,
    /// True when the body is still compressed (see the module docs).
    pub compressed: bool,
    /// `TAGS`.
    pub tags: Option<String>,
    /// `KEYS`, split.
    pub keys: Vec<String>,
    /// The user's properties (system keys removed), in stored order.
    pub properties: Vec<(String, String)>,
    /// 1 on the first delivery; reconsume times + 1 for a retry.
    pub delivery_count: u32,
    /// Producer timestamp, epoch ms.
    pub born_ms: i64,
    /// Store timestamp of this record, epoch ms.
    pub stored_ms: i64,
}

/// Longest tag expression a receive takes (`a||b||...`), in bytes: far above any real
/// subscription, and it bounds the per-message matching done under the group's lock.
pub const MAX_TAG_EXPRESSION: usize = 4096;

/// Why a lease operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// A receive for a new group while `max_groups` groups hold lease books and none of them
    /// is idle (see [`LeaseConfig::max_groups`]).
    #[error("{0} consumer groups already receive here ([http] max_receive_groups), none idle; retry later or reuse a group")]
    TooManyGroups(usize),
    /// The group has no committed offsets in the topic (or its retry topic) and the broker's
    /// table of them is full (`[broker] max_consumer_offsets`): nothing is leased that could
    /// not be acknowledged for good.
    #[error("{0}")]
    OffsetsFull(String),
    /// The topic does not exist.
    #[error("topic {0} does not exist")]
    TopicNotFound(String),
    /// The topic cannot be consumed (system topic, or not readable).
    #[error("topic {0} cannot be consumed")]
    NotConsumable(String),
    /// The group name cannot name a retry topic (`[%|a-zA-Z0-9_-]`, at most 120 bytes).
    #[error("invalid consumer group {0:?}: [%|a-zA-Z0-9_-], at most 120 bytes")]
    InvalidGroup(String),
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
    /// Not a receipt of this broker run (unparsable, forged, forgotten, or before a restart).
    #[error("unknown receipt")]
    UnknownReceipt,
    /// The lease ran out; the message is or will be delivered again.
    #[error("the lease of this receipt expired; the message is delivered again")]
    ReceiptExpired,
    /// The delivery was already acknowledged.
    #[error("this delivery was already acknowledged")]
    AlreadyAcked,
    /// The delivery was already nacked.
    #[error("this delivery was already nacked")]
    AlreadyNacked,
    /// The receipt belongs to another consumer group.
    #[error("the receipt belongs to another consumer group")]
    WrongGroup,
    /// The failed message could not be copied to the retry topic or DLQ; it will be
    /// delivered again.
    #[error("the message could not be handed back: {0}")]
    HandBack(RetryError),
}

/// Receive, ack, nack and visibility for consumer groups. Cheap to clone; get it from
/// [`crate::BrokerServices::leases`].
#[derive(Clone)]
pub struct LeaseService {
    ctx: Arc<BrokerContext>,
    state: Arc<LeaseState>,
}

impl std::fmt::Debug for LeaseService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseService")
            .field("broker", &self.ctx.cfg.broker_name)
            .finish_non_exhaustive()
    }
}

/// The lease service of a broker (its state is created on first use).
pub(crate) fn service(ctx: &Arc<BrokerContext>) -> LeaseService {
    let state = Arc::clone(ctx.leases.get_or_init(|| Arc::new(LeaseState::new())));
    LeaseService {
        ctx: Arc::clone(ctx),
        state,
    }
}

impl LeaseService {
    /// The limits in force.
    pub fn config(&self) -> &LeaseConfig {
        &self.ctx.cfg.lease
    }

    /// Leases up to `max` messages of the topic (and the group's retries of it), waiting up to
    /// `wait` for one to arrive. An empty result is not an error.
    #[tracing::instrument(skip_all, fields(group = %req.group, topic = %req.topic, max = req.max))]
    pub async fn receive(&self, req: ReceiveRequest) -> Result<Vec<Delivery>, LeaseError> {
        let plan = self.plan(&req)?;
        let max_groups = self.ctx.cfg.lease.max_groups;
        let offsets = &self.ctx.offsets;
        let admitted = self.state.admit(&plan.group, max_groups, |gone| {
            offsets.release_empty_of(gone);
        });
        let Some(book) = admitted else {
            return Err(LeaseError::TooManyGroups(max_groups));
        };
        self.reserve_offsets(&plan)?;
        self.ensure_expiry_task();
        let got = receive::collect(&self.ctx, &self.state, &plan, &book);
        if !got.is_empty() || req.wait.is_zero() || self.ctx.shutting_down() {
            return Ok(got);
        }
        Ok(self
            .long_poll(&plan, &book, Instant::now() + req.wait)
            .await)
    }

    /// Makes sure the group can commit in the topic and its retry topic before anything is
    /// leased (see [`OffsetManager::reserve`]); a half-made reservation is taken back.
    fn reserve_offsets(&self, plan: &Plan) -> Result<(), LeaseError> {
        let offsets = &self.ctx.offsets;
        let full = |e: crate::offsets::OffsetsFull| LeaseError::OffsetsFull(e.to_string());
        let made = offsets.reserve(&plan.group, &plan.topic).map_err(full)?;
        if let Err(e) = offsets.reserve(&plan.group, &plan.retry_topic) {
            if made {
                offsets.release_reserved(&plan.group, &plan.topic);
            }
            return Err(full(e));
        }
        Ok(())
    }

    /// Acknowledges deliveries (one result per receipt).
    pub fn ack(&self, group: &str, receipts: &[String]) -> Vec<Result<(), LeaseError>> {
        settle::ack(&self.ctx, &self.state, group, receipts)
    }

    /// Hands deliveries back as failed: to `%RETRY%<group>` after `delay` (mapped onto
    /// [`LeaseConfig::nack_levels`]) or the group's back-off when `None`, or to the DLQ after
    /// the group's maximum.
    pub async fn nack(
        &self,
        group: &str,
        receipts: &[String],
        delay: Option<Duration>,
    ) -> Vec<Result<(), LeaseError>> {
        let level = self.ctx.cfg.lease.nack_level(delay);
        // On a task of its own: a nack ends its leases, then copies the messages back. Dropped
        // in between (an HTTP handler whose client disconnects), its entries would stay
        // "being handed back", neither redelivered nor finished, and hold the group's
        // committed offset on that queue until a restart.
        let (ctx, state) = (Arc::clone(&self.ctx), Arc::clone(&self.state));
        let (group, receipts) = (group.to_owned(), receipts.to_vec());
        let n = receipts.len();
        let work = async move { settle::nack(&ctx, &state, &group, &receipts, level).await };
        // In the caller's span, so what the hand-back logs carries the HTTP request's id.
        match tokio::spawn(tracing::Instrument::in_current_span(work)).await {
            Ok(results) => results,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only when the runtime shuts down: the leases run out and redeliver after a restart.
            Err(_) => (0..n)
                .map(|_| {
                    Err(LeaseError::HandBack(RetryError::Refused {
                        code: sluice_protocol::response_code::SYSTEM_BUSY,
                        remark: "the broker is shutting down".into(),
                    }))
                })
                .collect(),
        }
    }

    /// Sets the leases' remaining time to `visibility` (at most `max_visibility` after the
    /// receive).
    pub fn extend(
        &self,
        group: &str,
        receipts: &[String],
        visibility: Duration,
    ) -> Vec<Result<(), LeaseError>> {
        settle::extend(&self.ctx, &self.state, group, receipts, visibility)
    }

    /// Leases currently held by a group.
    pub fn in_flight(&self, group: &str) -> usize {
        self.state
            .existing(group)
            .map_or(0, |g| g.lock().leases.len())
    }

    /// What every group's lease book holds together (the broker-wide bounds' counts).
    pub fn totals(&self) -> LeaseTotals {
        let t = &self.state.totals;
        LeaseTotals {
            in_flight: t.leases(),
            waiting: t.waiting(),
            remembered_receipts: t.remembered(),
        }
    }

    /// Hands back expired leases now instead of at the next tick; returns how many.
    pub async fn expire_now(&self) -> usize {
        settle::expire_once(&self.ctx, &self.state).await
    }

    fn plan(&self, req: &ReceiveRequest) -> Result<Plan, LeaseError> {
        let cfg = &self.ctx.cfg.lease;
        if req.max == 0 || req.max > cfg.max_per_receive {
            return Err(LeaseError::Invalid(format!(
                "max must be within 1 and {}",
                cfg.max_per_receive
            )));
        }
        if req.wait > cfg.max_wait {
            return Err(LeaseError::Invalid(format!(
                "wait must be at most {:?}",
                cfg.max_wait
            )));
        }
        let tag_len = req.tag.as_deref().map_or(0, str::len);
        if tag_len > MAX_TAG_EXPRESSION {
            // Every scanned message is matched against each tag, under the group's lock.
            return Err(LeaseError::Invalid(format!(
                "tag expression is {tag_len} bytes, more than {MAX_TAG_EXPRESSION}"
            )));
        }
        check_visibility(cfg, req.visibility)?;
        let retry_topic = crate::topic::retry_topic(&req.group);
        // Its retry topic must be one the broker creates (see `topic::RetryTopicRefused`): a
        // longer group could receive, but never hand a message back.
        if req.group.is_empty()
            || crate::topic::validate_name(&retry_topic).is_err()
            || crate::topic::check_creatable_retry(&retry_topic).is_err()
        {
            return Err(LeaseError::InvalidGroup(req.group.clone()));
        }
        let queues = self.readable_queues(&req.topic)?;
        Ok(Plan {
            group: req.group.clone(),
            topic: req.topic.clone(),
            retry_topic,
            queues,
            filter: TagFilter::parse(req.tag.as_deref()),
            visibility: req.visibility,
            max: req.max,
        })
    }

    fn readable_queues(&self, topic: &str) -> Result<i32, LeaseError> {
        use sluice_protocol::remoting::body::perm;
        let not_consumable = || LeaseError::NotConsumable(topic.to_owned());
        if crate::topic::is_not_consumable(topic) || crate::topic::is_retry_or_dlq(topic) {
            return Err(not_consumable());
        }
        let cfg = self
            .ctx
            .topics
            .get(topic)
            .ok_or_else(|| LeaseError::TopicNotFound(topic.to_owned()))?;
        if !perm::is_readable(cfg.perm) {
            return Err(not_consumable());
        }
        Ok(cfg.read_queue_nums.max(0))
    }

    /// Waits for entries: dispatches to any source queue, a failed hand-back, the deadline or
    /// shutdown, looking again after each wake-up (bounded by the deadline).
    async fn long_poll(
        &self,
        plan: &Plan,
        book: &parking_lot::Mutex<state::Group>,
        deadline: Instant,
    ) -> Vec<Delivery> {
        let subs: Vec<_> = plan
            .sources()
            .iter()
            .map(|(t, q)| self.ctx.waiters.subscribe(t, *q))
            .collect();
        let mut shutdown = self.ctx.shutdown.clone();
        loop {
            // Enabled before looking, so an arrival in between still wakes us.
            let mut wakes: Vec<Pin<Box<Notified<'_>>>> = subs
                .iter()
                .map(|s| Box::pin(s.notify().notified()))
                .chain(std::iter::once(Box::pin(self.state.changed.notified())))
                .collect();
            for w in &mut wakes {
                w.as_mut().enable();
            }
            let got = receive::collect(&self.ctx, &self.state, plan, book);
            let now = Instant::now();
            if !got.is_empty() || now >= deadline || self.ctx.shutting_down() {
                return got;
            }
            tokio::select! {
                () = any_of(&mut wakes) => {}
                () = tokio::time::sleep((deadline - now).min(RECHECK_INTERVAL)) => {}
                _ = shutdown.wait_for(|s| *s) => {}
            }
        }
    }

    /// Starts the expiry task once per broker run. It holds the context weakly (a stopped
    /// broker's state must be released) and ends at shutdown.
    fn ensure_expiry_task(&self) {
        if self.state.expiry_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.ctx);
        let state = Arc::clone(&self.state);
        let mut stop = self.ctx.shutdown.clone();
        let tick = self.ctx.cfg.lease.expiry_tick;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(tick) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let Some(ctx) = weak.upgrade() else { return };
                if ctx.shutting_down() {
                    return;
                }
                let _guard = ctx.tracker.guard();
                settle::expire_once(&ctx, &state).await;
            }
        });
    }
}

/// Checks a lease time against the limits.
fn check_visibility(cfg: &LeaseConfig, visibility: Duration) -> Result<(), LeaseError> {
    if visibility < cfg.min_visibility || visibility > cfg.max_visibility {
        return Err(LeaseError::Invalid(format!(
            "visibility must be within {:?} and {:?}",
            cfg.min_visibility, cfg.max_visibility
        )));
    }
    Ok(())
}

/// Completes when any of the notifications fires.
async fn any_of(wakes: &mut [Pin<Box<Notified<'_>>>]) {
    std::future::poll_fn(|cx| {
        let mut ready = false;
        for w in wakes.iter_mut() {
            ready |= w.as_mut().poll(cx).is_ready();
        }
        if ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}
