//! The two halves of a socket: a frame reader that never reads ahead unboundedly, and a writer
//! task that drains a bounded queue, coalescing frames into few `write` calls.

use std::time::Duration;

use bytes::BytesMut;
use sluice_protocol::remoting::frame::SerializeType;
use sluice_protocol::{FrameDecoder, FrameError, RemotingCommand};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::connection::ConnectionHandle;

/// Most bytes asked of one `read`: a frame announced as 16 MiB is not reserved up front, so a
/// peer that announces big frames and sends slowly costs only what it really sent.
const READ_CHUNK: usize = 64 * 1024;
/// Smallest reservation before a `read`.
const MIN_READ: usize = 4 * 1024;
/// Bytes coalesced into one `write` before it is issued.
const WRITE_COALESCE: usize = 256 * 1024;
/// How long the writer keeps flushing queued frames after the connection is closed.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(5);

/// What the reader produced.
pub enum Inbound {
    /// A whole command.
    Command(RemotingCommand),
    /// A frame whose body exceeded the body cap: consumed, header kept, body dropped.
    Oversize {
        /// The header, with an empty body.
        command: Box<RemotingCommand>,
        /// The body length the peer sent.
        body_len: usize,
        /// The cap.
        max: usize,
    },
}

/// Why reading stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a frame; the stream cannot be trusted any more.
    #[error("undecodable frame: {0}")]
    Frame(FrameError),
    /// The peer closed in the middle of a frame.
    #[error("connection closed with {0} bytes of an incomplete frame")]
    Truncated(usize),
}

/// Splits frames off a socket's read half (plain TCP or TLS).
pub struct FrameReader {
    rd: crate::tls::ReadHalf,
    buf: BytesMut,
    decoder: FrameDecoder,
    /// The last frame returned had a binary ("ROCKETMQ") header.
    last_binary: bool,
}

impl FrameReader {
    /// A reader over the read half of a connection, decoding with `decoder`'s limits.
    pub fn new(rd: impl AsyncRead + Send + Unpin + 'static, decoder: FrameDecoder) -> Self {
        Self {
            rd: Box::new(rd),
            buf: BytesMut::with_capacity(MIN_READ),
            decoder,
            last_binary: false,
        }
    }

    /// The next frame; `Ok(None)` on a clean end of stream between frames.
    pub async fn next(&mut self) -> Result<Option<Inbound>, ReadError> {
        loop {
            // The serialize-type byte of the frame at the front (after the 4-byte length).
            let binary = self.buf.get(4) == Some(&SerializeType::RocketMq.code());
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(cmd)) => {
                    self.last_binary = binary;
                    return Ok(Some(Inbound::Command(cmd)));
                }
                Ok(None) => {}
                Err(FrameError::BodyTooLarge {
                    command,
                    body_len,
                    max,
                }) => {
                    return Ok(Some(Inbound::Oversize {
                        command,
                        body_len,
                        max,
                    }))
                }
                Err(e) => return Err(ReadError::Frame(e)),
            }
            self.reserve_for_next_read()?;
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return match self.buf.len() {
                    0 => Ok(None),
                    n => Err(ReadError::Truncated(n)),
                };
            }
        }
    }

    /// True when the last command returned by [`FrameReader::next`] came with a binary header.
    pub fn last_binary(&self) -> bool {
        self.last_binary
    }

    /// Reserves what the frame being read still needs, in chunks of at most [`READ_CHUNK`].
    fn reserve_for_next_read(&mut self) -> Result<(), ReadError> {
        let missing = match self.decoder.frame_len(&self.buf) {
            Ok(Some(total)) => total.saturating_sub(self.buf.len()),
            Ok(None) => MIN_READ,
            Err(e) => return Err(ReadError::Frame(e)),
        };
        self.buf.reserve(missing.clamp(MIN_READ, READ_CHUNK));
        Ok(())
    }
}

/// Writes every queued command until the connection closes, then flushes what is left (bounded
/// by [`FLUSH_ON_CLOSE`]) and shuts the socket down. A write error closes the connection.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<RemotingCommand>,
    conn: ConnectionHandle,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let first = tokio::select! {
            biased;
            cmd = rx.recv() => cmd,
            () = conn.closed() => None,
        };
        let Some(cmd) = first else { break };
        encode_into(&cmd, &mut buf, &conn);
        drain_queued(&mut rx, &mut buf, &conn);
        if buf.len() < WRITE_COALESCE {
            // Let the tasks that are ready run first: under load they queue more frames, and
            // one write then carries them all (a write is a trip through the TCP stack for
            // both ends). When nothing else is ready this returns at once.
            tokio::task::yield_now().await;
            drain_queued(&mut rx, &mut buf, &conn);
        }
        if let Err(e) = wr.write_all(&buf).await {
            tracing::debug!(remote = %conn.remote_addr(), error = %e, "write failed; closing connection");
            conn.close();
            return;
        }
        buf.clear();
    }
    let _ = tokio::time::timeout(FLUSH_ON_CLOSE, flush_rest(&mut wr, &mut rx, &conn)).await;
    let _ = wr.shutdown().await;
}

/// Encodes queued frames into `buf` until the queue is empty or `buf` holds enough.
fn drain_queued(
    rx: &mut mpsc::Receiver<RemotingCommand>,
    buf: &mut BytesMut,
    conn: &ConnectionHandle,
) {
    while buf.len() < WRITE_COALESCE {
        match rx.try_recv() {
            Ok(cmd) => encode_into(&cmd, buf, conn),
            Err(_) => break,
        }
    }
}

async fn flush_rest<W: AsyncWrite + Unpin>(
    wr: &mut W,
    rx: &mut mpsc::Receiver<RemotingCommand>,
    conn: &ConnectionHandle,
) {
    rx.close();
    let mut buf = BytesMut::new();
    while let Ok(cmd) = rx.try_recv() {
        encode_into(&cmd, &mut buf, conn);
    }
    if !buf.is_empty() {
        let _ = wr.write_all(&buf).await;
    }
}

fn encode_into(cmd: &RemotingCommand, buf: &mut BytesMut, conn: &ConnectionHandle) {
    let encoded = if conn.binary_headers() {
        sluice_protocol::remoting::frame::encode_binary(cmd, buf)
    } else {
        cmd.encode(buf)
    };
    if let Err(e) = encoded {
        // Only an absurd header or a >2 GiB frame gets here; the peer's request times out.
        tracing::error!(remote = %conn.remote_addr(), code = cmd.code, opaque = cmd.opaque, error = %e, "cannot encode frame; dropped");
    }
}
