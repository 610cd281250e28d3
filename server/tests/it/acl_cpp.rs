//! RocketMQ ACL signatures proven with the independent C++ client (librocketmq.so through
//! rocketmq-client-python, `tests/compat/cpp_client.py --access-key/--secret-key`, which calls
//! `set_session_credentials`): the real `sluice` binary runs with `[acl]` enabled (from
//! `SLUICE_ACL_*` variables); the client produces and consumes with correct credentials, and is
//! refused with a wrong secret, an unknown key, or an account without the permission. Nothing a
//! refused client sent is stored. The broker's log (at `info`) never shows a secret.

use crate::common;
use crate::cpp_driver;

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use cpp_driver::*;

const PRODUCER_AK: &str = "orders-producer";
const PRODUCER_SK: &str = "producer-secret-7f3a";
const CONSUMER_AK: &str = "billing-consumer";
const CONSUMER_SK: &str = "consumer-secret-91bc";

/// `sluice serve` with ACL on, its log (stderr) in `log`.
struct Server {
    child: Child,
    ns: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_acl(data: &Path, log: &Path) -> Server {
    let (ns_port, broker_port) = (free_port(), free_port());
    let accounts = format!(
        "[{{access_key = \"{PRODUCER_AK}\", secret_key = \"{PRODUCER_SK}\", \
         topic_perms = {{ AclOrders = \"PUB\" }}}}, \
         {{access_key = \"{CONSUMER_AK}\", secret_key = \"{CONSUMER_SK}\", \
         topic_perms = {{ AclOrders = \"SUB\" }}, \
         group_perms = {{ acl_billing = \"SUB\", acl_other = \"SUB\" }}}}]"
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SLUICE_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["serve", "--data-dir"])
        .arg(data)
        .args(["--namesrv-listen", &format!("127.0.0.1:{ns_port}")])
        .args(["--broker-listen", &format!("127.0.0.1:{broker_port}")])
        .args(["--http-listen", "127.0.0.1:0"])
        .env("SLUICE_STORE_SEGMENT_BYTES", "67108864")
        .env("SLUICE_STORE_DISK_MAX_USED_RATIO", "0.99")
        .env("SLUICE_LOG", "info")
        .env("SLUICE_ACL_ENABLED", "true")
        .env("SLUICE_ACL_ACCOUNTS", accounts)
        .stdout(Stdio::piped())
        .stderr(File::create(log).unwrap());
    let mut child = cmd.spawn().expect("spawn sluice");
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let ready = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    assert!(
        ready.starts_with("sluice ready:"),
        "sluice did not start: {ready:?}\nlog: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    Server {
        child,
        ns: SocketAddr::from(([127, 0, 0, 1], ns_port)),
    }
}

/// `retries`: the driver's own retries of a failed send (refused sends need none).
fn produce_as(
    ns: SocketAddr,
    ak: &str,
    sk: &str,
    count: usize,
    prefix: &str,
    retries: u32,
) -> serde_json::Value {
    let (c, retries) = (count.to_string(), retries.to_string());
    finish(
        driver(
            ns,
            &[
                "--access-key",
                ak,
                "--secret-key",
                sk,
                "produce",
                "--topic",
                "AclOrders",
                "--count",
                &c,
                "--key-prefix",
                prefix,
                "--tags",
                "Created",
                "--send-timeout-ms",
                "3000",
                "--send-retries",
                &retries,
            ],
        ),
        Duration::from_secs(300),
    )
}

fn consume_as(
    ns: SocketAddr,
    ak: &str,
    sk: &str,
    group: &str,
    expect: usize,
    timeout_secs: u32,
) -> crate::common::KillOnDrop {
    let (e, t) = (expect.to_string(), timeout_secs.to_string());
    driver(
        ns,
        &[
            "--access-key",
            ak,
            "--secret-key",
            sk,
            "consume",
            "--group",
            group,
            "--topic",
            "AclOrders",
            "--expect",
            &e,
            "--timeout",
            &t,
            "--settle",
            "2",
        ],
    )
}

#[test]
fn cpp_client_with_acl_credentials_produces_and_consumes_and_wrong_credentials_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("sluice.log");
    client_path();
    let sluice = start_acl(data.path(), &log);

    // Correct credentials: the send is signed as RocketMQ's rule says, and accepted.
    let good = produce_as(sluice.ns, PRODUCER_AK, PRODUCER_SK, 20, "good-", 3);
    assert_eq!(good["failure_count"], 0, "signed sends refused: {good}");
    assert_eq!(good["sent"], 20);

    // Wrong secret, unknown key, no credentials at all, and a valid account without PUB on the
    // topic: every send is refused.
    for (ak, sk, prefix) in [
        (PRODUCER_AK, "wrong-secret-0000", "badsecret-"),
        ("no-such-account", PRODUCER_SK, "unknown-"),
        ("", "", "unsigned-"),
        (CONSUMER_AK, CONSUMER_SK, "nopub-"),
    ] {
        let v = produce_as(sluice.ns, ak, sk, 3, prefix, 0);
        assert_eq!(v["sent"], 0, "{prefix}: sends were accepted: {v}");
        assert_eq!(v["failure_count"], 3, "{prefix}: {v}");
    }

    // Correct consumer credentials get exactly the 20 good messages: nothing refused was stored.
    let v = finish(
        consume_as(sluice.ns, CONSUMER_AK, CONSUMER_SK, "acl_billing", 20, 90),
        Duration::from_secs(200),
    );
    let got = keys(&v);
    let want: std::collections::BTreeSet<String> = (0..20).map(|i| format!("good-{i}")).collect();
    assert_eq!(got, want, "consumer with credentials: {v}");

    // A consumer with a wrong secret gets nothing (its heartbeat, routes to the broker, offset
    // queries and pulls are all refused).
    let v = finish(
        consume_as(
            sluice.ns,
            CONSUMER_AK,
            "wrong-secret-1111",
            "acl_other",
            20,
            15,
        ),
        Duration::from_secs(120),
    );
    assert_eq!(v["count"], 0, "consumer with a wrong secret received: {v}");

    drop(sluice);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("ACL"),
        "refusals are logged (access key, code): {text}"
    );
    // The wrong-secret consumer was refused (its zero messages were not a slow start).
    assert!(
        text.lines()
            .any(|l| l.contains("bad signature") && l.contains(CONSUMER_AK)),
        "no refusal of {CONSUMER_AK}'s wrong signature is logged: {text}"
    );
    for secret in [PRODUCER_SK, CONSUMER_SK] {
        assert!(!text.contains(secret), "a secret key reached the log");
    }
}
