//! # order-checkout
//!
//! A business flow on Sluice, end to end: the order service writes the order row and sends
//! `OrderCreated` as a half message in one local transaction; its checker answers the broker's
//! check-backs by looking the order up in the database, which is what heals a producer that
//! crashed after its database commit and before END_TRANSACTION. Inventory and loyalty
//! services consume idempotently: the dedupe row is written in the same database transaction
//! as the stock or points change, so forced redeliveries change nothing.
//!
//! Business state lives in SQLite (a temp file) or PostgreSQL (`DATABASE_URL`), through sqlx.
//! [`run`] drives the whole flow and returns a [`Report`]; the binary prints it, the test
//! asserts it.

pub mod db;
pub mod order;
pub use example_support::timeline;
pub(crate) use example_support::{connect_sqlite, wait_for};

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use sluice_client::idempotent::TxHandler;
use sluice_client::{
    ClientConfig, ConsumeFrom, ConsumeResult, ConsumedMessage, Idempotent, Message, Outcome,
    Producer, ProducerBuilder, PullConsumer, PushConsumer, TransactionChecker, TransactionProducer,
    TransactionState,
};
use sqlx::Pool;

use crate::db::Shop;
use crate::order::Order;
use crate::timeline::Timeline;
use example_support::cluster::Cluster;

/// Initial stock per SKU.
pub const INITIAL_STOCK: &[(&str, i64)] = &[("KB-01", 100), ("MOUSE-02", 50)];

/// The orders placed; the last one is the one whose producer crashes.
pub fn orders() -> Vec<Order> {
    vec![
        Order::new("order-1", "alice", "KB-01", 2, 20),
        Order::new("order-2", "bob", "MOUSE-02", 1, 5),
        Order::new("order-3", "alice", "MOUSE-02", 3, 15),
        Order::new("order-4", "carol", "KB-01", 1, 10),
        Order::new("order-5", "bob", "KB-01", 4, 40),
    ]
}

/// Amounts by name (SKU or customer), in a fixed order so runs compare equal.
pub type Tally = Vec<(String, i64)>;

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
            _ => Self::Sqlite(dir.join("order-checkout.db")),
        }
    }
}

/// What a run ended with: the numbers the test asserts and the timeline the binary prints.
#[derive(Debug, Clone)]
pub struct Report {
    /// "sqlite" or "postgres".
    pub backend: &'static str,
    /// Final stock per SKU, read from the database.
    pub stock: Tally,
    /// Final points per customer, read from the database.
    pub points: Tally,
    /// Stock computed from [`INITIAL_STOCK`] and [`orders`] (each order applied once).
    pub expected_stock: Tally,
    /// Points computed from [`orders`].
    pub expected_points: Tally,
    /// The order whose producer crashed before END_TRANSACTION.
    pub crashed_order: String,
    /// Orders whose transaction a check-back committed.
    pub healed_by_check_back: Vec<String>,
    /// Redeliveries skipped by (inventory, loyalty).
    pub duplicates_skipped: (u64, u64),
    /// The events, timestamped.
    pub timeline: Vec<String>,
}

/// Runs the flow against `SLUICE_NAMESRV` or an embedded broker, on `db`. With `echo`, the
/// timeline is printed live.
pub async fn run(db: Database, echo: bool) -> anyhow::Result<Report> {
    let timeline = Timeline::new(echo);
    // Check-backs are made quick (first after 500 ms) so the crash healing shows within a
    // second instead of the production default of 6 s.
    let cluster = Cluster::from_env_rocketmq_only(
        |_| {},
        |txn| {
            txn.defaults.check_after = Duration::from_millis(500);
            txn.defaults.check_interval = Duration::from_millis(500);
        },
    )
    .await?;
    timeline.log(format!("broker ready, name server {}", cluster.namesrv()));
    let result = match &db {
        Database::Sqlite(path) => {
            let pool = connect_sqlite(path).await?;
            timeline.log(format!("SQLite database {}", path.display()));
            flow(pool, "sqlite", &cluster, &timeline).await
        }
        Database::Postgres(url) => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(url)
                .await
                .context("connect to DATABASE_URL")?;
            timeline.log("PostgreSQL database from DATABASE_URL");
            flow(pool, "postgres", &cluster, &timeline).await
        }
    };
    cluster.stop().await;
    result
}

/// Names unique to this run, so runs never see each other's messages, groups or dedupe rows
/// (the PostgreSQL database and an external broker outlive a run).
struct Names {
    topic: String,
    producer_group: String,
    inventory: String,
    loyalty: String,
}

impl Names {
    fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let run = format!("{}-{nanos}", std::process::id());
        Self {
            topic: format!("CheckoutOrders-{run}"),
            producer_group: format!("order-service-{run}"),
            inventory: format!("inventory-{run}"),
            loyalty: format!("loyalty-{run}"),
        }
    }
}

/// Orders healed by check-back, shared between the checker and the flow.
type Healed = Arc<Mutex<Vec<String>>>;

/// The whole business flow on one database.
async fn flow<DB: Shop>(
    pool: Pool<DB>,
    backend: &'static str,
    cluster: &Cluster,
    tl: &Timeline,
) -> anyhow::Result<Report> {
    DB::setup(&pool, INITIAL_STOCK).await?;
    tl.log(format!("tables created, stock seeded: {INITIAL_STOCK:?}"));
    let names = Names::new();
    let cfg = cluster.client_config();
    let healed = Healed::default();
    let producer = tx_producer(
        &cfg,
        &names,
        checker(pool.clone(), tl.clone(), healed.clone()),
    )
    .await?;
    let all = orders();
    let Some((crashed, normal)) = all.split_last() else {
        bail!("no orders to place");
    };

    let mut uniq_of_first = None;
    let inventory = Idempotent::new(
        pool.clone(),
        names.inventory.clone(),
        DB::inventory_handler(),
    );
    let loyalty = Idempotent::new(pool.clone(), names.loyalty.clone(), DB::loyalty_handler());
    let mut consumers = None;
    for o in normal {
        let uniq = place_order(&producer, &pool, &names.topic, o, tl).await?;
        uniq_of_first.get_or_insert(uniq);
        if consumers.is_none() {
            // The first send auto-created the topic; now the consumers can find it.
            consumers = Some(start_both(&cfg, &names, &inventory, &loyalty, tl).await?);
        }
    }
    let uniq_of_first = uniq_of_first.context("no order placed")?;
    let consumers = consumers.context("consumers not started")?;

    crash_after_commit(&cfg, &names, &pool, crashed, tl).await?;
    wait_for("the check-back to commit the crashed order", || {
        let done = lock(&healed).contains(&crashed.id);
        async move { done }
    })
    .await?;
    let n = all.len() as u64;
    wait_for("both services to apply every order", || {
        let done = inventory.processed() >= n && loyalty.processed() >= n;
        async move { done }
    })
    .await?;
    let (stock, points) = numbers(&pool, &all).await?;
    tl.log(format!(
        "all {n} orders applied once: stock {stock:?}, points {points:?}"
    ));

    let (c1, c2) = consumers;
    c1.shutdown().await;
    c2.shutdown().await;
    force_redeliveries(&cfg, &names, &inventory, &loyalty, &uniq_of_first, tl, n).await?;

    let (final_stock, final_points) = numbers(&pool, &all).await?;
    ensure!(
        final_stock == stock && final_points == points,
        "redeliveries changed the numbers"
    );
    let (expected_stock, expected_points) = expected(&all);
    ensure!(
        final_stock == expected_stock,
        "stock {final_stock:?} != {expected_stock:?}"
    );
    ensure!(
        final_points == expected_points,
        "points {final_points:?} != {expected_points:?}"
    );
    tl.log(format!(
        "final stock {final_stock:?}, points {final_points:?}: as expected"
    ));
    producer.shutdown().await;
    let healed_by_check_back = lock(&healed).clone();
    Ok(Report {
        backend,
        stock: final_stock,
        points: final_points,
        expected_stock,
        expected_points,
        crashed_order: crashed.id.clone(),
        healed_by_check_back,
        duplicates_skipped: (inventory.duplicates(), loyalty.duplicates()),
        timeline: tl.lines(),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The order service's producer. Its checker is the safety net: any producer of the group may
/// be asked about any transaction, which is how a crashed instance's order gets committed.
async fn tx_producer(
    cfg: &ClientConfig,
    names: &Names,
    checker: impl TransactionChecker,
) -> anyhow::Result<TransactionProducer> {
    Ok(TransactionProducer::builder(
        ProducerBuilder::new(cfg.clone()).group(names.producer_group.clone()),
        checker,
    )
    .start()
    .await?)
}

/// Answers check-backs from the database only (never from memory: the asking broker may be
/// talking about another process's transaction). No row yet means "don't know": the local
/// transaction may still be running, so the broker should ask again.
fn checker<DB: Shop>(pool: Pool<DB>, tl: Timeline, healed: Healed) -> impl TransactionChecker {
    move |msg: ConsumedMessage| {
        let (pool, tl, healed) = (pool.clone(), tl.clone(), healed.clone());
        let tx_id = msg.transaction_id().map(str::to_owned);
        async move {
            let Some(tx_id) = tx_id else {
                tl.log("check-back without a transaction id -> UNKNOWN");
                return TransactionState::Unknown;
            };
            match DB::order_for_tx(&pool, &tx_id).await {
                Ok(Some(order)) => {
                    tl.log(format!("check-back for {order}: found in DB -> COMMIT"));
                    lock(&healed).push(order);
                    TransactionState::Commit
                }
                Ok(None) => {
                    tl.log(format!(
                        "check-back for tx {tx_id}: no order row -> UNKNOWN"
                    ));
                    TransactionState::Unknown
                }
                Err(e) => {
                    tl.log(format!(
                        "check-back for tx {tx_id}: database error {e} -> UNKNOWN"
                    ));
                    TransactionState::Unknown
                }
            }
        }
    }
}

fn order_message(topic: &str, o: &Order) -> Message {
    Message::new(topic.to_owned(), o.encode())
        .with_tags("OrderCreated")
        .with_keys([o.id.clone()])
}

/// Places one order: half message, then the order row in one database transaction, then
/// END_TRANSACTION. Returns the message's UNIQ_KEY (what consumers dedupe on).
async fn place_order<DB: Shop>(
    producer: &TransactionProducer,
    pool: &Pool<DB>,
    topic: &str,
    o: &Order,
    tl: &Timeline,
) -> anyhow::Result<String> {
    let r = producer
        .send_in_transaction(order_message(topic, o), |half| async move {
            DB::insert_order(pool, o, &half.transaction_id)
                .await
                .map(|()| TransactionState::Commit)
        })
        .await?;
    ensure!(
        r.state == TransactionState::Commit,
        "{}: local transaction {:?}",
        o.id,
        r.state
    );
    tl.log(format!(
        "{} committed (order row + END_TRANSACTION COMMIT)",
        o.id
    ));
    Ok(r.send.msg_id)
}

/// Simulates a process crash: a second producer of the group commits the order row, then its
/// task is aborted before END_TRANSACTION, and the producer is dropped (it answers nothing).
async fn crash_after_commit<DB: Shop>(
    cfg: &ClientConfig,
    names: &Names,
    pool: &Pool<DB>,
    o: &Order,
    tl: &Timeline,
) -> anyhow::Result<()> {
    let crashing = tx_producer(cfg, names, |_m: ConsumedMessage| async {
        TransactionState::Unknown
    })
    .await?;
    let (committed_tx, committed_rx) = tokio::sync::oneshot::channel();
    let (pool, o, topic, tl2) = (pool.clone(), o.clone(), names.topic.clone(), tl.clone());
    let task = tokio::spawn(async move {
        crashing
            .send_in_transaction(order_message(&topic, &o), |half| async move {
                let committed = DB::insert_order(&pool, &o, &half.transaction_id).await;
                if committed.is_ok() {
                    tl2.log(format!(
                        "{} row committed in DB; producer crashes before END_TRANSACTION",
                        o.id
                    ));
                }
                let _ = committed_tx.send(committed);
                std::future::pending::<TransactionState>().await
            })
            .await
    });
    let committed = committed_rx.await.context("crashing producer died early")?;
    task.abort();
    let _ = task.await;
    committed?;
    tl.log("crashed producer gone; the half message waits for a check-back");
    Ok(())
}

/// Starts the inventory and loyalty consumers.
async fn start_both<DB: Shop, I: TxHandler<DB>, L: TxHandler<DB>>(
    cfg: &ClientConfig,
    names: &Names,
    inventory: &Idempotent<DB, I>,
    loyalty: &Idempotent<DB, L>,
    tl: &Timeline,
) -> anyhow::Result<(PushConsumer, PushConsumer)> {
    let a = consumer(
        cfg,
        &names.inventory,
        &names.topic,
        inventory.clone(),
        tl,
        "inventory",
    )
    .await?;
    let b = consumer(
        cfg,
        &names.loyalty,
        &names.topic,
        loyalty.clone(),
        tl,
        "loyalty",
    )
    .await?;
    Ok((a, b))
}

/// A push consumer running `idem`, logging what each delivery did.
async fn consumer<DB: Shop, H: TxHandler<DB>>(
    cfg: &ClientConfig,
    group: &str,
    topic: &str,
    idem: Idempotent<DB, H>,
    tl: &Timeline,
    service: &'static str,
) -> anyhow::Result<PushConsumer> {
    let tl = tl.clone();
    let handler = move |m: ConsumedMessage| {
        let (idem, tl) = (idem.clone(), tl.clone());
        async move {
            let what = describe(service, &m);
            match idem.process(&m).await {
                Ok(Outcome::Processed) => {
                    tl.log(format!("{service}: {what}"));
                    ConsumeResult::Success
                }
                Ok(Outcome::Duplicate) => {
                    tl.log(format!(
                        "{service}: redelivery of {} skipped (dedupe row exists)",
                        key(&m)
                    ));
                    ConsumeResult::Success
                }
                Err(e) => {
                    tl.log(format!(
                        "{service}: {} failed ({e}); broker will retry",
                        key(&m)
                    ));
                    ConsumeResult::Retry(None)
                }
            }
        }
    };
    Ok(PushConsumer::builder(cfg.clone(), group)
        .subscribe(topic, "OrderCreated")
        .consume_from(ConsumeFrom::FirstOffset)
        .long_polling(Duration::from_secs(2))
        .rebalance_interval(Duration::from_secs(1))
        .start(handler)
        .await?)
}

fn key(m: &ConsumedMessage) -> String {
    m.keys().next().unwrap_or("?").to_owned()
}

fn describe(service: &str, m: &ConsumedMessage) -> String {
    match (service, Order::decode(m.body())) {
        ("inventory", Ok(o)) => format!("{} applied: stock {} -{}", o.id, o.sku, o.qty),
        (_, Ok(o)) => format!("{} applied: {} +{} points", o.id, o.customer, o.points),
        (_, Err(e)) => format!("{} undecodable: {e}", m.msg_id()),
    }
}

/// Rewinds both groups to offset 0 and re-sends one order with its original UNIQ_KEY (as a
/// producer retry would), then waits until every copy was delivered and skipped.
#[allow(clippy::too_many_arguments)]
async fn force_redeliveries<DB: Shop, I: TxHandler<DB>, L: TxHandler<DB>>(
    cfg: &ClientConfig,
    names: &Names,
    inventory: &Idempotent<DB, I>,
    loyalty: &Idempotent<DB, L>,
    uniq: &str,
    tl: &Timeline,
    n: u64,
) -> anyhow::Result<()> {
    // Counted from here: a duplicate skipped earlier (a message stored twice by a send's
    // retry) must not count as the redelivery, nor as the re-sent copy, below.
    let (d1, d2) = (inventory.duplicates(), loyalty.duplicates());
    let (p1, p2) = (inventory.processed(), loyalty.processed());
    let mut stored = 0;
    for group in [&names.inventory, &names.loyalty] {
        stored = rewind(cfg, group, &names.topic).await?;
    }
    anyhow::ensure!(stored >= n, "{stored} messages stored for {n} orders");
    tl.log("forced redelivery: both groups rewound to offset 0");
    let (c1, c2) = start_both(cfg, names, inventory, loyalty, tl).await?;
    wait_for("the rewound messages to be redelivered and skipped", || {
        let done = inventory.duplicates() >= d1 + stored && loyalty.duplicates() >= d2 + stored;
        async move { done }
    })
    .await?;
    let plain = Producer::builder(cfg.clone()).start().await?;
    let first = orders().into_iter().next().context("no orders")?;
    plain
        .send(order_message(&names.topic, &first).with_property("UNIQ_KEY", uniq))
        .await?;
    tl.log(format!(
        "forced redelivery: {} re-sent with its UNIQ_KEY {uniq}",
        first.id
    ));
    wait_for("the re-sent copy to be delivered and skipped", || {
        let done = inventory.duplicates() > d1 + stored && loyalty.duplicates() > d2 + stored;
        async move { done }
    })
    .await?;
    plain.shutdown().await;
    c1.shutdown().await;
    c2.shutdown().await;
    anyhow::ensure!(
        (inventory.processed(), loyalty.processed()) == (p1, p2),
        "a redelivered or re-sent message was processed again"
    );
    Ok(())
}

/// Commits offset 0 on every queue of `topic` for `group` (the consumers are stopped).
/// Commits offset 0 for `group` on every queue of `topic`; returns how many messages those
/// queues hold (all of them stored since the topic was made, so redelivered now).
async fn rewind(cfg: &ClientConfig, group: &str, topic: &str) -> anyhow::Result<u64> {
    let offsets = PullConsumer::builder(cfg.clone(), group).start().await?;
    let mut stored = 0;
    for mq in offsets.queues(topic).await? {
        anyhow::ensure!(offsets.min_offset(&mq).await? == 0, "{mq:?} lost messages");
        stored += u64::try_from(offsets.max_offset(&mq).await?)?;
        offsets.commit(&mq, 0).await?;
    }
    offsets.shutdown().await;
    Ok(stored)
}

/// Stock and points as the database has them now.
async fn numbers<DB: Shop>(pool: &Pool<DB>, all: &[Order]) -> anyhow::Result<(Tally, Tally)> {
    let mut stock = Vec::new();
    for (sku, _) in INITIAL_STOCK {
        stock.push(((*sku).to_owned(), DB::stock(pool, sku).await?));
    }
    let mut points = Vec::new();
    for customer in customers(all) {
        let p = DB::points(pool, &customer).await?;
        points.push((customer, p));
    }
    Ok((stock, points))
}

fn customers(all: &[Order]) -> Vec<String> {
    let mut c: Vec<String> = all.iter().map(|o| o.customer.clone()).collect();
    c.sort();
    c.dedup();
    c
}

/// What the numbers must be when every order is applied exactly once.
pub fn expected(all: &[Order]) -> (Tally, Tally) {
    let stock = INITIAL_STOCK
        .iter()
        .map(|(sku, qty)| {
            let taken: i64 = all.iter().filter(|o| o.sku == *sku).map(|o| o.qty).sum();
            ((*sku).to_owned(), qty - taken)
        })
        .collect();
    let points = customers(all)
        .into_iter()
        .map(|c| {
            let p = all
                .iter()
                .filter(|o| o.customer == c)
                .map(|o| o.points)
                .sum();
            (c, p)
        })
        .collect();
    (stock, points)
}
