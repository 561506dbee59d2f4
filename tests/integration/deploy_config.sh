#!/usr/bin/env bash
# The deployment files agree with themselves and with qkvd: Kubernetes YAML
# parses and is consistent (probes on /health, termination period longer than
# preStop + the drain, names that refer to each other exist, the HPA metric is
# the one the adapter rule produces), the ConfigMap's qkvd.json starts a real
# server, and nginx accepts deploy/nginx/qkvd.conf (nginx -t).
set -u
ROOT=${QKVD_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${QKVD_BIN:-$ROOT/build/qkvd}
SHARED=${QKVD_SHARED:-$ROOT/../shared}
TMP=$(mktemp -d)
chmod 0755 "$TMP"
PID=
cleanup() { [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
check() { if [ "$2" -eq 0 ]; then echo "ok $1"; else echo "not ok $1 # ${3:-}"; fi; }

if python3 -c 'import yaml' 2>/dev/null; then
  python3 - "$ROOT/deploy/k8s" "$TMP/qkvd.json" <<'PY'
import json, os, sys, yaml
d, out = sys.argv[1], sys.argv[2]
docs = {}
for f in sorted(os.listdir(d)):
    if f.endswith('.yaml'):
        docs[f] = [x for x in yaml.safe_load_all(open(os.path.join(d, f))) if x]
def check(name, cond, detail=''):
    print(('ok ' if cond else 'not ok ') + name + ('' if cond else ' # ' + str(detail)))
objs = [o for f, l in docs.items() for o in l if isinstance(o, dict) and 'kind' in o]
by = lambda k: [o for o in objs if o['kind'] == k]
kust = docs['kustomization.yaml'][0]
check('k8s_kustomization_resources_exist', all(r in docs for r in kust['resources']), kust['resources'])
dep = by('Deployment')[0]
pod = dep['spec']['template']
c = pod['spec']['containers'][0]
env = {e['name']: e.get('value') for e in c.get('env', [])}
probes = [c.get(p, {}).get('httpGet', {}).get('path') for p in ('startupProbe', 'readinessProbe', 'livenessProbe')]
check('k8s_probes_on_health', probes == ['/health'] * 3, probes)
pre = c.get('lifecycle', {}).get('preStop', {}).get('exec', {}).get('command', [])
pre_s = float(pre[-1]) if pre and pre[0] == 'sleep' else 0
grace = float(env.get('QKVD_GRACE_PERIOD', 30))
tgp = pod['spec']['terminationGracePeriodSeconds']
check('k8s_termination_exceeds_prestop_plus_drain', tgp > pre_s + grace, (tgp, pre_s, grace))
res = c['resources']
check('k8s_resources_set', all(k in res.get(s, {}) for s in ('requests', 'limits') for k in ('cpu', 'memory')), res)
check('k8s_threads_match_cpu_limit', str(env.get('QKVD_THREADS')) == str(res['limits']['cpu']), (env.get('QKVD_THREADS'), res['limits']['cpu']))
sc = pod['spec'].get('securityContext', {})
check('k8s_non_root', sc.get('runAsNonRoot') is True and sc.get('runAsUser', 0) > 0, sc)
labels = pod['metadata']['labels']
svcs = by('Service')
check('k8s_services_select_pods', svcs and all(all(labels.get(k) == v for k, v in s['spec']['selector'].items()) for s in svcs))
vols = {v['name']: v for v in pod['spec']['volumes']}
pvc = by('PersistentVolumeClaim')[0]['metadata']['name']
cm = by('ConfigMap')[0]
check('k8s_volumes_refer_to_pvc_and_configmap', vols['models']['persistentVolumeClaim']['claimName'] == pvc and
      vols['config']['configMap']['name'] == cm['metadata']['name'])
mounts = {m['name']: m['mountPath'] for m in c['volumeMounts']}
check('k8s_config_path_matches_mount', env.get('QKVD_CONFIG', '').startswith(mounts['config'] + '/') and
      os.path.basename(env['QKVD_CONFIG']) in cm['data'], (env.get('QKVD_CONFIG'), mounts))
hpa = by('HorizontalPodAutoscaler')[0]
metric = hpa['spec']['metrics'][0]['pods']['metric']['name']
rule = docs['prometheus-adapter-rules.yaml'][0]['rules'][0]
check('k8s_hpa_metric_is_adapter_rule_output', metric == rule['name']['as'] == 'qkvd_requests_waiting' and
      hpa['spec']['scaleTargetRef']['name'] == dep['metadata']['name'], (metric, rule['name']))
job = by('Job')[0]['spec']['template']['spec']
jc = job['containers'][0]
check('k8s_pull_job_writes_where_pods_read', jc['command'][-1] == 'pull' and
      jc['args'][jc['args'].index('-o') + 1] == env.get('QKVD_MODEL') and
      job['volumes'][0]['persistentVolumeClaim']['claimName'] == pvc, jc['args'])
open(out, 'w').write(cm['data']['qkvd.json'])
PY
else
  echo "skip k8s_yaml: python3 with the yaml module is not installed"
fi

# The ConfigMap's configuration starts a real server (model and address from env, as in the pod).
MODEL=$SHARED/models/stories260K.gguf
if [ -f "$TMP/qkvd.json" ] && [ -f "$MODEL" ]; then
  QKVD_MODEL=$MODEL QKVD_HOST=127.0.0.1 QKVD_PORT=0 QKVD_THREADS=1 QKVD_CTX=512 \
    "$BIN" serve --config "$TMP/qkvd.json" 2>"$TMP/log" &
  PID=$!
  for _ in $(seq 200); do grep -q loaded "$TMP/log" && break; kill -0 $PID 2>/dev/null || break; sleep 0.05; done
  PORT=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$TMP/log" | sed 's/.*://')
  id=$(curl -s "http://127.0.0.1:$PORT/v1/models" 2>/dev/null | grep -o '"id":"[^"]*"')
  alias=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["model-alias"])' "$TMP/qkvd.json" 2>/dev/null)
  [ -n "$PORT" ] && [ "$id" = "\"id\":\"$alias\"" ]
  check k8s_configmap_config_starts_server $? "$id $(tail -2 "$TMP/log")"
  kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; PID=
else
  echo "skip k8s_configmap_config_starts_server: no yaml module or no test model"
fi

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ -x "$NGINX" ]; then
  cat >"$TMP/nginx.conf" <<CONF
pid $TMP/nginx.pid;
error_log $TMP/error.log;
events {}
http {
    access_log off;
    client_body_temp_path $TMP/body; proxy_temp_path $TMP/proxy; fastcgi_temp_path $TMP/fastcgi;
    uwsgi_temp_path $TMP/uwsgi; scgi_temp_path $TMP/scgi;
    include $ROOT/deploy/nginx/qkvd.conf;
}
CONF
  "$NGINX" -t -p "$TMP" -e "$TMP/error.log" -c "$TMP/nginx.conf" >"$TMP/t.log" 2>&1
  check nginx_config_syntax $? "$(cat "$TMP/t.log")"
  grep -q 'hash $http_x_session_id consistent\|hash $qkvd_session_key consistent' "$ROOT/deploy/nginx/qkvd.conf" &&
    grep -q 'least_conn' "$ROOT/deploy/nginx/qkvd.conf" && grep -q 'proxy_buffering off' "$ROOT/deploy/nginx/qkvd.conf"
  check nginx_config_balancing_modes $?
else
  echo "skip nginx_config_syntax: nginx not installed (scripts/install-deps.sh)"
fi
exit 0
