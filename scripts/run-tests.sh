#!/usr/bin/env bash
# Runs every test and ends with one line: "N passed, M failed".
#   unit:        every $BUILD/tests/test_* (cmocka); counts its test cases.
#   integration: every tests/integration/*.sh and *.mjs (unless QKVD_UNIT_ONLY=1);
#                a script prints "ok NAME" / "not ok NAME" lines (TAP-like), counted too.
# Tests read ../shared (models, references) and skip, saying so, when it is absent.
set -u
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export QKVD_SHARED=${QKVD_SHARED:-$ROOT/../shared}
export QKVD_BIN=${QKVD_BIN:-$ROOT/$BUILD/qkvd}
export QKVD_ROOT=$ROOT
cd "$ROOT"
passed=0; failed=0; skipped=0
log=$(mktemp); trap 'rm -f "$log"' EXIT

count_cmocka() { # $1 = log file, $2 = binary exit code, $3 = name
  local p f s
  p=$(grep -E '^\[  PASSED  \] [0-9]+ test' "$1" | awk '{s+=$4} END{print s+0}')
  f=$(grep -E '^\[  FAILED  \] [0-9]+ test' "$1" | awk '{s+=$4} END{print s+0}')
  s=$(grep -E '^\[  SKIPPED \] [0-9]+ test' "$1" | awk '{s+=$4} END{print s+0}')
  if [ "$2" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "FAIL $3: exited $2"; fi
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
}

for t in "$BUILD"/tests/test_*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  echo "== unit: $name"
  timeout 600 "$t" >"$log" 2>&1; rc=$?
  grep -E '^\[ +(FAILED|SKIPPED|ERROR) +\]|skip|FAIL|error' "$log" | head -40
  count_cmocka "$log" "$rc" "$name"
done

if [ "${QKVD_UNIT_ONLY:-0}" != 1 ]; then
  for t in tests/integration/*.sh tests/integration/*.mjs; do
    [ -f "$t" ] || continue
    echo "== integration: $t"
    case "$t" in
      *.sh)  timeout 900 bash "$t" >"$log" 2>&1; rc=$? ;;
      *.mjs) timeout 900 node "$t" >"$log" 2>&1; rc=$? ;;
    esac
    grep -E '^(not ok|skip|# )' "$log" | head -40
    p=$(grep -cE '^ok ' "$log"); f=$(grep -cE '^not ok ' "$log"); s=$(grep -cE '^skip ' "$log")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "FAIL $t: exited $rc"; tail -20 "$log"; fi
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
  done
fi

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
