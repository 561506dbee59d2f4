#!/usr/bin/env bash
# qkvd run / logprobs / bench / info end to end on the shared models: output
# formats that scripts depend on, greedy text, errors for bad input.
# Prints "ok NAME" / "not ok NAME" / "skip NAME" lines.
set -u
ROOT=${QKVD_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${QKVD_BIN:-$ROOT/build/qkvd}
SHARED=${QKVD_SHARED:-$ROOT/../shared}
M=$SHARED/models/stories260K.gguf
if [ ! -f "$M" ]; then echo "skip cli_model: $M not found"; exit 0; fi
check() { if eval "$2"; then echo "ok $1"; else echo "not ok $1"; fi; }

out=$("$BIN" run -m "$M" -p "Once upon a time" -n 32 2>/tmp/qkvd-run-$$.err)
check run_greedy_text '[ "${out#, there was a little girl named Lily. She loved to play outside in the park.}" != "$out" ]'
check run_stats_line 'grep -q "tok/s" /tmp/qkvd-run-$$.err'
rm -f /tmp/qkvd-run-$$.err

lp=$("$BIN" logprobs -m "$M" --tokens 1,403,407,261 --top 3)
check logprobs_format 'node -e "
const j = JSON.parse(process.argv[1]);
if (Object.keys(j).join() !== \"logprobs\") process.exit(1);
if (j.logprobs.length !== 4) process.exit(1);
for (const e of j.logprobs) {
  if (e.length !== 3) process.exit(1);
  for (let k = 0; k < 3; k++) {
    if (!Number.isInteger(e[k][0]) || !(e[k][1] <= 0)) process.exit(1);
    if (k && e[k][1] > e[k - 1][1]) process.exit(1);
  }
}
// after BOS the reference greedy token is 403 (Once)
if (j.logprobs[0][0][0] !== 403) process.exit(1);
" "$lp"'

bj=$("$BIN" bench -m "$M" -p 16 -n 4 -r 1 -t 1 --json)
check bench_json_format 'node -e "
const j = JSON.parse(process.argv[1]);
const k = Object.keys(j);
if (k.slice(0, 4).join() !== \"model,threads,pp,tg\") process.exit(1);
if (j.threads !== 1 || j.pp.n !== 16 || j.tg.n !== 4) process.exit(1);
if (!(j.pp.tok_s > 0) || !(j.tg.tok_s > 0) || typeof j.pp.std !== \"number\") process.exit(1);
if (Object.keys(j.pp).join() !== \"n,tok_s,std,best\") process.exit(1);
if (!(j.tg.best >= j.tg.tok_s) || !(j.pp.best >= j.pp.tok_s)) process.exit(1);
" "$bj"'

# -s 1,3: both counts run in every repetition; the 3-sequence rate and its
# ratios to the 1-sequence one come with the main object.
bs=$("$BIN" bench -m "$M" -p 0 -n 4 -r 2 -t 1 -s 1,3 --json --no-membw)
check bench_seqs_compare 'node -e "
const j = JSON.parse(process.argv[1]);
if (j.tg_seqs !== 1 || !(j.tg.tok_s > 0)) process.exit(1);
const c = j.tg_seqs_compare;
if (!Array.isArray(c) || c.length !== 1 || c[0].seqs !== 3 || c[0].vs_seqs !== 1) process.exit(1);
if (!(c[0].tok_s > 0) || Math.abs(c[0].ratio_mean - c[0].tok_s / j.tg.tok_s) > 1e-2 * c[0].ratio_mean) process.exit(1);
if (!(c[0].ratio_paired_min <= c[0].ratio_paired_median)) process.exit(1);
" "$bs"'
"$BIN" bench -m "$M" -s 1,0 2>/tmp/qkvd-err-$$ >/dev/null; rc=$?
check bench_seqs_bad '[ $rc -eq 2 ] && grep -q -- "-s" /tmp/qkvd-err-$$'

info=$("$BIN" info -m "$M" --budget 1G)
check info_plan 'echo "$info" | grep -q "KV per token" && echo "$info" | grep -q "blk.0.attn_q.weight" && echo "$info" | grep -q "KV tokens fit"'

"$BIN" run -m /nonexistent.gguf -p x -n 1 2>/tmp/qkvd-err-$$ >/dev/null; rc=$?
check run_missing_model '[ $rc -ne 0 ] && grep -q nonexistent.gguf /tmp/qkvd-err-$$'
"$BIN" logprobs -m "$M" --tokens 1,99999 2>/tmp/qkvd-err-$$ >/dev/null; rc=$?
check logprobs_bad_token '[ $rc -ne 0 ] && grep -q 99999 /tmp/qkvd-err-$$'
rm -f /tmp/qkvd-err-$$
