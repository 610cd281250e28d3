//! Runs the Python services end to end against an embedded broker and checks what they saw.

use example_http_microservices::{run_services, Embedded, WEBHOOK_SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_services_use_transactions_leases_retries_and_dlq_replay_over_http() {
    let broker = Embedded::start().await.expect("broker");
    let outcome = run_services(&broker.base_url(), Some(WEBHOOK_SECRET), false).await;
    broker.stop().await;
    let outcome = outcome.expect("services.py");
    let r = &outcome.result;
    assert_eq!(
        r["shipped"],
        serde_json::json!(["order-1", "order-2", "order-3"]),
        "committed orders shipped, the rolled-back order-4 never:\n{}",
        outcome.output
    );
    assert!(
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c[0] == "order-3" && c[1] == "commit"),
        "the crashed order-3 was committed by the webhook check-back:\n{}",
        outcome.output
    );
    assert!(
        r["nacks"].as_u64().unwrap() >= 3,
        "order-2 was nacked on its first delivery and both retries:\n{}",
        outcome.output
    );
    assert_eq!(r["dead_lettered"], serde_json::json!(["order-2"]));
    // Signed with another key, or an hour ago (a replay): refused; signed now: answered, so
    // the refusals are not the webhook refusing everything.
    let probes = (
        &r["forged_check_back"],
        &r["stale_check_back"],
        &r["fresh_check_back"],
    );
    assert_eq!(
        probes,
        (&401.into(), &401.into(), &200.into()),
        "{}",
        outcome.output
    );
}
