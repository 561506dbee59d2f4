#!/usr/bin/env bash
# Three `qkvd serve` replicas behind Debian's nginx running deploy/nginx/qkvd.conf
# (its upstream addresses swapped for the replicas' ephemeral ports), all on
# 127.0.0.1. lib/replica_load.mjs then drives the load: session stickiness,
# a replica drained with SIGTERM mid-run, another killed with SIGKILL mid-run,
# and checks that every request completed or failed before any token (and was
# retried by nginx). Each replica has its own --model-alias, so the `model`
# field of a reply names the replica that produced it.
set -u
ROOT=${QKVD_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${QKVD_BIN:-$ROOT/build/qkvd}
SHARED=${QKVD_SHARED:-$ROOT/../shared}
MODEL=$SHARED/models/stories260K.gguf
if [ ! -f "$MODEL" ]; then echo "skip replicas: $MODEL not found (../shared absent)"; exit 0; fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ ! -x "$NGINX" ]; then echo "skip replicas: nginx not installed (scripts/install-deps.sh)"; exit 0; fi
TMP=$(mktemp -d)
chmod 0755 "$TMP" # nginx workers may run as another user
PIDS=()
NGINX_PID=
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  [ -n "$NGINX_PID" ] && kill -QUIT "$NGINX_PID" 2>/dev/null && sleep 0.2 && kill -9 "$NGINX_PID" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }

PORTS=()
for i in 1 2 3; do
  "$BIN" serve -m "$MODEL" --host 127.0.0.1 --port 0 --threads 1 --model-alias "replica-$i" \
    --grace-period 5 --max-seqs 4 --queue-len 32 2>"$TMP/replica-$i.log" &
  PIDS+=($!)
  disown $! # the test kills replicas on purpose: no job-control noise
done
for i in 1 2 3; do
  for _ in $(seq 200); do grep -q loaded "$TMP/replica-$i.log" && break; sleep 0.05; done
  p=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$TMP/replica-$i.log" | sed 's/.*://')
  if [ -z "$p" ] || ! grep -q loaded "$TMP/replica-$i.log"; then
    echo "not ok replicas_start # replica $i: $(tail -3 "$TMP/replica-$i.log")"; exit 1
  fi
  PORTS+=("$p")
done
echo "ok replicas_start"

NPORT=$(free_port)
# The shipped config, with the example upstream addresses and listen port replaced.
sed -e "s/10\.0\.0\.11:8080/127.0.0.1:${PORTS[0]}/; s/10\.0\.0\.12:8080/127.0.0.1:${PORTS[1]}/; s/10\.0\.0\.13:8080/127.0.0.1:${PORTS[2]}/" \
    -e "s/^\( *\)listen 8080;/\1listen 127.0.0.1:$NPORT;/" "$ROOT/deploy/nginx/qkvd.conf" >"$TMP/qkvd.conf"
n_sub=$(grep -c "server 127.0.0.1:" "$TMP/qkvd.conf")
cat >"$TMP/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/error.log notice;
events { worker_connections 512; }
http {
    log_format upstreams '\$request_method \$request_uri \$status up=\$upstream_addr ups=\$upstream_status sid=\$http_x_session_id';
    access_log $TMP/access.log upstreams;
    client_body_temp_path $TMP/body;
    proxy_temp_path $TMP/proxy;
    fastcgi_temp_path $TMP/fastcgi;
    uwsgi_temp_path $TMP/uwsgi;
    scgi_temp_path $TMP/scgi;
    include $TMP/qkvd.conf;
}
CONF
"$NGINX" -t -p "$TMP" -e "$TMP/error.log" -c "$TMP/nginx.conf" >"$TMP/nginx-t.log" 2>&1
rc=$?
[ $rc -eq 0 ] && [ "$n_sub" -eq 6 ]
if [ $? -ne 0 ]; then echo "not ok nginx_config_valid # $n_sub servers; $(cat "$TMP/nginx-t.log")"; exit 1; fi
echo "ok nginx_config_valid"
"$NGINX" -p "$TMP" -e "$TMP/error.log" -c "$TMP/nginx.conf" 2>>"$TMP/error.log" &
NGINX_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$NPORT/nginx-health" && break; sleep 0.05; done

QKVD_NGINX_URL="http://127.0.0.1:$NPORT" QKVD_REPLICA_PIDS="${PIDS[*]}" QKVD_REPLICA_PORTS="${PORTS[*]}" \
QKVD_NGINX_ACCESS_LOG="$TMP/access.log" \
  node "$ROOT/tests/integration/lib/replica_load.mjs"
rc=$?
if [ $rc -ne 0 ]; then
  echo "# nginx error log:"; tail -5 "$TMP/error.log" | sed 's/^/#   /'
fi
exit $rc
