// Drives headless Chromium for crates/herald-server/tests/browser_e2e.rs.
//
// Protocol: one JSON command per line on stdin, one JSON reply per line on stdout
// ({"ok": value} or {"error": text}). The Rust test decides the scenario, publishes the
// messages and asserts on what each page recorded; this script only opens pages, runs the
// in-page harness (harness.js) and reports. Every step has a timeout, and the whole run has a
// deadline after which the browser is killed and the script exits, so a hung browser cannot
// hang CI. End of stdin closes the browser.
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const executablePath = process.env.HERALD_CHROMIUM || '/usr/bin/chromium';
const deadlineMs = Number(process.env.HERALD_BROWSER_DEADLINE_MS || 120000);
const harness = readFileSync(new URL('./harness.js', import.meta.url), 'utf8');

const browser = await chromium.launch({
  executablePath,
  timeout: 30000,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-features=LocalNetworkAccessChecks',
  ],
});

let finished = false;
async function finish(code) {
  if (finished) return;
  finished = true;
  const kill = setTimeout(() => process.exit(code || 1), 5000);
  kill.unref();
  try {
    await browser.close();
  } catch {
    // already gone
  }
  process.exit(code);
}
setTimeout(() => {
  process.stderr.write(`driver: deadline of ${deadlineMs} ms passed, killing the browser\n`);
  finish(2);
}, deadlineMs).unref();
process.on('SIGTERM', () => finish(1));

/** name → {page, net: [...], console: [...]} */
const pages = new Map();

function named(name) {
  const entry = pages.get(name);
  if (!entry) throw new Error(`no page ${name}`);
  return entry;
}

const ops = {
  /** Opens a page (its own browser context) at `url` and installs the harness. */
  async open({ page: name, url }) {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(20000);
    const entry = { page, net: [], console: [] };
    page.on('response', (r) => entry.net.push({ url: r.url(), status: r.status() }));
    page.on('requestfailed', (r) =>
      entry.net.push({ url: r.url(), failure: r.failure()?.errorText ?? 'failed' }),
    );
    page.on('console', (m) => entry.console.push(m.text()));
    pages.set(name, entry);
    const response = await page.goto(url, { waitUntil: 'load' });
    await page.evaluate(harness);
    return { status: response?.status() ?? null, origin: await page.evaluate(() => origin) };
  },

  /** Calls `harness[fn](...args)` in the page. */
  async call({ page: name, fn, args }) {
    return named(name).page.evaluate(([fn, args]) => window.harness[fn](...args), [fn, args || []]);
  },

  /** Waits until `harness.log[key]` has `count` entries whose `event` is `event`. */
  async wait({ page: name, key, event, count, timeout_ms: timeout }) {
    const { page } = named(name);
    try {
      await page.waitForFunction(
        ([key, event, count]) =>
          (window.harness.log[key] || []).filter((e) => e.event === event).length >= count,
        [key, event, count],
        { timeout: timeout || 15000, polling: 20 },
      );
    } catch (e) {
      const log = await page.evaluate((key) => window.harness.log[key], key);
      throw new Error(`${key}: no ${count} × ${event} (${e.message.split('\n')[0]}); log: ${JSON.stringify(log)}`);
    }
    return page.evaluate((key) => window.harness.log[key], key);
  },

  /** Everything the page recorded, its network answers/failures and console messages. */
  async state({ page: name }) {
    const entry = named(name);
    const log = await entry.page.evaluate(() => window.harness.log);
    return { log, net: entry.net, console: entry.console };
  },

  /** The page's child frames, also cross-origin ones the page itself cannot read. With
   *  `names`, first waits until a frame of each name has committed a document. */
  async frames({ page: name, names, timeout_ms: timeout }) {
    const { page } = named(name);
    const committed = () =>
      (names || []).every((n) =>
        page.frames().some((f) => f.name() === n && f.url() !== '' && f.url() !== 'about:blank'),
      );
    const until = Date.now() + (timeout || 15000);
    while (!committed()) {
      if (Date.now() > until) throw new Error(`frames ${JSON.stringify(names)} never committed`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const frames = [];
    for (const frame of page.frames()) {
      if (frame === page.mainFrame()) continue;
      let content = null;
      try {
        content = await frame.content();
      } catch (e) {
        content = `unreadable: ${e.message.split('\n')[0]}`;
      }
      frames.push({ name: frame.name(), url: frame.url(), content });
    }
    return frames;
  },

};

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let reply;
  try {
    const command = JSON.parse(line);
    if (command.op === 'quit') break;
    const op = ops[command.op];
    if (!op) throw new Error(`unknown op ${command.op}`);
    reply = { ok: (await op(command)) ?? null };
  } catch (e) {
    reply = { error: String(e && e.message ? e.message : e) };
  }
  process.stdout.write(`${JSON.stringify(reply)}\n`);
}
await finish(0);
