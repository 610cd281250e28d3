//! The byte budgets of running requests (`budget`), against a processor whose handlers wait
//! at a gate of their own (keyed by request code), so requests hold their bytes for as long as
//! the test says.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_protocol::{response_code, RemotingCommand};
use sluice_remoting::{ConnectionHandle, RemotingClient};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::server::{Processor, Server, ServerOptions};
use super::tracker::TaskTracker;
use super::ConnectionRegistry;
use crate::stats::Counters;

const MAX_FRAME: usize = 8192;
const WAIT: Duration = Duration::from_secs(10);

/// Handlers note their request code, then wait for a permit of that code's gate.
#[derive(Default)]
struct Gated {
    started: Mutex<Vec<i32>>,
    gates: Mutex<HashMap<i32, Arc<Semaphore>>>,
}

impl Gated {
    fn gate(&self, code: i32) -> Arc<Semaphore> {
        Arc::clone(
            self.gates
                .lock()
                .entry(code)
                .or_insert_with(|| Arc::new(Semaphore::new(0))),
        )
    }

    fn open(&self, code: i32) {
        self.gate(code).add_permits(1);
    }

    fn has_started(&self, code: i32) -> bool {
        self.started.lock().contains(&code)
    }
}

impl Processor for Gated {
    async fn process(
        self: Arc<Self>,
        _conn: ConnectionHandle,
        request: RemotingCommand,
    ) -> Option<RemotingCommand> {
        self.started.lock().push(request.code);
        let gate = self.gate(request.code);
        gate.acquire().await.expect("gate open").forget();
        Some(RemotingCommand::response_to(
            &request,
            response_code::SUCCESS,
            None,
        ))
    }

    /// As the broker's processor says of END_TRANSACTION and UPDATE_CONSUMER_OFFSET.
    fn answer_unread(&self, cmd: &RemotingCommand) -> bool {
        crate::processor::answers_unread(cmd.code)
    }
}

async fn start(budget: usize) -> (Server, Arc<Gated>, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = ServerOptions {
        name: "test",
        max_frame: MAX_FRAME,
        max_body: MAX_FRAME,
        max_inflight: 16,
        max_inflight_bytes: budget,
        max_connections: 16,
        drain_timeout: WAIT,
        idle_timeout: Duration::from_secs(60),
        tls: None,
    };
    let processor = Arc::new(Gated::default());
    let server = Server::start(
        listener,
        opts,
        Arc::clone(&processor),
        Arc::new(ConnectionRegistry::default()),
        Arc::new(Counters::default()),
        Arc::new(TaskTracker::default()),
    )
    .unwrap();
    let addr = server.local_addr();
    (server, processor, addr)
}

async fn connect(addr: SocketAddr) -> Arc<RemotingClient> {
    Arc::new(RemotingClient::connect(addr).await.unwrap())
}

/// Request `code` with a frame a little over `body` bytes.
fn request(code: i32, body: usize) -> RemotingCommand {
    RemotingCommand::request(code, Default::default()).with_body(vec![7u8; body])
}

/// Sends request `code` on `client` in a task and waits until its handler started.
async fn started(
    client: &Arc<RemotingClient>,
    gated: &Gated,
    code: i32,
    body: usize,
) -> tokio::task::JoinHandle<RemotingCommand> {
    let task = sent(client, code, body);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !gated.has_started(code) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request {code} never started"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    task
}

/// Sends request `code` on `client` in a task.
fn sent(
    client: &Arc<RemotingClient>,
    code: i32,
    body: usize,
) -> tokio::task::JoinHandle<RemotingCommand> {
    let c = Arc::clone(client);
    tokio::spawn(async move { c.invoke(request(code, body), WAIT).await.unwrap() })
}

/// A request answered SYSTEM_BUSY whose remark names `limit`, never handled.
async fn assert_busy(client: &RemotingClient, gated: &Gated, code: i32, body: usize, limit: &str) {
    let resp = client.invoke(request(code, body), WAIT).await.unwrap();
    assert_eq!(resp.code, response_code::SYSTEM_BUSY, "request {code}");
    let remark = resp.remark.unwrap_or_default();
    assert!(remark.contains(limit), "request {code}: {remark}");
    assert!(!gated.has_started(code));
}

async fn assert_answered(tasks: Vec<tokio::task::JoinHandle<RemotingCommand>>) {
    for t in tasks {
        assert_eq!(t.await.unwrap().code, response_code::SUCCESS);
    }
}

#[tokio::test]
async fn past_the_server_budget_a_request_waits_and_is_busy_but_an_idle_connection_gets_through() {
    // 10 KB across the server; each connection's share is one largest frame (8 KiB).
    let (server, gated, addr) = start(10_000).await;
    let (a, b, c) = (
        connect(addr).await,
        connect(addr).await,
        connect(addr).await,
    );

    let b1 = started(&b, &gated, 1, 6000).await;
    let c2 = started(&c, &gated, 2, 3000).await;
    // Under 1 KB left. A has nothing running: its request goes through over the budget.
    let a3 = started(&a, &gated, 3, 6000).await;
    // Now A has a request running: busy.
    assert_busy(&a, &gated, 4, 1000, "on this server").await;
    // A's next request waits for the budget. A's running request finishes meanwhile, giving
    // the server nothing back (it ran over the budget), but the waiting request is now A's
    // only one, so it goes through at once.
    let a5 = sent(&a, 5, 1000);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!gated.has_started(5), "waiting for the budget");
    gated.open(3);
    assert_answered(vec![a3]).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !gated.has_started(5) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request 5 never started"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for code in [1, 2, 5] {
        gated.open(code);
    }
    assert_answered(vec![b1, c2, a5]).await;

    // Every byte came back: 3 KB and then 4 KB more run together on one connection (a leak of
    // any request's bytes above would leave too little for the second).
    let a6 = started(&a, &gated, 6, 3000).await;
    let a7 = started(&a, &gated, 7, 4000).await;
    gated.open(6);
    gated.open(7);
    assert_answered(vec![a6, a7]).await;
    server.stop().await;
}

#[tokio::test]
async fn a_connection_holds_at_most_its_share_of_the_byte_budget() {
    // 40 KB across the server, a quarter (10 KB) per connection.
    let (server, gated, addr) = start(40_000).await;
    let (a, b) = (connect(addr).await, connect(addr).await);
    let a1 = started(&a, &gated, 1, 6000).await;
    assert_busy(&a, &gated, 2, 6000, "on this connection").await;
    // The server has room: another connection is not held back by A's share.
    let b3 = started(&b, &gated, 3, 6000).await;
    gated.open(1);
    gated.open(3);
    assert_answered(vec![a1, b3]).await;
    server.stop().await;
}

/// C++ clients send END_TRANSACTION and UPDATE_CONSUMER_OFFSET with flag 0 and drop the
/// answer: answered busy, a commit or an offset was lost without anyone noticing. They wait
/// for room like one-way requests.
#[tokio::test]
async fn requests_sent_without_waiting_for_an_answer_wait_for_room_instead_of_busy() {
    use sluice_protocol::request_code::{END_TRANSACTION, UPDATE_CONSUMER_OFFSET};
    let (server, gated, addr) = start(40_000).await;
    let a = connect(addr).await;
    for (blocker, code) in [(101, END_TRANSACTION), (102, UPDATE_CONSUMER_OFFSET)] {
        let running = started(&a, &gated, blocker, 6000).await;
        assert_busy(&a, &gated, 200 + blocker, 6000, "on this connection").await;
        let waiting = sent(&a, code, 6000);
        // Past the 200 ms after which an answered request is refused busy.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !waiting.is_finished(),
            "request {code} was not refused busy"
        );
        assert!(!gated.has_started(code), "request {code} waits for room");
        gated.open(blocker);
        assert_answered(vec![running]).await;
        gated.open(code);
        assert_answered(vec![waiting]).await;
    }
    server.stop().await;
}
