#!/usr/bin/env bash
# Build every tests/fuzz/fuzz_*.c as a libFuzzer target in build-fuzz/ with
# ASan + UBSan, linked against all engine/ and server/ sources (except
# server/main.c), with the Makefile's include flags and libraries.
#   usage: scripts/build-fuzz.sh [fuzz_name ...]   (default: all targets)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${FUZZ_BUILD:-build-fuzz}
CC=${FUZZ_CC:-clang}
PKGS="openblas libmicrohttpd libuv jansson libpcre2-8 libcurl"
PKG_CFLAGS=$(pkg-config --cflags $PKGS 2>/dev/null || true)
PKG_LIBS=$(pkg-config --libs $PKGS 2>/dev/null || true)
SAN="-fsanitize=fuzzer,address,undefined"
CFLAGS="-g -O1 -std=gnu11 -fno-strict-aliasing -D_GNU_SOURCE -fno-omit-frame-pointer \
  -fno-sanitize-recover=undefined -Iengine -Iserver $PKG_CFLAGS"
AVX2="-mavx2 -mfma -mf16c"
AVX512="-mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni"

command -v "$CC" >/dev/null || { echo "build-fuzz: $CC not found" >&2; exit 1; }
mkdir -p "$OUT/obj"

# Library objects: -fsanitize=fuzzer-no-link so they are instrumented for
# coverage but carry no main(). Rebuilt only when the source is newer.
objs=()
for src in engine/*.c engine/*/*.c server/*.c server/*/*.c; do
  [ -f "$src" ] || continue
  [ "$src" = server/main.c ] && continue
  obj="$OUT/obj/${src//\//_}"; obj="${obj%.c}.o"
  extra=""
  case "$src" in *_avx2.c) extra=$AVX2 ;; *_avx512.c) extra=$AVX512 ;; esac
  if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ -n "$(find engine server -name '*.h' -newer "$obj" -print -quit)" ]; then
    echo "CC $src"
    # shellcheck disable=SC2086
    if ! $CC $CFLAGS $extra -fsanitize=fuzzer-no-link,address,undefined -c "$src" -o "$obj" 2>"$OUT/obj/cc.log"; then
      # A file clang cannot compile (e.g. a gcc-only builtin argument) is built
      # with gcc, uninstrumented, so the targets that merely link it still build.
      echo "build-fuzz: $CC failed on $src; using gcc without instrumentation:" >&2
      head -3 "$OUT/obj/cc.log" >&2
      gcc -g -O1 -std=gnu11 -fno-strict-aliasing -D_GNU_SOURCE -Iengine -Iserver $PKG_CFLAGS $extra -c "$src" -o "$obj"
    fi
  fi
  objs+=("$obj")
done

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in tests/fuzz/fuzz_*.c; do [ -f "$f" ] && targets+=("$(basename "${f%.c}")"); done
fi
[ ${#targets[@]} -gt 0 ] || { echo "build-fuzz: no tests/fuzz/fuzz_*.c"; exit 0; }
for t in "${targets[@]}"; do
  echo "LINK $OUT/$t"
  # shellcheck disable=SC2086
  $CC $CFLAGS $SAN "tests/fuzz/$t.c" "${objs[@]}" -o "$OUT/$t" $PKG_LIBS -lm -lpthread
done
echo "build-fuzz: built ${targets[*]} in $OUT/"
