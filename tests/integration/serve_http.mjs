// qkvd serve driven with raw HTTP: every endpoint, SSE framing, usage, stop
// strings, seeds, n > 1, logprobs, embeddings, errors, disconnect, drain,
// concurrency, CORS, API key. Prints "ok NAME" / "not ok NAME" / "skip NAME".
import http from 'node:http';
import { readFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { ok, skip, failed, startServer, request, post, get, sseEvents, sleep, haveShared, STORIES, QWEN, SHARED } from './lib/server.mjs';

if (!haveShared()) {
  skip('serve_http', `${STORIES} not found (../shared absent)`);
  process.exit(0);
}
const ref = JSON.parse(readFileSync(path.join(SHARED, 'reference/model-outputs.json'), 'utf8')).models['stories260K.gguf'];

const s = await startServer(['-m', STORIES, '--threads', '1']);
const P = s.port;
try {
  // ---- small endpoints ----
  let r = await get(P, '/health');
  ok(r.status === 200 && r.json?.status === 'ok', 'health_ok', r.body);
  r = await get(P, '/v1/models');
  ok(r.status === 200 && r.json.object === 'list' && r.json.data.length === 1 && r.json.data[0].id === 'stories260K' &&
     r.json.data[0].object === 'model', 'models_list', r.body);
  r = await get(P, '/v1/models/stories260K');
  ok(r.status === 200 && r.json.id === 'stories260K', 'models_get', r.body);
  r = await get(P, '/');
  ok(r.status === 200 && /^text\/html/.test(r.headers['content-type']) && /<html/i.test(r.body), 'webui_page', r.body.slice(0, 100));
  r = await get(P, '/models');
  ok(r.status === 200 && r.json.data[0].id === 'stories260K', 'models_without_v1_prefix', r.body);
  r = await post(P, '/chat/completions', { messages: [{ role: 'user', content: 'x' }], max_tokens: 1 });
  ok(r.status === 200 && r.json.object === 'chat.completion', 'chat_without_v1_prefix', r.body);
  r = await get(P, '/v1/models/nope');
  ok(r.status === 404 && r.json.error.code === 'model_not_found', 'models_get_unknown_404', r.body);

  r = await post(P, '/tokenize', { content: 'Once upon a time', add_special: true });
  ok(r.status === 200 && JSON.stringify(r.json.tokens) === JSON.stringify(ref[0].prompt_tokens), 'tokenize_matches_reference', r.body);
  r = await post(P, '/tokenize', { content: 'Once upon', with_pieces: true });
  ok(r.status === 200 && r.json.tokens.every((t) => typeof t.id === 'number' && 'piece' in t), 'tokenize_with_pieces', r.body);
  r = await post(P, '/detokenize', { tokens: ref[0].prompt_tokens });
  ok(r.status === 200 && r.json.content === 'Once upon a time', 'detokenize_roundtrip', r.body);
  r = await post(P, '/apply-template', { messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: [{ type: 'text', text: 'Hi' }] }] });
  ok(r.status === 200 && r.json.prompt === '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
     'apply_template_chatml_fallback', r.body);

  // ---- completions: greedy text equals the reference ----
  for (const c of ref.slice(0, 2)) {
    r = await post(P, '/v1/completions', { model: 'stories260K', prompt: c.prompt, max_tokens: 32, temperature: 0 });
    ok(r.status === 200 && r.json.choices[0].text === c.text, `completion_greedy_reference "${c.prompt.slice(0, 20)}"`,
       r.json?.choices?.[0]?.text ?? r.body);
    ok(r.json?.usage?.prompt_tokens === c.prompt_tokens.length && r.json.usage.completion_tokens === 32 &&
       r.json.usage.total_tokens === c.prompt_tokens.length + 32 && r.json.choices[0].finish_reason === 'length',
       `completion_usage "${c.prompt.slice(0, 20)}"`, JSON.stringify(r.json?.usage));
  }
  r = await post(P, '/v1/completions', { prompt: ref[0].prompt_tokens, max_tokens: 8, temperature: 0 });
  ok(r.status === 200 && ref[0].text.startsWith(r.json.choices[0].text), 'completion_token_prompt', r.body);
  r = await post(P, '/v1/completions', { prompt: 'Once upon a time', max_tokens: 4, temperature: 0, echo: true });
  ok(r.status === 200 && r.json.choices[0].text.startsWith('Once upon a time, there'), 'completion_echo', r.body);
  r = await post(P, '/v1/completions', { prompt: ['Once upon a time', 'The little dog ran to the park and'], max_tokens: 6, temperature: 0 });
  ok(r.status === 200 && r.json.choices.length === 2 && ref[0].text.startsWith(r.json.choices[0].text) &&
     ref[1].text.startsWith(r.json.choices[1].text) && r.json.choices[1].index === 1, 'completion_prompt_array', r.body);
  r = await post(P, '/v1/completions', { prompt: 'Once upon a time' });
  ok(r.status === 200 && r.json.usage.completion_tokens === 16, 'completion_default_max_tokens_16', r.body);

  // ---- streaming framing (completions) equals the non-stream text ----
  r = await post(P, '/v1/completions', { prompt: 'Once upon a time', max_tokens: 20, temperature: 0, stream: true, stream_options: { include_usage: true } });
  {
    const { events, framingOk } = sseEvents(r.body);
    const last = events[events.length - 1];
    const chunks = events.filter((e) => e !== '[DONE]' && e.choices.length);
    const text = chunks.map((e) => e.choices[0].text).join('');
    const fin = chunks.filter((e) => e.choices[0].finish_reason);
    const usage = events[events.length - 2];
    ok(r.status === 200 && r.headers['content-type'].startsWith('text/event-stream') && framingOk && last === '[DONE]',
       'completion_stream_framing', r.body.slice(0, 300));
    ok(text === ref[0].text.slice(0, text.length) && text.length > 20, 'completion_stream_text', text);
    ok(fin.length === 1 && fin[0] === chunks[chunks.length - 1] && fin[0].choices[0].finish_reason === 'length', 'completion_stream_one_finish');
    ok(usage.choices.length === 0 && usage.usage.completion_tokens === 20 && usage.usage.prompt_tokens === 5 &&
       chunks.every((e) => e.usage === null && e.object === 'text_completion'), 'completion_stream_usage', JSON.stringify(usage));
  }

  // ---- chat ----
  const msgs = [{ role: 'user', content: 'Once upon a time' }];
  const chat = await post(P, '/v1/chat/completions', { model: 'stories260K', messages: msgs, max_tokens: 12, temperature: 0 });
  ok(chat.status === 200 && chat.json.object === 'chat.completion' && chat.json.choices[0].message.role === 'assistant' &&
     typeof chat.json.choices[0].message.content === 'string' && chat.json.id.startsWith('chatcmpl-'), 'chat_basic', chat.body);
  r = await post(P, '/tokenize', { content: (await post(P, '/apply-template', { messages: msgs })).json.prompt, add_special: true });
  ok(chat.json.usage.prompt_tokens === r.json.tokens.length && r.json.tokens[0] === 1, 'chat_usage_prompt_tokens_with_bos',
     `${chat.json.usage.prompt_tokens} vs ${r.json.tokens.length}`);
  r = await post(P, '/v1/chat/completions', { messages: msgs, max_tokens: 12, temperature: 0, stream: true });
  {
    const { events, framingOk } = sseEvents(r.body);
    const chunks = events.filter((e) => e !== '[DONE]');
    const content = chunks.map((e) => e.choices[0].delta.content ?? '').join('');
    ok(framingOk && events[events.length - 1] === '[DONE]' && chunks[0].choices[0].delta.role === 'assistant' &&
       chunks.slice(1).every((e) => !('role' in e.choices[0].delta)) && chunks.every((e) => e.object === 'chat.completion.chunk' && !('usage' in e)),
       'chat_stream_framing', r.body.slice(0, 400));
    ok(content === chat.json.choices[0].message.content, 'chat_stream_equals_nonstream', `${content} | ${chat.json.choices[0].message.content}`);
    const fin = chunks.filter((e) => e.choices[0].finish_reason);
    ok(fin.length === 1 && fin[0] === chunks[chunks.length - 1], 'chat_stream_one_finish');
  }

  // ---- stop strings (also across token boundaries, streaming holds partial matches back) ----
  r = await post(P, '/v1/completions', { prompt: 'Once upon a time', max_tokens: 32, temperature: 0, stop: ['named Li', 'zzz'] });
  ok(r.status === 200 && r.json.choices[0].text === ', there was a little girl ' && r.json.choices[0].finish_reason === 'stop', 'stop_string', r.body);
  r = await post(P, '/v1/completions', { prompt: 'Once upon a time', max_tokens: 32, temperature: 0, stop: 'named Li', stream: true });
  {
    const { events } = sseEvents(r.body);
    const chunks = events.filter((e) => e !== '[DONE]');
    ok(chunks.map((e) => e.choices[0].text).join('') === ', there was a little girl ' &&
       chunks[chunks.length - 1].choices[0].finish_reason === 'stop', 'stop_string_stream', r.body.slice(0, 300));
  }

  // ---- seeds ----
  const seeded = (seed) => post(P, '/v1/completions', { prompt: 'Once upon a time', max_tokens: 24, temperature: 1, seed });
  const [a1, a2, b1] = [await seeded(42), await seeded(42), await seeded(7)];
  ok(a1.json.choices[0].text === a2.json.choices[0].text, 'seed_deterministic', `${a1.json.choices[0].text} | ${a2.json.choices[0].text}`);
  ok(a1.json.choices[0].text !== b1.json.choices[0].text, 'seed_differs');

  // ---- n > 1 ----
  r = await post(P, '/v1/completions', { prompt: 'Once upon a time', max_tokens: 10, temperature: 0, n: 3 });
  ok(r.status === 200 && r.json.choices.length === 3 && r.json.choices.every((c, i) => c.index === i && c.text === r.json.choices[0].text) &&
     r.json.usage.completion_tokens === 30 && r.json.usage.prompt_tokens === 5, 'n_greedy_shared_prompt', r.body);
  r = await post(P, '/v1/chat/completions', { messages: msgs, max_tokens: 16, temperature: 1, n: 4, seed: 1 });
  ok(r.status === 200 && r.json.choices.length === 4 && new Set(r.json.choices.map((c) => c.message.content)).size > 1, 'n_sampled_distinct', r.body);
  r = await post(P, '/v1/chat/completions', { messages: msgs, max_tokens: 4, n: 2, stream: true });
  {
    const { events } = sseEvents(r.body);
    const chunks = events.filter((e) => e !== '[DONE]');
    const fins = [0, 1].map((i) => chunks.filter((e) => e.choices[0].index === i && e.choices[0].finish_reason).length);
    const roles = [0, 1].map((i) => chunks.filter((e) => e.choices[0].index === i && e.choices[0].delta.role).length);
    ok(fins[0] === 1 && fins[1] === 1 && roles[0] === 1 && roles[1] === 1, 'n_stream_per_choice_framing', r.body.slice(0, 300));
  }

  // ---- logprobs ----
  r = await post(P, '/v1/chat/completions', { messages: msgs, max_tokens: 5, temperature: 0, logprobs: true, top_logprobs: 3 });
  {
    const lp = r.json?.choices?.[0]?.logprobs?.content;
    ok(r.status === 200 && Array.isArray(lp) && lp.length === r.json.usage.completion_tokens &&
       lp.every((e) => typeof e.token === 'string' && e.logprob <= 0 && Array.isArray(e.bytes) && e.top_logprobs.length === 3 &&
         Math.abs(e.top_logprobs[0].logprob - e.logprob) < 1e-6) &&
       lp.map((e) => e.token).join('') === r.json.choices[0].message.content, 'chat_logprobs', r.body.slice(0, 500));
  }
  r = await post(P, '/v1/completions', { prompt: 'Once upon a time', max_tokens: 6, temperature: 0, logprobs: 2 });
  {
    const lp = r.json?.choices?.[0]?.logprobs;
    ok(r.status === 200 && lp.tokens.length === 6 && lp.token_logprobs.length === 6 && lp.top_logprobs.length === 6 &&
       lp.text_offset[0] === 0 && lp.tokens.join('') === r.json.choices[0].text &&
       lp.top_logprobs.every((t) => Object.keys(t).length === 2), 'completion_logprobs', r.body.slice(0, 500));
    // the reference log-prob of the first greedy token (tolerance 1e-3, f32 model)
    const step0 = ref[0].steps[0];
    ok(Math.abs(lp.token_logprobs[0] - step0.exact_at_top[0]) < 1e-3, 'completion_logprob_vs_reference',
       `${lp.token_logprobs[0]} vs ${step0.exact_at_top[0]}`);
  }

  // ---- echo + logprobs: prompt log-probs (as lm-eval's loglikelihood uses them) ----
  {
    const gen = await post(P, '/v1/completions', { prompt: ref[0].prompt_tokens, max_tokens: 5, temperature: 0, logprobs: 1 });
    const full = ref[0].prompt_tokens.concat(ref[0].tokens.slice(0, 5));
    const e = await post(P, '/v1/completions', { prompt: full, max_tokens: 0, echo: true, logprobs: 3 });
    const lp = e.json?.choices?.[0]?.logprobs;
    const tail = lp ? lp.token_logprobs.slice(-5) : [];
    ok(e.status === 200 && lp.tokens.length === full.length - 1 && tail.every((x, i) => Math.abs(x - gen.json.choices[0].logprobs.token_logprobs[i]) < 1e-3) &&
       e.json.choices[0].text === 'Once upon a time' + gen.json.choices[0].text && e.json.usage.completion_tokens === 0 &&
       lp.top_logprobs.every((t) => Object.keys(t).length === 3), 'echo_prompt_logprobs_match_generation', `${JSON.stringify(tail)} vs ${JSON.stringify(gen.json?.choices?.[0]?.logprobs?.token_logprobs)}`);
    const s2 = await post(P, '/v1/completions', { prompt: 'Once upon a time', max_tokens: 3, echo: true, logprobs: 1, temperature: 0, stream: true });
    const chunks = sseEvents(s2.body).events.filter((x) => x !== '[DONE]');
    ok(chunks[0].choices[0].text === 'Once upon a time' && chunks[0].choices[0].logprobs.tokens.length === 4 &&
       chunks[0].choices[0].logprobs.text_offset.join() === '0,4,9,11' && chunks[1].choices[0].logprobs.text_offset[0] === 16, 'echo_logprobs_stream', s2.body.slice(0, 400));
  }

  // ---- embeddings ----
  r = await post(P, '/v1/embeddings', { input: ['Once upon a time', 'The little dog'], model: 'stories260K' });
  {
    const d = r.json?.data;
    const norm = d ? Math.hypot(...d[0].embedding) : 0;
    ok(r.status === 200 && d.length === 2 && d[0].embedding.length === 64 && d[1].index === 1 && Math.abs(norm - 1) < 1e-4 &&
       r.json.usage.prompt_tokens === 5 + (await post(P, '/tokenize', { content: 'The little dog', add_special: true })).json.tokens.length &&
       r.json.usage.total_tokens === r.json.usage.prompt_tokens, 'embeddings_float', r.body.slice(0, 300));
    const b = await post(P, '/v1/embeddings', { input: 'Once upon a time', encoding_format: 'base64' });
    const buf = Buffer.from(b.json.data[0].embedding, 'base64');
    const v = Array.from({ length: buf.length / 4 }, (_, i) => buf.readFloatLE(4 * i));
    ok(b.status === 200 && v.length === 64 && v.every((x, i) => Math.abs(x - d[0].embedding[i]) < 1e-6), 'embeddings_base64');
    const t = await post(P, '/v1/embeddings', { input: [ref[0].prompt_tokens] });
    ok(t.status === 200 && t.json.data[0].embedding.every((x, i) => Math.abs(x - d[0].embedding[i]) < 1e-5), 'embeddings_token_input');
  }

  // ---- errors ----
  const expectErr = async (name, p, body, status, param, code) => {
    const e = await post(P, p, body);
    ok(e.status === status && e.json?.error && typeof e.json.error.message === 'string' && 'type' in e.json.error &&
       (param === undefined || e.json.error.param === param) && (code === undefined || e.json.error.code === code), name, `${e.status} ${e.body}`);
  };
  await expectErr('error_invalid_json', '/v1/chat/completions', '{"messages": [', 400, null);
  await expectErr('error_not_object', '/v1/chat/completions', '[1,2]', 400);
  await expectErr('error_missing_messages', '/v1/chat/completions', {}, 400, 'messages');
  await expectErr('error_bad_role', '/v1/chat/completions', { messages: [{ role: 'wizard', content: 'x' }] }, 400, 'messages[0].role');
  await expectErr('error_image_part', '/v1/chat/completions', { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, 400, 'messages[0].content[0]');
  await expectErr('error_temperature_range', '/v1/chat/completions', { messages: msgs, temperature: 3 }, 400, 'temperature');
  await expectErr('error_temperature_type', '/v1/chat/completions', { messages: msgs, temperature: 'hot' }, 400, 'temperature');
  await expectErr('error_top_p', '/v1/chat/completions', { messages: msgs, top_p: 1.5 }, 400, 'top_p');
  await expectErr('error_n', '/v1/chat/completions', { messages: msgs, n: 0 }, 400, 'n');
  await expectErr('error_max_tokens', '/v1/chat/completions', { messages: msgs, max_tokens: -1 }, 400, 'max_tokens');
  await expectErr('error_stop_too_many', '/v1/chat/completions', { messages: msgs, stop: ['a', 'b', 'c', 'd', 'e'] }, 400, 'stop');
  await expectErr('error_logit_bias', '/v1/chat/completions', { messages: msgs, logit_bias: { 99999: 5 } }, 400, 'logit_bias');
  await expectErr('error_top_logprobs_without_logprobs', '/v1/chat/completions', { messages: msgs, top_logprobs: 2 }, 400, 'top_logprobs');
  await expectErr('error_stream_options_without_stream', '/v1/chat/completions', { messages: msgs, stream_options: { include_usage: true } }, 400, 'stream_options');
  await expectErr('error_tools_bad', '/v1/chat/completions', { messages: msgs, tools: [{ type: 'function', function: {} }] }, 400, 'tools[0].function.name');
  await expectErr('error_tool_choice_without_tools', '/v1/chat/completions', { messages: msgs, tool_choice: 'auto' }, 400, 'tool_choice');
  await expectErr('error_response_format_bad', '/v1/chat/completions', { messages: msgs, response_format: { type: 'yaml' } }, 400, 'response_format');
  r = await post(P, '/v1/chat/completions', { messages: msgs, max_tokens: 2, response_format: { type: 'text' }, chat_template_kwargs: { x: 1 } });
  ok(r.status === 200, 'response_format_text_and_vendor_extra_accepted', r.body);
  await expectErr('error_unknown_model', '/v1/chat/completions', { model: 'gpt-4o', messages: msgs }, 404, 'model', 'model_not_found');
  await expectErr('error_prompt_tokens_out_of_vocab', '/v1/completions', { prompt: [1, 5000] }, 400, 'prompt');
  await expectErr('error_context_length', '/v1/completions', { prompt: Array(2100).fill(403) }, 400, 'prompt', 'context_length_exceeded');
  await expectErr('error_embeddings_format', '/v1/embeddings', { input: 'x', encoding_format: 'int8' }, 400, 'encoding_format');
  await expectErr('error_embeddings_input', '/v1/embeddings', { input: 42 }, 400, 'input');
  await expectErr('error_tokenize_content', '/tokenize', { text: 'x' }, 400, 'content');
  await expectErr('error_detokenize_range', '/detokenize', { tokens: [-1] }, 400, 'tokens');
  r = await get(P, '/v1/nothing');
  ok(r.status === 404 && r.json?.error?.code === 'not_found', 'error_unknown_route_404', r.body);
  r = await get(P, '/v1/chat/completions');
  ok(r.status === 405 && r.json?.error && r.headers.allow === 'POST', 'error_wrong_method_405', r.body);
  r = await post(P, '/v1/chat/completions', 'x'.repeat(5 * 1024 * 1024));
  ok(r.status === 413 && r.json?.error, 'error_body_too_large_413', r.body.slice(0, 200));

  // ---- garbage in: 400 mutated bodies, every answer is a JSON success or an error envelope ----
  {
    let seed = 12345;
    const rnd = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; };
    const values = [null, true, false, 0, -1, 1.5, 1e300, -1e300, 2 ** 53, '', 'x', '\u00e9\ud83d\ude00', '\u0000', [], [1, 2], ['a'], [[1]], {}, { type: 'text' },
      { role: 'user', content: 'x' }, [{ role: 'user', content: [{ type: 'text', text: 'hi' }] }], 'a'.repeat(5000), { include_usage: true }, { 1: 5 }];
    const keys = ['model', 'messages', 'prompt', 'max_tokens', 'temperature', 'top_p', 'top_k', 'min_p', 'n', 'stop', 'seed', 'presence_penalty',
      'frequency_penalty', 'repetition_penalty', 'logit_bias', 'logprobs', 'top_logprobs', 'echo', 'stream', 'stream_options', 'user',
      'response_format', 'tools', 'input', 'encoding_format', 'content', 'tokens', 'best_of', 'suffix', 'max_completion_tokens'];
    const paths = ['/v1/chat/completions', '/v1/completions', '/v1/embeddings', '/tokenize', '/detokenize', '/apply-template'];
    let bad = 0, first = '';
    for (let i = 0; i < 400; i++) {
      const body = { messages: [{ role: 'user', content: 'Once' }], prompt: 'Once', input: 'Once', content: 'x', tokens: [1], max_tokens: 2 };
      for (let k = rnd(4) + 1; k > 0; k--) body[keys[rnd(keys.length)]] = values[rnd(values.length)];
      if (typeof body.max_tokens === 'number' && body.max_tokens > 3) body.max_tokens = 3;
      if (typeof body.max_completion_tokens === 'number' && body.max_completion_tokens > 3) body.max_completion_tokens = 3;
      if (typeof body.n === 'number' && body.n > 3) body.n = 3;
      const x = await post(P, paths[rnd(paths.length)], body);
      const good = x.status === 200 ? (x.json !== undefined || x.body.startsWith('data: ')) :
        (x.status >= 400 && x.status < 600 && typeof x.json?.error?.message === 'string');
      if (!good) { bad++; if (!first) first = `${x.status} ${JSON.stringify(body).slice(0, 200)} -> ${x.body.slice(0, 200)}`; }
    }
    const h = await get(P, '/health');
    ok(bad === 0 && h.status === 200, 'garbage_bodies_answered', first);
  }

  // ---- 8 concurrent clients ----
  {
    const t0 = Date.now();
    const rs = await Promise.all(Array.from({ length: 8 }, (_, i) =>
      post(P, '/v1/completions', { prompt: ref[i % 2].prompt, max_tokens: 16, temperature: 0, stream: i % 2 === 1 })));
    const texts = rs.map((x, i) => i % 2 ? sseEvents(x.body).events.filter((e) => e !== '[DONE]').map((e) => e.choices[0].text).join('') : x.json.choices[0].text);
    ok(rs.every((x) => x.status === 200) && texts.every((t, i) => ref[i % 2].text.startsWith(t) && t.length > 10), 'concurrent_8_clients',
       `${Date.now() - t0}ms ${JSON.stringify(texts)}`);
  }
} catch (e) {
  ok(false, 'serve_http_main', e.stack);
} finally {
  await s.stop();
}

// ---- one sequence, no queue: 503 when full, disconnect frees at once ----
{
  const t = await startServer(['-m', STORIES, '--threads', '1', '--max-seqs', '1', '--queue-len', '0', '--ctx', '16384', '--max-tokens', '16000']);
  const long = { prompt: 'Once upon a time', max_tokens: 12000, logit_bias: { 2: -100 } }; // EOS suppressed: runs for seconds
  try {
    // a long stream holds the only sequence
    const req = http.request({ host: '127.0.0.1', port: t.port, method: 'POST', path: '/v1/completions', headers: { 'Content-Type': 'application/json' } });
    req.end(JSON.stringify({ ...long, stream: true }));
    const res = await new Promise((r) => req.on('response', r));
    await new Promise((r) => res.once('data', r));
    const busy = await post(t.port, '/v1/completions', { prompt: 'Hi', max_tokens: 1 });
    ok(busy.status === 503 && busy.headers['retry-after'] && busy.json?.error?.code === 'queue_full', 'queue_full_503_retry_after', busy.body);
    req.destroy(); // client goes away mid-stream
    const t0 = Date.now();
    let next;
    for (let i = 0; i < 50; i++) {
      next = await post(t.port, '/v1/completions', { prompt: 'Hi', max_tokens: 1 });
      if (next.status === 200) break;
      await sleep(20);
    }
    ok(next.status === 200 && Date.now() - t0 < 1500, 'disconnect_frees_sequence', `${next.status} after ${Date.now() - t0}ms`);
    ok(/client-abort|error/.test(t.log()), 'disconnect_logged');
    // a non-streaming request whose client leaves while it generates
    const req2 = http.request({ host: '127.0.0.1', port: t.port, method: 'POST', path: '/v1/completions', headers: { 'Content-Type': 'application/json' } });
    req2.on('error', () => {});
    req2.end(JSON.stringify(long));
    await sleep(300);
    const during = await post(t.port, '/v1/completions', { prompt: 'Hi', max_tokens: 1 });
    req2.destroy();
    const t1 = Date.now();
    for (let i = 0; i < 100; i++) {
      next = await post(t.port, '/v1/completions', { prompt: 'Hi', max_tokens: 1 });
      if (next.status === 200) break;
      await sleep(20);
    }
    ok(during.status === 503 && next.status === 200 && Date.now() - t1 < 2500, 'disconnect_nonstream_frees_sequence', `${during.status} ${next.status} after ${Date.now() - t1}ms`);
  } catch (e) {
    ok(false, 'queue_and_disconnect', e.stack);
  } finally {
    await t.stop();
  }
}

// ---- API key ----
{
  const t = await startServer(['-m', STORIES, '--threads', '1'], { QKVD_API_KEY: 'sekret-key' });
  try {
    let r = await get(t.port, '/v1/models');
    ok(r.status === 401 && r.json?.error?.code === 'invalid_api_key', 'api_key_missing_401', r.body);
    r = await get(t.port, '/v1/models', { Authorization: 'Bearer sekret-kez' });
    ok(r.status === 401, 'api_key_wrong_401');
    r = await get(t.port, '/v1/models', { Authorization: 'Bearer sekret-key' });
    ok(r.status === 200, 'api_key_ok');
    r = await get(t.port, '/health');
    ok(r.status === 200, 'api_key_health_open');
  } finally {
    await t.stop();
  }
}

// ---- CORS ----
{
  const t = await startServer(['-m', STORIES, '--threads', '1', '--cors-origins', 'http://app.example, http://b.example']);
  try {
    let r = await request(t.port, 'OPTIONS', '/v1/chat/completions', undefined,
      { Origin: 'http://app.example', 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'authorization, content-type' });
    ok(r.status === 204 && r.headers['access-control-allow-origin'] === 'http://app.example' &&
       /POST/.test(r.headers['access-control-allow-methods']) && /authorization/.test(r.headers['access-control-allow-headers']), 'cors_preflight', JSON.stringify(r.headers));
    r = await get(t.port, '/v1/models', { Origin: 'http://b.example' });
    ok(r.status === 200 && r.headers['access-control-allow-origin'] === 'http://b.example', 'cors_allowed_origin');
    r = await get(t.port, '/v1/models', { Origin: 'http://evil.example' });
    ok(r.status === 200 && !('access-control-allow-origin' in r.headers), 'cors_other_origin_no_header');
  } finally {
    await t.stop();
  }
  // off by default
  const u = await startServer(['-m', STORIES, '--threads', '1', '--log-format', 'json']);
  try {
    const r = await get(u.port, '/v1/models', { Origin: 'http://app.example' });
    ok(!('access-control-allow-origin' in r.headers), 'cors_off_by_default');
    await sleep(50);
    const line = u.log().split('\n').find((l) => l.includes('"path":"/v1/models"'));
    let j;
    try { j = JSON.parse(line); } catch { j = null; }
    ok(j && j.method === 'GET' && j.status === 200 && typeof j.ms === 'number', 'log_format_json', line);
  } finally {
    await u.stop();
  }
}

// ---- SIGTERM drain: the running stream finishes, new connections refused, exit 0 ----
{
  const t = await startServer(['-m', STORIES, '--threads', '1', '--grace-period', '20']);
  try {
    const p = post(t.port, '/v1/completions', { prompt: 'Once upon a time', max_tokens: 60, temperature: 0, stream: true });
    await sleep(100);
    t.proc.kill('SIGTERM');
    await sleep(100);
    let refused = false;
    try { await get(t.port, '/health'); } catch { refused = true; }
    const r = await p;
    const { events } = sseEvents(r.body);
    const ex = await t.exited;
    ok(r.status === 200 && events[events.length - 1] === '[DONE]' && events.filter((e) => e !== '[DONE]' && e.choices[0].finish_reason === 'length').length === 1,
       'sigterm_drain_finishes_stream', r.body.slice(-200));
    ok(refused, 'sigterm_stops_accepting');
    ok(ex.code === 0, 'sigterm_exit_0', JSON.stringify(ex));
  } catch (e) {
    ok(false, 'sigterm_drain', e.stack);
  } finally {
    await t.stop();
  }
}

// ---- grace period over: the unfinished stream gets an error event, exit 0 ----
{
  const t = await startServer(['-m', STORIES, '--threads', '1', '--grace-period', '0.3', '--ctx', '16384', '--max-tokens', '16000']);
  try {
    const p = post(t.port, '/v1/completions', { prompt: 'Once upon a time', max_tokens: 12000, logit_bias: { 2: -100 }, stream: true });
    const q = post(t.port, '/v1/completions', { prompt: 'Once upon a time', max_tokens: 12000, logit_bias: { 2: -100 } });
    await sleep(200);
    const t0 = Date.now();
    t.proc.kill('SIGTERM');
    const [r, r2] = await Promise.all([p, q]);
    const ex = await t.exited;
    const { events } = sseEvents(r.body);
    const last = events[events.length - 1];
    ok(last?.error?.code === 'shutting_down' && !events.includes('[DONE]'), 'grace_over_stream_error_event', r.body.slice(-300));
    ok(r2.status === 503 && r2.json?.error?.code === 'shutting_down', 'grace_over_nonstream_503', r2.body);
    ok(ex.code === 0 && Date.now() - t0 < 3000, 'grace_over_exit_0', `${JSON.stringify(ex)} after ${Date.now() - t0}ms`);
  } catch (e) {
    ok(false, 'grace_over', e.stack);
  } finally {
    await t.stop();
  }
}

// ---- BPE model (tiny-qwen2, random weights): the same paths with a big vocabulary ----
if (existsSync(QWEN)) {
  const t = await startServer(['-m', QWEN, '--threads', '1', '--model-alias', 'qwen-tiny']);
  try {
    let r = await post(t.port, '/tokenize', { content: 'Hello world, héllo!' });
    const d = await post(t.port, '/detokenize', { tokens: r.json.tokens });
    ok(r.status === 200 && d.json.content === 'Hello world, héllo!', 'bpe_tokenize_roundtrip', d.body);
    r = await post(t.port, '/v1/chat/completions', { model: 'qwen-tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 8, stream: true, stream_options: { include_usage: true } });
    const { events, framingOk } = sseEvents(r.body);
    ok(r.status === 200 && framingOk && events[events.length - 1] === '[DONE]' && events[events.length - 2].usage.completion_tokens <= 8, 'bpe_chat_stream', r.body.slice(0, 300));
    r = await post(t.port, '/v1/embeddings', { input: 'hello' });
    ok(r.status === 200 && r.json.data[0].embedding.length === 64, 'bpe_embeddings');
  } catch (e) {
    ok(false, 'bpe_model', e.stack);
  } finally {
    await t.stop();
  }
} else skip('bpe_model', `${QWEN} not found`);

process.exit(failed() ? 1 : 0);
