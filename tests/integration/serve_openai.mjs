// qkvd serve driven by the official OpenAI Node SDK (major 6, pinned in
// package-lock.json): chat (stream and not), completions, embeddings,
// models.list, and the SDK's error classes for our error envelopes.
import { execSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { ok, skip, failed, startServer, haveShared, STORIES } from './lib/server.mjs';

const here = path.dirname(new URL(import.meta.url).pathname);
if (!haveShared()) {
  skip('serve_openai', `${STORIES} not found (../shared absent)`);
  process.exit(0);
}
if (!existsSync(path.join(here, 'node_modules/openai'))) {
  try {
    execSync(`npm ci --prefix "${here}" --no-audit --no-fund`, { stdio: 'inherit' });
  } catch (e) {
    skip('serve_openai', 'npm ci failed (no registry access?)');
    process.exit(0);
  }
}
const { default: OpenAI } = await import(path.join(here, 'node_modules/openai/index.mjs'));

const s = await startServer(['-m', STORIES, '--threads', '1', '--api-key', 'test-key']);
const client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'test-key', maxRetries: 0, timeout: 30000 });
const messages = [{ role: 'system', content: 'You tell stories.' }, { role: 'user', content: 'Once upon a time' }];
try {
  const models = await client.models.list();
  const ids = [];
  for await (const m of models) ids.push(m.id);
  ok(ids.length === 1 && ids[0] === 'stories260K', 'sdk_models_list', JSON.stringify(ids));
  const m = await client.models.retrieve('stories260K');
  ok(m.id === 'stories260K', 'sdk_models_retrieve');

  const c = await client.chat.completions.create({ model: 'stories260K', messages, max_tokens: 12, temperature: 0 });
  ok(c.choices.length === 1 && typeof c.choices[0].message.content === 'string' && c.choices[0].message.content.length > 0 &&
     c.usage.completion_tokens > 0 && c.usage.total_tokens === c.usage.prompt_tokens + c.usage.completion_tokens, 'sdk_chat', JSON.stringify(c));

  const stream = await client.chat.completions.create({ model: 'stories260K', messages, max_tokens: 12, temperature: 0, stream: true,
    stream_options: { include_usage: true } });
  let text = '', finish = null, usage = null, nChunks = 0;
  for await (const chunk of stream) {
    nChunks++;
    if (chunk.usage) usage = chunk.usage;
    for (const ch of chunk.choices) {
      text += ch.delta?.content ?? '';
      if (ch.finish_reason) finish = ch.finish_reason;
    }
  }
  ok(text === c.choices[0].message.content && finish === c.choices[0].finish_reason && usage?.completion_tokens === c.usage.completion_tokens &&
     nChunks > 3, 'sdk_chat_stream', `${text} | ${c.choices[0].message.content} | ${JSON.stringify(usage)}`);

  // the SDK's stream helper with its own accumulation
  const runner = client.chat.completions.stream({ model: 'stories260K', messages, max_tokens: 12, temperature: 0 });
  const final = await runner.finalChatCompletion();
  ok(final.choices[0].message.content === c.choices[0].message.content, 'sdk_chat_stream_helper');

  const comp = await client.completions.create({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 10, temperature: 0 });
  ok(comp.choices[0].text.startsWith(', there was a little girl') && comp.usage.completion_tokens === 10, 'sdk_completions', JSON.stringify(comp));
  const cs = await client.completions.create({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 10, temperature: 0, stream: true });
  let ctext = '';
  for await (const chunk of cs) ctext += chunk.choices[0]?.text ?? '';
  ok(ctext === comp.choices[0].text, 'sdk_completions_stream', ctext);

  const e = await client.embeddings.create({ model: 'stories260K', input: ['hello', 'world'] });
  ok(e.data.length === 2 && e.data[0].embedding.length === 64 && e.usage.prompt_tokens > 0, 'sdk_embeddings_default_base64');
  const ef = await client.embeddings.create({ model: 'stories260K', input: 'hello', encoding_format: 'float' });
  ok(ef.data[0].embedding.every((x, i) => Math.abs(x - e.data[0].embedding[i]) < 1e-6), 'sdk_embeddings_float_equals_base64');

  const expectError = async (name, cls, fn, check = () => true) => {
    try {
      await fn();
      ok(false, name, 'no error thrown');
    } catch (err) {
      ok(err instanceof cls && check(err), name, `${err?.constructor?.name} ${err?.status} ${err?.message}`);
    }
  };
  await expectError('sdk_error_bad_request', OpenAI.BadRequestError,
    () => client.chat.completions.create({ model: 'stories260K', messages, temperature: 9 }), (err) => err.status === 400 && err.param === 'temperature');
  await expectError('sdk_error_tools_bad_name', OpenAI.BadRequestError,
    () => client.chat.completions.create({ model: 'stories260K', messages, tools: [{ type: 'function', function: { name: 'f g', parameters: {} } }] }),
    (err) => err.param === 'tools[0].function.name');
  await expectError('sdk_error_not_found', OpenAI.NotFoundError,
    () => client.chat.completions.create({ model: 'gpt-4o', messages }), (err) => err.code === 'model_not_found');
  await expectError('sdk_error_context_length', OpenAI.BadRequestError,
    () => client.completions.create({ model: 'stories260K', prompt: Array(3000).fill(403) }), (err) => err.code === 'context_length_exceeded');
  const bad = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'wrong', maxRetries: 0 });
  await expectError('sdk_error_authentication', OpenAI.AuthenticationError, () => bad.models.list());
} catch (e) {
  ok(false, 'serve_openai_main', e.stack);
} finally {
  await s.stop();
}
process.exit(failed() ? 1 : 0);
