// The built-in chat page in a real browser: Debian's chromium driven by
// playwright-core (pinned in package-lock.json). Sends a message and sees the
// reply stream in, checks the request the page builds from its settings, stops
// a generation, keeps the conversation across a reload, and takes a
// screenshot that must not be blank (pixel variance). The screenshot goes to
// $QKVD_SCREENSHOT when set (docs/img/chat-page.png was made that way).
import { execSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ok, skip, failed, startServer, haveShared, STORIES } from './lib/server.mjs';

const here = path.dirname(new URL(import.meta.url).pathname);
const CHROMIUM = process.env.QKVD_CHROMIUM || '/usr/bin/chromium';
if (!haveShared()) { skip('webui', `${STORIES} not found (../shared absent)`); process.exit(0); }
if (!existsSync(CHROMIUM)) { skip('webui', `${CHROMIUM} not installed (scripts/install-deps.sh)`); process.exit(0); }
if (!existsSync(path.join(here, 'node_modules/playwright-core'))) {
  try {
    execSync(`npm ci --prefix "${here}" --no-audit --no-fund`, { stdio: 'inherit' });
  } catch {
    skip('webui', 'npm ci failed (no registry access?)');
    process.exit(0);
  }
}
const { chromium } = await import(path.join(here, 'node_modules/playwright-core/index.mjs'));

const profile = mkdtempSync(path.join(os.tmpdir(), 'qkvd-chromium-'));
const s = await startServer(['-m', STORIES, '--threads', '1', '--model-alias', 'stories']);
let ctx;
try {
  ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1180, height: 760 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = ctx.pages()[0] || (await ctx.newPage());
  const external = [];
  page.on('request', (req) => { if (!req.url().startsWith(s.url) && !req.url().startsWith('data:')) external.push(req.url()); });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  const bodies = [];
  page.on('request', (req) => { if (req.url().endsWith('/v1/chat/completions')) bodies.push(JSON.parse(req.postData())); });

  await page.goto(s.url + '/');
  ok((await page.title()) === 'qkvd chat', 'page_loads');
  // model picker filled from GET /v1/models
  await page.waitForFunction(() => [...document.querySelectorAll('#model option')].some((o) => o.value === 'stories'));
  ok(await page.$eval('#model', (el) => el.value) === 'stories', 'model_picker_lists_served_model');

  // settings: temperature, max tokens, system prompt, attention kind
  await page.click('#toggle-settings');
  await page.fill('#temperature', '0');
  await page.fill('#max-tokens', '120');
  await page.fill('#system', 'You are a storyteller.');
  await page.fill('#attention', 'softmax');

  // Record every length the streaming bubble's text takes: several distinct
  // lengths before the end mean the reply was rendered token by token.
  async function watchStream() {
    await page.evaluate(() => {
      window.__lens = [];
      const box = document.getElementById('messages');
      window.__obs && window.__obs.disconnect();
      window.__obs = new MutationObserver(() => {
        const b = box.querySelector('.msg.assistant.streaming .bubble');
        if (b) window.__lens.push(b.textContent.length);
      });
      window.__obs.observe(box, { subtree: true, childList: true, characterData: true });
    });
  }
  await watchStream();
  await page.fill('#input', 'Once upon a time, there was a little cat.');
  await page.press('#input', 'Enter');
  await page.waitForFunction(() => !document.querySelector('.msg.assistant.streaming') &&
                                   document.querySelectorAll('.msg.assistant').length === 1, null, { timeout: 30000 });
  const lens = await page.evaluate(() => window.__lens);
  const distinct = new Set(lens.filter((n) => n > 0)).size;
  const reply1 = await page.$eval('.msg.assistant .bubble', (el) => el.textContent);
  const meta1 = await page.$eval('.msg.assistant .meta', (el) => el.textContent).catch(() => '');
  ok(reply1.length > 0 && /tokens/.test(meta1), 'reply_arrives', `${reply1.slice(0, 80)} | ${meta1}`);
  ok(distinct >= 3, 'reply_streams_in_token_by_token', `distinct partial lengths: ${distinct} (${lens.slice(0, 20)})`);
  const b0 = bodies[0] || {};
  ok(b0.stream === true && b0.temperature === 0 && b0.max_tokens === 120 && b0.model === 'stories' &&
     b0.messages[0].role === 'system' && b0.messages[0].content === 'You are a storyteller.' &&
     b0.attention && b0.attention.kind === 'softmax' && !('response_format' in b0),
     'request_built_from_settings', JSON.stringify(b0));

  // Stop: a long generation is stopped as soon as its first tokens show. The
  // click is made by an in-page observer (a real click on the button) so the
  // tiny test model cannot finish first; if it did finish (EOS), try again.
  await page.fill('#attention', '');
  await page.fill('#max-tokens', '2000');
  await page.fill('#temperature', '1');
  let stopped = false, stopDetail = '';
  for (let attempt = 0; attempt < 4 && !stopped; attempt++) {
    await page.evaluate(() => {
      const box = document.getElementById('messages');
      window.__stopObs && window.__stopObs.disconnect();
      window.__stopObs = new MutationObserver(() => {
        const b = box.querySelector('.msg.assistant.streaming .bubble');
        if (b && b.textContent.length > 0) {
          window.__stopObs.disconnect();
          document.getElementById('stop').click();
        }
      });
      window.__stopObs.observe(box, { subtree: true, childList: true, characterData: true });
    });
    const n = await page.$$eval('.msg.assistant', (els) => els.length);
    await page.fill('#input', `Tell me a very long story, please (${attempt}).`);
    await page.click('#send');
    await page.waitForFunction((n) => !document.querySelector('.msg.assistant.streaming') &&
                                      document.querySelectorAll('.msg.assistant').length === n + 1, n, { timeout: 30000 });
    const meta = await page.$$eval('.msg.assistant .meta', (els) => els.at(-1).textContent);
    stopDetail += meta + '; ';
    stopped = meta === 'stopped';
  }
  const sendEnabled = await page.$eval('#send', (el) => !el.disabled);
  const stopDisabled = await page.$eval('#stop', (el) => el.disabled);
  ok(stopped && sendEnabled && stopDisabled, 'stop_button_aborts_generation', stopDetail);
  const body2 = bodies.at(-1) || {};
  ok(!('attention' in body2), 'attention_left_out_when_unset', JSON.stringify(body2).slice(0, 200));

  // The server is not wedged by the aborted stream: the next message works.
  await page.fill('#max-tokens', '60');
  await page.fill('#temperature', '0');
  await page.fill('#input', 'And what did the cat do next?');
  await page.click('#send');
  const nMsgs = await page.$$eval('.msg.assistant', (els) => els.length);
  await page.waitForFunction((n) => !document.querySelector('.msg.assistant.streaming') &&
                                    document.querySelectorAll('.msg.assistant').length === n, nMsgs, { timeout: 30000 });
  const lastMeta = await page.$$eval('.msg.assistant .meta', (els) => els.at(-1).textContent);
  ok(/tokens/.test(lastMeta), 'next_message_after_stop', lastMeta);

  // JSON schema setting becomes response_format json_schema; whatever the
  // server says (a reply, or a 400 while structured output is not there),
  // the page shows it without breaking.
  await page.fill('#schema', '{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}');
  await page.fill('#input', 'Give me a name.');
  await page.click('#send');
  await page.waitForFunction(() => !document.querySelector('.msg.assistant.streaming') && !document.querySelector('#send').disabled,
                             null, { timeout: 30000 });
  const b3 = bodies.at(-1) || {};
  ok(b3.response_format && b3.response_format.type === 'json_schema' &&
     b3.response_format.json_schema.schema.required[0] === 'name', 'schema_sent_as_response_format', JSON.stringify(b3.response_format));
  await page.fill('#schema', '{not json');
  const nBodies = bodies.length;
  await page.fill('#input', 'This has a broken schema.');
  await page.click('#send');
  await page.waitForSelector('.msg.error');
  ok(bodies.length === nBodies && /JSON schema is not valid JSON/.test(await page.$$eval('.msg.error .bubble', (e) => e.at(-1).textContent)),
     'invalid_schema_reported_without_request');
  // Tidy the transcript for the screenshot: drop the two schema turns.
  await page.evaluate(() => {
    const st = JSON.parse(localStorage.getItem('qkvd.chat.v1'));
    st.messages = st.messages.slice(0, -4);
    st.settings.schema = '';
    localStorage.setItem('qkvd.chat.v1', JSON.stringify(st));
  });

  // The conversation survives a reload (localStorage).
  const before = await page.$$eval('.msg', (els) => els.length);
  await page.reload();
  await page.waitForSelector('.msg.assistant');
  const after = await page.$$eval('.msg', (els) => els.length);
  ok(after === before - 4 && after >= 6, 'conversation_kept_across_reload', `${before} -> ${after}`);

  // Screenshot: non-blank means real pixel variance across the page.
  await page.click('#toggle-settings');
  await page.waitForSelector('#settings:not([hidden])');
  const png = await page.screenshot({ type: 'png' });
  const shot = await ctx.newPage();
  const stats = await shot.evaluate(async (b64) => {
    const img = new Image();
    img.src = 'data:image/png;base64,' + b64;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.width; c.height = img.height;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    let sum = 0, sum2 = 0, n = 0;
    const colours = new Set();
    for (let i = 0; i < d.length; i += 4 * 7) {
      const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
      sum += y; sum2 += y * y; n++;
      colours.add((d[i] >> 4) << 8 | (d[i + 1] >> 4) << 4 | (d[i + 2] >> 4));
    }
    const mean = sum / n;
    return { w: c.width, h: c.height, variance: sum2 / n - mean * mean, colours: colours.size };
  }, png.toString('base64'));
  await shot.close();
  ok(stats.w === 1180 && stats.variance > 50 && stats.colours >= 8, 'screenshot_not_blank', JSON.stringify(stats));
  console.log(`# screenshot ${stats.w}x${stats.h}, luminance variance ${stats.variance.toFixed(0)}, ${stats.colours} colours`);
  if (process.env.QKVD_SCREENSHOT) writeFileSync(process.env.QKVD_SCREENSHOT, png);

  ok(external.length === 0, 'no_external_network', external.join(' '));
  ok(pageErrors.length === 0, 'no_page_errors', pageErrors.join(' | '));
} catch (e) {
  ok(false, 'webui', e.stack);
} finally {
  if (ctx) await ctx.close().catch(() => {});
  await s.stop();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed() ? 1 : 0);
