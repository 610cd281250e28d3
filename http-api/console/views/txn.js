// Transactions: undecided half messages by producer group, with age, check count and the
// producer's last answer, and an operator's forced commit or rollback (or a parked one's
// re-arm) after a confirmation.
// The decision goes through POST /v1/transactions/{id}/force, which refuses to change a
// transaction that was decided meanwhile (409), and the page says so.

import { api, query, seg } from '../api.js';
import { card, fmt, h, note, replace, table } from '../dom.js';

// Most transactions listed (the API's page limit is 1000).
const LIMIT = 200;
const STATES = ['live', 'open', 'parked', 'decided', 'all'];

export function mount(root) {
  const s = { state: 'live', group: '' };
  // The filter form is built once; the figures and the list are redrawn on every refresh.
  const live = h('div');
  const msg = h('div');
  s.say = (n) => replace(msg, n);
  const refresh = async () => {
    try {
      const [list, f] = await Promise.all([
        api(`/v1/transactions${query({ state: s.state, producer_group: s.group, limit: LIMIT })}`),
        api('/v1/stats/txn'),
      ]);
      const more = list.next_after !== undefined && list.next_after !== null;
      replace(live, figures(f), byGroup(s, list.transactions, refresh),
        more ? note(`Showing the first ${LIMIT}; narrow by producer group to see others.`) : null);
    } catch (e) {
      replace(live, note(`Transactions could not be read: ${e.message}`, 'error', 'txn-error'));
    }
  };
  replace(root, h('h2', {}, 'Transactions'), filters(s, refresh), msg, live);
  refresh();
  return { refresh };
}

function filters(s, refresh) {
  const group = h('input', { value: s.group, placeholder: 'producer group (all)', 'aria-label': 'Producer group' });
  const state = h('select', { 'aria-label': 'State' },
    STATES.map((x) => h('option', { value: x, selected: x === s.state }, x)));
  return h('form', {
    class: 'filters',
    onsubmit: (e) => {
      e.preventDefault();
      s.group = group.value.trim();
      s.state = state.value;
      refresh();
    },
  }, state, group, h('button', { type: 'submit' }, 'Show'));
}

function figures(f) {
  return h('div', { class: 'cards' },
    card('Open', fmt.int(f.open), h('small', {}, `oldest ${fmt.dur(f.oldest_open_age_ms)}`), 'txn-open'),
    card('Committed', fmt.int(f.committed), null, 'txn-committed'),
    card('Rolled back', fmt.int(f.rolled_back + f.discarded), h('small', {}, `${fmt.int(f.discarded)} by the final action`)),
    card('Checks sent', fmt.int(f.checks_sent),
      h('small', {}, `answers: ${f.answers_commit} commit, ${f.answers_rollback} rollback, ${f.answers_unknown} unknown`)));
}

function byGroup(s, txns, refresh) {
  if (!txns.length) return note('No transactions in this state.', 'info', 'txn-none');
  const groups = new Map();
  for (const t of txns) {
    if (!groups.has(t.producer_group)) groups.set(t.producer_group, []);
    groups.get(t.producer_group).push(t);
  }
  return [...groups.entries()].map(([group, list]) => h('section', { 'data-testid': `txn-group-${group}` },
    h('h3', {}, `${group} `, h('span', { class: 'muted' }, `(${list.length})`)),
    table([
      ['Message', (t) => h('a', { href: `#lookup?id=${encodeURIComponent(t.msg_id)}&topic=${encodeURIComponent(t.topic)}` }, t.msg_id)],
      ['Topic', (t) => t.topic],
      ['Keys', (t) => t.keys.join(' ') || '–'],
      ['State', (t) => h('span', { class: `badge ${t.state}` }, t.state)],
      ['Age', (t) => fmt.dur(t.age_ms)],
      ['Checks', (t) => String(t.check_count)],
      ['Last answer', (t) => (t.last_answer ? `${t.last_answer.answer} at ${fmt.time(t.last_answer.at_ms)}` : '–')],
      ['', (t) => actions(s, t, refresh)],
    ], list, { testid: 'txn-table' })));
}

function actions(s, t, refresh) {
  if (!['open', 'parked'].includes(t.state)) return t.decided_by ? `by ${t.decided_by}` : '';
  const force = async (action) => {
    const what = {
      commit: 'COMMIT (deliver it to consumers)',
      rollback: 'ROLL BACK (discard it)',
      rearm: 'RE-ARM (check its producer again)',
    }[action];
    if (!window.confirm(`Force ${what} the transaction of ${t.producer_group}, message ${t.msg_id} on ${t.topic}?`)) return;
    try {
      const r = await api(`/v1/transactions/${seg(t.txn_id)}/force`, { method: 'POST', body: { action } });
      s.say(note(`Transaction ${t.msg_id}: ${r.result}${r.repeated ? ' (it already was)' : ''}.`, 'ok', 'txn-result'));
    } catch (e) {
      s.say(note(e.status === 409
        ? `Transaction ${t.msg_id} was decided the other way meanwhile; nothing changed.`
        : `Could not force ${t.msg_id}: ${e.message}`, 'error', 'txn-result'));
    }
    refresh();
  };
  return h('span', { class: 'actions' },
    h('button', { type: 'button', class: 'commit', onclick: () => force('commit'), 'data-testid': `commit-${t.msg_id}` }, 'Commit'),
    h('button', { type: 'button', class: 'danger', onclick: () => force('rollback'), 'data-testid': `rollback-${t.msg_id}` }, 'Roll back'),
    t.state === 'parked'
      ? h('button', { type: 'button', onclick: () => force('rearm'), 'data-testid': `rearm-${t.msg_id}` }, 'Re-arm')
      : null);
}
