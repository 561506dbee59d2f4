#!/usr/bin/env bash
# scripts/bench-serve against the real server (stories260K): it starts a
# server itself (--model) or targets one (--url), every request completes,
# token counts add up (EOS banned: each request generates --max-tokens), the
# JSON has every figure, the table prints, bad options exit 2.
set -u
ROOT=${QKVD_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${QKVD_BIN:-$ROOT/build/qkvd}
SHARED=${QKVD_SHARED:-$ROOT/../shared}
MODEL=$SHARED/models/stories260K.gguf
BENCH=$ROOT/scripts/bench-serve
if [ ! -f "$MODEL" ]; then echo "skip bench_serve: $MODEL not found (../shared absent)"; exit 0; fi
TMP=$(mktemp -d)
SPID=
cleanup() { [ -n "$SPID" ] && kill "$SPID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
check() { if [ "$2" -eq 0 ]; then echo "ok $1"; else echo "not ok $1 # $3"; fi; }

# 1. it starts the server; 3 clients, 6 requests, EOS (id 2) banned
"$BENCH" --model "$MODEL" --qkvd "$BIN" --threads 1 -c 3 -n 6 --prompt-lens 8,40 --max-tokens 12 --ban-token 2 \
  --system-prompt-len 20 --session-key --json >"$TMP/a.json" 2>"$TMP/a.err"
rc=$?
python3 - "$TMP/a.json" <<'PY' >"$TMP/a.chk" 2>&1
import json, sys
d = json.load(open(sys.argv[1]))
m, r = d['median'], d['rounds'][0]
assert r['ok'] == 6 and r['failed'] == 0, r
assert r['generated_tokens'] == 6 * 12, r['generated_tokens']
# prompts: 20 shared + 8 or 40 tokens, in turn (the server may add a BOS)
assert 6 * 20 + 3 * 8 + 3 * 40 <= r['prompt_tokens'] <= 6 * 20 + 3 * 8 + 3 * 40 + 6, r['prompt_tokens']
for k in ('gen_tok_per_s', 'req_per_s', 'ttft_p50_s', 'ttft_p99_s', 'itl_p50_s', 'itl_p99_s', 'e2e_p50_s'):
    assert isinstance(m[k], (int, float)) and m[k] >= 0, k
assert m['ttft_p50_s'] <= m['ttft_p99_s'] and m['itl_p50_s'] <= m['itl_p99_s']
assert r['server'] and r['server']['generation_tokens_total'] == 6 * 12, r['server']
PY
[ $rc -eq 0 ] && [ ! -s "$TMP/a.chk" ]; check bench_serve_starts_server_json $? "rc $rc: $(cat "$TMP/a.chk" "$TMP/a.err" | tail -5)"

# 2. against a running server (--url), table output, 2 rounds
"$BIN" serve -m "$MODEL" --host 127.0.0.1 --port 0 --threads 1 2>"$TMP/s.log" &
SPID=$!
for _ in $(seq 200); do grep -q loaded "$TMP/s.log" && break; sleep 0.05; done
PORT=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$TMP/s.log" | sed 's/.*://')
"$BENCH" --url "http://127.0.0.1:$PORT" -c 2 -n 4 --max-tokens 6 --ignore-eos -r 2 --warmup 0 >"$TMP/b.txt" 2>&1
rc=$?
grep -q '^| generated tokens/s | [0-9]' "$TMP/b.txt" && grep -q '^| TTFT p50 / p99 (ms) | [0-9]' "$TMP/b.txt" &&
  grep -q '^| requests ok / failed | 8 / 0 |' "$TMP/b.txt"
check bench_serve_url_table $(( rc | $? )) "$(cat "$TMP/b.txt")"

# 2b. --duration: clients keep starting requests until the time is up
"$BENCH" --url "http://127.0.0.1:$PORT" -c 2 -d 1 --max-tokens 4 --warmup 0 --json >"$TMP/e.json" 2>&1
rc=$?
python3 -c '
import json, sys
d = json.load(open(sys.argv[1])); r = d["rounds"][0]
assert d["config"]["duration_s"] == 1 and r["requests"] > 0 and r["ok"] == r["requests"] and r["wall_s"] >= 1.0, r
' "$TMP/e.json" >"$TMP/e.chk" 2>&1
check bench_serve_duration $(( rc | $? )) "$(cat "$TMP/e.chk") $(head -c 300 "$TMP/e.json")"

# 3. bad options
"$BENCH" --url http://127.0.0.1:1 --clients x >/dev/null 2>"$TMP/c.err"; rc=$?
[ $rc -eq 2 ] && grep -q -- '--clients' "$TMP/c.err"; check bench_serve_bad_option_exit_2 $? "rc $rc $(cat "$TMP/c.err")"
"$BENCH" -c 2 >/dev/null 2>"$TMP/d.err"; rc=$?
[ $rc -eq 2 ] && grep -q -- '--url' "$TMP/d.err"; check bench_serve_needs_a_target $? "rc $rc $(cat "$TMP/d.err")"
