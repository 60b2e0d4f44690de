#!/usr/bin/env bash
# The figures of docs/reliability.md, from one run: a longer soak with reloads
# (requests, reloads, wrong decisions, gRPC errors, RSS start/end), the leak
# self-check (the soak must fail when the clients leak on purpose), and every
# fault test with the behaviour it observed.
#
#   tests/reliability/run.sh [OUT_DIR]          default OUT_DIR: target/reliability
#   SOAK_SECS=120      length of the soak (CI runs it for 10 s)
#   LEAK_BYTES=4096    bytes leaked per check in the self-check
#
# Needs the test tools (`make tools`: Envoy for the restart test). Uses
# CARGO_TARGET_DIR when set. Writes OUT_DIR/summary.md and the raw logs.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${1:-target/reliability}
SOAK_SECS=${SOAK_SECS:-120}
LEAK_BYTES=${LEAK_BYTES:-4096}
mkdir -p "$OUT"
export RUST_BACKTRACE=0

# Build first, so compile time is not part of any figure.
cargo test --no-run --test soak --test faults --test server --test jwt --test envoy_e2e \
  >"$OUT/build.log" 2>&1

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo) x $(nproc)"
  echo "memory: $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
  echo "kernel: $(uname -sr)"
  echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "build: test profile (unoptimized), as CI runs it"
} >"$OUT/machine.txt"

# 1. The soak, longer than in CI.
echo "soak: ${SOAK_SECS}s ..." >&2
soak_status=pass
PORTCULLIS_SOAK_SECS=$SOAK_SECS cargo test --test soak -- --nocapture \
  >"$OUT/soak.log" 2>&1 || soak_status=FAIL
grep -o 'soak: {.*}' "$OUT/soak.log" | sed 's/^soak: //' >"$OUT/soak.json" || true

# 2. The leak self-check: the same soak (CI length) with a leak on purpose
#    must fail on its memory assertion, and only on it.
echo "leak self-check ..." >&2
leak_status="not caught"
if PORTCULLIS_SOAK_SECS=10 PORTCULLIS_SOAK_LEAK_BYTES=$LEAK_BYTES \
  cargo test --test soak -- --nocapture >"$OUT/leak.log" 2>&1; then
  leak_status="NOT CAUGHT (the soak passed)"
elif grep -q 'resident memory grew' "$OUT/leak.log"; then
  leak_status="caught"
fi
grep -o 'soak: {.*}' "$OUT/leak.log" | sed 's/^soak: //' >"$OUT/leak.json" || true

# 3. The fault tests, and the ones elsewhere that the report lists.
echo "fault tests ..." >&2
run_tests() { # log name, test target, name filters...
  local log="$OUT/$1.log" target=$2
  shift 2
  cargo test --test "$target" -- --show-output --test-threads=1 "$@" >"$log" 2>&1 || true
}
run_tests faults faults
run_tests server server sigterm shutdown
run_tests jwt jwt remote_keys_rotation_and_outage introspect
run_tests envoy envoy_e2e checks_resume_when_envoy_restarts

echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"

python3 - "$OUT" "$soak_status" "$leak_status" "$LEAK_BYTES" <<'EOF'
import json, pathlib, re, sys

out, soak_status, leak_status, leak_bytes = pathlib.Path(sys.argv[1]), *sys.argv[2:]
lines = ["# Reliability run", "", "```", (out / "machine.txt").read_text().strip(), "```", ""]

def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return {}

soak, leak = load("soak.json"), load("leak.json")
lines += [f"## Soak ({soak_status})", "", "| figure | value |", "|---|---|"]
lines += [f"| {k} | {v} |" for k, v in soak.items()]
lines += ["", f"## Leak self-check: {leak_status}", ""]
if leak:
    lines.append(
        f"{leak_bytes} bytes leaked per check: RSS {leak.get('rss_start_kb')} kB after the warm-up, "
        f"{leak.get('rss_end_kb')} kB at the end (tolerance {leak.get('rss_tolerance_kb')} kB)."
    )
lines += ["", "## Faults", "", "| test | result | observed |", "|---|---|---|"]
for log in ["faults", "server", "jwt", "envoy"]:
    text = (out / f"{log}.log").read_text(errors="replace")
    outputs = dict(re.findall(r"^---- (\S+) stdout ----\n(.*?)(?=^---- |^successes:|^failures:|\Z)", text, re.M | re.S))
    results = re.findall(r"^test (\S+) \.\.\. (ok|FAILED|ignored)$", text, re.M)
    if not results:
        lines.append(f"| {log} | NO RESULT (see {log}.log) | |")
    for name, result in results:
        observed = re.findall(r"fault: (.*)", outputs.get(name, ""))
        cell = "<br>".join(o.replace("|", "/") for o in observed)
        lines.append(f"| {log}::{name} | {result} | {cell} |")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
