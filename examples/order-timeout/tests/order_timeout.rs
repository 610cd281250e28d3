//! Runs the whole order-timeout flow end to end (embedded broker with its HTTP facade, real
//! database) and checks its outcome: SQLite always, PostgreSQL at DATABASE_URL (set by ./scripts/test; missing fails).

use example_order_timeout::{
    expected_events, expected_statuses, expected_timer_states, orders, run, Database, Fate, Report,
    CANCELLED, PAID,
};

/// The assertions both databases must pass.
fn assert_report(r: &Report) {
    for line in &r.timeline {
        println!("{line}");
    }
    assert_eq!(r.statuses, expected_statuses());
    let status = |id: &str| {
        r.statuses
            .iter()
            .find(|(o, _)| o == id)
            .map(|(_, s)| s.as_str())
    };
    assert_eq!(status("order-1"), Some(PAID), "paid in time stays paid");
    assert_eq!(status("order-2"), Some(CANCELLED), "unpaid is cancelled");
    assert_eq!(
        status("order-3"),
        Some(CANCELLED),
        "a late payment is refused"
    );
    assert_eq!(
        status("order-4"),
        Some(PAID),
        "the time-out leaves a paid order alone"
    );
    assert_eq!(status("order-5"), Some(CANCELLED), "unpaid is cancelled");
    assert_eq!(
        r.events,
        expected_events(),
        "every payment decision and time-out decision happened exactly once"
    );
    let answers: Vec<(&str, &str, u64)> = r
        .cancel_answers
        .iter()
        .map(|(o, a)| (o.as_str(), a.result.as_str(), a.count))
        .collect();
    assert_eq!(
        answers,
        [
            ("order-1", "cancelled", 1),
            ("order-3", "already_delivered", 1)
        ],
        "cancel by key answers definitely"
    );
    assert_eq!(
        r.timer_states,
        expected_timer_states(),
        "the paid order's timer is cancelled, never delivered; every other one was delivered"
    );
    let fired = orders()
        .iter()
        .filter(|(_, f, _)| *f != Fate::PaidInTime)
        .count() as u64;
    assert_eq!(
        r.timeouts_processed, fired,
        "each fired time-out acted on once"
    );
    assert!(
        r.duplicates_skipped >= fired,
        "the rewound time-outs were redelivered and skipped: {}",
        r.duplicates_skipped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paid_orders_stay_paid_and_unpaid_ones_are_cancelled_once_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::Sqlite(dir.path().join("orders.db"));
    example_support::cluster::embedded_only();
    let report = run(db, false).await.expect("the flow completes");
    assert_eq!(report.backend, "sqlite");
    assert_report(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paid_orders_stay_paid_and_unpaid_ones_are_cancelled_once_on_postgres() {
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
