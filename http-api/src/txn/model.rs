//! Request and response bodies of the transaction endpoints (their OpenAPI schemas too).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `POST /v1/topics/{topic}/transactions`: a half message. Exactly one of `body` and
/// `body_base64`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendTxnRequest {
    /// The body as UTF-8 text.
    pub body: Option<String>,
    /// The body as standard base64, for binary payloads.
    pub body_base64: Option<String>,
    /// One tag.
    pub tag: Option<String>,
    /// Business keys (operators find the transaction by them).
    #[serde(default)]
    pub keys: Vec<String>,
    /// User properties (names the broker uses are refused).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// The producer group: whose application is asked when the transaction stays open.
    pub producer_group: String,
    /// Where this transaction's checks go (http or https): a POST per check, see the webhook
    /// contract. Without it, the group's configuration decides (its `check_url`, pull mode, a
    /// polling producer, or a TCP producer).
    pub check_url: Option<String>,
    /// Delay level (1-based, as for produce), counted from the commit.
    pub delay_level: Option<i32>,
    /// Deliver this many milliseconds after the commit (not after the send).
    pub delay_ms: Option<i64>,
    /// Deliver at this epoch millisecond (at once if it passed while the transaction was
    /// open; refused at send time if already past, or beyond the schedule's maximum).
    pub deliver_at_ms: Option<i64>,
    /// Messages with the same sharding key go to the same queue, as for produce.
    pub sharding_key: Option<String>,
}

/// The half message was stored; nothing is visible until the commit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SendTxnResponse {
    /// Opaque handle for commit, rollback and look-ups.
    pub txn_id: String,
    /// The message id consumers will see after the commit (UNIQ_KEY).
    pub msg_id: String,
}

/// How a decision request ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecisionResponse {
    /// `committed`, `rolled_back`, or `unknown` (an UNKNOWN check answer was noted).
    pub result: String,
    /// The transaction.
    pub txn_id: String,
    /// The transaction's state now (`committed`, `rolled_back`, `discarded`, `open`...).
    pub state: String,
    /// True when the transaction already was in that state (an idempotent repeat).
    pub repeated: bool,
}

/// A producer's (or webhook's) answer to a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnswerState {
    /// Commit the transaction.
    Commit,
    /// Roll it back.
    Rollback,
    /// Still running: ask again later.
    Unknown,
}

/// `POST /v1/transactions/{txn_id}/check-answer`, and the body a webhook answers with.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct CheckAnswer {
    /// The local transaction's outcome.
    pub state: AnswerState,
}

/// `POST /v1/transactions/{txn_id}/force`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForceRequest {
    /// `commit`, `rollback` or `rearm`.
    pub action: ForceAction,
}

/// What an operator forces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForceAction {
    /// Store the real message.
    Commit,
    /// Discard the half message.
    Rollback,
    /// Check a parked transaction again: open, check count zero, first check one
    /// `check_after` from now (an open one is left as it is).
    Rearm,
}

/// One check: what a webhook receives (as the POST body) and what a poll hands out.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckItem {
    /// Answer with this (commit, rollback or check-answer endpoints).
    pub txn_id: String,
    /// The producer group asked.
    pub producer_group: String,
    /// The real topic.
    pub topic: String,
    /// The message id (UNIQ_KEY).
    pub msg_id: String,
    /// Business keys.
    pub keys: Vec<String>,
    /// The tag, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The body when it is UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body in standard base64 when it is not UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// User properties (the broker's own are left out).
    pub properties: BTreeMap<String, String>,
    /// This check's number (1 = first).
    pub check_number: u32,
    /// When the producer sent the half message, epoch ms.
    pub born_at_ms: i64,
}

/// `GET /v1/producer-groups/{group}/checks`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChecksResponse {
    /// Checks to answer; empty when none came within the wait.
    pub checks: Vec<CheckItem>,
}

/// Long-poll parameters.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PollParams {
    /// Wait up to this long for a check (ms); capped at the configured maximum. Default 0.
    pub wait_ms: Option<u64>,
    /// Most checks returned (≥ 1); capped at the configured maximum. Default 16.
    pub max: Option<usize>,
}

/// Which transactions a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateParam {
    /// Undecided: open, resolving, parked.
    #[default]
    Live,
    /// Open (being checked).
    Open,
    /// Parked by the final action `keep`.
    Parked,
    /// Decided and still in memory.
    Decided,
    /// Everything in memory.
    All,
}

/// `GET /v1/transactions` filters; results are ordered by half offset.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only this producer group.
    pub producer_group: Option<String>,
    /// Only transactions with this business key or message id.
    pub key: Option<String>,
    /// Only transactions at least this old (ms).
    pub min_age_ms: Option<u64>,
    /// Which states (default `live`).
    #[param(inline)]
    pub state: Option<StateParam>,
    /// Paging: `next_after` of the previous page.
    pub after: Option<u64>,
    /// Most results, 1..=1000 (default 100).
    pub limit: Option<usize>,
}

/// A page of transactions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TxnList {
    /// The transactions.
    pub transactions: Vec<TxnItem>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

/// A producer's last answer to a check.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LastAnswer {
    /// `commit`, `rollback` or `unknown`.
    pub answer: String,
    /// When, epoch ms.
    pub at_ms: i64,
}

/// One transaction as operators see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TxnItem {
    /// Handle for the other endpoints.
    pub txn_id: String,
    /// Producer group.
    pub producer_group: String,
    /// Real topic.
    pub topic: String,
    /// Real queue.
    pub queue_id: i32,
    /// Message id (UNIQ_KEY).
    pub msg_id: String,
    /// Business keys.
    pub keys: Vec<String>,
    /// Tag, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// `open`, `resolving`, `committed`, `rolled_back`, `discarded` or `parked`.
    pub state: String,
    /// Checks delivered since (re)armed.
    pub check_count: u32,
    /// Last check, epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_ms: Option<i64>,
    /// The producer's last answer to a check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_answer: Option<LastAnswer>,
    /// Who decided (`producer`, `check`, `operator`, `final`, `recovery`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// When it was decided, epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ms: Option<i64>,
    /// When the producer sent it, epoch ms.
    pub born_at_ms: i64,
    /// When the half message was stored, epoch ms.
    pub stored_ms: i64,
    /// Age now, ms.
    pub age_ms: u64,
    /// The half message's queue offset (paging cursor).
    pub half_offset: u64,
}
