// The console's shell: the views (one module each, chosen by the URL's #hash), the token
// form, the connection banner, and the refresh tick that keeps the current view live.

import { connection, token } from './api.js';
import { h, replace } from './dom.js';
import * as overview from './views/overview.js';
import * as txn from './views/txn.js';
import * as schedule from './views/schedule.js';
import * as dlq from './views/dlq.js';
import * as lookup from './views/lookup.js';

const VIEWS = { overview, transactions: txn, scheduled: schedule, dlq, lookup };
// How often the current view refreshes its figures.
const TICK_MS = 2000;

let current = null; // { name, view }
let ticking = false;

// '#lookup?id=X' -> ['lookup', URLSearchParams('id=X')]
function route() {
  const [name, q] = location.hash.replace(/^#/, '').split('?');
  return [VIEWS[name] ? name : 'overview', new URLSearchParams(q || '')];
}

function mount() {
  const [name, params] = route();
  if (current && current.view.unmount) current.view.unmount();
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.view === name);
    if (a.dataset.view === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const root = replace(document.getElementById('view'), h('div', { class: 'loading' }, 'Loading…'));
  current = { name, view: VIEWS[name].mount(root, params) || {} };
  document.title = `Sluice · ${name}`;
}

async function tick() {
  if (ticking || document.hidden || !current || !current.view.refresh) return;
  ticking = true;
  try {
    await current.view.refresh();
  } catch {
    // The view shows its own error; the banner says whether the broker is reachable.
  } finally {
    ticking = false;
  }
}

function banner({ state, message }) {
  const el = document.getElementById('banner');
  el.hidden = state === 'ok';
  el.className = `banner ${state}`;
  el.dataset.state = state;
  el.textContent = message || '';
  if (state === 'unauthorized' || state === 'forbidden') document.getElementById('token-input').focus();
}

function tokenForm() {
  const form = document.getElementById('token-form');
  const input = document.getElementById('token-input');
  input.value = '';
  input.placeholder = token.get() ? 'token set (paste to replace)' : 'admin token';
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (!input.value.trim()) return;
    token.set(input.value);
    input.value = '';
    input.placeholder = 'token set (paste to replace)';
    mount();
  });
  document.getElementById('token-forget').addEventListener('click', () => {
    token.clear();
    input.placeholder = 'admin token';
    mount();
  });
}

connection.addEventListener('change', (e) => banner(e.detail));
window.addEventListener('hashchange', mount);
tokenForm();
mount();
setInterval(tick, TICK_MS);
