#!/usr/bin/env bash
# qkvd pull against a local Range-capable HTTP server on 127.0.0.1
# (lib/range_server.mjs): whole download with --sha256, checksum mismatch,
# HTTP errors, an interrupted transfer resumed by a second run and by the
# built-in retry, a server without Range support, a stale .part, redirects,
# and the progress bar on a terminal only.
set -u
ROOT=${QKVD_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${QKVD_BIN:-$ROOT/build/qkvd}
case $BIN in /*) ;; *) BIN=$PWD/$BIN ;; esac
SHARED=${QKVD_SHARED:-$ROOT/../shared}
TMP=$(mktemp -d)
SPID=
cleanup() { [ -n "$SPID" ] && kill "$SPID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
check() { # check NAME EXIT-CODE [detail]
  if [ "$2" -eq 0 ]; then echo "ok $1"; else echo "not ok $1 # ${3:-}"; fi
}

mkdir -p "$TMP/srv" "$TMP/out"
# The served "model": the shared stories model when present (the pulled copy
# must then load), else 3 MiB of random bytes.
if [ -f "$SHARED/models/stories260K.gguf" ]; then
  cp "$SHARED/models/stories260K.gguf" "$TMP/srv/m.gguf"
else
  head -c 3145728 /dev/urandom >"$TMP/srv/m.gguf"
fi
SIZE=$(stat -c %s "$TMP/srv/m.gguf")
SUM=$(sha256sum "$TMP/srv/m.gguf" | cut -d' ' -f1)
HALF=$((SIZE / 2))

node "$ROOT/tests/integration/lib/range_server.mjs" "$TMP/srv" >"$TMP/srvlog" 2>&1 &
SPID=$!
for _ in $(seq 100); do grep -q '^PORT ' "$TMP/srvlog" && break; sleep 0.05; done
PORT=$(sed -n 's/^PORT //p' "$TMP/srvlog")
[ -n "$PORT" ]; check range_server_started $? "$(cat "$TMP/srvlog")"
U=http://127.0.0.1:$PORT

# 1. whole file, checksum checked, default name from the URL, no .part left
( cd "$TMP/out" && "$BIN" pull "$U/files/m.gguf" --sha256 "$SUM" ) >"$TMP/o1" 2>&1; rc=$?
[ $rc -eq 0 ] && cmp -s "$TMP/srv/m.gguf" "$TMP/out/m.gguf" && [ ! -e "$TMP/out/m.gguf.part" ] && grep -q 'sha256 ok' "$TMP/o1"
check pull_whole_file_sha256_ok $? "rc=$rc $(cat "$TMP/o1")"
if [ -f "$SHARED/models/stories260K.gguf" ]; then
  "$BIN" info -m "$TMP/out/m.gguf" --no-tensors >/dev/null 2>&1
  check pulled_model_loads $?
fi
# not a tty: no progress bar escape sequences
! grep -q $'\r' "$TMP/o1"; check no_progress_bar_off_terminal $?

# 2. existing file with the right checksum: nothing downloaded
n_before=$(grep -c '^GET' "$TMP/srvlog")
( cd "$TMP/out" && "$BIN" pull "$U/files/m.gguf" --sha256 "$SUM" ) >"$TMP/o2" 2>&1; rc=$?
[ $rc -eq 0 ] && [ "$(grep -c '^GET' "$TMP/srvlog")" -eq "$n_before" ] && grep -q 'already present' "$TMP/o2"
check existing_file_verified_not_downloaded $? "$(cat "$TMP/o2")"

# 3. checksum mismatch: exit 1, says so, neither file nor .part left
BAD=0000000000000000000000000000000000000000000000000000000000000000
"$BIN" pull "$U/files/m.gguf" -o "$TMP/out/bad.gguf" --sha256 $BAD >"$TMP/o3" 2>&1; rc=$?
[ $rc -eq 1 ] && grep -q "checksum mismatch.*$SUM" "$TMP/o3" && [ ! -e "$TMP/out/bad.gguf" ] && [ ! -e "$TMP/out/bad.gguf.part" ]
check checksum_mismatch_fails_and_deletes $? "rc=$rc $(cat "$TMP/o3")"

# 4. HTTP errors are named, not retried when permanent, leave nothing behind
"$BIN" pull "$U/status/404" -o "$TMP/out/e.gguf" >"$TMP/o4" 2>&1; rc=$?
[ $rc -eq 1 ] && grep -q 'HTTP 404' "$TMP/o4" && grep -q 'error page for 404' "$TMP/o4" && [ ! -e "$TMP/out/e.gguf" ] &&
  [ ! -e "$TMP/out/e.gguf.part" ] && [ "$(grep -c 'GET /status/404' "$TMP/srvlog")" -eq 1 ]
check http_404_clear_error $? "rc=$rc $(cat "$TMP/o4")"
"$BIN" pull "$U/status/500" -o "$TMP/out/e.gguf" --retries 1 >"$TMP/o5" 2>&1; rc=$?
[ $rc -eq 1 ] && grep -q 'HTTP 500' "$TMP/o5" && [ "$(grep -c 'GET /status/500' "$TMP/srvlog")" -eq 2 ]
check http_500_retried_then_fails $? "rc=$rc $(cat "$TMP/o5")"
"$BIN" pull "http://127.0.0.1:1/m.gguf" -o "$TMP/out/e.gguf" --retries 0 >"$TMP/o6" 2>&1; rc=$?
[ $rc -eq 1 ] && grep -qi 'connect' "$TMP/o6"
check connection_refused_clear_error $? "rc=$rc $(cat "$TMP/o6")"
"$BIN" pull "ftp://127.0.0.1/m.gguf" >"$TMP/o7" 2>&1; rc=$?
[ $rc -eq 2 ] && grep -q 'http://' "$TMP/o7"
check non_http_url_rejected $? "rc=$rc $(cat "$TMP/o7")"

# 5. interrupted transfer: --retries 0 fails and keeps the .part; the next run
#    resumes it with a Range request and the result is byte-identical
"$BIN" pull "$U/drop/$HALF/m.gguf" -o "$TMP/out/r.gguf" --retries 0 >"$TMP/o8" 2>&1; rc=$?
psize=$(stat -c %s "$TMP/out/r.gguf.part" 2>/dev/null || echo 0)
[ $rc -eq 1 ] && [ "$psize" -eq "$HALF" ] && [ ! -e "$TMP/out/r.gguf" ] && grep -q 'run the same command again' "$TMP/o8"
check interrupted_keeps_part $? "rc=$rc part=$psize $(cat "$TMP/o8")"
"$BIN" pull "$U/drop/$HALF/m.gguf" -o "$TMP/out/r.gguf" --sha256 "$SUM" >"$TMP/o9" 2>&1; rc=$?
[ $rc -eq 0 ] && cmp -s "$TMP/srv/m.gguf" "$TMP/out/r.gguf" && grep -q "GET /drop/$HALF/m.gguf range=bytes=$HALF-" "$TMP/srvlog" &&
  grep -q "resuming" "$TMP/o9" && [ ! -e "$TMP/out/r.gguf.part" ]
check second_run_resumes_with_range $? "rc=$rc $(cat "$TMP/o9"; grep drop "$TMP/srvlog")"

# 6. the built-in retry resumes within one run
Q=$((SIZE / 3))
"$BIN" pull "$U/drop/$Q/m.gguf" -o "$TMP/out/r2.gguf" --sha256 "$SUM" >"$TMP/o10" 2>&1; rc=$?
[ $rc -eq 0 ] && cmp -s "$TMP/srv/m.gguf" "$TMP/out/r2.gguf" && grep -q "GET /drop/$Q/m.gguf range=bytes=$Q-" "$TMP/srvlog" &&
  grep -q "retrying from byte $Q" "$TMP/o10"
check retry_resumes_in_one_run $? "rc=$rc $(cat "$TMP/o10")"

# 7. transient 503 then success
"$BIN" pull "$U/flaky503/m.gguf" -o "$TMP/out/f.gguf" >"$TMP/o11" 2>&1; rc=$?
[ $rc -eq 0 ] && cmp -s "$TMP/srv/m.gguf" "$TMP/out/f.gguf" && grep -q 'HTTP 503' "$TMP/o11"
check http_503_retried $? "rc=$rc $(cat "$TMP/o11")"

# 8. a server that ignores Range: the part is replaced, not appended to
head -c 1000 "$TMP/srv/m.gguf" >"$TMP/out/n.gguf.part"
"$BIN" pull "$U/norange/m.gguf" -o "$TMP/out/n.gguf" --sha256 "$SUM" >"$TMP/o12" 2>&1; rc=$?
[ $rc -eq 0 ] && cmp -s "$TMP/srv/m.gguf" "$TMP/out/n.gguf" && grep -q 'starting over' "$TMP/o12"
check no_range_support_starts_over $? "rc=$rc $(cat "$TMP/o12")"

# 9. a stale .part longer than the remote file (416): started over
head -c $((SIZE + 5000)) /dev/zero >"$TMP/out/s.gguf.part"
"$BIN" pull "$U/files/m.gguf" -o "$TMP/out/s.gguf" --sha256 "$SUM" >"$TMP/o13" 2>&1; rc=$?
[ $rc -eq 0 ] && cmp -s "$TMP/srv/m.gguf" "$TMP/out/s.gguf"
check stale_longer_part_restarted $? "rc=$rc $(cat "$TMP/o13")"

# 10. a .part already complete: 416 with the same total means done
cp "$TMP/srv/m.gguf" "$TMP/out/c.gguf.part"
"$BIN" pull "$U/files/m.gguf" -o "$TMP/out/c.gguf" --sha256 "$SUM" >"$TMP/o14" 2>&1; rc=$?
[ $rc -eq 0 ] && cmp -s "$TMP/srv/m.gguf" "$TMP/out/c.gguf"
check complete_part_finished_by_416 $? "rc=$rc $(cat "$TMP/o14")"

# 11. redirects are followed
"$BIN" pull "$U/redirect/m.gguf" -o "$TMP/out/d.gguf" >"$TMP/o15" 2>&1; rc=$?
[ $rc -eq 0 ] && cmp -s "$TMP/srv/m.gguf" "$TMP/out/d.gguf"
check redirect_followed $? "rc=$rc $(cat "$TMP/o15")"

# 12. progress bar on a terminal (script(1) gives the command a pty)
if command -v script >/dev/null 2>&1; then
  script -qec "'$BIN' pull '$U/files/m.gguf' -o '$TMP/out/t.gguf'" /dev/null >"$TMP/o16" 2>&1; rc=$?
  [ $rc -eq 0 ] && grep -q '\[##############################\] 100%' "$TMP/o16" && cmp -s "$TMP/srv/m.gguf" "$TMP/out/t.gguf"
  check progress_bar_on_terminal $? "rc=$rc $(tr '\r' '\n' <"$TMP/o16" | tail -3)"
else
  echo "skip progress_bar_on_terminal: script(1) not installed"
fi
exit 0
