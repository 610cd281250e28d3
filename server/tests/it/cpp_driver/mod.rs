//! Driving the independent C++ RocketMQ client (`tests/compat/cpp_client.py`) from tests:
//! fetching it (`scripts/fetch-cpp-client`; a failure fails the test, never skips it),
//! spawning the driver, and reading its JSON result.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::common::{wait_timeout, KillOnDrop};

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The PYTHONPATH folder with the client, fetched once per test process.
pub fn client_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let root = workspace();
        let out = Command::new(root.join("scripts/fetch-cpp-client"))
            .arg(root.join("target/compat-cache"))
            .current_dir(&root)
            .output()
            .expect("run scripts/fetch-cpp-client");
        assert!(
            out.status.success(),
            "COMPATIBILITY CLIENT UNAVAILABLE: scripts/fetch-cpp-client failed, so the C++ RocketMQ \
             client could not be fetched from PyPI. This test fails rather than skips.\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rel = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let p = PathBuf::from(rel);
        if p.is_absolute() { p } else { root.join(p) }
    })
}

/// Spawns the driver script with `args`; killed if the test fails before [`finish`] (it would
/// otherwise run on until its own `--timeout`).
pub fn driver(ns: std::net::SocketAddr, args: &[&str]) -> KillOnDrop {
    let child = Command::new("python3")
        .arg(workspace().join("tests/compat/cpp_client.py"))
        .args(["--ns", &ns.to_string()])
        .args(args)
        .env("PYTHONPATH", client_path())
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3 driver");
    KillOnDrop(child)
}

/// Waits for the driver (bounded) and parses the JSON object on its last stdout line. Output
/// is read while waiting, so a chatty driver never blocks on a full pipe.
pub fn finish(mut child: KillOnDrop, limit: Duration) -> Value {
    let child = &mut child.0;
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
    );
    let status = wait_timeout(child, limit);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (text, err) = (out.join().unwrap(), err.join().unwrap());
    let last = text.lines().last().unwrap_or("");
    assert!(
        status.is_some(),
        "driver timed out after {limit:?}; last output: {last}\nstderr: {err}"
    );
    let v: Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("driver output is not JSON ({e}), status {status:?}: {text}\nstderr: {err}")
    });
    // Producers retry a send that raised (see SEND_RETRIES in the driver); a send that failed
    // after its retries is still a failure. Shown so retries stay visible when tests pass.
    if let Some(n) = v.get("send_retries") {
        eprintln!(
            "C++ driver: {n} send retries, {} sends failed after them; first retried: {}",
            v["failure_count"], v["retried"][0]
        );
    }
    v
}

pub fn keys(v: &Value) -> BTreeSet<String> {
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

pub fn wait_ready(path: &std::path::Path) {
    for _ in 0..600 {
        if path.exists() {
            // The client rebalances right after start; give it a moment to own its queues.
            std::thread::sleep(Duration::from_secs(3));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("consumer did not start");
}

/// Sends `count` keyed messages (`k<start>`..) with tags cycling through `tags` and checks
/// every send succeeded.
pub fn produce(
    ns: std::net::SocketAddr,
    topic: &str,
    count: usize,
    start: usize,
    tags: &str,
) -> Value {
    let (c, s) = (count.to_string(), start.to_string());
    let v = finish(
        driver(
            ns,
            &[
                "produce", "--topic", topic, "--count", &c, "--start", &s, "--tags", tags,
            ],
        ),
        Duration::from_secs(300),
    );
    // No final failure: a send counts as failed once its retries (the driver's) failed too.
    assert_eq!(v["failure_count"], 0, "sends failed: {v}");
    assert_eq!(v["sent"].as_u64().unwrap() as usize, count);
    v
}
