//! # payment-retry-dlq
//!
//! A business flow on Sluice, end to end: a payment consumer calls a flaky bank. Transient
//! failures are retried by the broker with back-off (the group's short retry ladder, through
//! `%RETRY%<group>` and the schedule extension); poison payments exhaust their retries and
//! land in `%DLQ%<group>`. After the bank's fix, an operator replays a selected subset of the
//! DLQ (by tag, throttled) through the HTTP facade; those payments are charged, the rest stay
//! in the DLQ. Charging is idempotent in the database (the dedupe row, keyed by payment id,
//! commits with the charge row), so retries, replays and resubmissions never charge twice.
//!
//! Business state lives in SQLite (a temp file) or PostgreSQL (`DATABASE_URL`), through sqlx.
//! [`run`] drives the whole flow and returns a [`Report`]; the binary prints it, the test
//! asserts it.
//!
//! ## Layout
//! - `flow`: the story, step by step. `consumer`: the payment consumer.
//! - [`bank`]: the deterministic flaky downstream. [`payment`]: the message body.
//! - [`db`]: the charge ledger for SQLite and PostgreSQL. [`operator`]: the DLQ over HTTP.
//! - [`cluster`]: the embedded or external Sluice and its retry ladder. [`timeline`].

pub mod bank;
pub mod cluster;
mod consumer;
pub mod db;
mod flow;
pub mod operator;
pub mod payment;
pub use example_support::timeline;
pub(crate) use example_support::{connect_sqlite, wait_for};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::cluster::MAX_RECONSUME;
use crate::db::ChargeRow;
use crate::operator::Replay;
use crate::payment::Payment;
use crate::timeline::Timeline;

/// The currency whose payments the bank's fix repairs, and the operator replays.
pub const FIXED_CURRENCY: &str = "CHF";

/// The payments submitted. See [`bank`] for what each account does.
pub fn payments() -> Vec<Payment> {
    vec![
        Payment::new("pay-1", "acct-100", "EUR", 1_250),
        Payment::new("pay-2", "acct-101", "USD", 990),
        Payment::new("pay-3", "flaky-2", "EUR", 4_500),
        Payment::new("pay-4", "flaky-1", "USD", 300),
        Payment::new("pay-5", "acct-102", "CHF", 7_000),
        Payment::new("pay-6", "acct-103", "CHF", 1_800),
        Payment::new("pay-7", "closed", "EUR", 2_500),
        Payment::new("pay-8", "acct-104", "EUR", 650),
    ]
}

/// The payments the upstream submits a second time (new messages, same payment ids): one
/// charged first time, one charged through the replay.
pub const RESUBMITTED: [&str; 2] = ["pay-1", "pay-5"];

/// The charge rows every run must end with: each payment but the closed account's, once;
/// the flaky ones on their third and second delivery, the CHF ones through the replay.
pub fn expected_charges() -> Vec<ChargeRow> {
    [
        ("pay-1", 1, false),
        ("pay-2", 1, false),
        ("pay-3", 3, false),
        ("pay-4", 2, false),
        ("pay-5", 1, true),
        ("pay-6", 1, true),
        ("pay-8", 1, false),
    ]
    .map(|(id, delivery, replayed)| (id.to_owned(), delivery, replayed))
    .to_vec()
}

/// Bank attempts every run must end with: poison payments were tried `MAX_RECONSUME + 1`
/// times before the DLQ, and the replayed ones once more; duplicates never reach the bank.
pub fn expected_attempts() -> BTreeMap<String, u32> {
    let dead = MAX_RECONSUME.unsigned_abs() + 1;
    [
        ("pay-1", 1),
        ("pay-2", 1),
        ("pay-3", 3),
        ("pay-4", 2),
        ("pay-5", dead + 1),
        ("pay-6", dead + 1),
        ("pay-7", dead),
        ("pay-8", 1),
    ]
    .map(|(id, n)| (id.to_owned(), n))
    .into_iter()
    .collect()
}

/// Which database holds the business state.
#[derive(Debug, Clone)]
pub enum Database {
    /// A SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl Database {
    /// `DATABASE_URL` when set (as `scripts/with-postgres` sets it), else a SQLite file in
    /// `dir`.
    pub fn from_env(dir: &std::path::Path) -> Self {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => Self::Postgres(url),
            _ => Self::Sqlite(dir.join("payment-retry-dlq.db")),
        }
    }
}

/// What a run ended with: what the test asserts and the binary prints.
#[derive(Debug, Clone)]
pub struct Report {
    /// "sqlite" or "postgres".
    pub backend: &'static str,
    /// Charge rows in the database, by payment id.
    pub charges: Vec<ChargeRow>,
    /// Successful charges per payment, as the bank counted them (at most 1 each: the payment
    /// id is the bank's idempotency key).
    pub bank_charges: BTreeMap<String, u32>,
    /// Calls for payments the bank had already charged (the consumer charging again).
    pub bank_repeats: BTreeMap<String, u32>,
    /// Attempts per payment, as the bank counted them.
    pub bank_attempts: BTreeMap<String, u32>,
    /// Payment ids that were in the DLQ before the replay.
    pub dead_lettered: Vec<String>,
    /// The operator's replay, as it finished.
    pub replay: Replay,
    /// How many dead letters a second, identical replay selected (already replayed: none).
    pub second_replay_matched: u64,
    /// Payment ids still waiting in the DLQ at the end.
    pub dlq_waiting: Vec<String>,
    /// Deliveries skipped as already charged.
    pub duplicates_skipped: u64,
    /// The events, timestamped.
    pub timeline: Vec<String>,
}

/// Runs the flow against `SLUICE_NAMESRV`/`SLUICE_HTTP` or an embedded Sluice, on `db`. With
/// `echo`, the timeline is printed live.
pub async fn run(db: Database, echo: bool) -> anyhow::Result<Report> {
    let timeline = Timeline::new(echo);
    let names = Names::new();
    let cluster = cluster::start(&names.group).await?;
    timeline.log(format!(
        "broker ready, name server {}, HTTP facade {}; group {} retries after {:?}, \
         dead-letters after {} retries",
        cluster.namesrv(),
        cluster.http_base()?,
        names.group,
        cluster::retry_ladder(),
        MAX_RECONSUME
    ));
    let result = match &db {
        Database::Sqlite(path) => {
            let pool = connect_sqlite(path).await?;
            timeline.log(format!("SQLite database {}", path.display()));
            flow::flow(pool, "sqlite", &cluster, names, &timeline).await
        }
        Database::Postgres(url) => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(url)
                .await
                .context("connect to DATABASE_URL")?;
            timeline.log("PostgreSQL database from DATABASE_URL");
            flow::flow(pool, "postgres", &cluster, names, &timeline).await
        }
    };
    cluster.stop().await;
    result
}

/// Names unique to this run, so runs never see each other's messages, groups or dedupe rows
/// (the PostgreSQL database and an external broker outlive a run).
struct Names {
    topic: String,
    group: String,
}

impl Names {
    fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let run = format!("{}-{nanos}", std::process::id());
        Self {
            topic: format!("Payments-{run}"),
            group: format!("payments-{run}"),
        }
    }
}
