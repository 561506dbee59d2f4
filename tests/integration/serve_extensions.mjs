// Vendor extensions of llama-server / vLLM that qkvd honours (ignore_eos,
// include_stop_str_in_output, skip_special_tokens, add_generation_prompt,
// continue_final_message, chat_template_kwargs), and the ones it rejects
// because they would change the output without being implemented.
import { ok, skip, failed, startServer, haveShared, post, STORIES } from './lib/server.mjs';

if (!haveShared()) {
  skip('serve_extensions', `${STORIES} not found (../shared absent)`);
  process.exit(0);
}
const s = await startServer(['-m', STORIES, '--threads', '1']);
const P = s.port;
const EOS = 2, BOS = 1; // stories260K (SentencePiece): <s> = 1, </s> = 2
try {
  const chat = (extra) => post(P, '/v1/chat/completions',
    { messages: [{ role: 'user', content: 'Once upon a time' }], temperature: 0, ...extra });
  const cmpl = (extra) => post(P, '/v1/completions', { prompt: 'Once upon a time', temperature: 0, ...extra });

  // ignore_eos: a +100 bias makes </s> the only choice; ignore_eos bans it anyway.
  let r = await cmpl({ max_tokens: 12, logit_bias: { [EOS]: 100 } });
  ok(r.status === 200 && r.json.choices[0].finish_reason === 'stop' && r.json.usage.completion_tokens === 0,
    'eos_forced_stops_at_once', r.body);
  r = await cmpl({ max_tokens: 12, logit_bias: { [EOS]: 100 }, ignore_eos: true });
  ok(r.status === 200 && r.json.choices[0].finish_reason === 'length' && r.json.usage.completion_tokens === 12,
    'ignore_eos_runs_to_max_tokens', r.body);

  // include_stop_str_in_output: the matched stop string ends the text.
  r = await cmpl({ max_tokens: 24 });
  const full = r.json?.choices?.[0]?.text ?? '';
  const words = full.trim().split(/\s+/);
  const stopWord = words.length > 3 ? ' ' + words[2] : null;
  if (!stopWord) {
    ok(false, 'include_stop_str_setup', full);
  } else {
    const cut = full.indexOf(stopWord);
    r = await cmpl({ max_tokens: 24, stop: [stopWord] });
    ok(r.status === 200 && r.json.choices[0].text === full.slice(0, cut) && r.json.choices[0].finish_reason === 'stop',
      'stop_string_excluded_by_default', JSON.stringify([r.body, full, stopWord]));
    r = await cmpl({ max_tokens: 24, stop: [stopWord], include_stop_str_in_output: true });
    ok(r.status === 200 && r.json.choices[0].text === full.slice(0, cut + stopWord.length),
      'include_stop_str_in_output', JSON.stringify([r.body, full, stopWord]));
  }

  // skip_special_tokens: forcing <s> yields tokens without text by default, "<s>" when false.
  r = await cmpl({ max_tokens: 3, logit_bias: { [BOS]: 100 } });
  ok(r.status === 200 && r.json.choices[0].text === '' && r.json.usage.completion_tokens === 3,
    'special_tokens_skipped_by_default', r.body);
  r = await cmpl({ max_tokens: 3, logit_bias: { [BOS]: 100 }, skip_special_tokens: false });
  ok(r.status === 200 && r.json.choices[0].text === '<s><s><s>', 'skip_special_tokens_false_renders_them', r.body);

  // Chat rendering options, seen through usage.prompt_tokens.
  const base = await chat({ max_tokens: 1 });
  const noGen = await chat({ max_tokens: 1, add_generation_prompt: false });
  ok(base.status === 200 && noGen.status === 200 && noGen.json.usage.prompt_tokens < base.json.usage.prompt_tokens,
    'add_generation_prompt_false_shortens_prompt', base.body + noGen.body);
  const kw = await chat({ max_tokens: 1, chat_template_kwargs: { add_generation_prompt: false } });
  ok(kw.status === 200 && kw.json.usage.prompt_tokens === noGen.json.usage.prompt_tokens,
    'chat_template_kwargs_reach_the_template', kw.body);
  const turns = [{ role: 'user', content: 'Tell me a story.' }, { role: 'assistant', content: 'Once upon a time' }];
  const closed = await post(P, '/v1/chat/completions', { messages: turns, max_tokens: 1, add_generation_prompt: false });
  const cont = await post(P, '/v1/chat/completions', { messages: turns, max_tokens: 1, continue_final_message: true });
  ok(closed.status === 200 && cont.status === 200 && cont.json.usage.prompt_tokens < closed.json.usage.prompt_tokens,
    'continue_final_message_leaves_the_turn_open', closed.body + cont.body);

  // Rejected, each naming its field.
  const expect400 = async (name, body, param, path = '/v1/chat/completions') => {
    const res = await post(P, path, body);
    ok(res.status === 400 && res.json?.error?.param === param && res.json.error.message, name, res.body);
  };
  const msgs = [{ role: 'user', content: 'Hi' }];
  await expect400('typical_p_rejected', { messages: msgs, typical_p: 0.5 }, 'typical_p');
  r = await post(P, '/v1/chat/completions', { messages: msgs, max_tokens: 1, typical_p: 1, mirostat: 0, service_tier: 'auto' });
  ok(r.status === 200, 'neutral_values_accepted', r.body);
  await expect400('mirostat_rejected', { messages: msgs, mirostat: 2 }, 'mirostat');
  await expect400('guided_json_rejected', { messages: msgs, guided_json: { type: 'object' } }, 'guided_json');
  await expect400('samplers_rejected', { messages: msgs, samplers: ['top_k'] }, 'samplers');
  await expect400('beam_search_rejected', { messages: msgs, use_beam_search: true }, 'use_beam_search');
  await expect400('chat_best_of_rejected', { messages: msgs, best_of: 3 }, 'best_of');
  await expect400('reasoning_effort_rejected', { messages: msgs, reasoning_effort: 'low' }, 'reasoning_effort');
  await expect400('service_tier_flex_rejected', { messages: msgs, service_tier: 'flex' }, 'service_tier');
  await expect400('ignore_eos_type', { messages: msgs, ignore_eos: 'yes' }, 'ignore_eos');
  await expect400('template_kwargs_type', { messages: msgs, chat_template_kwargs: [1] }, 'chat_template_kwargs');
  await expect400('continue_needs_assistant_last', { messages: msgs, continue_final_message: true }, 'continue_final_message');
  await expect400('continue_and_generation_prompt', { messages: turns, continue_final_message: true, add_generation_prompt: true },
    'continue_final_message');
  await expect400('template_kwargs_chat_only', { prompt: 'x', chat_template_kwargs: {} }, 'chat_template_kwargs', '/v1/completions');
} finally {
  await s.stop();
}
process.exit(failed() ? 1 : 0);
