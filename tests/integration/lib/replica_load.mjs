// Load for tests/integration/replicas.sh: drives qkvd replicas through nginx
// (QKVD_NGINX_URL), kills replicas mid-run (QKVD_REPLICA_PIDS, in the order
// replica-1..3) and checks what clients saw. The `model` field of each reply
// names the replica (--model-alias replica-N). Prints ok/not ok lines.
import fs from 'node:fs';

const URL_ = process.env.QKVD_NGINX_URL;
const PIDS = process.env.QKVD_REPLICA_PIDS.split(' ').map(Number);
const PORTS = process.env.QKVD_REPLICA_PORTS.split(' ').map(Number);
const ACCESS = process.env.QKVD_NGINX_ACCESS_LOG;
let failures = 0;
function ok(cond, name, detail) {
  if (cond) console.log(`ok ${name}`);
  else { failures++; console.log(`not ok ${name}${detail !== undefined ? ' # ' + String(detail).slice(0, 600) : ''}`); }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** One chat request through nginx. Returns what the client observed. */
async function chat(args) {
  const r = await chat1(args);
  r.t1 = Date.now();
  return r;
}
async function chat1({ messages, stream, maxTokens, session }) {
  const headers = { 'Content-Type': 'application/json' };
  if (session) headers['X-Session-Id'] = session;
  const body = { messages, max_tokens: maxTokens, temperature: session ? 0 : 0.9, stream };
  const res = { status: 0, replica: null, tokens: 0, complete: false, text: '', error: '', t0: Date.now(), t1: 0 };
  let r;
  try {
    r = await fetch(URL_ + '/v1/chat/completions', { method: 'POST', headers, body: JSON.stringify(body) });
  } catch (e) { res.error = 'fetch: ' + e.message; return res; }
  res.status = r.status;
  if (r.status !== 200) { res.error = await r.text().catch(() => ''); return res; }
  if (!stream) {
    try {
      const j = await r.json();
      res.replica = j.model;
      res.text = j.choices[0].message.content;
      res.tokens = j.usage.completion_tokens;
      res.complete = !!j.choices[0].finish_reason;
    } catch (e) { res.error = 'body: ' + e.message; }
    return res;
  }
  const dec = new TextDecoder();
  let buf = '', done = false, finish = null;
  try {
    for await (const chunk of r.body) {
      buf += dec.decode(chunk, { stream: true });
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const ev = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (!ev.startsWith('data: ')) continue;
        const data = ev.slice(6);
        if (data === '[DONE]') { done = true; continue; }
        const j = JSON.parse(data);
        if (j.error) { res.error = 'event: ' + j.error.message; continue; }
        res.replica = j.model || res.replica;
        const c = j.choices && j.choices[0];
        if (c && c.delta && c.delta.content) { res.tokens++; res.text += c.delta.content; }
        if (c && c.finish_reason) finish = c.finish_reason;
      }
    }
  } catch (e) { res.error = 'stream: ' + e.message; }
  res.complete = done && !!finish && !res.error;
  return res;
}

/** n requests, at most conc at once; beforeStart(i) runs before request i. */
async function pool(n, conc, make, beforeStart) {
  const out = new Array(n);
  let next = 0;
  async function worker() {
    while (next < n) {
      const i = next++;
      if (beforeStart) await beforeStart(i);
      out[i] = await make(i);
    }
  }
  await Promise.all(Array.from({ length: conc }, worker));
  return out;
}

const alive = (pid) => { try { process.kill(pid, 0); return true; } catch { return false; } };
function accessLines() { try { return fs.readFileSync(ACCESS, 'utf8').split('\n').filter(Boolean); } catch { return []; } }
const retried = (lines) => lines.filter((l) => /up=\S+, /.test(l) || /ups=\d+, /.test(l));
function byReplica(results) {
  const m = {};
  for (const r of results) m[r.replica || 'none'] = (m[r.replica || 'none'] || 0) + 1;
  return JSON.stringify(m);
}

// ---- A. session-keyed conversations stay on one replica ----
const N_SESS = 8;
const sessions = Array.from({ length: N_SESS }, (_, k) => ({
  id: `conv-${k}-${process.pid}`, messages: [], replicas: [],
}));
async function turn(s, text) {
  s.messages.push({ role: 'user', content: text });
  const r = await chat({ messages: s.messages, stream: false, maxTokens: 24, session: s.id });
  s.messages.push({ role: 'assistant', content: r.text || '' });
  s.replicas.push(r.replica);
  return r;
}
const turnsA = [];
await Promise.all(sessions.map(async (s, k) => {
  for (const t of ['Tell me a story about a cat.', 'What happened next?', 'How did it end?'])
    turnsA.push(await turn(s, `${t} (${k})`));
}));
ok(turnsA.every((r) => r.complete), 'session_turns_complete', JSON.stringify(turnsA.filter((r) => !r.complete)));
const stuck = sessions.filter((s) => new Set(s.replicas).size === 1 && s.replicas[0]);
ok(stuck.length === N_SESS, 'sessions_stick_to_one_replica',
   sessions.map((s) => s.replicas.join(',')).join(' | '));
const home = new Map(sessions.map((s) => [s.id, s.replicas[0]]));
const used = new Set(home.values());
ok(used.size >= 2, 'sessions_spread_over_replicas', [...used].join(','));
console.log(`# sessions per replica: ${byReplica(sessions.map((s) => ({ replica: s.replicas[0] })))}`);

// Prefix-cache hits per replica from /metrics (qkvd_prefix_cache_hit_tokens_total):
// each replica that holds conversations must have served prompt tokens from
// its prefix cache (every turn re-sends the earlier turns). A KV cache that
// does no prefix caching looks nothing up (lookup counter 0): then skip.
const metrics = await Promise.all(PORTS.map((p) => fetch(`http://127.0.0.1:${p}/metrics`).then(
  async (r) => (r.ok ? r.text() : null), () => null)));
const hitRe = /^qkvd_prefix_cache_hit_tokens(?:_total)?(?:\{[^}]*\})? ([0-9.e+]+)/m;
const lookupRe = /^qkvd_prefix_cache_lookup_tokens_total(?:\{[^}]*\})? ([0-9.e+]+)/m;
if (!metrics.every((m) => m && hitRe.test(m))) {
  console.log('skip prefix_cache_hits_where_sessions_live: replicas expose no qkvd_prefix_cache_hit_tokens_total in /metrics');
} else if (metrics.every((m) => lookupRe.test(m) && Number(lookupRe.exec(m)[1]) === 0)) {
  console.log('skip prefix_cache_hits_where_sessions_live: the replicas\' KV cache does no prefix caching (qkvd_prefix_cache_lookup_tokens_total is 0 on all)');
} else {
  const hits = metrics.map((m) => Number(hitRe.exec(m)[1]));
  const expect = PORTS.map((_, i) => [...home.values()].includes(`replica-${i + 1}`));
  ok(hits.every((h, i) => !expect[i] || h > 0), 'prefix_cache_hits_where_sessions_live', `hits ${hits}`);
  console.log(`# prefix-cache hit tokens per replica: ${hits.join(', ')}`);
}

// ---- B. SIGTERM one replica mid-run: it drains, nginx retries the rest ----
const victimB = 0; // replica-1
const prompt = (i) => [{ role: 'user', content: `Once upon a time, number ${i},` }];
const logBefore = accessLines().length;
let tKillB = 0;
const resB = await pool(48, 6, (i) => chat({ messages: prompt(i), stream: i % 2 === 0, maxTokens: 160 }), async (i) => {
  if (i === 12) { tKillB = Date.now(); process.kill(PIDS[victimB], 'SIGTERM'); }
});
const inflightB = resB.filter((r) => r.replica === `replica-${victimB + 1}` && r.t0 <= tKillB && r.t1 >= tKillB);
console.log(`# ${inflightB.length} requests were running on replica-${victimB + 1} when SIGTERM arrived`);
const badB = resB.filter((r) => !r.complete);
ok(badB.length === 0, 'sigterm_replica_every_request_completes', JSON.stringify(badB.slice(0, 3)));
console.log(`# phase B replies by replica: ${byReplica(resB)}`);
for (let k = 0; k < 100 && alive(PIDS[victimB]); k++) await sleep(50);
ok(!alive(PIDS[victimB]), 'sigterm_replica_drained_and_exited');

// ---- A'. sessions again: those on surviving replicas do not move ----
const turnsA2 = await Promise.all(sessions.map((s) => turn(s, 'Tell me one more thing.')));
ok(turnsA2.every((r) => r.complete), 'session_turns_after_drain_complete');
const movedWrongly = sessions.filter((s) => home.get(s.id) !== `replica-${victimB + 1}` && s.replicas.at(-1) !== home.get(s.id));
ok(movedWrongly.length === 0, 'sessions_on_surviving_replicas_stay',
   movedWrongly.map((s) => s.replicas.join(',')).join(' | '));
const orphans = sessions.filter((s) => home.get(s.id) === `replica-${victimB + 1}`);
ok(orphans.every((s) => s.replicas.at(-1) && s.replicas.at(-1) !== home.get(s.id)), 'sessions_of_drained_replica_move',
   orphans.map((s) => s.replicas.join(',')).join(' | '));

// ---- C. SIGKILL another replica mid-run ----
const victimC = 1; // replica-2
const resC = await pool(36, 6, (i) => chat({ messages: prompt(100 + i), stream: i % 2 === 0, maxTokens: 160 }), async (i) => {
  if (i === 12) process.kill(PIDS[victimC], 'SIGKILL');
});
// Allowed outcomes: complete; or a stream cut after its first tokens by the
// kill of the replica producing it (no one can retry tokens already sent).
const cut = resC.filter((r) => !r.complete && r.tokens > 0 && r.replica === `replica-${victimC + 1}`);
const bad = resC.filter((r) => !r.complete && !cut.includes(r));
ok(bad.length === 0, 'sigkill_replica_requests_complete_or_cut_mid_stream_on_it', JSON.stringify(bad.slice(0, 3)));
console.log(`# phase C: ${resC.length - cut.length - bad.length} complete, ${cut.length} streams cut mid-way by the SIGKILL; by replica ${byReplica(resC)}`);
const after = resC.slice(18);
ok(after.every((r) => r.complete && r.replica === 'replica-3'), 'survivor_serves_everything_after_kills', byReplica(after));

const lines = accessLines().slice(logBefore);
const re = retried(lines);
console.log(`# nginx passed ${re.length} of ${lines.length} requests on to another replica, e.g.: ${re.slice(0, 2).join(' || ')}`);
ok(re.length >= 1, 'nginx_retried_requests_that_never_reached_a_replica');
process.exit(failures ? 1 : 0);
