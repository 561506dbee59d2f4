// bench-serve: a load generator for qkvd's HTTP API (or any OpenAI-compatible
// server that takes token-id prompts). N concurrent clients send streaming
// /v1/completions requests back to back; each prompt is an exact number of
// token ids (a mix of lengths, optionally after a shared "system prompt" to
// measure prefix caching). Prints aggregate generated tokens/s, decode tokens/s
// (tokens after the first over the time some request was decoding), requests/s,
// time to first token and inter-token latency percentiles, as a table or JSON.
// Node 20, no npm packages. See --help and docs/benchmarks.md.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const HELP = `usage: scripts/bench-serve (--url URL | --model FILE.gguf [--qkvd BIN]) [options]

target
  --url URL               a running server (e.g. http://127.0.0.1:8080)
  --model FILE            start \`qkvd serve -m FILE\` on a free 127.0.0.1 port for the run
  --qkvd BIN              the binary to start (default build/qkvd)
  --threads N             --threads for the started server (default 2)
  --max-seqs N            --max-seqs for the started server (default max(16, clients))
  --server-arg ARG        one more argument for the started server (repeatable)
  --api-key KEY           send Authorization: Bearer KEY
  --model-id ID           "model" field of requests (default: the server's first model)

load
  -c, --clients N         concurrent streaming clients (default 1)
  -n, --requests N        requests per round (default 4 x clients); or
  -d, --duration S        seconds per round (clients start new requests until then)
  --prompt-lens L[,L..]   prompt lengths in tokens, used in turn (default 128)
  --system-prompt-len S   a shared prefix of S tokens before every prompt (default 0)
  --max-tokens N          tokens to generate per request (default 128)
  --ignore-eos            send "ignore_eos": true: every request generates --max-tokens
  --ban-token ID          logit_bias -100 for token ID, e.g. the end-of-generation
                          token so that every request generates --max-tokens (repeatable)
  --session-key           send X-Session-Id: bench-<client> (sticky routing behind nginx)
  --session-header NAME   header name for --session-key (default X-Session-Id)
  --warmup N              requests before the first round, not measured (default 1)
  -r, --repeat R          rounds; the summary gives the median of each figure (default 1)
  --seed N                prompt token seed (default 1)

output
  --json                  print one JSON object instead of the table
  -h, --help
`;

function parseArgs(argv) {
  const o = { qkvd: path.join(ROOT, 'build/qkvd'), threads: 2, clients: 1, promptLens: [128], systemLen: 0, maxTokens: 128,
    ban: [], warmup: 1, repeat: 1, seed: 1, serverArgs: [], sessionHeader: 'X-Session-Id' };
  const num = (v, name) => {
    const x = Number(v);
    if (v === undefined || !Number.isFinite(x) || x < 0) throw new Error(`${name} needs a non-negative number, got '${v}'`);
    return x;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i], v = () => argv[++i];
    switch (a) {
      case '--url': o.url = v(); break;
      case '--model': o.model = v(); break;
      case '--qkvd': o.qkvd = v(); break;
      case '--threads': o.threads = num(v(), a); break;
      case '--max-seqs': o.maxSeqs = num(v(), a); break;
      case '--server-arg': o.serverArgs.push(v()); break;
      case '--api-key': o.apiKey = v(); break;
      case '--model-id': o.modelId = v(); break;
      case '-c': case '--clients': o.clients = Math.max(1, num(v(), a)); break;
      case '-n': case '--requests': o.requests = num(v(), a); break;
      case '-d': case '--duration': o.duration = num(v(), a); break;
      case '--prompt-lens': o.promptLens = v().split(',').map((x) => num(x, a)); break;
      case '--system-prompt-len': o.systemLen = num(v(), a); break;
      case '--max-tokens': o.maxTokens = num(v(), a); break;
      case '--ban-token': o.ban.push(num(v(), a)); break;
      case '--ignore-eos': o.ignoreEos = true; break;
      case '--session-key': o.sessionKey = true; break;
      case '--session-header': o.sessionHeader = v(); break;
      case '--warmup': o.warmup = num(v(), a); break;
      case '-r': case '--repeat': o.repeat = Math.max(1, num(v(), a)); break;
      case '--seed': o.seed = num(v(), a); break;
      case '--json': o.json = true; break;
      case '-h': case '--help': process.stdout.write(HELP); process.exit(0); break;
      default: throw new Error(`unknown option '${a}' (--help lists them)`);
    }
  }
  if (!o.url === !o.model) throw new Error('give exactly one of --url URL or --model FILE');
  if (o.requests === undefined && o.duration === undefined) o.requests = 4 * o.clients;
  if (o.promptLens.some((l) => l + o.systemLen < 1)) throw new Error('every prompt needs at least one token');
  return o;
}

// ---- server ----
async function startServer(o) {
  const args = ['serve', '-m', o.model, '--host', '127.0.0.1', '--port', '0', '--threads', String(o.threads),
    '--max-seqs', String(o.maxSeqs ?? Math.max(16, o.clients)), '--queue-len', String(Math.max(64, 2 * o.clients)), ...o.serverArgs];
  const proc = spawn(o.qkvd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const port = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`server did not load within 300 s:\n${log}`)), 300000);
    let port = 0;
    proc.stderr.on('data', (d) => {
      log += d.toString();
      if (log.length > 65536) log = log.slice(-32768);
      const m = log.match(/listening on http:\/\/[^:]+:(\d+)/);
      if (m) port = Number(m[1]);
      if (port && /model '.*' loaded/.test(log)) { clearTimeout(t); resolve(port); }
    });
    proc.on('error', (e) => { clearTimeout(t); reject(e); });
    proc.on('exit', (c) => { clearTimeout(t); reject(new Error(`server exited (${c}):\n${log}`)); });
  });
  const exited = new Promise((r) => proc.on('exit', r));
  return {
    url: `http://127.0.0.1:${port}`,
    async stop() {
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 10000);
      await exited;
      clearTimeout(t);
    },
  };
}

// ---- prompts: exact token counts from a seeded PRNG ----
function rng(seed) {
  let x = BigInt(seed) * 0x9E3779B97F4A7C15n + 1n;
  return () => {
    x ^= x << 13n; x &= 0xFFFFFFFFFFFFFFFFn;
    x ^= x >> 7n;
    x ^= x << 17n; x &= 0xFFFFFFFFFFFFFFFFn;
    return Number(x >> 11n) / 2 ** 53;
  };
}
function tokens(rand, n, lo, hi) {
  const t = new Array(n);
  for (let i = 0; i < n; i++) t[i] = lo + Math.floor(rand() * (hi - lo));
  return t;
}

// ---- one streaming request ----
async function oneRequest(o, base, headers, prompt) {
  const body = { prompt, max_tokens: o.maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true } };
  if (o.modelId) body.model = o.modelId;
  if (o.ignoreEos) body.ignore_eos = true;
  if (o.ban.length) body.logit_bias = Object.fromEntries(o.ban.map((t) => [String(t), -100]));
  const res = { ok: false, ttft: null, gaps: [], tokens: 0, prompt: prompt.length, t0: performance.now(), t1: 0, tLast: 0, error: '' };
  try {
    const r = await fetch(`${base}/v1/completions`, { method: 'POST', headers, body: JSON.stringify(body) });
    if (r.status !== 200) {
      res.error = `HTTP ${r.status}: ${(await r.text()).slice(0, 200)}`;
      res.t1 = performance.now();
      return res;
    }
    const dec = new TextDecoder();
    let buf = '', last = 0, done = false, chunks = 0;
    for await (const c of r.body) {
      const now = performance.now();
      buf += dec.decode(c, { stream: true });
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const ev = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (!ev.startsWith('data: ')) continue;
        const data = ev.slice(6);
        if (data === '[DONE]') { done = true; continue; }
        const j = JSON.parse(data);
        if (j.error) { res.error = j.error.message; continue; }
        if (j.usage) { res.tokens = j.usage.completion_tokens; res.prompt = j.usage.prompt_tokens; }
        const ch = j.choices && j.choices[0];
        if (ch && typeof ch.text === 'string' && ch.text.length) {
          /* one event per token as a rule (text held back for UTF-8 joins the next) */
          if (res.ttft === null) res.ttft = now - res.t0;
          else res.gaps.push(now - last);
          last = now;
          res.tLast = now;
          chunks++;
        }
      }
    }
    if (!res.tokens) res.tokens = chunks;
    res.ok = done && !res.error;
  } catch (e) {
    res.error = e.message;
  }
  res.t1 = performance.now();
  return res;
}

// ---- metrics from the server (qkvd), before/after a round ----
async function scrapeMetrics(base, headers) {
  try {
    const r = await fetch(`${base}/metrics`, { headers });
    if (r.status !== 200) return null;
    const text = await r.text();
    const out = {};
    for (const line of text.split('\n')) {
      const m = /^(qkvd_[a-z_]+_total)(?:\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
      if (m && !m[1].startsWith('qkvd_requests_')) out[m[1]] = (out[m[1]] || 0) + Number(m[2]);
    }
    return out;
  } catch { return null; }
}

async function scrapeGauges(base, headers) {
  try {
    const r = await fetch(`${base}/metrics`, { headers });
    if (r.status !== 200) return null;
    const out = {};
    for (const line of (await r.text()).split('\n')) {
      const m = /^(qkvd_kv_(?:allocated_bytes|needed_bytes|resident_bytes|block_bytes|blocks))(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
      if (!m) continue;
      if (m[1] === 'qkvd_kv_blocks') {
        if (/state="used"/.test(m[2] || '')) out.used_blocks = (out.used_blocks || 0) + Number(m[3]);
      } else out[m[1]] = (out[m[1]] || 0) + Number(m[3]);
    }
    return out;
  } catch { return null; }
}

const pct = (xs, p) => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
};
const sec = (ms) => (ms === null ? null : ms / 1000);
const median = (xs) => {
  const v = xs.filter((x) => x !== null && Number.isFinite(x));
  return v.length ? pct(v, 50) : null;
};

async function round(o, base, headers, prompts, startIndex) {
  let next = startIndex;
  const results = [];
  let deadline = Infinity;
  const limit = o.requests !== undefined ? startIndex + o.requests : Infinity;
  async function client(k) {
    const h = { ...headers };
    if (o.sessionKey) h[o.sessionHeader] = `bench-${k}`;
    while (next < limit && performance.now() < deadline) {
      const i = next++;
      results.push(await oneRequest(o, base, h, prompts(i)));
    }
  }
  const before = await scrapeMetrics(base, headers);
  const t1 = performance.now();
  if (o.duration !== undefined) deadline = t1 + o.duration * 1000;
  // KV memory while the load runs: allocated vs what the live sequences need.
  const kv = [], kvUsed = [], kvRes = [];
  let running = true;
  const sampler = (async () => {
    while (running) {
      const g = await scrapeGauges(base, headers);
      if (g && g.qkvd_kv_needed_bytes > 0) {
        kv.push(g.qkvd_kv_allocated_bytes / g.qkvd_kv_needed_bytes);
        if (g.qkvd_kv_block_bytes) kvUsed.push((g.used_blocks || 0) * g.qkvd_kv_block_bytes / g.qkvd_kv_needed_bytes);
        if (g.qkvd_kv_resident_bytes !== undefined) kvRes.push(g.qkvd_kv_resident_bytes / g.qkvd_kv_needed_bytes);
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  })();
  await Promise.all(Array.from({ length: o.clients }, (_, k) => client(k)));
  const wall = (performance.now() - t1) / 1000;
  running = false;
  await sampler;
  const after = await scrapeMetrics(base, headers);
  const ok = results.filter((r) => r.ok);
  const gen = ok.reduce((a, r) => a + r.tokens, 0);
  const prm = ok.reduce((a, r) => a + r.prompt, 0);
  const ttft = ok.map((r) => r.ttft).filter((x) => x !== null);
  const gaps = ok.flatMap((r) => r.gaps);
  const e2e = ok.map((r) => r.t1 - r.t0);
  // Decode throughput: the streamed tokens after each request's first one,
  // over the time during which at least one request was between its first
  // and last token (the union of those windows; prompt processing of
  // requests that start later still counts when it overlaps).
  const win = ok.filter((r) => r.ttft !== null && r.gaps.length).map((r) => [r.t0 + r.ttft, r.tLast]).sort((a, b) => a[0] - b[0]);
  let decodeMs = 0, cur = null;
  for (const w of win) {
    if (cur && w[0] <= cur[1]) cur[1] = Math.max(cur[1], w[1]);
    else { if (cur) decodeMs += cur[1] - cur[0]; cur = [...w]; }
  }
  if (cur) decodeMs += cur[1] - cur[0];
  const decodeTok = ok.reduce((a, r) => a + r.gaps.length, 0);
  const server = before && after ? Object.fromEntries(Object.keys(after).map((k) => [k.replace(/^qkvd_/, ''), after[k] - (before[k] || 0)])) : null;
  return {
    requests: results.length, ok: ok.length, failed: results.length - ok.length,
    errors: [...new Set(results.filter((r) => !r.ok).map((r) => r.error))].slice(0, 3),
    wall_s: wall, req_per_s: ok.length / wall, gen_tok_per_s: gen / wall, prompt_tok_per_s: prm / wall,
    decode_tok_per_s: decodeMs > 0 ? decodeTok / (decodeMs / 1000) : null,
    generated_tokens: gen, prompt_tokens: prm,
    ttft_p50_s: sec(pct(ttft, 50)), ttft_p99_s: sec(pct(ttft, 99)),
    itl_p50_s: sec(pct(gaps, 50)), itl_p99_s: sec(pct(gaps, 99)),
    e2e_p50_s: sec(pct(e2e, 50)), e2e_p99_s: sec(pct(e2e, 99)),
    // pool memory (blocks of live sequences + prefix-cache blocks kept) / what live sequences' tokens need
    kv_alloc_over_needed_mean: kv.length ? kv.reduce((a, x) => a + x, 0) / kv.length : null,
    kv_alloc_over_needed_max: kv.length ? Math.max(...kv) : null,
    // blocks held by live sequences / what their tokens need (partial last blocks; shared blocks count once)
    kv_used_over_needed_mean: kvUsed.length ? kvUsed.reduce((a, x) => a + x, 0) / kvUsed.length : null,
    kv_used_over_needed_max: kvUsed.length ? Math.max(...kvUsed) : null,
    // memory the OS backs for those blocks (written pages: a partly filled last block costs what was written) / needed
    kv_resident_over_needed_mean: kvRes.length ? kvRes.reduce((a, x) => a + x, 0) / kvRes.length : null,
    kv_resident_over_needed_max: kvRes.length ? Math.max(...kvRes) : null,
    kv_samples: kv.length,
    server,
  };
}

async function main() {
  let o;
  try { o = parseArgs(process.argv.slice(2)); } catch (e) {
    process.stderr.write(`bench-serve: ${e.message}\n`);
    process.exit(2);
  }
  const srv = o.model ? await startServer(o) : null;
  const base = (srv ? srv.url : o.url).replace(/\/$/, '');
  const headers = { 'Content-Type': 'application/json' };
  if (o.apiKey) headers.Authorization = `Bearer ${o.apiKey}`;
  try {
    let nVocab = 32000;
    const m = await fetch(`${base}/v1/models`, { headers }).then((r) => r.json()).catch(() => null);
    const first = m && m.data && m.data[0];
    if (first && first.meta && first.meta.n_vocab) nVocab = first.meta.n_vocab;
    if (!o.modelId && first && m.data.length > 1) o.modelId = first.id;
    // Token ids away from both ends of the vocabulary: special and byte tokens live there.
    const lo = Math.min(300, Math.floor(nVocab / 4)), hi = Math.max(lo + 1, nVocab - 300);
    const sys = tokens(rng(o.seed + 7777), o.systemLen, lo, hi);
    const prompts = (i) => [...sys, ...tokens(rng(o.seed * 1000003 + i), o.promptLens[i % o.promptLens.length], lo, hi)];
    // Warm-up: maps the weights in and (with a system prompt) caches the prefix.
    for (let w = 0; w < o.warmup; w++) {
      const r = await oneRequest(o, base, headers, prompts(1e9 + w)); // never a round's index (k * 1e6 + i)
      if (!r.ok) throw new Error(`warm-up request failed: ${r.error}`);
    }
    const rounds = [];
    for (let k = 0; k < o.repeat; k++) rounds.push(await round(o, base, headers, prompts, k * 1000000));
    const keys = Object.keys(rounds[0]).filter((key) => typeof rounds[0][key] === 'number');
    const med = Object.fromEntries(keys.map((key) => [key, median(rounds.map((r) => r[key]))]));
    const config = { target: o.model ? `qkvd serve -m ${o.model} --threads ${o.threads}` : base, clients: o.clients,
      requests: o.requests ?? null, duration_s: o.duration ?? null, prompt_lens: o.promptLens, system_prompt_len: o.systemLen,
      max_tokens: o.maxTokens, ignore_eos: !!o.ignoreEos, session_key: !!o.sessionKey, repeat: o.repeat };
    if (o.json) {
      process.stdout.write(JSON.stringify({ config, median: med, rounds }, null, 2) + '\n');
    } else {
      const f = (x, d = 1) => (x === null || x === undefined ? '-' : x.toFixed(d));
      const ms = (x) => (x === null ? '-' : (x * 1000).toFixed(1));
      const prompt = (o.systemLen ? `${o.systemLen} shared + ` : '') + o.promptLens.join(',');
      console.log(`bench-serve: ${config.target}, ${o.clients} clients, prompt ${prompt} tokens, max_tokens ${o.maxTokens}, ` +
        `${o.requests !== undefined ? `${o.requests} requests` : `${o.duration} s`} x ${o.repeat} round(s)${o.repeat > 1 ? ' (medians)' : ''}`);
      console.log('| figure | value |\n| --- | --- |');
      console.log(`| requests ok / failed | ${rounds.reduce((a, r) => a + r.ok, 0)} / ${rounds.reduce((a, r) => a + r.failed, 0)} |`);
      console.log(`| generated tokens/s | ${f(med.gen_tok_per_s)} |`);
      console.log(`| decode tokens/s (after each first token) | ${f(med.decode_tok_per_s)} |`);
      console.log(`| prompt tokens/s | ${f(med.prompt_tok_per_s)} |`);
      console.log(`| requests/s | ${f(med.req_per_s, 2)} |`);
      console.log(`| TTFT p50 / p99 (ms) | ${ms(med.ttft_p50_s)} / ${ms(med.ttft_p99_s)} |`);
      console.log(`| inter-token p50 / p99 (ms) | ${ms(med.itl_p50_s)} / ${ms(med.itl_p99_s)} |`);
      console.log(`| request latency p50 / p99 (s) | ${f(med.e2e_p50_s, 2)} / ${f(med.e2e_p99_s, 2)} |`);
      if (med.kv_samples) {
        console.log(`| KV held by live sequences / needed, mean (max) | ${f(med.kv_used_over_needed_mean, 3)} (${f(med.kv_used_over_needed_max, 3)}) |`);
        if (med.kv_resident_over_needed_mean !== null)
          console.log(`| KV memory backed for those blocks (written pages) / needed, mean (max) | ${f(med.kv_resident_over_needed_mean, 3)} (${f(med.kv_resident_over_needed_max, 3)}) |`);
        console.log(`| KV pool allocated (incl. prefix cache) / needed, mean (max) | ${f(med.kv_alloc_over_needed_mean, 3)} (${f(med.kv_alloc_over_needed_max, 3)}) |`);
      }
      const s0 = rounds.at(-1).server;
      if (s0) console.log(`| server, last round | prefix-cache hit tokens ${s0.prefix_cache_hit_tokens_total ?? '-'}, ` +
        `pre-emptions ${s0.preemptions_total ?? '-'}, step tokens ${s0.step_tokens_total ?? '-'} |`);
      const errs = [...new Set(rounds.flatMap((r) => r.errors))];
      if (errs.length) console.log(`errors: ${errs.join(' | ')}`);
    }
    if (rounds.some((r) => r.ok === 0)) process.exitCode = 1;
  } finally {
    if (srv) await srv.stop();
  }
}

main().catch((e) => {
  process.stderr.write(`bench-serve: ${e.message}\n`);
  process.exit(1);
});
