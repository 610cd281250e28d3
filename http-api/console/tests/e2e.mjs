// End-to-end test of the operator console in headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core). Run by http-api/tests/console.rs, which starts a real broker,
// produces real traffic and writes the facts this script checks into a JSON file:
//
//   node e2e.mjs FACTS.json     (PLAYWRIGHT_MODULES = folder holding node_modules)
//
// Every wait is a bounded poll for a state (never a fixed sleep); a failure prints what was
// expected, saves failure.png next to the screenshots, and exits 1.

import { createRequire } from 'node:module';
import { mkdirSync, readFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const facts = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const require = createRequire(path.join(process.env.PLAYWRIGHT_MODULES, 'node_modules', 'x.js'));
const { chromium } = require('playwright-core');

// Polls: at most this many times, this far apart.
const POLLS = 100;
const POLL_MS = 100;
const shots = facts.screenshots;
mkdirSync(shots, { recursive: true });

const log = (...a) => console.log('[e2e]', ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, fn) {
  if (process.env.E2E_DEBUG) log('until', what);
  let last;
  for (let i = 0; i < POLLS; i += 1) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    await sleep(POLL_MS);
  }
  throw new Error(`timed out waiting for: ${what} (last: ${JSON.stringify(last)})`);
}

const text = (page, sel) => page.locator(sel).first().innerText();
const hasText = (page, sel, want) => until(`${sel} to contain ${JSON.stringify(want)}`, async () => {
  const t = await page.locator(sel).first().innerText({ timeout: 200 });
  return t.includes(want) ? t : false;
});
const isText = (page, sel, want) => until(`${sel} to read ${JSON.stringify(want)}`, async () =>
  (await page.locator(sel).first().innerText({ timeout: 200 })).trim() === want);
const tid = (id) => `[data-testid="${id}"]`;

async function shot(page, name) {
  const file = path.join(shots, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  log('screenshot', file);
}

async function goto(page, view) {
  log('view', view);
  await page.click(`#nav a[data-view="${view}"]`);
  await until(`view ${view}`, async () => (await page.evaluate(() => location.hash)).startsWith(`#${view}`));
}

async function authentication(page) {
  await page.goto(`${facts.base}/console`);
  await until('the token banner', async () => (await page.getAttribute('#banner', 'data-state')) === 'unauthorized');
  await hasText(page, '#banner', 'needs a token');
  await shot(page, '00-token-needed');
  await page.fill('#token-input', 'not-the-right-token-0000');
  await page.click('#token-form button[type=submit]');
  await hasText(page, '#banner', 'refused this token');
  await page.fill('#token-input', facts.token);
  await page.click('#token-form button[type=submit]');
  await until('the banner to go', async () => page.locator('#banner').isHidden());
  const stored = await page.evaluate(() => sessionStorage.getItem('sluice.console.token'));
  if (stored !== facts.token) throw new Error('the token is not kept in sessionStorage');
}

async function overview(page) {
  await hasText(page, tid('topics'), facts.topic);
  const row = page.locator(`${tid('topics')} tr`, { hasText: facts.topic }).first();
  await until(`${facts.topic} to show ${facts.topic_messages} messages`, async () =>
    (await row.innerText()).split('\t').map((s) => s.trim()).includes(String(facts.topic_messages)));
  const group = page.locator(`${tid('groups')} tr`, { hasText: facts.group }).first();
  await until(`group ${facts.group} with lag ${facts.group_lag_text}`, async () =>
    (await group.innerText()).includes(facts.group_lag_text));
  await isText(page, `${tid('card-txn')} .value`, '1');
  await isText(page, `${tid('card-timers')} .value`, '1');
  await isText(page, `${tid('card-dlq')} .value`, String(facts.dlq.count));
  // The charts fill on their own, without a reload, from the traffic the test keeps making.
  await until('the live charts to draw two readings', async () =>
    Number(await page.getAttribute(tid('chart-in'), 'data-points')) >= 2
    && Number(await page.getAttribute(tid('chart-flush'), 'data-points')) >= 2);
  await until('a non-zero throughput', async () => !(await text(page, `${tid('card-in')} .value`)).startsWith('0.0'));
  await hasText(page, tid('broker-status'), 'Broker ready');
  await shot(page, '01-overview');
}

async function transactions(page) {
  await goto(page, 'transactions');
  const t = facts.txn;
  const section = tid(`txn-group-${t.producer_group}`);
  await hasText(page, section, t.msg_id);
  await hasText(page, section, 'open');
  await shot(page, '02-transactions');
  await page.click(tid(`commit-${t.msg_id}`));
  await hasText(page, tid('txn-result'), 'committed');
  await until('the transaction to leave the open list', async () =>
    (await page.locator(section).count()) === 0);
  await shot(page, '02b-transactions-committed');
}

async function scheduled(page) {
  await goto(page, 'scheduled');
  const s = facts.scheduled;
  await isText(page, `${tid('sched-pending')} .value`, '1');
  await hasText(page, tid('pending-by-topic'), s.topic);
  await until('a release in the lateness histogram', async () =>
    (await page.locator(`${tid('lateness-chart')} text.bar-count`).count()) >= 1);
  await page.fill(tid('find-topic'), s.topic);
  await page.fill(tid('find-key'), s.key);
  await page.click(tid('find-submit'));
  await hasText(page, tid('found-state'), 'pending');
  await shot(page, '03-scheduled');
  await page.click(tid(`cancel-${s.msg_id}`));
  await hasText(page, tid('schedule-result'), 'cancelled');
  await hasText(page, tid('found-state'), 'cancelled');
  await shot(page, '03b-scheduled-cancelled');
}

async function deadLetters(page) {
  await goto(page, 'dlq');
  const d = facts.dlq;
  await page.click(tid(`dlq-group-${d.group}`));
  await until(`${d.count} dead letters listed`, async () =>
    (await page.locator(`${tid('dlq-table')} tbody tr`).count()) === d.count);
  await page.click(tid('inspect-0'));
  await hasText(page, tid('dlq-inspect'), d.reason);
  await hasText(page, tid('dlq-body'), d.first_body);
  await page.click(tid('dlq-body-hex'));
  await hasText(page, tid('dlq-body'), d.first_body_hex);
  await hasText(page, tid('dlq-props'), 'SLUICE_FAILURE_REASON');
  await shot(page, '04-dlq-inspect');

  // A replay of one key, watched to completion.
  const form = tid('replay-form');
  await page.fill(`${form} input[name=key]`, d.first_key);
  await page.fill(tid('replay-rate'), '5');
  await page.click(tid('replay-submit'));
  const first = (await hasText(page, tid('replay-started'), 'started')).match(/Replay (\S+) started/)[1];
  await hasText(page, tid(`replay-state-${first}`), 'completed');
  await hasText(page, tid('replays'), '1 replayed');

  // A slow replay of the rest, seen running, then cancelled.
  await page.fill(`${form} input[name=key]`, '');
  await page.fill(tid('replay-rate'), '1');
  await page.click(tid('replay-submit'));
  const second = (await until('a second replay', async () => {
    const m = (await text(page, tid('replay-started'))).match(/Replay (\S+) started/);
    return m && m[1] !== first ? m[1] : false;
  }));
  await hasText(page, tid(`replay-state-${second}`), 'running');
  await shot(page, '05-dlq-replay-running');
  await page.click(tid(`replay-cancel-${second}`));
  await hasText(page, tid('replay-cancelled'), 'cancelled');
  await hasText(page, tid(`replay-state-${second}`), 'cancelled');
  await shot(page, '05b-dlq-replay-cancelled');
  return { first, second };
}

async function lookup(page) {
  await goto(page, 'lookup');
  const d = facts.dlq;
  await page.selectOption(tid('lookup-by'), 'id');
  await page.fill(tid('lookup-value'), d.first_msg_id);
  await page.fill(tid('lookup-topic'), d.topic);
  await page.click(tid('lookup-submit'));
  const kinds = await until('the trace of the replayed dead letter', async () => {
    const k = await page.locator(`${tid('trace')} li`).evaluateAll((els) => els.map((e) => e.dataset.kind));
    return ['produced', 'dead_lettered', 'replayed'].every((x) => k.includes(x)) ? k : false;
  });
  await hasText(page, tid('traced-message'), d.first_body);
  await shot(page, '06-lookup-dead-letter');

  const t = facts.txn;
  await page.fill(tid('lookup-value'), t.msg_id);
  await page.fill(tid('lookup-topic'), t.topic);
  await page.click(tid('lookup-submit'));
  await until('half then committed', async () => {
    const k = await page.locator(`${tid('trace')} li`).evaluateAll((els) => els.map((e) => e.dataset.kind));
    return k.includes('half') && k.includes('committed') ? k : false;
  });

  const s = facts.scheduled;
  await page.selectOption(tid('lookup-by'), 'key');
  await page.fill(tid('lookup-value'), s.key);
  await page.fill(tid('lookup-topic'), s.topic);
  await page.click(tid('lookup-submit'));
  await hasText(page, tid('trace'), 'now cancelled');
  await shot(page, '06b-lookup-scheduled');
  return kinds;
}

async function phone(page) {
  await page.setViewportSize({ width: 390, height: 844 });
  await goto(page, 'overview');
  await hasText(page, tid('topics'), facts.topic);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) throw new Error(`the phone layout scrolls sideways by ${overflow}px`);
  await shot(page, '07-phone-overview');
  await page.setViewportSize({ width: 1280, height: 900 });
}

async function unreachable(page) {
  const refuse = (route) => route.abort('connectionrefused');
  await page.route('**/v1/**', refuse);
  await page.route('**/readyz', refuse);
  await until('the unreachable banner', async () => (await page.getAttribute('#banner', 'data-state')) === 'unreachable');
  await hasText(page, '#banner', 'unreachable');
  await hasText(page, tid('overview-error'), 'last ones stay');
  await shot(page, '08-unreachable');
  await page.unroute('**/v1/**', refuse);
  await page.unroute('**/readyz', refuse);
  await until('the banner to go when the broker answers again', async () => page.locator('#banner').isHidden());
}

async function main() {
  const profile = mkdtempSync(path.join(tmpdir(), 'sluice-console-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = context.pages()[0] || await context.newPage();
  // Single actions (a click, a read) are quick on this page; a missing element fails soon.
  page.setDefaultTimeout(1000);
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (process.env.E2E_DEBUG) log('console', m.type(), m.text());
    if (m.type() === 'error' && /Content Security Policy|Refused to/.test(m.text())) problems.push(m.text());
  });
  const dialogs = [];
  page.on('dialog', (d) => {
    dialogs.push(d.message());
    d.accept();
  });
  let ok = false;
  try {
    await authentication(page);
    await overview(page);
    await transactions(page);
    await scheduled(page);
    const replays = await deadLetters(page);
    const kinds = await lookup(page);
    await phone(page);
    await unreachable(page);
    if (problems.length) throw new Error(`browser problems: ${problems.join(' | ')}`);
    const result = { result: 'passed', replays, trace: kinds, dialogs };
    writeFileSync(facts.result_file, JSON.stringify(result));
    log('passed', JSON.stringify(result));
    ok = true;
  } catch (e) {
    console.error(`[e2e] FAILED: ${e.message}`);
    if (problems.length) console.error(`[e2e] browser problems: ${problems.join(' | ')}`);
    await page.screenshot({ path: path.join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
  process.exit(ok ? 0 : 1);
}

main();
