// GET /metrics after real traffic: the Prometheus text format (checked by
// `promtool check metrics` from Debian's prometheus package when installed,
// and by a parser of our own always), counters that move as they should
// (requests by endpoint and status, prompt and generated tokens = usage,
// one time-to-first-token per sequence), the waiting/running gauges under a
// queue, open without the API key like /health, --no-metrics, and the model
// label with --models-dir.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ok, skip, failed, startServer, post, get, sleep, haveShared, STORIES } from './lib/server.mjs';

if (!haveShared()) {
  skip('metrics', `${STORIES} not found (../shared absent)`);
  process.exit(0);
}

const PROMTOOL = ['/usr/bin/promtool', '/usr/local/bin/promtool'].find((p) => existsSync(p));

/** Parse the text format strictly enough to catch mistakes: every sample's
 * family has HELP and TYPE before it, samples of a family are contiguous,
 * histogram buckets are cumulative and end with +Inf = _count. */
function parseProm(text) {
  const samples = [];
  const problems = [];
  const types = new Map(), helps = new Set(), done = new Set();
  let current = null;
  const lines = text.split('\n');
  if (lines.at(-1) !== '') problems.push('no final newline');
  for (const line of lines.slice(0, -1)) {
    let m;
    if ((m = /^# HELP (\w+) .+$/.exec(line))) { helps.add(m[1]); continue; }
    if ((m = /^# TYPE (\w+) (counter|gauge|histogram)$/.exec(line))) {
      if (types.has(m[1])) problems.push(`TYPE twice: ${m[1]}`);
      types.set(m[1], m[2]);
      continue;
    }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.e+-]+|\+Inf|NaN)$/.exec(line);
    if (!m) { problems.push(`bad line: ${line}`); continue; }
    const labels = {};
    if (m[3]) {
      const re = /(\w+)="((?:[^"\\]|\\.)*)"(,|$)/gy;
      let lm, end = 0;
      while ((lm = re.exec(m[3]))) { labels[lm[1]] = lm[2].replace(/\\n/g, '\n').replace(/\\(.)/g, '$1'); end = re.lastIndex; }
      if (end !== m[3].length) problems.push(`bad labels: ${line}`);
    }
    const name = m[1];
    const fam = types.has(name) ? name : name.replace(/_(bucket|sum|count)$/, '');
    if (!types.has(fam) || !helps.has(fam)) problems.push(`no HELP/TYPE before ${name}`);
    if (fam !== current) {
      if (done.has(fam)) problems.push(`family ${fam} not contiguous`);
      if (current) done.add(current);
      current = fam;
    }
    if (types.get(fam) === 'counter' && !name.endsWith('_total')) problems.push(`counter without _total: ${name}`);
    samples.push({ name, labels, value: Number(m[4]), fam });
  }
  // histograms: cumulative buckets, +Inf == _count
  const groups = new Map();
  for (const s of samples.filter((x) => types.get(x.fam) === 'histogram')) {
    const { le, ...rest } = s.labels;
    const key = s.fam + JSON.stringify(rest);
    if (!groups.has(key)) groups.set(key, { buckets: [], count: null });
    const g = groups.get(key);
    if (s.name.endsWith('_bucket')) g.buckets.push([le === '+Inf' ? Infinity : Number(le), s.value]);
    if (s.name.endsWith('_count')) g.count = s.value;
  }
  for (const [key, g] of groups) {
    for (let i = 1; i < g.buckets.length; i++)
      if (g.buckets[i][0] <= g.buckets[i - 1][0] || g.buckets[i][1] < g.buckets[i - 1][1]) problems.push(`${key}: buckets not cumulative`);
    if (!g.buckets.length || g.buckets.at(-1)[0] !== Infinity || g.buckets.at(-1)[1] !== g.count) problems.push(`${key}: +Inf != count`);
  }
  return { samples, problems, types };
}

/** Sum of the samples named `name` whose labels include `want`. */
function val(p, name, want = {}) {
  return p.samples.filter((s) => s.name === name && Object.entries(want).every(([k, v]) => s.labels[k] === v))
    .reduce((a, s) => a + s.value, 0);
}
function has(p, name, want = {}) {
  return p.samples.some((s) => s.name === name && Object.entries(want).every(([k, v]) => s.labels[k] === v));
}

function promtool(text, name) {
  if (!PROMTOOL) { skip(name, 'promtool not installed (Debian package prometheus; scripts/install-deps.sh)'); return; }
  const r = spawnSync(PROMTOOL, ['check', 'metrics'], { input: text, encoding: 'utf8' });
  ok(r.status === 0, name, (r.stdout + r.stderr).trim());
}

async function scrape(port, headers) {
  const r = await get(port, '/metrics', headers);
  return { r, p: r.status === 200 ? parseProm(r.body) : null };
}

// ---- one model, with an API key ----
const KEY = 'metrics-test-key';
const AUTH = { Authorization: `Bearer ${KEY}` };
let s = await startServer(['-m', STORIES, '--threads', '1', '--api-key', KEY, '--max-seqs', '1']);
try {
  const { r: r0, p: p0 } = await scrape(s.port);
  ok(r0.status === 200 && /^text\/plain; version=0\.0\.4/.test(r0.headers['content-type']), 'metrics_open_without_key_like_health',
     `${r0.status} ${r0.headers['content-type']}`);
  ok(p0 && p0.problems.length === 0, 'metrics_format_parses', p0 && p0.problems.join('; '));
  const model = { model: 'stories260K' };
  ok(has(p0, 'qkvd_model_info', { ...model, arch: 'llama' }) && val(p0, 'qkvd_model_loaded', model) === 1, 'metrics_model_info',
     r0.body.split('\n').filter((l) => /model_(info|loaded)\{/.test(l)).join(' | '));
  for (const name of ['qkvd_requests_running', 'qkvd_requests_waiting', 'qkvd_prefix_cache_hit_tokens_total',
    'qkvd_prefix_cache_lookup_tokens_total', 'qkvd_preemptions_total', 'qkvd_prompt_tokens_total', 'qkvd_generation_tokens_total',
    'qkvd_kv_blocks', 'qkvd_kv_allocated_bytes', 'qkvd_time_to_first_token_seconds_count', 'qkvd_inter_token_latency_seconds_count',
    'qkvd_step_duration_seconds_count']) {
    if (!has(p0, name, model)) ok(false, `metrics_has_${name}`, 'missing');
  }
  let r = await get(s.port, '/v1/models');
  ok(r.status === 401, 'other_endpoints_still_need_the_key', r.status);

  // traffic: 3 completions, 1 streamed chat with usage, 1 rejected request
  const usage = [];
  for (let i = 0; i < 3; i++) {
    r = await post(s.port, '/v1/completions', { prompt: `Once upon a time ${i}`, max_tokens: 10 + i, temperature: 0 }, AUTH);
    if (r.status === 200) usage.push(r.json.usage);
  }
  ok(usage.length === 3, 'completions_ok', r.body);
  r = await post(s.port, '/v1/chat/completions', { messages: [{ role: 'user', content: 'Hi' }], max_tokens: 9, stream: true,
    stream_options: { include_usage: true } }, AUTH);
  const last = r.body.split('\n\n').filter((e) => e.startsWith('data: {')).map((e) => JSON.parse(e.slice(6))).at(-1);
  if (last && last.usage) usage.push(last.usage);
  ok(usage.length === 4, 'stream_usage_ok', r.body.slice(-300));
  r = await post(s.port, '/v1/completions', { prompt: 'x', temperature: 5 }, AUTH);
  ok(r.status === 400, 'bad_request_400', r.status);

  const { r: r1, p: p1 } = await scrape(s.port);
  ok(p1 && p1.problems.length === 0, 'metrics_format_parses_after_traffic', p1 && p1.problems.join('; '));
  promtool(r1.body, 'promtool_check_metrics_after_traffic');
  const d = (name, want = {}) => val(p1, name, want) - val(p0, name, want);
  const sum = (k) => usage.reduce((a, u) => a + u[k], 0);
  ok(d('qkvd_requests_total', { endpoint: '/v1/completions', status: '200' }) === 3, 'requests_total_200_grew_by_3',
     d('qkvd_requests_total', { endpoint: '/v1/completions', status: '200' }));
  ok(d('qkvd_requests_total', { endpoint: '/v1/chat/completions', status: '200' }) === 1, 'requests_total_chat_stream_counted');
  ok(d('qkvd_requests_total', { endpoint: '/v1/completions', status: '400' }) === 1, 'requests_total_400_counted');
  ok(d('qkvd_requests_total', { endpoint: '/v1/models', status: '401' }) === 1, 'requests_total_401_counted');
  ok(d('qkvd_requests_total', { endpoint: '/metrics', status: '200' }) === 1, 'requests_total_counts_scrapes');
  ok(d('qkvd_generation_tokens_total', model) === sum('completion_tokens'), 'generated_tokens_match_usage',
     `${d('qkvd_generation_tokens_total', model)} vs ${sum('completion_tokens')}`);
  ok(d('qkvd_prompt_tokens_total', model) === sum('prompt_tokens'), 'prompt_tokens_match_usage',
     `${d('qkvd_prompt_tokens_total', model)} vs ${sum('prompt_tokens')}`);
  ok(d('qkvd_time_to_first_token_seconds_count', model) === 4, 'one_ttft_per_sequence', d('qkvd_time_to_first_token_seconds_count', model));
  // Every generated token after the first is one inter-token gap (an end-of-generation token adds one).
  const itl = d('qkvd_inter_token_latency_seconds_count', model);
  ok(itl >= sum('completion_tokens') - 4 && itl <= sum('completion_tokens'), 'inter_token_latency_count', `${itl} vs ${sum('completion_tokens')}`);
  ok(d('qkvd_step_duration_seconds_count', model) > 0 && d('qkvd_step_tokens_total', model) >= sum('completion_tokens'),
     'steps_counted');
  ok(d('qkvd_request_duration_seconds_count', { endpoint: '/v1/completions' }) === 4, 'request_duration_observed');
  ok(val(p1, 'qkvd_requests_running', model) === 0 && val(p1, 'qkvd_requests_waiting', model) === 0 &&
     val(p1, 'qkvd_kv_blocks', { ...model, state: 'used' }) === 0, 'idle_gauges_zero');

  // A queue: --max-seqs 1 and three long streams (EOS banned): one runs, two wait.
  const ctl = new AbortController();
  const streams = [0, 1, 2].map((i) => fetch(`${s.url}/v1/completions`, {
    method: 'POST', signal: ctl.signal, headers: { ...AUTH, 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt: `Once ${i}`, max_tokens: 1500, stream: true, logit_bias: { 2: -100 } }),
  }).then(async (res) => { for await (const _ of res.body); }).catch(() => {}));
  let seen = null;
  for (let k = 0; k < 100 && !seen; k++) {
    const { p } = await scrape(s.port);
    if (p && val(p, 'qkvd_requests_waiting', model) === 2) seen = p;
    else await sleep(20);
  }
  ok(seen && val(seen, 'qkvd_requests_running', model) === 1 && val(seen, 'qkvd_kv_blocks', { ...model, state: 'used' }) > 0 &&
     val(seen, 'qkvd_kv_allocated_bytes', model) > 0, 'queue_gauges_running_1_waiting_2',
     seen ? `running ${val(seen, 'qkvd_requests_running', model)}` : 'never saw 2 waiting');
  if (seen) promtool((await get(s.port, '/metrics')).body, 'promtool_check_metrics_under_load');
  ctl.abort();
  await Promise.all(streams);
} finally {
  await s.stop();
}

// ---- --no-metrics ----
s = await startServer(['-m', STORIES, '--threads', '1', '--no-metrics']);
try {
  const r = await get(s.port, '/metrics');
  ok(r.status === 404 && /--no-metrics/.test(r.body), 'no_metrics_404', r.body);
} finally {
  await s.stop();
}

// ---- --models-dir: a series per model, label model="ID" ----
const dir = mkdtempSync(path.join(os.tmpdir(), 'qkvd-metrics-'));
try {
  symlinkSync(STORIES, path.join(dir, 'alpha.gguf'));
  symlinkSync(STORIES, path.join(dir, 'beta.gguf'));
  s = await startServer(['--models-dir', dir, '-m', 'alpha', '--threads', '1', '--model-aliases', 'we"ird=beta',
    '--max-loaded-models', '1']);
  try {
    let r = await post(s.port, '/v1/completions', { model: 'alpha', prompt: 'Once', max_tokens: 5, temperature: 0 });
    ok(r.status === 200, 'models_dir_completion', r.body);
    const gen = r.json?.usage?.completion_tokens;
    const { r: rm, p } = await scrape(s.port);
    ok(p && p.problems.length === 0, 'models_dir_metrics_parse', p && p.problems.join('; '));
    promtool(rm.body, 'promtool_check_metrics_models_dir');
    ok(val(p, 'qkvd_model_loaded', { model: 'alpha' }) === 1 && val(p, 'qkvd_model_loaded', { model: 'we"ird' }) === 0 &&
       has(p, 'qkvd_requests_waiting', { model: 'we"ird' }), 'models_dir_series_per_model',
       rm.body.split('\n').filter((l) => l.startsWith('qkvd_model_loaded')).join(' | '));
    ok(val(p, 'qkvd_generation_tokens_total', { model: 'alpha' }) === gen &&
       val(p, 'qkvd_generation_tokens_total', { model: 'we"ird' }) === 0, 'models_dir_tokens_per_model');
    r = await post(s.port, '/v1/completions', { model: 'we"ird', prompt: 'Once', max_tokens: 3, temperature: 0 });
    const { p: p2 } = await scrape(s.port);
    ok(r.status === 200 && val(p2, 'qkvd_model_loaded', { model: 'we"ird' }) === 1 &&
       val(p2, 'qkvd_generation_tokens_total', { model: 'we"ird' }) === r.json.usage.completion_tokens, 'models_dir_second_model_counted');
    // --max-loaded-models 1: alpha was unloaded; its counters stay and keep growing after a reload.
    ok(val(p2, 'qkvd_model_loaded', { model: 'alpha' }) === 0 && val(p2, 'qkvd_generation_tokens_total', { model: 'alpha' }) === gen,
       'models_dir_counters_survive_unload');
    r = await post(s.port, '/v1/completions', { model: 'alpha', prompt: 'Once', max_tokens: 4, temperature: 0 });
    const { r: rm3, p: p3 } = await scrape(s.port);
    ok(r.status === 200 && val(p3, 'qkvd_model_loaded', { model: 'alpha' }) === 1 &&
       val(p3, 'qkvd_generation_tokens_total', { model: 'alpha' }) === gen + r.json.usage.completion_tokens &&
       val(p3, 'qkvd_prompt_tokens_total', { model: 'alpha' }) === 2 * r.json.usage.prompt_tokens, 'models_dir_counters_grow_after_reload',
       rm3.body.split('\n').filter((l) => /^qkvd_(generation|prompt)_tokens_total/.test(l)).join(' | '));
    promtool(rm3.body, 'promtool_check_metrics_after_reload');
  } finally {
    await s.stop();
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
process.exit(failed() ? 1 : 0);
