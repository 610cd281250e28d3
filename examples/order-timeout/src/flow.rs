//! The story, step by step: place orders with their time-outs, pay some in time (cancelling
//! the timer by key), let the others time out, pay one too late, force redeliveries, and
//! check the database against the expected outcome.

use anyhow::{ensure, Context};
use sluice_client::idempotent::TxHandler;
use sluice_client::{ClientConfig, Idempotent, Producer};
use sqlx::Pool;

use crate::cluster::Cluster;
use crate::consumer;
use crate::db::{Decisions, Orders};
use crate::timeline::Timeline;
use crate::timers::{self, CancelAnswer, TimerApi};
use crate::{
    expected_events, expected_statuses, expected_timer_states, orders, wait_for, Fate, Names,
    Report,
};

/// What the steps share.
struct Ctx<'a, DB: Orders> {
    pool: Pool<DB>,
    cfg: ClientConfig,
    names: Names,
    api: TimerApi,
    tl: &'a Timeline,
    answers: Vec<(String, CancelAnswer)>,
}

/// The whole flow on one database.
pub(crate) async fn flow<DB: Orders>(
    pool: Pool<DB>,
    backend: &'static str,
    cluster: &Cluster,
    tl: &Timeline,
) -> anyhow::Result<Report> {
    DB::setup(&pool).await?;
    tl.log("tables created");
    let mut c = Ctx {
        pool: pool.clone(),
        cfg: cluster.client_config(),
        names: Names::new(),
        api: TimerApi::new(cluster.http_base()?)?,
        tl,
        answers: Vec::new(),
    };
    let producer = Producer::builder(c.cfg.clone()).start().await?;
    place_orders(&c, &producer).await?;
    producer.shutdown().await;
    pay_in_time(&mut c).await?;

    let decisions = Decisions::default();
    let idem = Idempotent::new(
        pool.clone(),
        c.names.group.clone(),
        DB::cancel_if_unpaid(decisions.clone()),
    );
    let timeout_consumer = start_consumer(&c, &idem, &decisions).await?;

    let fired = orders()
        .iter()
        .filter(|(_, fate, _)| *fate != Fate::PaidInTime)
        .count() as u64;
    wait_for("every timer that was not cancelled to be consumed", || {
        let done = idem.processed() >= fired;
        async move { done }
    })
    .await?;
    pay_late(&mut c).await?;
    timeout_consumer.shutdown().await;
    force_redelivery(&c, &idem, &decisions, fired).await?;
    finish(c, backend, &idem).await
}

/// Schedules every order's CancelIfUnpaid, then creates the order (pending payment). In this
/// order a crash between the two leaves a time-out for an order that does not exist, which
/// the consumer refuses (retried, then dead-lettered where an operator sees it), never an
/// order that waits for payment with no time-out. The till order is paid at checkout, after
/// the order service scheduled the usual time-out anyway.
async fn place_orders<DB: Orders>(c: &Ctx<'_, DB>, producer: &Producer) -> anyhow::Result<()> {
    for (id, fate, amount) in orders() {
        let window = fate.window();
        let msg_id = timers::schedule(producer, &c.names.topic, id, window).await?;
        c.tl.log(format!(
            "{id}: CancelIfUnpaid({id}) scheduled, due in {window:?} (msg {msg_id})"
        ));
        DB::create(&c.pool, id, amount).await?;
        c.tl.log(format!("{id} created ({amount} cents, pending_payment)"));
        if fate == Fate::PaidWithoutCancel {
            ensure!(DB::pay(&c.pool, id).await?, "{id}: till payment refused");
            c.tl.log(format!(
                "{id} PAID at a till that knows nothing about timers"
            ));
        }
    }
    Ok(())
}

async fn start_consumer<DB: Orders, H: TxHandler<DB>>(
    c: &Ctx<'_, DB>,
    idem: &Idempotent<DB, H>,
    decisions: &Decisions,
) -> anyhow::Result<sluice_client::PushConsumer> {
    let (group, topic) = (&c.names.group, &c.names.topic);
    consumer::start(&c.cfg, group, topic, idem.clone(), decisions.clone(), c.tl).await
}

/// The payment service: cancel the timer by key (definite answer), then mark the order paid
/// with the compare-and-set. Returns the cancel's answer (`None` when the timer API could not
/// be reached) and whether the payment was accepted. The compare-and-set is what decides: a
/// payment goes on when the cancel fails, and a time-out delivered meanwhile finds the order
/// paid and changes nothing.
async fn pay<DB: Orders>(
    c: &mut Ctx<'_, DB>,
    id: &str,
) -> anyhow::Result<(Option<CancelAnswer>, bool)> {
    let answer = match c.api.cancel(&c.names.topic, id).await {
        Ok(answer) => {
            c.tl.log(format!(
                "payment for {id}: DELETE /v1/topics/{}/scheduled/{id} -> {{\"result\": \"{}\", \"count\": {}}}",
                c.names.topic, answer.result, answer.count
            ));
            c.answers.push((id.to_owned(), answer.clone()));
            Some(answer)
        }
        Err(e) => {
            c.tl.log(format!(
                "payment for {id}: cancelling its timer failed ({e:#}); paying anyway"
            ));
            None
        }
    };
    let accepted = DB::pay(&c.pool, id).await?;
    Ok((answer, accepted))
}

/// Pays the in-time orders: the timer is cancelled first, and "cancelled" is definite.
async fn pay_in_time<DB: Orders>(c: &mut Ctx<'_, DB>) -> anyhow::Result<()> {
    for (id, fate, _) in orders() {
        if fate != Fate::PaidInTime {
            continue;
        }
        let (answer, accepted) = pay(c, id).await?;
        ensure!(
            answer.as_ref().is_some_and(CancelAnswer::cancelled),
            "{id}: timer not cancelled: {answer:?}"
        );
        ensure!(accepted, "{id}: in-time payment refused");
        c.tl.log(format!("{id} PAID; its time-out will never be delivered"));
    }
    Ok(())
}

/// Pays the late order: the timer already fired and the consumer cancelled the order, so the
/// answer is `already_delivered` and the compare-and-set refuses the payment.
async fn pay_late<DB: Orders>(c: &mut Ctx<'_, DB>) -> anyhow::Result<()> {
    for (id, fate, _) in orders() {
        if fate != Fate::PaidLate {
            continue;
        }
        let (answer, accepted) = pay(c, id).await?;
        ensure!(
            answer.as_ref().is_some_and(CancelAnswer::already_delivered),
            "{id}: expected already_delivered, got {answer:?}"
        );
        ensure!(!accepted, "{id}: a payment after the time-out was accepted");
        c.tl.log(format!(
            "{id}: payment REFUSED (order already cancelled by its time-out; refund it)"
        ));
    }
    Ok(())
}

/// Rewinds the group to offset 0 and consumes again: every released time-out is delivered a
/// second time and skipped by the dedupe row.
async fn force_redelivery<DB: Orders, H: TxHandler<DB>>(
    c: &Ctx<'_, DB>,
    idem: &Idempotent<DB, H>,
    decisions: &Decisions,
    fired: u64,
) -> anyhow::Result<()> {
    consumer::rewind(&c.cfg, &c.names.group, &c.names.topic).await?;
    c.tl.log("forced redelivery: time-out group rewound to offset 0");
    let again = start_consumer(c, idem, decisions).await?;
    wait_for(
        "the rewound time-outs to be redelivered and skipped",
        || {
            let done = idem.duplicates() >= fired;
            async move { done }
        },
    )
    .await?;
    again.shutdown().await;
    Ok(())
}

/// Reads the outcome and checks it against the expected one.
async fn finish<DB: Orders, H: TxHandler<DB>>(
    c: Ctx<'_, DB>,
    backend: &'static str,
    idem: &Idempotent<DB, H>,
) -> anyhow::Result<Report> {
    let statuses = DB::statuses(&c.pool).await.context("final statuses")?;
    let events = DB::events(&c.pool).await.context("final events")?;
    let mut timer_states = Vec::new();
    for (id, _, _) in orders() {
        let states = c.api.states(&c.names.topic, id).await?;
        c.tl.log(format!("GET scheduled?key={id} -> {states:?}"));
        timer_states.push((id.to_owned(), states));
    }
    ensure!(
        timer_states == expected_timer_states(),
        "timer states {timer_states:?} != {:?}",
        expected_timer_states()
    );
    ensure!(
        statuses == expected_statuses(),
        "statuses {statuses:?} != {:?}",
        expected_statuses()
    );
    ensure!(
        events == expected_events(),
        "events {events:?} != {:?}",
        expected_events()
    );
    c.tl.log(format!("final statuses {statuses:?}: as expected"));
    c.tl.log(format!(
        "every event happened exactly once ({} events); {} redeliveries skipped",
        events.len(),
        idem.duplicates()
    ));
    Ok(Report {
        backend,
        statuses,
        events,
        cancel_answers: c.answers,
        timer_states,
        timeouts_processed: idem.processed(),
        duplicates_skipped: idem.duplicates(),
        timeline: c.tl.lines(),
    })
}
