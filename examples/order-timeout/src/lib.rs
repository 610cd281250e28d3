//! # order-timeout
//!
//! A business flow on Sluice, end to end: every order schedules a `CancelIfUnpaid` message
//! due a few seconds later, keyed by the order id. Paying cancels that timer by key through
//! the HTTP facade, which answers definitely (`cancelled` or `already_delivered`); unpaid
//! orders are cancelled by an idempotent consumer (the dedupe row commits with the status
//! change). The rule that keeps late payments consistent is the database's: paying and
//! cancelling are both a compare-and-set from `pending_payment`, so whichever commits first
//! wins; a payment that finds the order cancelled is refused, and a time-out that finds the
//! order paid does nothing.
//!
//! Business state lives in SQLite (a temp file) or PostgreSQL (`DATABASE_URL`), through sqlx.
//! [`run`] drives the whole flow and returns a [`Report`]; the binary prints it, the test
//! asserts it.
//!
//! ## Layout
//! - `flow`: the story, step by step. `consumer`: the time-out consumer and forced redelivery.
//! - [`db`]: tables and the compare-and-set rule, for SQLite and PostgreSQL.
//! - [`timers`]: scheduling (Rust client) and cancel by key (HTTP).
//! - [`cluster`]: the embedded or external Sluice. [`timeline`]: the printed story.

pub use example_support::cluster;
mod consumer;
pub mod db;
mod flow;
pub use example_support::timeline;
pub(crate) use example_support::{connect_sqlite, wait_for};
pub mod timers;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::cluster::Cluster;
use crate::db::EventCount;
use crate::timeline::Timeline;
use crate::timers::CancelAnswer;

pub use db::{CANCELLED, EV_CANCELLED, EV_IGNORED_PAID, EV_PAID, EV_REFUSED, PAID, PENDING};

/// How long an order may stay unpaid. Short so the demo and its test take seconds; the
/// mechanism is the same for 30 minutes.
pub const PAYMENT_WINDOW: Duration = Duration::from_secs(2);

/// The window of the orders paid in time: long, so "in time" holds however slow the machine
/// is (the flow never waits for it; the cancel answer is the proof).
pub const LONG_WINDOW: Duration = Duration::from_secs(600);

/// What happens to each order in the story.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Paid in time: the payment service cancels the timer first (`cancelled`).
    PaidInTime,
    /// Never paid: the time-out cancels it.
    Unpaid,
    /// Paid after the time-out cancelled it: the timer answers `already_delivered` and the
    /// payment is refused.
    PaidLate,
    /// Paid at a till that does not know about timers: the time-out fires, finds it paid and
    /// does nothing.
    PaidWithoutCancel,
}

impl Fate {
    /// How long this order's CancelIfUnpaid waits.
    pub fn window(self) -> Duration {
        match self {
            Self::PaidInTime => LONG_WINDOW,
            Self::Unpaid | Self::PaidLate | Self::PaidWithoutCancel => PAYMENT_WINDOW,
        }
    }
}

/// The orders placed, with their fate and amount in cents.
pub fn orders() -> Vec<(&'static str, Fate, i64)> {
    vec![
        ("order-1", Fate::PaidInTime, 4_990),
        ("order-2", Fate::Unpaid, 1_250),
        ("order-3", Fate::PaidLate, 8_000),
        ("order-4", Fate::PaidWithoutCancel, 315),
        ("order-5", Fate::Unpaid, 2_200),
    ]
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
            _ => Self::Sqlite(dir.join("order-timeout.db")),
        }
    }
}

/// What a run ended with: what the test asserts and the binary prints.
#[derive(Debug, Clone)]
pub struct Report {
    /// "sqlite" or "postgres".
    pub backend: &'static str,
    /// Final status per order, read from the database, by order id.
    pub statuses: Vec<(String, String)>,
    /// Events per order, read from the database.
    pub events: Vec<EventCount>,
    /// What each cancel-by-key answered, in call order.
    pub cancel_answers: Vec<(String, CancelAnswer)>,
    /// Each order's timer states at the end, as the broker lists them by key.
    pub timer_states: Vec<(String, Vec<String>)>,
    /// Time-out messages the consumer acted on (first deliveries).
    pub timeouts_processed: u64,
    /// Forced redeliveries the consumer skipped.
    pub duplicates_skipped: u64,
    /// The events, timestamped.
    pub timeline: Vec<String>,
}

/// The final statuses every run must end with.
pub fn expected_statuses() -> Vec<(String, String)> {
    orders()
        .into_iter()
        .map(|(id, fate, _)| {
            let status = match fate {
                Fate::PaidInTime | Fate::PaidWithoutCancel => PAID,
                Fate::Unpaid | Fate::PaidLate => CANCELLED,
            };
            (id.to_owned(), status.to_owned())
        })
        .collect()
}

/// The timer states every run must end with: the in-time order's cancelled, every other
/// delivered.
pub fn expected_timer_states() -> Vec<(String, Vec<String>)> {
    orders()
        .into_iter()
        .map(|(id, fate, _)| {
            let state = if fate == Fate::PaidInTime {
                "cancelled"
            } else {
                "delivered"
            };
            (id.to_owned(), vec![state.to_owned()])
        })
        .collect()
}

/// The events every run must end with, each exactly once, sorted as the database sorts them.
pub fn expected_events() -> Vec<EventCount> {
    let mut all = Vec::new();
    for (id, fate, _) in orders() {
        let events: &[&str] = match fate {
            Fate::PaidInTime => &[EV_PAID],
            Fate::Unpaid => &[EV_CANCELLED],
            Fate::PaidLate => &[EV_CANCELLED, EV_REFUSED],
            Fate::PaidWithoutCancel => &[EV_PAID, EV_IGNORED_PAID],
        };
        for e in events {
            all.push((id.to_owned(), (*e).to_owned(), 1));
        }
    }
    all.sort();
    all
}

/// Runs the flow against `SLUICE_NAMESRV`/`SLUICE_HTTP` or an embedded Sluice, on `db`. With
/// `echo`, the timeline is printed live.
pub async fn run(db: Database, echo: bool) -> anyhow::Result<Report> {
    let timeline = Timeline::new(echo);
    let cluster = Cluster::from_env(|_| {}).await?;
    timeline.log(format!(
        "broker ready, name server {}, HTTP facade {}",
        cluster.namesrv(),
        cluster.http_base()?
    ));
    let result = match &db {
        Database::Sqlite(path) => {
            let pool = connect_sqlite(path).await?;
            timeline.log(format!("SQLite database {}", path.display()));
            flow::flow(pool, "sqlite", &cluster, &timeline).await
        }
        Database::Postgres(url) => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(url)
                .await
                .context("connect to DATABASE_URL")?;
            timeline.log("PostgreSQL database from DATABASE_URL");
            flow::flow(pool, "postgres", &cluster, &timeline).await
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
            topic: format!("OrderTimeouts-{run}"),
            group: format!("order-timeout-{run}"),
        }
    }
}
