#!/usr/bin/env bash
# qkvd serve driven with curl and a raw socket: keep-alive, chunked uploads
# over the body limit, slow clients cut by --conn-timeout, --help, and the
# configuration precedence flag > environment > config file > default.
set -u
ROOT=${QKVD_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${QKVD_BIN:-$ROOT/build/qkvd}
SHARED=${QKVD_SHARED:-$ROOT/../shared}
MODEL=$SHARED/models/stories260K.gguf
if [ ! -f "$MODEL" ]; then echo "skip serve_curl: $MODEL not found (../shared absent)"; exit 0; fi
TMP=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
fails=0
check() { # check NAME CONDITION-EXIT-CODE [detail]
  if [ "$2" -eq 0 ]; then echo "ok $1"; else echo "not ok $1 # ${3:-}"; fails=$((fails + 1)); fi
}

start() { # start [args...]: sets PID and PORT
  "$BIN" serve --host 127.0.0.1 --port 0 --threads 1 "$@" 2>"$TMP/log" &
  PID=$!
  PORT=
  for _ in $(seq 200); do
    grep -q "loaded" "$TMP/log" 2>/dev/null && break
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.05
  done
  PORT=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$TMP/log" | sed 's/.*://')
}
stop() { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; PID=; }

"$BIN" serve --help >"$TMP/help" 2>&1
n=0
for opt in host port model model-alias threads ctx max-seqs batch-tokens api-key max-body max-tokens queue-len \
           request-timeout conn-timeout cors-origins grace-period chat-template-file log-format config; do
  grep -q -- "--$opt" "$TMP/help" || { n=1; echo "# --help lacks --$opt"; }
done
grep -q QKVD_MAX_BODY "$TMP/help" || n=1
check help_lists_every_option $n

"$BIN" serve --port nope -m x >/dev/null 2>"$TMP/err"; rc=$?
[ $rc -eq 2 ] && grep -q -- "--port" "$TMP/err"
check bad_option_value_exit_2 $? "$(cat "$TMP/err")"

# precedence: config file < environment < flag
printf '{"_comment": "test", "model-alias": "from-file", "max_tokens": 7, "model": "%s"}\n' "$MODEL" >"$TMP/cfg.json"
start --config "$TMP/cfg.json"
id=$(curl -s "http://127.0.0.1:$PORT/v1/models" | grep -o '"id":"[^"]*"')
[ "$id" = '"id":"from-file"' ]; check config_file_applies $? "$id"
usage=$(curl -s "http://127.0.0.1:$PORT/v1/chat/completions" -d '{"messages":[{"role":"user","content":"hi"}],"max_tokens":100,"temperature":0,"stop":"zzzz"}')
echo "$usage" | grep -q '"completion_tokens":\(7\|[0-6]\),'; check config_file_max_tokens_cap $? "$usage"
stop
QKVD_MODEL_ALIAS=from-env start --config "$TMP/cfg.json"
id=$(curl -s "http://127.0.0.1:$PORT/v1/models" | grep -o '"id":"[^"]*"')
[ "$id" = '"id":"from-env"' ]; check env_over_config_file $? "$id"
stop
QKVD_MODEL_ALIAS=from-env start --config "$TMP/cfg.json" --model-alias from-flag --max-body 1000 --conn-timeout 1
id=$(curl -s "http://127.0.0.1:$PORT/v1/models" | grep -o '"id":"[^"]*"')
[ "$id" = '"id":"from-flag"' ]; check flag_over_env $? "$id"

# keep-alive: two requests on one connection
curl -sv "http://127.0.0.1:$PORT/health" "http://127.0.0.1:$PORT/health" >"$TMP/out" 2>"$TMP/v"
grep -qi "Re-using existing connection" "$TMP/v"; check keep_alive_reuse $?

# chunked upload over --max-body -> 413
head -c 5000 /dev/zero | tr '\0' 'a' >"$TMP/big"
code=$(curl -s -o "$TMP/out" -w '%{http_code}' -H 'Transfer-Encoding: chunked' -H 'Content-Type: application/json' \
  --data-binary @"$TMP/big" "http://127.0.0.1:$PORT/v1/completions")
[ "$code" = 413 ] && grep -q '"error"' "$TMP/out"; check chunked_body_over_limit_413 $? "$code $(cat "$TMP/out")"

# curl -N streaming: SSE lines arrive and end with [DONE]
curl -sN "http://127.0.0.1:$PORT/v1/chat/completions" -d '{"messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true}' >"$TMP/sse"
tail -c 16 "$TMP/sse" | grep -q 'data: \[DONE\]'; check curl_stream_done $?

# a slow client that never finishes its headers is dropped after --conn-timeout (1s)
start_t=$(date +%s%N)
exec 3<>"/dev/tcp/127.0.0.1/$PORT"
printf 'POST /v1/completions HTTP/1.1\r\nHost: x\r\n' >&3
timeout 5 cat <&3 >/dev/null
elapsed=$(( ($(date +%s%N) - start_t) / 1000000 ))
exec 3>&-
[ "$elapsed" -lt 4000 ]; check slow_client_conn_timeout $? "${elapsed}ms"
curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; check serves_after_slow_client $?
stop

# a template that fails for some conversations: 500 for that request only
cat >"$TMP/tpl.jinja" <<'TPL'
{%- for m in messages -%}
{%- if m.role == 'tool' -%}{{ raise_exception('tool messages are not supported by this template') }}{%- endif -%}
[{{ m.role }}] {{ m.content }}
{% endfor -%}
{%- if add_generation_prompt %}[assistant] {% endif -%}
TPL
start -m "$MODEL" --chat-template-file "$TMP/tpl.jinja" --request-timeout 0.3 --ctx 16384 --max-tokens 16000
out=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$PORT/v1/chat/completions" -d '{"messages":[{"role":"user","content":"a"},{"role":"tool","content":"b"}]}')
echo "$out" | grep -q 'tool messages are not supported' && echo "$out" | grep -q 'template_error.* 500$'
check template_error_500 $? "$out"
out=$(curl -s "http://127.0.0.1:$PORT/apply-template" -d '{"messages":[{"role":"user","content":"a"}]}')
[ "$out" = '{"prompt":"[user] a\n[assistant] "}' ]; check chat_template_file_used $? "$out"
# --request-timeout 0.3: a long generation is cut with finish_reason length
out=$(curl -s "http://127.0.0.1:$PORT/v1/completions" -d '{"prompt":"Once upon a time","max_tokens":12000,"logit_bias":{"2":-100}}')
n=$(echo "$out" | grep -o '"completion_tokens":[0-9]*' | cut -d: -f2)
echo "$out" | grep -q '"finish_reason":"length"' && [ "${n:-0}" -gt 0 ] && [ "${n:-0}" -lt 12000 ]
check request_timeout_cuts_generation $? "$n tokens"
stop

# /health is 503 while the model loads: a FIFO as the model file keeps the
# loader blocked in open() until we open the other end (then loading fails)
mkfifo "$TMP/fifo.gguf"
"$BIN" serve --host 127.0.0.1 --port 0 -m "$TMP/fifo.gguf" 2>"$TMP/log" &
PID=$!
PORT=
for _ in $(seq 100); do
  PORT=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$TMP/log" | sed 's/.*://')
  [ -n "$PORT" ] && break; sleep 0.05
done
out=$(curl -s -i "http://127.0.0.1:$PORT/health")
echo "$out" | grep -q '^HTTP/1.1 503' && echo "$out" | grep -q '{"status":"loading"}' && echo "$out" | grep -qi '^Retry-After'
check health_503_while_loading $? "$out"
out=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$PORT/v1/chat/completions" -d '{"messages":[{"role":"user","content":"hi"}]}')
echo "$out" | grep -q '"code":"model_loading".* 503$'; check chat_503_while_loading $? "$out"
exec 5>"$TMP/fifo.gguf"; exec 5>&-
wait "$PID"; rc=$?; PID=
[ $rc -eq 1 ] && grep -q "cannot load model" "$TMP/log"; check load_failure_exit_1 $? "$rc"

# a missing model file: the listener comes up, loading fails, exit 1 with a message
"$BIN" serve --port 0 -m "$TMP/none.gguf" 2>"$TMP/err" >/dev/null; rc=$?
[ $rc -eq 1 ] && grep -q "cannot load model" "$TMP/err"; check bad_model_exit_1 $? "$rc $(tail -1 "$TMP/err")"

[ $fails -eq 0 ]
