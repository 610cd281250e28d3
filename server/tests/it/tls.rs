//! Issue #11: TLS (rustls) on the real binary. A self-signed certificate for 127.0.0.1 is made
//! per test (rcgen) and given through `SLUICE_TLS_*`:
//! - `enforcing`: the Rust client, trusting the certificate, produces and consumes through the
//!   name server and broker over TLS (the broker registers with its name server over TLS too);
//!   a plaintext connection is closed unanswered; a client trusting another certificate fails
//!   its handshake; the HTTP facade answers over HTTPS and not over plain HTTP.
//! - `permissive`: plaintext and TLS clients both work on the same ports.
//! - a missing or mismatched key file stops the start with a message naming it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_client::{ClientConfig, Message, Producer, PullConsumer, PullStatus};
use sluice_protocol::remoting::custom::GetMaxOffsetRequestHeader;
use sluice_protocol::{request_code, RemotingCommand};
use sluice_remoting::{ClientOptions, ClientTls, RemotingClient};

use crate::common::{start_with_env, Sluice};

/// A self-signed certificate for 127.0.0.1 and `localhost`, as PEM files in `dir`.
fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    certificate_as(dir, name, rcgen::IsCa::NoCa)
}

/// As [`certificate`], marked as a CA or not (`openssl req -x509` marks it as one).
fn certificate_as(dir: &Path, name: &str, is_ca: rcgen::IsCa) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    params.is_ca = is_ca;
    let cert = params.self_signed(&key).expect("self-signed");
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn start_tls(data: &Path, mode: &str, cert: &Path, key: &Path) -> Sluice {
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    start_with_env(
        data,
        0,
        0,
        &[
            ("SLUICE_TLS_MODE", mode),
            ("SLUICE_TLS_CERT_FILE", &cert),
            ("SLUICE_TLS_KEY_FILE", &key),
            ("SLUICE_TLS_HTTP", "true"),
        ],
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Sends `n` messages through the name server and broker and reads them back.
async fn round_trip(cfg: ClientConfig, topic: &str, n: usize) {
    let producer = Producer::builder(cfg.clone())
        .group("tls_producer")
        .start()
        .await
        .expect("producer over TLS");
    for i in 0..n {
        producer
            .send(Message::new(topic, format!("m{i}")))
            .await
            .expect("send over TLS");
    }
    let reader = PullConsumer::builder(cfg, "tls_reader")
        .start()
        .await
        .unwrap();
    let mut bodies = Vec::new();
    for _ in 0..100 {
        bodies.clear();
        for mq in reader.queues(topic).await.expect("queues") {
            let mut offset = 0;
            for _ in 0..100 {
                let r = reader.pull(&mq, offset, 32).await.expect("pull over TLS");
                bodies.extend(r.messages.iter().map(|m| m.body().to_vec()));
                if r.status != PullStatus::Found {
                    break;
                }
                offset = r.next_begin_offset;
            }
        }
        if bodies.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bodies.sort();
    let mut want: Vec<Vec<u8>> = (0..n).map(|i| format!("m{i}").into_bytes()).collect();
    want.sort();
    assert_eq!(bodies, want, "every message read back over TLS");
}

/// A GET_MAX_OFFSET request: any answer proves the connection is served.
async fn answered(client: &RemotingClient) -> bool {
    let header = GetMaxOffsetRequestHeader {
        topic: "TBW102".into(),
        queue_id: 0,
        ..Default::default()
    };
    let cmd = RemotingCommand::request(request_code::GET_MAX_OFFSET, header.to_ext());
    client.invoke(cmd, Duration::from_secs(3)).await.is_ok()
}

fn https_client(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .unwrap()
}

#[test]
fn enforcing_tls_serves_tls_clients_and_refuses_plaintext_and_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "server");
    let (other, _) = certificate(dir.path(), "other");
    let sluice = start_tls(&dir.path().join("data"), "enforcing", &cert, &key);
    let rt = rt();
    rt.block_on(async {
        let ns = sluice.ns.to_string();
        let cfg = ClientConfig::new(&ns).with_tls(&cert, None).unwrap();
        round_trip(cfg, "TlsOrders", 20).await;

        // Plaintext on a TLS-only port: closed without an answer.
        let plain = RemotingClient::connect(sluice.broker).await.unwrap();
        assert!(!answered(&plain).await, "plaintext is not served");

        // A client that trusts another certificate fails its handshake.
        let stranger = ClientOptions {
            tls: Some(ClientTls::from_ca_file(&other, None).unwrap()),
            ..ClientOptions::default()
        };
        let err = RemotingClient::connect_with(sluice.broker, stranger)
            .await
            .expect_err("an untrusted certificate is refused");
        assert!(err.to_string().contains("TLS"), "{err}");

        // HTTPS on the HTTP port, and not plain HTTP.
        let https = https_client(&cert);
        let url = format!("https://{}/v1/topics/TlsOrders/messages", sluice.http);
        let r = https
            .post(url)
            .json(&serde_json::json!({"body": "over https"}))
            .send()
            .await
            .expect("HTTPS answers");
        assert_eq!(r.status().as_u16(), 201);
        let plain_http = reqwest::Client::builder().no_proxy().build().unwrap();
        let r = plain_http
            .get(format!("http://{}/healthz", sluice.http))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        assert!(r.is_err(), "plain HTTP is not served on an HTTPS port");

        // A TCP probe (connect, close): not a refusal at max_connections, and not a warning.
        drop(tokio::net::TcpStream::connect(sluice.broker).await.unwrap());
        let metrics = format!("https://{}/metrics", sluice.http);
        let mut text = String::new();
        for _ in 0..100 {
            text = https
                .get(&metrics)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if text.contains("sluice_connections_not_opened_total 3") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            text.contains("sluice_connections_not_opened_total 3"),
            "the plaintext client, the stranger and the probe: {text}"
        );
        assert!(
            text.contains("sluice_connections_refused_total 0"),
            "none refused at max_connections: {text}"
        );
    });
    sluice.stop();
}

/// A broker with `enforcing` TLS on its TCP ports and plain HTTP.
fn start_tls_tcp_only(data: &Path, cert: &Path, key: &Path) -> Sluice {
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    start_with_env(
        data,
        0,
        0,
        &[
            ("SLUICE_TLS_MODE", "enforcing"),
            ("SLUICE_TLS_CERT_FILE", &cert),
            ("SLUICE_TLS_KEY_FILE", &key),
        ],
    )
}

/// `/readyz` over plain HTTP: its status and reasons.
fn readiness(sluice: &Sluice) -> (u16, String) {
    rt().block_on(async {
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{}/readyz", sluice.http))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("readyz answers");
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

/// A self-signed certificate marked as a CA (what `openssl req -x509` makes by default): the
/// broker's own TLS client refuses it as the name server's, so every registration failed,
/// RocketMQ clients found no route, and `/readyz` still answered ready. It answers 503 and
/// names the failure now; with a certificate that is not a CA, ready.
#[test]
fn a_broker_no_name_server_accepts_is_not_ready_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let (cert, key) = certificate_as(dir.path(), "ca-as-server", ca);
    let sluice = start_tls_tcp_only(&dir.path().join("data"), &cert, &key);
    let (status, body) = readiness(&sluice);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not in any route"), "{body}");
    sluice.stop();

    let (cert, key) = certificate(dir.path(), "server");
    let sluice = start_tls_tcp_only(&dir.path().join("data2"), &cert, &key);
    let (status, body) = readiness(&sluice);
    assert_eq!(status, 200, "{body}");
    sluice.stop();
}

#[test]
fn permissive_tls_serves_tls_and_plaintext_on_the_same_ports() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "server");
    let sluice = start_tls(&dir.path().join("data"), "permissive", &cert, &key);
    rt().block_on(async {
        let ns = sluice.ns.to_string();
        round_trip(ClientConfig::new(&ns), "Plain", 5).await;
        let tls = ClientConfig::new(&ns).with_tls(&cert, None).unwrap();
        round_trip(tls, "Secure", 5).await;
        let plain = RemotingClient::connect(sluice.broker).await.unwrap();
        assert!(
            answered(&plain).await,
            "plaintext is served in permissive mode"
        );
    });
    sluice.stop();
}

/// The binary, without the test process's own `SLUICE_*` variables; bounded by
/// `output_within`, so a refusal that regressed into a start cannot hang the suite.
fn refused_start() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    crate::common::without_inherited_config(&mut cmd);
    // Were the refusal to regress into a start, it binds free loopback ports, not the
    // default public ones.
    for (var, addr) in [
        ("SLUICE_NAMESRV_LISTEN", "127.0.0.1:0"),
        ("SLUICE_BROKER_LISTEN", "127.0.0.1:0"),
        ("SLUICE_HTTP_LISTEN", "127.0.0.1:0"),
    ] {
        cmd.env(var, addr);
    }
    cmd
}

#[test]
fn a_tls_key_that_does_not_match_its_certificate_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = certificate(dir.path(), "server");
    let (_, wrong_key) = certificate(dir.path(), "other");
    let out = crate::common::output_within(
        refused_start()
            .args(["serve", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("SLUICE_TLS_MODE", "enforcing")
            .env("SLUICE_TLS_CERT_FILE", &cert)
            .env("SLUICE_TLS_KEY_FILE", &wrong_key),
        std::time::Duration::from_secs(60),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[tls]"), "the error names the section: {err}");
    let out = crate::common::output_within(
        refused_start()
            .args(["serve", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("SLUICE_TLS_MODE", "enforcing")
            .env("SLUICE_TLS_CERT_FILE", dir.path().join("missing.pem"))
            .env("SLUICE_TLS_KEY_FILE", &wrong_key),
        std::time::Duration::from_secs(60),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing.pem"),
        "the error names the file: {err}"
    );
}
