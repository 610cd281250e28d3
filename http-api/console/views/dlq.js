// Dead letters: the groups with dead letters, a group's dead letters (filtered), one message
// inspected (headers, properties, body as text or hex), and replays: started with a filter
// and a rate after a confirmation, followed live, cancelled. The broker's replay task does
// the work (throttled, crash-safe, never twice); this page only starts and watches it.

import { api, query, seg } from '../api.js';
import { bodyView, fmt, h, note, propsTable, replace, table } from '../dom.js';

const PAGE = 50;

export function mount(root, params) {
  const s = { group: params.get('group') || '', filter: {} };
  const groupsEl = h('div');
  const listEl = h('div', { 'data-testid': 'dlq-list' });
  const inspectEl = h('div');
  const replayFormEl = h('div');
  const msg = h('div');
  const replaysEl = h('div');
  s.say = (n) => replace(msg, n);
  // `after`: where the page starts (the previous page's `next`); none for the first.
  s.load = async (after) => {
    if (!s.group) return;
    s.after = after;
    try {
      const page = await api(`/v1/groups/${seg(s.group)}/dlq${query({ limit: PAGE, include_replayed: true, after, ...s.filter })}`);
      replace(listEl, h('h3', {}, `Dead letters of ${s.group}`), filterForm(s), messages(s, page, inspectEl));
    } catch (e) {
      replace(listEl, note(`Dead letters could not be read: ${e.message}`, 'error', 'dlq-error'));
    }
  };
  s.select = (group) => {
    s.group = group;
    s.filter = {};
    replace(inspectEl);
    replace(replayFormEl, replayForm(s, () => refresh()));
    s.load();
  };
  const refresh = async () => {
    try {
      const [stats, replays] = await Promise.all([api('/v1/stats'), api('/v1/replays')]);
      replace(groupsEl, groups(s, stats.dlq));
      replace(replaysEl, replayList(s, replays.replays, refresh));
    } catch (e) {
      replace(groupsEl, note(`Dead-letter queues could not be read: ${e.message}`, 'error', 'dlq-error'));
    }
  };
  replace(root, h('h2', {}, 'Dead letters'), groupsEl, listEl, inspectEl, replayFormEl, msg, replaysEl);
  refresh();
  if (s.group) s.select(s.group);
  return { refresh };
}

function groups(s, dlq) {
  if (!dlq.length) return note('No dead letters: no consumer group gave up on a message.', 'info', 'dlq-none');
  return h('div', { class: 'cards' }, dlq.map((g) => h('button', {
    type: 'button',
    class: `card pick${g.group === s.group ? ' active' : ''}`,
    'data-testid': `dlq-group-${g.group}`,
    onclick: () => s.select(g.group),
  }, h('h3', {}, g.group), h('div', { class: 'value' }, fmt.int(g.waiting)),
  h('small', {}, `waiting · ${fmt.int(g.replayed)} replayed · ${fmt.int(g.total)} in all`))));
}

function filterForm(s) {
  const f = s.filter;
  const topic = h('input', { value: f.original_topic || '', placeholder: 'original topic', 'aria-label': 'Original topic' });
  const key = h('input', { value: f.key || '', placeholder: 'key', 'aria-label': 'Key' });
  const tag = h('input', { value: f.tag || '', placeholder: 'tag', 'aria-label': 'Tag' });
  return h('form', {
    class: 'filters',
    onsubmit: (e) => {
      e.preventDefault();
      s.filter = { original_topic: topic.value.trim(), key: key.value.trim(), tag: tag.value.trim() };
      s.load();
    },
  }, topic, key, tag, h('button', { type: 'submit' }, 'Filter'));
}

function messages(s, page, inspectEl) {
  return [
    table([
      ['Offset', (m) => String(m.dlq_offset)],
      ['Message', (m) => m.msg_id || m.offset_msg_id],
      ['Original topic', (m) => m.original_topic || '–'],
      ['Keys', (m) => m.keys.join(' ') || '–'],
      ['Reason', (m) => m.failure_reason || '–'],
      ['Deliveries', (m) => String(m.reconsume_times)],
      ['Dead-lettered', (m) => fmt.time(m.dead_lettered_ms)],
      ['Replayed', (m) => (m.replayed ? 'yes' : 'no')],
      ['', (m) => h('button', {
        type: 'button', 'data-testid': `inspect-${m.dlq_offset}`,
        onclick: () => replace(inspectEl, inspect(m)),
      }, 'Inspect')],
    ], page.messages, { testid: 'dlq-table', empty: page.next !== undefined ? 'None in this stretch of the queue.' : 'No dead letters match.' }),
    pager(s, page),
  ];
}

// Pages of the list: the broker scans a bounded stretch of the queue per page, so a page may
// be short, or empty, with more matches after it.
function pager(s, page) {
  const more = page.next !== undefined;
  if (!more && s.after === undefined) return null;
  return h('div', { class: 'switch' },
    s.after !== undefined ? h('button', { type: 'button', onclick: () => s.load(undefined) }, 'First page') : null,
    more ? h('button', { type: 'button', 'data-testid': 'dlq-next', onclick: () => s.load(page.next) }, 'Next page') : null,
    more ? h('span', { class: 'muted' }, ' more may match further on') : null);
}

function inspect(m) {
  const trace = m.msg_id
    ? h('a', { href: `#lookup?id=${encodeURIComponent(m.msg_id)}${m.original_topic ? `&topic=${encodeURIComponent(m.original_topic)}` : ''}` }, 'Trace this message')
    : null;
  return h('section', { class: 'inspect', 'data-testid': 'dlq-inspect' },
    h('h3', {}, `Message ${m.msg_id || m.offset_msg_id}`),
    h('dl', { class: 'facts' },
      fact('Offset message id', m.offset_msg_id), fact('Original topic', m.original_topic || '–'),
      fact('Tag', m.tag || '–'), fact('Keys', m.keys.join(' ') || '–'),
      fact('Born', fmt.time(m.born_ms)), fact('Dead-lettered', fmt.time(m.dead_lettered_ms)),
      fact('Reason', m.failure_reason || '–'), fact('Deliveries', String(m.reconsume_times))),
    trace,
    h('h4', {}, 'Body'), bodyView(m, 'dlq-body'),
    h('h4', {}, 'Properties'), propsTable(m.properties, 'dlq-props'));
}

function fact(k, v) {
  return [h('dt', {}, k), h('dd', {}, v)];
}

function replayForm(s, refresh) {
  const input = (name, placeholder, attrs = {}) => h('input', { name, placeholder, 'aria-label': placeholder, ...attrs });
  const topic = input('original_topic', 'original topic (any)');
  const key = input('key', 'key (any)');
  const tag = input('tag', 'tag (any)');
  const rate = input('rate_per_sec', 'messages per second', { type: 'number', min: 1, max: 100000, value: 10, 'data-testid': 'replay-rate' });
  const max = input('max', 'at most (all)', { type: 'number', min: 1 });
  const dry = h('input', { type: 'checkbox', name: 'dry_run' });
  const submit = async (e) => {
    e.preventDefault();
    const body = { rate_per_sec: Number(rate.value) || 10, dry_run: dry.checked };
    for (const [k, el] of [['original_topic', topic], ['key', key], ['tag', tag]]) if (el.value.trim()) body[k] = el.value.trim();
    if (max.value) body.max = Number(max.value);
    const what = Object.entries(body).map(([k, v]) => `${k}=${v}`).join(', ');
    if (!window.confirm(`${dry.checked ? 'Dry-run' : 'Replay'} dead letters of ${s.group} (${what})?`)) return;
    try {
      const r = await api(`/v1/groups/${seg(s.group)}/dlq/replay`, { method: 'POST', body });
      s.say(note(`Replay ${r.id} started.`, 'ok', 'replay-started'));
    } catch (err) {
      s.say(note(`Replay refused: ${err.message}`, 'error', 'replay-started'));
    }
    refresh();
  };
  return h('section', {}, h('h3', {}, `Replay dead letters of ${s.group}`),
    h('form', { class: 'filters', onsubmit: submit, 'data-testid': 'replay-form' },
      topic, key, tag, rate, max, h('label', {}, dry, ' dry run'),
      h('button', { type: 'submit', 'data-testid': 'replay-submit' }, 'Replay…')));
}

function replayList(s, replays, refresh) {
  const cancel = async (r) => {
    if (!window.confirm(`Cancel replay ${r.id} of ${r.group}? Messages replayed so far stay replayed.`)) return;
    try {
      const out = await api(`/v1/replays/${seg(r.id)}`, { method: 'DELETE' });
      s.say(note(`Replay ${r.id}: ${out.state}.`, 'ok', 'replay-cancelled'));
    } catch (e) {
      s.say(note(`Cancel failed: ${e.message}`, 'error', 'replay-cancelled'));
    }
    refresh();
    s.load();
  };
  return h('section', {}, h('h3', {}, 'Replays'),
    table([
      ['Task', (r) => r.id],
      ['Group', (r) => r.group],
      ['State', (r) => h('span', { class: `badge ${r.state}`, 'data-testid': `replay-state-${r.id}` }, r.state + (r.dry_run ? ' (dry run)' : ''))],
      ['Filter', (r) => ['original_topic', 'key', 'tag'].filter((k) => r[k]).map((k) => `${k}=${r[k]}`).join(' ') || 'all'],
      ['Rate', (r) => `${r.rate_per_sec}/s`],
      ['Progress', (r) => h('span', {},
        h('progress', { max: Math.max(1, r.end_offset), value: Math.min(r.next_offset, r.end_offset) }),
        ` ${r.replayed} replayed, ${r.skipped} skipped, ${r.failed} failed of ${r.matched} matched`)],
      ['Updated', (r) => fmt.time(r.updated_ms)],
      ['', (r) => (r.state === 'running'
        ? h('button', { type: 'button', class: 'danger', onclick: () => cancel(r), 'data-testid': `replay-cancel-${r.id}` }, 'Cancel')
        : (r.error || ''))],
    ], replays, { testid: 'replays', empty: 'No replays since the broker started.' }));
}
