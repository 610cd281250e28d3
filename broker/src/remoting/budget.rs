//! What the requests a server runs may hold (see the `server` module docs for why).
//!
//! - Per connection, slots: `max_inflight` answered requests and as many one-way requests.
//! - Per connection, bytes: a share of the server's byte budget (a quarter of it, at least one
//!   largest frame), so one pipelining connection cannot take the whole budget.
//! - Per server, bytes: `max_inflight_bytes` of request frames across all connections. A
//!   connection with nothing running takes its next request over the budget if need be (the
//!   frame is in memory already), so a flood on other connections cannot starve a client
//!   that sends one request at a time; a request waiting for the budget is let through that
//!   way as soon as its connection's other requests finish.
//!
//! Memory for request frames is thus at most the budget plus about two frames per connection:
//! one running over the budget, one read and waiting.

use std::sync::Arc;

use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

/// The limit a request could not get past in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// Its connection's slots.
    Slots,
    /// Its connection's share of the byte budget.
    Share,
    /// The server's byte budget.
    Server,
}

/// The server-wide side: the byte budget, and the signal that the server is stopping (a
/// request waiting for bytes then gives up: it would run after the state was saved).
#[derive(Clone)]
pub(crate) struct ServerBudget {
    bytes: Arc<Semaphore>,
    stopping: watch::Receiver<bool>,
}

impl ServerBudget {
    pub(crate) fn new(max_bytes: usize, stopping: watch::Receiver<bool>) -> Self {
        Self {
            bytes: Arc::new(Semaphore::new(max_bytes.min(Semaphore::MAX_PERMITS))),
            stopping,
        }
    }
}

/// One connection's slots and byte share.
pub(crate) struct Inflight {
    pub(crate) answered: Arc<Semaphore>,
    pub(crate) oneway: Arc<Semaphore>,
    max: usize,
    bytes: Arc<Semaphore>,
    share: usize,
    /// Woken whenever a request of this connection gives its bytes back.
    released: Arc<Notify>,
}

impl Inflight {
    /// `max` slots of each kind; a byte share of a quarter of `server_bytes`, and at least
    /// `max_frame` (the largest frame must fit).
    pub(crate) fn new(max: usize, server_bytes: usize, max_frame: usize) -> Self {
        let share = (server_bytes / 4)
            .max(max_frame)
            .min(Semaphore::MAX_PERMITS);
        Self {
            answered: Arc::new(Semaphore::new(max)),
            oneway: Arc::new(Semaphore::new(max)),
            max,
            bytes: Arc::new(Semaphore::new(share)),
            share,
            released: Arc::new(Notify::new()),
        }
    }

    /// This connection's byte share.
    pub(crate) fn share(&self) -> usize {
        self.share
    }

    /// Waits until every request of the connection has finished.
    pub(crate) async fn drain(&self) {
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        let _answered = self.answered.acquire_many(all).await;
        let _oneway = self.oneway.acquire_many(all).await;
    }

    /// True when nothing but `mine` bytes of this connection's share is taken.
    fn alone_with(&self, mine: usize) -> bool {
        self.bytes.available_permits() + mine >= self.share
    }
}

/// What a running request holds; dropping it gives everything back.
pub(crate) struct Held {
    _slot: OwnedSemaphorePermit,
    _bytes: Charge,
}

/// A request's frame bytes: taken from its connection's share, and from the server's budget
/// unless the connection had nothing else running when the budget was short (`server` None).
struct Charge {
    server: Option<OwnedSemaphorePermit>,
    own: Option<OwnedSemaphorePermit>,
    released: Arc<Notify>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.server.take();
        self.own.take();
        self.released.notify_waiters();
    }
}

/// Takes one of `slots` and `len` bytes; waits as long as it takes (see [`charge`]). `Err`
/// names the limit it was waiting at when the caller's timeout dropped it; `Ok(None)` once
/// the server stops.
pub(crate) async fn hold(
    server: &ServerBudget,
    inflight: &Inflight,
    slots: &Arc<Semaphore>,
    len: usize,
    at: &mut Limit,
) -> Option<Held> {
    *at = Limit::Slots;
    let Ok(slot) = Arc::clone(slots).acquire_owned().await else {
        return None; // the semaphore is closed: the server is stopping
    };
    let bytes = charge(server, inflight, len, at).await?;
    Some(Held {
        _slot: slot,
        _bytes: bytes,
    })
}

/// Charges `len` bytes: first to the connection's share (waiting for its own requests), then
/// to the server's budget, waiting while it is spent, unless the connection has nothing else
/// running, checked again each time one of its requests finishes: then at once, over the
/// budget if need be. `None` once the server stops.
async fn charge(
    server: &ServerBudget,
    inflight: &Inflight,
    len: usize,
    at: &mut Limit,
) -> Option<Charge> {
    let permits = u32::try_from(len).unwrap_or(u32::MAX);
    let mut stopping = server.stopping.clone();
    *at = Limit::Share;
    let own = tokio::select! {
        p = Arc::clone(&inflight.bytes).acquire_many_owned(permits) => p.ok()?,
        _ = stopping.wait_for(|s| *s) => return None,
    };
    *at = Limit::Server;
    // The common case first, without registering for wake-ups.
    let now = Arc::clone(&server.bytes)
        .try_acquire_many_owned(permits)
        .ok();
    let server_permit = match now {
        Some(p) => Some(p),
        None => loop {
            let released = inflight.released.notified();
            tokio::pin!(released);
            // Registered before the check, so a request finishing in between still wakes us.
            released.as_mut().enable();
            if inflight.alone_with(len) {
                // Over the budget: the frame is in memory already (see the module docs).
                break Arc::clone(&server.bytes)
                    .try_acquire_many_owned(permits)
                    .ok();
            }
            tokio::select! {
                p = Arc::clone(&server.bytes).acquire_many_owned(permits) => break Some(p.ok()?),
                () = &mut released => {}
                _ = stopping.wait_for(|s| *s) => return None,
            }
        },
    };
    Some(Charge {
        server: server_permit,
        own: Some(own),
        released: Arc::clone(&inflight.released),
    })
}
