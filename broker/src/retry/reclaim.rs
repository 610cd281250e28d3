//! Retry topics given back once nobody needs them.
//!
//! Every consumer group named in a heartbeat gets a `%RETRY%<group>` topic, and each counts
//! toward `max_topics`. Groups that went away for good (or were invented by a client) would
//! hold that room for ever, until new topics were refused. A retry topic is reclaimed once,
//! for `retry_topic_reclaim_after`, its group has had no member (no TCP consumer, no HTTP lease
//! book) and nothing in it was left to consume: each queue empty, or its committed offset at
//! the end.
//!
//! Reclaiming removes the topic's configuration only. Its committed offsets stay, so a group
//! that comes back (its heartbeat creates the topic again over the same queues) resumes
//! where it stopped instead of consuming its old retries a second time. A delayed retry
//! still parked by the schedule (not counted as something left to consume) is released into
//! the same queue and waits there for the group.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_protocol::remoting::body::TopicConfig;

use crate::broker::context::BrokerContext;
use crate::topic::RETRY_PREFIX;

/// Longest pause between two sweeps.
const SWEEP_MAX: Duration = Duration::from_secs(60);

/// How often to look, for a given `after`: a quarter of it, 1 s to a minute.
pub(crate) fn sweep_interval(after: Duration) -> Duration {
    (after / 4).clamp(Duration::from_secs(1), SWEEP_MAX)
}

/// Since when each retry topic has been found unused, sweep after sweep.
#[derive(Debug, Default)]
pub(crate) struct Unused {
    since: HashMap<String, Instant>,
}

impl Unused {
    /// Records the topics found unused `now` (any other starts over) and returns those
    /// unused for at least `after`.
    pub(crate) fn note(
        &mut self,
        unused: Vec<String>,
        now: Instant,
        after: Duration,
    ) -> Vec<String> {
        let mut since = HashMap::with_capacity(unused.len());
        for topic in unused {
            let at = self.since.get(&topic).copied().unwrap_or(now);
            since.insert(topic, at);
        }
        self.since = since;
        let mut due: Vec<String> = self
            .since
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) >= after)
            .map(|(t, _)| t.clone())
            .collect();
        due.sort();
        due
    }
}

/// Whether `cfg`'s retry topic is unused now: its group has no member, and every queue is
/// empty or consumed to its end by the group.
fn unused(ctx: &BrokerContext, cfg: &TopicConfig) -> bool {
    let Some(group) = cfg.topic_name.strip_prefix(RETRY_PREFIX) else {
        return false;
    };
    if ctx.group_has_members(group) {
        return false;
    }
    let queues = cfg.read_queue_nums.max(cfg.write_queue_nums).max(1);
    (0..queues).all(|q| {
        let (min, max) = (
            ctx.store.min_offset(&cfg.topic_name, q),
            ctx.store.max_offset(&cfg.topic_name, q),
        );
        let committed = ctx.offsets.query(group, &cfg.topic_name, q).unwrap_or(0);
        min >= max || committed >= i64::try_from(max).unwrap_or(i64::MAX)
    })
}

/// One sweep: notes which retry topics are unused, and removes those unused long enough
/// (checking their group once more just before). Returns the topics removed.
pub(crate) fn sweep(ctx: &BrokerContext, state: &mut Unused, after: Duration) -> Vec<String> {
    let found: Vec<String> = ctx
        .topics
        .retry_topics()
        .iter()
        .filter(|cfg| unused(ctx, cfg))
        .map(|cfg| cfg.topic_name.clone())
        .collect();
    let mut removed = Vec::new();
    for topic in state.note(found, Instant::now(), after) {
        let still = ctx.topics.get(&topic).is_some_and(|cfg| unused(ctx, &cfg));
        // A member that joins between this check and the removal finds its retry topic
        // gone until its next heartbeat or send-back creates it again; nothing is lost.
        // Gone or not, its period starts over: a topic created again (a heartbeat, a
        // send-back) before the next sweep was otherwise reclaimed at once when drained.
        state.since.remove(&topic);
        if still && ctx.topics.remove(&topic).is_some() {
            tracing::info!(
                topic = %topic,
                idle_secs = after.as_secs(),
                "retry topic reclaimed: its group has had no member and nothing left to consume"
            );
            removed.push(topic);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_due_only_after_being_unused_for_the_whole_period() {
        let mut u = Unused::default();
        let t0 = Instant::now();
        let after = Duration::from_secs(60);
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(u
            .note(names(&["%RETRY%a", "%RETRY%b"]), t0, after)
            .is_empty());
        // b was in use for one sweep: its period starts over.
        let t1 = t0 + Duration::from_secs(30);
        assert!(u.note(names(&["%RETRY%a"]), t1, after).is_empty());
        let t2 = t0 + Duration::from_secs(60);
        assert_eq!(
            u.note(names(&["%RETRY%a", "%RETRY%b"]), t2, after),
            names(&["%RETRY%a"])
        );
        let t3 = t1 + Duration::from_secs(90);
        assert_eq!(
            u.note(names(&["%RETRY%a", "%RETRY%b"]), t3, after),
            names(&["%RETRY%a", "%RETRY%b"])
        );
    }

    #[test]
    fn sweeps_look_at_least_every_minute_and_at_most_every_second() {
        assert_eq!(
            sweep_interval(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            sweep_interval(Duration::from_millis(100)),
            Duration::from_secs(1)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(8)),
            Duration::from_secs(2)
        );
    }
}
