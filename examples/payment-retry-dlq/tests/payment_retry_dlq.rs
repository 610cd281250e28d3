//! Runs the whole payment flow end to end (embedded broker with a short retry ladder and its
//! HTTP facade, real database) and checks its outcome: SQLite always, PostgreSQL at
//! DATABASE_URL (set by ./scripts/test; missing fails).

use example_payment_retry_dlq::{
    expected_attempts, expected_charges, run, Database, Report, RESUBMITTED,
};

/// The assertions both databases must pass.
fn assert_report(r: &Report) {
    for line in &r.timeline {
        println!("{line}");
    }
    assert_eq!(
        r.charges,
        expected_charges(),
        "good payments charged on delivery 1, flaky ones after their retries, CHF through the \
         replay, the closed account never"
    );
    // The bank moves money once per payment id whatever happens; that the consumer never
    // called it again for a charged payment is what its dedupe promises.
    assert!(
        r.bank_repeats.is_empty(),
        "the consumer charged again: {:?}",
        r.bank_repeats
    );
    for (id, _, _) in &r.charges {
        assert!(r.bank_charges.contains_key(id), "{id} charged at the bank");
    }
    assert_eq!(
        r.bank_charges.len(),
        r.charges.len(),
        "nothing else was charged"
    );
    assert_eq!(r.bank_attempts, expected_attempts(), "attempts per payment");
    assert_eq!(
        r.dead_lettered,
        ["pay-5", "pay-6", "pay-7"],
        "poison payments reached the DLQ"
    );
    assert_eq!(
        (r.replay.matched, r.replay.replayed),
        (2, 2),
        "the CHF subset was replayed"
    );
    assert_eq!(
        r.second_replay_matched, 0,
        "a replayed letter is never replayed again"
    );
    assert_eq!(
        r.dlq_waiting,
        ["pay-7"],
        "the unfixable payment stays in the DLQ"
    );
    assert!(
        r.duplicates_skipped >= RESUBMITTED.len() as u64,
        "the resubmitted payments were skipped: {}",
        r.duplicates_skipped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_and_replayed_payments_are_charged_once_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::Sqlite(dir.path().join("payments.db"));
    example_support::cluster::embedded_only();
    let report = run(db, false).await.expect("the flow completes");
    assert_eq!(report.backend, "sqlite");
    assert_report(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_and_replayed_payments_are_charged_once_on_postgres() {
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
