#!/usr/bin/env bash
# `make serve`: start qkvd on 127.0.0.1:8080 with the configured model.
# The model comes from QKVD_MODEL (or MODEL=... on the make command line). With
# none configured, a small demo model with RANDOM weights is created once with
# `qkvd make-model` so the server can be tried at once; its output is noise.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${QKVD_BIN:-$ROOT/build/qkvd}
MODEL=${MODEL:-${QKVD_MODEL:-}}
if [ -z "$MODEL" ]; then
  MODEL=$ROOT/models/demo.gguf
  if [ ! -f "$MODEL" ]; then
    mkdir -p "$ROOT/models"
    "$BIN" make-model -o "$MODEL" --arch llama --dim 256 --layers 4 --heads 8 --kv-heads 2 \
      --ffn 768 --vocab-size 2048 --type q8_0 --seed 1
  fi
  cat >&2 <<TXT
==========================================================================
 qkvd: no model configured, serving the DEMO model $MODEL
 It has RANDOM weights: its answers are noise. To serve a real model:
     make serve MODEL=/path/to/model.gguf
     QKVD_MODEL=/path/to/model.gguf make serve
     $BIN serve --model /path/to/model.gguf
==========================================================================
TXT
fi
exec "$BIN" serve --host "${QKVD_HOST:-127.0.0.1}" --port "${QKVD_PORT:-8080}" --model "$MODEL" "$@"
