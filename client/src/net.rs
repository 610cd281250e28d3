//! The connection pool: one [`RemotingClient`] per server address, reconnected on demand, with
//! the requests servers send on their own (CHECK_TRANSACTION_STATE,
//! NOTIFY_CONSUMER_IDS_CHANGED) forwarded to the pool's owner on one bounded channel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_protocol::acl::Credentials;
use sluice_protocol::{request_code, response_code, RemotingCommand};
use sluice_remoting::{ClientOptions, ConnectionHandle, RemotingClient};
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
    /// Serialises connecting, so concurrent callers share one new connection.
    connecting: tokio::sync::Mutex<()>,
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
            connecting: tokio::sync::Mutex::new(()),
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

    /// The open connection to `addr`, connecting when there is none (or it closed).
    pub(crate) async fn get(&self, addr: &str) -> Result<Arc<RemotingClient>, ClientError> {
        if let Some(c) = self.open(addr) {
            return Ok(c);
        }
        let _guard = self.connecting.lock().await;
        if let Some(c) = self.open(addr) {
            return Ok(c);
        }
        let sock = resolve(addr).await?;
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
        let client = self.get(addr).await?;
        client
            .invoke(self.signed(cmd), timeout)
            .await
            .map_err(|e| ClientError::remoting(addr, e))
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

async fn resolve(addr: &str) -> Result<SocketAddr, ClientError> {
    if let Ok(sock) = addr.parse() {
        return Ok(sock);
    }
    let mut found = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| ClientError::Resolve {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
    found.next().ok_or_else(|| ClientError::Resolve {
        addr: addr.to_owned(),
        reason: "no address".into(),
    })
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
