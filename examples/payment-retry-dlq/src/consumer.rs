//! The payment consumer: a push consumer whose handler is the client's [`Idempotent`] helper
//! (keyed by payment id) around [`Ledger::charge_handler`]. A bank failure rolls the
//! transaction back and answers `Retry`, so the broker parks a retry copy for the group's
//! back-off; past the maximum the broker dead-letters it. The timeline shows every attempt
//! with its delivery number.

use std::time::Duration;

use sluice_client::idempotent::TxHandler;
use sluice_client::{
    ClientConfig, ConsumeFrom, ConsumeResult, ConsumedMessage, Idempotent, Outcome, PushConsumer,
};

use crate::cluster::MAX_RECONSUME;
use crate::db::Ledger;
use crate::timeline::Timeline;

/// Starts the consumer of `group` on `topic`.
pub(crate) async fn start<DB: Ledger, H: TxHandler<DB>>(
    cfg: &ClientConfig,
    group: &str,
    topic: &str,
    idem: Idempotent<DB, H>,
    tl: &Timeline,
) -> anyhow::Result<PushConsumer> {
    let tl = tl.clone();
    let handler = move |m: ConsumedMessage| {
        let (idem, tl) = (idem.clone(), tl.clone());
        async move {
            let result = idem.process(&m).await;
            let (line, answer) = describe(&m, result);
            tl.log(line);
            answer
        }
    };
    Ok(PushConsumer::builder(cfg.clone(), group)
        .subscribe(topic, "*")
        .consume_from(ConsumeFrom::FirstOffset)
        .max_reconsume_times(MAX_RECONSUME.unsigned_abs())
        .long_polling(Duration::from_secs(2))
        .rebalance_interval(Duration::from_secs(1))
        .start(handler)
        .await?)
}

/// The timeline line for one delivery and what to answer the broker.
fn describe(
    m: &ConsumedMessage,
    result: Result<Outcome, sluice_client::idempotent::IdempotencyError>,
) -> (String, ConsumeResult) {
    let id = m.keys().next().unwrap_or("?");
    let delivery = m.reconsume_times() + 1;
    let via = if m.property("SLUICE_REPLAYED_FROM").is_some() {
        " (replayed from the DLQ)"
    } else {
        ""
    };
    match result {
        Ok(Outcome::Processed) => (
            format!("{id} delivery #{delivery}{via}: bank OK -> CHARGED, recorded in the ledger"),
            ConsumeResult::Success,
        ),
        Ok(Outcome::Duplicate) => (
            format!("{id} delivery #{delivery}{via}: already charged (dedupe row) -> skipped"),
            ConsumeResult::Success,
        ),
        Err(e) => {
            let next = if m.reconsume_times() >= MAX_RECONSUME {
                "retries exhausted -> broker dead-letters it"
            } else {
                "broker retries after its back-off"
            };
            (
                format!("{id} delivery #{delivery}{via}: failed, rolled back ({e}) -> {next}"),
                ConsumeResult::Retry(None),
            )
        }
    }
}
