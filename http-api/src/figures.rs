//! `GET /v1/stats/store`, `/v1/stats/schedule`, `/v1/stats/txn` (admin scope): the figures an
//! operator's dashboard draws (the console's overview and its transaction and schedule
//! pages) as JSON, read from the same sources as `/metrics`: disk use and the commit-log sync
//! (flush) latency histogram, the schedule service's pending timers per topic and release
//! lateness histogram, the txn service's counters. Counters and histograms are cumulative
//! since start, so a client draws rates and recent latencies from the difference of two reads.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use sluice_store::latency::BOUNDS_US;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

pub(crate) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(store_figures))
        .routes(routes!(schedule_figures))
        .routes(routes!(txn_figures))
}

/// Storage figures.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StoreFigures {
    /// Bytes used on the data folder's file system (absent when it cannot be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_used_bytes: Option<u64>,
    /// Used plus available bytes of that file system.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_total_bytes: Option<u64>,
    /// `disk_used_bytes / disk_total_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_used_ratio: Option<f64>,
    /// Above this ratio appends are refused (`[store] disk_max_used_ratio`).
    pub disk_max_used_ratio: f64,
    /// Bytes of commit-log segments.
    pub commit_log_bytes: u64,
    /// End of written bytes.
    pub written: u64,
    /// End of synced bytes.
    pub flushed: u64,
    /// Messages stored since start (all protocols).
    pub messages_stored: u64,
    /// Messages served to consumers since start.
    pub messages_pulled: u64,
    /// Commit-log syncs (group commits) since start, by latency.
    pub sync_latency: Histogram,
}

/// A cumulative histogram.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Histogram {
    /// Observations.
    pub count: u64,
    /// Their sum (the unit of the bounds), when it is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sum: Option<u64>,
    /// Observations per bucket, not cumulative; the last bucket has no upper bound.
    pub buckets: Vec<Bucket>,
}

/// One histogram bucket.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Bucket {
    /// Inclusive upper bound (µs for sync latency, ms for lateness); absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub le: Option<u64>,
    /// Observations in this bucket.
    pub count: u64,
}

/// Delayed-message figures.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ScheduleFigures {
    /// Pending timers.
    pub pending: i64,
    /// Pending timers per real topic (topics with none are left out).
    pub pending_by_topic: BTreeMap<String, i64>,
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
    /// How late releases were (ms), since start.
    pub lateness_ms: Histogram,
    /// Largest lateness seen (ms).
    pub max_lateness_ms: u64,
}

/// Transaction figures.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TxnFigures {
    /// Undecided transactions being checked.
    pub open: u64,
    /// Parked by the final action `keep`.
    pub parked: u64,
    /// Age of the oldest open one (ms; 0 when none).
    pub oldest_open_age_ms: u64,
    /// Checks queued for polling producers.
    pub pending_pull_checks: u64,
    /// Half messages stored since start.
    pub halves_stored: u64,
    /// Checks delivered since start.
    pub checks_sent: u64,
    /// Committed since start.
    pub committed: u64,
    /// Rolled back on request since start.
    pub rolled_back: u64,
    /// Rolled back by the final action since start.
    pub discarded: u64,
    /// Decisions refused because the opposite was made.
    pub conflicts: u64,
    /// Check answers since start: commit, rollback, unknown.
    pub answers_commit: u64,
    /// See `answers_commit`.
    pub answers_rollback: u64,
    /// See `answers_commit`.
    pub answers_unknown: u64,
}

/// Disk use, commit-log progress and sync (flush) latency.
#[utoipa::path(get, path = "/v1/stats/store", tag = "admin",
    responses((status = 200, description = "Storage figures", body = StoreFigures)),
    security(("bearer" = [])))]
async fn store_figures(State(state): State<AppState>) -> Json<StoreFigures> {
    let b = state.broker();
    let store = b.store();
    let s = store.stats();
    let disk = store.disk_usage().ok();
    let sync = store.sync_latency();
    let buckets = sync
        .buckets
        .iter()
        .enumerate()
        .map(|(i, n)| Bucket {
            le: BOUNDS_US.get(i).copied(),
            count: *n,
        })
        .collect();
    Json(StoreFigures {
        disk_used_bytes: disk.as_ref().map(|d| d.used),
        disk_total_bytes: disk.as_ref().map(|d| d.total),
        disk_used_ratio: disk.as_ref().map(|d| d.ratio()),
        disk_max_used_ratio: store.config().disk_max_used_ratio,
        commit_log_bytes: s.commit_log_bytes,
        written: s.written,
        flushed: s.flushed,
        messages_stored: b.stats().messages_stored,
        messages_pulled: b.stats().messages_pulled,
        sync_latency: Histogram {
            count: sync.count(),
            sum: Some(sync.sum_us),
            buckets,
        },
    })
}

/// Pending timers per topic, next due time, release lateness.
#[utoipa::path(get, path = "/v1/stats/schedule", tag = "admin",
    responses(
        (status = 200, description = "Delayed-message figures", body = ScheduleFigures),
        (status = 503, description = "Delays disabled", body = ErrorBody)),
    security(("bearer" = [])))]
async fn schedule_figures(State(state): State<AppState>) -> ApiResult<Json<ScheduleFigures>> {
    let s = state
        .schedule()?
        .stats()
        .map_err(|e| ApiError::unavailable(format!("the schedule service: {e}")))?;
    let buckets: Vec<Bucket> = s
        .lateness_histogram
        .iter()
        .map(|(bound, n)| Bucket {
            le: u64::try_from(*bound).ok().filter(|_| *bound != i64::MAX),
            count: *n,
        })
        .collect();
    Ok(Json(ScheduleFigures {
        pending: s.pending,
        pending_by_topic: s.pending_by_topic,
        next_due_ms: s.next_due_ms,
        parked: s.parked,
        delivered: s.delivered,
        cancelled: s.cancelled,
        rescheduled: s.rescheduled,
        dropped: s.dropped,
        lateness_ms: Histogram {
            count: buckets.iter().map(|b| b.count).sum(),
            sum: None,
            buckets,
        },
        max_lateness_ms: s.max_lateness_ms,
    }))
}

/// Open transactions, the oldest one's age, decisions and check answers.
#[utoipa::path(get, path = "/v1/stats/txn", tag = "admin",
    responses(
        (status = 200, description = "Transaction figures", body = TxnFigures),
        (status = 503, description = "Transactions disabled", body = ErrorBody)),
    security(("bearer" = [])))]
async fn txn_figures(State(state): State<AppState>) -> ApiResult<Json<TxnFigures>> {
    let m = state.txn()?.metrics();
    Ok(Json(TxnFigures {
        open: m.open,
        parked: m.parked,
        oldest_open_age_ms: m.oldest_open_age_ms,
        pending_pull_checks: m.pending_pull_checks,
        halves_stored: m.halves_stored,
        checks_sent: m.checks_sent,
        committed: m.committed,
        rolled_back: m.rolled_back,
        discarded: m.discarded,
        conflicts: m.conflicts,
        answers_commit: m.answers_commit,
        answers_rollback: m.answers_rollback,
        answers_unknown: m.answers_unknown,
    }))
}
