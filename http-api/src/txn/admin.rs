//! Operator endpoints: list and inspect transactions, force a decision.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use sluice_txn::{ListQuery, StateFilter, TxnError, TxnService, TxnView};

use super::convert::{decision, item_of_view, txn_error, view_matches};
use super::id::TxnHandle;
use super::model::{
    DecisionResponse, ForceAction, ForceRequest, ListParams, StateParam, TxnItem, TxnList,
};
use super::routes::decode_id;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::state::AppState;

/// Most transactions per page.
const MAX_LIMIT: usize = 1000;
/// Transactions per page when the caller does not say.
const DEFAULT_LIMIT: usize = 100;
/// Longest wait for the store's dispatch before a look-up.
const SETTLE_WAIT: Duration = Duration::from_secs(2);
/// Looks at the dispatch progress during [`SETTLE_WAIT`].
const SETTLE_ROUNDS: u32 = 200;

/// Transactions in memory (every undecided one, and decided ones for the retention window),
/// ordered by half offset.
#[utoipa::path(get, path = "/v1/transactions", tag = "transactions-admin",
    params(ListParams),
    responses(
        (status = 200, description = "A page", body = TxnList),
        (status = 400, description = "Bad parameter", body = ErrorBody),
        (status = 503, description = "Transactions disabled", body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<ListParams>,
) -> ApiResult<Json<TxnList>> {
    let txn = state.txn()?;
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_LIMIT}"
        )));
    }
    let q = ListQuery {
        producer_group: p.producer_group,
        key: p.key,
        min_age: p.min_age_ms.map(Duration::from_millis),
        states: state_filter(p.state.unwrap_or_default()),
        after: p.after,
        limit,
    };
    settle(&state).await;
    let views = txn.list(&q).await.map_err(txn_error)?;
    let next_after = (views.len() == limit)
        .then(|| views.last().map(|v| v.half_offset))
        .flatten();
    Ok(Json(TxnList {
        transactions: views.iter().map(item_of_view).collect(),
        next_after,
    }))
}

/// One transaction: state, check count, last answer, who decided.
#[utoipa::path(get, path = "/v1/transactions/{txn_id}", tag = "transactions-admin",
    params(("txn_id" = String, Path, description = "Transaction handle")),
    responses(
        (status = 200, description = "The transaction", body = TxnItem),
        (status = 400, description = "Malformed txn_id", body = ErrorBody),
        (status = 404, description = "Unknown, or decided and forgotten", body = ErrorBody),
        (status = 503, description = "Transactions disabled", body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn get_one(
    State(state): State<AppState>,
    PathParams(txn_id): PathParams<String>,
) -> ApiResult<Json<TxnItem>> {
    let txn = state.txn()?;
    let handle = decode_id(&txn_id)?;
    let view = find(&state, txn, &handle, true).await?;
    Ok(Json(item_of_view(&view)))
}

/// Forces a commit or rollback of an undecided transaction (recorded as decided by an
/// operator), or re-arms a parked one's checks. A decided one is not changed: the same
/// decision answers as a repeat, the opposite one (or a re-arm) 409.
#[utoipa::path(post, path = "/v1/transactions/{txn_id}/force", tag = "transactions-admin",
    params(("txn_id" = String, Path, description = "Transaction handle")),
    request_body = ForceRequest,
    responses(
        (status = 200, description = "Applied or repeated", body = DecisionResponse),
        (status = 400, description = "Malformed txn_id or action", body = ErrorBody),
        (status = 404, description = "Unknown, or decided and forgotten", body = ErrorBody),
        (status = 409, description = "Decided the other way (or decided, for a re-arm)", body = ErrorBody),
        (status = 429, description = "Another decision on it is being stored, or the store is busy: nothing changed, retry", body = ErrorBody),
        (status = 503, description = "Transactions disabled, disk full, or shutting down", body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn force(
    State(state): State<AppState>,
    PathParams(txn_id): PathParams<String>,
    JsonBody(req): JsonBody<ForceRequest>,
) -> ApiResult<Json<DecisionResponse>> {
    let txn = state.txn()?;
    let handle = decode_id(&txn_id)?;
    find(&state, txn, &handle, false).await?;
    let outcome = match req.action {
        ForceAction::Commit => txn.force(handle.half_offset, true).await,
        ForceAction::Rollback => txn.force(handle.half_offset, false).await,
        ForceAction::Rearm => txn.rearm(handle.half_offset).await,
    }
    .map_err(txn_error)?;
    tracing::info!(producer_group = %handle.producer_group, transaction_id = %handle.uniq_key, half_offset = handle.half_offset, action = ?req.action, outcome = ?outcome, "transaction forced by an operator");
    Ok(Json(decision(outcome, txn_id)))
}

/// The transaction `handle` names, if in memory and really that one. A miss is looked at again
/// once the store has dispatched what it had written (a send acknowledged a moment ago).
/// With `read_back`, a decided one no longer in memory is read back from its op record (for
/// showing it; forcing works on memory only).
async fn find(
    state: &AppState,
    txn: &TxnService,
    handle: &TxnHandle,
    read_back: bool,
) -> Result<TxnView, ApiError> {
    let mut view = txn.get(handle.half_offset).await.map_err(txn_error)?;
    if view.is_none() {
        settle(state).await;
        view = txn.get(handle.half_offset).await.map_err(txn_error)?;
    }
    // Decided and no longer in memory (forgotten, or decided before a restart): read back,
    // off the async workers (a key-index look-up and record reads).
    if view.is_none() && read_back {
        let (txn, r) = (txn.clone(), handle.reference());
        view = match tokio::task::spawn_blocking(move || txn.get_decided(&r)).await {
            Ok(Ok(v)) => v,
            Ok(Err(TxnError::WrongGroup { .. } | TxnError::Mismatch(_))) => None,
            Ok(Err(e)) => return Err(txn_error(e)),
            Err(e) => return Err(ApiError::internal(e)),
        };
    }
    view.filter(|v| view_matches(v, handle)).ok_or_else(|| {
        ApiError::not_found(if read_back {
            "no such transaction (unknown, or decided and its records gone with retention)"
        } else {
            "no such transaction in memory (unknown, or decided and no longer in memory)"
        })
    })
}

/// Waits (at most [`SETTLE_WAIT`]) until the store dispatched every record written before
/// this call, so a half message whose send was acknowledged is in the half queue the txn crate
/// reads: operators see their own writes.
async fn settle(state: &AppState) {
    let store = state.broker().store();
    let target = store.stats().written;
    for _ in 0..SETTLE_ROUNDS {
        if store.stats().dispatched >= target {
            return;
        }
        tokio::time::sleep(SETTLE_WAIT / SETTLE_ROUNDS).await;
    }
}

fn state_filter(s: StateParam) -> StateFilter {
    match s {
        StateParam::Live => StateFilter::Live,
        StateParam::Open => StateFilter::Open,
        StateParam::Parked => StateFilter::Parked,
        StateParam::Decided => StateFilter::Decided,
        StateParam::All => StateFilter::All,
    }
}
