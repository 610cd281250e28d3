//! Request-size and concurrency limits of the HTTP facade (practices §3 test 12). `produce.rs`
//! covers a message over `max_message_bytes`; these cover the request limit itself
//! (`max_request_bytes`) on every kind of body (JSON, raw, chunked without a length, a length
//! declared far beyond it) and the in-progress cap (`max_concurrent_requests`), each followed
//! by a request that still succeeds.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{error_code, Options, Server};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST_LIMIT: usize = 64 * 1024;

async fn start_small() -> Server {
    let s = common::start_with(Options {
        http: sluice_http::HttpConfig {
            max_request_bytes: REQUEST_LIMIT,
            max_message_bytes: REQUEST_LIMIT / 2,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..sluice_http::HttpConfig::default()
        },
        ..Options::default()
    })
    .await;
    s.create_topic("T", 1);
    s
}

fn addr_of(s: &Server) -> String {
    s.base.trim_start_matches("http://").to_owned()
}

/// Sends `head` (and `body`) on a fresh connection; returns the status of the answer, read
/// within a generous bound (`None`: no answer).
async fn raw_status(s: &Server, head: String, body: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr_of(s)).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    // The server may answer and close before taking the whole body; that is the point.
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..64 {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await;
        match read {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&chunk[..n]),
            _ => break,
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

async fn a_small_send_succeeds(s: &Server) {
    let (st, r) = s
        .post("/v1/topics/T/messages", json!({"body": "small"}))
        .await;
    assert_eq!(st, 201, "{r}");
}

#[tokio::test]
async fn json_bodies_over_max_request_bytes_are_413_on_every_endpoint() {
    let s = start_small().await;
    let padding = "x".repeat(REQUEST_LIMIT);
    let cases = [
        ("/v1/topics/T/messages", json!({"body": padding})),
        (
            "/v1/topics/T/messages:batch",
            json!({"messages": [{"body": padding}]}),
        ),
        (
            "/v1/topics/T/transactions",
            json!({"body": padding, "producer_group": "g"}),
        ),
        (
            "/v1/groups/g/topics/T/receive",
            json!({"max": 1, "tag": padding}),
        ),
        ("/v1/groups/g/ack", json!({"receipts": [padding]})),
        ("/v1/groups/g/nack", json!({"receipts": [padding]})),
    ];
    for (path, body) in cases {
        let (st, r) = s.post(path, body).await;
        assert_eq!((st, error_code(&r)), (413, "payload_too_large"), "{path}");
    }
    a_small_send_succeeds(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn a_raw_body_over_max_request_bytes_is_413() {
    let s = start_small().await;
    let r = s
        .http
        .post(s.url("/v1/topics/T/messages"))
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; REQUEST_LIMIT + 1])
        .send()
        .await
        .expect("POST");
    let (st, r) = common::status_json(r).await;
    assert_eq!((st, error_code(&r)), (413, "payload_too_large"));
    a_small_send_succeeds(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn a_chunked_body_without_a_length_is_cut_off_at_the_limit() {
    let s = start_small().await;
    let head = format!(
        "POST /v1/topics/T/messages HTTP/1.1\r\nhost: {}\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        addr_of(&s)
    );
    let mut body = Vec::new();
    for _ in 0..(REQUEST_LIMIT / 4096 + 2) {
        body.extend_from_slice(b"1000\r\n");
        body.extend_from_slice(&[b'c'; 4096]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw_status(&s, head, &body).await, Some(413));
    a_small_send_succeeds(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn a_declared_length_of_a_gibibyte_is_413_once_the_limit_is_read_not_the_gibibyte() {
    let s = start_small().await;
    let head = format!(
        "POST /v1/topics/T/messages HTTP/1.1\r\nhost: {}\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
        addr_of(&s),
        1u64 << 30
    );
    // Just over the limit follows, not the declared gibibyte: the answer comes from counting.
    assert_eq!(
        raw_status(&s, head, &vec![b'g'; REQUEST_LIMIT + 1]).await,
        Some(413)
    );
    a_small_send_succeeds(&s).await;
    s.stop().await;
}

/// A client that declares a body and then stalls would keep its request, and so one of the
/// `max_concurrent_requests` slots: `body_read_timeout` refuses it and frees the slot.
#[tokio::test]
async fn a_stalled_upload_does_not_hold_a_request_slot_forever() {
    let s = common::start_with(Options {
        http: sluice_http::HttpConfig {
            max_concurrent_requests: 1,
            body_read_timeout: Duration::from_secs(1),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..sluice_http::HttpConfig::default()
        },
        ..Options::default()
    })
    .await;
    s.create_topic("T", 1);
    let mut stalled = TcpStream::connect(addr_of(&s)).await.expect("connect");
    let head = format!(
        "POST /v1/topics/T/messages HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"body\":",
        addr_of(&s)
    );
    stalled.write_all(head.as_bytes()).await.expect("head");
    // Bounded wait for the facade to give the slot back (a timeout of up to a minute passes).
    let mut served = false;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if s.get("/healthz").await.0 == 200 {
            served = true;
            break;
        }
    }
    assert!(
        served,
        "the stalled upload still holds the only request slot"
    );
    drop(stalled);
    s.stop().await;
}

/// A request stalled in its body upload holds one of `max_concurrent_requests`; the next is
/// 429 at once, the probes still answer, and the slot is free again once the upload ends.
#[tokio::test]
async fn requests_over_max_concurrent_requests_are_429_and_served_again_after() {
    let s = common::start_with(Options {
        http: sluice_http::HttpConfig {
            max_concurrent_requests: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..sluice_http::HttpConfig::default()
        },
        ..Options::default()
    })
    .await;
    s.create_topic("T", 1);
    let mut upload = TcpStream::connect(addr_of(&s)).await.expect("connect");
    let body = br#"{"body": "stalled"}"#;
    let (first, rest) = body.split_at(8);
    let head = format!(
        "POST /v1/topics/T/messages HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        addr_of(&s),
        body.len()
    );
    upload.write_all(head.as_bytes()).await.unwrap();
    upload.write_all(first).await.unwrap();
    let mut shed = None;
    for _ in 0..200 {
        let r = s
            .http
            .post(s.url("/v1/topics/T/messages"))
            .json(&json!({"body": "x"}))
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 429 {
            let retry_after = r.headers().get("retry-after").cloned();
            let (_, body) = common::status_json(r).await;
            shed = Some((error_code(&body).to_owned(), retry_after));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (code, retry_after) = shed.expect("shed");
    assert_eq!(code, "too_many_requests");
    assert_eq!(
        retry_after.as_ref().and_then(|v| v.to_str().ok()),
        Some("1"),
        "a 429 says when to retry"
    );
    assert_eq!(s.get("/healthz").await.0, 200, "probes are never shed");
    assert_eq!(s.get("/readyz").await.0, 200, "probes are never shed");
    upload.write_all(rest).await.unwrap();
    let mut answer = [0u8; 512];
    let n = upload.read(&mut answer).await.unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 201"),
        "the stalled send itself is served"
    );
    a_small_send_succeeds(&s).await;
    s.stop().await;
}

/// Long polls have their own budget: idle consumers polling do not take the slots acks need
/// (a refused ack lets its lease run out, which counts toward the DLQ).
#[tokio::test]
async fn long_polls_over_max_long_polls_are_429_and_do_not_starve_other_requests() {
    let s = common::start_with(Options {
        http: sluice_http::HttpConfig {
            max_concurrent_requests: 1,
            max_long_polls: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..sluice_http::HttpConfig::default()
        },
        ..Options::default()
    })
    .await;
    s.create_topic("Idle", 1);
    s.create_topic("T", 1);
    // A long poll on an empty topic holds the only long-poll slot until its wait ends.
    let poll = {
        let (http, url) = (s.http.clone(), s.url("/v1/groups/g/topics/Idle/receive"));
        tokio::spawn(async move {
            let r = http
                .post(url)
                .json(&json!({"wait_ms": 3000}))
                .send()
                .await
                .expect("long poll");
            r.status().as_u16()
        })
    };
    let mut shed = None;
    for _ in 0..200 {
        let (st, r) = s
            .post("/v1/groups/g2/topics/Idle/receive", json!({"wait_ms": 0}))
            .await;
        if st == 429 {
            shed = Some(error_code(&r).to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        shed.as_deref(),
        Some("too_many_requests"),
        "a second poll is shed"
    );
    a_small_send_succeeds(&s).await;
    let (st, _) = s
        .post("/v1/groups/g/ack", json!({"receipts": ["nonsense"]}))
        .await;
    assert_eq!(st, 200, "an ack is served while the poll waits");
    assert_eq!(poll.await.unwrap(), 200, "the long poll itself is served");
    s.stop().await;
}

/// True once the server closed `stream` (EOF or reset), waiting at most `limit`.
async fn closed_by_server(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A slow-loris client (request line and headers trickled, never finished) and an idle
/// keep-alive connection are both closed after `header_read_timeout`, and the facade keeps
/// serving everyone else.
#[tokio::test]
async fn trickled_headers_and_idle_connections_are_closed_after_the_header_read_timeout() {
    let s = common::start_with(Options {
        http: sluice_http::HttpConfig {
            header_read_timeout: Duration::from_millis(500),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..sluice_http::HttpConfig::default()
        },
        ..Options::default()
    })
    .await;
    s.create_topic("T", 1);
    let mut loris = TcpStream::connect(addr_of(&s)).await.expect("connect");
    loris.write_all(b"POST /v1/topics/T/mess").await.unwrap();
    let mut idle = TcpStream::connect(addr_of(&s)).await.expect("connect");
    let get = format!("GET /healthz HTTP/1.1\r\nhost: {}\r\n\r\n", addr_of(&s));
    idle.write_all(get.as_bytes()).await.unwrap();
    let mut answer = [0u8; 512];
    let n = idle.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "served once");

    // Keep trickling: a byte every 100 ms does not extend the deadline.
    let mut dropped = false;
    for b in b"ages HTTP/1.1\r\nhost: x\r\nx-slow: "
        .iter()
        .cycle()
        .take(300)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if loris.write_all(&[*b]).await.is_err() {
            dropped = true;
            break;
        }
    }
    assert!(
        dropped || closed_by_server(&mut loris, Duration::from_secs(30)).await,
        "a client trickling its headers is disconnected"
    );
    assert!(
        closed_by_server(&mut idle, Duration::from_secs(30)).await,
        "an idle keep-alive connection is closed"
    );
    a_small_send_succeeds(&s).await;
    s.stop().await;
}

/// A connection that sends nothing, or only the start of an HTTP/2 preface, is closed after
/// `header_read_timeout` too: before, the server waited for enough bytes to tell HTTP/1 from
/// HTTP/2 with no deadline, so silent connections could take every slot.
#[tokio::test]
async fn silent_connections_and_a_stalled_http2_preface_are_closed_after_the_header_read_timeout() {
    let s = common::start_with(Options {
        http: sluice_http::HttpConfig {
            header_read_timeout: Duration::from_millis(500),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..sluice_http::HttpConfig::default()
        },
        ..Options::default()
    })
    .await;
    s.create_topic("T", 1);
    let mut silent = TcpStream::connect(addr_of(&s)).await.expect("connect");
    let mut preface = TcpStream::connect(addr_of(&s)).await.expect("connect");
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(
        closed_by_server(&mut silent, Duration::from_secs(30)).await,
        "a connection that never sends a byte is closed"
    );
    assert!(
        closed_by_server(&mut preface, Duration::from_secs(30)).await,
        "a connection stalled in an HTTP/2 preface is closed"
    );
    a_small_send_succeeds(&s).await;
    s.stop().await;
}

/// Connections beyond `max_connections` are closed at once (and counted); admitted ones keep
/// working, and a slot freed by a closed connection is reused.
#[tokio::test]
async fn connections_over_max_connections_are_closed_and_admitted_ones_keep_working() {
    let s = common::start_with(Options {
        http: sluice_http::HttpConfig {
            max_connections: 2,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..sluice_http::HttpConfig::default()
        },
        ..Options::default()
    })
    .await;
    let a = TcpStream::connect(addr_of(&s)).await.expect("connect");
    let b = TcpStream::connect(addr_of(&s)).await.expect("connect");
    let mut extra = TcpStream::connect(addr_of(&s)).await.expect("connect");
    assert!(
        closed_by_server(&mut extra, Duration::from_secs(10)).await,
        "a third connection is closed"
    );
    for conn in [a, b] {
        let mut conn = conn;
        let get = format!("GET /healthz HTTP/1.1\r\nhost: {}\r\n\r\n", addr_of(&s));
        conn.write_all(get.as_bytes()).await.unwrap();
        let mut answer = [0u8; 512];
        let n = conn.read(&mut answer).await.unwrap();
        assert!(
            answer[..n].starts_with(b"HTTP/1.1 200"),
            "admitted ones answer"
        );
    }
    // Both admitted connections are dropped now; their slots come back.
    let mut ok = false;
    for _ in 0..100 {
        if raw_status(
            &s,
            "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_string(),
            b"",
        )
        .await
            == Some(200)
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "freed slots are reused");
    // Counted for operators (a refusal left only a log line per connection before): the
    // third connection, and any of the tries above made before a slot came back.
    let metrics = s.metrics().await;
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_http_connections_refused_total "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        refused >= Some(1),
        "the refused connection is counted: {refused:?}"
    );
    s.stop().await;
}

/// `[broker] max_topics`: past it a new topic is refused, by the admin API (422) and by an
/// auto-creating send (404: the topic does not exist, and the message says why); topics that
/// exist keep working, and deleting one makes room.
#[tokio::test]
async fn past_max_topics_new_topics_are_refused_with_the_reason_and_existing_ones_work() {
    const MAX: usize = 12;
    let s = common::start_with(Options {
        broker: Box::new(|b| b.max_topics = MAX),
        ..Options::default()
    })
    .await;
    let mut created = Vec::new();
    let mut refused = None;
    for i in 0..MAX {
        let name = format!("T{i}");
        let (status, body) = s
            .post("/v1/topics", json!({ "name": name, "queues": 1 }))
            .await;
        if status == 422 {
            refused = Some(body);
            break;
        }
        assert_eq!(status, 201, "{body}");
        created.push(name);
    }
    let refused = refused.expect("the broker's own topics plus ours reach the limit");
    assert_eq!(error_code(&refused), "unprocessable");
    assert!(refused.to_string().contains("max_topics"), "{refused}");
    assert!(
        !created.is_empty(),
        "the limit is above the broker's own topics"
    );

    let (status, body) = s
        .post("/v1/topics/Auto/messages", json!({"body": "x"}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (404, "topic_not_found"),
        "{body}"
    );
    assert!(body.to_string().contains("max_topics"), "{body}");
    let path = format!("/v1/topics/{}/messages", created[0]);
    assert_eq!(s.post(&path, json!({"body": "x"})).await.0, 201);

    assert_eq!(s.delete(&format!("/v1/topics/{}", created[0])).await.0, 204);
    let (status, body) = s
        .post("/v1/topics/Auto/messages", json!({"body": "x"}))
        .await;
    assert_eq!(status, 201, "deleting a topic makes room: {body}");
    s.stop().await;
}

/// Arrays in a body are counted while they are parsed: `[0,0,0,...]` of a few MiB built
/// millions of values (over ten times the body in memory) before the configured bound
/// refused it. Past 100 000 entries the body is refused as it is read (400), and a batch
/// keeps each entry's JSON text, parsed one at a time.
#[tokio::test]
async fn arrays_past_their_bound_are_refused_while_parsed_and_batches_still_work() {
    let s = common::start().await;
    s.create_topic("T", 1);
    let zeros = vec![0u8; 100_001];
    let empties = vec![""; 100_001];
    for (path, body) in [
        ("/v1/topics/T/messages:batch", json!({"messages": zeros})),
        ("/v1/groups/g/ack", json!({"receipts": empties})),
    ] {
        let (st, r) = s.post(path, body).await;
        assert_eq!((st, error_code(&r)), (400, "invalid_json"), "{path}: {r}");
        assert!(
            r.to_string().contains("at most 100000 entries"),
            "{path}: {r}"
        );
    }
    let (st, r) = s
        .post(
            "/v1/topics/T/messages:batch",
            json!({"messages": [
                {"body": "a", "sharding_key": "k"},
                7,
                {"body": "b", "sharding_key": "k"},
                {"body": "c"}
            ]}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let oks: Vec<bool> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ok"].as_bool().unwrap())
        .collect();
    assert_eq!(oks, [true, false, true, true], "{r}");
    s.stop().await;
}
