// Small charts as inline SVG, drawn from numbers: a line of recent values and a bar chart of
// histogram buckets. No library: a few dozen lines, and nothing the CSP has to allow.

const NS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) if (c) el.append(c);
  return el;
}

// Recent values of one figure; `null` values (no reading) leave a gap.
export function sparkline(values, { width = 220, height = 48, label = '', testid } = {}) {
  const known = values.filter((v) => v !== null && Number.isFinite(v));
  const max = Math.max(1e-9, ...known);
  const n = Math.max(values.length, 2);
  const x = (i) => ((i / (n - 1)) * (width - 2) + 1).toFixed(1);
  const y = (v) => (height - 2 - (v / max) * (height - 6)).toFixed(1);
  const parts = [];
  let run = [];
  values.forEach((v, i) => {
    if (v === null || !Number.isFinite(v)) {
      if (run.length) parts.push(run);
      run = [];
    } else run.push(`${x(i)},${y(v)}`);
  });
  if (run.length) parts.push(run);
  const root = svg('svg', {
    viewBox: `0 0 ${width} ${height}`, width: '100%', height, class: 'spark',
    role: 'img', 'aria-label': label, preserveAspectRatio: 'none',
  });
  if (testid) root.setAttribute('data-testid', testid);
  root.append(svg('line', { x1: 0, y1: height - 1, x2: width, y2: height - 1, class: 'axis' }));
  for (const p of parts) {
    if (p.length === 1) {
      const [cx, cy] = p[0].split(',');
      root.append(svg('circle', { cx, cy, r: 2, class: 'line-dot' }));
    } else {
      root.append(svg('polyline', { points: p.join(' '), class: 'line', fill: 'none' }));
    }
  }
  root.setAttribute('data-points', String(known.length));
  return root;
}

// Bars for histogram buckets: [{label, count}].
export function bars(buckets, { width = 360, height = 120, label = '', testid } = {}) {
  const max = Math.max(1, ...buckets.map((b) => b.count));
  const gap = 2;
  const bw = (width - gap * (buckets.length + 1)) / Math.max(1, buckets.length);
  const plot = height - 18;
  const root = svg('svg', {
    viewBox: `0 0 ${width} ${height}`, width: '100%', height, class: 'bars', role: 'img', 'aria-label': label,
  });
  if (testid) root.setAttribute('data-testid', testid);
  buckets.forEach((b, i) => {
    const x = gap + i * (bw + gap);
    const bh = b.count ? Math.max(2, (b.count / max) * (plot - 12)) : 0;
    const title = svg('title');
    title.textContent = `${b.label}: ${b.count}`;
    root.append(svg('rect', { x: x.toFixed(1), y: (plot - bh).toFixed(1), width: bw.toFixed(1), height: bh.toFixed(1), class: 'bar' }, title));
    if (b.count) {
      const t = svg('text', { x: (x + bw / 2).toFixed(1), y: (plot - bh - 2).toFixed(1), class: 'bar-count', 'text-anchor': 'middle' });
      t.textContent = String(b.count);
      root.append(t);
    }
    const l = svg('text', { x: (x + bw / 2).toFixed(1), y: height - 4, class: 'bar-label', 'text-anchor': 'middle' });
    l.textContent = b.label;
    root.append(l);
  });
  return root;
}

// A rolling window of readings for a sparkline.
export class Series {
  constructor(size = 60) {
    this.size = size;
    this.values = [];
  }

  push(v) {
    this.values.push(v);
    if (this.values.length > this.size) this.values.shift();
  }
}
