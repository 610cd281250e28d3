//! Consumers: [`PushConsumer`] (subscriptions, rebalance, handler, retries, offsets) and
//! [`PullConsumer`] (explicit queues and offsets), with what they share.
//!
//! - `push`: [`PushConsumer`] and [`PushConsumerBuilder`]; start and graceful shutdown.
//! - `rebalance`: which queues this member owns, from the broker's consumer list.
//! - `allocate`: [`allocate_averagely`], RocketMQ's default allocation.
//! - `worker`: one task per owned queue: long-polling pulls, concurrent or orderly dispatch.
//! - `retry`: handing a failed message back (CONSUMER_SEND_MSG_BACK, or the client fallback).
//! - `process_queue`: in-flight offsets of one queue and its commit point.
//! - `offsets`: committed offsets, kept locally and persisted to brokers.
//! - `remote`: the pull and offset requests.
//! - `pull`: [`PullConsumer`].

mod allocate;
mod offsets;
mod process_queue;
mod pull;
mod push;
mod rebalance;
pub(crate) mod remote;
mod retry;
mod worker;

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

pub use allocate::allocate_averagely;
pub use pull::{PullConsumer, PullConsumerBuilder};
pub use push::{PushConsumer, PushConsumerBuilder};
pub use remote::{PullResult, PullStatus};

use crate::message::ConsumedMessage;

/// What a handler decided about one message.
///
/// ```
/// use std::time::Duration;
/// use sluice_client::{ConsumeResult, ConsumedMessage};
///
/// fn decide(msg: &ConsumedMessage) -> ConsumeResult {
///     if msg.reconsume_times() < 3 { ConsumeResult::Retry(Some(Duration::from_secs(30))) } else { ConsumeResult::Success }
/// }
/// assert_eq!(decide(&ConsumedMessage::for_tests("T", "x")), ConsumeResult::Retry(Some(Duration::from_secs(30))));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeResult {
    /// Done: the offset may move past it.
    Success,
    /// Deliver it again later. Concurrent consumers hand it back to the broker (retry topic,
    /// then dead-letter queue after the maximum); the delay, if given, is rounded up to a
    /// RocketMQ delay level (default: level 3 + reconsume count). Orderly consumers retry
    /// locally after the delay (default 1 s), blocking the queue.
    Retry(Option<Duration>),
}

/// What a handler may return: a [`ConsumeResult`], or a `Result` whose error means
/// `Retry(None)` (logged).
///
/// ```
/// use sluice_client::{ConsumeResult, IntoConsumeResult};
///
/// assert_eq!(Ok::<(), String>(()).into_consume_result(), ConsumeResult::Success);
/// assert_eq!(Err::<(), _>("db down").into_consume_result(), ConsumeResult::Retry(None));
/// ```
pub trait IntoConsumeResult {
    /// The result.
    fn into_consume_result(self) -> ConsumeResult;
}

impl IntoConsumeResult for ConsumeResult {
    fn into_consume_result(self) -> ConsumeResult {
        self
    }
}

impl<E: Display> IntoConsumeResult for Result<(), E> {
    fn into_consume_result(self) -> ConsumeResult {
        match self {
            Ok(()) => ConsumeResult::Success,
            Err(e) => {
                tracing::warn!(error = %e, "handler failed; the message will be retried");
                ConsumeResult::Retry(None)
            }
        }
    }
}

impl<E: Display> IntoConsumeResult for Result<ConsumeResult, E> {
    fn into_consume_result(self) -> ConsumeResult {
        match self {
            Ok(r) => r,
            Err(e) => Err::<(), E>(e).into_consume_result(),
        }
    }
}

/// Handles one message at a time. A panic counts as `Retry(None)`.
///
/// Closures `Fn(ConsumedMessage) -> impl Future<Output = impl IntoConsumeResult>` implement it.
///
/// ```
/// use sluice_client::{ConsumeResult, ConsumedMessage, MessageHandler};
///
/// fn handler() -> impl MessageHandler {
///     |msg: ConsumedMessage| async move {
///         println!("{} {:?}", msg.msg_id(), msg.body());
///         ConsumeResult::Success
///     }
/// }
/// # let _ = handler();
/// ```
pub trait MessageHandler: Send + Sync + 'static {
    /// Handles `msg`.
    fn handle(&self, msg: ConsumedMessage) -> BoxFuture<'static, ConsumeResult>;
}

impl<F, Fut, R> MessageHandler for F
where
    F: Fn(ConsumedMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoConsumeResult,
{
    fn handle(&self, msg: ConsumedMessage) -> BoxFuture<'static, ConsumeResult> {
        let fut = self(msg);
        async move { fut.await.into_consume_result() }.boxed()
    }
}

/// Where a group with no committed offset starts on a queue.
///
/// ```
/// use sluice_client::ConsumeFrom;
/// let an_hour_ago = 1_700_000_000_000 - 3_600_000;
/// let from = ConsumeFrom::Timestamp(an_hour_ago);
/// assert_ne!(from, ConsumeFrom::default()); // the default is LastOffset
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsumeFrom {
    /// New messages only (RocketMQ's default). Retry topics always start at 0.
    #[default]
    LastOffset,
    /// Everything still stored.
    FirstOffset,
    /// The first message stored at or after this epoch-ms time.
    Timestamp(i64),
}

impl ConsumeFrom {
    pub(crate) fn wire(self) -> sluice_protocol::remoting::body::ConsumeFromWhere {
        use sluice_protocol::remoting::body::ConsumeFromWhere as W;
        match self {
            Self::LastOffset => W::ConsumeFromLastOffset,
            Self::FirstOffset => W::ConsumeFromFirstOffset,
            Self::Timestamp(_) => W::ConsumeFromTimestamp,
        }
    }
}

/// A topic and its tag expression (`*`, or `TagA || TagB`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub(crate) topic: String,
    pub(crate) expression: String,
    /// Tags to keep; empty for all. Brokers filter by tag hash, so this filters again by string.
    pub(crate) tags: Vec<String>,
}

impl Subscription {
    pub(crate) fn new(topic: &str, expression: &str) -> Self {
        let data = sluice_protocol::remoting::body::SubscriptionData::from_expression(
            topic, expression, 0,
        );
        Self {
            topic: topic.to_owned(),
            expression: data.sub_string.clone(),
            tags: data.tags_set,
        }
    }

    /// True when the message passes the tag filter.
    pub(crate) fn matches(&self, msg: &ConsumedMessage) -> bool {
        self.tags.is_empty() || msg.tags().is_some_and(|t| self.tags.iter().any(|x| x == t))
    }
}

/// The retry topic of a consumer group.
pub(crate) fn retry_topic(group: &str) -> String {
    format!("%RETRY%{group}")
}

/// Runs a handler; a panic counts as `Retry(None)`, whether it happens while the handler
/// builds its future (a `parse().unwrap()` before the `async` block) or while the future runs.
/// With a `timeout` (concurrent consumption, as RocketMQ's `consumeTimeout`), a handler still
/// running after it is dropped (cancelled at its next await) and counts as `Retry(None)` too:
/// otherwise it would hold its queue's commit point and a permit forever. Orderly consumption
/// passes none: a slow handler there holds only its own queue, which is the point of the mode.
pub(crate) async fn run_handler(
    handler: &dyn MessageHandler,
    msg: ConsumedMessage,
    timeout: Option<Duration>,
) -> ConsumeResult {
    let msg_id = msg.msg_id().to_owned();
    let panicked = || {
        tracing::error!(msg_id = %msg_id, "handler panicked; the message will be retried");
        ConsumeResult::Retry(None)
    };
    let fut = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle(msg))) {
        Ok(fut) => fut,
        Err(_) => return panicked(),
    };
    let guarded = std::panic::AssertUnwindSafe(fut).catch_unwind();
    let outcome = match timeout {
        Some(t) => tokio::time::timeout(t, guarded).await,
        None => Ok(guarded.await),
    };
    match outcome {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => panicked(),
        Err(_) => {
            tracing::warn!(msg_id = %msg_id, ?timeout, "handler timed out (consume_timeout); it was cancelled and the message will be retried");
            ConsumeResult::Retry(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_filter_on_tag_strings() {
        let sub = Subscription::new("T", "A || B");
        assert_eq!(sub.expression, "A || B");
        let tagged = |t: &str| ConsumedMessage::for_tests("T", "x").with_property("TAGS", t);
        assert!(sub.matches(&tagged("A")));
        assert!(!sub.matches(&tagged("C")));
        assert!(!sub.matches(&ConsumedMessage::for_tests("T", "x")));
        let all = Subscription::new("T", "");
        assert_eq!(all.expression, "*");
        assert!(all.matches(&ConsumedMessage::for_tests("T", "x")));
    }

    #[tokio::test]
    async fn a_panicking_handler_means_retry() {
        let h = |_m: ConsumedMessage| async move {
            if true {
                panic!("handler bug");
            }
            ConsumeResult::Success
        };
        let r = run_handler(&h, ConsumedMessage::for_tests("T", "x"), LONG).await;
        assert_eq!(r, ConsumeResult::Retry(None));
    }

    /// A panic before the handler's future exists (parsing outside the `async` block) used to
    /// escape `run_handler` and kill the queue's worker, stopping the queue for good.
    #[tokio::test]
    async fn a_handler_panicking_before_its_future_means_retry() {
        let h = |m: ConsumedMessage| {
            let n: u32 = std::str::from_utf8(m.body()).unwrap().parse().unwrap();
            async move {
                assert!(n > 0);
                ConsumeResult::Success
            }
        };
        let r = run_handler(&h, ConsumedMessage::for_tests("T", "not a number"), LONG).await;
        assert_eq!(r, ConsumeResult::Retry(None));
        let r = run_handler(&h, ConsumedMessage::for_tests("T", "7"), LONG).await;
        assert_eq!(r, ConsumeResult::Success);
    }

    /// A handler that never finishes is cancelled at the consume timeout and the message is
    /// retried; its future is dropped, not left running.
    #[tokio::test(start_paused = true)]
    async fn a_handler_past_the_consume_timeout_is_cancelled_and_retried() {
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = dropped.clone();
        let h = move |_m: ConsumedMessage| {
            let guard = DropFlag(flag.clone());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                ConsumeResult::Success
            }
        };
        let r = run_handler(
            &h,
            ConsumedMessage::for_tests("T", "x"),
            Some(Duration::from_secs(60)),
        )
        .await;
        assert_eq!(r, ConsumeResult::Retry(None));
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    }

    const LONG: Option<Duration> = Some(Duration::from_secs(3600));

    struct DropFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}
