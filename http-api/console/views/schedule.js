// Scheduled messages: pending timers per topic, the next due time, how late releases were
// (a histogram), and finding messages by key or id to cancel or reschedule them. Cancel and
// reschedule answer definitely (cancelled / already_delivered / not_found), and the page
// shows that answer as it is.

import { api, query, seg } from '../api.js';
import { bars } from '../chart.js';
import { card, fmt, h, note, replace, table } from '../dom.js';

export function mount(root, params) {
  const s = {
    find: { topic: params.get('topic') || '', key: params.get('key') || '', by: 'key' },
    found: null,
  };
  // Live figures are redrawn on every tick; the form and the results only when used, so a
  // refresh never takes what the operator is typing.
  const live = h('div', { 'data-testid': 'schedule-live' });
  const msg = h('div');
  const out = h('div');
  s.say = (n) => replace(msg, n);
  s.search = async () => {
    const { topic, key, by } = s.find;
    if (!topic || !key) return;
    try {
      const q = by === 'id' ? { msg_id: key } : { key };
      s.found = await api(`/v1/topics/${seg(topic)}/scheduled${query(q)}`);
      replace(out, results(s));
    } catch (e) {
      replace(out);
      s.say(note(`Search failed: ${e.message}`, 'error', 'schedule-result'));
    }
  };
  replace(root, h('h2', {}, 'Scheduled messages'), live, findForm(s), msg, out);
  const refresh = async () => {
    try {
      replace(live, figures(s, await api('/v1/stats/schedule')));
    } catch (e) {
      replace(live, note(`Figures could not be read: ${e.message}`, 'error', 'schedule-error'));
    }
  };
  refresh();
  if (s.find.topic && s.find.key) s.search();
  return { refresh };
}

function figures(s, f) {
  return [
    h('div', { class: 'cards' },
      card('Pending', fmt.int(f.pending), null, 'sched-pending'),
      card('Next due', f.next_due_ms ? fmt.time(f.next_due_ms) : (f.pending ? 'later' : '–'),
        h('small', {}, f.next_due_ms ? `in ${fmt.dur(f.next_due_ms - Date.now())}` : (f.pending ? 'beyond the near window' : '')), 'sched-next'),
      card('Delivered', fmt.int(f.delivered), h('small', {}, `max lateness ${fmt.dur(f.max_lateness_ms)}`), 'sched-delivered'),
      card('Cancelled', fmt.int(f.cancelled), h('small', {}, `${fmt.int(f.rescheduled)} rescheduled`), 'sched-cancelled')),
    h('div', { class: 'split' },
      h('section', {}, h('h3', {}, 'Pending by topic'),
        table([['Topic', ([t]) => pickTopic(s, t)], ['Pending', ([, n]) => fmt.int(n)]],
          Object.entries(f.pending_by_topic), { testid: 'pending-by-topic', empty: 'Nothing pending.' })),
      h('section', {}, h('h3', {}, 'Release lateness'),
        bars(f.lateness_ms.buckets.map((b) => ({ label: bound(b.le), count: b.count })),
          { label: 'releases by lateness, ms', testid: 'lateness-chart' }),
        h('small', { class: 'muted' }, `${fmt.int(f.lateness_ms.count)} releases by lateness (ms, s)`))),
  ];
}

// A lateness bucket's bound, short enough to fit under its bar.
function bound(ms) {
  if (ms === undefined) return 'more';
  return ms >= 1000 ? `${ms / 1000}s` : `${ms}`;
}

function pickTopic(s, t) {
  return h('a', {
    href: '#scheduled',
    onclick: (e) => {
      e.preventDefault();
      s.find.topic = t;
      const input = document.querySelector('[data-testid=find-topic]');
      if (input) input.value = t;
    },
  }, t);
}

function findForm(s) {
  const topic = h('input', { value: s.find.topic, placeholder: 'topic', required: true, 'aria-label': 'Topic', 'data-testid': 'find-topic' });
  const key = h('input', { value: s.find.key, placeholder: 'key or message id', required: true, 'aria-label': 'Key', 'data-testid': 'find-key' });
  const by = h('select', { 'aria-label': 'Find by' },
    h('option', { value: 'key', selected: s.find.by === 'key' }, 'by key'),
    h('option', { value: 'id', selected: s.find.by === 'id' }, 'by message id'));
  return h('section', {}, h('h3', {}, 'Find'),
    h('form', {
      class: 'filters',
      onsubmit: (e) => {
        e.preventDefault();
        s.find = { topic: topic.value.trim(), key: key.value.trim(), by: by.value };
        s.say();
        s.search();
      },
    }, topic, key, by, h('button', { type: 'submit', 'data-testid': 'find-submit' }, 'Find')));
}

function results(s) {
  const list = s.found.messages;
  return h('section', {},
    table([
      ['Message', (m) => h('a', { href: `#lookup?id=${encodeURIComponent(m.msg_id)}&topic=${encodeURIComponent(m.topic)}` }, m.msg_id)],
      ['Topic', (m) => m.topic],
      ['Keys', (m) => m.keys.join(' ')],
      ['Due', (m) => fmt.time(m.deliver_at_ms)],
      ['State', (m) => h('span', { class: `badge ${m.state}`, 'data-testid': 'found-state' }, m.state)],
      ['', (m) => (m.state === 'pending' ? actions(s, m) : '')],
    ], list, { testid: 'found', empty: 'No scheduled message with this key or id.' }),
    s.found.truncated ? note('More matched than one answer lists.') : null);
}

function actions(s, m) {
  const delay = h('input', { type: 'number', min: 0, step: 1, value: 60, class: 'narrow', 'aria-label': 'New delay in seconds' });
  const done = (r, verb) => {
    s.say(note(`${m.msg_id}: ${r.result}${r.count ? ` (${r.count})` : ''}${r.deliver_at_ms ? `, now due ${fmt.time(r.deliver_at_ms)}` : ''}.`,
      r.result === verb ? 'ok' : 'info', 'schedule-result'));
  };
  const act = async (method, body, verb, question) => {
    if (!window.confirm(question)) return;
    try {
      const r = await api(`/v1/topics/${seg(m.topic)}/scheduled/${seg(m.msg_id)}?by=id`, { method, body });
      done(r, verb);
    } catch (e) {
      s.say(note(`${verb} failed: ${e.message}`, 'error', 'schedule-result'));
    }
    await s.search();
  };
  return h('span', { class: 'actions' },
    h('button', {
      type: 'button', class: 'danger', 'data-testid': `cancel-${m.msg_id}`,
      onclick: () => act('DELETE', undefined, 'cancelled', `Cancel message ${m.msg_id} on ${m.topic}? It will never be delivered.`),
    }, 'Cancel'),
    h('label', {}, 'in ', delay, ' s'),
    h('button', {
      type: 'button', 'data-testid': `reschedule-${m.msg_id}`,
      onclick: () => act('PATCH', { delay_ms: Math.round(Number(delay.value) * 1000) }, 'rescheduled',
        `Reschedule message ${m.msg_id} to ${delay.value} s from now?`),
    }, 'Reschedule'));
}
