//! HTTP request metrics, and the Prometheus text rendering of everything an operator watches:
//! requests and their latency, broker and store counters, sync (flush) latency, disk use,
//! open transactions and the oldest one's age, pending timers and their lateness, DLQ sizes.
//!
//! Labels are bounded: routes are the matched path templates (`/v1/topics/{topic}/messages`),
//! never raw paths, and unmatched requests share one label.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_store::latency::{LatencyHistogram, LatencySnapshot, BOUNDS_US};

use crate::state::AppState;

/// Counters of the HTTP layer.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// By route template, then method. Looked up with borrowed keys: recording a request
    /// allocates nothing once its route and method have been seen.
    routes: Mutex<BTreeMap<String, BTreeMap<String, RouteStats>>>,
    /// Connections closed at accept because `max_connections` were open (shared with the
    /// accept loop).
    pub(crate) connections_refused: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    latency: LatencyHistogram,
}

impl HttpMetrics {
    /// Counts one answered request (called by the front middleware).
    pub(crate) fn record(&self, method: &str, route: &str, status: u16, took: Duration) {
        let mut routes = self.routes.lock();
        if !routes.contains_key(route) {
            routes.insert(route.to_owned(), BTreeMap::new());
        }
        let methods = routes.get_mut(route).expect("inserted above");
        if !methods.contains_key(method) {
            methods.insert(method.to_owned(), RouteStats::default());
        }
        let stats = methods.get_mut(method).expect("inserted above");
        *stats.by_status.entry(status).or_default() += 1;
        stats.latency.record(took);
    }

    /// Requests answered with `status` on `route` so far (tests).
    pub fn requests(&self, method: &str, route: &str, status: u16) -> u64 {
        self.routes
            .lock()
            .get(route)
            .and_then(|m| m.get(method))
            .and_then(|s| s.by_status.get(&status))
            .copied()
            .unwrap_or(0)
    }

    /// One row per method and route, in that order (for rendering).
    fn rows(&self) -> Vec<Row> {
        let routes = self.routes.lock();
        let mut out: Vec<Row> = routes
            .iter()
            .flat_map(|(route, methods)| {
                methods.iter().map(move |(method, s)| Row {
                    method: method.clone(),
                    route: route.clone(),
                    by_status: s.by_status.iter().map(|(k, n)| (*k, *n)).collect(),
                    latency: s.latency.snapshot(),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.method, &a.route).cmp(&(&b.method, &b.route)));
        out
    }
}

/// A copy of one method and route's figures, taken under the lock.
struct Row {
    method: String,
    route: String,
    by_status: Vec<(u16, u64)>,
    latency: LatencySnapshot,
}

/// Renders every metric in the Prometheus text format (0.0.4).
pub(crate) fn render(state: &AppState) -> String {
    let mut out = Prom::default();
    http_section(&mut out, state.metrics());
    broker_section(&mut out, state);
    store_section(&mut out, state);
    if let Ok(txn) = state.txn() {
        txn_section(&mut out, &txn.metrics());
        webhook_section(&mut out, state.txn_http().webhook_counts());
    }
    if let Ok(schedule) = state.schedule() {
        if let Ok(stats) = schedule.stats() {
            schedule_section(&mut out, &stats);
        }
    }
    dlq_section(&mut out, state);
    lease_section(&mut out, &state.broker().leases().totals());
    out.text
}

fn http_section(out: &mut Prom, m: &HttpMetrics) {
    out.help(
        "sluice_http_requests_total",
        "counter",
        "HTTP requests by method, route and status.",
    );
    let rows = m.rows();
    for r in &rows {
        for (status, n) in &r.by_status {
            out.sample(
                "sluice_http_requests_total",
                &[
                    ("method", &r.method),
                    ("route", &r.route),
                    ("status", &status.to_string()),
                ],
                *n as f64,
            );
        }
    }
    out.help(
        "sluice_http_request_duration_seconds",
        "histogram",
        "HTTP request latency.",
    );
    for r in &rows {
        out.histogram(
            "sluice_http_request_duration_seconds",
            &[("method", &r.method), ("route", &r.route)],
            &r.latency,
        );
    }
    out.counter(
        "sluice_http_connections_refused_total",
        "HTTP connections closed at accept because [http] max_connections were open.",
        m.connections_refused.load(Ordering::Relaxed) as f64,
    );
}

fn broker_section(out: &mut Prom, state: &AppState) {
    let s = state.broker().stats();
    let counters: [(&str, &str, u64); 17] = [
        (
            "sluice_messages_stored_total",
            "Messages producers sent (all protocols, halves and delayed ones included) and the retry, dead-letter and replay copies the broker made.",
            s.messages_stored,
        ),
        (
            "sluice_messages_pulled_total",
            "Messages served to pulls and HTTP receives.",
            s.messages_pulled,
        ),
        (
            "sluice_retries_total",
            "Failed deliveries sent to retry topics.",
            s.retries,
        ),
        (
            "sluice_dead_lettered_total",
            "Messages moved to dead-letter queues.",
            s.dead_lettered,
        ),
        (
            "sluice_replayed_total",
            "Dead letters replayed.",
            s.replayed,
        ),
        (
            "sluice_remoting_requests_total",
            "RocketMQ protocol requests.",
            s.requests,
        ),
        (
            "sluice_busy_rejections_total",
            "Sends refused because the store queue was full.",
            s.busy_rejections,
        ),
        (
            "sluice_overload_rejections_total",
            "Requests refused by the per-connection limit.",
            s.overload_rejections,
        ),
        (
            "sluice_handler_panics_total",
            "Request handlers that panicked (contained).",
            s.handler_panics,
        ),
        (
            "sluice_bad_frames_total",
            "Connections closed on undecodable frames.",
            s.bad_frames,
        ),
        (
            "sluice_connections_accepted_total",
            "TCP connections accepted.",
            s.connections_accepted,
        ),
        (
            "sluice_connections_refused_total",
            "TCP connections refused at max_connections.",
            s.connections_refused,
        ),
        (
            "sluice_connections_not_opened_total",
            "TCP connections on a TLS port closed before a request: nothing sent (probes), plaintext where TLS is enforced, or a failed TLS handshake.",
            s.connections_not_opened,
        ),
        (
            "sluice_oversize_bodies_total",
            "Frames refused for a body over max_body_bytes.",
            s.oversize_bodies,
        ),
        (
            "sluice_offset_commits_refused_total",
            "Offset commits refused at max_consumer_offsets entries.",
            s.offset_commits_refused,
        ),
        (
            "sluice_heartbeat_groups_refused_total",
            "Consumer groups left out of heartbeats: their retry topic could not be made (max_topics, or a name too long).",
            s.heartbeat_groups_refused,
        ),
        (
            "sluice_state_save_failures_total",
            "Failed periodic saves of topics.json or consumer offsets (retried).",
            s.state_save_failures,
        ),
    ];
    for (name, help, v) in counters {
        out.help(name, "counter", help);
        out.sample(name, &[], v as f64);
    }
    out.gauge(
        "sluice_connections_open",
        "Open TCP connections.",
        s.connections_open as f64,
    );
    out.gauge(
        "sluice_parked_pulls",
        "Long polls held now.",
        s.parked_pulls as f64,
    );
}

fn store_section(out: &mut Prom, state: &AppState) {
    let store = state.broker().store();
    let s = store.stats();
    out.gauge(
        "sluice_store_written_bytes",
        "End of the commit log written.",
        s.written as f64,
    );
    out.gauge(
        "sluice_store_flushed_bytes",
        "End of the commit log made durable.",
        s.flushed as f64,
    );
    out.gauge(
        "sluice_store_commit_log_bytes",
        "Commit-log bytes on disk.",
        s.commit_log_bytes as f64,
    );
    out.gauge("sluice_store_queues", "Consume queues.", s.queues as f64);
    out.gauge(
        "sluice_store_queue_floors",
        "Queues of deleted topics whose stored messages are hidden (queue-floors).",
        s.queue_floors as f64,
    );
    out.gauge(
        "sluice_store_dispatch_lag_bytes",
        "Readable commit-log bytes not yet in consume queues (hidden from consumers).",
        store.dispatch_lag_bytes() as f64,
    );
    out.counter(
        "sluice_store_damage_total",
        "Damaged commit-log ranges found (never served; see /v1/stats).",
        store.damage_count() as f64,
    );
    out.gauge(
        "sluice_store_fenced",
        "1 when appends are refused after a failed write or sync.",
        if store.fenced().is_some() { 1.0 } else { 0.0 },
    );
    out.gauge(
        "sluice_store_queues_unsynced",
        "1 when a consume-queue or index sync failed in this run (the next open re-dispatches them).",
        if store.queues_unsynced() {
            1.0
        } else {
            0.0
        },
    );
    out.gauge(
        "sluice_store_dispatch_failing",
        "1 while writing consume-queue or index entries keeps failing (appends are acknowledged, consumers see none of them).",
        if store.dispatch_failing().is_some() {
            1.0
        } else {
            0.0
        },
    );
    if let Ok(u) = store.disk_usage() {
        out.gauge(
            "sluice_disk_used_ratio",
            "Used fraction of the data folder's disk, as df shows it.",
            u.ratio(),
        );
        out.gauge(
            "sluice_disk_used_bytes",
            "Used bytes of the data folder's disk.",
            u.used as f64,
        );
    }
    out.help(
        "sluice_store_sync_duration_seconds",
        "histogram",
        "Commit-log sync (group commit) latency.",
    );
    out.histogram(
        "sluice_store_sync_duration_seconds",
        &[],
        &store.sync_latency(),
    );
}

fn txn_section(out: &mut Prom, m: &sluice_txn::TxnMetrics) {
    out.gauge(
        "sluice_txn_open",
        "Transactions open (being checked).",
        m.open as f64,
    );
    out.gauge(
        "sluice_txn_parked",
        "Transactions parked now (final action keep), waiting for an operator.",
        m.parked as f64,
    );
    out.gauge(
        "sluice_txn_oldest_open_age_seconds",
        "Age of the oldest open transaction.",
        m.oldest_open_age_ms as f64 / 1000.0,
    );
    out.gauge(
        "sluice_txn_pending_pull_checks",
        "Checks queued for polling producers.",
        m.pending_pull_checks as f64,
    );
    out.gauge(
        "sluice_txn_checks_due_waiting",
        "Transactions due for a check but held back by max_checks_per_sec (counted every 5 s).",
        m.checks_due_waiting as f64,
    );
    let counters: [(&str, &str, u64); 16] = [
        (
            "sluice_txn_answers_commit_total",
            "Check answers that said commit.",
            m.answers_commit,
        ),
        (
            "sluice_txn_answers_rollback_total",
            "Check answers that said rollback.",
            m.answers_rollback,
        ),
        (
            "sluice_txn_parked_total",
            "Transactions parked by the final action keep, since start.",
            m.parked_total,
        ),
        (
            "sluice_txn_rearmed_total",
            "Parked transactions re-armed by an operator.",
            m.rearmed,
        ),
        (
            "sluice_txn_unknown_refs_total",
            "Requests naming no known transaction, or not the one at their offsets.",
            m.unknown_refs,
        ),
        (
            "sluice_txn_carried_forward_total",
            "Half messages carried forward to the half queue's tail.",
            m.carried_forward,
        ),
        (
            "sluice_txn_halves_kept_used_total",
            "Store reads of half messages avoided: taken from memory, as their sends stored them, to adopt or decide a transaction.",
            m.halves_kept_used,
        ),
        (
            "sluice_txn_discarded_total",
            "Transactions rolled back by the final action (no answer in time).",
            m.discarded,
        ),
        (
            "sluice_txn_lost_at_restart_total",
            "Undecided transactions whose half message was unreadable at a restart.",
            m.lost_at_restart,
        ),
        (
            "sluice_txn_checks_undelivered_total",
            "Checks due with no live producer of the group to ask.",
            m.checks_undelivered,
        ),
        (
            "sluice_txn_halves_stored_total",
            "Half messages stored.",
            m.halves_stored,
        ),
        (
            "sluice_txn_checks_sent_total",
            "Check-backs handed to a producer connection, the webhook queue or a poller (see sluice_http_check_webhooks_total for how webhook calls ended).",
            m.checks_sent,
        ),
        (
            "sluice_txn_committed_total",
            "Transactions committed.",
            m.committed,
        ),
        (
            "sluice_txn_rolled_back_total",
            "Transactions rolled back.",
            m.rolled_back,
        ),
        (
            "sluice_txn_conflicts_total",
            "Decisions refused because the opposite was made.",
            m.conflicts,
        ),
        (
            "sluice_txn_answers_unknown_total",
            "Check answers that said unknown.",
            m.answers_unknown,
        ),
    ];
    for (name, help, v) in counters {
        out.help(name, "counter", help);
        out.sample(name, &[], v as f64);
    }
}

/// Most series per client-named label (topics, groups) one metric exports; the rest are
/// summed under [`OTHER`].
const TOPIC_SERIES_MAX: usize = 50;
/// The label of that sum: `*` is in no topic or group name, so it cannot clash with one.
const OTHER: &str = "*other*";

/// The `TOPIC_SERIES_MAX` largest of `items` by `size`, largest first, and the sum of the
/// values of the rest (`None` when nothing was left out). Names are chosen by clients (and
/// topics created on first send): a series each would grow every scrape without limit.
fn top_series<T>(
    mut items: Vec<(String, T)>,
    size: impl Fn(&T) -> u64,
) -> (Vec<(String, T)>, Vec<T>) {
    items.sort_by(|a, b| size(&b.1).cmp(&size(&a.1)).then_with(|| a.0.cmp(&b.0)));
    let rest = items
        .split_off(TOPIC_SERIES_MAX.min(items.len()))
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    (items, rest)
}

fn schedule_section(out: &mut Prom, s: &sluice_schedule::ScheduleStats) {
    out.gauge(
        "sluice_timers_pending",
        "Delayed messages waiting for their time.",
        s.pending as f64,
    );
    out.help(
        "sluice_timers_pending_by_topic",
        "gauge",
        "Delayed messages waiting, by topic (the 50 largest; the rest as topic=\"*other*\").",
    );
    let by_topic = s
        .pending_by_topic
        .iter()
        .map(|(t, n)| (t.clone(), *n))
        .collect();
    let (top, rest) = top_series(by_topic, |n| u64::try_from(*n).unwrap_or(0));
    for (topic, n) in &top {
        out.sample(
            "sluice_timers_pending_by_topic",
            &[("topic", topic)],
            *n as f64,
        );
    }
    if !rest.is_empty() {
        let other: i64 = rest.iter().sum();
        out.sample(
            "sluice_timers_pending_by_topic",
            &[("topic", OTHER)],
            other as f64,
        );
    }
    let counters: [(&str, &str, u64); 9] = [
        (
            "sluice_timers_parked_total",
            "Delayed messages stored to wait for their time (sends, committed transactions, the schedule API).",
            s.parked,
        ),
        (
            "sluice_timers_rolled_total",
            "Timers written again ahead of commit-log retention.",
            s.rolled,
        ),
        (
            "sluice_timers_crash_checks_total",
            "Timers checked after a restart for a release made before a crash.",
            s.crash_checks,
        ),
        (
            "sluice_timers_dropped_total",
            "Delayed messages dropped as undeliverable (record lost or corrupt).",
            s.dropped,
        ),
        (
            "sluice_timers_possible_duplicates_total",
            "Delayed messages released again after a crash without a way to check.",
            s.possible_duplicates,
        ),
        (
            "sluice_timers_release_retries_total",
            "Release appends retried (store busy or failing).",
            s.release_retries,
        ),
        (
            "sluice_timers_delivered_total",
            "Delayed messages delivered.",
            s.delivered,
        ),
        (
            "sluice_timers_cancelled_total",
            "Delayed messages cancelled.",
            s.cancelled,
        ),
        (
            "sluice_timers_rescheduled_total",
            "Delayed messages rescheduled.",
            s.rescheduled,
        ),
    ];
    for (name, help, v) in counters {
        out.help(name, "counter", help);
        out.sample(name, &[], v as f64);
    }
    out.help(
        "sluice_timer_lateness_seconds",
        "histogram",
        "How late delayed messages were released.",
    );
    let mut cumulative = 0u64;
    for (bound_ms, n) in &s.lateness_histogram {
        cumulative += n;
        let le = if *bound_ms == i64::MAX {
            "+Inf".to_owned()
        } else {
            fmt_f64(*bound_ms as f64 / 1000.0)
        };
        out.sample(
            "sluice_timer_lateness_seconds_bucket",
            &[("le", &le)],
            cumulative as f64,
        );
    }
    out.sample(
        "sluice_timer_lateness_seconds_sum",
        &[],
        s.lateness_sum_ms as f64 / 1000.0,
    );
    out.sample(
        "sluice_timer_lateness_seconds_count",
        &[],
        cumulative as f64,
    );
    out.gauge(
        "sluice_timer_max_lateness_seconds",
        "Largest lateness seen.",
        s.max_lateness_ms as f64 / 1000.0,
    );
}

fn webhook_section(out: &mut Prom, counts: &crate::txn::webhook::WebhookCounts) {
    let name = "sluice_http_check_webhooks_total";
    out.help(
        name,
        "counter",
        "Webhook check-backs taken from the queue, by result: the answer (commit, rollback, unknown), no_answer (error status, bad body, timeout, refused), skipped (decided or checked again while queued).",
    );
    for (result, n) in counts.by_result() {
        out.sample(name, &[("result", result)], n as f64);
    }
}

fn dlq_section(out: &mut Prom, state: &AppState) {
    out.help(
        "sluice_dlq_messages",
        "gauge",
        "Dead letters retained, by group and state (the 50 largest groups; the rest as group=\"*other*\").",
    );
    let by_group = state
        .broker()
        .dlq()
        .stats()
        .into_iter()
        .map(|g| (g.group, (g.waiting, g.replayed)))
        .collect();
    let (top, rest) = top_series(by_group, |(w, r)| w + r);
    let other = (!rest.is_empty()).then(|| {
        let sum = |f: fn(&(u64, u64)) -> u64| rest.iter().map(f).sum::<u64>();
        (OTHER.to_owned(), (sum(|v| v.0), sum(|v| v.1)))
    });
    for (group, (waiting, replayed)) in top.iter().chain(other.iter()) {
        for (state, n) in [("waiting", waiting), ("replayed", replayed)] {
            out.sample(
                "sluice_dlq_messages",
                &[("group", group), ("state", state)],
                *n as f64,
            );
        }
    }
}

fn lease_section(out: &mut Prom, t: &sluice_broker::LeaseTotals) {
    out.gauge(
        "sluice_lease_in_flight",
        "HTTP leases held by every consumer group, with room reserved by receives in progress (bounded by max_inflight_total).",
        t.in_flight as f64,
    );
    out.gauge(
        "sluice_lease_waiting",
        "Entries waiting in lease books: retries kept aside, failed hand-backs (see max_parked_retries_total).",
        t.waiting as f64,
    );
    out.gauge(
        "sluice_lease_remembered_receipts",
        "Finished receipts remembered to answer stale ones (bounded by remembered_receipts_total).",
        t.remembered_receipts as f64,
    );
}

/// A Prometheus text writer.
#[derive(Default)]
struct Prom {
    text: String,
}

impl Prom {
    fn help(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.scalar(name, "gauge", help, v);
    }

    fn counter(&mut self, name: &str, help: &str, v: f64) {
        self.scalar(name, "counter", help, v);
    }

    /// One unlabelled series with its HELP and TYPE lines.
    fn scalar(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.help(name, kind, help);
        self.sample(name, &[], v);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(val));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", fmt_f64(v));
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &LatencySnapshot) {
        let mut cumulative = 0u64;
        for (i, n) in h.buckets.iter().enumerate() {
            cumulative += n;
            let le = BOUNDS_US
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |us| fmt_f64(*us as f64 / 1e6));
            let mut l: Vec<(&str, &str)> = labels.to_vec();
            l.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &l, cumulative as f64);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum_us as f64 / 1e6);
        self.sample(&format!("{name}_count"), labels, cumulative as f64);
    }
}

/// Label values escape backslash, quote and newline, as the format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn fmt_f64(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut p = Prom::default();
        p.sample("m", &[("t", "a\"b\\c\nd")], 1.0);
        assert_eq!(p.text, "m{t=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(10));
        h.record(Duration::from_millis(3));
        let mut p = Prom::default();
        p.histogram("x", &[], &h.snapshot());
        assert!(
            p.text.contains("x_bucket{le=\"0.00005\"} 1\n"),
            "{}",
            p.text
        );
        assert!(p.text.contains("x_bucket{le=\"+Inf\"} 2\n"), "{}", p.text);
        assert!(p.text.contains("x_count 2\n"), "{}", p.text);
    }
}
