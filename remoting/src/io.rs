//! The two halves of a socket: a frame reader that never reads ahead unboundedly, and a writer
//! task that drains a bounded queue, coalescing frames into few `write` calls. A peer that
//! stops accepting bytes gets its connection closed after a stall bound, so a writer never
//! blocks forever (and with it everything that waits to queue a frame).

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
/// Small batches in a row after which a writer's buffer grown past twice
/// [`WRITE_COALESCE`] is let go.
const SHRINK_AFTER_SMALL_BATCHES: u32 = 64;
/// How long the writer keeps flushing queued frames after the connection is closed.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(5);
/// How long [`write_loop`] lets a peer accept no bytes at all before it closes the connection
/// (RocketMQ's idle time, 120 s). Servers pass their own configured bound to
/// [`write_loop_with`].
pub const DEFAULT_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(120);

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
    /// Length of the last frame returned, its 4-byte length prefix included.
    last_len: usize,
}

impl FrameReader {
    /// A reader over the read half of a connection, decoding with `decoder`'s limits.
    pub fn new(rd: impl AsyncRead + Send + Unpin + 'static, decoder: FrameDecoder) -> Self {
        Self {
            rd: Box::new(rd),
            buf: BytesMut::with_capacity(MIN_READ),
            decoder,
            last_binary: false,
            last_len: 0,
        }
    }

    /// The next frame; `Ok(None)` on a clean end of stream between frames.
    pub async fn next(&mut self) -> Result<Option<Inbound>, ReadError> {
        loop {
            // The serialize-type byte of the frame at the front (after the 4-byte length).
            let binary = self.buf.get(4) == Some(&SerializeType::RocketMq.code());
            let len = self.buf.len();
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(cmd)) => {
                    self.last_binary = binary;
                    // What decoding took off the front of the buffer: the whole frame.
                    self.last_len = len - self.buf.len();
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

    /// Length in bytes of the last command returned by [`FrameReader::next`] (its whole frame,
    /// length prefix included): what a server charges to its in-flight byte budget.
    pub fn last_len(&self) -> usize {
        self.last_len
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

/// [`write_loop_with`] bounded by [`DEFAULT_WRITE_STALL_TIMEOUT`].
pub async fn write_loop<W: AsyncWrite + Unpin>(
    wr: W,
    rx: mpsc::Receiver<RemotingCommand>,
    conn: ConnectionHandle,
) {
    write_loop_with(wr, rx, conn, DEFAULT_WRITE_STALL_TIMEOUT).await;
}

/// Writes every queued command until the connection closes, then flushes what is left (bounded
/// by [`FLUSH_ON_CLOSE`]) and shuts the socket down. A write error closes the connection, and
/// so does a peer that accepts no bytes for `stall_timeout`: a live peer that stops reading
/// would otherwise block this task forever, and with it every sender waiting for room in the
/// queue (request handlers holding in-flight slots, parked pulls). Once the writer is gone the
/// queue is dropped, so those senders fail at once instead of waiting.
pub async fn write_loop_with<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<RemotingCommand>,
    conn: ConnectionHandle,
    stall_timeout: Duration,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut small_batches = 0u32;
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
        if let Err(e) = write_bounded(&mut wr, &buf, &conn, stall_timeout).await {
            match e {
                WriteError::Stalled(_) => {
                    tracing::warn!(remote = %conn.remote_addr(), error = %e, "peer stopped reading; closing connection")
                }
                _ => {
                    tracing::debug!(remote = %conn.remote_addr(), error = %e, "write failed; closing connection")
                }
            }
            conn.close();
            return;
        }
        // A buffer grown by large frames is let go once the connection has carried only
        // small batches for a while: kept, each of thousands of connections would hold its
        // largest answer's size for its whole life; let go at once, a connection carrying
        // large frames steadily allocated and freed one per batch.
        small_batches = if buf.len() <= WRITE_COALESCE {
            small_batches.saturating_add(1)
        } else {
            0
        };
        if buf.capacity() > 2 * WRITE_COALESCE && small_batches >= SHRINK_AFTER_SMALL_BATCHES {
            buf = BytesMut::with_capacity(64 * 1024);
        } else {
            buf.clear();
        }
    }
    // Bounded, shutdown included: over TLS it writes the close_notify alert (and any records
    // still buffered), which never completes against a peer that stopped reading, and the
    // connection's slot was then held for good.
    let _ = tokio::time::timeout(FLUSH_ON_CLOSE, async {
        flush_rest(&mut wr, &mut rx, &conn).await;
        let _ = wr.shutdown().await;
    })
    .await;
}

/// Why a write did not complete.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// The socket failed.
    #[error("write: {0}")]
    Io(#[from] std::io::Error),
    /// The peer accepted no bytes for this long.
    #[error("the peer accepted no bytes for {0:?}")]
    Stalled(Duration),
}

/// Writes all of `buf`, failing when one `write` makes no progress for `stall_timeout` (a
/// slow peer that keeps reading is never cut off), or for [`FLUSH_ON_CLOSE`] once the
/// connection is closed: a closing connection must not wait the whole stall bound.
async fn write_bounded<W: AsyncWrite + Unpin>(
    wr: &mut W,
    buf: &[u8],
    conn: &ConnectionHandle,
    stall_timeout: Duration,
) -> Result<(), WriteError> {
    let mut written = 0;
    while written < buf.len() {
        let n = bounded(conn, stall_timeout, wr.write(&buf[written..])).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
        }
        written += n;
    }
    // A TLS stream takes bytes into its own buffer of encrypted records when the socket is
    // full and sends them only on the next write or a flush: without this, the end of a large
    // frame waited for the connection's next frame (a pull answer for the client's next
    // heartbeat, a send for the broker's answer it was waiting on). A no-op over TCP.
    bounded(conn, stall_timeout, wr.flush()).await
}

/// One write or flush, failing when it makes no progress for `stall_timeout`, or for
/// [`FLUSH_ON_CLOSE`] once the connection is closed.
async fn bounded<T>(
    conn: &ConnectionHandle,
    stall_timeout: Duration,
    step: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, WriteError> {
    let limit = if conn.is_closed() {
        stall_timeout.min(FLUSH_ON_CLOSE)
    } else {
        stall_timeout
    };
    tokio::select! {
        r = tokio::time::timeout(limit, step) => Ok(r.map_err(|_| WriteError::Stalled(limit))??),
        () = grace_after_close(conn) => Err(WriteError::Stalled(FLUSH_ON_CLOSE)),
    }
}

/// Resolves [`FLUSH_ON_CLOSE`] after the connection is closed.
async fn grace_after_close(conn: &ConnectionHandle) {
    conn.closed().await;
    tokio::time::sleep(FLUSH_ON_CLOSE).await;
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
    let _ = wr.flush().await;
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn connection() -> (ConnectionHandle, mpsc::Receiver<RemotingCommand>) {
        let (tx, rx) = mpsc::channel(4);
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        (ConnectionHandle::new(1, addr, addr, tx), rx)
    }

    /// Takes every write into a buffer of its own and hands it on only when flushed, as a TLS
    /// stream does with its encrypted records when the socket is full.
    struct HoldsUntilFlushed<W> {
        held: Vec<u8>,
        inner: W,
    }

    impl<W: AsyncWrite + Unpin> AsyncWrite for HoldsUntilFlushed<W> {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.held.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let me = &mut *self;
            while !me.held.is_empty() {
                let n =
                    std::task::ready!(std::pin::Pin::new(&mut me.inner).poll_write(cx, &me.held))?;
                me.held.drain(..n);
            }
            std::pin::Pin::new(&mut me.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    /// Over TLS the end of a frame could stay in the stream's own buffer until the next frame
    /// was written: the writer flushes after each batch now.
    #[tokio::test]
    async fn a_frame_held_by_a_buffering_stream_is_sent_without_waiting_for_the_next() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let held = HoldsUntilFlushed {
            held: Vec::new(),
            inner: ours,
        };
        let (conn, rx) = connection();
        let writer = tokio::spawn(write_loop_with(
            held,
            rx,
            conn.clone(),
            Duration::from_secs(30),
        ));
        let cmd = RemotingCommand::default().with_body(vec![7u8; 100]);
        let mut expected = BytesMut::new();
        cmd.encode(&mut expected).unwrap();
        conn.send(cmd).await.unwrap();
        let mut got = vec![0u8; expected.len()];
        let read = tokio::time::timeout(Duration::from_secs(5), theirs.read_exact(&mut got)).await;
        assert!(
            read.is_ok(),
            "the frame arrived while the connection stayed open"
        );
        assert_eq!(got, expected.to_vec());
        conn.close();
        let _ = writer.await;
    }

    /// The writer of a peer that reads nothing ends on its own, closes the connection and
    /// drops its queue, so senders fail instead of waiting for room.
    #[tokio::test]
    async fn a_peer_that_accepts_no_bytes_is_closed_after_the_stall_bound() {
        // 64 bytes of pipe, never read from the other end.
        let (ours, _theirs) = tokio::io::duplex(64);
        let (conn, rx) = connection();
        let stall = Duration::from_millis(100);
        let writer = tokio::spawn(write_loop_with(ours, rx, conn.clone(), stall));
        let big = RemotingCommand::default().with_body(vec![0u8; 4096]);
        conn.send(big.clone()).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(30), writer).await;
        assert!(ended.is_ok(), "the writer gave up on the stalled peer");
        assert!(conn.is_closed());
        assert!(conn.send(big).await.is_err(), "a later send fails at once");
    }

    /// A slow reader that keeps taking bytes is never cut off: the bound is on progress, not
    /// on the whole write.
    #[tokio::test]
    async fn a_slow_peer_that_keeps_reading_gets_every_byte() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let (conn, rx) = connection();
        let stall = Duration::from_secs(30);
        let writer = tokio::spawn(write_loop_with(ours, rx, conn.clone(), stall));
        let cmd = RemotingCommand::default().with_body(vec![7u8; 8192]);
        let mut expected = BytesMut::new();
        cmd.encode(&mut expected).unwrap();
        conn.send(cmd).await.unwrap();
        let mut got = vec![0u8; expected.len()];
        let mut filled = 0;
        while filled < got.len() {
            let n = theirs.read(&mut got[filled..]).await.unwrap();
            assert!(n > 0, "the writer closed early");
            filled += n;
        }
        assert_eq!(got, expected.to_vec());
        assert!(!conn.is_closed());
        conn.close();
        writer.await.unwrap();
    }

    /// `last_len` is each frame's own length, also when several frames arrive in one read.
    #[tokio::test]
    async fn the_reader_reports_each_frames_whole_length() {
        let (mut ours, theirs) = tokio::io::duplex(1 << 16);
        let mut wire = BytesMut::new();
        let small = RemotingCommand::request(10, Default::default());
        let large = RemotingCommand::request(11, Default::default()).with_body(vec![1u8; 5000]);
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        small.encode(&mut a).unwrap();
        large.encode(&mut b).unwrap();
        wire.extend_from_slice(&a);
        wire.extend_from_slice(&b);
        ours.write_all(&wire).await.unwrap();
        let mut reader = FrameReader::new(theirs, FrameDecoder::new(1 << 20, 1 << 20));
        for (code, len) in [(10, a.len()), (11, b.len())] {
            match reader.next().await.unwrap() {
                Some(Inbound::Command(cmd)) => assert_eq!(cmd.code, code),
                _ => panic!("expected a command"),
            }
            assert_eq!(reader.last_len(), len);
        }
    }
}
