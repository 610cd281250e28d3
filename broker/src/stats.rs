//! Plain counters, read as a [`BrokerStats`] snapshot. Metrics export builds on these later;
//! for now they let operators and tests see rejections that clients only see as error codes.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters shared by the server, the processors and the background tasks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) overload_rejections: AtomicU64,
    pub(crate) busy_rejections: AtomicU64,
    pub(crate) handler_panics: AtomicU64,
    pub(crate) bad_frames: AtomicU64,
    pub(crate) oversize_bodies: AtomicU64,
    pub(crate) connections_open: AtomicU64,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) connections_not_opened: AtomicU64,
    pub(crate) messages_stored: AtomicU64,
    pub(crate) messages_pulled: AtomicU64,
    pub(crate) parked_pulls: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) state_save_failures: AtomicU64,
    pub(crate) heartbeat_groups_refused: AtomicU64,
}

impl Counters {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> BrokerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BrokerStats {
            requests: get(&self.requests),
            overload_rejections: get(&self.overload_rejections),
            busy_rejections: get(&self.busy_rejections),
            handler_panics: get(&self.handler_panics),
            bad_frames: get(&self.bad_frames),
            oversize_bodies: get(&self.oversize_bodies),
            connections_open: get(&self.connections_open),
            connections_accepted: get(&self.connections_accepted),
            connections_refused: get(&self.connections_refused),
            connections_not_opened: get(&self.connections_not_opened),
            messages_stored: get(&self.messages_stored),
            messages_pulled: get(&self.messages_pulled),
            parked_pulls: get(&self.parked_pulls),
            retries: get(&self.retries),
            dead_lettered: get(&self.dead_lettered),
            replayed: get(&self.replayed),
            state_save_failures: get(&self.state_save_failures),
            heartbeat_groups_refused: get(&self.heartbeat_groups_refused),
            offset_commits_refused: 0,
        }
    }
}

/// A snapshot of a server's counters (totals since start unless noted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerStats {
    /// Requests read (responses to our own requests excluded).
    pub requests: u64,
    /// Requests answered SYSTEM_BUSY because a connection had too many in flight.
    pub overload_rejections: u64,
    /// Sends answered SYSTEM_BUSY because the store's append queue was full.
    pub busy_rejections: u64,
    /// Handlers that panicked (answered SYSTEM_ERROR; the server kept running).
    pub handler_panics: u64,
    /// Connections closed because a frame could not be decoded.
    pub bad_frames: u64,
    /// Frames whose body exceeded `max_body` (answered MESSAGE_ILLEGAL).
    pub oversize_bodies: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections accepted.
    pub connections_accepted: u64,
    /// Connections refused because `max_connections` were open.
    pub connections_refused: u64,
    /// Connections accepted, then closed before any request was read: the peer sent nothing
    /// (a TCP health probe, a port scan), plaintext on a TLS-only port, or a failed TLS
    /// handshake. Only a TLS port looks before reading; a plain one counts none.
    pub connections_not_opened: u64,
    /// Messages stored by sends.
    pub messages_stored: u64,
    /// Messages returned by pulls and leased by HTTP receives.
    pub messages_pulled: u64,
    /// Pulls parked by long polling now.
    pub parked_pulls: u64,
    /// Failed deliveries sent to a retry topic.
    pub retries: u64,
    /// Messages sent to a dead-letter queue (send-back, or a retry send past the maximum).
    pub dead_lettered: u64,
    /// Dead letters written back by replay tasks.
    pub replayed: u64,
    /// Failed saves of the broker's own state files (`topics.json`, consumer offsets) by the
    /// periodic flush, which tries again every `offset_flush_interval`. Rising means those
    /// files on disk are behind what clients were told (a full disk, a read-only folder).
    pub state_save_failures: u64,
    /// Offset commits refused because `max_consumer_offsets` entries are kept (each a commit
    /// for a topic and group with none yet).
    pub offset_commits_refused: u64,
    /// Consumer groups left out of a heartbeat because their retry topic could not be made
    /// (the topic table full, or a name too long): their members consume nothing until it can.
    pub heartbeat_groups_refused: u64,
}
