//! The connection pool: one [`RemotingClient`] per server address, reconnected on demand, with
//! the requests servers send on their own (CHECK_TRANSACTION_STATE,
//! NOTIFY_CONSUMER_IDS_CHANGED) forwarded to the pool's owner on one bounded channel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_protocol::acl::Credentials;
use sluice_protocol::{request_code, response_code, RemotingCommand};
use sluice_remoting::{ClientOptions, ConnectionHandle, RemotingClient, RemotingError};
use tokio::sync::mpsc;

use crate::error::ClientError;

/// A request a server sent on its own, with the connection to answer on.
#[derive(Debug)]
pub(crate) struct ServerRequest {
    /// Where it came from; answers (END_TRANSACTION for a check) go back on it.
    pub(crate) conn: ConnectionHandle,
    /// The request.
    pub(crate) cmd: RemotingCommand,
}

/// Connections by `host:port`.
pub(crate) struct Pool {
    opts: ClientOptions,
    conns: Mutex<HashMap<String, Arc<RemotingClient>>>,
    /// One dial slot per address: concurrent callers of one address share one attempt (its
    /// connection, or its failure), while a dead address never delays connecting to another.
    dialing: Mutex<HashMap<String, Arc<DialSlot>>>,
    requests: mpsc::Sender<ServerRequest>,
    /// ACL credentials every request is signed with.
    credentials: Option<Credentials>,
}

impl Pool {
    /// A pool whose server-initiated requests go to `requests`.
    pub(crate) fn new(connect_timeout: Duration, requests: mpsc::Sender<ServerRequest>) -> Self {
        let opts = ClientOptions {
            connect_timeout,
            ..ClientOptions::default()
        };
        Self {
            opts,
            conns: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashMap::new()),
            requests,
            credentials: None,
        }
    }

    /// Sends binary ("ROCKETMQ") request headers instead of JSON.
    pub(crate) fn with_binary_headers(mut self, on: bool) -> Self {
        self.opts.binary_headers = on;
        self
    }

    /// Connects over TLS with these settings.
    pub(crate) fn with_tls(mut self, tls: Option<sluice_remoting::ClientTls>) -> Self {
        self.opts.tls = tls;
        self
    }

    /// Signs every request with `credentials` (RocketMQ ACL).
    pub(crate) fn with_credentials(mut self, credentials: Option<Credentials>) -> Self {
        self.credentials = credentials;
        self
    }

    fn signed(&self, mut cmd: RemotingCommand) -> RemotingCommand {
        if let Some(c) = &self.credentials {
            c.sign(&mut cmd);
        }
        cmd
    }

    /// The open connection to `addr`, connecting when there is none (or it closed). Callers
    /// that waited while another caller's attempt at the same address failed get that failure
    /// instead of trying again one after another (a black-holed broker would otherwise cost
    /// each of them a full `connect_timeout` in turn).
    pub(crate) async fn get(&self, addr: &str) -> Result<Arc<RemotingClient>, ClientError> {
        if let Some(c) = self.open(addr) {
            return Ok(c);
        }
        let slot = Arc::clone(self.dialing.lock().entry(addr.to_owned()).or_default());
        let arrived = Instant::now();
        let mut last_failure = slot.0.lock().await;
        if let Some(c) = self.open(addr) {
            return Ok(c);
        }
        if let Some((at, e)) = last_failure.as_ref() {
            if *at >= arrived {
                if let Some(e) = replay(e) {
                    return Err(e);
                }
            }
        }
        match self.connect(addr).await {
            Ok(c) => {
                *last_failure = None;
                // Callers waiting on this slot find the connection; new ones need no slot
                // until it closes. Kept, the map grew with every address ever dialled.
                self.dialing.lock().remove(addr);
                Ok(c)
            }
            Err(e) => {
                if let Some(copy) = replay(&e) {
                    *last_failure = Some((Instant::now(), copy));
                }
                Err(e)
            }
        }
    }

    async fn connect(&self, addr: &str) -> Result<Arc<RemotingClient>, ClientError> {
        let sock = resolve(addr, self.opts.connect_timeout).await?;
        let client = RemotingClient::connect_with(sock, self.opts.clone())
            .await
            .map_err(|e| ClientError::remoting(addr, e))?;
        if let Some(rx) = client.take_requests() {
            tokio::spawn(forward(
                rx,
                client.connection().clone(),
                self.requests.clone(),
            ));
        }
        let client = Arc::new(client);
        tracing::debug!(addr, local = %client.local_addr(), "connected");
        self.conns
            .lock()
            .insert(addr.to_owned(), Arc::clone(&client));
        Ok(client)
    }

    fn open(&self, addr: &str) -> Option<Arc<RemotingClient>> {
        let mut conns = self.conns.lock();
        match conns.get(addr) {
            Some(c) if !c.is_closed() => Some(Arc::clone(c)),
            Some(_) => {
                conns.remove(addr);
                None
            }
            None => None,
        }
    }

    /// Sends a request and waits for its response, whatever its code.
    pub(crate) async fn invoke(
        &self,
        addr: &str,
        cmd: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, ClientError> {
        self.invoke_held(addr, cmd, timeout, Duration::ZERO).await
    }

    /// As [`Pool::invoke`] for a request the broker may hold unanswered for up to `hold` (a
    /// long-polling pull): silence within it is expected, so a wait cut short within it (a
    /// rebalance dropping the queue) does not close the connection and fail every other
    /// request on it.
    pub(crate) async fn invoke_held(
        &self,
        addr: &str,
        cmd: RemotingCommand,
        timeout: Duration,
        hold: Duration,
    ) -> Result<RemotingCommand, ClientError> {
        let client = self.get(addr).await?;
        let mut silence = Silence::watch(addr, &client, timeout, hold);
        let result = client.invoke(self.signed(cmd), timeout).await;
        if result.is_ok() {
            silence.answered();
        }
        result.map_err(|e| ClientError::remoting(addr, e))
    }

    /// As [`Pool::invoke`], turning a non-SUCCESS code into [`ClientError::Broker`].
    pub(crate) async fn invoke_ok(
        &self,
        addr: &str,
        cmd: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, ClientError> {
        let resp = self.invoke(addr, cmd, timeout).await?;
        expect_success(addr, resp)
    }

    /// Sends a one-way request.
    pub(crate) async fn invoke_oneway(
        &self,
        addr: &str,
        cmd: RemotingCommand,
    ) -> Result<(), ClientError> {
        let client = self.get(addr).await?;
        client
            .invoke_oneway(self.signed(cmd))
            .await
            .map_err(|e| ClientError::remoting(addr, e))
    }

    /// Closes every connection.
    pub(crate) fn close_all(&self) {
        for (_, c) in self.conns.lock().drain() {
            c.close();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close_all();
    }
}

/// `Ok(resp)` for SUCCESS, else the code and remark as an error.
pub(crate) fn expect_success(
    addr: &str,
    resp: RemotingCommand,
) -> Result<RemotingCommand, ClientError> {
    if resp.code == response_code::SUCCESS {
        return Ok(resp);
    }
    Err(failure(addr, resp))
}

/// A failure response as an error.
pub(crate) fn failure(addr: &str, resp: RemotingCommand) -> ClientError {
    ClientError::Broker {
        addr: addr.to_owned(),
        code: resp.code,
        remark: resp.remark.unwrap_or_default(),
    }
}

/// Connecting state of one address: the last failed attempt, if the last attempt failed.
#[derive(Default)]
struct DialSlot(tokio::sync::Mutex<Option<(Instant, ClientError)>>);

/// A copy of a connect failure, for the callers that waited on the same attempt; `None` for
/// failures that are not about reaching the address (those callers try themselves).
fn replay(e: &ClientError) -> Option<ClientError> {
    match e {
        ClientError::Resolve { addr, reason } => Some(ClientError::Resolve {
            addr: addr.clone(),
            reason: reason.clone(),
        }),
        ClientError::Remoting { addr, source } => {
            let source = match source {
                RemotingError::Connect { addr, source } => RemotingError::Connect {
                    addr: *addr,
                    source: std::io::Error::new(source.kind(), source.to_string()),
                },
                RemotingError::ConnectTimeout { addr, timeout } => RemotingError::ConnectTimeout {
                    addr: *addr,
                    timeout: *timeout,
                },
                RemotingError::Tls { addr, reason } => RemotingError::Tls {
                    addr: *addr,
                    reason: reason.clone(),
                },
                _ => return None,
            };
            Some(ClientError::Remoting {
                addr: addr.clone(),
                source,
            })
        }
        _ => None,
    }
}

/// `addr` as a socket address; a host name is looked up, for at most `timeout` (so an
/// attempt takes at most twice the connect timeout: the lookup, then the connect).
async fn resolve(addr: &str, timeout: Duration) -> Result<SocketAddr, ClientError> {
    if let Ok(sock) = addr.parse() {
        return Ok(sock);
    }
    let failed = |reason: String| ClientError::Resolve {
        addr: addr.to_owned(),
        reason,
    };
    let mut found = tokio::time::timeout(timeout, tokio::net::lookup_host(addr))
        .await
        .map_err(|_| failed(format!("no answer within {timeout:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    found.next().ok_or_else(|| failed("no address".into()))
}

/// Hands server requests to the owner. A request nobody handles, that expects an answer,
/// gets REQUEST_CODE_NOT_SUPPORTED so the server does not wait for a timeout.
async fn forward(
    mut rx: mpsc::Receiver<RemotingCommand>,
    conn: ConnectionHandle,
    to: mpsc::Sender<ServerRequest>,
) {
    while let Some(cmd) = rx.recv().await {
        let handled = matches!(
            cmd.code,
            request_code::CHECK_TRANSACTION_STATE | request_code::NOTIFY_CONSUMER_IDS_CHANGED
        );
        if !handled {
            reply_not_supported(&conn, &cmd).await;
            continue;
        }
        let req = ServerRequest {
            conn: conn.clone(),
            cmd,
        };
        if let Err(e) = to.try_send(req) {
            // Both are retried by the broker (checks) or covered by periodic work (rebalance).
            tracing::warn!(remote = %conn.remote_addr(), code = e.into_inner().cmd.code, "server request dropped: handler busy or gone");
        }
    }
}

async fn reply_not_supported(conn: &ConnectionHandle, cmd: &RemotingCommand) {
    tracing::debug!(remote = %conn.remote_addr(), code = cmd.code, "unsupported server request");
    if cmd.is_oneway() {
        return;
    }
    let remark = format!(" request type {} not supported", cmd.code);
    let resp =
        RemotingCommand::response_to(cmd, response_code::REQUEST_CODE_NOT_SUPPORTED, Some(remark));
    let _ = conn.send(resp).await;
}

/// Closes a connection from which not one frame came while a request waited for its answer,
/// however that wait ended: its own timeout, or the caller's deadline dropping it (a send's
/// budget ends at about the same moment as its attempt's timeout). A broker whose host went
/// away without closing the socket (a power cut) looks open for as long as the kernel keeps
/// retrying, ~15 minutes, and every request on it would time out meanwhile; the next request
/// connects again. A wait cut short (under its timeout and under a second, beyond the time
/// the broker may hold the request) proves nothing.
struct Silence<'a> {
    addr: &'a str,
    client: &'a RemotingClient,
    heard: u64,
    since: Instant,
    enough: Duration,
    answered: bool,
}

impl<'a> Silence<'a> {
    fn watch(addr: &'a str, client: &'a RemotingClient, timeout: Duration, hold: Duration) -> Self {
        let hold = hold.min(timeout);
        Self {
            addr,
            client,
            heard: client.connection().frames_heard(),
            since: Instant::now(),
            enough: hold + (timeout - hold).min(Duration::from_secs(1)),
            answered: false,
        }
    }

    fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for Silence<'_> {
    fn drop(&mut self) {
        let waited = self.since.elapsed();
        if self.answered
            || waited < self.enough
            || self.client.connection().frames_heard() != self.heard
            || self.client.is_closed()
        {
            return;
        }
        tracing::warn!(addr = self.addr, waited = ?waited, "nothing heard from the broker while a request waited; closing the connection, the next request connects again");
        self.client.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener whose accept queue is full, so a new connect hangs (Linux drops the SYN).
    async fn black_hole() -> (tokio::net::TcpListener, Vec<std::net::TcpStream>, String) {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = sock.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        // Fills the queue; these connects complete in the kernel without an accept.
        let fillers = (0..3)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
            })
            .collect();
        (listener, fillers, addr.to_string())
    }

    /// Connecting to one unreachable broker used to hold a pool-wide lock for the whole
    /// connect timeout, so a healthy broker could not be reached meanwhile.
    #[tokio::test]
    async fn a_hanging_connect_does_not_delay_another_address() {
        let (_hole, _fillers, dead) = black_hole().await;
        let healthy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let healthy_addr = healthy.local_addr().unwrap().to_string();
        let accept = tokio::spawn(async move { healthy.accept().await.map(|(s, _)| s) });
        let (tx, _rx) = mpsc::channel(1);
        let pool = Arc::new(Pool::new(Duration::from_secs(30), tx));
        let p = Arc::clone(&pool);
        let stuck = tokio::spawn(async move { p.get(&dead).await.map(drop) });
        // The dead address's attempt is under way before the healthy one starts.
        for _ in 0..100 {
            if pool.dialing.lock().len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.get(&healthy_addr)
            .await
            .expect("the healthy broker connects");
        assert!(
            !stuck.is_finished(),
            "the dead address's connect is still waiting for its timeout"
        );
        stuck.abort();
        accept.await.unwrap().expect("accepted");
    }

    /// A peer that accepts and reads but never answers: the request times out, nothing was
    /// heard meanwhile, so the connection is closed and the next request dials again.
    #[tokio::test]
    async fn a_connection_silent_for_a_whole_request_is_replaced() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(s); // kept open, never answered
            }
        });
        let (tx, _rx) = mpsc::channel(1);
        let pool = Pool::new(Duration::from_secs(5), tx);
        let ask = || RemotingCommand::request(request_code::HEART_BEAT, Default::default());
        let first = pool.invoke(&addr, ask(), Duration::from_millis(100)).await;
        assert!(
            matches!(
                &first,
                Err(ClientError::Remoting {
                    source: RemotingError::Timeout { .. },
                    ..
                })
            ),
            "{first:?}"
        );
        let second = pool.invoke(&addr, ask(), Duration::from_millis(100)).await;
        assert!(second.is_err());
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "the silent connection was replaced"
        );
        // Ended by the caller's deadline rather than its own timeout: replaced too.
        let cut = Duration::from_millis(1100);
        let third = pool.invoke(&addr, ask(), Duration::from_secs(60));
        assert!(tokio::time::timeout(cut, third).await.is_err());
        let fourth = pool.invoke(&addr, ask(), Duration::from_millis(100)).await;
        assert!(fourth.is_err());
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 4);
        // A long poll cut short while the broker may still hold it (a rebalance dropped its
        // queue) proves nothing: the connection stays, for the other requests on it.
        let held = pool.invoke_held(
            &addr,
            ask(),
            Duration::from_secs(60),
            Duration::from_secs(30),
        );
        assert!(tokio::time::timeout(cut, held).await.is_err());
        let sixth = pool.invoke(&addr, ask(), Duration::from_millis(100)).await;
        assert!(sixth.is_err());
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            5,
            "the held request's connection was kept"
        );
        server.abort();
    }

    /// Callers that waited while an attempt failed share its failure.
    #[tokio::test]
    async fn waiting_callers_share_a_failed_attempt() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let (tx, _rx) = mpsc::channel(1);
        let pool = Pool::new(Duration::from_secs(5), tx);
        let slot = Arc::clone(pool.dialing.lock().entry(closed.clone()).or_default());
        let held = slot.0.lock().await;
        let waiter = pool.get(&closed);
        tokio::pin!(waiter);
        // The waiter queues on the slot; the attempt it waits for fails meanwhile.
        assert!(futures::poll!(waiter.as_mut()).is_pending());
        let mut held = held;
        *held = Some((
            Instant::now(),
            ClientError::Resolve {
                addr: closed.clone(),
                reason: "shared".into(),
            },
        ));
        drop(held);
        let err = waiter.await.map(drop).expect_err("refused");
        assert!(err.to_string().contains("shared"), "{err}");
        // A caller arriving later tries for itself (the port is closed: refused).
        let err = pool.get(&closed).await.map(drop).expect_err("refused");
        assert!(!err.to_string().contains("shared"), "{err}");
    }
}
