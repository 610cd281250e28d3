//! A small async remoting client: one TCP connection, requests matched to responses by opaque,
//! and requests the server sends on its own (NOTIFY_CONSUMER_IDS_CHANGED,
//! CHECK_TRANSACTION_STATE) delivered on a channel.
//!
//! The broker uses it to register with name servers; tests use it as a client. It is the seed
//! of the Rust client crate, so it keeps policy out: no retries, no reconnects, no routing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use sluice_protocol::remoting::frame::{DEFAULT_MAX_BODY, DEFAULT_MAX_FRAME};
use sluice_protocol::{FrameDecoder, RemotingCommand};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::connection::ConnectionHandle;
use crate::error::RemotingError;
use crate::io::{write_loop, FrameReader, Inbound};

/// Client ids live in their own range so they never collide with server connection ids in logs.
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1 << 62);

/// Tunables of a [`RemotingClient`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Largest frame accepted from the server. Default 16 MiB.
    pub max_frame: usize,
    /// Largest body accepted from the server; pull responses can be big, so default 16 MiB.
    pub max_body: usize,
    /// How long [`RemotingClient::connect_with`] waits for TCP. Default 3 s.
    pub connect_timeout: Duration,
    /// Commands queued for the writer before senders wait. Default 1 024.
    pub write_queue: usize,
    /// Server-initiated requests buffered for [`RemotingClient::take_requests`]; beyond that they
    /// are dropped with a warning (they are one-way notifications). Default 1 024.
    pub request_queue: usize,
    /// Connect with TLS, trusting these CA certificates. Default `None`: plaintext.
    pub tls: Option<crate::tls::ClientTls>,
    /// Send requests with RocketMQ's binary header instead of JSON. Default false.
    pub binary_headers: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            max_body: DEFAULT_MAX_FRAME.max(DEFAULT_MAX_BODY),
            connect_timeout: Duration::from_secs(3),
            write_queue: 1024,
            request_queue: 1024,
            tls: None,
            binary_headers: false,
        }
    }
}

/// One connection to a broker or name server.
///
/// Dropping the client closes the connection.
#[derive(Debug)]
pub struct RemotingClient {
    conn: ConnectionHandle,
    requests: Mutex<Option<mpsc::Receiver<RemotingCommand>>>,
    reader: JoinHandle<()>,
}

impl RemotingClient {
    /// Connects with default options.
    pub async fn connect(addr: SocketAddr) -> Result<Self, RemotingError> {
        Self::connect_with(addr, ClientOptions::default()).await
    }

    /// Connects with the given options.
    pub async fn connect_with(
        addr: SocketAddr,
        opts: ClientOptions,
    ) -> Result<Self, RemotingError> {
        let stream =
            match tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(source)) => return Err(RemotingError::Connect { addr, source }),
                Err(_) => {
                    return Err(RemotingError::ConnectTimeout {
                        addr,
                        timeout: opts.connect_timeout,
                    })
                }
            };
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .map_err(|source| RemotingError::Connect { addr, source })?;
        let (rd, wr) = match &opts.tls {
            None => {
                let (rd, wr) = stream.into_split();
                (
                    Box::new(rd) as crate::tls::ReadHalf,
                    Box::new(wr) as crate::tls::WriteHalf,
                )
            }
            Some(tls) => {
                let name = tls
                    .name_for(addr)
                    .map_err(|e| RemotingError::Tls { addr, reason: e })?;
                let handshake = tls.connector.connect(name, stream);
                match tokio::time::timeout(opts.connect_timeout, handshake).await {
                    Ok(Ok(s)) => crate::tls::split(s),
                    Ok(Err(e)) => {
                        return Err(RemotingError::Tls {
                            addr,
                            reason: e.to_string(),
                        })
                    }
                    Err(_) => {
                        return Err(RemotingError::ConnectTimeout {
                            addr,
                            timeout: opts.connect_timeout,
                        })
                    }
                }
            }
        };
        let (tx, rx) = mpsc::channel(opts.write_queue.max(1));
        let id = NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed);
        let conn = ConnectionHandle::new(id, addr, local, tx);
        conn.set_binary_headers(opts.binary_headers);
        tokio::spawn(write_loop(wr, rx, conn.clone()));
        let (req_tx, req_rx) = mpsc::channel(opts.request_queue.max(1));
        let reader = FrameReader::new(rd, FrameDecoder::new(opts.max_frame, opts.max_body));
        let reader = tokio::spawn(read_loop(reader, conn.clone(), req_tx));
        Ok(Self {
            conn,
            requests: Mutex::new(Some(req_rx)),
            reader,
        })
    }

    /// Sends `cmd` as a request (a fresh opaque is assigned) and waits up to `timeout` for the
    /// response with that opaque. Responses may arrive in any order.
    pub async fn invoke(
        &self,
        cmd: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, RemotingError> {
        self.conn.invoke(cmd, timeout).await
    }

    /// Sends `cmd` as a one-way request (flag bit 1): no response is expected.
    pub async fn invoke_oneway(&self, cmd: RemotingCommand) -> Result<(), RemotingError> {
        self.conn.invoke_oneway(cmd).await
    }

    /// Sends a command exactly as given, e.g. a response to a server-initiated request.
    pub async fn send(&self, cmd: RemotingCommand) -> Result<(), RemotingError> {
        self.conn.send(cmd).await
    }

    /// The receiver of requests the server sends on its own. Only the first call gets it.
    pub fn take_requests(&self) -> Option<mpsc::Receiver<RemotingCommand>> {
        self.requests.lock().take()
    }

    /// The underlying connection.
    pub fn connection(&self) -> &ConnectionHandle {
        &self.conn
    }

    /// Our address.
    pub fn local_addr(&self) -> SocketAddr {
        self.conn.local_addr()
    }

    /// The server's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.remote_addr()
    }

    /// True once the connection is closed (by us, the server or an error).
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Closes the connection; pending requests fail with [`RemotingError::Closed`].
    pub fn close(&self) {
        self.conn.close();
    }
}

impl Drop for RemotingClient {
    fn drop(&mut self) {
        self.conn.close();
        self.reader.abort();
    }
}

async fn read_loop(
    mut reader: FrameReader,
    conn: ConnectionHandle,
    requests: mpsc::Sender<RemotingCommand>,
) {
    loop {
        let next = tokio::select! {
            r = reader.next() => r,
            () = conn.closed() => break,
        };
        if matches!(next, Ok(Some(_))) {
            conn.note_heard();
        }
        match next {
            Ok(Some(Inbound::Command(cmd))) if cmd.is_response() => {
                if !conn.complete(cmd) {
                    tracing::debug!(remote = %conn.remote_addr(), "late or unknown response dropped");
                }
            }
            Ok(Some(Inbound::Command(cmd))) => {
                if requests.try_send(cmd).is_err() {
                    tracing::warn!(remote = %conn.remote_addr(), "server request dropped: nobody reads the request queue");
                }
            }
            Ok(Some(Inbound::Oversize {
                command, body_len, ..
            })) => {
                tracing::warn!(remote = %conn.remote_addr(), code = command.code, body_len, "oversize frame from server dropped");
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(remote = %conn.remote_addr(), error = %e, "connection read failed");
                break;
            }
        }
    }
    conn.close();
}
