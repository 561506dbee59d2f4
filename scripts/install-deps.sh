#!/usr/bin/env bash
# Installs, idempotently, the Debian packages qkvd builds, tests and runs with.
# Works as root; uses sudo otherwise. Nothing else is downloaded.
set -euo pipefail

PKGS=(
  build-essential pkg-config
  libmicrohttpd-dev   # HTTP/1.1 server with suspend/resume
  libuv1-dev          # event loop
  libjansson-dev      # JSON
  libopenblas-dev     # sgemm for batched work
  libcmocka-dev       # unit tests
  libpcre2-dev        # pre-tokenizer regexes (\p{L}, lookahead) for byte-level BPE
  clang               # libFuzzer targets (make fuzz)
  libclang-rt-dev     # sanitizer and fuzzer runtimes for clang
  curl                # integration tests drive the server with raw HTTP
  libcurl4-openssl-dev # qkvd pull: HTTP(S) downloads with Range resume (sha256 is our own)
  nginx               # tests/integration/replicas.sh: load balancer in front of 3 replicas
  chromium            # tests/integration/webui.mjs: headless browser for the chat page
  python3-yaml        # tests/integration/deploy_config.sh: parses deploy/k8s/*.yaml
  prometheus          # tests/integration/metrics.mjs: `promtool check metrics` validates GET /metrics
  gnuplot-nox         # scripts/bench-all, scripts/attention-eval: PNG plots in docs/benchmarks.md, docs/attention.md (never linked)
)

# Node.js drives the integration tests (official openai npm package). Some
# images ship Node from another source with npm bundled; Debian's npm package
# conflicts with that, so only ask for Debian's when the commands are missing.
command -v node >/dev/null 2>&1 || PKGS+=(nodejs)
command -v npm >/dev/null 2>&1 || PKGS+=(npm)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
