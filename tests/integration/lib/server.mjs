// Helpers for the qkvd serve integration tests: start the real binary on an
// ephemeral 127.0.0.1 port, raw HTTP requests, SSE parsing, TAP-like output.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';

export const ROOT = process.env.QKVD_ROOT || path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../..');
export const BIN = process.env.QKVD_BIN || path.join(ROOT, 'build/qkvd');
export const SHARED = process.env.QKVD_SHARED || path.join(ROOT, '../shared');
export const STORIES = path.join(SHARED, 'models/stories260K.gguf');
export const QWEN = path.join(SHARED, 'models/tiny-qwen2-f16.gguf');

let failures = 0;
export function ok(cond, name, detail) {
  if (cond) console.log(`ok ${name}`);
  else {
    failures++;
    console.log(`not ok ${name}${detail !== undefined ? ' # ' + String(detail).slice(0, 400) : ''}`);
  }
  return cond;
}
export function skip(name, reason) { console.log(`skip ${name}: ${reason}`); }
export function failed() { return failures; }

/** Start `qkvd serve --port 0 ...args`; resolves once the model is loaded. */
export async function startServer(args, env = {}) {
  const proc = spawn(BIN, ['serve', '--host', '127.0.0.1', '--port', '0', ...args],
    { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const exited = new Promise((res) => proc.on('exit', (code, sig) => res({ code, sig })));
  const port = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('server did not start: ' + log)), 20000);
    let port = 0;
    proc.stderr.on('data', (d) => {
      log += d.toString();
      const m = log.match(/listening on http:\/\/(?:\[[^\]]*\]|[^:]+):(\d+)/);
      if (m) port = Number(m[1]);
      if (port && /model '.*' loaded/.test(log)) { clearTimeout(t); resolve(port); }
    });
    proc.on('exit', () => { clearTimeout(t); reject(new Error('server exited: ' + log)); });
  });
  return {
    port, proc, exited,
    log: () => log,
    url: `http://127.0.0.1:${port}`,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await exited;
    },
  };
}

/** One raw HTTP request; resolves {status, headers, body, json}. */
export function request(port, method, p, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : (typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body));
    const req = http.request({ host: '127.0.0.1', port, method, path: p, agent: false,
      headers: { ...(data !== undefined ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } : {}), ...headers } },
    (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        resolve({ status: res.statusCode, headers: res.headers, body: text, json });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    if (data !== undefined) req.write(data);
    req.end();
  });
}

export const post = (port, p, body, headers) => request(port, 'POST', p, body, headers);
export const get = (port, p, headers) => request(port, 'GET', p, undefined, headers);

/** Split an SSE body into its `data:` payloads; checks the framing strictly. */
export function sseEvents(body) {
  const events = [];
  let framingOk = true;
  const parts = body.split('\n\n');
  if (parts[parts.length - 1] !== '') framingOk = false;
  for (const part of parts.slice(0, -1)) {
    if (!part.startsWith('data: ') || part.includes('\n')) { framingOk = false; continue; }
    const payload = part.slice(6);
    events.push(payload === '[DONE]' ? '[DONE]' : JSON.parse(payload));
  }
  return { events, framingOk };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const haveShared = () => existsSync(STORIES);
