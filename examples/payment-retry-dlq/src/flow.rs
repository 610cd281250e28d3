//! The story, step by step: submit payments, let retries and the DLQ sort them, fix the bank,
//! replay the fixed subset, resubmit some payments, and check the ledger, the bank and the
//! DLQ against the expected outcome.

use std::sync::Arc;

use anyhow::{ensure, Context};
use serde_json::json;
use sluice_client::idempotent::{DedupeKey, TxHandler};
use sluice_client::{ClientConfig, Idempotent, Message, Producer};
use sqlx::Pool;

use crate::bank::Bank;
use crate::cluster::Cluster;
use crate::consumer;
use crate::db::Ledger;
use crate::operator::{DeadLetter, Operator, Replay};
use crate::payment::Payment;
use crate::timeline::Timeline;
use crate::{
    expected_attempts, expected_charges, payments, wait_for, Names, Report, FIXED_CURRENCY,
    RESUBMITTED,
};

/// What the steps share.
struct Ctx<'a, DB: Ledger> {
    pool: Pool<DB>,
    cfg: ClientConfig,
    names: Names,
    bank: Arc<Bank>,
    operator: Operator,
    tl: &'a Timeline,
}

/// The whole flow on one database.
pub(crate) async fn flow<DB: Ledger>(
    pool: Pool<DB>,
    backend: &'static str,
    cluster: &Cluster,
    names: Names,
    tl: &Timeline,
) -> anyhow::Result<Report> {
    DB::setup(&pool).await?;
    tl.log("tables created");
    let c = Ctx {
        pool: pool.clone(),
        cfg: cluster.client_config(),
        names,
        bank: Arc::new(Bank::default()),
        operator: Operator::new(cluster.http_base()?)?,
        tl,
    };
    let producer = Producer::builder(c.cfg.clone()).start().await?;
    for p in payments() {
        submit(&c, &producer, &p, "submitted").await?;
    }
    let idem = Idempotent::with_key(
        pool,
        c.names.group.clone(),
        DedupeKey::FirstKey,
        DB::charge_handler(Arc::clone(&c.bank)),
    );
    let (group, topic) = (&c.names.group, &c.names.topic);
    let payments_consumer = consumer::start(&c.cfg, group, topic, idem.clone(), tl).await?;

    let dead = retries_and_dead_letters(&c, &idem).await?;
    c.bank.fix_chf();
    tl.log(format!(
        "bank deploys a fix: {FIXED_CURRENCY} payments are supported again"
    ));
    let replay = replay_fixed(&c).await?;
    wait_for("the replayed payments to be charged", || {
        let done = idem.processed() >= expected_charges().len() as u64;
        async move { done }
    })
    .await?;
    let second_replay_matched = replay_again(&c).await?;
    resubmit(&c, &producer, &idem).await?;
    producer.shutdown().await;
    payments_consumer.shutdown().await;
    let outcome = Outcome {
        dead,
        replay,
        second_replay_matched,
    };
    finish(c, backend, &idem, outcome).await
}

/// Sends one payment, tagged with its currency and keyed by its id.
async fn submit<DB: Ledger>(
    c: &Ctx<'_, DB>,
    producer: &Producer,
    p: &Payment,
    what: &str,
) -> anyhow::Result<()> {
    let msg = Message::new(c.names.topic.clone(), p.encode())
        .with_tags(p.currency.clone())
        .with_keys([p.id.clone()]);
    let sent = producer
        .send(msg)
        .await
        .with_context(|| format!("submit {}", p.id))?;
    c.tl.log(format!(
        "payment service: {} {what} ({} {} from {}, msg {})",
        p.id, p.amount_cents, p.currency, p.account, sent.msg_id
    ));
    Ok(())
}

/// Waits until every payment that can succeed has (after its retries), and every poison one
/// is in the DLQ; returns the dead letters. A dead letter's `reconsume_times` counts its
/// deliveries: the broker increments it on the way to the DLQ as on the way to a retry.
async fn retries_and_dead_letters<DB: Ledger, H: TxHandler<DB>>(
    c: &Ctx<'_, DB>,
    idem: &Idempotent<DB, H>,
) -> anyhow::Result<Vec<DeadLetter>> {
    let good = payments()
        .iter()
        .filter(|p| p.currency != FIXED_CURRENCY && p.account != "closed")
        .count() as u64;
    let poison = payments().len() - good as usize;
    wait_for("the good and flaky payments to be charged", || {
        let done = idem.processed() >= good;
        async move { done }
    })
    .await?;
    wait_for("the poison payments to reach the DLQ", || {
        let (op, group) = (c.operator.clone(), c.names.group.clone());
        async move { op.waiting(&group).await.is_ok_and(|d| d.len() >= poison) }
    })
    .await?;
    let dead = c.operator.waiting(&c.names.group).await?;
    for d in &dead {
        c.tl.log(format!(
            "DLQ %DLQ%{}: {} [tag {}] given up after {} deliveries{}",
            c.names.group,
            d.payment(),
            d.tag.as_deref().unwrap_or("-"),
            d.reconsume_times,
            d.failure_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ));
    }
    Ok(dead)
}

/// The operator: a dry run first (what would the filter take?), then the throttled replay of
/// the fixed currency's dead letters only.
async fn replay_fixed<DB: Ledger>(c: &Ctx<'_, DB>) -> anyhow::Result<Replay> {
    let group = &c.names.group;
    let dry = json!({"tag": FIXED_CURRENCY, "dry_run": true});
    let task = c.operator.replay(group, dry.clone()).await?;
    let dry_done = c.operator.wait(&task.id, |_| {}).await?;
    c.tl.log(format!(
        "operator: POST /v1/groups/{group}/dlq/replay {dry} -> {} dead letters would be replayed",
        dry_done.matched
    ));
    let selection = json!({"tag": FIXED_CURRENCY, "rate_per_sec": 2});
    let task = c.operator.replay(group, selection.clone()).await?;
    c.tl.log(format!(
        "operator: POST /v1/groups/{group}/dlq/replay {selection} -> task {} {}",
        task.id, task.state
    ));
    let done = c
        .operator
        .wait(&task.id, |r| {
            c.tl.log(format!(
                "operator: GET /v1/replays/{} -> {} (matched {}, replayed {}, {}/s)",
                r.id, r.state, r.matched, r.replayed, r.rate_per_sec
            ));
        })
        .await?;
    ensure!(done.state == "completed", "replay ended {done:?}");
    Ok(done)
}

/// The operator runs the same replay again by mistake: replayed letters are ledgered, so it
/// selects nothing. Returns how many it matched.
async fn replay_again<DB: Ledger>(c: &Ctx<'_, DB>) -> anyhow::Result<u64> {
    let group = &c.names.group;
    let task = c
        .operator
        .replay(group, json!({"tag": FIXED_CURRENCY, "rate_per_sec": 2}))
        .await?;
    let done = c.operator.wait(&task.id, |_| {}).await?;
    c.tl.log(format!(
        "operator: the same replay again -> matched {}, replayed {} (already replayed)",
        done.matched, done.replayed
    ));
    Ok(done.matched)
}

/// The upstream submits some payments a second time (new messages, same payment ids); the
/// consumer skips them without calling the bank.
async fn resubmit<DB: Ledger, H: TxHandler<DB>>(
    c: &Ctx<'_, DB>,
    producer: &Producer,
    idem: &Idempotent<DB, H>,
) -> anyhow::Result<()> {
    let before = idem.duplicates();
    for p in payments()
        .iter()
        .filter(|p| RESUBMITTED.contains(&p.id.as_str()))
    {
        submit(c, producer, p, "submitted AGAIN by the upstream").await?;
    }
    wait_for("the resubmitted payments to be skipped", || {
        let done = idem.duplicates() >= before + RESUBMITTED.len() as u64;
        async move { done }
    })
    .await
}

/// What the middle of the story produced, for the report.
struct Outcome {
    dead: Vec<DeadLetter>,
    replay: Replay,
    second_replay_matched: u64,
}

/// Reads the ledger, the bank and the DLQ, and checks them against the expected outcome.
async fn finish<DB: Ledger, H: TxHandler<DB>>(
    c: Ctx<'_, DB>,
    backend: &'static str,
    idem: &Idempotent<DB, H>,
    o: Outcome,
) -> anyhow::Result<Report> {
    let charges = DB::charges(&c.pool).await?;
    let (bank_charges, bank_attempts) = (c.bank.charges(), c.bank.attempts());
    let waiting = c.operator.waiting(&c.names.group).await?;
    let dlq_waiting = sorted(waiting.iter().map(|d| d.payment().to_owned()));
    c.tl.log(format!("ledger: {charges:?}"));
    c.tl.log(format!(
        "bank: charges {bank_charges:?}, attempts {bank_attempts:?}"
    ));
    c.tl.log(format!("DLQ still waiting: {dlq_waiting:?}"));
    ensure!(charges == expected_charges(), "ledger {charges:?}");
    ensure!(
        bank_charges.len() == charges.len(),
        "the bank charged a payment the ledger lacks, or the reverse: {bank_charges:?}"
    );
    ensure!(
        bank_attempts == expected_attempts(),
        "attempts {bank_attempts:?}"
    );
    let bank_repeats = c.bank.repeats();
    ensure!(
        bank_repeats.is_empty(),
        "the consumer called the bank again for payments it had charged: {bank_repeats:?}"
    );
    ensure!(dlq_waiting == ["pay-7"], "DLQ waiting {dlq_waiting:?}");
    c.tl.log("every payment charged exactly once; the closed account's stays in the DLQ");
    Ok(Report {
        backend,
        charges,
        bank_charges,
        bank_repeats,
        bank_attempts,
        dead_lettered: sorted(o.dead.iter().map(|d| d.payment().to_owned())),
        replay: o.replay,
        second_replay_matched: o.second_replay_matched,
        dlq_waiting,
        duplicates_skipped: idem.duplicates(),
        timeline: c.tl.lines(),
    })
}

/// Payment ids in order (the DLQ holds them in dead-letter order, which depends on timing).
fn sorted(ids: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = ids.collect();
    v.sort();
    v
}
