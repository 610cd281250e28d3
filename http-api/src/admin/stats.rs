//! `GET /v1/stats`: the broker's counters, the store's state, the schedule service's pending
//! timers and the dead-letter queues' sizes in one JSON document, for operators and
//! dashboards (Prometheus scrapes `/metrics` instead).

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

/// Everything at once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StatsOut {
    /// Milliseconds since the HTTP facade started.
    pub uptime_ms: u64,
    /// Broker counters since start.
    pub broker: BrokerCounters,
    /// Storage.
    pub store: StoreOut,
    /// Delayed messages (absent when the schedule extension is disabled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleOut>,
    /// Dead-letter queues.
    pub dlq: Vec<DlqGroupOut>,
}

/// Broker counters since start.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BrokerCounters {
    /// Requests read.
    pub requests: u64,
    /// Requests refused because a connection had too many in flight.
    pub overload_rejections: u64,
    /// Sends refused because the store's queue was full.
    pub busy_rejections: u64,
    /// Handlers that panicked (contained).
    pub handler_panics: u64,
    /// Connections closed on an undecodable frame.
    pub bad_frames: u64,
    /// Frames over the body limit.
    pub oversize_bodies: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections accepted.
    pub connections_accepted: u64,
    /// Connections refused at the limit.
    pub connections_refused: u64,
    /// Connections on a TLS port closed before a request (nothing sent, plaintext where TLS
    /// is enforced, a failed handshake).
    pub connections_not_opened: u64,
    /// Messages stored by sends.
    pub messages_stored: u64,
    /// Messages returned by pulls.
    pub messages_pulled: u64,
    /// Pulls parked by long polling now.
    pub parked_pulls: u64,
    /// Failed deliveries sent to a retry topic.
    pub retries: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Dead letters replayed.
    pub replayed: u64,
    /// Failed periodic saves of the broker's state files (topics, consumer offsets).
    pub state_save_failures: u64,
    /// Consumer groups left out of heartbeats (their retry topic could not be made).
    pub heartbeat_groups_refused: u64,
}

/// The store's state.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StoreOut {
    /// Lowest commit-log offset on disk.
    pub min_offset: u64,
    /// End of written bytes.
    pub written: u64,
    /// End of synced bytes.
    pub flushed: u64,
    /// End of dispatched records.
    pub dispatched: u64,
    /// Bytes of commit-log segments.
    pub commit_log_bytes: u64,
    /// Consume queues (a deleted topic's included until retention removes them).
    pub queues: usize,
    /// Queues of deleted topics whose stored messages are hidden (`queue-floors`).
    pub queue_floors: usize,
    /// Why appends are refused (after a failed write or sync), if they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
    /// Damaged ranges found (never served).
    pub damaged_ranges: usize,
}

/// Delayed messages.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ScheduleOut {
    /// Pending timers.
    pub pending: i64,
    /// Next due time in the near window (epoch ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_due_ms: Option<i64>,
    /// Parked since start.
    pub parked: u64,
    /// Delivered since start.
    pub delivered: u64,
    /// Cancelled since start.
    pub cancelled: u64,
    /// Rescheduled since start.
    pub rescheduled: u64,
    /// Dropped as undeliverable since start.
    pub dropped: u64,
    /// Largest release lateness seen (ms).
    pub max_lateness_ms: u64,
}

/// One dead-letter queue.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DlqGroupOut {
    /// Consumer group.
    pub group: String,
    /// Stored.
    pub total: u64,
    /// Replayed.
    pub replayed: u64,
    /// Waiting.
    pub waiting: u64,
}

/// The broker's counters and state.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "admin",
    responses((status = 200, description = "Counters and state", body = StatsOut)),
    security(("bearer" = []))
)]
pub(super) async fn get_stats(State(state): State<AppState>) -> Json<StatsOut> {
    let b = state.broker();
    let s = b.stats();
    let broker = BrokerCounters {
        requests: s.requests,
        overload_rejections: s.overload_rejections,
        busy_rejections: s.busy_rejections,
        handler_panics: s.handler_panics,
        bad_frames: s.bad_frames,
        oversize_bodies: s.oversize_bodies,
        connections_open: s.connections_open,
        connections_accepted: s.connections_accepted,
        connections_refused: s.connections_refused,
        connections_not_opened: s.connections_not_opened,
        messages_stored: s.messages_stored,
        messages_pulled: s.messages_pulled,
        parked_pulls: s.parked_pulls,
        retries: s.retries,
        dead_lettered: s.dead_lettered,
        replayed: s.replayed,
        state_save_failures: s.state_save_failures,
        heartbeat_groups_refused: s.heartbeat_groups_refused,
    };
    let dlq = b
        .dlq()
        .stats()
        .into_iter()
        .map(|d| DlqGroupOut {
            group: d.group,
            total: d.total,
            replayed: d.replayed,
            waiting: d.waiting,
        })
        .collect();
    Json(StatsOut {
        uptime_ms: u64::try_from(state.started().elapsed().as_millis()).unwrap_or(u64::MAX),
        broker,
        store: store_out(&state),
        schedule: schedule_out(&state),
        dlq,
    })
}

fn store_out(state: &AppState) -> StoreOut {
    let store = state.broker().store();
    let s = store.stats();
    StoreOut {
        min_offset: s.min_offset,
        written: s.written,
        flushed: s.flushed,
        dispatched: s.dispatched,
        commit_log_bytes: s.commit_log_bytes,
        queues: s.queues,
        queue_floors: s.queue_floors,
        fenced: store.fenced(),
        damaged_ranges: usize::try_from(store.damage_count()).unwrap_or(usize::MAX),
    }
}

fn schedule_out(state: &AppState) -> Option<ScheduleOut> {
    let s = state.schedule().ok()?.stats().ok()?;
    Some(ScheduleOut {
        pending: s.pending,
        next_due_ms: s.next_due_ms,
        parked: s.parked,
        delivered: s.delivered,
        cancelled: s.cancelled,
        rescheduled: s.rescheduled,
        dropped: s.dropped,
        max_lateness_ms: s.max_lateness_ms,
    })
}
