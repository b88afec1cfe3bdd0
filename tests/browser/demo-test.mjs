// The /demo page in a real browser: two people (alice, bob) in headless
// Chromium, each in a browser context with its own fresh user-data dir, chat in
// a group, send a direct message with ack, and get a message that waited in the
// mailbox while the page was closed.
//
// Usage: node demo-test.mjs http://127.0.0.1:PORT/demo
//   env DEMO_URL      the page (instead of the argument)
//   env DEMO_SERVER   optional ws://127.0.0.1:PORT/ws, passed to the page as
//                     ?server= (for a page served from another origin)
//   env ARTIFACT_DIR  where screenshots go (default: <repo>/target)
//   env CHROMIUM      the browser (default /usr/bin/chromium)
//   env TEST_TIMEOUT_MS  the whole run's bound (default 60000)
// Prints one line per check and a last line "N passed, N failed[, N skipped]";
// exits non-zero on any failure.

import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');
const DEMO_URL = process.argv[2] || process.env.DEMO_URL;
const DEMO_SERVER = process.env.DEMO_SERVER || '';
const ARTIFACT_DIR = path.resolve(REPO, process.env.ARTIFACT_DIR || 'target');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TOTAL_MS = Number(process.env.TEST_TIMEOUT_MS || 60000);
const STEP_MS = 10000;
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--no-first-run', '--disable-quic', '--disable-sync'];

const results = { passed: 0, failed: 0, skipped: 0 };
const cleanups = [];
let finished = false;

function summary() {
  const skipped = results.skipped ? `, ${results.skipped} skipped` : '';
  console.log(`${results.passed} passed, ${results.failed} failed${skipped}`);
}

async function cleanup() {
  for (const f of cleanups.reverse()) { try { await f(); } catch (_) { /* best effort */ } }
  cleanups.length = 0;
}

// The whole run is bounded: past TOTAL_MS, whatever is running counts as failed.
const deadline = setTimeout(async () => {
  if (finished) return;
  finished = true;
  console.log(`FAIL  the run took longer than ${TOTAL_MS / 1000} s`);
  results.failed += 1;
  summary();
  setTimeout(() => process.exit(1), 3000).unref();
  await cleanup();
  process.exit(1);
}, TOTAL_MS);

function fatal(msg) {
  console.log(`FAIL  ${msg}`);
  results.failed += 1;
  summary();
  process.exit(1);
}

// Only loopback targets: this test must never talk to another machine.
function checkLoopback(u, what) {
  let url;
  try { url = new URL(u); } catch (_) { fatal(`${what} is not a URL: ${u}`); }
  if (url.hostname !== '127.0.0.1') fatal(`${what} must be on 127.0.0.1, got ${url.host}`);
  return url;
}

if (!DEMO_URL) fatal('no page address: node demo-test.mjs http://127.0.0.1:PORT/demo');
const pageUrl = checkLoopback(DEMO_URL, 'DEMO_URL');
const wsUrl = DEMO_SERVER ? checkLoopback(DEMO_SERVER, 'DEMO_SERVER') : null;
const healthUrl = wsUrl
  ? `${wsUrl.protocol === 'wss:' ? 'https:' : 'http:'}//${wsUrl.host}/health`
  : `${pageUrl.origin}/health`;

function urlFor(user) {
  const u = new URL(pageUrl.href);
  u.searchParams.set('user', user);
  if (DEMO_SERVER) u.searchParams.set('server', DEMO_SERVER);
  return u.href;
}

// ---- checks ----
let stopAll = false;
async function check(name, fn) {
  if (finished) return;
  if (stopAll) { results.skipped += 1; console.log(`SKIP  ${name}`); return; }
  const t0 = Date.now();
  try {
    await fn();
    results.passed += 1;
    console.log(`ok    ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    results.failed += 1;
    stopAll = true;
    console.log(`FAIL  ${name}: ${(e && e.message ? e.message : String(e)).split('\n').slice(0, 6).join('\n      ')}`);
  }
}

// Console errors and uncaught exceptions of every page, by user.
const problems = [];
function watch(page, who) {
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`${who}: console error: ${m.text()} ${JSON.stringify(m.location())}`);
  });
  page.on('pageerror', (e) => problems.push(`${who}: page error: ${e.message}`));
  page.on('requestfailed', (r) => {
    // A page navigated away or closed aborts its socket; anything else is a failure.
    const f = r.failure();
    if (f && !/ERR_ABORTED/.test(f.errorText)) problems.push(`${who}: request failed: ${r.url()} ${f.errorText}`);
  });
}

async function newUser(name) {
  const dir = mkdtempSync(path.join(tmpdir(), `ws-uring-demo-${name}-`));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: 1200, height: 800 },
    timeout: STEP_MS,
  });
  cleanups.push(() => context.close());
  context.setDefaultTimeout(STEP_MS);
  return context;
}

async function openAs(context, user) {
  // A persistent context starts with one blank page; use it the first time.
  const blank = context.pages().find((p) => p.url() === 'about:blank');
  const page = blank || await context.newPage();
  watch(page, user);
  const res = await page.goto(urlFor(user));
  if (!res || !res.ok()) throw new Error(`GET ${urlFor(user)}: HTTP ${res ? res.status() : 'no response'}`);
  await page.locator(`[data-testid=status][data-state=connected][data-user="${user}"]`).waitFor();
  return page;
}

async function join(page, group) {
  await page.fill('#group-name', group);
  await page.click('#join-btn');
  await page.locator(`#groups li[data-group="${group}"]`).waitFor();
}

async function connectionsNow() {
  const r = await fetch(healthUrl);
  if (!r.ok) throw new Error(`GET ${healthUrl}: HTTP ${r.status}`);
  return (await r.json()).connections;
}

async function expectNoBanner(page, who) {
  if (await page.locator('#banner').isVisible()) {
    throw new Error(`${who}'s page shows an error: ${await page.locator('#banner-text').textContent()}`);
  }
}

async function shot(page, name) {
  if (!page || page.isClosed()) return;
  mkdirSync(ARTIFACT_DIR, { recursive: true });
  const file = path.join(ARTIFACT_DIR, name);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`      screenshot: ${file}`);
}

// ---- the scenario ----
let alice; let bob; let aliceCtx; let bobCtx;
const GROUP = 'lobby';
const stamp = Date.now().toString(36);

await check('two browsers start (fresh profiles)', async () => {
  [aliceCtx, bobCtx] = await Promise.all([newUser('alice'), newUser('bob')]);
});

await check('alice and bob connect from /demo?user=…', async () => {
  [alice, bob] = await Promise.all([openAs(aliceCtx, 'alice'), openAs(bobCtx, 'bob')]);
});

await check(`both join #${GROUP}`, async () => {
  await join(alice, GROUP);
  await join(bob, GROUP);
});

await check('a group message from alice reaches bob (and echoes to alice with its round trip)', async () => {
  const text = `hello group ${stamp}`;
  await alice.selectOption('#chat-group', GROUP);
  await alice.fill('#chat-text', text);
  await alice.click('#chat-send');
  const got = bob.locator(`[data-testid=msg][data-kind=group][data-from=alice][data-group="${GROUP}"]`, { hasText: text });
  await got.waitFor();
  const own = alice.locator('[data-testid=sent][data-kind=group][data-state=ok][data-echoed=true]', { hasText: text });
  await own.waitFor();
  const state = await own.locator('.state').textContent();
  if (!/delivered to 2/.test(state) || !/ok [\d.]+ ms/.test(state) || !/seen [\d.]+ ms/.test(state)) {
    throw new Error(`alice's line should show "delivered to 2 · ok … ms · seen … ms", shows "${state}"`);
  }
});

await check('a direct message from bob (high priority, ack) reaches alice, who acks it', async () => {
  const text = `hi alice ${stamp}`;
  await bob.fill('#dm-to', 'alice');
  await bob.selectOption('#dm-priority', 'high');
  await bob.check('#dm-ack');
  await bob.fill('#dm-text', text);
  await bob.click('#dm-send');
  const got = alice.locator('[data-testid=msg][data-kind=direct][data-from=bob][data-priority=high]', { hasText: text });
  await got.waitFor();
  await alice.locator('[data-testid=msg][data-kind=direct][data-from=bob][data-acked=true]', { hasText: text }).waitFor();
  const sent = bob.locator('[data-testid=sent][data-kind=direct][data-state=ok][data-delivered="1"]', { hasText: text });
  await sent.waitFor();
  const state = await sent.locator('.state').textContent();
  if (!/delivered to 1 · ok [\d.]+ ms/.test(state)) throw new Error(`bob's line shows "${state}"`);
});

await check('bob closes his page; the server sees him go', async () => {
  await bob.close();
  const until = Date.now() + STEP_MS;
  let n;
  while ((n = await connectionsNow()) !== 1) {
    if (Date.now() > until) throw new Error(`/health still counts ${n} connections`);
    await new Promise((r) => setTimeout(r, 50));
  }
});

const offlineText = `while you were out ${stamp}`;
await check('alice sends bob a direct message while he is offline: held: mailbox', async () => {
  await alice.fill('#dm-to', 'bob');
  await alice.selectOption('#dm-priority', 'normal');
  await alice.fill('#dm-text', offlineText);
  await alice.click('#dm-send');
  const sent = alice.locator('[data-testid=sent][data-kind=direct][data-state=ok][data-held=mailbox]', { hasText: offlineText });
  await sent.waitFor();
  const state = await sent.locator('.state').textContent();
  if (!/held: mailbox/.test(state)) throw new Error(`alice's line shows "${state}"`);
});

await check('bob comes back: the mailbox message appears, marked "(while you were away)"', async () => {
  bob = await openAs(bobCtx, 'bob');
  const got = bob.locator('[data-testid=msg][data-kind=direct][data-from=alice][data-offline=true]', { hasText: offlineText });
  await got.waitFor();
  const badge = await got.locator('[data-testid=away]').textContent();
  if (badge !== '(while you were away)') throw new Error(`badge reads "${badge}"`);
});

await check('no error banner on either page', async () => {
  await expectNoBanner(alice, 'alice');
  await expectNoBanner(bob, 'bob');
});

// Screenshots are kept whatever happened above, as artifacts of the run.
try {
  await shot(alice, 'demo-alice.png');
  await shot(bob, 'demo-bob.png');
} catch (e) {
  console.log(`      (screenshot failed: ${e.message})`);
}

// Last, so that errors logged at any point above are seen.
if (stopAll && problems.length) {
  console.log(`      console/page errors seen:\n      ${problems.join('\n      ')}`);
}
await check('no console errors or page errors', async () => {
  if (problems.length) throw new Error(problems.join('\n'));
});

if (!finished) {
  finished = true;
  clearTimeout(deadline);
  await cleanup();
  summary();
  process.exit(results.failed === 0 && results.passed > 0 ? 0 : 1);
}
