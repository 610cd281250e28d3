//! `GET /v1/groups` and `GET /v1/groups/{group}`: consumer groups, their members, committed
//! offsets and lag.
//!
//! The broker keeps no list of groups, so the listing is derived: every group that ever
//! heartbeated has a `%RETRY%<group>` topic, and every group with dead letters a
//! `%DLQ%<group>` queue. Offsets are looked up per topic and queue: the group's subscriptions
//! when it is online (plus its retry topic), otherwise every user topic, at most
//! `MAX_LOOKUPS` queues (`truncated` says when the bound cut the answer; `?topic=` narrows it).

use std::collections::BTreeSet;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use sluice_broker::RETRY_PREFIX;
use sluice_protocol::remoting::body::MessageModel;
use utoipa::{IntoParams, ToSchema};

use super::topics::{is_system, topic_not_found};
use crate::error::{code, ApiError, ApiResult, ErrorBody};
use crate::extract::{PathParams, QueryParams};
use crate::state::AppState;

/// Most queue offsets one group look-up reads.
const MAX_LOOKUPS: usize = 100_000;

/// Groups.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupsOut {
    /// Sorted by name.
    pub groups: Vec<GroupSummary>,
    /// More groups follow: pass this as `after` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// Listing options.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListGroupsQuery {
    /// Most groups in the answer, 1 to 10 000 (default 1 000).
    pub limit: Option<usize>,
    /// Groups after this name (the previous page's `next_after`).
    pub after: Option<String>,
}

/// A group in the listing.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupSummary {
    /// Group name.
    pub group: String,
    /// Members are connected now (RocketMQ clients heartbeating, or HTTP consumers active).
    pub online: bool,
    /// Dead letters not yet replayed.
    pub dlq_waiting: u64,
}

/// Look-up options.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupQuery {
    /// Only this topic's offsets.
    pub topic: Option<String>,
}

/// A consumer group.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupOut {
    /// Group name.
    pub group: String,
    /// Members are connected now: RocketMQ clients heartbeating, or HTTP consumers active.
    pub online: bool,
    /// Client ids of the RocketMQ clients among the members.
    pub members: Vec<String>,
    /// HTTP consumers count as members: leases held, or a receive, ack, nack or extend within
    /// the broker's client expiry (120 s). They have no client ids.
    pub http_consumers: bool,
    /// Subscribed topics, when online.
    pub subscriptions: Vec<String>,
    /// `Clustering` or `Broadcasting`, when online.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_model: Option<String>,
    /// Committed offsets with lag, per topic and queue.
    pub offsets: Vec<OffsetOut>,
    /// Sum of the lags.
    pub total_lag: u64,
    /// The look-up bound cut the offsets short.
    pub truncated: bool,
    /// Dead letters stored, replayed and still waiting.
    pub dlq: DlqCounts,
}

/// One committed offset.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OffsetOut {
    /// Topic.
    pub topic: String,
    /// Queue.
    pub queue_id: i32,
    /// Next offset the group consumes; -1 when it has committed none in this queue (listed
    /// only while the queue holds messages, all of them counted in `lag`).
    pub committed: i64,
    /// Next offset to be written.
    pub max_offset: u64,
    /// Messages not yet consumed and still kept (those retention deleted are not counted).
    pub lag: u64,
}

/// Dead-letter counts.
#[derive(Debug, Default, Serialize, ToSchema)]
pub(crate) struct DlqCounts {
    /// Stored.
    pub total: u64,
    /// Replayed.
    pub replayed: u64,
    /// Not replayed.
    pub waiting: u64,
}

/// Lists consumer groups known to this broker.
#[utoipa::path(
    get,
    path = "/v1/groups",
    tag = "admin",
    params(ListGroupsQuery),
    responses(
        (status = 200, description = "Groups with a retry topic, committed offsets, dead letters or active HTTP consumers", body = GroupsOut),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list_groups(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListGroupsQuery>,
) -> ApiResult<Json<GroupsOut>> {
    let b = state.broker();
    let mut names: BTreeSet<String> = b
        .topics()
        .iter()
        .filter_map(|t| t.topic_name.strip_prefix(RETRY_PREFIX).map(str::to_owned))
        .collect();
    names.extend(
        b.committed_groups()
            .into_iter()
            .map(|(g, _)| g)
            .filter(|g| !is_system_group(g)),
    );
    names.extend(b.http_consumer_groups());
    let dlq: std::collections::HashMap<String, u64> = b
        .dlq()
        .stats()
        .into_iter()
        .map(|s| (s.group, s.waiting))
        .collect();
    names.extend(dlq.keys().cloned());
    let (names, next_after) = super::page(
        names.into_iter(),
        String::as_str,
        q.after.as_deref(),
        q.limit,
    )?;
    let groups = names
        .into_iter()
        .map(|g| GroupSummary {
            online: b.consumer_group(&g).is_some() || b.http_consumers_active(&g),
            dlq_waiting: dlq.get(&g).copied().unwrap_or(0),
            group: g,
        })
        .collect();
    Ok(Json(GroupsOut { groups, next_after }))
}

/// What `DELETE /v1/groups/{group}/offsets` removed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OffsetsDeleted {
    /// The group.
    pub group: String,
    /// Topics it had committed offsets in.
    pub topics: usize,
}

/// Deletes every committed offset of a retired consumer group (they are kept for good
/// otherwise, and count toward `[broker] max_consumer_offsets`), saved before the answer.
/// Refused while the group has members over TCP or HTTP leases (403). A group that comes back
/// later starts where a new group starts.
#[utoipa::path(
    delete,
    path = "/v1/groups/{group}/offsets",
    tag = "admin",
    params(("group" = String, Path, description = "Consumer group")),
    responses(
        (status = 200, description = "Deleted", body = OffsetsDeleted),
        (status = 403, description = "The group has members", body = ErrorBody),
        (status = 404, description = "The group has no committed offsets", body = ErrorBody),
        (status = 503, description = "Deleted, but the offsets file could not be saved; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete_group_offsets(
    State(state): State<AppState>,
    PathParams(group): PathParams<String>,
) -> ApiResult<Json<OffsetsDeleted>> {
    let b = state.broker();
    let topics = b
        .delete_group_offsets(&group)
        .map_err(|why| ApiError::new(StatusCode::FORBIDDEN, code::FORBIDDEN, why))?;
    if topics == 0 {
        return Err(ApiError::not_found(format!(
            "consumer group {group:?} has no committed offsets"
        )));
    }
    b.save_offsets().await.map_err(|e| {
        tracing::error!(request_id = %crate::request_id::current(), error = %e, "saving consumer offsets failed");
        ApiError::unavailable("the offsets were deleted but could not be saved to disk; retry later")
    })?;
    Ok(Json(OffsetsDeleted { group, topics }))
}

/// Groups the broker keeps for itself (transaction and timer progress), not users' groups.
fn is_system_group(g: &str) -> bool {
    g.starts_with("SLUICE_") || g.starts_with("CID_RMQ_SYS_") || g.starts_with("RMQ_SYS_")
}

/// A consumer group: members, committed offsets, lag, dead letters.
#[utoipa::path(
    get,
    path = "/v1/groups/{group}",
    tag = "admin",
    params(("group" = String, Path, description = "Consumer group"), GroupQuery),
    responses(
        (status = 200, description = "The group", body = GroupOut),
        (status = 404, description = "Unknown group (or unknown ?topic)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_group(
    State(state): State<AppState>,
    PathParams(group): PathParams<String>,
    QueryParams(q): QueryParams<GroupQuery>,
) -> ApiResult<Json<GroupOut>> {
    let b = state.broker();
    if let Some(t) = &q.topic {
        b.topic(t).ok_or_else(|| topic_not_found(t))?;
    }
    let info = b.consumer_group(&group);
    let topics = topics_to_read(
        &state,
        &group,
        q.topic,
        info.as_ref().map(|i| &i.topics[..]),
    );
    // Topics where a queue without a committed offset still counts as waiting: those a
    // clustering member subscribes to (a broadcasting group keeps its offsets in its clients).
    let clustered: Vec<String> = info
        .as_ref()
        .filter(|i| i.message_model == MessageModel::Clustering)
        .map(|i| i.topics.clone())
        .unwrap_or_default();
    let (offsets, truncated) = offsets_of(&state, &group, &topics, &clustered);
    let dlq = dlq_counts(&state, &group);
    let retry_topic = b.topic(&format!("{RETRY_PREFIX}{group}")).is_some();
    let http_consumers = b.http_consumers_active(&group);
    let committed = offsets.iter().any(|o| o.committed >= 0);
    if info.is_none() && !http_consumers && !committed && !retry_topic && dlq.total == 0 {
        return Err(ApiError::not_found(format!(
            "no consumer group {group:?} is known to this broker"
        )));
    }
    Ok(Json(GroupOut {
        total_lag: offsets.iter().map(|o| o.lag).sum(),
        online: info.is_some() || http_consumers,
        http_consumers,
        members: info
            .as_ref()
            .map(|i| i.client_ids.clone())
            .unwrap_or_default(),
        subscriptions: info.as_ref().map(|i| i.topics.clone()).unwrap_or_default(),
        message_model: info.as_ref().map(|i| format!("{:?}", i.message_model)),
        group,
        offsets,
        truncated,
        dlq,
    }))
}

/// The topics whose offsets are read: the asked one, the subscriptions, or those the group
/// has committed offsets in (every user topic was read before, up to `MAX_LOOKUPS` queues,
/// for each group the console's overview shows every 2 s).
fn topics_to_read(
    state: &AppState,
    group: &str,
    asked: Option<String>,
    subscribed: Option<&[String]>,
) -> Vec<String> {
    if let Some(t) = asked {
        return vec![t];
    }
    let mut topics: Vec<String> = match subscribed {
        Some(s) if !s.is_empty() => s.to_vec(),
        _ => state
            .broker()
            .committed_topics(group)
            .into_iter()
            .filter(|t| !is_system(t))
            .collect(),
    };
    let retry = format!("{RETRY_PREFIX}{group}");
    if !topics.contains(&retry) {
        topics.push(retry);
    }
    topics
}

/// Committed offsets and lag per queue of `topics`; true when [`MAX_LOOKUPS`] cut the list. A queue where the group committed
/// nothing is listed (`committed: -1`, every kept message waiting) when the group consumes
/// the topic: it committed in another of its queues, or is in `clustered`. Left out, a group
/// that had read one queue of two showed a third of its lag.
fn offsets_of(
    state: &AppState,
    group: &str,
    topics: &[String],
    clustered: &[String],
) -> (Vec<OffsetOut>, bool) {
    let b = state.broker();
    let store = b.store();
    let mut out = Vec::new();
    let mut lookups = 0usize;
    // One rule for a topic's lines, whether the list is cut in it or not.
    let kept = |topic: &String, lines: Vec<OffsetOut>, out: &mut Vec<OffsetOut>| {
        let consumes = clustered.contains(topic) || lines.iter().any(|o| o.committed >= 0);
        out.extend(
            lines
                .into_iter()
                .filter(|o| consumes && (o.committed >= 0 || o.lag > 0)),
        );
    };
    for topic in topics {
        let Some(cfg) = b.topic(topic) else { continue };
        let mut lines = Vec::new();
        for q in 0..cfg.read_queue_nums.max(cfg.write_queue_nums) {
            lookups += 1;
            if lookups > MAX_LOOKUPS {
                kept(topic, lines, &mut out);
                return (out, true);
            }
            let (min, max) = (store.min_offset(topic, q), store.max_offset(topic, q));
            let committed = b.query_offset(group, topic, q);
            if committed.is_none() && min >= max {
                continue;
            }
            let committed = committed.unwrap_or(-1);
            // Messages retention deleted are no longer waiting: the group resumes at the
            // queue's first kept one.
            let from = committed.max(i64::try_from(min).unwrap_or(i64::MAX));
            let lag = u64::try_from(i64::try_from(max).unwrap_or(i64::MAX) - from).unwrap_or(0);
            lines.push(OffsetOut {
                topic: topic.clone(),
                queue_id: q,
                committed,
                max_offset: max,
                lag,
            });
        }
        kept(topic, lines, &mut out);
    }
    (out, false)
}

fn dlq_counts(state: &AppState, group: &str) -> DlqCounts {
    let s = state.broker().dlq().group_stats(group);
    DlqCounts {
        total: s.total,
        replayed: s.replayed,
        waiting: s.waiting,
    }
}
