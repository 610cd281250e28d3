//! The server-wide byte budget of running requests (`ServerOptions::max_inflight_bytes`),
//! against a processor whose handlers wait at a gate, so requests hold their bytes for as long
//! as the test says.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::{response_code, RemotingCommand};
use sluice_remoting::{ConnectionHandle, RemotingClient};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::server::{Processor, Server, ServerOptions};
use super::tracker::TaskTracker;
use super::ConnectionRegistry;
use crate::stats::Counters;

const BUDGET: usize = 10_000;
const WAIT: Duration = Duration::from_secs(10);

/// Handlers count themselves in, then wait for a permit of `gate`.
struct Gated {
    started: AtomicUsize,
    gate: Semaphore,
}

impl Processor for Gated {
    async fn process(
        self: Arc<Self>,
        _conn: ConnectionHandle,
        request: RemotingCommand,
    ) -> Option<RemotingCommand> {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.gate.acquire().await.expect("gate open").forget();
        Some(RemotingCommand::response_to(
            &request,
            response_code::SUCCESS,
            None,
        ))
    }
}

async fn start() -> (Server, Arc<Gated>, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = ServerOptions {
        name: "test",
        max_frame: 8192,
        max_body: 8192,
        max_inflight: 16,
        max_inflight_bytes: BUDGET,
        max_connections: 16,
        drain_timeout: WAIT,
        idle_timeout: Duration::from_secs(60),
        tls: None,
    };
    let processor = Arc::new(Gated {
        started: AtomicUsize::new(0),
        gate: Semaphore::new(0),
    });
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

/// A request whose frame is a little over `body` bytes.
fn request(body: usize) -> RemotingCommand {
    RemotingCommand::request(9999, Default::default()).with_body(vec![7u8; body])
}

/// Sends `cmd` on `client` in a task and waits until the server's handlers started `count`.
async fn started_with(
    client: &Arc<RemotingClient>,
    gated: &Gated,
    cmd: RemotingCommand,
    count: usize,
) -> tokio::task::JoinHandle<RemotingCommand> {
    let c = Arc::clone(client);
    let task = tokio::spawn(async move { c.invoke(cmd, WAIT).await.unwrap() });
    let deadline = tokio::time::Instant::now() + WAIT;
    while gated.started.load(Ordering::SeqCst) < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "handler {count} never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task
}

#[tokio::test]
async fn past_the_byte_budget_a_pipelined_request_is_busy_but_an_idle_connection_gets_through() {
    let (server, gated, addr) = start().await;
    let a = Arc::new(RemotingClient::connect(addr).await.unwrap());
    let b = Arc::new(RemotingClient::connect(addr).await.unwrap());

    // A's first request takes 6 KB of the 10 KB budget.
    let first = started_with(&a, &gated, request(6000), 1).await;
    // A's second would pass the budget while A has one running: busy, never handled.
    let second = a.invoke(request(6000), WAIT).await.unwrap();
    assert_eq!(second.code, response_code::SYSTEM_BUSY);
    let remark = second.remark.unwrap_or_default();
    assert!(remark.contains("bytes of requests"), "{remark}");
    assert_eq!(gated.started.load(Ordering::SeqCst), 1);
    // B has nothing running: its request goes through over the budget.
    let third = started_with(&b, &gated, request(6000), 2).await;

    gated.gate.add_permits(2);
    assert_eq!(first.await.unwrap().code, response_code::SUCCESS);
    assert_eq!(third.await.unwrap().code, response_code::SUCCESS);

    // Every byte came back: 6 KB and then 3 KB more run together on one connection.
    let fourth = started_with(&a, &gated, request(6000), 3).await;
    let fifth = started_with(&a, &gated, request(3000), 4).await;
    gated.gate.add_permits(2);
    assert_eq!(fourth.await.unwrap().code, response_code::SUCCESS);
    assert_eq!(fifth.await.unwrap().code, response_code::SUCCESS);
    server.stop().await;
}
