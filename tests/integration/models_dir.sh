#!/usr/bin/env bash
# qkvd serve --models-dir: every .gguf listed by /v1/models (aliases from
# --model-aliases), a request naming a model loads it (progress in the log),
# at most --max-loaded-models stay loaded, the least recently used IDLE model
# is unloaded (never one that is generating), requests wait while every
# loaded model is busy; plus --no-webui and SIGTERM drain with the pool.
set -u
ROOT=${QKVD_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${QKVD_BIN:-$ROOT/build/qkvd}
SHARED=${QKVD_SHARED:-$ROOT/../shared}
M=$SHARED/models
if [ ! -f "$M/stories260K.gguf" ] || [ ! -f "$M/tiny-llama-gqa-f16.gguf" ] || [ ! -f "$M/tiny-llama-gqa-q4_0.gguf" ]; then
  echo "skip models_dir: test models not found in $M (../shared absent)"; exit 0
fi
TMP=$(mktemp -d)
PID=
BG=()
cleanup() { for p in "${BG[@]}"; do kill "$p" 2>/dev/null; done; [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
check() { if [ "$2" -eq 0 ]; then echo "ok $1"; else echo "not ok $1 # ${3:-}"; fi; }
mkdir "$TMP/models"
ln -s "$M/stories260K.gguf" "$TMP/models/stories.gguf"
ln -s "$M/tiny-llama-gqa-f16.gguf" "$TMP/models/tiny-f16.gguf"
ln -s "$M/tiny-llama-gqa-q4_0.gguf" "$TMP/models/tiny-q4.gguf"
echo "not a model" >"$TMP/models/README.txt"

"$BIN" serve --models-dir "$TMP/models" --model-aliases "chat=stories" --max-loaded-models 2 \
  --host 127.0.0.1 --port 0 --threads 1 --grace-period 10 2>"$TMP/log" &
PID=$!
for _ in $(seq 100); do grep -q 'models-dir' "$TMP/log" && grep -q listening "$TMP/log" && break; sleep 0.05; done
PORT=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$TMP/log" | sed 's/.*://')
[ -n "$PORT" ]; check models_dir_server_starts $? "$(cat "$TMP/log")"
U=http://127.0.0.1:$PORT
chat() { # chat MODEL MAX_TOKENS [extra json]
  curl -s "$U/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "{\"model\":\"$1\",\"messages\":[{\"role\":\"user\",\"content\":\"Once upon a time\"}],\"max_tokens\":$2${3:-}}"
}
loaded_ids() { curl -s "$U/v1/models" | python3 -c 'import json,sys; print(" ".join(m["id"] for m in json.load(sys.stdin)["data"] if m["meta"]["loaded"]))'; }

ids=$(curl -s "$U/v1/models" | python3 -c 'import json,sys; print(" ".join(m["id"] for m in json.load(sys.stdin)["data"]))')
[ "$ids" = "chat tiny-f16 tiny-q4" ] && [ -z "$(loaded_ids)" ]
check lists_every_gguf_with_alias_none_loaded $? "$ids / loaded: $(loaded_ids)"
code=$(curl -s -o /dev/null -w '%{http_code}' "$U/health"); [ "$code" = 200 ]; check health_ok_before_any_load $? "$code"
code=$(curl -s -o "$TMP/page" -w '%{http_code}' "$U/"); [ "$code" = 200 ] && [ -z "$(loaded_ids)" ]
check chat_page_loads_no_model $? "$code"

r=$(chat chat 5)
echo "$r" | grep -q '"model":"chat"' && grep -q "loading model 'chat' from .*stories.gguf" "$TMP/log" && grep -q "model 'chat' loaded in" "$TMP/log"
check request_loads_named_model $? "$r"
r=$(chat stories 5); echo "$r" | grep -q 'model_not_found'; check aliased_model_answers_to_alias_only $? "$r"
r=$(chat nope 5); echo "$r" | grep -q 'model_not_found'; check unknown_model_404 $? "$r"
r=$(chat tiny-q4 5); echo "$r" | grep -q '"model":"tiny-q4"'; check second_model_loads $? "$r"
[ "$(loaded_ids)" = "chat tiny-q4" ]; check two_loaded $? "$(loaded_ids)"
r=$(chat tiny-f16 5)
echo "$r" | grep -q '"model":"tiny-f16"' && grep -q "model 'chat' unloaded (least recently used" "$TMP/log" && [ "$(loaded_ids)" = "tiny-f16 tiny-q4" ]
check third_model_unloads_lru $? "$r / $(loaded_ids)"

# The least recently used model is busy generating: the other one goes.
NOEOS=',"logit_bias":{"2":-100},"stream":true'
curl -sN "$U/v1/chat/completions" -H 'Content-Type: application/json' \
  -d "{\"model\":\"tiny-f16\",\"messages\":[{\"role\":\"user\",\"content\":\"Go\"}],\"max_tokens\":1200$NOEOS}" >"$TMP/s1" &
BG+=($!); S1=$!
for _ in $(seq 100); do [ -s "$TMP/s1" ] && break; sleep 0.02; done
chat tiny-q4 3 >/dev/null   # tiny-q4 is now the most recent; tiny-f16 the LRU, but busy
r=$(chat chat 5)
wait "$S1"
echo "$r" | grep -q '"model":"chat"' && grep -q "model 'tiny-q4' unloaded (least recently used" "$TMP/log" &&
  ! grep -q "model 'tiny-f16' unloaded" "$TMP/log" && tail -c 20 "$TMP/s1" | grep -q '\[DONE\]'
check busy_model_never_unloaded $? "$r; $(grep unloaded "$TMP/log" | tail -2)"

# Every loaded model busy: a request for a third waits, then is served.
for mdl in chat tiny-f16; do
  curl -sN "$U/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "{\"model\":\"$mdl\",\"messages\":[{\"role\":\"user\",\"content\":\"Go\"}],\"max_tokens\":700$NOEOS}" >"$TMP/b-$mdl" &
  BG+=($!)
done
for _ in $(seq 100); do [ -s "$TMP/b-chat" ] && [ -s "$TMP/b-tiny-f16" ] && break; sleep 0.02; done
r=$(chat tiny-q4 5)
echo "$r" | grep -q '"model":"tiny-q4"' && grep -q "model 'tiny-q4' waits for a loaded model to become idle" "$TMP/log"
check waits_while_all_loaded_busy $? "$r; $(grep -c waits "$TMP/log")"
wait "${BG[@]}"
BG=()

kill -TERM "$PID"; wait "$PID"; rc=$?; PID=
[ $rc -eq 0 ] && grep -q 'drained' "$TMP/log"; check sigterm_drain_with_pool $? "rc=$rc $(tail -2 "$TMP/log")"

# --no-webui (and the environment form of the switch)
"$BIN" serve -m "$M/stories260K.gguf" --no-webui --host 127.0.0.1 --port 0 --threads 1 2>"$TMP/log2" &
PID=$!
for _ in $(seq 100); do grep -q loaded "$TMP/log2" && break; sleep 0.05; done
P2=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$TMP/log2" | sed 's/.*://')
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P2/"); hc=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P2/health")
[ "$code" = 404 ] && [ "$hc" = 200 ]; check no_webui_flag_404 $? "$code $hc"
kill "$PID"; wait "$PID" 2>/dev/null; PID=
QKVD_NO_WEBUI=true "$BIN" serve -m "$M/stories260K.gguf" --host 127.0.0.1 --port 0 --threads 1 2>"$TMP/log3" &
PID=$!
for _ in $(seq 100); do grep -q loaded "$TMP/log3" && break; sleep 0.05; done
P3=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$TMP/log3" | sed 's/.*://')
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P3/"); [ "$code" = 404 ]; check no_webui_env_404 $? "$code"
kill "$PID"; wait "$PID" 2>/dev/null; PID=
"$BIN" serve --models-dir "$TMP/nonexistent" --port 0 2>"$TMP/log4"; rc=$?
[ $rc -ne 0 ] && grep -q "nonexistent" "$TMP/log4"; check bad_models_dir_clear_error $? "rc=$rc $(cat "$TMP/log4")"
exit 0
