# Sourced by run.sh and stages.sh: one server under callgrind, warmed up,
# its counters zeroed, PROFILE_N checks sent, the profile dumped.
#
#   callgrind_load NAME PORT COMMAND...
#
# Needs OUT, SERVER_CPU, LOAD_CPU, FIX (with check-acme.bin), GRPC_PATH,
# PROFILE_N, the PIDS array and stop() from the caller. Leaves the profile
# in $OUT/callgrind-NAME.out.1 (the dump asked for after zeroing) and
# h2load's report in $OUT/callgrind-NAME.h2load.
callgrind_load() {
  local name=$1 port=$2
  shift 2
  local out=$OUT/callgrind-$name
  taskset -c "$SERVER_CPU" valgrind --tool=callgrind --callgrind-out-file="$out.out" "$@" \
    >"$out.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  local h2=(taskset -c "$LOAD_CPU" h2load -H 'content-type: application/grpc' -H 'te: trailers'
    -d "$FIX/check-acme.bin" "http://127.0.0.1:$port$GRPC_PATH")
  for _ in $(seq 1 600); do
    "${h2[@]}" -n 1 2>/dev/null | grep -q '1 succeeded' && break
    kill -0 "$pid" 2>/dev/null || { cat "$out.log" >&2; return 1; }
    sleep 0.1
  done
  "${h2[@]}" -c 4 -m 16 -n 2000 >/dev/null 2>&1
  callgrind_control -z "$pid" >/dev/null
  "${h2[@]}" -c 4 -m 16 -n "$PROFILE_N" >"$out.h2load" 2>&1
  callgrind_control -d "$pid" >/dev/null
  stop "$pid"
}
