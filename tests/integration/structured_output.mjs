// Structured output against a real server with the random-weight tiny-qwen2
// model (GPT-2 vocabulary, 50k tokens): random weights emit anything the
// mask allows, so every completion that finishes with "stop" must validate
// (ajv, draft 2020-12 + formats) against its schema; "length" ones are
// counted separately. Also: schema errors -> 400 naming keyword and path,
// json_object, the grammar field, streaming, n > 1, and tool calls through
// the official OpenAI SDK for every tool-call syntax family.
import { execSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { ok, skip, failed, startServer, post, QWEN, SHARED } from './lib/server.mjs';

const here = path.dirname(new URL(import.meta.url).pathname);
if (!existsSync(QWEN)) {
  skip('structured_output', `${QWEN} not found (../shared absent)`);
  process.exit(0);
}
const nm = path.join(here, 'node_modules');
if (!existsSync(path.join(nm, 'ajv')) || !existsSync(path.join(nm, 'ajv-formats')) || !existsSync(path.join(nm, 'openai'))) {
  try {
    execSync(`npm ci --prefix "${here}" --no-audit --no-fund`, { stdio: 'inherit' });
  } catch (e) {
    skip('structured_output', 'npm ci failed (no registry access?)');
    process.exit(0);
  }
}
const { default: Ajv2020 } = await import(path.join(nm, 'ajv/dist/2020.js'));
const { default: addFormats } = await import(path.join(nm, 'ajv-formats/dist/index.js'));
const { default: OpenAI } = await import(path.join(nm, 'openai/index.mjs'));

const ajv = new Ajv2020({ strict: false, allErrors: false });
addFormats(ajv);
const corpus = JSON.parse(readFileSync(path.join(here, 'schemas/corpus.json'), 'utf8'));

/** Run fn over items with at most `width` in flight. */
async function pool(items, width, fn) {
  const out = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) { const i = next++; out[i] = await fn(items[i], i); }
  }));
  return out;
}

const msgs = [{ role: 'user', content: 'Answer in JSON.' }];
const s = await startServer(['-m', QWEN, '--threads', '1', '--max-seqs', '16']);
const P = s.port;
try {
  // ---- the corpus: every "stop" validates ----
  ok(corpus.valid.length >= 100, 'corpus_size', corpus.valid.length);
  let stops = 0, lengths = 0;
  const bad = [];
  // Two rounds with different seeds (QKVD_STRUCT_ROUNDS to change).
  const rounds = Number(process.env.QKVD_STRUCT_ROUNDS || 2);
  const jobs = [];
  for (let k = 0; k < rounds; k++) corpus.valid.forEach((e) => jobs.push(e));
  await pool(jobs, 8, async (e, i) => {
    // Alternate the OpenAI wrapper, Dify's bare form and /v1/completions.
    const form = i % 3;
    const rf = form === 1 ? { type: 'json_schema', json_schema: e.schema }
      : { type: 'json_schema', json_schema: { name: e.name, strict: true, schema: e.schema } };
    const r = form === 2
      ? await post(P, '/v1/completions', { prompt: 'JSON:', max_tokens: 40, seed: i, response_format: rf })
      : await post(P, '/v1/chat/completions', { messages: msgs, max_tokens: 40, seed: i, response_format: rf });
    if (r.status !== 200) { bad.push(`${e.name}: HTTP ${r.status} ${r.body.slice(0, 200)}`); return; }
    const ch = r.json.choices[0];
    const text = form === 2 ? ch.text : ch.message.content;
    if (ch.finish_reason === 'length') { lengths++; return; }
    if (ch.finish_reason !== 'stop') { bad.push(`${e.name}: finish ${ch.finish_reason}`); return; }
    stops++;
    let v;
    try { v = JSON.parse(text); } catch { bad.push(`${e.name}: not JSON: ${text}`); return; }
    const validate = ajv.compile(e.schema);
    if (!validate(v)) bad.push(`${e.name}: ${text} -> ${ajv.errorsText(validate.errors)}`);
  });
  console.log(`# corpus: ${corpus.valid.length} schemas x ${rounds} seeds, ${stops} finished with stop (all validated), ${lengths} with length`);
  ok(bad.length === 0, 'corpus_stop_outputs_validate', bad.slice(0, 5).join(' | '));
  ok(stops >= jobs.length / 4, 'corpus_enough_complete_outputs', `${stops} stop, ${lengths} length`);

  // ---- bad schemas: 400 naming keyword and path ----
  const badRes = await pool(corpus.invalid, 4, (e) =>
    post(P, '/v1/chat/completions', { messages: msgs, max_tokens: 4, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: e.schema } } }));
  const wrong = [];
  corpus.invalid.forEach((e, i) => {
    const r = badRes[i];
    const m = r.json?.error?.message || '';
    if (r.status !== 400 || r.json?.error?.param !== 'response_format' || !m.includes(`'${e.keyword}'`) || !m.includes(`at ${e.path}:`))
      wrong.push(`${JSON.stringify(e.schema)} -> ${r.status} ${m}`);
  });
  ok(wrong.length === 0, 'invalid_schemas_400_keyword_and_path', wrong.join(' | '));

  // ---- json_object ----
  {
    const rs = await pool([1, 2, 3, 4, 5, 6], 6, (seed) =>
      post(P, '/v1/chat/completions', { messages: msgs, max_tokens: 48, seed, response_format: { type: 'json_object' } }));
    let good = true, detail = '';
    for (const r of rs) {
      const ch = r.json?.choices?.[0];
      if (r.status !== 200 || !ch) { good = false; detail = r.body; break; }
      if (ch.finish_reason !== 'stop') continue;
      try {
        const v = JSON.parse(ch.message.content);
        if (typeof v !== 'object' || v === null || Array.isArray(v)) { good = false; detail = ch.message.content; }
      } catch { good = false; detail = ch.message.content; }
    }
    ok(good, 'json_object_outputs_are_objects', detail);
  }

  // ---- grammar (GBNF) ----
  {
    const r = await post(P, '/v1/chat/completions', { messages: msgs, max_tokens: 16, n: 4, grammar: 'root ::= ("yes" | "no") ("!" | "")' });
    ok(r.status === 200 && r.json.choices.length === 4 &&
       r.json.choices.every((c) => c.finish_reason === 'stop' && /^(yes|no)!?$/.test(c.message.content)), 'grammar_field_n4', r.body);
    const r2 = await post(P, '/v1/completions', { prompt: 'x', max_tokens: 16, grammar: 'root ::= [0-9]{3}' });
    ok(r2.status === 200 && /^[0-9]{3}$/.test(r2.json.choices[0].text) && r2.json.choices[0].finish_reason === 'stop', 'grammar_field_completions', r2.body);
    const r3 = await post(P, '/v1/chat/completions', { messages: msgs, grammar: 'root ::= foo' });
    ok(r3.status === 400 && r3.json.error.param === 'grammar' && /foo/.test(r3.json.error.message), 'grammar_bad_400', r3.body);
  }

  // ---- streaming + logprobs + n: the streamed text validates ----
  {
    const schema = corpus.valid.find((e) => e.name === 'person').schema;
    const r = await post(P, '/v1/chat/completions', { messages: msgs, max_tokens: 60, n: 3, seed: 5, stream: true, logprobs: true, top_logprobs: 2,
      response_format: { type: 'json_schema', json_schema: { name: 'p', schema } } });
    const texts = ['', '', ''], fin = [null, null, null];
    let lpOk = true;
    for (const line of r.body.split('\n')) {
      if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
      const o = JSON.parse(line.slice(6));
      for (const c of o.choices || []) {
        if (c.delta?.content) texts[c.index] += c.delta.content;
        if (c.finish_reason) fin[c.index] = c.finish_reason;
        for (const e of c.logprobs?.content || []) if (!(e.logprob <= 0) || e.top_logprobs.length > 2) lpOk = false;
      }
    }
    const validate = ajv.compile(schema);
    const probs = [];
    texts.forEach((t, i) => {
      if (fin[i] === 'stop') { try { if (!validate(JSON.parse(t))) probs.push(t); } catch { probs.push(t); } }
      else if (fin[i] !== 'length') probs.push(`finish ${fin[i]}`);
    });
    ok(r.status === 200 && probs.length === 0 && lpOk, 'stream_n3_logprobs_schema', probs.join(' | '));
  }

  // ---- stop strings still apply under a schema ----
  {
    const r = await post(P, '/v1/chat/completions', { messages: msgs, max_tokens: 30, stop: ['"b"'],
      response_format: { type: 'json_schema', json_schema: { name: 's', schema: { type: 'object', properties: { a: { const: 1 }, b: { const: 2 } }, required: ['a', 'b'] } } } });
    ok(r.status === 200 && r.json.choices[0].message.content === '{"a":1,' && r.json.choices[0].finish_reason === 'stop', 'stop_string_under_schema', r.body);
  }
} finally {
  await s.stop();
}

// ---- tool calls through the OpenAI SDK, one server per syntax family ----
const weatherParams = { type: 'object', properties: { city: { type: 'string', maxLength: 12 }, days: { type: 'integer', minimum: 1, maximum: 7 },
  unit: { enum: ['c', 'f'] } }, required: ['city', 'days'], additionalProperties: false };
const tools = [
  { type: 'function', function: { name: 'get_weather', description: 'Weather forecast', parameters: weatherParams } },
  { type: 'function', function: { name: 'get_time', description: 'Current time', parameters: { type: 'object', properties: { tz: { enum: ['UTC', 'CET'] } }, required: ['tz'] } } },
];
const paramsOf = Object.fromEntries(tools.map((t) => [t.function.name, ajv.compile(t.function.parameters)]));
const families = [
  ['generic', null],
  ['hermes', 'Qwen-Qwen2.5-7B-Instruct.jinja'],
  ['llama3', 'meta-llama-Llama-3.1-8B-Instruct.jinja'],
  ['mistral', 'mistralai-Mistral-Nemo-Instruct-2407.jinja'],
  ['mistral11', 'Mistral-Small-3.2-24B-Instruct-2506.jinja'],
];

function callsValid(calls, onlyName) {
  if (!Array.isArray(calls) || !calls.length) return 'no tool_calls';
  for (const c of calls) {
    if (c.type !== 'function' || typeof c.id !== 'string' || !c.id.length) return `bad call ${JSON.stringify(c)}`;
    if (onlyName && c.function.name !== onlyName) return `name ${c.function.name}`;
    const v = paramsOf[c.function.name];
    if (!v) return `unknown tool ${c.function.name}`;
    if (typeof c.function.arguments !== 'string') return 'arguments not a string';
    let a;
    try { a = JSON.parse(c.function.arguments); } catch { return `arguments not JSON: ${c.function.arguments}`; }
    if (!v(a)) return `${c.function.arguments}: ${ajv.errorsText(v.errors)}`;
  }
  return '';
}

for (const [fam, tmpl] of families) {
  const tpath = tmpl && path.join(SHARED, 'templates', tmpl);
  if (tmpl && !existsSync(tpath)) { skip(`tools_${fam}`, `${tpath} absent`); continue; }
  const ts = await startServer(['-m', QWEN, '--threads', '1', ...(tpath ? ['--chat-template-file', tpath] : [])]);
  const client = new OpenAI({ baseURL: `${ts.url}/v1`, apiKey: 'x', maxRetries: 0, timeout: 60000 });
  const base = { model: 'tiny-qwen2-f16', messages: [{ role: 'user', content: 'Weather in Paris?' }], tools, max_tokens: 64, parallel_tool_calls: false };
  try {
    // required, non-stream
    const c = await client.chat.completions.create({ ...base, tool_choice: 'required', seed: 1 });
    const ch = c.choices[0];
    const why = ch.finish_reason === 'length' ? '' : callsValid(ch.message.tool_calls);
    ok(why === '' && (ch.finish_reason === 'length' || (ch.finish_reason === 'tool_calls' && ch.message.content === null && ch.message.tool_calls.length === 1)),
      `tools_${fam}_required`, `${why} ${JSON.stringify(ch)}`);
    // named, stream: reassemble deltas by index
    const st = await client.chat.completions.create({ ...base, tool_choice: { type: 'function', function: { name: 'get_time' } }, stream: true, seed: 2 });
    const calls = [];
    let finish = null, content = '', dupHeader = false;
    for await (const chunk of st) {
      const d = chunk.choices[0]?.delta || {};
      if (d.content) content += d.content;
      for (const t of d.tool_calls || []) {
        if (!calls[t.index]) calls[t.index] = { id: t.id, type: t.type, function: { name: t.function?.name, arguments: '' } };
        else if (t.id || t.function?.name) dupHeader = true;
        calls[t.index].function.arguments += t.function?.arguments || '';
      }
      if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
    }
    const why2 = finish === 'length' ? '' : callsValid(calls, 'get_time');
    ok(why2 === '' && !dupHeader && content === '' && (finish === 'tool_calls' || finish === 'length'), `tools_${fam}_named_stream`,
      `${why2} ${finish} ${JSON.stringify(calls)}`);
    // auto: text or calls, both well-formed
    const a = await client.chat.completions.create({ ...base, tool_choice: 'auto', max_tokens: 24, seed: 3 });
    const ac = a.choices[0];
    ok(['stop', 'length', 'tool_calls'].includes(ac.finish_reason) &&
       (ac.finish_reason !== 'tool_calls' || callsValid(ac.message.tool_calls) === ''), `tools_${fam}_auto`, JSON.stringify(ac));
    // none: never calls
    const n = await client.chat.completions.create({ ...base, tool_choice: 'none', max_tokens: 8 });
    ok(!n.choices[0].message.tool_calls && n.choices[0].finish_reason !== 'tool_calls', `tools_${fam}_none`, JSON.stringify(n.choices[0]));
    // tool results round trip through the template
    const id = ch.message.tool_calls?.[0]?.id || (fam.startsWith('mistral') ? 'abcdefghi' : 'call_x');
    const rt = await client.chat.completions.create({ ...base, max_tokens: 4, messages: [
      ...base.messages,
      { role: 'assistant', content: null, tool_calls: [{ id, type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris","days":1}' } }] },
      { role: 'tool', tool_call_id: id, content: '{"temp": 21}' },
    ] });
    ok(rt.choices.length === 1, `tools_${fam}_result_round_trip`);
    ok(new RegExp(`tool-call syntax ${fam},`).test(ts.log()), `tools_${fam}_detected`, ts.log().slice(-300));
    // parallel calls allowed: every call valid, indices dense
    if (fam !== 'llama3') {
      const pc = await client.chat.completions.create({ ...base, tool_choice: 'required', parallel_tool_calls: true, max_tokens: 90, seed: 4 });
      const pch = pc.choices[0];
      const complete = pch.finish_reason === 'tool_calls' ? pch.message.tool_calls : pch.message.tool_calls?.slice(0, -1);
      ok(!complete?.length || callsValid(complete) === '', `tools_${fam}_parallel`, JSON.stringify(pch));
    }
  } catch (e) {
    ok(false, `tools_${fam}`, e.stack);
  } finally {
    await ts.stop();
  }
}
// ---- grammar state survives pre-emption: the same seeded outputs when the
// KV pool is too small and the newest jobs are pre-empted and recomputed ----
{
  const STORIES = path.join(SHARED, 'models/stories260K.gguf');
  const LONG = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, she saw a big red ball under a tree and she wanted to play with it.';
  const schema = { type: 'array', items: { type: 'integer', minimum: 0, maximum: 999 }, minItems: 60 };
  const bodies = [0, 1, 2, 3, 4, 5].map((i) => ({ prompt: `${LONG} ${i}`, max_tokens: 150, temperature: 0.8, seed: 7 + i, n: i === 3 ? 2 : 1,
    response_format: { type: 'json_schema', json_schema: { name: 'a', schema } } }));
  const texts = async (port) => (await Promise.all(bodies.map((b) => post(port, '/v1/completions', b))))
    .map((r) => r.status === 200 ? JSON.stringify(r.json.choices.map((c) => c.text)) : `ERROR ${r.body}`);
  const metric = async (port, name) => {
    const r = await new Promise((res) => http.get({ host: '127.0.0.1', port, path: '/metrics' }, (m) => { let b = ''; m.on('data', (d) => b += d); m.on('end', () => res(b)); }));
    return r.split('\n').filter((l) => l.startsWith(name)).reduce((a, l) => a + Number(l.split(' ').pop()), 0);
  };
  if (!existsSync(STORIES)) skip('preemption_keeps_grammar_state', `${STORIES} absent`);
  else {
    const ref = await startServer(['-m', STORIES, '--threads', '1', '--max-seqs', '8']);
    let want;
    try { want = await texts(ref.port); } finally { await ref.stop(); }
    const small = await startServer(['-m', STORIES, '--threads', '1', '--max-seqs', '8', '--kv-memory', '1', '--prefill-chunk', '32']);
    try {
      const got = await texts(small.port);
      const n = await metric(small.port, 'qkvd_preemptions_total');
      const diff = got.map((g, i) => g === want[i] ? '' : `request ${i}: ${g.slice(0, 120)} vs ${want[i].slice(0, 120)}`).filter(Boolean);
      ok(n > 0 && diff.length === 0 && !want.some((w) => w.startsWith('ERROR')), 'preemption_keeps_grammar_state', `pre-emptions ${n}; ${diff.join(' | ')}`);
    } finally {
      await small.stop();
    }
  }
}
// bad tools: 400 naming the parameter path
{
  const ts = await startServer(['-m', QWEN, '--threads', '1']);
  try {
    const r = await post(ts.port, '/v1/chat/completions', { messages: msgs, tool_choice: 'required',
      tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { a: { type: 'string', format: 'hostname' } } } } }] });
    ok(r.status === 400 && r.json.error.param === 'tools[0].function.parameters' && /format/.test(r.json.error.message) &&
       /#\/properties\/a/.test(r.json.error.message), 'tools_bad_parameters_400', r.body);
  } finally {
    await ts.stop();
  }
}
process.exit(failed() ? 1 : 0);
