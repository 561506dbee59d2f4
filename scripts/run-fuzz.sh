#!/usr/bin/env bash
# Run every built libFuzzer target in build-fuzz/ for SECONDS each (default 60).
# Seed corpora: tests/fuzz/corpus/<name>/ when it exists, plus the target's
# own seeds from ../shared (fuzz_gguf: the shared models and vocab files).
# New inputs go to build-fuzz/corpus/<name>/; crashes to build-fuzz/crashes/.
#   usage: scripts/run-fuzz.sh [SECONDS] [fuzz_name ...]
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SECS=${1:-60}; shift || true
OUT=${FUZZ_BUILD:-build-fuzz}
SHARED=${QKVD_SHARED:-$ROOT/../shared}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in "$OUT"/fuzz_*; do [ -x "$f" ] && targets+=("$(basename "$f")"); done
fi
[ ${#targets[@]} -gt 0 ] || { echo "run-fuzz: nothing built in $OUT (run scripts/build-fuzz.sh)"; exit 1; }
mkdir -p "$OUT/crashes"
status=0
for t in "${targets[@]}"; do
  corpus="$OUT/corpus/$t"; mkdir -p "$corpus"
  seeds=()
  [ -d "tests/fuzz/corpus/$t" ] && seeds+=("tests/fuzz/corpus/$t")
  if [ "$t" = fuzz_gguf ] && [ -d "$SHARED" ]; then
    seeddir="$OUT/seeds/$t"; mkdir -p "$seeddir"
    for g in "$SHARED"/models/*.gguf "$SHARED"/vocab/*.gguf; do
      [ -f "$g" ] && ln -sf "$(readlink -f "$g")" "$seeddir/$(basename "$g")"
    done
    seeds+=("$seeddir")
  fi
  echo "== $t for ${SECS}s (seeds: ${seeds[*]:-none})"
  log="$OUT/$t.log"
  "$OUT/$t" -max_total_time="$SECS" -max_len=${FUZZ_MAX_LEN:-65536} -rss_limit_mb=2048 \
    -artifact_prefix="$OUT/crashes/$t-" -print_final_stats=1 "$corpus" "${seeds[@]}" >"$log" 2>&1
  rc=$?
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss|==[0-9]+==ERROR|SUMMARY|INFO: seed corpus|Done|.*runtime error)' "$log"
  if [ "$rc" -ne 0 ]; then echo "FAIL $t (exit $rc); see $OUT/crashes/"; status=1; else echo "ok $t"; fi
done
exit $status
