//! Idempotent consumption with a real database: SQLite always, PostgreSQL when DATABASE_URL is
//! set. One scenario, [`scenario`], runs on both: the migration, a duplicate skipped with
//! exactly one business row, a failing handler rolled back, a business dedupe key, a handler
//! that swallowed an SQL error or removed its claim (never reported processed unless
//! committed), and a forced duplicate delivery through a real broker (the group's offsets
//! rewound after a consumer committed them) that the helper skips.

use crate::common;

use std::time::Duration;

use common::*;
use futures::future::BoxFuture;
use futures::FutureExt;
use sluice_client::idempotent::{
    self, handler_fn, BoxError, DedupeBackend, DedupeKey, IdempotencyError, Idempotent, TxHandler,
};
use sluice_client::{
    ConsumeFrom, ConsumedMessage, Message, Outcome, Producer, PullConsumer, PushConsumer,
};
use sqlx::{Pool, Postgres, Sqlite, Transaction};

/// What the scenario needs from a backend beyond the helper itself: the business table and a
/// handler that writes to it (typed per database, as application code is).
trait Business: DedupeBackend {
    fn reset<'a>(pool: &'a Pool<Self>, table: &'a str) -> BoxFuture<'a, ()>;
    fn count<'a>(pool: &'a Pool<Self>, table: &'a str) -> BoxFuture<'a, i64>;
    fn handler(table: &'static str) -> impl TxHandler<Self>;
    /// Moves a group's claim of `key` `by_ms` into the past.
    fn age_claim<'a>(
        pool: &'a Pool<Self>,
        group: &'a str,
        key: &'a str,
        by_ms: i64,
    ) -> BoxFuture<'a, ()>;
}

macro_rules! business {
    ($db:ty) => {
        impl Business for $db {
            fn reset<'a>(pool: &'a Pool<Self>, table: &'a str) -> BoxFuture<'a, ()> {
                async move {
                    sqlx::query(&format!("DROP TABLE IF EXISTS {table}")).execute(pool).await.unwrap();
                    let create = format!("CREATE TABLE {table} (order_id VARCHAR(64) NOT NULL, msg_id VARCHAR(64) NOT NULL)");
                    sqlx::query(&create).execute(pool).await.unwrap();
                }
                .boxed()
            }

            fn count<'a>(pool: &'a Pool<Self>, table: &'a str) -> BoxFuture<'a, i64> {
                async move {
                    sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {table}"))
                        .fetch_one(pool)
                        .await
                        .unwrap()
                }
                .boxed()
            }

            fn age_claim<'a>(pool: &'a Pool<Self>, group: &'a str, key: &'a str, by_ms: i64) -> BoxFuture<'a, ()> {
                async move {
                    let aged = sqlx::query("UPDATE sluice_processed_messages SET processed_at_ms = processed_at_ms - $1 WHERE consumer_group = $2 AND dedupe_key = $3")
                        .bind(by_ms)
                        .bind(group)
                        .bind(key)
                        .execute(pool)
                        .await
                        .unwrap();
                    assert_eq!(aged.rows_affected(), 1, "{group}/{key} is claimed");
                }
                .boxed()
            }

            fn handler(table: &'static str) -> impl TxHandler<Self> {
                handler_fn(move |msg: &ConsumedMessage, tx: &mut Transaction<'static, $db>| {
                    async move {
                        let body = std::str::from_utf8(msg.body())?.to_owned();
                        if body == "fail" {
                            return Err::<(), BoxError>("the business rule refused".into());
                        }
                        if body == "swallow" {
                            // A handler that ignores a failed statement (PostgreSQL has then
                            // aborted the transaction; SQLite carries on).
                            let failed = sqlx::query("SELECT * FROM no_such_table").execute(&mut **tx).await;
                            assert!(failed.is_err());
                            return Ok(());
                        }
                        if let Some(order) = body.strip_prefix("slow:") {
                            // Holds its transaction open while another delivery arrives.
                            sqlx::query(&format!("INSERT INTO {table} (order_id, msg_id) VALUES ($1, $2)"))
                                .bind(order)
                                .bind(msg.msg_id())
                                .execute(&mut **tx)
                                .await?;
                            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                            return Ok(());
                        }
                        if body == "unclaim" {
                            sqlx::query("DELETE FROM sluice_processed_messages WHERE msg_id = $1")
                                .bind(msg.msg_id())
                                .execute(&mut **tx)
                                .await?;
                            return Ok(());
                        }
                        sqlx::query(&format!("INSERT INTO {table} (order_id, msg_id) VALUES ($1, $2)"))
                            .bind(body)
                            .bind(msg.msg_id())
                            .execute(&mut **tx)
                            .await?;
                        Ok(())
                    }
                    .boxed()
                })
            }
        }
    };
}

business!(Sqlite);
business!(Postgres);

fn msg(uniq: &str, body: &str) -> ConsumedMessage {
    ConsumedMessage::for_tests("Payments", body.to_owned()).with_property("UNIQ_KEY", uniq)
}

/// The whole scenario on one database. `tag` keeps groups and tables of runs apart.
async fn scenario<DB: Business>(pool: Pool<DB>, tag: &str) {
    let table: &'static str = Box::leak(format!("payments_{tag}").into_boxed_str());
    idempotent::migrate(&pool).await.expect("migration");
    idempotent::migrate(&pool)
        .await
        .expect("the migration can run again");
    DB::reset(&pool, table).await;
    let group = format!("idem-{tag}-{}", std::process::id());

    // Direct use: the second delivery of a key is skipped; one business row.
    let helper = Idempotent::new(pool.clone(), group.clone(), DB::handler(table));
    assert_eq!(
        helper.process(&msg("U1", "order-1")).await.unwrap(),
        Outcome::Processed
    );
    assert_eq!(
        helper.process(&msg("U1", "order-1")).await.unwrap(),
        Outcome::Duplicate
    );
    assert_eq!(DB::count(&pool, table).await, 1);

    // A failing handler rolls back its claim too: the key stays free for the retry.
    let err = helper.process(&msg("U2", "fail")).await.unwrap_err();
    assert!(matches!(err, IdempotencyError::Handler(_)), "{err}");
    assert_eq!(
        helper.process(&msg("U2", "order-2")).await.unwrap(),
        Outcome::Processed
    );
    assert_eq!(DB::count(&pool, table).await, 2);

    // A business key: two sends (two UNIQ_KEYs) of one order are one order.
    let by_order = Idempotent::with_key(
        pool.clone(),
        format!("{group}-k"),
        DedupeKey::FirstKey,
        DB::handler(table),
    );
    let keyed = |u: &str| msg(u, "order-3").with_property("KEYS", "order-3");
    assert_eq!(
        by_order.process(&keyed("U3a")).await.unwrap(),
        Outcome::Processed
    );
    assert_eq!(
        by_order.process(&keyed("U3b")).await.unwrap(),
        Outcome::Duplicate
    );
    assert!(matches!(
        by_order.process(&msg("U4", "x")).await,
        Err(IdempotencyError::MissingKey(_))
    ));
    assert_eq!(DB::count(&pool, table).await, 3);

    // A business key longer than the key column (255 on PostgreSQL) is claimed by digest.
    let long = format!("order-{}", "7".repeat(300));
    let long_keyed = |u: &str| msg(u, "order-long").with_property("KEYS", &long);
    assert_eq!(
        by_order.process(&long_keyed("U5a")).await.unwrap(),
        Outcome::Processed
    );
    assert_eq!(
        by_order.process(&long_keyed("U5b")).await.unwrap(),
        Outcome::Duplicate
    );
    assert_eq!(DB::count(&pool, table).await, 4);

    // A UNIQ_KEY repeats about a month later (its time field counts from the start of the
    // month): a claim older than the window belongs to another message, which is processed.
    let day_ms = 24 * 3600 * 1000;
    DB::age_claim(&pool, &group, "U1", 8 * day_ms).await;
    assert_eq!(
        helper
            .process(&msg("U1", "order-1-next-month"))
            .await
            .unwrap(),
        Outcome::Processed
    );
    assert_eq!(
        helper
            .process(&msg("U1", "order-1-next-month"))
            .await
            .unwrap(),
        Outcome::Duplicate,
        "and claimed afresh"
    );
    // A business key is claimed for good.
    DB::age_claim(&pool, &format!("{group}-k"), "order-3", 60 * day_ms).await;
    assert_eq!(
        by_order.process(&keyed("U3c")).await.unwrap(),
        Outcome::Duplicate
    );
    assert_eq!(DB::count(&pool, table).await, 5);

    // A handler that swallowed a failed statement: what the helper reports is what was
    // committed (on PostgreSQL the transaction was aborted, so nothing was).
    let first = helper.process(&msg("U5", "swallow")).await;
    let again = helper.process(&msg("U5", "order-5")).await.unwrap();
    match first {
        Ok(Outcome::Processed) => assert_eq!(again, Outcome::Duplicate, "the claim was committed"),
        Err(IdempotencyError::Database(_)) => {
            assert_eq!(again, Outcome::Processed, "nothing was committed")
        }
        other => panic!("unexpected outcome {other:?}"),
    }
    // A handler that removed its own claim: not reported processed.
    let err = helper.process(&msg("U6", "unclaim")).await.unwrap_err();
    assert!(matches!(err, IdempotencyError::ClaimLost(_)), "{err}");
    assert_eq!(
        helper.process(&msg("U6", "order-6")).await.unwrap(),
        Outcome::Processed,
        "the key is still free"
    );
    DB::reset(&pool, table).await;

    // Through a broker: consume, commit, rewind the group's offsets, consume again.
    let cluster = start_cluster(1).await;
    cluster.create_topic("Payments", 2).await;
    let producer = Producer::builder(cluster.config()).start().await.unwrap();
    let sent = producer
        .send(Message::new("Payments", "order-42"))
        .await
        .unwrap();
    let handler = Idempotent::new(pool.clone(), group.clone(), DB::handler(table));
    let start = |h: Idempotent<DB, _>| {
        PushConsumer::builder(cluster.config(), group.clone())
            .subscribe("Payments", "*")
            .consume_from(ConsumeFrom::FirstOffset)
            .long_polling(Duration::from_secs(2))
            .start(h)
    };
    let first = start(handler.clone()).await.unwrap();
    assert!(
        wait_until(|| async { handler.processed() == 1 }).await,
        "consumed once"
    );
    first.shutdown().await;
    let offsets = PullConsumer::builder(cluster.config(), group.clone())
        .start()
        .await
        .unwrap();
    for mq in offsets.queues("Payments").await.unwrap() {
        offsets.commit(&mq, 0).await.unwrap();
    }
    let second = start(handler.clone()).await.unwrap();
    assert!(
        wait_until(|| async { handler.duplicates() >= 1 }).await,
        "the rewound offset redelivered the message"
    );
    // A producer re-send with the same UNIQ_KEY is a duplicate too.
    producer
        .send(Message::new("Payments", "order-42").with_property("UNIQ_KEY", sent.msg_id.as_str()))
        .await
        .unwrap();
    assert!(
        wait_until(|| async { handler.duplicates() >= 2 }).await,
        "the re-send was delivered and skipped"
    );
    second.shutdown().await;
    assert_eq!(handler.processed(), 1);
    assert_eq!(DB::count(&pool, table).await, 1, "exactly one business row");
    producer.shutdown().await;
    cluster.stop().await;
}

/// Two deliveries of one message at once (a rebalance duplicate): exactly one runs the
/// handler and commits, the other is told it is a duplicate, and there is one business row.
async fn concurrent_deliveries<DB: Business>(pool: Pool<DB>, tag: &str) {
    let table: &'static str = Box::leak(format!("payments_conc_{tag}").into_boxed_str());
    idempotent::migrate(&pool).await.expect("migration");
    DB::reset(&pool, table).await;
    let group = format!("idem-conc-{tag}-{}", std::process::id());
    let helper = Idempotent::new(pool.clone(), group, DB::handler(table));
    let (a, b) = (helper.clone(), helper.clone());
    let m = msg("UC1", "slow:order-c");
    let (x, y) = tokio::join!(a.process(&m), b.process(&m));
    let mut outcomes = vec![x.unwrap(), y.unwrap()];
    outcomes.sort_by_key(|o| *o == Outcome::Processed);
    assert_eq!(outcomes, vec![Outcome::Duplicate, Outcome::Processed]);
    assert_eq!(DB::count(&pool, table).await, 1, "exactly one business row");
}

/// SQLite's "database is locked" (another writer, no busy wait) counts as contention, which
/// `process` runs again; a constraint failure does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_busy_database_is_contention_and_a_constraint_failure_is_not() {
    use std::str::FromStr;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("app.db").display());
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
        .unwrap()
        .busy_timeout(Duration::ZERO);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(opts)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO t (id) VALUES (1)")
        .execute(&mut *holder)
        .await
        .unwrap();
    let busy = sqlx::query("INSERT INTO t (id) VALUES (2)")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(IdempotencyError::Database(busy).is_contention());
    holder.commit().await.unwrap();
    let dup = sqlx::query("INSERT INTO t (id) VALUES (1)")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(!IdempotencyError::Database(dup).is_contention());
}

/// `purge_claims` deletes one group's claims older than the age and nothing else; a business
/// key whose claim was purged counts as new.
async fn purge<DB: Business>(pool: Pool<DB>, tag: &str) {
    let table: &'static str = Box::leak(format!("payments_purge_{tag}").into_boxed_str());
    idempotent::migrate(&pool).await.expect("migration");
    DB::reset(&pool, table).await;
    let group = format!("idem-purge-{tag}-{}", std::process::id());
    let other = format!("{group}-other");
    let by_key =
        |g: &str| Idempotent::with_key(pool.clone(), g, DedupeKey::FirstKey, DB::handler(table));
    let keyed = |uniq: &str, key: &str| msg(uniq, "order-p").with_property("KEYS", key);
    for (g, uniq, key) in [
        (&group, "P1", "old"),
        (&group, "P2", "new"),
        (&other, "P3", "old"),
    ] {
        assert_eq!(
            by_key(g).process(&keyed(uniq, key)).await.unwrap(),
            Outcome::Processed
        );
    }
    let ten_days = 10 * 24 * 3600 * 1000;
    DB::age_claim(&pool, &group, "old", ten_days).await;
    DB::age_claim(&pool, &other, "old", ten_days).await;
    let removed = idempotent::purge_claims(&pool, &group, Duration::from_secs(7 * 24 * 3600))
        .await
        .unwrap();
    assert_eq!(removed, 1, "only the group's old claim");
    let h = by_key(&group);
    assert_eq!(
        h.process(&keyed("P4", "new")).await.unwrap(),
        Outcome::Duplicate
    );
    assert_eq!(
        h.process(&keyed("P5", "old")).await.unwrap(),
        Outcome::Processed
    );
    let o = by_key(&other);
    assert_eq!(
        o.process(&keyed("P6", "old")).await.unwrap(),
        Outcome::Duplicate,
        "another group's claim stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_purge_deletes_a_groups_old_claims_only() {
    let (_dir, pool) = sqlite().await;
    purge(pool, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_purge_deletes_a_groups_old_claims_only() {
    purge(postgres().await, "pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_deliveries_of_one_message_process_it_once() {
    let (_dir, pool) = sqlite().await;
    concurrent_deliveries(pool, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_deliveries_of_one_message_process_it_once() {
    concurrent_deliveries(postgres().await, "pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_skips_duplicates_and_writes_each_message_once() {
    let (_dir, pool) = sqlite().await;
    scenario(pool, "sqlite").await;
}

/// A pool on a fresh SQLite file (the folder goes when the first value is dropped).
async fn sqlite() -> (tempfile::TempDir, Pool<Sqlite>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("app.db").display());
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    (dir, pool)
}

/// A pool on the suite's PostgreSQL (`DATABASE_URL`, set by `./scripts/test`).
async fn postgres() -> Pool<Postgres> {
    let url = std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: run the suite with ./scripts/test, which starts a throwaway PostgreSQL",
    );
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .expect("connect to DATABASE_URL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_skips_duplicates_and_writes_each_message_once() {
    scenario(postgres().await, "pg").await;
}

/// A handler whose write breaks a deferred unique constraint fails at COMMIT: that is the
/// handler failing (its writes and the claim are rolled back), not a duplicate delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_deferred_constraint_failing_at_commit_is_an_error_not_a_duplicate() {
    let pool = postgres().await;
    idempotent::migrate(&pool).await.expect("migration");
    let table = format!("deferred_{}", std::process::id());
    sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {table} (order_id TEXT, UNIQUE (order_id) DEFERRABLE INITIALLY DEFERRED)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(&format!("INSERT INTO {table} VALUES ('order-1')"))
        .execute(&pool)
        .await
        .unwrap();
    let insert: &'static str =
        Box::leak(format!("INSERT INTO {table} VALUES ($1)").into_boxed_str());
    let handler = handler_fn(
        move |msg: &ConsumedMessage, tx: &mut Transaction<'static, Postgres>| {
            async move {
                let body = std::str::from_utf8(msg.body())?.to_owned();
                sqlx::query(insert).bind(body).execute(&mut **tx).await?;
                Ok(())
            }
            .boxed()
        },
    );
    let group = format!("deferred-{}", std::process::id());
    let helper = Idempotent::new(pool.clone(), group.clone(), handler);

    let first = helper.process(&msg("D1", "order-1")).await;
    assert!(
        matches!(first, Err(IdempotencyError::Database(_))),
        "{first:?}"
    );
    assert_eq!(helper.duplicates(), 0, "not counted as a duplicate");
    // Nothing was claimed: the redelivery with a good body is processed.
    assert_eq!(
        helper.process(&msg("D1", "order-2")).await.unwrap(),
        Outcome::Processed
    );
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applications_own_sqlx_migrations_still_run_beside_the_helpers_table() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("app.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let folder = dir.path().join("migrations");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(
        folder.join("20250101000000_app_orders.sql"),
        "CREATE TABLE app_orders (id INTEGER PRIMARY KEY);",
    )
    .unwrap();
    // The application's migrator, with sqlx's defaults (a missing version is an error).
    let app = sqlx::migrate::Migrator::new(folder.as_path())
        .await
        .unwrap();

    idempotent::migrate(&pool)
        .await
        .expect("the helper's table");
    app.run(&pool).await.expect("the app's migrations after it");
    idempotent::migrate(&pool).await.expect("the helper again");
    app.run(&pool).await.expect("the app's migrations again");
    for table in ["sluice_processed_messages", "app_orders"] {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = $1")
            .bind(table)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 1, "{table} exists");
    }
}
