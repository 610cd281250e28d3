// Message lookup: by id (or offset id), or by key within a topic, with each message's trace
// (produced, half / committed, scheduled, released, consumed, retried, dead-lettered,
// replayed) as GET /v1/messages reconstructs it from the stored copies.

import { api, query } from '../api.js';
import { bodyView, fmt, h, note, propsTable, replace } from '../dom.js';

const KIND_TEXT = {
  produced: 'Produced',
  half: 'Half message stored (transaction)',
  committed: 'Committed: visible to consumers',
  rolled_back: 'Rolled back',
  discarded: 'Discarded by the final action',
  scheduled: 'Scheduled',
  released: 'Released by its timer',
  replayed: 'Replayed from the DLQ',
  consumed: 'Consumed',
  retry_parked: 'Waiting for its retry back-off',
  retried: 'Retried',
  dead_lettered: 'Dead-lettered',
};

export function mount(root, params) {
  const out = h('div', { 'data-testid': 'lookup-out' });
  const form = lookupForm(params, (q) => find(out, q));
  replace(root, h('h2', {}, 'Message lookup'), form, out);
  if (params.get('id') || (params.get('key') && params.get('topic'))) {
    find(out, { id: params.get('id'), key: params.get('key'), topic: params.get('topic') });
  }
  return {};
}

function lookupForm(params, submit) {
  const by = h('select', { 'aria-label': 'Look up by', 'data-testid': 'lookup-by' },
    h('option', { value: 'id', selected: !params.get('key') }, 'message id'),
    h('option', { value: 'key', selected: !!params.get('key') }, 'key'));
  const value = h('input', {
    value: params.get('id') || params.get('key') || '', placeholder: 'msg_id, offset id or key',
    required: true, 'aria-label': 'Id or key', 'data-testid': 'lookup-value',
  });
  const topic = h('input', { value: params.get('topic') || '', placeholder: 'topic (needed for a key)', 'aria-label': 'Topic', 'data-testid': 'lookup-topic' });
  return h('form', {
    class: 'filters',
    onsubmit: (e) => {
      e.preventDefault();
      const v = value.value.trim();
      const q = by.value === 'key' ? { key: v, topic: topic.value.trim() } : { id: v, topic: topic.value.trim() };
      // The URL names the look-up, so it can be shared or reloaded.
      history.replaceState(null, '', `#lookup${query(q)}`);
      submit(q);
    },
  }, by, value, topic, h('button', { type: 'submit', 'data-testid': 'lookup-submit' }, 'Look up'));
}

async function find(out, q) {
  replace(out, h('p', { class: 'muted' }, 'Looking…'));
  try {
    const r = await api(`/v1/messages${query(q)}`);
    if (!r.messages.length) {
      replace(out, note('No stored message matches (it may have aged out with retention).', 'info', 'lookup-none'));
      return;
    }
    replace(out, r.messages.map(message), r.truncated ? note('More matched than one answer shows.') : null);
  } catch (e) {
    replace(out, note(`Look-up failed: ${e.message}`, 'error', 'lookup-error'));
  }
}

function message(m) {
  return h('article', { class: 'message', 'data-testid': 'traced-message' },
    h('h3', {}, m.msg_id),
    h('dl', { class: 'facts' },
      fact('Topic', m.topic), fact('Keys', m.keys.join(' ') || '–'), fact('Tag', m.tag || '–'),
      fact('Born', fmt.time(m.born_ms))),
    h('h4', {}, 'Trace'),
    h('ol', { class: 'trace', 'data-testid': 'trace' }, m.events.map(event)),
    h('h4', {}, 'Body'), bodyView(m, 'lookup-body'),
    h('h4', {}, 'Properties'), propsTable(m.properties, 'lookup-props'));
}

function event(e) {
  const bits = [
    e.group && `group ${e.group}`,
    e.due_ms && `due ${fmt.time(e.due_ms)}`,
    e.state && `now ${e.state}`,
    e.detail,
  ].filter(Boolean);
  return h('li', { class: `ev ${e.kind}`, 'data-kind': e.kind },
    h('span', { class: 'when' }, e.at_ms ? fmt.time(e.at_ms) : ''),
    h('strong', {}, KIND_TEXT[e.kind] || e.kind),
    h('span', { class: 'where' }, ` ${e.topic}/${e.queue_id} @${e.queue_offset}`),
    bits.length ? h('span', { class: 'muted' }, ` · ${bits.join(' · ')}`) : null);
}

function fact(k, v) {
  return [h('dt', {}, k), h('dd', {}, v)];
}
