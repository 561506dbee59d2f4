#!/usr/bin/env bash
# CI hook for scripts/container-check: proves the Dockerfile's build, runtime
# libraries, user, environment, health check and SIGTERM drain without a
# container engine. Reuses the build tree the test run has just built (the
# directory of $QKVD_BIN), so only `make install` runs again.
set -u
ROOT=${QKVD_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
args=()
if [ -n "${QKVD_BIN:-}" ] && [ -x "$QKVD_BIN" ]; then args+=(--build-dir "$(cd "$(dirname "$QKVD_BIN")" && pwd)"); fi
MODEL=${QKVD_SHARED:-$ROOT/../shared}/models/stories260K.gguf
[ -f "$MODEL" ] && args+=(--model "$MODEL")
bash "$ROOT/scripts/container-check" "${args[@]}"
