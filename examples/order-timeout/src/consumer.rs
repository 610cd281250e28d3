//! The time-out consumer: a push consumer whose handler is the client's [`Idempotent`]
//! helper around [`Orders::cancel_if_unpaid`], so the dedupe row and the status change commit
//! together and a redelivered time-out changes nothing. Also the forced redelivery (the
//! group's offsets rewound to 0).

use std::time::Duration;

use sluice_client::idempotent::TxHandler;
use sluice_client::{
    ClientConfig, ConsumeFrom, ConsumeResult, ConsumedMessage, Idempotent, Outcome, PullConsumer,
    PushConsumer,
};

use crate::db::{self, Decisions, Orders};
use crate::timeline::Timeline;
use crate::timers::TAG;

/// Starts the time-out consumer of `group` on `topic`, logging what each delivery did.
pub(crate) async fn start<DB: Orders, H: TxHandler<DB>>(
    cfg: &ClientConfig,
    group: &str,
    topic: &str,
    idem: Idempotent<DB, H>,
    decisions: Decisions,
    tl: &Timeline,
) -> anyhow::Result<PushConsumer> {
    let tl = tl.clone();
    let handler = move |m: ConsumedMessage| {
        let (idem, decisions, tl) = (idem.clone(), decisions.clone(), tl.clone());
        async move {
            let order = db::order_of(&m).unwrap_or_else(|_| m.msg_id().to_owned());
            match idem.process(&m).await {
                Ok(Outcome::Processed) => {
                    tl.log(describe(&order, decisions.last_for(&order)));
                    ConsumeResult::Success
                }
                Ok(Outcome::Duplicate) => {
                    tl.log(format!(
                        "time-out consumer: redelivery for {order} skipped (dedupe row exists)"
                    ));
                    ConsumeResult::Success
                }
                Err(e) => {
                    tl.log(format!(
                        "time-out consumer: {order} failed ({e}); broker will retry"
                    ));
                    ConsumeResult::Retry(None)
                }
            }
        }
    };
    Ok(PushConsumer::builder(cfg.clone(), group)
        .subscribe(topic, TAG)
        .consume_from(ConsumeFrom::FirstOffset)
        .long_polling(Duration::from_secs(2))
        .rebalance_interval(Duration::from_secs(1))
        .start(handler)
        .await?)
}

fn describe(order: &str, decision: Option<&str>) -> String {
    let what = match decision {
        Some(db::EV_CANCELLED) => "still unpaid -> order CANCELLED",
        Some(db::EV_IGNORED_PAID) => "already paid -> nothing to do",
        Some(db::EV_IGNORED_CANCELLED) => "already cancelled -> nothing to do",
        _ => "handled",
    };
    format!("time-out consumer: CancelIfUnpaid({order}) delivered: {what}")
}

/// Commits offset 0 on every queue of `topic` for `group` (its consumers are stopped), so
/// the next consumer of the group gets every released time-out again.
pub(crate) async fn rewind(cfg: &ClientConfig, group: &str, topic: &str) -> anyhow::Result<()> {
    let offsets = PullConsumer::builder(cfg.clone(), group).start().await?;
    for mq in offsets.queues(topic).await? {
        offsets.commit(&mq, 0).await?;
    }
    offsets.shutdown().await;
    Ok(())
}
