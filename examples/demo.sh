#!/usr/bin/env bash
# Runs the demo: the echo upstream (:8081), portcullis (gRPC :9001, admin :9002,
# HTTP :9003), a real Envoy (:8080, admin :9901) and, when `make tools` unpacked
# it, nginx with auth_request (:8090) on the bundled example policies.
# Ctrl-C stops exactly the processes this script started.
#
# The terminal shows one readable line per decision (the diagnostic log, with
# allows and preflights raised from debug); the JSON decision log goes to a
# file, named in the banner. Set RUST_LOG to see more or less.
#
# JAEGER=1 (`make demo JAEGER=1`) adds Jaeger 2 (.tools/peers/jaeger, OTLP/gRPC
# :4317, query API :16686) and runs the walk-through's configs in
# examples/jaeger/, with every request traced (examples/jaeger/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

envoy_bin=$(ls .tools/venv/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n1)
if [ -z "$envoy_bin" ]; then
  echo "no Envoy in .tools/: run 'make tools' first" >&2
  exit 1
fi

portcullis_config=examples/portcullis.yaml
envoy_config=examples/envoy/envoy.yaml
if [ "${JAEGER:-0}" = 1 ]; then
  if [ ! -x .tools/peers/jaeger ]; then
    echo "no Jaeger in .tools/peers: run 'make tools' first" >&2
    exit 1
  fi
  portcullis_config=examples/jaeger/portcullis.yaml
  envoy_config=examples/jaeger/envoy.yaml
fi

pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${nginx_dir:-}" ]; then rm -rf "$nginx_dir"; fi
}
trap stop EXIT INT TERM

python3 examples/echo_upstream.py 8081 &
pids+=($!)
if [ "${JAEGER:-0}" = 1 ]; then
  .tools/peers/jaeger --config examples/jaeger/jaeger.yaml \
    >>"${TMPDIR:-/tmp}/portcullis-demo-jaeger.log" 2>&1 &
  pids+=($!)
fi
decisions="${TMPDIR:-/tmp}/portcullis-demo-decisions.jsonl"
RUST_LOG="${RUST_LOG:-warn,portcullis=info,portcullis::transport::server=debug}" \
  "${CARGO_TARGET_DIR:-target}/debug/portcullis" serve --config "$portcullis_config" \
  >>"$decisions" &
pids+=($!)
"$envoy_bin" -c "$envoy_config" -l warning --use-dynamic-base-id &
pids+=($!)

nginx_dir=""
if [ -x .tools/bin/nginx ]; then
  nginx_dir=$(mktemp -d)
  { echo "daemon off; master_process off; pid $nginx_dir/nginx.pid;"
    sed "s|^http {|http {\n    access_log off; client_body_temp_path $nginx_dir/b; proxy_temp_path $nginx_dir/p; fastcgi_temp_path $nginx_dir/f; uwsgi_temp_path $nginx_dir/u; scgi_temp_path $nginx_dir/s;|" \
      examples/nginx/nginx.conf
  } >"$nginx_dir/nginx.conf"
  .tools/bin/nginx -p "$nginx_dir" -c "$nginx_dir/nginx.conf" -e "$nginx_dir/error.log" &
  pids+=($!)
fi

for _ in $(seq 1 100); do
  if curl -fs http://127.0.0.1:9901/ready >/dev/null 2>&1 \
     && curl -fs http://127.0.0.1:9002/readyz >/dev/null 2>&1; then
    break
  fi
  sleep 0.2
done

cat <<'TOUR'

portcullis is deciding for Envoy on http://127.0.0.1:8080. Try:

  curl -s -H 'host: acme.example.com' -H 'x-subject: forged' localhost:8080/docs/intro
  curl -si -H 'host: acme.example.com' localhost:8080/tenants/acme/orders/1
  curl -si -H 'host: acme.example.com' 'localhost:8080/docs/intro;x=1'
  curl -si -H 'host: unknown.example.com' localhost:8080/docs/intro
  curl -s -H 'host: api.globex.example.com' localhost:8080/status
  curl -si -X OPTIONS -H 'host: acme.example.com' -H 'origin: https://app.acme.example' \
       -H 'access-control-request-method: GET' localhost:8080/tenants/acme/orders/1
  curl -s localhost:9002/readyz
  curl -s localhost:9002/policies

Behind nginx (auth_request, :8090), and portcullis refusing a caller that is not the proxy:

  curl -si -H 'host: acme.example.com' -H 'x-subject: forged' localhost:8090/docs/intro
  curl -si -H 'x-original-uri: /docs/intro' -H 'x-original-method: GET' localhost:9003/forward-auth

TOUR
if [ "${JAEGER:-0}" = 1 ]; then
  cat <<'JAEGER_TOUR'
Jaeger's query API is on http://127.0.0.1:16686. A denial, its trace id from the
decision log, and the trace with its reason (examples/jaeger/README.md):

  id=$(curl -s -o /dev/null -w '%header{x-portcullis-decision-id}' \
    -H 'host: acme.example.com' localhost:8080/tenants/acme/orders/1)
  trace=$(grep "$id" "${TMPDIR:-/tmp}/portcullis-demo-decisions.jsonl" | python3 -c \
    'import json,sys; print(json.loads(sys.stdin.readline())["trace_id"])')
  curl -s "localhost:16686/api/v3/traces/$trace" | python3 -m json.tool | grep -A1 '"reason"'

JAEGER_TOUR
fi
echo "Each decision prints one line here; the JSON decision log is appended to"
echo "$decisions. Ctrl-C stops everything."
echo
# Ctrl-C reaches the whole process group: portcullis and Envoy drain and exit,
# while the background upstream ignores SIGINT (a script's background jobs do).
# So when any one of the three ends, stop the others (the EXIT trap).
wait -n || true
