// Building the page from data. Text always goes in as text (textContent), never as markup,
// so names, keys and bodies from the broker cannot inject anything.

// h('div', {class: 'x', onclick: f, 'data-testid': 'y'}, 'text', child, [more]) -> Element
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replace(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

// A table: columns are [title, row => cell] pairs; a cell may be text or an element.
export function table(columns, rows, { testid, empty = 'None.' } = {}) {
  if (!rows.length) return h('p', { class: 'muted', 'data-testid': testid }, empty);
  return h('div', { class: 'scroll' },
    h('table', { 'data-testid': testid },
      h('thead', {}, h('tr', {}, columns.map(([title]) => h('th', {}, title)))),
      h('tbody', {}, rows.map((r) => h('tr', {}, columns.map(([, cell]) => h('td', {}, cell(r))))))));
}

// A figure card: a label, a big value, and optionally a chart or a note under it.
export function card(label, value, extra, testid) {
  return h('section', { class: 'card', 'data-testid': testid },
    h('h3', {}, label), h('div', { class: 'value' }, value), extra);
}

// A note under a form or a table: the result of an action, or an error.
export function note(text, kind = 'info', testid) {
  return h('p', { class: `note ${kind}`, role: kind === 'error' ? 'alert' : 'status', 'data-testid': testid }, text);
}

export const fmt = {
  int: (n) => (n === undefined || n === null ? '–' : Number(n).toLocaleString('en-US')),
  bytes(n) {
    if (n === undefined || n === null) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
  },
  // A duration in ms, as a person reads it.
  dur(ms) {
    if (ms === undefined || ms === null) return '–';
    const a = Math.abs(ms);
    const sign = ms < 0 ? '-' : '';
    if (a < 1000) return `${sign}${Math.round(a)} ms`;
    if (a < 60000) return `${sign}${(a / 1000).toFixed(1)} s`;
    if (a < 3600000) return `${sign}${Math.floor(a / 60000)} min ${Math.round((a % 60000) / 1000)} s`;
    return `${sign}${Math.floor(a / 3600000)} h ${Math.round((a % 3600000) / 60000)} min`;
  },
  // An epoch-ms time as local date and time, with milliseconds.
  time(ms) {
    if (!ms) return '–';
    const d = new Date(ms);
    const p = (n, w = 2) => String(n).padStart(w, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  },
  rate: (r) => (r === null || r === undefined ? '–' : `${r < 10 ? r.toFixed(1) : Math.round(r)}/s`),
  pct: (x) => (x === null || x === undefined ? '–' : `${(x * 100).toFixed(1)}%`),
};

// A body as text, or as a hex dump (offset, 16 bytes, printable characters).
export function hexdump(bytes) {
  const lines = [];
  for (let off = 0; off < bytes.length && off < 65536; off += 16) {
    const row = Array.from(bytes.slice(off, off + 16));
    const hex = row.map((b) => b.toString(16).padStart(2, '0')).join(' ').padEnd(47);
    const txt = row.map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${off.toString(16).padStart(8, '0')}  ${hex}  ${txt}`);
  }
  return lines.join('\n');
}

// The bytes of a message as the API gives them (`body` text or `body_base64`).
export function bodyBytes(m) {
  if (m.body !== undefined && m.body !== null) return new TextEncoder().encode(m.body);
  if (m.body_base64) return Uint8Array.from(atob(m.body_base64), (c) => c.charCodeAt(0));
  return new Uint8Array();
}

// A body viewer with a text / hex switch.
export function bodyView(m, testid) {
  const bytes = bodyBytes(m);
  const text = m.body_omitted
    ? '(left out: this answer reached its bound on body bytes; look this message up by its id)'
    : m.body ?? (m.compressed ? '(compressed by the producer: see hex)' : '(binary: see hex)');
  const pre = h('pre', { class: 'body', 'data-testid': testid }, text);
  const show = (mode) => replace(pre, mode === 'hex' ? hexdump(bytes) : text);
  return h('div', { class: 'bodyview' },
    h('div', { class: 'switch' },
      h('button', { type: 'button', onclick: () => show('text') }, 'Text'),
      h('button', { type: 'button', onclick: () => show('hex'), 'data-testid': testid && `${testid}-hex` }, 'Hex'),
      h('span', { class: 'muted' }, ` ${fmt.int(bytes.length)} bytes`)),
    pre);
}

// A properties table.
export function propsTable(props, testid) {
  const rows = Object.entries(props || {}).sort(([a], [b]) => a.localeCompare(b));
  return table([['Property', ([k]) => k], ['Value', ([, v]) => h('code', {}, v)]], rows, { testid, empty: 'No properties.' });
}
