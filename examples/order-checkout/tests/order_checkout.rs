//! Runs the whole order-checkout flow end to end (embedded broker, real database) and checks
//! its outcome: SQLite always, PostgreSQL at DATABASE_URL (set by ./scripts/test; missing fails).

use example_order_checkout::{expected, orders, run, Database, Report};

/// The assertions both databases must pass.
fn assert_report(r: &Report) {
    let (stock, points) = expected(&orders());
    assert_eq!(r.stock, stock, "each order took its stock exactly once");
    assert_eq!(
        r.points, points,
        "each order credited its points exactly once"
    );
    assert_eq!(
        r.stock,
        [("KB-01".to_owned(), 93), ("MOUSE-02".to_owned(), 46)]
    );
    assert_eq!(
        r.points,
        [
            ("alice".to_owned(), 35),
            ("bob".to_owned(), 45),
            ("carol".to_owned(), 10)
        ]
    );
    assert_eq!(r.crashed_order, "order-5");
    assert!(
        r.healed_by_check_back.contains(&r.crashed_order),
        "the crashed order was committed by a check-back: {:?}",
        r.healed_by_check_back
    );
    let n = orders().len() as u64;
    assert!(
        r.duplicates_skipped.0 > n && r.duplicates_skipped.1 > n,
        "rewound offsets and the re-send were delivered and skipped: {:?}",
        r.duplicates_skipped
    );
    assert!(r
        .timeline
        .iter()
        .any(|l| l.contains("check-back for order-5: found in DB -> COMMIT")));
    for line in &r.timeline {
        println!("{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_checkout_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::Sqlite(dir.path().join("shop.db"));
    example_support::cluster::embedded_only();
    let report = run(db, false).await.expect("the flow completes");
    assert_eq!(report.backend, "sqlite");
    assert_report(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_checkout_on_postgres() {
    let url = std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: run the suite with ./scripts/test, which starts a throwaway PostgreSQL",
    );
    example_support::cluster::embedded_only();
    let report = run(Database::Postgres(url), false)
        .await
        .expect("the flow completes");
    assert_eq!(report.backend, "postgres");
    assert_report(&report);
}
