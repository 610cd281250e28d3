//! One TCP connection as both ends see it: a sender feeding the writer task, the table of
//! requests we sent that wait for their responses, and a close signal.
//!
//! RocketMQ connections are full duplex and multiplexed: either side may send requests, and
//! responses come back in any order, matched by `opaque`. The same [`ConnectionHandle`] serves
//! the broker (to send NOTIFY_CONSUMER_IDS_CHANGED or CHECK_TRANSACTION_STATE to a client) and
//! [`crate::RemotingClient`] (to call a broker or name server).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_protocol::remoting::frame::flag;
use sluice_protocol::RemotingCommand;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::RemotingError;

/// Cheap, cloneable handle on one connection. Dropping handles does not close the connection;
/// [`ConnectionHandle::close`] does, and the owner of the socket closes it when the peer leaves.
#[derive(Clone)]
pub struct ConnectionHandle {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    remote: SocketAddr,
    local: SocketAddr,
    /// Feeds the writer task. Bounded: a peer that stops reading slows its own handlers down.
    tx: mpsc::Sender<RemotingCommand>,
    /// Requests we sent, by opaque, waiting for the peer's response.
    pending: Mutex<HashMap<i32, oneshot::Sender<RemotingCommand>>>,
    next_opaque: AtomicI32,
    /// Frames are written with RocketMQ's binary header instead of JSON (see
    /// [`ConnectionHandle::set_binary_headers`]).
    binary_headers: AtomicBool,
    /// Flips to true once; the writer drains and exits, waiters give up.
    closed: watch::Sender<bool>,
    /// Frames read from the peer so far (see [`ConnectionHandle::frames_heard`]).
    heard: AtomicU64,
}

impl std::fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("id", &self.inner.id)
            .field("remote", &self.inner.remote)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl ConnectionHandle {
    /// A handle whose frames go to `tx`; the caller runs the writer task on the other end.
    pub fn new(
        id: u64,
        remote: SocketAddr,
        local: SocketAddr,
        tx: mpsc::Sender<RemotingCommand>,
    ) -> Self {
        let (closed, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                id,
                remote,
                local,
                tx,
                pending: Mutex::new(HashMap::new()),
                next_opaque: AtomicI32::new(1),
                binary_headers: AtomicBool::new(false),
                closed,
                heard: AtomicU64::new(0),
            }),
        }
    }

    /// Writes the frames queued from now on with RocketMQ's binary ("ROCKETMQ") header rather
    /// than JSON. A client turns it on when configured to; a server follows what the peer's
    /// requests use, so a peer that sends JSON (the C++ client cannot read anything else) is
    /// answered in JSON.
    pub fn set_binary_headers(&self, on: bool) {
        self.inner.binary_headers.store(on, Ordering::Relaxed);
    }

    /// True when frames are written with binary headers.
    pub fn binary_headers(&self) -> bool {
        self.inner.binary_headers.load(Ordering::Relaxed)
    }

    /// Process-unique id of this connection (the broker's registry key).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The peer's address (the `bornHost` of messages it sends).
    pub fn remote_addr(&self) -> SocketAddr {
        self.inner.remote
    }

    /// Our side's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// True once the connection is closed or closing.
    pub fn is_closed(&self) -> bool {
        *self.inner.closed.borrow()
    }

    /// Closes the connection: the writer flushes what is queued and shuts the socket, and every
    /// request waiting for a response fails with [`RemotingError::Closed`].
    pub fn close(&self) {
        self.inner.closed.send_replace(true);
        self.inner.pending.lock().clear();
    }

    /// Resolves once the connection is closed.
    pub async fn closed(&self) {
        let mut rx = self.inner.closed.subscribe();
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// Queues a command exactly as given (opaque and flag untouched); waits while the writer's
    /// queue is full.
    pub async fn send(&self, cmd: RemotingCommand) -> Result<(), RemotingError> {
        self.send_then(cmd, || {}).await
    }

    /// Like [`ConnectionHandle::send`], but runs `before_queued` once the writer has room and
    /// just before `cmd` is queued. A server releases a request's in-flight slot there: the
    /// peer can then never see the response (and send its next request) while the slot is
    /// still taken, and a peer that does not read still holds its slots while it stalls.
    pub async fn send_then(
        &self,
        cmd: RemotingCommand,
        before_queued: impl FnOnce(),
    ) -> Result<(), RemotingError> {
        if self.is_closed() {
            return Err(RemotingError::Closed(self.inner.remote));
        }
        let slot = self
            .inner
            .tx
            .reserve()
            .await
            .map_err(|_| RemotingError::Closed(self.inner.remote))?;
        before_queued();
        slot.send(cmd);
        Ok(())
    }

    /// Queues a command without waiting; fails when the writer's queue is full. For callers that
    /// must not block, such as notifications sent while a lock is held elsewhere.
    pub fn try_send(&self, cmd: RemotingCommand) -> Result<(), RemotingError> {
        if self.is_closed() {
            return Err(RemotingError::Closed(self.inner.remote));
        }
        self.inner
            .tx
            .try_send(cmd)
            .map_err(|_| RemotingError::Closed(self.inner.remote))
    }

    /// Sends a request with a fresh opaque and waits up to `timeout` for the matching response.
    /// The request's entry among those waiting for a response goes with it, however it ends:
    /// answered, timed out, failed, or dropped by the caller (a caller's own deadline).
    pub async fn invoke(
        &self,
        mut cmd: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, RemotingError> {
        let opaque = self.next_opaque();
        cmd.opaque = opaque;
        cmd.flag &= !(flag::RESPONSE | flag::ONEWAY);
        let code = cmd.code;
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().insert(opaque, tx);
        let _waiting = Waiting { conn: self, opaque };
        self.send(cmd).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(RemotingError::Closed(self.inner.remote)),
            Err(_) => Err(RemotingError::Timeout {
                code,
                opaque,
                remote: self.inner.remote,
                timeout,
            }),
        }
    }

    /// Sends a one-way request (flag bit 1 set, fresh opaque); nothing comes back.
    pub async fn invoke_oneway(&self, cmd: RemotingCommand) -> Result<(), RemotingError> {
        self.send(self.prepare_oneway(cmd)).await
    }

    /// As [`ConnectionHandle::invoke_oneway`], without waiting for room in the writer's queue.
    pub fn try_invoke_oneway(&self, cmd: RemotingCommand) -> Result<(), RemotingError> {
        self.try_send(self.prepare_oneway(cmd))
    }

    fn prepare_oneway(&self, mut cmd: RemotingCommand) -> RemotingCommand {
        cmd.opaque = self.next_opaque();
        cmd.flag = (cmd.flag & !flag::RESPONSE) | flag::ONEWAY;
        cmd
    }

    fn next_opaque(&self) -> i32 {
        // Wrapping is fine: an opaque only has to be unique among requests in flight.
        self.inner.next_opaque.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a frame read from the peer (the reader calls it for every frame).
    pub fn note_heard(&self) {
        self.inner.heard.fetch_add(1, Ordering::Relaxed);
    }

    /// Frames read from the peer so far: a caller whose request timed out can tell a silent
    /// peer (nothing at all arrived meanwhile) from a slow answer.
    pub fn frames_heard(&self) -> u64 {
        self.inner.heard.load(Ordering::Relaxed)
    }

    /// Hands a response to the request waiting for it; false when nobody waits (late or
    /// unknown opaque), which callers log and drop like RocketMQ clients do.
    pub fn complete(&self, response: RemotingCommand) -> bool {
        let waiter = self.inner.pending.lock().remove(&response.opaque);
        match waiter {
            Some(tx) => tx.send(response).is_ok(),
            None => false,
        }
    }
}

/// Removes a request's entry among those waiting for a response when its `invoke` ends in
/// any way. (An answered request's entry is gone already: `complete` took it.)
struct Waiting<'a> {
    conn: &'a ConnectionHandle,
    opaque: i32,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.conn.inner.pending.lock().remove(&self.opaque);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller that gives up on `invoke` (its own deadline drops the future) leaves no entry
    /// behind among the requests waiting for a response.
    #[tokio::test]
    async fn an_abandoned_invoke_leaves_no_waiting_entry() {
        let (tx, _rx) = mpsc::channel(4);
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let conn = ConnectionHandle::new(1, addr, addr, tx);
        let call = conn.invoke(RemotingCommand::default(), Duration::from_secs(60));
        let abandoned = tokio::time::timeout(Duration::from_millis(20), call).await;
        assert!(abandoned.is_err(), "nobody answers");
        assert!(conn.inner.pending.lock().is_empty());
    }

    /// What the broker's in-flight accounting relies on: the step runs while the command is
    /// not yet readable by the writer, so the peer cannot see the answer first.
    #[tokio::test]
    async fn send_then_runs_its_step_before_the_command_can_be_read() {
        let (tx, mut rx) = mpsc::channel(4);
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let conn = ConnectionHandle::new(1, addr, addr, tx);
        let mut queue_empty_during_step = None;
        conn.send_then(RemotingCommand::default().with_opaque(7), || {
            queue_empty_during_step = Some(rx.try_recv().is_err());
        })
        .await
        .unwrap();
        assert_eq!(queue_empty_during_step, Some(true));
        assert_eq!(rx.try_recv().map(|c| c.opaque).ok(), Some(7));
    }

    #[tokio::test]
    async fn a_closed_connection_refuses_and_skips_the_step() {
        let (tx, _rx) = mpsc::channel(4);
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let conn = ConnectionHandle::new(1, addr, addr, tx);
        conn.close();
        let mut ran = false;
        let sent = conn
            .send_then(RemotingCommand::default(), || ran = true)
            .await;
        assert!(sent.is_err() && !ran);
    }
}
