// The console's only way to the broker: the JSON API, with the operator's bearer token.
// Every call reports the connection's state (reachable, unreachable, token needed) to one
// listener, so the page can say clearly why figures are missing instead of showing stale ones
// as if they were current.

const TOKEN_KEY = 'sluice.console.token';
// A call that takes longer than this counts as the broker being unreachable.
const TIMEOUT_MS = 10000;

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || '',
  set: (t) => sessionStorage.setItem(TOKEN_KEY, t.trim()),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

// The connection's state: 'ok', 'unreachable', 'unauthorized' or 'forbidden'.
export const connection = new EventTarget();
let lastState = 'ok';
function report(state, message) {
  if (state === lastState && state === 'ok') return;
  lastState = state;
  connection.dispatchEvent(new CustomEvent('change', { detail: { state, message } }));
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Calls the API; resolves to the JSON answer (null when empty), rejects with an ApiError.
export async function api(path, { method = 'GET', body } = {}) {
  const headers = { accept: 'application/json' };
  const t = token.get();
  if (t) headers.authorization = `Bearer ${t}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      signal: abort.signal,
    });
  } catch (e) {
    report('unreachable', 'The broker is unreachable: showing the last figures, retrying.');
    throw new ApiError(0, 'unreachable', 'the broker is unreachable');
  } finally {
    clearTimeout(timer);
  }
  const text = await resp.text().catch(() => '');
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (resp.ok) {
    report('ok');
    return json;
  }
  const e = (json && json.error) || {};
  const err = new ApiError(resp.status, e.code || `http_${resp.status}`, e.message || resp.statusText);
  if (resp.status === 401) {
    report('unauthorized', t
      ? 'The broker refused this token: paste an admin token above.'
      : 'This broker needs a token: paste an admin token above.');
  } else if (resp.status === 403 && e.code === 'forbidden' && /scope/i.test(err.message)) {
    report('forbidden', 'This token lacks the admin scope the console needs.');
  } else if (resp.status >= 502 && !json) {
    report('unreachable', 'The broker is unreachable (a proxy answered): retrying.');
  } else {
    report('ok');
  }
  throw err;
}

// Path segments are always escaped: names come from the broker and from the operator.
export const seg = (s) => encodeURIComponent(s);

// Query strings from an object, leaving out empty values.
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '' && v !== false) q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}
