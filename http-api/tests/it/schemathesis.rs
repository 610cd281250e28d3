//! Property-based API testing with schemathesis (PyPI, installed by `scripts/fetch-schemathesis`
//! into a private virtualenv): it reads `/openapi.json` and sends generated valid and invalid
//! requests to every operation. No response may be a 5xx, and every response must match the
//! schema the document declares for it. A failure to install schemathesis fails the test.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn schemathesis() -> PathBuf {
    let root = workspace();
    let out = Command::new(root.join("scripts/fetch-schemathesis"))
        .arg(root.join("target/schemathesis-venv"))
        .output()
        .expect("run scripts/fetch-schemathesis");
    assert!(
        out.status.success(),
        "could not install schemathesis from PyPI (scripts/fetch-schemathesis): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_never_get_a_5xx_or_a_response_off_the_schema() {
    let bin = tokio::task::spawn_blocking(schemathesis).await.unwrap();
    let s = common::start().await;
    s.create_topic("FuzzTopic", 2);
    let spec = s.url("/openapi.json");
    let base = s.base.clone();
    let report = s.dir.path().join("schemathesis-report");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["run", &spec, "--url", &base])
            .args(["--checks", "not_a_server_error,response_schema_conformance"])
            .args(["--phases", "examples,coverage,fuzzing"])
            // One worker: hypothesis describes strategies through a shared AST cache that two
            // worker threads can race on ("AST constructor recursion depth mismatch").
            .args(["--max-examples", "15", "--seed", "7", "--workers", "1"])
            .args(["--generation-database", "none", "--request-timeout", "45"])
            .args(["--no-color", "--report", "junit", "--report-dir"])
            .arg(&report)
            .env("SCHEMATHESIS_HOOKS", "")
            // Its caches go with the report, not into the source tree.
            .current_dir(report.parent().expect("report dir has a parent"))
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("passed") || stdout.contains("PASSED"),
        "schemathesis ran no operations:\n{stdout}"
    );
    s.stop().await;
}
