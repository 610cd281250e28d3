//! The history checker: from the recorded events alone, decides whether the broker kept its
//! promises across the kills. It knows nothing of how the load was made, so it can be fed a
//! hand-made history (see the tests at the end) and must report every broken promise in it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::history::{Class, Consumed, Ev, Event, Via};

/// How much earlier than its due time a delayed message may be seen. The broker and the test
/// read the same wall clock, in whole milliseconds, so this only absorbs rounding: any larger
/// gap is a timer released early (documented in docs/DURABILITY.md).
pub const TIMER_TOLERANCE_MS: i64 = 10;

/// A broken promise, with what identifies it in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged plain message the group never received.
    Lost { group: String, key: String },
    /// A delivery whose body differs from what was sent.
    Corrupt { group: String, key: String },
    /// A delivery of a key that was never sent.
    Phantom { group: String, key: String },
    /// A transactional message delivered before any commit of it was sent.
    HalfVisible { group: String, key: String },
    /// A transactional message delivered although the broker answered `rolled_back`.
    RolledBackVisible { group: String, key: String },
    /// A transaction the broker answered `committed` whose message the group never received.
    CommittedTxnLost { group: String, key: String },
    /// An acknowledged half message without a definite decision at the end.
    TxnUnresolved { key: String, answers: Vec<String> },
    /// A delayed message seen `early_ms` before its due time.
    TimerEarly {
        group: String,
        key: String,
        early_ms: i64,
    },
    /// An acknowledged delayed message the group never received, with no cancel answered
    /// `cancelled` and none unanswered.
    TimerLost { group: String, key: String },
    /// A delayed message delivered although its cancel answered `cancelled`.
    CancelledDelivered { group: String, key: String },
    /// A committed offset read after a start is lower than one read after an earlier start.
    OffsetBackwards {
        group: String,
        topic: String,
        queue: i32,
        cycle: usize,
        from: i64,
        to: i64,
    },
    /// Two different messages delivered from the same queue position.
    OffsetReused {
        topic: String,
        queue: i32,
        offset: i64,
        keys: [String; 2],
    },
    /// A plain message (sent once, never retried by the load) stored at two positions of
    /// its topic: a second copy of an acknowledged send.
    StoredTwice {
        topic: String,
        key: String,
        positions: [(i32, i64); 2],
    },
    /// After a clean stop, the committed offset is not the last one committed.
    OffsetNotKept {
        group: String,
        topic: String,
        queue: i32,
        committed: i64,
        found: i64,
    },
}

impl Violation {
    /// The message key it is about (offset violations have none).
    pub fn key(&self) -> Option<&str> {
        match self {
            Violation::Lost { key, .. }
            | Violation::Corrupt { key, .. }
            | Violation::Phantom { key, .. }
            | Violation::HalfVisible { key, .. }
            | Violation::RolledBackVisible { key, .. }
            | Violation::CommittedTxnLost { key, .. }
            | Violation::TxnUnresolved { key, .. }
            | Violation::TimerEarly { key, .. }
            | Violation::TimerLost { key, .. }
            | Violation::CancelledDelivered { key, .. }
            | Violation::StoredTwice { key, .. } => Some(key),
            Violation::OffsetBackwards { .. }
            | Violation::OffsetNotKept { .. }
            | Violation::OffsetReused { .. } => None,
        }
    }

    /// Something that must be delivered has not been (yet): what the final drain waits for.
    pub fn is_undelivered(&self) -> bool {
        matches!(
            self,
            Violation::Lost { .. }
                | Violation::TimerLost { .. }
                | Violation::CommittedTxnLost { .. }
                | Violation::TxnUnresolved { .. }
        )
    }
}

/// Deliveries of one group.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GroupStats {
    pub deliveries: usize,
    pub unique: usize,
    pub duplicates: usize,
}

/// Counts for the summary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub kills: usize,
    pub acked_tcp: usize,
    pub acked_http: usize,
    pub indeterminate: usize,
    pub txn_committed: usize,
    pub txn_rolled_back: usize,
    pub timers_acked: usize,
    pub cancel_answers: BTreeMap<String, usize>,
    pub max_timer_lateness_ms: i64,
    pub offset_snapshots: usize,
    pub groups: BTreeMap<String, GroupStats>,
}

/// The checker's verdict.
#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    pub stats: Stats,
}

/// What the history says about one key.
#[derive(Debug, Default)]
struct KeyFacts {
    class: Option<Class>,
    acked: bool,
    /// Monotonic time of the first commit decision sent.
    first_commit_us: Option<u64>,
    answers: Vec<String>,
    cancels: Vec<String>,
    cancels_sent: usize,
}

impl KeyFacts {
    fn answered(&self, a: &str) -> bool {
        self.answers.iter().any(|x| x == a)
    }
    /// The broker said the timer will never be delivered (now, or by an earlier cancel whose
    /// answer was lost).
    fn cancelled(&self) -> bool {
        self.cancels
            .iter()
            .any(|x| x == "cancelled" || x == "already_cancelled")
    }
    /// A cancel went out and never got an answer: the timer may or may not be delivered.
    fn cancel_indeterminate(&self) -> bool {
        self.cancels_sent > self.cancels.len()
    }
}

/// Checks `events` (in recording order); `groups` are the consumer groups that read every
/// topic and so must each receive every message that has to be delivered.
pub fn check(events: &[Event], groups: &[&str]) -> Report {
    let mut report = Report::default();
    let facts = key_facts(events, &mut report.stats);
    for e in events {
        if let Ev::Consumed(c) = &e.ev {
            check_delivery(e, c, &facts, &mut report);
        }
    }
    let seen = seen_by_group(events);
    for (key, f) in &facts {
        check_must_arrive(key, f, groups, &seen, &mut report.violations);
    }
    check_offsets(events, &mut report);
    check_positions(events, &mut report.violations);
    report.stats.groups = group_stats(events, groups);
    report
}

fn key_facts(events: &[Event], stats: &mut Stats) -> BTreeMap<String, KeyFacts> {
    let mut facts: BTreeMap<String, KeyFacts> = BTreeMap::new();
    let mut via: BTreeMap<String, Via> = BTreeMap::new();
    for e in events {
        match &e.ev {
            Ev::Sent { key, class, via: v } => {
                facts.entry(key.clone()).or_default().class = Some(class.clone());
                via.insert(key.clone(), *v);
            }
            Ev::Acked { key } => {
                let f = facts.entry(key.clone()).or_default();
                f.acked = true;
                match (&f.class, via.get(key)) {
                    (Some(Class::Timer { .. }), _) => stats.timers_acked += 1,
                    (_, Some(Via::Tcp)) => stats.acked_tcp += 1,
                    _ => stats.acked_http += 1,
                }
            }
            Ev::SendFailed { .. } => stats.indeterminate += 1,
            Ev::TxnDecision { key, commit: true } => {
                let f = facts.entry(key.clone()).or_default();
                f.first_commit_us.get_or_insert(e.at_us);
            }
            Ev::TxnAnswer { key, answer } => {
                facts
                    .entry(key.clone())
                    .or_default()
                    .answers
                    .push(answer.clone());
            }
            Ev::CancelSent { key } => facts.entry(key.clone()).or_default().cancels_sent += 1,
            Ev::CancelAnswer { key, answer } => {
                facts
                    .entry(key.clone())
                    .or_default()
                    .cancels
                    .push(answer.clone());
                *stats.cancel_answers.entry(answer.clone()).or_default() += 1;
            }
            Ev::Killed { .. } => stats.kills += 1,
            Ev::Offset(_) => stats.offset_snapshots += 1,
            _ => {}
        }
    }
    for f in facts.values() {
        stats.txn_committed += usize::from(f.answered("committed"));
        stats.txn_rolled_back += usize::from(f.answered("rolled_back"));
    }
    facts
}

/// What may be said about one delivery on its own: known, intact, not early, not uncommitted.
fn check_delivery(e: &Event, c: &Consumed, facts: &BTreeMap<String, KeyFacts>, r: &mut Report) {
    let (group, key) = (c.group.clone(), c.key.clone());
    let Some(f) = facts.get(&c.key).filter(|f| f.class.is_some()) else {
        r.violations.push(Violation::Phantom { group, key });
        return;
    };
    if !c.intact {
        r.violations.push(Violation::Corrupt {
            group: group.clone(),
            key: key.clone(),
        });
    }
    match f.class.as_ref().expect("filtered") {
        Class::Plain => {}
        Class::Txn { .. } => {
            if f.answered("rolled_back") {
                r.violations
                    .push(Violation::RolledBackVisible { group, key });
            } else if f.first_commit_us.is_none_or(|t| t > e.at_us) {
                r.violations.push(Violation::HalfVisible { group, key });
            }
        }
        Class::Timer { due_ms } => {
            // The store timestamp is when the broker released it; without it, when it was seen.
            let released = c.store_ms.unwrap_or(e.wall_ms).min(e.wall_ms);
            if released < due_ms - TIMER_TOLERANCE_MS {
                let early_ms = due_ms - released;
                r.violations.push(Violation::TimerEarly {
                    group: group.clone(),
                    key: key.clone(),
                    early_ms,
                });
            }
            if let Some(s) = c.store_ms {
                r.stats.max_timer_lateness_ms = r.stats.max_timer_lateness_ms.max(s - due_ms);
            }
            if f.cancelled() {
                r.violations
                    .push(Violation::CancelledDelivered { group, key });
            }
        }
    }
}

fn seen_by_group(events: &[Event]) -> BTreeSet<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.ev {
            Ev::Consumed(c) => Some((c.group.clone(), c.key.clone())),
            _ => None,
        })
        .collect()
}

/// Messages that must reach every group: acknowledged plain sends, acknowledged and not
/// cancelled timers, transactions the broker answered `committed`.
fn check_must_arrive(
    key: &str,
    f: &KeyFacts,
    groups: &[&str],
    seen: &BTreeSet<(String, String)>,
    out: &mut Vec<Violation>,
) {
    let missing = |g: &str| !seen.contains(&(g.to_owned(), key.to_owned()));
    let (group, key_s) = (|g: &str| g.to_owned(), key.to_owned());
    match &f.class {
        Some(Class::Plain) if f.acked => {
            for g in groups.iter().filter(|g| missing(g)) {
                out.push(Violation::Lost {
                    group: group(g),
                    key: key_s.clone(),
                });
            }
        }
        Some(Class::Timer { .. }) if f.acked && !f.cancelled() && !f.cancel_indeterminate() => {
            for g in groups.iter().filter(|g| missing(g)) {
                out.push(Violation::TimerLost {
                    group: group(g),
                    key: key_s.clone(),
                });
            }
        }
        Some(Class::Txn { .. }) if f.answered("committed") => {
            for g in groups.iter().filter(|g| missing(g)) {
                out.push(Violation::CommittedTxnLost {
                    group: group(g),
                    key: key_s.clone(),
                });
            }
        }
        Some(Class::Txn { .. }) if f.acked && !f.answered("rolled_back") => {
            out.push(Violation::TxnUnresolved {
                key: key_s,
                answers: f.answers.clone(),
            });
        }
        _ => {}
    }
}

/// Offsets read after successive starts never go down; after a clean stop they are exactly
/// the last ones committed before it.
fn check_offsets(events: &[Event], r: &mut Report) {
    type Q = (String, String, i32);
    let mut last_read: BTreeMap<Q, i64> = BTreeMap::new();
    let mut last_commit: BTreeMap<Q, i64> = BTreeMap::new();
    let mut commits_before_start: BTreeMap<Q, i64> = BTreeMap::new();
    for e in events {
        match &e.ev {
            Ev::Started { .. } => commits_before_start = std::mem::take(&mut last_commit),
            Ev::OffsetCommitted {
                group,
                topic,
                queue,
                offset,
            } => {
                last_commit.insert((group.clone(), topic.clone(), *queue), *offset);
            }
            Ev::Offset(s) => {
                let q = (s.group.clone(), s.topic.clone(), s.queue);
                if let Some(&from) = last_read.get(&q).filter(|&&f| s.committed < f) {
                    r.violations.push(Violation::OffsetBackwards {
                        group: q.0.clone(),
                        topic: q.1.clone(),
                        queue: q.2,
                        cycle: s.cycle,
                        from,
                        to: s.committed,
                    });
                }
                last_read.insert(q.clone(), s.committed);
                if let Some(&committed) = commits_before_start
                    .get(&q)
                    .filter(|&&c| s.clean && c != s.committed)
                {
                    r.violations.push(Violation::OffsetNotKept {
                        group: q.0,
                        topic: q.1,
                        queue: q.2,
                        committed,
                        found: s.committed,
                    });
                }
            }
            _ => {}
        }
    }
}

/// A queue position holds one message for good: every group, every delivery, reads the same
/// key there (a crash must not reuse an offset for another message). And a plain message is
/// stored once: the load sends each once, so a second position is a second copy (recovery
/// dispatching a record twice, a send stored twice).
fn check_positions(events: &[Event], out: &mut Vec<Violation>) {
    let plain: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| match &e.ev {
            Ev::Sent {
                key,
                class: Class::Plain,
                ..
            } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    let mut at: BTreeMap<(&str, i32, i64), &str> = BTreeMap::new();
    let mut stored: BTreeMap<(&str, &str), (i32, i64)> = BTreeMap::new();
    for e in events {
        let Ev::Consumed(c) = &e.ev else { continue };
        if c.offset < 0 {
            continue;
        }
        let first = *at.entry((&c.topic, c.queue, c.offset)).or_insert(&c.key);
        if first != c.key {
            out.push(Violation::OffsetReused {
                topic: c.topic.clone(),
                queue: c.queue,
                offset: c.offset,
                keys: [first.to_owned(), c.key.clone()],
            });
        }
        if plain.contains(c.key.as_str()) {
            let here = (c.queue, c.offset);
            let first = *stored.entry((&c.topic, &c.key)).or_insert(here);
            if first != here {
                out.push(Violation::StoredTwice {
                    topic: c.topic.clone(),
                    key: c.key.clone(),
                    positions: [first, here],
                });
            }
        }
    }
}

fn group_stats(events: &[Event], groups: &[&str]) -> BTreeMap<String, GroupStats> {
    let mut per: BTreeMap<String, BTreeMap<&str, usize>> = groups
        .iter()
        .map(|g| (g.to_string(), BTreeMap::new()))
        .collect();
    for e in events {
        if let Ev::Consumed(c) = &e.ev {
            *per.entry(c.group.clone())
                .or_default()
                .entry(&c.key)
                .or_default() += 1;
        }
    }
    per.into_iter()
        .map(|(g, keys)| {
            let deliveries: usize = keys.values().sum();
            let s = GroupStats {
                deliveries,
                unique: keys.len(),
                duplicates: deliveries - keys.len(),
            };
            (g, s)
        })
        .collect()
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        writeln!(f, "crash loop: {} SIGKILLs", s.kills)?;
        writeln!(
            f,
            "  acknowledged: {} over RocketMQ, {} over HTTP, {} indeterminate (no answer)",
            s.acked_tcp, s.acked_http, s.indeterminate
        )?;
        writeln!(
            f,
            "  transactions: {} committed, {} rolled back",
            s.txn_committed, s.txn_rolled_back
        )?;
        writeln!(
            f,
            "  timers: {} acknowledged, cancel answers {:?}, max lateness {} ms",
            s.timers_acked, s.cancel_answers, s.max_timer_lateness_ms
        )?;
        writeln!(f, "  committed-offset snapshots: {}", s.offset_snapshots)?;
        for (g, gs) in &s.groups {
            writeln!(
                f,
                "  group {g}: {} deliveries, {} distinct, {} duplicates",
                gs.deliveries, gs.unique, gs.duplicates
            )?;
        }
        writeln!(f, "  violations: {}", self.violations.len())?;
        for v in self.violations.iter().take(50) {
            writeln!(f, "    {v:?}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "checker_tests.rs"]
mod tests;
