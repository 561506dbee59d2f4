#!/usr/bin/env bash
# Attention kinds end to end (docs/attention.md): every kind selectable per
# request and by config, mixed-kind batches equal the same requests alone,
# 400s naming bad parameters, /v1/models lists the kinds, NBCE over HTTP
# (one context == plain decoding), qkvd ppl's JSON, and KV memory: window
# bounded by sinks + window, hwfa by windows + one full layer, linear holds no KV.
set -u
ROOT=${QKVD_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${QKVD_BIN:-$ROOT/build/qkvd}
SHARED=${QKVD_SHARED:-$ROOT/../shared}
MODEL=$SHARED/models/stories260K.gguf
if [ ! -f "$MODEL" ]; then echo "skip attention: $MODEL not found (../shared absent)"; exit 0; fi
TMP=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
check() { if [ "$2" -eq 0 ]; then echo "ok $1"; else echo "not ok $1 # ${3:-}"; fi; }

start() {
  "$BIN" serve -m "$MODEL" --host 127.0.0.1 --port 0 --threads 2 --max-seqs 16 --ctx 1024 "$@" 2>"$TMP/log" &
  PID=$!
  for _ in $(seq 200); do
    grep -q "loaded" "$TMP/log" 2>/dev/null && break
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.05
  done
  PORT=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$TMP/log" | sed 's/.*://')
}
stop() { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; PID=; }
post() { curl -s "http://127.0.0.1:$PORT/v1/completions" -H 'content-type: application/json' -d "$1"; }
text() { node -e 'const j=JSON.parse(require("fs").readFileSync(0,"utf8")); if(!j.choices) {console.log("ERROR " + JSON.stringify(j)); process.exit(0);} process.stdout.write(j.choices[0].text)'; }

PROMPT='Once upon a time, there was a little girl named Lily. She had a big red ball. One day'
KINDS=('{"kind":"softmax"}' '{"kind":"window","window":12,"sinks":2}' '{"kind":"rerope","window":8}'
       '{"kind":"leaky-rerope","window":8,"leak":4}' '{"kind":"logn"}' '{"kind":"hwfa","window":10}'
       '{"kind":"linear"}' '{"kind":"softmax","rope_scaling":"yarn","rope_factor":4}')
body() { printf '{"prompt":"%s","max_tokens":40,"temperature":0,"attention":%s}' "$PROMPT" "$1"; }

start
# Alone, one after the other.
ok=0
for i in "${!KINDS[@]}"; do
  post "$(body "${KINDS[$i]}")" | text >"$TMP/alone.$i"
  grep -q '^ERROR' "$TMP/alone.$i" && { ok=1; echo "# ${KINDS[$i]}: $(cat "$TMP/alone.$i")"; }
  [ -s "$TMP/alone.$i" ] || ok=1
done
check kinds_selectable_per_request $ok
# The kinds really differ from softmax (window and linear at least).
cmp -s "$TMP/alone.0" "$TMP/alone.1" && cmp -s "$TMP/alone.0" "$TMP/alone.6"; r=$?
check kinds_change_output $([ $r -ne 0 ] && echo 0 || echo 1)
# All together (one batch), twice.
ok=0
for round in 1 2; do
  pids=()
  for i in "${!KINDS[@]}"; do post "$(body "${KINDS[$i]}")" | text >"$TMP/mixed.$i" & pids+=($!); done
  wait "${pids[@]}"
  for i in "${!KINDS[@]}"; do
    cmp -s "$TMP/alone.$i" "$TMP/mixed.$i" || { ok=1; echo "# ${KINDS[$i]} mixed: $(cat "$TMP/mixed.$i") / alone: $(cat "$TMP/alone.$i")"; }
  done
done
check mixed_kind_batch_equals_alone $ok

# 400s naming the bad parameter.
ok=0
for case in 'window":0}|attention.window' 'leak":0.5}|attention.leak' 'wndow":3}|attention.wndow'; do
  field=${case%%|*}; want=${case##*|}
  got=$(post "{\"prompt\":\"x\",\"attention\":{\"kind\":\"window\",\"$field}" | node -e 'const j=JSON.parse(require("fs").readFileSync(0,"utf8")); console.log(j.error ? j.error.param : "none")')
  [ "$got" = "$want" ] || { ok=1; echo "# $field -> $got, want $want"; }
done
got=$(post '{"prompt":"x","attention":{"kind":"flash"}}' | node -e 'const j=JSON.parse(require("fs").readFileSync(0,"utf8")); console.log(j.error.param)')
[ "$got" = "attention.kind" ] || ok=1
check bad_attention_400_names_param $ok

curl -s "http://127.0.0.1:$PORT/v1/models" >"$TMP/models"
node -e 'const j=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")); const a=j.data[0].meta.attention;
if (a.kinds.join()!=="softmax,window,rerope,leaky-rerope,logn,hwfa,linear" || a.default.kind!=="softmax" || !a.rope_scaling.includes("yarn")) process.exit(1)' "$TMP/models"
check models_lists_kinds $?

# NBCE: one context == plain decoding of context + blank line + prompt.
CTX='Tom had a small blue boat.'
post "{\"prompt\":\"$CTX\\n\\n$PROMPT\",\"max_tokens\":30,\"temperature\":0}" | text >"$TMP/plain"
post "{\"prompt\":\"$PROMPT\",\"max_tokens\":30,\"temperature\":0,\"context_mode\":\"nbce\",\"contexts\":[\"$CTX\"]}" | text >"$TMP/nbce1"
cmp -s "$TMP/plain" "$TMP/nbce1" && [ -s "$TMP/plain" ]
check nbce_one_context_equals_plain $? "$(cat "$TMP/plain") / $(cat "$TMP/nbce1")"
post "{\"prompt\":\"$PROMPT\",\"max_tokens\":30,\"temperature\":0,\"context_mode\":\"nbce\",\"contexts\":[\"$CTX\",\"Sue liked cats.\",\"The sky was blue.\"],\"nbce_pool\":\"mean\"}" | text >"$TMP/nbce3"
[ -s "$TMP/nbce3" ] && ! grep -q ERROR "$TMP/nbce3"
check nbce_three_contexts $?
# Automatic split of a prompt longer than the context (ctx 1024 here).
LONG=$(for i in $(seq 90); do printf 'Tom had a small blue boat. He liked to sail it on the lake. '; done)
post "{\"prompt\":\"$LONG\\n\\n$PROMPT\",\"max_tokens\":20,\"temperature\":0,\"context_mode\":\"nbce\"}" >"$TMP/auto"
node -e 'const j=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")); if(!j.choices || !j.choices[0].text || j.usage.prompt_tokens <= 1024) process.exit(1)' "$TMP/auto"
check nbce_automatic_split $? "$(head -c 300 "$TMP/auto")"
curl -sN "http://127.0.0.1:$PORT/v1/completions" -H 'content-type: application/json' \
  -d "{\"prompt\":\"$PROMPT\",\"max_tokens\":10,\"stream\":true,\"context_mode\":\"nbce\",\"contexts\":[\"$CTX\",\"Sue liked cats.\"]}" >"$TMP/sse"
grep -q '"index":0' "$TMP/sse" && ! grep -q '"index":1' "$TMP/sse" && grep -q 'data: \[DONE\]' "$TMP/sse"
check nbce_stream_one_choice $?
stop

# By config: the server default kind applies to requests without "attention"
# (each kind of KINDS above, set by flags / environment).
CFGS=("" "--attention window --attention-window 12 --attention-sinks 2" "--attention rerope --attention-window 8"
      "--attention leaky-rerope --attention-window 8 --attention-leak 4" "--attention logn"
      "--attention hwfa --attention-window 10" "--attention linear" "--rope-scaling yarn --rope-factor 4")
ok=0
for i in "${!CFGS[@]}"; do
  # shellcheck disable=SC2086
  start ${CFGS[$i]}
  post "{\"prompt\":\"$PROMPT\",\"max_tokens\":40,\"temperature\":0}" | text >"$TMP/cfg.$i"
  if ! cmp -s "$TMP/cfg.$i" "$TMP/alone.$i" || grep -q ERROR "$TMP/cfg.$i"; then ok=1; echo "# config ${CFGS[$i]}: $(cat "$TMP/cfg.$i")"; fi
  stop
done
check every_kind_by_config_flags $ok
QKVD_ATTENTION=window QKVD_ATTENTION_WINDOW=12 QKVD_ATTENTION_SINKS=2 start
post "{\"prompt\":\"$PROMPT\",\"max_tokens\":40,\"temperature\":0}" | text >"$TMP/cfg.window"
cmp -s "$TMP/cfg.window" "$TMP/alone.1" && ! grep -q ERROR "$TMP/cfg.window"
check kind_by_config_env $?
post "$(body '{"kind":"softmax"}')" | text >"$TMP/cfg.soft"
cmp -s "$TMP/cfg.soft" "$TMP/alone.0" && ! grep -q ERROR "$TMP/cfg.soft"
check request_overrides_config $?
stop
echo '{"attention": "linear"}' >"$TMP/cfg.json"
start --config "$TMP/cfg.json"
post "{\"prompt\":\"$PROMPT\",\"max_tokens\":40,\"temperature\":0}" | text >"$TMP/cfg.linear"
cmp -s "$TMP/cfg.linear" "$TMP/alone.6" && ! grep -q ERROR "$TMP/cfg.linear"
check kind_by_config_file $?
stop
"$BIN" serve --attention flash -m "$MODEL" 2>"$TMP/err" >/dev/null; r=$?
[ $r -ne 0 ] && grep -q "attention" "$TMP/err"
check bad_config_kind_rejected $?

# qkvd ppl: JSON shape; window == softmax when it covers the text; KV bounds.
for i in $(seq 200); do printf 'Lily and Tom went to the park. They played with a ball and saw a big dog. '; done >"$TMP/text"
"$BIN" ppl -m "$MODEL" -f "$TMP/text" --ctx 1024 --json --buckets 4 >"$TMP/ppl.soft"
node -e 'const j=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8"));
if (Object.keys(j).join()!=="tokens,ppl,buckets" || j.tokens!==1024 || !(j.ppl>1) || j.buckets.length!==4) process.exit(1);
for (const b of j.buckets) if (Object.keys(b).join()!=="from,to,ppl" || !(b.ppl>0)) process.exit(1);
if (j.buckets[0].from!==1 || j.buckets[3].to!==1024) process.exit(1)' "$TMP/ppl.soft"
check ppl_json_format $?
"$BIN" ppl -m "$MODEL" -f "$TMP/text" --ctx 1024 --json --buckets 4 --attention window --window 1024 --sinks 0 >"$TMP/ppl.win"
node -e 'const a=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")), b=JSON.parse(require("fs").readFileSync(process.argv[2],"utf8"));
if (Math.abs(a.ppl-b.ppl) > 1e-4*a.ppl) process.exit(1)' "$TMP/ppl.soft" "$TMP/ppl.win"
check ppl_covering_window_equals_softmax $?
# KV held at 4096 tokens: window 64 + 4 sinks keeps ~68 positions (+ partial blocks).
"$BIN" ppl -m "$MODEL" -f "$TMP/text" --ctx 4096 --attention window --window 64 --sinks 4 --stats --json 2>"$TMP/st.win" >/dev/null
"$BIN" ppl -m "$MODEL" -f "$TMP/text" --ctx 4096 --attention linear --stats --json 2>"$TMP/st.lin" >/dev/null
"$BIN" ppl -m "$MODEL" -f "$TMP/text" --ctx 4096 --attention hwfa --window 64 --sinks 4 --stats --json 2>"$TMP/st.hw" >/dev/null
"$BIN" ppl -m "$MODEL" -f "$TMP/text" --ctx 4096 --stats --json 2>"$TMP/st.soft" >/dev/null
node -e 'const f=p=>JSON.parse(require("fs").readFileSync(p,"utf8").split("\n").find(l=>l.startsWith("stats: ")).slice(7));
const w=f(process.argv[1]), l=f(process.argv[2]), s=f(process.argv[3]), h=f(process.argv[4]);
console.log("# KV bytes at " + s.tokens + " tokens: softmax " + s.kv_bytes + ", window 64+4 " + w.kv_bytes + ", hwfa 64+4 " + h.kv_bytes + " (+" + h.state_bytes + " last layer), linear " + l.kv_bytes + " (+" + l.state_bytes + " state)");
const bound = (64 + 4 + 2 * 16 + 16) * w.kv_bytes_per_token, layer = s.kv_bytes_per_token / 5; /* stories260K: 5 layers */
if (!(w.kv_bytes <= bound) || l.kv_bytes !== 0 || !(l.state_bytes > 0) || !(s.kv_bytes >= 4096 * s.kv_bytes_per_token)) process.exit(1);
if (!(h.kv_bytes <= bound) || !(h.state_bytes >= 4096 * layer) || !(h.state_bytes <= 2 * 4096 * layer)) process.exit(1)' "$TMP/st.win" "$TMP/st.lin" "$TMP/st.soft" "$TMP/st.hw"
check kv_window_bounded_linear_none $?
