//! Finding a message's stored copies (blocking: index look-ups and record reads) and turning
//! them into trace events (async: the txn and schedule services are asked for current states).

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use bytes::Bytes;
use sluice_broker::{
    BrokerServices, DLQ_PREFIX, RETRY_PREFIX, SCHEDULE_TOPIC, TRANS_HALF_TOPIC, TRANS_OP_HALF_TOPIC,
};
use sluice_protocol::message::ids::offset_msg_id;
use sluice_protocol::message::keys;
use sluice_protocol::message::record::sysflag;
use sluice_protocol::{Properties, RecordView};
use sluice_schedule::{MessageState, ScheduledMessage, Selector, TIMER_OUT_MS, TIMER_TOPIC};
use sluice_txn::TxnView;

use super::{TraceEvent, TracedMessage};
use crate::state::AppState;

/// Most topics one look-up asks the index about (an id look-up without a topic asks them all).
const MAX_TOPICS: usize = 2_000;
/// Longest a look-up's search may take: it runs on a blocking thread, which goes on after the
/// client left, so a search over many topics on a cold disk is cut here (answered
/// `truncated`) instead of holding the thread for as long as it takes.
const MAX_SEARCH: std::time::Duration = std::time::Duration::from_secs(10);

/// One look-up's search: when it must stop and whether it did, and the consumer groups (read
/// once per look-up: they walk the whole offset table).
struct Search {
    at: std::time::Instant,
    cut: std::cell::Cell<bool>,
    groups: std::cell::OnceCell<Vec<String>>,
}

impl Search {
    fn new() -> Self {
        Self::within(MAX_SEARCH)
    }

    fn within(limit: std::time::Duration) -> Self {
        Self {
            at: std::time::Instant::now() + limit,
            cut: std::cell::Cell::new(false),
            groups: std::cell::OnceCell::new(),
        }
    }

    /// True (and noted) once the search is out of time.
    fn passed(&self) -> bool {
        if std::time::Instant::now() >= self.at {
            self.cut.set(true);
        }
        self.cut.get()
    }
}
/// Most copies read per topic and message (retries of one message stay far below it).
const PER_TOPIC: usize = 32;
/// Most messages one key look-up traces.
const MAX_MESSAGES: usize = 20;
/// The properties the retry code sets (the broker's `PROP_FAILURE_REASON`, `PROP_REPLAY_TASK`).
const PROP_FAILURE_REASON: &str = "SLUICE_FAILURE_REASON";
const PROP_REPLAY_TASK: &str = "SLUICE_REPLAY_TASK";
const PROP_REPLAYED_FROM: &str = "SLUICE_REPLAYED_FROM";
/// The schedule code's marks: a cancel marker, a rescheduled copy, a released message.
const PROP_CANCEL: &str = "SLUICE_TIMER_CANCEL";
const PROP_REPLACES: &str = "SLUICE_TIMER_REPLACES";

/// What to look for.
#[derive(Debug)]
pub(super) enum Target {
    /// A `UNIQ_KEY` (or an offset message id), optionally only in one topic.
    Id { id: String, topic: Option<String> },
    /// A business key of a topic.
    Key { key: String, topic: String },
}

/// Messages found, before their states are asked for.
#[derive(Debug)]
pub(super) struct Found {
    pub(super) messages: Vec<Gathered>,
    pub(super) truncated: bool,
}

/// One message's stored copies, oldest first, and the groups that consumed each.
#[derive(Debug)]
pub(super) struct Gathered {
    msg_id: String,
    topic: String,
    records: Vec<(Rec, Vec<String>)>,
    /// Its body was let go: the look-up's bodies reached [`MAX_BODY_BYTES`].
    body_omitted: bool,
}

/// Most body bytes one look-up keeps (see `super::MAX_BODY_BYTES`, the answer's bound).
const MAX_BODY_BYTES: usize = super::MAX_BODY_BYTES;

/// Index of the copy a message is shown by: the first in a user topic, else the first.
fn shown_index(records: &[(Rec, Vec<String>)]) -> Option<usize> {
    records
        .iter()
        .position(|(r, _)| r.is_user_topic())
        .or_else(|| (!records.is_empty()).then_some(0))
}

/// Lets go of the bodies no answer shows (every copy's but the shown one's, and that one's too
/// once `budget` is spent): each holds its whole record read from the log, and a message with
/// its retries in twenty copies of 4 MiB held them all until the answer was written.
fn keep_shown_body(g: &mut Gathered, budget: &mut usize) {
    let shown = shown_index(&g.records);
    for (i, (r, _)) in g.records.iter_mut().enumerate() {
        if Some(i) == shown {
            let len = r.body.len();
            if *budget >= len || *budget == MAX_BODY_BYTES {
                *budget = budget.saturating_sub(len);
                continue;
            }
            g.body_omitted = true;
        }
        r.body = Bytes::new();
    }
}

/// A stored copy, decoded.
#[derive(Debug)]
struct Rec {
    topic: String,
    queue_id: i32,
    queue_offset: i64,
    /// Below its queue's floor: its topic was deleted after it was stored (set by `gather`).
    deleted: bool,
    offset_msg_id: String,
    /// Commit-log offset (a rescheduled copy names the timer it replaces by it).
    phys: u64,
    sys_flag: i32,
    store_ms: i64,
    born_ms: i64,
    props: Properties,
    body: Bytes,
}

impl Rec {
    fn decode(bytes: &Bytes) -> Option<Self> {
        let v = RecordView::parse(bytes, usize::MAX).ok()?;
        let phys = u64::try_from(v.header.physical_offset).ok()?;
        Some(Self {
            phys,
            topic: v.topic.to_owned(),
            queue_id: v.header.queue_id,
            queue_offset: v.header.queue_offset,
            deleted: false,
            offset_msg_id: offset_msg_id(v.header.store_host, phys),
            sys_flag: v.header.sys_flag,
            store_ms: v.header.store_timestamp,
            born_ms: v.header.born_timestamp,
            props: Properties::decode(v.properties),
            body: bytes.slice_ref(v.body),
        })
    }

    /// The topic the message was sent to: a retry or dead-letter copy names it in
    /// `RETRY_TOPIC`, a half message or parked timer in `REAL_TOPIC`.
    fn real_topic(&self) -> &str {
        self.props
            .get(keys::RETRY_TOPIC)
            .or_else(|| self.props.get(keys::REAL_TOPIC))
            .unwrap_or(&self.topic)
    }

    fn prop(&self, k: &str) -> Option<String> {
        self.props.get(k).map(str::to_owned)
    }

    fn is_user_topic(&self) -> bool {
        !is_system(&self.topic)
    }
}

fn is_system(topic: &str) -> bool {
    [
        TRANS_HALF_TOPIC,
        TRANS_OP_HALF_TOPIC,
        SCHEDULE_TOPIC,
        TIMER_TOPIC,
    ]
    .contains(&topic)
        || topic.starts_with(RETRY_PREFIX)
        || topic.starts_with(DLQ_PREFIX)
}

/// Reads the copies of the messages `target` names.
pub(super) fn find(b: &BrokerServices, target: &Target) -> Found {
    let search = Search::new();
    let mut found = find_within(b, target, &search);
    found.truncated |= search.cut.get();
    found
}

fn find_within(b: &BrokerServices, target: &Target, search: &Search) -> Found {
    match target {
        Target::Id { id, topic } => {
            let (topics, truncated) = match topic {
                Some(t) => candidate_topics(b, t),
                None => all_topics(b),
            };
            let mut g = gather(b, &topics, id, topic.as_deref(), search);
            if g.is_none() {
                let uniq = uniq_of_offset_id(b, id);
                g = uniq.and_then(|u| gather(b, &topics, &u, topic.as_deref(), search));
            }
            if let Some(g) = g.as_mut() {
                keep_shown_body(g, &mut { MAX_BODY_BYTES });
            }
            Found {
                messages: g.into_iter().collect(),
                truncated,
            }
        }
        Target::Key { key, topic } => {
            let (topics, cut) = candidate_topics(b, topic);
            let (ids, more) = ids_with_key(b, &topics, key, topic, search);
            let mut budget = MAX_BODY_BYTES;
            let messages = ids
                .iter()
                .filter_map(|id| gather(b, &topics, id, Some(topic), search))
                .map(|mut g| {
                    keep_shown_body(&mut g, &mut budget);
                    g
                })
                .collect();
            Found {
                messages,
                truncated: cut || more,
            }
        }
    }
}

/// The message's own topic and every topic a copy of it can be in.
fn candidate_topics(b: &BrokerServices, topic: &str) -> (Vec<String>, bool) {
    let mut out = vec![
        topic.to_owned(),
        TRANS_HALF_TOPIC.to_owned(),
        SCHEDULE_TOPIC.to_owned(),
        TIMER_TOPIC.to_owned(),
    ];
    let copies = b
        .topics()
        .into_iter()
        .map(|t| t.topic_name)
        .filter(|t| t.starts_with(RETRY_PREFIX) || t.starts_with(DLQ_PREFIX));
    out.extend(copies);
    let cut = out.len() > MAX_TOPICS;
    out.truncate(MAX_TOPICS);
    (out, cut)
}

fn all_topics(b: &BrokerServices) -> (Vec<String>, bool) {
    let mut out: Vec<String> = b.topics().into_iter().map(|t| t.topic_name).collect();
    for t in [TRANS_HALF_TOPIC, SCHEDULE_TOPIC, TIMER_TOPIC] {
        if !out.iter().any(|o| o == t) {
            out.push(t.to_owned());
        }
    }
    let cut = out.len() > MAX_TOPICS;
    out.truncate(MAX_TOPICS);
    (out, cut)
}

/// The `UNIQ_KEY` of the record an offset message id names, if `id` is one.
fn uniq_of_offset_id(b: &BrokerServices, id: &str) -> Option<String> {
    let bytes = b.store().read_by_offset_msg_id(id).ok()?;
    Rec::decode(&bytes)?.prop(keys::UNIQ_KEY)
}

/// Ids of the messages of `topic` with `key`, oldest first; true when more than
/// [`MAX_MESSAGES`] matched.
fn ids_with_key(
    b: &BrokerServices,
    topics: &[String],
    key: &str,
    topic: &str,
    search: &Search,
) -> (Vec<String>, bool) {
    let store = b.store();
    let mut found: Vec<(i64, String)> = Vec::new();
    for t in topics {
        if search.passed() {
            break;
        }
        for bytes in store.query_by_key(t, key, PER_TOPIC, i64::MIN / 2, i64::MAX / 2) {
            let Some(r) = Rec::decode(&bytes) else {
                continue;
            };
            if r.real_topic() != topic {
                continue;
            }
            if let Some(u) = r.prop(keys::UNIQ_KEY) {
                found.push((r.born_ms, u));
            }
        }
    }
    found.sort();
    let mut ids: Vec<String> = Vec::new();
    for (_, id) in found {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let more = ids.len() > MAX_MESSAGES;
    ids.truncate(MAX_MESSAGES);
    (ids, more)
}

/// Every copy of message `uniq` in `topics` (of real topic `only`, when given), with the
/// groups whose committed offset is past each; `None` when there is none.
fn gather(
    b: &BrokerServices,
    topics: &[String],
    uniq: &str,
    only: Option<&str>,
    search: &Search,
) -> Option<Gathered> {
    let store = b.store();
    let mut recs: Vec<Rec> = Vec::new();
    // Only a copy that may be shown keeps its body (each holds its whole record read from the
    // log): those in a user topic, and the earliest other one, shown when there is none.
    let mut earliest_other: Option<usize> = None;
    let found = topics
        .iter()
        .take_while(|_| !search.passed())
        .flat_map(|t| store.query_by_uniq_key(t, uniq, PER_TOPIC))
        .filter_map(|bytes| Rec::decode(&bytes))
        .filter(|r| r.topic != TRANS_OP_HALF_TOPIC && r.props.get(PROP_CANCEL).is_none())
        .filter(|r| only.is_none_or(|t| r.real_topic() == t));
    for mut r in found {
        r.deleted = store.is_retired(&r.topic, r.queue_id, r.queue_offset);
        if !r.is_user_topic() {
            let earlier = earliest_other.is_none_or(|i: usize| {
                (r.store_ms, r.queue_offset) < (recs[i].store_ms, recs[i].queue_offset)
            });
            if earlier {
                if let Some(i) = earliest_other {
                    recs[i].body = Bytes::new();
                }
                earliest_other = Some(recs.len());
            } else {
                r.body = Bytes::new();
            }
        }
        recs.push(r);
    }
    recs.sort_by_key(|r| (r.store_ms, r.queue_offset));
    let topic = recs
        .iter()
        .find(|r| r.is_user_topic())
        .or(recs.first())?
        .real_topic()
        .to_owned();
    let groups = search.groups.get_or_init(|| consumer_groups(b));
    let records = recs
        .into_iter()
        .map(|r| {
            let by = consumed_by(b, &r, groups);
            (r, by)
        })
        .collect();
    Some(Gathered {
        msg_id: uniq.to_owned(),
        topic,
        records,
        body_omitted: false,
    })
}

/// Groups known to the broker: those with a retry topic (every RocketMQ consumer's heartbeat
/// makes one) and those with committed offsets (an HTTP consumer gets a retry topic only
/// once it fails a delivery).
fn consumer_groups(b: &BrokerServices) -> Vec<String> {
    let mut groups: std::collections::BTreeSet<String> = b
        .topics()
        .into_iter()
        .filter_map(|t| t.topic_name.strip_prefix(RETRY_PREFIX).map(str::to_owned))
        .collect();
    groups.extend(b.committed_groups().into_iter().map(|(g, _)| g));
    groups.into_iter().collect()
}

/// The groups whose committed offset in the copy's queue is past it.
fn consumed_by(b: &BrokerServices, r: &Rec, groups: &[String]) -> Vec<String> {
    // Offsets committed since its topic was deleted are the new topic's: they say nothing
    // of it.
    if r.deleted {
        return Vec::new();
    }
    let readers: Vec<&String> = match r.topic.strip_prefix(RETRY_PREFIX) {
        Some(g) => groups.iter().filter(|x| *x == g).collect(),
        None if r.is_user_topic() => groups.iter().collect(),
        None => Vec::new(),
    };
    readers
        .into_iter()
        .filter(|g| {
            b.query_offset(g, &r.topic, r.queue_id)
                .is_some_and(|c| c > r.queue_offset)
        })
        .cloned()
        .collect()
}

/// The events of a gathered message, with the transaction's and the timers' current states.
pub(super) async fn complete(state: &AppState, m: Gathered) -> TracedMessage {
    let timers = timers_of(state, &m).await;
    let halves = half_views(state, &m).await;
    let replaced = replaced_timers(&m);
    let mut events = Vec::new();
    for (r, consumed) in &m.records {
        let mut of = events_of(r, &timers, &halves);
        if replaced.contains(&r.phys) {
            // Its own state would be the copy's (the timers listed are the live ones).
            for e in of.iter_mut().filter(|e| e.kind == "scheduled") {
                e.state = Some("rescheduled".into());
                e.detail = Some("replaced by a rescheduled copy".into());
            }
        }
        if r.deleted {
            for e in &mut of {
                e.state = Some("deleted".into());
                e.detail =
                    Some("its topic was deleted after it was stored: not delivered again".into());
            }
        }
        events.extend(of);
        for g in consumed {
            let mut e = event("consumed", None, r);
            e.offset_msg_id = None;
            e.group = Some(g.clone());
            e.detail = Some("the group's committed offset is past it".into());
            events.push(e);
        }
    }
    let shown = shown_index(&m.records).map(|i| &m.records[i].0);
    let mut out = summary(m.msg_id.clone(), m.topic.clone(), shown, events);
    if m.body_omitted {
        out.body = None;
        out.body_base64 = None;
        out.body_omitted = true;
    }
    out
}

/// Commit-log offsets of the timers a rescheduled copy among the records replaced.
fn replaced_timers(m: &Gathered) -> std::collections::HashSet<u64> {
    m.records
        .iter()
        .filter_map(|(r, _)| r.props.get(PROP_REPLACES))
        .filter_map(|v| v.split_once(':').and_then(|(_, p)| p.parse().ok()))
        .collect()
}

/// The schedule service's view of the message's timers (empty when scheduling is off).
async fn timers_of(state: &AppState, m: &Gathered) -> Vec<ScheduledMessage> {
    let parked = m.records.iter().any(|(r, _)| {
        (r.topic == SCHEDULE_TOPIC || r.topic == TIMER_TOPIC) && !r.real_topic_is_retry()
    });
    let Ok(svc) = state.schedule() else {
        return Vec::new();
    };
    if !parked {
        return Vec::new();
    }
    let sel = Selector::Id {
        topic: Some(m.topic.clone()),
        uniq_key: m.msg_id.clone(),
    };
    svc.list(&sel).await.map(|(l, _)| l).unwrap_or_default()
}

impl Rec {
    fn real_topic_is_retry(&self) -> bool {
        self.props
            .get(keys::REAL_TOPIC)
            .is_some_and(|t| t.starts_with(RETRY_PREFIX))
    }

    fn due_ms(&self) -> Option<i64> {
        self.props.get(TIMER_OUT_MS).and_then(|v| v.parse().ok())
    }
}

fn event(kind: &str, at_ms: Option<i64>, r: &Rec) -> TraceEvent {
    TraceEvent {
        kind: kind.to_owned(),
        at_ms,
        topic: r.topic.clone(),
        queue_id: r.queue_id,
        queue_offset: r.queue_offset,
        offset_msg_id: Some(r.offset_msg_id.clone()),
        group: None,
        due_ms: None,
        state: None,
        detail: None,
    }
}

/// The txn service's view of each half message among the records, by half offset (empty
/// when transactions are off).
async fn half_views(state: &AppState, m: &Gathered) -> HashMap<u64, TxnView> {
    let mut views = HashMap::new();
    let Ok(txn) = state.txn() else {
        return views;
    };
    for (r, _) in m
        .records
        .iter()
        .filter(|(r, _)| r.topic == TRANS_HALF_TOPIC)
    {
        let Ok(off) = u64::try_from(r.queue_offset) else {
            continue;
        };
        if let Ok(Some(v)) = txn.get(off).await {
            views.insert(off, v);
        }
    }
    views
}

/// One copy's events (a half message may add its decision, from `halves`).
fn events_of(
    r: &Rec,
    timers: &[ScheduledMessage],
    halves: &HashMap<u64, TxnView>,
) -> Vec<TraceEvent> {
    let at = Some(r.store_ms);
    if r.topic == TRANS_HALF_TOPIC {
        return half_events(r, halves);
    }
    if r.topic == SCHEDULE_TOPIC || r.topic == TIMER_TOPIC {
        let due = r.due_ms();
        if r.real_topic_is_retry() {
            let mut e = event("retry_parked", at, r);
            e.due_ms = due;
            e.group = r
                .props
                .get(keys::REAL_TOPIC)
                .and_then(|t| t.strip_prefix(RETRY_PREFIX))
                .map(str::to_owned);
            return vec![e];
        }
        let mut e = event("scheduled", at, r);
        e.due_ms = due;
        e.state = timer_state(timers, due);
        if r.props.get(PROP_REPLACES).is_some() {
            e.detail = Some("a rescheduled copy".into());
        }
        return vec![e];
    }
    if let Some(g) = r.topic.strip_prefix(RETRY_PREFIX) {
        // A replay copies a dead letter back into its group's retry topic by default.
        let mut e = if r.props.get(PROP_REPLAYED_FROM).is_some() {
            replayed_event(r)
        } else {
            let mut e = event("retried", at, r);
            e.detail = failure_detail(r);
            e
        };
        e.group = Some(g.to_owned());
        return vec![e];
    }
    if let Some(g) = r.topic.strip_prefix(DLQ_PREFIX) {
        let mut e = event("dead_lettered", at, r);
        e.group = Some(g.to_owned());
        e.detail = failure_detail(r);
        return vec![e];
    }
    vec![user_topic_event(r)]
}

/// A copy in the message's own topic: committed, released by a timer, replayed, or plain.
fn user_topic_event(r: &Rec) -> TraceEvent {
    let at = Some(r.store_ms);
    if r.sys_flag & sysflag::TRANSACTION_MASK == sysflag::TRANSACTION_COMMIT {
        return event("committed", at, r);
    }
    if let Some(due) = r.props.get(sluice_schedule::PROP_DUE_MS) {
        let mut e = event("released", at, r);
        e.due_ms = due.parse().ok();
        return e;
    }
    if r.props.get(PROP_REPLAYED_FROM).is_some() {
        return replayed_event(r);
    }
    event("produced", at, r)
}

/// A dead letter's replayed copy, in its group's retry topic or in a target topic.
fn replayed_event(r: &Rec) -> TraceEvent {
    let mut e = event("replayed", Some(r.store_ms), r);
    e.detail = r.prop(PROP_REPLAY_TASK).map(|t| format!("replay task {t}"));
    e
}

/// The half message, and the decision when the txn service still holds it.
fn half_events(r: &Rec, halves: &HashMap<u64, TxnView>) -> Vec<TraceEvent> {
    let mut half = event("half", Some(r.store_ms), r);
    half.group = r.prop(keys::PGROUP);
    let view = u64::try_from(r.queue_offset)
        .ok()
        .and_then(|off| halves.get(&off));
    let Some(v) = view.filter(|v| r.prop(keys::UNIQ_KEY).as_deref() == Some(&v.transaction_id))
    else {
        return vec![half];
    };
    half.state = Some(v.state.name().to_owned());
    let answer = v
        .last_answer
        .map_or_else(|| "none".to_owned(), |(a, _)| a.name().to_owned());
    half.detail = Some(format!("{} checks, last answer {answer}", v.check_count));
    let mut out = vec![half];
    let rolled_back = matches!(v.state.name(), "rolled_back" | "discarded");
    if rolled_back {
        let mut e = event(v.state.name(), v.resolved_ms, r);
        e.offset_msg_id = None;
        e.detail = v.decided_by.map(|s| format!("decided by {}", s.name()));
        out.push(e);
    }
    out
}

fn timer_state(timers: &[ScheduledMessage], due: Option<i64>) -> Option<String> {
    // Only a timer with the record's due time is its own: another (a rescheduled copy) says
    // nothing of this one. Without a due time, a single timer is taken for it.
    let t = match due {
        Some(due) => timers.iter().find(|t| t.due_ms == due)?,
        None => (timers.len() == 1).then(|| &timers[0])?,
    };
    let name = match t.state {
        MessageState::Pending => "pending",
        MessageState::Cancelled => "cancelled",
        MessageState::Delivered => "delivered",
        MessageState::Dropped => "dropped",
    };
    Some(name.to_owned())
}

fn failure_detail(r: &Rec) -> Option<String> {
    let times = r
        .prop(keys::RECONSUME_TIME)
        .map(|n| format!("reconsume {n}"));
    let reason = r.prop(PROP_FAILURE_REASON);
    match (times, reason) {
        (Some(t), Some(why)) => Some(format!("{t}: {why}")),
        (t, why) => t.or(why),
    }
}

fn summary(
    msg_id: String,
    topic: String,
    shown: Option<&Rec>,
    events: Vec<TraceEvent>,
) -> TracedMessage {
    let Some(r) = shown else {
        return TracedMessage {
            msg_id,
            topic,
            keys: Vec::new(),
            tag: None,
            born_ms: 0,
            body: None,
            body_base64: None,
            compressed: false,
            body_omitted: false,
            properties: BTreeMap::new(),
            events,
        };
    };
    let compressed = r.sys_flag & sysflag::COMPRESSED != 0;
    let text = (!compressed)
        .then(|| std::str::from_utf8(&r.body).ok().map(str::to_owned))
        .flatten();
    let body_base64 = text
        .is_none()
        .then(|| base64::engine::general_purpose::STANDARD.encode(&r.body));
    TracedMessage {
        msg_id,
        topic,
        keys: r
            .prop(keys::KEYS)
            .map(|k| {
                k.split(' ')
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        tag: r.prop(keys::TAGS),
        born_ms: r.born_ms,
        body: text,
        body_base64,
        compressed,
        body_omitted: false,
        properties: r
            .props
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_past_its_time_bound_is_marked_cut_and_takes_no_more_topics() {
        let open = Search::within(std::time::Duration::from_secs(60));
        assert!(!open.passed());
        assert!(!open.cut.get());
        let spent = Search::within(std::time::Duration::ZERO);
        let topics = ["A", "B", "C"];
        let searched = topics.iter().take_while(|_| !spent.passed()).count();
        assert_eq!(searched, 0);
        assert!(spent.cut.get(), "answered as truncated");
    }
}
