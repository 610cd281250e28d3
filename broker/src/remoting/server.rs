//! The TCP side of a server (broker or name server): accept loop, per-connection reader, one
//! task per request, and everything that must not let one client hurt the others.
//!
//! Per connection: a reader turns bytes into commands; each request runs in its own task,
//! at most `max_inflight` at once (beyond that the reader waits up to 200 ms for a slot,
//! without reading ahead, then answers SYSTEM_BUSY); responses go through a bounded queue to
//! the writer task. One-way requests have a budget of their own of the same size: they cannot
//! be answered "busy", so the reader waits for a slot (back-pressure on that connection), and
//! they never take the slots of requests that wait for an answer. The bytes of running
//! requests are bounded too, per connection and across the server (`budget`), since each
//! per-connection count times the largest frame is gigabytes. A handler that panics is caught
//! (`catch_unwind` around its future) and answered SYSTEM_ERROR. Only an undecodable frame,
//! the idle timeout, or a peer that accepts no bytes for the idle timeout (it stopped reading;
//! see `sluice_remoting::io::write_loop_with`) closes a connection; a body over the cap is
//! answered MESSAGE_ILLEGAL and the connection stays usable.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use sluice_protocol::remoting::frame::flag;
use sluice_protocol::{response_code, FrameDecoder, RemotingCommand};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::budget::{self, Held, Inflight, Limit, ServerBudget};
use super::registry::ConnectionRegistry;
use super::tracker::{TaskGuard, TaskTracker};
use crate::stats::Counters;
use sluice_remoting::io::{write_loop_with, FrameReader, Inbound, ReadError};
use sluice_remoting::tls::{self, ReadHalf, WriteHalf};
use sluice_remoting::{ConnectionHandle, ServerTls, TlsMode};

/// Handles the requests of one kind of server.
pub(crate) trait Processor: Send + Sync + 'static {
    /// Handles one request; `None` means "no response" (one-way requests, or a response that
    /// will be sent later through `conn`, as a parked pull does).
    fn process(
        self: Arc<Self>,
        conn: ConnectionHandle,
        request: RemotingCommand,
    ) -> impl Future<Output = Option<RemotingCommand>> + Send + 'static;

    /// Called once when a connection is gone, after its in-flight requests finished.
    fn on_closed(&self, _conn: &ConnectionHandle) {}

    /// Whether clients send `cmd` without reading its answer although it is not marked
    /// one-way: it then waits for room as a one-way request does instead of being answered
    /// SYSTEM_BUSY, which nobody would read (the request would be lost silently).
    fn answer_unread(&self, _cmd: &RemotingCommand) -> bool {
        false
    }
}

/// Java's `serverChannelMaxIdleTimeSeconds`.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Limits and names of one server.
#[derive(Debug, Clone)]
pub(crate) struct ServerOptions {
    pub(crate) name: &'static str,
    pub(crate) max_frame: usize,
    pub(crate) max_body: usize,
    pub(crate) max_inflight: usize,
    /// Bytes of request frames running at once across every connection (see the module docs);
    /// at least `max_frame`.
    pub(crate) max_inflight_bytes: usize,
    pub(crate) max_connections: usize,
    /// How long a closing connection waits for its in-flight requests.
    pub(crate) drain_timeout: Duration,
    /// A connection that completes no frame for this long is closed (Java's
    /// `serverChannelMaxIdleTimeSeconds`, 120 s; clients heartbeat every 30 s). This also
    /// drops peers that trickle a frame byte by byte. It bounds writes too: a peer that
    /// accepts no bytes for this long (it stopped reading) is closed, so its writer, the
    /// handlers waiting to queue its responses and its slots are all freed.
    pub(crate) idle_timeout: Duration,
    /// TLS (permissive: TLS and plaintext on one port; enforcing: TLS only). `None`: plaintext.
    pub(crate) tls: Option<ServerTls>,
}

/// Everything the accept loop and connection tasks share.
struct Shared<P> {
    opts: ServerOptions,
    processor: Arc<P>,
    registry: Arc<ConnectionRegistry>,
    counters: Arc<Counters>,
    tracker: Arc<TaskTracker>,
    shutdown: watch::Receiver<bool>,
    connection_slots: Arc<Semaphore>,
    budget: ServerBudget,
}

/// A running server; [`Server::shutdown`] stops it.
pub(crate) struct Server {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

impl Server {
    /// Starts accepting on `listener`.
    pub(crate) fn start<P: Processor>(
        listener: TcpListener,
        opts: ServerOptions,
        processor: Arc<P>,
        registry: Arc<ConnectionRegistry>,
        counters: Arc<Counters>,
        tracker: Arc<TaskTracker>,
    ) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            connection_slots: Arc::new(Semaphore::new(opts.max_connections)),
            budget: ServerBudget::new(opts.max_inflight_bytes, shutdown_rx.clone()),
            opts,
            processor,
            registry,
            counters,
            tracker,
            shutdown: shutdown_rx,
        });
        let accept = tokio::spawn(accept_loop(listener, shared));
        Ok(Self {
            local_addr,
            shutdown,
            accept,
        })
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and tells every connection to stop reading. Connections then wait for
    /// their in-flight requests, flush and close; the caller waits on the task tracker.
    pub(crate) async fn stop(self) {
        self.shutdown.send_replace(true);
        let _ = self.accept.await;
    }
}

async fn accept_loop<P: Processor>(listener: TcpListener, shared: Arc<Shared<P>>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match accepted {
            Ok((stream, remote)) => admit(stream, remote, &shared),
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, and say so once per
                // 10 s (a line per retry, 20 a second, flooded the log).
                if let Some(held_back) = ACCEPT_FAILED_LOG.allow(shared.opts.name) {
                    tracing::warn!(server = shared.opts.name, error = %e, held_back, "accept failed (new connections wait; with too many open files, raise the process's limit)");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!(server = shared.opts.name, "stopped accepting connections");
}

fn admit<P: Processor>(stream: TcpStream, remote: SocketAddr, shared: &Arc<Shared<P>>) {
    let Ok(slot) = Arc::clone(&shared.connection_slots).try_acquire_owned() else {
        Counters::inc(&shared.counters.connections_refused);
        if let Some(held_back) = TOO_MANY_LOG.allow("too_many") {
            tracing::warn!(server = shared.opts.name, %remote, limit = shared.opts.max_connections, held_back, "connection refused: too many connections");
        }
        return; // dropping the stream closes it
    };
    let _ = stream.set_nodelay(true);
    Counters::inc(&shared.counters.connections_accepted);
    let guard = shared.tracker.guard();
    tokio::spawn(serve_connection(
        stream,
        remote,
        Arc::clone(shared),
        slot,
        guard,
    ));
}

async fn serve_connection<P: Processor>(
    stream: TcpStream,
    remote: SocketAddr,
    shared: Arc<Shared<P>>,
    _slot: OwnedSemaphorePermit,
    _guard: TaskGuard,
) {
    let local = stream.local_addr().unwrap_or(remote);
    let (rd, wr) = match open_stream(stream, remote, &shared.opts).await {
        Ok(halves) => halves,
        Err(why) => {
            Counters::inc(&shared.counters.connections_not_opened);
            if why.quiet {
                tracing::debug!(server = shared.opts.name, %remote, reason = %why.reason, "connection closed before a request");
            } else if let Some(held_back) = NOT_OPENED_LOG.allow(why.kind) {
                tracing::warn!(server = shared.opts.name, %remote, reason = %why.reason, held_back, "connection refused");
            }
            return;
        }
    };
    let (tx, rx) = mpsc::channel(shared.opts.max_inflight * 2 + 16);
    let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
    let conn = ConnectionHandle::new(id, remote, local, tx);
    let writer = tokio::spawn(write_loop_with(
        wr,
        rx,
        conn.clone(),
        shared.opts.idle_timeout,
    ));
    shared.registry.insert(conn.clone());
    Counters::inc(&shared.counters.connections_open);
    tracing::debug!(server = shared.opts.name, %remote, conn_id = id, "connection opened");

    let inflight = Inflight::new(
        shared.opts.max_inflight,
        shared.opts.max_inflight_bytes,
        shared.opts.max_frame,
    );
    let reason = read_requests(&shared, &conn, &inflight, rd).await;
    tracing::debug!(server = shared.opts.name, %remote, conn_id = id, reason = %reason, "connection closing");

    let drained = tokio::time::timeout(shared.opts.drain_timeout, inflight.drain()).await;
    if drained.is_err() {
        tracing::warn!(server = shared.opts.name, %remote, "in-flight requests still running after the drain timeout");
    }
    shared.registry.remove(id);
    shared.processor.on_closed(&conn);
    conn.close();
    let _ = writer.await;
    Counters::dec(&shared.counters.connections_open);
}

/// Connections refused at `max_connections`: one warning per 10 s (a reconnect storm).
static TOO_MANY_LOG: crate::log_every::LogEvery =
    crate::log_every::LogEvery::new(Duration::from_secs(10));
/// Failed accepts, per server.
static ACCEPT_FAILED_LOG: crate::log_every::LogEvery =
    crate::log_every::LogEvery::new(Duration::from_secs(10));
/// Connections refused on a TLS port (plaintext where enforced, failed handshakes).
static NOT_OPENED_LOG: crate::log_every::LogEvery =
    crate::log_every::LogEvery::new(Duration::from_secs(10));

/// Why a connection was closed before its first request.
struct NotOpened {
    reason: String,
    /// For the rate-limited warning: `plaintext` or `handshake`.
    kind: &'static str,
    /// Nothing was sent: a TCP health probe or a port scan, not worth a warning.
    quiet: bool,
}

impl NotOpened {
    fn loud(kind: &'static str, reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            kind,
            quiet: false,
        }
    }
}

/// The connection's halves: plaintext, or TLS after a handshake (bounded by the idle
/// timeout). With TLS on, the first byte tells a handshake from a RocketMQ frame.
async fn open_stream(
    stream: TcpStream,
    remote: SocketAddr,
    opts: &ServerOptions,
) -> Result<(ReadHalf, WriteHalf), NotOpened> {
    let plain = |stream: TcpStream| {
        let (rd, wr) = stream.into_split();
        (Box::new(rd) as ReadHalf, Box::new(wr) as WriteHalf)
    };
    let Some(tls) = &opts.tls else {
        return Ok(plain(stream));
    };
    let mut first = [0u8; 1];
    let quiet = |reason: &str| NotOpened {
        reason: reason.to_owned(),
        kind: "silent",
        quiet: true,
    };
    match tokio::time::timeout(opts.idle_timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        Ok(Ok(_)) => return Err(quiet("closed before sending anything")),
        Ok(Err(e)) => return Err(quiet(&e.to_string())),
        Err(_) => return Err(quiet("sent nothing within the idle timeout")),
    }
    if first[0] != tls::HANDSHAKE_BYTE {
        return match tls.mode {
            TlsMode::Permissive => Ok(plain(stream)),
            TlsMode::Enforcing => Err(NotOpened::loud("plaintext", "plaintext on a TLS-only port")),
        };
    }
    match tokio::time::timeout(opts.idle_timeout, tls.acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            tracing::debug!(server = opts.name, %remote, "TLS connection");
            Ok(tls::split(s))
        }
        Ok(Err(e)) => Err(NotOpened::loud("handshake", format!("TLS handshake: {e}"))),
        Err(_) => Err(NotOpened::loud(
            "handshake",
            "TLS handshake not finished within the idle timeout",
        )),
    }
}

/// Reads until the peer leaves, the stream breaks or the server stops; returns why.
async fn read_requests<P: Processor>(
    shared: &Arc<Shared<P>>,
    conn: &ConnectionHandle,
    inflight: &Inflight,
    rd: ReadHalf,
) -> String {
    let mut reader = FrameReader::new(
        rd,
        FrameDecoder::new(shared.opts.max_frame, shared.opts.max_body),
    );
    let mut shutdown = shared.shutdown.clone();
    loop {
        let next = tokio::select! {
            r = tokio::time::timeout(shared.opts.idle_timeout, reader.next()) => match r {
                Ok(r) => r,
                Err(_) => return format!("no complete frame for {:?}", shared.opts.idle_timeout),
            },
            _ = shutdown.wait_for(|s| *s) => return "server shutting down".into(),
            () = conn.closed() => return "closed by the server".into(),
        };
        match next {
            Ok(Some(Inbound::Command(cmd))) if cmd.is_response() => {
                if !conn.complete(cmd) {
                    tracing::debug!(remote = %conn.remote_addr(), "response with unknown opaque dropped");
                }
            }
            Ok(Some(Inbound::Command(cmd))) => {
                // Answer in kind: a peer that sends binary headers reads them, one that sends
                // JSON (the C++ client) may read nothing else.
                if reader.last_binary() != conn.binary_headers() {
                    conn.set_binary_headers(reader.last_binary());
                }
                dispatch(shared, conn, inflight, cmd, reader.last_len()).await
            }
            Ok(Some(Inbound::Oversize {
                command,
                body_len,
                max,
            })) => reject_oversize(shared, conn, *command, body_len, max).await,
            Ok(None) => return "peer closed".into(),
            Err(e) => {
                if matches!(e, ReadError::Frame(_)) {
                    Counters::inc(&shared.counters.bad_frames);
                    tracing::warn!(server = shared.opts.name, remote = %conn.remote_addr(), error = %e, "closing connection on an undecodable frame");
                }
                return e.to_string();
            }
        }
    }
}

/// How long a request waits for an in-flight slot on its connection before it is answered
/// SYSTEM_BUSY.
const BUSY_AFTER: Duration = Duration::from_millis(200);

/// Starts a task for one request, or answers SYSTEM_BUSY when the connection stays at its
/// limit (or the server at its byte budget) for [`BUSY_AFTER`].
async fn dispatch<P: Processor>(
    shared: &Arc<Shared<P>>,
    conn: &ConnectionHandle,
    inflight: &Inflight,
    cmd: RemotingCommand,
    len: usize,
) {
    Counters::inc(&shared.counters.requests);
    let mut at = Limit::Slots;
    let held = if cmd.is_oneway() || shared.processor.answer_unread(&cmd) {
        // A one-way request cannot be told "busy": its sender reads no answer, so dropping it
        // would lose it silently (an END_TRANSACTION, an offset commit). Wait for a slot
        // instead; this connection is not read meanwhile, which slows its sender down.
        match budget::hold(&shared.budget, inflight, &inflight.oneway, len, &mut at).await {
            Some(held) => held,
            None => return, // the server is stopping
        }
    } else {
        // A short wait first, during which this connection is not read (back-pressure), as
        // Java waits up to 200 ms (`waitTimeMillsInSendQueue`) before it answers busy: an async
        // producer keeping more sends outstanding than the limit is slowed, not failed (Java
        // 4.9 and Go clients do not retry SYSTEM_BUSY). Bounded, so a request that waits on
        // this connection's next read (a client's answer) cannot hold it up for long.
        let wait = budget::hold(&shared.budget, inflight, &inflight.answered, len, &mut at);
        match tokio::time::timeout(BUSY_AFTER, wait).await {
            Ok(Some(held)) => held,
            Ok(None) => return, // the server is stopping
            Err(_) => {
                Counters::inc(&shared.counters.overload_rejections);
                let remark = match at {
                    Limit::Slots => format!(
                        "[OVERLOAD]system busy, {} requests already in flight on this connection",
                        shared.opts.max_inflight
                    ),
                    Limit::Share => format!(
                        "[OVERLOAD]system busy, {} bytes of requests already in flight on this connection",
                        inflight.share()
                    ),
                    Limit::Server => format!(
                        "[OVERLOAD]system busy, {} bytes of requests already in flight on this server",
                        shared.opts.max_inflight_bytes
                    ),
                };
                let resp =
                    RemotingCommand::response_to(&cmd, response_code::SYSTEM_BUSY, Some(remark));
                // Waiting here is the back-pressure: a peer that does not read stops being read.
                // The wait is bounded: a writer stalled for the idle timeout closes the
                // connection, and this send then fails.
                let _ = conn.send(resp).await;
                return;
            }
        }
    };
    let guard = shared.tracker.guard();
    tokio::spawn(run_request(
        Arc::clone(shared),
        conn.clone(),
        cmd,
        held,
        guard,
    ));
}

async fn run_request<P: Processor>(
    shared: Arc<Shared<P>>,
    conn: ConnectionHandle,
    cmd: RemotingCommand,
    held: Held,
    _guard: TaskGuard,
) {
    let stub = RemotingCommand {
        code: cmd.code,
        opaque: cmd.opaque,
        flag: cmd.flag,
        ..RemotingCommand::default()
    };
    // The handler runs in this task: a panic is caught here rather than through a second
    // task's JoinError (one spawn and one wake-up fewer per request).
    let handler = Arc::clone(&shared.processor).process(conn.clone(), cmd);
    let response = match AssertUnwindSafe(handler).catch_unwind().await {
        Ok(response) => response,
        Err(_) => {
            Counters::inc(&shared.counters.handler_panics);
            tracing::error!(server = shared.opts.name, remote = %conn.remote_addr(), code = stub.code, "request handler panicked");
            let remark = format!("internal error while handling request code {}", stub.code);
            Some(RemotingCommand::response_to(
                &stub,
                response_code::SYSTEM_ERROR,
                Some(remark),
            ))
        }
    };
    let Some(mut response) = response else { return };
    if stub.is_oneway() {
        return;
    }
    response.opaque = stub.opaque;
    response.flag |= flag::RESPONSE;
    // The slot is freed before the response is queued: a client that keeps exactly
    // `max_inflight` requests outstanding must never be told "busy" because its next request
    // overtook this task's last step.
    let _ = conn.send_then(response, move || drop(held)).await;
}

async fn reject_oversize<P: Processor>(
    shared: &Arc<Shared<P>>,
    conn: &ConnectionHandle,
    cmd: RemotingCommand,
    body_len: usize,
    max: usize,
) {
    Counters::inc(&shared.counters.requests);
    Counters::inc(&shared.counters.oversize_bodies);
    tracing::warn!(server = shared.opts.name, remote = %conn.remote_addr(), code = cmd.code, body_len, max, "body over the limit refused");
    if cmd.is_response() || cmd.is_oneway() {
        return;
    }
    let remark = format!("the message body size {body_len} exceeds the limit {max}");
    let resp = RemotingCommand::response_to(&cmd, response_code::MESSAGE_ILLEGAL, Some(remark));
    let _ = conn.send(resp).await;
}
