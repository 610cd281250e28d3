// Overview: the broker's health, throughput, disk and flush latency with live charts, the
// topics with their queues, sizes and rates, and the consumer groups with their lag.
// Rates and recent latencies are differences between two reads of cumulative counters.

import { api, seg } from '../api.js';
import { Series, sparkline } from '../chart.js';
import { card, fmt, h, note, replace, table } from '../dom.js';

// Topic and group details are one call each: at most this many per refresh.
const MAX_DETAILS = 50;
// Readings closer together than this are shown but not turned into rates.
const MIN_INTERVAL_MS = 1000;

export function mount(root) {
  const s = {
    inRate: new Series(), outRate: new Series(), flushMs: new Series(), disk: new Series(),
    prev: null, prevTopics: new Map(), last: null,
  };
  const refresh = async () => {
    try {
      const data = await read();
      render(root, s, data);
    } catch (e) {
      [s.inRate, s.outRate, s.flushMs, s.disk].forEach((x) => x.push(null));
      render(root, s, null, e);
    }
  };
  refresh();
  return { refresh };
}

async function read() {
  const [store, stats, txn, sched, ready, topics, groups] = await Promise.allSettled([
    api('/v1/stats/store'), api('/v1/stats'), api('/v1/stats/txn'), api('/v1/stats/schedule'),
    readiness(), api('/v1/topics'), api('/v1/groups'),
  ]);
  if (store.status === 'rejected') throw store.reason;
  const topicList = topics.status === 'fulfilled' ? topics.value.topics : [];
  const groupList = groups.status === 'fulfilled' ? groups.value.groups : [];
  const [topicDetails, groupDetails] = await Promise.all([
    Promise.allSettled(topicList.slice(0, MAX_DETAILS).map((t) => api(`/v1/topics/${seg(t.name)}`))),
    Promise.allSettled(groupList.slice(0, MAX_DETAILS).map((g) => api(`/v1/groups/${seg(g.group)}`))),
  ]);
  const value = (r) => (r.status === 'fulfilled' ? r.value : null);
  return {
    at: performance.now(),
    store: store.value,
    stats: value(stats),
    txn: value(txn),
    sched: value(sched),
    ready: ready.status === 'fulfilled' ? ready.value : { status: 'not_ready', reasons: [ready.reason.message] },
    topics: topicDetails.map(value).filter(Boolean),
    topicCount: topicList.length,
    groups: groupDetails.map(value).filter(Boolean),
    groupSummaries: groupList,
  };
}

// /readyz is public and gives its reasons with a 503: read as it is, and without reporting
// the connection state (through `api`, its 200 cleared the "needs a token" banner the other
// calls had raised, and a 503 showed only "Service Unavailable").
async function readiness() {
  const resp = await fetch('/readyz', {
    headers: { accept: 'application/json' }, cache: 'no-store', signal: AbortSignal.timeout(10000),
  });
  const body = await resp.json().catch(() => null);
  if (body && body.status) return { status: body.status, reasons: body.reasons || [] };
  return { status: resp.ok ? 'ready' : 'not_ready', reasons: [resp.statusText || `HTTP ${resp.status}`] };
}

// Feeds the charts from the difference to the previous read.
function track(s, d) {
  const p = s.prev;
  // Two reads close together (a tick right after mounting) give no meaningful rate.
  if (p && d.at - p.at < MIN_INTERVAL_MS) {
    d.topicRates = s.lastRates || new Map();
    return;
  }
  const st = d.store;
  if (p) {
    const secs = Math.max(0.001, (d.at - p.at) / 1000);
    s.inRate.push((st.messages_stored - p.stored) / secs);
    s.outRate.push((st.messages_pulled - p.pulled) / secs);
    const n = st.sync_latency.count - p.syncCount;
    s.flushMs.push(n > 0 ? (st.sync_latency.sum - p.syncSum) / n / 1000 : null);
  }
  s.disk.push(st.disk_used_ratio ?? null);
  d.topicRates = new Map();
  for (const t of d.topics) {
    const before = s.prevTopics.get(t.name);
    const now = { at: d.at, written: written(t) };
    if (before) d.topicRates.set(t.name, ((now.written - before.written) * 1000) / Math.max(1, now.at - before.at));
    s.prevTopics.set(t.name, now);
  }
  s.lastRates = d.topicRates;
  s.prev = {
    at: d.at, stored: st.messages_stored, pulled: st.messages_pulled,
    syncCount: st.sync_latency.count, syncSum: st.sync_latency.sum,
  };
}

// Messages ever written to a topic: the sum of its queues' next offsets.
function written(t) {
  return t.queues.reduce((a, q) => a + q.max_offset, 0);
}

function last(series) {
  const v = series.values[series.values.length - 1];
  return v === undefined ? null : v;
}

function render(root, s, d, err) {
  if (d) {
    track(s, d);
    s.last = d;
  }
  const shown = d || s.last;
  const parts = [h('h2', {}, 'Overview')];
  if (err) parts.push(note(`Figures could not be read: ${err.message}. The last ones stay below.`, 'error', 'overview-error'));
  if (!shown) {
    replace(root, parts);
    return;
  }
  parts.push(broker(shown), figures(s, shown), topics(shown), groups(shown));
  replace(root, parts);
}

function broker(d) {
  const ok = d.ready.status === 'ready';
  return h('p', { class: `health ${ok ? 'ok' : 'bad'}`, 'data-testid': 'broker-status' },
    h('strong', {}, ok ? 'Broker ready' : 'Broker not ready'),
    ok ? ` · up ${fmt.dur(d.stats ? d.stats.uptime_ms : null)}` : `: ${d.ready.reasons.join('; ')}`);
}

function figures(s, d) {
  const st = d.store;
  const dlqWaiting = d.stats ? d.stats.dlq.reduce((a, g) => a + g.waiting, 0) : null;
  const lat = last(s.flushMs);
  return h('div', { class: 'cards' },
    card('Messages in', fmt.rate(last(s.inRate)), sparkline(s.inRate.values, { label: 'messages stored per second', testid: 'chart-in' }), 'card-in'),
    card('Messages out', fmt.rate(last(s.outRate)), sparkline(s.outRate.values, { label: 'messages served per second', testid: 'chart-out' }), 'card-out'),
    card('Flush latency', lat === null ? '–' : `${lat.toFixed(2)} ms`,
      [sparkline(s.flushMs.values, { label: 'mean commit-log sync latency, ms', testid: 'chart-flush' }),
        h('small', {}, `${fmt.int(st.sync_latency.count)} syncs since start, mean ${meanSync(st)}`)], 'card-flush'),
    card('Disk used', fmt.pct(st.disk_used_ratio),
      [h('meter', { min: 0, max: 1, high: st.disk_max_used_ratio, value: st.disk_used_ratio ?? 0 }),
        h('small', {}, `${fmt.bytes(st.disk_used_bytes)} of ${fmt.bytes(st.disk_total_bytes)} · commit log ${fmt.bytes(st.commit_log_bytes)}`)], 'card-disk'),
    card('Open transactions', d.txn ? fmt.int(d.txn.open) : 'off',
      d.txn && h('small', {}, `oldest ${fmt.dur(d.txn.oldest_open_age_ms)}`), 'card-txn'),
    card('Pending timers', d.sched ? fmt.int(d.sched.pending) : 'off',
      d.sched && h('small', {}, `next due ${nextDue(d.sched)}`), 'card-timers'),
    card('Dead letters waiting', fmt.int(dlqWaiting), null, 'card-dlq'));
}

function meanSync(st) {
  const n = st.sync_latency.count;
  return n ? `${(st.sync_latency.sum / n / 1000).toFixed(2)} ms` : '–';
}

// The schedule service knows the next due time only within its near window.
function nextDue(f) {
  if (f.next_due_ms) return fmt.time(f.next_due_ms);
  return f.pending ? 'later (beyond the near window)' : '–';
}

function topics(d) {
  const rows = d.topics.map((t) => ({
    ...t,
    messages: t.queues.reduce((a, q) => a + q.messages, 0),
    written: written(t),
    rate: d.topicRates.get(t.name) ?? null,
  }));
  const more = d.topicCount > rows.length ? note(`First ${rows.length} of ${d.topicCount} topics.`) : null;
  return h('section', {},
    h('h3', {}, `Topics (${d.topicCount})`),
    table([
      ['Topic', (t) => t.name],
      ['Queues', (t) => `${t.write_queues} w / ${t.read_queues} r`],
      ['Messages', (t) => fmt.int(t.messages)],
      ['Written', (t) => fmt.int(t.written)],
      ['Rate', (t) => fmt.rate(t.rate)],
      ['Per queue', (t) => t.queues.map((q) => `${q.queue_id}:${q.messages}`).join(' ')],
    ], rows, { testid: 'topics', empty: 'No topics yet.' }),
    more);
}

function groups(d) {
  const byName = new Map(d.groupSummaries.map((g) => [g.group, g]));
  return h('section', {},
    h('h3', {}, `Consumer groups (${d.groupSummaries.length})`),
    table([
      ['Group', (g) => g.group],
      ['Online', (g) => (g.online ? `yes (${g.members.length})` : 'no')],
      ['Lag', (g) => fmt.int(g.total_lag)],
      ['Lag per queue', (g) => g.offsets.filter((o) => !o.topic.startsWith('%RETRY%'))
        .map((o) => `${o.topic}/${o.queue_id}: ${o.lag}`).join(', ') || '–'],
      ['Dead letters', (g) => fmt.int((byName.get(g.group) || {}).dlq_waiting ?? g.dlq.waiting)],
    ], d.groups, { testid: 'groups', empty: 'No consumer groups yet.' }));
}
